//! API tokens and the answers kept for idempotent writes.

use sqlx::{FromRow, any::AnyExecutor};

#[derive(Clone, Debug, FromRow)]
pub(crate) struct TokenRow {
    pub(crate) id: String,
    pub(crate) reviewer_id: String,
    pub(crate) name: String,
    /// Comma-separated scope names.
    pub(crate) scopes: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
}

const COLUMNS: &str = "SELECT id, reviewer_id, name, scopes, created_at, expires_at, revoked_at, last_used_at
    FROM api_tokens";

pub(crate) struct NewToken<'a> {
    pub(crate) id: &'a str,
    pub(crate) reviewer_id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) scopes: &'a str,
    pub(crate) secret_hash: &'a str,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
}

pub(crate) async fn insert<'c>(e: impl AnyExecutor<'c>, t: &NewToken<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_tokens (id, reviewer_id, name, scopes, secret_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(t.id)
    .bind(t.reviewer_id)
    .bind(t.name)
    .bind(t.scopes)
    .bind(t.secret_hash)
    .bind(t.created_at)
    .bind(t.expires_at)
    .execute(e)
    .await?;
    Ok(())
}

pub(crate) async fn find_by_secret_hash<'c>(
    e: impl AnyExecutor<'c>,
    secret_hash: &str,
) -> sqlx::Result<Option<TokenRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE secret_hash = $1")))
        .bind(secret_hash)
        .fetch_optional(e)
        .await
}

pub(crate) async fn find<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<TokenRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE id = $1")))
        .bind(id)
        .fetch_optional(e)
        .await
}

/// A reviewer's tokens, newest first; `None` for every reviewer's.
pub(crate) async fn list<'c>(
    e: impl AnyExecutor<'c>,
    reviewer_id: Option<&str>,
) -> sqlx::Result<Vec<TokenRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{COLUMNS} WHERE ($1 IS NULL OR reviewer_id = $1) ORDER BY created_at DESC, id"
    )))
    .bind(reviewer_id)
    .fetch_all(e)
    .await
}

/// Whether the reviewer has a token of this name that is neither revoked
/// nor expired.
pub(crate) async fn name_in_use<'c>(
    e: impl AnyExecutor<'c>,
    reviewer_id: &str,
    name: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_tokens
         WHERE reviewer_id = $1 AND name = $2 AND revoked_at IS NULL AND expires_at > $3",
    )
    .bind(reviewer_id)
    .bind(name)
    .bind(now)
    .fetch_one(e)
    .await?;
    Ok(n > 0)
}

/// Revokes a token; `false` if it was revoked already.
pub(crate) async fn revoke<'c>(e: impl AnyExecutor<'c>, id: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn used<'c>(e: impl AnyExecutor<'c>, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now)
        .execute(e)
        .await?;
    Ok(())
}

/// What is kept of a write sent with an Idempotency-Key.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct Kept {
    pub(crate) request_hash: String,
    /// `None` while the first request is still running.
    pub(crate) status: Option<i64>,
    pub(crate) body: Option<String>,
    pub(crate) created_at: i64,
}

/// Claims `key` for a request; `false` if the token already used it.
pub(crate) async fn claim_key<'c>(
    e: impl AnyExecutor<'c>,
    token_id: &str,
    key: &str,
    request_hash: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO api_idempotency (token_id, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (token_id, idem_key) DO NOTHING",
    )
    .bind(token_id)
    .bind(key)
    .bind(request_hash)
    .bind(now)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn kept<'c>(
    e: impl AnyExecutor<'c>,
    token_id: &str,
    key: &str,
) -> sqlx::Result<Option<Kept>> {
    sqlx::query_as(
        "SELECT request_hash, status, body, created_at FROM api_idempotency WHERE token_id = $1 AND idem_key = $2",
    )
    .bind(token_id)
    .bind(key)
    .fetch_optional(e)
    .await
}

/// How many keys the token holds now.
pub(crate) async fn keys_held<'c>(e: impl AnyExecutor<'c>, token_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_idempotency WHERE token_id = $1")
        .bind(token_id)
        .fetch_one(e)
        .await
}

pub(crate) async fn keep_answer<'c>(
    e: impl AnyExecutor<'c>,
    token_id: &str,
    key: &str,
    status: i64,
    body: &str,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE api_idempotency SET status = $3, body = $4 WHERE token_id = $1 AND idem_key = $2")
        .bind(token_id)
        .bind(key)
        .bind(status)
        .bind(body)
        .execute(e)
        .await?;
    Ok(())
}

/// Gives a key back: the request did nothing, so sending it again may.
pub(crate) async fn release_key<'c>(e: impl AnyExecutor<'c>, token_id: &str, key: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM api_idempotency WHERE token_id = $1 AND idem_key = $2 AND status IS NULL")
        .bind(token_id)
        .bind(key)
        .execute(e)
        .await?;
    Ok(())
}

pub(crate) async fn forget_answers_before<'c>(e: impl AnyExecutor<'c>, before: i64) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM api_idempotency WHERE created_at < $1")
        .bind(before)
        .execute(e)
        .await?;
    Ok(done.rows_affected())
}
