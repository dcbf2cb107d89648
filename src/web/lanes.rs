//! Two lanes for requests, so that the pages people wait on are not queued
//! behind a flood of requests that cost little each.
//!
//! The front lane (the runtime `serve` runs on) accepts connections, reads
//! every request and writes every answer, and handles downloads (valid ones
//! stream from the store; refused ones are answered from the link alone),
//! the style sheet and the health endpoints. Everything else — the pages,
//! forms and dashboard, which read and write the database — runs its
//! handler on a runtime of its own, the pages lane.
//!
//! Why: a page makes several database queries in turn, and holds a pooled
//! connection across each. When one runtime serves everything, every answer
//! from the database puts the page back at the end of a run queue that
//! thousands of cheap requests (forged links, rate-limited forms, 4 KiB
//! ranges) keep full, so each connection is held for a whole turn of that
//! queue: under a mixed load of 2,000 clients the pool ran dry and pages
//! waited 10 s for a connection and failed with 503 while refusals were
//! answered in 40 ms. In the pages lane a page waits only behind other
//! pages, and the operating system shares the cores between the lanes'
//! threads, so a flood in the front lane cannot take the pages' share.
//!
//! Forms anyone may post (applications, sign-in links) are limited per
//! client address; a client the limit already refuses is answered in front,
//! without a turn in the pages lane.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::runtime::{Handle, Runtime};
use tracing::Instrument;

use super::{
    AppState, ClientInfo, Error,
    limits::{Limit, RateLimits},
};
use crate::app::App;

/// Which lane a request's handler runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Downloads, the style sheet, the public keys, health and metrics, and
    /// paths no route answers: on the runtime that serves the connections.
    Front,
    /// Pages, forms, the dashboard and the access URLs of the download
    /// client: everything that reads or writes the database on a person's
    /// behalf.
    Pages,
}

impl Lane {
    /// The lane of a request the router matched to `route` (`None`: no route
    /// answers it, and the 404 costs nothing).
    pub(crate) fn of(route: Option<&str>) -> Self {
        let Some(route) = route else {
            return Lane::Front;
        };
        let first = route
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        match first {
            "dl" | "static" | ".well-known" | "healthz" | "readyz" | "metrics" => Lane::Front,
            _ => Lane::Pages,
        }
    }
}

/// The pages lane's runtime, with as many threads as the machine has cores.
/// It stops when the last router holding it is dropped.
#[derive(Debug)]
pub(crate) struct PagesLane {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl PagesLane {
    pub(crate) fn start() -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("weightgate-pages")
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }
}

impl Drop for PagesLane {
    fn drop(&mut self) {
        // Dropped from async code (the server's task): a runtime may not
        // block there, so it is told to stop without waiting.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts the handler in the pages lane when the connection waiting for it
/// goes away, as a handler in the front lane would be dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The per-address limit of a form anyone may post. A client that this
/// limit refused lately and still refuses is answered 429 in front, before
/// any handler starts, so a flood of such posts takes nothing from the pages
/// lane. Others are counted by the handler, after the form's CSRF token is
/// checked, as before: a post forged by another site does not spend the
/// allowance of its visitor's network.
fn limit_in_front<'a>(limits: &'a RateLimits, method: &Method, route: &str) -> Option<&'a Limit> {
    match (method.as_str(), route) {
        ("POST", "/models/{slug}/apply") => Some(&limits.applications_per_address),
        ("POST", "/signin") => Some(&limits.signin_per_address),
        _ => None,
    }
}

/// What choosing a lane needs, cloned for every request (so kept small).
#[derive(Clone)]
pub(crate) struct Lanes {
    pages: Arc<PagesLane>,
    limits: Arc<RateLimits>,
    app: Arc<App>,
}

impl Lanes {
    pub(crate) fn new(state: &AppState) -> Self {
        Self {
            pages: state.pages.clone(),
            limits: state.limits.clone(),
            app: state.app.clone(),
        }
    }
}

/// Runs the request's handler in its lane.
pub(crate) async fn by_lane(State(state): State<Lanes>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let lane = Lane::of(route);
    if lane == Lane::Front {
        return next.run(request).await;
    }
    let limit = route.and_then(|route| limit_in_front(&state.limits, request.method(), route));
    let request = match limit {
        None => request,
        Some(limit) => {
            let (parts, body) = request.into_parts();
            let ClientInfo(client) = ClientInfo::of(&parts, &state.app.config);
            if let Some(retry_after) = limit.refusing(&client.network()) {
                return Error::TooManyRequests {
                    limit: limit.name,
                    what: limit.what,
                    retry_after,
                }
                .into_response();
            }
            Request::from_parts(parts, body)
        }
    };
    let queued = Instant::now();
    // The handler's logs stay in the request's span.
    let task = state.pages.handle.spawn(
        async move {
            metrics::histogram!("weightgate_lane_wait_seconds", "lane" => "pages")
                .record(queued.elapsed().as_secs_f64());
            next.run(request).await
        }
        .instrument(tracing::Span::current()),
    );
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok(response) => response,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Not aborted but by `_abort`, which only runs once nobody waits;
        // and the lane lives as long as this request holds the state.
        Err(e) => Error::Internal(e.into()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_counted_in_front_name_routes_that_exist() {
        let limits = RateLimits::new(&crate::config::Config::embedded("/nonexistent"));
        let routes = super::super::routes::all();
        let mut found = 0;
        for route in &routes {
            if let Some(limit) = limit_in_front(&limits, &route.method, route.path) {
                assert!(
                    route.access == super::super::routes::Access::Public,
                    "{}",
                    route.path
                );
                assert!(limit.name.ends_with("_per_address"), "{}", limit.name);
                found += 1;
            }
        }
        assert_eq!(found, 2, "every route of the table is in the router");
    }

    #[test]
    fn downloads_keys_and_unknown_paths_stay_in_front_and_pages_get_their_own_lane() {
        let routes = super::super::routes::all();
        for front in [
            "/dl/{token}/{*file}",
            "/static/style.css",
            "/.well-known/weightgate/minisign.pub",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(routes.iter().any(|r| r.path == front), "{front} is a route");
            assert_eq!(Lane::of(Some(front)), Lane::Front, "{front}");
        }
        assert_eq!(Lane::of(None), Lane::Front, "a path no route answers");
        for pages in [
            "/",
            "/models/{slug}",
            "/models/{slug}/apply",
            "/signin",
            "/admin/login",
            "/admin",
            "/me",
            "/access/{token}",
        ] {
            assert!(routes.iter().any(|r| r.path == pages), "{pages} is a route");
            assert_eq!(Lane::of(Some(pages)), Lane::Pages, "{pages}");
        }
    }
}
