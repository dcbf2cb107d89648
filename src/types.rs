//! Small values shared by every part: ids, secret tokens, time, and newtypes
//! that validate on parse.

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
pub fn new_id() -> String {
    let mut bytes = [0u8; 10];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

/// A random secret token for a URL (256 bits). Only its hash is stored.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a secret token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
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

/// A checked, lower-cased e-mail address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

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
        let address: lettre::Address = s.parse().map_err(|_| "this is not a valid e-mail address")?;
        if !address.domain().contains('.') || address.domain().ends_with('.') {
            return Err("this is not a valid e-mail address");
        }
        Ok(Self(s.to_lowercase()))
    }
}

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
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
    pub fn as_str(&self) -> &str {
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
pub fn is_safe_file_name(name: &str) -> bool {
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
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(
            "Ada@Example.ORG".parse::<Email>().unwrap().as_str(),
            "ada@example.org"
        );
        assert!("ada".parse::<Email>().is_err());
        assert!("ada@localhost".parse::<Email>().is_err());
        assert!("".parse::<Email>().is_err());
        assert!("a b@example.org".parse::<Email>().is_err());
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
