//! Researchers and their one-time sign-in links.

use sqlx::any::AnyExecutor;

use crate::db::Tx;

/// The id of the researcher with this (normalised) e-mail, if any.
pub(crate) async fn find_id_by_email<'c>(
    e: impl AnyExecutor<'c>,
    email: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT id FROM researchers WHERE email = $1")
        .bind(email)
        .fetch_optional(e)
        .await
}

/// The e-mail of a researcher.
pub(crate) async fn email_of<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT email FROM researchers WHERE id = $1")
        .bind(id)
        .fetch_optional(e)
        .await
}

pub(crate) async fn insert_signin_token(
    tx: &mut Tx,
    token_hash: &str,
    researcher_id: &str,
    now: i64,
    expires_at: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO signin_tokens (token_hash, researcher_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash)
    .bind(researcher_id)
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How many sign-in links a researcher was sent since `since`.
pub(crate) async fn count_signin_tokens_since(
    tx: &mut Tx,
    researcher_id: &str,
    since: i64,
) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM signin_tokens WHERE researcher_id = $1 AND created_at >= $2")
        .bind(researcher_id)
        .bind(since)
        .fetch_one(&mut **tx)
        .await
}

/// Uses up a sign-in link that is unused and unexpired; the researcher's id,
/// or `None` when the link is unknown, used or expired.
pub(crate) async fn consume_signin_token(
    tx: &mut Tx,
    token_hash: &str,
    now: i64,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "UPDATE signin_tokens SET used_at = $2
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2
         RETURNING researcher_id",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await
}

/// Forgets sign-in links that expired before `before`.
pub(crate) async fn delete_expired_signin_tokens<'c>(
    e: impl AnyExecutor<'c>,
    before: i64,
) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM signin_tokens WHERE expires_at < $1")
        .bind(before)
        .execute(e)
        .await?;
    Ok(done.rows_affected())
}
