//! Endpoints for operators and load balancers: liveness, readiness, metrics,
//! and the request metrics middleware.

use std::time::Instant;

use axum::{
    Json,
    extract::{MatchedPath, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::AppState;
use crate::telemetry;

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The database and the object store answer; 503 names what does not.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let database = match sqlx::query_scalar::<_, i64>("SELECT 1")
        .fetch_one(state.app.db.pool())
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    // A lookup of a key that never exists: "absent" proves the store answers.
    let objects = match state.app.storage.size("readyz/probe").await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{e:#}")),
    };
    let ready = database.is_ok() && objects.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !ready {
        tracing::warn!(database = %show(&database), object_store = %show(&objects), "not ready");
    }
    (
        status,
        Json(json!({ "ready": ready, "database": show(&database), "object_store": show(&objects) })),
    )
        .into_response()
}

/// Prometheus text format.
pub async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry::handle().render(),
    )
        .into_response()
}

/// Counts requests and times them, by route pattern (never by raw path, which
/// carries secrets and would make unbounded labels).
pub async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("weightgate_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("weightgate_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
