//! The audit writer's statements on PostgreSQL. Every replica's writer takes
//! the chain's advisory lock for each batch, so what matters is how long the
//! lock is held: a batch appended by [`append`] holds it for one statement
//! and its commit, with no round trip in between; a batch decided under the
//! lock (see `audit::write_locked`) for three round trips whatever its size
//! (its [`facts`] with the head, [`write`], the commit), plus two per grant
//! with a quota. Each statement's text is constant, so the writer's
//! connection keeps it prepared; values travel as JSON.

use std::{collections::HashSet, time::Duration};

use anyhow::Context as _;
use sqlx::AnyConnection;

use super::{
    audit::EventRow,
    grants::{GrantNow, Reserved},
};

/// What a batch's decisions depend on, in one statement.
pub(crate) struct Facts {
    /// The newest event's position and hash; `None` for an empty log.
    pub(crate) head: Option<(i64, String)>,
    /// The grants the batch's fetches name (without their deliveries and
    /// transfers under way: see `grants::with_quota_details`).
    pub(crate) grants: Vec<GrantNow>,
    /// Retired link-signing keys.
    pub(crate) retired_keys: HashSet<String>,
}

/// The head, the retired keys of `purpose` and the state of the grants
/// `ids`. Run after the lock is granted, the statement sees every batch
/// committed before (READ COMMITTED takes a snapshot per statement).
const FACTS: &str = "SELECT
    (SELECT json_build_array(seq, encode(hash, 'hex')) FROM audit_events ORDER BY seq DESC LIMIT 1)::text,
    (SELECT coalesce(json_agg(kid), '[]') FROM signing_keys WHERE purpose = $1 AND retired_at IS NOT NULL)::text,
    (SELECT coalesce(json_agg(json_build_object('id', g.id, 'expires_at', g.expires_at, 'revoked_at', g.revoked_at,
                                                'quota_bytes', m.quota_bytes, 'quota_files', m.quota_files)), '[]')
       FROM grants g JOIN models m ON m.id = g.model_id
      WHERE g.id IN (SELECT value FROM json_array_elements_text($2::json)))::text";

pub(crate) async fn facts(
    conn: &mut AnyConnection,
    grant_ids: &[&str],
    key_purpose: &str,
) -> anyhow::Result<Facts> {
    let (head, retired, grants): (Option<String>, String, String) = sqlx::query_as(FACTS)
        .bind(key_purpose)
        .bind(serde_json::to_string(grant_ids)?)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Facts {
        head: head.map(|h| serde_json::from_str(&h)).transpose()?,
        grants: serde_json::from_str(&grants)?,
        retired_keys: serde_json::from_str(&retired)?,
    })
}

/// What a batch decided outside the lock was decided on: the grants as read
/// and, for each key that signed one of its links, whether it was retired.
pub(crate) struct Seen<'a> {
    pub(crate) grants: &'a [GrantNow],
    pub(crate) keys: &'a [(&'a str, bool)],
}

/// An event for `weightgate_audit_append`: its row, unchained, and its
/// canonical encoding split around its position and its previous hash
/// (`audit::fragments`).
#[derive(serde::Serialize)]
pub(crate) struct Unchained<'a> {
    /// Its place in the batch, from 0.
    pub(crate) ord: usize,
    #[serde(flatten)]
    pub(crate) row: &'a EventRow,
    pub(crate) mid: String,
    pub(crate) post: String,
}

/// How a batch appended by [`append`] fared with the chain's lock.
pub(crate) struct Appended {
    /// The position of its first event.
    pub(crate) first: i64,
    /// How long it waited for the lock.
    pub(crate) wait: Duration,
    /// How long it held the lock before its commit (whose flush follows,
    /// still under the lock).
    pub(crate) held: Duration,
}

/// Appends `events`, decided at `at`, in one statement under the chain's
/// lock if nothing `seen` has changed and no grant then live may have
/// expired since; `None`, with nothing appended, otherwise. `prefix` is what
/// every event's hash covers before its position.
pub(crate) async fn append(
    conn: &mut AnyConnection,
    prefix: &str,
    at: i64,
    events: &[Unchained<'_>],
    seen: &Seen<'_>,
    released: &[i64],
) -> anyhow::Result<Option<Appended>> {
    let keys: Vec<_> = seen
        .keys
        .iter()
        .map(|(kid, retired)| serde_json::json!({ "kid": kid, "retired": retired }))
        .collect();
    let appended: Option<(i64, f64, f64)> = sqlx::query_as(
        "SELECT first_seq, lock_wait, lock_held FROM weightgate_audit_append($1, $2, $3::json, $4::json, $5::json, $6::json)",
    )
    .bind(prefix)
    .bind(at)
    .bind(serde_json::to_string(events)?)
    .bind(serde_json::to_string(seen.grants)?)
    .bind(serde_json::to_string(&keys)?)
    .bind(serde_json::to_string(released)?)
    .fetch_optional(conn)
    .await
    .context("cannot append to the audit log")?;
    let seconds = |s: f64| Duration::try_from_secs_f64(s).unwrap_or_default();
    Ok(appended.map(|(first, wait, held)| Appended {
        first,
        wait: seconds(wait),
        held: seconds(held),
    }))
}

/// A batch's events, the transfers they open on a quota and those they
/// close, in one statement (data-modifying statements in `WITH` run once
/// each, whether or not the query reads them); the events through
/// `weightgate_audit_store`, which the statement's own `SELECT` calls.
const WRITE: &str = "WITH opened AS (
        INSERT INTO quota_reservations (fetch_seq, grant_id, file_id, bytes, created_at)
        SELECT fetch_seq, grant_id, file_id, bytes, created_at
          FROM json_populate_recordset(NULL::quota_reservations, $2::json)
     ), closed AS (
        DELETE FROM quota_reservations
         WHERE fetch_seq IN (SELECT value::bigint FROM json_array_elements_text($3::json))
     )
     SELECT weightgate_audit_store($1::json)";

pub(crate) async fn write(
    conn: &mut AnyConnection,
    rows: &[EventRow],
    reserved: &[Reserved<'_>],
    released: &[i64],
    at: i64,
) -> anyhow::Result<()> {
    let reserved: Vec<_> = reserved
        .iter()
        .map(|r| {
            serde_json::json!({
                "fetch_seq": r.fetch_seq,
                "grant_id": r.grant_id,
                "file_id": r.file_id,
                "bytes": i64::try_from(r.bytes).unwrap_or(i64::MAX),
                "created_at": at,
            })
        })
        .collect();
    sqlx::query(WRITE)
        .bind(serde_json::to_string(rows)?)
        .bind(serde_json::to_string(&reserved)?)
        .bind(serde_json::to_string(released)?)
        .execute(conn)
        .await?;
    Ok(())
}
