//! Objects in an S3 bucket: AWS S3 or any S3-compatible store (Garage, Ceph,
//! R2, MinIO...). Several portal replicas share one bucket.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use aws_sdk_s3::{
    Client,
    config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation},
    presigning::PresigningConfig,
    primitives::ByteStream as SdkByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use aws_smithy_http_client::tls;
use futures_util::StreamExt;

use bytes::Bytes;
use sha2::Digest;

use super::{BucketObject, ByteStream, Changed, ChunkCheck, Expected, Locked, ObjectStore, Sent};
use crate::config::Config;

/// Files up to this size go up in one PutObject; larger ones as a multipart
/// upload of parts this size (or larger, see [`part_size_for`]).
const PART_SIZE: u64 = 16 * 1024 * 1024;
/// S3 accepts at most this many parts in one multipart upload...
const MAX_PARTS: u64 = 10_000;
/// ...each at most this large.
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Parts uploaded at once, at most: bounds the connections an upload takes.
const PARTS_IN_FLIGHT: u64 = 4;
/// Bytes of parts held at once, at most. Each part is read into memory,
/// checked against its chunk hashes and sent from there, so that what the
/// store receives is exactly what was checked.
const PARTS_MEMORY: u64 = 128 * 1024 * 1024;

/// The size of each part (the last may be smaller) when uploading `size`
/// bytes hashed in chunks of `chunk_size`: at least [`PART_SIZE`], a whole
/// number of chunks (so that each part is checked against them), and large
/// enough that no more than [`MAX_PARTS`] parts are needed.
fn part_size_for(size: u64, chunk_size: u64) -> anyhow::Result<u64> {
    let least = PART_SIZE.max(size.div_ceil(MAX_PARTS));
    let part_size = least.div_ceil(chunk_size) * chunk_size;
    anyhow::ensure!(
        part_size <= MAX_PART_SIZE,
        "a file of {size} bytes in chunks of {chunk_size} bytes needs parts larger than S3's 5 GiB: publish it with a smaller chunk size"
    );
    Ok(part_size)
}

/// A multipart upload under way, kept in `DATA_DIR/uploads/` as one line of
/// JSON for the upload and one per part the store has taken (appended as
/// each arrives), so that a publish that stopped (killed, or its network
/// gone) resumes it instead of sending again the parts the store holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Upload {
    object_key: String,
    upload_id: String,
    size: u64,
    part_size: u64,
    /// For a copy, the object copied (`BUCKET/KEY ETAG`): a resumed copy
    /// must be of the same version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

/// Where the bytes of a multipart upload's parts come from.
#[derive(Clone, Copy)]
enum PartsFrom<'a> {
    /// A local file, each part read and checked against its chunk hashes.
    File { path: &'a Path, expected: &'a Expected },
    /// An object of a bucket of the same service, each part copied by the
    /// store from exactly the version listed.
    Object(&'a BucketObject),
}

impl PartsFrom<'_> {
    /// What the parts are taken from, for messages.
    fn describe(&self) -> String {
        match self {
            Self::File { path, .. } => path.display().to_string(),
            Self::Object(object) => object.to_string(),
        }
    }

    /// What a record of an upload from here says it is from.
    fn identity(&self) -> Option<String> {
        match self {
            Self::File { .. } => None,
            Self::Object(object) => Some(format!("{}/{} {}", object.bucket, object.key, object.e_tag)),
        }
    }
}

/// The `x-amz-copy-source` of `object`: its bucket and key, URL-encoded.
fn copy_source(object: &BucketObject) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    format!("{}/{}", object.bucket, utf8_percent_encode(&object.key, KEEP))
}

/// The body of a GetObject as the store's byte stream, passed on as it arrives.
fn streamed(body: SdkByteStream) -> ByteStream {
    Box::pin(futures_util::stream::try_unfold(body, |mut body| async move {
        match body.next().await {
            Some(chunk) => Ok(Some((chunk.map_err(std::io::Error::other)?, body))),
            None => Ok(None),
        }
    }))
}

/// Whether an S3 error is a failed precondition: the object is not the
/// version asked for.
fn precondition_failed<E>(
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    err.raw_response().is_some_and(|r| r.status().as_u16() == 412)
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoredPart {
    part: i32,
    e_tag: String,
}

/// The upload recorded at `path`, with the parts recorded for it; a torn
/// last line (the publish killed while writing it) is left out.
fn read_upload(path: &Path) -> Option<(Upload, std::collections::BTreeMap<i32, String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let upload: Upload = serde_json::from_str(lines.next()?).ok()?;
    let parts = lines
        .filter_map(|line| serde_json::from_str::<StoredPart>(line).ok())
        .map(|p| (p.part, p.e_tag))
        .collect();
    Some((upload, parts))
}

/// Appends one line to the record of an upload.
fn record(path: &Path, line: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut text = serde_json::to_string(line)?;
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The length of part `number` (from 1) of an upload; 0 for none.
fn part_length(upload: &Upload, number: i32) -> u64 {
    let offset = u64::try_from(number).unwrap_or(0).saturating_sub(1) * upload.part_size;
    upload.part_size.min(upload.size.saturating_sub(offset))
}

/// Holds an exclusive lock on the file at `path` (made if absent) until the
/// returned file is dropped, waiting on a blocking thread while another
/// process holds it.
async fn lock(path: PathBuf) -> anyhow::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.lock()
            .with_context(|| format!("cannot lock {}", path.display()))?;
        Ok(file)
    })
    .await?
}

/// Reads `length` bytes of `source` at `offset` and checks them against the
/// chunk hashes they cover.
async fn read_checked(source: &Path, offset: u64, length: u64, expected: &Expected) -> anyhow::Result<Bytes> {
    let (path, expected) = (source.to_owned(), expected.clone());
    // Read and hashed on a blocking thread: a part is megabytes of work.
    tokio::task::spawn_blocking(move || -> anyhow::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let changed = || Changed(path.display().to_string());
        let mut buf = vec![0; usize::try_from(length)?];
        let read = std::fs::File::open(&path).and_then(|f| f.read_exact_at(&mut buf, offset));
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(changed().into()),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot read {}", path.display()))),
        }
        let mut check = ChunkCheck::at(&expected, offset);
        if !check.update(&buf) || !check.finish() {
            return Err(changed().into());
        }
        Ok(Bytes::from(buf))
    })
    .await?
}

/// The Content-MD5 header of `bytes`: the store refuses a body that does not
/// match it (AWS S3 and most S3-compatible stores).
fn content_md5(bytes: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

/// A bucket, with every object key under a prefix.
pub struct S3Bucket {
    client: Client,
    bucket: String,
    /// Empty, or ending in `/`.
    prefix: String,
    endpoint: Option<String>,
    /// Whether the bucket has Object Lock turned on, once asked.
    lockable: std::sync::OnceLock<bool>,
    /// Where multipart uploads under way are recorded (see [`Upload`]).
    uploads: PathBuf,
}

impl fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Bucket")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Access key id, secret and session token: from the portal's settings, or
/// else from the standard AWS environment variables (read through `env`).
fn credentials(config: &Config, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Credentials> {
    let (id, secret, token) = match (&config.s3_access_key_id, &config.s3_secret_access_key) {
        (Some(id), Some(secret)) => (id.clone(), secret.clone(), None),
        (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => (id, secret, env("AWS_SESSION_TOKEN")),
            _ => anyhow::bail!(
                "no S3 credentials: set WEIGHTGATE_S3_ACCESS_KEY_ID and WEIGHTGATE_S3_SECRET_ACCESS_KEY \
                 (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ),
        },
        _ => anyhow::bail!(
            "set both WEIGHTGATE_S3_ACCESS_KEY_ID and WEIGHTGATE_S3_SECRET_ACCESS_KEY, or neither"
        ),
    };
    Ok(Credentials::new(id, secret, token, None, "weightgate"))
}

impl S3Bucket {
    /// A client for `bucket` as the configuration describes it. Nothing is
    /// sent until the first request.
    pub(crate) fn new(config: &Config, bucket: String, prefix: String) -> anyhow::Result<Self> {
        let credentials = credentials(config, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http_client)
            .region(Region::new(config.s3_region.clone()))
            .credentials_provider(credentials)
            .force_path_style(config.s3_path_style)
            // Stores other than AWS reject or mishandle the checksums the SDK
            // would otherwise add to every upload and demand on every download.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &config.s3_endpoint {
            anyhow::ensure!(
                endpoint.starts_with("https://") || endpoint.starts_with("http://"),
                "the S3 endpoint {endpoint:?} must be an http:// or https:// URL"
            );
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket,
            prefix,
            endpoint: config.s3_endpoint.clone(),
            lockable: std::sync::OnceLock::new(),
            uploads: config.data_dir.join("uploads"),
        })
    }

    /// The bucket's key for a store key.
    fn object_key(&self, key: &str) -> anyhow::Result<String> {
        let plain = !key.is_empty() && key.split('/').all(|part| !matches!(part, "" | "." | ".."));
        anyhow::ensure!(plain, "invalid object key {key:?}");
        Ok(format!("{}{key}", self.prefix))
    }

    /// Whether the bucket has Object Lock turned on, asked once.
    async fn lockable(&self) -> anyhow::Result<bool> {
        if let Some(known) = self.lockable.get() {
            return Ok(*known);
        }
        let answer = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        let lockable = match answer {
            Ok(out) => out
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                .is_some_and(|e| *e == aws_sdk_s3::types::ObjectLockEnabled::Enabled),
            // A bucket without a lock configuration, or a store that does not
            // know the request: no locks.
            Err(err)
                if err.as_service_error().is_some_and(|e| {
                    use aws_sdk_s3::error::ProvideErrorMetadata;
                    matches!(
                        e.code(),
                        Some("ObjectLockConfigurationNotFoundError" | "NotImplemented" | "InvalidRequest")
                    )
                }) =>
            {
                false
            }
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("cannot ask {} for its object lock", self.bucket))
                    .context(super::StoreUnavailable));
            }
        };
        Ok(*self.lockable.get_or_init(|| lockable))
    }

    /// `s3://bucket/key`, for error messages.
    fn describe(&self, object_key: &str) -> String {
        format!("s3://{}/{object_key}", self.bucket)
    }

    /// A file of one part: read, checked and sent in one PutObject.
    async fn put_whole(
        &self,
        object_key: &str,
        source: &Path,
        expected: &Expected,
        sent: &Sent,
    ) -> anyhow::Result<()> {
        let bytes = read_checked(source, 0, expected.size, expected).await?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(object_key)
            .content_length(i64::try_from(bytes.len())?)
            .content_md5(content_md5(&bytes))
            .body(SdkByteStream::from(bytes))
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot upload {} to {}",
                    source.display(),
                    self.describe(object_key)
                )
            })?;
        sent(expected.size);
        Ok(())
    }

    /// Where the upload of `object_key` is recorded.
    fn upload_record(&self, object_key: &str) -> PathBuf {
        let name = hex::encode(&sha2::Sha256::digest(format!("{}/{object_key}", self.bucket))[..16]);
        self.uploads.join(format!("{name}.jsonl"))
    }

    /// The recorded upload of `object_key` in parts of `part_size`, if the
    /// store still has it, with the parts it holds as recorded; `None` when
    /// there is none to resume.
    async fn resumable(
        &self,
        record: &Path,
        wanted: &Upload,
        part_length: impl Fn(i32) -> Option<u64>,
    ) -> anyhow::Result<Option<(Upload, Vec<CompletedPart>)>> {
        let Some((upload, recorded)) = read_upload(record) else {
            return Ok(None);
        };
        let same = upload.object_key == wanted.object_key
            && upload.size == wanted.size
            && upload.part_size == wanted.part_size
            && upload.source == wanted.source;
        if !same {
            return Ok(None);
        }
        // What the store holds of it: parts it lists with the recorded ETag
        // (where it gives one) and the size the part must have.
        let mut listed = std::collections::HashMap::new();
        let mut marker: Option<String> = None;
        loop {
            let page = match self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(&upload.object_key)
                .upload_id(&upload.upload_id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
            {
                Ok(page) => page,
                Err(err) if err.as_service_error().and_then(|e| e.meta().code()) == Some("NoSuchUpload") => {
                    return Ok(None);
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!(
                            "cannot list the parts stored of {} to resume its upload (to start over instead, delete {})",
                            self.describe(&upload.object_key),
                            record.display()
                        ))
                        .context(super::StoreUnavailable));
                }
            };
            for part in page.parts() {
                if let (Some(number), Some(size)) = (part.part_number(), part.size()) {
                    listed.insert(
                        number,
                        (size, part.e_tag().map(|t| t.trim_matches('"').to_owned())),
                    );
                }
            }
            match page.next_part_number_marker() {
                Some(next) if page.is_truncated() == Some(true) => marker = Some(next.to_owned()),
                _ => break,
            }
        }
        let held = recorded
            .into_iter()
            .filter(|(number, e_tag)| match listed.get(number) {
                Some((size, listed_tag)) => {
                    part_length(*number).and_then(|l| i64::try_from(l).ok()) == Some(*size)
                        && listed_tag.as_deref().is_none_or(|t| t == e_tag.trim_matches('"'))
                }
                None => false,
            })
            .map(|(number, e_tag)| CompletedPart::builder().part_number(number).e_tag(e_tag).build())
            .collect();
        Ok(Some((upload, held)))
    }

    /// Uploads the parts of `source` the store does not hold yet, a few at a
    /// time, recording each as it is taken, and completes the upload.
    async fn put_parts(
        &self,
        upload: &Upload,
        record_path: &Path,
        mut held: Vec<CompletedPart>,
        from: PartsFrom<'_>,
        sent: &Sent,
    ) -> anyhow::Result<()> {
        let Upload {
            object_key,
            upload_id,
            size,
            part_size,
            ..
        } = upload;
        let (size, part_size) = (*size, *part_size);
        let count = size.div_ceil(part_size);
        let have: std::collections::HashSet<i32> =
            held.iter().filter_map(CompletedPart::part_number).collect();
        sent(have.iter().map(|number| part_length(upload, *number)).sum());
        let in_flight = (PARTS_MEMORY / part_size).clamp(1, PARTS_IN_FLIGHT);
        let missing = (1..=count)
            .filter_map(|number| i32::try_from(number).ok())
            .filter(|number| !have.contains(number));
        // After a part fails no new one starts, but those under way finish
        // and are recorded, so that a resumed upload need not send them.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let stop = &stop;
        let results: Vec<anyhow::Result<Option<CompletedPart>>> = futures_util::stream::iter(missing)
            .map(|number| async move {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(None);
                }
                let put = self.put_part(upload, record_path, number, from).await;
                match &put {
                    Ok(_) => sent(part_length(upload, number)),
                    Err(_) => stop.store(true, std::sync::atomic::Ordering::SeqCst),
                }
                put.map(Some)
            })
            .buffer_unordered(usize::try_from(in_flight)?)
            .collect()
            .await;
        let mut failures: Vec<anyhow::Error> = Vec::new();
        for result in results {
            match result {
                Ok(Some(part)) => held.push(part),
                Ok(None) => {}
                Err(e) => failures.push(e),
            }
        }
        // A changed file first: it decides that the upload is given up.
        failures.sort_by_key(|e| !e.is::<Changed>());
        if let Some(failure) = failures.into_iter().next() {
            return Err(failure);
        }
        held.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(held)).build())
            .send()
            .await
            .with_context(|| format!("cannot complete the upload to {}", self.describe(object_key)))?;
        Ok(())
    }

    /// Reads, checks and sends one part (or has the store copy it), and
    /// records it once the store has taken it.
    async fn put_part(
        &self,
        upload: &Upload,
        record_path: &Path,
        number: i32,
        from: PartsFrom<'_>,
    ) -> anyhow::Result<CompletedPart> {
        let Upload {
            object_key,
            upload_id,
            size,
            part_size,
            ..
        } = upload;
        let offset = (u64::try_from(number)? - 1) * part_size;
        let length = (*part_size).min(size - offset);
        let failed = || {
            let verb = match from {
                PartsFrom::File { .. } => "upload",
                PartsFrom::Object(_) => "copy",
            };
            format!(
                "cannot {verb} part {number} of {} to {}",
                from.describe(),
                self.describe(object_key)
            )
        };
        let e_tag = match from {
            PartsFrom::File { path, expected } => {
                let bytes = read_checked(path, offset, length, expected).await?;
                self.client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(object_key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(i64::try_from(length)?)
                    .content_md5(content_md5(&bytes))
                    .body(SdkByteStream::from(bytes))
                    .send()
                    .await
                    .with_context(failed)?
                    .e_tag()
                    .map(str::to_owned)
            }
            PartsFrom::Object(object) => {
                let copied = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(object_key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(copy_source(object))
                    .copy_source_range(format!("bytes={offset}-{}", offset + length - 1))
                    .copy_source_if_match(&object.e_tag)
                    .send()
                    .await;
                match copied {
                    Ok(copied) => copied
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_owned),
                    Err(err) if precondition_failed(&err) => return Err(Changed(from.describe()).into()),
                    Err(err) => return Err(anyhow::Error::new(err).context(failed())),
                }
            }
        };
        let e_tag = e_tag.with_context(|| format!("the store returned no ETag for part {number}"))?;
        let e_tag = e_tag.as_str();
        record(
            record_path,
            &StoredPart {
                part: number,
                e_tag: e_tag.to_owned(),
            },
        )?;
        Ok(CompletedPart::builder().part_number(number).e_tag(e_tag).build())
    }

    /// Stores `size` bytes under `key` (`object_key` in the bucket) as a
    /// multipart upload of parts of `part_size` taken `from` a file or an
    /// object. One that stops (the store or the network gone, the publish
    /// killed) is kept with the parts the store took, and the next store of
    /// the same bytes resumes it; one whose source changed is given up.
    async fn multipart(
        &self,
        key: &str,
        object_key: String,
        size: u64,
        part_size: u64,
        from: PartsFrom<'_>,
        sent: &Sent,
    ) -> anyhow::Result<()> {
        let wanted = Upload {
            object_key: object_key.clone(),
            upload_id: String::new(),
            size,
            part_size,
            source: from.identity(),
        };
        let record_path = self.upload_record(&object_key);
        // One publish at a time stores a given file (two models may share
        // it): the next waits, then finds it stored.
        tokio::fs::create_dir_all(&self.uploads)
            .await
            .with_context(|| format!("cannot create {}", self.uploads.display()))?;
        let _lock = lock(record_path.with_extension("lock")).await?;
        if self.size(key).await? == Some(size) {
            sent(size);
            return Ok(());
        }
        let part_length = |number: i32| {
            let offset = (u64::try_from(number).ok()?.checked_sub(1)?) * part_size;
            (offset < size).then(|| part_size.min(size - offset))
        };
        let (upload, held) = match self.resumable(&record_path, &wanted, part_length).await? {
            Some((upload, held)) => {
                tracing::info!(
                    object = %self.describe(&object_key),
                    parts_held = held.len(),
                    "resuming a multipart upload"
                );
                (upload, held)
            }
            None => {
                let started = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&object_key)
                    .send()
                    .await
                    .with_context(|| format!("cannot start an upload to {}", self.describe(&object_key)))?;
                let upload = Upload {
                    upload_id: started
                        .upload_id()
                        .context("the store started a multipart upload without an id")?
                        .to_owned(),
                    ..wanted
                };
                // An upload recorded before that cannot be resumed is given
                // up, so that its parts do not linger in the bucket.
                if let Some((stale, _)) = read_upload(&record_path) {
                    self.abort(&stale).await;
                }
                let _ = tokio::fs::remove_file(&record_path).await;
                record(&record_path, &upload)?;
                (upload, Vec::new())
            }
        };
        match self.put_parts(&upload, &record_path, held, from, sent).await {
            Ok(()) => {
                let _ = tokio::fs::remove_file(&record_path).await;
                // Still held: a publish waiting on it finds the file stored.
                let _ = tokio::fs::remove_file(record_path.with_extension("lock")).await;
                Ok(())
            }
            Err(e) if e.is::<Changed>() => {
                self.abort(&upload).await;
                let _ = tokio::fs::remove_file(&record_path).await;
                Err(e)
            }
            Err(e) => {
                let stored = read_upload(&record_path).map_or(0, |(_, parts)| parts.len());
                Err(e.context(format!(
                    "the upload stopped with {stored} of {} parts stored; publishing again resumes it",
                    size.div_ceil(part_size)
                )))
            }
        }
    }

    /// Every object under the bucket's prefix, with its key below the
    /// prefix, in order.
    pub(crate) async fn objects(&self) -> anyhow::Result<Vec<(String, BucketObject)>> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                anyhow::Error::new(err)
                    .context(format!("cannot list {}", self.describe(&self.prefix)))
                    .context(super::StoreUnavailable)
            })?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let size = object
                    .size()
                    .and_then(|s| u64::try_from(s).ok())
                    .with_context(|| format!("the store listed {} without its size", self.describe(key)))?;
                let e_tag = object
                    .e_tag()
                    .with_context(|| format!("the store listed {} without its ETag", self.describe(key)))?;
                objects.push((
                    key.strip_prefix(&self.prefix).unwrap_or(key).to_owned(),
                    BucketObject {
                        bucket: self.bucket.clone(),
                        key: key.to_owned(),
                        size,
                        e_tag: e_tag.to_owned(),
                    },
                ));
            }
        }
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(objects)
    }

    /// Streams the whole of `object`, of exactly the version listed: refused
    /// with [`Changed`] when the bucket holds another by now.
    pub(crate) async fn read_object(&self, object: &BucketObject) -> anyhow::Result<ByteStream> {
        let answer = self
            .client
            .get_object()
            .bucket(&object.bucket)
            .key(&object.key)
            .if_match(&object.e_tag)
            .send()
            .await;
        let read = match answer {
            Ok(read) => read,
            Err(err) if precondition_failed(&err) => {
                return Err(Changed(self.describe(&object.key)).into());
            }
            Err(err) => {
                return Err(
                    anyhow::Error::new(err).context(format!("cannot read {}", self.describe(&object.key)))
                );
            }
        };
        Ok(streamed(read.body))
    }

    /// Gives up an upload: the store drops its parts.
    async fn abort(&self, upload: &Upload) {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&upload.object_key)
            .upload_id(&upload.upload_id)
            .send()
            .await;
        if let Err(err) = aborted {
            tracing::warn!(
                object = %self.describe(&upload.object_key),
                upload_id = upload.upload_id,
                error = %format!("{:#}", anyhow::Error::new(err)),
                "cannot abort a multipart upload; its parts stay until a lifecycle rule removes them"
            );
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Bucket {
    /// Small files go up in one PutObject, larger ones as a multipart upload
    /// whose parts are each checked against the file's chunk hashes before
    /// they are sent and by the store against their Content-MD5 when they
    /// arrive. S3 makes either visible only once it is whole.
    ///
    /// A multipart upload that fails (the store or the network gone, the
    /// publish killed) is kept with the parts the store took, and the next
    /// put of the same file resumes it, sending only the parts still
    /// missing. One whose file changed is given up.
    async fn put_file(
        &self,
        key: &str,
        source: &Path,
        expected: &Expected,
        sent: &Sent,
    ) -> anyhow::Result<()> {
        let object_key = self.object_key(key)?;
        let size = tokio::fs::metadata(source)
            .await
            .with_context(|| format!("cannot read {}", source.display()))?
            .len();
        if size != expected.size {
            return Err(Changed(source.display().to_string()).into());
        }
        if size <= PART_SIZE {
            return self.put_whole(&object_key, source, expected, sent).await;
        }
        let part_size = part_size_for(size, expected.chunk_size)?;
        let from = PartsFrom::File {
            path: source,
            expected,
        };
        self.multipart(key, object_key, size, part_size, from, sent).await
    }

    /// Has the store copy `object` under `key`: in one CopyObject when it is
    /// small, else as a multipart upload of parts the store copies (S3 copies
    /// at most 5 GiB at once), resumed like an upload. Every request names
    /// the version listed (`x-amz-copy-source-if-match`), so an object
    /// replaced since it was hashed is never copied.
    async fn copy_in(
        &self,
        key: &str,
        object: &BucketObject,
        expected: &Expected,
        sent: &Sent,
    ) -> anyhow::Result<()> {
        let object_key = self.object_key(key)?;
        if object.size != expected.size {
            return Err(Changed(object.to_string()).into());
        }
        if object.size <= PART_SIZE {
            let copied = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(&object_key)
                .copy_source(copy_source(object))
                .copy_source_if_match(&object.e_tag)
                .send()
                .await;
            match copied {
                Ok(_) => {}
                Err(err) if precondition_failed(&err) => {
                    return Err(Changed(object.to_string()).into());
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("cannot copy {object} to {}", self.describe(&object_key))));
                }
            }
            sent(object.size);
            return Ok(());
        }
        let part_size = part_size_for(object.size, expected.chunk_size)?;
        self.multipart(
            key,
            object_key,
            object.size,
            part_size,
            PartsFrom::Object(object),
            sent,
        )
        .await
    }

    fn cannot_copy_in(&self) -> Option<String> {
        None
    }

    async fn size(&self, key: &str) -> anyhow::Result<Option<u64>> {
        let object_key = self.object_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(head) => {
                let length = head
                    .content_length()
                    .with_context(|| format!("the store gave no size for {}", self.describe(&object_key)))?;
                Ok(Some(u64::try_from(length)?))
            }
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(err) => Err(anyhow::Error::new(err)
                .context(format!("cannot read the size of {}", self.describe(&object_key)))
                .context(super::StoreUnavailable)),
        }
    }

    /// Streams the body of a ranged GetObject as it arrives.
    async fn get_range(&self, key: &str, start: u64, end: u64) -> anyhow::Result<ByteStream> {
        let object_key = self.object_key(key)?;
        if start >= end {
            // S3 has no empty range; still refuse a missing object, as a directory does.
            self.size(key)
                .await?
                .with_context(|| format!("no object {}", self.describe(&object_key)))?;
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|err| {
                anyhow::Error::new(err)
                    .context(format!("cannot read {}", self.describe(&object_key)))
                    .context(super::StoreUnavailable)
            })?;
        let length = object.content_length().and_then(|l| u64::try_from(l).ok());
        anyhow::ensure!(
            length == Some(end - start),
            "the store answered a request for {} bytes of {} with {length:?} bytes",
            end - start,
            self.describe(&object_key)
        );
        Ok(streamed(object.body))
    }

    /// One PutObject that fails if the key is taken (`If-None-Match: *`),
    /// in compliance mode until `retain_until` when the bucket has Object
    /// Lock. S3 wants a checksum with a locked object; SHA-256 is sent.
    async fn put_record(
        &self,
        key: &str,
        bytes: Vec<u8>,
        retain_until: Option<std::time::SystemTime>,
    ) -> anyhow::Result<Locked> {
        use base64::Engine;
        use sha2::Digest;
        let object_key = self.object_key(key)?;
        let lock = match retain_until {
            Some(until) if self.lockable().await? => Some(until),
            _ => None,
        };
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes));
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .if_none_match("*")
            .content_type("application/json")
            .content_length(i64::try_from(bytes.len())?)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .body(SdkByteStream::from(bytes));
        if let Some(until) = lock {
            request = request
                .object_lock_mode(aws_sdk_s3::types::ObjectLockMode::Compliance)
                .object_lock_retain_until_date(aws_sdk_s3::primitives::DateTime::from(until));
        }
        let expected = request
            .get_body()
            .as_ref()
            .and_then(|b| b.bytes())
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        match request.send().await {
            Ok(_) => {}
            // Taken: by this very record when a retried request had already
            // gone through, which is fine; by anything else, refused.
            Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                let stored = self.get_record(key).await?;
                anyhow::ensure!(
                    stored.as_deref() == Some(expected.as_slice()),
                    "{} holds another record already",
                    self.describe(&object_key)
                );
            }
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("cannot store {}", self.describe(&object_key)))
                    .context(super::StoreUnavailable));
            }
        }
        Ok(if lock.is_some() {
            Locked::Retained
        } else {
            Locked::Unlocked
        })
    }

    async fn get_record(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let object_key = self.object_key(key)?;
        let object = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(object) => object,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Ok(None),
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("cannot read {}", self.describe(&object_key)))
                    .context(super::StoreUnavailable));
            }
        };
        let bytes = object
            .body
            .collect()
            .await
            .with_context(|| format!("cannot read {}", self.describe(&object_key)))?;
        Ok(Some(bytes.into_bytes().to_vec()))
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let full = self.object_key(prefix.trim_end_matches('/'))? + "/";
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| {
                anyhow::Error::new(err)
                    .context(format!("cannot list {}", self.describe(&full)))
                    .context(super::StoreUnavailable)
            })?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    keys.push(key.strip_prefix(&self.prefix).unwrap_or(key).to_owned());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn presign_get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        ttl: Duration,
        file_name: &str,
    ) -> anyhow::Result<Option<String>> {
        let object_key = self.object_key(key)?;
        let file_name: String = file_name.chars().filter(|c| !matches!(c, '"' | '\\')).collect();
        let mut request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .response_content_disposition(format!("attachment; filename=\"{file_name}\""));
        if let Some((start, end)) = range {
            anyhow::ensure!(start < end, "cannot sign an empty range {start}..{end}");
            request = request.range(format!("bytes={start}-{}", end - 1));
        }
        let presigning = PresigningConfig::expires_in(ttl)
            .with_context(|| format!("cannot sign a URL that lives {}", humantime::format_duration(ttl)))?;
        let signed = request
            .presigned(presigning)
            .await
            .with_context(|| format!("cannot sign a URL for {}", self.describe(&object_key)))?;
        Ok(Some(signed.uri().to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_16_mib_of_whole_chunks_unless_the_file_needs_more_than_10000() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(part_size_for(40 * MIB, 64 * 1024).unwrap(), 16 * MIB);
        assert_eq!(part_size_for(MAX_PARTS * 16 * MIB, MIB).unwrap(), 16 * MIB);
        let huge = MAX_PARTS * 16 * MIB + 1;
        assert_eq!(part_size_for(huge, MIB).unwrap(), 17 * MIB);
        assert!(huge.div_ceil(part_size_for(huge, MIB).unwrap()) <= MAX_PARTS);
        // Whole chunks: 64 MiB chunks make 64 MiB parts; 5 MB chunks, 20 MB.
        assert_eq!(part_size_for(40 * MIB, 64 * MIB).unwrap(), 64 * MIB);
        assert_eq!(part_size_for(40 * MIB, 5_000_000).unwrap(), 20_000_000);
        // No part may pass 5 GiB.
        assert!(part_size_for(40 * MIB, 6 * 1024 * MIB).is_err());
    }

    #[test]
    fn credentials_come_from_settings_or_the_aws_variables() {
        let aws = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some("AKIDENV".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("env-secret".to_owned()),
            "AWS_SESSION_TOKEN" => Some("env-token".to_owned()),
            _ => None,
        };
        let mut config = Config::embedded("/srv/wg");
        let from_env = credentials(&config, aws).unwrap();
        assert_eq!(from_env.access_key_id(), "AKIDENV");
        assert_eq!(from_env.secret_access_key(), "env-secret");
        assert_eq!(from_env.session_token(), Some("env-token"));

        config.s3_access_key_id = Some("AKIDSET".into());
        config.s3_secret_access_key = Some("set-secret".into());
        let from_settings = credentials(&config, aws).unwrap();
        assert_eq!(from_settings.access_key_id(), "AKIDSET");
        assert_eq!(from_settings.session_token(), None);

        config.s3_secret_access_key = None;
        let half = credentials(&config, aws).unwrap_err().to_string();
        assert!(half.contains("or neither"), "{half}");

        let none = credentials(&Config::embedded("/srv/wg"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(none.contains("WEIGHTGATE_S3_ACCESS_KEY_ID"), "{none}");
    }
}
