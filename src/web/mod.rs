//! The web portal: router, extractors, handlers and pages.

mod access;
mod admin;
mod api;
mod audit;
mod auth;
mod download;
mod error;
mod extract;
mod flash;
mod lanes;
mod limits;
mod manage;
mod me;
mod ops;
mod pages;
mod public;
mod routes;
mod server;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{ConnectInfo, DefaultBodyLimit, FromRef, FromRequestParts},
    http::{HeaderName, HeaderValue, header, request::Parts},
    middleware,
    response::IntoResponse,
};
use axum_csrf::{CsrfConfig, Key};
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    trace::TraceLayer,
};
use tower_sessions::{Expiry, SessionManagerLayer, cookie::SameSite};

pub(crate) use api::audit as api_json;
pub(crate) use error::Error;
pub use routes::{Access, Area, Route, all as route_table};

use crate::{
    app::App,
    audit::Client,
    crypto::links::load_or_create_keys,
    web::limits::{Limit, RateLimits},
};

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) app: Arc<App>,
    csrf: CsrfConfig,
    /// Sign-in attempts per account and per address, on this replica.
    throttle: Arc<crate::domain::accounts::SignInThrottle>,
    /// Rate limits on applications, e-mails and link minting, on this replica.
    limits: Arc<RateLimits>,
    /// The runtime that page handlers run on ([`lanes`]).
    pages: Arc<lanes::PagesLane>,
    /// Keys the hashes of requests kept under an Idempotency-Key, so that
    /// what a request carried (a new reviewer's password) cannot be guessed
    /// from them.
    idempotency_key: Arc<Vec<u8>>,
}

impl FromRef<AppState> for CsrfConfig {
    fn from_ref(state: &AppState) -> Self {
        state.csrf.clone()
    }
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Who is asking: address, user agent and request id, for the audit log.
pub(crate) struct ClientInfo(pub(crate) Client);

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self::of(parts, &state.app.config))
    }
}

impl ClientInfo {
    /// The client of a request, as `config` says to read its address.
    fn of(parts: &Parts, config: &crate::config::Config) -> Self {
        let header = |name: &HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(512).collect::<String>())
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let ip = peer.map(|peer| {
            let forwarded = parts
                .headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .map(HeaderValue::as_bytes);
            crate::network::client_address(&config.trusted_proxies, peer, forwarded).to_string()
        });
        Self(Client {
            ip,
            user_agent: header(&header::USER_AGENT),
            request_id: header(&REQUEST_ID),
        })
    }
}

const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The portal's router.
pub(crate) async fn router(app: Arc<App>) -> anyhow::Result<Router> {
    let secure = app.config.is_https();
    let cookie_key = load_or_create_keys(&app.db, "cookie", 64).await?.remove(0).1;
    // Under https both cookies carry the `__Host-` prefix: the browser then
    // takes them only from this host, over https, for the whole site, so a
    // neighbouring subdomain or a plain-http page cannot plant or widen them.
    let csrf = CsrfConfig::default()
        .with_key(Some(Key::from(&cookie_key)))
        .with_salt(hex::encode(&cookie_key[..16]))
        .with_cookie_name("wg_csrf")
        .with_prefix_with_host(secure)
        .with_secure(secure)
        .with_cookie_same_site(axum_csrf::SameSite::Strict);
    let idle = app.config.session_idle;
    let sessions = SessionManagerLayer::new(auth::DbSessionStore::new(app.db.clone(), idle))
        .with_name(if secure { "__Host-wg_session" } else { "wg_session" })
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(secure)
        .with_path("/")
        .with_always_save(true)
        .with_expiry(Expiry::OnInactivity(
            time::Duration::try_from(idle).unwrap_or(time::Duration::hours(8)),
        ));
    let header_timeout = app.config.header_timeout;
    let idempotency_key = Arc::new(load_or_create_keys(&app.db, "idempotency", 32).await?.remove(0).1);
    let state = AppState {
        idempotency_key,
        csrf,
        throttle: Arc::new(crate::domain::accounts::SignInThrottle::default()),
        limits: Arc::new(RateLimits::new(&app.config)),
        pages: Arc::new(lanes::PagesLane::start()?),
        app,
    };

    let router = Router::new()
        .merge(routes::router(routes::Area::Open, &state))
        .merge(routes::router(routes::Area::Api, &state))
        .merge(routes::router(routes::Area::Dashboard, &state).layer(sessions.clone()))
        .merge(routes::router(routes::Area::Researcher, &state).layer(sessions))
        .fallback(|| async { Error::NotFound })
        .layer(middleware::from_fn_with_state(
            lanes::Lanes::new(&state),
            lanes::by_lane,
        ))
        .with_state(state)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        // A body trickled in to hold a connection is cut off: the whole of it
        // must arrive within the time headers are given.
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(header_timeout))
        .layer(middleware::from_fn(ops::count_requests))
        .layer(middleware::from_fn(error::render_errors))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        // Access and download URLs carry secrets: never leak them in Referer.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid));
    Ok(router)
}

/// The tracing span of a request. Paths carry secrets (download links,
/// access pages, confirmation and sign-in links), so the span names only
/// the path's first segment, never the rest of it or the query.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        path = %public_part(request.uri().path()),
        version = ?request.version(),
    )
}

/// `/dl/…` for `/dl/TOKEN/FILE`: the first segment of a path, and whether
/// more followed.
fn public_part(path: &str) -> String {
    let rest = path.trim_start_matches('/');
    match rest.split_once('/') {
        Some((first, _)) => format!("/{}/…", first.chars().take(32).collect::<String>()),
        None => format!("/{}", rest.chars().take(32).collect::<String>()),
    }
}

/// Counts one request against `limit` for `key`: 429 with the wait when
/// over it.
fn limited(limit: &Limit, key: &str) -> Result<(), Error> {
    limit.check(key).map_err(|retry_after| Error::TooManyRequests {
        limit: limit.name,
        what: limit.what,
        retry_after,
    })
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../static/style.css"),
    )
}

/// Serves the portal on `listener` until `shutdown` resolves, then stops
/// accepting connections and lets requests in flight (downloads included)
/// finish for up to the configured grace period.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::telemetry::handle();
    let router = router(app.clone()).await?;
    let cleanup = tokio::spawn(auth::expire_sessions(app.db.clone(), Duration::from_secs(600)));
    let mailer = app.mail.run_worker(app.db.clone())?;
    let refresh = tokio::spawn(app.links.clone().refresh_periodically(Duration::from_secs(60)));
    let notices = tokio::spawn(crate::domain::notices::run_periodically(
        app.clone(),
        app.config.notices_every,
    ));
    // The checkpoint key is read (or, on a first start, made) before the
    // portal serves, so that a missing or unreadable key stops it at once.
    let key = app.audit_key().await?;
    if app.config.witness_url.is_none()
        && app.config.storage_url.is_none()
        && app.config.witness_email.is_empty()
    {
        tracing::warn!(
            "the audit checkpoint witness is DATA_DIR/objects, beside the database: whoever can write the data \
             directory can rewrite the log unseen; set WEIGHTGATE_WITNESS_URL (a bucket with Object Lock) or \
             WEIGHTGATE_WITNESS_EMAIL to keep checkpoints out of their reach"
        );
    }
    tracing::info!(kid = %key.kid, public_key = %hex::encode(key.public_key().as_bytes()), "audit checkpoints are signed with this key");
    let checkpoints = tokio::spawn(
        app.clone()
            .checkpoint_periodically(app.config.audit_checkpoint_every),
    );
    let refusals = tokio::spawn(app.refusals.clone().run(app.audit.clone()));
    let reports = tokio::spawn(app.clone().fold_reports_periodically(app.config.reports_every));
    let webhooks = tokio::spawn(crate::webhooks::run(
        app.db.clone(),
        app.config.public_url(),
        crate::webhooks::Delivery {
            retries: app.config.webhook_retries.0.clone(),
            allow_private: app.config.webhook_allow_private,
            timeout: app.config.webhook_timeout,
        },
        app.config.webhook_every,
    ));
    let limits = server::Limits::from_config(&app.config);
    tracing::info!(
        max_connections = limits.max_connections,
        per_address = limits.per_address,
        header_timeout = ?limits.header_timeout,
        "accepting connections"
    );
    server::run(listener, router, limits, shutdown, app.config.shutdown_grace).await;
    cleanup.abort();
    mailer.abort();
    refresh.abort();
    checkpoints.abort();
    notices.abort();
    refusals.abort();
    reports.abort();
    webhooks.abort();
    app.refusals.flush(&app.audit).await;
    // Transfers that ended queued their `file.delivered` events without
    // waiting; the stop event is written after them, so once it is durable
    // they are too.
    app.audit.stopped(Duration::from_secs(10)).await;
    Ok(())
}
