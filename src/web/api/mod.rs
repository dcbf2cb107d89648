//! The JSON API under `/api/v1`: what the dashboard does, for programs.
//!
//! Every route is guarded by [`guard`], which the route table puts in front
//! of it with the scope the table names: the request must carry a token
//! (`Authorization: Bearer wgt_…`) that is accepted, holds that scope, and
//! is within its rate limit; each use is audited with the token's name. The
//! API takes no cookies, so a browser's session cannot be ridden into it
//! and it needs no CSRF token. Writes may carry an `Idempotency-Key`
//! ([`idempotency`]). Handlers then ask [`crate::domain::authz`] about each
//! record, as the dashboard's do.

pub(crate) mod applications;
pub(crate) mod audit;
pub(crate) mod doc;
pub(crate) mod grants;
mod idempotency;
pub(crate) mod models;
pub(crate) mod own_tokens;
pub(crate) mod reviewers;
pub(crate) mod webhooks;

pub(crate) use idempotency::KEPT_MS as IDEMPOTENCY_KEPT_MS;

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, State},
    http::{HeaderMap, Method, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use super::{AppState, ClientInfo, Error, limited};
use crate::{
    db::reviewers::Reviewer,
    domain::{
        authz,
        tokens::{self, Scope, Token},
    },
    types::format_ms_rfc3339,
};

/// The reviewer a request acts as, and the token it came with.
#[derive(Clone)]
pub(crate) struct Caller {
    pub(crate) reviewer: Reviewer,
    pub(crate) token: Token,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Error> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("an API route was reached without its guard")))
    }
}

/// The secret of `Authorization: Bearer SECRET`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (kind, secret) = value.trim().split_once(' ')?;
    kind.eq_ignore_ascii_case("bearer").then(|| secret.trim())
}

const NO_TOKEN: &str = "this API needs a token: send `Authorization: Bearer wgt_…` (make one on your account page \
     or with `weightgate token create`)";
const NOT_ACCEPTED: &str = "this token is not accepted: it is unknown, revoked or expired, or its owner's account \
     is disabled";

/// What [`guard`] knows of the route it guards.
#[derive(Clone)]
pub(crate) struct Guarded {
    pub(crate) state: AppState,
    /// The scope the route table names.
    pub(crate) scope: Scope,
    /// The route as the table writes it (`/api/v1/grants/{id}`): what the
    /// audit log names, so that a request's own path cannot add text to it.
    pub(crate) route: &'static str,
}

/// Lets a request through to an API route that needs `scope`, or answers it.
pub(crate) async fn guard(
    State(Guarded { state, scope, route }): State<Guarded>,
    request: Request,
    next: Next,
) -> Response {
    match admit(&state, scope, route, request).await {
        Ok(request) if request.method() == Method::POST => idempotency::run(&state, request, next).await,
        Ok(request) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

async fn admit(state: &AppState, scope: Scope, route: &str, request: Request) -> Result<Request, Error> {
    let (mut parts, body) = request.into_parts();
    let ClientInfo(client) = ClientInfo::of(&parts, &state.app.config);
    let what = format!("{} {route}", parts.method);
    let secret = bearer(&parts.headers).ok_or_else(|| Error::Unauthorized(NO_TOKEN.into()))?;
    let network = client.network();
    if let Some(retry_after) = state.limits.bad_tokens_per_address.refusing(&network) {
        return Err(Error::TooManyRequests {
            limit: state.limits.bad_tokens_per_address.name,
            what: state.limits.bad_tokens_per_address.what,
            retry_after,
        });
    }
    let (token, reviewer) = match tokens::accept(&state.app, secret).await? {
        Ok(accepted) => accepted,
        Err(why) => {
            tokens::record_unaccepted(&state.app, why, &what, client).await?;
            limited(&state.limits.bad_tokens_per_address, &network)?;
            return Err(Error::Unauthorized(NOT_ACCEPTED.into()));
        }
    };
    limited(&state.limits.api_per_token, &token.id)?;
    if let Err(denied) = authz::token_may(&reviewer, token.scopes.as_slice(), scope) {
        tokens::record_use(&state.app, &token, &reviewer, &what, Some(denied.code()), client).await?;
        return Err(crate::domain::Error::from(denied).into());
    }
    tokens::record_use(&state.app, &token, &reviewer, &what, None, client).await?;
    parts.extensions.insert(Caller { reviewer, token });
    Ok(Request::from_parts(parts, body))
}

/// A JSON request body, checked as forms are: its type, its size, and no
/// NUL character anywhere in it.
pub(crate) struct Body<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Error::UnsupportedMediaType(
                "send the request body as application/json".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| Error::PayloadTooLarge {
                limit: super::extract::MAX_BODY,
            })?;
        if bytes.contains(&0) || bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
            return Err(Error::BadRequest(
                "the request contains a NUL character, which no field accepts".into(),
            ));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| Error::BadRequest(format!("the request body is not what this route takes: {e}")))
    }
}

/// A time as the API writes it: RFC 3339, UTC.
pub(crate) fn time(ms: i64) -> String {
    format_ms_rfc3339(ms)
}

pub(crate) fn maybe_time(ms: Option<i64>) -> Option<String> {
    ms.map(format_ms_rfc3339)
}

/// A filter's text as sent: trimmed, at most 200 characters; blank is none.
pub(crate) fn given(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().chars().take(200).collect::<String>())
        .filter(|t| !t.is_empty())
}

/// The most rows one page of a list returns, and the default.
pub(crate) const MAX_LIMIT: i64 = 500;
pub(crate) const DEFAULT_LIMIT: i64 = 50;

/// A page size as asked, checked.
pub(crate) fn page_limit(limit: Option<i64>) -> Result<i64, Error> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(Error::BadRequest(format!("limit is 1 to {MAX_LIMIT}"))),
    }
}

pub(crate) fn page_offset(offset: Option<i64>) -> Result<i64, Error> {
    match offset {
        None => Ok(0),
        Some(n) if (0..=10_000_000).contains(&n) => Ok(n),
        Some(_) => Err(Error::BadRequest("offset is 0 or more".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_is_read_from_its_header_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer wgt_abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("wgt_abc"));
        headers.insert(header::AUTHORIZATION, "bearer   wgt_abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("wgt_abc"));
        headers.insert(header::AUTHORIZATION, "Basic d2d0Og==".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
