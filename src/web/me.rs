//! The researcher's own pages: sign-in by e-mailed link, My applications
//! (history, answers to the reviewers' questions, appeals) and My access
//! (fresh links, the client's manifest URL, renewals).

use super::auth::Csrf;
use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use tower_sessions::Session;

use super::{
    AppState, ClientInfo, Error,
    access::{self, PUBLIC_KEY_PATH},
    auth::{CurrentResearcher, RESEARCHER_KEY, csrf_field, session_error, start_session},
    extract::{CsrfForm, Path},
    limited,
    pages::{self, AnswerRow, FolderRows, HistoryRow, ReleaseRows, ResearcherHeader, render},
};
use crate::{
    audit::Client,
    db,
    domain::access_urls,
    domain::applications,
    domain::grants::{self, GrantState},
    domain::renewals,
    domain::researchers::{self, Researcher},
    domain::threads,
    types::{Email, format_ms, now_ms},
};

fn header(researcher: &Researcher, token: &Csrf) -> Result<ResearcherHeader, Error> {
    Ok(ResearcherHeader {
        email: researcher.email.clone(),
        csrf: csrf_field(token)?,
    })
}

pub(crate) async fn signin_page(token: Csrf) -> Result<Response, Error> {
    let page = pages::SigninPage {
        csrf: csrf_field(&token)?,
        email: String::new(),
        error: String::new(),
        notice: String::new(),
    };
    Ok((token, render(&page)?).into_response())
}

#[derive(Deserialize)]
pub(crate) struct SigninForm {
    #[serde(default)]
    email: String,
}

pub(crate) async fn request_link(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    CsrfForm {
        csrf: token,
        fields: form,
    }: CsrfForm<SigninForm>,
) -> Result<Response, Error> {
    limited(&state.limits.signin_per_address, &client.network())?;
    match form.email.parse::<Email>() {
        Ok(email) => {
            // Counted whether or not the address has an account, so that a
            // refusal says nothing about who has one.
            limited(&state.limits.mail_per_recipient, email.as_str())?;
            researchers::request_signin(&state.app, &email, client).await?;
            Ok(Redirect::to("/signin/sent").into_response())
        }
        Err(e) => {
            let page = pages::SigninPage {
                csrf: csrf_field(&token)?,
                email: form.email.chars().take(254).collect(),
                error: e.to_owned(),
                notice: String::new(),
            };
            Ok((StatusCode::UNPROCESSABLE_ENTITY, token, render(&page)?).into_response())
        }
    }
}

/// Where a sign-in request lands (post/redirect/get): the page names no
/// address, so it needs nothing kept between the two requests.
pub(crate) async fn signin_sent() -> Result<Response, Error> {
    render(&pages::SigninSent {
        minutes: researchers::SIGNIN_LINK_TTL_MS / 60_000,
    })
}

/// Shows a button rather than signing in on GET, so that mail scanners that
/// follow links do not use the link up.
pub(crate) async fn link_page(token: Csrf, Path(link): Path<String>) -> Result<Response, Error> {
    let page = pages::SigninLink {
        token: link,
        csrf: csrf_field(&token)?,
    };
    Ok((token, render(&page)?).into_response())
}

pub(crate) async fn use_link(
    State(state): State<AppState>,
    session: Session,
    ClientInfo(client): ClientInfo,
    Path(link): Path<String>,
    CsrfForm { csrf: token, .. }: CsrfForm,
) -> Result<Response, Error> {
    // Counted before the link is looked at, as a password is.
    let attempt = state
        .throttle
        .attempt(None, &client.network())
        .map_err(|retry_after| Error::TooManyRequests {
            limit: "signin_attempts_per_address",
            what: "Too many sign-in attempts were made from your address",
            retry_after,
        })?;
    match researchers::sign_in(&state.app, &link, client).await? {
        Some(researcher) => {
            attempt.succeeded();
            start_session(&session, RESEARCHER_KEY, &researcher.id).await?;
            Ok(Redirect::to("/me").into_response())
        }
        None => {
            drop(attempt);
            let page = pages::SigninPage {
                csrf: csrf_field(&token)?,
                email: String::new(),
                error: String::new(),
                notice: "This sign-in link was already used or has expired. Enter your e-mail address for a new one."
                    .into(),
            };
            Ok((StatusCode::GONE, token, render(&page)?).into_response())
        }
    }
}

pub(crate) async fn signout(session: Session, _: CsrfForm) -> Result<Response, Error> {
    session.flush().await.map_err(session_error)?;
    Ok(Redirect::to("/").into_response())
}

pub(crate) async fn applications(
    State(state): State<AppState>,
    token: Csrf,
    CurrentResearcher(researcher): CurrentResearcher,
) -> Result<Response, Error> {
    let now = now_ms();
    let rows = researchers::my_applications(&state.app, &researcher)
        .await?
        .into_iter()
        .map(|a| pages::MyApplicationRow {
            id: a.view.id.clone(),
            model_slug: a.view.model_slug.clone(),
            model_title: a.view.model_title.clone(),
            status: a.view.status,
            status_label: applications::status_label(a.view.status),
            kind: a.view.kind,
            submitted: format_ms(a.view.created_at),
            terms_version: a.view.terms_version,
            next_step: a.next_step,
            denial_reason: a.denial_reason.unwrap_or_default(),
            reapply_from: a.reapply_from.map(format_ms).unwrap_or_default(),
            reapply_now: a.reapply_from.is_some_and(|t| t <= now),
            can_answer: a.can_answer,
            can_appeal: a.can_appeal,
            history: a
                .history
                .into_iter()
                .map(|h| HistoryRow {
                    when: format_ms(h.at),
                    what: h.what,
                    body: h.body,
                })
                .collect(),
            answers: a.answers.iter().map(AnswerRow::from).collect(),
        })
        .collect();
    let page = pages::MyApplications {
        header: header(&researcher, &token)?,
        applications: rows,
    };
    Ok((token, render(&page)?).into_response())
}

#[derive(Deserialize)]
pub(crate) struct MessageForm {
    #[serde(default)]
    message: String,
}

pub(crate) async fn answer(
    State(state): State<AppState>,
    CurrentResearcher(researcher): CurrentResearcher,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<MessageForm>,
) -> Result<Response, Error> {
    threads::answer(&state.app, &researcher, &id, &form.message, client).await?;
    Ok(Redirect::to(&format!("/me#application-{id}")).into_response())
}

pub(crate) async fn appeal(
    State(state): State<AppState>,
    CurrentResearcher(researcher): CurrentResearcher,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<MessageForm>,
) -> Result<Response, Error> {
    let appeal = researchers::appeal(&state.app, &researcher, &id, &form.message, client).await?;
    Ok(Redirect::to(&format!("/me#application-{appeal}")).into_response())
}

/// My access, signing fresh links for each active grant. The caller has
/// counted the request against the per-address limit; `manifest_for` is a
/// grant whose manifest URL was just made (its per-grant limit counted too).
async fn access_page(
    state: &AppState,
    researcher: &Researcher,
    token: Csrf,
    client: Client,
    manifest_for: Option<(String, String)>,
) -> Result<Response, Error> {
    let mut rows = Vec::new();
    for grant in researchers::my_grants(&state.app, researcher).await? {
        let renewal_pending = db::applications::open_renewal(state.app.db.pool(), &grant.id)
            .await?
            .is_some();
        let access = if GrantState::of(&grant, now_ms()) == GrantState::Active {
            if manifest_for.as_ref().is_none_or(|(id, _)| *id != grant.id) {
                limited(&state.limits.links_per_grant, &grant.id)?;
            }
            Some(grants::access(&state.app, grant.clone(), "my access page", client.clone()).await?)
        } else {
            None
        };
        let manifest_url = match &manifest_for {
            Some((id, url)) if *id == grant.id => url.clone(),
            _ => String::new(),
        };
        let access_urls = access_urls::of_grant(&state.app, &grant)
            .await?
            .into_iter()
            .map(|url| pages::AccessUrlRow::for_researcher(url, &researcher.email))
            .collect();
        rows.push(pages::MyGrantRow {
            state: GrantState::of(&grant, now_ms()),
            expires: format_ms(grant.expires_at),
            revoked_reason: grant.revoked_reason.clone().unwrap_or_default(),
            links_expire: access
                .as_ref()
                .map(|a| format_ms(a.links_expire_at * 1000))
                .unwrap_or_default(),
            releases: access
                .map(|a| {
                    a.releases
                        .into_iter()
                        .map(|r| ReleaseRows {
                            base_url: format!("/me/access/{}/releases/{}", grant.id, r.release.name),
                            name: r.release.name,
                            folders: FolderRows::all(r.files),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            id: grant.id,
            model_slug: grant.model_slug,
            model_title: grant.model_title,
            manifest_url,
            renewal_pending,
            access_urls,
        });
    }
    let page = pages::MyAccess {
        header: header(researcher, &token)?,
        grants: rows,
        public_key_url: state.app.url(PUBLIC_KEY_PATH),
        model_signing_key_url: state.app.url(access::MODEL_SIGNING_KEY_PATH),
    };
    let mut response = (token, render(&page)?).into_response();
    // The page holds signed links (and perhaps a manifest URL): never cache it.
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

pub(crate) async fn access(
    State(state): State<AppState>,
    token: Csrf,
    CurrentResearcher(researcher): CurrentResearcher,
    ClientInfo(client): ClientInfo,
) -> Result<Response, Error> {
    limited(&state.limits.links_per_address, &client.network())?;
    access_page(&state, &researcher, token, client, None).await
}

#[derive(Deserialize)]
pub(crate) struct NewUrlForm {
    #[serde(default)]
    name: String,
}

/// Makes a new access URL (named, if the researcher likes) and shows it once.
///
/// The one form that answers its POST with a page rather than a redirect:
/// the URL's secret exists only in this response (the portal keeps its
/// hash), and keeping it in the session for a following GET would write it
/// to the database. A reload asks the browser to send the form again, and
/// sending it makes a second URL, counted against the same limits.
pub(crate) async fn client_url(
    State(state): State<AppState>,
    CurrentResearcher(researcher): CurrentResearcher,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm {
        csrf: token,
        fields: form,
    }: CsrfForm<NewUrlForm>,
) -> Result<Response, Error> {
    // The researcher's own grant, then counted before anything is made: a
    // refused request mints no URL, and nobody spends another's allowance.
    let grant = researchers::my_grant(&state.app, &researcher, &id).await?;
    limited(&state.limits.links_per_address, &client.network())?;
    limited(&state.limits.links_per_grant, &grant.id)?;
    let url = access_urls::create(&state.app, &researcher, &grant, &form.name, client.clone()).await?;
    access_page(&state, &researcher, token, client, Some((id, url))).await
}

/// `SHA256SUMS`, `manifest.json` and their signatures for a release of the
/// researcher's grant, from My access.
pub(crate) async fn release_file(
    State(state): State<AppState>,
    CurrentResearcher(researcher): CurrentResearcher,
    Path((id, release, name)): Path<(String, String, String)>,
) -> Result<Response, Error> {
    let grant = researchers::my_grant(&state.app, &researcher, &id).await?;
    super::access::signed_release_file(&state, &grant, &release, &name).await
}

/// Withdraws one access URL of the researcher's grant.
pub(crate) async fn withdraw_url(
    State(state): State<AppState>,
    CurrentResearcher(researcher): CurrentResearcher,
    ClientInfo(client): ClientInfo,
    Path((id, url)): Path<(String, String)>,
    _form: CsrfForm,
) -> Result<Response, Error> {
    let grant = researchers::my_grant(&state.app, &researcher, &id).await?;
    access_urls::withdraw_own(&state.app, &researcher, &grant, &url, client).await?;
    Ok(Redirect::to(&format!("/me/access#grant-{id}")).into_response())
}

#[derive(Deserialize)]
pub(crate) struct RenewForm {
    #[serde(default)]
    note: String,
}

pub(crate) async fn renew(
    State(state): State<AppState>,
    CurrentResearcher(researcher): CurrentResearcher,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    CsrfForm { fields: form, .. }: CsrfForm<RenewForm>,
) -> Result<Response, Error> {
    let renewal = renewals::request(&state.app, &researcher, &id, &form.note, client).await?;
    Ok(Redirect::to(&format!("/me#application-{renewal}")).into_response())
}
