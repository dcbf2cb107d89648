//! Grants: a researcher's time-limited, revocable access to one model.

use sqlx::{AnyConnection, FromRow, any::AnyExecutor};

use crate::db::Tx;

pub struct NewGrant<'a> {
    pub id: &'a str,
    pub application_id: &'a str,
    pub researcher_id: &'a str,
    pub model_id: &'a str,
    pub access_token_hash: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
}

pub async fn insert_grant(tx: &mut Tx, g: &NewGrant<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO grants (id, application_id, researcher_id, model_id, access_token_hash, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(g.id)
    .bind(g.application_id)
    .bind(g.researcher_id)
    .bind(g.model_id)
    .bind(g.access_token_hash)
    .bind(g.created_at)
    .bind(g.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A grant with the researcher's e-mail and the model's names.
#[derive(Clone, Debug, FromRow)]
pub struct GrantView {
    pub id: String,
    pub application_id: String,
    pub researcher_id: String,
    pub model_id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    pub email: String,
    pub model_slug: String,
    pub model_title: String,
    /// The model's per-grant limits, read with the grant so a fetch needs no
    /// further query when there are none.
    pub quota_bytes: Option<i64>,
    pub quota_files: Option<i64>,
}

const VIEW: &str = "SELECT g.id, g.application_id, g.researcher_id, g.model_id, g.created_at, g.expires_at,
        g.revoked_at, g.revoked_reason, r.email, m.slug AS model_slug, m.title AS model_title,
        m.quota_bytes, m.quota_files
    FROM grants g
    JOIN researchers r ON r.id = g.researcher_id
    JOIN models m ON m.id = g.model_id";

pub async fn find_view<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<GrantView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{VIEW} WHERE g.id = $1")))
        .bind(id)
        .fetch_optional(e)
        .await
}

pub async fn find_view_by_access_token<'c>(
    e: impl AnyExecutor<'c>,
    token_hash: &str,
) -> sqlx::Result<Option<GrantView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE g.access_token_hash = $1"
    )))
    .bind(token_hash)
    .fetch_optional(e)
    .await
}

/// Every grant, newest first.
pub async fn list<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<GrantView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} ORDER BY g.created_at DESC, g.id"
    )))
    .fetch_all(e)
    .await
}

/// What can change about a grant after it is made, with its model's limits
/// and, when the model has any, the grant's deliveries so far.
#[derive(Clone, Debug, FromRow)]
pub struct GrantNow {
    pub id: String,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub quota_bytes: Option<i64>,
    pub quota_files: Option<i64>,
    #[sqlx(skip)]
    pub deliveries: Vec<Delivery>,
}

/// [`current`]'s query; `{ids}` stands for the list of placeholders.
pub(super) const STATES: &str = "SELECT g.id, g.expires_at, g.revoked_at, m.quota_bytes, m.quota_files
    FROM grants g JOIN models m ON m.id = g.model_id
    WHERE g.id IN ({ids})";

/// The current state of these grants, in one query (plus one per grant
/// whose model limits deliveries).
pub async fn current(conn: &mut AnyConnection, ids: &[&str]) -> sqlx::Result<Vec<GrantNow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = sqlx::query_as::<_, GrantNow>(sqlx::AssertSqlSafe(
        STATES.replace("{ids}", &super::placeholders(conn, 1, ids.len())),
    ))
    .persistent(ids.len() == 1);
    for id in ids {
        query = query.bind(*id);
    }
    let mut grants = query.fetch_all(&mut *conn).await?;
    for g in &mut grants {
        if g.quota_bytes.is_some() || g.quota_files.is_some() {
            g.deliveries = deliveries(&mut *conn, &g.id).await?;
        }
    }
    Ok(grants)
}

/// Revokes a live grant; `false` when it was already revoked.
pub async fn revoke(tx: &mut Tx, id: &str, reason: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// One recorded delivery of a grant: which file, from which byte, how many
/// bytes went out, and the file's size.
#[derive(Clone, Debug, FromRow)]
pub struct Delivery {
    pub file_id: String,
    pub range_start: i64,
    pub bytes: i64,
    pub size: i64,
}

pub(super) const DELIVERIES: &str = "SELECT e.file_id, e.range_start, e.bytes, f.size
    FROM audit_events e JOIN files f ON f.id = e.file_id
    WHERE e.grant_id = $1 AND e.action = 'file.delivered'
      AND e.range_start IS NOT NULL AND e.bytes IS NOT NULL";

/// Every delivery recorded for a grant (from the audit log's `file.delivered` events).
pub async fn deliveries<'c>(e: impl AnyExecutor<'c>, grant_id: &str) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as(DELIVERIES).bind(grant_id).fetch_all(e).await
}
