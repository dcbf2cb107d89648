//! Models and their releases: creating a model, and publishing a directory of
//! weight files as a release that becomes visible only once every file is stored.

use std::{
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use crate::{
    app::App,
    audit::{self, Action, Event},
    crypto::manifests::{MANIFEST_FORMAT, Manifest, ManifestFile},
    db::{self, models::Model},
    domain::error::Result,
    storage::{Changed, ChunkHasher, Expected, Sent, key_for_sha256},
    types::{Slug, is_safe_file_name, new_id, now_ms},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ModelError {
    #[error("a model with slug {0:?} already exists")]
    Exists(String),
    #[error("no model with slug {0:?}")]
    NotFound(String),
    #[error("release {release:?} of {slug:?} already exists")]
    ReleaseExists { slug: String, release: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<ModelError> for crate::domain::Error {
    fn from(err: ModelError) -> Self {
        match err {
            ModelError::NotFound(_) => Self::not_found(err.to_string()),
            ModelError::Exists(_) | ModelError::ReleaseExists { .. } | ModelError::Invalid(_) => {
                Self::invalid(err.to_string())
            }
        }
    }
}

/// Days a denied researcher waits before applying again, unless the model says otherwise.
pub(crate) const DEFAULT_REAPPLY_AFTER_DAYS: i64 = 30;
/// The longest wait a model may impose before a new application.
pub(crate) const MAX_REAPPLY_AFTER_DAYS: i64 = 3650;

pub async fn create(app: &App, slug: &Slug, title: &str, terms: &str, actor: &str) -> Result<Model> {
    let title = title.trim();
    if title.is_empty() || title.len() > 200 {
        return Err(ModelError::Invalid("the title must have 1 to 200 characters".into()).into());
    }
    // The title goes into e-mail subjects: one line, no control characters.
    if title.chars().any(char::is_control) {
        return Err(
            ModelError::Invalid("the title must be one line without control characters".into()).into(),
        );
    }
    if terms.trim().is_empty() {
        return Err(ModelError::Invalid("the terms must not be empty".into()).into());
    }
    let model = Model {
        id: new_id(),
        slug: slug.to_string(),
        title: title.to_owned(),
        terms: terms.to_owned(),
        terms_version: 1,
        created_at: now_ms(),
        quota_bytes: None,
        quota_files: None,
        questions: "[]".to_owned(),
        reapply_after_days: DEFAULT_REAPPLY_AFTER_DAYS,
    };
    let mut tx = app.db.begin().await?;
    if let Err(e) = db::models::insert_model(&mut *tx, &model).await {
        if db::is_unique_violation(&e) {
            return Err(ModelError::Exists(model.slug).into());
        }
        return Err(e.into());
    }
    db::models::insert_terms(
        &mut *tx,
        &model.id,
        model.terms_version,
        &model.terms,
        model.created_at,
    )
    .await?;
    let event = Event::ok(Action::ModelCreated)
        .actor(actor.to_owned())
        .subject(model.slug.clone())
        .model(model.id.clone());
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(model)
}

/// One file as it was published.
#[derive(Debug, Clone)]
pub struct PublishedFile {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// `false` when an identical object was already stored (an earlier,
    /// interrupted publish, or another release).
    pub uploaded: bool,
}

#[derive(Debug)]
pub struct PublishReport {
    pub(crate) release: String,
    pub files: Vec<PublishedFile>,
    /// Paths of the directory not published (hidden or excluded).
    pub left_out: Vec<String>,
}

/// What a publish takes: the files of the tree under a directory.
#[derive(Debug, Default, Clone)]
pub struct Source {
    pub dir: PathBuf,
    /// Publish what a symbolic link points to, as long as it stays inside
    /// the directory; without this a link is refused.
    pub follow_symlinks: bool,
    /// Paths to leave out: globs matched against the path inside the
    /// directory (`*.onnx`, `onnx`, `original/*`).
    pub exclude: Vec<String>,
    /// The model card (Markdown); by default the tree's own `README.md`.
    pub card: Option<PathBuf>,
}

/// The model card a release carries: the file the source names, else the
/// tree's top-level `README.md`, else none. Refused when it is not UTF-8
/// text or larger than a card may be.
fn card_of(source: &Source, tree: &Tree) -> Result<Option<String>> {
    let path = match &source.card {
        Some(path) => path.clone(),
        // The tree's own card is read as its other files are hashed: never
        // through a link, and only if it is still the file the walk found.
        None => match tree.files.iter().find(|f| f.path == "README.md") {
            Some(found) => {
                let mut bytes = Vec::new();
                open_found(found)?
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("cannot read the model card {}", found.on_disk.display()))?;
                return card_text(&found.on_disk, bytes);
            }
            None => return Ok(None),
        },
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("cannot read the model card {}", path.display()))?;
    card_text(&path, bytes)
}

/// The card's text, once it is UTF-8 and within a card's limits.
fn card_text(path: &Path, bytes: Vec<u8>) -> Result<Option<String>> {
    let text = String::from_utf8(bytes)
        .map_err(|_| ModelError::Invalid(format!("the model card {} is not UTF-8 text", path.display())))?;
    crate::domain::cards::check(&text).map_err(ModelError::Invalid)?;
    Ok(Some(text))
}

/// What [`release_files`] found under a directory.
#[derive(Debug, Default)]
struct Tree {
    /// Sorted by path.
    files: Vec<Found>,
    /// Paths left out: hidden ones (`.git/`, `.cache/`, `.gitattributes`)
    /// and excluded ones; a folder ends in `/`.
    left_out: Vec<String>,
}

/// A file found in a release's tree.
#[derive(Clone, Debug)]
struct Found {
    /// Its path inside the tree, with `/`.
    path: String,
    /// Where it is on disk, with no link left in the path.
    on_disk: PathBuf,
    /// The same place below the tree's top folder (it differs from `path`
    /// for what a followed link points to).
    inside: PathBuf,
    /// The tree's top folder, held open since the walk began.
    top: std::sync::Arc<std::os::fd::OwnedFd>,
    /// Its device and inode, as the walk found it: the file hashed must be
    /// this one, not one put in its place since.
    identity: (u64, u64),
}

/// Every file of the tree under `dir`, as a release publishes it: folders
/// are kept as `/`-separated paths. Hidden entries (a Hugging Face
/// snapshot's `.git/`, `.cache/` and `.gitattributes`) and excluded paths are
/// left out; a symbolic link is refused unless the selection follows links,
/// and then never out of the tree. Refused too, naming the path: a name that
/// is not UTF-8 or not usable in a URL and `SHA256SUMS`, names that differ
/// only by case, anything but files and folders.
fn release_files(source: &Source) -> Result<Tree> {
    let (dir, selection) = (source.dir.as_path(), source);
    let invalid = |why: String| crate::domain::Error::from(ModelError::Invalid(why));
    let root = dir
        .canonicalize()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    let top = std::sync::Arc::new(
        rustix::fs::open(
            &root,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .with_context(|| format!("cannot open {}", root.display()))?,
    );
    let exclude: Vec<wildmatch::WildMatch> = selection
        .exclude
        .iter()
        .map(|g| wildmatch::WildMatch::new(g.trim_end_matches('/')))
        .collect();
    let mut tree = Tree::default();
    let mut seen_folders = std::collections::HashSet::from([root.clone()]);
    let mut pending = vec![(String::new(), dir.to_path_buf())];
    while let Some((prefix, folder)) = pending.pop() {
        let entries =
            std::fs::read_dir(&folder).with_context(|| format!("cannot read {}", folder.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", folder.display()))?;
            let on_disk = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(invalid(format!(
                    "{} has a name that is not UTF-8",
                    on_disk.display()
                )));
            };
            let path = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}/{name}")
            };
            let mut kind = entry
                .file_type()
                .with_context(|| format!("cannot read {}", on_disk.display()))?;
            let shown = |is_dir: bool| if is_dir { format!("{path}/") } else { path.clone() };
            if name.starts_with('.') || exclude.iter().any(|g| g.matches(&path)) {
                tree.left_out.push(shown(kind.is_dir()));
                continue;
            }
            if kind.is_symlink() {
                if !selection.follow_symlinks {
                    return Err(invalid(format!(
                        "{} is a symbolic link: publish with --follow-symlinks to take what it points to \
                         (inside the directory only)",
                        on_disk.display()
                    )));
                }
                let target = on_disk
                    .canonicalize()
                    .with_context(|| format!("cannot follow {}", on_disk.display()))?;
                let Ok(inside) = target.strip_prefix(&root) else {
                    return Err(invalid(format!(
                        "{} points to {}, outside {}",
                        on_disk.display(),
                        target.display(),
                        dir.display()
                    )));
                };
                // What is left out stays out, whatever name a link gives it
                // (`config.json -> .git/config`).
                let target_path = inside.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
                if target_path.split('/').any(|part| part.starts_with('.'))
                    || exclude.iter().any(|g| g.matches(&target_path))
                {
                    return Err(invalid(format!(
                        "{} points to {target_path}, which the publish leaves out",
                        on_disk.display()
                    )));
                }
                kind = std::fs::metadata(&target)
                    .with_context(|| format!("cannot follow {}", on_disk.display()))?
                    .file_type();
            }
            // Checked for every entry, not only links: a file or folder
            // swapped for a link during the walk still cannot lead out.
            let canonical = on_disk
                .canonicalize()
                .with_context(|| format!("cannot read {}", on_disk.display()))?;
            if !canonical.starts_with(&root) {
                return Err(invalid(format!(
                    "{} leads to {}, outside {}",
                    on_disk.display(),
                    canonical.display(),
                    dir.display()
                )));
            }
            if kind.is_dir() {
                if !seen_folders.insert(canonical) {
                    return Err(invalid(format!(
                        "{} leads back to a folder already published (a loop of links)",
                        on_disk.display()
                    )));
                }
                pending.push((path, on_disk));
            } else if kind.is_file() {
                let meta = std::fs::metadata(&canonical)
                    .with_context(|| format!("cannot read {}", on_disk.display()))?;
                let inside = canonical.strip_prefix(&root).unwrap_or(&canonical).to_path_buf();
                tree.files.push(Found {
                    path,
                    inside,
                    on_disk: canonical,
                    top: top.clone(),
                    identity: (meta.dev(), meta.ino()),
                });
            } else {
                return Err(invalid(format!(
                    "{} is neither a regular file nor a folder",
                    on_disk.display()
                )));
            }
        }
    }
    tree.files.sort_by(|a, b| a.path.cmp(&b.path));
    tree.left_out.sort();
    crate::types::check_release_paths(tree.files.iter().map(|f| f.path.as_str())).map_err(invalid)?;
    if tree.files.is_empty() {
        return Err(invalid(format!("{} holds no files to publish", dir.display())));
    }
    Ok(tree)
}

/// How a publish reports progress: a bar that counts bytes hashed (hidden
/// unless the caller draws it), and a call for each file once stored.
pub struct PublishProgress {
    pub(crate) bar: ProgressBar,
    pub(crate) on_file: Box<dyn Fn(&PublishedFile) + Send + Sync>,
}

impl PublishProgress {
    /// Reports nothing.
    pub fn quiet() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            on_file: Box::new(|_| {}),
        }
    }
}

/// Opens a file of a release's tree for hashing: never through a link, and
/// only if it is still the file the walk found. A file swapped for another,
/// or a file or folder on its way swapped for a link to somewhere else,
/// between the walk and the hash is refused.
///
/// The kernel resolves the file's place below the tree's top folder, held
/// open since the walk, with no link on the way and no way out
/// (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so even a
/// folder swapped for a link while the walk looked at it cannot lead the
/// publish to a file outside the tree. Where the kernel lacks `openat2`
/// (Linux before 5.6, or a sandbox that forbids it), the path is opened
/// without following a link at its end, and the file must still be the one
/// the walk found.
fn open_found(found: &Found) -> Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let replaced = || {
        crate::domain::Error::conflict(format!(
            "{} was replaced while it was being published",
            found.on_disk.display()
        ))
    };
    let opened = rustix::fs::openat2(
        &*found.top,
        &found.inside,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    );
    let file = match opened {
        Ok(fd) => std::fs::File::from(fd),
        // A link on the way, or a way out of the tree.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::XDEV) => return Err(replaced()),
        Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            use std::os::unix::fs::OpenOptionsExt;
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "this kernel or sandbox refuses openat2: the publish opens files by their path and checks \
                     only that each is the file the walk found, so a folder swapped for a link out of the tree \
                     during the walk is not caught"
                );
            });
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&found.on_disk)
                .with_context(|| format!("cannot open {}", found.on_disk.display()))?
        }
        Err(e) => {
            return Err(anyhow::Error::new(std::io::Error::from(e))
                .context(format!("cannot open {}", found.on_disk.display()))
                .into());
        }
    };
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read {}", found.on_disk.display()))?;
    if !meta.is_file() || (meta.dev(), meta.ino()) != found.identity {
        return Err(replaced());
    }
    Ok(file)
}

/// A file's SHA-256, size and (with a chunk size) the SHA-256 of each
/// `chunk_size` bytes, in one streaming pass; `bar` advances by the bytes read.
pub(crate) fn hash_file(path: &Path, chunk_size: Option<u64>, bar: &ProgressBar) -> Result<FileDigest> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    hash_reader(file, path, chunk_size, bar)
}

/// [`hash_file`] of a file already open (`path` names it in errors).
fn hash_reader(
    mut file: std::fs::File,
    path: &Path,
    chunk_size: Option<u64>,
    bar: &ProgressBar,
) -> Result<FileDigest> {
    let mut digest = Digester::new(chunk_size);
    // Small enough that the kernel's copy and the hash's read of it stay in
    // the CPU's L2 cache: a 1 MiB buffer hashed a third slower.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(digest.finish())
}

/// Takes a file's bytes in order, and gives its [`FileDigest`].
struct Digester {
    whole: Sha256,
    chunker: Option<ChunkHasher>,
    chunks: Vec<String>,
    size: u64,
}

impl Digester {
    fn new(chunk_size: Option<u64>) -> Self {
        Self {
            whole: Sha256::new(),
            chunker: chunk_size.map(ChunkHasher::new),
            chunks: Vec::new(),
            size: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        if let Some(chunker) = &mut self.chunker {
            let chunks = &mut self.chunks;
            chunker.update(bytes, |digest| {
                chunks.push(digest);
                true
            });
        }
    }

    fn finish(mut self) -> FileDigest {
        if let Some(chunker) = self.chunker {
            match chunker.finish() {
                Some(last) => self.chunks.push(last),
                // An empty file is one empty chunk.
                None if self.chunks.is_empty() => self.chunks.push(hex::encode(Sha256::digest(b""))),
                None => {}
            }
        }
        FileDigest {
            sha256: hex::encode(self.whole.finalize()),
            size: self.size,
            chunks: self.chunks,
        }
    }
}

/// What [`hash_file`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileDigest {
    pub(crate) sha256: String,
    pub(crate) size: u64,
    pub(crate) chunks: Vec<String>,
}

/// Publishes every file of the tree under `dir` as a release of the model,
/// following no link and excluding nothing but hidden entries; see
/// [`publish_from`].
pub async fn publish(
    app: &App,
    slug: &Slug,
    dir: &Path,
    release_name: Option<&str>,
    chunk_size: u64,
    actor: &str,
    progress: &PublishProgress,
) -> Result<PublishReport> {
    let source = Source {
        dir: dir.to_path_buf(),
        ..Source::default()
    };
    publish_from(app, slug, &source, release_name, chunk_size, actor, progress).await
}

/// Publishes the files `source` takes as a release of the model, each under
/// its path in the tree. Files are hashed
/// in parallel and stored under their SHA-256, so running it again after an
/// interruption skips what is already stored. The release row and its files
/// are written in one transaction at the end: until then nobody sees it.
pub async fn publish_from(
    app: &App,
    slug: &Slug,
    source: &Source,
    release_name: Option<&str>,
    chunk_size: u64,
    actor: &str,
    progress: &PublishProgress,
) -> Result<PublishReport> {
    let (model, release_name) = new_release(app, slug, release_name, chunk_size).await?;
    let tree = release_files(source)?;
    let card = card_of(source, &tree)?;
    let Tree {
        files: paths,
        left_out,
    } = tree;
    let total: u64 = paths
        .iter()
        .filter_map(|f| std::fs::metadata(&f.on_disk).ok())
        .map(|m| m.len())
        .sum();
    progress.bar.set_length(total);
    progress.bar.set_message("hashing");

    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(workers));
    let mut hashing = tokio::task::JoinSet::new();
    for (index, found) in paths.iter().cloned().enumerate() {
        let permit = semaphore.clone().acquire_owned().await?;
        let bar = progress.bar.clone();
        hashing.spawn_blocking(move || {
            let _permit = permit;
            let file = open_found(&found)?;
            hash_reader(file, &found.on_disk, Some(chunk_size), &bar)
                .map(|digest| (index, found.path, found.on_disk, digest))
        });
    }
    let mut hashed = Vec::with_capacity(paths.len());
    while let Some(done) = hashing.join_next().await {
        hashed.push(done??);
    }
    hashed.sort_by_key(|h| h.0);

    // The same bar counts the bytes stored, with their rate and ETA.
    progress.bar.set_position(0);
    progress.bar.reset_eta();
    progress.bar.set_message("storing");
    let mut files = Vec::with_capacity(hashed.len());
    for (_, name, path, digest) in hashed {
        // The store checks every byte against the hashes just taken, so
        // a file swapped or changed since cannot be stored under them.
        let stored = store_one(
            app,
            name,
            digest,
            chunk_size,
            progress,
            async |key, expected, sent| app.storage.put_file(key, &path, expected, sent).await,
        )
        .await
        .map_err(changed_as_conflict)?;
        files.push(stored);
    }
    progress.bar.finish_and_clear();
    seal(
        app,
        &model,
        &release_name,
        chunk_size,
        files,
        card,
        left_out,
        actor,
    )
    .await
}

/// What a publish from a bucket takes: the objects under an S3 prefix.
#[derive(Debug, Default, Clone)]
pub struct BucketSource {
    /// `s3://BUCKET/PREFIX`, read with the portal's S3 endpoint and
    /// credentials.
    pub url: String,
    /// Paths to leave out, as for a directory (see [`Source::exclude`]).
    pub exclude: Vec<String>,
    /// The model card (Markdown); by default the prefix's own `README.md`.
    pub card: Option<PathBuf>,
}

/// Objects a bucket holds in flight at once while they are hashed: each is
/// a connection streaming one object.
const OBJECTS_IN_FLIGHT: usize = 4;

/// Publishes the objects under an S3 prefix as a release of the model, each
/// under its key below the prefix, as [`publish_from`] does a directory. The
/// objects are hashed by streaming them (nothing is written to local disk)
/// and then copied under the portal's own keys by the store itself. Each
/// read and each copy names the version of the object that was listed, so
/// an object replaced during the publish is refused rather than published
/// under the hashes of another. The portal's own objects must be in the
/// same S3 service.
pub async fn publish_from_bucket(
    app: &App,
    slug: &Slug,
    source: &BucketSource,
    release_name: Option<&str>,
    chunk_size: u64,
    actor: &str,
    progress: &PublishProgress,
) -> Result<PublishReport> {
    let (model, release_name) = new_release(app, slug, release_name, chunk_size).await?;
    let invalid = |why: String| crate::domain::Error::from(ModelError::Invalid(why));
    if let Some(why) = app.storage.cannot_copy_in() {
        return Err(invalid(format!("cannot publish from {}: {why}", source.url)));
    }
    let bucket = std::sync::Arc::new(crate::storage::bucket_at(&app.config, &source.url)?);
    let exclude: Vec<wildmatch::WildMatch> = source
        .exclude
        .iter()
        .map(|g| wildmatch::WildMatch::new(g.trim_end_matches('/')))
        .collect();
    let mut objects = Vec::new();
    let mut left_out = std::collections::BTreeSet::new();
    for (path, object) in bucket.objects().await? {
        // A key ending in `/` is how consoles draw an empty folder.
        if path.is_empty() || (path.ends_with('/') && object.size == 0) {
            continue;
        }
        match left_out_as(&path, &exclude) {
            Some(shown) => {
                left_out.insert(shown);
            }
            None => objects.push((path, object)),
        }
    }
    crate::types::check_release_paths(objects.iter().map(|(path, _)| path.as_str())).map_err(invalid)?;
    if objects.is_empty() {
        return Err(invalid(format!("{} holds no files to publish", source.url)));
    }
    let card = match &source.card {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read the model card {}", path.display()))?;
            card_text(path, bytes)?
        }
        None => match objects.iter().find(|(path, _)| path == "README.md") {
            Some((_, object)) => {
                let shown = object.to_string();
                let most = crate::domain::cards::MAX_CARD;
                if object.size > most as u64 {
                    return Err(invalid(format!(
                        "the model card {shown} is {} bytes; at most {most} are shown",
                        object.size
                    )));
                }
                let pieces: Vec<bytes::Bytes> = bucket
                    .read_object(object)
                    .await
                    .map_err(changed_as_conflict)?
                    .try_collect()
                    .await
                    .with_context(|| format!("cannot read the model card {shown}"))?;
                card_text(Path::new(&shown), pieces.concat())?
            }
            None => None,
        },
    };
    progress
        .bar
        .set_length(objects.iter().map(|(_, object)| object.size).sum());
    progress.bar.set_message("hashing");
    let bar = &progress.bar;
    let hashed: Vec<FileDigest> = futures_util::stream::iter(&objects)
        .map(|(_, object)| {
            let bucket = bucket.clone();
            async move { hash_object(&bucket, object, chunk_size, bar).await }
        })
        .buffered(OBJECTS_IN_FLIGHT)
        .try_collect()
        .await?;

    progress.bar.set_position(0);
    progress.bar.reset_eta();
    progress.bar.set_message("copying");
    let mut files = Vec::with_capacity(objects.len());
    for ((path, object), digest) in objects.into_iter().zip(hashed) {
        let stored = store_one(
            app,
            path,
            digest,
            chunk_size,
            progress,
            async |key, expected, sent| app.storage.copy_in(key, &object, expected, sent).await,
        )
        .await
        .map_err(changed_as_conflict)?;
        files.push(stored);
    }
    progress.bar.finish_and_clear();
    seal(
        app,
        &model,
        &release_name,
        chunk_size,
        files,
        card,
        left_out.into_iter().collect(),
        actor,
    )
    .await
}

/// How a path below a bucket's prefix is left out of a release, as a walk
/// of a directory leaves it out: the first hidden or excluded folder on its
/// way (`.git/`), or the path itself; `None` when it is published.
fn left_out_as(path: &str, exclude: &[wildmatch::WildMatch]) -> Option<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..=parts.len()).find_map(|depth| {
        let sub = parts[..depth].join("/");
        let hidden = parts[depth - 1].starts_with('.');
        (hidden || exclude.iter().any(|g| g.matches(&sub))).then(|| {
            if depth < parts.len() {
                format!("{sub}/")
            } else {
                sub
            }
        })
    })
}

/// Streams `object` from `bucket` and hashes it on a blocking thread as it
/// arrives; an object that is not the size listed is refused as changed.
async fn hash_object(
    bucket: &crate::storage::S3Bucket,
    object: &crate::storage::BucketObject,
    chunk_size: u64,
    bar: &ProgressBar,
) -> Result<FileDigest> {
    let shown = object.to_string();
    let mut stream = bucket.read_object(object).await.map_err(changed_as_conflict)?;
    let (pieces, mut arriving) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let bar = bar.clone();
    let hasher = tokio::task::spawn_blocking(move || {
        let mut digest = Digester::new(Some(chunk_size));
        while let Some(piece) = arriving.blocking_recv() {
            digest.update(&piece);
            bar.inc(piece.len() as u64);
        }
        digest.finish()
    });
    while let Some(piece) = stream.next().await {
        let piece = piece.with_context(|| format!("cannot read {shown}"))?;
        if pieces.send(piece).await.is_err() {
            break;
        }
    }
    drop(pieces);
    let digest = hasher.await?;
    if digest.size != object.size {
        return Err(crate::domain::Error::conflict(format!(
            "{shown} changed while it was being published (listed with {} bytes, read with {})",
            object.size, digest.size
        )));
    }
    Ok(digest)
}

/// A store's [`Changed`] as the conflict it is; other errors as they are.
fn changed_as_conflict(e: anyhow::Error) -> crate::domain::Error {
    match e.downcast::<Changed>() {
        Ok(changed) => crate::domain::Error::conflict(changed.to_string()),
        Err(e) => e.into(),
    }
}

/// The model a new release goes to and the release's name (the one given,
/// or the next `vN`), once the chunk size and the name are usable and no
/// release has it.
async fn new_release(
    app: &App,
    slug: &Slug,
    release_name: Option<&str>,
    chunk_size: u64,
) -> Result<(Model, String)> {
    if chunk_size < 4096 {
        return Err(ModelError::Invalid("the chunk size must be at least 4 KiB".into()).into());
    }
    let model = db::models::find_model_by_slug(app.db.pool(), slug.as_str())
        .await?
        .ok_or_else(|| ModelError::NotFound(slug.to_string()))?;
    let release_name = match release_name {
        Some(name) => name.to_owned(),
        None => format!(
            "v{}",
            db::models::count_releases(app.db.pool(), &model.id).await? + 1
        ),
    };
    if !is_safe_file_name(&release_name) || release_name.len() > 64 {
        return Err(ModelError::Invalid(format!(
            "{release_name:?} is not a usable release name: use letters, digits, '.', '_' and '-'"
        ))
        .into());
    }
    if db::models::find_release(app.db.pool(), &model.id, &release_name)
        .await?
        .is_some()
    {
        return Err(ModelError::ReleaseExists {
            slug: model.slug,
            release: release_name,
        }
        .into());
    }
    Ok((model, release_name))
}

/// The file `name`, hashed, stored under its content's key by `put` unless
/// the store holds it already, and reported to `progress`; with its chunk
/// hashes.
async fn store_one(
    app: &App,
    name: String,
    digest: FileDigest,
    chunk_size: u64,
    progress: &PublishProgress,
    put: impl AsyncFnOnce(&str, &Expected, &Sent) -> anyhow::Result<()>,
) -> anyhow::Result<(PublishedFile, Vec<String>)> {
    let key = key_for_sha256(&digest.sha256);
    let size = digest.size;
    let uploaded = app.storage.size(&key).await? != Some(size);
    if uploaded {
        let expected = Expected {
            size,
            chunk_size,
            chunks: digest.chunks.clone(),
        };
        let bar = progress.bar.clone();
        let sent = move |n: u64| bar.inc(n);
        put(&key, &expected, &sent).await?;
        anyhow::ensure!(
            app.storage.size(&key).await? == Some(size),
            "the store does not hold all {size} bytes of {key} after storing them"
        );
    } else {
        // The same bar counts the bytes stored, with their rate and ETA.
        progress.bar.inc(size);
    }
    let FileDigest { sha256, size, chunks } = digest;
    let file = PublishedFile {
        name,
        size,
        sha256,
        uploaded,
    };
    (progress.on_file)(&file);
    Ok((file, chunks))
}

/// Signs the manifest, `SHA256SUMS` and `model.sig` of the stored files
/// (each with its chunk hashes) and writes the release with them in one
/// transaction: until it commits nobody sees the release.
#[allow(clippy::too_many_arguments)]
async fn seal(
    app: &App,
    model: &Model,
    release_name: &str,
    chunk_size: u64,
    stored: Vec<(PublishedFile, Vec<String>)>,
    card: Option<String>,
    left_out: Vec<String>,
    actor: &str,
) -> Result<PublishReport> {
    let release_name = release_name.to_owned();
    let mut files = Vec::with_capacity(stored.len());
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT.to_owned(),
        model: model.slug.clone(),
        release: release_name.clone(),
        chunk_size,
        files: Vec::with_capacity(stored.len()),
    };
    for (file, chunks) in stored {
        manifest.files.push(ManifestFile {
            name: file.name.clone(),
            size: file.size,
            sha256: file.sha256.clone(),
            chunks,
        });
        files.push(file);
    }
    let manifest_text = serde_json::to_string_pretty(&manifest)? + "\n";
    let sums: String = files
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.name))
        .collect();
    let subject = format!("{}/{}", model.slug, release_name);
    let manifest_sig = app
        .publisher
        .sign(manifest_text.as_bytes(), &format!("manifest {subject}"))?;
    let sums_sig = app
        .publisher
        .sign(sums.as_bytes(), &format!("SHA256SUMS {subject}"))?;
    let model_sig = app.publisher.model_signing().sign_manifest(&manifest)?;

    let now = now_ms();
    let release = db::models::Release {
        id: new_id(),
        model_id: model.id.clone(),
        name: release_name.clone(),
        created_at: now,
        published_at: Some(now),
        manifest: Some(manifest_text),
        manifest_sig: Some(manifest_sig),
        sums: Some(sums),
        sums_sig: Some(sums_sig),
        model_sig: Some(model_sig),
    };
    let mut tx = app.db.begin().await?;
    db::models::insert_release(&mut *tx, &release, card.as_deref()).await?;
    for (f, m) in files.iter().zip(&manifest.files) {
        db::models::insert_file(
            &mut *tx,
            &db::models::File {
                id: new_id(),
                release_id: release.id.clone(),
                name: f.name.clone(),
                object_key: key_for_sha256(&f.sha256),
                size: i64::try_from(f.size)?,
                sha256: f.sha256.clone(),
                chunk_size: i64::try_from(chunk_size)?,
                chunks: serde_json::to_string(&m.chunks)?,
            },
        )
        .await?;
    }
    let event = Event::ok(Action::ReleasePublished)
        .actor(actor.to_owned())
        .subject(subject)
        .model(model.id.clone());
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(PublishReport {
        release: release_name,
        files,
        left_out,
    })
}

/// Sets the per-grant delivery limits of a model; `None` lifts a limit.
pub async fn set_quota(
    app: &App,
    slug: &Slug,
    quota_bytes: Option<u64>,
    quota_files: Option<u64>,
    actor: &str,
) -> Result<()> {
    let model = db::models::find_model_by_slug(app.db.pool(), slug.as_str())
        .await?
        .ok_or_else(|| ModelError::NotFound(slug.to_string()))?;
    let bytes = quota_bytes.map(i64::try_from).transpose()?;
    let files = quota_files.map(i64::try_from).transpose()?;
    let mut tx = app.db.begin().await?;
    db::models::set_quota(&mut *tx, &model.id, bytes, files).await?;
    let mut event = Event::ok(Action::ModelQuotaSet).actor(actor.to_owned());
    event.subject = Some(format!(
        "{} bytes={} files={}",
        model.slug,
        quota_bytes.map_or("unlimited".into(), |b| b.to_string()),
        quota_files.map_or("unlimited".into(), |f| f.to_string())
    ));
    event.model_id = Some(model.id);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(())
}

async fn model_by_slug(app: &App, slug: &Slug) -> Result<Model> {
    Ok(db::models::find_model_by_slug(app.db.pool(), slug.as_str())
        .await?
        .ok_or_else(|| ModelError::NotFound(slug.to_string()))?)
}

/// Publishes a new version of a model's terms: new applications accept it,
/// earlier ones keep the version they accepted. Returns the new version.
pub async fn set_terms(app: &App, slug: &Slug, terms: &str, actor: &str) -> Result<i64> {
    if terms.trim().is_empty() {
        return Err(ModelError::Invalid("the terms must not be empty".into()).into());
    }
    let model = model_by_slug(app, slug).await?;
    let mut tx = app.db.begin().await?;
    // Read inside the transaction, so two changes at once cannot take one number.
    let current = db::models::find_model(&mut *tx, &model.id)
        .await?
        .ok_or_else(|| ModelError::NotFound(slug.to_string()))?;
    if current.terms == terms {
        return Err(ModelError::Invalid(format!(
            "these are already the terms of {slug} (version {})",
            current.terms_version
        ))
        .into());
    }
    let version = current.terms_version + 1;
    db::models::insert_terms(&mut *tx, &model.id, version, terms, now_ms()).await?;
    db::models::set_current_terms(&mut *tx, &model.id, version, terms).await?;
    let event = Event::ok(Action::ModelTermsChanged)
        .actor(actor.to_owned())
        .subject(format!("{slug} terms version {version}"))
        .model(model.id.clone());
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(version)
}

/// Replaces a model's application questions with `json` (checked first).
pub async fn set_questions(
    app: &App,
    slug: &Slug,
    json: &str,
    actor: &str,
) -> Result<Vec<crate::domain::questions::Question>> {
    let questions = crate::domain::questions::parse_definitions(json).map_err(ModelError::Invalid)?;
    let model = model_by_slug(app, slug).await?;
    let stored = serde_json::to_string(&questions)?;
    let mut tx = app.db.begin().await?;
    db::models::set_questions(&mut *tx, &model.id, &stored).await?;
    let event = Event::ok(Action::ModelQuestionsChanged)
        .actor(actor.to_owned())
        .subject(format!("{slug}: {} questions", questions.len()))
        .model(model.id.clone());
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(questions)
}

/// Sets how many days a denied researcher waits before applying again.
pub async fn set_reapply_after(app: &App, slug: &Slug, days: i64, actor: &str) -> Result<()> {
    if !(0..=MAX_REAPPLY_AFTER_DAYS).contains(&days) {
        return Err(ModelError::Invalid(format!(
            "the wait before applying again is 0 to {MAX_REAPPLY_AFTER_DAYS} days"
        ))
        .into());
    }
    let model = model_by_slug(app, slug).await?;
    let mut tx = app.db.begin().await?;
    db::models::set_reapply_after_days(&mut *tx, &model.id, days).await?;
    let event = Event::ok(Action::ModelReapplyAfterChanged)
        .actor(actor.to_owned())
        .subject(format!("{slug}: {days} days"))
        .model(model.id.clone());
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_card_replaced_by_a_link_after_the_walk_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.md"), b"# Tiny\n").unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/config"), b"url = https://token@example.org").unwrap();
        let source = Source {
            dir: dir.path().to_owned(),
            ..Source::default()
        };
        let tree = release_files(&source).unwrap();
        assert_eq!(card_of(&source, &tree).unwrap().as_deref(), Some("# Tiny\n"));
        let readme = dir.path().join("README.md");
        std::fs::rename(&readme, dir.path().join("kept")).unwrap();
        std::os::unix::fs::symlink(dir.path().join(".git/config"), &readme).unwrap();
        assert!(card_of(&source, &tree).is_err(), "the link is not followed");
    }

    #[test]
    fn a_folder_swapped_for_a_link_out_of_the_tree_is_not_followed_to_the_file_it_leads_to() {
        let dir = tempfile::tempdir().unwrap();
        let tree_dir = dir.path().join("tree");
        std::fs::create_dir_all(tree_dir.join("original")).unwrap();
        std::fs::write(tree_dir.join("original/weights.bin"), b"the weights").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("weights.bin"), b"a secret of the machine").unwrap();
        let source = Source {
            dir: tree_dir.clone(),
            ..Source::default()
        };
        let tree = release_files(&source).unwrap();
        let [found] = tree.files.as_slice() else {
            panic!("{tree:?}")
        };
        // The folder is swapped for a link out of the tree while the walk
        // looks at it, so that the walk notes the outside file's identity.
        std::fs::rename(tree_dir.join("original"), dir.path().join("kept")).unwrap();
        std::os::unix::fs::symlink(&outside, tree_dir.join("original")).unwrap();
        let meta = std::fs::metadata(outside.join("weights.bin")).unwrap();
        let raced = Found {
            identity: (meta.dev(), meta.ino()),
            ..found.clone()
        };
        let err = open_found(&raced).expect_err("the link on the way is not followed");
        assert!(
            err.to_string()
                .contains("was replaced while it was being published"),
            "{err}"
        );
    }

    #[test]
    fn a_file_replaced_after_the_walk_is_not_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let source = Source {
            dir: dir.path().to_owned(),
            follow_symlinks: false,
            exclude: Vec::new(),
            card: None,
        };
        std::fs::write(dir.path().join("weights.bin"), b"the weights").unwrap();
        std::fs::write(dir.path().join("secret"), b"not for release").unwrap();
        let tree = release_files(&Source {
            exclude: vec!["secret".into()],
            ..source
        })
        .unwrap();
        let [found] = tree.files.as_slice() else {
            panic!("{tree:?}")
        };
        assert!(open_found(found).is_ok());

        // Swapped for a link to a file the publish leaves out: not followed.
        // (The file found is kept aside, so that no new file gets its inode.)
        let weights = dir.path().join("weights.bin");
        std::fs::rename(&weights, dir.path().join("kept")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), &weights).unwrap();
        assert!(open_found(found).is_err());
        // Swapped for another file under the same name: not the one found.
        std::fs::remove_file(&weights).unwrap();
        std::fs::write(dir.path().join("other"), b"other bytes").unwrap();
        std::fs::rename(dir.path().join("other"), &weights).unwrap();
        let err = open_found(found).unwrap_err();
        assert!(
            err.to_string()
                .contains("was replaced while it was being published"),
            "{err}"
        );
    }

    #[test]
    fn chunk_hashes_cover_the_file_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let digest = hash_file(&path, Some(4096), &ProgressBar::hidden()).unwrap();
        assert_eq!(digest.size, 10_000);
        assert_eq!(digest.sha256, hex::encode(Sha256::digest(&data)));
        let expected: Vec<String> = data
            .chunks(4096)
            .map(|c| hex::encode(Sha256::digest(c)))
            .collect();
        assert_eq!(digest.chunks, expected);

        std::fs::write(&path, b"").unwrap();
        let empty = hash_file(&path, Some(4096), &ProgressBar::hidden()).unwrap();
        assert_eq!(empty.chunks, vec![hex::encode(Sha256::digest(b""))]);
    }
}
