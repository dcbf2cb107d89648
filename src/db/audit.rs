//! The audit log and its signed checkpoints: append and read, never update.
//! Also the read-only queries behind the operator's reports.

use std::{collections::HashMap, path::Path};

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

/// The columns of an event as text, in the order every query here names
/// them: those of the view `audit_log`, which reads the stored events back.
pub(super) const COLUMNS: &str =
    "seq, at, action, outcome, reason, actor, subject, model_id, application_id, grant_id,
    researcher_id, file_id, range_start, range_end, bytes, client_ip, user_agent, request_id, prev_hash, hash,
    occurrences";

/// The columns of `audit_events` as stored: each repeated text as the number
/// of its term in `audit_terms` (see [`EventRow::terms`] for their order),
/// the hashes as bytes, a request id as a UUID's 16 bytes or as text.
pub(super) const STORED_COLUMNS: &str =
    "seq, at, action_term, outcome_term, reason_term, actor_term, subject_term,
    model_term, application_term, grant_term, researcher_term, file_term, client_ip_term, user_agent_term,
    range_start, range_end, bytes, request_uuid, request_text, prev_hash, hash, occurrences";

/// How many values a stored row binds.
const STORED_VALUES: usize = 22;

impl EventRow {
    /// The event's texts that are stored as terms, in the order of the
    /// `*_term` columns of [`STORED_COLUMNS`].
    pub(crate) fn terms(&self) -> [Option<&str>; 12] {
        [
            Some(self.action.as_str()),
            Some(self.outcome.as_str()),
            self.reason.as_deref(),
            self.actor.as_deref(),
            self.subject.as_deref(),
            self.model_id.as_deref(),
            self.application_id.as_deref(),
            self.grant_id.as_deref(),
            self.researcher_id.as_deref(),
            self.file_id.as_deref(),
            self.client_ip.as_deref(),
            self.user_agent.as_deref(),
        ]
    }
}

/// A hash as stored: the bytes of its lower-case hexadecimal, or, for text
/// that is not (no hash weightgate computes), its own bytes, so that it
/// reads back changed and the event as altered.
pub(crate) fn stored_hash(hash: &str) -> Vec<u8> {
    let canonical =
        hash.len().is_multiple_of(2) && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if canonical {
        hex::decode(hash).unwrap_or_else(|_| hash.as_bytes().to_vec())
    } else {
        hash.as_bytes().to_vec()
    }
}

/// A stored hash read back as text (lower-case hexadecimal), into `into`'s
/// allocation: a walk over the log does this twice an event.
pub(crate) fn read_hash(bytes: &[u8], into: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    into.clear();
    into.reserve(bytes.len() * 2);
    for b in bytes {
        into.push(char::from(DIGITS[usize::from(b >> 4)]));
        into.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// A request id as stored: a UUID in its lower-case hyphenated form (what the
/// portal gives a request that brings none) as its 16 bytes, anything else
/// as text.
fn stored_request_id(id: Option<&str>) -> (Option<Vec<u8>>, Option<&str>) {
    let Some(id) = id else { return (None, None) };
    let b = id.as_bytes();
    let uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => matches!(c, b'0'..=b'9' | b'a'..=b'f'),
        });
    if uuid {
        let digits: String = id.chars().filter(|c| *c != '-').collect();
        if let Ok(bytes) = hex::decode(digits) {
            return (Some(bytes), None);
        }
    }
    (None, Some(id))
}

/// An event as its row is stored, in the order of [`STORED_COLUMNS`]; the
/// numbers of its terms from `ids`, which holds every text it names.
pub(super) struct Stored<'a> {
    pub(super) seq: i64,
    pub(super) at: i64,
    pub(super) terms: [Option<i64>; 12],
    pub(super) range_start: Option<i64>,
    pub(super) range_end: Option<i64>,
    pub(super) bytes: Option<i64>,
    pub(super) request_uuid: Option<Vec<u8>>,
    pub(super) request_text: Option<&'a str>,
    pub(super) prev_hash: Vec<u8>,
    pub(super) hash: Vec<u8>,
    pub(super) occurrences: Option<i64>,
}

impl<'a> Stored<'a> {
    pub(super) fn of(r: &'a EventRow, ids: &HashMap<&str, i64>) -> Self {
        let (request_uuid, request_text) = stored_request_id(r.request_id.as_deref());
        Self {
            seq: r.seq,
            at: r.at,
            terms: r.terms().map(|t| t.and_then(|t| ids.get(t).copied())),
            range_start: r.range_start,
            range_end: r.range_end,
            bytes: r.bytes,
            request_uuid,
            request_text,
            prev_hash: stored_hash(&r.prev_hash),
            hash: stored_hash(&r.hash),
            occurrences: r.occurrences,
        }
    }
}

/// A stored request id read back as text (as the view `audit_log` does).
fn read_request_id(uuid: Option<&[u8]>, text: Option<&str>, into: &mut Option<String>) {
    match (uuid, text) {
        (Some(bytes), _) => {
            let s = into.get_or_insert_with(String::new);
            read_hash(bytes, s);
            if bytes.len() == 16 {
                for at in [20, 16, 12, 8] {
                    s.insert(at, '-');
                }
            }
        }
        (None, Some(t)) => {
            let s = into.get_or_insert_with(String::new);
            s.clear();
            s.push_str(t);
        }
        (None, None) => *into = None,
    }
}

pub async fn insert(tx: &mut Tx, r: &EventRow) -> sqlx::Result<()> {
    insert_many(tx, std::slice::from_ref(r)).await
}

/// Most events one `INSERT` statement takes: 22 values each, well inside
/// SQLite's limit on bound parameters.
const INSERT_ROWS: usize = 400;

/// Inserts events in as few statements as their number allows: on
/// PostgreSQL one, whatever their number.
pub(crate) async fn insert_many(conn: &mut AnyConnection, rows: &[EventRow]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if super::is_postgres(conn) {
        return insert_json(conn, rows).await;
    }
    let mut wanted: Vec<&str> = rows.iter().flat_map(EventRow::terms).flatten().collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut ids = HashMap::with_capacity(wanted.len());
    for term in wanted {
        let id = term_id(conn, term).await?;
        ids.insert(term, id);
    }
    for chunk in rows.chunks(INSERT_ROWS) {
        let mut sql = format!("INSERT INTO audit_events ({STORED_COLUMNS}) VALUES ");
        for i in 0..chunk.len() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            sql.push_str(&super::placeholders(conn, i * STORED_VALUES + 1, STORED_VALUES));
            sql.push(')');
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        for r in chunk {
            let r = Stored::of(r, &ids);
            query = query.bind(r.seq).bind(r.at);
            for id in r.terms {
                query = query.bind(id);
            }
            query = query
                .bind(r.range_start)
                .bind(r.range_end)
                .bind(r.bytes)
                .bind(r.request_uuid)
                .bind(r.request_text.map(str::to_owned))
                .bind(r.prev_hash)
                .bind(r.hash)
                .bind(r.occurrences);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The number of a term, which is added if it is new (SQLite).
async fn term_id(conn: &mut AnyConnection, term: &str) -> sqlx::Result<i64> {
    sqlx::query("INSERT INTO audit_terms (term) VALUES ($1) ON CONFLICT (term) DO NOTHING")
        .bind(term)
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar("SELECT id FROM audit_terms WHERE term = $1")
        .bind(term)
        .fetch_one(&mut *conn)
        .await
}

/// PostgreSQL: the rows travel as one JSON parameter to the function that
/// stores them (`weightgate_audit_store`), so the statement's text never
/// changes and the connection keeps it prepared: one round trip for a batch
/// of any size.
async fn insert_json(conn: &mut AnyConnection, rows: &[EventRow]) -> sqlx::Result<()> {
    let rows = serde_json::to_string(rows).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query("SELECT weightgate_audit_store($1::json)")
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

pub(super) const HEAD: &str = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1";

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
    /// The `WHERE` clause of the filters that are set, over the stored
    /// columns, with their values in placeholder order; `None` when a text
    /// it asks for is no term at all, so that no event matches. Only set
    /// filters appear, and a text as the number of its term, so the
    /// database can use the index that fits and knows how common the
    /// value is.
    async fn conditions(&self, pool: &AnyPool) -> sqlx::Result<Option<Where>> {
        let mut w = Where::default();
        let texts = [
            ("grant_term = $?", &self.grant_id),
            ("action_term = $?", &self.action),
            ("model_term = $?", &self.model_id),
            ("researcher_term = $?", &self.researcher_id),
            ("client_ip_term = $?", &self.client_ip),
            ("outcome_term = $?", &self.outcome),
        ];
        for (test, value) in texts {
            if let Some(v) = value {
                let id: Option<i64> =
                    sqlx::query_scalar("SELECT CAST(id AS BIGINT) FROM audit_terms WHERE term = $1")
                        .bind(v)
                        .fetch_optional(pool)
                        .await?;
                let Some(id) = id else { return Ok(None) };
                w.and_bind(test, Bind::Int(id));
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
        Ok(Some(w))
    }
}

/// Events matching the filter, oldest first: the newest `limit` of them, or
/// with `after_seq` the oldest `limit` after it.
pub async fn list(pool: &AnyPool, f: &Filter) -> sqlx::Result<Vec<EventRow>> {
    let Some(w) = f.conditions(pool).await? else {
        return Ok(Vec::new());
    };
    let ascending = f.after_seq.is_some();
    // The matching positions from the stored rows and their indexes; then
    // only those events as text.
    let order = if ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM audit_log
         WHERE seq IN (SELECT seq FROM audit_events{} ORDER BY seq {order} LIMIT {})
         ORDER BY seq {order}",
        w.sql(),
        w.next(1)
    );
    let query = bind_where!(sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql)), w);
    let mut rows = query.bind(f.limit.max(0)).fetch_all(pool).await?;
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
        "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
    )))
    .bind(after_seq)
    .bind(limit)
    .fetch_all(e)
    .await
}

/// Terms read so far, by number, so that a walk over the log asks for each
/// once. Bounded: forgets them all when it holds [`Terms::MOST`].
#[derive(Default)]
pub(crate) struct Terms {
    known: HashMap<i64, String>,
}

impl Terms {
    const MOST: usize = 1 << 16;

    fn remember(&mut self, id: i64, term: String) {
        if self.known.len() >= Self::MOST {
            self.known.clear();
        }
        self.known.insert(id, term);
    }

    /// The text of term `id`, which event `seq` names; an error if the
    /// table does not hold it (only an altered database lacks one).
    fn text(&self, seq: i64, id: i64) -> anyhow::Result<&str> {
        match self.known.get(&id) {
            Some(term) => Ok(term),
            None => anyhow::bail!(
                "event {seq} names term {id}, which audit_terms does not hold: the log was altered"
            ),
        }
    }
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
        next: Option<tokio::task::JoinHandle<sqlx::Result<Vec<StoredRow>>>>,
        terms: Terms,
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
                Source::Pool {
                    pool,
                    size,
                    next,
                    terms: Terms::default(),
                }
            }
        };
        Self { source }
    }

    /// The next page, never empty; `None` after the last event.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Vec<EventRow>>> {
        match &mut self.source {
            Source::Sqlite { pages, .. } => pages.recv().await.transpose(),
            Source::Pool {
                pool,
                size,
                next,
                terms,
            } => {
                let Some(task) = next.take() else { return Ok(None) };
                let page = task.await??;
                match page.last() {
                    None => return Ok(None),
                    Some(last) if page.len() == *size => *next = Some(fetch_page(pool, last.seq, *size)),
                    Some(_) => {}
                }
                Ok(Some(expand(pool, &page, terms).await?))
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

/// A stored event as read through the pool.
#[derive(FromRow)]
pub(crate) struct StoredRow {
    seq: i64,
    at: i64,
    action_term: Option<i64>,
    outcome_term: Option<i64>,
    reason_term: Option<i64>,
    actor_term: Option<i64>,
    subject_term: Option<i64>,
    model_term: Option<i64>,
    application_term: Option<i64>,
    grant_term: Option<i64>,
    researcher_term: Option<i64>,
    file_term: Option<i64>,
    range_start: Option<i64>,
    range_end: Option<i64>,
    bytes: Option<i64>,
    client_ip_term: Option<i64>,
    user_agent_term: Option<i64>,
    request_uuid: Option<Vec<u8>>,
    request_text: Option<String>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
    occurrences: Option<i64>,
}

impl StoredRow {
    fn term_ids(&self) -> [Option<i64>; 12] {
        [
            self.action_term,
            self.outcome_term,
            self.reason_term,
            self.actor_term,
            self.subject_term,
            self.model_term,
            self.application_term,
            self.grant_term,
            self.researcher_term,
            self.file_term,
            self.client_ip_term,
            self.user_agent_term,
        ]
    }
}

/// [`STORED_COLUMNS`] with the term numbers read as 64-bit integers, which
/// PostgreSQL stores in 32.
const STORED_SELECT: &str = "seq, at, CAST(action_term AS BIGINT) AS action_term,
    CAST(outcome_term AS BIGINT) AS outcome_term, CAST(reason_term AS BIGINT) AS reason_term,
    CAST(actor_term AS BIGINT) AS actor_term, CAST(subject_term AS BIGINT) AS subject_term,
    CAST(model_term AS BIGINT) AS model_term, CAST(application_term AS BIGINT) AS application_term,
    CAST(grant_term AS BIGINT) AS grant_term, CAST(researcher_term AS BIGINT) AS researcher_term,
    CAST(file_term AS BIGINT) AS file_term, range_start, range_end, bytes,
    CAST(client_ip_term AS BIGINT) AS client_ip_term, CAST(user_agent_term AS BIGINT) AS user_agent_term,
    request_uuid, request_text, prev_hash, hash, occurrences";

fn fetch_page(
    pool: &AnyPool,
    after_seq: i64,
    size: usize,
) -> tokio::task::JoinHandle<sqlx::Result<Vec<StoredRow>>> {
    let pool = pool.clone();
    let limit = i64::try_from(size).unwrap_or(i64::MAX);
    tokio::spawn(async move {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {STORED_SELECT} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        )))
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&pool)
        .await
    })
}

/// Most term numbers one lookup names.
const TERMS_PER_LOOKUP: usize = 500;

/// Stored events as text, reading the terms `terms` does not hold yet in a
/// few statements for the whole page.
async fn expand(pool: &AnyPool, page: &[StoredRow], terms: &mut Terms) -> anyhow::Result<Vec<EventRow>> {
    let missing = |terms: &Terms| {
        let mut ids: Vec<i64> = page
            .iter()
            .flat_map(StoredRow::term_ids)
            .flatten()
            .filter(|id| !terms.known.contains_key(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let mut wanted = missing(terms);
    // All of this page's terms must be at hand at once: forget the older
    // ones first if they would not fit beside them.
    if terms.known.len() + wanted.len() > Terms::MOST {
        terms.known.clear();
        wanted = missing(terms);
    }
    for chunk in wanted.chunks(TERMS_PER_LOOKUP) {
        let list: Vec<String> = (1..=chunk.len()).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT CAST(id AS BIGINT), term FROM audit_terms WHERE id IN ({})",
            list.join(", ")
        );
        let mut query = sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(sql)).persistent(false);
        for id in chunk {
            query = query.bind(*id);
        }
        terms.known.extend(query.fetch_all(pool).await?);
    }
    page.iter()
        .map(|s| {
            let mut r = empty_row();
            let text = |id: Option<i64>| id.map(|id| terms.text(s.seq, id).map(str::to_owned)).transpose();
            let ids = s.term_ids();
            r.seq = s.seq;
            r.at = s.at;
            r.action = text(ids[0])?.unwrap_or_default();
            r.outcome = text(ids[1])?.unwrap_or_default();
            for (field, id) in [
                &mut r.reason,
                &mut r.actor,
                &mut r.subject,
                &mut r.model_id,
                &mut r.application_id,
                &mut r.grant_id,
                &mut r.researcher_id,
                &mut r.file_id,
                &mut r.client_ip,
                &mut r.user_agent,
            ]
            .into_iter()
            .zip(&ids[2..])
            {
                *field = text(*id)?;
            }
            r.range_start = s.range_start;
            r.range_end = s.range_end;
            r.bytes = s.bytes;
            read_request_id(
                s.request_uuid.as_deref(),
                s.request_text.as_deref(),
                &mut r.request_id,
            );
            read_hash(&s.prev_hash, &mut r.prev_hash);
            read_hash(&s.hash, &mut r.hash);
            r.occurrences = s.occurrences;
            Ok(r)
        })
        .collect()
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

/// The terms a walk over SQLite reads, through its own connection.
struct SqliteTerms<'c> {
    conn: &'c rusqlite::Connection,
    known: Terms,
}

impl SqliteTerms<'_> {
    /// Makes sure the term `id` is at hand.
    fn load(&mut self, id: i64) -> rusqlite::Result<()> {
        if !self.known.known.contains_key(&id) {
            let mut statement = self
                .conn
                .prepare_cached("SELECT term FROM audit_terms WHERE id = ?1")?;
            let term: Option<String> =
                statement
                    .query_row([id], |row| row.get(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
            if let Some(term) = term {
                self.known.remember(id, term);
            }
        }
        Ok(())
    }

    /// Overwrites `dst` with the term in column `i` of event `seq`, keeping
    /// its allocation.
    fn put(
        &mut self,
        seq: i64,
        dst: &mut Option<String>,
        row: &rusqlite::Row<'_>,
        i: usize,
    ) -> anyhow::Result<()> {
        use rusqlite::types::ValueRef;
        match row.get_ref(i)? {
            ValueRef::Null => *dst = None,
            ValueRef::Integer(id) => {
                let s = dst.get_or_insert_with(String::new);
                s.clear();
                if let Some(term) = self.known.known.get(&id) {
                    s.push_str(term);
                } else {
                    self.load(id)?;
                    s.push_str(self.known.text(seq, id)?);
                }
            }
            other => anyhow::bail!(
                "event {seq} holds {} where the number of a term belongs: the log was altered",
                other.data_type().to_string().to_lowercase()
            ),
        }
        Ok(())
    }

    /// As [`Self::put`], for a column that is never empty.
    fn put_text(
        &mut self,
        seq: i64,
        dst: &mut String,
        row: &rusqlite::Row<'_>,
        i: usize,
    ) -> anyhow::Result<()> {
        let mut value = Some(std::mem::take(dst));
        self.put(seq, &mut value, row, i)?;
        *dst = value.unwrap_or_default();
        Ok(())
    }
}

/// Overwrites `r` with a row of `SELECT {STORED_COLUMNS}`, reusing its
/// strings. A value of another type than the column's (SQLite keeps what it
/// is given) is an error naming the event: read as anything, it could read
/// one way here and another through the view `audit_log`.
fn fill_row(r: &mut EventRow, row: &rusqlite::Row<'_>, terms: &mut SqliteTerms<'_>) -> anyhow::Result<()> {
    let seq = row.get(0)?;
    r.seq = seq;
    r.at = row.get(1)?;
    terms.put_text(seq, &mut r.action, row, 2)?;
    terms.put_text(seq, &mut r.outcome, row, 3)?;
    for (i, field) in [
        &mut r.reason,
        &mut r.actor,
        &mut r.subject,
        &mut r.model_id,
        &mut r.application_id,
        &mut r.grant_id,
        &mut r.researcher_id,
        &mut r.file_id,
        &mut r.client_ip,
        &mut r.user_agent,
    ]
    .into_iter()
    .enumerate()
    {
        terms.put(seq, field, row, 4 + i)?;
    }
    r.range_start = row.get(14)?;
    r.range_end = row.get(15)?;
    r.bytes = row.get(16)?;
    let bytes = |i: usize, what: &str| -> anyhow::Result<Option<&[u8]>> {
        use rusqlite::types::ValueRef;
        match row.get_ref(i)? {
            ValueRef::Null => Ok(None),
            ValueRef::Blob(b) => Ok(Some(b)),
            other => anyhow::bail!(
                "event {seq} holds {} as its {what}: the log was altered",
                other.data_type().to_string().to_lowercase()
            ),
        }
    };
    let text = match row.get_ref(18)? {
        rusqlite::types::ValueRef::Null => None,
        rusqlite::types::ValueRef::Text(t) => Some(String::from_utf8_lossy(t)),
        other => anyhow::bail!(
            "event {seq} holds {} as its request id: the log was altered",
            other.data_type().to_string().to_lowercase()
        ),
    };
    read_request_id(
        bytes(17, "request id's bytes")?,
        text.as_deref(),
        &mut r.request_id,
    );
    read_hash(bytes(19, "previous hash")?.unwrap_or_default(), &mut r.prev_hash);
    read_hash(bytes(20, "hash")?.unwrap_or_default(), &mut r.hash);
    r.occurrences = row.get(21)?;
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
        let page = fetch_page(db.pool(), after_seq, size).await??;
        return expand(db.pool(), &page, &mut Terms::default()).await;
    };
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        let conn = open_reader(&file)?;
        let mut terms = SqliteTerms {
            conn: &conn,
            known: Terms::default(),
        };
        let mut statement = conn.prepare(&format!(
            "SELECT {STORED_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))?;
        let mut rows = statement.query(rusqlite::params![
            after_seq,
            i64::try_from(size).unwrap_or(i64::MAX)
        ])?;
        let mut page = Vec::with_capacity(size);
        while let Some(row) = rows.next()? {
            let mut r = empty_row();
            fill_row(&mut r, row, &mut terms)?;
            page.push(r);
        }
        Ok(page)
    })
    .await?
}

/// A read-only connection of its own to the database file.
fn open_reader(file: &Path) -> anyhow::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", file.display()))?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
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
    let conn = open_reader(file)?;
    // One read transaction for the walk: the terms it reads are those of
    // the events it reads.
    conn.execute_batch("BEGIN")?;
    let mut terms = SqliteTerms {
        conn: &conn,
        known: Terms::default(),
    };
    let mut statement = conn.prepare(&format!(
        "SELECT {STORED_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq"
    ))?;
    let mut rows = statement.query([after_seq])?;
    let fresh = || spares.try_recv().unwrap_or_else(|_| Vec::with_capacity(size));
    let mut page = fresh();
    let mut filled = 0;
    while let Some(row) = rows.next()? {
        if filled == page.len() {
            page.push(empty_row());
        }
        fill_row(&mut page[filled], row, &mut terms)?;
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

pub(crate) async fn find_event<'c>(e: impl AnyExecutor<'c>, seq: i64) -> sqlx::Result<Option<EventRow>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM audit_log WHERE seq = $1"
    )))
    .bind(seq)
    .fetch_optional(e)
    .await
}

/// Positions of the events stored with this hash. Reads the whole table:
/// meant for explaining damage once it is found, not for the walk itself.
pub(crate) async fn seqs_with_hash<'c>(e: impl AnyExecutor<'c>, hash: &str) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT seq FROM audit_events WHERE hash = $1 ORDER BY seq LIMIT 5")
        .bind(stored_hash(hash))
        .fetch_all(e)
        .await
}

/// Positions of the events that name this hash as their predecessor's.
pub(crate) async fn seqs_with_prev_hash<'c>(e: impl AnyExecutor<'c>, hash: &str) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT seq FROM audit_events WHERE prev_hash = $1 ORDER BY seq LIMIT 5")
        .bind(stored_hash(hash))
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
         FROM audit_checkpoints c LEFT JOIN audit_log e ON e.seq = c.seq
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
