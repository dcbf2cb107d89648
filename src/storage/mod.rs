//! The object store holding weight files. Handlers and commands go through
//! [`ObjectStore`] and never touch files or S3 directly.

mod local;
mod s3;

use std::{io, path::Path, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};

pub use self::{local::LocalDir, s3::S3Bucket};
use crate::config::{Config, StorageLocation};

pub(crate) type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Marks an error as the object store failing to answer (down, unreachable,
/// refusing), as opposed to a missing object: the portal answers 503 and
/// `/readyz` reports the store, and it passes once the store is back.
#[derive(Debug, thiserror::Error)]
#[error("the object store is unavailable")]
pub(crate) struct StoreUnavailable;

/// Where weight files live.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Stores the file at `source` under `key`, replacing what was there. A
    /// reader never sees a partly written object. Every byte written or sent
    /// is checked against `expected` first: a file that no longer holds what
    /// was hashed is refused with [`Changed`], and nothing is stored.
    /// `sent` is told of the bytes as they are written or taken by the
    /// store (a resumed upload first counts the parts it already holds).
    async fn put_file(
        &self,
        key: &str,
        source: &Path,
        expected: &Expected,
        sent: &Sent,
    ) -> anyhow::Result<()>;

    /// The size of the object, or `None` when there is none.
    async fn size(&self, key: &str) -> anyhow::Result<Option<u64>>;

    /// Streams bytes `start..end` (end exclusive) of the object.
    async fn get_range(&self, key: &str, start: u64, end: u64) -> anyhow::Result<ByteStream>;

    /// A URL from which anyone can GET the object without the portal for the
    /// next `ttl`, offered to browsers as `file_name`; `None` when this store
    /// cannot hand out such URLs (the portal then streams the bytes itself).
    ///
    /// Without `range` the URL serves the whole object and honours any `Range`
    /// header the client sends, so a redirected ranged request works as is.
    /// With `range` (`start..end`, end exclusive) the URL is bound to exactly
    /// `Range: bytes=START-LAST`: the header is signed, and a request without
    /// it, or with another range, is refused by the store.
    async fn presign_get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
        ttl: Duration,
        file_name: &str,
    ) -> anyhow::Result<Option<String>>;

    /// Stores a small record under `key`, never replacing one that is there.
    /// With `retain_until`, a store that can lock objects (S3 Object Lock in
    /// compliance mode) keeps anyone, its operator included, from deleting
    /// or overwriting it until then; says whether it did.
    async fn put_record(
        &self,
        key: &str,
        bytes: Vec<u8>,
        retain_until: Option<std::time::SystemTime>,
    ) -> anyhow::Result<Locked>;

    /// A record stored with [`ObjectStore::put_record`], or `None`.
    async fn get_record(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;

    /// The keys under `prefix` (which ends in `/`), in order.
    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>>;

    /// Stores under `key` a copy of `object` made by the store itself, so
    /// that no byte passes through the portal, of exactly the version that
    /// was listed and hashed: an object replaced since is refused with
    /// [`Changed`], and nothing is stored. `expected` is what the copy must
    /// hold; `sent` is told of the bytes as they are copied. Only a store
    /// in the same S3 service as the object can.
    async fn copy_in(
        &self,
        key: &str,
        object: &BucketObject,
        expected: &Expected,
        sent: &Sent,
    ) -> anyhow::Result<()>;

    /// Why this store cannot take [`ObjectStore::copy_in`], or `None` when
    /// it can: asked before a publish from a bucket reads anything.
    fn cannot_copy_in(&self) -> Option<String>;
}

/// An object of a bucket the portal's S3 credentials can read, as a listing
/// found it: what a publish from a bucket hashes and copies in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketObject {
    pub bucket: String,
    /// Its whole key in the bucket.
    pub key: String,
    pub size: u64,
    /// The version listed: a read or a copy of any other is refused.
    pub e_tag: String,
}

impl std::fmt::Display for BucketObject {
    /// `s3://BUCKET/KEY`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// What a file given to [`ObjectStore::put_file`] must hold: its size and the
/// SHA-256 of each `chunk_size` bytes (the last may be shorter), as its
/// release manifest lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: Vec<String>,
}

/// Told of bytes stored, for a progress bar.
pub type Sent = dyn Fn(u64) + Send + Sync;

/// A file given to [`ObjectStore::put_file`] whose bytes are not those it
/// was hashed with: it changed after it was hashed, or while it was read.
#[derive(Debug, thiserror::Error)]
#[error("{0} changed while it was being published (its bytes no longer match their hashes)")]
pub struct Changed(pub String);

/// The SHA-256 of each `chunk_size` bytes of what it is given, in order.
pub(crate) struct ChunkHasher {
    chunk_size: u64,
    in_chunk: u64,
    hasher: Sha256,
}

impl ChunkHasher {
    pub(crate) fn new(chunk_size: u64) -> Self {
        Self {
            chunk_size: chunk_size.max(1),
            in_chunk: 0,
            hasher: Sha256::new(),
        }
    }

    /// Takes the next bytes; `done` gets the digest of each chunk they
    /// complete, in hex, and stops the hashing by returning `false`.
    pub(crate) fn update(&mut self, mut bytes: &[u8], mut done: impl FnMut(String) -> bool) -> bool {
        while !bytes.is_empty() {
            let room = self.chunk_size - self.in_chunk;
            let take = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.hasher.update(&bytes[..take]);
            self.in_chunk += take as u64;
            bytes = &bytes[take..];
            if self.in_chunk == self.chunk_size {
                self.in_chunk = 0;
                if !done(hex::encode(self.hasher.finalize_reset())) {
                    return false;
                }
            }
        }
        true
    }

    /// The digest of the bytes after the last whole chunk, if there are any.
    pub(crate) fn finish(self) -> Option<String> {
        (self.in_chunk > 0).then(|| hex::encode(self.hasher.finalize()))
    }
}

/// Checks bytes read in order, from a chunk boundary, against the expected
/// chunk hashes.
pub(crate) struct ChunkCheck<'a> {
    expected: &'a Expected,
    /// The chunk being hashed.
    index: usize,
    chunks: ChunkHasher,
}

impl<'a> ChunkCheck<'a> {
    /// A check of the bytes from `offset`, which must start a chunk.
    pub(crate) fn at(expected: &'a Expected, offset: u64) -> Self {
        debug_assert_eq!(offset % expected.chunk_size, 0);
        Self {
            expected,
            index: usize::try_from(offset / expected.chunk_size).unwrap_or(usize::MAX),
            chunks: ChunkHasher::new(expected.chunk_size),
        }
    }

    /// Takes the next bytes; `false` once a chunk they end does not match.
    pub(crate) fn update(&mut self, bytes: &[u8]) -> bool {
        let Self {
            expected,
            index,
            chunks,
        } = self;
        chunks.update(bytes, |digest| {
            let matches = expected.chunks.get(*index) == Some(&digest);
            *index += 1;
            matches
        })
    }

    /// Ends the check where the bytes end: at a chunk boundary, or at the
    /// end of the file, whose last chunk may be shorter.
    pub(crate) fn finish(self) -> bool {
        self.chunks
            .finish()
            .is_none_or(|digest| self.expected.chunks.get(self.index) == Some(&digest))
    }
}

/// Whether a record was stored under a lock its store enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locked {
    /// Retained until the date asked for: it cannot be deleted or replaced.
    Retained,
    /// Stored without a lock: the store offers none, or none was asked for.
    Unlocked,
}

/// How long a presigned redirect stays valid: long enough to follow it,
/// short enough that a copied URL is useless soon after.
pub(crate) const REDIRECT_TTL: Duration = Duration::from_secs(120);

/// The content-addressed key of a file with this SHA-256.
pub fn key_for_sha256(sha256_hex: &str) -> String {
    format!("sha256/{}/{sha256_hex}", &sha256_hex[..2])
}

/// The object store the configuration names: a local directory (the
/// default, `DATA_DIR/objects`) or an S3 bucket.
pub async fn open(config: &Config) -> anyhow::Result<Arc<dyn ObjectStore>> {
    at(config, config.storage_location()?)
}

/// The object store at `url` (`file://DIR` or `s3://BUCKET/PREFIX`), reached
/// with the configuration's S3 endpoint and credentials.
pub(crate) async fn open_url(config: &Config, url: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    at(config, Config::location(url)?)
}

/// The bucket at `url` (`s3://BUCKET/PREFIX`), reached with the
/// configuration's S3 endpoint and credentials, to read objects from.
pub(crate) fn bucket_at(config: &Config, url: &str) -> anyhow::Result<S3Bucket> {
    match Config::location(url)? {
        StorageLocation::S3 { bucket, prefix } => S3Bucket::new(config, bucket, prefix),
        StorageLocation::Dir(_) => anyhow::bail!("{url:?} is not a bucket: expected s3://BUCKET/PREFIX"),
    }
}

fn at(config: &Config, location: StorageLocation) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(match location {
        StorageLocation::Dir(root) => Arc::new(LocalDir::new(root)),
        StorageLocation::S3 { bucket, prefix } => Arc::new(S3Bucket::new(config, bucket, prefix)?),
    })
}
