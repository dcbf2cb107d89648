//! Review at scale: roles and assignments, N-of-M and automatic approval,
//! the queue's filters and pages, bulk decisions, grant extension, expiry
//! reminders and records, reviewer notifications, sign-in throttling.

use reqwest::StatusCode;
use weightgate::{
    domain::accounts,
    domain::policy::{self, PolicyChange},
    types::{Email, states::Notify},
};

use crate::helpers::*;

pub(crate) const SECOND: &str = "second@lab.example.org";

/// Adds a (non-admin) reviewer and signs a new client in as them.
pub(crate) async fn second_reviewer(t: &TestApp, assigned: bool) -> reqwest::Client {
    let email: Email = SECOND.parse().unwrap();
    accounts::add_reviewer(&t.app, &email, PASSWORD, false, "test")
        .await
        .unwrap();
    if assigned {
        policy::assign(&t.app, MODEL, &email, true, "test").await.unwrap();
    }
    let c = client();
    let (status, _) = sign_in_as(t, &c, SECOND, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    c
}

pub(crate) async fn sign_in_as(
    t: &TestApp,
    c: &reqwest::Client,
    email: &str,
    password: &str,
) -> (StatusCode, String) {
    let response = t
        .post_form(
            c,
            "/admin/login",
            "/admin/login",
            &[("email", email), ("password", password)],
        )
        .await;
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, retry)
}

pub(crate) async fn set_policy(t: &TestApp, approvals: i64, domains: &str) {
    policy::set(
        &t.app,
        MODEL,
        &PolicyChange {
            approvals_needed: approvals,
            auto_approve_domains: domains.into(),
            review_target_days: 7,
        },
        "test",
    )
    .await
    .unwrap();
}

async fn grants_of(t: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap()
}

both!(an_application_needs_approvals_from_two_different_reviewers_when_the_policy_says_two);
async fn an_application_needs_approvals_from_two_different_reviewers_when_the_policy_says_two() {
    let t = TestApp::spawn().await;
    set_policy(&t, 2, "").await;
    t.apply_and_confirm("two@uni.example.edu").await;
    let admin = client();
    t.sign_in(&admin).await;
    let id = t.pending_application(&admin, "two@uni.example.edu").await;
    let page = format!("/admin/applications/{id}");
    let approve = format!("/admin/applications/{id}/approve");

    let first = t
        .post_form(&admin, &page, &approve, &[("days", "10"), ("note", "Welcome")])
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(grants_of(&t).await, 0, "one approval of two grants nothing");
    let (_, shown) = t.get_html(&admin, &page).await;
    assert!(
        shown.contains("needs 2 approvals from different reviewers; 1 so far"),
        "{shown}"
    );
    assert!(shown.contains("You approved already"));

    let again = t.post_form(&admin, &page, &approve, &[("days", "10")]).await;
    assert_eq!(
        again.status(),
        StatusCode::CONFLICT,
        "the same reviewer cannot approve twice"
    );
    assert_eq!(grants_of(&t).await, 0);

    let second = second_reviewer(&t, true).await;
    let done = t.post_form(&second, &page, &approve, &[("days", "20")]).await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(grants_of(&t).await, 1);
    let mail = t.wait_for_mail("two@uni.example.edu", "is approved").await;
    assert!(mail.contains("/access/"));

    let approvals: Vec<_> = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "review.approved")
        .map(|e| (e.actor.unwrap(), e.reason.unwrap()))
        .collect();
    assert_eq!(
        approvals,
        [
            (REVIEWER.to_owned(), "approval 1 of 2".to_owned()),
            (SECOND.to_owned(), "approval 2 of 2".to_owned())
        ]
    );
}

both!(a_reviewer_sees_and_decides_only_the_models_assigned_to_them);
async fn a_reviewer_sees_and_decides_only_the_models_assigned_to_them() {
    let t = TestApp::spawn().await;
    t.apply_and_confirm("someone@uni.example.edu").await;
    let admin = client();
    t.sign_in(&admin).await;
    let id = t.pending_application(&admin, "someone@uni.example.edu").await;

    let reviewer = second_reviewer(&t, false).await;
    let (_, queue) = t.get_html(&reviewer, "/admin").await;
    assert!(
        !queue.contains("someone@uni.example.edu"),
        "an unassigned model's queue is hidden"
    );
    let (status, _) = t.get_html(&reviewer, &format!("/admin/applications/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = t.get_html(&reviewer, "/admin/reviewers").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "reviewers do not manage reviewers");
    let (status, _) = t.get_html(&reviewer, "/admin/models").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The admin assigns them in the dashboard.
    let (_, page) = t.get_html(&admin, "/admin/reviewers").await;
    let second_id = between(
        page.split("<tr>").find(|row| row.contains(SECOND)).unwrap(),
        "/admin/reviewers/",
        "\"",
    )
    .to_owned();
    let assigned = t
        .post_form(
            &admin,
            "/admin/reviewers",
            &format!("/admin/reviewers/{second_id}"),
            &[("change", "assign"), ("model", MODEL)],
        )
        .await;
    assert_eq!(assigned.status(), StatusCode::OK);
    let (_, page) = t.get_html(&admin, "/admin/reviewers").await;
    let row = page.split("<tr>").find(|row| row.contains(SECOND)).unwrap();
    assert!(row.contains(&format!("<td>{MODEL}</td>")), "{row}");

    // No admin can demote or disable themselves, from the dashboard or the
    // domain below it: the portal could be left with no admin.
    let me = weightgate::db::reviewers::find_by_email(t.app.db.pool(), REVIEWER)
        .await
        .unwrap()
        .unwrap();
    for change in ["reviewer", "disable"] {
        let refused = t
            .post_form(
                &admin,
                "/admin/reviewers",
                &format!("/admin/reviewers/{}", me.id),
                &[("change", change)],
            )
            .await;
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{change}");
    }
    let refused =
        accounts::change_reviewer(&t.app, &me.id, accounts::ReviewerChange::Admin(false), REVIEWER).await;
    assert!(refused.is_err());
    let me = weightgate::db::reviewers::find_by_email(t.app.db.pool(), REVIEWER)
        .await
        .unwrap()
        .unwrap();
    assert!(
        me.is_admin() && me.disabled_at.is_none(),
        "still an admin, still signed in"
    );

    // Nor does the form that adds reviewers touch an existing account: not
    // the admin's own role, not another reviewer's password.
    let password_before = me.password_hash.clone();
    for (email, password) in [
        (REVIEWER, "a password the admin chose"),
        (SECOND, "taken over by an admin"),
    ] {
        let refused = t
            .post_form(
                &admin,
                "/admin/reviewers",
                "/admin/reviewers",
                &[("email", email), ("password", password)],
            )
            .await;
        let page = refused.text().await.unwrap();
        assert!(page.contains("already has an account"), "{email}: {page}");
    }
    let me = weightgate::db::reviewers::find_by_email(t.app.db.pool(), REVIEWER)
        .await
        .unwrap()
        .unwrap();
    assert!(me.is_admin(), "the form did not demote its admin");
    assert_eq!(me.password_hash, password_before);
    let (status, _) = sign_in_as(&t, &client(), SECOND, PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the second reviewer's own password still works"
    );

    let id = t.pending_application(&reviewer, "someone@uni.example.edu").await;
    let approved = t
        .post_form(
            &reviewer,
            &format!("/admin/applications/{id}"),
            &format!("/admin/applications/{id}/approve"),
            &[("days", "5")],
        )
        .await;
    assert_eq!(approved.status(), StatusCode::OK);
    assert_eq!(grants_of(&t).await, 1);
    // The page names the grant the approval made, not as an earlier one.
    let (_, page) = t.get_html(&reviewer, &format!("/admin/applications/{id}")).await;
    let (made, earlier) = page.split_once("Earlier applications and grants").unwrap();
    assert!(made.contains("the grant it made"), "{made}");
    assert!(!earlier.contains("/admin/grants/"), "{earlier}");
    let events = t.audit_events().await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "reviewer.assigned" && e.actor.as_deref() == Some(REVIEWER))
    );
}

both!(an_allow_listed_domain_is_approved_by_rule_and_the_log_names_the_rule);
async fn an_allow_listed_domain_is_approved_by_rule_and_the_log_names_the_rule() {
    let t = TestApp::spawn().await;
    set_policy(&t, 2, "uni.example.edu").await;
    t.apply_and_confirm("fast@cs.uni.example.edu").await;
    let mail = t.wait_for_mail("fast@cs.uni.example.edu", "is approved").await;
    assert!(mail.contains("/access/"));
    let approved = t.wait_for_events("review.approved", 1).await;
    assert_eq!(
        approved[0].actor.as_deref(),
        Some(weightgate::domain::reviews::RULES_ACTOR)
    );
    assert_eq!(
        approved[0].reason.as_deref(),
        Some(
            "rule: e-mail domain cs.uni.example.edu is in the allow-list (uni.example.edu) \
             and every required question is answered"
        )
    );

    // Any other domain waits for the reviewers.
    t.apply_and_confirm("slow@elsewhere.example.com").await;
    let admin = client();
    t.sign_in(&admin).await;
    t.pending_application(&admin, "slow@elsewhere.example.com").await;
    assert_eq!(grants_of(&t).await, 1);
}

/// Inserts a confirmed application straight into the database, `age_days` old.
async fn queued(t: &TestApp, now: i64, n: usize, email: &str, affiliation: &str, age_days: i64) {
    let pool = t.app.db.pool();
    let model: String = sqlx::query_scalar("SELECT id FROM models WHERE slug = $1")
        .bind(MODEL)
        .fetch_one(pool)
        .await
        .unwrap();
    let researcher = format!("r-{n}");
    let at = now - age_days * 86_400_000 - n as i64;
    sqlx::query("INSERT INTO researchers (id, email, created_at) VALUES ($1, $2, $3)")
        .bind(&researcher)
        .bind(email)
        .bind(at)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO applications (id, model_id, researcher_id, name, affiliation, intended_use,
             terms_version, status, confirm_token_hash, created_at, confirmed_at)
         VALUES ($1, $2, $3, $4, $5, 'Evaluation', 1, 'pending', $6, $7, $7)",
    )
    .bind(format!("a-{n:03}"))
    .bind(&model)
    .bind(&researcher)
    .bind(format!("Applicant {n:03}"))
    .bind(affiliation)
    .bind(format!("token-{n}"))
    .bind(at)
    .execute(pool)
    .await
    .unwrap();
}

fn names(page: &str) -> Vec<String> {
    all_between(page, "\">Applicant ", "<")
        .into_iter()
        .map(str::to_owned)
        .collect()
}

both!(the_queue_filters_sorts_pages_and_marks_overdue_applications);
async fn the_queue_filters_sorts_pages_and_marks_overdue_applications() {
    let t = TestApp::spawn().await;
    let now = weightgate::types::now_ms();
    for n in 0..55 {
        let (email, affiliation) = if n % 5 == 0 {
            (format!("p{n}@cs.uni.example.edu"), "Uni of Examples")
        } else {
            (format!("p{n}@corp.example.com"), "Example Corp 100%")
        };
        queued(&t, now, n, &email, affiliation, if n < 3 { 10 } else { 0 }).await;
    }
    let admin = client();
    t.sign_in(&admin).await;

    let (_, first) = t.get_html(&admin, "/admin").await;
    assert!(first.contains("Applications <span class=\"count\">55</span>"));
    assert!(first.contains("Page 1 of 2"));
    let shown = names(&first);
    assert_eq!(shown.len(), 50);
    assert_eq!(shown[0], "002", "the longest waiting comes first");
    assert_eq!(
        first.matches("class=\"badge overdue\">overdue").count(),
        3,
        "three waited past the 7-day target"
    );
    let next = unescape(between(&first, "href=\"/admin?", "\" rel=\"next\""));
    let (_, second) = t.get_html(&admin, &format!("/admin?{next}")).await;
    assert_eq!(names(&second).len(), 5);
    assert!(second.contains("Page 2 of 2"));

    let (_, newest) = t.get_html(&admin, "/admin?sort=newest").await;
    assert_eq!(names(&newest)[0], "003");

    let (_, domain) = t.get_html(&admin, "/admin?domain=uni.example.edu").await;
    assert_eq!(names(&domain).len(), 11, "subdomains of the domain match");
    let (_, text) = t.get_html(&admin, "/admin?q=100%25").await;
    assert_eq!(names(&text).len(), 44, "a % in the text is matched literally");
    let (_, waited) = t.get_html(&admin, "/admin?waited=5").await;
    assert_eq!(names(&waited), ["002", "001", "000"]);
    let (_, none) = t.get_html(&admin, "/admin?status=denied").await;
    assert!(names(&none).is_empty());

    let (status, _) = t.get_html(&admin, "/admin?waited=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = t.get_html(&admin, "/admin?status=whatever").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

both!(a_bulk_denial_records_and_emails_each_application_on_its_own);
async fn a_bulk_denial_records_and_emails_each_application_on_its_own() {
    let t = TestApp::spawn().await;
    for email in [
        "b1@corp.example.com",
        "b2@corp.example.com",
        "b3@corp.example.com",
    ] {
        t.apply_and_confirm(email).await;
    }
    let admin = client();
    t.sign_in(&admin).await;
    let saved = t
        .post_form(
            &admin,
            "/admin/models",
            "/admin/templates",
            &[
                ("title", "No affiliation"),
                ("body", "We release only to research institutions."),
            ],
        )
        .await;
    assert_eq!(saved.status(), StatusCode::OK);
    let (_, models) = t.get_html(&admin, "/admin/models").await;
    let template = between(&models, "/admin/templates/", "/delete").to_owned();

    let b1 = t.pending_application(&admin, "b1@corp.example.com").await;
    let b2 = t.pending_application(&admin, "b2@corp.example.com").await;
    let (_, queue) = t.get_html(&admin, "/admin").await;
    let response = admin
        .post(t.url("/admin/applications/bulk"))
        .form(&[
            ("authenticity_token", csrf(&queue).as_str()),
            ("id", b1.as_str()),
            ("id", b2.as_str()),
            ("id", "no-such-application"),
            ("action", "deny"),
            ("template", template.as_str()),
            ("reason", "Apply again with a university address."),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert_eq!(page.matches(": denied</li>").count(), 2, "{page}");
    assert!(
        page.contains("no such application"),
        "a bad row is reported, not fatal"
    );

    for to in ["b1@corp.example.com", "b2@corp.example.com"] {
        let mail = t.wait_for_mail(to, "Your application for").await;
        assert!(mail.contains("We release only to research institutions."));
        assert!(mail.contains("Apply again with a university address."));
    }
    let denied = t.wait_for_events("review.denied", 2).await;
    assert_eq!(denied.len(), 2, "one event per application");
    assert!(denied.iter().all(|e| e.actor.as_deref() == Some(REVIEWER)));
    t.pending_application(&admin, "b3@corp.example.com").await;

    let empty = admin
        .post(t.url("/admin/applications/bulk"))
        .form(&[
            ("authenticity_token", csrf(&page).as_str()),
            ("action", "approve"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST, "nothing selected");
}

both!(grants_are_extended_reminded_before_they_end_and_recorded_when_they_expire);
async fn grants_are_extended_reminded_before_they_end_and_recorded_when_they_expire() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("ends@uni.example.edu").await;
    let grant: String = sqlx::query_scalar("SELECT id FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    let admin = client();
    t.sign_in(&admin).await;

    // 30 days is beyond the 7-day reminder window: nothing to send yet.
    let round = weightgate::domain::notices::run_once(&t.app).await.unwrap();
    assert_eq!((round.reminders, round.expired), (0, 0));

    let soon = weightgate::types::now_ms() + 2 * 86_400_000;
    sqlx::query("UPDATE grants SET expires_at = $1")
        .bind(soon)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let round = weightgate::domain::notices::run_once(&t.app).await.unwrap();
    assert_eq!(round.reminders, 1);
    let again = weightgate::domain::notices::run_once(&t.app).await.unwrap();
    assert_eq!(again.reminders, 0, "one reminder per grant");
    t.wait_for_mail("ends@uni.example.edu", "ends on").await;

    let page = format!("/admin/grants/{grant}");
    let extended = t
        .post_form(
            &admin,
            &page,
            &format!("/admin/grants/{grant}/extend"),
            &[("days", "10")],
        )
        .await;
    assert_eq!(extended.status(), StatusCode::OK);
    let expires: i64 = sqlx::query_scalar("SELECT expires_at FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(expires, soon + 10 * 86_400_000);
    t.wait_for_mail("ends@uni.example.edu", "was extended").await;
    let bad = t
        .post_form(
            &admin,
            &page,
            &format!("/admin/grants/{grant}/extend"),
            &[("days", "0")],
        )
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Past its end, the grant stops working and its expiry is recorded once.
    sqlx::query("UPDATE grants SET expires_at = $1")
        .bind(weightgate::types::now_ms() - 1000)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    assert!(
        t.download_links(&access).await.is_empty(),
        "an expired grant lists no links"
    );
    let round = weightgate::domain::notices::run_once(&t.app).await.unwrap();
    assert_eq!(round.expired, 1);
    assert_eq!(
        weightgate::domain::notices::run_once(&t.app)
            .await
            .unwrap()
            .expired,
        0
    );
    let events = t.audit_events().await;
    for action in ["grant.reminded", "grant.extended", "grant.expired"] {
        assert_eq!(
            events.iter().filter(|e| e.action == action).count(),
            1,
            "{action}"
        );
    }
    let (_, history) = t.get_html(&admin, &page).await;
    assert!(history.contains("grant.extended") && history.contains("grant.expired"));
}

both!(reviewers_hear_of_waiting_applications_at_once_or_in_a_daily_digest);
async fn reviewers_hear_of_waiting_applications_at_once_or_in_a_daily_digest() {
    let t = TestApp::spawn().await;
    let _second = second_reviewer(&t, true).await;
    let email: Email = SECOND.parse().unwrap();
    let id = weightgate::db::reviewers::find_by_email(t.app.db.pool(), email.as_str())
        .await
        .unwrap()
        .unwrap()
        .id;
    accounts::change_reviewer(
        &t.app,
        &id,
        accounts::ReviewerChange::Notify(Notify::Digest),
        "test",
    )
    .await
    .unwrap();

    t.apply_and_confirm("waits@uni.example.edu").await;
    // The model has an assigned reviewer, who chose the digest: the admin is not told.
    let round = weightgate::domain::notices::run_once(&t.app).await.unwrap();
    assert_eq!(round.digests, 1);
    let digest = t.wait_for_mail(SECOND, "applications wait for your review").await;
    assert!(digest.contains("waits@uni.example.edu"));
    assert_eq!(
        weightgate::domain::notices::run_once(&t.app)
            .await
            .unwrap()
            .digests,
        0,
        "once a day"
    );

    accounts::change_reviewer(
        &t.app,
        &id,
        accounts::ReviewerChange::Notify(Notify::Immediate),
        "test",
    )
    .await
    .unwrap();
    t.apply_and_confirm("next@uni.example.edu").await;
    let mail = t.wait_for_mail(SECOND, "waits for review").await;
    assert!(mail.contains("next@uni.example.edu") && mail.contains("/admin/applications/"));
}

both!(sign_in_is_throttled_per_account_whether_or_not_it_exists);
async fn sign_in_is_throttled_per_account_whether_or_not_it_exists() {
    let t = TestApp::spawn().await;
    for account in [REVIEWER, "ghost@lab.example.org"] {
        let c = client();
        let mut statuses = Vec::new();
        let mut retry = String::new();
        for _ in 0..6 {
            let (status, after) = sign_in_as(&t, &c, account, "wrong password!").await;
            statuses.push(status);
            retry = after;
        }
        assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
        assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS, "{account}");
        assert!(retry.parse::<u64>().unwrap() >= 1);
    }
    // Even the right password waits until the limit lifts.
    let (status, _) = sign_in_as(&t, &client(), REVIEWER, PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Throttled attempts are counted per client network: the first is its
    // own event, the rest one summary once the window ends.
    t.app.refusals.flush(&t.app.audit).await;
    let throttled: i64 = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("throttled"))
        .map(|e| e.occurrences.unwrap_or(1))
        .sum();
    assert_eq!(
        throttled, 3,
        "each sixth attempt, and the right password after them, were refused unchecked"
    );
    let checked = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("bad_credentials"))
        .count();
    assert_eq!(checked, 10, "five passwords checked per account");
}

both!(a_disabled_reviewer_is_signed_out_and_cannot_sign_in);
async fn a_disabled_reviewer_is_signed_out_and_cannot_sign_in() {
    let t = TestApp::spawn().await;
    let second = second_reviewer(&t, true).await;
    let (status, _) = t.get_html(&second, "/admin").await;
    assert_eq!(status, StatusCode::OK);
    let (ok, out, err) = crate::cli::weightgate(&t, &["reviewer", "disable", SECOND], None);
    assert!(ok, "{err}");
    assert!(out.contains("is disabled"));
    let response = second.get(t.url("/admin")).send().await.unwrap();
    assert_eq!(
        response.url().path(),
        "/admin/login",
        "the open session stops working"
    );
    let (status, _) = sign_in_as(&t, &client(), SECOND, PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (ok, _, err) = crate::cli::weightgate(&t, &["reviewer", "enable", SECOND], None);
    assert!(ok, "{err}");
    let (status, _) = sign_in_as(&t, &client(), SECOND, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

both!(operators_set_policies_assign_reviewers_and_extend_grants_from_the_command_line);
async fn operators_set_policies_assign_reviewers_and_extend_grants_from_the_command_line() {
    let t = TestApp::spawn().await;
    let email: Email = SECOND.parse().unwrap();
    accounts::add_reviewer(&t.app, &email, PASSWORD, false, "test")
        .await
        .unwrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = crate::cli::weightgate(&t, args, None);
        assert!(ok, "{args:?}: {err}");
        out
    };
    t.approved_researcher("cli@uni.example.edu").await;
    let grant: String = sqlx::query_scalar("SELECT id FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    let out = run(&["grant", "extend", &grant, "--days", "3"]);
    assert!(out.contains("now ends"), "{out}");

    let out = run(&[
        "model",
        "policy",
        MODEL,
        "--approvals",
        "2",
        "--auto-approve-domains",
        "uni.example.edu",
    ]);
    assert!(
        out.contains("2 approval(s)") && out.contains("for uni.example.edu"),
        "{out}"
    );
    let (ok, _, err) = crate::cli::weightgate(&t, &["model", "policy", MODEL, "--approvals", "0"], None);
    assert!(!ok);
    assert!(err.contains("approvals needed is 1 to 10"), "{err}");
    run(&["reviewer", "assign", SECOND, MODEL]);
    run(&["reviewer", "notify", SECOND, "digest"]);
    let list = run(&["reviewer", "list", "--format", "jsonl"]);
    let second = list.lines().find(|l| l.contains(SECOND)).unwrap();
    let row: serde_json::Value = serde_json::from_str(second).unwrap();
    assert_eq!(row["models"], serde_json::json!([MODEL]));
    assert_eq!(row["notify"], "digest");
}

both!(admins_edit_a_models_questions_terms_and_wait_in_the_dashboard_without_losing_a_refused_edit);
async fn admins_edit_a_models_questions_terms_and_wait_in_the_dashboard_without_losing_a_refused_edit() {
    let t = TestApp::spawn().await;
    let admin = client();
    t.sign_in(&admin).await;
    let bad = r#"[{"id": "orcid", "label": "ORCID", "kind": "telepathy"}]"#;
    let refused = t
        .post_form(
            &admin,
            "/admin/models",
            &format!("/admin/models/{MODEL}/questions"),
            &[("questions", bad)],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = refused.text().await.unwrap();
    assert!(page.contains("The questions were not saved"), "{page}");
    assert!(
        page.contains("telepathy"),
        "the refused text is kept in the field"
    );
    assert!(
        page.contains("<details class=\"json\" open>"),
        "and shown: {page}"
    );

    let good = r#"[{"id": "orcid", "label": "Your ORCID iD", "kind": "url", "required": true}]"#;
    let saved = t
        .post_form(
            &admin,
            "/admin/models",
            &format!("/admin/models/{MODEL}/questions"),
            &[("questions", good)],
        )
        .await;
    assert!(saved.text().await.unwrap().contains("now asks 1 question."));
    let terms = t
        .post_form(
            &admin,
            "/admin/models",
            &format!("/admin/models/{MODEL}/terms"),
            &[("terms", "Be nice.\r\nCite the paper.")],
        )
        .await;
    assert!(terms.text().await.unwrap().contains("terms version 2"));
    let (_, model) = t.get_html(&client(), &format!("/models/{MODEL}")).await;
    assert!(model.contains("Your ORCID iD") && model.contains("Cite the paper."));

    let policy = t
        .post_form(
            &admin,
            "/admin/models",
            &format!("/admin/models/{MODEL}/policy"),
            &[
                ("approvals_needed", "1"),
                ("review_target_days", "3"),
                ("auto_approve_domains", ""),
                ("reapply_after_days", "14"),
            ],
        )
        .await;
    assert_eq!(policy.status(), StatusCode::OK);
    let days: i64 = sqlx::query_scalar("SELECT reapply_after_days FROM models WHERE slug = $1")
        .bind(MODEL)
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(days, 14);
    let events: Vec<String> = t.audit_events().await.into_iter().map(|e| e.action).collect();
    for action in ["model.questions_changed", "model.terms_changed", "model.policy"] {
        assert!(events.iter().any(|a| a == action), "{action}");
    }
}

both!(admins_build_questions_row_by_row_and_a_refused_row_comes_back_as_typed);
async fn admins_build_questions_row_by_row_and_a_refused_row_comes_back_as_typed() {
    let t = TestApp::spawn().await;
    let admin = client();
    t.sign_in(&admin).await;
    let (_, page) = t.get_html(&admin, "/admin/models").await;
    assert!(
        page.contains("New question") && page.contains("name=\"r0_label\""),
        "{page}"
    );
    let path = format!("/admin/models/{MODEL}/questions");
    let saved = t
        .post_form(
            &admin,
            "/admin/models",
            &path,
            &[
                ("r0_position", "1"),
                ("r0_label", "Your ORCID iD"),
                ("r0_id", ""),
                ("r0_kind", "url"),
                ("r0_required", "on"),
                ("r1_position", "0.5"),
                ("r1_label", "Your role"),
                ("r1_id", "role"),
                ("r1_kind", "select"),
                ("r1_options", "Student\r\nFaculty\r\n"),
                ("r2_position", "3"),
                ("r2_label", ""),
                ("r2_id", ""),
                ("r2_kind", "text"),
            ],
        )
        .await;
    let page = saved.text().await.unwrap();
    assert!(page.contains("now asks 2 questions"), "{page}");
    // The editor shows them in their new order, with their ids.
    assert!(
        page.contains("Question 1: <code>role</code>")
            && page.contains("Question 2: <code>your_orcid_id</code>"),
        "{page}"
    );
    let (_, form) = t.get_html(&client(), &format!("/models/{MODEL}")).await;
    let role = form.find("Your role").unwrap();
    let orcid = form.find("Your ORCID iD").unwrap();
    assert!(role < orcid, "asked in the order of their positions");
    assert!(form.contains("name=\"q_role\"") && form.contains("name=\"q_your_orcid_id\""));

    // A select without options is refused; what was typed stays in the rows.
    let refused = t
        .post_form(
            &admin,
            "/admin/models",
            &path,
            &[
                ("r0_label", "Your role"),
                ("r0_id", "role"),
                ("r0_kind", "select"),
                ("r0_options", "Student\nFaculty"),
                ("r1_label", "Favourite <colour>"),
                ("r1_id", ""),
                ("r1_kind", "select"),
                ("r1_options", ""),
            ],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("The questions were not saved") && page.contains("a select has 1 to"),
        "{page}"
    );
    assert!(
        page.contains("value=\"Favourite &#60;colour&#62;\"")
            || page.contains("value=\"Favourite &lt;colour&gt;\""),
        "{page}"
    );
    assert!(
        page.contains("New question 1"),
        "a refused new row is still a new one: {page}"
    );
    let (_, form) = t.get_html(&client(), &format!("/models/{MODEL}")).await;
    assert!(form.contains("Your ORCID iD"), "nothing changed");

    // A row the editor cannot read at all comes back as typed too.
    let unreadable = t
        .post_form(
            &admin,
            "/admin/models",
            &path,
            &[
                ("r0_existing", "1"),
                ("r0_label", "Your role"),
                ("r0_id", "role"),
                ("r0_kind", "select"),
                ("r0_options", "Student\nFaculty"),
                ("r0_remove", "on"),
                ("r1_label", "Shoe size"),
                ("r1_id", "shoe"),
                ("r1_kind", "text"),
                ("r1_position", "first"),
                ("r1_help", "In EU sizes"),
            ],
        )
        .await;
    let page = unreadable.text().await.unwrap();
    assert!(
        page.contains("Shoe size") && page.contains("the position must be a number"),
        "{page}"
    );
    for typed in [
        "value=\"first\"",
        "value=\"Shoe size\"",
        "In EU sizes",
        "name=\"r0_remove\" checked",
    ] {
        assert!(page.contains(typed), "{typed} is kept: {page}");
    }

    // Removing a row removes the question.
    let removed = t
        .post_form(
            &admin,
            "/admin/models",
            &path,
            &[
                ("r0_label", "Your role"),
                ("r0_id", "role"),
                ("r0_kind", "select"),
                ("r0_options", "Student\nFaculty"),
                ("r1_label", "Your ORCID iD"),
                ("r1_id", "your_orcid_id"),
                ("r1_kind", "url"),
                ("r1_remove", "on"),
            ],
        )
        .await;
    assert!(removed.text().await.unwrap().contains("now asks 1 question."));
    let changes = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "model.questions_changed")
        .count();
    assert_eq!(changes, 2, "the refused edit is not recorded as a change");
}

both!(every_form_that_changes_something_redirects_and_says_so_once);
/// Post/redirect/get: a form that changed something answers with a
/// redirect (followed here as a browser does, with a GET), the page it lands
/// on says what was done, and loading that page again says it no more, so a
/// reload never sends the form twice. A refused form comes back as a page
/// with the reason (422) and what was typed.
async fn every_form_that_changes_something_redirects_and_says_so_once() {
    let t = TestApp::spawn().await;
    let admin = client();
    t.sign_in(&admin).await;
    let slug = MODEL;
    /// (page with the form, its action, fields, where it lands, what it says)
    type Case<'a> = (String, String, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/admin/reviewers".into(),
            "/admin/reviewers".into(),
            vec![
                ("email", "third@lab.example.org"),
                ("password", "a third long password"),
            ],
            "/admin/reviewers",
            "third@lab.example.org can sign in now.",
        ),
        (
            "/admin/models".into(),
            format!("/admin/models/{slug}/policy"),
            vec![
                ("approvals_needed", "1"),
                ("auto_approve_domains", ""),
                ("review_target_days", "5"),
                ("reapply_after_days", "0"),
            ],
            "/admin/models",
            "is saved.",
        ),
        (
            "/admin/models".into(),
            format!("/admin/models/{slug}/questions"),
            vec![(
                "questions",
                r#"[{"id": "plan", "label": "Plan", "kind": "long_text"}]"#,
            )],
            "/admin/models",
            "asks 1 question",
        ),
        (
            "/admin/models".into(),
            format!("/admin/models/{slug}/terms"),
            vec![("terms", "Use it for research only.")],
            "/admin/models",
            "has terms version 2",
        ),
        (
            "/admin/account".into(),
            "/admin/account".into(),
            vec![("notify", "digest")],
            "/admin/account",
            "Saved.",
        ),
        (
            "/admin/account".into(),
            "/admin/account/password".into(),
            vec![
                ("current", PASSWORD),
                ("new", "a brand new long password"),
                ("again", "a brand new long password"),
            ],
            "/admin/account",
            "Your password is changed",
        ),
    ];
    for (page, action, fields, lands, says) in cases {
        let response = t.post_form(&admin, &page, &action, &fields).await;
        assert_eq!(response.status(), StatusCode::OK, "{action}");
        assert_eq!(response.url().path(), lands, "{action} redirects to {lands}");
        let shown = response.text().await.unwrap();
        assert!(shown.contains(says), "{action}: {says:?} not in\n{shown}");
        let (_, again) = t.get_html(&admin, lands).await;
        assert!(!again.contains(says), "{action}: the message shows once");
    }

    // Bulk decisions land on the queue, which lists each outcome once.
    t.apply_and_confirm("bulk@uni.example.edu").await;
    let id = t.pending_application(&admin, "bulk@uni.example.edu").await;
    let response = t
        .post_form(
            &admin,
            "/admin",
            "/admin/applications/bulk",
            &[
                ("id", id.as_str()),
                ("action", "deny"),
                ("reason", "Not a research use."),
            ],
        )
        .await;
    assert_eq!(response.url().path(), "/admin");
    let shown = response.text().await.unwrap();
    assert!(
        shown.contains("bulk@uni.example.edu") && shown.contains("class=\"results\""),
        "{shown}"
    );
    let (_, again) = t.get_html(&admin, "/admin").await;
    assert!(!again.contains("class=\"results\""), "the outcomes show once");

    // A refused form stays where it was, with the reason and what was typed.
    let refused = t
        .post_form(
            &admin,
            "/admin/reviewers",
            "/admin/reviewers",
            &[("email", "not an address"), ("password", "a third long password")],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.url().path(), "/admin/reviewers");
    let refused = t
        .post_form(
            &admin,
            "/admin/models",
            &format!("/admin/models/{slug}/terms"),
            &[("terms", "")],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A researcher's sign-in request lands on a page that needs no state.
    let researcher = client();
    let response = t
        .post_form(
            &researcher,
            "/signin",
            "/signin",
            &[("email", "bulk@uni.example.edu")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.url().path(), "/signin/sent");
    assert!(response.text().await.unwrap().contains("Check your e-mail"));
}
