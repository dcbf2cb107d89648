//! The JSON API under /api/v1, as a lab's script drives it: tokens and
//! their scopes on every route of the table, decisions made once however
//! often a script retries them, the audit trail of each use, the token
//! commands, and the OpenAPI document checked against every route and by a
//! validator nobody here wrote.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use weightgate::{
    audit::Client as AuditClient,
    db::reviewers::Reviewer,
    domain::{
        accounts::{self, ReviewerChange},
        tokens::{self, Scope},
    },
    types::Email,
    web::{Access, route_table},
};

use crate::{cli::weightgate, helpers::*};

const ASSIGNED: &str = "assigned@lab.example.org";
const NOBODY: &str = "unassigned@lab.example.org";

async fn reviewer(t: &TestApp, email: &str) -> Reviewer {
    weightgate::db::reviewers::find_by_email(t.app.db.pool(), email)
        .await
        .unwrap()
        .unwrap()
}

/// A token of `email` with `scopes`; its secret.
async fn token(t: &TestApp, email: &str, name: &str, scopes: &str) -> String {
    let owner = reviewer(t, email).await;
    tokens::create(
        &t.app,
        &owner,
        name,
        scopes.parse().unwrap(),
        30,
        "test",
        AuditClient::default(),
    )
    .await
    .unwrap()
    .secret
}

/// Sends `method path` with `token` (and a JSON body for a POST).
async fn call(
    t: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = t.client.request(method.clone(), t.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if method == Method::POST {
        request = request.json(&body.unwrap_or_else(|| json!({})));
    }
    request.send().await.unwrap()
}

async fn add_reviewer(t: &TestApp, email: &str, model: Option<&str>) {
    let parsed: Email = email.parse().unwrap();
    accounts::add_reviewer(&t.app, &parsed, PASSWORD, false, "test")
        .await
        .unwrap();
    if let Some(model) = model {
        weightgate::domain::policy::assign(&t.app, model, &parsed, true, "test")
            .await
            .unwrap();
    }
}

async fn application_of(t: &TestApp, email: &str) -> String {
    sqlx::query_scalar(
        "SELECT a.id FROM applications a JOIN researchers r ON r.id = a.researcher_id
         WHERE r.email = $1 ORDER BY a.created_at DESC LIMIT 1",
    )
    .bind(email)
    .fetch_one(t.app.db.pool())
    .await
    .unwrap()
}

async fn grant_of(t: &TestApp, email: &str) -> String {
    sqlx::query_scalar(
        "SELECT g.id FROM grants g JOIN researchers r ON r.id = g.researcher_id WHERE r.email = $1",
    )
    .bind(email)
    .fetch_one(t.app.db.pool())
    .await
    .unwrap()
}

both!(api_tokens_reach_only_what_their_scopes_allow);
async fn api_tokens_reach_only_what_their_scopes_allow() {
    // Every route is tried with a forged token: more than one address's
    // allowance of bad tokens a minute.
    let t = TestApp::spawn_with(|c| c.limit_bad_tokens_per_address = "1000/1min".parse().unwrap()).await;
    add_reviewer(&t, ASSIGNED, Some(MODEL)).await;
    add_reviewer(&t, NOBODY, None).await;
    t.approved_researcher("x@uni.example.edu").await;
    t.apply_and_confirm("z@uni.example.edu").await;
    let pending = application_of(&t, "z@uni.example.edu").await;
    let grant = grant_of(&t, "x@uni.example.edu").await;

    // Tokens of every scope; admin and audit only for an admin.
    let held = [
        ("read", REVIEWER, "read"),
        ("review", ASSIGNED, "review"),
        ("audit", REVIEWER, "audit"),
        ("admin", REVIEWER, "admin"),
    ];
    let mut secrets = Vec::new();
    for (name, owner, scopes) in held {
        secrets.push((scopes, token(&t, owner, name, scopes).await));
    }
    let owner = reviewer(&t, ASSIGNED).await;
    let refused = tokens::create(
        &t.app,
        &owner,
        "sneaky",
        "audit".parse().unwrap(),
        30,
        "test",
        AuditClient::default(),
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("admin"), "{refused}");

    let routes: Vec<_> = route_table()
        .into_iter()
        .filter(|r| matches!(r.access, Access::Token(_)))
        .collect();
    assert!(routes.len() >= 16, "the API's routes are in the table");
    // The writes that would end the records the others need go last.
    let mut routes = routes;
    routes.sort_by_key(|r| r.method == Method::POST);
    for route in &routes {
        let Access::Token(needed) = route.access else {
            unreachable!()
        };
        let id = if route.path.starts_with("/api/v1/grants/") {
            &grant
        } else {
            &pending
        };
        let path = route.path.replace("{id}", id);
        let what = |who: &str| format!("{} {path} {who}", route.method);

        let none = call(&t, route.method.clone(), &path, None, None).await;
        assert_eq!(
            none.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            what("without a token")
        );
        assert!(
            none.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let body: Value = none.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        let forged = call(&t, route.method.clone(), &path, Some("wgt_forged"), None).await;
        assert_eq!(
            forged.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            what("with a forged token")
        );

        for (scopes, secret) in &secrets {
            let has = scopes
                .split(',')
                .any(|s| s == needed.as_str() || (needed == Scope::Read && s == "review"));
            let response = call(&t, route.method.clone(), &path, Some(secret), None).await;
            let status = response.status();
            let who = what(&format!("with a {scopes} token"));
            if has {
                assert!(
                    !status.is_server_error()
                        && ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&status),
                    "{who}: {status} {}",
                    response.text().await.unwrap()
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{who}");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"], "insufficient_scope", "{who}");
            }
        }
    }

    // A reviewer's token sees only the reviewer's models.
    let nobody = token(&t, NOBODY, "nothing", "review").await;
    let queue: Value = call(
        &t,
        Method::GET,
        "/api/v1/applications?status=all",
        Some(&nobody),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(queue["total"], 0, "{queue}");
    let other = call(
        &t,
        Method::GET,
        &format!("/api/v1/grants/{grant}"),
        Some(&nobody),
        None,
    )
    .await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    let revoke = call(
        &t,
        Method::POST,
        &format!("/api/v1/grants/{grant}/revoke"),
        Some(&nobody),
        Some(json!({"reason": "no"})),
    )
    .await;
    assert_eq!(
        revoke.status(),
        StatusCode::NOT_FOUND,
        "hidden, not merely forbidden"
    );

    // An admin's audit token stops being one when its owner stops being an admin.
    let audit = &secrets[2].1;
    let admin_id = reviewer(&t, REVIEWER).await.id;
    let other_admin: Email = "other-admin@lab.example.org".parse().unwrap();
    accounts::add_reviewer(&t.app, &other_admin, PASSWORD, true, "test")
        .await
        .unwrap();
    accounts::change_reviewer(&t.app, &admin_id, ReviewerChange::Admin(false), "test")
        .await
        .unwrap();
    let demoted = call(&t, Method::GET, "/api/v1/audit/events", Some(audit), None).await;
    assert_eq!(demoted.status(), StatusCode::FORBIDDEN);
    accounts::change_reviewer(&t.app, &admin_id, ReviewerChange::Admin(true), "test")
        .await
        .unwrap();
    assert_eq!(
        call(&t, Method::GET, "/api/v1/audit/events", Some(audit), None)
            .await
            .status(),
        StatusCode::OK
    );

    // A disabled reviewer's tokens stop at once.
    let review = &secrets[1].1;
    let assigned_id = reviewer(&t, ASSIGNED).await.id;
    accounts::change_reviewer(&t.app, &assigned_id, ReviewerChange::Disabled(true), "test")
        .await
        .unwrap();
    let disabled = call(&t, Method::GET, "/api/v1/applications", Some(review), None).await;
    assert_eq!(disabled.status(), StatusCode::UNAUTHORIZED);

    // Each use is in the log with the token's name; refusals too.
    let events: Value = call(
        &t,
        Method::GET,
        "/api/v1/audit/events?action=token.used&limit=1000",
        Some(audit),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let events = events["events"].as_array().unwrap();
    assert!(events.iter().any(|e| {
        e["outcome"] == "ok"
            && e["actor"] == ASSIGNED
            && e["subject"]
                .as_str()
                .unwrap()
                .starts_with("token \"review\": GET /api/v1/")
    }));
    assert!(
        events
            .iter()
            .any(|e| e["outcome"] == "refused" && e["reason"] == "insufficient_scope"),
        "a refused scope is audited"
    );
    assert!(
        events
            .iter()
            .any(|e| e["outcome"] == "refused" && e["reason"] == "owner_disabled"),
        "a disabled owner's token is audited"
    );
}

both!(a_review_script_decides_once_however_often_it_retries);
async fn a_review_script_decides_once_however_often_it_retries() {
    let t = TestApp::spawn().await;
    let bot = token(&t, REVIEWER, "queue-bot", "review").await;
    t.apply_and_confirm("z@uni.example.edu").await;
    t.apply_and_confirm("y@uni.example.edu").await;

    let queue: Value = call(&t, Method::GET, "/api/v1/applications", Some(&bot), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue["total"], 2, "{queue}");
    let z = queue["applications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["email"] == "z@uni.example.edu")
        .unwrap();
    assert_eq!(z["status"], "pending");
    assert_eq!(z["model"], MODEL);
    let z_id = z["id"].as_str().unwrap().to_owned();
    let case: Value = call(
        &t,
        Method::GET,
        &format!("/api/v1/applications/{z_id}"),
        Some(&bot),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(case["application"]["intended_use"], "Compiler research");
    assert_eq!(case["may_decide"], true);

    // The same approval sent twice with one key: done once, answered twice alike.
    let approve = |key: &str, days: u64| {
        t.client
            .post(t.url(&format!("/api/v1/applications/{z_id}/approve")))
            .bearer_auth(&bot)
            .header("Idempotency-Key", key)
            .json(&json!({"days": days}))
            .send()
    };
    let first = approve("approve-z-1", 30).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["outcome"], "granted", "{first}");
    assert_eq!(first["application"]["status"], "approved");
    let again = approve("approve-z-1", 30).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other_body = approve("approve-z-1", 31).await.unwrap();
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other_body.json::<Value>().await.unwrap()["error"],
        "idempotency_key_reused"
    );
    // Without a key, a second approval is refused as already decided.
    let unkeyed = call(
        &t,
        Method::POST,
        &format!("/api/v1/applications/{z_id}/approve"),
        Some(&bot),
        Some(json!({})),
    )
    .await;
    assert_eq!(unkeyed.status(), StatusCode::CONFLICT);
    let grants: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM grants g JOIN researchers r ON r.id = g.researcher_id WHERE r.email = $1",
    )
    .bind("z@uni.example.edu")
    .fetch_one(t.app.db.pool())
    .await
    .unwrap();
    assert_eq!(grants, 1);

    // A burst of the same denial with one key, all at once: one denial.
    let y_id = application_of(&t, "y@uni.example.edu").await;
    let deny = || {
        t.client
            .post(t.url(&format!("/api/v1/applications/{y_id}/deny")))
            .bearer_auth(&bot)
            .header("Idempotency-Key", "deny-y")
            .json(&json!({"reason": "Not enough detail."}))
            .send()
    };
    let answers = futures_util::future::join_all((0..8).map(|_| deny())).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|a| a.as_ref().unwrap().status()).collect();
    assert!(
        statuses
            .iter()
            .all(|s| [StatusCode::OK, StatusCode::CONFLICT].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    let denials: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM reviews WHERE application_id = $1 AND decision = 'deny'")
            .bind(&y_id)
            .fetch_one(t.app.db.pool())
            .await
            .unwrap();
    assert_eq!(denials, 1);
    t.wait_for_mail("y@uni.example.edu", "Your application for").await;

    // The grant, its revocation, and its history.
    let grants: Value = call(&t, Method::GET, "/api/v1/grants?email=z%40uni", Some(&bot), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(grants["total"], 1, "{grants}");
    let grant_id = grants["grants"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(grants["grants"][0]["state"], "active");
    let revoked = call(
        &t,
        Method::POST,
        &format!("/api/v1/grants/{grant_id}/revoke"),
        Some(&bot),
        Some(json!({"reason": "The project ended."})),
    )
    .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    assert_eq!(revoked.json::<Value>().await.unwrap()["state"], "revoked");
    let detail: Value = call(
        &t,
        Method::GET,
        &format!("/api/v1/grants/{grant_id}"),
        Some(&bot),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let history = detail["history"].as_array().unwrap();
    let revocation = history
        .iter()
        .find(|e| e["action"] == "grant.revoked")
        .expect("the revocation is in the grant's history");
    assert_eq!(revocation["actor"], REVIEWER);

    // What a request did shares its request id with the token's use.
    let events = t.audit_events().await;
    let approved = events
        .iter()
        .filter(|e| e.action == "review.approved")
        .collect::<Vec<_>>();
    assert_eq!(approved.len(), 1, "approved once");
    let request = approved[0].request_id.clone().expect("a request id");
    let used = events
        .iter()
        .find(|e| e.action == "token.used" && e.request_id.as_deref() == Some(request.as_str()))
        .expect("the token's use has the decision's request id");
    assert_eq!(used.actor.as_deref(), Some(REVIEWER));
    assert!(
        used.subject
            .as_deref()
            .unwrap()
            .starts_with("token \"queue-bot\": POST")
    );

    // Bad input is refused, with what to change.
    let bad = t
        .client
        .post(t.url(&format!("/api/v1/grants/{grant_id}/extend")))
        .bearer_auth(&bot)
        .json(&json!({"days": "many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let nul = t
        .client
        .post(t.url(&format!("/api/v1/grants/{grant_id}/revoke")))
        .bearer_auth(&bot)
        .json(&json!({"reason": "a\u{0}b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(nul.status(), StatusCode::BAD_REQUEST);
    let form = t
        .client
        .post(t.url(&format!("/api/v1/grants/{grant_id}/revoke")))
        .bearer_auth(&bot)
        .form(&[("reason", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

both!(tokens_are_made_listed_and_revoked_from_the_command_line);
async fn tokens_are_made_listed_and_revoked_from_the_command_line() {
    let t = TestApp::spawn().await;
    let (ok, secret, err) = weightgate(
        &t,
        &[
            "token",
            "create",
            "--reviewer",
            REVIEWER,
            "--name",
            "nightly report",
            "--scopes",
            "audit,read",
            "--days",
            "7",
        ],
        None,
    );
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    assert!(
        secret.starts_with("wgt_") && secret.len() > 40,
        "only the secret on stdout: {secret}"
    );
    assert!(
        err.contains("read,audit") && err.contains("shown this once"),
        "{err}"
    );
    let verified: Value = call(&t, Method::GET, "/api/v1/audit/verify", Some(&secret), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(verified["intact"], true, "{verified}");
    assert!(verified["events"].as_i64().unwrap() > 0);

    let (ok, listed, err) = weightgate(&t, &["token", "list", "--format", "jsonl"], None);
    assert!(ok, "{err}");
    let row: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(row["name"], "nightly report");
    assert_eq!(row["state"], "active");
    assert_eq!(row["scopes"], json!(["read", "audit"]));
    assert!(row["last_used_at"].is_string(), "{row}");
    assert!(!listed.contains(&secret), "a list never shows a secret");
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE secret_hash = $1")
        .bind(&secret)
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0, "the secret itself is not stored");

    let id = row["id"].as_str().unwrap();
    let (ok, out, err) = weightgate(&t, &["token", "revoke", id], None);
    assert!(ok && out.contains("revoked"), "{out}{err}");
    let after = call(&t, Method::GET, "/api/v1/audit/verify", Some(&secret), None).await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    let (ok, _, err) = weightgate(&t, &["token", "revoke", id], None);
    assert!(!ok && err.contains("revoked already"), "{err}");
    let (ok, _, err) = weightgate(
        &t,
        &[
            "token",
            "create",
            "--reviewer",
            REVIEWER,
            "--name",
            "x",
            "--scopes",
            "write",
        ],
        None,
    );
    assert!(!ok && err.contains("\"write\" is not a scope"), "{err}");

    // The audit list of the API is the command's, event for event.
    let audit = token(&t, REVIEWER, "auditor", "audit").await;
    let page: Value = call(
        &t,
        Method::GET,
        "/api/v1/audit/events?action=token.created&limit=10",
        Some(&audit),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let (ok, local, err) = weightgate(
        &t,
        &[
            "audit",
            "list",
            "--action",
            "token.created",
            "--format",
            "jsonl",
            "--limit",
            "10",
        ],
        None,
    );
    assert!(ok, "{err}");
    let local: Vec<Value> = local.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(page["events"].as_array().unwrap(), &local);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_api_route_and_validates() {
    let t = TestApp::spawn().await;
    let response = t.client.get(t.url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut covered = 0;
    for route in route_table() {
        let Access::Token(scope) = route.access else {
            continue;
        };
        let operation = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
        assert!(
            operation.is_object(),
            "{} {} is not in the document",
            route.method,
            route.path
        );
        assert_eq!(
            operation["security"][0]["token"],
            json!([scope.as_str()]),
            "{} {} names the scope the router checks",
            route.method,
            route.path
        );
        covered += 1;
    }
    let documented: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(
        documented, covered,
        "every documented route is a route of the router"
    );

    let file = t.dir.path().join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    match Command::new("openapi-spec-validator").arg(&file).output() {
        Ok(out) => assert!(
            out.status.success(),
            "openapi-spec-validator: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must validate the OpenAPI document: openapi-spec-validator ({e}); .ci/run installs it"
            );
            eprintln!("NOT VALIDATED: openapi-spec-validator is not installed ({e}); .ci/run installs it");
        }
    }
}

both!(a_reviewer_makes_and_revokes_tokens_on_the_account_page);
async fn a_reviewer_makes_and_revokes_tokens_on_the_account_page() {
    let t = TestApp::spawn().await;
    add_reviewer(&t, ASSIGNED, Some(MODEL)).await;
    let browser = client();
    let (status, _) = crate::dashboard::sign_in_as(&t, &browser, ASSIGNED, PASSWORD).await;
    assert!(status.is_redirection() || status.is_success(), "{status}");
    let (_, page) = t.get_html(&browser, "/admin/account").await;
    assert!(
        page.contains("value=\"review\"") && !page.contains("value=\"audit\""),
        "only an admin's token may audit"
    );

    // A reviewer's token cannot have the audit scope, whatever the form says.
    let refused = t
        .post_form(
            &browser,
            "/admin/account",
            "/admin/account/tokens",
            &[("name", "sneaky"), ("scope", "audit"), ("days", "30")],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(refused.text().await.unwrap().contains("only an admin"));

    let made = t
        .post_form(
            &browser,
            "/admin/account",
            "/admin/account/tokens",
            &[
                ("name", "triage script"),
                ("scope", "read"),
                ("scope", "review"),
                ("days", "30"),
            ],
        )
        .await;
    assert_eq!(made.status(), StatusCode::OK);
    assert_eq!(made.headers()["cache-control"], "no-store");
    let page = made.text().await.unwrap();
    let secret = between(
        &page,
        "id=\"new-secret\" class=\"secret\" type=\"text\" readonly value=\"",
        "\"",
    )
    .to_owned();
    assert!(secret.starts_with("wgt_"), "{secret}");
    assert_eq!(
        page.matches(&secret).count(),
        1,
        "shown once, in the page's body only"
    );
    assert!(
        page.contains("<title>Your account · weightgate</title>"),
        "{page}"
    );
    let (_, again) = t.get_html(&browser, "/admin/account").await;
    assert!(
        again.contains("triage script") && !again.contains(&secret),
        "the secret is shown once"
    );
    let queue = call(&t, Method::GET, "/api/v1/applications", Some(&secret), None).await;
    assert_eq!(queue.status(), StatusCode::OK);

    // Another reviewer cannot revoke it; its owner can.
    let id: String = sqlx::query_scalar("SELECT id FROM api_tokens WHERE name = 'triage script'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    add_reviewer(&t, NOBODY, None).await;
    let other = client();
    crate::dashboard::sign_in_as(&t, &other, NOBODY, PASSWORD).await;
    let theirs = t
        .post_form(
            &other,
            "/admin/account",
            "/admin/account/tokens/revoke",
            &[("id", &id)],
        )
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);
    let revoked = t
        .post_form(
            &browser,
            "/admin/account",
            "/admin/account/tokens/revoke",
            &[("id", &id)],
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::OK);
    assert!(revoked.text().await.unwrap().contains("is revoked"));
    let after = call(&t, Method::GET, "/api/v1/applications", Some(&secret), None).await;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

both!(the_api_holds_against_a_careless_or_hostile_script);
async fn the_api_holds_against_a_careless_or_hostile_script() {
    let t = TestApp::spawn().await;
    add_reviewer(&t, ASSIGNED, Some(MODEL)).await;
    let admin_review = token(&t, REVIEWER, "review only", "review").await;
    let audit = token(&t, REVIEWER, "auditor", "audit").await;
    let assigned = token(&t, ASSIGNED, "assigned", "review").await;

    // A researcher who applied to another model too: a reviewer of this
    // model learns nothing of that application but that it exists.
    t.publish_other_model("other-model").await;
    t.apply_and_confirm("z@uni.example.edu").await;
    let z_pending = application_of(&t, "z@uni.example.edu").await;
    let researcher = client();
    let secret_use = "A secret project for the other model";
    let (status, _) = t.get_html(&researcher, "/models/other-model").await;
    assert_eq!(status, StatusCode::OK);
    let response = t
        .post_form(
            &researcher,
            "/models/other-model",
            "/models/other-model/apply",
            &[
                ("name", "Grace Hopper"),
                ("email", "z@uni.example.edu"),
                ("affiliation", "Navy Research Lab"),
                ("intended_use", secret_use),
                ("accept_terms", "on"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let z = z_pending;
    let case = call(
        &t,
        Method::GET,
        &format!("/api/v1/applications/{z}"),
        Some(&assigned),
        None,
    )
    .await
    .text()
    .await
    .unwrap();
    assert!(case.contains("Compiler research"), "{case}");
    assert!(
        !case.contains(secret_use),
        "another model's application is not opened: {case}"
    );
    let earlier: Value = serde_json::from_str(&case).unwrap();
    assert_eq!(
        earlier["earlier_applications"],
        json!([]),
        "nor listed to a reviewer of this model only"
    );
    let as_admin: Value = call(
        &t,
        Method::GET,
        &format!("/api/v1/applications/{z}"),
        Some(&admin_review),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        as_admin["earlier_applications"][0]["model"], "other-model",
        "{as_admin}"
    );

    // A write whose answer was lost after it was done (its replica died
    // between the change and the keeping) is not run again.
    let token_id: String = sqlx::query_scalar("SELECT id FROM api_tokens WHERE name = 'assigned'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    let approve = || {
        t.client
            .post(t.url(&format!("/api/v1/applications/{z}/approve")))
            .bearer_auth(&assigned)
            .header("Idempotency-Key", "lost")
            .json(&json!({"days": 30}))
            .send()
    };
    assert_eq!(approve().await.unwrap().status(), StatusCode::OK);
    sqlx::query(
        "UPDATE api_idempotency SET status = NULL, body = NULL, created_at = 0 WHERE token_id = $1 AND idem_key = 'lost'",
    )
    .bind(&token_id)
    .execute(t.app.db.pool())
    .await
    .unwrap();
    let lost = approve().await.unwrap();
    assert_eq!(lost.status(), StatusCode::CONFLICT);
    assert!(lost.text().await.unwrap().contains("unknown"));
    let approvals: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM reviews WHERE application_id = $1 AND decision = 'approve'")
            .bind(&z)
            .fetch_one(t.app.db.pool())
            .await
            .unwrap();
    assert_eq!(approvals, 1, "not run again");
    let other = t
        .client
        .post(t.url(&format!("/api/v1/applications/{z}/deny")))
        .bearer_auth(&assigned)
        .header("Idempotency-Key", "lost")
        .json(&json!({"reason": "no"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "the key of another request"
    );
    // What is kept of a request is keyed: a password in it cannot be
    // guessed from a plain hash of the body.
    let kept: String = sqlx::query_scalar("SELECT request_hash FROM api_idempotency WHERE idem_key = 'lost'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    let plain = {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        for part in [
            "POST".as_bytes(),
            format!("/api/v1/applications/{z}/approve").as_bytes(),
            b"",
            br#"{"days":30}"#,
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        hex::encode(hash.finalize())
    };
    assert_ne!(kept, plain);

    // Going past a model's policy needs the admin scope, not only an admin.
    t.approved_researcher("x@uni.example.edu").await;
    let grant = grant_of(&t, "x@uni.example.edu").await;
    let overriding = call(
        &t,
        Method::POST,
        &format!("/api/v1/grants/{grant}/extend"),
        Some(&admin_review),
        Some(json!({"days": 10, "override": true})),
    )
    .await;
    assert_eq!(overriding.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        overriding.json::<Value>().await.unwrap()["error"],
        "insufficient_scope"
    );

    // Ids are ids; the log names the route, not what a script put in the path.
    let long = call(
        &t,
        Method::POST,
        "/api/v1/applications/bulk",
        Some(&assigned),
        Some(json!({"ids": ["x".repeat(1000)], "action": "deny", "reason": "no"})),
    )
    .await;
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    let junk = format!("/api/v1/applications/{}", "j".repeat(200));
    assert_eq!(
        call(&t, Method::GET, &junk, Some(&assigned), None).await.status(),
        StatusCode::NOT_FOUND
    );
    let events = t.audit_events().await;
    assert!(
        events.iter().filter(|e| e.action == "token.used").all(|e| !e
            .subject
            .as_deref()
            .unwrap_or("")
            .contains("jjjj")),
        "the path's text is not in the log"
    );
    assert!(events.iter().any(|e| e.action == "token.used"
        && e.subject.as_deref() == Some("token \"assigned\": GET /api/v1/applications/{id}")));

    // A release that does not exist is the asker's mistake; errors are JSON
    // even to a client that prefers HTML.
    let missing = t
        .client
        .get(t.url(&format!("/api/v1/audit/who-has?model={MODEL}&release=nope")))
        .bearer_auth(&audit)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let body: Value = missing.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("nope"), "{body}");
}

both!(an_auditor_runs_the_audit_commands_from_a_laptop_with_a_token);
async fn an_auditor_runs_the_audit_commands_from_a_laptop_with_a_token() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("x@uni.example.edu").await;
    let dir = t.dir.path().join("fetched");
    download_with_client(&access, &dir, &[]);
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let audit = token(&t, REVIEWER, "laptop", "audit").await;
    let (ok, key, err) = weightgate(&t, &["audit", "public-key"], None);
    assert!(ok, "{err}");
    let public_key = key.split_whitespace().next().unwrap().to_owned();

    // The remote commands have no database: a wrong one in reach proves it.
    let remote_env = [
        ("WEIGHTGATE_URL", t.base.clone()),
        ("WEIGHTGATE_TOKEN", audit.clone()),
        (
            "WEIGHTGATE_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/nothing".to_owned(),
        ),
        ("WEIGHTGATE_DATA_DIR", "/nonexistent/weightgate".to_owned()),
    ];
    let remote = |args: &[&str]| crate::cli::weightgate_with(&t, args, None, &remote_env);
    for args in [
        &["audit", "list", "--format", "jsonl", "--limit", "5000"][..],
        &["audit", "list", "--action", "file.fetch", "--format", "csv"],
        &[
            "audit",
            "list",
            "--researcher",
            "x@uni.example.edu",
            "--limit",
            "3",
        ],
        &["audit", "downloads", "--format", "jsonl"],
        &["audit", "downloads", "--model", MODEL],
        &["audit", "who-has", MODEL, "--format", "jsonl"],
        &["audit", "anomalies", "--format", "jsonl", "--max-addresses", "0"],
    ] {
        let (ok, local, err) = weightgate(&t, args, None);
        assert!(ok, "{args:?}: {err}");
        let (ok, from_afar, err) = remote(args);
        assert!(ok, "{args:?} against the portal: {err}");
        // The local list was read before the remote one used the token,
        // whose use the log records; compare what both could see.
        let local_lines: Vec<&str> = local.lines().filter(|l| !l.contains("token.used")).collect();
        let remote_lines: Vec<&str> = from_afar.lines().filter(|l| !l.contains("token.used")).collect();
        assert_eq!(remote_lines, local_lines, "{args:?}");
        assert!(!local_lines.is_empty(), "{args:?} printed something");
    }
    // The streaming export is the command's, line for line.
    let (ok, local, err) = weightgate(&t, &["audit", "export", "--format", "jsonl"], None);
    assert!(ok, "{err}");
    let streamed = t
        .client
        .get(t.url("/api/v1/audit/export"))
        .bearer_auth(&audit)
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.headers()["content-type"], "application/x-ndjson");
    let streamed = streamed.text().await.unwrap();
    let lines = |text: &str| -> Vec<Value> {
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["action"] != "token.used")
            .collect()
    };
    assert_eq!(lines(&streamed), lines(&local));
    assert!(lines(&local).len() > 10);
    let (ok, verified, err) = remote(&["audit", "verify", "--public-key", &public_key]);
    assert!(ok, "{err}");
    assert!(
        verified.contains("intact (checked on this machine)"),
        "{verified}"
    );
    assert!(
        verified.contains("checkpoint(s) signed by the key(s) you trust"),
        "{verified}"
    );
    let (ok, _, err) = remote(&["audit", "verify"]);
    assert!(
        !ok && err.contains("--public-key"),
        "a remote verify needs a key of its own: {err}"
    );
    let (ok, _, err) = remote(&["audit", "archive", "--before", "1d"]);
    assert!(!ok && err.contains("needs the database"), "{err}");

    // An insider rewrites an event: the auditor's machine sees it, whatever
    // the portal says of itself.
    crate::audit::set_subject(&t, "someone else", "seq = 3").await;
    let (ok, _, err) = remote(&["audit", "verify", "--public-key", &public_key]);
    assert!(!ok, "a rewritten event is found");
    assert!(err.contains("event 3 was modified"), "{err}");

    // A token without the audit scope reads nothing of the log.
    let reader = token(&t, REVIEWER, "reader", "read").await;
    let (ok, _, err) = crate::cli::weightgate_with(
        &t,
        &["audit", "list"],
        None,
        &[("WEIGHTGATE_URL", t.base.clone()), ("WEIGHTGATE_TOKEN", reader)],
    );
    assert!(!ok && err.contains("403"), "{err}");
}

both!(an_operator_manages_grants_from_a_laptop_with_a_token);
async fn an_operator_manages_grants_from_a_laptop_with_a_token() {
    let t = TestApp::spawn().await;
    t.approved_researcher("x@uni.example.edu").await;
    t.approved_researcher("y@uni.example.edu").await;
    let grant = grant_of(&t, "x@uni.example.edu").await;
    let laptop = token(&t, REVIEWER, "operator laptop", "review,admin").await;
    let remote_env = [
        ("WEIGHTGATE_URL", t.base.clone()),
        ("WEIGHTGATE_TOKEN", laptop.clone()),
        (
            "WEIGHTGATE_DATABASE_URL",
            "postgres://nobody@127.0.0.1:1/nothing".to_owned(),
        ),
        ("WEIGHTGATE_DATA_DIR", "/nonexistent/weightgate".to_owned()),
    ];
    let remote = |args: &[&str]| crate::cli::weightgate_with(&t, args, None, &remote_env);
    for args in [&["grant", "list", "--format", "jsonl"][..], &["grant", "list"]] {
        let (ok, local, err) = weightgate(&t, args, None);
        assert!(ok, "{err}");
        let (ok, from_afar, err) = remote(args);
        assert!(ok, "{args:?} against the portal: {err}");
        assert_eq!(from_afar, local, "{args:?}");
    }
    let (ok, out, err) = remote(&["grant", "extend", &grant, "--days", "10"]);
    assert!(ok && out.contains("now ends"), "{out}{err}");
    let (ok, out, err) = remote(&["grant", "revoke", &grant, "--reason", "The project ended."]);
    assert!(ok && out.contains("revoked grant"), "{out}{err}");
    let (_, listed, _) = weightgate(&t, &["grant", "list", "--format", "jsonl"], None);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(&grant) && l.contains("\"state\":\"revoked\"")),
        "{listed}"
    );
    let events = t.audit_events().await;
    assert!(events.iter().any(|e| e.action == "grant.extended"
        && e.actor.as_deref().is_some_and(|a| a.contains(REVIEWER))));
    let reader = token(&t, REVIEWER, "reader", "read").await;
    let y = grant_of(&t, "y@uni.example.edu").await;
    let (ok, _, err) = crate::cli::weightgate_with(
        &t,
        &["grant", "revoke", &y, "--reason", "no"],
        None,
        &[("WEIGHTGATE_URL", t.base.clone()), ("WEIGHTGATE_TOKEN", reader)],
    );
    assert!(!ok && err.contains("403"), "{err}");
}

both!(an_admin_script_manages_reviewers);
async fn an_admin_script_manages_reviewers() {
    let t = TestApp::spawn().await;
    let admin = token(&t, REVIEWER, "people", "admin").await;
    t.apply_and_confirm("z@uni.example.edu").await;
    let made: Value = call(
        &t,
        Method::POST,
        "/api/v1/reviewers",
        Some(&admin),
        Some(json!({"email": "New.Reviewer@Lab.example.org", "password": "a long enough password"})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(made["email"], "new.reviewer@lab.example.org", "{made}");
    assert_eq!(made["role"], "reviewer");
    let id = made["id"].as_str().unwrap().to_owned();
    let again = call(
        &t,
        Method::POST,
        "/api/v1/reviewers",
        Some(&admin),
        Some(json!({"email": "new.reviewer@lab.example.org", "password": "a long enough password"})),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let theirs = token(&t, "new.reviewer@lab.example.org", "mine", "read").await;
    let queue: Value = call(&t, Method::GET, "/api/v1/applications", Some(&theirs), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue["total"], 0, "no model yet");
    let assigned: Value = call(
        &t,
        Method::POST,
        &format!("/api/v1/reviewers/{id}"),
        Some(&admin),
        Some(json!({"change": "assign", "model": MODEL})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(assigned["models"], json!([MODEL]));
    let queue: Value = call(&t, Method::GET, "/api/v1/applications", Some(&theirs), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(queue["total"], 1, "{queue}");
    let disabled: Value = call(
        &t,
        Method::POST,
        &format!("/api/v1/reviewers/{id}"),
        Some(&admin),
        Some(json!({"change": "disable"})),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(disabled["state"], "disabled");
    assert_eq!(
        call(&t, Method::GET, "/api/v1/applications", Some(&theirs), None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // No change leaves the portal without an admin who can sign in.
    let me = reviewer(&t, REVIEWER).await.id;
    let last = accounts::change_reviewer(&t.app, &me, ReviewerChange::Disabled(true), "operator")
        .await
        .unwrap_err();
    assert!(last.to_string().contains("no admin"), "{last}");
    // An admin's token without the admin scope changes no one's role.
    let review = token(&t, REVIEWER, "not admin", "review").await;
    let refused = call(
        &t,
        Method::POST,
        &format!("/api/v1/reviewers/{id}"),
        Some(&review),
        Some(json!({"change": "admin"})),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}

both!(a_script_lists_and_revokes_its_own_tokens_and_no_one_elses);
async fn a_script_lists_and_revokes_its_own_tokens_and_no_one_elses() {
    let t = TestApp::spawn().await;
    add_reviewer(&t, ASSIGNED, Some(MODEL)).await;
    let mine = token(&t, ASSIGNED, "ci", "read").await;
    let spare = token(&t, ASSIGNED, "spare", "review").await;
    let theirs = token(&t, REVIEWER, "admin's", "read").await;
    let listed: Value = call(&t, Method::GET, "/api/v1/tokens", Some(&mine), None)
        .await
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{listed}");
    assert!(names.contains(&"ci") && names.contains(&"spare"));
    let text = listed.to_string();
    assert!(!text.contains(&mine) && !text.contains(&spare), "never a secret");
    let admins: String = sqlx::query_scalar("SELECT id FROM api_tokens WHERE name = 'admin''s'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    let other = call(
        &t,
        Method::POST,
        &format!("/api/v1/tokens/{admins}/revoke"),
        Some(&mine),
        None,
    )
    .await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        call(&t, Method::GET, "/api/v1/tokens", Some(&theirs), None)
            .await
            .status(),
        StatusCode::OK,
        "still valid"
    );
    let spare_id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "spare")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let revoked: Value = call(
        &t,
        Method::POST,
        &format!("/api/v1/tokens/{spare_id}/revoke"),
        Some(&mine),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(
        call(&t, Method::GET, "/api/v1/applications", Some(&spare), None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}
