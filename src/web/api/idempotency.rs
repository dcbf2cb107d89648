//! Writes sent with an `Idempotency-Key` header are done once. The first
//! request claims the key (per token) in the database, so that every
//! replica sees it; its answer, when it succeeded, is kept for a day and
//! given again, byte for byte and marked `Idempotent-Replayed: true`, to the
//! same request sent again. The same key with a different request is
//! refused (422), and while the first is still running a second waits its
//! turn (409, try again). An answer that is an error is not kept: the
//! request changed nothing, so sending it again may do what it asks.

use axum::{
    body::{Body, Bytes, to_bytes},
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};

use super::{AppState, Caller, Error};
use crate::{db, types::now_ms};

pub(crate) const HEADER: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";
/// How long a key and its answer are kept.
pub(crate) const KEPT_MS: i64 = 86_400_000;
/// A claim older than this without an answer belongs to a request that
/// stopped (its replica died); a new request may take it over.
const ABANDONED_MS: i64 = 10 * 60_000;
/// The largest answer kept; the API's writes answer in a few kilobytes.
const MAX_KEPT: usize = 1024 * 1024;

/// Runs a write, once per key when it carries one.
pub(crate) async fn run(state: &AppState, request: Request, next: Next) -> Response {
    match once(state, request, next).await {
        Ok(response) | Err(response) => response,
    }
}

async fn once(state: &AppState, request: Request, next: Next) -> Result<Response, Response> {
    let Some(key) = request.headers().get(HEADER) else {
        return Ok(next.run(request).await);
    };
    let key = key
        .to_str()
        .ok()
        .map(str::to_owned)
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            Error::BadRequest("an Idempotency-Key is 1 to 255 visible ASCII characters".into())
                .into_response()
        })?;
    let caller = request.extensions().get::<Caller>().cloned().ok_or_else(|| {
        Error::Internal(anyhow::anyhow!("a write reached idempotency without its caller")).into_response()
    })?;
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, super::super::extract::MAX_BODY)
        .await
        .map_err(|_| {
            Error::PayloadTooLarge {
                limit: super::super::extract::MAX_BODY,
            }
            .into_response()
        })?;
    let mut hash = Sha256::new();
    for part in [
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        parts.uri.query().unwrap_or("").as_bytes(),
        &body,
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let request_hash = hex::encode(hash.finalize());
    let pool = state.app.db.pool();
    let token_id = caller.token.id.as_str();
    let internal = |e: sqlx::Error| Error::from(e).into_response();
    let now = now_ms();
    if !db::tokens::claim_key(pool, token_id, &key, &request_hash, now)
        .await
        .map_err(internal)?
    {
        let kept = db::tokens::kept(pool, token_id, &key).await.map_err(internal)?;
        let Some(kept) = kept else {
            return Err(in_progress());
        };
        if kept.request_hash != request_hash {
            return Err(Error::Unprocessable(
                "this Idempotency-Key was used with a different request; use a new key for a new request"
                    .into(),
            )
            .into_response());
        }
        match (kept.status, kept.body) {
            (Some(status), Some(body)) => return Ok(replay(status, body)),
            _ if now - kept.created_at > ABANDONED_MS => {
                if !db::tokens::take_over_key(pool, token_id, &key, kept.created_at, now)
                    .await
                    .map_err(internal)?
                {
                    return Err(in_progress());
                }
            }
            _ => return Err(in_progress()),
        }
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, MAX_KEPT).await {
        Ok(body) => body,
        Err(e) => {
            let _ = db::tokens::release_key(pool, token_id, &key).await;
            return Err(Error::Internal(anyhow::anyhow!("cannot keep an answer: {e}")).into_response());
        }
    };
    let kept = match (parts.status.is_success(), std::str::from_utf8(&body)) {
        (true, Ok(text)) => {
            db::tokens::keep_answer(pool, token_id, &key, i64::from(parts.status.as_u16()), text).await
        }
        _ => db::tokens::release_key(pool, token_id, &key).await,
    };
    if let Err(e) = kept {
        // The write is done; only its replay is lost. A retry would then
        // find the key claimed without an answer and be told to wait.
        tracing::warn!(error = %e, "cannot keep the answer to an idempotent request");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn in_progress() -> Response {
    let mut response =
        Error::Conflict("a request with this Idempotency-Key is still running; try again shortly".into())
            .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn replay(status: i64, body: String) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, Bytes::from(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
