//! The small values people type: e-mail addresses and slugs (forms and the
//! CLI), release and file names, times (`--since`, the audit page's filters)
//! and sizes (`--limit-rate`, `--chunk-size`).
#![no_main]

use std::path::{Component, Path};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weightgate::{
    cli::parse_size,
    types::{Email, Slug, format_ms, format_ms_rfc3339, is_safe_file_name, is_safe_release_path, parse_time_at},
};

/// 2026-09-21, some time after the portal's first releases.
const NOW: i64 = 1_790_000_000_000;
/// 9999-12-31T23:59:59.999Z, the last moment RFC 3339 can write.
const LAST_MS: i64 = 253_402_300_799_999;

#[derive(Arbitrary, Debug)]
enum Input {
    Text(String),
    /// A moment written the ways `parse_time` documents.
    Moment {
        ms: i64,
        offset_minutes: i16,
    },
    Ago {
        amount: u32,
        unit: u8,
    },
    Size(u64),
}

fn check_text(s: &str) {
    if let Ok(email) = s.parse::<Email>() {
        let text = email.as_str();
        assert!(text.len() <= 254, "{text:?} is longer than an address may be");
        assert_eq!(text, text.to_lowercase());
        assert!(
            !text.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{text:?}"
        );
        let domain = email.domain();
        assert!(domain.contains('.') && !domain.ends_with('.'), "{text:?}");
        assert_eq!(
            text.parse::<Email>().as_ref(),
            Ok(&email),
            "not stable when checked again"
        );
    }

    let slug_ok = (1..=64).contains(&s.len())
        && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && !s.starts_with('-')
        && !s.ends_with('-');
    match s.parse::<Slug>() {
        Ok(slug) => {
            assert!(slug_ok, "{s:?}");
            assert_eq!(slug.to_string(), s);
        }
        Err(_) => assert!(!slug_ok, "{s:?}"),
    }

    if is_safe_file_name(s) {
        let components: Vec<_> = Path::new(s).components().collect();
        assert!(matches!(components[..], [Component::Normal(_)]), "{s:?}");
        assert!(!s.starts_with('.') && s.len() <= 200);
        assert!(is_safe_release_path(s), "{s:?}");
    }
    if is_safe_release_path(s) {
        // A path in a release stays below the folder it is written into.
        let components: Vec<_> = Path::new(s).components().collect();
        assert!(!components.is_empty(), "{s:?}");
        assert!(components.iter().all(|c| matches!(c, Component::Normal(_))), "{s:?}");
        assert_eq!(components.len(), s.split('/').count(), "{s:?}");
    }

    if let Ok(ms) = parse_time_at(s, NOW) {
        assert!(ms <= NOW || !s.trim().starts_with(|c: char| c.is_ascii_digit()) || s.contains('-'));
    }
    let _ = parse_size(s);
}

fuzz_target!(|input: Input| match input {
    Input::Text(s) => check_text(&s),
    Input::Moment { ms, offset_minutes } => {
        let ms = ms.rem_euclid(LAST_MS + 1);
        let second = ms - ms % 1000;
        let utc = format_ms_rfc3339(ms);
        assert_eq!(parse_time_at(&utc, NOW), Ok(second), "{utc}");
        let day = second - second % 86_400_000;
        assert_eq!(parse_time_at(&format_ms(ms)[..10], NOW), Ok(day));

        let offset = i64::from(offset_minutes) % (24 * 60);
        let local = second + offset * 60_000;
        if (0..=LAST_MS).contains(&local) {
            let sign = if offset < 0 { '-' } else { '+' };
            let zoned = format!(
                "{}{sign}{:02}:{:02}",
                &format_ms_rfc3339(local)[..19],
                offset.abs() / 60,
                offset.abs() % 60
            );
            assert_eq!(parse_time_at(&zoned, NOW), Ok(second), "{zoned}");
        }
    }
    Input::Ago { amount, unit } => {
        let (suffix, ms) =
            [("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)][usize::from(unit) % 4];
        let text = format!("{amount}{suffix}");
        assert_eq!(
            parse_time_at(&text, NOW),
            Ok(NOW - i64::from(amount) * ms),
            "{text}"
        );
    }
    Input::Size(n) => {
        assert_eq!(parse_size(&n.to_string()), Ok(n));
        assert_eq!(parse_size(&format!(" {n} ")), Ok(n));
    }
});
