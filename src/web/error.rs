//! One error type for every handler. Client errors carry a stable code and a
//! message; anything unexpected is logged and shown as an opaque 500. The
//! body is JSON for programs and a page for browsers, with the request id.

use askama::Template;
use axum::{
    Json,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{Html, IntoResponse, Response},
};
use serde::Serialize;

use crate::{domain, domain::grants::DownloadError};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    BadRequest(String),
    /// An API request without a token the portal accepts.
    #[error("{0}")]
    Unauthorized(String),
    /// An `Idempotency-Key` sent again with a different request.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("this form has expired or was not sent by this portal; reload the page and try again")]
    Csrf,
    #[error("{0}")]
    Conflict(String),
    #[error("the requested range is outside the file")]
    RangeNotSatisfiable { size: u64 },
    /// A service the portal needs (database, object store, disk) failed;
    /// nothing was changed, and trying again later works.
    #[error("{message}")]
    Unavailable { what: &'static str, message: String },
    #[error("the request is larger than the {} this portal accepts; shorten what you entered", bytesize::ByteSize::b(*.limit as u64))]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A rate limit of [`crate::web::limits`]: `what` says which, in words.
    #[error("{what}. Please wait {} seconds and try again.", .retry_after.as_secs().max(1))]
    TooManyRequests {
        limit: &'static str,
        what: &'static str,
        retry_after: std::time::Duration,
    },
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl Error {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Forbidden { .. } | Error::Csrf => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Error::NotFound => "not_found",
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Unprocessable(_) => "idempotency_key_reused",
            Error::Forbidden { code, .. } => code,
            Error::Csrf => "csrf",
            Error::Conflict(_) => "conflict",
            Error::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Error::Unavailable { .. } => "unavailable",
            Error::PayloadTooLarge { .. } => "payload_too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::TooManyRequests { .. } => "rate_limited",
            Error::Internal(_) => "internal",
        }
    }
}

/// The one mapping from the domain's answer to HTTP: each case of
/// [`domain::Error`] has its status, and a new case will not compile until it
/// is given one here.
impl From<domain::Error> for Error {
    fn from(err: domain::Error) -> Self {
        match err {
            domain::Error::NotFound(_) => Error::NotFound,
            domain::Error::Conflict(message) => Error::Conflict(message),
            domain::Error::Invalid(message) => Error::BadRequest(message),
            domain::Error::Forbidden { code, message } => Error::Forbidden { code, message },
            domain::Error::Busy {
                limit,
                what,
                retry_after,
            } => Error::TooManyRequests {
                limit,
                what,
                retry_after,
            },
            domain::Error::Unavailable { what, message } => {
                tracing::warn!(error = %message, what, "a service the portal needs is unavailable");
                Error::Unavailable { what, message }
            }
            domain::Error::Internal(err) => Error::Internal(err),
        }
    }
}

/// A failure outside the domain (a query run by a handler, a template),
/// sorted as the domain sorts them.
impl From<anyhow::Error> for Error {
    fn from(err: anyhow::Error) -> Self {
        Error::from(domain::Error::from(err))
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::from(domain::Error::from(err))
    }
}

impl From<askama::Error> for Error {
    fn from(err: askama::Error) -> Self {
        Error::Internal(err.into())
    }
}

impl From<DownloadError> for Error {
    fn from(err: DownloadError) -> Self {
        match err {
            DownloadError::Refused(r) | DownloadError::ByLink(r) => Error::Forbidden {
                code: r.code(),
                message: r.message().to_owned(),
            },
            DownloadError::RangeNotSatisfiable { size } => Error::RangeNotSatisfiable { size },
            DownloadError::Internal(e) => Error::from(e),
        }
    }
}

/// Left on an error response for [`render_errors`] to turn into a body.
#[derive(Clone, Debug)]
struct ErrorInfo {
    code: &'static str,
    message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Error::Internal(err) => {
                tracing::error!(error = %format!("{err:#}"), "request failed");
                "Something went wrong on our side. Please try again; if it persists, quote the request id."
                    .to_owned()
            }
            other => other.to_string(),
        };
        let mut response = status.into_response();
        if let Error::RangeNotSatisfiable { size } = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        if let Error::Unauthorized(_) = self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"weightgate\""),
            );
        }
        if let Error::Unavailable { what, .. } = self {
            metrics::counter!("weightgate_unavailable_total", "what" => what).increment(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        }
        if let Error::TooManyRequests {
            limit, retry_after, ..
        } = self
        {
            // Whole seconds, rounded up: a client that waits this long gets in.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            metrics::counter!("weightgate_rate_limited_total", "limit" => limit).increment(1);
        }
        response.extensions_mut().insert(ErrorInfo {
            code: self.code(),
            message,
        });
        response
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    request_id: &'a str,
}

#[derive(Template)]
#[template(path = "public/error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    status: u16,
    message: &'a str,
    request_id: &'a str,
}

/// Gives every error response its body: a page when the client asked for
/// HTML, JSON otherwise, and always JSON from the API.
pub(crate) async fn render_errors(request: Request, next: Next) -> Response {
    let wants_html = !request.uri().path().starts_with("/api/")
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let response = next.run(request).await;
    let Some(info) = response.extensions().get::<ErrorInfo>().cloned() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = if wants_html {
        let page = ErrorPage {
            title: parts.status.canonical_reason().unwrap_or("Error"),
            status: parts.status.as_u16(),
            message: &info.message,
            request_id: &request_id,
        };
        match page.render() {
            Ok(html) => Html(html).into_response(),
            Err(_) => info.message.clone().into_response(),
        }
    } else {
        Json(ErrorBody {
            error: info.code,
            message: &info.message,
            request_id: &request_id,
        })
        .into_response()
    };
    let (body_parts, body) = body.into_parts();
    parts.headers.insert(
        header::CONTENT_TYPE,
        body_parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(HeaderValue::from_static("text/plain")),
    );
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_client_statuses() {
        use crate::domain::{grants::GrantError, models::ModelError, reviews::ReviewError};
        let cases: Vec<(domain::Error, StatusCode)> = vec![
            (ReviewError::NotFound.into(), StatusCode::NOT_FOUND),
            (
                ReviewError::NotPending("approved".into()).into(),
                StatusCode::CONFLICT,
            ),
            (ReviewError::ReasonRequired.into(), StatusCode::BAD_REQUEST),
            (GrantError::AlreadyRevoked.into(), StatusCode::CONFLICT),
            (ModelError::NotFound("x".into()).into(), StatusCode::NOT_FOUND),
            (
                crate::domain::authz::Denied::NotAssigned.into(),
                StatusCode::FORBIDDEN,
            ),
            (sqlx::Error::PoolTimedOut.into(), StatusCode::SERVICE_UNAVAILABLE),
            (
                anyhow::anyhow!("disk on fire").into(),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (err, status) in cases {
            assert_eq!(Error::from(err).status(), status);
        }
    }

    #[test]
    fn limits_answer_429_with_the_seconds_to_wait() {
        let err = Error::TooManyRequests {
            limit: "applications_per_address",
            what: "Too many applications from your address",
            retry_after: std::time::Duration::from_millis(2_500),
        };
        assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.code(), "rate_limited");
        let response = err.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let too_large = Error::PayloadTooLarge { limit: 64 * 1024 };
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(too_large.to_string().contains("64.0 KiB"), "{too_large}");
    }

    #[test]
    fn refused_links_are_forbidden_with_their_reason() {
        let err = Error::from(DownloadError::Refused(crate::crypto::links::Refusal::Expired));
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(err.code(), "link_expired");
    }
}
