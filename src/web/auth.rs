//! Reviewer sessions (tower-sessions over the database) and the extractors
//! that guard the dashboard.

use std::time::Duration;

use axum::{
    extract::FromRequestParts,
    http::request::Parts,
    response::{IntoResponse, Redirect, Response},
};
use axum_csrf::CsrfToken;
use tower_sessions::{
    Session,
    session::{Id, Record},
    session_store::{self, SessionStore},
};

use super::{AppState, Error};
use crate::{
    db::{self, Db, reviewers::Reviewer},
    domain::researchers::{self, Researcher},
    types::now_ms,
};

/// Sessions in the `sessions` table, so that every replica sees them.
/// Every request with a session saves it again (the session layer's
/// `always_save`), which moves its expiry: a session ends after
/// `WEIGHTGATE_SESSION_IDLE` without a request, not that long after sign-in.
#[derive(Clone, Debug)]
pub(crate) struct DbSessionStore {
    db: Db,
    idle: time::Duration,
}

impl DbSessionStore {
    pub(crate) fn new(db: Db, idle: Duration) -> Self {
        Self {
            db,
            idle: time::Duration::try_from(idle).unwrap_or(time::Duration::hours(8)),
        }
    }
}

fn backend(e: impl std::fmt::Display) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

fn encode(record: &Record) -> session_store::Result<(String, String, i64)> {
    let data =
        serde_json::to_string(&record.data).map_err(|e| session_store::Error::Encode(e.to_string()))?;
    let expires = i64::try_from(record.expiry_date.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    Ok((record.id.to_string(), data, expires))
}

#[async_trait::async_trait]
impl SessionStore for DbSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        loop {
            let (id, data, expires) = encode(record)?;
            if db::sessions::create(self.db.pool(), &id, &data, expires)
                .await
                .map_err(backend)?
            {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let (id, data, expires) = encode(record)?;
        db::sessions::save(self.db.pool(), &id, &data, expires)
            .await
            .map_err(backend)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let Some(data) = db::sessions::load(self.db.pool(), &id.to_string(), now_ms())
            .await
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let data = serde_json::from_str(&data).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        let expiry_date = time::OffsetDateTime::now_utc() + self.idle;
        Ok(Some(Record {
            id: *id,
            data,
            expiry_date,
        }))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        db::sessions::delete(self.db.pool(), &id.to_string())
            .await
            .map_err(backend)
    }
}

/// Deletes expired sessions now and then.
pub(crate) async fn expire_sessions(db: Db, every: Duration) {
    loop {
        if let Err(e) = db::sessions::delete_expired(db.pool(), now_ms()).await {
            tracing::warn!(error = %e, "cannot delete expired sessions");
        }
        if let Err(e) = db::researchers::delete_expired_signin_tokens(db.pool(), now_ms() - 86_400_000).await
        {
            tracing::warn!(error = %e, "cannot delete expired sign-in links");
        }
        if let Err(e) =
            db::tokens::forget_answers_before(db.pool(), now_ms() - super::api::IDEMPOTENCY_KEPT_MS).await
        {
            tracing::warn!(error = %e, "cannot forget old answers to idempotent requests");
        }
        tokio::time::sleep(every).await;
    }
}

pub(crate) const REVIEWER_KEY: &str = "reviewer_id";
/// The [`credential_stamp`](crate::domain::accounts::credential_stamp) a reviewer's
/// session signed in with.
pub(crate) const STAMP_KEY: &str = "credential_stamp";

/// The signed-in reviewer; anyone else is sent to the sign-in page. A
/// session is honoured only while its account is enabled and its password
/// is the one it signed in with.
pub(crate) struct CurrentReviewer(pub(crate) Reviewer);

impl FromRequestParts<AppState> for CurrentReviewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let read = |key: &'static str| {
            let session = session.clone();
            async move {
                session
                    .get::<String>(key)
                    .await
                    .map_err(|e| Error::Internal(e.into()).into_response())
            }
        };
        let (id, stamp) = (read(REVIEWER_KEY).await?, read(STAMP_KEY).await?);
        let reviewer = match id {
            Some(id) => db::reviewers::find(state.app.db.pool(), &id)
                .await
                .map_err(|e| Error::from(e).into_response())?,
            None => None,
        };
        reviewer
            .filter(|r| r.disabled_at.is_none())
            .filter(|r| stamp.as_deref() == Some(crate::domain::accounts::credential_stamp(r).as_str()))
            .map(CurrentReviewer)
            .ok_or_else(|| Redirect::to("/admin/login").into_response())
    }
}

pub(crate) const RESEARCHER_KEY: &str = "researcher_id";

async fn session_researcher(parts: &mut Parts, state: &AppState) -> Result<Option<Researcher>, Response> {
    let session = Session::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    let id: Option<String> = session
        .get(RESEARCHER_KEY)
        .await
        .map_err(|e| Error::Internal(e.into()).into_response())?;
    match id {
        Some(id) => researchers::find(&state.app, &id)
            .await
            .map_err(|e| Error::from(e).into_response()),
        None => Ok(None),
    }
}

/// The signed-in researcher; anyone else is sent to the sign-in page.
pub(crate) struct CurrentResearcher(pub(crate) Researcher);

impl FromRequestParts<AppState> for CurrentResearcher {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        session_researcher(parts, state)
            .await?
            .map(CurrentResearcher)
            .ok_or_else(|| Redirect::to("/signin").into_response())
    }
}

/// The signed-in researcher, if any.
pub(crate) struct MaybeResearcher(pub(crate) Option<Researcher>);

impl FromRequestParts<AppState> for MaybeResearcher {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(MaybeResearcher(session_researcher(parts, state).await?))
    }
}

/// Where a signed-in session keeps its CSRF secret.
const CSRF_KEY: &str = "csrf";

/// The CSRF protection of a page's forms.
///
/// A signed-in session has a secret of its own, made at sign-in: its forms
/// carry it, and a post is taken only when it sends that secret back (a
/// synchronizer token, bound to the session). Someone who can plant cookies
/// in the victim's browser learns nothing that passes for it. Pages without
/// a session (sign-in, the application form) have nothing to bind to and use
/// axum_csrf's signed double-submit cookie.
pub(crate) struct Csrf {
    cookie: CsrfToken,
    session: Option<String>,
}

impl<S> FromRequestParts<S> for Csrf
where
    S: Send + Sync,
    axum_csrf::CsrfConfig: axum::extract::FromRef<S>,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let cookie = CsrfToken::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = match parts.extensions.get::<Session>() {
            Some(session) => session
                .get::<String>(CSRF_KEY)
                .await
                .map_err(|e| Error::Internal(e.into()).into_response())?,
            None => None,
        };
        Ok(Self { cookie, session })
    }
}

impl axum::response::IntoResponseParts for Csrf {
    type Error = std::convert::Infallible;

    fn into_response_parts(
        self,
        res: axum::response::ResponseParts,
    ) -> Result<axum::response::ResponseParts, Self::Error> {
        axum::response::IntoResponseParts::into_response_parts(self.cookie, res)
    }
}

/// Checks a form's CSRF token: the session's secret when signed in, the
/// double-submit cookie otherwise.
pub(crate) fn check_csrf(token: &Csrf, submitted: &str) -> Result<(), Error> {
    let held = match &token.session {
        Some(secret) => bool::from(subtle::ConstantTimeEq::ct_eq(
            secret.as_bytes(),
            submitted.as_bytes(),
        )),
        None => token.cookie.verify(submitted).is_ok(),
    };
    if held { Ok(()) } else { Err(Error::Csrf) }
}

/// The CSRF token to put in a form.
pub(crate) fn csrf_field(token: &Csrf) -> Result<String, Error> {
    match &token.session {
        Some(secret) => Ok(secret.clone()),
        None => token
            .cookie
            .authenticity_token()
            .map_err(|e| Error::Internal(anyhow::anyhow!("cannot make a CSRF token: {e:?}"))),
    }
}

/// Starts a signed-in session for `key = id`: a new session id, so a
/// planted cookie cannot ride along, and a new CSRF secret, so no token made
/// before sign-in works after it. Returns the CSRF secret.
pub(crate) async fn start_session(session: &Session, key: &str, id: &str) -> Result<String, Error> {
    let csrf = crate::types::new_token();
    session.cycle_id().await.map_err(session_error)?;
    session.insert(key, id).await.map_err(session_error)?;
    session.insert(CSRF_KEY, &csrf).await.map_err(session_error)?;
    Ok(csrf)
}

pub(crate) fn session_error(e: tower_sessions::session::Error) -> Error {
    Error::Internal(e.into())
}
