//! Releases as labs publish them: a model directory with folders, published
//! as it is, downloaded whole with plain HTTP plus `sha256sum -c` and with the
//! client, and every layout the portal refuses, refused with the path named.

use std::path::{Path, PathBuf};

use crate::{cli::weightgate, helpers::*};

/// A model directory laid out as the model hubs publish them: safetensors
/// shards at the top, the original checkpoint in `original/`, a pooling
/// config whose name repeats one at the top, and a Hugging Face snapshot's
/// hidden `.git/`, `.cache/` and `.gitattributes`.
fn model_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = [
        ("config.json", b"{\"hidden_size\": 64}\n".to_vec()),
        ("model-00001-of-00002.safetensors", vec![1u8; 150_000]),
        ("model-00002-of-00002.safetensors", vec![2u8; 90_000]),
        ("original/consolidated.00.pth", vec![3u8; 200_000]),
        ("original/params.json", b"{\"dim\": 64}\n".to_vec()),
        (
            "1_Pooling/config.json",
            b"{\"pooling_mode_mean_tokens\": true}\n".to_vec(),
        ),
    ]
    .into_iter()
    .map(|(p, b)| (p.to_owned(), b))
    .collect();
    for (path, bytes) in &files {
        write(root, path, bytes);
    }
    write(root, ".git/HEAD", b"ref: refs/heads/main\n");
    write(root, ".git/objects/ab/cdef", b"not a weight");
    write(root, ".gitattributes", b"*.safetensors filter=lfs\n");
    write(root, ".cache/huggingface/download/config.json.lock", b"");
    files
}

/// Fetches each `(path, link)` into `dir/path` with aria2c (four
/// connections per file, four files at once); `false`, with a loud notice,
/// when aria2c is not installed (a failure under CI, whose `.ci/run`
/// installs it).
pub(crate) fn aria2c_fetch(dir: &Path, links: &[(String, String)]) -> bool {
    let list: String = links
        .iter()
        .map(|(path, href)| format!("{href}\n  out={path}\n"))
        .collect();
    let input = dir.with_extension("aria2");
    std::fs::write(&input, list).unwrap();
    let fetched = std::process::Command::new("aria2c")
        .args([
            "-x4",
            "-s4",
            "-j4",
            "--min-split-size=1M",
            "--console-log-level=warn",
        ])
        .args(["--summary-interval=0", "--auto-file-renaming=false"])
        .arg(format!("--dir={}", dir.display()))
        .arg(format!("--input-file={}", input.display()))
        .output();
    match fetched {
        Ok(out) => {
            assert!(
                out.status.success(),
                "aria2c: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have aria2c installed: {e}"
            );
            eprintln!("*** aria2c not installed: the tree was NOT fetched with aria2c ***");
            false
        }
    }
}

fn write(root: &Path, path: &str, bytes: &[u8]) {
    let path = root.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `weightgate model publish` of `dir` as release `release`, with `more`
/// options; (succeeded, stdout, stderr).
fn publish(t: &TestApp, dir: &Path, release: &str, more: &[&str]) -> (bool, String, String) {
    let mut args = vec![
        "model",
        "publish",
        MODEL,
        dir.to_str().unwrap(),
        "--release",
        release,
    ];
    args.extend_from_slice(more);
    weightgate(t, &args, None)
}

both!(a_model_tree_publishes_as_it_is_and_downloads_whole_by_http_and_by_the_client);
async fn a_model_tree_publishes_as_it_is_and_downloads_whole_by_http_and_by_the_client() {
    let t = TestApp::spawn().await;
    let source = t.dir.path().join("snapshot");
    let files = model_tree(&source);
    let (ok, out, err) = publish(&t, &source, "tree", &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("left out: .cache/, .git/, .gitattributes"),
        "the snapshot's hidden entries are left out, and said so:\n{out}"
    );
    assert!(
        out.contains("published release tree of tiny-model with 6 files"),
        "{out}"
    );
    assert!(out.contains("original/consolidated.00.pth"), "{out}");

    // The access page groups the files by folder; each link ends in the
    // file's path, and the file comes with its own name for a browser.
    let access = t.approved_researcher("tree@uni.example.edu").await;
    let (_, page) = t.get_html(&client(), &access).await;
    assert!(
        page.contains("<code>original/</code>") && page.contains("<code>1_Pooling/</code>"),
        "{page}"
    );
    let links: Vec<(String, String)> = t
        .download_links(&access)
        .await
        .into_iter()
        .filter(|(_, href)| href.contains("/tree/") || !href.contains("shard-"))
        .filter(|(name, _)| files.iter().any(|(p, _)| p == name))
        .collect();
    assert_eq!(links.len(), files.len(), "{links:?}");

    // Plain HTTP into the tree the paths describe, then the ecosystem's own
    // check from the release's top folder.
    let by_curl = t.dir.path().join("by-http");
    for (path, href) in &links {
        let response = client().get(href).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let disposition = response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_owned();
        let base = path.rsplit('/').next().unwrap();
        assert_eq!(disposition, format!("attachment; filename=\"{base}\""));
        write(&by_curl, path, &response.bytes().await.unwrap());
    }
    let sums_url = format!("{}/releases/tree/SHA256SUMS", access.trim_end_matches('/'));
    let (_, sums) = t.get_html(&client(), &sums_url).await;
    assert!(sums.contains("  original/consolidated.00.pth\n"), "{sums}");
    assert!(!sums.contains(".git"), "{sums}");
    std::fs::write(by_curl.join("SHA256SUMS"), &sums).unwrap();
    sha256sum_check(&by_curl, &[]);

    // The OpenSSF model signature, linked from the access page, checked by
    // the model-signing package's own verifier with the key the portal
    // publishes (and shows on the model page).
    assert!(page.contains("/releases/tree/model.sig"), "{page}");
    let (status, key) = t
        .get_html(&client(), "/.well-known/weightgate/model-signing.pub")
        .await;
    assert_eq!(status, 200);
    assert!(key.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{key}");
    let (_, model_page) = t.get_html(&client(), "/models/tiny-model").await;
    assert!(
        model_page.contains(key.lines().nth(1).unwrap()),
        "the model page shows the key"
    );
    let key_file = t.dir.path().join("model-signing.pub");
    std::fs::write(&key_file, &key).unwrap();
    let sig_url = format!("{}/releases/tree/model.sig", access.trim_end_matches('/'));
    let (status, sig) = t.get_html(&client(), &sig_url).await;
    assert_eq!(status, 200, "{sig}");
    let sig_file = by_curl.join("model.sig");
    std::fs::write(&sig_file, &sig).unwrap();
    let verify = |dir: &Path| model_signing_verify(dir, &dir.join("model.sig"), &key_file);
    if let Some((ok, out)) = verify(&by_curl) {
        assert!(ok, "model_signing verify of the tree fetched by HTTP:\n{out}");
        // It refuses the tree after any file is changed, added or removed.
        let config = by_curl.join("config.json");
        let original = std::fs::read(&config).unwrap();
        std::fs::write(&config, b"{\"hidden_size\": 65}\n").unwrap();
        let (ok, out) = verify(&by_curl).unwrap();
        assert!(
            !ok && out.contains("Signature mismatch"),
            "a changed file:\n{out}"
        );
        std::fs::write(&config, &original).unwrap();
        write(&by_curl, "original/extra.bin", b"slipped in");
        let (ok, out) = verify(&by_curl).unwrap();
        assert!(!ok, "an added file:\n{out}");
        std::fs::remove_file(by_curl.join("original/extra.bin")).unwrap();
        let params = by_curl.join("original/params.json");
        let kept = std::fs::read(&params).unwrap();
        std::fs::remove_file(&params).unwrap();
        let (ok, out) = verify(&by_curl).unwrap();
        assert!(!ok, "a removed file:\n{out}");
        std::fs::write(&params, kept).unwrap();
        let (ok, out) = verify(&by_curl).unwrap();
        assert!(ok, "whole again:\n{out}");
    }

    // aria2c, several connections per file, into the same tree: the
    // ecosystem's checks accept what it fetched too.
    let by_aria2 = t.dir.path().join("by-aria2c");
    if aria2c_fetch(&by_aria2, &links) {
        std::fs::write(by_aria2.join("SHA256SUMS"), &sums).unwrap();
        sha256sum_check(&by_aria2, &[]);
        std::fs::write(by_aria2.join("model.sig"), &sig).unwrap();
        if let Some((ok, out)) = verify(&by_aria2) {
            assert!(ok, "model_signing verify of the tree aria2c fetched:\n{out}");
        }
    }

    // The client recreates the tree; --include matches paths.
    let some = t.dir.path().join("some");
    let out = download_with_client(&access, &some, &["original/*"]);
    assert!(out.contains("2 files verified in"), "{out}");
    assert!(some.join("tree/original/consolidated.00.pth").is_file());
    assert!(
        !some.join("tree/config.json").exists(),
        "only what --include names"
    );
    sha256sum_check(&some.join("tree"), &["--ignore-missing"]);

    let all = t.dir.path().join("all");
    let out = download_with_client(&access, &all, &[]);
    // Both releases of the model: r1's three files and the tree's six.
    assert!(
        out.contains("9 files verified in") && out.contains(&all.join("tree").display().to_string()),
        "{out}"
    );
    for (path, bytes) in &files {
        let got = std::fs::read(all.join("tree").join(path)).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(bytes), "{path}");
    }
    sha256sum_check(&all.join("tree"), &[]);
    // The client leaves model.sig at the top of each release it fetched,
    // and the tree verifies as it lies, with the client's other files.
    assert_eq!(std::fs::read_to_string(all.join("tree/model.sig")).unwrap(), sig);
    if let Some((ok, out)) = verify(&all.join("tree")) {
        assert!(ok, "model_signing verify of the client's tree:\n{out}");
    }
    // Nothing of the client's own bookkeeping is left in the tree.
    let leftovers: Vec<PathBuf> = walk(&all.join("tree"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".part") || name.ends_with(".weightgate")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A researcher who pins the lab's key (as the model page shows it)
    // gets the files only from a portal that signs with that key.
    let pinned = |key: &Path, dir: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_weightgate"))
            .args(["download", &access, "--include", "config.json", "--dir"])
            .arg(t.dir.path().join(dir))
            .arg("--model-signing-key")
            .arg(key)
            .output()
            .unwrap()
    };
    let out = pinned(&key_file, "pinned");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let other_key = t.dir.path().join("other.pub");
    std::fs::write(&other_key, key.replacen("MFkw", "MFkx", 1)).unwrap();
    let out = pinned(&other_key, "mispinned");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not the one given with --model-signing-key"),
        "{err}"
    );
    assert!(
        !t.dir.path().join("mispinned/tree/config.json").exists(),
        "refused before any file"
    );

    // A model.sig that vouches for other files (here another release's,
    // put in place by whoever can write to the database) is refused.
    sqlx::query("UPDATE releases SET model_sig = (SELECT model_sig FROM releases WHERE name = 'r1') WHERE name = 'tree'")
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weightgate"))
        .args(["download", &access, "--dir"])
        .arg(t.dir.path().join("swapped"))
        .args(["--include", "config.json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("the model.sig of release tree does not list the files of its signed manifest"),
        "{err}"
    );

    // A release published before model signatures (no model.sig stored)
    // gets the one publication would have made, from its manifest...
    sqlx::query("UPDATE releases SET model_sig = NULL WHERE name = 'tree'")
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let (status, lazily) = t.get_html(&client(), &sig_url).await;
    assert_eq!(status, 200);
    assert_eq!(lazily, sig, "deterministic: the same signature as at publication");
    // ...but only from a manifest whose minisign signature holds: the
    // portal signs nothing on the database's word alone.
    sqlx::query("UPDATE releases SET manifest = REPLACE(manifest, 'consolidated.00.pth', 'consolidated.01.pth') WHERE name = 'tree'")
        .execute(t.app.db.pool())
        .await
        .unwrap();
    let (status, body) = t.get_html(&client(), &sig_url).await;
    assert_eq!(status, 500, "{body}");
    assert!(!body.contains("dsseEnvelope"), "{body}");

    // The log names each file by its path.
    let subjects: Vec<String> = t
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e.action == "file.delivered")
        .filter_map(|e| e.subject)
        .collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.ends_with(" tiny-model/tree/original/consolidated.00.pth")),
        "{subjects:?}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(folder).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

both!(a_tree_the_portal_cannot_publish_as_it_is_is_refused_with_the_path_named);
async fn a_tree_the_portal_cannot_publish_as_it_is_is_refused_with_the_path_named() {
    let t = TestApp::spawn().await;
    let base = t.dir.path().join("trees");
    let outside = t.dir.path().join("outside.bin");
    std::fs::write(&outside, b"not part of the model").unwrap();
    let fresh = |name: &str| {
        let dir = base.join(name);
        write(&dir, "config.json", b"{}");
        write(&dir, "original/params.json", b"{}");
        dir
    };
    let releases_before = releases(&t).await;

    // A link to a file inside the tree: refused unless links are followed.
    let linked = fresh("linked");
    std::os::unix::fs::symlink("original/params.json", linked.join("params.json")).unwrap();
    let (ok, _, err) = publish(&t, &linked, "linked", &[]);
    assert!(!ok);
    assert!(
        err.contains("params.json is a symbolic link") && err.contains("--follow-symlinks"),
        "{err}"
    );
    let (ok, out, err) = publish(&t, &linked, "linked", &["--follow-symlinks"]);
    assert!(ok, "{err}");
    assert!(out.contains("with 3 files"), "{out}");

    // Never out of the tree, nor round in a loop.
    let escaping = fresh("escaping");
    std::os::unix::fs::symlink(&outside, escaping.join("weights.bin")).unwrap();
    let (ok, _, err) = publish(&t, &escaping, "escaping", &["--follow-symlinks"]);
    assert!(!ok);
    assert!(
        err.contains("weights.bin points to") && err.contains("outside"),
        "{err}"
    );
    // What is left out stays out under another name.
    let hiding = fresh("hiding");
    write(
        &hiding,
        ".git/config",
        b"[remote] url = https://token@example.org/x",
    );
    std::os::unix::fs::symlink(".git/config", hiding.join("settings.json")).unwrap();
    let (ok, _, err) = publish(&t, &hiding, "hiding", &["--follow-symlinks"]);
    assert!(!ok);
    assert!(
        err.contains("settings.json points to .git/config, which the publish leaves out"),
        "{err}"
    );
    let looping = fresh("looping");
    std::os::unix::fs::symlink("..", looping.join("original/up")).unwrap();
    let (ok, _, err) = publish(&t, &looping, "looping", &["--follow-symlinks"]);
    assert!(!ok);
    assert!(err.contains("original/up leads back"), "{err}");

    // Names that differ only by case would overwrite each other on a
    // researcher's Mac; names a URL or SHA256SUMS cannot carry as they are.
    let cased = fresh("cased");
    write(&cased, "Original/params.json", b"{}");
    let (ok, _, err) = publish(&t, &cased, "cased", &[]);
    assert!(!ok);
    assert!(err.contains("differ only by case"), "{err}");
    let spaced = fresh("spaced");
    write(&spaced, "original/my weights.bin", b"w");
    let (ok, _, err) = publish(&t, &spaced, "spaced", &[]);
    assert!(!ok);
    assert!(
        err.contains("\"original/my weights.bin\" is not a usable path"),
        "{err}"
    );
    let reserved = fresh("reserved");
    write(&reserved, "SHA256SUMS", b"mine");
    let (ok, _, err) = publish(&t, &reserved, "reserved", &[]);
    assert!(!ok);
    assert!(
        err.contains("\"SHA256SUMS\" is a name the portal gives its own file"),
        "{err}"
    );
    let raw = fresh("raw");
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"weights-\xff.bin");
        std::fs::write(raw.join("original").join(name), b"w").unwrap();
    }
    let (ok, _, err) = publish(&t, &raw, "raw", &[]);
    assert!(!ok);
    assert!(err.contains("has a name that is not UTF-8"), "{err}");

    // Excluded paths are left out and said so.
    let excluding = fresh("excluding");
    write(&excluding, "onnx/model.onnx", b"onnx");
    write(&excluding, "onnx/model.onnx_data", b"onnx");
    // Written as the list of what was left out writes a folder.
    let (ok, out, err) = publish(&t, &excluding, "excluding", &["--exclude", "onnx/"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("left out: onnx/") && out.contains("with 2 files"),
        "{out}"
    );

    // Only the two that were accepted became releases.
    let mut expected = releases_before;
    expected.extend(["excluding".to_owned(), "linked".to_owned()]);
    expected.sort();
    assert_eq!(releases(&t).await, expected);
}

async fn releases(t: &TestApp) -> Vec<String> {
    let mut names: Vec<String> = sqlx::query_scalar("SELECT name FROM releases")
        .fetch_all(t.app.db.pool())
        .await
        .unwrap();
    names.sort();
    names
}

both!(a_releases_model_card_shows_on_the_model_page_and_sums_it_up_in_the_catalogue);
/// The card a lab ships as README.md is rendered on the model page with its
/// licence, the releases and the size, with nothing in it that could run;
/// the catalogue shows its first paragraph and, to a researcher holding
/// access, says so.
async fn a_releases_model_card_shows_on_the_model_page_and_sums_it_up_in_the_catalogue() {
    let t = TestApp::spawn().await;
    let (_, before) = t.get_html(&client(), "/models/tiny-model").await;
    assert!(!before.contains("Model card"), "no card before one is published");

    let source = t.dir.path().join("carded");
    write(&source, "config.json", b"{}");
    write(
        &source,
        "README.md",
        b"---\nlicense: llama3.1\npipeline_tag: text-generation\n---\n\n# Tiny Llama\n\n\
          A tiny model for\ntesting <b>gated</b> downloads.\n\n\
          <script>document.title='owned'</script>\n\n\
          [card](javascript:alert(1)) and [paper](https://arxiv.org/abs/1234.5678)\n\n\
          ![pixel](https://tracker.example/p.png)\n",
    );
    let (ok, out, err) = publish(&t, &source, "carded", &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("with 2 files"),
        "the card is a file of the release too: {out}"
    );

    let (_, page) = t.get_html(&client(), "/models/tiny-model").await;
    assert!(page.contains("<h1>Tiny Llama</h1>"), "{page}");
    assert!(page.contains("licence <strong>llama3.1</strong>"), "{page}");
    assert!(
        page.contains("<strong>carded</strong>") && page.contains("<strong>r1</strong>"),
        "{page}"
    );
    assert!(page.contains("5 files"), "{page}");
    assert!(
        page.contains("href=\"https://arxiv.org/abs/1234.5678\""),
        "{page}"
    );
    for bad in [
        "<script>document",
        "javascript:",
        "tracker.example",
        "pipeline_tag",
    ] {
        assert!(!page.contains(bad), "{bad} on the model page");
    }

    let (_, catalogue) = t.get_html(&client(), "/").await;
    assert!(
        catalogue.contains("A tiny model for testing gated downloads."),
        "{catalogue}"
    );
    assert!(!catalogue.contains("you have access"), "{catalogue}");

    // A researcher with access sees it in the catalogue.
    let email = "carded@uni.example.edu";
    t.approved_researcher(email).await;
    let browser = client();
    crate::researcher::sign_in_researcher(&t, &browser, email, &mut Default::default()).await;
    let (_, catalogue) = t.get_html(&browser, "/").await;
    assert!(catalogue.contains("you have access"), "{catalogue}");

    // A card given apart from the tree, and one too large to show.
    let card = t.dir.path().join("card.md");
    std::fs::write(&card, "# Elsewhere\n\nA card kept beside the weights.\n").unwrap();
    let plain = t.dir.path().join("plain");
    write(&plain, "weights.bin", b"w");
    let (ok, _, err) = publish(&t, &plain, "plain", &["--card", card.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (_, page) = t.get_html(&client(), "/models/tiny-model").await;
    assert!(
        page.contains("<h1>Elsewhere</h1>"),
        "the newest release's card shows"
    );
    std::fs::write(&card, "x".repeat(300 * 1024)).unwrap();
    let (ok, _, err) = publish(&t, &plain, "huge", &["--card", card.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("at most"), "{err}");
}

/// A file over 4 GiB (sparse where it is written, so it costs little disk
/// before it is published): published, answered to HEAD and to ranges past
/// the 32-bit line with the right bytes and headers, and downloaded whole by
/// the client, which checks every chunk, and then by `sha256sum -c`. SQLite
/// only: nothing in it touches the database beyond what every scenario does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_4_gib_is_published_served_past_4_gib_and_downloaded_whole() {
    use std::os::unix::fs::FileExt;
    const GIB4: u64 = 1 << 32;
    let t = TestApp::spawn().await;
    let source = t.dir.path().join("big");
    write(&source, "config.json", b"{}");
    write(&source, "original/params.json", b"{\"dim\": 4096}\n");
    let huge = source.join("original/huge.bin");
    let size = GIB4 + 5 * 1024 * 1024 + 17;
    let marker = b"past the 32-bit line";
    {
        let f = std::fs::File::create(&huge).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(marker, GIB4 + 100).unwrap();
        f.write_all_at(b"end", size - 3).unwrap();
    }
    let (ok, out, err) = publish(&t, &source, "big", &[]);
    assert!(ok, "{err}");
    assert!(out.contains("with 3 files"), "{out}");

    let access = t.approved_researcher("big@uni.example.edu").await;
    let (_, href) = t
        .download_links(&access)
        .await
        .into_iter()
        .find(|(path, _)| path == "original/huge.bin")
        .expect("a link to the big file");
    let head = client().head(&href).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"].to_str().unwrap(),
        size.to_string()
    );
    let range = |spec: String| {
        let href = href.clone();
        async move {
            let r = client().get(&href).header("range", spec).send().await.unwrap();
            let status = r.status();
            let content_range = r
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (status, content_range, r.bytes().await.unwrap())
        }
    };
    let start = GIB4 + 100;
    let end = start + marker.len() as u64 - 1;
    let (status, content_range, body) = range(format!("bytes={start}-{end}")).await;
    assert_eq!(status, 206);
    assert_eq!(content_range, format!("bytes {start}-{end}/{size}"));
    assert_eq!(&body[..], marker);
    // Across the line, and from the end.
    let (status, _, body) = range(format!("bytes={}-{}", GIB4 - 2, GIB4 + 101)).await;
    assert_eq!(status, 206);
    assert_eq!(body.len(), 104);
    assert!(body[..102].iter().all(|b| *b == 0));
    assert_eq!(&body[102..], b"pa");
    let (status, content_range, body) = range("bytes=-3".to_owned()).await;
    assert_eq!(status, 206);
    assert_eq!(content_range, format!("bytes {}-{}/{size}", size - 3, size - 1));
    assert_eq!(&body[..], b"end");

    // The client fetches it in parallel chunks, each checked against the
    // signed manifest; then coreutils checks the whole file.
    let dir = t.dir.path().join("got");
    let out = download_with_client(&access, &dir, &["original/*"]);
    assert!(out.contains("2 files verified in"), "{out}");
    let got = dir.join("big/original/huge.bin");
    assert_eq!(std::fs::metadata(&got).unwrap().len(), size);
    let mut tail = [0u8; 20];
    std::fs::File::open(&got)
        .unwrap()
        .read_exact_at(&mut tail, GIB4 + 100)
        .unwrap();
    assert_eq!(&tail, marker);
    sha256sum_check(&dir.join("big"), &["--ignore-missing"]);
}

/// A release of hundreds of files: the access page folds each folder (with
/// its count and size) and still links every file, the client's manifest
/// lists them all, and the client fetches them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_of_hundreds_of_files_folds_its_folders_and_downloads_whole() {
    let t = TestApp::spawn().await;
    let source = t.dir.path().join("many");
    write(&source, "config.json", b"{}");
    write(&source, "tokenizer.json", b"{\"v\": 1}");
    // A flat layout too: sixty shards at the top of the release.
    for i in 0..60 {
        write(&source, &format!("top-{i:02}.bin"), format!("top {i}").as_bytes());
    }
    for folder in ["shards", "onnx", "original"] {
        for i in 0..100 {
            write(
                &source,
                &format!("{folder}/part-{i:03}.bin"),
                format!("{folder} {i}").as_bytes(),
            );
        }
    }
    let (ok, out, err) = publish(&t, &source, "many", &[]);
    assert!(ok, "{err}");
    assert!(out.contains("with 362 files"), "{out}");

    let access = t.approved_researcher("many@uni.example.edu").await;
    let (_, page) = t.get_html(&client(), &access).await;
    let release = page.split("<h2>Release many</h2>").nth(1).unwrap();
    for folder in ["onnx/", "original/", "shards/"] {
        assert!(
            release.contains(&format!(
                "<details class=\"folder\">\n<summary><code>{folder}</code> <span class=\"muted\">100 files,"
            )),
            "{folder} is folded, with its count: {release}"
        );
    }
    // The top of the release folds too when it holds that many files.
    assert!(
        release.contains(
            "<details class=\"folder\">\n<summary>Top of the release <span class=\"muted\">62 files,"
        ),
        "the top is folded, with its count: {release}"
    );
    // Folded, but every file is still linked: r1's three and these 362.
    let links = t.download_links(&access).await;
    assert_eq!(links.len(), 365);
    assert_eq!(
        links
            .iter()
            .filter(|(p, _)| p.starts_with("shards/part-"))
            .count(),
        100
    );
    // The small release r1 is not folded.
    let (_, r1) = page.split_once("<h2>Release r1</h2>").unwrap();
    assert!(!r1.split("<h2>").next().unwrap().contains("<details"), "{r1}");

    let dir = t.dir.path().join("got");
    let out = download_with_client(&access, &dir, &[]);
    assert!(out.contains("365 files verified in"), "{out}");
    sha256sum_check(&dir.join("many"), &[]);
}
