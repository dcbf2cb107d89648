//! The dashboard: sign-in, denial, escaping of applicants' text.

use reqwest::StatusCode;

use crate::helpers::*;

both!(a_wrong_password_is_refused_without_a_session);
async fn a_wrong_password_is_refused_without_a_session() {
    let t = TestApp::spawn().await;
    let reviewer = client();
    let (_, login) = t.get_html(&reviewer, "/admin/login").await;
    assert!(
        !login.contains("My applications"),
        "the reviewers' sign-in shows no researcher's links"
    );
    for (email, password) in [
        (REVIEWER, "not the password"),
        ("nobody@lab.example.org", PASSWORD),
    ] {
        let response = t
            .post_form(
                &reviewer,
                "/admin/login",
                "/admin/login",
                &[("email", email), ("password", password)],
            )
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("The e-mail or the password is wrong.")
        );
    }
    let response = reviewer.get(t.url("/admin")).send().await.unwrap();
    assert_eq!(
        response.url().path(),
        "/admin/login",
        "the dashboard still asks to sign in"
    );
    let refused = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "reviewer.sign_in" && e.outcome == "refused")
        .count();
    assert_eq!(refused, 2);
}

both!(a_denial_needs_a_reason_and_emails_it);
async fn a_denial_needs_a_reason_and_emails_it() {
    let t = TestApp::spawn().await;
    t.apply_and_confirm("denied@uni.example.edu").await;
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, "denied@uni.example.edu").await;
    let page = format!("/admin/applications/{id}");
    let action = format!("/admin/applications/{id}/deny");

    let response = t.post_form(&reviewer, &page, &action, &[("reason", "  ")]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = t
        .post_form(
            &reviewer,
            &page,
            &action,
            &[("reason", "Please apply with your institutional address.")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mail = t
        .wait_for_mail("denied@uni.example.edu", "Your application for")
        .await;
    assert!(mail.contains("Please apply with your institutional address."));

    let response = t
        .post_form(
            &reviewer,
            &page,
            &format!("/admin/applications/{id}/approve"),
            &[],
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CONFLICT,
        "a decided application cannot be approved"
    );
    let grants: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(grants, 0);
}

both!(html_in_an_application_is_shown_escaped_in_the_dashboard);
async fn html_in_an_application_is_shown_escaped_in_the_dashboard() {
    let t = TestApp::spawn().await;
    let researcher = client();
    let script = "<script>alert('pwned')</script>";
    let (status, _) = t
        .apply(
            &researcher,
            &[
                ("name", "Eve <img src=x onerror=alert(1)>"),
                ("email", "eve@example.org"),
                ("affiliation", "Eve's <b>Lab</b>"),
                ("intended_use", script),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mail = t.wait_for_mail("eve@example.org", "Confirm").await;
    let confirm = link_in(&mail, "/confirm/");
    t.post_form(&researcher, &confirm, &confirm, &[]).await;

    let reviewer = client();
    t.sign_in(&reviewer).await;
    let (_, queue) = t.get_html(&reviewer, "/admin").await;
    assert!(!queue.contains("<img src=x"), "{queue}");
    assert!(queue.contains("&#60;img src=x onerror=alert(1)&#62;"));
    let id = t.pending_application(&reviewer, "eve@example.org").await;
    let (_, detail) = t.get_html(&reviewer, &format!("/admin/applications/{id}")).await;
    assert!(!detail.contains(script));
    assert!(detail.contains("&#60;script&#62;"));
    assert!(!detail.contains("<b>Lab</b>"));
}

both!(the_dashboard_requires_a_signed_in_reviewer);
async fn the_dashboard_requires_a_signed_in_reviewer() {
    let t = TestApp::spawn().await;
    let anonymous = client();
    for path in ["/admin", "/admin/grants", "/admin/applications/abc"] {
        let response = anonymous.get(t.url(path)).send().await.unwrap();
        assert_eq!(response.url().path(), "/admin/login", "{path}");
    }
    let response = anonymous
        .post(t.url("/admin/applications/abc/approve"))
        .form(&[("authenticity_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.url().path(), "/admin/login");
}
