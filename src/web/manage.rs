//! Admin pages: reviewer accounts and their models, each model's review
//! policy, denial templates; and every reviewer's own notification choice.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    AppState, ClientInfo, Error,
    auth::{Csrf, CurrentReviewer, STAMP_KEY, session_error},
    extract::{CsrfForm, Path, Query},
    flash::{self, Flash},
    pages::{self, Choice, Header, render},
};
use crate::{
    db::{self, reviewers::Reviewer},
    domain,
    domain::accounts::{self, ReviewerChange},
    domain::authz,
    domain::policy::{self, PolicyChange},
    domain::tokens::{self, Scope},
    types::{Email, Slug, format_ms, now_ms, states::UnknownState},
};

/// Asks the authorization policy whether `reviewer` may manage reviewers,
/// models and templates.
async fn admin_only(state: &AppState, reviewer: &Reviewer) -> Result<(), Error> {
    Ok(authz::reviewer_may(&state.app, reviewer, authz::ReviewerAction::Administer).await?)
}

async fn reviewers_page(
    state: &AppState,
    token: &Csrf,
    me: &Reviewer,
    message: String,
    error: String,
) -> Result<Response, Error> {
    let pool = state.app.db.pool();
    let assignments = db::policy::assignments(pool).await?;
    let reviewers = db::reviewers::list(pool).await?;
    let page = pages::ReviewersPage {
        header: Header::new(me, token)?,
        reviewers: reviewers
            .into_iter()
            .map(|r| pages::ReviewerRow {
                models: assignments
                    .iter()
                    .filter(|(_, email)| *email == r.email)
                    .map(|(slug, _)| slug.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                is_self: r.id == me.id,
                is_admin: r.is_admin(),
                disabled: r.disabled_at.is_some(),
                id: r.id,
                email: r.email,
                notify: r.notify,
            })
            .collect(),
        models: db::models::list_models(pool)
            .await?
            .into_iter()
            .map(|m| Choice {
                label: m.slug.clone(),
                value: m.slug,
                selected: false,
            })
            .collect(),
        message,
        error,
        min_password: accounts::MIN_PASSWORD,
    };
    render(&page)
}

pub(crate) async fn reviewers(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(me): CurrentReviewer,
    session: Session,
) -> Result<Response, Error> {
    admin_only(&state, &me).await?;
    let message = flash::take(&session).await?.message;
    let page = reviewers_page(&state, &token, &me, message, String::new()).await?;
    Ok((token, page).into_response())
}

#[derive(Deserialize)]
pub(crate) struct NewReviewerForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    admin: Option<String>,
}

pub(crate) async fn save_reviewer(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(me): CurrentReviewer,
    CsrfForm {
        csrf: token,
        fields: form,
    }: CsrfForm<NewReviewerForm>,
) -> Result<Response, Error> {
    admin_only(&state, &me).await?;
    let error = match form.email.parse::<Email>() {
        Err(e) => e.to_owned(),
        Ok(email) => {
            let admin = form.admin.is_some();
            match accounts::add_reviewer(&state.app, &email, &form.password, admin, &me.email).await {
                Ok(_) => {
                    let done = Flash::message(format!("{email} can sign in now."));
                    return flash::redirect(&session, "/admin/reviewers", done).await;
                }
                Err(domain::Error::Invalid(why) | domain::Error::Conflict(why)) => why,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let page = reviewers_page(&state, &token, &me, String::new(), error).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, token, page).into_response())
}

#[derive(Deserialize)]
pub(crate) struct ChangeReviewerForm {
    #[serde(default)]
    change: String,
    #[serde(default)]
    model: String,
}

pub(crate) async fn change_reviewer(
    State(state): State<AppState>,
    CurrentReviewer(me): CurrentReviewer,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<ChangeReviewerForm>,
) -> Result<Response, Error> {
    admin_only(&state, &me).await?;
    let app = &state.app;
    let target = db::reviewers::find(app.db.pool(), &id)
        .await?
        .ok_or(Error::NotFound)?;
    let email: Email = target
        .email
        .parse()
        .map_err(|e: &str| Error::Internal(anyhow::anyhow!("{e}")))?;
    match form.change.as_str() {
        "admin" => accounts::change_reviewer(app, &id, ReviewerChange::Admin(true), &me.email).await?,
        "reviewer" => accounts::change_reviewer(app, &id, ReviewerChange::Admin(false), &me.email).await?,
        "disable" => accounts::change_reviewer(app, &id, ReviewerChange::Disabled(true), &me.email).await?,
        "enable" => accounts::change_reviewer(app, &id, ReviewerChange::Disabled(false), &me.email).await?,
        "assign" | "unassign" => {
            policy::assign(app, form.model.trim(), &email, form.change == "assign", &me.email).await?;
        }
        _ => return Err(Error::BadRequest("unknown change".into())),
    }
    Ok(Redirect::to("/admin/reviewers").into_response())
}

/// A refused change to one model, shown on the page with what was sent.
#[derive(Default)]
struct Refused {
    slug: String,
    /// JSON sent to the questions' JSON editor.
    questions: Option<String>,
    /// Rows sent from the question editor, as typed.
    question_rows: Option<Vec<crate::domain::questions::SentRow>>,
    terms: Option<String>,
    error: String,
}

async fn models_page(
    state: &AppState,
    token: &Csrf,
    me: &Reviewer,
    message: String,
    refused: Refused,
) -> Result<Response, Error> {
    let pool = state.app.db.pool();
    let assignments = db::policy::assignments(pool).await?;
    let mut models = Vec::new();
    for p in db::policy::list(pool).await? {
        let Some(model) = db::models::find_model(pool, &p.model_id).await? else {
            continue;
        };
        let this = refused.slug == p.model_slug;
        let stored = crate::domain::questions::stored(&model.questions);
        let questions = serde_json::to_string_pretty(&stored).unwrap_or_else(|_| "[]".into());
        let rows = refused
            .question_rows
            .clone()
            .filter(|_| this)
            .unwrap_or_else(|| pages::QuestionRowView::saved(&stored));
        models.push(pages::PolicyRow {
            reviewers: assignments
                .iter()
                .filter(|(slug, _)| *slug == p.model_slug)
                .map(|(_, email)| email.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            questions: refused.questions.clone().filter(|_| this).unwrap_or(questions),
            question_rows: pages::QuestionRowView::all(&rows),
            json_refused: this && refused.questions.is_some(),
            terms: refused.terms.clone().filter(|_| this).unwrap_or(model.terms),
            terms_version: model.terms_version,
            reapply_after_days: model.reapply_after_days,
            error: if this {
                refused.error.clone()
            } else {
                String::new()
            },
            slug: p.model_slug,
            approvals_needed: p.approvals_needed,
            auto_approve_domains: p.auto_approve_domains.unwrap_or_default(),
            review_target_days: p.review_target_days,
        });
    }
    let page = pages::ModelsPage {
        header: Header::new(me, token)?,
        models,
        templates: db::policy::deny_templates(pool)
            .await?
            .into_iter()
            .map(|t| pages::TemplateRow {
                id: t.id,
                title: t.title,
                body: t.body,
            })
            .collect(),
        message,
    };
    render(&page)
}

pub(crate) async fn models(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(me): CurrentReviewer,
    session: Session,
) -> Result<Response, Error> {
    admin_only(&state, &me).await?;
    let message = flash::take(&session).await?.message;
    let page = models_page(&state, &token, &me, message, Refused::default()).await?;
    Ok((token, page).into_response())
}

#[derive(Deserialize)]
pub(crate) struct PolicyForm {
    #[serde(default)]
    approvals_needed: String,
    #[serde(default)]
    auto_approve_domains: String,
    #[serde(default)]
    review_target_days: String,
    #[serde(default)]
    reapply_after_days: String,
}

fn number(s: &str, what: &str) -> Result<i64, Error> {
    s.trim()
        .parse()
        .map_err(|_| Error::BadRequest(format!("{what} must be a whole number")))
}

pub(crate) async fn save_policy(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(me): CurrentReviewer,
    Path(slug): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<PolicyForm>,
) -> Result<Response, Error> {
    admin_only(&state, &me).await?;
    let change = PolicyChange {
        approvals_needed: number(&form.approvals_needed, "approvals needed")?,
        auto_approve_domains: form.auto_approve_domains,
        review_target_days: number(&form.review_target_days, "the review target")?,
    };
    policy::set(&state.app, &slug, &change, &me.email).await?;
    let reapply = number(&form.reapply_after_days, "the wait before applying again")?;
    let parsed: Slug = slug.parse().map_err(Error::BadRequest)?;
    crate::domain::models::set_reapply_after(&state.app, &parsed, reapply, &me.email).await?;
    let saved = Flash::message(format!("The policy of {slug} is saved."));
    flash::redirect(&session, "/admin/models", saved).await
}

/// Replaces a model's application questions, sent either from the editor's
/// rows or as JSON (a `questions` field). A refused change comes back in
/// the form it was sent in, with the reason; nothing is lost.
pub(crate) async fn save_questions(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(me): CurrentReviewer,
    Path(slug): Path<String>,
    CsrfForm { csrf: token, fields }: CsrfForm<Vec<(String, String)>>,
) -> Result<Response, Error> {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    admin_only(&state, &me).await?;
    let parsed: Slug = slug.parse().map_err(Error::BadRequest)?;
    let refusal = |why: String, questions: Option<String>, question_rows| Refused {
        slug: slug.clone(),
        questions,
        question_rows,
        terms: None,
        error: format!("The questions were not saved: {why}"),
    };
    let (json, sent_rows) = match field("questions") {
        Some(json) => (json.to_owned(), None),
        None => {
            let rows = match crate::domain::questions::editor_rows(&fields) {
                Ok(rows) => rows,
                Err(why) => {
                    let page =
                        models_page(&state, &token, &me, String::new(), refusal(why, None, None)).await?;
                    return Ok((StatusCode::UNPROCESSABLE_ENTITY, token, page).into_response());
                }
            };
            match crate::domain::questions::from_rows(&rows) {
                Ok(questions) => (
                    serde_json::to_string(&questions).map_err(anyhow::Error::from)?,
                    Some(rows),
                ),
                Err(why) => {
                    let page =
                        models_page(&state, &token, &me, String::new(), refusal(why, None, Some(rows)))
                            .await?;
                    return Ok((StatusCode::UNPROCESSABLE_ENTITY, token, page).into_response());
                }
            }
        }
    };
    let refused = match crate::domain::models::set_questions(&state.app, &parsed, &json, &me.email).await {
        Ok(questions) => {
            let saved = Flash::message(crate::domain::questions::asks(&slug, questions.len()));
            return flash::redirect(&session, "/admin/models", saved).await;
        }
        Err(domain::Error::Invalid(why)) => {
            let json_sent = sent_rows.is_none().then_some(json);
            refusal(why, json_sent, sent_rows)
        }
        Err(e) => return Err(e.into()),
    };
    let page = models_page(&state, &token, &me, String::new(), refused).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, token, page).into_response())
}

#[derive(Deserialize)]
pub(crate) struct TermsForm {
    #[serde(default)]
    terms: String,
}

/// Publishes a new version of a model's terms.
pub(crate) async fn save_terms(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(me): CurrentReviewer,
    Path(slug): Path<String>,
    CsrfForm {
        csrf: token,
        fields: form,
    }: CsrfForm<TermsForm>,
) -> Result<Response, Error> {
    admin_only(&state, &me).await?;
    let parsed: Slug = slug.parse().map_err(Error::BadRequest)?;
    let terms = form.terms.replace("\r\n", "\n");
    let refused = match crate::domain::models::set_terms(&state.app, &parsed, &terms, &me.email).await {
        Ok(version) => {
            let saved = Flash::message(format!(
                "{slug} has terms version {version}; new applications accept it."
            ));
            return flash::redirect(&session, "/admin/models", saved).await;
        }
        Err(domain::Error::Invalid(why)) => Refused {
            slug: slug.clone(),
            questions: None,
            question_rows: None,
            terms: Some(form.terms),
            error: format!("The terms were not saved: {why}"),
        },
        Err(e) => return Err(e.into()),
    };
    let page = models_page(&state, &token, &me, String::new(), refused).await?;
    Ok((StatusCode::UNPROCESSABLE_ENTITY, token, page).into_response())
}

#[derive(Deserialize)]
pub(crate) struct TemplateForm {
    #[serde(default)]
    title: String,
    #[serde(default)]
    body: String,
}

pub(crate) async fn save_template(
    State(state): State<AppState>,
    CurrentReviewer(me): CurrentReviewer,
    CsrfForm { fields: form, .. }: CsrfForm<TemplateForm>,
) -> Result<Response, Error> {
    admin_only(&state, &me).await?;
    policy::save_template(&state.app, &form.title, &form.body, &me.email).await?;
    Ok(Redirect::to("/admin/models#templates").into_response())
}

pub(crate) async fn delete_template(
    State(state): State<AppState>,
    CurrentReviewer(me): CurrentReviewer,
    Path(id): Path<String>,
    _: CsrfForm,
) -> Result<Response, Error> {
    admin_only(&state, &me).await?;
    if !policy::delete_template(&state.app, &id, &me.email).await? {
        return Err(Error::NotFound);
    }
    Ok(Redirect::to("/admin/models#templates").into_response())
}

/// What the account page shows beside its forms.
#[derive(Default)]
struct AccountNotes {
    message: String,
    password_error: String,
    token_error: String,
    new_secret: String,
    webhook_error: String,
    new_webhook_secret: String,
}

async fn account_page(
    state: &AppState,
    token: &Csrf,
    me: &Reviewer,
    message: String,
    password_error: String,
) -> Result<Response, Error> {
    account_page_with(
        state,
        token,
        me,
        AccountNotes {
            message,
            password_error,
            ..AccountNotes::default()
        },
    )
    .await
}

async fn account_page_with(
    state: &AppState,
    token: &Csrf,
    me: &Reviewer,
    notes: AccountNotes,
) -> Result<Response, Error> {
    let pool = state.app.db.pool();
    let now = now_ms();
    let mut models = Vec::new();
    for id in db::policy::models_of(pool, &me.id).await? {
        if let Some(m) = db::models::find_model(pool, &id).await? {
            models.push(m.slug);
        }
    }
    let page = pages::AccountPage {
        header: Header::new(me, token)?,
        notify: Choice::list(
            &[
                ("immediate", "An e-mail for every application that waits for me"),
                ("digest", "One e-mail a day listing what waits"),
                ("off", "No e-mail"),
            ],
            me.notify.as_str(),
        ),
        models: if me.is_admin() && models.is_empty() {
            "every model (as an admin)".into()
        } else {
            models.join(", ")
        },
        message: notes.message,
        password_error: notes.password_error,
        min_password: accounts::MIN_PASSWORD,
        tokens: tokens::list(&state.app, me, false)
            .await?
            .into_iter()
            .map(|t| pages::TokenRow {
                state: t.state(now),
                active: t.state(now) == "active",
                scopes: t.scopes.to_string(),
                expires: format_ms(t.expires_at),
                last_used: t.last_used_at.map(format_ms).unwrap_or_else(|| "never".into()),
                id: t.id,
                name: t.name,
            })
            .collect(),
        scopes: Scope::ALL
            .iter()
            .filter(|s| me.is_admin() || matches!(s, Scope::Read | Scope::Review))
            .map(|s| (s.as_str(), scope_label(*s)))
            .collect(),
        new_secret: notes.new_secret,
        token_error: notes.token_error,
        max_token_days: tokens::MAX_DAYS,
        webhooks: domain::webhooks::list(&state.app, Some(me))
            .await?
            .iter()
            .map(webhook_row)
            .collect(),
        event_types: crate::webhooks::EventType::ALL
            .iter()
            .map(|t| t.as_str())
            .collect(),
        new_webhook_secret: notes.new_webhook_secret,
        webhook_error: notes.webhook_error,
    };
    render(&page)
}

fn scope_label(scope: Scope) -> &'static str {
    match scope {
        Scope::Read => "read: applications, grants and models you review",
        Scope::Review => "review: read, and decide, ask, extend and revoke",
        Scope::Admin => "admin: reviewers and models",
        Scope::Audit => "audit: the audit log and its reports",
    }
}

/// Makes an API token and shows its secret on the page this once (never
/// through a redirect, so that it is not kept in the session).
pub(crate) async fn create_token(
    State(state): State<AppState>,
    CurrentReviewer(me): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    CsrfForm {
        csrf: token,
        fields: body,
    }: CsrfForm<Vec<(String, String)>>,
) -> Result<Response, Error> {
    let field = |k: &str| {
        body.iter()
            .find(|(key, _)| key == k)
            .map_or("", |(_, v)| v.as_str())
    };
    let scopes = body
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let refused = |message: String| async {
        let notes = AccountNotes {
            token_error: message,
            ..AccountNotes::default()
        };
        let page = account_page_with(&state, &token, &me, notes).await?;
        Ok::<_, Error>((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
    };
    let scopes: tokens::Scopes = match scopes.parse() {
        Ok(scopes) => scopes,
        Err(e) => return refused(e.to_string()).await,
    };
    let days = match field("days").trim().parse::<u64>() {
        Ok(days) => days,
        Err(_) => return refused(format!("a token lasts 1 to {} days", tokens::MAX_DAYS)).await,
    };
    let created = match tokens::create(&state.app, &me, field("name"), scopes, days, &me.email, client).await
    {
        Ok(created) => created,
        Err(
            err @ (domain::Error::Invalid(_) | domain::Error::Conflict(_) | domain::Error::Forbidden { .. }),
        ) => {
            return refused(err.to_string()).await;
        }
        Err(err) => return Err(err.into()),
    };
    let notes = AccountNotes {
        message: format!(
            "The token {:?} is made. Copy its secret now: it is not shown again.",
            created.token.name
        ),
        new_secret: created.secret,
        ..AccountNotes::default()
    };
    let mut page = account_page_with(&state, &token, &me, notes).await?;
    page.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(page)
}

fn webhook_row(s: &db::webhooks::Subscription) -> pages::WebhookRow {
    pages::WebhookRow {
        id: s.id.clone(),
        url: s.url.clone(),
        events: s.event_types.replace(',', ", "),
        enabled: s.disabled_at.is_none(),
        disabled_reason: s.disabled_reason.clone().unwrap_or_default(),
    }
}

/// Subscribes an endpoint and shows its secret on the page this once.
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    CurrentReviewer(me): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    CsrfForm {
        csrf: token,
        fields: body,
    }: CsrfForm<Vec<(String, String)>>,
) -> Result<Response, Error> {
    let url = body
        .iter()
        .find(|(k, _)| k == "url")
        .map_or("", |(_, v)| v.as_str());
    let events = body
        .iter()
        .filter(|(k, _)| k == "event")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let made = match domain::webhooks::parse_types(&events) {
        Ok(types) => domain::webhooks::subscribe(&state.app, &me, url, &types, &me.email, client).await,
        Err(e) => Err(e.into()),
    };
    let notes = match made {
        Ok(made) => AccountNotes {
            message: format!(
                "{} now hears of {}. Copy its signing secret now: it is not shown again.",
                made.subscription.url, made.subscription.event_types
            ),
            new_webhook_secret: made.secret,
            ..AccountNotes::default()
        },
        Err(err @ (domain::Error::Invalid(_) | domain::Error::Conflict(_))) => {
            let notes = AccountNotes {
                webhook_error: err.to_string(),
                ..AccountNotes::default()
            };
            let page = account_page_with(&state, &token, &me, notes).await?;
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response());
        }
        Err(err) => return Err(err.into()),
    };
    let mut page = account_page_with(&state, &token, &me, notes).await?;
    page.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(page)
}

#[derive(Deserialize)]
pub(crate) struct WebhookQuery {
    #[serde(default)]
    id: String,
}

/// A subscription's delivery log, with its buttons.
pub(crate) async fn webhook(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(me): CurrentReviewer,
    session: Session,
    Query(q): Query<WebhookQuery>,
) -> Result<Response, Error> {
    let message = flash::take(&session).await?.message;
    let page = webhook_page(&state, &token, &me, &q.id, message, String::new()).await?;
    Ok((token, page).into_response())
}

async fn webhook_page(
    state: &AppState,
    token: &Csrf,
    me: &Reviewer,
    id: &str,
    message: String,
    new_secret: String,
) -> Result<Response, Error> {
    if id.trim().is_empty() {
        return Err(Error::BadRequest("name a subscription: ?id=…".into()));
    }
    let (sub, messages, attempts) =
        domain::webhooks::deliveries(&state.app, domain::webhooks::By::Reviewer(me), id.trim()).await?;
    let event_of = |id: &str| {
        messages
            .iter()
            .find(|m| m.id == id)
            .map_or_else(String::new, |m| m.event_type.clone())
    };
    let page = pages::WebhookPage {
        header: Header::new(me, token)?,
        message,
        row: webhook_row(&sub),
        new_secret,
        rotating_until: sub
            .previous_until
            .filter(|until| *until > now_ms())
            .map(format_ms)
            .unwrap_or_default(),
        attempts: attempts
            .iter()
            .map(|a| pages::WebhookAttemptRow {
                message_id: format!("{} ({})", a.message_id, event_of(&a.message_id)),
                when: format_ms(a.at),
                status: a.status.map_or_else(|| "no answer".into(), |s| s.to_string()),
                ok: a.status.is_some_and(|s| (200..300).contains(&s)),
                answer: a.answer.chars().take(200).collect(),
                took: format!("{} ms", a.took_ms),
            })
            .collect(),
        messages: messages
            .iter()
            .map(|m| pages::WebhookMessageRow {
                id: m.id.clone(),
                event: m.event_type.clone(),
                created: format_ms(m.created_at),
                attempts: m.attempts,
                delivered: m.delivered_at.map(format_ms).unwrap_or_else(|| "not yet".into()),
            })
            .collect(),
    };
    render(&page)
}

#[derive(Deserialize)]
pub(crate) struct WebhookForm {
    #[serde(default)]
    id: String,
    /// What to do: remove, rotate, enable, resend (`id` is then a message's).
    #[serde(default)]
    action: String,
}

/// Removes, rotates, enables a subscription, or sends a message again.
pub(crate) async fn change_webhook(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(me): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    CsrfForm {
        csrf: token,
        fields: form,
    }: CsrfForm<WebhookForm>,
) -> Result<Response, Error> {
    use domain::webhooks::By;
    let id = form.id.trim();
    if id.is_empty() {
        return Err(Error::BadRequest("choose a subscription".into()));
    }
    let app = &state.app;
    match form.action.as_str() {
        "remove" => {
            domain::webhooks::remove(app, By::Reviewer(&me), id, client).await?;
            flash::redirect(
                &session,
                "/admin/account#webhooks",
                Flash::message("The subscription is removed."),
            )
            .await
        }
        "rotate" => {
            let secret = domain::webhooks::rotate(app, By::Reviewer(&me), id, client).await?;
            let message =
                "A new secret: copy it now, it is not shown again. The old one signs beside it for a day.";
            let mut page = webhook_page(&state, &token, &me, id, message.into(), secret).await?;
            page.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(page)
        }
        "enable" => {
            domain::webhooks::enable(app, By::Reviewer(&me), id, client).await?;
            flash::redirect(
                &session,
                &format!("/admin/account/webhook?id={id}"),
                Flash::message("Enabled: its waiting messages are sent in order."),
            )
            .await
        }
        "resend" => {
            let message = db::webhooks::find_message(app.db.pool(), id)
                .await?
                .ok_or(Error::NotFound)?;
            domain::webhooks::resend(app, By::Reviewer(&me), id, client).await?;
            flash::redirect(
                &session,
                &format!("/admin/account/webhook?id={}", message.subscription_id),
                Flash::message(format!("{id} is sent again.")),
            )
            .await
        }
        _ => Err(Error::BadRequest("remove, rotate, enable or resend".into())),
    }
}

#[derive(Deserialize)]
pub(crate) struct RevokeTokenForm {
    #[serde(default)]
    id: String,
}

/// Revokes one of the reviewer's tokens.
pub(crate) async fn revoke_token(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(me): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    CsrfForm { fields: form, .. }: CsrfForm<RevokeTokenForm>,
) -> Result<Response, Error> {
    if form.id.trim().is_empty() {
        return Err(Error::BadRequest("choose a token to revoke".into()));
    }
    let revoked = tokens::revoke(
        &state.app,
        form.id.trim(),
        tokens::RevokedBy::Reviewer(&me),
        client,
    )
    .await?;
    flash::redirect(
        &session,
        "/admin/account",
        Flash::message(format!("The token {:?} is revoked.", revoked.name)),
    )
    .await
}

pub(crate) async fn account(
    State(state): State<AppState>,
    token: Csrf,
    CurrentReviewer(me): CurrentReviewer,
    session: Session,
) -> Result<Response, Error> {
    let message = flash::take(&session).await?.message;
    let page = account_page(&state, &token, &me, message, String::new()).await?;
    Ok((token, page).into_response())
}

#[derive(Deserialize)]
pub(crate) struct AccountForm {
    #[serde(default)]
    notify: String,
}

pub(crate) async fn save_account(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(me): CurrentReviewer,
    CsrfForm { fields: form, .. }: CsrfForm<AccountForm>,
) -> Result<Response, Error> {
    let notify = form
        .notify
        .trim()
        .parse()
        .map_err(|e: UnknownState| Error::BadRequest(e.to_string()))?;
    accounts::change_reviewer(&state.app, &me.id, ReviewerChange::Notify(notify), &me.email).await?;
    flash::redirect(&session, "/admin/account", Flash::message("Saved.")).await
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    current: String,
    #[serde(default)]
    new: String,
    #[serde(default)]
    again: String,
}

/// Changes the reviewer's own password; every other session of the
/// account ends, this one goes on.
pub(crate) async fn change_password(
    State(state): State<AppState>,
    session: Session,
    CurrentReviewer(me): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    CsrfForm {
        csrf: token,
        fields: form,
    }: CsrfForm<PasswordForm>,
) -> Result<Response, Error> {
    let refused = |message: String| async {
        let page = account_page(&state, &token, &me, String::new(), message).await?;
        Ok::<_, Error>((StatusCode::UNPROCESSABLE_ENTITY, page).into_response())
    };
    if form.new != form.again {
        return refused("The new password and its repetition differ.".into()).await;
    }
    // Checking the current password is a sign-in attempt like any other:
    // counted first, so a stolen session cannot guess it at speed.
    let attempt = state
        .throttle
        .attempt(Some(&me.email), &client.network())
        .map_err(|retry_after| Error::TooManyRequests {
            limit: "signin_attempts",
            what: "Too many wrong passwords were tried",
            retry_after,
        })?;
    let changed = match accounts::change_password(&state.app, &me, &form.current, &form.new, client).await {
        Ok(changed) => {
            attempt.succeeded();
            changed
        }
        // A wrong current password stays counted; a new password that is
        // too short or too long was never a guess, nor was a check the
        // portal had no room for.
        Err(err @ domain::Error::Forbidden { .. }) => return refused(err.to_string()).await,
        Err(domain::Error::Invalid(why)) => {
            attempt.succeeded();
            return refused(why).await;
        }
        Err(err) => {
            if matches!(err, domain::Error::Busy { .. }) {
                attempt.succeeded();
            }
            return Err(err.into());
        }
    };
    session
        .insert(STAMP_KEY, accounts::credential_stamp(&changed))
        .await
        .map_err(session_error)?;
    let done = Flash::message("Your password is changed; every other session of your account has ended.");
    flash::redirect(&session, "/admin/account", done).await
}
