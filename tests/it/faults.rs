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
    let verification = t.app.verify_audit_log().await.unwrap();
    assert!(verification.is_intact(), "{:?}", verification.problems);
}

both!(the_object_store_going_away_or_failing_midway_is_reported_and_survived);
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
    let other = t.approved_researcher("leaker@uni.example.edu").await;
    let other_link = t.download_links(&other).await.remove(0).1;
    let other_grant: String = sqlx::query_scalar(
        "SELECT g.id FROM grants g JOIN researchers r ON r.id = g.researcher_id WHERE r.email = 'leaker@uni.example.edu'",
    )
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();

    gate.close();
    let body = wait_ready(&t.base, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["database"], "ok");
    assert!(
        body["object_store"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    let refused = t.client.get(url("shard-0.bin")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "30");
    let error: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(error["error"], "unavailable");
    assert!(error["message"].as_str().unwrap().contains("file store"));
    assert!(!error["request_id"].as_str().unwrap().is_empty());
    // The fetch was let through and logged; the log says nothing was delivered.
    let failed = t.wait_for_events("file.delivered", 1).await;
    assert_eq!(failed[0].reason.as_deref(), Some("store_failed"));
    assert_eq!(
        (failed[0].outcome.as_str(), failed[0].bytes),
        ("aborted", Some(0))
    );
    // A refusal is a refusal, and is logged, whatever the store's state.
    weightgate::domain::grants::revoke(&t.app, &other_grant, "Leaked", "test", Default::default())
        .await
        .unwrap();
    let revoked = t.client.get(&other_link).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::FORBIDDEN);
    let error: serde_json::Value = revoked.json().await.unwrap();
    assert_eq!(error["error"], "grant_revoked");
    assert!(
        t.audit_events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("grant_revoked"))
    );

    gate.open();
    wait_ready(&t.base, StatusCode::OK).await;
    let body = t
        .client
        .get(url("shard-0.bin"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), expected("shard-0.bin").as_slice());

    // A slow store: /readyz says it does not answer in time, yet a download
    // still arrives whole, only later; at full speed again, all is ready.
    gate.slow_down(Duration::from_millis(3500));
    let (status, body) = readyz(&t.base).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["object_store"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{body}"
    );
    let slow = t.client.get(url("shard-2.bin")).send().await.unwrap();
    assert_eq!(slow.status(), StatusCode::OK);
    assert_eq!(
        slow.bytes().await.unwrap().as_ref(),
        expected("shard-2.bin").as_slice()
    );
    gate.slow_down(Duration::ZERO);
    wait_ready(&t.base, StatusCode::OK).await;

    // The store drops the connection 100 kB into a 1 MiB file: the transfer
    // ends short, the log says so with the bytes that went out, and the
    // client finishes the file afterwards.
    gate.cut_next_after(100_000);
    let cut = t.client.get(url("shard-1.bin")).send().await.unwrap();
    let got = cut.bytes().await.map(|b| b.len()).unwrap_or(0);
    assert!(got < expected("shard-1.bin").len(), "the transfer was cut short");
    let aborted = t
        .wait_for_events("file.delivered", 3)
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
        model_signing_key: None,
        limit_rate: None,
        progress: false,
    })
    .await
    .unwrap();
    assert_eq!(summary.files, 3);
    for (name, bytes) in &t.files {
        assert_eq!(
            &std::fs::read(dir.join("r1").join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    chain_intact(&t).await;
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
        // The server the test database lives on, host:port from its URL.
        let TestDb::Postgres(url) = &db else {
            unreachable!()
        };
        let authority = url.split_once("://").unwrap().1.split('/').next().unwrap();
        let server = authority
            .rsplit_once('@')
            .map_or(authority, |(_, hp)| hp)
            .to_owned();
        let server = if server.contains(':') {
            server
        } else {
            format!("{server}:5432")
        };
        let upstream = tokio::net::lookup_host(server).await.unwrap().next().unwrap();
        TEST_DB
            .scope(db, async {
                let gate = Gate::start(upstream).await;
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

/// A `weightgate serve` process on the test portal's data, on a fixed port
/// so that it can be killed and started again at the same address.
struct Portal {
    base: String,
    child: Child,
}

impl Portal {
    async fn start(t: &TestApp, port: u16) -> Self {
        let base = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_weightgate"))
            .arg("serve")
            .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
            .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
            .env("WEIGHTGATE_BIND", format!("127.0.0.1:{port}"))
            .env("WEIGHTGATE_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
                && r.status() == StatusCode::OK
            {
                return Self { base, child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the portal on port {port} did not start");
    }

    /// SIGKILL: no shutdown, no flushing, no goodbye.
    fn kill(self) {
        drop(self);
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn sign_in_at(base: &str, reviewer: &reqwest::Client) {
    let page = reviewer
        .get(format!("{base}/admin/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = reviewer
        .post(format!("{base}/admin/login"))
        .form(&[
            ("authenticity_token", csrf(&page).as_str()),
            ("email", REVIEWER),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.url().path(), "/admin");
}

/// Waits until the database has finished with a killed portal's sessions: a
/// COMMIT it sent just before dying may still be applied.
async fn settle(t: &TestApp) {
    if t.app.db.backend() != weightgate::db::Backend::Postgres {
        return;
    }
    for _ in 0..200 {
        let busy: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()
             AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')",
        )
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
        if busy == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the killed portal's database sessions never ended");
}

/// Everything an approval writes, for one application: status, grants,
/// reviews, queued e-mails, audit events.
async fn traces_of_approval(t: &TestApp, id: &str, email: &str) -> (String, [i64; 5]) {
    let pool = t.app.db.pool();
    let count = |sql: &'static str, arg: String| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(arg)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let status: String = sqlx::query_scalar("SELECT status FROM applications WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    (
        status,
        [
            count(
                "SELECT COUNT(*) FROM grants WHERE application_id = $1",
                id.to_owned(),
            )
            .await,
            count(
                "SELECT COUNT(*) FROM reviews WHERE application_id = $1",
                id.to_owned(),
            )
            .await,
            count(
                "SELECT COUNT(*) FROM outbox WHERE subject LIKE '%is approved%' AND to_addr = $1",
                email.to_owned(),
            )
            .await,
            count(
                "SELECT COUNT(*) FROM audit_log WHERE action = 'review.approved' AND application_id = $1",
                id.to_owned(),
            )
            .await,
            count(
                "SELECT COUNT(*) FROM audit_log WHERE action = 'grant.created' AND application_id = $1",
                id.to_owned(),
            )
            .await,
        ],
    )
}

both!(a_portal_killed_during_approvals_leaves_each_one_whole_or_not_at_all);
async fn a_portal_killed_during_approvals_leaves_each_one_whole_or_not_at_all() {
    let t = TestApp::spawn().await;
    let delays_ms = [0u64, 1, 2, 4, 8, 15];
    let mut pending = Vec::new();
    for i in 0..delays_ms.len() {
        let email = format!("kill{i}@uni.example.edu");
        t.apply_and_confirm(&email).await;
        let admin = client();
        t.sign_in(&admin).await;
        pending.push((t.pending_application(&admin, &email).await, email));
    }
    let port = free_port();
    let mut outcomes = Vec::new();
    for ((id, email), delay) in pending.iter().zip(delays_ms) {
        let portal = Portal::start(&t, port).await;
        let reviewer = client();
        sign_in_at(&portal.base, &reviewer).await;
        let page_url = format!("{}/admin/applications/{id}", portal.base);
        let page = reviewer
            .get(&page_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let approve = reviewer
            .post(format!("{page_url}/approve"))
            .form(&[("authenticity_token", csrf(&page)), ("days", "30".into())])
            .send();
        let racing = tokio::spawn(approve);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        portal.kill();
        let _ = racing.await;
        settle(&t).await;
        let (status, traces) = traces_of_approval(&t, id, email).await;
        match status.as_str() {
            "approved" => assert_eq!(traces, [1; 5], "an approval is whole: {id}"),
            "pending" => assert_eq!(traces, [0; 5], "or it never happened: {id}"),
            other => panic!("{id} is {other}"),
        }
        outcomes.push(status);
    }
    // Back up, the portal decides what the killed ones left open.
    let portal = Portal::start(&t, port).await;
    let reviewer = client();
    sign_in_at(&portal.base, &reviewer).await;
    for ((id, email), status) in pending.iter().zip(&outcomes) {
        if status == "pending" {
            let page_url = format!("{}/admin/applications/{id}", portal.base);
            let page = reviewer
                .get(&page_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let done = reviewer
                .post(format!("{page_url}/approve"))
                .form(&[("authenticity_token", csrf(&page)), ("days", "30".into())])
                .send()
                .await
                .unwrap();
            assert_eq!(done.status(), StatusCode::OK);
        }
        assert_eq!(
            traces_of_approval(&t, id, email).await,
            ("approved".into(), [1; 5])
        );
    }
    portal.kill();
    chain_intact(&t).await;
}

both!(a_download_cut_by_a_killed_portal_resumes_once_the_portal_is_back);
async fn a_download_cut_by_a_killed_portal_resumes_once_the_portal_is_back() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("resume@uni.example.edu").await;
    let port = free_port();
    let portal = Portal::start(&t, port).await;
    let token = access.rsplit('/').next().unwrap().to_owned();
    let dir = t.dir.path().join("resumed");
    let download = tokio::spawn(weightgate::client::download(weightgate::client::Options {
        url: format!("{}/access/{token}/manifest.json", portal.base),
        dir: dir.clone(),
        jobs: 1,
        include: Vec::new(),
        public_key: None,
        model_signing_key: None,
        // Slow enough to be midway through when the portal dies.
        limit_rate: Some(256 * 1024),
        progress: false,
    }));
    let delivered = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_log WHERE action = 'file.fetch'")
            .fetch_one(t.app.db.pool())
            .await
            .unwrap()
    };
    for _ in 0..200 {
        if delivered().await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    portal.kill();
    assert!(
        !download.is_finished(),
        "the download was still running when the portal died"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let portal = Portal::start(&t, port).await;
    let summary = download.await.unwrap().unwrap();
    assert_eq!(summary.files, 3);
    for (name, bytes) in &t.files {
        assert_eq!(
            &std::fs::read(dir.join("r1").join(name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    portal.kill();
    chain_intact(&t).await;
}

/// A small tmpfs mounted for the test's data directory, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    /// `None` (said loudly; a failure under CI) when this machine does not
    /// let the tests mount a filesystem.
    fn mount(path: std::path::PathBuf, size: &str) -> Option<Self> {
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the disk-full scenario: it needs to mount a tmpfs (root)"
            );
            eprintln!("\n*** disk-full scenario NOT RUN: cannot mount a tmpfs here (needs root). ***\n");
            return None;
        }
        Some(Self { path })
    }

    /// Writes one file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("{e}"),
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

both!(a_full_data_disk_is_reported_loses_nothing_and_passes_when_space_returns);
async fn a_full_data_disk_is_reported_loses_nothing_and_passes_when_space_returns() {
    let objects = tempfile::tempdir().unwrap();
    let mount_at = std::env::temp_dir().join(format!("wg-disk-{}-{}", std::process::id(), free_port()));
    let Some(disk) = SmallDisk::mount(mount_at.clone(), "16m") else {
        return;
    };
    let objects_url = format!("file://{}", objects.path().display());
    let t = TestApp::spawn_with(|c| {
        c.data_dir = mount_at.clone();
        c.storage_url = Some(objects_url.clone());
    })
    .await;
    let access = t.approved_researcher("full@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let researcher = client();
    let (_, page) = t.get_html(&researcher, &format!("/models/{MODEL}")).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM applications WHERE name = 'Disk Full'")
            .fetch_one(t.app.db.pool())
            .await
            .unwrap()
    };

    let filler = disk.fill();
    let body = wait_ready(&t.base, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body["disk"].as_str().unwrap().contains("full"), "{body}");

    // The application is either refused plainly or stored whole; its
    // confirmation e-mail waits in the outbox until it can be written.
    let sent = researcher
        .post(t.url(&format!("/models/{MODEL}/apply")))
        .header("accept", "text/html")
        .form(&[
            ("authenticity_token", csrf(&page).as_str()),
            ("name", "Disk Full"),
            ("email", "during-full@uni.example.edu"),
            ("affiliation", "Storage Lab"),
            ("intended_use", "Research"),
            ("accept_terms", "on"),
        ])
        .send()
        .await
        .unwrap();
    let stored = match sent.status() {
        StatusCode::OK => true,
        StatusCode::SERVICE_UNAVAILABLE => {
            assert!(sent.text().await.unwrap().contains("nothing was saved"));
            false
        }
        other => panic!("an application on a full disk got {other}"),
    };
    assert_eq!(count().await, i64::from(stored));
    // A fetch sends its bytes only with its audit event written.
    let before = t.audit_events().await.len();
    let fetch = t.client.get(&links[0].1).send().await.unwrap();
    match fetch.status() {
        StatusCode::OK => assert!(t.audit_events().await.len() > before),
        StatusCode::SERVICE_UNAVAILABLE => {}
        other => panic!("a fetch on a full disk got {other}"),
    }

    std::fs::remove_file(filler).unwrap();
    wait_ready(&t.base, StatusCode::OK).await;
    if stored {
        // The e-mail that could not be written goes out now (after the outbox's backoff).
        let mut arrived = false;
        for _ in 0..150 {
            let outbox = std::fs::read_dir(t.outbox()).unwrap();
            if outbox.flatten().any(|f| {
                std::fs::read_to_string(f.path()).is_ok_and(|m| m.contains("To: during-full@uni.example.edu"))
            }) {
                arrived = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            arrived,
            "the confirmation e-mail was delivered once there was room"
        );
    }
    // Applications work again once there is room: at once, or after the
    // database has finished recovering from the failed writes.
    let mut last = (StatusCode::OK, String::new());
    for attempt in 0..20 {
        last = t
            .apply(
                &client(),
                &[
                    ("name", "After Full"),
                    ("email", &format!("after-full-{attempt}@uni.example.edu")),
                    ("affiliation", "Storage Lab"),
                    ("intended_use", "Research"),
                    ("accept_terms", "on"),
                ],
            )
            .await;
        if last.0 == StatusCode::OK {
            break;
        }
        eprintln!(
            "application after the disk was freed: {} (attempt {attempt})",
            last.0
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        last.0,
        StatusCode::OK,
        "applications work again once there is room: {}",
        last.1
    );
    let accepted: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applications WHERE name = 'After Full'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(accepted, 1, "a refused attempt stores nothing");
    assert!(std::fs::read_dir(t.outbox()).unwrap().count() > 0);
    chain_intact(&t).await;
    drop(t);
    drop(disk);
}

both!(a_download_that_fills_the_disk_stops_with_the_reason_and_resumes_once_there_is_room);
async fn a_download_that_fills_the_disk_stops_with_the_reason_and_resumes_once_there_is_room() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("roomy@uni.example.edu").await;
    let dir = std::env::temp_dir().join(format!("wg-dl-disk-{}-{}", std::process::id(), free_port()));
    let Some(disk) = SmallDisk::mount(dir.clone(), "16m") else {
        return;
    };
    let options = |rate| weightgate::client::Options {
        url: access.clone(),
        dir: dir.clone(),
        jobs: 1,
        include: vec!["shard-1.bin".into()],
        public_key: None,
        model_signing_key: None,
        limit_rate: rate,
        progress: false,
    };
    let download = tokio::spawn(weightgate::client::download(options(Some(256 * 1024))));
    let started = crate::client::wait_for_verified(&dir, "shard-1.bin", 1).await;
    assert!(started >= 1, "the download got going");
    let filler = disk.fill();
    let err = tokio::time::timeout(Duration::from_secs(60), download)
        .await
        .expect("the client stops once the disk is full")
        .unwrap()
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("No space left on device") && message.contains("shard-1.bin"),
        "{message}"
    );
    assert!(
        !dir.join("r1/shard-1.bin").exists(),
        "no incomplete file under the final name"
    );

    std::fs::remove_file(filler).unwrap();
    let summary = weightgate::client::download(options(None)).await.unwrap();
    assert_eq!(summary.files, 1);
    assert_eq!(
        sha256_hex(&std::fs::read(dir.join("r1/shard-1.bin")).unwrap()),
        sha256_hex(&t.files.iter().find(|(n, _)| n == "shard-1.bin").unwrap().1)
    );
    drop(disk);
}
