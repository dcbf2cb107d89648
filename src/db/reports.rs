//! The tables the operator's reports read (see the migration
//! `audit_reports`): how far the fold of the log got, writing what one step
//! of it adds, and the report queries over them.
//!
//! The fold itself, which decides what each event adds, lives in
//! `audit::report`; this module only moves rows.

use sqlx::{AnyConnection, AnyPool, FromRow, any::AnyExecutor};

/// How far the fold got: the last event folded, and its hash.
#[derive(Clone, Debug, FromRow, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) seq: i64,
    pub(crate) hash: Option<String>,
}

pub(crate) async fn cursor<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Cursor> {
    sqlx::query_as("SELECT seq, hash FROM report_cursor WHERE id = 1")
        .fetch_one(e)
        .await
}

/// The cursor, locked until the transaction ends, so that two folds never
/// add the same events twice. (SQLite's `BEGIN IMMEDIATE` already holds the
/// database's write lock.)
pub(crate) async fn lock_cursor(conn: &mut AnyConnection) -> sqlx::Result<Cursor> {
    let sql = if super::is_postgres(conn) {
        "SELECT seq, hash FROM report_cursor WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT seq, hash FROM report_cursor WHERE id = 1"
    };
    sqlx::query_as(sql).fetch_one(conn).await
}

pub(crate) async fn set_cursor(conn: &mut AnyConnection, cursor: &Cursor) -> sqlx::Result<()> {
    sqlx::query("UPDATE report_cursor SET seq = $1, hash = $2 WHERE id = 1")
        .bind(cursor.seq)
        .bind(&cursor.hash)
        .execute(conn)
        .await
        .map(|_| ())
}

/// The hash stored for the event at `seq`, if there is one.
pub(crate) async fn hash_at<'c>(e: impl AnyExecutor<'c>, seq: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(seq)
        .fetch_optional(e)
        .await
}

/// Every table the fold writes, in the order it empties them.
const TABLES: &[&str] = &[
    "report_coverage",
    "report_downloads",
    "report_download_addresses",
    "report_grant_fetches",
    "report_grant_addresses",
    "report_fetch_minutes",
    "report_refusals",
    "report_refusal_totals",
    "report_daily_deliveries",
];

/// Empties every report table and sets the cursor back to the log's start.
pub(crate) async fn clear(conn: &mut AnyConnection) -> sqlx::Result<()> {
    for table in TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *conn)
            .await?;
    }
    set_cursor(conn, &Cursor { seq: 0, hash: None }).await
}

/// Every row of every report table, each as one line of text, table by
/// table in key order: what two folds of the same log must agree on.
pub async fn dump(pool: &AnyPool) -> sqlx::Result<Vec<String>> {
    let keys: &[(&str, &str)] = &[
        (
            "report_coverage",
            "researcher_id || ' ' || file_id || ' ' || COALESCE(model_id, '-') || ' ' || spans || ' ' || COALESCE(CAST(completed_at AS TEXT), '-')",
        ),
        (
            "report_downloads",
            "researcher_id || ' ' || model_id || ' ' || CAST(fetches AS TEXT) || ' ' || CAST(refused AS TEXT) || ' ' || CAST(bytes AS TEXT) || ' ' || COALESCE(CAST(first_fetch AS TEXT), '-') || ' ' || COALESCE(CAST(last_fetch AS TEXT), '-')",
        ),
        (
            "report_download_addresses",
            "researcher_id || ' ' || model_id || ' ' || client_ip",
        ),
        (
            "report_grant_fetches",
            "grant_id || ' ' || CAST(hour AS TEXT) || ' ' || client_ip || ' ' || CAST(fetches AS TEXT) || ' ' || CAST(revoked AS TEXT) || ' ' || CAST(first_at AS TEXT) || ' ' || CAST(last_at AS TEXT) || ' ' || COALESCE(CAST(revoked_first_at AS TEXT), '-') || ' ' || COALESCE(CAST(revoked_last_at AS TEXT), '-')",
        ),
        (
            "report_grant_addresses",
            "grant_id || ' ' || client_ip || ' ' || CAST(fetches AS TEXT) || ' ' || CAST(revoked AS TEXT) || ' ' || CAST(first_at AS TEXT) || ' ' || CAST(last_at AS TEXT) || ' ' || COALESCE(CAST(revoked_first_at AS TEXT), '-') || ' ' || COALESCE(CAST(revoked_last_at AS TEXT), '-')",
        ),
        (
            "report_fetch_minutes",
            "grant_id || ' ' || CAST(minute AS TEXT) || ' ' || CAST(fetches AS TEXT)",
        ),
        (
            "report_refusals",
            "action || ' ' || reason || ' ' || client_ip || ' ' || CAST(hour AS TEXT) || ' ' || CAST(events AS TEXT) || ' ' || CAST(first_at AS TEXT) || ' ' || CAST(last_at AS TEXT)",
        ),
        (
            "report_refusal_totals",
            "action || ' ' || reason || ' ' || client_ip || ' ' || CAST(events AS TEXT) || ' ' || CAST(first_at AS TEXT) || ' ' || CAST(last_at AS TEXT)",
        ),
        (
            "report_daily_deliveries",
            "model_id || ' ' || CAST(day AS TEXT) || ' ' || CAST(count AS TEXT)",
        ),
    ];
    let mut lines = Vec::new();
    for (table, row) in keys {
        let mut rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT '{table}: ' || {row} FROM {table}"
        )))
        .fetch_all(pool)
        .await?;
        rows.sort();
        lines.extend(rows);
    }
    Ok(lines)
}

/// A researcher's coverage of one file, as stored.
#[derive(Clone, Debug, FromRow, serde::Serialize)]
pub(crate) struct CoverageRow {
    pub(crate) researcher_id: String,
    pub(crate) file_id: String,
    pub(crate) model_id: Option<String>,
    pub(crate) spans: String,
    pub(crate) completed_at: Option<i64>,
}

#[derive(serde::Serialize)]
pub(crate) struct CoverageKey<'a> {
    pub(crate) researcher_id: &'a str,
    pub(crate) file_id: &'a str,
}

/// The stored coverage of each of `keys` that has any.
pub(crate) async fn coverage_of(
    conn: &mut AnyConnection,
    keys: &[CoverageKey<'_>],
) -> sqlx::Result<Vec<CoverageRow>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = if super::is_postgres(conn) {
        "SELECT c.researcher_id, c.file_id, c.model_id, c.spans, c.completed_at
         FROM json_to_recordset($1::json) AS k(researcher_id text, file_id text)
         JOIN report_coverage c ON c.researcher_id = k.researcher_id AND c.file_id = k.file_id"
    } else {
        "SELECT c.researcher_id, c.file_id, c.model_id, c.spans, c.completed_at
         FROM json_each($1) k
         JOIN report_coverage c ON c.researcher_id = json_extract(k.value, '$.researcher_id')
            AND c.file_id = json_extract(k.value, '$.file_id')"
    };
    let keys = serde_json::to_string(keys).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query_as(sql).bind(keys).fetch_all(conn).await
}

/// The size of each of the files named that still exists.
pub(crate) async fn file_sizes(conn: &mut AnyConnection, ids: &[&str]) -> sqlx::Result<Vec<(String, i64)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = if super::is_postgres(conn) {
        "SELECT f.id, f.size FROM files f WHERE f.id IN (SELECT json_array_elements_text($1::json))"
    } else {
        "SELECT f.id, f.size FROM files f WHERE f.id IN (SELECT value FROM json_each($1))"
    };
    let ids = serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query_as(sql).bind(ids).fetch_all(conn).await
}

/// One report table's columns, its key, and how a row written for a key it
/// already holds combines with the stored one.
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    key: &'static str,
    on_conflict: &'static str,
}

/// The earlier of two times, either of which may be missing.
macro_rules! earliest {
    ($c:literal) => {
        concat!(
            $c,
            " = CASE WHEN excluded.",
            $c,
            " IS NULL THEN {t}.",
            $c,
            " WHEN {t}.",
            $c,
            " IS NULL OR excluded.",
            $c,
            " < {t}.",
            $c,
            " THEN excluded.",
            $c,
            " ELSE {t}.",
            $c,
            " END"
        )
    };
}
macro_rules! latest {
    ($c:literal) => {
        concat!(
            $c,
            " = CASE WHEN excluded.",
            $c,
            " IS NULL THEN {t}.",
            $c,
            " WHEN {t}.",
            $c,
            " IS NULL OR excluded.",
            $c,
            " > {t}.",
            $c,
            " THEN excluded.",
            $c,
            " ELSE {t}.",
            $c,
            " END"
        )
    };
}

const COVERAGE: Table = Table {
    name: "report_coverage",
    columns: &["researcher_id", "file_id", "model_id", "spans", "completed_at"],
    key: "researcher_id, file_id",
    on_conflict: "DO UPDATE SET model_id = excluded.model_id, spans = excluded.spans, completed_at = excluded.completed_at",
};
const DOWNLOADS: Table = Table {
    name: "report_downloads",
    columns: &[
        "researcher_id",
        "model_id",
        "fetches",
        "refused",
        "bytes",
        "first_fetch",
        "last_fetch",
    ],
    key: "researcher_id, model_id",
    on_conflict: concat!(
        "DO UPDATE SET fetches = {t}.fetches + excluded.fetches, refused = {t}.refused + excluded.refused, ",
        "bytes = {t}.bytes + excluded.bytes, ",
        earliest!("first_fetch"),
        ", ",
        latest!("last_fetch")
    ),
};
const DOWNLOAD_ADDRESSES: Table = Table {
    name: "report_download_addresses",
    columns: &["researcher_id", "model_id", "client_ip"],
    key: "researcher_id, model_id, client_ip",
    on_conflict: "DO NOTHING",
};
const GRANT_FETCHES: Table = Table {
    name: "report_grant_fetches",
    columns: &[
        "grant_id",
        "hour",
        "client_ip",
        "fetches",
        "revoked",
        "first_at",
        "last_at",
        "revoked_first_at",
        "revoked_last_at",
    ],
    key: "grant_id, hour, client_ip",
    on_conflict: concat!(
        "DO UPDATE SET fetches = {t}.fetches + excluded.fetches, revoked = {t}.revoked + excluded.revoked, ",
        earliest!("first_at"),
        ", ",
        latest!("last_at"),
        ", ",
        earliest!("revoked_first_at"),
        ", ",
        latest!("revoked_last_at")
    ),
};
const GRANT_ADDRESSES: Table = Table {
    name: "report_grant_addresses",
    columns: &[
        "grant_id",
        "client_ip",
        "fetches",
        "revoked",
        "first_at",
        "last_at",
        "revoked_first_at",
        "revoked_last_at",
    ],
    key: "grant_id, client_ip",
    on_conflict: concat!(
        "DO UPDATE SET fetches = {t}.fetches + excluded.fetches, revoked = {t}.revoked + excluded.revoked, ",
        earliest!("first_at"),
        ", ",
        latest!("last_at"),
        ", ",
        earliest!("revoked_first_at"),
        ", ",
        latest!("revoked_last_at")
    ),
};
const FETCH_MINUTES: Table = Table {
    name: "report_fetch_minutes",
    columns: &["grant_id", "minute", "fetches"],
    key: "grant_id, minute",
    on_conflict: "DO UPDATE SET fetches = {t}.fetches + excluded.fetches",
};
const REFUSALS: Table = Table {
    name: "report_refusals",
    columns: &[
        "action",
        "reason",
        "client_ip",
        "hour",
        "events",
        "first_at",
        "last_at",
    ],
    key: "action, reason, client_ip, hour",
    on_conflict: concat!(
        "DO UPDATE SET events = {t}.events + excluded.events, ",
        earliest!("first_at"),
        ", ",
        latest!("last_at")
    ),
};
const REFUSAL_TOTALS: Table = Table {
    name: "report_refusal_totals",
    columns: &["action", "reason", "client_ip", "events", "first_at", "last_at"],
    key: "action, reason, client_ip",
    on_conflict: concat!(
        "DO UPDATE SET events = {t}.events + excluded.events, ",
        earliest!("first_at"),
        ", ",
        latest!("last_at")
    ),
};
const DAILY: Table = Table {
    name: "report_daily_deliveries",
    columns: &["model_id", "day", "count"],
    key: "model_id, day",
    on_conflict: "DO UPDATE SET count = {t}.count + excluded.count",
};

impl Table {
    /// One statement that writes any number of rows, given as one JSON
    /// array of objects named by column: its text never changes with their
    /// number.
    fn sql(&self, postgres: bool) -> String {
        let columns = self.columns.join(", ");
        let source = if postgres {
            format!(
                "SELECT {columns} FROM json_populate_recordset(NULL::{name}, $1::json)",
                name = self.name
            )
        } else {
            let values: Vec<String> = self
                .columns
                .iter()
                .map(|c| format!("json_extract(value, '$.{c}')"))
                .collect();
            // `WHERE true` tells SQLite's parser the ON CONFLICT that
            // follows belongs to the INSERT, not to a join.
            format!("SELECT {} FROM json_each($1) WHERE true", values.join(", "))
        };
        format!(
            "INSERT INTO {name} ({columns}) {source} ON CONFLICT ({key}) {update}",
            name = self.name,
            key = self.key,
            update = self.on_conflict.replace("{t}", self.name),
        )
    }
}

/// Rows the fold writes for one table, in the table's own row type.
async fn write<T: serde::Serialize>(conn: &mut AnyConnection, table: &Table, rows: &[T]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = table.sql(super::is_postgres(conn));
    for chunk in rows.chunks(10_000) {
        let json = serde_json::to_string(chunk).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(json)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct DownloadsRow {
    pub(crate) researcher_id: String,
    pub(crate) model_id: String,
    pub(crate) fetches: i64,
    pub(crate) refused: i64,
    pub(crate) bytes: i64,
    pub(crate) first_fetch: Option<i64>,
    pub(crate) last_fetch: Option<i64>,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct AddressRow {
    pub(crate) researcher_id: String,
    pub(crate) model_id: String,
    pub(crate) client_ip: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct GrantFetchesRow {
    pub(crate) grant_id: String,
    pub(crate) hour: i64,
    pub(crate) client_ip: String,
    pub(crate) fetches: i64,
    pub(crate) revoked: i64,
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
    pub(crate) revoked_first_at: Option<i64>,
    pub(crate) revoked_last_at: Option<i64>,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct FetchMinuteRow {
    pub(crate) grant_id: String,
    pub(crate) minute: i64,
    pub(crate) fetches: i64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct RefusalRow {
    pub(crate) action: String,
    pub(crate) reason: String,
    pub(crate) client_ip: String,
    pub(crate) hour: i64,
    pub(crate) events: i64,
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct DailyRow {
    pub(crate) model_id: String,
    pub(crate) day: i64,
    pub(crate) count: i64,
}

/// What one step of the fold adds to the report tables.
#[derive(Debug, Default)]
pub(crate) struct Additions {
    /// Replaces the stored coverage of each key.
    pub(crate) coverage: Vec<CoverageRow>,
    pub(crate) downloads: Vec<DownloadsRow>,
    pub(crate) addresses: Vec<AddressRow>,
    pub(crate) grant_fetches: Vec<GrantFetchesRow>,
    /// Rows of [`GrantFetchesRow`] for all time: `hour` is not written.
    pub(crate) grant_addresses: Vec<GrantFetchesRow>,
    pub(crate) fetch_minutes: Vec<FetchMinuteRow>,
    pub(crate) refusals: Vec<RefusalRow>,
    /// Rows of [`RefusalRow`] for all time: `hour` is not written.
    pub(crate) refusal_totals: Vec<RefusalRow>,
    pub(crate) daily: Vec<DailyRow>,
}

/// Writes one step of the fold, in the transaction that moves the cursor.
pub(crate) async fn add(conn: &mut AnyConnection, a: &Additions) -> sqlx::Result<()> {
    write(conn, &COVERAGE, &a.coverage).await?;
    write(conn, &DOWNLOADS, &a.downloads).await?;
    write(conn, &DOWNLOAD_ADDRESSES, &a.addresses).await?;
    write(conn, &GRANT_FETCHES, &a.grant_fetches).await?;
    write(conn, &GRANT_ADDRESSES, &a.grant_addresses).await?;
    write(conn, &FETCH_MINUTES, &a.fetch_minutes).await?;
    write(conn, &REFUSALS, &a.refusals).await?;
    write(conn, &REFUSAL_TOTALS, &a.refusal_totals).await?;
    write(conn, &DAILY, &a.daily).await
}

// The reports' queries.

/// Fetch and delivery totals per researcher and model.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct DeliveryTotals {
    pub(crate) researcher_id: String,
    pub(crate) email: Option<String>,
    pub(crate) model_id: String,
    pub(crate) model_slug: Option<String>,
    /// Fetches let through.
    pub(crate) fetches: i64,
    pub(crate) refused: i64,
    /// Bytes actually sent, over every transfer.
    pub(crate) bytes: i64,
    pub(crate) first_fetch: Option<i64>,
    pub(crate) last_fetch: Option<i64>,
    /// Distinct client addresses of the fetches.
    pub(crate) addresses: i64,
    /// Files of the model's published releases delivered whole.
    pub(crate) files_complete: i64,
}

/// Fetch and delivery totals per researcher and model, optionally of one model.
pub(crate) async fn delivery_totals<'c>(
    e: impl AnyExecutor<'c>,
    model_id: Option<&str>,
) -> sqlx::Result<Vec<DeliveryTotals>> {
    // Each total is grouped once and joined, not counted again for every
    // row: a correlated count would walk the model's coverage per researcher.
    sqlx::query_as(
        "SELECT d.researcher_id, r.email, d.model_id, m.slug AS model_slug, d.fetches, d.refused, d.bytes,
            d.first_fetch, d.last_fetch, COALESCE(a.n, 0) AS addresses, COALESCE(c.n, 0) AS files_complete
         FROM report_downloads d
         LEFT JOIN researchers r ON r.id = d.researcher_id
         LEFT JOIN models m ON m.id = d.model_id
         LEFT JOIN (
            SELECT researcher_id, model_id, COUNT(*) AS n FROM report_download_addresses
            WHERE ($1 IS NULL OR model_id = $1)
            GROUP BY researcher_id, model_id
         ) a ON a.researcher_id = d.researcher_id AND a.model_id = d.model_id
         LEFT JOIN (
            SELECT cov.researcher_id, cov.model_id, COUNT(*) AS n FROM report_coverage cov
            JOIN files f ON f.id = cov.file_id
            JOIN releases rel ON rel.id = f.release_id
            WHERE cov.completed_at IS NOT NULL AND rel.published_at IS NOT NULL AND rel.model_id = cov.model_id
              AND ($1 IS NULL OR cov.model_id = $1)
            GROUP BY cov.researcher_id, cov.model_id
         ) c ON c.researcher_id = d.researcher_id AND c.model_id = d.model_id
         WHERE ($1 IS NULL OR d.model_id = $1)
         -- Rows without a slug or an e-mail last, on both databases.
         ORDER BY m.slug IS NULL, m.slug, r.email IS NULL, r.email, d.researcher_id",
    )
    .bind(model_id)
    .fetch_all(e)
    .await
}

/// A file one researcher holds whole, and since when.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct Completed {
    pub(crate) researcher_id: String,
    pub(crate) email: Option<String>,
    pub(crate) file_id: String,
    pub(crate) completed_at: i64,
}

/// Every file of `model_id` delivered whole, to whom and when.
pub(crate) async fn completed<'c>(e: impl AnyExecutor<'c>, model_id: &str) -> sqlx::Result<Vec<Completed>> {
    sqlx::query_as(
        "SELECT c.researcher_id, r.email, c.file_id, c.completed_at
         FROM report_coverage c LEFT JOIN researchers r ON r.id = c.researcher_id
         WHERE c.model_id = $1 AND c.completed_at IS NOT NULL",
    )
    .bind(model_id)
    .fetch_all(e)
    .await
}

/// Transfers that ended whole, per model and day, from day `first_day` on.
pub(crate) async fn daily_deliveries<'c>(
    e: impl AnyExecutor<'c>,
    first_day: i64,
) -> sqlx::Result<Vec<(String, i64, i64)>> {
    sqlx::query_as("SELECT model_id, day, count FROM report_daily_deliveries WHERE day >= $1")
        .bind(first_day)
        .fetch_all(e)
        .await
}

/// Fetches under one grant.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct GrantActivity {
    pub(crate) grant_id: String,
    pub(crate) email: Option<String>,
    pub(crate) model_slug: Option<String>,
    pub(crate) fetches: i64,
    pub(crate) addresses: i64,
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
}

/// Which totals a report over the events since `since` reads: those for
/// all time; or the hourly ones from `whole_from`, the first whole hour,
/// and, when `since` falls inside an hour, the log itself for the part-hour
/// before it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) since: i64,
    pub(crate) whole_from: i64,
}

impl Window {
    fn all_time(self) -> bool {
        self.since == i64::MIN
    }

    /// Whether the part-hour must be read from the log. (When not, the
    /// statement leaves the log out: a planner cannot tell that an empty
    /// time range is empty, and may walk an index of the log to find out.)
    fn part_hour(self) -> bool {
        !self.all_time() && self.since < self.whole_from
    }

    /// The values a source from [`Window::source`] takes, in order.
    fn binds(self) -> Vec<i64> {
        if self.all_time() {
            Vec::new()
        } else if self.part_hour() {
            vec![self.whole_from, self.since]
        } else {
            vec![self.whole_from]
        }
    }

    /// A `SELECT` of `columns` from the all-time table, or from the hourly
    /// one (and the log), with `filter` applied to each. `$w` and `$s` in
    /// them stand for the placeholders of `whole_from` and `since`, numbered
    /// from `$first`.
    fn source(self, first: usize, totals: &str, hourly: &str, log: &str) -> String {
        let (w, s) = (format!("${first}"), format!("${}", first + 1));
        if self.all_time() {
            totals.to_owned()
        } else if self.part_hour() {
            format!(
                "{} UNION ALL {}",
                hourly.replace("$w", &w),
                log.replace("$w", &w).replace("$s", &s)
            )
        } else {
            hourly.replace("$w", &w)
        }
    }
}

/// The fetches per grant and client address in `window`, as `grant_id,
/// client_ip, n, first_at, last_at`; `revoked_only` keeps the fetches
/// refused because the grant was revoked. Its placeholders start at `$2`.
fn grant_fetches(window: Window, revoked_only: bool) -> String {
    let (kept, first, last, log_filter) = if revoked_only {
        (
            "revoked",
            "revoked_first_at",
            "revoked_last_at",
            " AND outcome = 'refused' AND reason = 'grant_revoked'",
        )
    } else {
        ("fetches", "first_at", "last_at", "")
    };
    let columns = format!(
        "grant_id, NULLIF(client_ip, '') AS client_ip, {kept} AS n, {first} AS first_at, {last} AS last_at"
    );
    window.source(
        2,
        &format!("SELECT {columns} FROM report_grant_addresses WHERE {kept} > 0"),
        &format!("SELECT {columns} FROM report_grant_fetches WHERE hour >= $w AND {kept} > 0"),
        &format!(
            "SELECT grant_id, client_ip, 1 AS n, at AS first_at, at AS last_at FROM audit_log
             WHERE seq IN (SELECT seq FROM audit_events
                           WHERE action_term = (SELECT id FROM audit_terms WHERE term = 'file.fetch')
                             AND grant_term IS NOT NULL AND at >= $s AND at < $w){log_filter}"
        ),
    )
}

/// Grants whose links were fetched from more than `more_than` distinct
/// client addresses in `window`.
pub(crate) async fn grants_with_many_addresses<'c>(
    e: impl AnyExecutor<'c>,
    window: Window,
    more_than: i64,
) -> sqlx::Result<Vec<GrantActivity>> {
    let sql = format!(
        "SELECT x.grant_id, r.email, m.slug AS model_slug, CAST(SUM(x.n) AS BIGINT) AS fetches,
            COUNT(DISTINCT x.client_ip) AS addresses, MIN(x.first_at) AS first_at, MAX(x.last_at) AS last_at
         FROM ({}) x
         LEFT JOIN grants g ON g.id = x.grant_id
         LEFT JOIN researchers r ON r.id = g.researcher_id
         LEFT JOIN models m ON m.id = g.model_id
         GROUP BY x.grant_id, r.email, m.slug
         HAVING COUNT(DISTINCT x.client_ip) > $1
         ORDER BY addresses DESC, x.grant_id",
        grant_fetches(window, false)
    );
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(more_than);
    for v in window.binds() {
        query = query.bind(v);
    }
    query.fetch_all(e).await
}

/// The distinct client addresses of a grant's fetches in `window`'s totals,
/// at most 100: [`part_hour_addresses`] has those of the part-hour.
pub(crate) async fn addresses_of_grant<'c>(
    e: impl AnyExecutor<'c>,
    grant_id: &str,
    window: Window,
) -> sqlx::Result<Vec<String>> {
    if window.all_time() {
        return sqlx::query_scalar(
            "SELECT client_ip FROM report_grant_addresses
             WHERE grant_id = $1 AND fetches > 0 AND client_ip <> '' ORDER BY client_ip LIMIT 100",
        )
        .bind(grant_id)
        .fetch_all(e)
        .await;
    }
    sqlx::query_scalar(
        "SELECT DISTINCT client_ip FROM report_grant_fetches
         WHERE grant_id = $1 AND hour >= $2 AND fetches > 0 AND client_ip <> '' ORDER BY client_ip LIMIT 100",
    )
    .bind(grant_id)
    .bind(window.whole_from)
    .fetch_all(e)
    .await
}

/// The distinct (grant, client address) pairs of the fetches in `window`'s
/// part-hour, read from the log once for every grant (by its time index: a
/// grant's own index entries would be walked whole for each grant).
pub(crate) async fn part_hour_addresses<'c>(
    e: impl AnyExecutor<'c>,
    window: Window,
) -> sqlx::Result<Vec<(String, String)>> {
    if !window.part_hour() {
        return Ok(Vec::new());
    }
    sqlx::query_as(
        "SELECT DISTINCT g.term, a.term FROM audit_events e
         JOIN audit_terms g ON g.id = e.grant_term JOIN audit_terms a ON a.id = e.client_ip_term
         WHERE e.action_term = (SELECT id FROM audit_terms WHERE term = 'file.fetch') AND e.at >= $1 AND e.at < $2",
    )
    .bind(window.since)
    .bind(window.whole_from)
    .fetch_all(e)
    .await
}

/// Grants whose links were fetched, refused as revoked, at least `at_least`
/// times in `window`.
pub(crate) async fn refused_after_revocation<'c>(
    e: impl AnyExecutor<'c>,
    window: Window,
    at_least: i64,
) -> sqlx::Result<Vec<GrantActivity>> {
    let sql = format!(
        "SELECT x.grant_id, r.email, m.slug AS model_slug, CAST(SUM(x.n) AS BIGINT) AS fetches,
            COUNT(DISTINCT x.client_ip) AS addresses, MIN(x.first_at) AS first_at, MAX(x.last_at) AS last_at
         FROM ({}) x
         LEFT JOIN grants g ON g.id = x.grant_id
         LEFT JOIN researchers r ON r.id = g.researcher_id
         LEFT JOIN models m ON m.id = g.model_id
         GROUP BY x.grant_id, r.email, m.slug
         HAVING SUM(x.n) >= $1
         ORDER BY first_at, x.grant_id",
        grant_fetches(window, true)
    );
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(at_least);
    for v in window.binds() {
        query = query.bind(v);
    }
    query.fetch_all(e).await
}

/// Minutes (`hours` false) or hours in which one grant's links were
/// fetched at least `at_least` times, ending after `since`: where a burst
/// may be.
pub(crate) async fn busy_buckets<'c>(
    e: impl AnyExecutor<'c>,
    hours: bool,
    at_least: i64,
    since: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
    // Sorted here, not by the statement: an ORDER BY would have the planner
    // walk the table in key order rather than the busy ones by their index.
    let (sql, span) = if hours {
        (
            "SELECT grant_id, hour FROM report_grant_fetches WHERE hour > $2
             GROUP BY grant_id, hour HAVING SUM(fetches) >= $1",
            3_600_000,
        )
    } else {
        (
            "SELECT grant_id, minute FROM report_fetch_minutes WHERE fetches >= $1 AND minute > $2",
            60_000,
        )
    };
    let mut busy: Vec<(String, i64)> = sqlx::query_as(sql)
        .bind(at_least)
        .bind(since.saturating_sub(span))
        .fetch_all(e)
        .await?;
    busy.sort_unstable();
    Ok(busy)
}

/// The times of a grant's fetches from `from` to `to` (both included), in
/// log order.
pub(crate) async fn fetch_times<'c>(
    e: impl AnyExecutor<'c>,
    grant_id: &str,
    from: i64,
    to: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT at FROM audit_events
         WHERE grant_term = (SELECT id FROM audit_terms WHERE term = $1)
           AND action_term = (SELECT id FROM audit_terms WHERE term = 'file.fetch')
           AND at >= $2 AND at <= $3 ORDER BY seq",
    )
    .bind(grant_id)
    .bind(from)
    .bind(to)
    .fetch_all(e)
    .await
}

/// Who a grant belongs to, for the report.
pub(crate) async fn grant_owner<'c>(
    e: impl AnyExecutor<'c>,
    grant_id: &str,
) -> sqlx::Result<Option<(Option<String>, Option<String>)>> {
    sqlx::query_as(
        "SELECT r.email, m.slug FROM grants g
         LEFT JOIN researchers r ON r.id = g.researcher_id
         LEFT JOIN models m ON m.id = g.model_id
         WHERE g.id = $1",
    )
    .bind(grant_id)
    .fetch_optional(e)
    .await
}

/// Refusals of one kind from one client address.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct AddressActivity {
    pub(crate) client_ip: String,
    pub(crate) count: i64,
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
}

/// Client addresses with at least `at_least` events of `action` refused for
/// `reason` in `window`.
pub(crate) async fn refusals_by_address<'c>(
    e: impl AnyExecutor<'c>,
    action: &str,
    reason: &str,
    window: Window,
    at_least: i64,
) -> sqlx::Result<Vec<AddressActivity>> {
    let source = window.source(
        4,
        "SELECT client_ip, events AS n, first_at, last_at FROM report_refusal_totals
         WHERE action = $1 AND reason = $2",
        "SELECT client_ip, events AS n, first_at, last_at FROM report_refusals
         WHERE action = $1 AND reason = $2 AND hour >= $w",
        "SELECT client_ip, COALESCE(occurrences, 1) AS n, at AS first_at, at AS last_at FROM audit_log
         WHERE seq IN (SELECT seq FROM audit_events
                       WHERE action_term = (SELECT id FROM audit_terms WHERE term = $1)
                         AND outcome_term = (SELECT id FROM audit_terms WHERE term = 'refused')
                         AND reason_term = (SELECT id FROM audit_terms WHERE term = $2)
                         AND at >= $s AND at < $w AND client_ip_term IS NOT NULL)",
    );
    let sql = format!(
        "SELECT client_ip, CAST(SUM(n) AS BIGINT) AS count, MIN(first_at) AS first_at, MAX(last_at) AS last_at
         FROM ({source}) x
         GROUP BY client_ip
         HAVING SUM(n) >= $3
         ORDER BY count DESC, client_ip"
    );
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(action)
        .bind(reason)
        .bind(at_least);
    for v in window.binds() {
        query = query.bind(v);
    }
    query.fetch_all(e).await
}
