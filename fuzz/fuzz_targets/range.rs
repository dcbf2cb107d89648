//! `Range` headers on `/dl/...`: a range the portal honours lies inside the
//! file, and a single well-formed range is answered as RFC 9110 §14.1.2 says.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weightgate::domain::grants::requested_range;

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any header text.
    Text { size: u64, header: String },
    /// One range in the header's plain forms.
    Single {
        first: Option<u64>,
        last: Option<u64>,
        size: u64,
    },
}

/// What RFC 9110 asks for `bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX`:
/// `Some(Some(start..end))` to send those bytes, `Some(None)` for 416.
/// `None` where the RFC lets the server choose (an invalid range may be
/// refused or ignored).
fn expected(first: Option<u64>, last: Option<u64>, size: u64) -> Option<Option<(u64, u64)>> {
    match (first, last) {
        (Some(first), Some(last)) if first > last => None,
        (Some(first), _) if first >= size => Some(None),
        (Some(first), Some(last)) => Some(Some((first, last.min(size - 1) + 1))),
        (Some(first), None) => Some(Some((first, size))),
        (None, Some(0)) => Some(None),
        (None, Some(_)) if size == 0 => Some(None),
        (None, Some(suffix)) => Some(Some((size - suffix.min(size), size))),
        (None, None) => None,
    }
}

fn header_of(first: Option<u64>, last: Option<u64>) -> String {
    let part = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    format!("bytes={}-{}", part(first), part(last))
}

fuzz_target!(|input: Input| {
    let (header, size, oracle) = match input {
        Input::Text { size, header } => (header, size, None),
        Input::Single { first, last, size } => (header_of(first, last), size, expected(first, last, size)),
    };
    let got = requested_range(Some(&header), size);
    if let Ok(Some((start, end))) = got {
        assert!(
            start < end && end <= size,
            "{header:?} on {size} bytes gave {start}..{end}"
        );
    }
    match oracle {
        Some(Some(range)) => {
            assert_eq!(got.ok(), Some(Some(range)), "{header:?} on {size} bytes");
        }
        Some(None) => {
            assert!(
                !matches!(got, Ok(Some(_))),
                "{header:?} on {size} bytes is unsatisfiable"
            );
        }
        None => {}
    }
    assert!(matches!(requested_range(None, size), Ok(None)));
});
