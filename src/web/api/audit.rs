//! The audit log and its reports, for auditors: events with the filters of
//! `weightgate audit list`, paged by position; downloads, who holds a
//! release, anomalies; and the result of verifying the chain.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Caller, doc};
use crate::{
    audit::{
        filter::{Asked, FilterError},
        report::{self, Thresholds},
    },
    db::{self, audit::EventRow},
    types::{format_ms_rfc3339, parse_time},
    web::{AppState, Error, extract::Query},
};

/// One event, as `weightgate audit list --format jsonl` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(crate) struct EventJson {
    /// Its position in the chain.
    pub(crate) seq: i64,
    /// When, in Unix milliseconds (what the hash covers).
    pub(crate) at: i64,
    /// When, in RFC 3339 (UTC).
    pub(crate) time: String,
    pub(crate) action: String,
    /// `ok`, `refused` or `aborted`.
    pub(crate) outcome: String,
    pub(crate) reason: Option<String>,
    pub(crate) actor: Option<String>,
    pub(crate) subject: Option<String>,
    pub(crate) model_id: Option<String>,
    pub(crate) application_id: Option<String>,
    pub(crate) grant_id: Option<String>,
    pub(crate) researcher_id: Option<String>,
    pub(crate) file_id: Option<String>,
    pub(crate) range_start: Option<i64>,
    pub(crate) range_end: Option<i64>,
    pub(crate) bytes: Option<i64>,
    pub(crate) client_ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) request_id: Option<String>,
    /// The hash of the event before it.
    pub(crate) prev_hash: String,
    /// This event's hash (SHA-256 over its canonical form and `prev_hash`).
    pub(crate) hash: String,
    /// How many occurrences it stands for, when it sums up many alike.
    pub(crate) occurrences: Option<i64>,
}

impl From<&EventRow> for EventJson {
    fn from(e: &EventRow) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            time: format_ms_rfc3339(e.at),
            action: e.action.clone(),
            outcome: e.outcome.clone(),
            reason: e.reason.clone(),
            actor: e.actor.clone(),
            subject: e.subject.clone(),
            model_id: e.model_id.clone(),
            application_id: e.application_id.clone(),
            grant_id: e.grant_id.clone(),
            researcher_id: e.researcher_id.clone(),
            file_id: e.file_id.clone(),
            range_start: e.range_start,
            range_end: e.range_end,
            bytes: e.bytes,
            client_ip: e.client_ip.clone(),
            user_agent: e.user_agent.clone(),
            request_id: e.request_id.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
            occurrences: e.occurrences,
        }
    }
}

impl From<EventJson> for EventRow {
    fn from(e: EventJson) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            action: e.action,
            outcome: e.outcome,
            reason: e.reason,
            actor: e.actor,
            subject: e.subject,
            model_id: e.model_id,
            application_id: e.application_id,
            grant_id: e.grant_id,
            researcher_id: e.researcher_id,
            file_id: e.file_id,
            range_start: e.range_start,
            range_end: e.range_end,
            bytes: e.bytes,
            client_ip: e.client_ip,
            user_agent: e.user_agent,
            request_id: e.request_id,
            prev_hash: e.prev_hash,
            hash: e.hash,
            occurrences: e.occurrences,
        }
    }
}

/// The filters of `weightgate audit list`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventParams {
    /// From this time: a duration back from now (`7d`), a date or an RFC
    /// 3339 time.
    since: Option<String>,
    /// Before this time, written as `since`.
    until: Option<String>,
    /// A model's slug.
    model: Option<String>,
    /// A researcher's e-mail address.
    researcher: Option<String>,
    /// A grant's id.
    grant: Option<String>,
    /// An action, e.g. `file.fetch`.
    action: Option<String>,
    /// A client address.
    ip: Option<String>,
    /// `ok`, `refused` or `aborted`.
    outcome: Option<String>,
    /// Events after this position, oldest first (paging forward).
    after: Option<i64>,
    /// Events before this position, newest first (paging back; the
    /// default, from the newest, when `after` is absent).
    before: Option<i64>,
    /// At most this many (1 to 1,000, 100 by default).
    limit: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct EventPage {
    pub(crate) events: Vec<EventJson>,
    /// The last event moved to an archived segment (0 when none was):
    /// events up to it are not in this list.
    pub(crate) archived_through: i64,
    /// When that event was written (Unix milliseconds).
    pub(crate) archived_through_at: Option<i64>,
}

fn time_param(text: Option<&str>, name: &str) -> Result<Option<i64>, Error> {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => parse_time(t)
            .map(Some)
            .map_err(|e| Error::BadRequest(format!("{name}: {e}"))),
    }
}

/// Events of the audit log: with `after`, the events after that position,
/// oldest first; otherwise the newest (before `before`), newest first.
#[utoipa::path(get, path = "/api/v1/audit/events", operation_id = "listAuditEvents", tag = "audit",
    params(EventParams),
    responses((status = 200, body = EventPage), (status = 400, body = doc::ErrorJson)),
    security(("token" = ["audit"])))]
pub(crate) async fn events(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<EventParams>,
) -> Result<Json<EventPage>, Error> {
    let pool = state.app.db.pool();
    let limit = match q.limit {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(Error::BadRequest("limit is 1 to 1000".into())),
    };
    let asked = Asked {
        since_ms: time_param(q.since.as_deref(), "since")?,
        until_ms: time_param(q.until.as_deref(), "until")?,
        model: q.model,
        researcher: q.researcher,
        grant: q.grant,
        action: q.action,
        ip: q.ip,
        outcome: q.outcome,
    };
    let mut filter = match asked.resolve(pool).await {
        Ok(filter) => filter,
        Err(FilterError::Database(e)) => return Err(e.into()),
        Err(refused) => return Err(Error::BadRequest(refused.to_string())),
    };
    filter.limit = limit;
    filter.after_seq = q.after;
    filter.before_seq = q.before;
    let events = db::audit::list(pool, &filter).await?;
    let archived = db::archives::newest(pool).await?;
    Ok(Json(EventPage {
        events: events.iter().map(EventJson::from).collect(),
        archived_through: archived.as_ref().map_or(0, |a| a.last_seq),
        archived_through_at: archived.map(|a| a.last_at),
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ModelParam {
    /// A model's slug (every model when absent).
    model: Option<String>,
}

/// What one researcher fetched of one model.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct DownloadJson {
    pub(crate) researcher: String,
    pub(crate) researcher_id: String,
    pub(crate) model: String,
    /// Files of the model's published releases the researcher has whole.
    pub(crate) files_complete: usize,
    pub(crate) files_total: usize,
    /// Bytes sent over every transfer, repeats included.
    pub(crate) bytes: i64,
    pub(crate) fetches: i64,
    pub(crate) refused: i64,
    pub(crate) first_fetch: Option<i64>,
    pub(crate) last_fetch: Option<i64>,
    /// Distinct client addresses the fetches came from.
    pub(crate) addresses: i64,
}

/// A report's failure: the database's is the portal's; any other (no such
/// model, no such release) is the asker's mistake.
fn report_error(e: anyhow::Error) -> Error {
    if e.chain().any(|cause| cause.is::<sqlx::Error>()) {
        Error::from(e)
    } else {
        Error::BadRequest(format!("{e:#}"))
    }
}

/// One verification at a time on each replica: each walks the log from the
/// newest witnessed checkpoint, and runs to its end once started.
static VERIFYING: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(1)));

/// Downloads per researcher and model, from the report totals.
#[utoipa::path(get, path = "/api/v1/audit/downloads", operation_id = "auditDownloads", tag = "audit",
    params(ModelParam),
    responses((status = 200, body = Vec<DownloadJson>)),
    security(("token" = ["audit"])))]
pub(crate) async fn downloads(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<ModelParam>,
) -> Result<Json<Vec<DownloadJson>>, Error> {
    let model = q.model.as_deref().map(str::trim).filter(|m| !m.is_empty());
    let rows = report::downloads(&state.app.db, model)
        .await
        .map_err(report_error)?;
    Ok(Json(
        rows.into_iter()
            .map(|d| DownloadJson {
                researcher: d.researcher,
                researcher_id: d.researcher_id,
                model: d.model,
                files_complete: d.files_complete,
                files_total: d.files_total,
                bytes: d.bytes,
                fetches: d.fetches,
                refused: d.refused,
                first_fetch: d.first_fetch,
                last_fetch: d.last_fetch,
                addresses: d.addresses,
            })
            .collect(),
    ))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WhoHasParams {
    /// The model's slug.
    model: String,
    /// One release (every published release when absent).
    release: Option<String>,
}

/// A researcher holding every file of a release.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct HolderJson {
    pub(crate) researcher: String,
    pub(crate) researcher_id: String,
    pub(crate) model: String,
    pub(crate) release: String,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    /// When the last missing byte reached them (Unix milliseconds).
    pub(crate) completed_at: i64,
}

/// Who holds a complete copy of a model's releases.
#[utoipa::path(get, path = "/api/v1/audit/who-has", operation_id = "auditWhoHas", tag = "audit",
    params(WhoHasParams),
    responses((status = 200, body = Vec<HolderJson>), (status = 400, body = doc::ErrorJson)),
    security(("token" = ["audit"])))]
pub(crate) async fn who_has(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<WhoHasParams>,
) -> Result<Json<Vec<HolderJson>>, Error> {
    let release = q.release.as_deref().map(str::trim).filter(|r| !r.is_empty());
    let rows = report::who_has(&state.app.db, q.model.trim(), release)
        .await
        .map_err(report_error)?;
    Ok(Json(
        rows.into_iter()
            .map(|h| HolderJson {
                researcher: h.researcher,
                researcher_id: h.researcher_id,
                model: h.model,
                release: h.release,
                files: h.files,
                bytes: h.bytes,
                completed_at: h.completed_at,
            })
            .collect(),
    ))
}

/// The thresholds of `weightgate audit anomalies`, with its defaults.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AnomalyParams {
    /// Only events from this time (written as the events' `since`).
    since: Option<String>,
    /// A grant fetched from more distinct addresses than this (3).
    max_addresses: Option<i64>,
    /// This many fetches under one grant (100) ...
    burst: Option<i64>,
    /// ... within this many seconds (60).
    window_seconds: Option<i64>,
    /// Fetches refused because the grant was revoked (1).
    revoked_fetches: Option<i64>,
    /// Links with a bad signature from one address (5).
    bad_signatures: Option<i64>,
    /// Refused reviewer sign-ins from one address (5).
    failed_sign_ins: Option<i64>,
    /// An access URL used from more client networks than this (the
    /// portal's setting).
    access_url_networks: Option<i64>,
}

/// One thing worth a look.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct AnomalyJson {
    /// `many-addresses`, `burst`, `after-revocation`, `bad-signatures`,
    /// `failed-sign-ins` or `shared-access-url`.
    pub(crate) kind: String,
    pub(crate) grant_id: Option<String>,
    pub(crate) researcher: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) client_ip: Option<String>,
    pub(crate) count: i64,
    pub(crate) detail: String,
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
    #[serde(default)]
    pub(crate) addresses: Vec<String>,
}

fn at_least(value: Option<i64>, default: i64, least: i64, name: &str) -> Result<i64, Error> {
    match value {
        None => Ok(default),
        Some(n) if n >= least => Ok(n),
        Some(_) => Err(Error::BadRequest(format!("{name} is at least {least}"))),
    }
}

/// What looks wrong: grants used from many addresses, bursts, fetches after
/// revocation, forged links, password guessing, shared access URLs.
#[utoipa::path(get, path = "/api/v1/audit/anomalies", operation_id = "auditAnomalies", tag = "audit",
    params(AnomalyParams),
    responses((status = 200, body = Vec<AnomalyJson>), (status = 400, body = doc::ErrorJson)),
    security(("token" = ["audit"])))]
pub(crate) async fn anomalies(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<AnomalyParams>,
) -> Result<Json<Vec<AnomalyJson>>, Error> {
    let thresholds = Thresholds {
        since_ms: time_param(q.since.as_deref(), "since")?.unwrap_or(i64::MIN),
        max_addresses: at_least(q.max_addresses, 3, 0, "max_addresses")?,
        burst_fetches: at_least(q.burst, 100, 2, "burst")?,
        burst_window_ms: at_least(q.window_seconds, 60, 1, "window_seconds")?.saturating_mul(1000),
        revoked_fetches: at_least(q.revoked_fetches, 1, 1, "revoked_fetches")?,
        bad_signatures: at_least(q.bad_signatures, 5, 1, "bad_signatures")?,
        failed_sign_ins: at_least(q.failed_sign_ins, 5, 1, "failed_sign_ins")?,
        access_url_networks: at_least(
            q.access_url_networks,
            i64::from(state.app.config.access_url_max_networks),
            1,
            "access_url_networks",
        )?,
    };
    let found = report::anomalies(&state.app.db, &thresholds)
        .await
        .map_err(report_error)?;
    Ok(Json(
        found
            .into_iter()
            .map(|a| AnomalyJson {
                kind: a.kind.as_str().to_owned(),
                grant_id: a.grant_id,
                researcher: a.researcher,
                model: a.model,
                client_ip: a.client_ip,
                count: a.count,
                detail: a.detail,
                first_at: a.first_at,
                last_at: a.last_at,
                addresses: a.addresses,
            })
            .collect(),
    ))
}

/// What verifying the chain found, on the portal.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct VerificationJson {
    /// Whether the log is whole.
    pub(crate) intact: bool,
    /// Events checked.
    pub(crate) events: i64,
    /// The witnessed checkpoint the walk started after, if any.
    pub(crate) started_after_seq: Option<i64>,
    /// Stored checkpoints checked, and those the witness holds.
    pub(crate) checkpoints: i64,
    pub(crate) witnessed: i64,
    /// The last archived event (0 when none was), and in how many segments.
    pub(crate) archived_through: i64,
    pub(crate) archived_segments: i64,
    /// Every problem found, the first first.
    pub(crate) problems: Vec<String>,
}

/// Verifies the chain on the portal, from the newest witnessed checkpoint.
/// An auditor who does not trust the portal runs `weightgate audit verify
/// --url …` instead, which checks the events on their own machine.
#[utoipa::path(get, path = "/api/v1/audit/verify", operation_id = "verifyAuditLog", tag = "audit",
    responses((status = 200, body = VerificationJson)),
    security(("token" = ["audit"])))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<VerificationJson>, Error> {
    // Run on its own task: the walk holds borrows across awaits that the
    // compiler cannot prove `Send` for every lifetime a handler's future
    // needs, but can for a spawned task's.
    let permit = VERIFYING
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::TooManyRequests {
            limit: "audit_verifications",
            what: "A verification of the audit log is running on this replica",
            retry_after: std::time::Duration::from_secs(10),
        })?;
    let app = state.app.clone();
    let v = tokio::spawn(async move {
        let verified = app.verify_audit_log().await;
        drop(permit);
        verified
    })
    .await
    .map_err(|e| Error::Internal(e.into()))??;
    Ok(Json(VerificationJson {
        intact: v.is_intact(),
        events: v.events,
        started_after_seq: v.started_from.as_ref().map(|s| s.seq),
        checkpoints: v.checkpoints,
        witnessed: v.witnessed,
        archived_through: v.archived_through,
        archived_segments: v.archived_segments,
        problems: v.problems.iter().map(ToString::to_string).collect(),
    }))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CheckpointParams {
    /// Checkpoints after this position (with `after_id`, after this one).
    after_seq: Option<i64>,
    after_id: Option<String>,
    /// At most this many (1 to 1,000, 1,000 by default).
    limit: Option<i64>,
}

/// A signed checkpoint: the portal's key signs the lines
/// `weightgate-audit-checkpoint-v1`, the position, the hash and the time.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct CheckpointJson {
    pub(crate) id: String,
    pub(crate) seq: i64,
    pub(crate) hash: String,
    pub(crate) at: i64,
    /// The signing key's id.
    pub(crate) kid: String,
    /// The Ed25519 signature, hex.
    pub(crate) signature: String,
}

/// The signed checkpoints of the chain, in order, for an auditor who checks
/// the events on their own machine against a key they already trust.
#[utoipa::path(get, path = "/api/v1/audit/checkpoints", operation_id = "listAuditCheckpoints", tag = "audit",
    params(CheckpointParams),
    responses((status = 200, body = Vec<CheckpointJson>), (status = 400, body = doc::ErrorJson)),
    security(("token" = ["audit"])))]
pub(crate) async fn checkpoints(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<CheckpointParams>,
) -> Result<Json<Vec<CheckpointJson>>, Error> {
    let limit = match q.limit {
        None => 1000,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(Error::BadRequest("limit is 1 to 1000".into())),
    };
    let after_id = q.after_id.unwrap_or_default();
    let page = db::audit::checkpoints_page(
        state.app.db.pool(),
        (q.after_seq.unwrap_or(0), after_id.as_str()),
        limit,
    )
    .await?;
    Ok(Json(
        page.into_iter()
            .map(|c| CheckpointJson {
                id: c.id,
                seq: c.seq,
                hash: c.hash,
                at: c.at,
                kid: c.kid,
                signature: c.signature,
            })
            .collect(),
    ))
}

impl From<DownloadJson> for report::DownloadSummary {
    fn from(d: DownloadJson) -> Self {
        Self {
            researcher: d.researcher,
            researcher_id: d.researcher_id,
            model: d.model,
            files_complete: d.files_complete,
            files_total: d.files_total,
            bytes: d.bytes,
            fetches: d.fetches,
            refused: d.refused,
            first_fetch: d.first_fetch,
            last_fetch: d.last_fetch,
            addresses: d.addresses,
        }
    }
}

impl From<HolderJson> for report::Holder {
    fn from(h: HolderJson) -> Self {
        Self {
            researcher: h.researcher,
            researcher_id: h.researcher_id,
            model: h.model,
            release: h.release,
            files: h.files,
            bytes: h.bytes,
            completed_at: h.completed_at,
        }
    }
}

impl TryFrom<AnomalyJson> for report::Anomaly {
    type Error = anyhow::Error;

    fn try_from(a: AnomalyJson) -> anyhow::Result<Self> {
        Ok(Self {
            kind: report::AnomalyKind::parse(&a.kind).ok_or_else(|| {
                anyhow::anyhow!(
                    "the portal reports an anomaly of a kind this version does not know: {}",
                    a.kind
                )
            })?,
            grant_id: a.grant_id,
            researcher: a.researcher,
            model: a.model,
            client_ip: a.client_ip,
            count: a.count,
            detail: a.detail,
            first_at: a.first_at,
            last_at: a.last_at,
            addresses: a.addresses,
        })
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportParams {
    /// Events after this position (all the live log when absent).
    after: Option<i64>,
}

/// Exports at once per replica; each streams the log a page at a time.
static EXPORTING: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(2)));

/// Events read per page of an export.
const EXPORT_PAGE: i64 = 5000;

/// Every live event after `after`, oldest first, one JSON object per line
/// (as `weightgate audit export` writes them), streamed a page at a time.
#[utoipa::path(get, path = "/api/v1/audit/export", operation_id = "exportAuditLog", tag = "audit",
    params(ExportParams),
    responses((status = 200, content_type = "application/x-ndjson", body = EventJson,
        description = "One event per line")),
    security(("token" = ["audit"])))]
pub(crate) async fn export(
    State(state): State<AppState>,
    _caller: Caller,
    Query(q): Query<ExportParams>,
) -> Result<axum::response::Response, Error> {
    use axum::response::IntoResponse as _;
    let permit = EXPORTING
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::TooManyRequests {
            limit: "audit_exports",
            what: "Two exports of the audit log are running on this replica",
            retry_after: std::time::Duration::from_secs(30),
        })?;
    let pool = state.app.db.pool().clone();
    let start = q.after.unwrap_or(i64::MIN);
    let pages = futures_util::stream::unfold(Some((start, permit)), move |next| {
        let pool = pool.clone();
        async move {
            let (after, permit) = next?;
            match db::audit::page_after(&pool, after, EXPORT_PAGE).await {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let mut lines = Vec::with_capacity(page.len() * 400);
                    for e in &page {
                        if serde_json::to_writer(&mut lines, &EventJson::from(e)).is_err() {
                            return Some((Err(std::io::Error::other("an event cannot be written")), None));
                        }
                        lines.push(b'\n');
                    }
                    let last = page.last().map_or(after, |e| e.seq);
                    let more = page.len() as i64 == EXPORT_PAGE;
                    Some((Ok(axum::body::Bytes::from(lines)), more.then_some((last, permit))))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "an export of the audit log stopped");
                    Some((Err(std::io::Error::other(e)), None))
                }
            }
        }
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(pages),
    )
        .into_response())
}
