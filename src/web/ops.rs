//! Endpoints for operators and load balancers: liveness, readiness, metrics,
//! and the request metrics middleware.

use std::time::{Duration, Instant};

use axum::{
    Json,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::AppState;
use crate::{db, telemetry};

/// The process is up.
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

/// How long each readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Below this much free space in the data directory, the portal is not ready:
/// the embedded database, the local store and the outbox all write there.
const MIN_FREE_BYTES: u64 = 1 << 20;

async fn check<T>(what: impl Future<Output = anyhow::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, what).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    }
}

/// The database, the object store and the data directory's disk work; 503
/// names what does not. The outbox is reported too (mail that cannot be sent
/// waits in the database, so it does not make the portal unready).
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let app = &state.app;
    let database = check(async { Ok(app.db.ping().await?) }).await;
    // A lookup of a key that never exists: "absent" proves the store answers.
    let objects = check(async { app.storage.size("readyz/probe").await.map(|_| ()) }).await;
    let data_dir = app.config.data_dir.clone();
    let disk = match tokio::task::spawn_blocking(move || fs4::available_space(&data_dir)).await {
        Ok(Ok(free)) if free >= MIN_FREE_BYTES => Ok(format!("{} MiB free", free >> 20)),
        Ok(Ok(free)) => Err(format!("the data directory is full ({free} bytes free)")),
        Ok(Err(e)) => Err(format!("cannot read the free space of the data directory: {e}")),
        Err(e) => Err(e.to_string()),
    };
    let mail = check(async { Ok(db::outbox::backlog(app.db.pool()).await?) })
        .await
        .map(|b| match (b.unsent, b.last_error) {
            (0, _) => "ok".to_owned(),
            (n, Some(error)) => format!(
                "{n} waiting since {}, last error: {error}",
                crate::types::format_ms(b.oldest.unwrap_or_default())
            ),
            (n, None) => format!("{n} waiting"),
        });
    let ready = database.is_ok() && objects.is_ok() && disk.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let either = |r: Result<String, String>| r.unwrap_or_else(|e| e);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "database": show(&database),
        "object_store": show(&objects),
        "disk": either(disk),
        "mail": either(mail),
    });
    if !ready {
        tracing::warn!(checks = %body, "not ready");
    }
    (status, Json(body)).into_response()
}

/// Prometheus text format.
pub(crate) async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::handle().render(),
    )
        .into_response()
}

/// The method as a metrics label: one of the methods HTTP defines, or
/// `other`. A client may send any token as a method; each distinct label
/// would be a new series kept for the life of the process.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts requests and times them, by route pattern (never by raw path, which
/// carries secrets and would make unbounded labels). Every label comes from a
/// fixed set: the router's route patterns, the methods HTTP defines, and the
/// status codes the portal answers with.
pub(crate) async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("weightgate_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("weightgate_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
