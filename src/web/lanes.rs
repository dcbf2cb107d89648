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
//! client address; that limit is counted in front, so a client over it is
//! refused without a turn in the pages lane.

use std::time::Instant;

use axum::{
    extract::{FromRequestParts, MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use tokio::runtime::{Handle, Runtime};

use super::{
    AppState, ClientInfo, Error,
    limits::{Limit, RateLimits},
};

/// Which lane a request's handler runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Downloads, the style sheet, health and metrics: on the runtime that
    /// serves the connections.
    Front,
    /// Pages, forms, the dashboard and the access URLs of the download
    /// client: everything that reads or writes the database on a person's
    /// behalf.
    Pages,
}

impl Lane {
    /// The lane of a request for `path`.
    pub(crate) fn of(path: &str) -> Self {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        match first {
            "dl" | "static" | "healthz" | "readyz" | "metrics" => Lane::Front,
            _ => Lane::Pages,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Lane::Front => "front",
            Lane::Pages => "pages",
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

/// The per-address limit of a form anyone may post, counted in front: a
/// client over it is answered 429 before any handler starts, so a flood of
/// such posts takes nothing from the pages lane. The handlers of these
/// routes do not count it again.
fn limit_in_front<'a>(limits: &'a RateLimits, method: &Method, route: &str) -> Option<&'a Limit> {
    match (method.as_str(), route) {
        ("POST", "/models/{slug}/apply") => Some(&limits.applications_per_address),
        ("POST", "/signin") => Some(&limits.signin_per_address),
        _ => None,
    }
}

/// Runs the request's handler in its lane.
pub(crate) async fn by_lane(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let lane = Lane::of(request.uri().path());
    if lane == Lane::Front {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let limit = route.and_then(|route| limit_in_front(&state.limits, request.method(), route));
    let request = match limit {
        None => request,
        Some(limit) => {
            let (mut parts, body) = request.into_parts();
            let Ok(ClientInfo(client)) = ClientInfo::from_request_parts(&mut parts, &state).await;
            if let Err(refused) = super::limited(limit, &client.network()) {
                return refused.into_response();
            }
            Request::from_parts(parts, body)
        }
    };
    let queued = Instant::now();
    let task = state.pages.handle.spawn(async move {
        metrics::histogram!("weightgate_lane_wait_seconds", "lane" => lane.name())
            .record(queued.elapsed().as_secs_f64());
        next.run(request).await
    });
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok(response) => response,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The lane stopped: the portal is shutting down.
        Err(_) => Error::Unavailable {
            what: "pages_lane",
            message: "The portal is restarting; please try again in a minute.".into(),
        }
        .into_response(),
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
    fn downloads_and_static_files_stay_in_front_and_pages_get_their_own_lane() {
        for front in [
            "/dl/TOKEN/model.safetensors",
            "/dl/",
            "/static/style.css",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert_eq!(Lane::of(front), Lane::Front, "{front}");
        }
        for pages in [
            "/",
            "",
            "/models/llama",
            "/models/llama/apply",
            "/signin",
            "/admin/login",
            "/admin",
            "/me",
            "/access/TOKEN/manifest",
            "/dlx",
            "/downloads",
        ] {
            assert_eq!(Lane::of(pages), Lane::Pages, "{pages}");
        }
    }
}
