//! The review queue: applications, their case files, and decisions.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Body, Caller, doc, given, maybe_time, page_limit, page_offset, time};
use crate::{
    db::{
        self,
        applications::{ApplicationView, QueueFilter, QueueSort},
    },
    domain::{
        authz,
        reviews::{self, Approval, BulkDecision},
        threads,
    },
    types::{now_ms, states::Status},
    web::{
        AppState, ClientInfo, Error,
        extract::{Path, Query},
    },
};

/// The queue's filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct QueueParams {
    /// A model's slug.
    model: Option<String>,
    /// An application status (`pending`, `info_requested`, `approved`,
    /// `denied`, `unconfirmed`), or `all`. The queue itself (`pending`) by
    /// default.
    status: Option<String>,
    /// Waiting at least this many days since the e-mail was confirmed.
    waited_days: Option<i64>,
    /// The domain of the researcher's e-mail address (or a parent domain).
    domain: Option<String>,
    /// Text in the name, affiliation, intended use or e-mail.
    q: Option<String>,
    /// `oldest` (longest waiting first, the default), `newest` or `model`.
    sort: Option<String>,
    /// At most this many (1 to 500, 50 by default).
    limit: Option<i64>,
    /// Skip this many.
    offset: Option<i64>,
}

/// An application, as reviewers see it in the queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApplicationJson {
    id: String,
    /// The model's slug.
    model: String,
    model_title: String,
    /// `unconfirmed`, `pending`, `info_requested`, `approved` or `denied`.
    status: String,
    /// `new`, `renewal` or `appeal`.
    kind: String,
    name: String,
    email: String,
    affiliation: String,
    intended_use: String,
    terms_version: i64,
    submitted_at: String,
    confirmed_at: Option<String>,
    decided_at: Option<String>,
    /// The denied application an appeal is about.
    appeal_of: Option<String>,
    /// The grant a renewal would extend.
    renews_grant: Option<String>,
}

impl From<&ApplicationView> for ApplicationJson {
    fn from(a: &ApplicationView) -> Self {
        Self {
            id: a.id.clone(),
            model: a.model_slug.clone(),
            model_title: a.model_title.clone(),
            status: a.status.as_str().to_owned(),
            kind: a.kind.as_str().to_owned(),
            name: a.name.clone(),
            email: a.email.clone(),
            affiliation: a.affiliation.clone(),
            intended_use: a.intended_use.clone(),
            terms_version: a.terms_version,
            submitted_at: time(a.created_at),
            confirmed_at: maybe_time(a.confirmed_at),
            decided_at: maybe_time(a.decided_at),
            appeal_of: a.parent_id.clone(),
            renews_grant: a.grant_id.clone(),
        }
    }
}

/// One page of the queue.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApplicationList {
    applications: Vec<ApplicationJson>,
    /// How many match the filters in all.
    total: i64,
}

fn status_filter(text: Option<&str>) -> Result<Option<Status>, Error> {
    match text.map(str::trim) {
        None | Some("") => Ok(Some(Status::Pending)),
        Some("all") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e| Error::BadRequest(format!("{e}"))),
    }
}

/// The queue: applications of the caller's models, filtered and sorted as
/// the dashboard's queue is.
#[utoipa::path(get, path = "/api/v1/applications", operation_id = "listApplications", tag = "applications",
    params(QueueParams),
    responses((status = 200, body = ApplicationList), (status = 400, body = doc::ErrorJson)),
    security(("token" = ["read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QueueParams>,
) -> Result<Json<ApplicationList>, Error> {
    let sort = match q.sort.as_deref().map(str::trim) {
        None | Some("" | "oldest") => QueueSort::Oldest,
        Some("newest") => QueueSort::Newest,
        Some("model") => QueueSort::Model,
        Some(_) => return Err(Error::BadRequest("sort is oldest, newest or model".into())),
    };
    let waited = match q.waited_days {
        None => None,
        Some(d) if (0..=100_000).contains(&d) => Some(d * 86_400_000),
        Some(_) => return Err(Error::BadRequest("waited_days is 0 or more".into())),
    };
    let filter = QueueFilter {
        model_ids: None,
        model_slug: given(q.model),
        status: status_filter(q.status.as_deref())?,
        waited_at_least: waited,
        domain: given(q.domain).map(|d| d.trim_start_matches('@').to_owned()),
        text: given(q.q),
        sort,
        limit: page_limit(q.limit)?,
        offset: page_offset(q.offset)?,
    };
    let (found, total) = reviews::queue(&state.app, &caller.reviewer, filter).await?;
    Ok(Json(ApplicationList {
        applications: found.iter().map(ApplicationJson::from).collect(),
        total,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AnswerJson {
    question: String,
    /// The answer in words; empty when an optional question was left blank.
    answer: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReviewJson {
    reviewer: String,
    /// `approve` or `deny`.
    decision: String,
    reason: Option<String>,
    note: Option<String>,
    days: Option<i64>,
    at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageJson {
    /// `reviewer` or `researcher`.
    author_role: String,
    author: String,
    body: String,
    at: String,
}

/// Everything a reviewer reads before deciding.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CaseFileJson {
    application: ApplicationJson,
    /// Whether the caller may decide it (not only read it).
    may_decide: bool,
    approvals_needed: i64,
    approvals_counted: usize,
    answers: Vec<AnswerJson>,
    reviews: Vec<ReviewJson>,
    messages: Vec<MessageJson>,
    /// The grant this application made, once approved.
    grant: Option<super::grants::GrantJson>,
    /// The researcher's other applications to models the caller reviews.
    earlier_applications: Vec<EarlierJson>,
}

/// Another application of the same researcher, named but not opened.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EarlierJson {
    id: String,
    model: String,
    status: String,
    submitted_at: String,
}

/// One application with its answers, reviews, questions and grant.
#[utoipa::path(get, path = "/api/v1/applications/{id}", operation_id = "getApplication", tag = "applications",
    params(("id" = String, Path, description = "The application's id")),
    responses((status = 200, body = CaseFileJson), (status = 404, body = doc::ErrorJson)),
    security(("token" = ["read"])))]
pub(crate) async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CaseFileJson>, Error> {
    let case = reviews::case_file(&state.app, &caller.reviewer, &id).await?;
    let visible = authz::visible_models(&state.app, &caller.reviewer).await?;
    let now = now_ms();
    Ok(Json(CaseFileJson {
        application: ApplicationJson::from(&case.application),
        may_decide: case.may_decide,
        approvals_needed: case.approvals_needed,
        approvals_counted: case.approvals_counted,
        answers: case
            .answers
            .iter()
            .map(|a| AnswerJson {
                question: a.label.clone(),
                answer: a.display(),
            })
            .collect(),
        reviews: case
            .reviews
            .into_iter()
            .map(|r| ReviewJson {
                reviewer: r.reviewer_email,
                decision: r.decision.as_str().to_owned(),
                reason: r.reason,
                note: r.note,
                days: r.grant_days,
                at: time(r.created_at),
            })
            .collect(),
        messages: case
            .messages
            .into_iter()
            .map(|m| MessageJson {
                author_role: m.author_kind.as_str().to_owned(),
                author: m.author_email,
                body: m.body,
                at: time(m.created_at),
            })
            .collect(),
        grant: case.grant.as_ref().map(|g| super::grants::GrantJson::of(g, now)),
        earlier_applications: case
            .earlier_applications
            .iter()
            .filter(|a| visible.as_ref().is_none_or(|ids| ids.contains(&a.model_id)))
            .map(|a| EarlierJson {
                id: a.id.clone(),
                model: a.model_slug.clone(),
                status: a.status.as_str().to_owned(),
                submitted_at: time(a.created_at),
            })
            .collect(),
    }))
}

/// An approval.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveJson {
    /// How long the grant lasts, in days (the portal's default if absent).
    days: Option<u64>,
    /// A note for the other reviewers.
    note: Option<String>,
}

/// What a decision did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DecisionJson {
    /// `granted` (the grant exists or was extended), `recorded` (one more
    /// approval towards the policy's number), `denied` or `asked`.
    outcome: String,
    /// The application as it stands now.
    application: ApplicationJson,
    /// For `granted`: the end of the grant.
    grant_expires_at: Option<String>,
    /// For `recorded`: approvals so far, and approvals needed.
    approvals: Option<usize>,
    approvals_needed: Option<usize>,
}

async fn decided(state: &AppState, id: &str, outcome: &str) -> Result<DecisionJson, Error> {
    let view = db::applications::find_view(state.app.db.pool(), id)
        .await?
        .ok_or(Error::NotFound)?;
    Ok(DecisionJson {
        outcome: outcome.to_owned(),
        application: ApplicationJson::from(&view),
        grant_expires_at: None,
        approvals: None,
        approvals_needed: None,
    })
}

/// Approves an application as the caller, under the model's policy.
#[utoipa::path(post, path = "/api/v1/applications/{id}/approve", operation_id = "approveApplication", tag = "applications",
    params(("id" = String, Path, description = "The application's id"), doc::IdempotencyKey),
    request_body = ApproveJson,
    responses((status = 200, body = DecisionJson), (status = 409, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Body(body): Body<ApproveJson>,
) -> Result<Json<DecisionJson>, Error> {
    let approval = reviews::approve(
        &state.app,
        &caller.reviewer,
        &id,
        body.days,
        body.note.as_deref(),
        client,
    )
    .await?;
    let mut answer = decided(&state, &id, "").await?;
    match approval {
        Approval::Granted { expires_at } => {
            answer.outcome = "granted".into();
            answer.grant_expires_at = Some(time(expires_at));
        }
        Approval::Recorded { approvals, needed } => {
            answer.outcome = "recorded".into();
            answer.approvals = Some(approvals);
            answer.approvals_needed = Some(needed);
        }
    }
    Ok(Json(answer))
}

/// A denial.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DenyJson {
    /// Why, as the researcher will read it.
    reason: String,
}

/// Denies an application; the reason is e-mailed to the researcher.
#[utoipa::path(post, path = "/api/v1/applications/{id}/deny", operation_id = "denyApplication", tag = "applications",
    params(("id" = String, Path, description = "The application's id"), doc::IdempotencyKey),
    request_body = DenyJson,
    responses((status = 200, body = DecisionJson), (status = 409, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn deny(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Body(body): Body<DenyJson>,
) -> Result<Json<DecisionJson>, Error> {
    reviews::deny(&state.app, &caller.reviewer, &id, &body.reason, client).await?;
    Ok(Json(decided(&state, &id, "denied").await?))
}

/// A question for the applicant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AskJson {
    message: String,
}

/// Asks the applicant for more information; the application leaves the
/// queue until they answer.
#[utoipa::path(post, path = "/api/v1/applications/{id}/ask", operation_id = "askApplicant", tag = "applications",
    params(("id" = String, Path, description = "The application's id"), doc::IdempotencyKey),
    request_body = AskJson,
    responses((status = 200, body = DecisionJson), (status = 409, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn ask(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Body(body): Body<AskJson>,
) -> Result<Json<DecisionJson>, Error> {
    threads::ask(&state.app, &caller.reviewer, &id, &body.message, client).await?;
    Ok(Json(decided(&state, &id, "asked").await?))
}

/// One decision for several applications.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BulkJson {
    /// The applications (at most 200).
    ids: Vec<String>,
    /// `approve` or `deny`.
    action: String,
    /// For `approve`: the grant's days.
    days: Option<u64>,
    /// For `approve`: a note.
    note: Option<String>,
    /// For `deny`: the reason.
    reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkOutcomeJson {
    id: String,
    ok: bool,
    /// What was done, or why it was not.
    message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct BulkResultJson {
    results: Vec<BulkOutcomeJson>,
}

/// Approves or denies each application, each on its own: one that cannot be
/// decided does not stop the rest.
#[utoipa::path(post, path = "/api/v1/applications/bulk", operation_id = "decideApplications", tag = "applications",
    params(doc::IdempotencyKey),
    request_body = BulkJson,
    responses((status = 200, body = BulkResultJson), (status = 400, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn bulk(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Body(body): Body<BulkJson>,
) -> Result<Response, Error> {
    if body.ids.iter().any(|id| id.is_empty() || id.len() > 64) {
        return Err(Error::BadRequest(
            "an application id has 1 to 64 characters".into(),
        ));
    }
    let reason = body.reason.unwrap_or_default();
    let decision = match body.action.as_str() {
        "approve" => BulkDecision::Approve {
            days: body.days,
            note: body.note.as_deref(),
        },
        "deny" => BulkDecision::Deny { reason: &reason },
        _ => return Err(Error::BadRequest("action is approve or deny".into())),
    };
    let outcomes = reviews::bulk(&state.app, &caller.reviewer, &body.ids, &decision, client).await?;
    let results = outcomes
        .into_iter()
        .map(|o| BulkOutcomeJson {
            id: o.application_id,
            ok: o.result.is_ok(),
            message: o.result.unwrap_or_else(|e| e),
        })
        .collect();
    Ok((StatusCode::OK, Json(BulkResultJson { results })).into_response())
}
