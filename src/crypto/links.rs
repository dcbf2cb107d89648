//! Signed download links.
//!
//! A link token names a grant, a file and an expiry, and carries a truncated
//! HMAC-SHA256 tag over them made with a key that has an id, so keys can rotate
//! without breaking links already handed out:
//!
//! `GRANT.FILE.EXPIRES.KID.TAG` (all URL-safe; `EXPIRES` in Unix seconds).

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{
    audit::{self, Action, Event},
    db::{self, Db, keys::StoredKey},
    types::{new_id, now_ms},
};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the tag kept in a link: 128 bits.
const TAG_LEN: usize = 16;

/// What a valid token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinkClaims {
    pub(crate) grant_id: String,
    pub(crate) file_id: String,
    pub(crate) expires_at: i64,
    /// The key that signed the link.
    pub(crate) kid: String,
}

/// Why a link was refused, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    BadSignature,
    /// Signed with a key an operator has retired (`weightgate keys retire`).
    KeyRetired,
    /// Valid until later than any link this portal makes: made with a
    /// leaked key, not by the portal.
    ExpiryTooFar,
    Expired,
    GrantRevoked,
    GrantExpired,
    QuotaSpent,
    FileNotInGrant,
}

impl Refusal {
    /// A stable code for programs and the audit log.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed_link",
            Refusal::BadSignature => "bad_signature",
            Refusal::KeyRetired => "key_retired",
            Refusal::ExpiryTooFar => "expiry_too_far",
            Refusal::Expired => "link_expired",
            Refusal::GrantRevoked => "grant_revoked",
            Refusal::GrantExpired => "grant_expired",
            Refusal::QuotaSpent => "quota_spent",
            Refusal::FileNotInGrant => "file_not_in_grant",
        }
    }

    /// The refusal with this code, if any.
    pub(crate) fn from_code(code: &str) -> Option<Self> {
        [
            Refusal::Malformed,
            Refusal::BadSignature,
            Refusal::KeyRetired,
            Refusal::ExpiryTooFar,
            Refusal::Expired,
            Refusal::GrantRevoked,
            Refusal::GrantExpired,
            Refusal::QuotaSpent,
            Refusal::FileNotInGrant,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }

    /// What a person should read.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::Malformed => {
                "This download link is not valid. Copy the whole link from your access page."
            }
            Refusal::BadSignature => "This download link has been altered or was not issued by this portal.",
            Refusal::KeyRetired => {
                "This download link was signed with a key that is no longer trusted. Get a fresh one from your access page."
            }
            Refusal::ExpiryTooFar => "This download link was not issued by this portal.",
            Refusal::Expired => "This download link has expired. Get a fresh one from your access page.",
            Refusal::GrantRevoked => "Your access to this model has been revoked.",
            Refusal::GrantExpired => "Your access to this model has expired. You may apply again.",
            Refusal::QuotaSpent => {
                "Your access has delivered all it allows. Files you have completed can still be fetched again."
            }
            Refusal::FileNotInGrant => "This file is not part of the model your access covers.",
        }
    }
}

/// The link-signing keys. The newest signs; any known one verifies, so a key
/// rotation never breaks links already handed out. Keys live in the database,
/// shared by every replica: a replica that meets an unknown key id reloads
/// them, and [`LinkSigner::refresh_periodically`] makes it sign with a newer
/// key soon after a rotation.
pub struct LinkSigner {
    db: Option<Db>,
    ring: RwLock<KeyRing>,
    last_reload: Mutex<Option<Instant>>,
    /// The longest a link this portal makes is valid.
    lifetime: Duration,
}

#[derive(Clone)]
struct KeyRing {
    current: (String, Vec<u8>),
    keys: HashMap<String, Vec<u8>>,
    /// Keys retired by an operator, as this replica last read them; the
    /// audit writer checks again in the transaction that records a fetch.
    retired: HashSet<String>,
}

impl KeyRing {
    /// `keys` must be non-empty, newest first.
    fn new(keys: Vec<(String, Vec<u8>)>, retired: HashSet<String>) -> Self {
        Self {
            current: keys[0].clone(),
            keys: keys.into_iter().collect(),
            retired,
        }
    }
}

/// The purpose under which link keys are stored.
pub(crate) const LINK_KEYS: &str = db::keys::LINK;

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kid = self.ring.read().map(|r| r.current.0.clone()).unwrap_or_default();
        f.debug_struct("LinkSigner")
            .field("current_kid", &kid)
            .finish_non_exhaustive()
    }
}

/// Loads the keys kept for `purpose`, creating the first one if there is none.
pub(crate) async fn load_or_create_keys(
    db: &Db,
    purpose: &str,
    len: usize,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let live = |keys: Vec<StoredKey>| {
        keys.into_iter()
            .filter(|k| k.retired_at.is_none())
            .collect::<Vec<_>>()
    };
    let mut stored = live(db::keys::list(db.pool(), purpose).await?);
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
                retired_at: None,
            },
        )
        .await?;
        stored = live(db::keys::list(db.pool(), purpose).await?);
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

/// The link keys: the live ones, newest first, and the retired ones.
async fn load_ring(db: &Db) -> anyhow::Result<KeyRing> {
    let live = load_or_create_keys(db, LINK_KEYS, 32).await?;
    let mut ring = KeyRing::new(live, db::keys::retired(db.pool(), LINK_KEYS).await?);
    for k in db::keys::list(db.pool(), LINK_KEYS).await? {
        if k.retired_at.is_some() {
            let secret = URL_SAFE_NO_PAD
                .decode(&k.secret)
                .with_context(|| format!("stored key {} is not valid base64", k.kid))?;
            ring.keys.insert(k.kid, secret);
        }
    }
    Ok(ring)
}

impl LinkSigner {
    /// The keys in the database; links may be valid for at most `lifetime`.
    pub(crate) async fn load(db: &Db, lifetime: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            db: Some(db.clone()),
            ring: RwLock::new(load_ring(db).await?),
            last_reload: Mutex::new(Some(Instant::now())),
            lifetime,
        })
    }

    /// A signer over fixed keys, newest first; `keys` must be non-empty.
    #[cfg(test)]
    fn from_keys(keys: Vec<(String, Vec<u8>)>, lifetime: Duration) -> Self {
        Self {
            db: None,
            ring: RwLock::new(KeyRing::new(keys, HashSet::new())),
            last_reload: Mutex::new(None),
            lifetime,
        }
    }

    fn ring(&self) -> KeyRing {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the keys again from the database, at most once a second.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let Some(db) = &self.db else { return Ok(()) };
        {
            let mut last = self.last_reload.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let ring = load_ring(db).await?;
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
        Ok(())
    }

    /// Reloads the keys every `every`, so a rotation reaches every replica.
    pub(crate) async fn refresh_periodically(self: std::sync::Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if let Err(err) = self.reload().await {
                tracing::warn!(error = %format!("{err:#}"), "cannot reload link-signing keys");
            }
        }
    }

    /// Makes sure the key that signs new links has not been retired since
    /// this replica last read the keys (reading them again if it has), so
    /// that no link is made that its first fetch would refuse. One small
    /// query; called before a page of links is signed.
    pub(crate) async fn refresh_if_retired(&self) -> anyhow::Result<()> {
        let Some(db) = &self.db else { return Ok(()) };
        let kid = self.current_kid();
        if db::keys::retired(db.pool(), LINK_KEYS).await?.contains(&kid) {
            let ring = load_ring(db).await?;
            *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
        }
        Ok(())
    }

    /// The id of the key that signs new links.
    pub fn current_kid(&self) -> String {
        self.ring().current.0
    }

    fn mac(secret: &[u8], grant_id: &str, file_id: &str, expires_at: i64, kid: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(format!("weightgate-link-v1\n{grant_id}\n{file_id}\n{expires_at}\n{kid}").as_bytes());
        mac
    }

    /// A token for `file_id` under `grant_id`, valid until `expires_at` (Unix seconds).
    pub fn sign(&self, grant_id: &str, file_id: &str, expires_at: i64) -> String {
        let (kid, secret) = self.ring().current;
        let tag = Self::mac(&secret, grant_id, file_id, expires_at, &kid)
            .finalize()
            .into_bytes();
        format!(
            "{grant_id}.{file_id}.{expires_at}.{kid}.{}",
            URL_SAFE_NO_PAD.encode(&tag[..TAG_LEN])
        )
    }

    /// Checks form, signature and expiry, cheapest first. A key id this
    /// replica has not seen yet makes it reload the keys once.
    pub(crate) async fn verify(&self, token: &str, now_secs: i64) -> Result<LinkClaims, Refusal> {
        match self.verify_with(&self.ring(), token, now_secs) {
            Err(Refusal::BadSignature) if self.db.is_some() => {
                if let Err(err) = self.reload().await {
                    tracing::warn!(error = %format!("{err:#}"), "cannot reload link-signing keys");
                }
                self.verify_with(&self.ring(), token, now_secs)
            }
            other => other,
        }
    }

    fn verify_with(&self, ring: &KeyRing, token: &str, now_secs: i64) -> Result<LinkClaims, Refusal> {
        let parts: Vec<&str> = token.split('.').collect();
        let [grant_id, file_id, expires, kid, tag] = parts[..] else {
            return Err(Refusal::Malformed);
        };
        let is_id = |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !is_id(grant_id) || !is_id(file_id) || !is_id(kid) || tag.len() > 64 {
            return Err(Refusal::Malformed);
        }
        let expires_at: i64 = expires.parse().map_err(|_| Refusal::Malformed)?;
        // The tag covers the number, not its spelling: without this, `+1000`
        // and `01000` would be further valid spellings of the same link.
        if expires_at.to_string() != expires {
            return Err(Refusal::Malformed);
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Refusal::Malformed)?;
        if tag.len() != TAG_LEN {
            return Err(Refusal::Malformed);
        }
        let secret = ring.keys.get(kid).ok_or(Refusal::BadSignature)?;
        Self::mac(secret, grant_id, file_id, expires_at, kid)
            .verify_truncated_left(&tag)
            .map_err(|_| Refusal::BadSignature)?;
        if ring.retired.contains(kid) {
            return Err(Refusal::KeyRetired);
        }
        // No link the portal signs outlives the link lifetime (a minute's
        // grace for clocks): a later expiry was made by someone else with
        // the key.
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        if expires_at > now_secs.saturating_add(lifetime).saturating_add(60) {
            return Err(Refusal::ExpiryTooFar);
        }
        if expires_at <= now_secs {
            return Err(Refusal::Expired);
        }
        Ok(LinkClaims {
            grant_id: grant_id.to_owned(),
            file_id: file_id.to_owned(),
            expires_at,
            kid: kid.to_owned(),
        })
    }
}

/// Adds a new link-signing key, which signs from then on; older keys keep
/// verifying the links they signed. Returns the new key id.
pub(crate) async fn rotate(db: &Db, actor: &str) -> anyhow::Result<String> {
    let mut secret = vec![0u8; 32];
    rand::fill(secret.as_mut_slice());
    let kid = new_id()[..8].to_owned();
    let mut tx = db.begin().await?;
    db::keys::insert_if_absent(
        &mut *tx,
        &StoredKey {
            kid: kid.clone(),
            purpose: LINK_KEYS.to_owned(),
            secret: URL_SAFE_NO_PAD.encode(&secret),
            created_at: now_ms(),
            retired_at: None,
        },
    )
    .await?;
    let event = Event::ok(Action::KeysRotated)
        .actor(actor.to_owned())
        .subject(format!("link key {kid}"));
    audit::append(&mut tx, db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(kid)
}

/// Retires a link-signing key: links it signed are refused with
/// `key_retired` from now on, on every replica (the audit writer checks it
/// when it records each fetch). Retiring the key that signs new links
/// rotates first. Returns the key that signs new links afterwards.
pub(crate) async fn retire(db: &Db, kid: &str, actor: &str) -> anyhow::Result<String> {
    let keys = db::keys::list(db.pool(), LINK_KEYS).await?;
    let Some(key) = keys.iter().find(|k| k.kid == kid) else {
        anyhow::bail!("there is no link-signing key {kid}: `weightgate keys list` shows them");
    };
    anyhow::ensure!(
        key.retired_at.is_none(),
        "link-signing key {kid} is already retired"
    );
    let current = keys
        .iter()
        .find(|k| k.retired_at.is_none())
        .map(|k| k.kid.clone());
    let signing = if current.as_deref() == Some(kid) {
        rotate(db, actor).await?
    } else {
        current.unwrap_or_default()
    };
    let mut tx = db.begin().await?;
    anyhow::ensure!(
        db::keys::retire(&mut *tx, LINK_KEYS, kid, now_ms()).await?,
        "link-signing key {kid} is already retired"
    );
    let mut event = Event::ok(Action::KeysRetired)
        .actor(actor.to_owned())
        .subject(format!("link key {kid}"));
    event.reason = Some(format!(
        "links it signed are refused; key {signing} signs new links"
    ));
    audit::append(&mut tx, db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(signing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::from_keys(
            vec![("k2".into(), vec![2; 32]), ("k1".into(), vec![1; 32])],
            Duration::from_secs(100_000),
        )
    }

    #[tokio::test]
    async fn a_signed_link_verifies_until_it_expires() {
        let s = signer();
        let token = s.sign("g1", "f1", 1_000);
        let claims = s.verify(&token, 999).await.unwrap();
        assert_eq!(claims.grant_id, "g1");
        assert_eq!(claims.file_id, "f1");
        assert_eq!(s.verify(&token, 1_000).await, Err(Refusal::Expired));
    }

    #[tokio::test]
    async fn any_change_to_a_link_breaks_its_signature() {
        let s = signer();
        let token = s.sign("g1", "f1", 1_000);
        for forged in [
            token.replacen("g1", "g2", 1),
            token.replacen("f1", "f2", 1),
            token.replacen("1000", "9000", 1),
        ] {
            assert_eq!(s.verify(&forged, 0).await, Err(Refusal::BadSignature), "{forged}");
        }
        let mut chars: Vec<char> = token.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        assert!(matches!(
            s.verify(&flipped, 0).await,
            Err(Refusal::BadSignature | Refusal::Malformed)
        ));
    }

    #[tokio::test]
    async fn a_link_valid_past_the_link_lifetime_was_not_made_here() {
        let s = signer();
        assert!(
            s.verify(&s.sign("g1", "f1", 100_060), 0).await.is_ok(),
            "a minute's grace"
        );
        assert_eq!(
            s.verify(&s.sign("g1", "f1", 100_061), 0).await,
            Err(Refusal::ExpiryTooFar)
        );
        assert_eq!(
            s.verify(&s.sign("g1", "f1", i64::MAX), 0).await,
            Err(Refusal::ExpiryTooFar)
        );
    }

    #[tokio::test]
    async fn links_signed_with_an_older_key_still_verify() {
        let old = LinkSigner::from_keys(vec![("k1".into(), vec![1; 32])], Duration::from_secs(100_000));
        let token = old.sign("g1", "f1", 1_000);
        assert!(signer().verify(&token, 0).await.is_ok());
        let unknown = LinkSigner::from_keys(vec![("k9".into(), vec![9; 32])], Duration::from_secs(100_000));
        assert_eq!(unknown.verify(&token, 0).await, Err(Refusal::BadSignature));
    }

    #[tokio::test]
    async fn a_link_has_one_spelling_only() {
        let s = signer();
        let token = s.sign("g1", "f1", 1_000);
        assert!(s.verify(&token, 0).await.is_ok());
        for respelled in [
            token.replacen(".1000.", ".01000.", 1),
            token.replacen(".1000.", ".+1000.", 1),
        ] {
            assert_eq!(
                s.verify(&respelled, 0).await,
                Err(Refusal::Malformed),
                "{respelled}"
            );
        }
        let zero = s.sign("g1", "f1", 0);
        assert_eq!(
            s.verify(&zero.replacen(".0.", ".-0.", 1), -1).await,
            Err(Refusal::Malformed)
        );
    }

    #[tokio::test]
    async fn garbage_is_malformed_not_a_panic() {
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
            assert_eq!(s.verify(bad, 0).await, Err(Refusal::Malformed), "{bad}");
        }
    }
}
