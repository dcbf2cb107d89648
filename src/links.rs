//! Signed download links.
//!
//! A link token names a grant, a file and an expiry, and carries a truncated
//! HMAC-SHA256 tag over them made with a key that has an id, so keys can rotate
//! without breaking links already handed out:
//!
//! `GRANT.FILE.EXPIRES.KID.TAG` (all URL-safe; `EXPIRES` in Unix seconds).

use std::collections::HashMap;

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{
    db::{self, Db, keys::StoredKey},
    types::{new_id, now_ms},
};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag kept in a link: 128 bits.
const TAG_LEN: usize = 16;

/// What a valid token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkClaims {
    pub grant_id: String,
    pub file_id: String,
    pub expires_at: i64,
}

/// Why a link was refused, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    BadSignature,
    Expired,
    GrantRevoked,
    GrantExpired,
    FileNotInGrant,
}

impl Refusal {
    /// A stable code for programs and the audit log.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed_link",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "link_expired",
            Refusal::GrantRevoked => "grant_revoked",
            Refusal::GrantExpired => "grant_expired",
            Refusal::FileNotInGrant => "file_not_in_grant",
        }
    }

    /// What a person should read.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Malformed => {
                "This download link is not valid. Copy the whole link from your access page."
            }
            Refusal::BadSignature => "This download link has been altered or was not issued by this portal.",
            Refusal::Expired => "This download link has expired. Get a fresh one from your access page.",
            Refusal::GrantRevoked => "Your access to this model has been revoked.",
            Refusal::GrantExpired => "Your access to this model has expired. You may apply again.",
            Refusal::FileNotInGrant => "This file is not part of the model your access covers.",
        }
    }
}

/// The link-signing keys, newest first; the newest signs.
#[derive(Clone)]
pub struct LinkSigner {
    current: (String, Vec<u8>),
    keys: HashMap<String, Vec<u8>>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("current_kid", &self.current.0)
            .finish_non_exhaustive()
    }
}

/// Loads the keys kept for `purpose`, creating the first one if there is none.
pub async fn load_or_create_keys(
    db: &Db,
    purpose: &str,
    len: usize,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut stored = db::keys::list(db.pool(), purpose).await?;
    if stored.is_empty() {
        let mut secret = vec![0u8; len];
        rand::fill(secret.as_mut_slice());
        db::keys::insert_if_absent(
            db.pool(),
            &StoredKey {
                kid: new_id()[..8].to_owned(),
                purpose: purpose.to_owned(),
                secret: URL_SAFE_NO_PAD.encode(&secret),
                created_at: now_ms(),
            },
        )
        .await?;
        stored = db::keys::list(db.pool(), purpose).await?;
    }
    stored
        .into_iter()
        .map(|k| {
            let secret = URL_SAFE_NO_PAD
                .decode(&k.secret)
                .with_context(|| format!("stored key {} is not valid base64", k.kid))?;
            Ok((k.kid, secret))
        })
        .collect()
}

impl LinkSigner {
    pub async fn load(db: &Db) -> anyhow::Result<Self> {
        let keys = load_or_create_keys(db, "link", 32).await?;
        Ok(Self::from_keys(keys))
    }

    /// `keys` must be non-empty, newest first.
    pub fn from_keys(keys: Vec<(String, Vec<u8>)>) -> Self {
        let current = keys[0].clone();
        Self {
            current,
            keys: keys.into_iter().collect(),
        }
    }

    fn mac(secret: &[u8], grant_id: &str, file_id: &str, expires_at: i64, kid: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(format!("weightgate-link-v1\n{grant_id}\n{file_id}\n{expires_at}\n{kid}").as_bytes());
        mac
    }

    /// A token for `file_id` under `grant_id`, valid until `expires_at` (Unix seconds).
    pub fn sign(&self, grant_id: &str, file_id: &str, expires_at: i64) -> String {
        let (kid, secret) = &self.current;
        let tag = Self::mac(secret, grant_id, file_id, expires_at, kid)
            .finalize()
            .into_bytes();
        format!(
            "{grant_id}.{file_id}.{expires_at}.{kid}.{}",
            URL_SAFE_NO_PAD.encode(&tag[..TAG_LEN])
        )
    }

    /// Checks form, signature and expiry, cheapest first.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<LinkClaims, Refusal> {
        let parts: Vec<&str> = token.split('.').collect();
        let [grant_id, file_id, expires, kid, tag] = parts[..] else {
            return Err(Refusal::Malformed);
        };
        let is_id = |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !is_id(grant_id) || !is_id(file_id) || !is_id(kid) || tag.len() > 64 {
            return Err(Refusal::Malformed);
        }
        let expires_at: i64 = expires.parse().map_err(|_| Refusal::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Refusal::Malformed)?;
        if tag.len() != TAG_LEN {
            return Err(Refusal::Malformed);
        }
        let secret = self.keys.get(kid).ok_or(Refusal::BadSignature)?;
        Self::mac(secret, grant_id, file_id, expires_at, kid)
            .verify_truncated_left(&tag)
            .map_err(|_| Refusal::BadSignature)?;
        if expires_at <= now_secs {
            return Err(Refusal::Expired);
        }
        Ok(LinkClaims {
            grant_id: grant_id.to_owned(),
            file_id: file_id.to_owned(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::from_keys(vec![("k2".into(), vec![2; 32]), ("k1".into(), vec![1; 32])])
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let s = signer();
        let token = s.sign("g1", "f1", 1_000);
        let claims = s.verify(&token, 999).unwrap();
        assert_eq!(claims.grant_id, "g1");
        assert_eq!(claims.file_id, "f1");
        assert_eq!(s.verify(&token, 1_000), Err(Refusal::Expired));
    }

    #[test]
    fn any_change_to_a_link_breaks_its_signature() {
        let s = signer();
        let token = s.sign("g1", "f1", 1_000);
        for forged in [
            token.replacen("g1", "g2", 1),
            token.replacen("f1", "f2", 1),
            token.replacen("1000", "9000", 1),
        ] {
            assert_eq!(s.verify(&forged, 0), Err(Refusal::BadSignature), "{forged}");
        }
        let mut chars: Vec<char> = token.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        assert!(matches!(
            s.verify(&flipped, 0),
            Err(Refusal::BadSignature | Refusal::Malformed)
        ));
    }

    #[test]
    fn links_signed_with_an_older_key_still_verify() {
        let old = LinkSigner::from_keys(vec![("k1".into(), vec![1; 32])]);
        let token = old.sign("g1", "f1", 1_000);
        assert!(signer().verify(&token, 0).is_ok());
        let unknown = LinkSigner::from_keys(vec![("k9".into(), vec![9; 32])]);
        assert_eq!(unknown.verify(&token, 0), Err(Refusal::BadSignature));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let s = signer();
        for bad in [
            "",
            ".",
            "a.b.c.d",
            "a.b.c.d.e.f",
            "g.f.notanumber.k.AAAA",
            "g/.f.1.k.AAAAAAAAAAAAAAAAAAAAAA",
            "g.f.1.k.!!",
        ] {
            assert_eq!(s.verify(bad, 0), Err(Refusal::Malformed), "{bad}");
        }
    }
}
