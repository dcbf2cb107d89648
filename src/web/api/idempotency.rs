//! Writes sent with an `Idempotency-Key` header are done once. The first
//! request claims the key (per token) in the database, so that every
//! replica sees it; its answer, when it succeeded, is kept for a day and
//! given again, byte for byte and marked `Idempotent-Replayed: true`, to the
//! same request sent again. The same key with a different request is
//! refused (422), and while the first is still running a second waits its
//! turn (409, try again).
//!
//! Once claimed, the request runs to its end on its own task, so that a
//! client that hangs up cannot stop it between its change and the keeping
//! of its answer. An answer that is a client error (4xx) is not kept: the
//! request changed nothing, so sending it again may do what it asks. A
//! claim left without an answer (the replica stopped, or the portal failed
//! after the change may have been made) is never run again: its outcome is
//! unknown, and the same key is answered 409 saying so until it expires.

use axum::{
    body::{Body, Bytes, to_bytes},
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{AppState, Caller, Error};
use crate::{db, types::now_ms};

pub(crate) const HEADER: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";
/// How long a key and its answer are kept.
pub(crate) const KEPT_MS: i64 = 86_400_000;
/// A claim older than this without an answer belongs to a request that
/// stopped without one.
const ABANDONED_MS: i64 = 10 * 60_000;
/// The largest answer kept. The largest write answer (a bulk decision of
/// 200 applications) takes about 100 KiB.
const MAX_KEPT: usize = 256 * 1024;
/// Keys one token may hold at once (each kept a day): with [`MAX_KEPT`], a
/// bound on what one token can make the database keep.
const MAX_KEYS_PER_TOKEN: i64 = 1_000;

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
    let mut hash = <Hmac<Sha256> as KeyInit>::new_from_slice(&state.idempotency_key)
        .map_err(|e| Error::Internal(anyhow::anyhow!("an idempotency key: {e}")).into_response())?;
    for part in [
        parts.method.as_str().as_bytes(),
        parts.uri.path().as_bytes(),
        parts.uri.query().unwrap_or("").as_bytes(),
        &body,
    ] {
        hash.update(&(part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let request_hash = hex::encode(hash.finalize().into_bytes());
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
        return match (kept.status, kept.body) {
            (Some(status), Some(body)) => Ok(replay(status, body)),
            _ if now - kept.created_at > ABANDONED_MS => Err(Error::Conflict(
                "the first request with this Idempotency-Key stopped without an answer, so whether it was done \
                 is unknown; look at the record, then use a new key"
                    .into(),
            )
            .into_response()),
            _ => Err(in_progress()),
        };
    }
    if db::tokens::keys_held(pool, token_id).await.map_err(internal)? > MAX_KEYS_PER_TOKEN {
        let _ = db::tokens::release_key(pool, token_id, &key).await;
        return Err(Error::TooManyRequests {
            limit: "idempotency_keys_per_token",
            what: "This token holds too many Idempotency-Keys (each is kept a day)",
            retry_after: std::time::Duration::from_secs(3600),
        }
        .into_response());
    }
    let pool = pool.clone();
    let token_id = token_id.to_owned();
    let request = Request::from_parts(parts, Body::from(body));
    // On its own task: a client hanging up cancels this future, not the write.
    let done = tokio::spawn(async move {
        let response = next.run(request).await;
        let (parts, body) = response.into_parts();
        let body = to_bytes(body, MAX_KEPT).await;
        let status = parts.status;
        let kept = match &body {
            Ok(body) if status.is_success() => match std::str::from_utf8(body) {
                Ok(text) => {
                    db::tokens::keep_answer(&pool, &token_id, &key, i64::from(status.as_u16()), text).await
                }
                Err(_) => Ok(()),
            },
            _ if status.is_client_error() => db::tokens::release_key(&pool, &token_id, &key).await,
            // A failure of the portal's own: the change may have been made.
            _ => Ok(()),
        };
        if let Err(e) = kept {
            tracing::warn!(error = %e, "cannot keep the answer to an idempotent request");
        }
        match body {
            Ok(body) => Response::from_parts(parts, Body::from(body)),
            Err(e) => Error::Internal(anyhow::anyhow!("an answer larger than {MAX_KEPT} bytes: {e}"))
                .into_response(),
        }
    });
    done.await
        .map_err(|e| Error::Internal(anyhow::anyhow!("an idempotent request failed: {e}")).into_response())
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
