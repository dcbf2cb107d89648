//! Objects as files under one directory: the embedded default.

use std::{
    io::{self, Read, Seek, Write},
    path::{Component, Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;

use super::{BucketObject, ByteStream, Changed, ChunkCheck, Expected, Locked, ObjectStore, Sent};

/// Objects as files under one directory.
#[derive(Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The file of `key`: a key is `/`-separated names, none empty, `.`,
    /// `..`, or holding a backslash or a NUL, so that it names exactly one
    /// file under the root and no two spellings name the same one.
    fn path(&self, key: &str) -> anyhow::Result<PathBuf> {
        let plain = key
            .split('/')
            .all(|name| !matches!(name, "" | "." | "..") && !name.contains(['\\', '\0']));
        let relative = Path::new(key);
        let plain = plain && relative.components().all(|c| matches!(c, Component::Normal(_)));
        anyhow::ensure!(plain, "invalid object key {key:?}");
        Ok(self.root.join(relative))
    }
}

/// Read buffer for streaming downloads, while few are under way.
const CHUNK: usize = 256 * 1024;

/// What the read buffers of every download under way may take together, as
/// a guide: past `CHUNK_BUDGET / CHUNK` downloads at once each reads less at
/// a time (down to `MIN_CHUNK`), so that a thousand downloads do not hold a
/// thousand full buffers, and their memory stays near that of a few hundred.
const CHUNK_BUDGET: usize = 64 * 1024 * 1024;
const MIN_CHUNK: usize = 32 * 1024;

/// Downloads being read from the local store, in this process.
static READING: AtomicUsize = AtomicUsize::new(0);

/// Counts a download in [`READING`] for as long as it lives.
struct Reading;

impl Reading {
    fn start() -> Self {
        READING.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How much a download reads at a time with `reading` under way.
fn chunk_size(reading: usize) -> usize {
    (CHUNK_BUDGET / reading.max(1)).clamp(MIN_CHUNK, CHUNK)
}

/// Copies `source` to a new file at `target`, checking each chunk against
/// `expected` before its bytes are written, and syncs it; `done` counts the
/// bytes written.
fn copy_checked(source: &Path, target: &Path, expected: &Expected, done: &AtomicU64) -> anyhow::Result<()> {
    let changed = || Changed(source.display().to_string());
    let mut from =
        std::fs::File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let mut to = std::fs::File::create_new(target)
        .with_context(|| format!("cannot create {} in the object store", target.display()))?;
    let mut check = ChunkCheck::at(expected, 0);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = from
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", source.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > expected.size || !check.update(&buf[..n]) {
            return Err(changed().into());
        }
        to.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", target.display()))?;
        done.fetch_add(n as u64, Ordering::Relaxed);
    }
    if size != expected.size || !check.finish() {
        return Err(changed().into());
    }
    to.sync_all()
        .with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

#[async_trait::async_trait]
impl ObjectStore for LocalDir {
    /// Copies the file through a check of every chunk into a partial file
    /// beside the object, syncs it and moves it into place.
    async fn put_file(
        &self,
        key: &str,
        source: &Path,
        expected: &Expected,
        sent: &Sent,
    ) -> anyhow::Result<()> {
        let target = self.path(key)?;
        let dir = target.parent().context("object key has no parent")?;
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let partial = dir.join(format!(".{}.partial", crate::types::new_id()));
        let copied = {
            let (from, to, holds) = (source.to_owned(), partial.clone(), expected.clone());
            // The copy runs on a blocking thread; its progress comes back
            // through a counter read while it runs.
            let done = Arc::new(AtomicU64::new(0));
            let counter = done.clone();
            let mut copy = tokio::task::spawn_blocking(move || copy_checked(&from, &to, &holds, &counter));
            let mut told = 0;
            let copied = loop {
                tokio::select! {
                    finished = &mut copy => break finished?,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                let now = done.load(Ordering::Relaxed);
                sent(now - told);
                told = now;
            };
            sent(done.load(Ordering::Relaxed) - told);
            copied
        };
        if let Err(e) = copied {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, &target)
            .await
            .with_context(|| format!("cannot move object into place at {}", target.display()))?;
        Ok(())
    }

    async fn size(&self, key: &str) -> anyhow::Result<Option<u64>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e)
                .context("cannot read object metadata")
                .context(super::StoreUnavailable)),
        }
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> anyhow::Result<ByteStream> {
        let path = self.path(key)?;
        let len = end.saturating_sub(start);
        // One trip to the blocking pool opens the file and finds the start,
        // and reads the whole range when it fits one read: a small file then
        // costs one thread hand-off instead of three.
        let opened = tokio::task::spawn_blocking(move || -> io::Result<(std::fs::File, Option<Bytes>)> {
            let mut file = std::fs::File::open(&path)?;
            file.seek(io::SeekFrom::Start(start))?;
            if len <= CHUNK as u64 {
                let mut buf = vec![0; usize::try_from(len).unwrap_or(CHUNK)];
                file.read_exact(&mut buf)?;
                return Ok((file, Some(Bytes::from(buf))));
            }
            Ok((file, None))
        })
        .await?;
        let (file, whole) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("no object {key}"));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot read object {key}"))
                    .context(super::StoreUnavailable));
            }
        };
        if let Some(bytes) = whole {
            return Ok(Box::pin(futures_util::stream::once(async move { Ok(bytes) })));
        }
        Ok(read_range(file, start, len))
    }

    /// A file written once: created only if absent, synced, and made
    /// read-only. A directory enforces no retention: whoever can write it can
    /// still delete the file.
    async fn put_record(
        &self,
        key: &str,
        bytes: Vec<u8>,
        _retain_until: Option<std::time::SystemTime>,
    ) -> anyhow::Result<Locked> {
        let target = self.path(key)?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let dir = target.parent().context("record key has no parent")?;
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            let mut read_only = file.metadata()?.permissions();
            read_only.set_readonly(true);
            std::fs::set_permissions(&target, read_only)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        })
        .await??;
        Ok(Locked::Unlocked)
    }

    async fn get_record(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::Error::new(e)
                .context(format!("cannot read record {key}"))
                .context(super::StoreUnavailable)),
        }
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let root = self.root.clone();
        let start = self.path(prefix.trim_end_matches('/'))?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
            let mut keys = Vec::new();
            let mut dirs = vec![start];
            while let Some(dir) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!("cannot list {}", dir.display())));
                    }
                };
                for entry in entries {
                    let path = entry?.path();
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.starts_with('.') {
                        continue;
                    }
                    if path.is_dir() {
                        dirs.push(path);
                    } else if let Some(key) = path.strip_prefix(&root).ok().and_then(|p| p.to_str()) {
                        keys.push(key.replace(std::path::MAIN_SEPARATOR, "/"));
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await?
    }

    /// A directory cannot take a copy made by S3: publishing from a bucket
    /// needs the portal's objects in S3 too.
    async fn copy_in(
        &self,
        _key: &str,
        _object: &BucketObject,
        _expected: &Expected,
        _sent: &Sent,
    ) -> anyhow::Result<()> {
        anyhow::bail!(self.cannot_copy_in().unwrap_or_default())
    }

    fn cannot_copy_in(&self) -> Option<String> {
        Some(format!(
            "the portal keeps its objects in the directory {}, and publishing from a bucket copies within S3: \
             the portal's own objects must be in S3 too (WEIGHTGATE_STORAGE_URL=s3://BUCKET/PREFIX)",
            self.root.display()
        ))
    }

    /// The portal streams local files itself: there is no URL to hand out.
    async fn presign_get(
        &self,
        _key: &str,
        _range: Option<(u64, u64)>,
        _ttl: Duration,
        _file_name: &str,
    ) -> anyhow::Result<Option<String>> {
        Ok(None)
    }
}

/// Streams `len` bytes of `file` from `start` on, one chunk per trip to the
/// blocking pool, each read straight into the buffer that is sent: no second
/// buffer in between (as an async file keeps) and no copy from one to the
/// other. Chunks are smaller when many downloads are under way
/// ([`chunk_size`]). A file shorter than the range ends the stream with an
/// error.
fn read_range(file: std::fs::File, start: u64, len: u64) -> ByteStream {
    use std::os::unix::fs::FileExt as _;
    let file = std::sync::Arc::new(file);
    let reading = Reading::start();
    Box::pin(futures_util::stream::try_unfold(
        (start, len),
        move |(at, left)| {
            let file = std::sync::Arc::clone(&file);
            let _reading = &reading;
            let chunk = chunk_size(READING.load(Ordering::Relaxed));
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let n = usize::try_from(left.min(chunk as u64)).unwrap_or(chunk);
                let chunk = tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
                    let mut buf = vec![0; n];
                    file.read_exact_at(&mut buf, at)?;
                    Ok(Bytes::from(buf))
                })
                .await
                .map_err(io::Error::other)??;
                Ok(Some((chunk, (at + n as u64, left - n as u64))))
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::TryStreamExt;

    use super::*;

    #[test]
    fn many_downloads_at_once_read_less_each() {
        assert_eq!(chunk_size(0), CHUNK);
        assert_eq!(chunk_size(CHUNK_BUDGET / CHUNK), CHUNK);
        assert_eq!(chunk_size(1_000), 67_108);
        assert_eq!(chunk_size(100_000), MIN_CHUNK);
        assert!((1..5_000).all(|n| chunk_size(n) * n <= CHUNK_BUDGET.max(n * MIN_CHUNK)));
    }

    #[tokio::test]
    async fn stored_objects_read_back_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, b"0123456789").unwrap();
        let store = LocalDir::new(dir.path().join("objects"));
        let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
        let expected = Expected {
            size: 10,
            chunk_size: 4,
            chunks: vec![sha(b"0123"), sha(b"4567"), sha(b"89")],
        };
        // A file that is not what was hashed is refused, and nothing stays.
        std::fs::write(&source, b"0123456X89").unwrap();
        let err = store
            .put_file("sha256/ab/abc", &source, &expected, &|_| {})
            .await
            .unwrap_err();
        assert!(err.is::<Changed>(), "{err:#}");
        std::fs::write(&source, b"01234567890").unwrap();
        let err = store
            .put_file("sha256/ab/abc", &source, &expected, &|_| {})
            .await
            .unwrap_err();
        assert!(err.is::<Changed>(), "{err:#}");
        assert_eq!(store.size("sha256/ab/abc").await.unwrap(), None);
        assert_eq!(
            std::fs::read_dir(dir.path().join("objects/sha256/ab"))
                .unwrap()
                .count(),
            0
        );
        std::fs::write(&source, b"0123456789").unwrap();
        store
            .put_file("sha256/ab/abc", &source, &expected, &|_| {})
            .await
            .unwrap();
        assert_eq!(store.size("sha256/ab/abc").await.unwrap(), Some(10));
        assert_eq!(store.size("sha256/ab/missing").await.unwrap(), None);
        let parts: Vec<Bytes> = store
            .get_range("sha256/ab/abc", 3, 7)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(parts.concat(), b"3456");
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let store = LocalDir::new("/tmp/weightgate-never");
        for key in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(store.size(key).await.is_err(), "{key}");
        }
    }

    #[tokio::test]
    async fn a_directory_hands_out_no_urls() {
        let store = LocalDir::new("/tmp/weightgate-never");
        let url = store
            .presign_get("sha256/ab/abc", None, Duration::from_secs(60), "a.bin")
            .await
            .unwrap();
        assert_eq!(url, None);
    }
}
