//! Prometheus metrics: one recorder per process, rendered at `/metrics`.
//!
//! - `weightgate_http_requests_total{method,route,status}` and
//!   `weightgate_http_request_duration_seconds{route}`
//! - `weightgate_fetches_total{outcome,reason}`: download checks by result
//! - `weightgate_bytes_delivered_total`: bytes of weight files sent
//! - `weightgate_audit_write_seconds`: how long a fetch waits for its audit
//!   event to be durable
//! - `weightgate_audit_chain_lock_wait_seconds{backend}`,
//!   `weightgate_audit_chain_lock_held_seconds{backend}` and
//!   `weightgate_audit_batch_events{backend}`: per batch of audit events,
//!   the wait for the chain's lock, the time it was held (until the commit
//!   was durable; on PostgreSQL, for a batch appended in one statement, until
//!   that statement's end, the commit's flush following), and the events
//!   appended
//! - `weightgate_audit_batches_decided_again_total`: PostgreSQL batches
//!   decided outside the chain's lock on facts that changed before it was
//!   granted, so decided again under it (see `audit::append_unlocked`)
//! - `weightgate_outbox_depth`: e-mails not yet sent
//! - `weightgate_rate_limited_total{limit}`: answers 429 by limit
//! - `weightgate_unavailable_total{what}`: answers 503 by what was
//!   unavailable (`database`, `audit_log`, `object_store`, `disk`)
//! - `weightgate_lane_wait_seconds{lane}`: how long a page waits for the
//!   pages lane to start its handler (see `web::lanes`)

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's metrics recorder, installed on first use.
pub(crate) fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        handle
    })
}
