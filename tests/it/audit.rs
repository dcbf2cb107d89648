//! The operator's audit: tampering found and named, signed checkpoints,
//! concurrent fetches, who holds a copy, filters, exports and anomalies.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use reqwest::header;
use weightgate::{
    audit::{self, Action, Event, Outcome, Problem},
    db::{self, audit::EventRow},
};

use crate::{cli::weightgate, helpers::*};

fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Appends events until the log holds `n`: refused sign-ins from documentation
/// addresses, each its own transaction like the real thing.
async fn fill_to(t: &TestApp, n: i64) {
    loop {
        let head = db::audit::head(t.app.db.pool()).await.unwrap().map_or(0, |h| h.0);
        if head >= n {
            assert_eq!(head, n, "the log already held more than {n} events");
            return;
        }
        let mut event = Event::new(Action::ReviewerSignIn, Outcome::Refused);
        event.reason = Some("bad_credentials".into());
        event.subject = Some(format!("guess{head}@lab.example.org"));
        event.client.ip = Some(format!("192.0.2.{}", head % 250));
        audit::append_now(&t.app.db, event).await.unwrap();
    }
}

/// The log as stored.
pub(crate) async fn snapshot(t: &TestApp) -> Vec<EventRow> {
    db::audit::page_after(t.app.db.pool(), i64::MIN, 1_000_000)
        .await
        .unwrap()
}

/// Puts the log back exactly as `rows`.
pub(crate) async fn restore(t: &TestApp, rows: &[EventRow]) {
    let mut tx = t.app.db.begin().await.unwrap();
    sqlx::query("DELETE FROM audit_events")
        .execute(&mut *tx)
        .await
        .unwrap();
    for r in rows {
        db::audit::insert(&mut tx, r).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert!(t.app.verify_audit_log().await.unwrap().is_intact());
}

pub(crate) async fn sql(t: &TestApp, statement: &str) {
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(t.app.db.pool())
        .await
        .unwrap();
}

/// Stores everything of `r` except its position at position `seq`.
async fn overwrite(t: &TestApp, seq: i64, r: &EventRow) {
    let mut tx = t.app.db.begin().await.unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq = $1")
        .bind(seq)
        .execute(&mut *tx)
        .await
        .unwrap();
    db::audit::insert(&mut tx, &EventRow { seq, ..r.clone() })
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// Gives the events `which` (a condition on `audit_events`) the subject
/// `text`, as an insider with write access to the database could.
pub(crate) async fn set_subject(t: &TestApp, text: &str, which: &str) {
    sqlx::query("INSERT INTO audit_terms (term) VALUES ($1) ON CONFLICT (term) DO NOTHING")
        .bind(text)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE audit_events SET subject_term = (SELECT id FROM audit_terms WHERE term = $1) WHERE {which}"
    )))
    .bind(text)
    .execute(t.app.db.pool())
    .await
    .unwrap();
}

/// Moves every event after `after` by `by` places (keeping positions unique
/// on the way).
async fn renumber(t: &TestApp, after: i64, by: i64) {
    sql(
        t,
        &format!("UPDATE audit_events SET seq = -(seq + {by}) WHERE seq > {after}"),
    )
    .await;
    sql(t, "UPDATE audit_events SET seq = -seq WHERE seq < 0").await;
}

/// Runs `audit verify` and returns its first problem, checking that the
/// command fails with that problem named.
async fn damage(t: &TestApp) -> (Problem, String) {
    let verification = t.app.verify_audit_log().await.unwrap();
    let first = verification
        .problems
        .first()
        .cloned()
        .expect("verify finds the damage");
    let (ok, out, err) = weightgate(t, &["audit", "verify"], None);
    assert!(!ok, "verify must fail on a damaged log: {out}");
    assert!(err.contains(&first.to_string()), "{err}");
    (first, err)
}

both!(verify_names_each_kind_of_tampering);
async fn verify_names_each_kind_of_tampering() {
    let t = TestApp::spawn().await;
    fill_to(&t, 40).await;
    let (ok, out, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    assert!(out.contains("audit log intact: 40 events"), "{out}");
    // The head it names is the one stored, for the operator to note down.
    let (seq, hash) = weightgate::db::audit::head(t.app.db.pool())
        .await
        .unwrap()
        .unwrap();
    assert!(out.contains(&format!("newest event {seq}, hash {hash}")), "{out}");
    let original = snapshot(&t).await;
    assert_eq!(original.len(), 40);

    // A field changed in place.
    set_subject(&t, "someone else", "seq = 17").await;
    let (problem, err) = damage(&t).await;
    assert_eq!(problem, Problem::Modified { seq: 17 });
    assert!(err.contains("event 17 was modified"), "{err}");
    restore(&t, &original).await;

    // A field changed and the event's hash recomputed to match.
    let mut edited = original[16].clone();
    edited.client_ip = Some("203.0.113.9".into());
    edited.hash = audit::event_hash(&edited);
    overwrite(&t, 17, &edited).await;
    let (problem, err) = damage(&t).await;
    assert_eq!(problem, Problem::BrokenLink { seq: 18 });
    assert!(
        err.contains("event 18 does not follow event 17: event 17 was modified and its hash recomputed"),
        "{err}"
    );
    restore(&t, &original).await;

    // A row deleted.
    sql(&t, "DELETE FROM audit_events WHERE seq = 17").await;
    let (problem, err) = damage(&t).await;
    assert_eq!(problem, Problem::Missing { first: 17, last: 17 });
    assert!(err.contains("event 17 is missing: it was deleted"), "{err}");
    restore(&t, &original).await;

    sql(&t, "DELETE FROM audit_events WHERE seq BETWEEN 17 AND 19").await;
    let (_, err) = damage(&t).await;
    assert!(err.contains("events 17 to 19 are missing"), "{err}");
    restore(&t, &original).await;

    // A row moved elsewhere.
    sql(&t, "UPDATE audit_events SET seq = 100 WHERE seq = 17").await;
    let (problem, err) = damage(&t).await;
    assert_eq!(problem, Problem::Moved { seq: 17, to: 100 });
    assert!(
        err.contains("event 17 is missing from its place: it was moved to position 100"),
        "{err}"
    );
    restore(&t, &original).await;

    // A row deleted and the gap closed.
    sql(&t, "DELETE FROM audit_events WHERE seq = 17").await;
    renumber(&t, 17, -1).await;
    let (problem, err) = damage(&t).await;
    assert_eq!(problem, Problem::DeletedAndRenumbered { seq: 17 });
    assert!(
        err.contains("event 17 is missing: it was deleted and the later events were renumbered"),
        "{err}"
    );
    restore(&t, &original).await;

    // Two rows' contents swapped, far apart and next to each other.
    overwrite(&t, 12, &original[29]).await;
    overwrite(&t, 30, &original[11]).await;
    let (problem, err) = damage(&t).await;
    assert_eq!(
        problem,
        Problem::Swapped {
            first: 12,
            second: 30
        }
    );
    assert!(err.contains("events 12 and 30 were swapped"), "{err}");
    restore(&t, &original).await;

    overwrite(&t, 20, &original[20]).await;
    overwrite(&t, 21, &original[19]).await;
    let (problem, _) = damage(&t).await;
    assert_eq!(
        problem,
        Problem::Swapped {
            first: 20,
            second: 21
        }
    );
    restore(&t, &original).await;

    // Three rows rotated.
    overwrite(&t, 5, &original[5]).await;
    overwrite(&t, 6, &original[6]).await;
    overwrite(&t, 7, &original[4]).await;
    let (_, err) = damage(&t).await;
    assert!(
        err.contains("events were reordered: position 5 holds event 6"),
        "{err}"
    );
    restore(&t, &original).await;

    // A made-up event slipped in, linked and hashed the way the portal would.
    renumber(&t, 25, 1).await;
    let mut forged = original[25].clone();
    forged.seq = 26;
    forged.subject = Some("nobody@example.org".into());
    forged.prev_hash = original[24].hash.clone();
    forged.hash = audit::event_hash(&forged);
    let mut tx = t.app.db.begin().await.unwrap();
    db::audit::insert(&mut tx, &forged).await.unwrap();
    tx.commit().await.unwrap();
    let (problem, err) = damage(&t).await;
    assert_eq!(problem, Problem::Inserted { seq: 26 });
    assert!(
        err.contains("an event was inserted at position 26: the original event 26 now sits at 27"),
        "{err}"
    );
    restore(&t, &original).await;

    // A row of garbage added at the end, and one before the start.
    let mut garbage = original[39].clone();
    garbage.seq = 41;
    garbage.prev_hash = "00ff".into();
    garbage.subject = Some("made up".into());
    let mut tx = t.app.db.begin().await.unwrap();
    db::audit::insert(&mut tx, &garbage).await.unwrap();
    tx.commit().await.unwrap();
    let (problem, err) = damage(&t).await;
    assert_eq!(problem, Problem::Forged { seq: 41 });
    assert!(err.contains("event 41 does not belong to the chain"), "{err}");
    restore(&t, &original).await;

    garbage.seq = 0;
    let mut tx = t.app.db.begin().await.unwrap();
    db::audit::insert(&mut tx, &garbage).await.unwrap();
    tx.commit().await.unwrap();
    let (problem, _) = damage(&t).await;
    assert_eq!(problem, Problem::InsertedBeforeStart { seq: 0 });
    restore(&t, &original).await;

    let (ok, out, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    assert!(out.contains("audit log intact: 40 events"), "{out}");
}

both!(verify_re_hashes_only_what_follows_the_newest_witnessed_checkpoint);
async fn verify_re_hashes_only_what_follows_the_newest_witnessed_checkpoint() {
    let t = TestApp::spawn().await;
    fill_to(&t, 40).await;
    let (ok, out, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    assert!(out.contains("checkpoint of event 40"), "{out}");
    fill_to(&t, 60).await;
    let (ok, out, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains(
            "audit log intact: 60 events, chain verified; events 1 to 40 as proved by the checkpoint"
        ) && out.contains("the 20 after it re-hashed"),
        "{out}"
    );
    let (ok, out, err) = weightgate(&t, &["audit", "verify", "--full"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("audit log intact: 60 events, chain verified (re-hashed in"),
        "{out}"
    );

    // Past the checkpoint, a change is found either way.
    let original = snapshot(&t).await;
    set_subject(&t, "someone-else@lab.example.org", "seq = 45").await;
    for args in [&["audit", "verify"][..], &["audit", "verify", "--full"]] {
        let (ok, _, err) = weightgate(&t, args, None);
        assert!(!ok);
        assert!(err.contains("event 45 was modified"), "{args:?}: {err}");
    }
    restore(&t, &original).await;

    // Before it, only `--full` re-hashes: the checkpoint's hash is still in
    // its place, so the quick check takes events 1 to 40 as proved.
    set_subject(&t, "someone-else@lab.example.org", "seq = 10").await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--full"], None);
    assert!(!ok);
    assert!(err.contains("event 10 was modified"), "{err}");
    restore(&t, &original).await;

    // A checkpoint whose hash the log no longer has proves nothing: the
    // chain is walked from the start, and the fork named.
    let mut rewritten = original[39].clone();
    rewritten.hash = "e".repeat(64);
    overwrite(&t, 40, &rewritten).await;
    let (ok, out, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok, "{out}");
    assert!(
        err.contains("forked history") && err.contains("event 40"),
        "{err}"
    );
}

both!(checkpoints_reveal_truncation_and_exports_outlive_the_database);
async fn checkpoints_reveal_truncation_and_exports_outlive_the_database() {
    let t = TestApp::spawn().await;
    fill_to(&t, 40).await;
    let (ok, out, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    assert!(out.contains("no signed checkpoints yet"), "{out}");

    let file = t.dir.path().join("checkpoint.json");
    let file_arg = file.to_str().unwrap();
    let (ok, out, err) = weightgate(&t, &["audit", "checkpoint", "--export", file_arg], None);
    assert!(ok, "{err}");
    assert!(out.contains("signed checkpoint of event 40"), "{out}");
    let exported: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let head = snapshot(&t).await.pop().unwrap();
    assert_eq!(exported["format"], "weightgate-audit-checkpoint-v1");
    assert_eq!(exported["seq"], 40);
    assert_eq!(exported["hash"], head.hash.as_str());
    assert_eq!(exported["public_key"].as_str().unwrap().len(), 64);
    assert_eq!(exported["signature"].as_str().unwrap().len(), 128);

    let (ok, out, _) = weightgate(&t, &["audit", "checkpoint", "--format", "jsonl"], None);
    assert!(ok);
    let again = &jsonl(&out)[0];
    assert_eq!(again["seq"], 40);
    assert_eq!(
        again["signature"], exported["signature"],
        "an unmoved head is not signed twice"
    );

    let (ok, out, err) = weightgate(&t, &["audit", "verify", "--checkpoint", file_arg], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("1 checkpoint(s) verified; the newest signs event 40"),
        "{out}"
    );
    assert!(out.contains("the exported checkpoint of event 40"), "{out}");

    // A stored checkpoint that was altered.
    sql(&t, "UPDATE audit_checkpoints SET at = at + 1").await;
    let (_, err) = damage(&t).await;
    assert!(
        err.contains("the checkpoint of event 40 signed") && err.contains("has an invalid signature"),
        "{err}"
    );
    sql(&t, "UPDATE audit_checkpoints SET at = at - 1").await;
    sql(&t, "UPDATE audit_checkpoints SET kid = 'gone'").await;
    let (_, err) = damage(&t).await;
    assert!(
        err.contains("was signed with key gone, which this portal does not trust"),
        "{err}"
    );
    sql(
        &t,
        &format!(
            "UPDATE audit_checkpoints SET kid = '{}'",
            exported["kid"].as_str().unwrap()
        ),
    )
    .await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");

    // The log cut short after the checkpoint.
    sql(&t, "DELETE FROM audit_events WHERE seq > 35").await;
    let (problem, err) = damage(&t).await;
    assert!(
        matches!(
            problem,
            Problem::Truncated {
                checkpoint_seq: 40,
                log_end: Some(35),
                ..
            }
        ),
        "{problem:?}"
    );
    assert!(err.contains("the log was truncated"), "{err}");
    assert!(
        err.contains("says the log reached event 40, but it ends at event 35"),
        "{err}"
    );
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(!ok);
    assert!(
        err.contains("no checkpoint was signed") && err.contains("the log was truncated"),
        "{err}"
    );

    // With the stored checkpoints gone too, the chain alone looks whole; the
    // witness still tells, and so does the exported checkpoint.
    sql(&t, "DELETE FROM audit_checkpoints").await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(
        err.contains(
            "the log was truncated: the checkpoint in the witness object audit-witness/00000000000000000040."
        ),
        "{err}"
    );
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--checkpoint", file_arg], None);
    assert!(!ok);
    assert!(
        err.contains("the log was truncated: the exported checkpoint says the log reached event 40, but it ends at event 35"),
        "{err}"
    );

    // Refilled to the same length, the log no longer has the signed hash.
    fill_to(&t, 40).await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--checkpoint", file_arg], None);
    assert!(!ok);
    assert!(
        err.contains("the log was rewritten: event 40 no longer has the hash the exported checkpoint signed"),
        "{err}"
    );

    // A checkpoint file that was edited.
    let edited = t.dir.path().join("edited.json");
    let mut changed = exported.clone();
    changed["seq"] = 30.into();
    std::fs::write(&edited, changed.to_string()).unwrap();
    let (ok, _, err) = weightgate(
        &t,
        &["audit", "verify", "--checkpoint", edited.to_str().unwrap()],
        None,
    );
    assert!(!ok);
    assert!(
        err.contains("the exported checkpoint has an invalid signature"),
        "{err}"
    );
    std::fs::write(&edited, "{\"seq\": 3}").unwrap();
    let (ok, _, err) = weightgate(
        &t,
        &["audit", "verify", "--checkpoint", edited.to_str().unwrap()],
        None,
    );
    assert!(!ok);
    assert!(err.contains("not an exported weightgate checkpoint"), "{err}");

    // The key never entered the database.
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signing_keys WHERE purpose = 'audit-ed25519'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(keys, 0);
}

both!(the_server_signs_a_checkpoint_whenever_the_head_moves);
async fn the_server_signs_a_checkpoint_whenever_the_head_moves() {
    let t = TestApp::spawn().await;
    let signer = tokio::spawn(t.app.clone().checkpoint_periodically(Duration::from_secs(1)));
    let wait_for_checkpoint_of = |seq: i64| {
        let db = t.app.db.clone();
        async move {
            for _ in 0..100 {
                if let Some(c) = db::audit::latest_checkpoint(db.pool()).await.unwrap()
                    && c.seq == seq
                {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no checkpoint of event {seq} was signed");
        }
    };
    let head = db::audit::head(t.app.db.pool()).await.unwrap().unwrap().0;
    let first = wait_for_checkpoint_of(head).await;
    let burst: Vec<Event> = (0..3)
        .map(|_| Event::new(Action::ReviewerSignIn, Outcome::Refused))
        .collect();
    let mut tx = t.app.db.begin().await.unwrap();
    audit::append(&mut tx, t.app.db.backend(), &burst).await.unwrap();
    tx.commit().await.unwrap();
    let second = wait_for_checkpoint_of(head + 3).await;
    assert!(second.at >= first.at);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_checkpoints")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(count, 2, "an unmoved head is not signed again");
    signer.abort();
    let v = t.app.verify_audit_log().await.unwrap();
    assert!(v.is_intact(), "{:?}", v.problems);
    assert_eq!(v.checkpoints, 2);
    assert_eq!(v.latest_checkpoint.unwrap().seq, head + 3);
}

both!(concurrent_fetches_each_leave_one_event_and_an_unbroken_chain);
async fn concurrent_fetches_each_leave_one_event_and_an_unbroken_chain() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("many@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let fetches = (0..40).map(|i| {
        let (name, url) = links[i % links.len()].clone();
        let client = t.client.clone();
        async move {
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            (name, response.bytes().await.unwrap().len())
        }
    });
    for (name, len) in futures_util::future::join_all(fetches).await {
        let expected = t.files.iter().find(|(n, _)| *n == name).unwrap().1.len();
        assert_eq!(len, expected);
    }
    t.wait_for_events("file.delivered", 40).await;
    let events = t.audit_events().await;
    let count = |action: &str| events.iter().filter(|e| e.action == action).count();
    assert_eq!(count("file.fetch"), 40);
    assert_eq!(count("file.delivered"), 40);
    let v = t.app.verify_audit_log().await.unwrap();
    assert!(v.is_intact(), "{:?}", v.problems);
    assert_eq!(v.events, events.len() as i64);
    let (ok, out, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("audit log intact: {} events", events.len())),
        "{out}"
    );
}

/// Fetches `url` (with a `Range` when given) to the end, and returns the bytes.
async fn fetch(t: &TestApp, url: &str, range: Option<&str>) -> Vec<u8> {
    let mut request = t.client.get(url);
    if let Some(range) = range {
        request = request.header(header::RANGE, range);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.bytes().await.unwrap().to_vec()
}

fn link<'a>(links: &'a [(String, String)], name: &str) -> &'a str {
    &links.iter().find(|(n, _)| n == name).unwrap().1
}

both!(who_has_counts_only_researchers_holding_every_file);
async fn who_has_counts_only_researchers_holding_every_file() {
    let t = TestApp::spawn().await;
    let ada = t
        .download_links(&t.approved_researcher("ada@uni.example.edu").await)
        .await;
    let bob = t
        .download_links(&t.approved_researcher("bob@uni.example.edu").await)
        .await;
    let size = |name: &str| t.files.iter().find(|(n, _)| n == name).unwrap().1.len();
    let total: usize = t.files.iter().map(|(_, b)| b.len()).sum();

    fetch(&t, link(&ada, "shard-0.bin"), None).await;
    fetch(&t, link(&ada, "shard-2.bin"), None).await;
    let first_half = fetch(&t, link(&ada, "shard-1.bin"), Some("bytes=0-499999")).await;
    assert_eq!(first_half.len(), 500_000);
    fetch(&t, link(&bob, "shard-0.bin"), None).await;
    t.wait_for_events("file.delivered", 4).await;

    let (ok, out, err) = weightgate(&t, &["audit", "who-has", MODEL, "--format", "jsonl"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "", "nobody has all of shard-1 yet");

    let rest = fetch(&t, link(&ada, "shard-1.bin"), Some("bytes=500000-")).await;
    assert_eq!(rest.len(), size("shard-1.bin") - 500_000);
    t.wait_for_events("file.delivered", 5).await;

    let (ok, out, err) = weightgate(&t, &["audit", "who-has", MODEL, "--format", "jsonl"], None);
    assert!(ok, "{err}");
    let holders = jsonl(&out);
    assert_eq!(holders.len(), 1, "{out}");
    assert_eq!(holders[0]["researcher"], "ada@uni.example.edu");
    assert_eq!(holders[0]["release"], "r1");
    assert_eq!(holders[0]["files"], 3);
    assert_eq!(holders[0]["bytes"], total);
    let completed = holders[0]["completed_at"].as_str().unwrap();
    let last_delivery = t.wait_for_events("file.delivered", 5).await.pop().unwrap();
    assert_eq!(completed, weightgate::types::format_ms_rfc3339(last_delivery.at));

    let (ok, table, _) = weightgate(&t, &["audit", "who-has", MODEL, "--release", "r1"], None);
    assert!(ok);
    assert!(
        table.contains("ada@uni.example.edu") && !table.contains("bob@"),
        "{table}"
    );
    let (ok, _, err) = weightgate(&t, &["audit", "who-has", MODEL, "--release", "r9"], None);
    assert!(!ok);
    assert!(err.contains("no published release \"r9\""), "{err}");
    let (ok, _, err) = weightgate(&t, &["audit", "who-has", "no-such-model"], None);
    assert!(!ok);
    assert!(err.contains("no model is called \"no-such-model\""), "{err}");

    let (ok, out, err) = weightgate(
        &t,
        &["audit", "downloads", "--model", MODEL, "--format", "jsonl"],
        None,
    );
    assert!(ok, "{err}");
    let rows = jsonl(&out);
    assert_eq!(rows.len(), 2, "{out}");
    let row = |email: &str| rows.iter().find(|r| r["researcher"] == email).unwrap();
    let a = row("ada@uni.example.edu");
    assert_eq!(a["files_complete"], 3);
    assert_eq!(a["files_total"], 3);
    assert_eq!(a["bytes"], total);
    assert_eq!(a["fetches"], 4);
    assert_eq!(a["addresses"], 1);
    assert!(a["first_fetch"].as_str().unwrap() <= a["last_fetch"].as_str().unwrap());
    let b = row("bob@uni.example.edu");
    assert_eq!(b["files_complete"], 1);
    assert_eq!(b["bytes"], size("shard-0.bin"));
    assert_eq!(b["fetches"], 1);
    let (ok, table, _) = weightgate(&t, &["audit", "downloads"], None);
    assert!(ok);
    assert!(table.contains("3 of 3") && table.contains("1 of 3"), "{table}");
}

/// The report totals and where the fold stands, as stored.
async fn report_totals(t: &TestApp) -> Vec<String> {
    let mut rows = db::reports::dump(t.app.db.pool()).await.unwrap();
    let cursor: (i64, Option<String>) = sqlx::query_as("SELECT seq, hash FROM report_cursor")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    rows.push(format!("cursor: {cursor:?}"));
    rows
}

both!(report_totals_kept_by_the_fold_equal_a_rebuild_from_the_log);
async fn report_totals_kept_by_the_fold_equal_a_rebuild_from_the_log() {
    // The portal's own fold stays out of the way: this one is watched.
    let t = TestApp::spawn_with(|c| c.reports_every = Duration::from_secs(3600)).await;
    let ada_access = t.approved_researcher("ada@uni.example.edu").await;
    let ada = t.download_links(&ada_access).await;
    let bob = t
        .download_links(&t.approved_researcher("bob@uni.example.edu").await)
        .await;
    fetch(&t, link(&ada, "shard-0.bin"), None).await;
    fetch(&t, link(&ada, "shard-1.bin"), Some("bytes=0-499999")).await;
    fetch(&t, link(&bob, "shard-0.bin"), Some("bytes=100-199")).await;
    t.wait_for_events("file.delivered", 3).await;
    let first = audit::report::catch_up(&t.app.db).await.unwrap();
    assert!(!first.rebuilt);

    // More of everything the reports count, folded on top of what was.
    fetch(&t, link(&ada, "shard-1.bin"), Some("bytes=500000-")).await;
    fetch(&t, link(&bob, "shard-0.bin"), Some("bytes=0-99")).await;
    fetch(&t, link(&bob, "shard-0.bin"), Some("bytes=150-299")).await;
    t.wait_for_events("file.delivered", 6).await;
    for i in 0..3 {
        let mut e = Event::new(Action::ReviewerSignIn, Outcome::Refused);
        e.reason = Some("bad_credentials".into());
        e.client.ip = Some(format!("198.51.100.{i}"));
        audit::append_now(&t.app.db, e).await.unwrap();
    }
    let url = link(&ada, "shard-2.bin").to_owned();
    let grant_id = url
        .split("/dl/")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let (ok, _, err) = weightgate(
        &t,
        &["grant", "revoke", &grant_id, "--reason", "Shared the link"],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(t.client.get(&url).send().await.unwrap().status(), 403);
    let second = audit::report::catch_up(&t.app.db).await.unwrap();
    assert!(second.folded > 0 && !second.rebuilt, "{second:?}");

    let kept = report_totals(&t).await;
    let has = |table: &str| {
        kept.iter()
            .filter(|l| l.starts_with(&format!("{table}: ")))
            .count()
    };
    assert_eq!(has("report_coverage"), 3, "{kept:#?}");
    assert!(
        kept.iter()
            .any(|l| l.starts_with("report_coverage: ") && !l.ends_with(" -")),
        "a file delivered whole has a completion time: {kept:#?}"
    );
    assert!(
        kept.iter()
            .any(|l| l.starts_with("report_coverage: ") && l.contains(" 0-300 -")),
        "bob's three ranges merge, and shard-0 is longer than that: {kept:#?}"
    );
    for table in [
        "report_downloads",
        "report_download_addresses",
        "report_grant_fetches",
        "report_grant_addresses",
        "report_fetch_minutes",
        "report_refusals",
        "report_refusal_totals",
        "report_daily_deliveries",
    ] {
        assert!(has(table) > 0, "{table} is empty: {kept:#?}");
    }
    // grant, hour, address, fetches, revoked, first, last
    assert!(
        kept.iter()
            .filter(|l| l.starts_with("report_grant_fetches: "))
            .any(|l| l.split(' ').nth(5) == Some("1")),
        "the revoked grant's refused fetch: {kept:#?}"
    );

    // Folding the log again from its start arrives at the same rows.
    let rebuilt = audit::report::rebuild(&t.app.db, &t.app.audit_archive(), &t.app.audit_trust().unwrap())
        .await
        .unwrap();
    assert_eq!(rebuilt.folded, snapshot(&t).await.len() as i64);
    assert_eq!(report_totals(&t).await, kept);
    let (ok, out, err) = weightgate(&t, &["audit", "rebuild-reports"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("folded {} events", rebuilt.folded)),
        "{out}"
    );
    assert_eq!(report_totals(&t).await, kept);

    // The newest event the totals took is rewritten beneath them: the next
    // fold notices, starts again from the log and says so.
    let newest = snapshot(&t).await.pop().unwrap();
    sqlx::query("UPDATE audit_events SET hash = $1 WHERE seq = $2")
        .bind(vec![0xffu8; 32])
        .bind(newest.seq)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let after = audit::report::catch_up(&t.app.db).await.unwrap();
    assert!(after.rebuilt, "{after:?}");
    assert_eq!(after.folded, newest.seq);
    // ...and a log cut short beneath them likewise.
    sql(
        &t,
        &format!("DELETE FROM audit_events WHERE seq = {}", newest.seq),
    )
    .await;
    let after = audit::report::catch_up(&t.app.db).await.unwrap();
    assert!(after.rebuilt, "{after:?}");
    assert_eq!(after.folded, newest.seq - 1);
    let (ok, out, err) = weightgate(&t, &["audit", "who-has", MODEL, "--format", "jsonl"], None);
    assert!(ok, "{err}");
    assert_eq!(jsonl(&out).len(), 0, "ada's shard-2 was refused: {out}");
}

/// The path of an object in the test portal's store.
fn object_path(t: &TestApp, key: &str) -> std::path::PathBuf {
    t.dir.path().join("data").join("objects").join(key)
}

/// Replaces a stored (read-only) object's bytes.
fn replace_object(t: &TestApp, key: &str, bytes: &[u8]) {
    let path = object_path(t, key);
    let mut permissions = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    permissions.set_readonly(false);
    std::fs::set_permissions(&path, permissions).unwrap();
    std::fs::write(&path, bytes).unwrap();
}

fn run(program: &str, args: &[&str], dir: &std::path::Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

both!(archived_segments_leave_the_database_and_verify_reads_them_back);
async fn archived_segments_leave_the_database_and_verify_reads_them_back() {
    let t = TestApp::spawn_with(|c| c.reports_every = Duration::from_secs(3600)).await;
    let ada = t
        .download_links(&t.approved_researcher("ada@uni.example.edu").await)
        .await;
    fetch(&t, link(&ada, "shard-0.bin"), None).await;
    t.wait_for_events("file.delivered", 1).await;
    let start = db::audit::head(t.app.db.pool()).await.unwrap().unwrap().0;
    fill_to(&t, start + 30).await;
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let first_end = start + 30;
    fill_to(&t, first_end + 20).await;
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let second_end = first_end + 20;
    fill_to(&t, second_end + 10).await;
    let (ok, exported_before, err) = weightgate(&t, &["audit", "export"], None);
    assert!(ok, "{err}");
    let whole_log = snapshot(&t).await;
    audit::report::catch_up(&t.app.db).await.unwrap();
    let totals = db::reports::dump(t.app.db.pool()).await.unwrap();

    // One archive run at a time: another run's lease stops this one until
    // it runs out.
    let future = weightgate::types::now_ms() + 600_000;
    sql(
        &t,
        &format!("INSERT INTO audit_archive_runs (id, holder, until_ms) VALUES (1, 'another run', {future})"),
    )
    .await;
    let (ok, _, err) = weightgate(&t, &["audit", "archive", "--before", "2099-01-01"], None);
    assert!(!ok);
    assert!(
        err.contains("another `weightgate audit archive` is running"),
        "{err}"
    );
    assert_eq!(snapshot(&t).await.len(), whole_log.len(), "nothing was archived");
    sql(&t, "UPDATE audit_archive_runs SET until_ms = 0").await;

    // Nothing is older than a date before the first checkpoint.
    let (ok, out, err) = weightgate(&t, &["audit", "archive", "--before", "2001-01-01"], None);
    assert!(ok, "{err}");
    assert!(out.contains("nothing to archive"), "{out}");

    // Segments of at least 5 events end at the first witnessed checkpoint
    // after that many: two of them, up to the second checkpoint.
    let (ok, out, err) = weightgate(
        &t,
        &[
            "audit",
            "archive",
            "--before",
            "2099-01-01",
            "--segment-events",
            "5",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("archived events 1 to {first_end} ({first_end} events"))
            && out.contains(&format!(
                "archived events {} to {second_end} (20 events",
                first_end + 1
            ))
            && out.contains(&format!("{second_end} removed from the database")),
        "{out}"
    );
    let live = snapshot(&t).await;
    assert_eq!(
        live.first().unwrap().seq,
        second_end + 1,
        "archived events left the database"
    );
    let archived = live.iter().filter(|e| e.action == "audit.archived").count();
    assert_eq!(archived, 2, "each segment is recorded in the log");
    let segments = db::archives::all(t.app.db.pool()).await.unwrap();
    assert_eq!(segments.len(), 2);

    // Tools nobody here wrote read a segment: gzip, and sha256sum against
    // the digest its manifest records.
    let objects = t.dir.path().join("data").join("objects");
    for s in &segments {
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(object_path(&t, &s.manifest)).unwrap()).unwrap();
        assert_eq!(manifest["format"], "weightgate-audit-archive-v1");
        assert_eq!(manifest["checkpoint"]["seq"], s.last_seq);
        assert_eq!(manifest["checkpoint"]["hash"], s.last_hash.as_str());
        let line = format!("{}  {}\n", manifest["sha256"].as_str().unwrap(), s.object);
        std::fs::write(objects.join("SUMS"), line).unwrap();
        assert!(run("sha256sum", &["-c", "SUMS"], &objects).contains(": OK"));
        let lines = run("gzip", &["-dc", &s.object], &objects);
        assert_eq!(lines.lines().count() as i64, s.events);
        let first: EventRow = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(first.seq, s.first_seq);
    }

    // The live log goes on from the archive: verify, quick and full, says
    // so without reading it; `--archive` reads it back.
    for args in [&["audit", "verify"][..], &["audit", "verify", "--full"]] {
        let (ok, out, err) = weightgate(&t, args, None);
        assert!(ok, "{args:?}: {err}");
        assert!(
            out.contains(&format!("events 1 to {second_end} archived in 2 segment(s)"))
                && out.contains("not read back"),
            "{args:?}: {out}"
        );
    }
    let (ok, out, err) = weightgate(&t, &["audit", "verify", "--archive"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "events 1 to {second_end} archived in 2 segment(s), read back and re-hashed"
        )),
        "{out}"
    );
    // Reports still count the archived events, and a rebuild reads them back.
    let (ok, out, err) = weightgate(&t, &["audit", "who-has", MODEL, "--format", "jsonl"], None);
    assert!(ok, "{err}");
    assert!(!err.contains("archived"), "{err}");
    let holders = jsonl(&out);
    assert!(
        holders.is_empty() || holders.iter().all(|h| h["researcher"] == "ada@uni.example.edu"),
        "{out}"
    );
    let (ok, out, err) = weightgate(&t, &["audit", "anomalies"], None);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("events 1 to {second_end}")), "{out}{err}");
    assert_eq!(db::reports::dump(t.app.db.pool()).await.unwrap(), totals);
    let (ok, out, err) = weightgate(&t, &["audit", "rebuild-reports"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("folded {} events", live.last().unwrap().seq)),
        "{out}"
    );
    assert_eq!(db::reports::dump(t.app.db.pool()).await.unwrap(), totals);
    // The export reads them back too, and is what it was before.
    let (ok, exported, err) = weightgate(&t, &["audit", "export", "--archived"], None);
    assert!(ok, "{err}");
    assert!(exported.starts_with(&exported_before), "{exported}");
    let (ok, exported, err) = weightgate(&t, &["audit", "export"], None);
    assert!(ok, "{err}");
    assert!(err.contains("archived and not exported"), "{err}");
    assert!(jsonl(&exported)[0]["seq"] == second_end + 1);
    // The dashboard's log says where the older events went.
    let admin = client();
    t.sign_in(&admin).await;
    let (status, page) = t.get_html(&admin, "/admin/audit").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&format!("Events 1 to {second_end}, up to "))
            && page.contains("are archived in the object store"),
        "{page}"
    );
    // A checkpoint goes on from the archive; a second archive finds nothing new.
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = weightgate(&t, &["audit", "archive", "--before", "1h"], None);
    assert!(ok, "{err}");
    assert!(out.contains("nothing to archive"), "{out}");

    // A segment whose bytes changed: only `--archive` reads it.
    let second = &segments[1];
    let original = std::fs::read(object_path(&t, &second.object)).unwrap();
    let mut changed = original.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 1;
    replace_object(&t, &second.object, &changed);
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--archive"], None);
    assert!(!ok);
    assert!(
        err.contains(&format!("the archived segment {} has the SHA-256", second.object)),
        "{err}"
    );
    replace_object(&t, &second.object, &original);

    // An event changed inside a segment, with the record and the manifest
    // made to match the new bytes: its hash gives it away.
    let first = &segments[0];
    let text = run("gzip", &["-dc", &first.object], &objects);
    let forged = text.replacen("guess", "someone", 1);
    assert_ne!(forged, text);
    std::fs::write(objects.join("forged.jsonl"), &forged).unwrap();
    run("gzip", &["-n", "forged.jsonl"], &objects);
    let forged_gz = std::fs::read(objects.join("forged.jsonl.gz")).unwrap();
    let sha256 = run("sha256sum", &["forged.jsonl.gz"], &objects)[..64].to_owned();
    let original_segment = std::fs::read(object_path(&t, &first.object)).unwrap();
    let original_manifest = std::fs::read(object_path(&t, &first.manifest)).unwrap();
    replace_object(&t, &first.object, &forged_gz);
    let mut manifest: serde_json::Value = serde_json::from_slice(&original_manifest).unwrap();
    manifest["sha256"] = sha256.clone().into();
    manifest["size"] = forged_gz.len().into();
    replace_object(&t, &first.manifest, manifest.to_string().as_bytes());
    sql(
        &t,
        &format!(
            "UPDATE audit_archives SET sha256 = '{sha256}', size = {} WHERE first_seq = 1",
            forged_gz.len()
        ),
    )
    .await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--archive"], None);
    assert!(!ok);
    assert!(
        err.contains("modified: its contents no longer match its hash"),
        "{err}"
    );
    replace_object(&t, &first.object, &original_segment);
    replace_object(&t, &first.manifest, &original_manifest);
    sql(
        &t,
        &format!(
            "UPDATE audit_archives SET sha256 = '{}', size = {} WHERE first_seq = 1",
            first.sha256, first.size
        ),
    )
    .await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--archive"], None);
    assert!(ok, "{err}");

    // Whoever writes the database cannot make archived events vanish, nor
    // slip rows in among them.
    sql(&t, "DELETE FROM audit_archives WHERE first_seq = 1").await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "events 1 to {first_end} are missing: neither the log nor an archived segment holds them"
        )),
        "{err}"
    );
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--archive"], None);
    assert!(!ok);
    assert!(err.contains("which the database no longer records"), "{err}");
    db::archives::insert(&mut t.app.db.pool().acquire().await.unwrap(), first)
        .await
        .unwrap();
    let mut inserted = live[0].clone();
    inserted.seq = 3;
    let mut tx = t.app.db.begin().await.unwrap();
    db::audit::insert(&mut tx, &inserted).await.unwrap();
    tx.commit().await.unwrap();
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the log holds a row at position 3, among the events up to {second_end}"
        )),
        "{err}"
    );
    sql(&t, "DELETE FROM audit_events WHERE seq = 3").await;

    // An archive run that stopped before removing its events: verify says
    // so, and the next run removes them, once they prove to be the
    // segment's own.
    let tail = &whole_log[first_end as usize..second_end as usize];
    let put_back = |rows: Vec<EventRow>| {
        let t = &t;
        async move {
            let mut tx = t.app.db.begin().await.unwrap();
            for r in &rows {
                db::audit::insert(&mut tx, r).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
    };
    let mut forged_tail = tail.to_vec();
    forged_tail[5].subject = Some("someone-else@lab.example.org".into());
    put_back(forged_tail).await;
    let (ok, _, err) = weightgate(&t, &["audit", "archive", "--before", "1h"], None);
    assert!(!ok);
    assert!(err.contains("that are not the events of the segment"), "{err}");
    assert_eq!(
        db::archives::lowest_live(t.app.db.pool()).await.unwrap(),
        Some(first_end + 1)
    );
    sql(&t, &format!("DELETE FROM audit_events WHERE seq <= {second_end}")).await;
    put_back(tail.to_vec()).await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(err.contains("left by an archive run that stopped"), "{err}");
    let (ok, out, err) = weightgate(&t, &["audit", "archive", "--before", "1h"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("removed 20 events an interrupted run had archived"),
        "{out}"
    );
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--archive"], None);
    assert!(ok, "{err}");

    // A run that stopped after storing a segment's manifest, before
    // recording it: its events are still in the log, which verify accepts,
    // and the next run records that very segment, whatever it was asked.
    sql(
        &t,
        &format!("DELETE FROM audit_archives WHERE first_seq = {}", first_end + 1),
    )
    .await;
    put_back(tail.to_vec()).await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = weightgate(&t, &["audit", "archive", "--before", "1h"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "archived events {} to {second_end} (20 events",
            first_end + 1
        )),
        "{out}"
    );
    assert_eq!(
        db::archives::all(t.app.db.pool()).await.unwrap()[1].sha256,
        segments[1].sha256
    );
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--archive"], None);
    assert!(ok, "{err}");

    // What quotas count of the archived deliveries is checked against the
    // segments.
    let (grant, bytes): (String, i64) =
        sqlx::query_as("SELECT grant_id, bytes FROM audit_archived_deliveries")
            .fetch_one(t.app.db.pool())
            .await
            .unwrap();
    assert_eq!(bytes, t.files[0].1.len() as i64, "ada's whole shard-0");
    sql(&t, "UPDATE audit_archived_deliveries SET bytes = 0").await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--archive"], None);
    assert!(!ok);
    assert!(
        err.contains(&format!("delivered under grant {grant}")) && err.contains("is not what quotas count"),
        "{err}"
    );
    sql(
        &t,
        &format!("UPDATE audit_archived_deliveries SET bytes = {bytes}"),
    )
    .await;

    // A record of an archive that never was, planted to make the newest
    // events vanish: it has no manifest in the store, so verify says so,
    // and an honest archive run refuses to go on from it.
    let head = db::audit::head(t.app.db.pool()).await.unwrap().unwrap();
    let (ok, _, err) = weightgate(&t, &["audit", "checkpoint"], None);
    assert!(ok, "{err}");
    let live_now = snapshot(&t).await;
    let planted = db::archives::ArchiveRow {
        first_seq: second_end + 1,
        last_seq: head.0,
        events: head.0 - second_end,
        prev_hash: whole_log[second_end as usize - 1].hash.clone(),
        last_hash: head.1.clone(),
        first_at: 0,
        last_at: 0,
        object: "audit-archive/segments/nothing.jsonl.gz".into(),
        manifest: "audit-archive/manifests/nothing.json".into(),
        size: 1,
        sha256: "0".repeat(64),
        archived_at: 0,
    };
    db::archives::insert(&mut t.app.db.pool().acquire().await.unwrap(), &planted)
        .await
        .unwrap();
    let (ok, _, err) = weightgate(&t, &["audit", "archive", "--before", "2099-01-01"], None);
    assert!(!ok);
    assert!(
        err.contains("audit-archive/manifests/nothing.json") && err.contains("nothing archived"),
        "{err}"
    );
    assert_eq!(snapshot(&t).await.len(), live_now.len(), "nothing was removed");
    sql(&t, &format!("DELETE FROM audit_events WHERE seq <= {}", head.0)).await;
    for args in [&["audit", "verify"][..], &["audit", "verify", "--full"]] {
        let (ok, _, err) = weightgate(&t, args, None);
        assert!(!ok, "{args:?}");
        assert!(
            err.contains("audit-archive/manifests/nothing.json of the archived events")
                && err.contains("is missing from the store"),
            "{args:?}: {err}"
        );
    }
    sql(
        &t,
        &format!("DELETE FROM audit_archives WHERE first_seq = {}", second_end + 1),
    )
    .await;
    sql(&t, "DELETE FROM audit_events").await;
    put_back(live_now).await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(ok, "{err}");

    // The newest record dropped: the live log no longer follows on.
    sql(
        &t,
        &format!("DELETE FROM audit_archives WHERE first_seq = {}", first_end + 1),
    )
    .await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "events {} to {second_end} are missing: neither the log nor an archived segment holds them",
            first_end + 1
        )),
        "{err}"
    );
    db::archives::insert(&mut t.app.db.pool().acquire().await.unwrap(), &segments[1])
        .await
        .unwrap();
    // A record that ends the archive on another hash than the witness's
    // checkpoint of that event: neither its manifest nor the witness agree.
    sql(
        &t,
        &format!(
            "UPDATE audit_archives SET last_hash = '{}' WHERE first_seq = {}",
            "e".repeat(64),
            first_end + 1
        ),
    )
    .await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify"], None);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "the database's record of the archived events {} to {second_end} differs from its manifest",
            first_end + 1
        )) && err.contains(&format!(
            "forked history: event {second_end} no longer has the hash"
        )),
        "{err}"
    );
}

both!(list_filters_pages_and_writes_csv);
async fn list_filters_pages_and_writes_csv() {
    let t = TestApp::spawn().await;
    let ada_access = t.approved_researcher("ada@uni.example.edu").await;
    let ada = t.download_links(&ada_access).await;
    let agent = "fetcher/1.0 (x, \"y\")";
    let response = t
        .client
        .get(link(&ada, "shard-2.bin"))
        .header(header::USER_AGENT, agent)
        .send()
        .await
        .unwrap();
    assert_eq!(response.bytes().await.unwrap().len(), 7);
    t.wait_for_events("file.delivered", 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = weightgate::types::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let bob = t
        .download_links(&t.approved_researcher("bob@uni.example.edu").await)
        .await;
    fetch(&t, link(&bob, "shard-0.bin"), None).await;
    t.wait_for_events("file.delivered", 2).await;
    let mut event = Event::new(Action::ReviewerSignIn, Outcome::Refused);
    event.reason = Some("bad_credentials".into());
    event.client.ip = Some("198.51.100.7".into());
    audit::append_now(&t.app.db, event).await.unwrap();
    let all = t.audit_events().await;
    let ada_grant = between(link(&ada, "shard-0.bin"), "/dl/", ".").to_owned();

    let list = |args: &[&str]| {
        let mut full = vec!["audit", "list", "--format", "jsonl"];
        full.extend_from_slice(args);
        let (ok, out, err) = weightgate(&t, &full, None);
        assert!(ok, "{args:?}: {err}");
        jsonl(&out)
    };
    let seqs = |rows: &[serde_json::Value]| {
        rows.iter()
            .map(|r| r["seq"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };

    let fetches = list(&["--model", MODEL, "--action", "file.fetch"]);
    assert_eq!(fetches.len(), 2);
    let ada_fetches = list(&["--researcher", "ADA@uni.example.edu", "--action", "file.fetch"]);
    assert_eq!(ada_fetches.len(), 1);
    assert_eq!(ada_fetches[0]["user_agent"], agent);
    assert!(
        ada_fetches[0]["subject"]
            .as_str()
            .unwrap()
            .starts_with("ada@uni.example.edu")
    );
    let by_grant = list(&["--grant", &ada_grant]);
    assert!(by_grant.iter().all(|e| e["grant_id"] == ada_grant.as_str()));
    assert!(by_grant.iter().any(|e| e["action"] == "grant.created"));
    assert!(by_grant.iter().any(|e| e["action"] == "file.delivered"));
    let by_ip = list(&["--ip", "198.51.100.7"]);
    assert_eq!(by_ip.len(), 1);
    assert_eq!(by_ip[0]["action"], "reviewer.sign_in");
    assert_eq!(list(&["--outcome", "refused"]).len(), 1);
    assert_eq!(list(&["--outcome", "ok", "--ip", "198.51.100.7"]).len(), 0);

    let middle_time = format!(
        "{}.{:03}Z",
        weightgate::types::format_ms_rfc3339(middle).trim_end_matches('Z'),
        middle % 1000
    );
    let before = list(&["--until", &middle_time]);
    let after = list(&["--since", &middle_time]);
    assert_eq!(before.len() + after.len(), all.len());
    assert!(before.iter().all(|e| e["at"].as_i64().unwrap() < middle));
    assert!(after.iter().all(|e| e["at"].as_i64().unwrap() >= middle));
    assert!(
        before
            .iter()
            .any(|e| e["subject"].as_str().is_some_and(|s| s.starts_with("ada@")))
    );
    assert!(
        after
            .iter()
            .all(|e| !e["subject"].as_str().is_some_and(|s| s.starts_with("ada@")))
    );
    assert_eq!(list(&["--since", "1h"]).len(), all.len());
    assert_eq!(
        list(&["--since", "2000-01-01", "--until", "2000-01-02T00:00:00+01:00"]).len(),
        0
    );
    assert_eq!(list(&["--until", "1h"]).len(), 0);

    // Paging: the oldest three, the next three, the newest two, the two before those.
    assert_eq!(seqs(&list(&["--after", "0", "--limit", "3"])), vec![1, 2, 3]);
    assert_eq!(seqs(&list(&["--after", "3", "--limit", "3"])), vec![4, 5, 6]);
    let n = all.len() as i64;
    assert_eq!(seqs(&list(&["--limit", "2"])), vec![n - 1, n]);
    assert_eq!(
        seqs(&list(&["--limit", "2", "--before", &(n - 1).to_string()])),
        vec![n - 3, n - 2]
    );
    let (ok, _, err) = weightgate(&t, &["audit", "list", "--limit", "2"], None);
    assert!(ok);
    assert!(err.contains(&format!("add --before {}", n - 1)), "{err}");

    for (args, message) in [
        (&["--model", "no-such-model"][..], "no model is called"),
        (
            &["--researcher", "nobody@example.org"][..],
            "no researcher has the e-mail address",
        ),
        (&["--since", "last tuesday"][..], "is not a time"),
        (
            &["--since", "1h", "--until", "2h"][..],
            "--since must be earlier than --until",
        ),
        (&["--outcome", "maybe"][..], "invalid value 'maybe'"),
        (
            &["--action", "file.fetched"][..],
            "\"file.fetched\" is not an audit action (one of application.submitted,",
        ),
        (&["--limit", "0"][..], "--limit"),
    ] {
        let mut full = vec!["audit", "list"];
        full.extend_from_slice(args);
        let (ok, _, err) = weightgate(&t, &full, None);
        assert!(!ok, "{args:?}");
        assert!(err.contains(message), "{args:?}: {err}");
    }

    // CSV quotes what needs quoting, and reads back to the same values.
    let (ok, out, err) = weightgate(
        &t,
        &["audit", "list", "--format", "csv", "--action", "file.fetch"],
        None,
    );
    assert!(ok, "{err}");
    let mut reader = csv::Reader::from_reader(out.as_bytes());
    let headers: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(&headers[..4], ["seq", "at", "time", "action"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[0][column("user_agent")], agent);
    assert_eq!(&rows[0][column("action")], "file.fetch");
    assert_eq!(&rows[0][column("range_end")], "6");
    assert!(out.contains("\"fetcher/1.0 (x, \"\"y\"\")\""), "{out}");

    // The whole log, streamed out.
    let exported = t.dir.path().join("log.csv");
    let (ok, _, err) = weightgate(
        &t,
        &[
            "audit",
            "export",
            "--format",
            "csv",
            "--output",
            exported.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    assert!(err.contains(&format!("exported {} events", all.len())), "{err}");
    let mut reader = csv::Reader::from_path(&exported).unwrap();
    let hashes: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[column("hash")].to_owned())
        .collect();
    assert_eq!(hashes, all.iter().map(|e| e.hash.clone()).collect::<Vec<_>>());
    let (ok, out, _) = weightgate(&t, &["audit", "export"], None);
    assert!(ok);
    let lines = jsonl(&out);
    assert_eq!(lines.len(), all.len());
    assert_eq!(
        lines.last().unwrap()["prev_hash"],
        all[all.len() - 2].hash.as_str()
    );
    let (ok, _, err) = weightgate(&t, &["audit", "export", "--format", "table"], None);
    assert!(!ok);
    assert!(err.contains("invalid value 'table'"), "{err}");
}

both!(tail_shows_the_newest_events_and_follows_new_ones);
async fn tail_shows_the_newest_events_and_follows_new_ones() {
    let t = TestApp::spawn().await;
    fill_to(&t, 12).await;
    let (ok, out, err) = weightgate(&t, &["audit", "tail", "-n", "5", "--format", "jsonl"], None);
    assert!(ok, "{err}");
    let seqs: Vec<i64> = jsonl(&out).iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![8, 9, 10, 11, 12]);
    let (ok, out, _) = weightgate(&t, &["audit", "tail", "-n", "2"], None);
    assert!(ok);
    assert_eq!(out.lines().count(), 2);
    assert!(
        out.lines().last().unwrap().contains("reviewer.sign_in") && out.contains("bad_credentials"),
        "{out}"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args([
            "audit",
            "tail",
            "-n",
            "1",
            "--follow",
            "--every",
            "100ms",
            "--action",
            "model.created",
            "--format",
            "jsonl",
        ])
        .env("WEIGHTGATE_DATA_DIR", &t.app.config.data_dir)
        .env("WEIGHTGATE_DATABASE_URL", t.app.config.database_url())
        .env("WEIGHTGATE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, arrived) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || {
        let line = arrived
            .recv_timeout(Duration::from_secs(20))
            .expect("tail printed nothing");
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let first = next();
    assert_eq!(first["action"], "model.created");
    assert_eq!(first["seq"], 1);
    fill_to(&t, 14).await;
    let slug: weightgate::types::Slug = "second-model".parse().unwrap();
    weightgate::domain::models::create(&t.app, &slug, "Second", "Be nice.", "test")
        .await
        .unwrap();
    let followed = next();
    assert_eq!(followed["action"], "model.created");
    assert_eq!(followed["seq"], 15);
    fill_to(&t, 16).await;
    let slug: weightgate::types::Slug = "third-model".parse().unwrap();
    weightgate::domain::models::create(&t.app, &slug, "Third", "Be nice.", "test")
        .await
        .unwrap();
    assert_eq!(next()["seq"], 17);
    child.kill().unwrap();
    child.wait().unwrap();
}

both!(anomalies_flag_shared_grants_bursts_revoked_use_and_forged_links);
async fn anomalies_flag_shared_grants_bursts_revoked_use_and_forged_links() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("leaky@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let url = link(&links, "shard-2.bin").to_owned();
    fetch(&t, &url, None).await;
    let grant_id = between(&url, "/dl/", ".").to_owned();
    let grant = db::grants::find_view(t.app.db.pool(), &grant_id)
        .await
        .unwrap()
        .unwrap();

    let (ok, _, err) = weightgate(&t, &["audit", "anomalies"], None);
    assert!(ok, "{err}");
    assert!(err.contains("nothing above the thresholds"), "{err}");

    // The same grant's links fetched from five more places at once.
    let events: Vec<Event> = (1..=5)
        .map(|i| {
            let mut e = Event::new(Action::FileFetch, Outcome::Ok);
            e.grant_id = Some(grant.id.clone());
            e.researcher_id = Some(grant.researcher_id.clone());
            e.model_id = Some(grant.model_id.clone());
            e.client.ip = Some(format!("203.0.113.{i}"));
            e
        })
        .collect();
    let mut tx = t.app.db.begin().await.unwrap();
    audit::append(&mut tx, t.app.db.backend(), &events).await.unwrap();
    tx.commit().await.unwrap();

    // Links with a forged signature, over and over.
    let token = between(&url, "/dl/", "/");
    let (rest, tag) = token.rsplit_once('.').unwrap();
    let forged = format!(
        "{rest}.{}{}",
        if tag.starts_with('A') { "B" } else { "A" },
        &tag[1..]
    );
    for _ in 0..5 {
        let response = t
            .client
            .get(t.url(&format!("/dl/{forged}/shard-2.bin")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    }
    // They name no grant: the first is logged at once, the others when the
    // window of the tally ends.
    t.app.refusals.flush(&t.app.audit).await;

    // Refused sign-ins from one address.
    for _ in 0..6 {
        let mut e = Event::new(Action::ReviewerSignIn, Outcome::Refused);
        e.reason = Some("bad_credentials".into());
        e.client.ip = Some("198.51.100.66".into());
        audit::append_now(&t.app.db, e).await.unwrap();
    }

    // The grant revoked, and its links tried again.
    let (ok, _, err) = weightgate(
        &t,
        &["grant", "revoke", &grant.id, "--reason", "Shared the link"],
        None,
    );
    assert!(ok, "{err}");
    let response = t.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 403);

    let (ok, out, err) = weightgate(
        &t,
        &[
            "audit",
            "anomalies",
            "--burst",
            "5",
            "--window",
            "10m",
            "--format",
            "jsonl",
        ],
        None,
    );
    assert!(ok, "{err}");
    let found = jsonl(&out);
    let kind = |k: &str| {
        found
            .iter()
            .find(|a| a["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in {out}"))
    };
    let shared = kind("many-addresses");
    assert_eq!(shared["grant_id"], grant.id.as_str());
    assert_eq!(shared["researcher"], "leaky@uni.example.edu");
    assert_eq!(shared["model"], MODEL);
    assert_eq!(shared["addresses"].as_array().unwrap().len(), 6);
    let burst = kind("burst");
    assert_eq!(burst["grant_id"], grant.id.as_str());
    let revoked = kind("after-revocation");
    assert_eq!(revoked["grant_id"], grant.id.as_str());
    assert_eq!(revoked["count"], 1);
    // Its time is the refused fetch's, not that of the fetches before the
    // revocation in the same hour.
    let refused = snapshot(&t)
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("grant_revoked"))
        .unwrap();
    assert_eq!(revoked["first"], weightgate::types::format_ms_rfc3339(refused.at));
    assert_eq!(revoked["last"], weightgate::types::format_ms_rfc3339(refused.at));
    let forged = kind("bad-signatures");
    assert_eq!(forged["client_ip"], "127.0.0.1");
    assert_eq!(forged["count"], 5);
    let sign_ins = kind("failed-sign-ins");
    assert_eq!(sign_ins["client_ip"], "198.51.100.66");
    assert_eq!(sign_ins["count"], 6);
    assert_eq!(found.len(), 5, "{out}");

    // From the first fetch on (inside an hour: that part-hour is read from
    // the log, the hours after it from the totals), nothing is left out.
    let first_fetch = snapshot(&t)
        .await
        .into_iter()
        .find(|e| e.action == "file.fetch")
        .unwrap();
    // RFC 3339 to the millisecond.
    let at_ms = |ms: i64| {
        let seconds = weightgate::types::format_ms_rfc3339(ms);
        format!("{}.{:03}Z", seconds.trim_end_matches('Z'), ms.rem_euclid(1000))
    };
    let since = at_ms(first_fetch.at);
    let (ok, from_first, err) = weightgate(
        &t,
        &[
            "audit",
            "anomalies",
            "--burst",
            "5",
            "--window",
            "10m",
            "--since",
            &since,
            "--format",
            "jsonl",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(from_first, out);
    // A window over ten minutes finds its candidates among the hourly totals.
    let (ok, hourly, err) = weightgate(
        &t,
        &[
            "audit",
            "anomalies",
            "--burst",
            "5",
            "--window",
            "1h",
            "--format",
            "jsonl",
        ],
        None,
    );
    assert!(ok, "{err}");
    let hourly_burst = jsonl(&hourly).into_iter().find(|a| a["kind"] == "burst").unwrap();
    assert_eq!(hourly_burst["count"], burst["count"], "{hourly}");
    // From a millisecond later, the first fetch is left out of the counts.
    let later = at_ms(first_fetch.at + 1);
    let (ok, from_later, err) = weightgate(
        &t,
        &[
            "audit",
            "anomalies",
            "--burst",
            "5",
            "--window",
            "10m",
            "--since",
            &later,
            "--format",
            "jsonl",
        ],
        None,
    );
    assert!(ok, "{err}");
    let shared_later = jsonl(&from_later)
        .into_iter()
        .find(|a| a["kind"] == "many-addresses")
        .unwrap();
    assert_eq!(
        shared_later["count"].as_i64().unwrap(),
        shared["count"].as_i64().unwrap() - 1,
        "{from_later}"
    );

    // Higher thresholds flag less; a window before any of it flags nothing.
    let (ok, out, _) = weightgate(
        &t,
        &[
            "audit",
            "anomalies",
            "--max-addresses",
            "6",
            "--bad-signatures",
            "6",
            "--failed-sign-ins",
            "7",
            "--format",
            "jsonl",
        ],
        None,
    );
    assert!(ok);
    let kinds: Vec<String> = jsonl(&out)
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        vec!["after-revocation"],
        "the default burst is 100 fetches a minute"
    );
    let (ok, table, _) = weightgate(&t, &["audit", "anomalies"], None);
    assert!(ok);
    assert!(
        table.contains("many-addresses") && table.contains("127.0.0.1 203.0.113.1"),
        "{table}"
    );
    assert!(table.contains("and 2 more"), "{table}");
    let (ok, out, _) = weightgate(
        &t,
        &["audit", "anomalies", "--since", "2100-01-01", "--format", "jsonl"],
        None,
    );
    assert!(ok);
    assert_eq!(out, "");
    let (ok, _, err) = weightgate(&t, &["audit", "anomalies", "--burst", "1"], None);
    assert!(!ok);
    assert!(err.contains("--burst"), "{err}");
}

both!(admins_read_the_log_a_chart_and_each_grants_history_in_the_dashboard);
async fn admins_read_the_log_a_chart_and_each_grants_history_in_the_dashboard() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("dash@uni.example.edu").await;
    let (_, url) = t.download_links(&access).await.remove(0);
    t.client.get(&url).send().await.unwrap().bytes().await.unwrap();
    t.client.get(format!("{url}x")).send().await.unwrap();
    t.wait_for_events("file.delivered", 1).await;

    let admin = client();
    t.sign_in(&admin).await;
    let (status, page) = t.get_html(&admin, "/admin/audit").await;
    assert_eq!(status, 200);
    assert!(page.contains("review.approved") && page.contains("file.fetch"));
    assert_eq!(
        page.matches("<rect").count(),
        30,
        "one bar per day for the one model"
    );
    let today = weightgate::types::format_ms(weightgate::types::now_ms());
    assert!(
        page.contains(&format!("{}: 1</title>", &today[..10])),
        "today's completed transfer is drawn"
    );

    let (_, refused) = t
        .get_html(&admin, "/admin/audit?action=file.fetch&outcome=refused")
        .await;
    assert!(refused.contains("malformed_link"));
    assert!(!refused.contains("review.approved"), "filters apply");
    let (status, _) = t.get_html(&admin, "/admin/audit?since=yesterday-ish").await;
    assert_eq!(status, 400, "a bad time is a clear error");

    let grant_id = between(&url, "/dl/", ".").to_owned();
    let (status, history) = t.get_html(&admin, &format!("/admin/grants/{grant_id}")).await;
    assert_eq!(status, 200);
    assert!(
        history.contains("grant.created")
            && history.contains("file.delivered")
            && history.contains("links.issued")
    );

    let email: weightgate::types::Email = "plain@lab.example.org".parse().unwrap();
    weightgate::domain::accounts::add_reviewer(&t.app, &email, "a plain reviewer password", false, "test")
        .await
        .unwrap();
    let plain = client();
    t.post_form(
        &plain,
        "/admin/login",
        "/admin/login",
        &[
            ("email", "plain@lab.example.org"),
            ("password", "a plain reviewer password"),
        ],
    )
    .await;
    let (status, _) = t.get_html(&plain, "/admin/audit").await;
    assert_eq!(status, 403, "the audit log is for admins");
}

both!(stored_texts_read_back_as_written);
/// An event's texts are stored once each as terms, its hashes as bytes and
/// a request id the portal gave as a UUID's 16 bytes: every reading of the
/// log (the events as text, the walk `verify` makes over the stored rows)
/// gives back exactly what was written, and the hashes still match it.
async fn stored_texts_read_back_as_written() {
    let t = TestApp::spawn().await;
    let request_ids = [
        None,
        Some("0b9e2c1a-4f3d-4e5a-9b8c-7d6e5f4a3b2c"),
        Some("0B9E2C1A-4F3D-4E5A-9B8C-7D6E5F4A3B2C"),
        Some("0b9e2c1a4f3d4e5a9b8c7d6e5f4a3b2c"),
        Some("trace 42 \u{2713}"),
        Some(""),
    ];
    for (i, id) in request_ids.iter().enumerate() {
        let mut event = Event::new(Action::ReviewerSignIn, Outcome::Refused);
        event.reason = Some("bad_credentials".into());
        event.subject = Some(format!("Zo\u{eb} {i} \"quoted\" \\ tab\t"));
        event.client.ip = Some("2001:db8::1".into());
        event.client.user_agent = Some("curl/8.5.0".into());
        event.client.request_id = id.map(str::to_owned);
        audit::append_now(&t.app.db, event).await.unwrap();
    }
    let all = t.audit_events().await;
    let events: Vec<_> = all.iter().filter(|e| e.action == "reviewer.sign_in").collect();
    assert_eq!(events.len(), request_ids.len());
    for (i, (e, id)) in events.iter().zip(request_ids).enumerate() {
        assert_eq!(e.request_id.as_deref(), id, "event {}", e.seq);
        assert_eq!(
            e.subject.as_deref(),
            Some(format!("Zo\u{eb} {i} \"quoted\" \\ tab\t").as_str())
        );
        assert_eq!(e.user_agent.as_deref(), Some("curl/8.5.0"));
        assert_eq!(e.hash.len(), 64);
    }
    let json = |rows: &[EventRow]| serde_json::to_value(rows).unwrap();
    assert_eq!(json(&snapshot(&t).await), json(&all));
    // The walk over the stored rows re-hashes what it reads back.
    let (ok, out, err) = weightgate(&t, &["audit", "verify", "--full"], None);
    assert!(ok && out.contains("audit log intact"), "{out}{err}");

    // SQLite keeps a value of any type in any column: a request id's bytes
    // replaced by a number, its text put beside, would read one way through
    // the view and another through the walk. The walk refuses it.
    if t.app.db.backend() == weightgate::db::Backend::Sqlite {
        let target = events[1];
        sql(
            &t,
            &format!(
                "UPDATE audit_events SET request_text = '{}', request_uuid = 12345678901234567 WHERE seq = {}",
                target.request_id.as_deref().unwrap(),
                target.seq
            ),
        )
        .await;
        let (ok, _, err) = weightgate(&t, &["audit", "verify", "--full"], None);
        assert!(!ok, "{err}");
        assert!(
            err.contains(&format!(
                "event {} holds integer as its request id's bytes",
                target.seq
            )),
            "{err}"
        );
        let original = snapshot_of(&all, target.seq);
        sql(
            &t,
            &format!("DELETE FROM audit_events WHERE seq = {}", target.seq),
        )
        .await;
        let mut tx = t.app.db.begin().await.unwrap();
        db::audit::insert(&mut tx, original).await.unwrap();
        tx.commit().await.unwrap();
        let (ok, _, err) = weightgate(&t, &["audit", "verify", "--full"], None);
        assert!(ok, "{err}");
    }

    // Each text is stored once, however many events name it.
    let agents: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_terms WHERE term = 'curl/8.5.0'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(agents, 1);
    // An insider who rewrites a term rewrites every event that names it,
    // and verify finds the first.
    sql(
        &t,
        "UPDATE audit_terms SET term = 'Wget/1.21' WHERE term = 'curl/8.5.0'",
    )
    .await;
    let modified = format!("event {} was modified", events[0].seq);
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--full"], None);
    assert!(!ok && err.contains(&modified), "{err}");
    // ...and one who removes a term leaves events that cannot be read.
    sql(&t, "DELETE FROM audit_terms WHERE term = 'Wget/1.21'").await;
    let (ok, _, err) = weightgate(&t, &["audit", "verify", "--full"], None);
    let missing = format!("event {} names term", events[0].seq);
    assert!(
        !ok && err.contains(&missing) && err.contains("the log was altered"),
        "{err}"
    );
}

fn snapshot_of(rows: &[EventRow], seq: i64) -> &EventRow {
    rows.iter().find(|r| r.seq == seq).expect("the event was read")
}
