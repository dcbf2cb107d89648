//! Accepting connections: the portal's own loop around hyper, because it has
//! to bound what a client can hold open.
//!
//! - Headers must arrive within `WEIGHTGATE_HEADER_TIMEOUT`, and a kept-alive
//!   connection waits that long for its next request before it is closed: a
//!   client that sends half a request, or opens connections and says
//!   nothing, cannot keep them.
//! - At most `WEIGHTGATE_MAX_CONNECTIONS` are open at once (kept below the
//!   process's file-descriptor limit, so the database, the store and the
//!   health checks always have descriptors), and at most
//!   `WEIGHTGATE_MAX_CONNECTIONS_PER_ADDRESS` from one client address (a
//!   trusted proxy, which carries many clients, is not held to it).
//! - A stopping portal stops accepting, lets requests in flight (downloads
//!   included) finish for up to the grace period, and closes the rest.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{Extension, Router, extract::ConnectInfo};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::Layer;

use crate::{config::Config, network::TrustedProxies};

/// File descriptors kept back from the connection cap for everything else
/// the portal opens: database connections, store streams, files, the outbox.
const RESERVED_FDS: u64 = 256;

/// The limits of the accept loop.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) per_address: usize,
    pub(crate) stall_timeout: Duration,
    pub(crate) trusted: TrustedProxies,
}

impl Limits {
    /// The configured limits, with the connection cap lowered to fit the
    /// process's file-descriptor limit (raised to its hard limit first).
    pub(crate) fn from_config(config: &Config) -> Self {
        let max_connections = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(fds) => {
                let fit = usize::try_from(fds.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
                if fit < config.max_connections {
                    tracing::warn!(
                        open_files = fds,
                        max_connections = fit,
                        "the file-descriptor limit allows fewer connections than WEIGHTGATE_MAX_CONNECTIONS"
                    );
                }
                config.max_connections.min(fit)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the file-descriptor limit");
                config.max_connections
            }
        };
        Self {
            header_timeout: config.header_timeout,
            max_connections,
            per_address: config.max_connections_per_address,
            stall_timeout: config.stall_timeout,
            trusted: config.trusted_proxies.clone(),
        }
    }
}

/// Open connections by client network (an IPv4 address, an IPv6 /64: one
/// subscriber has a whole /64 to open connections from).
#[derive(Default)]
struct PerAddress(Mutex<HashMap<String, usize>>);

/// One open connection counted against its network; uncounted on drop.
struct Counted {
    table: Arc<PerAddress>,
    ip: String,
}

impl PerAddress {
    fn admit(table: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<Counted> {
        let ip = crate::network::network_key(ip);
        let mut open = table.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip.clone()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(Counted {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `stop` resolves, then lets open
/// requests finish for up to `grace`.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
    grace: Duration,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        // At the cap, wait for a connection to close before accepting: the
        // kernel's backlog holds newcomers meanwhile.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the connection semaphore is never closed"),
            () = stop.as_mut() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors or memory for a moment: wait, do not spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.as_mut() => break,
        };
        let ip = peer.ip().to_canonical();
        let counted = if limits.trusted.contains(ip) {
            None
        } else {
            match PerAddress::admit(&per_address, ip, limits.per_address) {
                Some(counted) => Some(counted),
                None => {
                    metrics::counter!("weightgate_connections_refused_total", "why" => "per_address")
                        .increment(1);
                    continue;
                }
            }
        };
        configure(&tcp, limits.stall_timeout);
        let service = Extension(ConnectInfo::<SocketAddr>(peer)).layer(router.clone());
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service)));
        tokio::spawn(async move {
            if let Err(err) = connection.await
                && !err.is_timeout()
            {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            drop((slot, counted));
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace = ?grace, "shutdown grace period over; closing the connections still open");
        }
    }
}

/// Socket options of an accepted connection.
fn configure(tcp: &tokio::net::TcpStream, stall: Duration) {
    // Responses go out as soon as they are written: without this, Nagle's
    // algorithm holds a short body back until the client's delayed ACK.
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::warn!(error = %err, "cannot set TCP_NODELAY");
    }
    // A client that stops reading a download would otherwise hold its
    // connection, file handle and store stream for ever: the kernel drops a
    // connection whose sent data (or zero-window probes) go unanswered this
    // long.
    #[cfg(target_os = "linux")]
    if let Err(err) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(stall)) {
        tracing::warn!(error = %err, "cannot set TCP_USER_TIMEOUT");
    }
    #[cfg(not(target_os = "linux"))]
    let _ = stall;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ipv6_subscriber_is_one_address_for_the_cap() {
        let table = Arc::new(PerAddress::default());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let first = PerAddress::admit(&table, ip("2001:db8:1:2::1"), 1).expect("the first connection");
        assert!(
            PerAddress::admit(&table, ip("2001:db8:1:2:ffff::9"), 1).is_none(),
            "same /64"
        );
        let other = PerAddress::admit(&table, ip("2001:db8:1:3::1"), 1).expect("another /64");
        drop(first);
        assert!(
            PerAddress::admit(&table, ip("2001:db8:1:2::7"), 1).is_some(),
            "freed on close"
        );
        drop(other);
    }
}
