//! Small values shared by every part: ids, secret tokens, time, and newtypes
//! that validate on parse.

pub mod states;

use std::{fmt, str::FromStr};

use base64::Engine;
use sha2::{Digest, Sha256};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// A random, URL-safe record id (80 bits, 20 hex digits).
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 10];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

/// A random secret token for a URL (256 bits). Only its hash is stored.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a secret token.
pub(crate) fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A count with its noun: "1 file", "3 files".
pub(crate) fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Renders Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_ms(ms: i64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Renders Unix milliseconds as RFC 3339 UTC, for machine-readable output.
pub fn format_ms_rfc3339(ms: i64) -> String {
    format_ms(ms).replacen(' ', "T", 1) + "Z"
}

/// A point in time given by a person, in Unix milliseconds: a duration
/// back from now (`7d`, `12h`), a date (`2026-11-01`, midnight UTC) or an
/// RFC 3339 time (`2026-11-01T12:00:00Z`, `2026-11-01T14:00:00+02:00`).
pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    parse_time_at(s, now_ms())
}

/// [`parse_time`] with the present given, for tests and reproducible results.
pub(crate) fn parse_time_at(s: &str, now_ms: i64) -> Result<i64, String> {
    let s = s.trim();
    let unknown = || {
        format!(
            "{s:?} is not a time: use a duration back from now (7d, 12h), a date (2026-11-01) \
             or an RFC 3339 time (2026-11-01T12:00:00Z)"
        )
    };
    if s.starts_with(|c: char| c.is_ascii_digit()) && !s.contains('-') {
        let ago = humantime::parse_duration(s).map_err(|_| unknown())?;
        return Ok(now_ms.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)));
    }
    let (moment, offset_minutes) = split_offset(s).ok_or_else(unknown)?;
    let moment = if moment.len() == 10 {
        format!("{moment}T00:00:00")
    } else {
        moment.to_owned()
    };
    let at = humantime::parse_rfc3339_weak(&moment).map_err(|_| unknown())?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{s:?} is before 1970"))?
        .as_millis();
    Ok(i64::try_from(ms).unwrap_or(i64::MAX) - offset_minutes * 60_000)
}

/// Splits a trailing `Z` or `±HH:MM` off a time; the offset in minutes east of UTC.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if let Some(rest) = s.strip_suffix(['Z', 'z']) {
        return Some((rest, 0));
    }
    if s.len() > 16
        && let Some((rest, zone)) = s.split_at_checked(s.len() - 6)
    {
        let bytes = zone.as_bytes();
        let digits = |r: std::ops::Range<usize>| bytes[r].iter().all(u8::is_ascii_digit);
        if matches!(bytes[0], b'+' | b'-') && bytes[3] == b':' && digits(1..3) && digits(4..6) {
            let hours: i64 = zone[1..3].parse().ok()?;
            let minutes: i64 = zone[4..6].parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if bytes[0] == b'-' { -1 } else { 1 };
            return Some((rest, sign * (hours * 60 + minutes)));
        }
    }
    Some((s, 0))
}

/// A checked, lower-cased e-mail address, in ASCII only.
///
/// What people type is normalised where the meaning is unambiguous and
/// refused otherwise, so that an address can never look like another one on
/// a page or in a mail header:
/// - surrounding spaces are trimmed and the whole address lower-cased;
/// - an internationalised domain is stored in its ASCII (`xn--`) form, after
///   the IDNA mapping (so full-width letters become ASCII ones): a domain
///   spelt with Cyrillic lookalikes is shown as the `xn--` name it really is;
/// - the part before `@` must be ASCII, and unquoted (no `"…"@`);
/// - the domain must be a name with a dot, without a trailing dot, not an IP
///   address or `[literal]`, and without `%` escapes;
/// - any space or control character, a display name (`Ada <…>`) or a second
///   address is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

const NOT_AN_ADDRESS: &str = "this is not a valid e-mail address";

impl FromStr for Email {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("enter an e-mail address");
        }
        if s.len() > 254 {
            return Err("an e-mail address has at most 254 characters");
        }
        if s.chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '\u{feff}')
        {
            return Err(NOT_AN_ADDRESS);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(NOT_AN_ADDRESS)?;
        if local.starts_with('"') {
            return Err("write the address without quotes");
        }
        if !local.is_ascii() {
            return Err("the part before @ must be written in ASCII letters, digits and punctuation");
        }
        if domain.starts_with('[') || domain.contains('%') {
            return Err(NOT_AN_ADDRESS);
        }
        let domain = match url::Host::parse(domain) {
            Ok(url::Host::Domain(d)) => d,
            Ok(_) => return Err("use the mail domain's name, not an IP address"),
            Err(_) => return Err(NOT_AN_ADDRESS),
        };
        if !domain.contains('.') || domain.ends_with('.') {
            return Err(NOT_AN_ADDRESS);
        }
        let address = format!("{local}@{domain}").to_lowercase();
        if address.len() > 254 {
            return Err("an e-mail address has at most 254 characters");
        }
        address.parse::<lettre::Address>().map_err(|_| NOT_AN_ADDRESS)?;
        Ok(Self(address))
    }
}

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What to look an address up by when someone types it (to sign in, to
    /// filter): its normal form when it is a valid address, so that any
    /// spelling [`Email`] accepts finds the account; otherwise the trimmed,
    /// lower-cased text, which matches no stored address but still keys a
    /// sign-in throttle.
    pub(crate) fn lookup_key(typed: &str) -> String {
        match typed.parse::<Email>() {
            Ok(email) => email.0,
            Err(_) => typed.trim().to_lowercase().chars().take(254).collect(),
        }
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A model's URL name: lower-case letters, digits and dashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slug(String);

impl FromStr for Slug {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "{s:?} is not a valid slug: use 1 to 64 lower-case letters, digits and dashes"
            ))
        }
    }
}

impl Slug {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `true` for a name that is safe as a file name in a release, in a URL and in
/// `SHA256SUMS`: letters, digits, `.`, `_`, `-`, not starting with a dot.
pub(crate) fn is_safe_file_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_address_is_looked_up_by_its_normal_form() {
        assert_eq!(Email::lookup_key("  Ada@LAB.Example.org "), "ada@lab.example.org");
        // Full-width letters in the domain are the same address.
        assert_eq!(Email::lookup_key("ada@ｌａｂ.example.org"), "ada@lab.example.org");
        assert_eq!(
            Email::lookup_key("ada@bücher.example"),
            "ada@xn--bcher-kva.example"
        );
        // Not an address: still one key per spelling, for the throttle.
        assert_eq!(Email::lookup_key(" NOT AN ADDRESS "), "not an address");
        assert_eq!(Email::lookup_key(&"x".repeat(300)).len(), 254);
    }

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn times_are_durations_dates_or_rfc3339() {
        assert_eq!(parse_time_at("7d", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_time_at("12h", NOW), Ok(NOW - 12 * 3_600_000));
        assert_eq!(parse_time_at("1970-01-02", NOW), Ok(86_400_000));
        assert_eq!(parse_time_at("1970-01-02T00:00:01Z", NOW), Ok(86_401_000));
        assert_eq!(parse_time_at("1970-01-02T02:00:00+02:00", NOW), Ok(86_400_000));
        assert_eq!(parse_time_at("1970-01-01T22:30:00-01:30", NOW), Ok(86_400_000));
        assert_eq!(parse_time_at("2026-11-01", NOW), Ok(1_793_491_200_000));
        for bad in [
            "",
            "yesterday",
            "7 parsecs",
            "2026-13-01",
            "2026-11-01T25:00:00Z",
            "1969-12-31",
            // Six bytes from the end falls inside a character.
            "2026-11-01T12:00ü00000",
            "\0\0\0ad\0a@,,,bücher/",
            // An offset is two digits, a colon and two digits.
            "2026-11-01T12:00:00+-1:00",
            "2026-11-01T12:00:00-+1:30",
        ] {
            assert!(parse_time_at(bad, NOW).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(
            "Ada@Example.ORG".parse::<Email>().unwrap().as_str(),
            "ada@example.org"
        );
        assert!("ada".parse::<Email>().is_err());
        assert!("ada@localhost".parse::<Email>().is_err());
        assert!("".parse::<Email>().is_err());
        assert!("a b@example.org".parse::<Email>().is_err());
        assert!(
            "a@e\u{89}re.2e".parse::<Email>().is_err(),
            "a C1 control character"
        );
        assert!(
            "ada@exa\u{85}mple.org".parse::<Email>().is_err(),
            "a next-line character"
        );
    }

    #[test]
    fn odd_forms_of_addresses_are_normalised_to_ascii_or_refused() {
        let accepted = [
            ("  Ada@Example.ORG ", "ada@example.org"),
            ("ada+weights@example.org", "ada+weights@example.org"),
            ("ada@bücher.example", "ada@xn--bcher-kva.example"),
            // Full-width letters map to ASCII under IDNA.
            ("ada@\u{ff45}xample.org", "ada@example.org"),
            // A Cyrillic 'а' in the domain is a different domain, shown as such.
            ("ada@ex\u{0430}mple.org", "ada@xn--exmple-4nf.org"),
        ];
        for (input, stored) in accepted {
            assert_eq!(
                input.parse::<Email>().map(|e| e.0),
                Ok(stored.to_owned()),
                "{input}"
            );
        }
        let refused = [
            "\u{0430}da@example.org",
            "ada\u{ff20}example.org",
            "ada\u{200b}@example.org",
            "ada@example.org.",
            "\"ada lovelace\"@example.org",
            "\"ada@example.org\"@example.org",
            "ada@[192.0.2.1]",
            "ada@192.0.2.1",
            "ada@ex%61mple.org",
            "Ada <ada@example.org>",
            "ada@example.org, eve@example.org",
            "ada@example.org\r\nBcc: eve@example.org",
            "ada@exa mple.org",
            "ada@example..org",
            "@example.org",
            "ada@",
        ];
        for input in refused {
            assert!(input.parse::<Email>().is_err(), "{input:?} was accepted");
        }
    }

    #[test]
    fn slugs_reject_anything_but_lowercase_digits_and_dashes() {
        assert!("demo-model".parse::<Slug>().is_ok());
        for bad in ["", "Demo", "a/b", "-a", "a-", "a b", "../x"] {
            assert!(bad.parse::<Slug>().is_err(), "{bad}");
        }
    }

    #[test]
    fn file_names_refuse_paths_and_hidden_files() {
        assert!(is_safe_file_name("model-00001-of-00003.safetensors"));
        for bad in ["", ".hidden", "a/b", "..", "a b", "ä"] {
            assert!(!is_safe_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn timestamps_render_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_ms_rfc3339(86_400_000), "1970-01-02T00:00:00Z");
    }
}
