//! What operators and load balancers see: readiness, metrics, structured logs
//! and a graceful stop.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;

use crate::helpers::*;

both!(readiness_reports_the_database_and_the_object_store);
async fn readiness_reports_the_database_and_the_object_store() {
    let t = TestApp::spawn().await;
    let response = t.client.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    assert_eq!(body["object_store"], "ok");

    // The object store's directory replaced by a file: lookups fail.
    let objects = t.app.config.data_dir.join("objects");
    std::fs::rename(&objects, t.dir.path().join("objects-away")).unwrap();
    std::fs::write(&objects, b"not a directory").unwrap();
    let response = t.client.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    assert_ne!(body["object_store"], "ok");
    std::fs::remove_file(&objects).unwrap();
    std::fs::rename(t.dir.path().join("objects-away"), &objects).unwrap();
    assert_eq!(
        t.client.get(t.url("/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );

    let unavailable = |text: &str| metric(text, "weightgate_unavailable_total", "what=\"database\"");
    let before = t.metrics().await;
    t.app.db.pool().close().await;
    let response = t.client.get(t.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_ne!(body["database"], "ok");
    // A page that needs the database says so, with a time to come back,
    // and the 503 is counted by what was unavailable.
    let page = t.client.get(t.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(page.headers()["retry-after"], "30");
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("The database is not answering")
    );
    assert!(unavailable(&t.metrics().await) >= unavailable(&before) + 1.0);
    assert_eq!(
        t.client.get(t.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

both!(metrics_count_requests_fetches_bytes_and_the_outbox);
async fn metrics_count_requests_fetches_bytes_and_the_outbox() {
    let t = TestApp::spawn().await;
    let before = t.metrics().await;
    let access = t.approved_researcher("metrics@uni.example.edu").await;
    let (name, url) = t.download_links(&access).await.remove(0);
    let size = t.files.iter().find(|(n, _)| *n == name).unwrap().1.len();
    t.client.get(&url).send().await.unwrap().bytes().await.unwrap();
    t.client.get(format!("{url}x")).send().await.unwrap();
    t.wait_for_events("file.delivered", 1).await;

    let after = t.metrics().await;
    let grew = |name: &str, label: &str| metric(&after, name, label) - metric(&before, name, label);
    assert!(
        grew("weightgate_fetches_total", "outcome=\"ok\"") >= 1.0,
        "{after}"
    );
    assert!(grew("weightgate_fetches_total", "outcome=\"refused\"") >= 1.0);
    assert!(grew("weightgate_bytes_delivered_total", "") >= size as f64);
    assert!(grew("weightgate_http_requests_total", "route=\"/dl/{token}/{*file}\"") >= 2.0);
    assert!(after.contains("weightgate_audit_write_seconds"));
    // Each batch of audit events reports its wait for the chain's lock.
    let backend = match t.app.db.backend() {
        weightgate::db::Backend::Sqlite => "backend=\"sqlite\"",
        weightgate::db::Backend::Postgres => "backend=\"postgres\"",
    };
    assert!(
        grew("weightgate_audit_chain_lock_wait_seconds_count", backend) >= 1.0,
        "{after}"
    );
    assert!(grew("weightgate_audit_chain_lock_held_seconds_count", backend) >= 1.0);
    assert!(
        grew("weightgate_audit_batch_events_sum", backend) >= 3.0,
        "a fetch, its delivery, a refusal"
    );
    // The access URL's page ran in the pages lane, the downloads in front.
    assert!(
        grew("weightgate_lane_wait_seconds_count", "lane=\"pages\"") >= 1.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, "weightgate_lane_wait_seconds_count", "lane=\"front\""),
        0.0
    );
    assert!(after.contains("weightgate_outbox_depth"));
    let secret = access.rsplit('/').next().unwrap();
    assert!(!after.contains(secret), "no secret path ends up in a label");
    assert!(after.contains("route=\"/access/{token}\""));
}

both!(a_terminated_portal_finishes_downloads_in_flight_and_logs_json);
async fn a_terminated_portal_finishes_downloads_in_flight_and_logs_json() {
    let t = TestApp::spawn().await;
    let big = t.dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let bytes: Vec<u8> = (0..32 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(big.join("huge.bin"), &bytes).unwrap();
    let slug = MODEL.parse().unwrap();
    weightgate::domain::models::publish(
        &t.app,
        &slug,
        &big,
        Some("r2"),
        1024 * 1024,
        "test",
        &weightgate::domain::models::PublishProgress::quiet(),
    )
    .await
    .unwrap();
    let access = t.approved_researcher("stop@uni.example.edu").await;
    let (_, url) = t
        .download_links(&access)
        .await
        .into_iter()
        .find(|(n, _)| n == "huge.bin")
        .unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .arg("serve")
        .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
        .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
        .env("WEIGHTGATE_BIND", format!("127.0.0.1:{port}"))
        .env("WEIGHTGATE_SHUTDOWN_GRACE", "20s")
        .env("WEIGHTGATE_LOG_FORMAT", "json")
        .env("WEIGHTGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let target = format!("{base}/{}", url.splitn(4, '/').nth(3).unwrap());
    let mut ready = false;
    for _ in 0..200 {
        if reqwest::get(format!("{base}/healthz")).await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready);

    let mut response = t.client.get(&target).send().await.unwrap();
    let mut received = response.chunk().await.unwrap().unwrap().to_vec();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "no new connections once stopping"
    );
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(received.len(), bytes.len(), "the download in flight finished");
    assert_eq!(sha256_hex(&received), sha256_hex(&bytes));

    let status = tokio::task::spawn_blocking(move || child.wait().map(|s| (s, child)))
        .await
        .unwrap()
        .unwrap();
    assert!(status.0.success());
    let mut child = status.1;
    let logs: Vec<serde_json::Value> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).expect("every log line is JSON"))
        .collect();
    assert!(
        logs.iter().any(|l| l["fields"]["message"] == "shutting down"),
        "{logs:?}"
    );

    // The stopped portal recorded the finished transfer, then its own stop.
    let events = t.audit_events().await;
    let delivered = events
        .iter()
        .position(|e| {
            e.action == "file.delivered"
                && e.outcome == "ok"
                && e.bytes == Some(bytes.len() as i64)
                && e.subject.as_deref().is_some_and(|s| s.ends_with("/huge.bin"))
        })
        .expect("the transfer that finished while stopping is in the log");
    let stopped = events
        .iter()
        .position(|e| e.action == "portal.stopped")
        .expect("the stop is in the log");
    assert!(delivered < stopped);
    assert_eq!(events[stopped].reason, None, "no transfer was cut");
}
