//! The reviewers' dashboard: sign-in, the queue, decisions and grants.

use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use axum_csrf::CsrfToken;
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    AppState, ClientInfo, Error,
    auth::{CsrfForm, CurrentReviewer, REVIEWER_KEY, check_csrf, csrf_field},
    pages::{self, ApplicationRow, GrantRow, Header, render},
};
use crate::{
    accounts, db,
    grants::{self, GrantState},
    questions, reviews, threads,
    types::{format_ms, now_ms},
};

fn header(reviewer: &db::reviewers::Reviewer, token: &CsrfToken) -> Result<Header, Error> {
    Ok(Header {
        email: reviewer.email.clone(),
        csrf: csrf_field(token)?,
    })
}

fn session_error(e: tower_sessions::session::Error) -> Error {
    Error::Internal(e.into())
}

pub async fn login_page(token: CsrfToken) -> Result<Response, Error> {
    let page = pages::Login {
        csrf: csrf_field(&token)?,
        email: String::new(),
        error: String::new(),
    };
    Ok((token, render(&page)?).into_response())
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    authenticity_token: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

pub async fn login(
    State(state): State<AppState>,
    token: CsrfToken,
    session: Session,
    ClientInfo(client): ClientInfo,
    Form(form): Form<LoginForm>,
) -> Result<Response, Error> {
    check_csrf(&token, &form.authenticity_token)?;
    match accounts::authenticate(&state.app, &form.email, &form.password, client).await? {
        Some(reviewer) => {
            // A new session id at sign-in, so a planted cookie cannot ride along.
            session.cycle_id().await.map_err(session_error)?;
            session
                .insert(REVIEWER_KEY, &reviewer.id)
                .await
                .map_err(session_error)?;
            Ok(Redirect::to("/admin").into_response())
        }
        None => {
            let page = pages::Login {
                csrf: csrf_field(&token)?,
                email: form.email.chars().take(254).collect(),
                error: "The e-mail or the password is wrong.".into(),
            };
            Ok((StatusCode::UNAUTHORIZED, token, render(&page)?).into_response())
        }
    }
}

pub async fn logout(
    token: CsrfToken,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Error> {
    check_csrf(&token, &form.authenticity_token)?;
    session.flush().await.map_err(session_error)?;
    Ok(Redirect::to("/admin/login").into_response())
}

pub async fn queue(
    State(state): State<AppState>,
    token: CsrfToken,
    CurrentReviewer(reviewer): CurrentReviewer,
) -> Result<Response, Error> {
    let pool = state.app.db.pool();
    let pending = db::applications::list_pending(pool).await?;
    let decided = db::applications::list_decided(pool, 50).await?;
    let page = pages::Queue {
        header: header(&reviewer, &token)?,
        pending: pending.iter().map(ApplicationRow::from).collect(),
        decided: decided.iter().map(ApplicationRow::from).collect(),
    };
    Ok((token, render(&page)?).into_response())
}

pub async fn application(
    State(state): State<AppState>,
    token: CsrfToken,
    CurrentReviewer(reviewer): CurrentReviewer,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let pool = state.app.db.pool();
    let view = db::applications::find_view(pool, &id)
        .await?
        .ok_or(Error::NotFound)?;
    let reviews = db::applications::reviews_of(pool, &id).await?;
    let page = pages::ApplicationPage {
        header: header(&reviewer, &token)?,
        app: ApplicationRow::from(&view),
        intended_use: view.intended_use.clone(),
        terms_version: view.terms_version,
        submitted: format_ms(view.created_at),
        confirmed: view
            .confirmed_at
            .map(format_ms)
            .unwrap_or_else(|| "not yet".into()),
        pending: view.status == "pending",
        reviews: reviews
            .into_iter()
            .map(|r| pages::ReviewRow {
                reviewer: r.reviewer_email,
                decision: r.decision,
                reason: r.reason.unwrap_or_default(),
                when: format_ms(r.created_at),
            })
            .collect(),
        default_days: state.app.config.grant_ttl.as_secs() / 86_400,
        kind: view.kind.clone(),
        parent_id: view.parent_id.clone().unwrap_or_default(),
        grant_id: view.grant_id.clone().unwrap_or_default(),
        answers: questions::stored_answers(&view.answers)
            .iter()
            .map(pages::AnswerRow::from)
            .collect(),
        messages: db::applications::messages_of(pool, &id)
            .await?
            .into_iter()
            .map(|m| pages::MessageRow {
                who: if m.author_kind == "reviewer" {
                    format!("{} (reviewer) asked", m.author_email)
                } else {
                    format!("{} (applicant) wrote", m.author_email)
                },
                when: format_ms(m.created_at),
                body: m.body,
            })
            .collect(),
        can_ask: matches!(view.status.as_str(), "pending" | "info_requested"),
    };
    Ok((token, render(&page)?).into_response())
}

#[derive(Deserialize)]
pub struct AskForm {
    #[serde(default)]
    authenticity_token: String,
    #[serde(default)]
    message: String,
}

/// Asks the applicant for more information.
pub async fn ask(
    State(state): State<AppState>,
    token: CsrfToken,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Form(form): Form<AskForm>,
) -> Result<Response, Error> {
    check_csrf(&token, &form.authenticity_token)?;
    threads::ask(&state.app, &reviewer, &id, &form.message, client).await?;
    Ok(Redirect::to(&format!("/admin/applications/{id}")).into_response())
}

#[derive(Deserialize)]
pub struct ApproveForm {
    #[serde(default)]
    authenticity_token: String,
    #[serde(default)]
    days: String,
}

pub async fn approve(
    State(state): State<AppState>,
    token: CsrfToken,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Form(form): Form<ApproveForm>,
) -> Result<Response, Error> {
    check_csrf(&token, &form.authenticity_token)?;
    let days = match form.days.trim() {
        "" => None,
        d => Some(
            d.parse::<u64>()
                .map_err(|_| Error::BadRequest("the grant duration must be a whole number of days".into()))?,
        ),
    };
    reviews::approve(&state.app, &reviewer, &id, days, client).await?;
    Ok(Redirect::to(&format!("/admin/applications/{id}")).into_response())
}

#[derive(Deserialize)]
pub struct ReasonForm {
    #[serde(default)]
    authenticity_token: String,
    #[serde(default)]
    reason: String,
}

pub async fn deny(
    State(state): State<AppState>,
    token: CsrfToken,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Result<Response, Error> {
    check_csrf(&token, &form.authenticity_token)?;
    reviews::deny(&state.app, &reviewer, &id, &form.reason, client).await?;
    Ok(Redirect::to(&format!("/admin/applications/{id}")).into_response())
}

pub async fn grants(
    State(state): State<AppState>,
    token: CsrfToken,
    CurrentReviewer(reviewer): CurrentReviewer,
) -> Result<Response, Error> {
    let now = now_ms();
    let rows = db::grants::list(state.app.db.pool())
        .await?
        .into_iter()
        .map(|g| GrantRow {
            state: GrantState::of(&g, now).as_str().to_owned(),
            id: g.id,
            email: g.email,
            model: g.model_slug,
            created: format_ms(g.created_at),
            expires: format_ms(g.expires_at),
            revoked_reason: g.revoked_reason.unwrap_or_default(),
        })
        .collect();
    let page = pages::Grants {
        header: header(&reviewer, &token)?,
        grants: rows,
    };
    Ok((token, render(&page)?).into_response())
}

pub async fn revoke(
    State(state): State<AppState>,
    token: CsrfToken,
    CurrentReviewer(reviewer): CurrentReviewer,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Form(form): Form<ReasonForm>,
) -> Result<Response, Error> {
    check_csrf(&token, &form.authenticity_token)?;
    grants::revoke(&state.app, &id, &form.reason, &reviewer.email, client).await?;
    Ok(Redirect::to("/admin/grants").into_response())
}
