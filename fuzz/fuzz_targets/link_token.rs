//! Signed link tokens (`GRANT.FILE.EXPIRES.KID.TAG`): whatever text arrives in
//! `/dl/TOKEN/NAME`, a token that verifies is exactly one the portal signed.
#![no_main]

use std::{
    pin::pin,
    sync::OnceLock,
    task::{Context, Poll, Waker},
};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use weightgate::crypto::links::{LinkClaims, LinkSigner, Refusal};

#[derive(Arbitrary, Debug)]
enum Input {
    /// Any text presented as a token.
    Text { now: i64, token: String },
    /// A token the portal signed, checked at `now`.
    Signed {
        grant: String,
        file: String,
        expires: i64,
        now: i64,
    },
    /// A token the portal signed with one of its five parts replaced.
    Spliced {
        grant: String,
        file: String,
        expires: i64,
        part: u8,
        replacement: String,
    },
}

/// Links live at most this long, as a portal's `WEIGHTGATE_LINK_TTL`.
const LIFETIME: std::time::Duration = std::time::Duration::from_secs(1 << 40);

/// Signs with `k2`; verifies `k2` and the older `k1`.
fn signer() -> &'static LinkSigner {
    static SIGNER: OnceLock<LinkSigner> = OnceLock::new();
    SIGNER.get_or_init(|| LinkSigner::from_keys(vec![("k2".into(), vec![2; 32]), ("k1".into(), vec![1; 32])], LIFETIME))
}

/// Signs with the older key `k1`.
fn old_signer() -> &'static LinkSigner {
    static SIGNER: OnceLock<LinkSigner> = OnceLock::new();
    SIGNER.get_or_init(|| LinkSigner::from_keys(vec![("k1".into(), vec![1; 32])], LIFETIME))
}

/// A signer without a database never waits, so one poll settles it.
fn verify(token: &str, now: i64) -> Result<LinkClaims, Refusal> {
    let mut future = pin!(signer().verify(token, now));
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("verifying without a database waited"),
    }
}

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A token that verifies is byte for byte the one its key signs for its claims.
fn assert_canonical(token: &str, claims: &LinkClaims) {
    let kid = token.split('.').nth(3).expect("a verified token has a key id");
    let signer = match kid {
        "k2" => signer(),
        "k1" => old_signer(),
        other => panic!("verified under unknown key {other:?}"),
    };
    assert_eq!(
        signer.sign(&claims.grant_id, &claims.file_id, claims.expires_at),
        token,
        "a second spelling of a link verified"
    );
}

fuzz_target!(|input: Input| match input {
    Input::Text { now, token } => match verify(&token, now) {
        Ok(claims) => {
            assert!(claims.expires_at > now);
            assert_canonical(&token, &claims);
        }
        Err(Refusal::Expired) => {
            // Only an authentic token can be called expired: just before its
            // expiry it verifies.
            let expires: i64 = token.split('.').nth(2).unwrap().parse().unwrap();
            assert!(expires <= now);
            if expires > i64::MIN {
                let claims = verify(&token, expires - 1).expect("valid just before expiry");
                assert_canonical(&token, &claims);
            }
        }
        Err(Refusal::Malformed | Refusal::BadSignature) => {}
        Err(other) => panic!("a link check without a database refused with {other:?}"),
    },
    Input::Signed {
        grant,
        file,
        expires,
        now,
    } => {
        let token = signer().sign(&grant, &file, expires);
        let result = verify(&token, now);
        if !is_id(&grant) || !is_id(&file) {
            assert_eq!(result, Err(Refusal::Malformed), "{token}");
        } else if expires <= now {
            assert_eq!(result, Err(Refusal::Expired), "{token}");
        } else {
            let claims = LinkClaims {
                grant_id: grant,
                file_id: file,
                expires_at: expires,
            };
            assert_eq!(result.as_ref(), Ok(&claims), "{token}");
            assert_canonical(&token, &claims);
        }
    }
    Input::Spliced {
        grant,
        file,
        expires,
        part,
        replacement,
    } => {
        if !is_id(&grant) || !is_id(&file) {
            return;
        }
        let token = signer().sign(&grant, &file, expires);
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[usize::from(part % 5)] = &replacement;
        let forged = parts.join(".");
        if forged == token {
            return;
        }
        if let Ok(claims) = verify(&forged, i64::MIN) {
            panic!("an altered token {forged:?} of {token:?} verified as {claims:?}");
        }
    }
});
