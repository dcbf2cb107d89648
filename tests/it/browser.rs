//! The whole path in a real browser: headless Chromium driven over WebDriver
//! (Debian's chromium and chromium-driver). Without them these scenarios say
//! loudly that they did not run; under CI that is a failure. Screenshots of
//! the main pages, at desktop and phone widths, are saved in
//! `target/screenshots/` for people to look at, and each is checked there with
//! axe-core (npm, `tests/browser/`): a serious or critical accessibility
//! violation fails the scenario.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::helpers::*;

static NOT_RUN: std::sync::Once = std::sync::Once::new();

/// A chromedriver process and one browser session on it.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A headless Chromium, or `None` (said loudly; a failure under CI) when
    /// the browser or its driver is not installed.
    async fn start(downloads: &std::path::Path) -> Option<Self> {
        let installed = ["chromedriver", "chromium"].iter().all(|tool| {
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the browser tests: install chromium and chromium-driver"
            );
            NOT_RUN.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** Browser tests NOT RUN: chromium and chromedriver are not installed \
                     (apt-get install chromium chromium-driver). ***\n"
                );
            });
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                }
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        for _ in 0..100 {
            if let Ok(client) = ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                return Some(Self {
                    client,
                    driver,
                    _profile: profile,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = driver.kill();
        let _ = driver.wait();
        panic!("chromedriver did not start");
    }

    async fn fill(&self, name: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(&format!("[name='{name}']")))
            .await
            .unwrap();
        field.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn text(&self) -> String {
        self.client
            .find(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits for the page (after a click that navigates) to show `needle`.
    async fn wait_for_text(&self, needle: &str) {
        for _ in 0..100 {
            let shown = match self.client.find(Locator::Css("main")).await {
                Ok(main) => main.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if shown.contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the page never showed {needle:?}; it shows:\n{}",
            self.text().await
        );
    }

    /// Saves the page at desktop and phone widths, and checks it at both
    /// with axe-core: a serious or critical violation fails the scenario.
    async fn screenshot(&self, name: &str) {
        let dir = screenshots();
        for (width, height, suffix) in [(1280, 1000, "desktop"), (390, 844, "phone")] {
            self.client.set_window_size(width, height).await.unwrap();
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(dir.join(format!("{name}-{suffix}.png")), png).unwrap();
            self.check_layout(&format!("{name} ({suffix})"), width > 1000)
                .await;
            self.check_accessibility(&format!("{name} ({suffix})")).await;
        }
        self.client.set_window_size(1280, 1000).await.unwrap();
    }

    /// Checks that the page uses the screen: it never scrolls sideways (a
    /// wide table scrolls inside its own box), no timestamp or code (slug,
    /// id, action) in a table breaks over lines, and at desktop width no
    /// table needs to scroll at all.
    async fn check_layout(&self, page: &str, desktop: bool) {
        let found = self
            .client
            .execute(
                r"const lines = el => {
                    const r = document.createRange(); r.selectNodeContents(el);
                    return new Set([...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top))).size; };
                  const stamp = /^\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)?( UTC)?$/;
                  const cells = [...document.querySelectorAll('main td')].filter(td => stamp.test(td.textContent.trim()))
                    .concat([...document.querySelectorAll('main td code:not(.hash)')]);
                  return {
                    overflow: document.documentElement.scrollWidth - window.innerWidth,
                    broken: cells.filter(el => lines(el) > 1).map(el => el.textContent.trim()),
                    scrolling: [...document.querySelectorAll('main .scroll')].filter(s => s.scrollWidth > s.clientWidth + 1).length,
                  };",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            found["overflow"].as_i64().unwrap() <= 0,
            "{page} scrolls sideways by {} px",
            found["overflow"]
        );
        assert_eq!(found["broken"], json!([]), "{page}: these cells break over lines");
        if desktop {
            assert_eq!(
                found["scrolling"], 0,
                "{page}: a table does not fit a desktop screen"
            );
        }
    }

    /// Runs axe-core (from npm, `tests/browser/`) on the page as it is now
    /// and fails on any serious or critical violation, naming the rule and
    /// the elements. Without axe-core installed this says so loudly; under
    /// CI that is a failure.
    async fn check_accessibility(&self, page: &str) {
        let Some(axe) = axe_source() else { return };
        self.client.execute(axe, vec![]).await.unwrap();
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, { resultTypes: ['violations'] })
                    .then(r => done(r.violations.map(v => ({
                        id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5) }))))
                    .catch(e => done([{ id: 'axe-error', impact: 'critical', help: String(e), nodes: [] }]));",
                vec![],
            )
            .await
            .unwrap();
        let violations: Vec<serde_json::Value> = serde_json::from_value(found).unwrap();
        let serious: Vec<String> = violations
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| format!("{} ({}): {} at {}", v["id"], v["impact"], v["help"], v["nodes"]))
            .collect();
        assert!(
            serious.is_empty(),
            "axe-core finds serious or critical accessibility violations on {page}:\n{}",
            serious.join("\n")
        );
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// axe-core's script, as `npm ci --prefix tests/browser` installs it (or
/// from `WEIGHTGATE_TEST_AXE`); `None`, said loudly, when it is missing.
fn axe_source() -> Option<&'static str> {
    static AXE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    AXE.get_or_init(|| {
        let path = std::env::var_os("WEIGHTGATE_TEST_AXE").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/browser/node_modules/axe-core/axe.min.js")
            },
            PathBuf::from,
        );
        match std::fs::read_to_string(&path) {
            Ok(source) => Some(source),
            Err(err) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must check the pages' accessibility: {} ({err}); run npm ci --prefix tests/browser",
                    path.display()
                );
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** Accessibility checks NOT RUN: {} is missing ({err}); \
                     run npm ci --prefix tests/browser. ***\n",
                    path.display()
                );
                None
            }
        }
    })
    .as_deref()
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

both!(in_a_browser_a_researcher_applies_a_reviewer_approves_and_the_file_downloads_intact);
async fn in_a_browser_a_researcher_applies_a_reviewer_approves_and_the_file_downloads_intact() {
    let t = TestApp::spawn().await;
    let downloads = t.dir.path().join("browser-downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let Some(researcher) = Browser::start(&downloads).await else {
        return;
    };

    researcher.client.goto(&t.url("/")).await.unwrap();
    researcher.click(&format!("a[href='/models/{MODEL}']")).await;
    researcher.screenshot("model").await;

    // A first try with the terms left unchecked comes back with the error and the values kept.
    researcher.fill("name", "Barbara Liskov").await;
    researcher.fill("email", "liskov@mit.example.edu").await;
    researcher.fill("affiliation", "MIT").await;
    researcher.fill("intended_use", "Abstraction research").await;
    researcher.click("button[type='submit']").await;
    researcher
        .wait_for_text("You must accept the terms to apply")
        .await;
    researcher.screenshot("model-errors").await;
    let kept = researcher
        .client
        .find(Locator::Css("[name='name']"))
        .await
        .unwrap();
    assert_eq!(
        kept.prop("value").await.unwrap().as_deref(),
        Some("Barbara Liskov")
    );
    researcher.click("[name='accept_terms']").await;
    researcher.click("button[type='submit']").await;
    researcher.wait_for_text("Check your e-mail").await;

    let mail = t
        .wait_for_mail("liskov@mit.example.edu", "Confirm your application")
        .await;
    researcher
        .client
        .goto(&link_in(&mail, "/confirm/"))
        .await
        .unwrap();
    researcher.click("button[type='submit']").await;
    researcher.wait_for_text("pending").await;

    let reviewer = Browser::start(&downloads).await.unwrap();
    reviewer.client.goto(&t.url("/admin")).await.unwrap();
    reviewer.screenshot("login").await;
    reviewer.fill("email", REVIEWER).await;
    reviewer.fill("password", PASSWORD).await;
    reviewer.click("button[type='submit']").await;
    reviewer.wait_for_text("Barbara Liskov").await;
    reviewer.screenshot("queue").await;
    reviewer.click("table a[href^='/admin/applications/']").await;
    reviewer.wait_for_text("Abstraction research").await;
    reviewer.screenshot("application").await;
    reviewer.click("form[action$='/approve'] button").await;
    reviewer.wait_for_text("approved").await;

    let mail = t.wait_for_mail("liskov@mit.example.edu", "is approved").await;
    researcher.client.goto(&link_in(&mail, "/access/")).await.unwrap();
    researcher.wait_for_text("shard-0.bin").await;
    researcher.screenshot("access").await;
    researcher.click("a[href*='/shard-2.bin']").await;
    let expected = &t.files.iter().find(|(n, _)| n == "shard-2.bin").unwrap().1;
    let saved = downloads.join("shard-2.bin");
    let mut arrived = false;
    for _ in 0..100 {
        if std::fs::read(&saved).is_ok_and(|b| b == *expected) {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(arrived, "the browser saved the file with the right bytes");
    assert_eq!(sha256_hex(&std::fs::read(&saved).unwrap()), sha256_hex(expected));

    reviewer.client.goto(&t.url("/admin/audit")).await.unwrap();
    reviewer.wait_for_text("file.fetch").await;
    reviewer.screenshot("audit").await;

    researcher.close().await;
    reviewer.close().await;
}

both!(in_a_browser_two_reviewers_approve_one_denies_in_bulk_and_an_admin_revokes);
async fn in_a_browser_two_reviewers_approve_one_denies_in_bulk_and_an_admin_revokes() {
    let t = TestApp::spawn().await;
    let downloads = t.dir.path().join("browser-downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let Some(admin) = Browser::start(&downloads).await else {
        return;
    };
    weightgate::domain::policy::set(
        &t.app,
        MODEL,
        &weightgate::domain::policy::PolicyChange {
            approvals_needed: 2,
            auto_approve_domains: String::new(),
            review_target_days: 7,
        },
        "test",
    )
    .await
    .unwrap();
    let second: weightgate::types::Email = "second@lab.example.org".parse().unwrap();
    weightgate::domain::accounts::add_reviewer(&t.app, &second, PASSWORD, false, "test")
        .await
        .unwrap();
    weightgate::domain::policy::assign(&t.app, MODEL, &second, true, "test")
        .await
        .unwrap();
    weightgate::domain::policy::save_template(
        &t.app,
        "Institution",
        "We release to research institutions only.",
        "test",
    )
    .await
    .unwrap();
    for email in [
        "keep@uni.example.edu",
        "deny1@corp.example.com",
        "deny2@corp.example.com",
    ] {
        t.apply_and_confirm(email).await;
    }

    admin.client.goto(&t.url("/admin")).await.unwrap();
    admin.fill("email", REVIEWER).await;
    admin.fill("password", PASSWORD).await;
    admin.click("button[type='submit']").await;
    admin.wait_for_text("deny2@corp.example.com").await;
    admin.screenshot("queue-bulk").await;

    // Bulk denial of the two corporate addresses, from a template plus a line.
    for email in ["deny1@corp.example.com", "deny2@corp.example.com"] {
        let row = admin
            .client
            .find(Locator::XPath(&format!(
                "//tr[contains(., '{email}')]//input[@type='checkbox']"
            )))
            .await
            .unwrap();
        row.click().await.unwrap();
    }
    admin
        .client
        .find(Locator::Css("#bulk-template"))
        .await
        .unwrap()
        .select_by_label("Institution")
        .await
        .unwrap();
    admin.fill("reason", "Apply with your university address.").await;
    admin.click("button[value='deny']").await;
    admin.wait_for_text("Bulk decision").await;
    admin.screenshot("bulk-result").await;
    let shown = admin.text().await;
    assert_eq!(shown.matches(": denied").count(), 2, "{shown}");
    let mail = t
        .wait_for_mail("deny1@corp.example.com", "Your application for")
        .await;
    assert!(mail.contains("research institutions only") && mail.contains("university address"));

    // The first of two approvals.
    admin
        .client
        .goto(&t.url("/admin?domain=uni.example.edu"))
        .await
        .unwrap();
    admin.click("table a[href^='/admin/applications/']").await;
    admin.wait_for_text("Compiler research").await;
    admin.fill("note", "Enjoy.").await;
    admin.click("form[action$='/approve'] button").await;
    admin.wait_for_text("1 so far").await;
    admin.screenshot("application-one-of-two").await;

    // The second reviewer's approval creates the grant.
    let reviewer = Browser::start(&downloads).await.unwrap();
    reviewer.client.goto(&t.url("/admin/login")).await.unwrap();
    reviewer.fill("email", "second@lab.example.org").await;
    reviewer.fill("password", PASSWORD).await;
    reviewer.click("button[type='submit']").await;
    reviewer.wait_for_text("keep@uni.example.edu").await;
    reviewer.click("table a[href^='/admin/applications/']").await;
    reviewer.wait_for_text("1 so far").await;
    reviewer.click("form[action$='/approve'] button").await;
    reviewer.wait_for_text("approved").await;
    let mail = t.wait_for_mail("keep@uni.example.edu", "is approved").await;
    assert!(
        mail.contains("Enjoy."),
        "the first reviewer's note reaches the researcher"
    );
    let access = link_in(&mail, "/access/");
    let links = t.download_links(&access).await;
    assert!(!links.is_empty());

    // An admin revokes the grant with a reason; its links stop working.
    admin
        .client
        .goto(&t.url("/admin/grants?state=active"))
        .await
        .unwrap();
    admin.wait_for_text("keep@uni.example.edu").await;
    admin.screenshot("grants").await;
    admin.click("table a[href^='/admin/grants/']").await;
    admin.wait_for_text("History").await;
    admin.fill("reason", "Licence breach reported.").await;
    admin.click("form[action$='/revoke'] button").await;
    admin.wait_for_text("revoked: Licence breach reported.").await;
    admin.screenshot("grant-revoked").await;
    let refused = t.client.get(&links[0].1).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    t.wait_for_mail("keep@uni.example.edu", "was revoked").await;

    for (path, name) in [
        ("/admin/reviewers", "reviewers"),
        ("/admin/models", "models"),
        ("/admin/account", "account"),
    ] {
        admin.client.goto(&t.url(path)).await.unwrap();
        admin.wait_for_text("").await;
        admin.screenshot(name).await;
    }

    // The model has no questions yet, so row 0 is the first blank row.
    admin.client.goto(&t.url("/admin/models")).await.unwrap();
    admin.wait_for_text("Review policies").await;
    admin.click("section.policy details summary").await;
    admin.fill("r0_label", "Your ORCID iD").await;
    admin
        .client
        .find(Locator::Css("select[name='r0_kind']"))
        .await
        .unwrap()
        .select_by_label("A web address")
        .await
        .unwrap();
    admin.click("input[name='r0_required']").await;
    admin.click("form.questions button[type='submit']").await;
    admin.wait_for_text("now asks 1 question.").await;
    admin.click("section.policy details summary").await;
    admin.screenshot("models-questions").await;
    let (_, form) = t.get_html(&client(), &format!("/models/{MODEL}")).await;
    assert!(
        form.contains("Your ORCID iD") && form.contains("name=\"q_your_orcid_id\""),
        "{form}"
    );
    admin.close().await;
    reviewer.close().await;
}

both!(in_a_browser_a_researcher_answers_the_models_questions_signs_in_by_link_and_answers_a_reviewer);
async fn in_a_browser_a_researcher_answers_the_models_questions_signs_in_by_link_and_answers_a_reviewer() {
    let t = TestApp::spawn().await;
    weightgate::domain::models::set_questions(
        &t.app,
        &MODEL.parse().unwrap(),
        r#"[
            {"id": "orcid", "label": "ORCID iD", "kind": "url", "help": "For example https://orcid.org/0000-0002-1825-0097"},
            {"id": "role", "label": "Your role", "kind": "select", "options": ["Student", "Faculty", "Industry"], "required": true},
            {"id": "country", "label": "Country of your institution", "kind": "country", "required": true},
            {"id": "ethics", "label": "An ethics board approved the project", "kind": "checkbox", "required": true}
        ]"#,
        "test",
    )
    .await
    .unwrap();
    let downloads = t.dir.path().join("browser-downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let Some(researcher) = Browser::start(&downloads).await else {
        return;
    };
    let email = "hamilton@mit.example.edu";

    researcher
        .client
        .goto(&t.url(&format!("/models/{MODEL}")))
        .await
        .unwrap();
    researcher.fill("name", "Margaret Hamilton").await;
    researcher.fill("email", email).await;
    researcher
        .fill("affiliation", "MIT Instrumentation Laboratory")
        .await;
    researcher
        .fill("intended_use", "Checking flight software with language models")
        .await;
    researcher
        .fill("q_orcid", "https://orcid.org/0000-0002-1825-0097")
        .await;
    researcher
        .client
        .find(Locator::Css("[name='q_role']"))
        .await
        .unwrap()
        .select_by_value("Faculty")
        .await
        .unwrap();
    researcher.click("[name='q_ethics']").await;
    researcher.click("[name='accept_terms']").await;
    // The country is left out: the form comes back with the error beside it, the rest kept.
    researcher
        .click("form[action$='/apply'] button[type='submit']")
        .await;
    researcher.wait_for_text("This question needs an answer").await;
    researcher
        .client
        .execute(
            "document.querySelector('label[for=q_orcid]').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    researcher.screenshot("apply-questions-errors").await;
    let kept = researcher
        .client
        .find(Locator::Css("[name='q_role']"))
        .await
        .unwrap();
    assert_eq!(kept.prop("value").await.unwrap().as_deref(), Some("Faculty"));
    researcher
        .client
        .find(Locator::Css("[name='q_country']"))
        .await
        .unwrap()
        .select_by_value("GB")
        .await
        .unwrap();
    if researcher
        .client
        .find(Locator::Css("[name='accept_terms']"))
        .await
        .unwrap()
        .prop("checked")
        .await
        .unwrap()
        .as_deref()
        != Some("true")
    {
        researcher.click("[name='accept_terms']").await;
    }
    researcher
        .click("form[action$='/apply'] button[type='submit']")
        .await;
    researcher.wait_for_text("Check your e-mail").await;

    let mail = t.wait_for_mail(email, "Confirm your application").await;
    researcher
        .client
        .goto(&link_in(&mail, "/confirm/"))
        .await
        .unwrap();
    researcher.click("button[type='submit']").await;
    researcher.wait_for_text("pending").await;

    // A reviewer asks a question (over HTTP; the dashboard's browser scenario is above).
    let reviewer = client();
    t.sign_in(&reviewer).await;
    let id = t.pending_application(&reviewer, email).await;
    let response = t
        .post_form(
            &reviewer,
            &format!("/admin/applications/{id}"),
            &format!("/admin/applications/{id}/ask"),
            &[("message", "Which flight software will you check?")],
        )
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);

    // The question's e-mail signs the researcher in.
    let mail = t.wait_for_mail(email, "A question about your application").await;
    researcher.client.goto(&link_in(&mail, "/signin/")).await.unwrap();
    researcher.screenshot("signin-link").await;
    researcher.click("form[action^='/signin/'] button").await;
    researcher
        .wait_for_text("Which flight software will you check?")
        .await;
    researcher.screenshot("my-applications-question").await;
    researcher
        .fill(
            "message",
            "The Apollo guidance computer's, from the published listings.",
        )
        .await;
    researcher.click("form[action$='/answer'] button").await;
    researcher.wait_for_text("You wrote").await;
    assert!(researcher.text().await.contains("The reviewers will decide"));

    let response = t
        .post_form(
            &reviewer,
            &format!("/admin/applications/{id}"),
            &format!("/admin/applications/{id}/approve"),
            &[("days", "30")],
        )
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    researcher.client.goto(&t.url("/me")).await.unwrap();
    researcher
        .wait_for_text("Approved: your files are on My access")
        .await;
    researcher.screenshot("my-applications").await;

    researcher.click("nav a[href='/me/access']").await;
    researcher.wait_for_text("shard-0.bin").await;
    researcher.click("form[action$='/client-url'] button").await;
    researcher.wait_for_text("weightgate download").await;
    researcher.screenshot("my-access").await;
    assert!(researcher.text().await.contains("/manifest.json"));

    researcher.close().await;
}
