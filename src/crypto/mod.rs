//! The portal's keys and hashes: signed download links, signed release
//! manifests, model-signing signatures and reviewers' password hashes.
//! Mechanisms only; who gets a link or may sign in is decided in `domain`.

pub(crate) mod links;
pub(crate) mod manifests;
pub(crate) mod model_signing;
pub(crate) mod passwords;

use crate::{
    db::{self, Db, keys::StoredKey},
    types::now_ms,
};

/// The stored key for `purpose`, made with `make` (its id and secret) and
/// stored on first use. Every replica shares it through the database; when
/// two make one at once, both read back the same one.
pub(crate) async fn stored_key(
    db: &Db,
    purpose: &str,
    make: impl FnOnce() -> anyhow::Result<(String, String)>,
) -> anyhow::Result<StoredKey> {
    let mut stored = db::keys::list(db.pool(), purpose).await?;
    if stored.is_empty() {
        let (kid, secret) = make()?;
        db::keys::insert_if_absent(
            db.pool(),
            &StoredKey {
                kid,
                purpose: purpose.to_owned(),
                secret,
                created_at: now_ms(),
                retired_at: None,
            },
        )
        .await?;
        stored = db::keys::list(db.pool(), purpose).await?;
    }
    // The oldest: the one every replica settled on.
    stored
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no {purpose} key was stored"))
}
