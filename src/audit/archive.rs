//! Archived segments of the log: closed stretches of old events moved out of
//! the database into the object store, with their proof, and read back on
//! request.
//!
//! `weightgate audit archive --before DATE` takes the events after the last
//! archived segment up to the newest checkpoint the witness holds over an
//! event older than DATE. It re-hashes them first (a damaged log is never
//! archived), then writes them in segments of whole checkpoint intervals,
//! each ending at a witnessed checkpoint:
//!
//! - `audit-archive/segments/FIRST-LAST.jsonl.gz`: the events, one JSON
//!   object per line with every stored column, gzip-compressed: `zcat` and
//!   `jq` read them, and every line re-hashes as it did in the database.
//! - `audit-archive/manifests/FIRST-LAST.json`: the positions, the hash the
//!   segment chains from and the one it ends with, the object's size and
//!   SHA-256, and the signed checkpoint of its last event. Stored as the
//!   witness's checkpoints are: never replaced, and under S3 Object Lock
//!   retained like them.
//!
//! The segments go to the witness's store (by default the weights' store).
//! Each is recorded in `audit_archives` and by an `audit.archived` event in
//! the log itself, and only then are its events removed from the database.
//! The report totals are brought up to date first, so they keep counting
//! the archived events.
//!
//! What a later `audit verify` takes on trust, and what it checks: the live
//! log must chain on from the hash of the last archived event, which a
//! witnessed checkpoint must sign; the records must cover every position
//! from the first event without a gap; no live row may sit inside the
//! archived positions. `audit verify --archive` also reads every segment
//! back: its size and SHA-256 against both the record and its manifest, and
//! every event's hash and link, across segments and into the live log.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, BufWriter, Read, Write},
    path::Path,
    sync::Arc,
};

use anyhow::Context;
use flate2::{Compression, bufread::GzDecoder, write::GzEncoder};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Action, Event, GENESIS, Outcome,
    checkpoint::{self, ExportedCheckpoint, Trust},
    report::{Coverage, delivered_span},
    verify::hashed,
    witness::Witnessed,
};
use crate::{
    db::{self, Db, archives::ArchiveRow, audit::EventRow},
    storage::{ChunkHasher, Expected, ObjectStore},
    types::{format_ms, now_ms},
};

/// Where archived segments live in their store.
pub(crate) const PREFIX: &str = "audit-archive/";

const FORMAT: &str = "weightgate-audit-archive-v1";

/// Events a segment holds at least, unless the archive ends first: a
/// segment ends at the first witnessed checkpoint after this many.
pub const SEGMENT_EVENTS: i64 = 1_000_000;

/// Events read per page while archiving.
const PAGE: usize = 8_192;

/// The most text read back into one page of events.
const PAGE_BYTES: usize = 32 << 20;

/// The longest line a segment may hold: far more than any event takes.
const MAX_LINE: u64 = 1 << 20;

/// The chunk size the store is told the segment was hashed in.
const CHUNK: u64 = 64 << 20;

/// Where segments are kept, and where they are written and read back on
/// their way.
#[derive(Clone, Debug)]
pub struct Archive {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// A directory for scratch copies of segments.
    pub(crate) scratch: std::path::PathBuf,
    /// How long a store that can lock objects keeps a manifest from being
    /// deleted or replaced: the witness's retention.
    pub(crate) retention: std::time::Duration,
}

/// What describes a segment, kept beside it in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub events: i64,
    /// The hash of the event before the first (all zeros for event 1).
    pub prev_hash: String,
    pub last_hash: String,
    pub first_at: i64,
    pub last_at: i64,
    /// The key of the compressed events in the same store.
    pub object: String,
    pub size: i64,
    pub sha256: String,
    /// The witnessed checkpoint that signs event `last_seq` with `last_hash`.
    pub checkpoint: ExportedCheckpoint,
    pub archived_at: i64,
}

impl Manifest {
    /// The record of this segment, whose manifest is stored under `key`.
    fn row(&self, key: String) -> ArchiveRow {
        ArchiveRow {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            events: self.events,
            prev_hash: self.prev_hash.clone(),
            last_hash: self.last_hash.clone(),
            first_at: self.first_at,
            last_at: self.last_at,
            object: self.object.clone(),
            manifest: key,
            size: self.size,
            sha256: self.sha256.clone(),
            archived_at: self.archived_at,
        }
    }

    /// Whether `row` records this segment (its manifest aside).
    fn describes(&self, row: &ArchiveRow) -> bool {
        self.first_seq == row.first_seq
            && self.last_seq == row.last_seq
            && self.events == row.events
            && self.prev_hash == row.prev_hash
            && self.last_hash == row.last_hash
            && self.first_at == row.first_at
            && self.last_at == row.last_at
            && self.object == row.object
            && self.size == row.size
            && self.sha256 == row.sha256
    }
}

fn name(first: i64, last: i64) -> String {
    format!("{first:020}-{last:020}")
}

fn object_key(first: i64, last: i64) -> String {
    format!("{PREFIX}segments/{}.jsonl.gz", name(first, last))
}

fn manifest_key(first: i64, last: i64) -> String {
    format!("{PREFIX}manifests/{}.json", name(first, last))
}

/// What an archive run did.
#[derive(Clone, Debug, Default)]
pub struct Archived {
    /// The segments written, oldest first.
    pub segments: Vec<ArchiveRow>,
    /// Events removed from the database.
    pub removed: u64,
    /// Events an interrupted run had archived but not removed, removed now.
    pub left_over: u64,
    /// Why nothing (more) was archived, when nothing was.
    pub nothing: Option<String>,
}

/// The hash of the event at `seq`: the live log's, or, once it is archived,
/// the one its segment's record ends with when `seq` ends a segment.
pub(crate) async fn hash_at(db: &Db, seq: i64) -> anyhow::Result<Option<String>> {
    if let Some(hash) = db::reports::hash_at(db.pool(), seq).await? {
        return Ok(Some(hash));
    }
    Ok(db::archives::holding(db.pool(), seq)
        .await?
        .filter(|a| a.last_seq == seq)
        .map(|a| a.last_hash))
}

/// Where the live log starts: the position and hash of the last archived
/// event, or the log's start.
pub(crate) async fn boundary(db: &Db) -> anyhow::Result<(i64, String)> {
    Ok(db::archives::newest(db.pool())
        .await?
        .map_or_else(|| (0, GENESIS.to_owned()), |a| (a.last_seq, a.last_hash)))
}

/// Moves the events up to the newest witnessed checkpoint over an event
/// older than `before` (ms) to `store`, in segments of at least
/// `segment_events`, and removes them from the database.
/// Told of each segment once it is recorded.
pub type Recorded<'a> = &'a (dyn Fn(&ArchiveRow) + Sync);

/// How long an archive run holds its lease without renewing it.
const LEASE_MS: i64 = 15 * 60_000;

#[allow(clippy::too_many_arguments)]
pub async fn archive(
    db: &Db,
    archive: &Archive,
    trust: &Trust,
    witnessed: &[Witnessed],
    before: i64,
    segment_events: i64,
    recorded: Recorded<'_>,
) -> anyhow::Result<Archived> {
    let holder = format!("{:032x}", rand::random::<u128>());
    anyhow::ensure!(
        db::archives::take_lease(db, &holder, now_ms(), now_ms() + LEASE_MS).await?,
        "another `weightgate audit archive` is running; try again once it is done"
    );
    let done = archive_leased(
        db,
        archive,
        trust,
        witnessed,
        before,
        segment_events,
        recorded,
        &holder,
    )
    .await;
    db::archives::release_lease(db, &holder).await?;
    done
}

#[allow(clippy::too_many_arguments)]
async fn archive_leased(
    db: &Db,
    archive: &Archive,
    trust: &Trust,
    witnessed: &[Witnessed],
    before: i64,
    segment_events: i64,
    recorded: Recorded<'_>,
    holder: &str,
) -> anyhow::Result<Archived> {
    let mut done = Archived::default();
    remove_stale_scratch(&archive.scratch);
    // The records must hold before the log goes on from them.
    let records = check_records(db, archive, trust).await?;
    if let Some((_, problem)) = records.problems.first() {
        anyhow::bail!("{problem}: nothing archived; run `weightgate audit verify`");
    }
    // The totals must hold these events before they leave.
    super::report::catch_up(db).await?;
    let (mut last_seq, mut last_hash) = boundary(db).await?;
    // Events an interrupted run archived but did not get to remove.
    if let Some(newest) = records.rows.last() {
        done.left_over = remove_left_over(db, newest).await?;
    }
    if let Some(lowest) = db::archives::lowest_live(db.pool()).await?
        && lowest <= last_seq
    {
        anyhow::bail!(
            "the log holds a row at position {lowest}, where no event can be left: nothing archived; run \
             `weightgate audit verify`"
        );
    }
    // A segment an interrupted run stored but did not record ends where it
    // ended, whatever this run was asked, so that its manifest is recorded.
    let mut pending_end = None;
    for m in &records.pending {
        anyhow::ensure!(
            m.first_seq == last_seq + 1
                && m.prev_hash == last_hash
                && signs(trust, &m.checkpoint, m.last_seq, &m.last_hash),
            "the store holds the manifest of events {} to {}, which is not recorded and does not follow on from \
             the archive's end (event {last_seq}): nothing archived",
            m.first_seq,
            m.last_seq
        );
        pending_end = Some((m.last_seq, m.checkpoint.clone()));
    }

    // Where segments may end: witnessed checkpoints, signed by a trusted
    // key, over events past the boundary older than `before`, whose hash
    // the log still has.
    let mut ends: BTreeMap<i64, ExportedCheckpoint> = BTreeMap::new();
    for w in witnessed {
        let c = &w.checkpoint;
        if c.seq <= last_seq || ends.contains_key(&c.seq) {
            continue;
        }
        let Some(public) = trust.get(&c.kid) else { continue };
        if !checkpoint::signature_holds(public, c.seq, &c.hash, c.at, &c.signature) {
            continue;
        }
        match db::audit::find_event(db.pool(), c.seq).await? {
            Some(event) if event.hash != c.hash => anyhow::bail!(
                "event {} no longer has the hash {} signed: nothing archived; run `weightgate audit verify`",
                c.seq,
                w.place
            ),
            Some(event) if event.at < before => {
                ends.insert(c.seq, c.clone());
            }
            _ => {}
        }
    }
    if let Some((seq, checkpoint)) = &pending_end {
        ends.retain(|&at, _| at <= *seq);
        ends.insert(*seq, checkpoint.clone());
    }
    let pending_end = pending_end.map(|(seq, _)| seq);
    let Some(&end) = ends.keys().next_back() else {
        done.nothing = Some(format!(
            "nothing to archive: no checkpoint the witness holds signs an event after event {last_seq} \
             and before {} UTC (`weightgate audit checkpoint` signs the head)",
            format_ms(before)
        ));
        return Ok(done);
    };
    let cursor = db::reports::cursor(db.pool()).await?;
    anyhow::ensure!(
        cursor.seq >= end,
        "the report totals are being rebuilt and have not reached event {end} yet: archive once they have"
    );
    // Events nobody listens to need no message: only a subscription makes
    // the archive wait for the webhook worker.
    let told = db::webhooks::cursor(db.pool()).await?;
    anyhow::ensure!(
        told >= end || db::webhooks::listeners(db.pool()).await?.is_empty(),
        "webhooks have been written for events up to {told} only, not yet for event {end}: archive once the \
         running portal has caught up"
    );

    let mut segment: Option<Segment> = None;
    'pages: loop {
        let page = db::audit::read_page(db, last_seq, PAGE).await?;
        if page.is_empty() {
            anyhow::bail!("the log ends before event {end}; nothing more archived");
        }
        let (page, intact) = hashed(page).await?;
        for (r, intact) in page.iter().zip(intact) {
            if r.seq != last_seq + 1 || r.prev_hash != last_hash || !intact {
                anyhow::bail!(
                    "event {} does not hold (not in place, not linked to event {last_seq}, or modified): \
                     nothing after event {last_seq} was archived; run `weightgate audit verify`",
                    last_seq + 1
                );
            }
            let open = match segment.take() {
                Some(open) => open,
                None => Segment::create(&archive.scratch, r.seq, &last_hash)?,
            };
            // Compressing a page's worth takes milliseconds; an archive run
            // is a command of its own.
            segment = Some(open.push(r)?);
            last_seq = r.seq;
            last_hash.clone_from(&r.hash);
            let events = segment.as_ref().map_or(0, |s| s.events);
            if let Some(checkpoint) = ends.get(&r.seq)
                && (events >= segment_events || r.seq == end || Some(r.seq) == pending_end)
            {
                let finished = segment.take().context("a segment is open")?;
                let row = store_segment(db, archive, finished, checkpoint).await?;
                recorded(&row);
                done.removed += db::archives::remove_between(db, row.first_seq, row.last_seq).await?;
                done.segments.push(row);
                anyhow::ensure!(
                    db::archives::take_lease(db, holder, now_ms(), now_ms() + LEASE_MS).await?,
                    "this archive run's lease ran out and another run took it: stopped after event {last_seq}"
                );
                if r.seq == end {
                    break 'pages;
                }
            }
        }
    }
    Ok(done)
}

/// The archive's records, each checked against its manifest in the store.
pub(crate) struct Records {
    pub(crate) rows: Vec<ArchiveRow>,
    /// Manifests an interrupted run stored but did not record, whose events
    /// the log still holds: the next run records them.
    pub(crate) pending: Vec<Manifest>,
    /// What does not hold: where, and in words.
    pub(crate) problems: Vec<(i64, String)>,
}

/// Manifests read at once.
const MANIFESTS_AT_ONCE: usize = 16;

/// Checks every record of an archived segment against its manifest in the
/// store (which whoever writes the database cannot write): the manifest is
/// there, says the same, and carries a checkpoint of the segment's last
/// event signed with a trusted key; and every manifest in the store is
/// recorded, or belongs to events the log still holds.
pub(crate) async fn check_records(db: &Db, archive: &Archive, trust: &Trust) -> anyhow::Result<Records> {
    let rows = db::archives::all(db.pool()).await?;
    // Owned keys and a shared store: a stream over borrows held across an
    // await would make every caller's future `Send` for one lifetime only.
    let store = archive.store.clone();
    let read = move |key: String| {
        let store = store.clone();
        async move {
            let bytes = store.get_record(&key).await?;
            anyhow::Ok(bytes.and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()))
        }
    };
    let keys: Vec<String> = rows.iter().map(|r| r.manifest.clone()).collect();
    let manifests: Vec<Option<Manifest>> = futures_util::stream::iter(keys)
        .map(read.clone())
        .buffered(MANIFESTS_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let mut problems = Vec::new();
    for (row, manifest) in rows.iter().zip(&manifests) {
        let what = match manifest {
            None => Some(format!(
                "the manifest {} of the archived events {} to {} is missing from the store, or is not one",
                row.manifest, row.first_seq, row.last_seq
            )),
            Some(m) if !m.describes(row) => Some(format!(
                "the database's record of the archived events {} to {} differs from its manifest {}",
                row.first_seq, row.last_seq, row.manifest
            )),
            Some(m) if !signs(trust, &m.checkpoint, row.last_seq, &row.last_hash) => Some(format!(
                "the manifest {} carries no checkpoint of event {} with its hash signed by a trusted key",
                row.manifest, row.last_seq
            )),
            Some(_) => None,
        };
        problems.extend(what.map(|w| (row.first_seq, w)));
    }
    let recorded: std::collections::HashSet<&str> = rows.iter().map(|r| r.manifest.as_str()).collect();
    let mut pending = Vec::new();
    for key in archive.store.list(&format!("{PREFIX}manifests/")).await? {
        if recorded.contains(key.as_str()) {
            continue;
        }
        let Some(m) = read(key.clone()).await? else {
            problems.push((0, format!("the store holds {key}, which is no segment manifest")));
            continue;
        };
        if db::reports::hash_at(db.pool(), m.last_seq).await?.as_deref() == Some(m.last_hash.as_str()) {
            pending.push(m);
        } else {
            problems.push((
                m.first_seq,
                format!(
                    "the store holds the manifest {key} of the archived events {} to {}, which the database \
                     no longer records",
                    m.first_seq, m.last_seq
                ),
            ));
        }
    }
    Ok(Records {
        rows,
        pending,
        problems,
    })
}

/// Whether `c` is a checkpoint of event `seq` with `hash` that a trusted key signed.
fn signs(trust: &Trust, c: &ExportedCheckpoint, seq: i64, hash: &str) -> bool {
    c.seq == seq
        && c.hash == hash
        && trust
            .get(&c.kid)
            .is_some_and(|public| checkpoint::signature_holds(public, c.seq, &c.hash, c.at, &c.signature))
}

/// Removes the events of `newest`, the last archived segment, that an
/// interrupted run left in the log, once they prove to be its tail: in
/// place, intact, and chaining to the hash it ends with. Anything else at
/// an archived position stays, for `audit verify` to name.
async fn remove_left_over(db: &Db, newest: &ArchiveRow) -> anyhow::Result<u64> {
    let Some(lowest) = db::archives::lowest_live(db.pool()).await? else {
        return Ok(0);
    };
    if lowest > newest.last_seq {
        return Ok(0);
    }
    let refuse = || {
        anyhow::anyhow!(
            "the log holds rows at archived positions (from {lowest}) that are not the events of the segment \
             {}: nothing archived; run `weightgate audit verify`",
            newest.object
        )
    };
    if lowest < newest.first_seq {
        return Err(refuse());
    }
    let mut last: Option<(i64, String)> = None;
    let mut after = lowest - 1;
    'pages: loop {
        let page = db::audit::read_page(db, after, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let (page, intact) = hashed(page).await?;
        for (r, intact) in page.iter().zip(intact) {
            if r.seq > newest.last_seq {
                break 'pages;
            }
            let follows = last
                .as_ref()
                .is_none_or(|(seq, hash)| r.seq == seq + 1 && r.prev_hash == *hash);
            if !intact || !follows {
                return Err(refuse());
            }
            last = Some((r.seq, r.hash.clone()));
            after = r.seq;
        }
    }
    if last != Some((newest.last_seq, newest.last_hash.clone())) {
        return Err(refuse());
    }
    Ok(db::archives::remove_between(db, lowest, newest.last_seq).await?)
}

/// Scratch copies older than a day are left by a run that was killed.
fn remove_stale_scratch(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
            t.elapsed()
                .is_ok_and(|age| age > std::time::Duration::from_secs(86_400))
        });
        if old && entry.file_name().to_string_lossy().starts_with(".audit-segment-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A segment being written: compressed JSON Lines in a scratch file.
struct Segment {
    file: tempfile::NamedTempFile,
    gz: GzEncoder<BufWriter<std::fs::File>>,
    first_seq: i64,
    prev_hash: String,
    first_at: i64,
    last: Option<(i64, String, i64)>,
    events: i64,
    line: Vec<u8>,
    /// What its `file.delivered` events delivered, per grant and file:
    /// bytes, and the spans covered (see `db::grants::Delivery`).
    deliveries: Deliveries,
}

impl Segment {
    fn create(scratch: &Path, first_seq: i64, prev_hash: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
        let file = tempfile::Builder::new()
            .prefix(".audit-segment-")
            .tempfile_in(scratch)
            .with_context(|| format!("cannot create a scratch file in {}", scratch.display()))?;
        let gz = GzEncoder::new(BufWriter::new(file.reopen()?), Compression::default());
        Ok(Self {
            file,
            gz,
            first_seq,
            prev_hash: prev_hash.to_owned(),
            first_at: 0,
            last: None,
            events: 0,
            line: Vec::with_capacity(1024),
            deliveries: BTreeMap::new(),
        })
    }

    fn push(mut self, r: &EventRow) -> anyhow::Result<Self> {
        if self.events == 0 {
            self.first_at = r.at;
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, r)?;
        self.line.push(b'\n');
        self.gz.write_all(&self.line)?;
        self.events += 1;
        self.last = Some((r.seq, r.hash.clone(), r.at));
        add_delivery(&mut self.deliveries, r);
        Ok(self)
    }
}

/// What archived deliveries add up to, per grant and file: bytes, and the
/// spans covered.
type Deliveries = BTreeMap<(String, String), (i64, Coverage)>;

/// Adds what `r` delivered, if it is a delivery, as `db::grants::DELIVERIES`
/// and `domain::deliveries` count it from the log.
fn add_delivery(deliveries: &mut Deliveries, r: &EventRow) {
    if r.action == Action::FileDelivered.as_str()
        && let (Some(grant), Some(file), Some(start), Some(bytes)) =
            (&r.grant_id, &r.file_id, r.range_start, r.bytes)
    {
        let (total, coverage) = deliveries.entry((grant.clone(), file.clone())).or_default();
        *total = total.saturating_add(bytes.max(0));
        if let Some((a, b)) = delivered_span(start, None, Some(bytes)) {
            coverage.add(a, b);
        }
    }
}

/// Uploads a finished segment and its manifest, and records it in the
/// database and in the log.
async fn store_segment(
    db: &Db,
    archive: &Archive,
    segment: Segment,
    checkpoint: &ExportedCheckpoint,
) -> anyhow::Result<ArchiveRow> {
    let (last_seq, last_hash, last_at) = segment.last.clone().context("a segment holds an event")?;
    let Segment {
        file,
        gz,
        first_seq,
        prev_hash,
        first_at,
        events,
        deliveries,
        ..
    } = segment;
    let (file, size, sha256, chunks) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut out = gz.finish()?;
        out.flush()?;
        out.get_ref().sync_all()?;
        let (size, sha256, chunks) = digest_file(file.path(), CHUNK)?;
        Ok((file, size, sha256, chunks))
    })
    .await??;
    anyhow::ensure!(
        checkpoint.seq == last_seq && checkpoint.hash == last_hash,
        "the checkpoint of event {} does not sign the segment's last event {last_seq}: nothing more archived",
        checkpoint.seq
    );
    let store = &archive.store;
    let object = object_key(first_seq, last_seq);
    let key = manifest_key(first_seq, last_seq);
    // A run that stopped after storing this manifest stored these events:
    // the segment it describes is kept as it is, once its bytes prove to be
    // the ones described, and recorded now.
    let manifest = match store.get_record(&key).await? {
        Some(bytes) => {
            let kept: Manifest =
                serde_json::from_slice(&bytes).with_context(|| format!("{key} is not a segment manifest"))?;
            anyhow::ensure!(
                (
                    kept.first_seq,
                    kept.last_seq,
                    kept.events,
                    &kept.prev_hash,
                    &kept.last_hash
                ) == (first_seq, last_seq, events, &prev_hash, &last_hash),
                "{key} is already stored and describes other events: nothing more archived"
            );
            let stored = kept.row(key.clone());
            drop(SegmentReader::open(archive, &stored).await.with_context(|| {
                format!(
                    "{key} is already stored, but its segment is not what it describes: nothing more archived"
                )
            })?);
            kept
        }
        None => {
            let expected = Expected {
                size,
                chunk_size: CHUNK,
                chunks,
            };
            store
                .put_file(&object, file.path(), &expected, &|_| {})
                .await
                .with_context(|| format!("cannot store the segment {object}"))?;
            let manifest = Manifest {
                format: FORMAT.to_owned(),
                first_seq,
                last_seq,
                events,
                prev_hash,
                last_hash,
                first_at,
                last_at,
                object,
                size: i64::try_from(size)?,
                sha256,
                checkpoint: checkpoint.clone(),
                archived_at: now_ms(),
            };
            let json = serde_json::to_string_pretty(&manifest)? + "\n";
            let retain = std::time::SystemTime::now() + archive.retention;
            store
                .put_record(&key, json.into_bytes(), Some(retain))
                .await
                .with_context(|| format!("cannot store the manifest {key}"))?;
            manifest
        }
    };
    drop(file);
    let row = manifest.row(key);
    let mut event = Event::new(Action::AuditArchived, Outcome::Ok);
    event.subject = Some(format!(
        "events {first_seq} to {last_seq} ({events}) to {} (sha256 {})",
        row.object, row.sha256
    ));
    let mut tx = db.begin().await?;
    // The totals must still hold these events when they leave: a rebuild
    // started meanwhile would never see them.
    let cursor = db::reports::lock_cursor(&mut tx).await?;
    anyhow::ensure!(
        cursor.seq >= last_seq,
        "the report totals were emptied while the log was being archived (a rebuild?): the segment {} is \
         stored but not recorded, and its events stay in the database; archive again once they are rebuilt",
        row.object
    );
    for ((grant, file), (bytes, coverage)) in &deliveries {
        let (mut total, mut merged) = match db::archives::archived_delivery(&mut tx, grant, file).await? {
            Some((before, spans)) => (
                before,
                Coverage::decode(&spans).with_context(|| format!("archived deliveries of grant {grant}"))?,
            ),
            None => (0, Coverage::default()),
        };
        total = total.saturating_add(*bytes);
        for (a, b) in coverage.iter() {
            merged.add(a, b);
        }
        db::archives::put_archived_delivery(&mut tx, grant, file, total, &merged.encode()).await?;
    }
    db::archives::insert(&mut tx, &row).await?;
    super::append(&mut tx, db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(row)
}

/// The size of the file at `path`, its SHA-256 and the SHA-256 of each
/// `chunk` bytes, in hex.
fn digest_file(path: &Path, chunk: u64) -> anyhow::Result<(u64, String, Vec<String>)> {
    let mut file = std::fs::File::open(path)?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut hasher = ChunkHasher::new(chunk);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        whole.update(&buf[..n]);
        hasher.update(&buf[..n], |digest| {
            chunks.push(digest);
            true
        });
    }
    chunks.extend(hasher.finish());
    Ok((size, hex::encode(whole.finalize()), chunks))
}

/// A segment read back: its events, page by page, from a scratch copy whose
/// size and SHA-256 were checked against the record.
pub(crate) struct SegmentReader {
    reader: BufReader<GzDecoder<BufReader<std::fs::File>>>,
    buf: Vec<u8>,
    /// Kept until the reader is dropped.
    _file: tempfile::NamedTempFile,
    object: String,
    line: u64,
}

/// A segment that is not what its record says.
#[derive(Debug, thiserror::Error)]
#[error("the archived segment {object} {what}")]
pub(crate) struct Damaged {
    pub(crate) object: String,
    pub(crate) what: String,
}

impl SegmentReader {
    /// Copies the segment `row` names out of `store` into `scratch`,
    /// checking its size and SHA-256 on the way.
    pub(crate) async fn open(archive: &Archive, row: &ArchiveRow) -> anyhow::Result<Self> {
        let (store, scratch) = (&archive.store, &archive.scratch);
        let damaged = |what: String| Damaged {
            object: row.object.clone(),
            what,
        };
        let size = store
            .size(&row.object)
            .await?
            .ok_or_else(|| damaged("is missing from the store".into()))?;
        if i64::try_from(size).ok() != Some(row.size) {
            return Err(damaged(format!("holds {size} bytes, not the {} recorded", row.size)).into());
        }
        std::fs::create_dir_all(scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
        let file = tempfile::Builder::new()
            .prefix(".audit-segment-")
            .tempfile_in(scratch)?;
        let mut out = tokio::fs::File::from_std(file.reopen()?);
        let mut stream = store.get_range(&row.object, 0, size).await?;
        let mut digest = Sha256::new();
        while let Some(bytes) = stream.next().await {
            let bytes = bytes?;
            digest.update(&bytes);
            tokio::io::AsyncWriteExt::write_all(&mut out, &bytes).await?;
        }
        tokio::io::AsyncWriteExt::flush(&mut out).await?;
        let sha256 = hex::encode(digest.finalize());
        if sha256 != row.sha256 {
            return Err(damaged(format!(
                "has the SHA-256 {sha256}, not the {} recorded",
                row.sha256
            ))
            .into());
        }
        let reader = BufReader::new(GzDecoder::new(BufReader::new(file.reopen()?)));
        Ok(Self {
            reader,
            buf: Vec::new(),
            _file: file,
            object: row.object.clone(),
            line: 0,
        })
    }

    /// The reader and the next at most `size` events, read off the
    /// runtime's threads; empty at the end.
    pub(crate) async fn next_page(mut self, size: usize) -> anyhow::Result<(Self, Vec<EventRow>)> {
        tokio::task::spawn_blocking(move || {
            let page = self.page(size)?;
            Ok((self, page))
        })
        .await?
    }

    /// The next at most `size` events; empty at the end. Blocking.
    fn page(&mut self, size: usize) -> anyhow::Result<Vec<EventRow>> {
        let mut page = Vec::with_capacity(size.min(PAGE));
        let mut bytes = 0;
        while page.len() < size && bytes < PAGE_BYTES {
            self.buf.clear();
            let read = (&mut self.reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Damaged {
                    object: self.object.clone(),
                    what: format!("cannot be read after line {}: {e}", self.line),
                })?;
            if read == 0 {
                break;
            }
            self.line += 1;
            bytes += read;
            if self.buf.last() != Some(&b'\n') && self.buf.len() as u64 > MAX_LINE {
                return Err(Damaged {
                    object: self.object.clone(),
                    what: format!("holds a line {} longer than any event", self.line),
                }
                .into());
            }
            let event: EventRow = serde_json::from_slice(&self.buf).map_err(|e| Damaged {
                object: self.object.clone(),
                what: format!("holds no event at line {}: {e}", self.line),
            })?;
            page.push(event);
        }
        Ok(page)
    }
}

/// What reading the archived segments back found.
#[derive(Clone, Debug, Default)]
pub(crate) struct ArchiveCheck {
    pub(crate) segments: i64,
    /// Events re-hashed in them.
    pub(crate) events: i64,
    /// Where the archive ends: the live log chains on from here.
    pub(crate) end: (i64, String),
    /// What does not hold, in words; empty when every segment does.
    pub(crate) problems: Vec<String>,
}

/// Reads every archived segment back and checks it: against its record and
/// its manifest, its events' hashes and links from the first event on, and
/// the witness's checkpoints of events inside it.
pub(crate) async fn check(
    db: &Db,
    archive: &Archive,
    trust: &Trust,
    witnessed: &[Witnessed],
) -> anyhow::Result<ArchiveCheck> {
    let rows = db::archives::all(db.pool()).await?;
    let mut found = ArchiveCheck {
        end: (0, GENESIS.to_owned()),
        ..ArchiveCheck::default()
    };
    // Every checkpoint a trusted key signed, several at one position too.
    let mut kept: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for w in witnessed {
        let c = &w.checkpoint;
        if signs(trust, c, c.seq, &c.hash) {
            kept.entry(c.seq).or_default().push(c.hash.as_str());
        }
    }
    let mut deliveries = Deliveries::new();
    for row in &rows {
        found.segments += 1;
        if let Err(problem) = check_segment(archive, row, &kept, &mut deliveries, &mut found).await? {
            found.problems.push(problem);
            return Ok(found);
        }
    }
    // What quotas count of the archived deliveries is what the segments hold.
    let stored: BTreeMap<(String, String), (i64, String)> = db::archives::all_archived_deliveries(db.pool())
        .await?
        .into_iter()
        .map(|(grant, file, bytes, spans)| ((grant, file), (bytes, spans)))
        .collect();
    let read: BTreeMap<(String, String), (i64, String)> = deliveries
        .into_iter()
        .map(|(key, (bytes, coverage))| (key, (bytes, coverage.encode())))
        .collect();
    if let Some(((grant, file), _)) = stored
        .iter()
        .filter(|(key, value)| read.get(*key) != Some(*value))
        .chain(read.iter().filter(|(key, _)| !stored.contains_key(*key)))
        .next()
    {
        found.problems.push(format!(
            "what the archived segments delivered under grant {grant} of file {file} is not what quotas count \
             (audit_archived_deliveries was changed)"
        ));
    }
    Ok(found)
}

/// Checks one segment, continuing the walk in `found`; `Err` names what
/// does not hold.
async fn check_segment(
    archive: &Archive,
    row: &ArchiveRow,
    kept: &BTreeMap<i64, Vec<&str>>,
    deliveries: &mut Deliveries,
    found: &mut ArchiveCheck,
) -> anyhow::Result<Result<(), String>> {
    let manifest = match archive.store.get_record(&row.manifest).await? {
        Some(bytes) => serde_json::from_slice::<Manifest>(&bytes).ok(),
        None => None,
    };
    match manifest {
        None => {
            return Ok(Err(format!(
                "the segment manifest {} is missing or unreadable",
                row.manifest
            )));
        }
        Some(m) if !m.describes(row) => {
            return Ok(Err(format!(
                "the database's record of events {} to {} differs from its manifest {}",
                row.first_seq, row.last_seq, row.manifest
            )));
        }
        Some(_) => {}
    }
    let mut reader = match SegmentReader::open(archive, row).await {
        Ok(reader) => reader,
        Err(e) => match e.downcast::<Damaged>() {
            Ok(damaged) => return Ok(Err(damaged.to_string())),
            Err(e) => return Err(e),
        },
    };
    let (mut last_seq, mut last_hash) = found.end.clone();
    loop {
        let page = match reader.next_page(PAGE).await {
            Ok((r, page)) => {
                reader = r;
                page
            }
            Err(e) => match e.downcast::<Damaged>() {
                Ok(damaged) => return Ok(Err(damaged.to_string())),
                Err(e) => return Err(e),
            },
        };
        if page.is_empty() {
            break;
        }
        let (page, intact) = hashed(page).await?;
        for (r, intact) in page.iter().zip(intact) {
            let what = if r.seq != last_seq + 1 {
                Some(format!(
                    "holds event {} where event {} belongs",
                    r.seq,
                    last_seq + 1
                ))
            } else if !intact {
                Some(format!(
                    "holds event {} modified: its contents no longer match its hash",
                    r.seq
                ))
            } else if r.prev_hash != last_hash {
                Some(format!("holds event {} not following event {last_seq}", r.seq))
            } else if kept
                .get(&r.seq)
                .is_some_and(|hashes| hashes.iter().any(|h| *h != r.hash))
            {
                Some(format!(
                    "holds event {} with another hash than the witness's checkpoint of it",
                    r.seq
                ))
            } else {
                None
            };
            if let Some(what) = what {
                return Ok(Err(format!("the archived segment {} {what}", row.object)));
            }
            last_seq = r.seq;
            last_hash.clone_from(&r.hash);
            found.events += 1;
            add_delivery(deliveries, r);
        }
    }
    if last_seq != row.last_seq || last_hash != row.last_hash {
        return Ok(Err(format!(
            "the archived segment {} ends at event {last_seq}, not at event {} with the hash recorded",
            row.object, row.last_seq
        )));
    }
    found.end = (last_seq, last_hash);
    Ok(Ok(()))
}
