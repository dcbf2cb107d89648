//! The researcher's download client against the real portal: verification,
//! resumption, damaged chunks, expired links, tampering, refusals, quotas,
//! and an interrupted publish.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use weightgate::client::{self, Options, Summary};

use crate::helpers::*;

fn options(url: &str, dir: &Path) -> Options {
    Options {
        url: url.to_owned(),
        dir: dir.to_owned(),
        jobs: 4,
        include: Vec::new(),
        public_key: None,
        model_signing_key: None,
        limit_rate: None,
        progress: false,
    }
}

fn manifest_of(access: &str) -> String {
    format!("{access}/manifest.json")
}

/// The ranges fetched successfully for one file, in log order.
async fn fetched_ranges(t: &TestApp, file: &str) -> Vec<(i64, i64)> {
    t.audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "file.fetch" && e.outcome == "ok")
        .filter(|e| {
            e.subject
                .as_deref()
                .is_some_and(|s| s.ends_with(&format!("/{file}")))
        })
        .map(|e| (e.range_start.unwrap(), e.range_end.unwrap()))
        .collect()
}

/// Waits (up to 4 s) until the client's state file for `file` in release r1
/// names at least `at_least` chunks verified, and returns how many it names.
pub(crate) async fn wait_for_verified(dir: &Path, file: &str, at_least: usize) -> usize {
    let state = dir.join(format!("r1/.{file}.weightgate"));
    let mut verified = 0;
    for _ in 0..400 {
        if let Ok(text) = std::fs::read_to_string(&state)
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        {
            verified = json["verified"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v.as_bool() == Some(true))
                .count();
            if verified >= at_least {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    verified
}

fn assert_files_match(t: &TestApp, dir: &Path) {
    for (name, bytes) in &t.files {
        let got = std::fs::read(dir.join("r1").join(name)).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(bytes), "{name}");
    }
}

both!(the_client_says_where_the_files_are_and_leaves_the_signed_checksums_beside_them);
async fn the_client_says_where_the_files_are_and_leaves_the_signed_checksums_beside_them() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("folder@uni.example.edu").await;
    let dir = t.dir.path().join("weights");
    let out = download_with_client(&access, &dir, &[]);
    let release = dir.join("r1");
    assert!(
        out.contains(&format!("3 files verified in {}", release.display())),
        "{out}"
    );
    // The check the README gives works where the client says the files are.
    sha256sum_check(&release, &[]);
    for name in ["SHA256SUMS.minisig", "manifest.json", "manifest.json.minisig"] {
        assert!(release.join(name).is_file(), "{name}");
    }

    let one = t.dir.path().join("one");
    let out = download_with_client(&access, &one, &["shard-0.bin"]);
    assert!(out.contains("1 file verified in"), "{out}");
    assert!(out.contains("--ignore-missing"), "{out}");
    sha256sum_check(&one.join("r1"), &["--ignore-missing"]);

    // minisign, which nobody here wrote, checks the checksums in place.
    if Command::new("minisign").arg("-v").output().is_ok() {
        let key = client()
            .get(t.url("/.well-known/weightgate/minisign.pub"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        std::fs::write(release.join("minisign.pub"), key).unwrap();
        let verified = Command::new("minisign")
            .args(["-Vm", "SHA256SUMS", "-p", "minisign.pub"])
            .current_dir(&release)
            .output()
            .unwrap();
        assert!(
            verified.status.success(),
            "{}",
            String::from_utf8_lossy(&verified.stderr)
        );
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the minisign tool installed"
        );
    }
}

both!(the_client_downloads_verifies_and_skips_what_is_complete);
async fn the_client_downloads_verifies_and_skips_what_is_complete() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("client@uni.example.edu").await;
    let dir = t.dir.path().join("weights");

    let summary = client::download(options(&manifest_of(&access), &dir))
        .await
        .unwrap();
    assert_eq!(summary.files, 3);
    assert_eq!(summary.already_complete, 0);
    let total: usize = t.files.iter().map(|(_, b)| b.len()).sum();
    assert_eq!(summary.bytes_fetched, total as u64);
    assert_eq!(summary.chunks_fetched, 5 + 17 + 1);
    assert_files_match(&t, &dir);
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("r1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".part") || n.ends_with(".weightgate"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let again = client::download(options(&access, &dir)).await.unwrap();
    assert_eq!(
        again,
        Summary {
            files: 3,
            already_complete: 3,
            release_dirs: vec![dir.join("r1")],
            ..Summary::default()
        },
        "a second run fetches nothing"
    );

    // The signed SHA256SUMS checks out with the minisign tool and the served key.
    let minisign = Command::new("minisign").arg("-v").output();
    if minisign.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have the minisign tool installed"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "*** minisign not installed: its check of SHA256SUMS was NOT RUN ***"
        );
        return;
    }
    let base = format!("{access}/releases/r1");
    for name in ["SHA256SUMS", "SHA256SUMS.minisig"] {
        let body = t
            .client
            .get(format!("{base}/{name}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        std::fs::write(dir.join(name), body).unwrap();
    }
    let key = t
        .client
        .get(t.url("/.well-known/weightgate/minisign.pub"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(dir.join("minisign.pub"), key).unwrap();
    let check = |sums: &str| {
        Command::new("minisign")
            .args(["-Vm", sums, "-x", "SHA256SUMS.minisig", "-p", "minisign.pub"])
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let out = check("SHA256SUMS");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    std::fs::write(dir.join("SHA256SUMS"), sums.replacen('0', "1", 1)).unwrap();
    assert!(
        !check("SHA256SUMS").status.success(),
        "minisign refuses an altered SHA256SUMS"
    );
    let out = Command::new("sha256sum")
        .args(["-c", "../SHA256SUMS"])
        .current_dir(dir.join("r1"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "and sha256sum notices the altered line");
}

both!(a_damaged_chunk_on_disk_is_the_only_one_fetched_again);
async fn a_damaged_chunk_on_disk_is_the_only_one_fetched_again() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("chunks@uni.example.edu").await;
    let dir = t.dir.path().join("weights");
    client::download(options(&access, &dir)).await.unwrap();
    let before = fetched_ranges(&t, "shard-1.bin").await;
    assert_eq!(before.len(), 17);

    let path = dir.join("r1/shard-1.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let damaged = 5 * CHUNK_SIZE as usize + 1234;
    bytes[damaged] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let summary = client::download(options(&access, &dir)).await.unwrap();
    assert_eq!(summary.already_complete, 2);
    assert_eq!(summary.chunks_fetched, 1);
    assert_eq!(summary.bytes_fetched, CHUNK_SIZE);
    let after = fetched_ranges(&t, "shard-1.bin").await;
    let start = 5 * CHUNK_SIZE as i64;
    assert_eq!(&after[before.len()..], &[(start, start + CHUNK_SIZE as i64 - 1)]);
    assert_files_match(&t, &dir);
}

both!(a_tampered_manifest_is_refused_and_nothing_is_written);
async fn a_tampered_manifest_is_refused_and_nothing_is_written() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("tamper@uni.example.edu").await;
    let manifest: String = sqlx::query_scalar("SELECT manifest FROM releases")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert!(manifest.contains("\"sha256\": \""));
    let forged = manifest.replacen("\"sha256\": \"", "\"sha256\": \"0", 1);
    sqlx::query("UPDATE releases SET manifest = $1")
        .bind(&forged)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let dir = t.dir.path().join("weights");
    let err = client::download(options(&access, &dir)).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("is not signed by the portal's publishing key"),
        "{err:#}"
    );
    assert!(!dir.join("r1").exists(), "nothing was written");

    let other_key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    sqlx::query("UPDATE releases SET manifest = $1")
        .bind(&manifest)
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let mut opts = options(&access, &dir);
    opts.public_key = Some(other_key.into());
    let err = client::download(opts).await.unwrap_err();
    assert!(
        format!("{err:#}").contains("not signed"),
        "a pinned key that differs is refused: {err:#}"
    );
}

both!(expired_links_are_replaced_and_refusals_stop_with_their_reason);
async fn expired_links_are_replaced_and_refusals_stop_with_their_reason() {
    let t = TestApp::spawn_with(|c| c.link_ttl = Duration::from_secs(1)).await;
    let access = t.approved_researcher("slow@uni.example.edu").await;
    let dir = t.dir.path().join("weights");
    let mut opts = options(&access, &dir);
    opts.jobs = 1;
    opts.limit_rate = Some(256 * 1024);
    opts.include = vec!["shard-1.*".into()];
    let summary = client::download(opts).await.unwrap();
    assert_eq!(summary.files, 1);
    assert_eq!(
        sha256_hex(&std::fs::read(dir.join("r1/shard-1.bin")).unwrap()),
        sha256_hex(&t.files[1].1)
    );
    let expired = t
        .audit_events()
        .await
        .iter()
        .filter(|e| e.reason.as_deref() == Some("link_expired"))
        .count();
    assert!(
        expired >= 1,
        "the slow download outlived its links and renewed them"
    );

    let grant_id: String = sqlx::query_scalar("SELECT id FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    weightgate::domain::grants::revoke(&t.app, &grant_id, "Leaked", "test", Default::default())
        .await
        .unwrap();
    let err = client::download(options(&access, &t.dir.path().join("other")))
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("revoked") && message.contains("grant_revoked") && message.contains("request id"),
        "{message}"
    );

    let err = client::download(options(&format!("{}x", access), &t.dir.path().join("x")))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("not_found"), "{err:#}");
}

both!(a_killed_download_resumes_without_fetching_verified_chunks_again);
async fn a_killed_download_resumes_without_fetching_verified_chunks_again() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("resume@uni.example.edu").await;
    let dir = t.dir.path().join("weights");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args([
            "download",
            &access,
            "--dir",
            dir.to_str().unwrap(),
            "--jobs",
            "1",
            "--limit-rate",
            "512KiB",
        ])
        .args(["--include", "shard-1.bin"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let verified_before = wait_for_verified(&dir, "shard-1.bin", 4).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        (4..17).contains(&verified_before),
        "killed midway ({verified_before} chunks done)"
    );
    assert!(!dir.join("r1/shard-1.bin").exists());

    let mut opts = options(&access, &dir);
    opts.include = vec!["shard-1.bin".into()];
    let summary = client::download(opts).await.unwrap();
    assert!(
        summary.chunks_fetched as usize <= 17 - verified_before,
        "{summary:?}"
    );
    let ranges = fetched_ranges(&t, "shard-1.bin").await;
    let mut distinct = ranges.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 17);
    assert!(
        ranges.len() <= 18,
        "at most the chunk in flight at the kill came twice: {ranges:?}"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(dir.join("r1/shard-1.bin")).unwrap()),
        sha256_hex(&t.files[1].1)
    );
}

both!(a_quota_is_spent_by_whole_files_not_by_resumes);
async fn a_quota_is_spent_by_whole_files_not_by_resumes() {
    let t = TestApp::spawn().await;
    let slug = MODEL.parse().unwrap();
    weightgate::domain::models::set_quota(&t.app, &slug, None, Some(2), "test")
        .await
        .unwrap();
    let access = t.approved_researcher("quota@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let url = |name: &str| links.iter().find(|(n, _)| n == name).unwrap().1.clone();

    // shard-1 in three pieces, one of them cut short and resumed: one file.
    let first = url("shard-1.bin");
    let mut response = t
        .client
        .get(&first)
        .header("range", "bytes=0-99999")
        .send()
        .await
        .unwrap();
    let _ = response.chunk().await.unwrap();
    drop(response);
    t.wait_for_events("file.delivered", 1).await;
    for range in ["bytes=0-599999", "bytes=600000-"] {
        let r = t.client.get(&first).header("range", range).send().await.unwrap();
        assert_eq!(r.status(), 206);
        r.bytes().await.unwrap();
    }
    t.wait_for_events("file.delivered", 3).await;
    let r = t.client.get(url("shard-2.bin")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    t.wait_for_events("file.delivered", 4).await;

    let refused = t.client.get(url("shard-0.bin")).send().await.unwrap();
    assert_eq!(refused.status(), 403, "two whole files spent the quota");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "quota_spent");
    let again = t.client.get(url("shard-1.bin")).send().await.unwrap();
    assert_eq!(again.status(), 200, "a file already held can be fetched again");
}

both!(a_publish_that_fails_midway_shows_nothing_and_finishes_when_run_again);
async fn a_publish_that_fails_midway_shows_nothing_and_finishes_when_run_again() {
    let t = TestApp::spawn().await;
    let dir = t.dir.path().join("next");
    std::fs::create_dir_all(&dir).unwrap();
    let contents: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 10; 200_000]).collect();
    for (i, c) in contents.iter().enumerate() {
        std::fs::write(dir.join(format!("part-{i}.bin")), c).unwrap();
    }
    // The object store cannot take the second file: its directory is a file.
    let blocked = t
        .app
        .config
        .data_dir
        .join("objects/sha256")
        .join(&sha256_hex(&contents[1])[..2]);
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, b"in the way").unwrap();

    let slug = MODEL.parse().unwrap();
    let quiet = weightgate::domain::models::PublishProgress::quiet();
    let publish =
        || weightgate::domain::models::publish(&t.app, &slug, &dir, Some("r2"), CHUNK_SIZE, "test", &quiet);
    assert!(publish().await.is_err());
    let visible: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM releases WHERE name = 'r2'")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    assert_eq!(visible, 0, "a failed publish leaves no release");

    std::fs::remove_file(&blocked).unwrap();
    let report = publish().await.unwrap();
    assert!(
        !report.files[0].uploaded,
        "the file stored before the failure is not stored again"
    );
    assert!(report.files[1].uploaded && report.files[2].uploaded);
    let access = t.approved_researcher("later@uni.example.edu").await;
    let names: Vec<String> = t
        .download_links(&access)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"part-1.bin".to_owned()));
}

both!(a_busy_portal_is_waited_for_as_long_as_it_asks);
async fn a_busy_portal_is_waited_for_as_long_as_it_asks() {
    // One manifest per two seconds for this grant.
    let t = TestApp::spawn_with(|c| c.limit_links_per_grant = "1/2s".parse().unwrap()).await;
    let access = t.approved_researcher("patient@uni.example.edu").await;
    let manifest = manifest_of(&access);
    assert_eq!(t.client.get(&manifest).send().await.unwrap().status(), 200);
    let refused = t.client.get(&manifest).send().await.unwrap();
    assert_eq!(refused.status(), 429, "the allowance is spent");
    let asked: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&asked), "Retry-After {asked}");

    // The client's first request is refused the same way; it waits and goes on.
    let dir = t.dir.path().join("weights");
    let started = std::time::Instant::now();
    let summary = client::download(options(&manifest, &dir)).await.unwrap();
    assert_eq!(summary.files, 3);
    assert_files_match(&t, &dir);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it waited: {:?}",
        started.elapsed()
    );
}

both!(a_verified_chunk_changed_on_disk_between_runs_is_caught_before_the_file_is_finished);
async fn a_verified_chunk_changed_on_disk_between_runs_is_caught_before_the_file_is_finished() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("carried@uni.example.edu").await;
    let dir = t.dir.path().join("weights");
    // What a run killed after verifying every chunk of shard-1 leaves: the
    // partial file and a state file that vouches for all its chunks. Then
    // one byte of chunk 2 changes on disk.
    let (name, bytes) = &t.files[1];
    let chunks = bytes.len().div_ceil(CHUNK_SIZE as usize);
    let mut damaged = bytes.clone();
    damaged[2 * CHUNK_SIZE as usize + 7] ^= 0x01;
    std::fs::create_dir_all(dir.join("r1")).unwrap();
    std::fs::write(dir.join("r1").join(format!("{name}.part")), &damaged).unwrap();
    let state = serde_json::json!({
        "sha256": sha256_hex(bytes),
        "chunk_size": CHUNK_SIZE,
        "verified": vec![true; chunks],
    });
    std::fs::write(
        dir.join("r1").join(format!(".{name}.weightgate")),
        state.to_string(),
    )
    .unwrap();

    let mut opts = options(&access, &dir);
    opts.include = vec![name.clone()];
    let err = client::download(opts.clone()).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "chunk 2 of {name} changed on disk since an earlier run verified it"
        )),
        "{err}"
    );
    assert!(
        !dir.join("r1").join(name).exists(),
        "nothing takes the file's name"
    );

    // Run again: the file is checked chunk by chunk, and only the changed
    // chunk is fetched.
    let summary = client::download(opts).await.unwrap();
    assert_eq!(summary.chunks_fetched, 1, "{summary:?}");
    assert_eq!(
        sha256_hex(&std::fs::read(dir.join("r1").join(name)).unwrap()),
        sha256_hex(bytes)
    );
}

both!(a_stray_partial_file_is_checked_not_trusted);
async fn a_stray_partial_file_is_checked_not_trusted() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("stray@uni.example.edu").await;
    let dir = t.dir.path().join("weights");
    // A partial file of the right name but not from the portal, with no
    // state file to vouch for it: each chunk is hashed, none matches, all
    // are fetched.
    let (name, bytes) = &t.files[0];
    std::fs::create_dir_all(dir.join("r1")).unwrap();
    std::fs::write(
        dir.join("r1").join(format!("{name}.part")),
        vec![0x5a; bytes.len()],
    )
    .unwrap();
    let summary = client::download(options(&manifest_of(&access), &dir))
        .await
        .unwrap();
    assert_eq!(summary.files, 3);
    assert_eq!(summary.already_complete, 0);
    assert_files_match(&t, &dir);
    assert!(!dir.join("r1").join(format!("{name}.part")).exists());
}

both!(a_grant_revoked_mid_download_stops_the_client_with_the_reason_and_keeps_what_it_verified);
async fn a_grant_revoked_mid_download_stops_the_client_with_the_reason_and_keeps_what_it_verified() {
    let t = TestApp::spawn().await;
    let access = t.approved_researcher("midway@uni.example.edu").await;
    let dir = t.dir.path().join("weights");
    let mut opts = options(&access, &dir);
    opts.jobs = 1;
    opts.limit_rate = Some(512 * 1024);
    opts.include = vec!["shard-1.bin".into()];
    let download = tokio::spawn(client::download(opts));
    // Once a few chunks are in, the grant is revoked.
    assert!(
        wait_for_verified(&dir, "shard-1.bin", 2).await >= 2,
        "the download got going"
    );
    let grant_id: String = sqlx::query_scalar("SELECT id FROM grants")
        .fetch_one(t.app.db.pool())
        .await
        .unwrap();
    weightgate::domain::grants::revoke(&t.app, &grant_id, "Leaked", "test", Default::default())
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), download)
        .await
        .expect("the client stops soon after the revocation")
        .unwrap()
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("grant_revoked") && message.contains("request id"),
        "{message}"
    );
    assert!(
        !dir.join("r1/shard-1.bin").exists(),
        "no incomplete file under the final name"
    );
    assert!(
        dir.join("r1/shard-1.bin.part").exists(),
        "what was verified is kept"
    );
}

both!(a_spent_quota_and_an_expired_grant_stop_the_client_with_their_reasons);
async fn a_spent_quota_and_an_expired_grant_stop_the_client_with_their_reasons() {
    let t = TestApp::spawn().await;
    let slug = MODEL.parse().unwrap();
    weightgate::domain::models::set_quota(&t.app, &slug, None, Some(1), "test")
        .await
        .unwrap();
    let access = t.approved_researcher("limits@uni.example.edu").await;
    let dir = t.dir.path().join("weights");
    let mut one = options(&access, &dir);
    one.include = vec!["shard-0.bin".into()];
    client::download(one).await.unwrap();
    let err = client::download(options(&access, &dir)).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("quota_spent") && message.contains("request id"),
        "{message}"
    );

    sqlx::query("UPDATE grants SET expires_at = 0")
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let err = client::download(options(&access, &t.dir.path().join("again")))
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("expired"), "{message}");
}
