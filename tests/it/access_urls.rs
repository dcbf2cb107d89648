//! Access URLs a researcher can see and withdraw, that lapse when unused,
//! and that reviewers can withdraw one at a time when one is shared.

use reqwest::{Client, StatusCode};

use crate::{adversary::ServeProcess, helpers::*, researcher::sign_in_researcher};

async fn grant_id(t: &TestApp) -> String {
    sqlx::query_scalar("SELECT id FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap()
}

async fn url_id(t: &TestApp, condition: &str) -> String {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM grant_tokens WHERE {condition}"
    )))
    .fetch_one(t.app.db.pool())
    .await
    .unwrap()
}

/// The error a refused JSON request names.
async fn refusal(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["error"].as_str().unwrap_or_default().to_owned())
}

async fn get_json(c: &Client, url: &str) -> reqwest::Response {
    c.get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

both!(a_researcher_sees_names_and_withdraws_access_urls_and_unused_ones_lapse);
async fn a_researcher_sees_names_and_withdraws_access_urls_and_unused_ones_lapse() {
    let t = TestApp::spawn().await;
    let email = "urls@uni.example.edu";
    let approval_url = t.approved_researcher(email).await;
    let approval_secret = approval_url.rsplit('/').next().unwrap().to_owned();
    let grant = grant_id(&t).await;
    let browser = client();
    sign_in_researcher(&t, &browser, email, &mut std::collections::HashSet::new()).await;

    // A named URL for the cluster, shown once.
    let made = t
        .post_form(
            &browser,
            "/me/access",
            &format!("/me/access/{grant}/client-url"),
            &[("name", "cluster")],
        )
        .await;
    assert_eq!(made.status(), StatusCode::OK);
    let page = made.text().await.unwrap();
    let cluster = unescape(between(&page, "weightgate download '", "'"));
    assert!(page.contains("<td>cluster</td>"), "{page}");
    assert!(page.contains("from the approval e-mail"), "{page}");
    assert!(
        !page.contains(&approval_secret),
        "My access lists URLs, never their secrets"
    );

    // Used: when and from how many networks shows on My access.
    let manifest = get_json(&client(), &cluster).await;
    assert_eq!(manifest.status(), StatusCode::OK);
    let (_, page) = t.get_html(&browser, "/me/access").await;
    let row = page
        .split("<tr>")
        .find(|r| r.contains("<td>cluster</td>"))
        .unwrap();
    assert!(!row.contains("never") && row.contains("<td>1</td>"), "{row}");
    assert!(
        !page.contains(cluster.rsplit('/').nth(1).unwrap()),
        "shown once only"
    );
    // My access has the release's signed checksums too.
    let sums = format!("/me/access/{grant}/releases/r1/SHA256SUMS");
    assert!(page.contains(&format!("href=\"{sums}\"")), "{page}");
    let (status, body) = t.get_html(&browser, &sums).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("  shard-0.bin"), "{body}");

    // Withdrawn: refused at the next request, by name; the other URLs work.
    let cluster_id = url_id(&t, "name = 'cluster'").await;
    let withdrawn = t
        .post_form(
            &browser,
            "/me/access",
            &format!("/me/access/{grant}/urls/{cluster_id}/withdraw"),
            &[],
        )
        .await;
    assert_eq!(withdrawn.status(), StatusCode::OK);
    assert_eq!(withdrawn.url().path(), "/me/access");
    let page = withdrawn.text().await.unwrap();
    let row = page
        .split("<tr>")
        .find(|r| r.contains("<td>cluster</td>"))
        .unwrap();
    assert!(row.contains("withdrawn by you"), "{row}");
    let (status, error) = refusal(get_json(&client(), &cluster).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::FORBIDDEN, "access_url_withdrawn")
    );
    let (status, _) = t.get_html(&client(), &approval_url).await;
    assert_eq!(status, StatusCode::OK, "the grant and its other URLs stay");
    let sums = cluster.replace("/manifest.json", "/releases/r1/SHA256SUMS");
    let (status, error) = refusal(get_json(&client(), &sums).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::FORBIDDEN, "access_url_withdrawn"),
        "nor the release's files"
    );

    // A second replica refuses it too, at once.
    let replica = ServeProcess::start(&t, &[("WEIGHTGATE_LOG", "warn")]).await;
    let on_replica = cluster.replace(&t.base, &replica.base);
    let (status, error) = refusal(get_json(&client(), &on_replica).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::FORBIDDEN, "access_url_withdrawn")
    );
    replica.stop().await;

    // The download client stops with the reason.
    let stopped = weightgate::client::download(weightgate::client::Options {
        url: cluster.clone(),
        dir: t.dir.path().join("weights"),
        jobs: 2,
        include: Vec::new(),
        public_key: None,
        model_signing_key: None,
        limit_rate: None,
        progress: false,
    })
    .await
    .unwrap_err();
    assert!(stopped.to_string().contains("withdrawn"), "{stopped}");

    // Withdrawing it again changes nothing, and is not a second event.
    let again = t
        .post_form(
            &browser,
            "/me/access",
            &format!("/me/access/{grant}/urls/{cluster_id}/withdraw"),
            &[],
        )
        .await;
    assert_eq!(again.status(), StatusCode::OK);

    let events = t.audit_events().await;
    let made: Vec<_> = events
        .iter()
        .filter(|e| e.action == "grant.token_issued")
        .collect();
    assert_eq!(made.len(), 1);
    assert!(made[0].subject.as_deref().unwrap().contains("(cluster)"));
    let withdrawals: Vec<_> = events
        .iter()
        .filter(|e| e.action == "access_url.withdrawn")
        .collect();
    assert_eq!(withdrawals.len(), 1);
    assert_eq!(withdrawals[0].actor.as_deref(), Some(email));
    assert_eq!(withdrawals[0].grant_id.as_deref(), Some(grant.as_str()));
    assert!(
        events.iter().any(|e| e.action == "links.issued"
            && e.outcome == "refused"
            && e.reason.as_deref() == Some("access_url_withdrawn")
            && e.grant_id.as_deref() == Some(grant.as_str())),
        "the refusal is in the log"
    );

    // Made long ago but used lately: it works, since each use starts the
    // clock again.
    let old = weightgate::types::now_ms() - 91 * 86_400_000;
    sqlx::query("UPDATE grant_tokens SET created_at = $1 WHERE origin = 'approval'")
        .bind(old)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let (status, _) = t.get_html(&client(), &approval_url).await;
    assert_eq!(status, StatusCode::OK);
    // Unused for longer than WEIGHTGATE_ACCESS_URL_TTL (90 days): lapsed.
    sqlx::query("UPDATE grant_tokens SET created_at = $1, last_used_at = $1 WHERE origin = 'approval'")
        .bind(old)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let (status, error) = refusal(get_json(&client(), &format!("{approval_url}/manifest.json")).await).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::FORBIDDEN, "access_url_expired")
    );
    let (_, page) = t.get_html(&browser, "/me/access").await;
    let row = page
        .split("<tr>")
        .find(|r| r.contains("from the approval e-mail"))
        .unwrap();
    assert!(row.contains("lapsed"), "{row}");
    assert!(
        t.audit_events()
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("access_url_expired"))
    );

    // Another researcher cannot withdraw this grant's URLs.
    let other = "other@uni.example.edu";
    t.approved_researcher(other).await;
    let stranger = client();
    sign_in_researcher(&t, &stranger, other, &mut std::collections::HashSet::new()).await;
    let approval_id = url_id(&t, &format!("grant_id = '{grant}' AND origin = 'approval'")).await;
    let refused = t
        .post_form(
            &stranger,
            "/me/access",
            &format!("/me/access/{grant}/urls/{approval_id}/withdraw"),
            &[],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    // Not through their own grant either.
    let own_grant: String = sqlx::query_scalar(
        "SELECT g.id FROM grants g JOIN researchers r ON r.id = g.researcher_id WHERE r.email = $1",
    )
    .bind(other)
    .fetch_one(t.app.db.pool())
    .await
    .unwrap();
    let refused = t
        .post_form(
            &stranger,
            "/me/access",
            &format!("/me/access/{own_grant}/urls/{approval_id}/withdraw"),
            &[],
        )
        .await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let untouched: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT withdrawn_at FROM grant_tokens WHERE id = '{approval_id}'"
    )))
    .fetch_one(t.app.db.pool())
    .await
    .unwrap();
    assert_eq!(untouched, None);
}

both!(reviewers_see_a_shared_access_url_and_withdraw_it_alone);
async fn reviewers_see_a_shared_access_url_and_withdraw_it_alone() {
    let t = TestApp::spawn_with(|c| {
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
        c.access_url_max_networks = 1;
    })
    .await;
    let email = "shared@uni.example.edu";
    let access = t.approved_researcher(email).await;
    let grant = grant_id(&t).await;
    // The URL is used from two networks: one more than allowed.
    for address in ["203.0.113.5", "2001:db8:1:2::7"] {
        let response = client()
            .get(&access)
            .header("x-forwarded-for", address)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    let reviewer = client();
    t.sign_in(&reviewer).await;
    let (_, page) = t.get_html(&reviewer, &format!("/admin/grants/{grant}")).await;
    let row = page
        .split("<tr>")
        .find(|r| r.contains("from the approval e-mail"))
        .unwrap();
    assert!(
        row.contains("<td>2 <strong") && row.contains("more than allowed"),
        "{row}"
    );
    // The command reads its own settings: the same limit, given on its line.
    let anomalies = [
        "audit",
        "anomalies",
        "--access-url-networks",
        "1",
        "--format",
        "jsonl",
    ];
    let (ok, out, err) = crate::cli::weightgate(&t, &anomalies, None);
    assert!(ok, "{err}");
    let shared: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["kind"] == "shared-access-url")
        .collect();
    assert_eq!(shared.len(), 1, "{out}");
    assert_eq!(shared[0]["grant_id"], grant.as_str());
    assert_eq!(shared[0]["addresses"].as_array().unwrap().len(), 2);

    // Withdrawn from the grant's page: the grant stays, the researcher hears.
    let id = url_id(&t, "origin = 'approval'").await;
    let withdrawn = t
        .post_form(
            &reviewer,
            &format!("/admin/grants/{grant}"),
            &format!("/admin/grants/{grant}/urls/{id}/withdraw"),
            &[],
        )
        .await;
    assert_eq!(withdrawn.status(), StatusCode::OK);
    let page = withdrawn.text().await.unwrap();
    assert!(page.contains(&format!("withdrawn by {REVIEWER}")), "{page}");
    let (status, _) = t.get_html(&client(), &access).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mail = t.wait_for_mail(email, "was withdrawn").await;
    assert!(mail.contains("/me/access"), "{mail}");
    let researcher = client();
    sign_in_researcher(&t, &researcher, email, &mut std::collections::HashSet::new()).await;
    let (_, mine) = t.get_html(&researcher, "/me/access").await;
    assert!(mine.contains("withdrawn by a reviewer"), "{mine}");
    assert!(
        !mine.contains(REVIEWER),
        "a reviewer's address stays on the dashboard"
    );
    let revoked: Option<i64> = sqlx::query_scalar("SELECT revoked_at FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(revoked, None, "the grant itself stays");
    let events = t.audit_events().await;
    assert!(events.iter().any(|e| e.action == "access_url.withdrawn"
        && e.actor.as_deref() == Some(REVIEWER)
        && e.grant_id.as_deref() == Some(grant.as_str())));
    // A withdrawn URL is no longer an anomaly to act on.
    let (_, out, _) = crate::cli::weightgate(&t, &anomalies, None);
    assert!(!out.contains("shared-access-url"), "{out}");
}

both!(links_asked_for_after_a_revocation_are_refused_in_the_log);
async fn links_asked_for_after_a_revocation_are_refused_in_the_log() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("revoked@uni.example.edu").await;
    let grant = grant_id(&t).await;
    weightgate::domain::grants::revoke(
        &t.app,
        &grant,
        "Shared outside the lab",
        "test",
        Default::default(),
    )
    .await
    .unwrap();
    let (status, error) = refusal(get_json(&client(), &format!("{access}/manifest.json")).await).await;
    assert_eq!((status, error.as_str()), (StatusCode::FORBIDDEN, "grant_revoked"));
    let refused: Vec<_> = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "links.issued" && e.outcome == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].reason.as_deref(), Some("grant_revoked"));
    assert_eq!(refused[0].grant_id.as_deref(), Some(grant.as_str()));
    let mail = t.wait_for_mail("revoked@uni.example.edu", "was revoked").await;
    assert!(
        mail.contains("Hello Grace Hopper,"),
        "the researcher's name: {mail}"
    );
}
