//! The reviewers' dashboard: sign-in, the queue, decisions and grants.

use std::{collections::HashMap, time::Duration};

use super::auth::Csrf;
use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    AppState, ClientInfo, Error,
    auth::{CurrentReviewer, REVIEWER_KEY, STAMP_KEY, csrf_field, session_error, start_session},
    extract::{CsrfForm, Path, Query},
    flash::{self, Flash},
    pages::{self, ApplicationRow, BulkResultRow, Choice, GrantRow, Header, QueueRow, render},
};
use crate::{
    app::App,
    db::{
        self,
        applications::{QueueFilter, QueueSort},
        reviewers::Reviewer,
    },
    domain::access_urls,
    domain::accounts,
    domain::authz::{self, ReviewerAction},
    domain::grants::{self, GrantState},
    domain::renewals,
    domain::reviews::{self, BulkDecision},
    domain::threads,
    types::{
        Email, format_ms, now_ms,
        states::{Author, Status},
    },
};

/// Rows on one page of the queue and of the grants.
const PAGE_SIZE: i64 = 50;
const DAY_MS: i64 = 86_400_000;

pub(crate) async fn login_page(token: Csrf) -> Result<Response, Error> {
    let page = pages::Login {
        csrf: csrf_field(&token)?,
        email: String::new(),
        error: String::new(),
    };
    Ok((token, render(&page)?).into_response())
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

pub(crate) async fn login(
    State(state): State<AppState>,
    session: Session,
    ClientInfo(client): ClientInfo,
    CsrfForm {
        csrf: token,
        fields: form,
    }: CsrfForm<LoginForm>,
) -> Result<Response, Error> {
    let email = Email::lookup_key(&form.email);
    // Counted before the password is checked, so a burst of guesses sent at
    // once gets no more checks than the same guesses one by one.
    let attempt = match state.throttle.attempt(Some(&email), &client.network()) {
        Ok(attempt) => attempt,
        Err(wait) => {
            accounts::record_throttled(&state.app, &email, client).await?;
            return throttled(token, email, wait, "Too many failed sign-ins.");
        }
    };
    let signed_in = match accounts::authenticate(&state.app, &form.email, &form.password, client).await {
        Ok(signed_in) => signed_in,
        Err(crate::domain::Error::Busy { retry_after, .. }) => {
            attempt.succeeded();
            return throttled(
                token,
                email,
                retry_after,
                "The portal is busy checking other sign-ins.",
            );
        }
        Err(err) => return Err(err.into()),
    };
    match signed_in {
        Some(reviewer) => {
            attempt.succeeded();
            start_session(&session, REVIEWER_KEY, &reviewer.id).await?;
            session
                .insert(STAMP_KEY, accounts::credential_stamp(&reviewer))
                .await
                .map_err(session_error)?;
            Ok(Redirect::to("/admin").into_response())
        }
        None => {
            drop(attempt);
            let page = pages::Login {
                csrf: csrf_field(&token)?,
                email,
                error: "The e-mail or the password is wrong.".into(),
            };
            Ok((StatusCode::UNAUTHORIZED, token, render(&page)?).into_response())
        }
    }
}

/// The sign-in page again, with 429 and how long to wait.
fn throttled(token: Csrf, email: String, wait: Duration, why: &str) -> Result<Response, Error> {
    let secs = wait.as_secs().max(1);
    let page = pages::Login {
        csrf: csrf_field(&token)?,
        email,
        error: format!("{why} Try again in {secs} seconds."),
    };
    let mut response = (StatusCode::TOO_MANY_REQUESTS, token, render(&page)?).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    Ok(response)
}

pub(crate) async fn logout(session: Session, _: CsrfForm) -> Result<Response, Error> {
    session.flush().await.map_err(session_error)?;
    Ok(Redirect::to("/admin/login").into_response())
}

/// The queue's filters, as submitted (GET, so a filtered view can be bookmarked).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct QueueQuery {
    #[serde(default)]
    model: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    waited: String,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    page: String,
}

/// A status as the queue's filter names it.
fn status_filter_label(status: Status) -> &'static str {
    match status {
        Status::Pending => "Waiting for review",
        Status::InfoRequested => "Waiting for the applicant's answer",
        Status::Approved => "Approved",
        Status::Denied => "Denied",
        Status::Unconfirmed => "E-mail not confirmed",
    }
}

/// The queue's status filter: the queue itself by default, `all` for every status.
fn status_filter(text: &str) -> Result<Option<Status>, Error> {
    match text.trim() {
        "" => Ok(Some(Status::Pending)),
        "all" => Ok(None),
        s => s
            .parse()
            .map(Some)
            .map_err(|_| Error::BadRequest("unknown application state".into())),
    }
}

const SORTS: [(&str, &str); 3] = [
    ("oldest", "Longest waiting first"),
    ("newest", "Newest first"),
    ("model", "By model"),
];

fn opt(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.chars().take(200).collect())
}

fn whole_number(s: &str, what: &str) -> Result<Option<i64>, Error> {
    match s.trim() {
        "" => Ok(None),
        n => n
            .parse::<i64>()
            .ok()
            .filter(|n| (0..=100_000).contains(n))
            .map(Some)
            .ok_or_else(|| Error::BadRequest(format!("{what} must be a whole number"))),
    }
}

fn page_number(s: &str) -> Result<i64, Error> {
    Ok(whole_number(s, "the page")?.unwrap_or(1).max(1))
}

/// `2 d 4 h`, `3 h 10 min`, `5 min`.
fn waited(ms: i64) -> String {
    let minutes = ms.max(0) / 60_000;
    let (d, h, m) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min")
    }
}

/// How many pages `total` rows fill, and the query strings of the pages
/// before and after `page` (empty at either end).
fn paging(total: i64, page: i64, pairs: &[(&str, &str)]) -> (i64, String, String) {
    let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
    let prev = if page > 1 {
        page_query(pairs, page - 1)
    } else {
        String::new()
    };
    let next = if page < pages {
        page_query(pairs, page + 1)
    } else {
        String::new()
    };
    (pages, prev, next)
}

/// A query string with `page` replaced.
fn page_query(pairs: &[(&str, &str)], page: i64) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
    }
    q.append_pair("page", &page.to_string());
    q.finish()
}

async fn model_choices(app: &App, current: &str, only: Option<&[String]>) -> Result<Vec<Choice>, Error> {
    let mut choices = vec![Choice {
        value: String::new(),
        label: "Every model".into(),
        selected: current.is_empty(),
    }];
    for m in db::models::list_models(app.db.pool()).await? {
        if only.is_some_and(|ids| !ids.contains(&m.id)) {
            continue;
        }
        choices.push(Choice {
            selected: m.slug == current,
            label: m.slug.clone(),
            value: m.slug,
        });
    }
    Ok(choices)
}

async fn template_choices(app: &App) -> Result<Vec<Choice>, Error> {
    Ok(db::policy::deny_templates(app.db.pool())
        .await?
        .into_iter()
        .map(|t| Choice {
            value: t.id,
            label: t.title,
            selected: false,
        })
        .collect())
}

pub(crate) async fn queue(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(reviewer): CurrentReviewer,
    session: Session,
    Query(q): Query<QueueQuery>,
) -> Result<Response, Error> {
    let results = flash::take(&session).await?.results;
    let page = render_queue(&state, &token, &reviewer, &q, results).await?;
    Ok((token, page).into_response())
}

async fn render_queue(
    state: &AppState,
    token: &Csrf,
    reviewer: &Reviewer,
    q: &QueueQuery,
    results: Vec<BulkResultRow>,
) -> Result<Response, Error> {
    let app = &state.app;
    let now = now_ms();
    let status = status_filter(&q.status)?;
    let sort = match q.sort.trim() {
        "" | "oldest" => QueueSort::Oldest,
        "newest" => QueueSort::Newest,
        "model" => QueueSort::Model,
        _ => return Err(Error::BadRequest("unknown sort order".into())),
    };
    let page = page_number(&q.page)?;
    let visible = authz::visible_models(app, reviewer).await?;
    let filter = QueueFilter {
        model_ids: visible.clone(),
        model_slug: opt(&q.model),
        status,
        waited_at_least: whole_number(&q.waited, "the waiting time")?.map(|d| d * DAY_MS),
        domain: opt(q.domain.trim_start_matches('@')),
        text: opt(&q.q),
        sort,
        limit: PAGE_SIZE,
        offset: (page - 1).saturating_mul(PAGE_SIZE),
    };
    let (found, total) = db::applications::search(app.db.pool(), &filter, now).await?;
    let policies: HashMap<String, db::policy::ReviewPolicy> = db::policy::list(app.db.pool())
        .await?
        .into_iter()
        .map(|p| (p.model_id.clone(), p))
        .collect();
    let ids: Vec<String> = found.iter().map(|a| a.id.clone()).collect();
    let approvals = db::applications::approval_counts(app.db.pool(), &ids).await?;
    let rows = found
        .iter()
        .map(|a| {
            let policy = policies.get(&a.model_id);
            let needed = policy.map_or(1, |p| p.approvals_needed);
            let open = a.status.is_open();
            QueueRow {
                app: ApplicationRow::from(a),
                kind: a.kind,
                waited: if open {
                    waited(now - reviews::waiting_since(a))
                } else {
                    String::new()
                },
                overdue: reviews::is_overdue(a, policy, now),
                approvals: if open && needed > 1 {
                    format!("{} of {needed}", approvals.get(&a.id).copied().unwrap_or(0))
                } else {
                    String::new()
                },
                selectable: open,
            }
        })
        .collect();
    let pairs = [
        ("model", q.model.as_str()),
        ("status", q.status.as_str()),
        ("waited", q.waited.as_str()),
        ("domain", q.domain.as_str()),
        ("q", q.q.as_str()),
        ("sort", q.sort.as_str()),
    ];
    let (pages, prev, next) = paging(total, page, &pairs);
    let page = pages::Queue {
        header: Header::new(reviewer, token)?,
        rows,
        total,
        models: model_choices(app, q.model.trim(), visible.as_deref()).await?,
        statuses: Status::ALL
            .iter()
            .map(|&s| (s.as_str(), status_filter_label(s)))
            .chain([("all", "Any state")])
            .map(|(value, label)| Choice {
                value: value.to_owned(),
                label: label.to_owned(),
                selected: value == status.map_or("all", Status::as_str),
            })
            .collect(),
        sorts: Choice::list(&SORTS, q.sort.trim()),
        waited_days: q.waited.trim().chars().take(10).collect(),
        domain: q.domain.trim().chars().take(200).collect(),
        text: q.q.trim().chars().take(200).collect(),
        page,
        pages,
        prev,
        next,
        default_days: reviews::default_grant_days(app),
        templates: template_choices(app).await?,
        results,
    };
    render(&page)
}

pub(crate) async fn application(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(reviewer): CurrentReviewer,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let app = &state.app;
    let case = reviews::case_file(app, &reviewer, &id).await?;
    let view = &case.application;
    let mut history: Vec<pages::EarlierRow> = case
        .earlier_applications
        .iter()
        .map(|a| pages::EarlierRow {
            href: format!("/admin/applications/{}", a.id),
            what: "application".into(),
            model: a.model_slug.clone(),
            state: a.status.to_string(),
            when: format_ms(a.created_at),
        })
        .collect();
    let now = now_ms();
    history.extend(case.grants.iter().map(|g| pages::EarlierRow {
        href: format!("/admin/grants/{}", g.id),
        what: "grant".into(),
        state: GrantState::of(g, now).as_str().to_owned(),
        model: g.model_slug.clone(),
        when: format_ms(g.created_at),
    }));
    let page = pages::ApplicationPage {
        header: Header::new(&reviewer, &token)?,
        app: ApplicationRow::from(view),
        intended_use: view.intended_use.clone(),
        terms_version: view.terms_version,
        submitted: format_ms(view.created_at),
        confirmed: view
            .confirmed_at
            .map(format_ms)
            .unwrap_or_else(|| "not yet".into()),
        pending: view.status.is_open(),
        may_decide: case.may_decide,
        already_approved: case.approved_by_reader,
        reviews: case
            .reviews
            .into_iter()
            .map(|r| pages::ReviewRow {
                reviewer: r.reviewer_email,
                decision: r.decision,
                reason: r.reason.unwrap_or_default(),
                note: r.note.unwrap_or_default(),
                days: r.grant_days.map(|d| format!("{d} days")).unwrap_or_default(),
                when: format_ms(r.created_at),
            })
            .collect(),
        default_days: reviews::default_days_for(app, view.kind),
        max_days: reviews::max_days_for(view.kind),
        domain: view
            .email
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default(),
        policy: if case.approvals_needed > 1 {
            format!(
                "needs {} approvals from different reviewers; {} so far",
                case.approvals_needed, case.approvals_counted
            )
        } else {
            String::new()
        },
        history,
        made_grant: case.grant.as_ref().map(|g| pages::EarlierRow {
            href: format!("/admin/grants/{}", g.id),
            what: "grant".into(),
            state: GrantState::of(g, now).as_str().to_owned(),
            model: g.model_slug.clone(),
            when: format_ms(g.expires_at),
        }),
        templates: template_choices(app).await?,
        kind: view.kind,
        parent_id: view.parent_id.clone().unwrap_or_default(),
        grant_id: view.grant_id.clone().unwrap_or_default(),
        answers: case.answers.iter().map(pages::AnswerRow::from).collect(),
        messages: case
            .messages
            .into_iter()
            .map(|m| pages::MessageRow {
                who: match m.author_kind {
                    Author::Reviewer => format!("{} (reviewer) asked", m.author_email),
                    Author::Researcher => format!("{} (applicant) wrote", m.author_email),
                },
                when: format_ms(m.created_at),
                body: m.body,
            })
            .collect(),
        can_ask: view.status.is_open(),
    };
    Ok((token, render(&page)?).into_response())
}

#[derive(Deserialize)]
pub(crate) struct AskForm {
    #[serde(default)]
    message: String,
}

/// Asks the applicant for more information.
pub(crate) async fn ask(
    State(state): State<AppState>,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<AskForm>,
) -> Result<Response, Error> {
    threads::ask(&state.app, &reviewer, &id, &form.message, client).await?;
    Ok(Redirect::to(&format!("/admin/applications/{id}")).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ApproveForm {
    #[serde(default)]
    days: String,
    #[serde(default)]
    note: String,
}

fn grant_days(days: &str) -> Result<Option<u64>, Error> {
    match days.trim() {
        "" => Ok(None),
        d => d
            .parse::<u64>()
            .map(Some)
            .map_err(|_| Error::BadRequest("the grant duration must be a whole number of days".into())),
    }
}

pub(crate) async fn approve(
    State(state): State<AppState>,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<ApproveForm>,
) -> Result<Response, Error> {
    let days = grant_days(&form.days)?;
    reviews::approve(&state.app, &reviewer, &id, days, Some(&form.note), client).await?;
    Ok(Redirect::to(&format!("/admin/applications/{id}")).into_response())
}

#[derive(Deserialize)]
pub(crate) struct DenyForm {
    #[serde(default)]
    template: String,
    #[serde(default)]
    reason: String,
}

/// The reason of a denial: the chosen template's text, then the reviewer's own words.
async fn deny_reason(app: &App, template: &str, reason: &str) -> Result<String, Error> {
    let mut text = String::new();
    if !template.trim().is_empty() {
        let chosen = db::policy::deny_templates(app.db.pool())
            .await?
            .into_iter()
            .find(|t| t.id == template.trim())
            .ok_or_else(|| Error::BadRequest("that denial template no longer exists".into()))?;
        text.push_str(&chosen.body);
    }
    if !reason.trim().is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(reason.trim());
    }
    Ok(text)
}

pub(crate) async fn deny(
    State(state): State<AppState>,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<DenyForm>,
) -> Result<Response, Error> {
    let reason = deny_reason(&state.app, &form.template, &form.reason).await?;
    reviews::deny(&state.app, &reviewer, &id, &reason, client).await?;
    Ok(Redirect::to(&format!("/admin/applications/{id}")).into_response())
}

/// Approves or denies every selected row of the queue. The form repeats the
/// `id` field once per selected row, which is why it is decoded by hand.
pub(crate) async fn bulk(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    CsrfForm { fields: body, .. }: CsrfForm<Vec<(String, String)>>,
) -> Result<Response, Error> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut ids = Vec::new();
    for (k, v) in body {
        if k == "id" {
            ids.push(v);
        } else {
            fields.insert(k, v);
        }
    }
    let field = |k: &str| fields.get(k).map_or("", String::as_str);
    let app = &state.app;
    let outcomes = match field("action") {
        "approve" => {
            let days = grant_days(field("days"))?;
            let decision = BulkDecision::Approve {
                days,
                note: Some(field("note")),
            };
            reviews::bulk(app, &reviewer, &ids, &decision, client).await?
        }
        "deny" => {
            let reason = deny_reason(app, field("template"), field("reason")).await?;
            reviews::bulk(
                app,
                &reviewer,
                &ids,
                &BulkDecision::Deny { reason: &reason },
                client,
            )
            .await?
        }
        _ => {
            return Err(Error::BadRequest(
                "choose to approve or to deny the selected applications".into(),
            ));
        }
    };
    let results = outcomes
        .into_iter()
        .map(|o| BulkResultRow {
            id: o.application_id,
            email: o.email,
            ok: o.result.is_ok(),
            message: o.result.unwrap_or_else(|e| e),
        })
        .collect();
    let flash = Flash {
        message: String::new(),
        results,
    };
    flash::redirect(&session, "/admin", flash).await
}

/// The grants list's filters, as submitted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct GrantQuery {
    #[serde(default)]
    model: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    expiring: String,
    #[serde(default)]
    page: String,
}

pub(crate) async fn grants(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(reviewer): CurrentReviewer,
    Query(q): Query<GrantQuery>,
) -> Result<Response, Error> {
    let app = &state.app;
    let now = now_ms();
    let grant_state = match q.state.trim() {
        "" => None,
        s @ ("active" | "expired" | "revoked") => Some(s.to_owned()),
        _ => return Err(Error::BadRequest("unknown grant state".into())),
    };
    let page = page_number(&q.page)?;
    let visible = authz::visible_models(app, &reviewer).await?;
    let filter = db::grants::GrantFilter {
        model_ids: visible.clone(),
        model_slug: opt(&q.model),
        state: grant_state,
        email: opt(&q.email),
        expiring_within: whole_number(&q.expiring, "the days until expiry")?.map(|d| d * DAY_MS),
        limit: PAGE_SIZE,
        offset: (page - 1).saturating_mul(PAGE_SIZE),
    };
    let (found, total) = db::grants::search(app.db.pool(), &filter, now).await?;
    let rows = found
        .into_iter()
        .map(|g| GrantRow {
            state: GrantState::of(&g, now),
            id: g.id,
            email: g.email,
            model: g.model_slug,
            created: format_ms(g.created_at),
            expires: format_ms(g.expires_at),
            revoked_reason: g.revoked_reason.unwrap_or_default(),
        })
        .collect();
    let pairs = [
        ("model", q.model.as_str()),
        ("state", q.state.as_str()),
        ("email", q.email.as_str()),
        ("expiring", q.expiring.as_str()),
    ];
    let (pages, prev, next) = paging(total, page, &pairs);
    let page = pages::Grants {
        header: Header::new(&reviewer, &token)?,
        grants: rows,
        total,
        models: model_choices(app, q.model.trim(), visible.as_deref()).await?,
        states: Choice::list(
            &[
                ("", "Any state"),
                ("active", "Active"),
                ("expired", "Expired"),
                ("revoked", "Revoked"),
            ],
            q.state.trim(),
        ),
        email: q.email.trim().chars().take(200).collect(),
        expiring_days: q.expiring.trim().chars().take(10).collect(),
        page,
        pages,
        prev,
        next,
    };
    Ok((token, render(&page)?).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ReasonForm {
    #[serde(default)]
    reason: String,
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<ReasonForm>,
) -> Result<Response, Error> {
    grants::manageable(&state.app, &reviewer, &id).await?;
    grants::revoke(&state.app, &id, &form.reason, &reviewer.email, client).await?;
    Ok(Redirect::to(&format!("/admin/grants/{id}")).into_response())
}

/// Withdraws one access URL of a grant, leaving the grant; the researcher is
/// told by e-mail.
pub(crate) async fn withdraw_url(
    State(state): State<AppState>,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path((id, url)): Path<(String, String)>,
    _form: CsrfForm,
) -> Result<Response, Error> {
    let grant = grants::manageable(&state.app, &reviewer, &id).await?;
    access_urls::withdraw_as_reviewer(&state.app, &reviewer, &grant, &url, client).await?;
    Ok(Redirect::to(&format!("/admin/grants/{id}#access-urls")).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ExtendForm {
    #[serde(default)]
    days: String,
    /// An admin's override of the model's approval policy.
    #[serde(default, rename = "override")]
    override_policy: String,
}

pub(crate) async fn extend(
    State(state): State<AppState>,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<ExtendForm>,
) -> Result<Response, Error> {
    grants::manageable(&state.app, &reviewer, &id).await?;
    let days = grant_days(&form.days)?.ok_or_else(|| Error::BadRequest("say by how many days".into()))?;
    let by = if form.override_policy.is_empty() {
        renewals::ExtendBy::Reviewer(&reviewer)
    } else {
        authz::reviewer_may(&state.app, &reviewer, ReviewerAction::OverridePolicy).await?;
        renewals::ExtendBy::Override {
            actor: &reviewer.email,
        }
    };
    match renewals::extend(&state.app, &id, days, by, client).await? {
        renewals::Extension::Extended { .. } => {
            Ok(Redirect::to(&format!("/admin/grants/{id}")).into_response())
        }
        renewals::Extension::Proposed { renewal_id, .. } => {
            Ok(Redirect::to(&format!("/admin/applications/{renewal_id}")).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_times_read_in_the_largest_useful_units() {
        assert_eq!(waited(0), "0 min");
        assert_eq!(waited(5 * 60_000), "5 min");
        assert_eq!(waited(3 * 3_600_000 + 10 * 60_000), "3 h 10 min");
        assert_eq!(waited(2 * DAY_MS + 4 * 3_600_000), "2 d 4 h");
        assert_eq!(waited(-5), "0 min");
    }

    #[test]
    fn page_links_keep_the_filters_and_drop_empty_ones() {
        let q = page_query(&[("model", "m & n"), ("status", "")], 3);
        assert_eq!(q, "model=m+%26+n&page=3");
    }

    #[test]
    fn numbers_in_filters_are_checked() {
        assert_eq!(whole_number(" 7 ", "x").unwrap(), Some(7));
        assert_eq!(whole_number("", "x").unwrap(), None);
        assert!(whole_number("-1", "x").is_err());
        assert!(whole_number("7; DROP TABLE", "x").is_err());
        assert_eq!(page_number("0").unwrap(), 1);
    }
}
