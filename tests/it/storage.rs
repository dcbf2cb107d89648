//! The S3 object store against a real S3 protocol server (s3s over a
//! temporary directory, verifying every request's signature) on a loopback
//! port, and the whole portal serving weights from that bucket.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

use futures_util::{StreamExt, TryStreamExt};
use hyper_util::rt::TokioIo;
use reqwest::{StatusCode, header};
use s3s::{
    S3, S3Request, S3Response, S3Result,
    auth::SimpleAuth,
    dto::{
        AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput,
        CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput, CopySource,
        CreateMultipartUploadInput, CreateMultipartUploadOutput, ETag, ETagCondition, GetObjectInput,
        GetObjectLockConfigurationInput, GetObjectLockConfigurationOutput, GetObjectOutput, HeadObjectInput,
        HeadObjectOutput, ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput,
        ObjectLockConfiguration, ObjectLockEnabled, PutObjectInput, PutObjectOutput, UploadPartCopyInput,
        UploadPartCopyOutput, UploadPartInput, UploadPartOutput,
    },
    s3_error,
    service::S3ServiceBuilder,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use weightgate::{
    config::Config,
    storage::{self, ObjectStore, key_for_sha256},
};

use crate::helpers::*;

const BUCKET: &str = "weights";
/// A second bucket, where a lab's weights already are.
const SOURCE_BUCKET: &str = "incoming";
const PREFIX: &str = "lab/prod";
const ACCESS_KEY: &str = "WGTESTACCESSKEY";
const SECRET_KEY: &str = "weightgate-test-secret-key";

/// s3s's file-system store, noting the uploads it sees, checking each
/// part's Content-MD5 as S3 does, and refusing or holding parts on request.
struct Watched {
    fs: s3s_fs::FileSystem,
    /// Where `fs` keeps its buckets.
    root: PathBuf,
    calls: Arc<Mutex<Vec<String>>>,
    faults: Arc<Faults>,
    /// Whether the bucket says it has Object Lock turned on.
    object_lock: bool,
}

/// What the server does wrong, changed while it runs; 0 means nothing.
#[derive(Default)]
struct Faults {
    /// This part is refused.
    refuse_part: AtomicI32,
    /// Parts from this one on are never answered.
    hold_from: AtomicI32,
    /// The next copy first finds its source object rewritten (by someone
    /// else with write access to that bucket).
    rewrite_source_of_next_copy: std::sync::atomic::AtomicBool,
}

impl Watched {
    fn note(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// The ETag the store gives the object now.
    async fn e_tag(&self, bucket: &str, key: &str) -> S3Result<ETag> {
        let head = S3Request {
            input: HeadObjectInput {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                ..Default::default()
            },
            method: hyper::Method::HEAD,
            uri: hyper::Uri::from_static("/"),
            headers: Default::default(),
            extensions: Default::default(),
            credentials: None,
            region: None,
            service: None,
            trailing_headers: None,
        };
        self.fs
            .head_object(head)
            .await?
            .output
            .e_tag
            .ok_or_else(|| s3_error!(InternalError, "no ETag for {key}"))
    }

    /// Refuses, as S3 does, a request conditional on an ETag the object
    /// does not have (s3s's file system does not check every such header).
    async fn check_if_match(
        &self,
        condition: Option<&ETagCondition>,
        bucket: &str,
        key: &str,
    ) -> S3Result<()> {
        if let Some(ETagCondition::ETag(wanted)) = condition
            && !self.e_tag(bucket, key).await?.strong_cmp(wanted)
        {
            return Err(s3_error!(PreconditionFailed, "{key} has another ETag"));
        }
        Ok(())
    }

    /// A copy from `source`: noted, and its source first rewritten when a
    /// test asks for that.
    fn copying(&self, call: String, source: &CopySource) {
        self.note(call);
        if let CopySource::Bucket { bucket, key, .. } = source
            && self
                .faults
                .rewrite_source_of_next_copy
                .swap(false, Ordering::SeqCst)
        {
            let path = self.root.join(&**bucket).join(&**key);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
}

#[async_trait::async_trait]
impl S3 for Watched {
    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        self.check_if_match(req.input.if_match.as_ref(), &req.input.bucket, &req.input.key)
            .await?;
        if req.input.bucket == SOURCE_BUCKET {
            self.note(format!("GetObject {SOURCE_BUCKET}/{}", req.input.key));
        }
        self.fs.get_object(req).await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        if let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source {
            self.copying(
                format!("CopyObject {} from {bucket}/{key}", req.input.key),
                &req.input.copy_source,
            );
        }
        self.fs.copy_object(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source else {
            return Err(s3_error!(NotImplemented));
        };
        self.copying(
            format!(
                "UploadPartCopy {} {}",
                req.input.part_number,
                req.input.copy_source_range.as_deref().unwrap_or("whole")
            ),
            &req.input.copy_source,
        );
        self.check_if_match(req.input.copy_source_if_match.as_ref(), bucket, key)
            .await?;
        let number = req.input.part_number;
        if self.faults.refuse_part.load(Ordering::SeqCst) == number {
            return Err(s3_error!(InvalidRequest, "the test refuses part {number}"));
        }
        let copied = self.fs.upload_part_copy(req).await?;
        self.note(format!("copied part {number}"));
        Ok(copied)
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let lock = match (
            &req.input.object_lock_mode,
            &req.input.object_lock_retain_until_date,
        ) {
            (Some(mode), Some(until)) => {
                let until = time::OffsetDateTime::from(until.clone());
                format!(" lock {} until {}", mode.as_str(), until.year())
            }
            _ => String::new(),
        };
        self.note(format!("PutObject {}{lock}", req.input.key));
        self.fs.put_object(req).await
    }

    /// Lists with each object's ETag, as S3 does.
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let bucket = req.input.bucket.clone();
        let mut listed = self.fs.list_objects_v2(req).await?;
        for object in listed.output.contents.iter_mut().flatten() {
            if let (None, Some(key)) = (&object.e_tag, &object.key) {
                object.e_tag = Some(self.e_tag(&bucket, key).await?);
            }
        }
        Ok(listed)
    }

    async fn get_object_lock_configuration(
        &self,
        _req: S3Request<GetObjectLockConfigurationInput>,
    ) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
        if !self.object_lock {
            return Err(s3_error!(ObjectLockConfigurationNotFoundError));
        }
        Ok(S3Response::new(GetObjectLockConfigurationOutput {
            object_lock_configuration: Some(ObjectLockConfiguration {
                object_lock_enabled: Some(ObjectLockEnabled::from_static(ObjectLockEnabled::ENABLED)),
                rule: None,
            }),
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.note(format!("CreateMultipartUpload {}", req.input.key));
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        mut req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let number = req.input.part_number;
        self.note(format!(
            "UploadPart {number} ({} bytes)",
            req.input.content_length.unwrap_or(-1)
        ));
        // Read the body first, so the client gets an answer rather than a
        // connection closed under it.
        let mut body = Vec::new();
        if let Some(mut blob) = req.input.body.take() {
            while let Some(piece) = blob.next().await {
                body.extend_from_slice(&piece.map_err(|e| s3_error!(IncompleteBody, "{e}"))?);
            }
        }
        if self.faults.refuse_part.load(Ordering::SeqCst) == number {
            return Err(s3_error!(InvalidRequest, "the test refuses part {number}"));
        }
        let hold_from = self.faults.hold_from.load(Ordering::SeqCst);
        if hold_from != 0 && number >= hold_from {
            std::future::pending::<()>().await;
        }
        let md5 = {
            use base64::Engine;
            use md5::Digest;
            base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&body))
        };
        if req.input.content_md5.as_deref() != Some(md5.as_str()) {
            return Err(s3_error!(
                BadDigest,
                "part {number} does not match its Content-MD5"
            ));
        }
        req.input.body = Some(s3s::dto::StreamingBlob::from(s3s::Body::from(
            bytes::Bytes::from(body),
        )));
        let stored = self.fs.upload_part(req).await?;
        self.note(format!("stored part {number}"));
        Ok(stored)
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.note("ListParts".into());
        self.fs.list_parts(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.note("CompleteMultipartUpload".into());
        self.fs.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.note("AbortMultipartUpload".into());
        self.fs.abort_multipart_upload(req).await
    }
}

/// An S3 server on a loopback port holding one bucket in a temporary
/// directory. It lives as long as the test's runtime.
pub(crate) struct S3Server {
    pub(crate) endpoint: String,
    root: TempDir,
    calls: Arc<Mutex<Vec<String>>>,
    faults: Arc<Faults>,
}

impl S3Server {
    pub(crate) async fn start() -> Self {
        Self::start_with(None, false).await
    }

    /// A server whose bucket has Object Lock turned on.
    pub(crate) async fn start_with_object_lock() -> Self {
        Self::start_with(None, true).await
    }

    async fn start_refusing_part(refuse_part: Option<i32>) -> Self {
        Self::start_with(refuse_part, false).await
    }

    async fn start_with(refuse_part: Option<i32>, object_lock: bool) -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        std::fs::create_dir(root.path().join(SOURCE_BUCKET)).unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Faults::default());
        faults
            .refuse_part
            .store(refuse_part.unwrap_or(0), Ordering::SeqCst);
        let mut builder = S3ServiceBuilder::new(Watched {
            fs: s3s_fs::FileSystem::new(root.path()).unwrap(),
            root: root.path().to_owned(),
            calls: calls.clone(),
            faults: faults.clone(),
            object_lock,
        });
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service.clone()),
                );
            }
        });
        Self {
            endpoint,
            root,
            calls,
            faults,
        }
    }

    /// Portal settings that keep objects in this server's bucket, under [`PREFIX`].
    fn config(&self, data_dir: &Path) -> Config {
        let mut config = Config::embedded(data_dir);
        self.configure(&mut config);
        config
    }

    /// Points `config`'s object store at this server's bucket.
    pub(crate) fn configure(&self, config: &mut Config) {
        config.storage_url = Some(format!("s3://{BUCKET}/{PREFIX}/"));
        config.s3_endpoint = Some(self.endpoint.clone());
        config.s3_path_style = true;
        config.s3_access_key_id = Some(ACCESS_KEY.into());
        config.s3_secret_access_key = Some(SECRET_KEY.into());
    }

    async fn store(&self) -> Arc<dyn ObjectStore> {
        let data = tempfile::tempdir().unwrap();
        storage::open(&self.config(data.path())).await.unwrap()
    }

    /// A store that keeps its records of uploads under way in `data_dir`,
    /// as a portal or a publish does in its data directory.
    async fn store_in(&self, data_dir: &Path) -> Arc<dyn ObjectStore> {
        storage::open(&self.config(data_dir)).await.unwrap()
    }

    /// Where the server keeps the object the portal stores under `key`.
    fn object_path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(PREFIX).join(key)
    }

    /// Puts an object in [`SOURCE_BUCKET`], as a lab's pipeline would.
    fn put_source(&self, key: &str, bytes: &[u8]) {
        let path = self.root.path().join(SOURCE_BUCKET).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// The settings a `weightgate` command needs to reach this server.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WEIGHTGATE_STORAGE_URL", format!("s3://{BUCKET}/{PREFIX}/")),
            ("WEIGHTGATE_S3_ENDPOINT", self.endpoint.clone()),
            ("WEIGHTGATE_S3_PATH_STYLE", "true".to_owned()),
            ("WEIGHTGATE_S3_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("WEIGHTGATE_S3_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
        ]
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

/// `len` bytes that differ from one position to the next, written to `path`.
fn write_pattern(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

async fn read_range(store: &dyn ObjectStore, key: &str, start: u64, end: u64) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = store
        .get_range(key, start, end)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

#[tokio::test]
async fn a_small_file_is_stored_in_one_put_and_read_back_by_range() {
    let server = S3Server::start().await;
    let store = server.store().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("small.bin");
    let bytes = write_pattern(&source, 100_000, 3);
    let key = key_for_sha256(&sha256_hex(&bytes));

    store
        .put_file(&key, &source, &expected(&bytes, CHUNK_SIZE), &|_| {})
        .await
        .unwrap();

    assert_eq!(server.calls(), [format!("PutObject {PREFIX}/{key}")]);
    assert_eq!(std::fs::read(server.object_path(&key)).unwrap(), bytes);
    assert_eq!(store.size(&key).await.unwrap(), Some(100_000));
    assert_eq!(read_range(&*store, &key, 0, 100_000).await, bytes);
    assert_eq!(
        read_range(&*store, &key, 1234, 56_789).await,
        &bytes[1234..56_789]
    );
    assert_eq!(read_range(&*store, &key, 99_999, 100_000).await, &bytes[99_999..]);
    assert!(read_range(&*store, &key, 500, 500).await.is_empty());
}

#[tokio::test]
async fn a_file_larger_than_a_part_goes_up_in_parts_and_reads_back_intact() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start().await;
    let store = server.store().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("large.safetensors");
    let bytes = write_pattern(&source, 40 * MIB + 123, 7);
    let sha256 = sha256_hex(&bytes);
    let key = key_for_sha256(&sha256);

    store
        .put_file(&key, &source, &expected(&bytes, CHUNK_SIZE), &|_| {})
        .await
        .unwrap();

    let mut calls = server.calls();
    calls.sort();
    assert_eq!(
        calls,
        [
            "CompleteMultipartUpload".to_owned(),
            format!("CreateMultipartUpload {PREFIX}/{key}"),
            format!("UploadPart 1 ({} bytes)", 16 * MIB),
            format!("UploadPart 2 ({} bytes)", 16 * MIB),
            format!("UploadPart 3 ({} bytes)", 8 * MIB + 123),
            "stored part 1".to_owned(),
            "stored part 2".to_owned(),
            "stored part 3".to_owned(),
        ]
    );
    assert_eq!(store.size(&key).await.unwrap(), Some(bytes.len() as u64));
    let mut hasher = Sha256::new();
    let mut chunks = store.get_range(&key, 0, bytes.len() as u64).await.unwrap();
    let mut largest_chunk = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        largest_chunk = largest_chunk.max(chunk.len());
        hasher.update(&chunk);
    }
    assert_eq!(hex::encode(hasher.finalize()), sha256);
    assert!(
        largest_chunk < MIB,
        "the body arrives as it streams, not as one {largest_chunk}-byte buffer"
    );
    let across_parts = (16 * MIB - 10) as u64..(16 * MIB + 10) as u64;
    assert_eq!(
        read_range(&*store, &key, across_parts.start, across_parts.end).await,
        &bytes[16 * MIB - 10..16 * MIB + 10]
    );
}

/// The parts a server was sent and stored, by number, from `calls`.
fn parts(calls: &[String], what: &str) -> Vec<i32> {
    let mut numbers: Vec<i32> = calls
        .iter()
        .filter_map(|c| c.strip_prefix(what))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect();
    numbers.sort();
    numbers
}

#[tokio::test]
async fn a_refused_part_leaves_the_upload_to_resume_and_only_what_is_missing_is_sent_again() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start_refusing_part(Some(2)).await;
    let data = tempfile::tempdir().unwrap();
    let store = server.store_in(data.path()).await;
    let source = data.path().join("large.bin");
    let bytes = write_pattern(&source, 40 * MIB + 5, 1);
    let key = key_for_sha256(&sha256_hex(&bytes));
    let holds = expected(&bytes, CHUNK_SIZE);

    let err = store.put_file(&key, &source, &holds, &|_| {}).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("cannot upload part 2")
            && message.contains("the test refuses part 2")
            && message.contains("the upload stopped with 2 of 3 parts stored; publishing again resumes it"),
        "{message}"
    );
    let first = server.calls();
    assert_eq!(parts(&first, "stored part "), [1, 3], "{first:?}");
    assert!(
        !first
            .iter()
            .any(|c| c == "AbortMultipartUpload" || c == "CompleteMultipartUpload")
    );
    assert_eq!(store.size(&key).await.unwrap(), None);

    // The store takes part 2 now; a new process (a new store over the same
    // data directory) resumes and sends only it.
    server.faults.refuse_part.store(0, Ordering::SeqCst);
    let again = server.store_in(data.path()).await;
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = counted.clone();
    let sent = move |n: u64| {
        counter.fetch_add(n, Ordering::SeqCst);
    };
    again.put_file(&key, &source, &holds, &sent).await.unwrap();
    assert_eq!(
        counted.load(Ordering::SeqCst),
        bytes.len() as u64,
        "progress counts the parts held and the parts sent, once each"
    );
    let second = server.calls()[first.len()..].to_vec();
    assert_eq!(parts(&second, "UploadPart "), [2], "{second:?}");
    assert!(second.iter().any(|c| c == "ListParts"), "{second:?}");
    assert!(
        !second.iter().any(|c| c.starts_with("CreateMultipartUpload")),
        "{second:?}"
    );
    assert_eq!(std::fs::read(server.object_path(&key)).unwrap(), bytes);
    assert_eq!(
        std::fs::read_dir(data.path().join("uploads")).unwrap().count(),
        0,
        "the record of a finished upload is gone"
    );
}

#[tokio::test]
async fn an_upload_that_cannot_be_resumed_is_given_up_when_another_starts() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start_refusing_part(Some(2)).await;
    let data = tempfile::tempdir().unwrap();
    let source = data.path().join("large.bin");
    let bytes = write_pattern(&source, 40 * MIB, 6);
    let key = key_for_sha256(&sha256_hex(&bytes));
    let store = server.store_in(data.path()).await;
    assert!(
        store
            .put_file(&key, &source, &expected(&bytes, CHUNK_SIZE), &|_| {})
            .await
            .is_err()
    );
    assert!(!server.calls().iter().any(|c| c == "AbortMultipartUpload"));

    // Published again in other chunks, so in other parts: the recorded
    // upload cannot be resumed, and is aborted rather than left behind.
    server.faults.refuse_part.store(0, Ordering::SeqCst);
    store
        .put_file(&key, &source, &expected(&bytes, 5_000_000), &|_| {})
        .await
        .unwrap();
    let calls = server.calls();
    assert_eq!(
        calls.iter().filter(|c| *c == "AbortMultipartUpload").count(),
        1,
        "{calls:?}"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("CreateMultipartUpload"))
            .count(),
        2,
        "{calls:?}"
    );
    assert_eq!(std::fs::read(server.object_path(&key)).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_publishes_of_one_file_at_once_upload_it_once() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start().await;
    let data = tempfile::tempdir().unwrap();
    let source = data.path().join("shared.bin");
    let bytes = write_pattern(&source, 40 * MIB, 4);
    let key = key_for_sha256(&sha256_hex(&bytes));
    let holds = expected(&bytes, CHUNK_SIZE);
    let (a, b) = (
        server.store_in(data.path()).await,
        server.store_in(data.path()).await,
    );
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (ca, cb) = (counted.clone(), counted.clone());
    let sent_a = move |n: u64| {
        ca.fetch_add(n, Ordering::SeqCst);
    };
    let sent_b = move |n: u64| {
        cb.fetch_add(n, Ordering::SeqCst);
    };
    let (first, second) = tokio::join!(
        a.put_file(&key, &source, &holds, &sent_a),
        b.put_file(&key, &source, &holds, &sent_b),
    );
    first.unwrap();
    second.unwrap();
    let calls = server.calls();
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.starts_with("CreateMultipartUpload"))
            .count(),
        1,
        "{calls:?}"
    );
    assert_eq!(parts(&calls, "UploadPart "), [1, 2, 3], "{calls:?}");
    assert_eq!(
        counted.load(Ordering::SeqCst),
        2 * bytes.len() as u64,
        "each counts the file once"
    );
    assert_eq!(std::fs::read(server.object_path(&key)).unwrap(), bytes);
}

#[tokio::test]
async fn a_file_that_no_longer_holds_what_was_hashed_is_not_stored() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start().await;
    let data = tempfile::tempdir().unwrap();
    let store = server.store_in(data.path()).await;

    // Changed in its second part after it was hashed: the upload is given
    // up, and nothing of it is stored.
    let source = data.path().join("large.bin");
    let bytes = write_pattern(&source, 40 * MIB, 2);
    let holds = expected(&bytes, CHUNK_SIZE);
    let mut changed = bytes.clone();
    changed[20 * MIB] ^= 1;
    std::fs::write(&source, &changed).unwrap();
    let key = key_for_sha256(&sha256_hex(&bytes));
    let err = store.put_file(&key, &source, &holds, &|_| {}).await.unwrap_err();
    assert!(err.is::<storage::Changed>(), "{err:#}");
    let calls = server.calls();
    assert!(
        !parts(&calls, "UploadPart ").contains(&2),
        "the changed part is never sent: {calls:?}"
    );
    assert!(calls.iter().any(|c| c == "AbortMultipartUpload"), "{calls:?}");
    assert!(!calls.iter().any(|c| c == "CompleteMultipartUpload"), "{calls:?}");
    assert_eq!(store.size(&key).await.unwrap(), None);

    // A small one, and one that grew: refused before anything is sent.
    let before = server.calls().len();
    let small = data.path().join("small.bin");
    let small_bytes = write_pattern(&small, 1000, 3);
    let holds = expected(&small_bytes, CHUNK_SIZE);
    std::fs::write(&small, [&small_bytes[..999], b"!"].concat()).unwrap();
    let err = store
        .put_file("sha256/00/small", &small, &holds, &|_| {})
        .await
        .unwrap_err();
    assert!(err.is::<storage::Changed>(), "{err:#}");
    std::fs::write(&small, [&small_bytes[..], b"!"].concat()).unwrap();
    let err = store
        .put_file("sha256/00/small", &small, &holds, &|_| {})
        .await
        .unwrap_err();
    assert!(err.is::<storage::Changed>(), "{err:#}");
    assert_eq!(server.calls().len(), before, "{:?}", server.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_killed_mid_upload_resumes_without_sending_stored_parts_again() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start().await;
    let t = TestApp::spawn_with(|c| server.configure(c)).await;
    let source = t.dir.path().join("big");
    std::fs::create_dir_all(&source).unwrap();
    let bytes = write_pattern(&source.join("weights.bin"), 80 * MIB + 9, 5);
    let env = [
        ("WEIGHTGATE_DATA_DIR", t.app.config.data_dir.display().to_string()),
        ("WEIGHTGATE_DATABASE_URL", t.app.config.database_url()),
        ("WEIGHTGATE_STORAGE_URL", format!("s3://{BUCKET}/{PREFIX}/")),
        ("WEIGHTGATE_S3_ENDPOINT", server.endpoint.clone()),
        ("WEIGHTGATE_S3_PATH_STYLE", "true".to_owned()),
        ("WEIGHTGATE_S3_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
        ("WEIGHTGATE_S3_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
        ("WEIGHTGATE_LOG", "warn".to_owned()),
    ];
    let publish = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_weightgate"))
            .args(["model", "publish", MODEL])
            .arg(&source)
            // 16 MiB parts of whole 1 MiB chunks: six of them.
            .args(["--release", "big", "--chunk-size", "1MiB"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Parts 3 and on are never answered: parts 1 and 2 are stored, and the
    // publish is killed while it waits for 3 to 6.
    server.faults.hold_from.store(3, Ordering::SeqCst);
    let before = server.calls().len();
    let mut child = publish();
    let uploads = t.app.config.data_dir.join("uploads");
    let recorded = || {
        std::fs::read_dir(&uploads)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .max()
            .unwrap_or(0)
    };
    // The record: a line for the upload and one per stored part.
    for _ in 0..600 {
        if recorded() >= 3 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the publish ended early: {:?}",
            child.wait_with_output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(recorded(), 3, "{:?}", server.calls());
    child.kill().unwrap();
    child.wait().unwrap();
    let first = server.calls()[before..].to_vec();
    assert_eq!(parts(&first, "stored part "), [1, 2], "{first:?}");
    assert!(!first.iter().any(|c| c == "CompleteMultipartUpload"), "{first:?}");

    // Run again: only the parts the store does not hold are sent.
    server.faults.hold_from.store(0, Ordering::SeqCst);
    let before = server.calls().len();
    let out = publish().wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = server.calls()[before..].to_vec();
    assert_eq!(parts(&second, "UploadPart "), [3, 4, 5, 6], "{second:?}");
    let key = key_for_sha256(&sha256_hex(&bytes));
    assert_eq!(
        sha256_hex(&std::fs::read(server.object_path(&key)).unwrap()),
        sha256_hex(&bytes)
    );

    // And the portal serves it.
    let access = t.approved_researcher("resumed@uni.example.edu").await;
    let (_, url) = t
        .download_links(&access)
        .await
        .into_iter()
        .find(|(name, _)| name == "weights.bin")
        .unwrap();
    let response = t.client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sha256_hex(&response.bytes().await.unwrap()), sha256_hex(&bytes));
}

#[tokio::test]
async fn a_missing_object_has_no_size_and_cannot_be_read() {
    let server = S3Server::start().await;
    let store = server.store().await;
    assert_eq!(store.size("sha256/ab/missing").await.unwrap(), None);
    let err = store.get_range("sha256/ab/missing", 0, 10).await.err().unwrap();
    assert!(format!("{err:#}").contains("NoSuchKey"), "{err:#}");
    assert!(store.get_range("sha256/ab/missing", 0, 0).await.is_err());
}

#[tokio::test]
async fn requests_with_a_wrong_secret_are_refused_not_taken_for_missing_objects() {
    let server = S3Server::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = server.config(data.path());
    config.s3_secret_access_key = Some("not the secret".into());
    let store = storage::open(&config).await.unwrap();
    let source = data.path().join("small.bin");
    let bytes = write_pattern(&source, 1000, 0);

    let err = store
        .put_file("sha256/ab/abc", &source, &expected(&bytes, CHUNK_SIZE), &|_| {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("SignatureDoesNotMatch"), "{err:#}");
    assert!(store.size("sha256/ab/abc").await.is_err());
    assert!(server.calls().is_empty());
}

#[tokio::test]
async fn a_presigned_url_serves_the_object_without_credentials() {
    let server = S3Server::start().await;
    let store = server.store().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("shard.bin");
    let bytes = write_pattern(&source, 300_000, 9);
    let key = key_for_sha256(&sha256_hex(&bytes));
    store
        .put_file(&key, &source, &expected(&bytes, CHUNK_SIZE), &|_| {})
        .await
        .unwrap();
    // A client without cookies or redirects; TLS set up as the portal's.
    weightgate::client::install_crypto();
    let http = reqwest::Client::new();

    let url = store
        .presign_get(&key, None, Duration::from_secs(60), "model-00001.safetensors")
        .await
        .unwrap()
        .unwrap();
    assert!(url.starts_with(&server.endpoint), "{url}");
    assert!(!url.contains(SECRET_KEY));
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes);

    // A client that follows a redirect keeps its Range header.
    let response = http
        .get(&url)
        .header(header::RANGE, "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &bytes[1000..2000]);

    let tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600");
    assert_ne!(tampered, url);
    let response = http.get(&tampered).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // A URL for a range works only with exactly that Range header.
    let ranged = store
        .presign_get(&key, Some((5000, 6000)), Duration::from_secs(60), "shard.bin")
        .await
        .unwrap()
        .unwrap();
    let response = http
        .get(&ranged)
        .header(header::RANGE, "bytes=5000-5999")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &bytes[5000..6000]);
    for other in [None, Some("bytes=0-")] {
        let mut request = http.get(&ranged);
        if let Some(range) = other {
            request = request.header(header::RANGE, range);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{other:?}");
    }
}

both!(the_portal_publishes_to_and_serves_from_an_s3_bucket);
async fn the_portal_publishes_to_and_serves_from_an_s3_bucket() {
    let server = S3Server::start().await;
    let t = TestApp::spawn_with(|c| server.configure(c)).await;
    for (_, bytes) in &t.files {
        let key = key_for_sha256(&sha256_hex(bytes));
        assert_eq!(&std::fs::read(server.object_path(&key)).unwrap(), bytes);
    }
    assert!(!t.app.config.data_dir.join("objects").exists());

    let access = t.approved_researcher("s3@uni.example.edu").await;
    let links = t.download_links(&access).await;
    let (name, url) = links.iter().find(|(n, _)| n == "shard-0.bin").unwrap();
    let bytes = &t.files.iter().find(|(n, _)| n == name).unwrap().1;

    let response = t
        .client
        .get(url)
        .header(header::RANGE, "bytes=1000-200999")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()[header::CONTENT_RANGE],
        format!("bytes 1000-200999/{}", bytes.len()).as_str()
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), &bytes[1000..201_000]);

    let response = t.client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sha256_hex(&response.bytes().await.unwrap()), sha256_hex(bytes));

    let delivered = t.wait_for_events("file.delivered", 2).await;
    let mut sent: Vec<_> = delivered.iter().map(|e| (e.outcome.as_str(), e.bytes)).collect();
    sent.sort();
    assert_eq!(sent, [("ok", Some(200_000)), ("ok", Some(bytes.len() as i64))]);
}

both!(redirect_delivery_sends_researchers_to_short_lived_presigned_urls);
async fn redirect_delivery_sends_researchers_to_short_lived_presigned_urls() {
    let server = S3Server::start().await;
    let t = TestApp::spawn_with(|c| {
        server.configure(c);
        c.delivery = weightgate::config::DeliveryMode::Redirect;
    })
    .await;
    let access = t.approved_researcher("redirect@uni.example.edu").await;
    let (name, url) = t.download_links(&access).await.remove(0);
    let bytes = &t.files.iter().find(|(n, _)| *n == name).unwrap().1;

    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_follow.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with(&server.endpoint), "{location}");
    assert!(location.contains("X-Amz-Expires=120"), "{location}");
    let events = t.wait_for_events("file.delivered", 1).await;
    assert_eq!(events[0].reason.as_deref(), Some("redirect"));
    assert_eq!(events[0].bytes, Some(bytes.len() as i64));

    let refused = no_follow.get(format!("{url}x")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN, "checks still come first");

    // A HEAD is checked and logged as a fetch, and answered by the portal
    // from the file's metadata: no presigned URL, nothing delivered.
    let fetches = t
        .audit_events()
        .await
        .iter()
        .filter(|e| e.action == "file.fetch")
        .count();
    let head = no_follow.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert!(head.headers().get(header::LOCATION).is_none());
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        bytes.len().to_string().as_str()
    );
    t.wait_for_events("file.fetch", fetches + 1).await;

    // A ranged fetch is sent to a URL for that range only: the log records
    // two bytes, so the URL must not serve more.
    let ranged = no_follow
        .get(&url)
        .header(header::RANGE, "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::FOUND);
    let location = ranged.headers()[header::LOCATION].to_str().unwrap().to_owned();
    let events = t.wait_for_events("file.delivered", 2).await;
    assert_eq!(events[1].bytes, Some(2));
    let whole = no_follow.get(&location).send().await.unwrap();
    assert!(
        !whole.status().is_success(),
        "the ranged URL serves no whole file: {}",
        whole.status()
    );
    let other = no_follow
        .get(&location)
        .header(header::RANGE, "bytes=0-")
        .send()
        .await
        .unwrap();
    assert!(
        !other.status().is_success(),
        "nor another range: {}",
        other.status()
    );
    let same = no_follow
        .get(&location)
        .header(header::RANGE, "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(same.bytes().await.unwrap().as_ref(), &bytes[..2]);

    let dir = t.dir.path().join("weights");
    let summary = weightgate::client::download(weightgate::client::Options {
        url: access.clone(),
        dir: dir.clone(),
        jobs: 3,
        include: Vec::new(),
        public_key: None,
        model_signing_key: None,
        limit_rate: None,
        progress: false,
    })
    .await
    .unwrap();
    assert_eq!(summary.files, t.files.len());
    for (name, bytes) in &t.files {
        assert_eq!(
            sha256_hex(&std::fs::read(dir.join("r1").join(name)).unwrap()),
            sha256_hex(bytes)
        );
    }
}

#[tokio::test]
async fn redirect_delivery_needs_an_s3_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.delivery = weightgate::config::DeliveryMode::Redirect;
    let err = weightgate::app::App::open(config, weightgate::app::Schema::Migrate)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("needs an S3 store"), "{err:#}");
}

/// `weightgate model publish` of `url` as release `release` in 1 MiB chunks
/// (so that a file of 40 MiB is copied in parts), with `more` options.
fn publish_bucket(
    t: &TestApp,
    server: &S3Server,
    url: &str,
    release: &str,
    more: &[&str],
) -> (bool, String, String) {
    let mut args = vec![
        "model",
        "publish",
        MODEL,
        url,
        "--release",
        release,
        "--chunk-size",
        "1MiB",
    ];
    args.extend_from_slice(more);
    crate::cli::weightgate_with(t, &args, None, &server.env())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_in_a_bucket_is_hashed_as_it_streams_copied_in_by_the_store_and_served() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start().await;
    let t = TestApp::spawn_with(|c| server.configure(c)).await;
    let scratch = tempfile::tempdir().unwrap();
    let big = write_pattern(&scratch.path().join("big"), 40 * MIB + 7, 9);
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "README.md",
            b"# Llama, from the bucket\n\nWeights as they were trained.\n".to_vec(),
        ),
        ("config.json", b"{\"hidden_size\": 64}\n".to_vec()),
        ("original/consolidated.00.pth", big),
    ];
    for (path, bytes) in &files {
        server.put_source(&format!("llama/{path}"), bytes);
    }
    server.put_source("llama/.git/config", b"url = https://token@example.org\n");
    server.put_source("llama/.gitattributes", b"*.pth filter=lfs\n");
    server.put_source("llama/onnx/model.onnx", b"left out");
    server.put_source("other/outside.bin", b"outside the prefix");

    let before = server.calls().len();
    let (ok, out, err) = publish_bucket(
        &t,
        &server,
        "s3://incoming/llama",
        "from-bucket",
        &["--exclude", "onnx"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("left out: .git/, .gitattributes, onnx/"), "{out}");
    assert!(
        out.contains("published release from-bucket of tiny-model with 3 files"),
        "{out}"
    );

    // Each object is read to hash it (the card once more, to show it) and
    // then copied by the store itself: none of its bytes goes up from here.
    let calls = server.calls()[before..].to_vec();
    let mut reads: Vec<&str> = calls
        .iter()
        .filter_map(|c| c.strip_prefix("GetObject incoming/llama/"))
        .collect();
    reads.sort();
    assert_eq!(
        reads,
        [
            "README.md",
            "README.md",
            "config.json",
            "original/consolidated.00.pth"
        ],
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.contains(".git") || c.contains("onnx") || c.contains("outside")),
        "{calls:?}"
    );
    let copies: Vec<&String> = calls.iter().filter(|c| c.starts_with("CopyObject ")).collect();
    assert_eq!(copies.len(), 2, "{calls:?}");
    assert!(
        copies
            .iter()
            .any(|c| c.ends_with("from incoming/llama/config.json")),
        "{copies:?}"
    );
    // 40 MiB in parts of 16 MiB of whole chunks, each copied by the store.
    assert_eq!(parts(&calls, "UploadPartCopy "), [1, 2, 3], "{calls:?}");
    assert!(
        calls
            .iter()
            .any(|c| c == "UploadPartCopy 3 bytes=33554432-41943046"),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("UploadPart ") || c.starts_with(&format!("PutObject {PREFIX}/sha256"))),
        "{calls:?}"
    );
    for (path, bytes) in &files {
        let key = key_for_sha256(&sha256_hex(bytes));
        assert_eq!(&std::fs::read(server.object_path(&key)).unwrap(), bytes, "{path}");
    }

    // The release serves the tree, which the ecosystem's own check accepts,
    // and the bucket's README.md is the model's card.
    let access = t.approved_researcher("bucket@uni.example.edu").await;
    let fetched = t.dir.path().join("from-bucket");
    let links: Vec<(String, String)> = t
        .download_links(&access)
        .await
        .into_iter()
        .filter(|(name, _)| files.iter().any(|(path, _)| path == name))
        .collect();
    assert_eq!(links.len(), files.len(), "{links:?}");
    for (path, href) in &links {
        let response = t.client.get(href).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let at = fetched.join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, response.bytes().await.unwrap()).unwrap();
    }
    let sums_url = format!("{}/releases/from-bucket/SHA256SUMS", access.trim_end_matches('/'));
    let (status, sums) = t.get_html(&t.client, &sums_url).await;
    assert_eq!(status, 200, "{sums}");
    std::fs::write(fetched.join("SHA256SUMS"), &sums).unwrap();
    sha256sum_check(&fetched, &[]);
    let (_, page) = t.get_html(&t.client, "/models/tiny-model").await;
    assert!(page.contains("Weights as they were trained."), "{page}");

    // The OpenSSF verifier accepts the tree fetched by HTTP, by aria2c and
    // by the client, with the key the portal publishes.
    let sig_url = format!("{}/releases/from-bucket/model.sig", access.trim_end_matches('/'));
    let (status, sig) = t.get_html(&t.client, &sig_url).await;
    assert_eq!(status, 200, "{sig}");
    let (_, key) = t
        .get_html(&t.client, "/.well-known/weightgate/model-signing.pub")
        .await;
    let key_file = t.dir.path().join("lab.pub");
    std::fs::write(&key_file, &key).unwrap();
    let signed = |dir: &Path| {
        if let Some((ok, out)) = model_signing_verify(dir, &dir.join("model.sig"), &key_file) {
            assert!(ok, "model_signing verify of {}:\n{out}", dir.display());
        }
    };
    std::fs::write(fetched.join("model.sig"), &sig).unwrap();
    signed(&fetched);
    let by_aria2 = t.dir.path().join("bucket-by-aria2c");
    if crate::trees::aria2c_fetch(&by_aria2, &links) {
        std::fs::write(by_aria2.join("SHA256SUMS"), &sums).unwrap();
        sha256sum_check(&by_aria2, &[]);
        std::fs::write(by_aria2.join("model.sig"), &sig).unwrap();
        signed(&by_aria2);
    }
    let by_client = t.dir.path().join("bucket-by-client");
    let out = download_with_client(&access, &by_client, &[]);
    assert!(out.contains("files verified in"), "{out}");
    sha256sum_check(&by_client.join("from-bucket"), &[]);
    signed(&by_client.join("from-bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_rewritten_in_its_bucket_while_it_is_published_is_refused_and_nothing_published() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start().await;
    let t = TestApp::spawn_with(|c| server.configure(c)).await;
    let scratch = tempfile::tempdir().unwrap();
    let big = write_pattern(&scratch.path().join("big"), 20 * MIB + 3, 4);
    server.put_source("big/weights.bin", &big);
    server.put_source("small/config.json", b"{\"hidden_size\": 64}\n");

    // Someone with write access to the lab's bucket rewrites each object
    // after it was hashed and before the store copies it: a multipart copy
    // and a single one.
    for (url, release) in [("s3://incoming/big", "big"), ("s3://incoming/small", "small")] {
        server
            .faults
            .rewrite_source_of_next_copy
            .store(true, Ordering::SeqCst);
        let before = server.calls().len();
        let (ok, out, err) = publish_bucket(&t, &server, url, release, &[]);
        assert!(!ok, "{out}");
        assert!(err.contains("changed while it was being published"), "{err}");
        let calls = server.calls()[before..].to_vec();
        if release == "big" {
            assert!(calls.iter().any(|c| c == "AbortMultipartUpload"), "{calls:?}");
            assert!(!calls.iter().any(|c| c == "CompleteMultipartUpload"), "{calls:?}");
            assert!(!server.object_path(&key_for_sha256(&sha256_hex(&big))).exists());
        }
        // Nothing was published: the release name is still free, and a
        // publish of what the bucket holds now takes it.
        let (ok, out, err) = publish_bucket(&t, &server, url, release, &[]);
        assert!(ok, "{err}");
        assert!(
            out.contains(&format!("published release {release} of tiny-model with 1 file")),
            "{out}"
        );
    }
    let mut rewritten = big.clone();
    rewritten[0] ^= 0xff;
    assert_eq!(
        std::fs::read(server.object_path(&key_for_sha256(&sha256_hex(&rewritten)))).unwrap(),
        rewritten
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_the_portal_cannot_publish_from_is_refused_before_anything_is_read() {
    let server = S3Server::start().await;
    // A portal whose objects are in a directory cannot take S3's copies.
    let local = TestApp::spawn().await;
    server.put_source("llama/config.json", b"{}\n");
    let env: Vec<(&str, String)> = server
        .env()
        .into_iter()
        .filter(|(name, _)| *name != "WEIGHTGATE_STORAGE_URL")
        .collect();
    let args = ["model", "publish", MODEL, "s3://incoming/llama", "--release", "b"];
    let before = server.calls().len();
    let (ok, _, err) = crate::cli::weightgate_with(&local, &args, None, &env);
    assert!(!ok);
    assert!(
        err.contains("the portal's own objects must be in S3 too"),
        "{err}"
    );
    assert_eq!(server.calls()[before..], [] as [String; 0]);

    // A key that cannot be a release path is named.
    let t = TestApp::spawn_with(|c| server.configure(c)).await;
    server.put_source("odd/weights (copy).bin", b"x");
    let (ok, _, err) = publish_bucket(&t, &server, "s3://incoming/odd", "odd", &[]);
    assert!(!ok);
    assert!(
        err.contains("\"weights (copy).bin\" is not a usable path"),
        "{err}"
    );
    // And a prefix with nothing under it.
    let (ok, _, err) = publish_bucket(&t, &server, "s3://incoming/none", "none", &[]);
    assert!(!ok);
    assert!(
        err.contains("s3://incoming/none holds no files to publish"),
        "{err}"
    );
    let (ok, _, err) = publish_bucket(&t, &server, "s3://incoming/llama", "l", &["--follow-symlinks"]);
    assert!(!ok);
    assert!(err.contains("a bucket has no links"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_stopped_midway_resumes_without_copying_stored_parts_again() {
    const MIB: usize = 1024 * 1024;
    let server = S3Server::start_refusing_part(Some(3)).await;
    let t = TestApp::spawn_with(|c| server.configure(c)).await;
    let scratch = tempfile::tempdir().unwrap();
    // Four parts of 16 MiB; the store refuses the third.
    let big = write_pattern(&scratch.path().join("big"), 60 * MIB + 11, 6);
    server.put_source("resume/weights.bin", &big);

    let before = server.calls().len();
    let (ok, _, err) = publish_bucket(&t, &server, "s3://incoming/resume", "r", &[]);
    assert!(!ok);
    assert!(
        err.contains("cannot copy part 3 of s3://incoming/resume/weights.bin")
            && err.contains("publishing again resumes it"),
        "{err}"
    );
    let first = server.calls()[before..].to_vec();
    assert!(!first.iter().any(|c| c == "AbortMultipartUpload"), "{first:?}");
    let copied_first = parts(&first, "copied part ");
    assert!(!copied_first.contains(&3), "{first:?}");

    // Run again: only the parts the store does not hold are copied.
    server.faults.refuse_part.store(0, Ordering::SeqCst);
    let before = server.calls().len();
    let (ok, out, err) = publish_bucket(&t, &server, "s3://incoming/resume", "r", &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("published release r of tiny-model with 1 file"),
        "{out}"
    );
    let second = server.calls()[before..].to_vec();
    let copied_second = parts(&second, "copied part ");
    let mut all: Vec<i32> = copied_first.iter().chain(&copied_second).copied().collect();
    all.sort();
    assert_eq!(
        all,
        [1, 2, 3, 4],
        "no part copied twice: {first:?} then {second:?}"
    );
    assert!(second.iter().any(|c| c == "ListParts"), "{second:?}");
    assert_eq!(
        std::fs::read(server.object_path(&key_for_sha256(&sha256_hex(&big)))).unwrap(),
        big
    );
}
