//! Small values shared by every part: ids, secret tokens, time, and newtypes
//! that validate on parse.

pub mod states;

use std::{collections::HashMap, fmt, str::FromStr};

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
/// `SHA256SUMS`: letters, digits, `.`, `_`, `-`, not starting with a dot, and
/// the same file on Windows too (no trailing dot, no device name such as
/// `CON` or `nul.json`).
pub(crate) fn is_safe_file_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !is_windows_device(name)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether Windows reads `name` as a device (`CON`, `aux.txt`, `COM1.bin`)
/// whatever its extension.
fn is_windows_device(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).to_ascii_uppercase();
    matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (stem.len() == 4
            && (stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.as_bytes()[3].is_ascii_digit())
}

/// The longest path of a file in a release, in bytes, and the most folders
/// it may sit in.
pub(crate) const MAX_RELEASE_PATH: usize = 1024;
const MAX_RELEASE_DEPTH: usize = 32;

/// `true` for the path of a file in a release: names allowed by
/// [`is_safe_file_name`] joined by `/`, as in `original/consolidated.00.pth`.
/// So it is relative, has no empty, `.` or `..` part and no hidden folder, and
/// means the same path in a URL, in `SHA256SUMS` and on any file system.
pub fn is_safe_release_path(path: &str) -> bool {
    path.len() <= MAX_RELEASE_PATH
        && path.split('/').count() <= MAX_RELEASE_DEPTH
        && path.split('/').all(is_safe_file_name)
}

/// Names a release cannot give a file at its root: the files the portal
/// serves and the client writes beside the weights.
pub(crate) const RESERVED_RELEASE_NAMES: &[&str] = &[
    "SHA256SUMS",
    "SHA256SUMS.minisig",
    "manifest.json",
    "manifest.json.minisig",
    "model.sig",
];

/// Checks the paths of a release's files together: each is a safe path
/// ([`is_safe_release_path`]) and not a reserved name, none is also the
/// folder of another (`a` and `a/b`), and none differs from another only by
/// case (one file would overwrite the other on macOS or Windows). Says what
/// is wrong with the first that fails.
pub(crate) fn check_release_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    let mut files: HashMap<String, &str> = HashMap::new();
    let mut folders: HashMap<String, &str> = HashMap::new();
    for path in paths {
        if !is_safe_release_path(path) {
            return Err(format!(
                "{path:?} is not a usable path: use folders and file names of letters, digits, '.', '_' \
                 and '-', not starting with '.', joined by '/'"
            ));
        }
        let top = path.split('/').next().unwrap_or(path);
        if RESERVED_RELEASE_NAMES.iter().any(|r| r.eq_ignore_ascii_case(top)) {
            let named = if top == path {
                format!("{path:?} is")
            } else {
                format!("{path:?} is in {top:?},")
            };
            return Err(format!(
                "{named} a name the portal gives its own file at the root of every release"
            ));
        }
        // Paths are ASCII (is_safe_release_path), so ASCII case folding is
        // exactly what a case-insensitive file system does with them.
        let folded = path.to_ascii_lowercase();
        if let Some(other) = files.insert(folded.clone(), path) {
            return Err(if other == path {
                format!("{path:?} is listed twice")
            } else {
                format!("{other:?} and {path:?} differ only by case")
            });
        }
        if let Some(folder) = folders.get(&folded) {
            return Err(format!("{path:?} is a file and also the folder of {folder:?}"));
        }
        let mut end = 0;
        while let Some(slash) = folded[end..].find('/') {
            end += slash;
            let folder = &folded[..end];
            if let Some(file) = files.get(folder) {
                return Err(format!("{file:?} is a file and also the folder of {path:?}"));
            }
            folders.entry(folder.to_owned()).or_insert(path);
            end += 1;
        }
    }
    // A download keeps a file's partial copy beside it as `PATH.part`: no
    // other file or folder may have that name.
    for (folded, path) in &files {
        let partial = format!("{folded}.part");
        if let Some(other) = files.get(&partial).or_else(|| folders.get(&partial)) {
            return Err(format!(
                "{other:?} would take the place of {path:?} while it downloads (as {path}.part)"
            ));
        }
    }
    Ok(())
}

/// The last part of a release path: the name a browser or `curl -O` saves
/// the file as.
pub(crate) fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_paths_are_relative_names_joined_by_slashes() {
        for good in [
            "config.json",
            "original/consolidated.00.pth",
            "1_Pooling/config.json",
            "onnx/model.onnx",
        ] {
            assert!(is_safe_release_path(good), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "../a",
            "a/../b",
            "a/.git/config",
            ".cache/x",
            "a\\b",
            "C:x",
            "a b/c",
            "ä/b",
        ] {
            assert!(!is_safe_release_path(bad), "{bad}");
        }
        assert!(!is_safe_release_path(&"a/".repeat(40)));
        assert!(!is_safe_release_path(&format!(
            "{}/x",
            "a".repeat(MAX_RELEASE_PATH)
        )));
        assert_eq!(base_name("original/params.json"), "params.json");
        assert_eq!(base_name("config.json"), "config.json");
    }

    #[test]
    fn a_releases_paths_are_checked_together() {
        assert_eq!(
            check_release_paths([
                "config.json",
                "1_Pooling/config.json",
                "original/a.pth",
                "original/b.pth"
            ]),
            Ok(())
        );
        for (paths, says) in [
            (vec!["a.bin", "A.bin"], "differ only by case"),
            (vec!["Original/a.pth", "original/a.pth"], "differ only by case"),
            (vec!["original", "original/a.pth"], "also the folder of"),
            (vec!["original/a.pth", "original"], "also the folder of"),
            (vec!["a/b/c", "A/B"], "also the folder of"),
            (vec!["x.bin", "x.bin"], "listed twice"),
            (vec!["SHA256SUMS"], "portal gives its own file"),
            (vec!["manifest.json"], "portal gives its own file"),
            (vec!["sha256sums"], "portal gives its own file"),
            (vec!["Manifest.JSON/a.bin"], "portal gives its own file"),
            (vec!["x.bin", "X.bin.part"], "take the place of"),
            (vec!["x.bin", "x.bin.part/y"], "take the place of"),
            (vec!["../x"], "not a usable path"),
        ] {
            let err = check_release_paths(paths.iter().copied()).unwrap_err();
            assert!(err.contains(says), "{paths:?}: {err}");
        }
        // A reserved name is fine inside a folder, and folders whose names
        // differ by case hold different files wherever they land.
        assert_eq!(check_release_paths(["sub/SHA256SUMS"]), Ok(()));
        assert_eq!(check_release_paths(["Original/a.pth", "original/b.pth"]), Ok(()));
    }

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
        for bad in [
            "", ".hidden", "a/b", "..", "a b", "ä", "x.", "CON", "nul.json", "com1.bin", "LPT9",
        ] {
            assert!(!is_safe_file_name(bad), "{bad}");
        }
        for good in ["console.json", "COM10.bin", "auxiliary.txt", "x.y"] {
            assert!(is_safe_file_name(good), "{good}");
        }
    }

    #[test]
    fn timestamps_render_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_ms_rfc3339(86_400_000), "1970-01-02T00:00:00Z");
    }
}
