//! Secrets shared by every replica (link-signing and cookie keys).

use sqlx::{FromRow, any::AnyExecutor};

#[derive(Clone, Debug, FromRow)]
pub struct StoredKey {
    pub kid: String,
    pub purpose: String,
    pub secret: String,
    pub created_at: i64,
}

/// Stores a key unless one with this id exists.
pub async fn insert_if_absent<'c>(e: impl AnyExecutor<'c>, k: &StoredKey) -> sqlx::Result<()> {
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

/// Keys for one purpose, newest first.
pub async fn list<'c>(e: impl AnyExecutor<'c>, purpose: &str) -> sqlx::Result<Vec<StoredKey>> {
    sqlx::query_as(
        "SELECT kid, purpose, secret, created_at FROM signing_keys WHERE purpose = $1 ORDER BY created_at DESC, kid DESC",
    )
    .bind(purpose)
    .fetch_all(e)
    .await
}
