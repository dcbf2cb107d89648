//! The record of archived segments of the audit log (see
//! `audit::archive`), and the removal of their events from the live table.

use sqlx::{AnyConnection, FromRow, any::AnyExecutor};

use super::Db;

/// One archived segment, as the database records it.
#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub struct ArchiveRow {
    pub first_seq: i64,
    pub last_seq: i64,
    pub events: i64,
    /// The hash of event `first_seq - 1`, which the segment chains from.
    pub prev_hash: String,
    pub last_hash: String,
    pub first_at: i64,
    pub last_at: i64,
    /// The object key of the compressed events.
    pub object: String,
    /// The object key of the manifest.
    pub manifest: String,
    pub size: i64,
    pub sha256: String,
    pub archived_at: i64,
}

const COLUMNS: &str = "first_seq, last_seq, events, prev_hash, last_hash, first_at, last_at, object, manifest, size, sha256, archived_at";

/// Every archived segment, oldest first.
pub async fn all<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<ArchiveRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_archives ORDER BY first_seq"
    )))
    .fetch_all(e)
    .await
}

/// The newest archived segment, if any: the live log chains on from its end.
pub(crate) async fn newest<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Option<ArchiveRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_archives ORDER BY first_seq DESC LIMIT 1"
    )))
    .fetch_optional(e)
    .await
}

/// The archived segment holding event `seq`, if any.
pub(crate) async fn holding<'c>(e: impl AnyExecutor<'c>, seq: i64) -> sqlx::Result<Option<ArchiveRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_archives WHERE first_seq <= $1 AND last_seq >= $1
         ORDER BY first_seq DESC LIMIT 1"
    )))
    .bind(seq)
    .fetch_optional(e)
    .await
}

pub async fn insert(conn: &mut AnyConnection, a: &ArchiveRow) -> sqlx::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO audit_archives ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    )))
    .bind(a.first_seq)
    .bind(a.last_seq)
    .bind(a.events)
    .bind(&a.prev_hash)
    .bind(&a.last_hash)
    .bind(a.first_at)
    .bind(a.last_at)
    .bind(&a.object)
    .bind(&a.manifest)
    .bind(a.size)
    .bind(&a.sha256)
    .bind(a.archived_at)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The lowest position stored in the live log, if it holds any event.
pub async fn lowest_live<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT MIN(seq) FROM audit_events")
        .fetch_one(e)
        .await
}

/// Events removed per statement, so that the audit writer never waits long:
/// on SQLite each statement holds the database's write lock, and removing
/// 20,000 events with their six index entries each took a second at ten
/// million events, so they go 2,000 at a time.
const REMOVE_BATCH: i64 = 2_000;

/// Removes the live events at positions `first..=last`, the lowest first,
/// in short statements; returns how many were removed.
pub(crate) async fn remove_between(db: &Db, first: i64, last: i64) -> sqlx::Result<u64> {
    let mut removed = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM audit_events WHERE seq IN
                (SELECT seq FROM audit_events WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3)",
        )
        .bind(first)
        .bind(last)
        .bind(REMOVE_BATCH)
        .execute(db.pool())
        .await?
        .rows_affected();
        removed += done;
        if done < REMOVE_BATCH as u64 {
            return Ok(removed);
        }
    }
}

/// What archived events delivered under `grant_id` of `file_id` so far:
/// bytes and spans.
pub(crate) async fn archived_delivery(
    conn: &mut AnyConnection,
    grant_id: &str,
    file_id: &str,
) -> sqlx::Result<Option<(i64, String)>> {
    sqlx::query_as("SELECT bytes, spans FROM audit_archived_deliveries WHERE grant_id = $1 AND file_id = $2")
        .bind(grant_id)
        .bind(file_id)
        .fetch_optional(conn)
        .await
}

pub(crate) async fn put_archived_delivery(
    conn: &mut AnyConnection,
    grant_id: &str,
    file_id: &str,
    bytes: i64,
    spans: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_archived_deliveries (grant_id, file_id, bytes, spans) VALUES ($1, $2, $3, $4)
         ON CONFLICT (grant_id, file_id) DO UPDATE SET bytes = excluded.bytes, spans = excluded.spans",
    )
    .bind(grant_id)
    .bind(file_id)
    .bind(bytes)
    .bind(spans)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Takes the archive run's lease for `holder` until `until_ms`, unless
/// another holder's lease is still running at `now_ms`; says whether it did.
pub(crate) async fn take_lease(db: &Db, holder: &str, now_ms: i64, until_ms: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO audit_archive_runs (id, holder, until_ms) VALUES (1, $1, $2)
         ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
         WHERE audit_archive_runs.holder = excluded.holder OR audit_archive_runs.until_ms < $3",
    )
    .bind(holder)
    .bind(until_ms)
    .bind(now_ms)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn release_lease(db: &Db, holder: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM audit_archive_runs WHERE holder = $1")
        .bind(holder)
        .execute(db.pool())
        .await
        .map(|_| ())
}

/// Every row of `audit_archived_deliveries`: grant, file, bytes, spans.
pub(crate) async fn all_archived_deliveries<'c>(
    e: impl AnyExecutor<'c>,
) -> sqlx::Result<Vec<(String, String, i64, String)>> {
    sqlx::query_as(
        "SELECT grant_id, file_id, bytes, spans FROM audit_archived_deliveries ORDER BY grant_id, file_id",
    )
    .fetch_all(e)
    .await
}
