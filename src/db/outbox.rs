//! The e-mail outbox: messages are written in the same transaction as the state
//! change they announce, and a worker sends them afterwards.

use sqlx::{FromRow, any::AnyExecutor};

#[derive(Clone, Debug, FromRow)]
pub(crate) struct OutboxMessage {
    pub(crate) id: String,
    pub(crate) to_addr: String,
    pub(crate) subject: String,
    pub(crate) body: String,
    pub(crate) created_at: i64,
    pub(crate) attempts: i64,
}

pub(crate) async fn insert<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
    to: &str,
    subject: &str,
    body: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO outbox (id, to_addr, subject, body, created_at, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(id)
    .bind(to)
    .bind(subject)
    .bind(body)
    .bind(now)
    .execute(e)
    .await?;
    Ok(())
}

/// Whether any unsent message is due and unclaimed; a read, so idle workers
/// do not take the write lock.
pub(crate) async fn any_due<'c>(e: impl AnyExecutor<'c>, now: i64) -> sqlx::Result<bool> {
    let due: Option<String> = sqlx::query_scalar(
        "SELECT id FROM outbox
         WHERE sent_at IS NULL AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until < $1) LIMIT 1",
    )
    .bind(now)
    .fetch_optional(e)
    .await?;
    Ok(due.is_some())
}

/// Claims up to `limit` unsent messages whose next attempt is due and that no
/// other worker holds, leasing them to `owner` until `lease_until`. Two
/// workers never hold the same message: the lease is re-checked on the row
/// being updated.
pub(crate) async fn claim_due<'c>(
    e: impl AnyExecutor<'c>,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> sqlx::Result<Vec<OutboxMessage>> {
    let mut claimed: Vec<OutboxMessage> = sqlx::query_as(
        "UPDATE outbox SET lease_owner = $1, lease_until = $3
         WHERE sent_at IS NULL AND next_attempt_at <= $2 AND (lease_until IS NULL OR lease_until < $2)
           AND id IN (
             SELECT id FROM outbox
             WHERE sent_at IS NULL AND next_attempt_at <= $2 AND (lease_until IS NULL OR lease_until < $2)
             ORDER BY created_at, id LIMIT $4)
         RETURNING id, to_addr, subject, body, created_at, attempts",
    )
    .bind(owner)
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(e)
    .await?;
    claimed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(claimed)
}

pub(crate) async fn mark_sent<'c>(e: impl AnyExecutor<'c>, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox SET sent_at = $2, attempts = attempts + 1, last_error = NULL, lease_until = NULL WHERE id = $1",
    )
        .bind(id)
        .bind(now)
        .execute(e)
        .await?;
    Ok(())
}

pub(crate) async fn mark_failed<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
    next_attempt_at: i64,
    error: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3, lease_until = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(next_attempt_at)
    .bind(error)
    .execute(e)
    .await?;
    Ok(())
}

pub(crate) async fn count_unsent<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        .fetch_one(e)
        .await
}

/// The state of the messages not sent yet: how many, the oldest's creation
/// time, and the last error a send met.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct Backlog {
    pub(crate) unsent: i64,
    pub(crate) oldest: Option<i64>,
    pub(crate) last_error: Option<String>,
}

pub(crate) async fn backlog<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Backlog> {
    sqlx::query_as(
        "SELECT COUNT(*) AS unsent, MIN(created_at) AS oldest,
            (SELECT last_error FROM outbox WHERE sent_at IS NULL AND last_error IS NOT NULL
             ORDER BY next_attempt_at DESC LIMIT 1) AS last_error
         FROM outbox WHERE sent_at IS NULL",
    )
    .fetch_one(e)
    .await
}
