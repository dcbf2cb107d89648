//! Secrets shared by every replica (link-signing and cookie keys).

use sqlx::{FromRow, any::AnyExecutor};

#[derive(Clone, Debug, FromRow)]
pub(crate) struct StoredKey {
    pub(crate) kid: String,
    pub(crate) purpose: String,
    pub(crate) secret: String,
    pub(crate) created_at: i64,
    /// When the key was retired: links it signed are refused from then on.
    pub(crate) retired_at: Option<i64>,
}

/// The purpose under which link-signing keys are stored.
pub(crate) const LINK: &str = "link";

/// Stores a key unless one with this id exists.
pub(crate) async fn insert_if_absent<'c>(e: impl AnyExecutor<'c>, k: &StoredKey) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, purpose, secret, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (kid) DO NOTHING",
    )
    .bind(&k.kid)
    .bind(&k.purpose)
    .bind(&k.secret)
    .bind(k.created_at)
    .execute(e)
    .await?;
    Ok(())
}

/// Keys for one purpose, newest first, retired ones included.
pub(crate) async fn list<'c>(e: impl AnyExecutor<'c>, purpose: &str) -> sqlx::Result<Vec<StoredKey>> {
    sqlx::query_as(
        "SELECT kid, purpose, secret, created_at, retired_at FROM signing_keys WHERE purpose = $1
         ORDER BY created_at DESC, kid DESC",
    )
    .bind(purpose)
    .fetch_all(e)
    .await
}

pub(super) const RETIRED: &str = "SELECT kid FROM signing_keys WHERE purpose = $1 AND retired_at IS NOT NULL";

/// The ids of the retired keys of one purpose.
pub(crate) async fn retired<'c>(
    e: impl AnyExecutor<'c>,
    purpose: &str,
) -> sqlx::Result<std::collections::HashSet<String>> {
    let kids: Vec<String> = sqlx::query_scalar(RETIRED).bind(purpose).fetch_all(e).await?;
    Ok(kids.into_iter().collect())
}

/// Retires a key; `false` when there is no such key, or it was retired already.
pub(crate) async fn retire<'c>(
    e: impl AnyExecutor<'c>,
    purpose: &str,
    kid: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE signing_keys SET retired_at = $3 WHERE purpose = $1 AND kid = $2 AND retired_at IS NULL",
    )
    .bind(purpose)
    .bind(kid)
    .bind(now)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}
