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
    // Nothing of the client's own bookkeeping is left in the tree.
    let leftovers: Vec<PathBuf> = walk(&all.join("tree"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".part") || name.ends_with(".weightgate")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

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
