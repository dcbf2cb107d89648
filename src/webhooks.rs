//! Webhooks: what the audit log records, told to the endpoints that
//! subscribed, signed per the Standard Webhooks specification.
//!
//! The audit log is the outbox. Every change worth announcing writes its
//! event in the transaction that makes the change; a worker reads the log on
//! from `webhook_cursor` and, in one transaction that also moves the cursor,
//! writes one message per subscription that hears of each event (its types,
//! its owner's models, events after it was made). A replica that folds the
//! same events at the same time loses the cursor's compare-and-set and rolls
//! back, so each message is written once. Messages then leave in order per
//! subscription: only a subscription's oldest undelivered message is sent,
//! leased to one worker, retried on the configured schedule (a day and more
//! by default) while the receiver is down, and the subscription is disabled,
//! and its owner e-mailed, once the schedule is spent. A message keeps its
//! id (`webhook-id`) across attempts, so a receiver drops the duplicates
//! that at-least-once delivery brings.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::{
    db::{
        self, Db,
        audit::{EventRow, Filter},
        webhooks::{Listener, Message},
    },
    mail,
    types::{format_ms_rfc3339, new_id, now_ms, states::stored_as_text},
};

stored_as_text! {
    /// What a subscription may hear of.
    pub EventType ("a webhook event type") {
        ApplicationSubmitted = "application.submitted",
        ApplicationConfirmed = "application.confirmed",
        /// Denied, or approved (the grant exists).
        ApplicationDecided = "application.decided",
        GrantCreated = "grant.created",
        GrantExtended = "grant.extended",
        GrantRevoked = "grant.revoked",
        GrantExpired = "grant.expired",
        ReleasePublished = "release.published",
        /// Every transfer that ended; many, on a busy model.
        FileDelivered = "file.delivered",
    }
}

/// Where a subscription's secret starts, as the specification writes it.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new secret: `whsec_` and 32 random bytes in base64.
pub(crate) fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::fill(&mut key);
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The `v1,…` signature of a message: HMAC-SHA256, keyed with the secret's
/// bytes, over `id.timestamp.body`, in base64.
pub(crate) fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .context("a webhook secret is not base64")?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).context("a webhook secret cannot key HMAC")?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// What one event of the log announces: the types, in order, and the data.
fn announced(e: &EventRow) -> Vec<(EventType, serde_json::Value)> {
    if e.outcome != "ok" {
        return Vec::new();
    }
    let types: &[EventType] = match e.action.as_str() {
        "application.submitted" => &[EventType::ApplicationSubmitted],
        "application.confirmed" => &[EventType::ApplicationConfirmed],
        "review.denied" => &[EventType::ApplicationDecided],
        "grant.created" => &[EventType::GrantCreated, EventType::ApplicationDecided],
        "grant.extended" => &[EventType::GrantExtended],
        "grant.revoked" => &[EventType::GrantRevoked],
        "grant.expired" => &[EventType::GrantExpired],
        "release.published" => &[EventType::ReleasePublished],
        "file.delivered" => &[EventType::FileDelivered],
        _ => &[],
    };
    types
        .iter()
        .map(|&t| {
            let mut data = json!({ "event": e.seq });
            for (name, value) in [
                ("model_id", &e.model_id),
                ("application_id", &e.application_id),
                ("grant_id", &e.grant_id),
                ("researcher_id", &e.researcher_id),
            ] {
                if let Some(v) = value {
                    data[name] = v.as_str().into();
                }
            }
            match t {
                EventType::ApplicationDecided => {
                    data["decision"] = if e.action == "review.denied" {
                        "denied"
                    } else {
                        "approved"
                    }
                    .into();
                }
                EventType::ReleasePublished => {
                    data["release"] = e.subject.clone().into();
                }
                EventType::FileDelivered => {
                    data["file_id"] = e.file_id.clone().into();
                    data["bytes"] = e.bytes.into();
                }
                _ => {}
            }
            (t, data)
        })
        .collect()
}

/// Links to what an event is about, on this portal.
fn links(public_url: &str, data: &serde_json::Value) -> serde_json::Value {
    let mut links = json!({});
    if let Some(id) = data["application_id"].as_str() {
        links["application"] = format!("{public_url}/api/v1/applications/{id}").into();
        links["application_page"] = format!("{public_url}/admin/applications/{id}").into();
    }
    if let Some(id) = data["grant_id"].as_str() {
        links["grant"] = format!("{public_url}/api/v1/grants/{id}").into();
        links["grant_page"] = format!("{public_url}/admin/grants/{id}").into();
    }
    links
}

/// Events read into messages per fold.
const FOLD_PAGE: i64 = 1000;

/// Reads the log on from the cursor into messages; returns how many were
/// written.
pub(crate) async fn fold(db: &Db, public_url: &str) -> anyhow::Result<usize> {
    let pool = db.pool();
    let from = db::webhooks::cursor(pool).await?;
    // The head before the listeners: a subscription made after this read
    // has its `from_seq` past this head, so moving the cursor up to it
    // skips nothing it should hear of.
    let head = db::audit::head(pool).await?.map_or(0, |(seq, _)| seq);
    let listeners = db::webhooks::listeners(pool).await?;
    if listeners.is_empty() {
        // Nobody listens: the cursor moves to the head without reading a
        // single event, so a portal without webhooks pays nothing per fetch.
        if head > from {
            db::webhooks::advance_cursor(pool, from, head).await?;
        }
        return Ok(0);
    }
    let events = db::audit::list(
        pool,
        &Filter {
            after_seq: Some(from),
            limit: FOLD_PAGE,
            ..Filter::default()
        },
    )
    .await?;
    let Some(to) = events.last().map(|e| e.seq) else {
        return Ok(0);
    };
    let mut models: HashMap<String, Vec<String>> = HashMap::new();
    for l in listeners.iter().filter(|l| l.owner_is_admin == 0) {
        if !models.contains_key(&l.owner_id) {
            models.insert(
                l.owner_id.clone(),
                db::policy::models_of(pool, &l.owner_id).await?,
            );
        }
    }
    let hears = |l: &Listener, e: &EventRow, t: EventType| {
        e.seq > l.from_seq
            && l.event_types.split(',').any(|w| w == t.as_str())
            && (l.owner_is_admin != 0
                || e.model_id
                    .as_ref()
                    .is_some_and(|m| models.get(&l.owner_id).is_some_and(|ms| ms.contains(m))))
    };
    let now = now_ms();
    let mut tx = db.begin().await?;
    let mut written = 0;
    for e in &events {
        for (k, (t, mut data)) in announced(e).into_iter().enumerate() {
            data["links"] = links(public_url, &data);
            let payload = json!({
                "type": t.as_str(),
                "timestamp": format_ms_rfc3339(e.at),
                "data": data,
            })
            .to_string();
            for l in listeners.iter().filter(|l| hears(l, e, t)) {
                let message = Message {
                    id: format!("msg_{}", new_id()),
                    subscription_id: l.id.clone(),
                    // Two announcements of one event keep their order.
                    seq: e.seq * 4 + i64::try_from(k).unwrap_or(3),
                    event_type: t.as_str().to_owned(),
                    payload: payload.clone(),
                    created_at: now,
                    attempts: 0,
                    next_attempt_at: now,
                    delivered_at: None,
                };
                db::webhooks::insert_message(&mut *tx, &message).await?;
                written += 1;
            }
        }
    }
    if !db::webhooks::advance_cursor(&mut *tx, from, to).await? {
        // Another replica read these events first, in its own transaction.
        tx.rollback().await?;
        return Ok(0);
    }
    tx.commit().await?;
    Ok(written)
}

/// How deliveries are made.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    /// The wait before each retry; when all are spent the subscription is
    /// disabled.
    pub(crate) retries: Vec<Duration>,
    /// Whether endpoints on loopback, private or link-local addresses may be
    /// called (a test's receiver, a lab's internal service).
    pub(crate) allow_private: bool,
    pub(crate) timeout: Duration,
}

/// How long a message belongs to the worker sending it: longer than the
/// longest answer a receiver is waited for ([`MAX_TIMEOUT`]).
const LEASE_MS: i64 = 120_000;
/// The longest a receiver is waited for, whatever the setting says.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// How long messages and their attempts are kept, delivered or not.
const KEPT_MS: i64 = 30 * 86_400_000;

/// Whether `ip` is one a webhook may not reach unless private endpoints are
/// allowed: loopback, private, link-local, shared (CGNAT), benchmarking,
/// multicast and unspecified addresses, and IPv6 forms that carry one of
/// those IPv4 addresses (mapped, compatible, NAT64, 6to4).
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (b & 0xc0) == 64)
                || (a == 198 && (b & 0xfe) == 18)
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                is_private(IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                )))
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(IpAddr::V4(v4)))
                // site-local, local-use NAT64, Teredo: nothing a webhook needs
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
                || (s[0] == 0x2001 && s[1] == 0)
                // ::a.b.c.d, 64:ff9b::a.b.c.d (NAT64), 2002:aabb:ccdd:: (6to4)
                || (s[..6] == [0; 6] && embedded(s[6], s[7]))
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && embedded(s[6], s[7]))
                || (s[0] == 0x2002 && embedded(s[1], s[2]))
        }
    }
}

/// Resolves endpoints' names for the webhook client, dropping every
/// private address: the address checked is the address connected to, so a
/// name that answers a public address to a check and a private one to the
/// connection (DNS rebinding) reaches nothing inside.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address; set WEIGHTGATE_WEBHOOK_ALLOW_PRIVATE to call private ones"
                )
                .into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Scheme, host and port of an endpoint, for logs: the path and query often
/// carry the receiver's own credentials.
pub(crate) fn endpoint_origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "(not a URL)".into(),
    }
}

/// Why an endpoint cannot be called, if it cannot: not an http(s) URL, or
/// a private address written as such (names are checked as they are
/// resolved, by [`PublicOnly`]).
fn refused_endpoint(url: &str, allow_private: bool) -> Option<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Some("the endpoint is not a URL".into());
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some("the endpoint is not an http or https URL".into());
    }
    let private = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => is_private(ip.into()),
        Some(url::Host::Ipv6(ip)) => is_private(ip.into()),
        Some(url::Host::Domain(_)) => false,
        None => return Some("the endpoint names no host".into()),
    };
    (private && !allow_private)
        .then(|| "the endpoint is a private address; set WEIGHTGATE_WEBHOOK_ALLOW_PRIVATE to call it".into())
}

/// Deliveries under way at once on one replica.
const AT_ONCE: usize = 16;

/// Starts a delivery of every message that is due, one per subscription at
/// a time, each on its own task: a slow receiver holds up its own
/// subscription (its message stays leased) and one of [`AT_ONCE`] places,
/// never the others. Returns how many were started.
pub(crate) async fn deliver_due(
    db: &Db,
    http: &reqwest::Client,
    how: &Delivery,
    places: &std::sync::Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<usize> {
    let mut started = 0;
    loop {
        let now = now_ms();
        let heads = db::webhooks::due_heads(db.pool(), now, i64::try_from(AT_ONCE).unwrap_or(16)).await?;
        let mut leased = 0;
        for m in heads {
            let place = places.clone().acquire_owned().await?;
            if !db::webhooks::lease(db.pool(), &m.id, now_ms(), now_ms() + LEASE_MS).await? {
                continue;
            }
            leased += 1;
            let (db, http, how) = (db.clone(), http.clone(), how.clone());
            tokio::spawn(async move {
                if let Err(e) = deliver(&db, &http, &how, &m).await {
                    tracing::warn!(error = %format!("{e:#}"), "webhooks: cannot record a delivery");
                }
                drop(place);
            });
        }
        if leased == 0 {
            return Ok(started);
        }
        started += leased;
    }
}

/// One attempt at one message.
async fn deliver(db: &Db, http: &reqwest::Client, how: &Delivery, m: &Message) -> anyhow::Result<()> {
    let Some(sub) = db::webhooks::find(db.pool(), &m.subscription_id).await? else {
        return Ok(());
    };
    let now = now_ms();
    let started = Instant::now();
    let answer = match refused_endpoint(&sub.url, how.allow_private) {
        Some(why) => Err(why),
        None => post(http, how, &sub, m, now).await,
    };
    let took_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let (status, text) = match &answer {
        Ok((status, text)) => (Some(i64::from(*status)), text.clone()),
        Err(why) => (None, why.clone()),
    };
    let ok = status.is_some_and(|s| (200..300).contains(&s));
    let mut tx = db.begin().await?;
    db::webhooks::insert_attempt(
        &mut *tx,
        &new_id(),
        &db::webhooks::Attempt {
            message_id: m.id.clone(),
            at: now,
            status,
            answer: text,
            took_ms,
        },
    )
    .await?;
    if ok {
        db::webhooks::delivered(&mut *tx, &m.id, now).await?;
    } else {
        let attempt = usize::try_from(m.attempts).unwrap_or(usize::MAX);
        match how.retries.get(attempt) {
            Some(wait) => {
                let next = now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                db::webhooks::failed(&mut *tx, &m.id, next).await?;
            }
            None => {
                db::webhooks::failed(&mut *tx, &m.id, now).await?;
                let reason = format!(
                    "{} attempts at message {} failed over {}; the last: {}",
                    attempt + 1,
                    m.id,
                    humantime::format_duration(Duration::from_secs(
                        u64::try_from((now - m.created_at) / 1000).unwrap_or(0)
                    )),
                    match status {
                        Some(s) => format!("HTTP {s}"),
                        None => "no answer".into(),
                    }
                );
                db::webhooks::set_disabled(&mut *tx, &sub.id, Some(now), Some(&reason)).await?;
                if let Some(owner) = db::reviewers::find(&mut *tx, &sub.owner_id).await? {
                    mail::enqueue(
                        &mut tx,
                        &owner.email,
                        "A webhook of yours was disabled",
                        &format!(
                            "Hello,\n\nthe webhook subscription {id} to {url} was disabled: {reason}.\n\n\
                             Its messages wait undelivered, for 30 days. When the endpoint answers again, enable the \
                             subscription on your account page (or `weightgate webhook enable {id}`), and they \
                             are sent in order.\n",
                            id = sub.id,
                            url = sub.url,
                        ),
                    )
                    .await?;
                }
                tracing::warn!(subscription = %sub.id, endpoint = %endpoint_origin(&sub.url), %reason, "a webhook subscription was disabled");
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Posts a message; the status and the start of the answer, or why there
/// was none.
async fn post(
    http: &reqwest::Client,
    how: &Delivery,
    sub: &db::webhooks::Subscription,
    m: &Message,
    now: i64,
) -> Result<(u16, String), String> {
    let timestamp = now / 1000;
    let mut signatures =
        vec![signature(&sub.secret, &m.id, timestamp, &m.payload).map_err(|e| e.to_string())?];
    if let (Some(previous), Some(until)) = (&sub.previous_secret, sub.previous_until)
        && until > now
    {
        signatures.push(signature(previous, &m.id, timestamp, &m.payload).map_err(|e| e.to_string())?);
    }
    let response = http
        .post(&sub.url)
        .timeout(how.timeout.min(MAX_TIMEOUT))
        .header("content-type", "application/json")
        .header("webhook-id", &m.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signatures.join(" "))
        .body(m.payload.clone())
        .send()
        .await
        .map_err(|e| {
            // reqwest says "error sending request"; the why is in its sources.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        })?;
    let status = response.status().as_u16();
    // The start of the answer is kept for the delivery log, no more.
    let mut text = String::new();
    let mut stream = response.bytes_stream();
    use futures_util::StreamExt as _;
    let mut bytes = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= 1024 {
            break;
        }
    }
    bytes.truncate(1024);
    text.push_str(&String::from_utf8_lossy(&bytes));
    Ok((status, text))
}

async fn forget_old(db: &Db) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    db::webhooks::forget_before(&mut tx, now_ms() - KEPT_MS).await?;
    tx.commit().await?;
    Ok(())
}

/// Folds the log into messages and delivers them, every `every`, until the
/// portal stops.
pub(crate) async fn run(db: Db, public_url: String, how: Delivery, every: Duration) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("weightgate-webhooks/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        // A proxy set in the portal's environment is not the receiver's way in.
        .no_proxy()
        .connect_timeout(Duration::from_secs(10));
    if !how.allow_private {
        builder = builder.dns_resolver(std::sync::Arc::new(PublicOnly));
    }
    let http = match builder.build() {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: cannot make an HTTP client; no webhook is sent");
            return;
        }
    };
    let places = std::sync::Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    loop {
        loop {
            match fold(&db, &public_url).await {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "webhooks: cannot read the log into messages");
                    break;
                }
            }
            // Caught up when the cursor is at the head.
            match (
                db::webhooks::cursor(db.pool()).await,
                db::audit::head(db.pool()).await,
            ) {
                (Ok(at), Ok(Some((head, _)))) if at < head => continue,
                _ => break,
            }
        }
        if let Err(e) = deliver_due(&db, &http, &how, &places).await {
            tracing::warn!(error = %format!("{e:#}"), "webhooks: cannot deliver");
        }
        if let Err(e) = forget_old(&db).await {
            tracing::warn!(error = %format!("{e:#}"), "webhooks: cannot forget old messages");
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_what_the_specification_computes() {
        // Computed with the standardwebhooks Python package for this secret,
        // id, timestamp and body.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn private_addresses_are_known() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.1.2.3",
            "198.18.0.1",
            "224.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "ff02::1",
            "fec0::1",
            "64:ff9b:1::a00:1",
            "2001:0:4136:e378::1",
            "192.0.0.8",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
