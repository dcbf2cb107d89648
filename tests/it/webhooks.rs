//! Webhooks as a receiver sees them: every event once, in order, signed as
//! the Standard Webhooks specification says (checked with its published
//! Rust and Python libraries), while the receiver goes down and comes back;
//! a subscription that keeps failing is disabled and its owner told.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

/// The command line of a portal whose webhooks may call this machine.
fn weightgate(t: &TestApp, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    crate::cli::weightgate_with(
        t,
        args,
        stdin,
        &[("WEIGHTGATE_WEBHOOK_ALLOW_PRIVATE", "true".into())],
    )
}

/// An endpoint that records what it is sent, or answers 503 while down.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    up: Arc<AtomicBool>,
    /// How long it takes to answer, in milliseconds.
    slow: Arc<std::sync::atomic::AtomicU64>,
}

impl Receiver {
    async fn start(up: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
        let up = Arc::new(AtomicBool::new(up));
        let slow: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (g, u, w) = (got.clone(), up.clone(), slow.clone());
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let (g, u, w) = (g.clone(), u.clone(), w.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(w.load(Ordering::SeqCst))).await;
                    if u.load(Ordering::SeqCst) {
                        g.lock().unwrap().push((headers, body));
                        (axum::http::StatusCode::OK, "thanks")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "down for maintenance",
                        )
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, got, up, slow }
    }

    fn messages(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` distinct messages arrived; their ids, types and
    /// bodies in the order of first arrival.
    async fn wait_for(&self, n: usize) -> Vec<(String, String, Bytes, HeaderMap)> {
        for _ in 0..600 {
            let mut seen: Vec<(String, String, Bytes, HeaderMap)> = Vec::new();
            for (headers, body) in self.messages() {
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                if !seen.iter().any(|(i, ..)| *i == id) {
                    let kind = serde_json::from_slice::<Value>(&body).unwrap()["type"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    seen.push((id, kind, body, headers));
                }
            }
            if seen.len() >= n {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} messages did not arrive: {:?}", self.messages().len());
    }
}

fn quick(c: &mut weightgate::config::Config, retries: usize) {
    c.webhook_every = Duration::from_millis(50);
    c.webhook_retries = weightgate::config::Retries(vec![Duration::from_millis(100); retries]);
    c.webhook_allow_private = true;
}

async fn review_token(t: &TestApp) -> String {
    let owner = weightgate::db::reviewers::find_by_email(t.app.db.pool(), REVIEWER)
        .await
        .unwrap()
        .unwrap();
    weightgate::domain::tokens::create(
        &t.app,
        &owner,
        "hooks",
        "review".parse().unwrap(),
        30,
        "test",
        weightgate::audit::Client::default(),
    )
    .await
    .unwrap()
    .secret
}

async fn api(t: &TestApp, token: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    let mut request = t.client.request(method, t.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let value: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {value}");
    value
}

fn verifies(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .verify(body, headers)
        .is_ok()
}

both!(a_receiver_gets_every_event_once_in_order_signed_as_the_standard_says);
async fn a_receiver_gets_every_event_once_in_order_signed_as_the_standard_says() {
    let t = TestApp::spawn_with(|c| quick(c, 40)).await;
    let token = review_token(&t).await;
    let rx = Receiver::start(false).await;
    let subscribed = api(
        &t,
        &token,
        Method::POST,
        "/api/v1/webhooks",
        Some(json!({"url": rx.url, "events": [
            "application.submitted", "application.confirmed", "application.decided",
            "grant.created", "grant.extended", "grant.revoked", "release.published"
        ]})),
    )
    .await;
    let secret = subscribed["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = subscribed["subscription"]["id"].as_str().unwrap().to_owned();
    // A reviewer of no model hears of nothing on this one.
    let quiet = Receiver::start(true).await;
    let nobody: weightgate::types::Email = "nobody@lab.example.org".parse().unwrap();
    weightgate::domain::accounts::add_reviewer(&t.app, &nobody, PASSWORD, false, "test")
        .await
        .unwrap();
    let (ok, _, err) = weightgate(
        &t,
        &[
            "webhook",
            "add",
            "--reviewer",
            "nobody@lab.example.org",
            "--url",
            &quiet.url,
            "--events",
            "application.submitted,grant.created",
        ],
        None,
    );
    assert!(ok, "{err}");

    // Events while the receiver is down.
    t.apply_and_confirm("z@uni.example.edu").await;
    let queue = api(&t, &token, Method::GET, "/api/v1/applications", None).await;
    let app_id = queue["applications"][0]["id"].as_str().unwrap().to_owned();
    api(
        &t,
        &token,
        Method::POST,
        &format!("/api/v1/applications/{app_id}/approve"),
        Some(json!({"days": 30})),
    )
    .await;
    let grants = api(&t, &token, Method::GET, "/api/v1/grants", None).await;
    let grant = grants["grants"][0]["id"].as_str().unwrap().to_owned();
    api(
        &t,
        &token,
        Method::POST,
        &format!("/api/v1/grants/{grant}/extend"),
        Some(json!({"days": 10})),
    )
    .await;
    api(
        &t,
        &token,
        Method::POST,
        &format!("/api/v1/grants/{grant}/revoke"),
        Some(json!({"reason": "The project ended."})),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(rx.messages().is_empty());
    let log = api(&t, &token, Method::GET, &format!("/api/v1/webhooks/{id}"), None).await;
    let failed = log["attempts"].as_array().unwrap();
    assert!(!failed.is_empty(), "{log}");
    assert!(
        failed
            .iter()
            .all(|a| a["status"] == 503 && a["answer"] == "down for maintenance"),
        "{log}"
    );

    // Back up: every message once (duplicates dropped by id), in order.
    rx.up.store(true, Ordering::SeqCst);
    let got = rx.wait_for(6).await;
    let kinds: Vec<&str> = got.iter().map(|(_, k, ..)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "application.submitted",
            "application.confirmed",
            "grant.created",
            "application.decided",
            "grant.extended",
            "grant.revoked"
        ]
    );
    for (_, kind, body, headers) in &got {
        assert!(
            verifies(&secret, headers, body),
            "{kind} verifies with the standardwebhooks crate"
        );
        assert!(!verifies("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", headers, body));
        let payload: Value = serde_json::from_slice(body).unwrap();
        assert!(payload["timestamp"].is_string());
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains("z@uni.example.edu"),
            "ids and links, no personal data: {text}"
        );
    }
    let revoked: Value = serde_json::from_slice(&got[5].2).unwrap();
    assert_eq!(revoked["data"]["grant_id"], grant.as_str());
    assert_eq!(
        revoked["data"]["links"]["grant"],
        t.url(&format!("/api/v1/grants/{grant}"))
    );
    let decided: Value = serde_json::from_slice(&got[3].2).unwrap();
    assert_eq!(decided["data"]["decision"], "approved");
    assert_eq!(decided["data"]["application_id"], app_id.as_str());

    // The Python library of the standard agrees.
    let (_, _, body, headers) = &got[0];
    let dir = t.dir.path();
    std::fs::write(dir.join("body.json"), body).unwrap();
    let header_json: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|h| ((*h).to_owned(), Value::from(headers[*h].to_str().unwrap())))
            .collect();
    std::fs::write(dir.join("headers.json"), Value::Object(header_json).to_string()).unwrap();
    let script = "import json, sys\n\
        from standardwebhooks.webhooks import Webhook\n\
        body = open(sys.argv[2], 'rb').read().decode()\n\
        headers = json.load(open(sys.argv[3]))\n\
        print(Webhook(sys.argv[1]).verify(body, headers)['type'])\n";
    match std::process::Command::new("python3")
        .args(["-c", script, &secret])
        .arg(dir.join("body.json"))
        .arg(dir.join("headers.json"))
        .output()
    {
        Ok(out) if out.status.success() => {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "application.submitted"
            );
        }
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !err.contains("ModuleNotFoundError") || std::env::var_os("CI").is_none(),
                "CI must verify with the Python standardwebhooks package: {err}"
            );
            assert!(
                err.contains("ModuleNotFoundError"),
                "the Python library refused it: {err}"
            );
            eprintln!("NOT CHECKED WITH PYTHON: the standardwebhooks package is not installed");
        }
        Err(e) => panic!("python3: {e}"),
    }

    // A rotation: for a day both secrets sign, so the receiver can change over.
    let rotated = api(
        &t,
        &token,
        Method::POST,
        &format!("/api/v1/webhooks/{id}/rotate"),
        None,
    )
    .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    t.apply_and_confirm("y@uni.example.edu").await;
    let got = rx.wait_for(8).await;
    let (_, kind, body, headers) = &got[6];
    assert_eq!(kind, "application.submitted");
    assert!(verifies(&new_secret, headers, body) && verifies(&secret, headers, body));
    assert!(
        quiet.messages().is_empty(),
        "a reviewer of no model heard: {:?}",
        quiet.messages()
    );
}

both!(a_subscription_that_keeps_failing_is_disabled_and_its_owner_told);
async fn a_subscription_that_keeps_failing_is_disabled_and_its_owner_told() {
    let t = TestApp::spawn_with(|c| quick(c, 2)).await;
    let rx = Receiver::start(false).await;
    let (ok, secret, err) = weightgate(
        &t,
        &[
            "webhook",
            "add",
            "--reviewer",
            REVIEWER,
            "--url",
            &rx.url,
            "--events",
            "application.submitted,application.confirmed",
        ],
        None,
    );
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    t.apply_and_confirm("z@uni.example.edu").await;
    let mail = t.wait_for_mail(REVIEWER, "A webhook of yours was disabled").await;
    assert!(mail.contains(&rx.url), "{mail}");
    let (ok, listed, err) = weightgate(&t, &["webhook", "list", "--format", "jsonl"], None);
    assert!(ok, "{err}");
    let row: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(row["enabled"], false);
    assert!(
        row["disabled_reason"].as_str().unwrap().contains("HTTP 503"),
        "{row}"
    );
    let id = row["id"].as_str().unwrap().to_owned();

    // The delivery log on the dashboard shows each answer.
    let browser = client();
    t.sign_in(&browser).await;
    let (status, page) = t
        .get_html(&browser, &format!("/admin/account/webhook?id={id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("down for maintenance") && page.contains("disabled"),
        "{page}"
    );

    // Enabled again with the receiver back: everything, in order.
    rx.up.store(true, Ordering::SeqCst);
    let (ok, _, err) = weightgate(&t, &["webhook", "enable", &id], None);
    assert!(ok, "{err}");
    let got = rx.wait_for(2).await;
    let kinds: Vec<&str> = got.iter().map(|(_, k, ..)| k.as_str()).collect();
    assert_eq!(kinds, ["application.submitted", "application.confirmed"]);
    assert!(verifies(&secret, &got[0].3, &got[0].2));

    // "Send again" delivers the same message, with the same id, once more.
    let first = got[0].0.clone();
    let response = t
        .post_form(
            &browser,
            &format!("/admin/account/webhook?id={id}"),
            "/admin/account/webhook",
            &[("id", &first), ("action", "resend")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    for _ in 0..200 {
        if rx
            .messages()
            .iter()
            .filter(|(h, _)| h["webhook-id"] == first.as_str())
            .count()
            >= 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        rx.messages()
            .iter()
            .filter(|(h, _)| h["webhook-id"] == first.as_str())
            .count(),
        2,
        "sent again with its id"
    );
}

/// By default a subscription cannot make the portal call into its own
/// network (on SQLite only: it is the URL's check, not the database's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_cannot_point_the_portal_at_its_own_network() {
    let strict = TestApp::spawn_with(|c| {
        quick(c, 40);
        c.webhook_allow_private = false;
    })
    .await;
    let token = review_token(&strict).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://localhost/x",
    ] {
        let refused = strict
            .client
            .post(strict.url("/api/v1/webhooks"))
            .bearer_auth(&token)
            .json(&json!({"url": url, "events": ["grant.created"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{url}");
    }

    // A name that resolves to this machine (written in the database, past
    // the check a subscription gets when it is made) reaches nothing: the
    // portal connects only to the public addresses a name resolves to.
    let rx = Receiver::start(true).await;
    let port = rx.url.rsplit(':').next().unwrap().to_owned();
    let owner = weightgate::db::reviewers::find_by_email(strict.app.db.pool(), REVIEWER)
        .await
        .unwrap()
        .unwrap();
    sqlx::query(
        "INSERT INTO webhook_subscriptions (id, owner_id, url, event_types, secret, created_at, from_seq)
         VALUES ('whs_inside', $1, $2, 'application.submitted', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 0, 0)",
    )
    .bind(&owner.id)
    .bind(format!("http://localhost:{port}"))
    .execute(strict.app.db.pool())
    .await
    .unwrap();
    strict.apply_and_confirm("z@uni.example.edu").await;
    let mut answer = String::new();
    for _ in 0..200 {
        answer = sqlx::query_scalar::<_, String>("SELECT answer FROM webhook_attempts LIMIT 1")
            .fetch_optional(strict.app.db.pool())
            .await
            .unwrap()
            .unwrap_or_default();
        if !answer.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answer.contains("no public address"), "{answer}");
    assert!(rx.messages().is_empty(), "the portal called into its own machine");
}

/// A receiver that takes its time holds up its own messages, not another
/// subscription's (on SQLite only: it is the worker's scheduling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_hold_up_another() {
    let t = TestApp::spawn_with(|c| {
        quick(c, 40);
        c.webhook_timeout = Duration::from_secs(60);
    })
    .await;
    let slow = Receiver::start(true).await;
    slow.slow.store(30_000, Ordering::SeqCst);
    let fast = Receiver::start(true).await;
    for rx in [&slow, &fast] {
        let (ok, _, err) = weightgate(
            &t,
            &[
                "webhook",
                "add",
                "--reviewer",
                REVIEWER,
                "--url",
                &rx.url,
                "--events",
                "application.submitted",
            ],
            None,
        );
        assert!(ok, "{err}");
    }
    t.apply_and_confirm("z@uni.example.edu").await;
    t.apply_and_confirm("y@uni.example.edu").await;
    fast.wait_for(2).await;
    assert!(
        slow.messages().is_empty(),
        "the slow receiver answered its first message before the fast one got its second: it waited"
    );
}
