//! The whole path once: apply, confirm, review, grant, download, audit.

use reqwest::StatusCode;

use crate::helpers::*;

both!(a_researcher_applies_is_approved_and_downloads_verified_files);
async fn a_researcher_applies_is_approved_and_downloads_verified_files() {
    let t = TestApp::spawn().await;
    let researcher = client();

    let (status, catalogue) = t.get_html(&researcher, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(catalogue.contains(&format!("/models/{MODEL}")));
    // 300,000 + 1,048,577 + 7 bytes.
    assert!(
        catalogue.contains("3 files in 1 release, 1.3 MiB"),
        "the catalogue says what a model holds: {catalogue}"
    );

    let (status, page) = t
        .apply(
            &researcher,
            &[
                ("name", "Ada Lovelace"),
                ("email", "Ada@Uni.example.edu"),
                ("affiliation", "University of Examples"),
                ("intended_use", "Interpretability research"),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Check your e-mail"));
    // Post/redirect/get: the answer to the form is a redirect, so that a
    // reload does not send the application again.
    let once = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sent = t
        .post_form(
            &once,
            &format!("/models/{MODEL}"),
            &format!("/models/{MODEL}/apply"),
            &[
                ("name", "Ada Lovelace"),
                ("email", "second@uni.example.edu"),
                ("affiliation", "University of Examples"),
                ("intended_use", "Interpretability research"),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(sent.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        sent.headers()["location"],
        format!("/models/{MODEL}/submitted").as_str()
    );

    let reviewer = client();
    t.sign_in(&reviewer).await;
    let (_, queue) = t.get_html(&reviewer, "/admin").await;
    assert!(
        !queue.contains("ada@uni.example.edu"),
        "an unconfirmed application is not shown to reviewers"
    );

    let mail = t
        .wait_for_mail("ada@uni.example.edu", "Confirm your application")
        .await;
    let confirm = link_in(&mail, "/confirm/");
    let (_, confirm_page) = t.get_html(&researcher, confirm.trim_start_matches(&t.base)).await;
    assert!(confirm_page.contains("Confirm my e-mail address"));
    // Post/redirect/get: the answer is a redirect to the link's own page.
    let response = t.post_form(&once, &confirm, &confirm, &[]).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let path = confirm.trim_start_matches(&t.base);
    assert_eq!(response.headers()["location"], path);
    let (status, shown) = t.get_html(&researcher, path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown.contains("pending"), "{shown}");

    let id = t.pending_application(&reviewer, "ada@uni.example.edu").await;
    let (_, detail) = t.get_html(&reviewer, &format!("/admin/applications/{id}")).await;
    assert!(detail.contains("Interpretability research"));
    assert!(detail.contains("terms version 1"));
    let response = t
        .post_form(
            &reviewer,
            &format!("/admin/applications/{id}"),
            &format!("/admin/applications/{id}/approve"),
            &[("days", "30")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("approved"));

    let mail = t.wait_for_mail("ada@uni.example.edu", "is approved").await;
    let access = link_in(&mail, "/access/");
    let page = researcher
        .get(&access)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, bytes) in &t.files {
        assert!(page.contains(name.as_str()), "{name} is listed");
        assert!(
            page.contains(&sha256_hex(bytes)),
            "the SHA-256 of {name} is shown"
        );
    }

    let links = t.download_links(&access).await;
    assert_eq!(links.len(), t.files.len());
    for (name, url) in &links {
        let response = researcher.get(url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let body = response.bytes().await.unwrap();
        let expected = &t.files.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(sha256_hex(&body), sha256_hex(expected), "{name} arrives intact");
    }

    let sums_path = all_between(&page, "href=\"", "\"")
        .into_iter()
        .map(unescape)
        .find(|href| href.ends_with("/SHA256SUMS"))
        .expect("the access page links SHA256SUMS");
    let sums_url = t.url(&sums_path);
    let sums = researcher
        .get(&sums_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (name, bytes) in &t.files {
        assert!(
            sums.contains(&format!("{}  {name}\n", sha256_hex(bytes))),
            "{sums}"
        );
    }

    // A transfer's `file.delivered` is written after its response ends:
    // the log is read once every one is in.
    t.wait_for_events("file.delivered", t.files.len()).await;
    let events = t.audit_events().await;
    let fetches: Vec<_> = events.iter().filter(|e| e.action == "file.fetch").collect();
    assert_eq!(fetches.len(), t.files.len());
    for e in fetches {
        assert_eq!(e.outcome, "ok");
        assert!(e.grant_id.is_some() && e.researcher_id.is_some() && e.file_id.is_some());
        assert!(e.range_start.is_some() && e.range_end.is_some());
        assert_eq!(e.client_ip.as_deref(), Some("127.0.0.1"));
        assert!(
            e.subject
                .as_deref()
                .unwrap()
                .starts_with("ada@uni.example.edu tiny-model/r1/")
        );
    }
    for action in [
        "application.submitted",
        "application.confirmed",
        "review.approved",
        "grant.created",
        "reviewer.sign_in",
    ] {
        assert!(events.iter().any(|e| e.action == action), "{action} is audited");
    }
    let verified = t.app.verify_audit_log().await.unwrap();
    assert_eq!(verified.problems, vec![]);
    assert_eq!(verified.events, events.len() as i64);
}

both!(bad_form_input_is_shown_again_with_errors_and_the_values_kept);
async fn bad_form_input_is_shown_again_with_errors_and_the_values_kept() {
    let t = TestApp::spawn().await;
    let researcher = client();
    let long = "x".repeat(301);
    let (status, page) = t
        .apply(
            &researcher,
            &[
                ("name", "Alan Turing"),
                ("email", "not-an-email"),
                ("affiliation", &long),
                ("intended_use", "Breaking codes"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("this is not a valid e-mail address"));
    assert!(page.contains("Affiliation has at most 300 characters"));
    assert!(page.contains("You must accept the terms to apply"));
    assert!(page.contains("value=\"Alan Turing\""), "entered values are kept");
    assert!(page.contains("value=\"not-an-email\""));
    assert!(page.contains("Breaking codes</textarea>"));

    let (status, page) = t.apply(&researcher, &[("name", "Alan Turing")]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("enter an e-mail address"));
    assert!(page.contains("Intended use is required"));

    let applications: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applications")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(applications, 0, "nothing is stored for an invalid form");
}

both!(a_post_without_a_csrf_token_is_refused);
async fn a_post_without_a_csrf_token_is_refused() {
    let t = TestApp::spawn().await;
    let researcher = client();
    let _ = t.get_html(&researcher, &format!("/models/{MODEL}")).await;
    let response = researcher
        .post(t.url(&format!("/models/{MODEL}/apply")))
        .form(&[
            ("name", "Mallory"),
            ("email", "mallory@example.org"),
            ("affiliation", "Evil"),
            ("intended_use", "Forgery"),
            ("accept_terms", "on"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "csrf");

    let reviewer = client();
    t.sign_in(&reviewer).await;
    let response = reviewer
        .post(t.url("/admin/grants/anything/revoke"))
        .form(&[("reason", "no token"), ("authenticity_token", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

both!(health_is_reported_and_unknown_pages_are_404);
async fn health_is_reported_and_unknown_pages_are_404() {
    let t = TestApp::spawn().await;
    let response = t.client.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = t.client.get(t.url("/models/no-such-model")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    assert!(!body["request_id"].as_str().unwrap().is_empty());
}
