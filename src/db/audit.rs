//! The audit log and its signed checkpoints: append and read, never update.
//! Also the read-only queries behind the operator's reports.

use std::path::Path;

use anyhow::Context;
use sqlx::{AnyConnection, AnyPool, FromRow, any::AnyExecutor};

use crate::{
    bind_where,
    db::{Bind, Db, Tx, Where},
};

#[derive(Clone, Debug, FromRow, serde::Serialize, serde::Deserialize)]
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
    /// How many occurrences the event stands for, when it sums up many
    /// alike; `None` for one.
    pub occurrences: Option<i64>,
}

/// The columns of an event, in the order every query here names them.
pub(super) const INSERT_COLUMNS: &str = COLUMNS;

const COLUMNS: &str = "seq, at, action, outcome, reason, actor, subject, model_id, application_id, grant_id,
    researcher_id, file_id, range_start, range_end, bytes, client_ip, user_agent, request_id, prev_hash, hash,
    occurrences";

pub async fn insert(tx: &mut Tx, r: &EventRow) -> sqlx::Result<()> {
    insert_many(tx, std::slice::from_ref(r)).await
}

/// Most events one `INSERT` statement takes: 21 values each, well inside
/// both databases' limits on bound parameters.
const INSERT_ROWS: usize = 500;

/// Inserts events in as few statements as their number allows: on
/// PostgreSQL one, whatever their number.
pub(crate) async fn insert_many(conn: &mut AnyConnection, rows: &[EventRow]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if super::is_postgres(conn) {
        return insert_json(conn, rows).await;
    }
    for chunk in rows.chunks(INSERT_ROWS) {
        let mut sql = format!("INSERT INTO audit_events ({COLUMNS}) VALUES ");
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            sql.push_str(&super::placeholders(conn, i * 21 + 1, 21));
            sql.push(')');
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for r in chunk {
            query = query
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
                .bind(r.occurrences);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// PostgreSQL: the rows travel as one JSON parameter, so the statement's
/// text never changes and the connection keeps it prepared: one round trip
/// for a batch of any size, against two (parse, then bind) for a statement
/// whose text follows the number of rows.
async fn insert_json(conn: &mut AnyConnection, rows: &[EventRow]) -> sqlx::Result<()> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO audit_events ({COLUMNS}) SELECT {COLUMNS} FROM json_populate_recordset(NULL::audit_events, $1::json)"
        )
    });
    let rows = serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(rows)
        .execute(conn)
        .await
        .map(|_| ())
}

/// PostgreSQL's transaction-scoped advisory lock that serialises every
/// replica's appends to the log.
const CHAIN_LOCK: &str = "SELECT pg_advisory_xact_lock(4242001)";

/// Takes the chain's lock in the transaction under way (PostgreSQL).
pub(crate) async fn lock_chain_postgres(conn: &mut AnyConnection) -> sqlx::Result<()> {
    sqlx::query(CHAIN_LOCK).execute(conn).await.map(|_| ())
}

/// Opens a transaction that holds the chain's lock, in one round trip: on
/// PostgreSQL `BEGIN` and the lock go together as one simple query (the
/// statements after it each see what was committed before the lock was
/// granted); on SQLite `BEGIN IMMEDIATE` takes the write lock.
pub(crate) async fn begin_appending(
    conn: &mut AnyConnection,
) -> sqlx::Result<sqlx::Transaction<'_, sqlx::Any>> {
    use sqlx::Connection as _;
    if super::is_postgres(conn) {
        conn.begin_with(sqlx::AssertSqlSafe(format!("BEGIN; {CHAIN_LOCK}")))
            .await
    } else {
        conn.begin_with("BEGIN IMMEDIATE").await
    }
}

pub(super) const HEAD: &str = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";

/// The sequence number and hash of the newest event.
pub async fn head<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Option<(i64, String)>> {
    sqlx::query_as(HEAD).fetch_optional(e).await
}

/// Filters for reading the log; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub grant_id: Option<String>,
    pub action: Option<String>,
    pub model_id: Option<String>,
    pub researcher_id: Option<String>,
    pub client_ip: Option<String>,
    pub outcome: Option<String>,
    /// Events at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// Events before this time (Unix milliseconds).
    pub until_ms: Option<i64>,
    /// Events after this sequence number; also turns the page to the oldest
    /// `limit` matching events instead of the newest.
    pub after_seq: Option<i64>,
    /// Events before this sequence number.
    pub before_seq: Option<i64>,
    pub limit: i64,
}

impl Filter {
    /// The `WHERE` clause of the filters that are set, with their values in
    /// placeholder order. Only set filters appear, so the database can use
    /// the index that fits.
    fn conditions(&self) -> Where {
        let mut w = Where::default();
        let texts = [
            ("grant_id = $?", &self.grant_id),
            ("action = $?", &self.action),
            ("model_id = $?", &self.model_id),
            ("researcher_id = $?", &self.researcher_id),
            ("client_ip = $?", &self.client_ip),
            ("outcome = $?", &self.outcome),
        ];
        for (test, value) in texts {
            if let Some(v) = value {
                w.and_bind(test, Bind::Text(v.clone()));
            }
        }
        let ints = [
            ("at >= $?", self.since_ms),
            ("at < $?", self.until_ms),
            ("seq > $?", self.after_seq),
            ("seq < $?", self.before_seq),
        ];
        for (test, value) in ints {
            if let Some(v) = value {
                w.and_bind(test, Bind::Int(v));
            }
        }
        w
    }
}

/// Events matching the filter, oldest first: the newest `limit` of them, or
/// with `after_seq` the oldest `limit` after it.
pub async fn list<'c>(e: impl AnyExecutor<'c>, f: &Filter) -> sqlx::Result<Vec<EventRow>> {
    let w = f.conditions();
    let ascending = f.after_seq.is_some();
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_events{} ORDER BY seq {} LIMIT {}",
        w.sql(),
        if ascending { "ASC" } else { "DESC" },
        w.next(1)
    );
    let query = bind_where!(sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql)), w);
    let mut rows = query.bind(f.limit.max(0)).fetch_all(e).await?;
    if !ascending {
        rows.reverse();
    }
    Ok(rows)
}

/// Up to `limit` events after `after_seq`, in sequence order: one page of a
/// walk over the whole log.
pub async fn page_after<'c>(
    e: impl AnyExecutor<'c>,
    after_seq: i64,
    limit: i64,
) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
    )))
    .bind(after_seq)
    .bind(limit)
    .fetch_all(e)
    .await
}

/// The log in sequence order after a position, page by page: the next pages
/// are read while the caller checks the current one.
pub(crate) struct Pages {
    source: Source,
}

enum Source {
    /// SQLite: one read transaction on a connection and thread of its own,
    /// which reads the rows straight from SQLite's statement, a few pages
    /// ahead, into the pages handed back to it.
    Sqlite {
        pages: tokio::sync::mpsc::Receiver<anyhow::Result<Vec<EventRow>>>,
        spare: std::sync::mpsc::Sender<Vec<EventRow>>,
    },
    /// Through the pool: one query per page, the next one in flight.
    Pool {
        pool: AnyPool,
        size: usize,
        next: Option<tokio::task::JoinHandle<sqlx::Result<Vec<EventRow>>>>,
    },
}

/// Pages read ahead of the one being checked.
const PAGES_AHEAD: usize = 2;

impl Pages {
    /// Pages of `size` events after position `after_seq`.
    pub(crate) fn open(db: &Db, after_seq: i64, size: usize) -> Self {
        let source = match db.sqlite_file() {
            Some(file) => {
                let (tx, pages) = tokio::sync::mpsc::channel(PAGES_AHEAD);
                let (spare, spares) = std::sync::mpsc::channel();
                let file = file.to_owned();
                std::thread::spawn(move || {
                    if let Err(err) = read_sqlite_pages(&file, after_seq, size, &tx, &spares) {
                        let _ = tx.blocking_send(Err(err));
                    }
                });
                Source::Sqlite { pages, spare }
            }
            None => {
                let pool = db.pool().clone();
                let next = Some(fetch_page(&pool, after_seq, size));
                Source::Pool { pool, size, next }
            }
        };
        Self { source }
    }

    /// The next page, never empty; `None` after the last event.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Vec<EventRow>>> {
        match &mut self.source {
            Source::Sqlite { pages, .. } => pages.recv().await.transpose(),
            Source::Pool { pool, size, next } => {
                let Some(task) = next.take() else { return Ok(None) };
                let page = task.await??;
                match page.last() {
                    None => return Ok(None),
                    Some(last) if page.len() == *size => *next = Some(fetch_page(pool, last.seq, *size)),
                    Some(_) => {}
                }
                Ok(Some(page))
            }
        }
    }
}

impl Pages {
    /// Hands a page that is done with back, to be filled again: reading a
    /// page then allocates almost nothing.
    pub(crate) fn recycle(&self, page: Vec<EventRow>) {
        if let Source::Sqlite { spare, .. } = &self.source {
            let _ = spare.send(page);
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // The SQLite reader stops by itself once its channel is closed.
        if let Source::Pool { next: Some(task), .. } = &self.source {
            task.abort();
        }
    }
}

fn fetch_page(
    pool: &AnyPool,
    after_seq: i64,
    size: usize,
) -> tokio::task::JoinHandle<sqlx::Result<Vec<EventRow>>> {
    let pool = pool.clone();
    let limit = i64::try_from(size).unwrap_or(i64::MAX);
    tokio::spawn(async move { page_after(&pool, after_seq, limit).await })
}

/// A row to be filled by [`fill_row`].
fn empty_row() -> EventRow {
    EventRow {
        seq: 0,
        at: 0,
        action: String::new(),
        outcome: String::new(),
        reason: None,
        actor: None,
        subject: None,
        model_id: None,
        application_id: None,
        grant_id: None,
        researcher_id: None,
        file_id: None,
        range_start: None,
        range_end: None,
        bytes: None,
        client_ip: None,
        user_agent: None,
        request_id: None,
        prev_hash: String::new(),
        hash: String::new(),
        occurrences: None,
    }
}

/// Overwrites `r` with a row of `SELECT {COLUMNS}`, reusing its strings.
fn fill_row(r: &mut EventRow, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
    r.seq = row.get(0)?;
    r.at = row.get(1)?;
    set_text(&mut r.action, row, 2)?;
    set_text(&mut r.outcome, row, 3)?;
    for (field, i) in [
        (&mut r.reason, 4),
        (&mut r.actor, 5),
        (&mut r.subject, 6),
        (&mut r.model_id, 7),
        (&mut r.application_id, 8),
        (&mut r.grant_id, 9),
        (&mut r.researcher_id, 10),
        (&mut r.file_id, 11),
    ] {
        set_optional_text(field, row, i)?;
    }
    r.range_start = row.get(12)?;
    r.range_end = row.get(13)?;
    r.bytes = row.get(14)?;
    set_optional_text(&mut r.client_ip, row, 15)?;
    set_optional_text(&mut r.user_agent, row, 16)?;
    set_optional_text(&mut r.request_id, row, 17)?;
    set_text(&mut r.prev_hash, row, 18)?;
    set_text(&mut r.hash, row, 19)?;
    r.occurrences = row.get(20)?;
    Ok(())
}

/// At most `size` events after `after_seq`, in order, in one short read: on
/// SQLite its own connection and statement, so that no read transaction
/// outlives the page. (A reader that holds one keeps SQLite from ever
/// resetting its write-ahead log while others write: [`Pages`] is for a
/// walk that writes nothing; a fold that writes as it reads goes page by
/// page here.)
pub(crate) async fn read_page(db: &Db, after_seq: i64, size: usize) -> anyhow::Result<Vec<EventRow>> {
    let Some(file) = db.sqlite_file() else {
        return Ok(page_after(db.pool(), after_seq, i64::try_from(size).unwrap_or(i64::MAX)).await?);
    };
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        use rusqlite::OpenFlags;
        let conn = rusqlite::Connection::open_with_flags(
            &file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open {}", file.display()))?;
        conn.pragma_update(None, "query_only", true)?;
        let mut statement = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))?;
        let mut rows = statement.query(rusqlite::params![
            after_seq,
            i64::try_from(size).unwrap_or(i64::MAX)
        ])?;
        let mut page = Vec::with_capacity(size);
        while let Some(row) = rows.next()? {
            let mut r = empty_row();
            fill_row(&mut r, row)?;
            page.push(r);
        }
        Ok(page)
    })
    .await?
}

/// Reads every event after `after_seq` with one statement and sends them on
/// in pages, until the end of the log or until nobody listens. Pages come
/// from `spares` when there are any, their strings overwritten in place.
fn read_sqlite_pages(
    file: &Path,
    after_seq: i64,
    size: usize,
    pages: &tokio::sync::mpsc::Sender<anyhow::Result<Vec<EventRow>>>,
    spares: &std::sync::mpsc::Receiver<Vec<EventRow>>,
) -> anyhow::Result<()> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", file.display()))?;
    conn.pragma_update(None, "query_only", true)?;
    let mut statement = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq"
    ))?;
    let mut rows = statement.query([after_seq])?;
    let fresh = || spares.try_recv().unwrap_or_else(|_| Vec::with_capacity(size));
    let mut page = fresh();
    let mut filled = 0;
    while let Some(row) = rows.next()? {
        if filled == page.len() {
            page.push(empty_row());
        }
        fill_row(&mut page[filled], row)?;
        filled += 1;
        if filled == size {
            page.truncate(filled);
            if pages
                .blocking_send(Ok(std::mem::replace(&mut page, fresh())))
                .is_err()
            {
                return Ok(());
            }
            filled = 0;
        }
    }
    if filled > 0 {
        page.truncate(filled);
        let _ = pages.blocking_send(Ok(page));
    }
    Ok(())
}

/// Overwrites `dst` with a text column, keeping its allocation.
fn set_text(dst: &mut String, row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<()> {
    let value = row.get_ref(i)?.as_str()?;
    dst.clear();
    dst.push_str(value);
    Ok(())
}

/// Overwrites `dst` with a nullable text column, keeping its allocation.
fn set_optional_text(dst: &mut Option<String>, row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<()> {
    match row.get_ref(i)?.as_str_or_null()? {
        None => *dst = None,
        Some(value) => {
            let s = dst.get_or_insert_with(String::new);
            s.clear();
            s.push_str(value);
        }
    }
    Ok(())
}

pub(crate) async fn find_event<'c>(e: impl AnyExecutor<'c>, seq: i64) -> sqlx::Result<Option<EventRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_events WHERE seq = $1"
    )))
    .bind(seq)
    .fetch_optional(e)
    .await
}

/// Positions of the events stored with this hash. Reads the whole table:
/// meant for explaining damage once it is found, not for the walk itself.
pub(crate) async fn seqs_with_hash<'c>(e: impl AnyExecutor<'c>, hash: &str) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT seq FROM audit_events WHERE hash = $1 ORDER BY seq LIMIT 5")
        .bind(hash)
        .fetch_all(e)
        .await
}

/// Positions of the events that name this hash as their predecessor's.
pub(crate) async fn seqs_with_prev_hash<'c>(e: impl AnyExecutor<'c>, hash: &str) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT seq FROM audit_events WHERE prev_hash = $1 ORDER BY seq LIMIT 5")
        .bind(hash)
        .fetch_all(e)
        .await
}

/// The id of the researcher with this (lower-cased) e-mail.
pub(crate) async fn researcher_id_by_email<'c>(
    e: impl AnyExecutor<'c>,
    email: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT id FROM researchers WHERE email = $1")
        .bind(email)
        .fetch_optional(e)
        .await
}

/// A signed statement that the log's event `seq` had hash `hash` at time `at`.
#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub struct CheckpointRow {
    pub(crate) id: String,
    pub seq: i64,
    pub(crate) hash: String,
    pub at: i64,
    /// The id of the `audit-ed25519` signing key.
    pub(crate) kid: String,
    /// The Ed25519 signature, hex.
    pub(crate) signature: String,
}

const CHECKPOINT_COLUMNS: &str = "id, seq, hash, at, kid, signature";

/// Stores a checkpoint unless this key already signed one of the same event;
/// returns whether it was stored.
pub async fn insert_checkpoint<'c>(e: impl AnyExecutor<'c>, c: &CheckpointRow) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO audit_checkpoints (id, seq, hash, at, kid, signature) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (seq, kid) DO NOTHING",
    )
    .bind(&c.id)
    .bind(c.seq)
    .bind(&c.hash)
    .bind(c.at)
    .bind(&c.kid)
    .bind(&c.signature)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn find_checkpoint<'c>(
    e: impl AnyExecutor<'c>,
    seq: i64,
    kid: &str,
) -> sqlx::Result<Option<CheckpointRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE seq = $1 AND kid = $2"
    )))
    .bind(seq)
    .bind(kid)
    .fetch_optional(e)
    .await
}

/// The checkpoint of the newest event.
pub async fn latest_checkpoint<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Option<CheckpointRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY seq DESC, at DESC, id DESC LIMIT 1"
    )))
    .fetch_optional(e)
    .await
}

/// A checkpoint next to the hash the log holds today at its position.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct CheckpointCheck {
    pub(crate) id: String,
    pub(crate) seq: i64,
    pub(crate) hash: String,
    pub(crate) at: i64,
    pub(crate) kid: String,
    pub(crate) signature: String,
    /// `None` when the log has no event at `seq`.
    pub(crate) event_hash: Option<String>,
}

impl CheckpointCheck {
    pub(crate) fn checkpoint(&self) -> CheckpointRow {
        CheckpointRow {
            id: self.id.clone(),
            seq: self.seq,
            hash: self.hash.clone(),
            at: self.at,
            kid: self.kid.clone(),
            signature: self.signature.clone(),
        }
    }
}

/// Up to `limit` checkpoints after `(seq, id)`, in sequence order.
pub(crate) async fn checkpoints_page<'c>(
    e: impl AnyExecutor<'c>,
    after: (i64, &str),
    limit: i64,
) -> sqlx::Result<Vec<CheckpointCheck>> {
    sqlx::query_as(
        "SELECT c.id, c.seq, c.hash, c.at, c.kid, c.signature, e.hash AS event_hash
         FROM audit_checkpoints c LEFT JOIN audit_events e ON e.seq = c.seq
         WHERE c.seq > $1 OR (c.seq = $1 AND c.id > $2)
         ORDER BY c.seq, c.id LIMIT $3",
    )
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(e)
    .await
}

/// A file of a published release, with its release and model.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct ModelFile {
    pub(crate) file_id: String,
    pub(crate) size: i64,
    pub(crate) release_id: String,
    pub(crate) release_name: String,
    pub(crate) model_id: String,
}

/// The files of every published release, optionally of one model.
pub(crate) async fn published_files<'c>(
    e: impl AnyExecutor<'c>,
    model_id: Option<&str>,
) -> sqlx::Result<Vec<ModelFile>> {
    sqlx::query_as(
        "SELECT f.id AS file_id, f.size, r.id AS release_id, r.name AS release_name, m.id AS model_id
         FROM files f JOIN releases r ON r.id = f.release_id JOIN models m ON m.id = r.model_id
         WHERE r.published_at IS NOT NULL AND ($1 IS NULL OR m.id = $1)
         ORDER BY m.slug, r.published_at, r.name, f.name",
    )
    .bind(model_id)
    .fetch_all(e)
    .await
}
