//! Webhook subscriptions, their outbox of messages, and the attempts made to
//! deliver each.

use sqlx::{FromRow, any::AnyExecutor};

#[derive(Clone, Debug, FromRow)]
pub(crate) struct Subscription {
    pub(crate) id: String,
    pub(crate) owner_id: String,
    pub(crate) url: String,
    /// Comma-separated event types.
    pub(crate) event_types: String,
    pub(crate) secret: String,
    pub(crate) previous_secret: Option<String>,
    pub(crate) previous_until: Option<i64>,
    pub(crate) created_at: i64,
    /// It hears of events after this one only.
    pub(crate) from_seq: i64,
    pub(crate) disabled_at: Option<i64>,
    pub(crate) disabled_reason: Option<String>,
}

const SUBSCRIPTION: &str =
    "SELECT id, owner_id, url, event_types, secret, previous_secret, previous_until, created_at,
    from_seq, disabled_at, disabled_reason FROM webhook_subscriptions";

pub(crate) async fn insert<'c>(e: impl AnyExecutor<'c>, s: &Subscription) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_subscriptions (id, owner_id, url, event_types, secret, created_at, from_seq)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&s.id)
    .bind(&s.owner_id)
    .bind(&s.url)
    .bind(&s.event_types)
    .bind(&s.secret)
    .bind(s.created_at)
    .bind(s.from_seq)
    .execute(e)
    .await?;
    Ok(())
}

pub(crate) async fn find<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<Subscription>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{SUBSCRIPTION} WHERE id = $1")))
        .bind(id)
        .fetch_optional(e)
        .await
}

/// A reviewer's subscriptions, or everyone's for `None`, newest first.
pub(crate) async fn list<'c>(
    e: impl AnyExecutor<'c>,
    owner: Option<&str>,
) -> sqlx::Result<Vec<Subscription>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SUBSCRIPTION} WHERE ($1 IS NULL OR owner_id = $1) ORDER BY created_at DESC, id"
    )))
    .bind(owner)
    .fetch_all(e)
    .await
}

/// A subscription of an enabled owner, with what the fold needs. A
/// disabled subscription still hears: its messages wait for it to be
/// enabled again.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct Listener {
    pub(crate) id: String,
    pub(crate) owner_id: String,
    pub(crate) event_types: String,
    pub(crate) from_seq: i64,
    pub(crate) owner_is_admin: i64,
}

pub(crate) async fn listeners<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<Listener>> {
    sqlx::query_as(
        "SELECT s.id, s.owner_id, s.event_types, s.from_seq, r.is_admin AS owner_is_admin
         FROM webhook_subscriptions s JOIN reviewers r ON r.id = s.owner_id
         WHERE r.disabled_at IS NULL ORDER BY s.id",
    )
    .fetch_all(e)
    .await
}

/// How far the log has been read into messages.
pub(crate) async fn cursor<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT last_seq FROM webhook_cursor WHERE id = 1")
        .fetch_one(e)
        .await
}

/// Moves the cursor from `from` to `to`; `false` if another replica moved it
/// first (its transaction then wrote the same messages).
pub(crate) async fn advance_cursor<'c>(e: impl AnyExecutor<'c>, from: i64, to: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE webhook_cursor SET last_seq = $2 WHERE id = 1 AND last_seq = $1")
        .bind(from)
        .bind(to)
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn set_disabled<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
    at: Option<i64>,
    reason: Option<&str>,
) -> sqlx::Result<bool> {
    let done =
        sqlx::query("UPDATE webhook_subscriptions SET disabled_at = $2, disabled_reason = $3 WHERE id = $1")
            .bind(id)
            .bind(at)
            .bind(reason)
            .execute(e)
            .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn rotate<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
    secret: &str,
    previous_until: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE webhook_subscriptions SET previous_secret = secret, previous_until = $3, secret = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(secret)
    .bind(previous_until)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a subscription with its messages and their attempts.
pub(crate) async fn delete<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM webhook_subscriptions WHERE id = $1")
        .bind(id)
        .execute(e)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Removes a subscription's attempts and messages, before the subscription.
pub(crate) async fn delete_messages(tx: &mut super::Tx, subscription_id: &str) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM webhook_attempts WHERE message_id IN (SELECT id FROM webhook_messages WHERE subscription_id = $1)",
    )
    .bind(subscription_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM webhook_messages WHERE subscription_id = $1")
        .bind(subscription_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[derive(Clone, Debug, FromRow)]
pub(crate) struct Message {
    pub(crate) id: String,
    pub(crate) subscription_id: String,
    pub(crate) seq: i64,
    pub(crate) event_type: String,
    pub(crate) payload: String,
    pub(crate) created_at: i64,
    pub(crate) attempts: i64,
    pub(crate) next_attempt_at: i64,
    pub(crate) delivered_at: Option<i64>,
}

const MESSAGE: &str =
    "SELECT id, subscription_id, seq, event_type, payload, created_at, attempts, next_attempt_at,
    delivered_at FROM webhook_messages";

pub(crate) async fn insert_message<'c>(e: impl AnyExecutor<'c>, m: &Message) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_messages (id, subscription_id, seq, event_type, payload, created_at, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (subscription_id, seq) DO NOTHING",
    )
    .bind(&m.id)
    .bind(&m.subscription_id)
    .bind(m.seq)
    .bind(&m.event_type)
    .bind(&m.payload)
    .bind(m.created_at)
    .bind(m.next_attempt_at)
    .execute(e)
    .await?;
    Ok(())
}

/// The first undelivered message of each enabled subscription, when it is
/// due and no worker holds it: what may be sent now, one per subscription,
/// so that each subscription's messages leave in order.
pub(crate) async fn due_heads<'c>(
    e: impl AnyExecutor<'c>,
    now: i64,
    limit: i64,
) -> sqlx::Result<Vec<Message>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{MESSAGE} m WHERE m.delivered_at IS NULL AND m.next_attempt_at <= $1
           AND (m.lease_until IS NULL OR m.lease_until < $1)
           AND m.seq = (SELECT MIN(o.seq) FROM webhook_messages o
                        WHERE o.subscription_id = m.subscription_id AND o.delivered_at IS NULL)
           AND m.subscription_id IN (SELECT s.id FROM webhook_subscriptions s JOIN reviewers r ON r.id = s.owner_id
                                     WHERE s.disabled_at IS NULL AND r.disabled_at IS NULL)
         ORDER BY m.next_attempt_at LIMIT $2"
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(e)
    .await
}

/// Leases a message to one worker until `until`; `false` if another holds it.
pub(crate) async fn lease<'c>(e: impl AnyExecutor<'c>, id: &str, now: i64, until: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE webhook_messages SET lease_until = $3
         WHERE id = $1 AND delivered_at IS NULL AND next_attempt_at <= $2 AND (lease_until IS NULL OR lease_until < $2)",
    )
    .bind(id)
    .bind(now)
    .bind(until)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn delivered<'c>(e: impl AnyExecutor<'c>, id: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_messages SET delivered_at = COALESCE(delivered_at, $2), attempts = attempts + 1,
            lease_until = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(e)
    .await?;
    Ok(())
}

pub(crate) async fn failed<'c>(e: impl AnyExecutor<'c>, id: &str, next_attempt_at: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_messages SET attempts = attempts + 1, next_attempt_at = $2, lease_until = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(next_attempt_at)
    .execute(e)
    .await?;
    Ok(())
}

/// Makes a message due again now, delivered or not, with a fresh count of
/// attempts. A message being sent keeps its lease: it is sent again once
/// that attempt ends, never twice at once.
pub(crate) async fn retry_now<'c>(e: impl AnyExecutor<'c>, id: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE webhook_messages SET next_attempt_at = $2, attempts = 0, delivered_at = NULL WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The id of a subscription's oldest undelivered message.
pub(crate) async fn oldest_waiting<'c>(
    e: impl AnyExecutor<'c>,
    subscription_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT id FROM webhook_messages WHERE subscription_id = $1 AND delivered_at IS NULL ORDER BY seq LIMIT 1",
    )
    .bind(subscription_id)
    .fetch_optional(e)
    .await
}

/// Forgets messages made before `before`, delivered or not, with their
/// attempts, in one transaction.
pub(crate) async fn forget_before(tx: &mut super::Tx, before: i64) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM webhook_attempts WHERE message_id IN (SELECT id FROM webhook_messages WHERE created_at < $1)",
    )
    .bind(before)
    .execute(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM webhook_messages WHERE created_at < $1")
        .bind(before)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(crate) async fn find_message<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<Message>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{MESSAGE} WHERE id = $1")))
        .bind(id)
        .fetch_optional(e)
        .await
}

/// A subscription's newest messages.
pub(crate) async fn messages<'c>(
    e: impl AnyExecutor<'c>,
    subscription_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<Message>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{MESSAGE} WHERE subscription_id = $1 ORDER BY seq DESC LIMIT $2"
    )))
    .bind(subscription_id)
    .bind(limit)
    .fetch_all(e)
    .await
}

#[derive(Clone, Debug, FromRow)]
pub(crate) struct Attempt {
    pub(crate) message_id: String,
    pub(crate) at: i64,
    /// The HTTP status, or `None` when no answer came.
    pub(crate) status: Option<i64>,
    /// The start of the answer, or what went wrong.
    pub(crate) answer: String,
    pub(crate) took_ms: i64,
}

pub(crate) async fn insert_attempt<'c>(e: impl AnyExecutor<'c>, id: &str, a: &Attempt) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_attempts (id, message_id, at, status, answer, took_ms) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&a.message_id)
    .bind(a.at)
    .bind(a.status)
    .bind(&a.answer)
    .bind(a.took_ms)
    .execute(e)
    .await?;
    Ok(())
}

/// The attempts at a subscription's messages, newest first.
pub(crate) async fn attempts<'c>(
    e: impl AnyExecutor<'c>,
    subscription_id: &str,
    limit: i64,
) -> sqlx::Result<Vec<Attempt>> {
    sqlx::query_as(
        "SELECT a.message_id, a.at, a.status, a.answer, a.took_ms FROM webhook_attempts a
         JOIN webhook_messages m ON m.id = a.message_id
         WHERE m.subscription_id = $1 ORDER BY a.at DESC, a.id DESC LIMIT $2",
    )
    .bind(subscription_id)
    .bind(limit)
    .fetch_all(e)
    .await
}
