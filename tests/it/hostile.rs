//! Hostile input: what a script or an attacker sends to every form and
//! endpoint. Each case gets a clear error, or is stored literally and shown
//! escaped; after each scenario the portal still answers and the audit log
//! is whole. `docs/hostile-input.md` lists what is tried here.

use std::collections::HashSet;

use reqwest::{Client, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weightgate::{
    domain::models,
    storage::{LocalDir, ObjectStore},
    types::Slug,
};

use crate::{cli::weightgate, helpers::*};

/// The portal still answers and its audit log verifies.
pub(crate) async fn still_whole(t: &TestApp) {
    let health = t.client.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let verification = t.app.verify_audit_log().await.unwrap();
    assert!(verification.is_intact(), "{verification:?}");
}

/// Sends `request` as raw bytes, so that nothing on the way normalises the
/// path, and returns the status and the body.
async fn raw(t: &TestApp, request: &str) -> (u16, String) {
    let addr = t.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

async fn raw_get(t: &TestApp, path: &str) -> (u16, String) {
    raw(
        t,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: portal\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

/// Every e-mail in the outbox, raw.
fn outbox_mails(t: &TestApp) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(t.outbox()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

/// The header names of a raw e-mail, folded lines joined to their header.
fn header_names(raw: &str) -> Vec<String> {
    let head = raw.split("\r\n\r\n").next().unwrap();
    head.split("\r\n")
        .filter(|line| !line.starts_with([' ', '\t']))
        .map(|line| line.split_once(':').map_or(line, |(n, _)| n).to_owned())
        .collect()
}

/// Every e-mail has exactly the headers the portal writes, once each, and
/// one recipient.
fn assert_plain_headers(t: &TestApp) {
    let expected: HashSet<&str> = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]
    .into();
    let mails = outbox_mails(t);
    assert!(!mails.is_empty());
    for mail in mails {
        let names = header_names(&mail);
        let unique: HashSet<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(unique.len(), names.len(), "a header repeats in:\n{mail}");
        assert!(
            unique.is_subset(&expected),
            "unexpected headers {names:?} in:\n{mail}"
        );
        let to = mail.split("\r\n").find(|l| l.starts_with("To: ")).unwrap();
        assert!(!to.contains(','), "several recipients in {to}");
    }
}

/// The fields of an application form.
type Fields<'a> = Vec<(&'a str, &'a str)>;

fn filled<'a>(name: &'a str, email: &'a str, affiliation: &'a str, intended_use: &'a str) -> Fields<'a> {
    vec![
        ("name", name),
        ("email", email),
        ("affiliation", affiliation),
        ("intended_use", intended_use),
        ("accept_terms", "on"),
    ]
}

/// Signs a researcher in by an e-mailed link; returns the signed-in client.
async fn researcher_session(t: &TestApp, email: &str) -> Client {
    let browser = client();
    let response = t
        .post_form(&browser, "/signin", "/signin", &[("email", email)])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mail = t.wait_for_mail(email, "sign-in link").await;
    let link = link_in(&mail, "/signin/");
    let response = t.post_form(&browser, &link, &link, &[]).await;
    assert_eq!(response.url().path(), "/me");
    browser
}

async fn application_count(t: &TestApp) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM applications")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap()
}

both!(over_long_fields_get_a_clear_error_and_store_nothing);
async fn over_long_fields_get_a_clear_error_and_store_nothing() {
    let t = TestApp::spawn().await;
    let long = |n: usize| "x".repeat(n);
    let (name, affiliation, intended_use) = (long(201), long(301), long(5001));
    let email = format!("{}@example.org", long(250));
    let cases: [(&str, Fields, &str); 4] = [
        (
            "name",
            filled(&name, "a@example.org", "Lab", "Research"),
            "Your name has at most 200 characters",
        ),
        (
            "affiliation",
            filled("Ada", "a@example.org", &affiliation, "Research"),
            "Affiliation has at most 300 characters",
        ),
        (
            "intended_use",
            filled("Ada", "a@example.org", "Lab", &intended_use),
            "Intended use has at most 5000 characters",
        ),
        (
            "email",
            filled("Ada", &email, "Lab", "Research"),
            "at most 254 characters",
        ),
    ];
    for (field, fields, message) in cases {
        let (status, page) = t.apply(&t.client, &fields).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert!(page.contains(message), "{field}: {message:?} not on the page");
    }
    assert_eq!(application_count(&t).await, 0);

    let (_, page) = t.get_html(&t.client, "/signin").await;
    let response = t
        .client
        .post(t.url("/signin"))
        .form(&[
            ("authenticity_token", csrf(&page).as_str()),
            ("email", email.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The reviewer's side: a question, a denial and a revocation too long.
    t.apply_and_confirm("long@example.org").await;
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, "long@example.org").await;
    let page = format!("/admin/applications/{id}");
    let ask = t
        .post_form(
            &reviewer,
            &page,
            &format!("{page}/ask"),
            &[("message", &long(5001))],
        )
        .await;
    assert_eq!(ask.status(), StatusCode::BAD_REQUEST);
    let deny = t
        .post_form(
            &reviewer,
            &page,
            &format!("{page}/deny"),
            &[("reason", &long(2001))],
        )
        .await;
    assert_eq!(deny.status(), StatusCode::BAD_REQUEST);
    let status: String = sqlx::query_scalar("SELECT status FROM applications WHERE id = $1")
        .bind(&id)
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(status, "pending", "nothing was decided");

    let password = long(5000);
    let (_, login) = t.get_html(&t.client, "/admin/login").await;
    let response = t
        .client
        .post(t.url("/admin/login"))
        .form(&[
            ("authenticity_token", csrf(&login).as_str()),
            ("email", REVIEWER),
            ("password", password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    still_whole(&t).await;
}

both!(control_characters_are_refused_and_never_reach_a_mail_header);
async fn control_characters_are_refused_and_never_reach_a_mail_header() {
    let t = TestApp::spawn().await;
    let injections = [
        (
            "name",
            filled(
                "Ada\r\nBcc: victim@example.org",
                "a@example.org",
                "Lab",
                "Research",
            ),
        ),
        (
            "name",
            filled("Ada\u{1b}[31m", "a@example.org", "Lab", "Research"),
        ),
        (
            "affiliation",
            filled("Ada", "a@example.org", "Lab\nX-Evil: 1", "Research"),
        ),
        (
            "email",
            filled(
                "Ada",
                "a@example.org\r\nBcc: victim@example.org",
                "Lab",
                "Research",
            ),
        ),
        (
            "email",
            filled("Ada", "a@example.org\nCc:victim@example.org", "Lab", "Research"),
        ),
        (
            "intended_use",
            filled("Ada", "a@example.org", "Lab", "bell \u{7} and delete \u{7f}"),
        ),
    ];
    for (field, fields) in injections {
        let (status, _) = t.apply(&t.client, &fields).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {fields:?}");
    }
    assert_eq!(application_count(&t).await, 0);

    // Line breaks belong in the intended use; they stay in the body.
    let (status, _) = t
        .apply(
            &t.client,
            &filled(
                "Ada",
                "ada@example.org",
                "Lab",
                "Line one\r\nBcc: victim@example.org\r\n\r\nLine three",
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    t.wait_for_mail("ada@example.org", "Confirm your application")
        .await;

    // A reviewer's denial with header-like lines goes in the body only.
    t.apply_and_confirm("grace@example.org").await;
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, "grace@example.org").await;
    let page = format!("/admin/applications/{id}");
    let deny = t
        .post_form(
            &reviewer,
            &page,
            &format!("{page}/deny"),
            &[("reason", "No.\r\nBcc: victim@example.org\r\nSubject: hijacked")],
        )
        .await;
    assert_eq!(deny.status(), StatusCode::OK);
    let denial = t.wait_for_mail("grace@example.org", "was not approved").await;
    assert!(
        denial.contains("Bcc: victim@example.org"),
        "the reason is kept in the body"
    );

    // Model titles go into subjects, so they are one line.
    let slug: Slug = "crlf-model".parse().unwrap();
    let err = models::create(&t.app, &slug, "Title\r\nBcc: victim@example.org", "Terms", "test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one line"), "{err:#}");

    // NUL, which PostgreSQL cannot store, is refused before any handler.
    let (_, login) = t.get_html(&t.client, "/admin/login").await;
    let response = t
        .client
        .post(t.url("/admin/login"))
        .header("accept", "application/json")
        .form(&[
            ("authenticity_token", csrf(&login).as_str()),
            ("email", "reviewer\0@lab.example.org"),
            ("password", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("NUL"), "{body}");
    let (status, _) = t.get_html(&reviewer, "/admin?q=%00").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = t.get_html(&reviewer, "/admin/audit?q=a%00b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert_plain_headers(&t);
    still_whole(&t).await;
}

both!(lookalike_and_odd_email_addresses_are_normalised_or_refused_on_the_form);
async fn lookalike_and_odd_email_addresses_are_normalised_or_refused_on_the_form() {
    let t = TestApp::spawn().await;
    let accepted = [
        ("  Ada@Example.ORG ", "ada@example.org"),
        ("ada@b\u{fc}cher.example", "ada@xn--bcher-kva.example"),
        ("eve@ex\u{430}mple.org", "eve@xn--exmple-4nf.org"),
        ("ada@\u{ff45}xample.net", "ada@example.net"),
    ];
    for (typed, stored) in accepted {
        let (status, page) = t.apply(&client(), &filled("Ada", typed, "Lab", "Research")).await;
        assert_eq!(status, StatusCode::OK, "{typed}");
        assert!(page.contains("Check your e-mail"), "{typed}");
        // The confirmation goes to the address as stored.
        t.wait_for_mail(stored, "Confirm your application").await;
    }
    let refused = [
        "\u{430}da@example.org",
        "ada\u{ff20}example.org",
        "ada\u{200b}@example.org",
        "ada@example.org.",
        "\"ada lovelace\"@example.org",
        "ada@[192.0.2.1]",
        "ada@192.0.2.1",
        "Ada <ada@example.org>",
        "ada@example.org,eve@example.org",
    ];
    for typed in refused {
        let (status, _) = t.apply(&client(), &filled("Ada", typed, "Lab", "Research")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{typed:?} was accepted");
    }
    assert_eq!(application_count(&t).await, accepted.len() as i64);
    assert_plain_headers(&t);
    still_whole(&t).await;
}

const SCRIPT: &str = "<script>alert('x')</script>";
const IMG: &str = "\"><img src=x onerror=alert(1)>";
const SQL: &str = "Robert'); DROP TABLE applications; -- 100% _sure_ \\";

fn assert_escaped(page: &str, place: &str) {
    for raw in ["<script>", "<img src=x"] {
        assert!(!page.contains(raw), "{raw} unescaped on {place}");
    }
}

both!(html_script_and_sql_in_text_fields_are_stored_literally_and_shown_escaped);
async fn html_script_and_sql_in_text_fields_are_stored_literally_and_shown_escaped() {
    let t = TestApp::spawn().await;
    let email = "mallory@example.org";
    let browser = client();
    let (status, submitted) = t.apply(&browser, &filled(SCRIPT, email, IMG, SQL)).await;
    assert_eq!(status, StatusCode::OK);
    assert_escaped(&submitted, "the submitted page");
    let mail = t.wait_for_mail(email, "Confirm your application").await;
    assert!(mail.contains(SCRIPT), "e-mails are text: the name is as typed");
    assert!(mail.contains("Content-Type: text/plain"));
    let confirm = link_in(&mail, "/confirm/");
    t.post_form(&browser, &confirm, &confirm, &[]).await;

    let (name, affiliation, intended_use): (String, String, String) =
        sqlx::query_as("SELECT name, affiliation, intended_use FROM applications")
            .fetch_one(t.app.db.pool())
            .await
            .unwrap();
    assert_eq!(
        (name.as_str(), affiliation.as_str(), intended_use.as_str()),
        (SCRIPT, IMG, SQL)
    );

    let reviewer = client();
    t.sign_in(&reviewer).await;
    let (_, queue) = t.get_html(&reviewer, "/admin").await;
    assert_escaped(&queue, "the queue");
    assert!(unescape(&queue).contains(SCRIPT), "the name is shown, escaped");
    assert!(
        unescape(&queue).contains(IMG),
        "the affiliation is shown, escaped"
    );
    // SQL in a search is a search for that text.
    let (status, found) = t
        .get_html(&reviewer, "/admin?q=%27%29%3B+DROP+TABLE+applications%3B+--")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(found.contains(email), "the literal text is found");
    let (status, none) = t.get_html(&reviewer, "/admin?q=%27+OR+%271%27%3D%271").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!none.contains(email), "a quote does not widen the search");

    let id = t.pending_application(&reviewer, email).await;
    let page = format!("/admin/applications/{id}");
    let (_, shown) = t.get_html(&reviewer, &page).await;
    assert_escaped(&shown, "the application page");
    assert!(
        unescape(&shown).contains(SQL),
        "the intended use is shown as typed"
    );

    let ask = t
        .post_form(&reviewer, &page, &format!("{page}/ask"), &[("message", IMG)])
        .await;
    assert_eq!(ask.status(), StatusCode::OK);
    let me = researcher_session(&t, email).await;
    let (_, mine) = t.get_html(&me, "/me").await;
    assert_escaped(&mine, "My applications");
    assert!(unescape(&mine).contains(IMG));
    let answer = t
        .post_form(
            &me,
            "/me",
            &format!("/me/applications/{id}/answer"),
            &[("message", SCRIPT)],
        )
        .await;
    assert_eq!(answer.status(), StatusCode::OK);
    let (_, shown) = t.get_html(&reviewer, &page).await;
    assert_escaped(&shown, "the application page with the answer");
    assert!(unescape(&shown).contains(SCRIPT));

    let approve = t
        .post_form(
            &reviewer,
            &page,
            &format!("{page}/approve"),
            &[("days", "30"), ("note", SCRIPT)],
        )
        .await;
    assert_eq!(approve.status(), StatusCode::OK);
    let (_, grants) = t.get_html(&reviewer, "/admin/grants").await;
    assert_escaped(&grants, "the grants");
    let grant = between(&grants, "/admin/grants/", "\"").to_owned();
    let revoke = t
        .post_form(
            &reviewer,
            &format!("/admin/grants/{grant}"),
            &format!("/admin/grants/{grant}/revoke"),
            &[("reason", IMG)],
        )
        .await;
    assert_eq!(revoke.status(), StatusCode::OK);
    for place in [
        format!("/admin/grants/{grant}"),
        "/admin/audit".to_owned(),
        "/admin/grants".to_owned(),
    ] {
        let (status, shown) = t.get_html(&reviewer, &place).await;
        assert_eq!(status, StatusCode::OK);
        assert_escaped(&shown, &place);
    }
    let (_, audit_page) = t.get_html(&reviewer, "/admin/audit").await;
    assert!(
        unescape(&audit_page).contains(IMG),
        "the revocation reason is in the log as typed"
    );
    let (_, access) = t.get_html(&me, "/me/access").await;
    assert_escaped(&access, "My access");
    assert!(unescape(&access).contains(IMG), "the researcher reads the reason");
    assert_plain_headers(&t);
    still_whole(&t).await;
}

both!(path_traversal_in_download_and_release_urls_never_leaves_the_grant);
async fn path_traversal_in_download_and_release_urls_never_leaves_the_grant() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("ada@example.org").await;
    let links = t.download_links(&access).await;
    let (_, url) = links.iter().find(|(n, _)| n == "shard-2.bin").unwrap();
    let token = between(url, "/dl/", "/").to_owned();
    let access_token = access.rsplit("/access/").next().unwrap().to_owned();
    let attempts = [
        format!("/dl/{token}/../shard-0.bin"),
        format!("/dl/{token}/..%2fshard-0.bin"),
        format!("/dl/{token}/%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        format!("/dl/{token}/..%5c..%5cweightgate.db"),
        format!("/dl/{token}/shard-2.bin%00.txt"),
        format!("/dl/{token}/shard-2.bin%2f..%2f..%2fweightgate.db"),
        format!("/dl/{token}%2f..%2fshard-0.bin/shard-0.bin"),
        "/dl/../../etc/passwd".to_owned(),
        "/dl/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        format!("/dl/{token}/%ff%fe"),
        format!("/access/{access_token}/releases/..%2f..%2fr1/SHA256SUMS"),
        format!("/access/{access_token}/releases/r1/..%2fmanifest.json"),
        "/static/..%2f..%2fCargo.toml".to_owned(),
        "/models/..%2f..%2fadmin".to_owned(),
    ];
    let secret = std::fs::read(t.app.config.data_dir.join("weightgate.db")).ok();
    for path in &attempts {
        let (status, body) = raw_get(&t, path).await;
        assert!((400..500).contains(&status), "{path}: {status} {body}");
        assert!(!body.contains("root:"), "{path}");
        if let Some(db) = &secret {
            assert!(
                !body.as_bytes().starts_with(&db[..16]),
                "{path} served the database"
            );
        }
    }
    // The real link still works, whole.
    let response = t.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), t.files[2].1.as_slice());

    // The object store takes keys only under its root.
    let store = LocalDir::new(t.dir.path().join("store"));
    let source = t.dir.path().join("shards/shard-2.bin");
    let holds = expected(&t.files[2].1, CHUNK_SIZE);
    for key in [
        "../escape",
        "/etc/passwd",
        "a/../../b",
        "",
        "a/./b",
        "sha256/..",
        "a\0b",
    ] {
        assert!(
            store.put_file(key, &source, &holds, &|_| {}).await.is_err(),
            "{key:?} was stored"
        );
        assert!(store.get_range(key, 0, 1).await.is_err(), "{key:?} was read");
        assert!(store.size(key).await.is_err(), "{key:?} was looked up");
    }
    assert!(!t.dir.path().join("escape").exists());
    still_whole(&t).await;
}

both!(a_release_directory_with_odd_file_names_is_refused_whole);
async fn a_release_directory_with_odd_file_names_is_refused_whole() {
    let t = TestApp::spawn().await;
    let odd = [
        "two words.bin",
        "line\nbreak.bin",
        "caf\u{e9}.bin",
        "back\\slash.bin",
        "quote\".bin",
        "semi;colon.bin",
        "%2e%2e.bin",
    ];
    for (i, name) in odd.iter().enumerate() {
        let dir = t.dir.path().join(format!("odd-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("good.bin"), b"weights").unwrap();
        std::fs::write(dir.join(name), b"weights").unwrap();
        let (ok, _, err) = weightgate(&t, &["model", "publish", MODEL, dir.to_str().unwrap()], None);
        assert!(!ok, "{name:?} was published");
        assert!(err.contains("is not a usable path"), "{name:?}: {err}");
    }
    let linked = t.dir.path().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", linked.join("passwd.bin")).unwrap();
    let (ok, _, err) = weightgate(&t, &["model", "publish", MODEL, linked.to_str().unwrap()], None);
    assert!(!ok);
    assert!(err.contains("passwd.bin is a symbolic link"), "{err}");
    let fine = t.dir.path().join("odd-0");
    for release in ["../r2", "r2/../../x", ".hidden", "a b"] {
        let (ok, _, err) = weightgate(
            &t,
            &[
                "model",
                "publish",
                MODEL,
                fine.to_str().unwrap(),
                "--release",
                release,
            ],
            None,
        );
        assert!(!ok, "release {release:?} was published");
        assert!(
            err.contains("release name") || err.contains("file name"),
            "{release}: {err}"
        );
    }
    let model = weightgate::db::models::find_model_by_slug(t.app.db.pool(), MODEL)
        .await
        .unwrap()
        .unwrap();
    let releases = weightgate::db::models::published_releases(t.app.db.pool(), &model.id)
        .await
        .unwrap();
    assert_eq!(releases.len(), 1, "only the test release is visible");
    still_whole(&t).await;
}

both!(malformed_and_huge_range_headers_get_416_or_honest_bytes);
async fn malformed_and_huge_range_headers_get_416_or_honest_bytes() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("ada@example.org").await;
    let links = t.download_links(&access).await;
    let (_, url) = links.iter().find(|(n, _)| n == "shard-0.bin").unwrap();
    let file = &t.files[0].1;
    let size = file.len();
    let many = format!(
        "bytes={}",
        (0..2000)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 4))
            .collect::<Vec<_>>()
            .join(",")
    );
    let overlapping = format!("bytes={}", ["0-"; 500].join(","));
    let ranges = [
        "bytes=0-99999999999999999999999".to_owned(),
        "bytes=99999999999999999999999-".to_owned(),
        "bytes=-99999999999999999999999".to_owned(),
        format!("bytes=-{}", size * 10),
        format!("bytes={size}-"),
        format!("bytes={}-{}", size + 5, size + 10),
        "bytes=5-1".to_owned(),
        "bytes=".to_owned(),
        "bytes=-".to_owned(),
        "bytes=--1".to_owned(),
        "bytes=0--1".to_owned(),
        "bytes=a-b".to_owned(),
        "items=0-1".to_owned(),
        "garbage".to_owned(),
        "bytes=0-1,".to_owned(),
        "bytes= 0 - 1 ".to_owned(),
        many,
        overlapping,
        format!("bytes=0-{}", "9".repeat(4000)),
        format!("bytes={}", "1-2,".repeat(20_000)),
    ];
    for range in &ranges {
        let response = t.client.get(url).header("range", range).send().await.unwrap();
        let status = response.status();
        let content_range = response
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.bytes().await.unwrap();
        let shown: String = range.chars().take(60).collect();
        match status {
            StatusCode::OK => assert_eq!(body.as_ref(), file.as_slice(), "{shown}: whole file"),
            StatusCode::PARTIAL_CONTENT => {
                let cr = content_range.unwrap();
                let (span, total) = cr.trim_start_matches("bytes ").split_once('/').unwrap();
                assert_eq!(total, size.to_string(), "{shown}");
                let (a, b) = span.split_once('-').unwrap();
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                assert_eq!(body.as_ref(), &file[a..=b], "{shown}: the bytes it says");
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                assert_eq!(
                    content_range.as_deref(),
                    Some(format!("bytes */{size}").as_str()),
                    "{shown}"
                );
            }
            other => panic!("{shown}: {other}"),
        }
    }
    // A suffix longer than the file is the whole file, as HTTP says.
    let response = t
        .client
        .get(url)
        .header("range", format!("bytes=-{}", size * 10))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.bytes().await.unwrap().as_ref(), file.as_slice());
    still_whole(&t).await;
}

/// Every POST route, with a client allowed to reach its body.
async fn post_routes(t: &TestApp) -> Vec<(Client, String)> {
    t.apply_and_confirm("big@example.org").await;
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, "big@example.org").await;
    let me = researcher_session(t, "big@example.org").await;
    let anyone = client();
    let mut routes: Vec<(Client, String)> = [
        "/models/tiny-model/apply",
        "/signin",
        "/signin/sometoken",
        "/confirm/sometoken",
        "/admin/login",
    ]
    .into_iter()
    .map(|p| (anyone.clone(), p.to_owned()))
    .collect();
    for p in [
        "/admin/logout".to_owned(),
        "/admin/applications/bulk".to_owned(),
        format!("/admin/applications/{id}/approve"),
        format!("/admin/applications/{id}/deny"),
        format!("/admin/applications/{id}/ask"),
        "/admin/grants/g/revoke".to_owned(),
        "/admin/grants/g/extend".to_owned(),
        "/admin/reviewers".to_owned(),
        "/admin/reviewers/r".to_owned(),
        "/admin/models/tiny-model/policy".to_owned(),
        "/admin/templates".to_owned(),
        "/admin/templates/t/delete".to_owned(),
        "/admin/account".to_owned(),
    ] {
        routes.push((reviewer.clone(), p));
    }
    for p in [
        "/signout".to_owned(),
        format!("/me/applications/{id}/answer"),
        format!("/me/applications/{id}/appeal"),
        "/me/access/g/renew".to_owned(),
        "/me/access/g/client-url".to_owned(),
    ] {
        routes.push((me.clone(), p));
    }
    routes
}

both!(oversized_bodies_on_every_post_get_413_naming_the_limit);
async fn oversized_bodies_on_every_post_get_413_naming_the_limit() {
    let t = TestApp::spawn().await;
    let big = format!("authenticity_token=x&name={}", "a".repeat(300 * 1024));
    for (client, path) in post_routes(&t).await {
        let response = client
            .post(t.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "payload_too_large", "{path}");
        assert!(
            body["message"].as_str().unwrap().contains("256.0 KiB"),
            "{path}: {body}"
        );
        assert!(!body["request_id"].as_str().unwrap().is_empty());

        // Sent in chunks, without a length up front: the same.
        let chunks =
            futures_util::stream::iter((0..40).map(|_| Ok::<_, std::io::Error>(vec![b'a'; 8 * 1024])));
        let response = client
            .post(t.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "text/html")
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path} chunked");
        let page = response.text().await.unwrap();
        assert!(page.contains("256.0 KiB"), "{path}: the page names the limit");
    }
    still_whole(&t).await;
}

both!(json_multipart_and_missing_content_types_get_415_not_500);
async fn json_multipart_and_missing_content_types_get_415_not_500() {
    let t = TestApp::spawn().await;
    let bodies: [(Option<&str>, &str); 5] = [
        (
            Some("application/json"),
            r#"{"authenticity_token": "x", "email": "a@example.org"}"#,
        ),
        (
            Some("multipart/form-data; boundary=XyZ"),
            "--XyZ\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@example.org\r\n--XyZ--\r\n",
        ),
        (Some("text/plain"), "email=a@example.org"),
        (
            Some("application/x-www-form-urlencoded; charset=utf-16"),
            "email=a@example.org",
        ),
        (None, "email=a@example.org"),
    ];
    for (client, path) in post_routes(&t).await {
        for (content_type, body) in bodies {
            let mut request = client.post(t.url(&path)).body(body);
            if let Some(ct) = content_type {
                request = request.header("content-type", ct);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            assert!(
                status == StatusCode::UNSUPPORTED_MEDIA_TYPE
                    || (content_type.is_some_and(|c| c.contains("charset")) && status.is_client_error()),
                "{path} with {content_type:?}: {status}"
            );
            if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                let json: serde_json::Value = response.json().await.unwrap();
                assert_eq!(json["error"], "unsupported_media_type", "{path}");
                assert!(
                    json["message"]
                        .as_str()
                        .unwrap()
                        .contains("application/x-www-form-urlencoded")
                );
            }
        }
        // A form of the right type but the wrong shape is a 4xx too.
        let response = client
            .post(t.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("%zz=%%&authenticity_token[]=1&&&=")
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_client_error(),
            "{path}: {}",
            response.status()
        );
    }
    assert_eq!(application_count(&t).await, 1, "only the setup's application");
    still_whole(&t).await;
}

/// A 429 with a Retry-After of whole seconds and the portal's body.
pub(crate) async fn assert_limited(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    let html = response
        .headers()
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap().starts_with("text/html"));
    let body = response.text().await.unwrap();
    if html {
        assert!(
            body.contains("Please wait") && body.contains("Too many"),
            "{what}: {body}"
        );
    } else {
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "rate_limited", "{what}");
        assert!(
            json["message"].as_str().unwrap().contains("Please wait"),
            "{json}"
        );
    }
}

pub(crate) async fn post_apply(t: &TestApp, browser: &Client, email: &str) -> reqwest::Response {
    let (_, page) = t.get_html(browser, &format!("/models/{MODEL}")).await;
    let mut form = vec![("authenticity_token", csrf(&page))];
    form.extend(
        filled("Ada", email, "Lab", "Research")
            .into_iter()
            .map(|(k, v)| (k, v.to_owned())),
    );
    browser
        .post(t.url(&format!("/models/{MODEL}/apply")))
        .header("accept", "text/html")
        .form(&form)
        .send()
        .await
        .unwrap()
}

both!(applications_from_one_address_beyond_the_limit_get_429_and_store_nothing);
async fn applications_from_one_address_beyond_the_limit_get_429_and_store_nothing() {
    let t = TestApp::spawn_with(|c| c.limit_applications_per_address = "3/1h".parse().unwrap()).await;
    for n in 0..3 {
        let response = post_apply(&t, &client(), &format!("p{n}@example.org")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_limited(
        post_apply(&t, &client(), "p3@example.org").await,
        "fourth application",
    )
    .await;
    assert_eq!(application_count(&t).await, 3);
    t.wait_for_mail("p2@example.org", "Confirm").await;
    assert!(!outbox_mails(&t).iter().any(|m| m.contains("To: p3@example.org")));
    still_whole(&t).await;
}

both!(e_mails_to_one_address_are_limited_the_same_whether_or_not_it_has_an_account);
async fn e_mails_to_one_address_are_limited_the_same_whether_or_not_it_has_an_account() {
    let t = TestApp::spawn_with(|c| c.limit_mail_per_recipient = "3/1h".parse().unwrap()).await;
    // One confirmation e-mail to the known address; two more allowed.
    t.apply_and_confirm("known@example.org").await;
    let ask = |email: &'static str| {
        let t = &t;
        async move {
            let browser = client();
            let (_, page) = t.get_html(&browser, "/signin").await;
            browser
                .post(t.url("/signin"))
                .header("accept", "text/html")
                .form(&[("authenticity_token", csrf(&page).as_str()), ("email", email)])
                .send()
                .await
                .unwrap()
        }
    };
    let mut pages = Vec::new();
    for email in [
        "known@example.org",
        "known@example.org",
        "nobody@example.org",
        "nobody@example.org",
        "nobody@example.org",
    ] {
        let response = ask(email).await;
        assert_eq!(response.status(), StatusCode::OK, "{email}");
        pages.push(response.text().await.unwrap().replace(email, "ADDRESS"));
    }
    assert!(
        pages.windows(2).all(|w| w[0] == w[1]),
        "the answer reveals nothing"
    );
    let refused_known = ask("known@example.org").await;
    let refused_unknown = ask("nobody@example.org").await;
    assert_eq!(refused_known.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused_unknown.status(), StatusCode::TOO_MANY_REQUESTS);
    let known = refused_known.text().await.unwrap();
    let unknown = refused_unknown.text().await.unwrap();
    let without_id = |page: &str| page.split("request id").next().unwrap().to_owned();
    assert_eq!(
        without_id(&known),
        without_id(&unknown),
        "the refusal reveals nothing"
    );
    assert_limited(ask("known@example.org").await, "sign-in link").await;
    // The application form counts against the same recipient.
    assert_limited(
        post_apply(&t, &client(), "known@example.org").await,
        "application",
    )
    .await;
    // Another address is not affected.
    assert_eq!(ask("other@example.org").await.status(), StatusCode::OK);
    still_whole(&t).await;
}

both!(sign_in_link_requests_from_one_address_are_limited);
async fn sign_in_link_requests_from_one_address_are_limited() {
    let t = TestApp::spawn_with(|c| c.limit_signin_per_address = "2/1h".parse().unwrap()).await;
    // Posts another site makes a visitor's browser send carry no form token:
    // refused, and they spend nothing of the visitor's network's allowance.
    for n in 0..5 {
        let forged = client()
            .post(t.url("/signin"))
            .form(&[("email", format!("forged{n}@example.org"))])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    }
    // The third is refused by the handler, the fourth before any handler
    // starts (the address is known to be over its limit): the same answer.
    for n in 0..4 {
        let browser = client();
        let (_, page) = t.get_html(&browser, "/signin").await;
        let response = browser
            .post(t.url("/signin"))
            .form(&[
                ("authenticity_token", csrf(&page)),
                ("email", format!("s{n}@example.org")),
            ])
            .send()
            .await
            .unwrap();
        if n < 2 {
            assert_eq!(response.status(), StatusCode::OK);
        } else {
            assert_limited(response, "third and fourth sign-in requests").await;
        }
    }
    still_whole(&t).await;
}

both!(fresh_links_are_limited_per_grant_and_per_address);
async fn fresh_links_are_limited_per_grant_and_per_address() {
    let t = TestApp::spawn_with(|c| {
        c.limit_links_per_grant = "3/1h".parse().unwrap();
        c.limit_links_per_address = "5/1h".parse().unwrap();
    })
    .await;
    let access = t.approved_researcher("ada@example.org").await;
    let manifest = format!("{access}/manifest.json");
    for _ in 0..2 {
        assert_eq!(
            t.client.get(&access).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        t.client.get(&manifest).send().await.unwrap().status(),
        StatusCode::OK
    );
    let refused = t.client.get(&manifest).send().await.unwrap();
    let json_message = {
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.headers().contains_key("retry-after"));
        let json: serde_json::Value = refused.json().await.unwrap();
        json["message"].as_str().unwrap().to_owned()
    };
    assert!(json_message.contains("for this access"), "{json_message}");
    let (status, page) = t.get_html(&t.client, access.trim_start_matches(&t.base)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(page.contains("Please wait"));
    // Five asked from this address: the sixth is refused for the address,
    // before the token is even looked up.
    let refused = t.client.get(t.url("/access/no-such-token")).send().await.unwrap();
    let json: serde_json::Value = {
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        refused.json().await.unwrap()
    };
    assert!(
        json["message"].as_str().unwrap().contains("from your address"),
        "{json}"
    );
    // Downloads with links already minted go on.
    let links = t.download_links(&access).await;
    assert!(links.is_empty(), "the access page itself is refused");
    still_whole(&t).await;
}

/// A browser whose every request carries `X-Forwarded-For: forwarded`, as if
/// it came through a proxy that wrote the header.
pub(crate) fn forwarded_client(forwarded: &str) -> Client {
    weightgate::client::install_crypto();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-forwarded-for", forwarded.parse().unwrap());
    Client::builder()
        .cookie_store(true)
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The client address of the newest `file.fetch` event.
async fn last_fetch_address(t: &TestApp, link: &str, browser: &Client) -> Option<String> {
    let before = t.audit_events().await.len();
    let response = browser.get(link).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap();
    let events = t.audit_events().await;
    events[before..]
        .iter()
        .rev()
        .find(|e| e.action == "file.fetch")
        .and_then(|e| e.client_ip.clone())
}

both!(behind_a_trusted_proxy_the_forwarded_address_is_logged_and_limited);
async fn behind_a_trusted_proxy_the_forwarded_address_is_logged_and_limited() {
    // The test client connects from 127.0.0.1, which plays the balancer.
    let t = TestApp::spawn_with(|c| {
        c.trusted_proxies = "127.0.0.1, 10.0.0.0/8".parse().unwrap();
        c.limit_applications_per_address = "2/1h".parse().unwrap();
    })
    .await;
    let access = t.approved_researcher("ada@example.org").await;
    let links = t.download_links(&access).await;
    let (_, link) = &links[0];
    // The client wrote a forged first entry; the edge proxy (10.1.2.3, trusted)
    // appended the real address, and the balancer appended the edge proxy.
    let through_proxies = forwarded_client("192.0.2.66, 203.0.113.9, 10.1.2.3");
    assert_eq!(
        last_fetch_address(&t, link, &through_proxies).await.as_deref(),
        Some("203.0.113.9")
    );
    // Without the header the balancer itself is the client.
    assert_eq!(
        last_fetch_address(&t, link, &client()).await.as_deref(),
        Some("127.0.0.1")
    );

    // Each forwarded address has its own allowance of applications.
    let first = forwarded_client("203.0.113.20");
    for n in 0..2 {
        let response = post_apply(&t, &first, &format!("f{n}@example.org")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_limited(
        post_apply(&t, &first, "f2@example.org").await,
        "third from one address",
    )
    .await;
    let second = forwarded_client("203.0.113.21");
    assert_eq!(
        post_apply(&t, &second, "g0@example.org").await.status(),
        StatusCode::OK
    );
    let submitted: Vec<Option<String>> = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "application.submitted")
        .map(|e| e.client_ip)
        .collect();
    assert!(
        submitted.ends_with(&[
            Some("203.0.113.20".into()),
            Some("203.0.113.20".into()),
            Some("203.0.113.21".into()),
        ]),
        "{submitted:?}"
    );
    still_whole(&t).await;
}

both!(a_forged_forwarded_header_from_an_untrusted_peer_is_ignored);
async fn a_forged_forwarded_header_from_an_untrusted_peer_is_ignored() {
    let t = TestApp::spawn_with(|c| c.trusted_proxies = "10.0.0.0/8".parse().unwrap()).await;
    let access = t.approved_researcher("ada@example.org").await;
    let links = t.download_links(&access).await;
    let forger = forwarded_client("203.0.113.9");
    assert_eq!(
        last_fetch_address(&t, &links[0].1, &forger).await.as_deref(),
        Some("127.0.0.1")
    );
    still_whole(&t).await;
}
