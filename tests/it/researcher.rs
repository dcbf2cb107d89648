//! The researcher's side: sign-in by e-mailed link, the model's questions and
//! terms versions, denial with a wait or one appeal, the question thread and
//! renewals.

use std::{collections::HashSet, time::Duration};

use reqwest::{Client, StatusCode};
use weightgate::{domain::models, types::Slug};

use crate::helpers::*;

/// Every e-mail to `to` whose text contains `needle`.
fn mails_to(t: &TestApp, to: &str, needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(t.outbox()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .map(|raw| raw.replace("=\r\n", "").replace("=3D", "="))
        .filter(|m| m.contains(&format!("To: {to}")) && m.contains(needle))
        .collect()
}

/// Waits for an e-mail to `to` holding a `/signin/` link not in `seen`, and returns the link.
pub(crate) async fn new_signin_link(t: &TestApp, to: &str, seen: &mut HashSet<String>) -> String {
    for _ in 0..200 {
        for mail in mails_to(t, to, "/signin/") {
            let link = link_in(&mail, "/signin/");
            if seen.insert(link.clone()) {
                return link;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no new sign-in link reached {to}");
}

/// Asks for a sign-in link on the form; returns the status and the page.
pub(crate) async fn request_link(t: &TestApp, browser: &Client, email: &str) -> (StatusCode, String) {
    let response = t
        .post_form(browser, "/signin", "/signin", &[("email", email)])
        .await;
    (response.status(), response.text().await.unwrap())
}

/// Follows a sign-in link the way a browser does: the page, then its button.
pub(crate) async fn follow_link(browser: &Client, link: &str) -> reqwest::Response {
    let page = browser.get(link).send().await.unwrap().text().await.unwrap();
    browser
        .post(link)
        .header("accept", "text/html")
        .form(&[("authenticity_token", csrf(&page))])
        .send()
        .await
        .unwrap()
}

/// Signs `browser` in as `email` by an e-mailed link.
pub(crate) async fn sign_in_researcher(
    t: &TestApp,
    browser: &Client,
    email: &str,
    seen: &mut HashSet<String>,
) {
    let (status, _) = request_link(t, browser, email).await;
    assert_eq!(status, StatusCode::OK);
    let link = new_signin_link(t, email, seen).await;
    let response = follow_link(browser, &link).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.url().path(), "/me");
}

async fn application_ids(t: &TestApp, email: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT a.id, a.status, a.kind FROM applications a JOIN researchers r ON r.id = a.researcher_id
         WHERE r.email = $1 ORDER BY a.created_at, a.id",
    )
    .bind(email)
    .fetch_all(t.app.db.pool())
    .await
    .unwrap()
}

async fn outbox_count(t: &TestApp, to: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE to_addr = $1")
        .bind(to)
        .fetch_one(t.app.db.pool())
        .await
        .unwrap()
}

both!(a_sign_in_link_works_once_and_the_form_never_says_whether_an_address_is_known);
async fn a_sign_in_link_works_once_and_the_form_never_says_whether_an_address_is_known() {
    let t = TestApp::spawn().await;
    let email = "hopper@navy.example.mil";
    t.apply_and_confirm(email).await;
    let mut seen = HashSet::new();

    let browser = client();
    let (known_status, known_page) = request_link(&t, &browser, email).await;
    let (unknown_status, unknown_page) = request_link(&t, &client(), "nobody@nowhere.example.org").await;
    assert_eq!(known_status, unknown_status);
    assert_eq!(
        known_page.replace(email, "ADDRESS"),
        unknown_page.replace("nobody@nowhere.example.org", "ADDRESS"),
        "the answer is the same whether or not the address applied"
    );
    assert_eq!(outbox_count(&t, "nobody@nowhere.example.org").await, 0);

    let link = new_signin_link(&t, email, &mut seen).await;
    let response = follow_link(&browser, &link).await;
    assert_eq!(response.url().path(), "/me");
    let page = response.text().await.unwrap();
    assert!(page.contains("My applications"), "{page}");
    assert!(
        page.contains("Tiny &#60;b&#62;Model&#60;/b&#62;"),
        "the model title, escaped"
    );
    assert!(page.contains("The reviewers will decide"), "{page}");
    assert!(
        page.contains("No application for this model has been decided yet")
            || page.contains("has no decisions yet")
    );

    // The same link a second time, even in another browser, signs nobody in.
    let other = client();
    let response = follow_link(&other, &link).await;
    assert_eq!(response.status(), StatusCode::GONE);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("already used or has expired")
    );
    let response = other.get(t.url("/me")).send().await.unwrap();
    assert_eq!(response.url().path(), "/signin");

    // An expired link is refused too.
    request_link(&t, &other, email).await;
    let link = new_signin_link(&t, email, &mut seen).await;
    sqlx::query("UPDATE signin_tokens SET expires_at = 1")
        .execute(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(follow_link(&other, &link).await.status(), StatusCode::GONE);

    // Signing out ends the session.
    let response = t.post_form(&browser, "/me", "/signout", &[]).await;
    assert_eq!(response.url().path(), "/");
    let response = browser.get(t.url("/me")).send().await.unwrap();
    assert_eq!(response.url().path(), "/signin");

    let events = t.audit_events().await;
    let signins: Vec<_> = events
        .iter()
        .filter(|e| e.action == "researcher.sign_in")
        .collect();
    assert_eq!(signins.iter().filter(|e| e.outcome == "ok").count(), 1);
    assert_eq!(signins.iter().filter(|e| e.outcome == "refused").count(), 2);
}

both!(sign_in_links_are_not_sent_more_than_five_times_an_hour);
async fn sign_in_links_are_not_sent_more_than_five_times_an_hour() {
    let t = TestApp::spawn().await;
    let email = "flood@example.org";
    t.apply_and_confirm(email).await;
    let before = outbox_count(&t, email).await;
    for _ in 0..7 {
        let (status, _) = request_link(&t, &client(), email).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(outbox_count(&t, email).await - before, 5);
}

const QUESTIONS: &str = r#"[
    {"id": "orcid", "label": "ORCID iD", "kind": "url", "help": "For example https://orcid.org/0000-0002-1825-0097"},
    {"id": "role", "label": "Your role", "kind": "select", "options": ["Student", "Faculty", "Industry"], "required": true},
    {"id": "country", "label": "Country of your institution", "kind": "country", "required": true},
    {"id": "ethics", "label": "An ethics board approved the project", "kind": "checkbox", "required": true},
    {"id": "plan", "label": "Compute plan", "kind": "long_text"}
]"#;

both!(the_models_questions_are_asked_checked_and_shown_to_reviewers_with_the_terms_version);
async fn the_models_questions_are_asked_checked_and_shown_to_reviewers_with_the_terms_version() {
    let t = TestApp::spawn().await;
    let slug: Slug = MODEL.parse().unwrap();
    models::set_questions(&t.app, &slug, QUESTIONS, "test")
        .await
        .unwrap();
    assert!(
        models::set_questions(
            &t.app,
            &slug,
            r#"[{"id": "x", "label": "X", "kind": "select"}]"#,
            "test"
        )
        .await
        .is_err()
    );
    let version = models::set_terms(&t.app, &slug, "Be nicer.\nCite the paper.", "test")
        .await
        .unwrap();
    assert_eq!(version, 2);

    let browser = client();
    let (_, page) = t.get_html(&browser, &format!("/models/{MODEL}")).await;
    for label in [
        "<label for=\"q_orcid\">ORCID iD",
        "<label for=\"q_role\">Your role",
        "<label for=\"q_country\">",
        "value=\"DE\"",
        "Cite the paper.",
        "(version 2)",
    ] {
        assert!(page.contains(label), "{label} missing from the form");
    }

    let base = [
        ("name", "Katherine Johnson"),
        ("email", "kj@nasa.example.gov"),
        ("affiliation", "NASA"),
        ("intended_use", "Trajectory research"),
        ("accept_terms", "on"),
        ("terms_version", "2"),
    ];
    let mut bad = base.to_vec();
    bad.extend([
        ("q_orcid", "orcid.org/0000"),
        ("q_role", "Dean"),
        ("q_country", "XX"),
        ("q_plan", "Two GPUs for a week"),
    ]);
    let (status, page) = t.apply(&browser, &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("Enter a full web address starting with https://"));
    assert!(page.contains("Choose one of the options"));
    assert!(page.contains("Choose a country from the list"));
    assert!(page.contains("Tick this box to apply"));
    assert!(page.contains("Two GPUs for a week"), "values are kept");
    assert!(page.contains("value=\"orcid.org/0000\""), "values are kept");

    // The terms changed while the form was open: accept the new version first.
    let mut stale = base.to_vec();
    stale.retain(|(k, _)| *k != "terms_version");
    stale.extend([
        ("terms_version", "1"),
        ("q_role", "Faculty"),
        ("q_country", "US"),
        ("q_ethics", "on"),
    ]);
    let (status, page) = t.apply(&browser, &stale).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("please read version 2 above"), "{page}");

    let mut good = base.to_vec();
    good.extend([
        ("q_orcid", "https://orcid.org/0000-0002-1825-0097"),
        ("q_role", "Faculty"),
        ("q_country", "US"),
        ("q_ethics", "on"),
    ]);
    let (status, _) = t.apply(&browser, &good).await;
    assert_eq!(status, StatusCode::OK);
    let mail = t
        .wait_for_mail("kj@nasa.example.gov", "Confirm your application")
        .await;
    let confirm = link_in(&mail, "/confirm/");
    t.post_form(&browser, &confirm, &confirm, &[]).await;

    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, "kj@nasa.example.gov").await;
    let (_, detail) = t.get_html(&reviewer, &format!("/admin/applications/{id}")).await;
    assert!(detail.contains("terms version 2 accepted"), "{detail}");
    assert!(detail.contains("<dt>Your role</dt><dd>Faculty</dd>"), "{detail}");
    assert!(detail.contains("United States of America (US)"), "{detail}");
    assert!(
        detail.contains("<dt>Compute plan</dt><dd>(no answer)</dd>"),
        "{detail}"
    );
    let (_, terms) = t.get_html(&reviewer, &format!("/models/{MODEL}/terms/1")).await;
    assert!(
        terms.contains("Do not share.") && terms.contains("version 2"),
        "{terms}"
    );
}

both!(a_denied_researcher_sees_the_reason_waits_for_the_cooldown_and_may_appeal_once);
async fn a_denied_researcher_sees_the_reason_waits_for_the_cooldown_and_may_appeal_once() {
    let t = TestApp::spawn().await;
    let email = "denied@uni.example.edu";
    t.apply_and_confirm(email).await;
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, email).await;
    let response = t
        .post_form(
            &reviewer,
            &format!("/admin/applications/{id}"),
            &format!("/admin/applications/{id}/deny"),
            &[("reason", "Please use your institutional address.")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let (_, model_page) = t.get_html(&client(), &format!("/models/{MODEL}")).await;
    assert!(
        model_page.contains("Reviews of this model usually take under an hour"),
        "{model_page}"
    );

    // Applying again at once: the page says only "check your e-mail", the mail says why and when.
    let (status, page) = t
        .apply(
            &client(),
            &[
                ("name", "D"),
                ("email", email),
                ("affiliation", "U"),
                ("intended_use", "Again"),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Check your e-mail"));
    let mail = t.wait_for_mail(email, "Your new application for").await;
    assert!(mail.contains("You can apply again from"), "{mail}");
    assert_eq!(
        application_ids(&t, email).await.len(),
        1,
        "nothing new was recorded"
    );

    let browser = client();
    let mut seen = HashSet::new();
    sign_in_researcher(&t, &browser, email, &mut seen).await;
    let (_, me) = t.get_html(&browser, "/me").await;
    assert!(me.contains("Please use your institutional address."), "{me}");
    assert!(me.contains("again from <strong>"), "{me}");
    assert!(me.contains("Appeal this decision"));
    let (_, model_page) = t.get_html(&browser, &format!("/models/{MODEL}")).await;
    assert!(
        model_page.contains("You can apply again from"),
        "signed in, the model page says when"
    );

    let appeal = format!("/me/applications/{id}/appeal");
    let response = t.post_form(&browser, "/me", &appeal, &[("message", "   ")]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = t
        .post_form(
            &browser,
            "/me",
            &appeal,
            &[("message", "I have no institutional address: I am independent.")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = t
        .post_form(&browser, "/me", &appeal, &[("message", "Once more")])
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT, "one appeal per denial");
    let apps = application_ids(&t, email).await;
    assert_eq!(apps.len(), 2);
    let (appeal_id, status, kind) = &apps[1];
    assert_eq!((status.as_str(), kind.as_str()), ("pending", "appeal"));

    let (_, detail) = t
        .get_html(&reviewer, &format!("/admin/applications/{appeal_id}"))
        .await;
    assert!(detail.contains("<strong>Appeal</strong>"), "{detail}");
    assert!(detail.contains(&format!("/admin/applications/{id}")));
    assert!(detail.contains("I have no institutional address: I am independent."));

    // Denied again, with no wait: a new application is recorded.
    t.post_form(
        &reviewer,
        &format!("/admin/applications/{appeal_id}"),
        &format!("/admin/applications/{appeal_id}/deny"),
        &[("reason", "Still no.")],
    )
    .await;
    let (_, me) = t.get_html(&browser, "/me").await;
    assert!(me.contains("Still no."));
    models::set_reapply_after(&t.app, &MODEL.parse().unwrap(), 0, "test")
        .await
        .unwrap();
    let (_, me) = t.get_html(&browser, "/me").await;
    assert!(me.contains("apply again</a> now"), "{me}");
    let (status, _) = t
        .apply(
            &client(),
            &[
                ("name", "D"),
                ("email", email),
                ("affiliation", "U"),
                ("intended_use", "Third time"),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(application_ids(&t, email).await.len(), 3);
    t.wait_for_events("application.appealed", 1).await;
}

both!(a_reviewers_question_is_answered_in_the_thread_and_every_step_is_audited);
async fn a_reviewers_question_is_answered_in_the_thread_and_every_step_is_audited() {
    let t = TestApp::spawn().await;
    let email = "curious@lab.example.org";
    t.apply_and_confirm(email).await;
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, email).await;
    let page = format!("/admin/applications/{id}");
    let ask = format!("/admin/applications/{id}/ask");

    let response = t.post_form(&reviewer, &page, &ask, &[("message", "")]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = t
        .post_form(
            &reviewer,
            &page,
            &ask,
            &[("message", "Which <GPU> cluster will you use?")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(application_ids(&t, email).await[0].1, "info_requested");
    let (_, waiting) = t.get_html(&reviewer, "/admin?status=info_requested").await;
    assert!(
        waiting.contains(email),
        "the queue lists applications waiting for an answer"
    );

    // The e-mail carries the question and a sign-in link.
    let mail = t.wait_for_mail(email, "A question about your application").await;
    assert!(mail.contains("Which <GPU> cluster will you use?"));
    let browser = client();
    let response = follow_link(&browser, &link_in(&mail, "/signin/")).await;
    assert_eq!(response.url().path(), "/me");
    let me = response.text().await.unwrap();
    assert!(
        me.contains("Which &#60;GPU&#62; cluster will you use?"),
        "escaped: {me}"
    );
    assert!(me.contains("Your answer to the reviewers"));

    let answer = format!("/me/applications/{id}/answer");
    let response = t
        .post_form(&browser, "/me", &answer, &[("message", "Our own, 8 A100s.")])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(application_ids(&t, email).await[0].1, "pending");
    let response = t
        .post_form(&browser, "/me", &answer, &[("message", "And again")])
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CONFLICT,
        "nobody is waiting for a second answer"
    );

    // Another researcher cannot answer someone else's application.
    let stranger = client();
    let mut seen = HashSet::new();
    t.apply_and_confirm("stranger@example.org").await;
    sign_in_researcher(&t, &stranger, "stranger@example.org", &mut seen).await;
    let response = t
        .post_form(&stranger, "/me", &answer, &[("message", "Me!")])
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let (_, detail) = t.get_html(&reviewer, &page).await;
    assert!(detail.contains("Our own, 8 A100s."), "{detail}");
    assert!(detail.contains("curious@lab.example.org (applicant) wrote"));

    let events = t.audit_events().await;
    let question = events
        .iter()
        .find(|e| e.action == "application.question")
        .unwrap();
    assert_eq!(question.actor.as_deref(), Some(REVIEWER));
    let answered = events
        .iter()
        .find(|e| e.action == "application.answered")
        .unwrap();
    assert_eq!(answered.actor.as_deref(), Some(email));
    assert_eq!(answered.application_id.as_deref(), Some(id.as_str()));
    let told = t.wait_for_mail(REVIEWER, "answered your question").await;
    assert!(
        told.contains(&format!("/admin/applications/{id}")),
        "the reviewers hear of the answer"
    );
}

both!(an_approved_renewal_extends_the_grant_instead_of_making_a_second_one);
async fn an_approved_renewal_extends_the_grant_instead_of_making_a_second_one() {
    // Grants last longer than an extension may add: the renewal's form offers
    // an extension's length, not a new grant's.
    let t = TestApp::spawn_with(|c| c.grant_ttl = std::time::Duration::from_secs(400 * 86_400)).await;
    let email = "renew@lab.example.org";
    t.approved_researcher(email).await;
    let browser = client();
    let mut seen = HashSet::new();
    sign_in_researcher(&t, &browser, email, &mut seen).await;

    let (_, access) = t.get_html(&browser, "/me/access").await;
    assert!(
        access.contains("shard-0.bin") && access.contains("/dl/"),
        "{access}"
    );
    let grant_id: String = sqlx::query_scalar("SELECT id FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    let before: i64 = sqlx::query_scalar("SELECT expires_at FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();

    // The download client's URL works without the session.
    let response = t
        .post_form(
            &browser,
            "/me/access",
            &format!("/me/access/{grant_id}/client-url"),
            &[],
        )
        .await;
    let page = response.text().await.unwrap();
    let manifest = unescape(between(&page, "weightgate download '", "'"));
    let json: serde_json::Value = client()
        .get(&manifest)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["grant"]["id"], grant_id.as_str());
    assert_eq!(json["releases"][0]["files"].as_array().unwrap().len(), 3);

    let response = t
        .post_form(
            &browser,
            "/me/access",
            &format!("/me/access/{grant_id}/renew"),
            &[("note", "The project runs a year longer.")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = t
        .post_form(
            &browser,
            "/me/access",
            &format!("/me/access/{grant_id}/renew"),
            &[],
        )
        .await;
    assert_eq!(
        response.status(),
        StatusCode::CONFLICT,
        "one open renewal at a time"
    );
    let (_, access) = t.get_html(&browser, "/me/access").await;
    assert!(access.contains("Your renewal is with the reviewers"));

    let reviewer = client();
    t.sign_in(&reviewer).await;
    let apps = application_ids(&t, email).await;
    let (renewal, status, kind) = &apps[1];
    assert_eq!((status.as_str(), kind.as_str()), ("pending", "renewal"));
    let (_, detail) = t
        .get_html(&reviewer, &format!("/admin/applications/{renewal}"))
        .await;
    assert!(detail.contains("approving extends that grant"), "{detail}");
    assert!(
        detail.contains(r#"name="days" type="number" min="1" max="365" value="365""#),
        "{detail}"
    );
    assert!(detail.contains("The project runs a year longer."));
    let response = t
        .post_form(
            &reviewer,
            &format!("/admin/applications/{renewal}"),
            &format!("/admin/applications/{renewal}/approve"),
            &[("days", "10")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let grants: Vec<(String, i64)> = sqlx::query_as("SELECT id, expires_at FROM grants")
        .fetch_all(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(grants.len(), 1, "no second grant");
    assert_eq!(
        grants[0].1,
        before + 10 * 86_400_000,
        "extended from the old expiry"
    );
    let mail = t.wait_for_mail(email, "is extended").await;
    assert!(mail.contains("/me/access"));
    let extended = t.wait_for_events("grant.extended", 1).await;
    assert_eq!(extended[0].grant_id.as_deref(), Some(grant_id.as_str()));
    assert_eq!(extended[0].actor.as_deref(), Some(REVIEWER));
    let (_, me) = t.get_html(&browser, "/me").await;
    assert!(me.contains("your access was extended"), "{me}");
}

both!(operators_set_a_models_questions_terms_and_wait_from_the_command_line);
async fn operators_set_a_models_questions_terms_and_wait_from_the_command_line() {
    let t = TestApp::spawn().await;
    let (ok, out, err) = crate::cli::weightgate(
        &t,
        &["model", "questions", MODEL, "--file", "-"],
        Some(r#"[{"id": "paper", "label": "A paper of yours", "kind": "url", "required": true}]"#),
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("now asks 1 question."), "{out}");
    let (ok, _, err) = crate::cli::weightgate(
        &t,
        &["model", "questions", MODEL, "--file", "-"],
        Some(r#"[{"id": "paper", "label": "Paper", "kind": "url", "options": ["a"]}]"#),
    );
    assert!(!ok);
    assert!(err.contains("only a select has options"), "{err}");
    let (ok, out, _) = crate::cli::weightgate(&t, &["model", "questions", MODEL], None);
    assert!(ok);
    assert!(out.contains("\"A paper of yours\""), "{out}");

    let terms = t.dir.path().join("terms.md");
    std::fs::write(&terms, "Research only.\nCite us.").unwrap();
    let terms = terms.display().to_string();
    let (ok, out, err) = crate::cli::weightgate(&t, &["model", "terms", MODEL, "--file", &terms], None);
    assert!(ok, "{err}");
    assert!(out.contains("version 2"), "{out}");
    let (ok, _, err) = crate::cli::weightgate(&t, &["model", "terms", MODEL, "--file", &terms], None);
    assert!(!ok, "the same text is not a new version");
    assert!(err.contains("already the terms"), "{err}");

    let (ok, _, err) = crate::cli::weightgate(&t, &["model", "reapply-after", MODEL, "--days", "5000"], None);
    assert!(!ok);
    assert!(err.contains("0 to 3650 days"), "{err}");
    let (ok, _, err) = crate::cli::weightgate(&t, &["model", "reapply-after", MODEL, "--days", "7"], None);
    assert!(ok, "{err}");

    let (_, page) = t.get_html(&client(), &format!("/models/{MODEL}")).await;
    assert!(page.contains("A paper of yours") && page.contains("Cite us.") && page.contains("(version 2)"));
    let actions: Vec<_> = t
        .audit_events()
        .await
        .into_iter()
        .map(|e| (e.action, e.actor))
        .collect();
    for action in [
        "model.questions_changed",
        "model.terms_changed",
        "model.reapply_after_changed",
    ] {
        let (_, actor) = actions.iter().find(|(a, _)| a == action).unwrap();
        assert!(
            actor.as_deref().unwrap_or("").starts_with("operator:"),
            "{action}"
        );
    }
}
