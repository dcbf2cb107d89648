//! Signed links: what they let through, what they refuse, and the audit trail.

use reqwest::{StatusCode, header};

use crate::helpers::*;

/// The token part of a `/dl/TOKEN/NAME` URL.
fn token_of(url: &str) -> &str {
    between(url, "/dl/", "/")
}

async fn refusal(t: &TestApp, url: &str) -> (StatusCode, serde_json::Value) {
    let response = t.client.get(url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

both!(a_range_request_returns_206_with_exactly_those_bytes);
async fn a_range_request_returns_206_with_exactly_those_bytes() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("ranges@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (name, url) = links.iter().find(|(n, _)| n == "shard-1.bin").unwrap();
    let bytes = &t.files.iter().find(|(n, _)| n == name).unwrap().1;

    let response = t
        .client
        .get(url)
        .header(header::RANGE, "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()[header::CONTENT_RANGE],
        format!("bytes 1000-1999/{}", bytes.len()).as_str()
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), &bytes[1000..2000]);

    // What `curl -C -` sends to resume a partial file.
    let response = t
        .client
        .get(url)
        .header(header::RANGE, "bytes=524288-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &bytes[524_288..]);

    let response = t
        .client
        .get(url)
        .header(header::RANGE, "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &bytes[bytes.len() - 10..]
    );

    let response = t
        .client
        .get(url)
        .header(header::RANGE, format!("bytes={}-", bytes.len() + 5))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        response.headers()[header::CONTENT_RANGE],
        format!("bytes */{}", bytes.len()).as_str()
    );

    let ranges: Vec<_> = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "file.fetch" && e.outcome == "ok")
        .map(|e| (e.range_start.unwrap(), e.range_end.unwrap()))
        .collect();
    let len = bytes.len() as i64;
    assert_eq!(
        ranges,
        vec![(1000, 1999), (524_288, len - 1), (len - 10, len - 1)]
    );
}

both!(tampered_expired_and_foreign_links_are_refused_and_audited);
async fn tampered_expired_and_foreign_links_are_refused_and_audited() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("links@uni.example.edu").await;
    let (name, url) = t.download_links(&access).await.remove(0);
    let token = token_of(&url).to_owned();
    let parts: Vec<&str> = token.split('.').collect();
    let (grant, file) = (parts[0], parts[1]);

    let mut sig: Vec<char> = parts[4].chars().collect();
    sig[0] = if sig[0] == 'A' { 'B' } else { 'A' };
    let tampered = format!(
        "{}.{}.{}.{}.{}",
        grant,
        file,
        parts[2],
        parts[3],
        sig.into_iter().collect::<String>()
    );
    let (status, body) = refusal(&t, &t.url(&format!("/dl/{tampered}/{name}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "bad_signature");
    assert!(!body["request_id"].as_str().unwrap().is_empty());

    let longer = format!(
        "{}.{}.{}.{}.{}",
        grant,
        file,
        parts[2].parse::<i64>().unwrap() + 3600,
        parts[3],
        parts[4]
    );
    let (status, body) = refusal(&t, &t.url(&format!("/dl/{longer}/{name}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["error"], "bad_signature",
        "an extended expiry breaks the signature"
    );

    let expired = t.app.links.sign(grant, file, 1_000);
    let (status, body) = refusal(&t, &t.url(&format!("/dl/{expired}/{name}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "link_expired");

    let (status, body) = refusal(&t, &t.url(&format!("/dl/garbage/{name}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "malformed_link");

    let foreign = t.app.links.sign(
        grant,
        "0123456789abcdef0123",
        weightgate::types::now_ms() / 1000 + 3600,
    );
    let (status, body) = refusal(&t, &t.url(&format!("/dl/{foreign}/{name}"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "file_not_in_grant");

    let response = t
        .client
        .get(t.url(&format!("/dl/{expired}/{name}")))
        .header(header::ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("This download link has expired"),
        "a browser gets a page: {page}"
    );

    // Refusals decided on the link alone are counted per client: the second
    // bad signature and the second expired link are in the summaries written
    // when the window ends.
    t.app.refusals.flush(&t.app.audit).await;
    let reasons: Vec<(String, Option<i64>)> = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "file.fetch" && e.outcome == "refused")
        .map(|e| (e.reason.unwrap(), e.occurrences))
        .collect();
    let reasons: Vec<(&str, Option<i64>)> = reasons.iter().map(|(r, n)| (r.as_str(), *n)).collect();
    assert_eq!(
        reasons,
        [
            ("bad_signature", None),
            ("link_expired", None),
            ("malformed_link", None),
            ("file_not_in_grant", None),
            ("bad_signature", Some(1)),
            ("link_expired", Some(1)),
        ]
    );
}

both!(a_revoked_grant_stops_its_links_at_the_next_fetch);
async fn a_revoked_grant_stops_its_links_at_the_next_fetch() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("revoked@uni.example.edu").await;
    let (_, url) = t.download_links(&access).await.remove(0);
    assert_eq!(t.client.get(&url).send().await.unwrap().status(), StatusCode::OK);

    let grant_id = token_of(&url).split('.').next().unwrap().to_owned();
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let response = t
        .post_form(
            &reviewer,
            "/admin/grants",
            &format!("/admin/grants/{grant_id}/revoke"),
            &[("reason", "Terms broken")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("revoked"));

    let (status, body) = refusal(&t, &url).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "grant_revoked");
    let mail = t.wait_for_mail("revoked@uni.example.edu", "was revoked").await;
    assert!(mail.contains("Terms broken"));
    let page = t.client.get(&access).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("This access was revoked: Terms broken"));
    assert!(!page.contains("/dl/"), "a revoked grant gets no links");

    let events = t.audit_events().await;
    let last_fetch = events.iter().rev().find(|e| e.action == "file.fetch").unwrap();
    assert_eq!(last_fetch.outcome, "refused");
    assert_eq!(last_fetch.reason.as_deref(), Some("grant_revoked"));
    assert_eq!(last_fetch.grant_id.as_deref(), Some(grant_id.as_str()));
    let revoked = events.iter().find(|e| e.action == "grant.revoked").unwrap();
    assert_eq!(revoked.actor.as_deref(), Some(REVIEWER));
}

both!(no_fetch_is_let_through_after_its_grant_is_revoked_in_the_log);
async fn no_fetch_is_let_through_after_its_grant_is_revoked_in_the_log() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("racing@uni.example.edu").await;
    let (_, url) = t.download_links(&access).await.remove(0);
    let grant_id = token_of(&url).split('.').next().unwrap().to_owned();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Clients fetch over and over until they are refused, while the grant is
    // revoked under them.
    let fetchers: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, served) = (t.client.clone(), url.clone(), served.clone());
            tokio::spawn(async move {
                loop {
                    let response = client.get(&url).send().await.unwrap();
                    match response.status() {
                        StatusCode::OK => {
                            response.bytes().await.unwrap();
                            served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        StatusCode::FORBIDDEN => {
                            let body: serde_json::Value = response.json().await.unwrap();
                            assert_eq!(body["error"], "grant_revoked");
                            return;
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
            })
        })
        .collect();
    while served.load(std::sync::atomic::Ordering::SeqCst) < 24 {
        tokio::task::yield_now().await;
    }
    weightgate::domain::grants::revoke(&t.app, &grant_id, "Leaked", REVIEWER, Default::default())
        .await
        .unwrap();
    for fetcher in fetchers {
        fetcher.await.unwrap();
    }

    let events = t.audit_events().await;
    let revoked = events.iter().find(|e| e.action == "grant.revoked").unwrap().seq;
    let fetches: Vec<_> = events
        .iter()
        .filter(|e| e.action == "file.fetch" && e.grant_id.as_deref() == Some(grant_id.as_str()))
        .collect();
    let let_through: Vec<_> = fetches.iter().filter(|e| e.outcome == "ok").collect();
    assert_eq!(
        let_through.len(),
        served.load(std::sync::atomic::Ordering::SeqCst)
    );
    for e in &let_through {
        assert!(
            e.seq < revoked,
            "fetch {} was let through after the revocation at {revoked}",
            e.seq
        );
    }
    let after: Vec<_> = fetches.iter().filter(|e| e.seq > revoked).collect();
    assert!(
        after.len() >= 8,
        "each client is refused once the grant is revoked"
    );
    for e in after {
        assert_eq!(
            (e.outcome.as_str(), e.reason.as_deref()),
            ("refused", Some("grant_revoked"))
        );
    }
    let v = t.app.verify_audit_log().await.unwrap();
    assert!(v.is_intact(), "{:?}", v.problems);
}

both!(an_interrupted_transfer_is_recorded_with_the_bytes_actually_sent);
async fn an_interrupted_transfer_is_recorded_with_the_bytes_actually_sent() {
    let t = TestApp::spawn().await;
    let big = t.dir.path().join("big");
    std::fs::create_dir_all(&big).unwrap();
    let size = 48 * 1024 * 1024;
    std::fs::write(big.join("huge.bin"), vec![7u8; size]).unwrap();
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
    let access = t.approved_researcher("partial@uni.example.edu").await;
    let (_, url) = t
        .download_links(&access)
        .await
        .into_iter()
        .find(|(n, _)| n == "huge.bin")
        .unwrap();

    let mut response = t.client.get(&url).send().await.unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(response);

    let delivered = t.wait_for_events("file.delivered", 1).await;
    assert_eq!(delivered[0].outcome, "aborted");
    let sent = delivered[0].bytes.unwrap();
    assert!(
        sent > 0 && (sent as usize) < size,
        "{sent} of {size} bytes recorded"
    );
}

both!(a_fetch_whose_audit_event_cannot_be_written_sends_no_bytes);
async fn a_fetch_whose_audit_event_cannot_be_written_sends_no_bytes() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("failclosed@uni.example.edu").await;
    let (_, url) = t.download_links(&access).await.remove(0);

    // The audit table refuses every new row, as a full disk would.
    let sqlite = matches!(t.app.db.backend(), weightgate::db::Backend::Sqlite);
    let statements: &[&str] = if sqlite {
        &[
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'no space left'); END",
        ]
    } else {
        &[
            "CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'no space left'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        ]
    };
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(t.app.db.pool())
            .await
            .unwrap();
    }
    let before = t.audit_events().await.len();

    let response = t.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("\"error\":\"unavailable\""),
        "an error body, not file bytes: {body}"
    );
    assert!(body.contains("nothing was sent"), "{body}");
    assert_eq!(t.audit_events().await.len(), before);

    let drop: &[&str] = if sqlite {
        &["DROP TRIGGER refuse_audit"]
    } else {
        &[
            "DROP TRIGGER refuse_audit ON audit_events",
            "DROP FUNCTION refuse_audit()",
        ]
    };
    for sql in drop {
        sqlx::query(sqlx::AssertSqlSafe(*sql))
            .execute(t.app.db.pool())
            .await
            .unwrap();
    }
    let response = t.client.get(&url).send().await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "fetches resume once the log accepts writes"
    );
    response.bytes().await.unwrap();
    assert!(t.app.verify_audit_log().await.unwrap().is_intact());
}

/// Publishes a 32 MiB file as release r2, big enough that its transfer
/// stays open while the test holds the response unread.
pub(crate) async fn publish_big(t: &TestApp) -> Vec<u8> {
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
    bytes
}

both!(transfers_under_way_count_against_the_quota);
async fn transfers_under_way_count_against_the_quota() {
    let t = TestApp::spawn().await;
    let big = publish_big(&t).await;
    let slug = MODEL.parse().unwrap();
    // One file, and 1 KiB more than the big one in bytes.
    weightgate::domain::models::set_quota(&t.app, &slug, Some(big.len() as u64 + 1024), Some(1), "test")
        .await
        .unwrap();
    let access = t.approved_researcher("busy@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let url = |name: &str| links.iter().find(|(n, _)| n == name).unwrap().1.clone();

    // The big file's transfer is under way, its bytes not yet delivered.
    let mut open = t.client.get(url("huge.bin")).send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    open.chunk().await.unwrap().unwrap();
    let (status, body) = refusal(&t, &url("shard-0.bin")).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a second file while the first is under way: {body}"
    );
    assert_eq!(body["error"], "quota_spent");
    // More of the same file is the same file: it is let through.
    let more = t
        .client
        .get(url("huge.bin"))
        .header(header::RANGE, "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(more.status(), StatusCode::PARTIAL_CONTENT);
    more.bytes().await.unwrap();

    // Once the big transfer is cut, what it took is all that counts.
    drop(open);
    t.wait_for_events("file.delivered", 2).await;
    let shard = t
        .client
        .get(url("shard-0.bin"))
        .header(header::RANGE, "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(
        shard.status(),
        StatusCode::PARTIAL_CONTENT,
        "nothing is under way any more"
    );
    shard.bytes().await.unwrap();
}

both!(a_fetch_that_would_pass_the_byte_quota_is_refused);
async fn a_fetch_that_would_pass_the_byte_quota_is_refused() {
    let t = TestApp::spawn().await;
    let slug = MODEL.parse().unwrap();
    let size0 = t.files[0].1.len() as u64;
    weightgate::domain::models::set_quota(&t.app, &slug, Some(size0 + 10), None, "test")
        .await
        .unwrap();
    let access = t.approved_researcher("bytes@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let url = |name: &str| links.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let first = t.client.get(url(&t.files[0].0)).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.bytes().await.unwrap();
    t.wait_for_events("file.delivered", 1).await;
    // Ten bytes are left: a whole second file is refused, ten bytes of it are not.
    let (status, body) = refusal(&t, &url(&t.files[1].0)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "quota_spent");
    let ten = t
        .client
        .get(url(&t.files[1].0))
        .header(header::RANGE, "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(ten.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ten.bytes().await.unwrap().len(), 10);
    t.wait_for_events("file.delivered", 2).await;
    let (status, _) = refusal(&t, &url(&t.files[1].0)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the quota is spent");
}

both!(archived_deliveries_still_count_against_the_quota);
async fn archived_deliveries_still_count_against_the_quota() {
    let t = TestApp::spawn().await;
    let slug = MODEL.parse().unwrap();
    let size0 = t.files[0].1.len() as u64;
    weightgate::domain::models::set_quota(&t.app, &slug, Some(size0 + 20), None, "test")
        .await
        .unwrap();
    let access = t.approved_researcher("archived@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let url = |name: &str| links.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let ranged = |range: &'static str| {
        t.client
            .get(url(&t.files[1].0))
            .header(header::RANGE, range)
            .send()
    };
    let first = t.client.get(url(&t.files[0].0)).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    first.bytes().await.unwrap();
    let ten = ranged("bytes=0-9").await.unwrap();
    assert_eq!(ten.status(), StatusCode::PARTIAL_CONTENT);
    ten.bytes().await.unwrap();
    t.wait_for_events("file.delivered", 2).await;

    // Every delivery so far leaves the database for the archive.
    let (ok, _, err) = crate::cli::weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = crate::cli::weightgate(&t, &["audit", "archive", "--before", "2099-01-01"], None);
    assert!(ok, "{err}");
    assert!(out.contains("archived events 1 to"), "{out}");
    let (live,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log WHERE action = 'file.delivered'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(live, 0);

    // Ten bytes are left, as before the archive: a whole file is refused,
    // ten more bytes are not, and then nothing is.
    let (status, body) = refusal(&t, &url(&t.files[1].0)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "quota_spent");
    let more = ranged("bytes=10-19").await.unwrap();
    assert_eq!(more.status(), StatusCode::PARTIAL_CONTENT);
    more.bytes().await.unwrap();
    t.wait_for_events("file.delivered", 1).await;
    let (status, _) = refusal(&t, &url(&t.files[2].0)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the byte quota is spent");

    // A file quota counts the archived coverage: the first file is held.
    weightgate::domain::models::set_quota(&t.app, &slug, None, Some(1), "test")
        .await
        .unwrap();
    let (status, body) = refusal(&t, &url(&t.files[2].0)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "quota_spent");
    let again = t.client.get(url(&t.files[0].0)).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "a file held may be fetched again");
}

both!(if_range_keeps_a_range_only_for_the_version_the_client_has);
async fn if_range_keeps_a_range_only_for_the_version_the_client_has() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("ifrange@uni.example.edu").await;
    let (name, url) = t.download_links(&access).await.remove(0);
    let bytes = &t.files.iter().find(|(n, _)| *n == name).unwrap().1;
    let etag = t.client.get(&url).send().await.unwrap().headers()[header::ETAG]
        .to_str()
        .unwrap()
        .to_owned();
    let ask = |if_range: &str| {
        t.client
            .get(&url)
            .header(header::RANGE, "bytes=0-9")
            .header(header::IF_RANGE, if_range)
            .send()
    };
    let same = ask(&etag).await.unwrap();
    assert_eq!(same.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(same.bytes().await.unwrap().as_ref(), &bytes[..10]);
    for other in ["\"0000\"", &format!("W/{etag}"), "Wed, 21 Oct 2015 07:28:00 GMT"] {
        let whole = ask(other).await.unwrap();
        assert_eq!(whole.status(), StatusCode::OK, "{other}");
        assert_eq!(whole.bytes().await.unwrap().as_ref(), bytes.as_slice(), "{other}");
    }
}

both!(a_download_whose_reader_stops_is_dropped_and_logged_as_aborted);
async fn a_download_whose_reader_stops_is_dropped_and_logged_as_aborted() {
    let t = TestApp::spawn_with(|c| c.stall_timeout = std::time::Duration::from_secs(2)).await;
    let big = publish_big(&t).await;
    let access = t.approved_researcher("stalled@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (_, url) = links.iter().find(|(n, _)| n == "huge.bin").unwrap();
    let mut stalled = t.client.get(url).send().await.unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    stalled.chunk().await.unwrap().unwrap();
    // The client holds the response and reads nothing more.
    let mut aborted = None;
    for _ in 0..120 {
        aborted = t.audit_events().await.into_iter().find(|e| {
            e.action == "file.delivered" && e.subject.as_deref().is_some_and(|s| s.ends_with("/huge.bin"))
        });
        if aborted.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let aborted = aborted.expect("the stalled transfer was dropped and logged");
    assert_eq!(aborted.outcome, "aborted");
    assert!(aborted.bytes.unwrap() < big.len() as i64, "{:?}", aborted.bytes);
    drop(stalled);
}
