//! Faults: the object store or the database going away and coming back, a
//! store failing mid-stream, the data directory's disk filling up, the portal
//! killed (SIGKILL) during approvals and downloads. Each time the person
//! affected gets a clear answer, `/readyz` says what is wrong, the portal
//! recovers by itself, and nothing is lost, duplicated or half-done.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;

use crate::{helpers::*, storage::S3Server};

async fn readyz(base: &str) -> (StatusCode, serde_json::Value) {
    let response = client().get(format!("{base}/readyz")).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// Polls `/readyz` until it answers `want` (the portal recovers on its own).
async fn wait_ready(base: &str, want: StatusCode) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..150 {
        let (status, body) = readyz(base).await;
        if status == want {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("/readyz never answered {want}; last: {last}");
}

async fn chain_intact(t: &TestApp) {
    let verification = weightgate::audit::verify_chain(&t.app.db).await.unwrap();
    assert!(verification.is_intact(), "{:?}", verification.problems);
}

both! {
async fn the_object_store_going_away_or_failing_midway_is_reported_and_survived() {
    let s3 = S3Server::start().await;
    let gate = Gate::start(s3.endpoint.trim_start_matches("http://").parse().unwrap()).await;
    let endpoint = format!("http://{}", gate.addr);
    let t = TestApp::spawn_with(|c| {
        s3.configure(c);
        c.s3_endpoint = Some(endpoint.clone());
    })
    .await;
    let access = t.approved_researcher("store@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let url = |name: &str| links.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let expected = |name: &str| t.files.iter().find(|(n, _)| n == name).unwrap().1.clone();

    gate.close();
    let body = wait_ready(&t.base, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["database"], "ok");
    assert!(body["object_store"].as_str().unwrap().contains("unavailable"), "{body}");
    let refused = t.client.get(url("shard-0.bin")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "30");
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"], "unavailable");
    assert!(error["message"].as_str().unwrap().contains("file store"));
    assert!(!error["request_id"].as_str().unwrap().is_empty());

    gate.open();
    wait_ready(&t.base, StatusCode::OK).await;
    let body = t.client.get(url("shard-0.bin")).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), expected("shard-0.bin").as_slice());

    // The store drops the connection 100 kB into a 1 MiB file: the transfer
    // ends short, the log says so with the bytes that went out, and the
    // client finishes the file afterwards.
    gate.cut_next_after(100_000);
    let cut = t.client.get(url("shard-1.bin")).send().await.unwrap();
    let got = cut.bytes().await.map(|b| b.len()).unwrap_or(0);
    assert!(got < expected("shard-1.bin").len(), "the transfer was cut short");
    let aborted = t
        .wait_for_events("file.delivered", 2)
        .await
        .into_iter()
        .find(|e| e.outcome == "aborted")
        .expect("an aborted delivery is recorded");
    assert!(aborted.bytes.unwrap() < 1_048_577);

    let dir = t.dir.path().join("after-cut");
    let manifest = format!("{}/manifest.json", access.trim_end_matches('/'));
    let summary = weightgate::client::download(weightgate::client::Options {
        url: manifest,
        dir: dir.clone(),
        jobs: 2,
        include: Vec::new(),
        public_key: None,
        limit_rate: None,
        progress: false,
    })
    .await
    .unwrap();
    assert_eq!(summary.files, 3);
    for (name, bytes) in &t.files {
        assert_eq!(&std::fs::read(dir.join("r1").join(name)).unwrap(), bytes, "{name}");
    }
    chain_intact(&t).await;
}
}

/// The PostgreSQL server behind a gate, so that it can go away and come back.
/// (The embedded SQLite database cannot go away from under the portal.)
mod the_database_going_away_is_reported_and_survived {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        TEST_DB
            .scope(db, async {
                let gate = Gate::start("127.0.0.1:5432".parse().unwrap()).await;
                let t = TestApp::spawn_with(|c| {
                    let url = c.database_url.clone().unwrap();
                    let (scheme, rest) = url.split_once("://").unwrap();
                    let (auth, path) = rest.split_once('/').unwrap();
                    let user = auth
                        .rsplit_once('@')
                        .map(|(u, _)| format!("{u}@"))
                        .unwrap_or_default();
                    c.database_url = Some(format!("{scheme}://{user}{}/{path}", gate.addr));
                })
                .await;
                let access = t.approved_researcher("db@uni.example.edu").await;
                let links = t.download_links(&access).await;
                let applications = || async {
                    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM applications")
                        .fetch_one(t.app.db.pool())
                        .await
                };
                assert_eq!(applications().await.unwrap(), 1);
                // A researcher has the form open when the database goes away.
                let researcher = client();
                let (_, page) = t.get_html(&researcher, &format!("/models/{MODEL}")).await;

                gate.close();
                let body = wait_ready(&t.base, StatusCode::SERVICE_UNAVAILABLE).await;
                assert_ne!(body["database"], "ok", "{body}");
                assert_eq!(body["object_store"], "ok");

                // An application sent now is refused plainly, not half-stored.
                let sent = researcher
                    .post(t.url(&format!("/models/{MODEL}/apply")))
                    .header("accept", "text/html")
                    .form(&[
                        ("authenticity_token", csrf(&page).as_str()),
                        ("name", "Ada Lovelace"),
                        ("email", "during@uni.example.edu"),
                        ("affiliation", "Analytical Engines"),
                        ("intended_use", "Research"),
                        ("accept_terms", "on"),
                    ])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(sent.status(), StatusCode::SERVICE_UNAVAILABLE);
                let shown = sent.text().await.unwrap();
                assert!(shown.contains("nothing was saved"), "{shown}");
                let fetch = t.client.get(&links[0].1).send().await.unwrap();
                assert_eq!(
                    fetch.status(),
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no check, no bytes"
                );
                let error: serde_json::Value = fetch.json().await.unwrap();
                assert!(error["message"].as_str().unwrap().contains("database"), "{error}");

                gate.open();
                wait_ready(&t.base, StatusCode::OK).await;
                t.apply_and_confirm("after@uni.example.edu").await;
                assert_eq!(applications().await.unwrap(), 2, "the refused one was not stored");
                let again = t.client.get(&links[0].1).send().await.unwrap();
                assert_eq!(again.status(), StatusCode::OK);
                chain_intact(&t).await;
            })
            .await;
    }
}
