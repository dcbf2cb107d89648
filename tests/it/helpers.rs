//! `TestApp`: a real portal on a random port with its own data directory, and
//! the small tools tests use to read its pages and e-mails.

use std::{path::PathBuf, sync::Arc, time::Duration};

use reqwest::{Client, StatusCode, redirect::Policy};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use weightgate::{
    app::{App, Schema},
    config::Config,
    domain::accounts,
    domain::models,
    types::{Email, Slug},
};

pub(crate) const REVIEWER: &str = "reviewer@lab.example.org";
pub(crate) const PASSWORD: &str = "a long reviewer password";
pub(crate) const MODEL: &str = "tiny-model";
/// Chunk size of the test release, small so that files have several chunks.
pub(crate) const CHUNK_SIZE: u64 = 64 * 1024;

/// The database a scenario runs on.
#[derive(Clone, Debug)]
pub(crate) enum TestDb {
    Sqlite,
    /// The URL of a fresh database made for this scenario.
    Postgres(String),
}

tokio::task_local! {
    pub static TEST_DB: TestDb;
}

static NOT_RUN: std::sync::Once = std::sync::Once::new();

impl TestDb {
    /// A fresh PostgreSQL database, or `None` (said loudly) when no server is
    /// configured. Under CI a missing server is a failure, not a skip.
    pub(crate) async fn postgres() -> Option<Self> {
        let Some(admin_url) = std::env::var("WEIGHTGATE_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the PostgreSQL pass: set WEIGHTGATE_TEST_POSTGRES_URL"
            );
            NOT_RUN.call_once(|| {
                use std::io::Write;
                let twins = postgres_twins();
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** PostgreSQL pass NOT RUN: {twins} of the tests cargo counts as passed (every \
                     `::postgres` one) did nothing. Set WEIGHTGATE_TEST_POSTGRES_URL=postgres://USER@HOST:PORT/DB \
                     to run them. ***\n"
                );
            });
            return None;
        };
        Some(TestDb::Postgres(fresh_postgres_database(&admin_url).await))
    }
}

/// How many scenarios have a `::postgres` twin: the `both!(…)` lines of the
/// integration tests.
fn postgres_twins() -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
        .map(|text| text.lines().filter(|l| l.starts_with("both!(")).count())
        .sum()
}

/// Creates `wgtest_PID_N` next to the admin URL's database, after dropping
/// those left behind by test processes that have ended.
async fn fresh_postgres_database(admin_url: &str) -> String {
    use sqlx::{Connection, Executor, Row};
    static CLEANED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("cannot reach WEIGHTGATE_TEST_POSTGRES_URL");
    CLEANED
        .get_or_init(|| async {
            let rows = sqlx::query("SELECT datname FROM pg_database WHERE datname LIKE 'wgtest\\_%'")
                .fetch_all(&mut conn)
                .await
                .unwrap();
            for row in rows {
                let name: String = row.get(0);
                let pid = name.split('_').nth(1).unwrap_or("");
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            }
        })
        .await;
    let name = format!(
        "wgtest_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    let (base, query) = admin_url
        .split_once('?')
        .map_or((admin_url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base
        .rsplit_once('/')
        .expect("WEIGHTGATE_TEST_POSTGRES_URL names a database");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// A database URL for an empty database of the scenario's kind.
pub(crate) async fn empty_database_url(dir: &std::path::Path) -> String {
    match TEST_DB.try_with(Clone::clone) {
        Ok(TestDb::Postgres(url)) => url,
        _ => format!("sqlite://{}?mode=rwc", dir.join("empty.db").display()),
    }
}

pub(crate) struct TestApp {
    pub app: Arc<App>,
    pub base: String,
    pub dir: TempDir,
    /// Keeps cookies, like a browser.
    pub client: Client,
    /// The files of the published release, by name, with their bytes.
    pub files: Vec<(String, Vec<u8>)>,
}

pub(crate) fn client() -> Client {
    weightgate::client::install_crypto();
    Client::builder()
        .cookie_store(true)
        .redirect(Policy::limited(5))
        .build()
        .unwrap()
}

impl TestApp {
    /// A portal with one model (`tiny-model`, one published release of three
    /// files) and one reviewer.
    pub(crate) async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Like [`TestApp::spawn`], with settings changed by `configure`.
    pub(crate) async fn spawn_with(configure: impl FnOnce(&mut Config)) -> Self {
        weightgate::client::install_crypto();
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info,sqlx=warn")
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::embedded(dir.path().join("data"));
        config.bind = addr;
        if let Ok(TestDb::Postgres(url)) = TEST_DB.try_with(Clone::clone) {
            config.database_url = Some(url);
        }
        configure(&mut config);
        let app = App::open(config, Schema::Migrate).await.unwrap();
        tokio::spawn(weightgate::web::serve(
            app.clone(),
            listener,
            std::future::pending(),
        ));

        let slug: Slug = MODEL.parse().unwrap();
        models::create(
            &app,
            &slug,
            "Tiny <b>Model</b>",
            "Be nice.\nDo not share.",
            "test",
        )
        .await
        .unwrap();
        let shards = dir.path().join("shards");
        std::fs::create_dir_all(&shards).unwrap();
        let mut files = Vec::new();
        for (i, size) in [300_000usize, 1_048_577, 7].into_iter().enumerate() {
            let name = format!("shard-{i}.bin");
            let bytes: Vec<u8> = (0..size).map(|b| (b * 31 + i * 7) as u8).collect();
            std::fs::write(shards.join(&name), &bytes).unwrap();
            files.push((name, bytes));
        }
        models::publish(
            &app,
            &slug,
            &shards,
            Some("r1"),
            CHUNK_SIZE,
            "test",
            &weightgate::domain::models::PublishProgress::quiet(),
        )
        .await
        .unwrap();
        let email: Email = REVIEWER.parse().unwrap();
        accounts::add_reviewer(&app, &email, PASSWORD, true, "test")
            .await
            .unwrap();

        Self {
            app,
            base: format!("http://{addr}"),
            dir,
            client: client(),
            files,
        }
    }

    /// A second model, `slug`, with one published release of one file, so
    /// that its applications and grants can exist.
    pub(crate) async fn publish_other_model(&self, slug: &str) {
        let other: Slug = slug.parse().unwrap();
        models::create(&self.app, &other, "Other", "Terms.", "test")
            .await
            .unwrap();
        let files = self.dir.path().join("other-files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("weights.bin"), b"other weights").unwrap();
        models::publish(
            &self.app,
            &other,
            &files,
            Some("r1"),
            CHUNK_SIZE,
            "test",
            &weightgate::domain::models::PublishProgress::quiet(),
        )
        .await
        .unwrap();
    }

    /// The portal's URL of `path`; a URL that is already whole (a link from
    /// an e-mail) as it is.
    pub(crate) fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// What `/metrics` shows now.
    pub(crate) async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub(crate) fn outbox(&self) -> PathBuf {
        self.app.config.outbox_dir()
    }

    pub(crate) async fn get_html(&self, client: &Client, path: &str) -> (StatusCode, String) {
        let response = client
            .get(self.url(path))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Submits the application form the way a browser does: load the page for
    /// its CSRF token, then post the fields.
    pub(crate) async fn apply(&self, client: &Client, fields: &[(&str, &str)]) -> (StatusCode, String) {
        let (status, page) = self.get_html(client, &format!("/models/{MODEL}")).await;
        assert_eq!(status, StatusCode::OK);
        let mut form: Vec<(&str, &str)> = vec![("authenticity_token", csrf(&page).leak())];
        form.extend_from_slice(fields);
        let response = client
            .post(self.url(&format!("/models/{MODEL}/apply")))
            .header("accept", "text/html")
            .form(&form)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// Applies as `email` and confirms the address through the e-mailed link.
    pub(crate) async fn apply_and_confirm(&self, email: &str) {
        let researcher = client();
        let (status, _) = self
            .apply(
                &researcher,
                &[
                    ("name", "Grace Hopper"),
                    ("email", email),
                    ("affiliation", "Navy Research Lab"),
                    ("intended_use", "Compiler research"),
                    ("accept_terms", "on"),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let mail = self.wait_for_mail(email, "Confirm your application").await;
        let confirm = link_in(&mail, "/confirm/");
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
    }

    /// Signs `client` in as the test reviewer.
    pub(crate) async fn sign_in(&self, client: &Client) {
        let (_, page) = self.get_html(client, "/admin/login").await;
        let response = client
            .post(self.url("/admin/login"))
            .form(&[
                ("authenticity_token", csrf(&page).as_str()),
                ("email", REVIEWER),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.url().path() == "/admin",
            "signed in lands on the queue, not {}",
            response.url()
        );
    }

    /// The id of the only pending application of `email`, from the queue page.
    pub(crate) async fn pending_application(&self, reviewer: &Client, email: &str) -> String {
        let (_, queue) = self.get_html(reviewer, "/admin").await;
        let row = queue
            .split("<tr>")
            .find(|row| row.contains(email))
            .unwrap_or_else(|| panic!("{email} is not in the queue:\n{queue}"));
        between(row, "/admin/applications/", "\"").to_owned()
    }

    /// Posts a form as a browser does: loads `page_path` for its CSRF token,
    /// then posts it with `fields` to `action`.
    pub(crate) async fn post_form(
        &self,
        browser: &Client,
        page_path: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let (_, page) = self.get_html(browser, page_path).await;
        let token = csrf(&page);
        let mut form = vec![("authenticity_token", token.as_str())];
        form.extend_from_slice(fields);
        browser
            .post(self.url(action))
            .header("accept", "text/html")
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    /// Applies, confirms, signs a reviewer in and approves; returns the access page URL.
    pub(crate) async fn approved_researcher(&self, email: &str) -> String {
        self.apply_and_confirm(email).await;
        let reviewer = client();
        self.sign_in(&reviewer).await;
        let id = self.pending_application(&reviewer, email).await;
        let response = self
            .post_form(
                &reviewer,
                &format!("/admin/applications/{id}"),
                &format!("/admin/applications/{id}/approve"),
                &[("days", "30")],
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mail = self.wait_for_mail(email, "is approved").await;
        link_in(&mail, "/access/")
    }

    /// Every download link on an access page, by file name.
    pub(crate) async fn download_links(&self, access_url: &str) -> Vec<(String, String)> {
        let page = client()
            .get(access_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        all_between(&page, "href=\"", "\"")
            .into_iter()
            .map(unescape)
            .filter(|href| href.contains("/dl/"))
            .map(|href| {
                // /dl/TOKEN/PATH: the file's path in the release follows the token.
                let after = href.split_once("/dl/").unwrap().1;
                (after.split_once('/').unwrap().1.to_owned(), href)
            })
            .collect()
    }

    /// Waits for the e-mail to `to` whose subject contains `subject`, and returns it.
    pub(crate) async fn wait_for_mail(&self, to: &str, subject: &str) -> String {
        for _ in 0..200 {
            if let Ok(entries) = std::fs::read_dir(self.outbox()) {
                for entry in entries.flatten() {
                    let raw = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let mail = decode_quoted_printable(&raw);
                    if mail.contains(&format!("To: {to}")) && mail.contains(subject) {
                        return mail;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no e-mail to {to} about {subject:?} arrived");
    }

    /// Waits until at least `count` events of `action` are in the log (some
    /// are written after a response ends) and returns them.
    pub(crate) async fn wait_for_events(
        &self,
        action: &str,
        count: usize,
    ) -> Vec<weightgate::db::audit::EventRow> {
        for _ in 0..200 {
            let found: Vec<_> = self
                .audit_events()
                .await
                .into_iter()
                .filter(|e| e.action == action)
                .collect();
            if found.len() >= count {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("fewer than {count} {action} events were recorded");
    }

    pub(crate) async fn audit_events(&self) -> Vec<weightgate::db::audit::EventRow> {
        weightgate::db::audit::list(
            self.app.db.pool(),
            &weightgate::db::audit::Filter {
                limit: 100_000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The text between the first `start` and the next `end`.
pub(crate) fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found in:\n{text}"))
        + start.len();
    let len = text[from..].find(end).unwrap();
    &text[from..from + len]
}

pub(crate) fn all_between<'a>(text: &'a str, start: &str, end: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(start) {
        rest = &rest[i + start.len()..];
        let Some(j) = rest.find(end) else { break };
        found.push(&rest[..j]);
        rest = &rest[j..];
    }
    found
}

pub(crate) fn unescape(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&#47;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&#34;", "\"")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#38;", "&")
        .replace("&amp;", "&")
}

/// The CSRF token of the first form on a page.
pub(crate) fn csrf(page: &str) -> String {
    unescape(between(page, "name=\"authenticity_token\" value=\"", "\""))
}

/// The first URL in an e-mail whose path contains `marker`.
pub(crate) fn link_in(mail: &str, marker: &str) -> String {
    mail.split_whitespace()
        .find(|w| w.starts_with("http") && w.contains(marker))
        .unwrap_or_else(|| panic!("no {marker} link in:\n{mail}"))
        .to_owned()
}

fn decode_quoted_printable(raw: &str) -> String {
    if !raw.contains("Content-Transfer-Encoding: quoted-printable") {
        return raw.to_owned();
    }
    raw.replace("=\r\n", "").replace("=3D", "=")
}

/// A TCP relay in front of a service (an S3 server, PostgreSQL, SMTP) that a
/// test can close, reopen, or make cut a connection midway: the service
/// "goes away" and "comes back" without being touched.
pub(crate) struct Gate {
    pub addr: std::net::SocketAddr,
    state: Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    closed: std::sync::atomic::AtomicBool,
    /// The next connection is cut after relaying this many bytes back (0: none).
    cut_next: std::sync::atomic::AtomicU64,
    /// Each piece of a reply waits this long before it is relayed.
    delay_ms: std::sync::atomic::AtomicU64,
    connections: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Gate {
    pub(crate) async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(GateState::default());
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let cut = shared.cut_next.swap(0, std::sync::atomic::Ordering::SeqCst);
                let task = tokio::spawn(relay(inbound, upstream, cut, shared.clone()));
                let mut open = shared.connections.lock().unwrap();
                open.retain(|t| !t.is_finished());
                open.push(task.abort_handle());
            }
        });
        Self { addr, state }
    }

    /// Drops every open connection and refuses new ones until [`Gate::open`].
    pub(crate) fn close(&self) {
        self.state.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.drop_connections();
    }

    pub(crate) fn open(&self) {
        self.state
            .closed
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops the open connections, so the next request opens a new one, and
    /// cuts that one after `bytes` have come back from the service.
    pub(crate) fn cut_next_after(&self, bytes: u64) {
        self.state
            .cut_next
            .store(bytes, std::sync::atomic::Ordering::SeqCst);
        self.drop_connections();
    }

    /// Makes every reply, on open and new connections, wait `delay` before
    /// each piece is relayed: a slow service rather than a gone one.
    pub(crate) fn slow_down(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    fn drop_connections(&self) {
        for task in self.state.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

async fn relay(
    inbound: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    cut_after: u64,
    state: Arc<GateState>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
        let _ = out_write.shutdown().await;
    };
    let down = async move {
        let mut sent = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match out_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = state.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let n = if cut_after > 0 {
                let left = cut_after.saturating_sub(sent);
                if left == 0 {
                    break;
                }
                n.min(usize::try_from(left).unwrap_or(usize::MAX))
            } else {
                n
            };
            if in_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n as u64;
        }
    };
    // The replies decide when the relay ends: a cut closes both directions.
    let up = tokio::spawn(up);
    down.await;
    up.abort();
}

/// Runs the researcher's client, `weightgate download ACCESS --dir DIR`, with
/// an `--include` for each pattern; it must succeed. Returns what it printed.
pub(crate) fn download_with_client(access: &str, dir: &std::path::Path, include: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weightgate"));
    cmd.args(["download", access, "--dir", dir.to_str().unwrap()]);
    for pattern in include {
        cmd.args(["--include", pattern]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `sha256sum -c SHA256SUMS` (with `more` options) in `dir`, which must pass.
pub(crate) fn sha256sum_check(dir: &std::path::Path, more: &[&str]) {
    let check = std::process::Command::new("sha256sum")
        .args(more)
        .args(["-c", "SHA256SUMS"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sha256sum -c in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// `model_signing verify key` (the OpenSSF model-signing package's verifier)
/// of the tree at `dir` with `signature` and `public_key`: `Some((passed,
/// output))`, or `None` with a loud notice when the tool is not installed
/// (a failure under CI). `.ci/run` installs it from
/// tests/model-signing/requirements.txt.
pub(crate) fn model_signing_verify(
    dir: &std::path::Path,
    signature: &std::path::Path,
    public_key: &std::path::Path,
) -> Option<(bool, String)> {
    let tool = std::env::var_os("WEIGHTGATE_TEST_MODEL_SIGNING").unwrap_or_else(|| "model_signing".into());
    let out = match std::process::Command::new(&tool)
        .args(["verify", "key", "--signature"])
        .arg(signature)
        .arg("--public_key")
        .arg(public_key)
        .arg(dir)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have model_signing installed (tests/model-signing/requirements.txt): {e}"
            );
            eprintln!(
                "*** model_signing not installed: the OpenSSF model signature was NOT checked by its verifier ***"
            );
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

/// What a file holding `bytes` must hold when it is put into an object
/// store, in chunks of `chunk_size`, as a manifest lists them.
pub(crate) fn expected(bytes: &[u8], chunk_size: u64) -> weightgate::storage::Expected {
    let mut chunks: Vec<String> = bytes
        .chunks(usize::try_from(chunk_size).unwrap())
        .map(sha256_hex)
        .collect();
    if chunks.is_empty() {
        chunks.push(sha256_hex(b""));
    }
    weightgate::storage::Expected {
        size: bytes.len() as u64,
        chunk_size,
        chunks,
    }
}
