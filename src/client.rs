//! `weightgate download`: the researcher's client.
//!
//! One URL (the grant's manifest) is all it needs. It checks the portal's
//! signature on every release manifest, then fetches the files in chunks over
//! several ranged connections, verifying each chunk against the signed chunk
//! hashes as it arrives and fetching again only a chunk that does not match.
//! Progress is kept next to each partial file, so a killed download resumes
//! where it stopped. Expired links are replaced by fetching the manifest
//! again; every other refusal stops with the portal's reason and request id.

use std::{
    collections::HashMap,
    io::Read,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures_util::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncSeekExt, AsyncWriteExt},
    sync::{Mutex, Semaphore},
};
use wildmatch::WildMatch;

use crate::crypto::{
    manifests::{self, Manifest, ManifestFile},
    model_signing,
};

/// What to download and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// The grant's manifest URL (or its access page URL).
    pub url: String,
    pub dir: PathBuf,
    /// Parallel ranged connections.
    pub jobs: usize,
    /// Only files whose path in the release matches one of these patterns
    /// (`*` matches across folders too: `original/*`, `*.json`).
    pub include: Vec<String>,
    /// The portal's publishing key (a minisign `.pub` file's text or its key
    /// line). Without it the key is fetched from the portal.
    pub public_key: Option<String>,
    /// The portal's model-signing key (PEM) that each release's `model.sig`
    /// must be signed with. Without it the key the portal sends is used.
    pub model_signing_key: Option<String>,
    /// At most this many bytes per second in all.
    pub limit_rate: Option<u64>,
    /// Progress bars on a terminal; plain lines otherwise.
    pub progress: bool,
}

/// Why a download stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownloadError {
    #[error("the portal refused: {message} ({code}, request id {request_id})")]
    Refused {
        code: String,
        message: String,
        request_id: String,
    },
    #[error("network: {0}")]
    Network(String),
    #[error("checksum: {0}")]
    Checksum(String),
    #[error("manifest: {0}")]
    Manifest(String),
    #[error("disk: {0}")]
    Disk(String),
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    /// Where the files are: one folder per release, each with the release's
    /// signed `SHA256SUMS` and `manifest.json` beside its files.
    pub release_dirs: Vec<PathBuf>,
    /// Files that were already complete and verified.
    pub already_complete: usize,
    pub bytes_fetched: u64,
    pub chunks_fetched: u64,
    /// Chunks that arrived damaged and were fetched again.
    pub chunks_refetched: u64,
}

/// A grant's manifest as the portal serves it: the release manifests with
/// their signatures, and a link per file. Nothing in it is trusted until
/// [`verified_releases`] has checked it.
#[derive(Debug, Deserialize)]
pub(crate) struct GrantManifest {
    public_key_url: String,
    /// The PEM key that checks each release's `model.sig`; absent from
    /// portals that sign no model signatures.
    #[serde(default)]
    model_signing_key: Option<String>,
    releases: Vec<ReleaseLinks>,
}

#[derive(Debug, Deserialize)]
struct ReleaseLinks {
    name: String,
    manifest: String,
    manifest_sig: String,
    files: Vec<FileLink>,
}

#[derive(Debug, Deserialize)]
struct FileLink {
    name: String,
    size: u64,
    sha256: String,
    url: String,
}

#[derive(Debug, Deserialize)]
struct PortalError {
    error: String,
    message: String,
    #[serde(default)]
    request_id: String,
}

/// Progress of one partial file, kept beside it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PartState {
    sha256: String,
    chunk_size: u64,
    verified: Vec<bool>,
}

/// One file to fetch.
struct Target {
    key: (String, String),
    file: ManifestFile,
    chunk_size: u64,
    final_path: PathBuf,
    part_path: PathBuf,
    state_path: PathBuf,
    state: Mutex<PartState>,
    remaining: AtomicU64,
    /// Chunks taken as verified from the state file of an earlier run:
    /// checked again on disk before the file is finished.
    carried: std::sync::Mutex<Vec<usize>>,
}

/// The current link of every file, replaced when links expire.
struct Links {
    urls: HashMap<(String, String), String>,
    generation: u64,
}

struct Session {
    http: reqwest::Client,
    manifest_url: String,
    links: Mutex<Links>,
    jobs: Semaphore,
    limiter: Option<DefaultDirectRateLimiter>,
    fetched: AtomicU64,
    chunks: AtomicU64,
    refetched: AtomicU64,
    bar: ProgressBar,
}

const ATTEMPTS: u32 = 6;

/// How often the portal may ask the client to wait (429, or 503 with
/// `Retry-After`) for one request before it gives up.
const WAITS: u32 = 10;

/// The longest wait a `Retry-After` is honoured for.
const LONGEST_WAIT: Duration = Duration::from_secs(300);

/// How often one chunk's transfer may break off before the client gives up
/// (the command resumes from there when run again).
const BREAKS: u32 = 8;

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * (1 << attempt.min(6)))
}

/// The wait a 429 or 503 asks for, in whole seconds (`Retry-After: 30`), at
/// most [`LONGEST_WAIT`]; `None` when the header is missing or is a date.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(LONGEST_WAIT))
}

/// A network failure said in full, without the URL (a download link is a
/// credential): "error sending request: … connection refused".
fn network_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// The manifest URL for what the user gave: a manifest URL or an access page.
fn manifest_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.ends_with("/manifest.json") {
        url.to_owned()
    } else {
        format!("{url}/manifest.json")
    }
}

/// Turns a non-success response into the portal's stated reason.
async fn refusal(response: reqwest::Response) -> DownloadError {
    let status = response.status();
    let header_id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match response.json::<PortalError>().await {
        Ok(e) => DownloadError::Refused {
            code: e.error,
            message: e.message,
            request_id: if e.request_id.is_empty() {
                header_id
            } else {
                e.request_id
            },
        },
        Err(_) => DownloadError::Refused {
            code: status.as_u16().to_string(),
            message: format!("unexpected answer {status}"),
            request_id: header_id,
        },
    }
}

/// GETs `url`, retrying network failures and server errors with backoff,
/// and waiting as long as the portal asks when it is busy (429, or 503 with
/// `Retry-After`).
async fn get_with_retries(
    http: &reqwest::Client,
    url: &str,
    range: Option<(u64, u64)>,
) -> Result<reqwest::Response, DownloadError> {
    let mut last;
    let (mut attempts, mut waits) = (0, 0);
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        let mut request = http.get(url).header("accept", "application/json, */*");
        if let Some((start, end)) = range {
            request = request.header("range", format!("bytes={start}-{end}"));
        }
        let asked = match request.send().await {
            Ok(r) if r.status().is_success() => return Ok(r),
            Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS || r.status().is_server_error() => {
                let asked = retry_after(&r);
                if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS && (asked.is_none() || waits >= WAITS)
                {
                    return Err(refusal(r).await);
                }
                last = format!("{} from the portal", r.status());
                asked
            }
            Ok(r) => return Err(refusal(r).await),
            Err(e) => {
                last = network_error(e);
                None
            }
        };
        match asked {
            Some(wait) if waits < WAITS => {
                waits += 1;
                eprintln!("the portal asks to wait {} s ({last})", wait.as_secs());
                // A little more than asked, so that clients told the same
                // time do not all come back at once.
                pause = wait + Duration::from_millis(rand::random_range(100..1000));
            }
            _ => {
                attempts += 1;
                if attempts >= ATTEMPTS {
                    return Err(DownloadError::Network(format!(
                        "{last} (gave up after {attempts} attempts)"
                    )));
                }
                pause = backoff(attempts);
            }
        }
    }
}

impl GrantManifest {
    /// Reads the portal's answer to a manifest request.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, DownloadError> {
        serde_json::from_slice(body)
            .map_err(|e| DownloadError::Manifest(format!("the portal's answer is not a grant manifest: {e}")))
    }
}

async fn fetch_grant_manifest(http: &reqwest::Client, url: &str) -> Result<GrantManifest, DownloadError> {
    let response = get_with_retries(http, url, None).await?;
    let body = response.bytes().await.map_err(|e| {
        DownloadError::Network(format!("cannot read the grant manifest: {}", network_error(e)))
    })?;
    GrantManifest::parse(&body)
}

/// A release manifest whose signature holds, with the link of each file by name.
pub(crate) type VerifiedRelease = (Manifest, HashMap<String, String>);

/// The release manifests, each checked against the publishing key, with the
/// files' links; a listing that disagrees with the signed manifest is refused.
pub(crate) fn verified_releases(
    grant: &GrantManifest,
    public_key: &str,
) -> Result<Vec<VerifiedRelease>, DownloadError> {
    // Each release is a folder of the download directory: two whose names
    // differ only by case would be one folder on macOS or Windows.
    let mut folders = std::collections::HashSet::new();
    if let Some(twice) = grant
        .releases
        .iter()
        .find(|r| !folders.insert(r.name.to_ascii_lowercase()))
    {
        return Err(DownloadError::Manifest(format!(
            "the grant lists release {} twice (perhaps in another case)",
            twice.name
        )));
    }
    grant
        .releases
        .iter()
        .map(|r| {
            manifests::verify(public_key, r.manifest.as_bytes(), &r.manifest_sig).map_err(|e| {
                DownloadError::Manifest(format!(
                    "the manifest of release {} is not signed by the portal's publishing key: {e:#}",
                    r.name
                ))
            })?;
            let manifest =
                Manifest::parse(&r.manifest).map_err(|e| DownloadError::Manifest(format!("{e:#}")))?;
            if manifest.release != r.name {
                return Err(DownloadError::Manifest(format!(
                    "the signed manifest is for release {}, not {}",
                    manifest.release, r.name
                )));
            }
            let mut urls = HashMap::new();
            for link in &r.files {
                let signed = manifest
                    .files
                    .iter()
                    .find(|f| f.name == link.name)
                    .ok_or_else(|| {
                        DownloadError::Manifest(format!(
                            "{} is not in the signed manifest of {}",
                            link.name, r.name
                        ))
                    })?;
                if signed.size != link.size || signed.sha256 != link.sha256 {
                    return Err(DownloadError::Manifest(format!(
                        "the listing of {} disagrees with the signed manifest",
                        link.name
                    )));
                }
                urls.insert(link.name.clone(), link.url.clone());
            }
            Ok((manifest, urls))
        })
        .collect()
}

fn sha256_of_range(path: &Path, start: u64, len: u64) -> std::io::Result<String> {
    use std::io::Seek;
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut hasher = Sha256::new();
    let mut reader = file.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Bytes `start..end` of chunk `index` of `file`.
pub(crate) fn chunk_bounds(file: &ManifestFile, chunk_size: u64, index: usize) -> (u64, u64) {
    let start = index as u64 * chunk_size;
    (start, start.saturating_add(chunk_size).min(file.size))
}

/// Which chunks of a partial file are known good: from its state file when
/// it matches (those are noted in `target.carried`, to be checked again
/// before the file is finished), otherwise by hashing what is on disk.
fn verified_chunks(target: &Target) -> anyhow::Result<Vec<bool>> {
    let count = target.file.chunks.len();
    if let Ok(text) = std::fs::read_to_string(&target.state_path)
        && let Ok(state) = serde_json::from_str::<PartState>(&text)
        && state.sha256 == target.file.sha256
        && state.chunk_size == target.chunk_size
        && state.verified.len() == count
    {
        *target.carried.lock().unwrap_or_else(|e| e.into_inner()) =
            (0..count).filter(|i| state.verified[*i]).collect();
        return Ok(state.verified);
    }
    let on_disk = std::fs::metadata(&target.part_path).map(|m| m.len()).unwrap_or(0);
    (0..count)
        .map(|i| {
            let (start, end) = chunk_bounds(&target.file, target.chunk_size, i);
            if end > on_disk || end == start && target.file.size > 0 {
                return Ok(false);
            }
            Ok(sha256_of_range(&target.part_path, start, end - start)? == target.file.chunks[i])
        })
        .collect()
}

/// Records which chunks are verified. It is written to a temporary file,
/// synced, then renamed over the old state, so a crash leaves one or the
/// other; the chunks it names were synced to disk before it.
async fn save_state(target: &Target, state: &PartState) -> anyhow::Result<()> {
    let tmp = target.state_path.with_extension("tmp");
    let mut file = tokio::fs::File::create(&tmp).await?;
    file.write_all(&serde_json::to_vec(state)?).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&tmp, &target.state_path).await?;
    Ok(())
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Session {
    async fn url_of(&self, key: &(String, String)) -> (String, u64) {
        let links = self.links.lock().await;
        (links.urls.get(key).cloned().unwrap_or_default(), links.generation)
    }

    /// Fetches the manifest again for fresh links, once for all tasks that
    /// found theirs expired.
    async fn refresh_links(&self, seen_generation: u64, public_key: &str) -> Result<(), DownloadError> {
        let mut links = self.links.lock().await;
        if links.generation != seen_generation {
            return Ok(());
        }
        let grant = fetch_grant_manifest(&self.http, &self.manifest_url).await?;
        for (manifest, urls) in verified_releases(&grant, public_key)? {
            for (name, url) in urls {
                links.urls.insert((manifest.release.clone(), name), url);
            }
        }
        links.generation += 1;
        Ok(())
    }

    /// Fetches one chunk into the partial file, verifying it as it arrives;
    /// a damaged chunk is fetched again.
    async fn fetch_chunk(
        &self,
        target: &Target,
        index: usize,
        public_key: &str,
    ) -> Result<(), DownloadError> {
        let (start, end) = chunk_bounds(&target.file, target.chunk_size, index);
        let (mut damaged, mut expired, mut broken) = (0, 0, 0);
        loop {
            let (url, generation) = self.url_of(&target.key).await;
            let response =
                match get_with_retries(&self.http, &url, (end > start).then(|| (start, end - 1))).await {
                    Ok(r) => r,
                    Err(DownloadError::Refused { code, .. }) if code == "link_expired" && expired < 3 => {
                        expired += 1;
                        self.refresh_links(generation, public_key).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
            if end > start && response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                return Err(DownloadError::Network(format!(
                    "the portal did not honour a range request for {} ({})",
                    target.file.name,
                    response.status()
                )));
            }
            match self.write_chunk(target, start, end, response).await? {
                Some(hash) if hash == target.file.chunks[index] => {
                    self.bar.inc(end - start);
                    break;
                }
                Some(_) if damaged < 3 => {
                    damaged += 1;
                    self.refetched.fetch_add(1, Ordering::Relaxed);
                }
                Some(_) => {
                    return Err(DownloadError::Checksum(format!(
                        "chunk {index} of {} arrived damaged {} times",
                        target.file.name,
                        damaged + 1
                    )));
                }
                None if broken < BREAKS => {
                    broken += 1;
                    tokio::time::sleep(backoff(broken)).await;
                }
                None => {
                    return Err(DownloadError::Network(format!(
                        "the transfer of chunk {index} of {} broke off {} times; run the command again to resume",
                        target.file.name,
                        broken + 1
                    )));
                }
            }
        }
        self.chunks.fetch_add(1, Ordering::Relaxed);
        let mut state = target.state.lock().await;
        state.verified[index] = true;
        save_state(target, &state)
            .await
            .map_err(|e| DownloadError::Disk(format!("{e:#}")))?;
        Ok(())
    }

    /// Streams a response into `start..end` of the partial file and returns
    /// the SHA-256 of what arrived, or `None` when the transfer broke off.
    async fn write_chunk(
        &self,
        target: &Target,
        start: u64,
        end: u64,
        response: reqwest::Response,
    ) -> Result<Option<String>, DownloadError> {
        let disk = |e: std::io::Error| DownloadError::Disk(format!("{}: {e}", target.part_path.display()));
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&target.part_path)
            .await
            .map_err(disk)?;
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(disk)?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut body = response.bytes_stream();
        while let Some(piece) = body.next().await {
            let Ok(piece) = piece else { return Ok(None) };
            if written + piece.len() as u64 > end - start {
                // More bytes than asked for: treat the chunk as damaged.
                return Ok(Some(String::new()));
            }
            if let Some(limiter) = &self.limiter {
                let kib = u32::try_from(piece.len().div_ceil(1024))
                    .unwrap_or(u32::MAX)
                    .max(1);
                if let Some(n) = NonZeroU32::new(kib) {
                    let _ = limiter.until_n_ready(n).await;
                }
            }
            hasher.update(&piece);
            file.write_all(&piece).await.map_err(disk)?;
            written += piece.len() as u64;
            self.fetched.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        file.flush().await.map_err(disk)?;
        if written != end - start {
            return Ok(None);
        }
        // On disk before the state file says the chunk is verified.
        file.sync_data().await.map_err(disk)?;
        Ok(Some(hex::encode(hasher.finalize())))
    }
}

/// Where a file of a release lands: `DIR/RELEASE/PATH`, with its partial
/// download and its state file beside it in the same folder. The manifest's
/// paths were checked (`Manifest::parse`) to stay inside `DIR/RELEASE`.
fn plan_target(dir: &Path, release: &str, file: ManifestFile, chunk_size: u64) -> Target {
    let release_dir = dir.join(release);
    let final_path = release_dir.join(&file.name);
    let folder = final_path.parent().unwrap_or(&release_dir).to_path_buf();
    let base = crate::types::base_name(&file.name);
    Target {
        key: (release.to_owned(), file.name.clone()),
        part_path: folder.join(format!("{base}.part")),
        state_path: folder.join(format!(".{base}.weightgate")),
        final_path,
        state: Mutex::new(PartState::default()),
        remaining: AtomicU64::new(0),
        carried: std::sync::Mutex::new(Vec::new()),
        chunk_size,
        file,
    }
}

/// Makes the partial file ready and returns the chunks still to fetch, or
/// `None` when the file is already complete and verified.
fn prepare(target: &Target) -> anyhow::Result<Option<Vec<usize>>> {
    if let Some(parent) = target.final_path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if std::fs::metadata(&target.final_path).is_ok_and(|m| m.len() == target.file.size) {
        if sha256_of_range(&target.final_path, 0, target.file.size)? == target.file.sha256 {
            return Ok(None);
        }
        // A damaged complete file: keep its good chunks, fetch the rest.
        let _ = std::fs::remove_file(&target.state_path);
        std::fs::rename(&target.final_path, &target.part_path)?;
    }
    let part = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&target.part_path)
        .with_context(|| format!("cannot open {}", target.part_path.display()))?;
    let verified = verified_chunks(target)?;
    part.set_len(target.file.size)?;
    let todo: Vec<usize> = verified
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .map(|(i, _)| i)
        .collect();
    let remaining: u64 = todo
        .iter()
        .map(|i| {
            let (s, e) = chunk_bounds(&target.file, target.chunk_size, *i);
            e - s
        })
        .sum();
    target.remaining.store(remaining, Ordering::Relaxed);
    *target.state.try_lock().expect("no task runs yet") = PartState {
        sha256: target.file.sha256.clone(),
        chunk_size: target.chunk_size,
        verified,
    };
    Ok(Some(todo))
}

/// Moves a file whose every chunk was verified into place, once the chunks
/// an earlier run verified still hold what they did.
///
/// The file is not hashed whole again: every chunk was checked against the
/// chunk hashes of the signed manifest as it arrived (or, carried from an
/// earlier run, just now), and the publisher took the chunk hashes and the
/// file's SHA-256 in one pass over the same bytes, so the file is the one
/// the manifest's SHA-256 names. (`sha256sum -c SHA256SUMS` in the release
/// folder checks that independently.)
fn finish(target: &Target) -> Result<(), DownloadError> {
    let carried = std::mem::take(&mut *target.carried.lock().unwrap_or_else(|e| e.into_inner()));
    for index in carried {
        let (start, end) = chunk_bounds(&target.file, target.chunk_size, index);
        let hash = sha256_of_range(&target.part_path, start, end - start)
            .map_err(|e| DownloadError::Disk(format!("{}: {e}", target.part_path.display())))?;
        if hash != target.file.chunks[index] {
            let _ = std::fs::remove_file(&target.state_path);
            return Err(DownloadError::Checksum(format!(
                "chunk {index} of {} changed on disk since an earlier run verified it; run the command again to check the file chunk by chunk",
                target.file.name
            )));
        }
    }
    let disk = |e: std::io::Error| DownloadError::Disk(format!("{}: {e}", target.final_path.display()));
    std::fs::File::open(&target.part_path)
        .and_then(|f| f.sync_all())
        .map_err(disk)?;
    std::fs::rename(&target.part_path, &target.final_path).map_err(disk)?;
    if let Some(dir) = target.final_path.parent() {
        sync_dir(dir).map_err(disk)?;
    }
    let _ = std::fs::remove_file(&target.state_path);
    Ok(())
}

/// The key that checks each `model.sig`: the one pinned, which the portal
/// must send too (a portal that stops signing, or signs with another key, is
/// refused), or else the one the portal sends, if any.
fn model_signing_key(pinned: Option<&str>, served: Option<&str>) -> Result<Option<String>, DownloadError> {
    let same = |a: &str, b: &str| a.replace("\r\n", "\n").trim() == b.replace("\r\n", "\n").trim();
    match (pinned, served) {
        (Some(pinned), Some(served)) if same(pinned, served) => Ok(Some(pinned.to_owned())),
        (Some(_), Some(_)) => Err(DownloadError::Manifest(
            "the portal's model-signing key is not the one given with --model-signing-key".into(),
        )),
        (Some(_), None) => Err(DownloadError::Manifest(
            "the portal sends no model-signing key, but --model-signing-key expects releases signed with one"
                .into(),
        )),
        (None, served) => Ok(served.map(str::to_owned)),
    }
}

/// Chooses the TLS implementation for outgoing HTTPS, once per process.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Downloads and verifies every file the grant covers (or those matching
/// `include`) into `dir/RELEASE/NAME`.
pub async fn download(opts: Options) -> anyhow::Result<Summary> {
    install_crypto();
    let http = reqwest::Client::builder()
        .user_agent(concat!("weightgate-download/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .build()?;
    let manifest_url = manifest_url(&opts.url);
    let grant = fetch_grant_manifest(&http, &manifest_url).await?;
    let public_key = match &opts.public_key {
        Some(key) => key.clone(),
        None => {
            let response = get_with_retries(&http, &grant.public_key_url, None).await?;
            let key = response
                .text()
                .await
                .map_err(|e| DownloadError::Network(network_error(e)))?;
            eprintln!(
                "using the portal's publishing key from {} (pass --public-key to pin the key you expect)",
                grant.public_key_url
            );
            key
        }
    };
    let releases = verified_releases(&grant, &public_key)?;
    let model_signing_key = model_signing_key(
        opts.model_signing_key.as_deref(),
        grant.model_signing_key.as_deref(),
    )?;
    // What each release's model.sig must list: every file of its manifest.
    let release_files: HashMap<String, Vec<(String, String)>> = releases
        .iter()
        .map(|(m, _)| {
            let files = m.files.iter().map(|f| (f.name.clone(), f.sha256.clone()));
            (m.release.clone(), files.collect())
        })
        .collect();

    let patterns: Vec<WildMatch> = opts.include.iter().map(|p| WildMatch::new(p)).collect();
    let mut targets = Vec::new();
    let mut urls = HashMap::new();
    for (manifest, release_urls) in releases {
        for file in manifest.files {
            if !patterns.is_empty() && !patterns.iter().any(|p| p.matches(&file.name)) {
                continue;
            }
            let Some(url) = release_urls.get(&file.name) else {
                return Err(DownloadError::Manifest(format!(
                    "the grant lists no link for {}/{}, which its release's manifest names",
                    manifest.release, file.name
                ))
                .into());
            };
            urls.insert((manifest.release.clone(), file.name.clone()), url.clone());
            targets.push(plan_target(
                &opts.dir,
                &manifest.release,
                file,
                manifest.chunk_size,
            ));
        }
    }
    if targets.is_empty() {
        anyhow::bail!("nothing to download: no file matches");
    }
    // A file named like another's partial or state file would overwrite it.
    let finals: std::collections::HashSet<&Path> = targets.iter().map(|t| t.final_path.as_path()).collect();
    for t in &targets {
        if let Some(clash) = [&t.part_path, &t.state_path]
            .into_iter()
            .find(|p| finals.contains(p.as_path()))
        {
            return Err(DownloadError::Manifest(format!(
                "{} is also the name of {}'s partial download; the release cannot be downloaded into one directory",
                clash.display(),
                t.file.name
            ))
            .into());
        }
    }
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("cannot create {}", opts.dir.display()))?;

    let mut summary = Summary {
        files: targets.len(),
        ..Summary::default()
    };
    let mut work = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        match prepare(target).map_err(|e| DownloadError::Disk(format!("{e:#}")))? {
            None => summary.already_complete += 1,
            Some(chunks) => work.push((i, chunks)),
        }
    }
    let needed: u64 = targets.iter().map(|t| t.remaining.load(Ordering::Relaxed)).sum();
    let free = fs4::available_space(&opts.dir).unwrap_or(u64::MAX);
    if needed > free {
        return Err(DownloadError::Disk(format!(
            "{needed} more bytes are needed but {} has only {free} free",
            opts.dir.display()
        ))
        .into());
    }

    let bars = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let bar = bars.add(ProgressBar::new(needed));
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let limiter = opts.limit_rate.and_then(|rate| {
        let kib = u32::try_from((rate / 1024).max(1)).unwrap_or(u32::MAX);
        let per_second = NonZeroU32::new(kib)?;
        let burst = NonZeroU32::new(kib.max(64))?;
        Some(RateLimiter::direct(
            Quota::per_second(per_second).allow_burst(burst),
        ))
    });
    let session = Arc::new(Session {
        http,
        manifest_url,
        links: Mutex::new(Links { urls, generation: 0 }),
        jobs: Semaphore::new(opts.jobs.max(1)),
        limiter,
        fetched: AtomicU64::new(0),
        chunks: AtomicU64::new(0),
        refetched: AtomicU64::new(0),
        bar,
    });
    let targets = Arc::new(targets);

    let mut files = tokio::task::JoinSet::new();
    for (i, chunks) in work {
        let session = session.clone();
        let targets = targets.clone();
        let public_key = public_key.clone();
        let progress = opts.progress;
        let jobs = opts.jobs.max(1);
        files.spawn(async move {
            let target = &targets[i];
            let mut fetches = futures_util::stream::iter(chunks.into_iter().map(|index| {
                let session = session.clone();
                let public_key = public_key.clone();
                async move {
                    let _permit = session.jobs.acquire().await.expect("the semaphore stays open");
                    session.fetch_chunk(target, index, &public_key).await
                }
            }))
            .buffer_unordered(jobs);
            while let Some(done) = fetches.next().await {
                done?;
            }
            let whole = targets.clone();
            tokio::task::spawn_blocking(move || finish(&whole[i]))
                .await
                .map_err(|e| DownloadError::Disk(format!("checking {} failed: {e}", target.file.name)))??;
            if !progress {
                eprintln!("verified {}/{}", target.key.0, target.file.name);
            }
            Ok::<_, DownloadError>(())
        });
    }
    while let Some(done) = files.join_next().await {
        if let Err(e) = done? {
            files.abort_all();
            return Err(e.into());
        }
    }
    session.bar.finish_and_clear();

    // Each release's signed checksums, manifest and model signature beside
    // its files, so that `sha256sum -c SHA256SUMS`, `minisign -Vm SHA256SUMS`
    // and `model_signing verify` work there.
    let base = session.manifest_url.trim_end_matches("/manifest.json").to_owned();
    for release in &grant.releases {
        if !targets.iter().any(|t| t.key.0 == release.name) {
            continue;
        }
        let text = |name: &'static str| {
            let url = format!("{base}/releases/{}/{name}", release.name);
            let http = &session.http;
            async move {
                get_with_retries(http, &url, None)
                    .await?
                    .text()
                    .await
                    .map_err(|e| DownloadError::Network(format!("cannot read {name}: {}", network_error(e))))
            }
        };
        let sums = text("SHA256SUMS").await?;
        let sums_sig = text("SHA256SUMS.minisig").await?;
        manifests::verify(&public_key, sums.as_bytes(), &sums_sig).map_err(|e| {
            DownloadError::Manifest(format!(
                "the SHA256SUMS of release {} is not signed by the portal's publishing key: {e:#}",
                release.name
            ))
        })?;
        // The OpenSSF model signature, for `model_signing verify`: it must
        // vouch for exactly the files of the signed manifest.
        let model_sig = match &model_signing_key {
            Some(key) => {
                let bundle = text("model.sig").await?;
                let mut signed = model_signing::signed_files(&bundle, key).map_err(|e| {
                    DownloadError::Manifest(format!("the model.sig of release {}: {e:#}", release.name))
                })?;
                signed.sort();
                let mut expected = release_files.get(&release.name).cloned().unwrap_or_default();
                expected.sort();
                if signed != expected {
                    return Err(DownloadError::Manifest(format!(
                        "the model.sig of release {} does not list the files of its signed manifest",
                        release.name
                    ))
                    .into());
                }
                Some(bundle)
            }
            None => None,
        };
        let release_dir = opts.dir.join(&release.name);
        for (name, body) in [
            ("SHA256SUMS", sums.as_str()),
            ("SHA256SUMS.minisig", sums_sig.as_str()),
            ("manifest.json", release.manifest.as_str()),
            ("manifest.json.minisig", release.manifest_sig.as_str()),
            ("model.sig", model_sig.as_deref().unwrap_or_default()),
        ] {
            if body.is_empty() {
                continue;
            }
            let path = release_dir.join(name);
            std::fs::write(&path, body)
                .map_err(|e| DownloadError::Disk(format!("cannot write {}: {e}", path.display())))?;
        }
        summary.release_dirs.push(release_dir);
    }

    summary.bytes_fetched = session.fetched.load(Ordering::Relaxed);
    summary.chunks_fetched = session.chunks.load(Ordering::Relaxed);
    summary.chunks_refetched = session.refetched.load(Ordering::Relaxed);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_page_url_leads_to_its_manifest() {
        assert_eq!(
            manifest_url("https://p.org/access/abc"),
            "https://p.org/access/abc/manifest.json"
        );
        assert_eq!(
            manifest_url("https://p.org/access/abc/"),
            "https://p.org/access/abc/manifest.json"
        );
        assert_eq!(
            manifest_url("https://p.org/access/abc/manifest.json"),
            "https://p.org/access/abc/manifest.json"
        );
    }

    #[test]
    fn chunks_tile_the_file() {
        let file = ManifestFile {
            name: "f".into(),
            size: 10,
            sha256: String::new(),
            chunks: vec![String::new(); 3],
        };
        assert_eq!(chunk_bounds(&file, 4, 0), (0, 4));
        assert_eq!(chunk_bounds(&file, 4, 2), (8, 10));
    }

    #[test]
    fn the_last_chunk_of_a_huge_file_ends_at_its_end() {
        let chunk_size = (1 << 63) + 1;
        let file = ManifestFile {
            name: "f".into(),
            size: u64::MAX,
            sha256: String::new(),
            chunks: vec![String::new(); 2],
        };
        assert_eq!(chunk_bounds(&file, chunk_size, 0), (0, chunk_size));
        assert_eq!(chunk_bounds(&file, chunk_size, 1), (chunk_size, u64::MAX));
    }
}
