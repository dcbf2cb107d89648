//! Reviewer sessions, stored in the database so that any replica can serve them.

use sqlx::any::AnyExecutor;

/// Inserts a new session; `false` if the id is taken.
pub async fn create<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
    data: &str,
    expires_at: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO sessions (id, data, expires_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(data)
    .bind(expires_at)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Saves a session that exists. A session deleted meanwhile (signed out,
/// or its id cycled, by a request running beside this one) stays deleted:
/// a concurrent request must not bring back a session its owner ended.
pub async fn save<'c>(e: impl AnyExecutor<'c>, id: &str, data: &str, expires_at: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE sessions SET data = $2, expires_at = $3 WHERE id = $1")
        .bind(id)
        .bind(data)
        .bind(expires_at)
        .execute(e)
        .await?;
    Ok(())
}

pub async fn load<'c>(e: impl AnyExecutor<'c>, id: &str, now: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT data FROM sessions WHERE id = $1 AND expires_at > $2")
        .bind(id)
        .bind(now)
        .fetch_optional(e)
        .await
}

pub async fn delete<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sessions WHERE id = $1")
        .bind(id)
        .execute(e)
        .await?;
    Ok(())
}

pub(crate) async fn delete_expired<'c>(e: impl AnyExecutor<'c>, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
        .bind(now)
        .execute(e)
        .await?;
    Ok(done.rows_affected())
}
