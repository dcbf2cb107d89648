//! Grants: a researcher's time-limited, revocable access to one model.

use sqlx::{AnyConnection, FromRow, any::AnyExecutor};

use crate::{
    bind_where,
    db::{Bind, Tx, Where, like_escape},
    types::states::Origin,
};

pub(crate) struct NewGrant<'a> {
    pub(crate) id: &'a str,
    pub(crate) application_id: &'a str,
    pub(crate) researcher_id: &'a str,
    pub(crate) model_id: &'a str,
    /// The approval e-mail's access URL: its id, and its secret's hash.
    pub(crate) access_url_id: &'a str,
    pub(crate) access_token_hash: &'a str,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
}

pub(crate) async fn insert_grant(tx: &mut Tx, g: &NewGrant<'_>) -> sqlx::Result<()> {
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
    insert_token(
        &mut **tx,
        &NewAccessUrl {
            id: g.access_url_id,
            token_hash: g.access_token_hash,
            grant_id: g.id,
            origin: Origin::Approval,
            name: None,
            created_at: g.created_at,
        },
    )
    .await
}

/// A grant with the researcher's e-mail and the model's names.
#[derive(Clone, Debug, FromRow)]
pub struct GrantView {
    pub id: String,
    pub(crate) application_id: String,
    pub researcher_id: String,
    pub model_id: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) revoked_reason: Option<String>,
    pub(crate) email: String,
    pub(crate) model_slug: String,
    pub(crate) model_title: String,
    /// The name the researcher gave on the application that made the grant.
    pub(crate) researcher_name: String,
}

const VIEW: &str = "SELECT g.id, g.application_id, g.researcher_id, g.model_id, g.created_at, g.expires_at,
        g.revoked_at, g.revoked_reason, r.email, ga.name AS researcher_name, m.slug AS model_slug,
        m.title AS model_title
    FROM grants g
    JOIN researchers r ON r.id = g.researcher_id
    JOIN applications ga ON ga.id = g.application_id
    JOIN models m ON m.id = g.model_id";

pub async fn find_view<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Option<GrantView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("{VIEW} WHERE g.id = $1")))
        .bind(id)
        .fetch_optional(e)
        .await
}

/// Every grant, newest first.
pub(crate) async fn list<'c>(e: impl AnyExecutor<'c>) -> sqlx::Result<Vec<GrantView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} ORDER BY g.created_at DESC, g.id"
    )))
    .fetch_all(e)
    .await
}

/// What can change about a grant after it is made, with its model's limits
/// and, when the model has any, the grant's deliveries so far.
#[derive(Clone, Debug, FromRow, serde::Deserialize, serde::Serialize)]
pub(crate) struct GrantNow {
    pub(crate) id: String,
    pub(crate) expires_at: i64,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) quota_bytes: Option<i64>,
    pub(crate) quota_files: Option<i64>,
    #[sqlx(skip)]
    #[serde(skip)]
    pub(crate) deliveries: Vec<Delivery>,
    /// Transfers let through and not yet recorded as delivered, as the audit
    /// writer knows them: (file id, bytes asked for).
    #[sqlx(skip)]
    #[serde(skip)]
    pub(crate) open: Vec<(String, u64)>,
}

impl GrantNow {
    /// Whether the grant's model limits what one grant may receive.
    pub(crate) fn has_quota(&self) -> bool {
        self.quota_bytes.is_some() || self.quota_files.is_some()
    }
}

/// [`current`]'s query; `{ids}` stands for the list of placeholders.
pub(super) const STATES: &str = "SELECT g.id, g.expires_at, g.revoked_at, m.quota_bytes, m.quota_files
    FROM grants g JOIN models m ON m.id = g.model_id
    WHERE g.id IN ({ids})";

/// The current state of these grants, in one query (plus one per grant
/// whose model limits deliveries).
/// Transfers under way on a grant since `since`: (file id, bytes asked for).
pub(super) const RESERVED: &str = "SELECT file_id, bytes FROM quota_reservations
    WHERE grant_id = $1 AND created_at > $2";

/// The current state of these grants, in one query, plus, for each grant
/// whose model limits deliveries, its deliveries and its transfers under
/// way since `open_since`.
pub(crate) async fn current(
    conn: &mut AnyConnection,
    ids: &[&str],
    open_since: i64,
) -> sqlx::Result<Vec<GrantNow>> {
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
    let grants = query.fetch_all(&mut *conn).await?;
    with_quota_details(conn, grants, open_since).await
}

/// Adds to each grant whose model limits deliveries its deliveries and its
/// transfers under way since `open_since`.
pub(crate) async fn with_quota_details(
    conn: &mut AnyConnection,
    mut grants: Vec<GrantNow>,
    open_since: i64,
) -> sqlx::Result<Vec<GrantNow>> {
    for g in &mut grants {
        if g.has_quota() {
            g.deliveries = deliveries(&mut *conn, &g.id).await?;
            let open: Vec<(String, i64)> = sqlx::query_as(RESERVED)
                .bind(&g.id)
                .bind(open_since)
                .fetch_all(&mut *conn)
                .await?;
            g.open = open
                .into_iter()
                .map(|(file, bytes)| (file, u64::try_from(bytes).unwrap_or(0)))
                .collect();
        }
    }
    Ok(grants)
}

/// A transfer under way: the fetch event that opened it, its grant, its
/// file and the bytes it asked for.
#[derive(Clone, Debug)]
pub(crate) struct Reserved<'a> {
    pub(crate) fetch_seq: i64,
    pub(crate) grant_id: &'a str,
    pub(crate) file_id: &'a str,
    pub(crate) bytes: u64,
}

/// Records transfers under way at `at`.
pub(crate) async fn reserve(
    conn: &mut AnyConnection,
    reserved: &[Reserved<'_>],
    at: i64,
) -> sqlx::Result<()> {
    for r in reserved {
        sqlx::query(RESERVE)
            .bind(r.fetch_seq)
            .bind(r.grant_id)
            .bind(r.file_id)
            .bind(i64::try_from(r.bytes).unwrap_or(i64::MAX))
            .bind(at)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub(super) const RESERVE: &str = "INSERT INTO quota_reservations (fetch_seq, grant_id, file_id, bytes, created_at) VALUES ($1, $2, $3, $4, $5)";

pub(super) const RELEASE: &str = "DELETE FROM quota_reservations WHERE fetch_seq = $1";

/// Ends the transfers opened by these fetch events.
pub(crate) async fn release(conn: &mut AnyConnection, fetch_seqs: &[i64]) -> sqlx::Result<()> {
    for seq in fetch_seqs {
        sqlx::query(RELEASE).bind(seq).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Forgets transfers under way recorded before `before`, whose delivery was
/// never recorded (the replica that served them stopped without it).
pub(crate) async fn forget_reservations<'c>(e: impl AnyExecutor<'c>, before: i64) -> sqlx::Result<u64> {
    let done = sqlx::query("DELETE FROM quota_reservations WHERE created_at <= $1")
        .bind(before)
        .execute(e)
        .await?;
    Ok(done.rows_affected())
}

/// Revokes a live grant; `false` when it was already revoked.
pub(crate) async fn revoke(tx: &mut Tx, id: &str, reason: &str, now: i64) -> sqlx::Result<bool> {
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
/// bytes went out (`bytes`, what a byte quota counts) and how many of them
/// from `range_start` on cover the file (`covered`, what a file quota
/// counts), and the file's size. A delivery from the log covers what it
/// sent; the deliveries of archived events come as their merged spans, and
/// their bytes apart (see [`archived_deliveries`]).
#[derive(Clone, Debug, FromRow)]
pub(crate) struct Delivery {
    pub(crate) file_id: String,
    pub(crate) range_start: i64,
    pub(crate) bytes: i64,
    pub(crate) covered: i64,
    pub(crate) size: i64,
}

pub(super) const DELIVERIES: &str =
    "SELECT t.term AS file_id, e.range_start, e.bytes, e.bytes AS covered, f.size
    FROM audit_events e JOIN audit_terms t ON t.id = e.file_term JOIN files f ON f.id = t.term
    WHERE e.grant_term = (SELECT id FROM audit_terms WHERE term = $1)
      AND e.action_term = (SELECT id FROM audit_terms WHERE term = 'file.delivered')
      AND e.range_start IS NOT NULL AND e.bytes IS NOT NULL";

/// What archived events delivered under a grant: per file, bytes and spans.
pub(super) const ARCHIVED_DELIVERIES: &str = "SELECT d.file_id, d.bytes, d.spans, f.size
    FROM audit_archived_deliveries d JOIN files f ON f.id = d.file_id
    WHERE d.grant_id = $1";

/// The deliveries that stand for a file's archived ones: its bytes, covering
/// nothing, and each span covered, counting no bytes.
pub(super) fn archived_deliveries(file_id: String, bytes: i64, spans: &str, size: i64) -> Vec<Delivery> {
    let mut out = vec![Delivery {
        file_id: file_id.clone(),
        range_start: 0,
        bytes,
        covered: 0,
        size,
    }];
    for span in spans.split(',').filter(|s| !s.is_empty()) {
        if let Some((a, b)) = span.split_once('-')
            && let (Ok(a), Ok(b)) = (a.parse::<i64>(), b.parse::<i64>())
        {
            out.push(Delivery {
                file_id: file_id.clone(),
                range_start: a,
                bytes: 0,
                covered: b - a,
                size,
            });
        }
    }
    out
}

/// Every delivery recorded for a grant: the log's `file.delivered` events,
/// and what archived ones delivered.
pub(crate) async fn deliveries(conn: &mut AnyConnection, grant_id: &str) -> sqlx::Result<Vec<Delivery>> {
    let mut all: Vec<Delivery> = sqlx::query_as(DELIVERIES)
        .bind(grant_id)
        .fetch_all(&mut *conn)
        .await?;
    let archived: Vec<(String, i64, String, i64)> = sqlx::query_as(ARCHIVED_DELIVERIES)
        .bind(grant_id)
        .fetch_all(&mut *conn)
        .await?;
    for (file_id, bytes, spans, size) in archived {
        all.extend(archived_deliveries(file_id, bytes, &spans, size));
    }
    Ok(all)
}

/// Moves a grant's expiry; `false` when it is revoked. An extended grant can
/// be reminded and recorded as expired again at its new end.
pub(crate) async fn extend(tx: &mut Tx, id: &str, expires_at: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET expires_at = $2, reminded_at = NULL, expiry_logged_at = NULL
         WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Live grants that end within `(now, until]` and whose researcher has not been reminded.
pub(crate) async fn due_reminders<'c>(
    e: impl AnyExecutor<'c>,
    now: i64,
    until: i64,
) -> sqlx::Result<Vec<GrantView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE g.revoked_at IS NULL AND g.reminded_at IS NULL
           AND g.expires_at > $1 AND g.expires_at <= $2 ORDER BY g.expires_at, g.id"
    )))
    .bind(now)
    .bind(until)
    .fetch_all(e)
    .await
}

/// Claims a grant's reminder; `false` when another replica sent it already.
pub(crate) async fn mark_reminded(tx: &mut Tx, id: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("UPDATE grants SET reminded_at = $2 WHERE id = $1 AND reminded_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Grants past their end whose expiry the audit log does not hold yet.
pub(crate) async fn expired_unlogged<'c>(e: impl AnyExecutor<'c>, now: i64) -> sqlx::Result<Vec<GrantView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE g.revoked_at IS NULL AND g.expiry_logged_at IS NULL AND g.expires_at <= $1
         ORDER BY g.expires_at, g.id"
    )))
    .bind(now)
    .fetch_all(e)
    .await
}

/// Claims the recording of a grant's expiry; `false` when already recorded.
pub(crate) async fn mark_expiry_logged(tx: &mut Tx, id: &str, now: i64) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grants SET expiry_logged_at = $2 WHERE id = $1 AND expiry_logged_at IS NULL AND expires_at <= $2",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Which grants the dashboard lists.
#[derive(Clone, Debug, Default)]
pub(crate) struct GrantFilter {
    /// Only these models (a reviewer's assignments); `None` for every model.
    pub(crate) model_ids: Option<Vec<String>>,
    pub(crate) model_slug: Option<String>,
    /// `active`, `expired` or `revoked`.
    pub(crate) state: Option<String>,
    /// Part of the researcher's e-mail.
    pub(crate) email: Option<String>,
    /// Live grants ending within this many milliseconds.
    pub(crate) expiring_within: Option<i64>,
    pub(crate) limit: i64,
    pub(crate) offset: i64,
}

/// Grants matching `f`, newest first, and how many match in all.
pub(crate) async fn search(
    pool: &sqlx::AnyPool,
    f: &GrantFilter,
    now: i64,
) -> sqlx::Result<(Vec<GrantView>, i64)> {
    let mut w = Where::default();
    if let Some(ids) = &f.model_ids {
        w.and_in("g.model_id", ids);
    }
    if let Some(slug) = &f.model_slug {
        w.and_bind("m.slug = $?", Bind::Text(slug.clone()));
    }
    match f.state.as_deref() {
        Some("active") => w.and_bind("g.revoked_at IS NULL AND g.expires_at > $?", Bind::Int(now)),
        Some("expired") => w.and_bind("g.revoked_at IS NULL AND g.expires_at <= $?", Bind::Int(now)),
        Some("revoked") => w.and("g.revoked_at IS NOT NULL"),
        _ => {}
    }
    if let Some(email) = &f.email {
        w.and_bind(
            "LOWER(r.email) LIKE $? ESCAPE '\\'",
            Bind::Text(format!("%{}%", like_escape(&email.to_lowercase()))),
        );
    }
    if let Some(within) = f.expiring_within {
        w.and_bind("g.revoked_at IS NULL AND g.expires_at > $?", Bind::Int(now));
        w.and_bind("g.expires_at <= $?", Bind::Int(now.saturating_add(within)));
    }
    let count_sql = format!(
        "SELECT COUNT(*) FROM grants g JOIN researchers r ON r.id = g.researcher_id
         JOIN models m ON m.id = g.model_id{}",
        w.sql()
    );
    let total: i64 = bind_where!(sqlx::query_scalar(sqlx::AssertSqlSafe(count_sql)), w)
        .fetch_one(pool)
        .await?;
    let list_sql = format!(
        "{VIEW}{} ORDER BY g.created_at DESC, g.id LIMIT {} OFFSET {}",
        w.sql(),
        w.next(1),
        w.next(2)
    );
    let rows = bind_where!(sqlx::query_as(sqlx::AssertSqlSafe(list_sql)), w)
        .bind(f.limit)
        .bind(f.offset)
        .fetch_all(pool)
        .await?;
    Ok((rows, total))
}

/// A researcher's grants, newest first.
pub(crate) async fn list_of_researcher<'c>(
    e: impl AnyExecutor<'c>,
    researcher_id: &str,
) -> sqlx::Result<Vec<GrantView>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{VIEW} WHERE g.researcher_id = $1 ORDER BY g.created_at DESC, g.id"
    )))
    .bind(researcher_id)
    .fetch_all(e)
    .await
}

pub(crate) struct NewAccessUrl<'a> {
    pub(crate) id: &'a str,
    pub(crate) token_hash: &'a str,
    pub(crate) grant_id: &'a str,
    pub(crate) origin: Origin,
    pub(crate) name: Option<&'a str>,
    pub(crate) created_at: i64,
}

/// Stores an access URL of a grant: its id and its secret's hash.
pub(crate) async fn insert_token<'c>(e: impl AnyExecutor<'c>, u: &NewAccessUrl<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO grant_tokens (id, token_hash, grant_id, origin, name, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(u.id)
    .bind(u.token_hash)
    .bind(u.grant_id)
    .bind(u.origin.as_str())
    .bind(u.name)
    .bind(u.created_at)
    .execute(e)
    .await?;
    Ok(())
}

/// An access URL of a grant, without its secret.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct AccessUrl {
    pub(crate) id: String,
    pub(crate) grant_id: String,
    #[sqlx(try_from = "String")]
    pub(crate) origin: Origin,
    pub(crate) name: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) last_used_at: Option<i64>,
    pub(crate) withdrawn_at: Option<i64>,
    pub(crate) withdrawn_by: Option<String>,
    /// The client networks it was used from.
    pub(crate) networks: i64,
}

const ACCESS_URL: &str =
    "SELECT t.id, t.grant_id, t.origin, t.name, t.created_at, t.last_used_at, t.withdrawn_at,
        t.withdrawn_by, (SELECT COUNT(*) FROM access_url_networks n WHERE n.token_id = t.id) AS networks
    FROM grant_tokens t";

/// The access URL whose secret has this hash.
pub(crate) async fn find_access_url_by_hash<'c>(
    e: impl AnyExecutor<'c>,
    token_hash: &str,
) -> sqlx::Result<Option<AccessUrl>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ACCESS_URL} WHERE t.token_hash = $1"
    )))
    .bind(token_hash)
    .fetch_optional(e)
    .await
}

/// One access URL of a grant.
pub(crate) async fn find_access_url<'c>(
    e: impl AnyExecutor<'c>,
    grant_id: &str,
    id: &str,
) -> sqlx::Result<Option<AccessUrl>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ACCESS_URL} WHERE t.grant_id = $1 AND t.id = $2"
    )))
    .bind(grant_id)
    .bind(id)
    .fetch_optional(e)
    .await
}

/// Every access URL of a grant, oldest first.
pub(crate) async fn access_urls_of<'c>(
    e: impl AnyExecutor<'c>,
    grant_id: &str,
) -> sqlx::Result<Vec<AccessUrl>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{ACCESS_URL} WHERE t.grant_id = $1 ORDER BY t.created_at, t.id"
    )))
    .bind(grant_id)
    .fetch_all(e)
    .await
}

/// An access URL used from many client networks, with its grant's names.
#[derive(Clone, Debug, FromRow)]
pub(crate) struct SharedAccessUrl {
    pub(crate) id: String,
    pub(crate) grant_id: String,
    pub(crate) email: String,
    pub(crate) model_slug: String,
    pub(crate) networks: i64,
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
}

/// Working access URLs of grants not yet ended used from more than
/// `networks` client networks at or after `since`, the most shared first.
pub(crate) async fn shared_access_urls<'c>(
    e: impl AnyExecutor<'c>,
    networks: i64,
    since: i64,
    now: i64,
) -> sqlx::Result<Vec<SharedAccessUrl>> {
    sqlx::query_as(
        "SELECT t.id, t.grant_id, r.email, m.slug AS model_slug, COUNT(*) AS networks,
            MIN(n.first_at) AS first_at, MAX(n.last_at) AS last_at
         FROM grant_tokens t
         JOIN access_url_networks n ON n.token_id = t.id
         JOIN grants g ON g.id = t.grant_id
         JOIN researchers r ON r.id = g.researcher_id
         JOIN models m ON m.id = g.model_id
         WHERE t.withdrawn_at IS NULL AND g.revoked_at IS NULL AND g.expires_at > $3 AND n.last_at >= $2
         GROUP BY t.id, t.grant_id, r.email, m.slug
         HAVING COUNT(*) > $1
         ORDER BY COUNT(*) DESC, t.id",
    )
    .bind(networks)
    .bind(since)
    .bind(now)
    .fetch_all(e)
    .await
}

/// The client networks an access URL was used from, in the order first seen.
pub(crate) async fn access_url_networks<'c>(e: impl AnyExecutor<'c>, id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT network FROM access_url_networks WHERE token_id = $1 ORDER BY first_at, network",
    )
    .bind(id)
    .fetch_all(e)
    .await
}

/// Marks an access URL withdrawn; `false` when it already was.
pub(crate) async fn withdraw_access_url<'c>(
    e: impl AnyExecutor<'c>,
    id: &str,
    by: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "UPDATE grant_tokens SET withdrawn_at = $2, withdrawn_by = $3 WHERE id = $1 AND withdrawn_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .bind(by)
    .execute(e)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The most client networks kept per access URL: enough to show a URL was
/// shared, bounded whoever holds it.
pub(crate) const MAX_NETWORKS_KEPT: i64 = 1000;

/// Records a use of an access URL, from a client network; `false` (and
/// nothing recorded) when it was withdrawn meanwhile.
pub(crate) async fn note_access_url_use(
    tx: &mut Tx,
    id: &str,
    network: &str,
    now: i64,
) -> sqlx::Result<bool> {
    let used =
        sqlx::query("UPDATE grant_tokens SET last_used_at = $2 WHERE id = $1 AND withdrawn_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    if used.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO access_url_networks (token_id, network, first_at, last_at)
         SELECT $1, $2, $3, $3 WHERE (SELECT COUNT(*) FROM access_url_networks WHERE token_id = $1) < $4
         ON CONFLICT (token_id, network) DO UPDATE SET last_at = excluded.last_at",
    )
    .bind(id)
    .bind(network)
    .bind(now)
    .bind(MAX_NETWORKS_KEPT)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}
