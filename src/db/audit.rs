//! The audit log table: append and read, never update.

use sqlx::{FromRow, any::AnyExecutor};

use crate::db::Tx;

#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct EventRow {
    pub seq: i64,
    pub at: i64,
    pub action: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub subject: Option<String>,
    pub model_id: Option<String>,
    pub application_id: Option<String>,
    pub grant_id: Option<String>,
    pub researcher_id: Option<String>,
    pub file_id: Option<String>,
    pub range_start: Option<i64>,
    pub range_end: Option<i64>,
    /// Bytes actually delivered, on `file.delivered` events.
    pub bytes: Option<i64>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

const COLUMNS: &str = "seq, at, action, outcome, reason, actor, subject, model_id, application_id, grant_id,
    researcher_id, file_id, range_start, range_end, bytes, client_ip, user_agent, request_id, prev_hash, hash";

pub async fn insert(tx: &mut Tx, r: &EventRow) -> sqlx::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO audit_events ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)"
    )))
    .bind(r.seq)
    .bind(r.at)
    .bind(&r.action)
    .bind(&r.outcome)
    .bind(&r.reason)
    .bind(&r.actor)
    .bind(&r.subject)
    .bind(&r.model_id)
    .bind(&r.application_id)
    .bind(&r.grant_id)
    .bind(&r.researcher_id)
    .bind(&r.file_id)
    .bind(r.range_start)
    .bind(r.range_end)
    .bind(r.bytes)
    .bind(&r.client_ip)
    .bind(&r.user_agent)
    .bind(&r.request_id)
    .bind(&r.prev_hash)
    .bind(&r.hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The sequence number and hash of the newest event.
pub async fn head<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Option<(i64, String)>> {
    sqlx::query_as("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(e)
        .await
}

/// Filters for reading the log; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub grant_id: Option<String>,
    pub action: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: i64,
}

/// Events matching the filter, oldest first (the newest `limit` of them).
pub async fn list<'c>(e: impl AnyExecutor<'c>, f: &Filter) -> sqlx::Result<Vec<EventRow>> {
    let mut rows: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_events
         WHERE ($1 IS NULL OR grant_id = $1) AND ($2 IS NULL OR action = $2) AND ($3 IS NULL OR at >= $3)
         ORDER BY seq DESC LIMIT $4"
    )))
    .bind(&f.grant_id)
    .bind(&f.action)
    .bind(f.since_ms)
    .bind(f.limit)
    .fetch_all(e)
    .await?;
    rows.reverse();
    Ok(rows)
}
