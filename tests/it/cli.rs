//! The operator's commands, run as a separate process on the same data directory.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use crate::helpers::*;

pub(crate) fn weightgate(t: &TestApp, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    weightgate_with(t, args, stdin, &[])
}

/// [`weightgate`] with more settings in its environment.
pub(crate) fn weightgate_with(
    t: &TestApp,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, String)],
) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args(args)
        .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
        .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
        .env("WEIGHTGATE_LOG", "warn")
        // Tables fit COLUMNS when it is set; a test sets it when it means to.
        .env_remove("COLUMNS")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn run(data_dir: &std::path::Path, database_url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args(args)
        .env("WEIGHTGATE_DATA_DIR", data_dir)
        .env("WEIGHTGATE_DATABASE_URL", database_url)
        .env("WEIGHTGATE_BIND", "127.0.0.1:0")
        .env("WEIGHTGATE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

both!(serve_refuses_an_unmigrated_database_until_migrate_runs);
async fn serve_refuses_an_unmigrated_database_until_migrate_runs() {
    let dir = tempfile::tempdir().unwrap();
    let url = empty_database_url(dir.path()).await;
    let (ok, out) = run(dir.path(), &url, &["serve"]);
    assert!(!ok);
    assert!(out.contains("run `weightgate migrate` first"), "{out}");
    let (ok, out) = run(dir.path(), &url, &["model", "list"]);
    assert!(!ok, "{out}");
    let (ok, out) = run(dir.path(), &url, &["migrate"]);
    assert!(ok, "{out}");
    assert!(out.contains("database is up to date"));
    let (ok, out) = run(dir.path(), &url, &["model", "list", "--format", "jsonl"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "");
}

both!(the_database_refuses_a_state_the_portal_does_not_know);
async fn the_database_refuses_a_state_the_portal_does_not_know() {
    let t = TestApp::spawn().await;
    t.apply_and_confirm("states@uni.example.edu").await;
    let pool = t.app.db.pool();
    for (update, known) in [
        ("UPDATE applications SET status = 'archived'", false),
        ("UPDATE applications SET kind = 'Renewal'", false),
        ("UPDATE reviewers SET notify = 'weekly'", false),
        ("UPDATE applications SET status = 'denied'", true),
        ("UPDATE reviewers SET notify = 'digest'", true),
    ] {
        let done = sqlx::query(update).execute(pool).await;
        assert_eq!(done.is_ok(), known, "{update}: {done:?}");
    }
}

#[test]
fn a_researchers_download_help_lists_its_own_options_only() {
    let out = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args(["download", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Usage: weightgate download"), "{help}");
    assert!(
        help.contains("--limit-rate") && help.contains("--include"),
        "{help}"
    );
    assert!(
        !help.contains("WEIGHTGATE_") && !help.contains("--database-url"),
        "no portal setting in a researcher's help:\n{help}"
    );
    // The operators' commands still take the settings.
    let out = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args(["model", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("WEIGHTGATE_DATABASE_URL")
    );
}

fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

both!(operators_manage_models_reviewers_grants_and_read_the_audit_log);
async fn operators_manage_models_reviewers_grants_and_read_the_audit_log() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("cli@uni.example.edu").await;
    let (_, url) = t.download_links(&access).await.remove(0);
    assert_eq!(t.client.get(&url).send().await.unwrap().status(), 200);

    let terms = t.dir.path().join("terms.txt");
    std::fs::write(&terms, "Research only.").unwrap();
    let (ok, out, err) = weightgate(
        &t,
        &[
            "model",
            "create",
            "big-model",
            "--title",
            "Big Model",
            "--terms",
            terms.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("created model big-model"));
    let (ok, _, err) = weightgate(&t, &["model", "create", "big-model", "--title", "Again"], None);
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    let (ok, _, err) = weightgate(&t, &["model", "create", "Bad Slug", "--title", "x"], None);
    assert!(!ok);
    assert!(err.contains("not a valid slug"), "{err}");

    let shards = t.dir.path().join("big");
    std::fs::create_dir_all(&shards).unwrap();
    std::fs::write(shards.join("a.bin"), vec![1u8; 5000]).unwrap();
    std::fs::write(shards.join("b.bin"), b"hello").unwrap();
    let (ok, out, err) = weightgate(
        &t,
        &["model", "publish", "big-model", shards.to_str().unwrap()],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains(&sha256_hex(b"hello")), "{out}");
    assert!(
        out.contains("published release v1 of big-model with 2 files"),
        "{out}"
    );
    let (ok, out, _) = weightgate(
        &t,
        &[
            "model",
            "publish",
            "big-model",
            shards.to_str().unwrap(),
            "--release",
            "v2",
        ],
        None,
    );
    assert!(ok);
    assert!(
        out.contains("present"),
        "identical files are not stored twice: {out}"
    );
    let (ok, _, err) = weightgate(
        &t,
        &[
            "model",
            "publish",
            "big-model",
            shards.to_str().unwrap(),
            "--release",
            "v2",
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains("already exists"), "{err}");
    let page = t
        .client
        .get(t.url("/models/big-model"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Research only."));

    let (ok, out, err) = weightgate(
        &t,
        &[
            "reviewer",
            "add",
            "second@lab.example.org",
            "--password-stdin",
            "--as",
            "alice@lab.example.org",
        ],
        Some("another long password\n"),
    );
    assert!(ok, "{err}");
    assert!(out.contains("reviewer second@lab.example.org"));
    // The log names who ran it, and the account they ran it as.
    let saved = t.wait_for_events("reviewer.saved", 2).await;
    let actor = saved.last().unwrap().actor.clone().unwrap();
    assert!(
        actor.starts_with("operator:alice@lab.example.org (os user ") && !actor.contains("unknown"),
        "{actor}"
    );
    let (ok, _, err) = weightgate(
        &t,
        &["reviewer", "add", "short@lab.example.org", "--password-stdin"],
        Some("short"),
    );
    assert!(!ok);
    assert!(err.contains("at least 12 characters"), "{err}");
    let (ok, out, _) = weightgate(&t, &["reviewer", "list", "--format", "jsonl"], None);
    assert!(ok);
    let reviewers = jsonl(&out);
    assert!(
        reviewers
            .iter()
            .any(|r| r["email"] == "second@lab.example.org" && r["role"] == "reviewer")
    );

    let (ok, out, _) = weightgate(&t, &["grant", "list", "--format", "jsonl"], None);
    assert!(ok);
    let grants = jsonl(&out);
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["researcher"], "cli@uni.example.edu");
    assert_eq!(grants[0]["state"], "active");
    let grant_id = grants[0]["id"].as_str().unwrap().to_owned();
    let (ok, table, _) = weightgate(&t, &["grant", "list"], None);
    assert!(ok);
    assert!(table.contains("cli@uni.example.edu") && table.contains(&grant_id));

    let (ok, out, err) = weightgate(
        &t,
        &["grant", "revoke", &grant_id, "--reason", "Project ended"],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("revoked grant"));
    let (ok, _, err) = weightgate(&t, &["grant", "revoke", &grant_id, "--reason", "Again"], None);
    assert!(!ok);
    assert!(err.contains("already revoked"), "{err}");
    assert_eq!(
        t.client.get(&url).send().await.unwrap().status(),
        403,
        "the running portal sees the revocation"
    );
    t.wait_for_mail("cli@uni.example.edu", "was revoked").await;

    let (ok, out, _) = weightgate(
        &t,
        &["audit", "list", "--format", "jsonl", "--action", "file.fetch"],
        None,
    );
    assert!(ok);
    let fetches = jsonl(&out);
    assert_eq!(fetches.len(), 2);
    assert_eq!(fetches[0]["outcome"], "ok");
    assert_eq!(fetches[0]["client_ip"], "127.0.0.1");
    assert_eq!(fetches[1]["outcome"], "refused");
    assert_eq!(fetches[1]["reason"], "grant_revoked");
    let (ok, table, _) = weightgate(&t, &["audit", "list"], None);
    assert!(ok);
    assert!(table.contains("grant.revoked") && table.contains("file.fetch"));
    assert!(
        table.contains("user agent"),
        "into a pipe, every column:\n{table}"
    );

    // In a terminal of 80 or 120 columns the listings fit, keeping what an
    // operator copies (ids, actions) whole; --wide shows everything.
    let widest = |table: &str| table.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    for columns in [80, 120] {
        let env = [("COLUMNS", columns.to_string())];
        let (ok, table, err) = weightgate_with(&t, &["audit", "list"], None, &env);
        assert!(ok, "{err}");
        assert!(widest(&table) <= columns, "audit list at {columns}:\n{table}");
        assert!(
            table.contains("grant.revoked") && table.contains("file.fetch"),
            "{table}"
        );
        let (ok, table, _) = weightgate_with(&t, &["grant", "list"], None, &env);
        assert!(ok);
        assert!(widest(&table) <= columns, "grant list at {columns}:\n{table}");
        assert!(table.contains(&grant_id), "the id stays whole:\n{table}");
        let (ok, table, _) = weightgate_with(&t, &["reviewer", "list"], None, &env);
        assert!(ok);
        assert!(widest(&table) <= columns, "reviewer list at {columns}:\n{table}");
        assert!(table.contains("second@lab.example.org"), "{table}");
    }
    let env = [("COLUMNS", "80".to_owned())];
    let (ok, wide, _) = weightgate_with(&t, &["audit", "list", "--wide"], None, &env);
    assert!(ok);
    assert!(widest(&wide) > 80 && wide.contains("user agent"), "{wide}");
    let (ok, out, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    assert!(out.contains("audit log intact"));

    crate::audit::set_subject(
        &t,
        "someone else",
        "action_term = (SELECT id FROM audit_terms WHERE term = 'grant.created')",
    )
    .await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(err.contains("was modified"), "{err}");
}

both!(a_publish_killed_midway_shows_no_release_and_finishes_when_run_again);
async fn a_publish_killed_midway_shows_no_release_and_finishes_when_run_again() {
    use std::io::BufRead;
    let t = TestApp::spawn().await;
    let dir = t.dir.path().join("r-killed");
    std::fs::create_dir_all(&dir).unwrap();
    let small = vec![7u8; 100_000];
    std::fs::write(dir.join("a-small.bin"), &small).unwrap();
    // Large enough that storing it outlasts the moment the test needs to
    // kill the process: it is still copying when the signal arrives.
    let large = std::fs::File::create(dir.join("b-large.bin")).unwrap();
    large.set_len(384 << 20).unwrap();
    drop(large);
    let releases = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM releases WHERE name = 'r-killed'")
            .fetch_one(t.app.db.pool())
            .await
            .unwrap()
    };

    let mut child = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args([
            "model",
            "publish",
            MODEL,
            dir.to_str().unwrap(),
            "--release",
            "r-killed",
        ])
        .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
        .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
        .env("WEIGHTGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("publish printed nothing").unwrap();
    assert!(first.contains("a-small.bin"), "{first}");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the publish was killed before it finished");
    assert_eq!(releases().await, 0, "a killed publish leaves no release");

    let (ok, out, err) = weightgate(
        &t,
        &[
            "model",
            "publish",
            MODEL,
            dir.to_str().unwrap(),
            "--release",
            "r-killed",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(out.contains("present") && out.contains("a-small.bin"), "{out}");
    assert!(out.contains("stored ") && out.contains("b-large.bin"), "{out}");
    assert!(out.contains("published release r-killed"), "{out}");
    assert_eq!(releases().await, 1);
    let leftovers: Vec<_> = walk(&t.app.config.data_dir.join("objects"))
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(
        leftovers.len() <= 1,
        "at most the copy cut short by the kill: {leftovers:?}"
    );

    let access = t.approved_researcher("after-kill@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (_, url) = links.iter().find(|(n, _)| n == "a-small.bin").unwrap();
    let body = t.client.get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(sha256_hex(&body), sha256_hex(&small));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
