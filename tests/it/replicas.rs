//! Several portal processes sharing one database and one object store behave
//! as one portal.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;

use crate::helpers::*;

/// A `weightgate serve` process on the test portal's database and objects.
struct Replica {
    base: String,
    child: Child,
}

impl Replica {
    async fn start(t: &TestApp) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_weightgate"))
            .arg("serve")
            .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
            .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
            .env("WEIGHTGATE_BIND", format!("127.0.0.1:{port}"))
            .env("WEIGHTGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let replica = Self { base, child };
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(replica.url("/healthz")).await
                && r.status() == StatusCode::OK
            {
                return replica;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica on port {port} did not start");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `url` (of any replica) moved to this replica.
    fn here(&self, url: &str) -> String {
        let path = url.splitn(4, '/').nth(3).unwrap_or("");
        format!("{}/{path}", self.base)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn csrf_of(client: &reqwest::Client, url: &str) -> String {
    csrf(&client.get(url).send().await.unwrap().text().await.unwrap())
}

both!(two_replicas_share_sessions_links_revocations_decisions_and_one_audit_chain);
async fn two_replicas_share_sessions_links_revocations_decisions_and_one_audit_chain() {
    let t = TestApp::spawn().await;
    let (a, b) = (Replica::start(&t).await, Replica::start(&t).await);

    // A reviewer signs in on one replica; the session works on the other.
    let reviewer = client();
    let token = csrf_of(&reviewer, &a.url("/admin/login")).await;
    let response = reviewer
        .post(a.url("/admin/login"))
        .form(&[
            ("authenticity_token", token.as_str()),
            ("email", REVIEWER),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.url().path(), "/admin");
    let response = reviewer.get(b.url("/admin/grants")).send().await.unwrap();
    assert_eq!(
        response.url().path(),
        "/admin/grants",
        "the session is honoured by the other replica"
    );

    // Two reviewers approve the same application on both replicas at once.
    t.apply_and_confirm("twice@uni.example.edu").await;
    let id = t.pending_application(&reviewer, "twice@uni.example.edu").await;
    let second = client();
    t.sign_in(&second).await;
    let (ta, tb) = (
        csrf_of(&reviewer, &a.url(&format!("/admin/applications/{id}"))).await,
        csrf_of(&second, &b.url(&format!("/admin/applications/{id}"))).await,
    );
    let approve = |c: &reqwest::Client, r: &Replica, token: String| {
        c.post(r.url(&format!("/admin/applications/{id}/approve")))
            .form(&[("authenticity_token", token), ("days", "30".into())])
            .send()
    };
    let (ra, rb) = tokio::join!(approve(&reviewer, &a, ta), approve(&second, &b, tb));
    let mut statuses = [ra.unwrap().status(), rb.unwrap().status()];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::CONFLICT],
        "exactly one approval wins"
    );
    let grants: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(grants, 1);

    // A link minted by one replica is honoured by the other.
    let mail = t.wait_for_mail("twice@uni.example.edu", "is approved").await;
    let access = a.here(&link_in(&mail, "/access/"));
    let links = t.download_links(&access).await;
    assert!(
        links.iter().all(|(_, url)| url.starts_with(&a.base)),
        "minted by replica a"
    );
    let (name, url) = &links[1];
    let expected = &t.files.iter().find(|(n, _)| n == name).unwrap().1;
    let body = t
        .client
        .get(b.here(url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256_hex(&body), sha256_hex(expected));

    // Many fetches on both replicas at once leave one unbroken chain.
    let fetches = (0..24).map(|i| {
        let target = if i % 2 == 0 { a.here(url) } else { b.here(url) };
        let client = t.client.clone();
        async move {
            client
                .get(target)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len()
        }
    });
    let sizes = futures_util::future::join_all(fetches).await;
    assert!(sizes.iter().all(|&n| n == expected.len()));
    let events = t.wait_for_events("file.delivered", 25).await;
    assert_eq!(events.len(), 25);
    let fetched = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "file.fetch")
        .count();
    assert_eq!(fetched, 25);
    let verified = t.app.verify_audit_log().await.unwrap();
    assert!(verified.is_intact(), "{verified:?}");

    // A key rotated by an operator: new links verify on a replica that has
    // not seen the key yet, and old links keep working.
    let out = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args(["keys", "rotate"])
        .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
        .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let old_kid = t.app.links.current_kid();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    t.app.links.reload().await.unwrap();
    assert_ne!(t.app.links.current_kid(), old_kid, "the new key signs");
    let fresh = t.download_links(&access.replace(&a.base, &t.base)).await;
    assert!(fresh[1].1.contains(&format!(".{}.", t.app.links.current_kid())));
    assert_eq!(
        t.client.get(b.here(&fresh[1].1)).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        t.client.get(a.here(url)).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Revoked on one replica, refused by the other at the next fetch.
    let grant_id = between(url, "/dl/", ".").to_owned();
    let token = csrf_of(&reviewer, &a.url("/admin/grants")).await;
    let response = reviewer
        .post(a.url(&format!("/admin/grants/{grant_id}/revoke")))
        .form(&[("authenticity_token", token.as_str()), ("reason", "Leaked")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = t.client.get(b.here(url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "grant_revoked");
}
