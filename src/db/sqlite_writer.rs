//! The audit writer's own SQLite connection: the statements of one batch,
//! run synchronously on the writer's thread. The same queries as the rest of
//! `db` (the placeholders aside), without a hand-off to a driver thread per
//! statement.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params_from_iter};

use super::grants::Reserved;
use super::{
    audit::{EventRow, HEAD, STORED_COLUMNS, Stored},
    grants::{
        ARCHIVED_DELIVERIES, DELIVERIES, Delivery, GrantNow, RELEASE, RESERVE, RESERVED, STATES,
        archived_deliveries,
    },
    keys::RETIRED,
};

/// Opens the database file for writing. `synchronous = FULL`: in WAL mode
/// every commit is written and fsynced to the WAL before it returns, so a
/// committed event survives a crash of the process, of the machine and a
/// loss of power.
pub(crate) fn open(file: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        file,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// A write transaction that holds the database's write lock from the start.
pub(crate) fn begin(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// The sequence number and hash of the newest event.
pub(crate) fn head(conn: &Connection) -> rusqlite::Result<Option<(i64, String)>> {
    let mut statement = conn.prepare_cached(HEAD)?;
    let mut rows = statement.query([])?;
    match rows.next()? {
        Some(row) => Ok(Some((row.get(0)?, row.get(1)?))),
        None => Ok(None),
    }
}

/// What a batch with fetches reads: [`super::grants::current`], and the
/// retired link keys ([`super::keys::retired`]).
pub(crate) fn batch_facts(
    conn: &Connection,
    ids: &[&str],
    open_since: i64,
) -> rusqlite::Result<(Vec<GrantNow>, std::collections::HashSet<String>)> {
    let mut statement = conn.prepare_cached(&RETIRED.replace("$1", "?"))?;
    let retired_keys = statement
        .query_map([super::keys::LINK], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok((current_grants(conn, ids, open_since)?, retired_keys))
}

/// Records transfers under way, at `at`.
pub(crate) fn reserve(conn: &Connection, reserved: &[Reserved<'_>], at: i64) -> rusqlite::Result<()> {
    if reserved.is_empty() {
        return Ok(());
    }
    let mut statement = conn.prepare_cached(&placeholders(RESERVE))?;
    for r in reserved {
        statement.execute(rusqlite::params![
            r.fetch_seq,
            r.grant_id,
            r.file_id,
            i64::try_from(r.bytes).unwrap_or(i64::MAX),
            at
        ])?;
    }
    Ok(())
}

/// Ends the transfers opened by these fetch events.
pub(crate) fn release(conn: &Connection, fetch_seqs: &[i64]) -> rusqlite::Result<()> {
    if fetch_seqs.is_empty() {
        return Ok(());
    }
    let mut statement = conn.prepare_cached(&placeholders(RELEASE))?;
    for seq in fetch_seqs {
        statement.execute([seq])?;
    }
    Ok(())
}

/// `$1`, `$2`… written as SQLite's `?1`, `?2`….
fn placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

/// [`super::grants::current`]: the state of these grants.
fn current_grants(conn: &Connection, ids: &[&str], open_since: i64) -> rusqlite::Result<Vec<GrantNow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = STATES.replace("{ids}", &vec!["?"; ids.len()].join(", "));
    let mut statement = conn.prepare_cached(&sql)?;
    let mut grants = statement
        .query_map(params_from_iter(ids), |row| {
            Ok(GrantNow {
                id: row.get(0)?,
                expires_at: row.get(1)?,
                revoked_at: row.get(2)?,
                quota_bytes: row.get(3)?,
                quota_files: row.get(4)?,
                deliveries: Vec::new(),
                open: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for g in &mut grants {
        if g.has_quota() {
            let mut statement = conn.prepare_cached(&DELIVERIES.replace("$1", "?"))?;
            g.deliveries = statement
                .query_map([&g.id], |row| {
                    Ok(Delivery {
                        file_id: row.get(0)?,
                        range_start: row.get(1)?,
                        bytes: row.get(2)?,
                        covered: row.get(3)?,
                        size: row.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut statement = conn.prepare_cached(&ARCHIVED_DELIVERIES.replace("$1", "?"))?;
            let archived = statement
                .query_map([&g.id], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?, row.get(3)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            for (file_id, bytes, spans, size) in archived {
                g.deliveries
                    .extend(archived_deliveries(file_id, bytes, &spans, size));
            }
            let mut statement = conn.prepare_cached(&placeholders(RESERVED))?;
            g.open = statement
                .query_map(rusqlite::params![g.id, open_since], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
    }
    Ok(grants)
}

/// Inserts events, one prepared statement run once per event, after the
/// terms they name (see `audit::insert_many`).
pub(crate) fn insert_events(conn: &Connection, rows: &[EventRow]) -> rusqlite::Result<()> {
    let mut ids = std::collections::HashMap::new();
    let mut find = conn.prepare_cached("SELECT id FROM audit_terms WHERE term = ?1")?;
    let mut add = conn.prepare_cached("INSERT INTO audit_terms (term) VALUES (?1)")?;
    for term in rows.iter().flat_map(EventRow::terms).flatten() {
        if !ids.contains_key(term) {
            let id = match find.query_row([term], |row| row.get::<_, i64>(0)) {
                Ok(id) => id,
                Err(rusqlite::Error::QueryReturnedNoRows) => {
                    add.execute([term])?;
                    conn.last_insert_rowid()
                }
                Err(e) => return Err(e),
            };
            ids.insert(term, id);
        }
    }
    let mut statement = conn.prepare_cached(&format!(
        "INSERT INTO audit_events ({STORED_COLUMNS}) VALUES ({})",
        vec!["?"; 22].join(", ")
    ))?;
    for r in rows {
        let r = Stored::of(r, &ids);
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&r.seq, &r.at];
        values.extend(r.terms.iter().map(|id| id as &dyn rusqlite::ToSql));
        values.extend([
            &r.range_start as &dyn rusqlite::ToSql,
            &r.range_end,
            &r.bytes,
            &r.request_uuid,
            &r.request_text,
            &r.prev_hash,
            &r.hash,
            &r.occurrences,
        ]);
        statement.execute(values.as_slice())?;
    }
    Ok(())
}
