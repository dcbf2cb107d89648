//! Checking the log: a walk over the hash chain, page by page, and a check of
//! every signed checkpoint. When something does not hold, the walk looks
//! around the first broken event to say what happened to it.

use std::fmt;

use super::{
    GENESIS,
    archive::{self, Archive},
    checkpoint::{self, ExportedCheckpoint, Trust},
    hash_matches,
    witness::Witnessed,
};
use crate::{
    db::{
        self, Db,
        audit::{CheckpointRow, EventRow},
    },
    types::format_ms,
};

/// Events read per page; the next pages are read while this one is hashed.
const PAGE: usize = 8_192;

/// Checkpoints read per page.
const CHECKPOINT_PAGE: i64 = 1_000;

/// Most checkpoint problems one verification lists.
const MAX_CHECKPOINT_PROBLEMS: usize = 10;

/// Which checkpoint a problem was found with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointSource {
    /// One stored in the database.
    Stored { seq: i64, at: i64, kid: String },
    /// The file given to `verify --checkpoint`.
    Exported,
    /// One the witness holds, and where.
    Witness { place: String },
}

impl CheckpointSource {
    pub(crate) fn stored(c: &CheckpointRow) -> Self {
        CheckpointSource::Stored {
            seq: c.seq,
            at: c.at,
            kid: c.kid.clone(),
        }
    }
}

impl fmt::Display for CheckpointSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointSource::Stored { seq, at, kid } => write!(
                f,
                "the checkpoint of event {seq} signed {} UTC with key {kid}",
                format_ms(*at)
            ),
            CheckpointSource::Exported => f.write_str("the exported checkpoint"),
            CheckpointSource::Witness { place } => write!(f, "the checkpoint in {place}"),
        }
    }
}

/// Something about the log that does not hold, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The event's contents changed; its stored hash is the original.
    Modified {
        seq: i64,
    },
    /// The event is intact but does not link to the one before it.
    BrokenLink {
        seq: i64,
    },
    /// The row at `seq` is no event of the chain at all.
    Forged {
        seq: i64,
    },
    /// Positions `first..=last` hold nothing.
    Missing {
        first: i64,
        last: i64,
    },
    /// The event that belongs at `seq` sits at `to`.
    Moved {
        seq: i64,
        to: i64,
    },
    /// Event `seq` was deleted and the later events were moved down a place.
    DeletedAndRenumbered {
        seq: i64,
    },
    /// A row was put at `seq`, pushing the original event `seq` and later ones up a place.
    Inserted {
        seq: i64,
    },
    /// A row with a position no event can have (zero or less).
    InsertedBeforeStart {
        seq: i64,
    },
    /// Events `first` and `second` sit in each other's place.
    Swapped {
        first: i64,
        second: i64,
    },
    /// Position `position` holds event `holds`.
    Reordered {
        position: i64,
        holds: i64,
    },
    /// A checkpoint names an event past the end of the log.
    Truncated {
        source: CheckpointSource,
        checkpoint_seq: i64,
        /// The newest event stored, `None` when the log is empty.
        log_end: Option<i64>,
    },
    /// The event at the checkpoint's position has another hash than the one signed.
    Rewritten {
        source: CheckpointSource,
        seq: i64,
    },
    BadSignature {
        source: CheckpointSource,
    },
    UnknownKey {
        source: CheckpointSource,
        kid: String,
    },
    /// The witness holds a checkpoint of event `seq` whose hash the log no
    /// longer has there: the log in the database is another history than
    /// the one the portal signed.
    Forked {
        source: CheckpointSource,
        seq: i64,
    },
    /// A stored checkpoint (with a trusted signature) that the witness never
    /// received: signed outside the portal, over a rewritten log.
    NotWitnessed {
        source: CheckpointSource,
        seq: i64,
    },
    /// Positions `first..=last` are neither in the log nor in an archived segment.
    NotArchived {
        first: i64,
        last: i64,
    },
    /// The archived segments end at event `seq`, but no checkpoint the
    /// witness holds signs that event with the hash they record.
    ArchiveUnproven {
        seq: i64,
    },
    /// A row at position `seq` of the live log, among the archived positions.
    InsideArchive {
        seq: i64,
        archived_through: i64,
    },
    /// An archived segment that does not hold what it should, read back by
    /// `verify --archive`, from position `first`.
    Archive {
        first: i64,
        what: String,
    },
}

impl Problem {
    /// Where in the log the problem starts, to put the first one first.
    pub(crate) fn position(&self) -> i64 {
        match self {
            Problem::Modified { seq }
            | Problem::Forged { seq }
            | Problem::Moved { seq, .. }
            | Problem::DeletedAndRenumbered { seq }
            | Problem::Inserted { seq }
            | Problem::InsertedBeforeStart { seq }
            | Problem::Rewritten { seq, .. }
            | Problem::Forked { seq, .. }
            | Problem::NotWitnessed { seq, .. }
            | Problem::ArchiveUnproven { seq }
            | Problem::InsideArchive { seq, .. } => *seq,
            Problem::NotArchived { first, .. } | Problem::Archive { first, .. } => *first,
            Problem::BrokenLink { seq } => seq - 1,
            Problem::Missing { first, .. } | Problem::Swapped { first, .. } => *first,
            Problem::Reordered { position, .. } => *position,
            Problem::Truncated { log_end, .. } => log_end.unwrap_or(0) + 1,
            Problem::BadSignature { source } | Problem::UnknownKey { source, .. } => match source {
                CheckpointSource::Stored { seq, .. } => *seq,
                CheckpointSource::Exported | CheckpointSource::Witness { .. } => 0,
            },
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Modified { seq } => {
                write!(
                    f,
                    "event {seq} was modified: its contents no longer match its hash"
                )
            }
            Problem::BrokenLink { seq: 1 } => write!(
                f,
                "event 1 does not start the chain: it was replaced by an event made to look valid"
            ),
            Problem::BrokenLink { seq } => write!(
                f,
                "event {seq} does not follow event {prev}: event {prev} was modified and its hash recomputed, \
                 or event {seq} was inserted",
                prev = seq - 1
            ),
            Problem::Forged { seq } => write!(
                f,
                "event {seq} does not belong to the chain: neither its contents nor its link to the event \
                 before match (it was forged or replaced)"
            ),
            Problem::Missing { first, last } if first == last => {
                write!(f, "event {first} is missing: it was deleted")
            }
            Problem::Missing { first, last } => {
                write!(f, "events {first} to {last} are missing: they were deleted")
            }
            Problem::Moved { seq, to } => write!(
                f,
                "event {seq} is missing from its place: it was moved to position {to}"
            ),
            Problem::DeletedAndRenumbered { seq } => write!(
                f,
                "event {seq} is missing: it was deleted and the later events were renumbered to close the gap"
            ),
            Problem::Inserted { seq } => write!(
                f,
                "an event was inserted at position {seq}: the original event {seq} now sits at {}",
                seq + 1
            ),
            Problem::InsertedBeforeStart { seq } => {
                write!(f, "an event was inserted before the first one, at position {seq}")
            }
            Problem::Swapped { first, second } => {
                write!(f, "events {first} and {second} were swapped")
            }
            Problem::Reordered { position, holds } => write!(
                f,
                "events were reordered: position {position} holds event {holds}"
            ),
            Problem::Truncated {
                source,
                checkpoint_seq,
                log_end: Some(end),
            } => write!(
                f,
                "the log was truncated: {source} says the log reached event {checkpoint_seq}, \
                 but it ends at event {end}"
            ),
            Problem::Truncated {
                source,
                checkpoint_seq,
                log_end: None,
            } => write!(
                f,
                "the log was truncated: {source} says the log reached event {checkpoint_seq}, but it is empty"
            ),
            Problem::Rewritten { source, seq } => write!(
                f,
                "the log was rewritten: event {seq} no longer has the hash {source} signed"
            ),
            Problem::BadSignature { source } => {
                write!(f, "{source} has an invalid signature: it was altered or forged")
            }
            Problem::UnknownKey { source, kid } => write!(
                f,
                "{source} was signed with key {kid}, which this portal does not trust \
                 (WEIGHTGATE_AUDIT_KEY, WEIGHTGATE_AUDIT_KEY_FILE, WEIGHTGATE_AUDIT_TRUSTED_KEYS)"
            ),
            Problem::Forked { source, seq } => write!(
                f,
                "forked history: event {seq} no longer has the hash {source} holds; the log in the \
                 database was rewritten from there on"
            ),
            Problem::NotWitnessed { source, seq } => write!(
                f,
                "re-signed checkpoint: {source} (of event {seq}) never reached the witness; it was \
                 signed outside the portal"
            ),
            Problem::NotArchived { first, last } => write!(
                f,
                "events {first} to {last} are missing: neither the log nor an archived segment holds them"
            ),
            Problem::ArchiveUnproven { seq } => write!(
                f,
                "the archived segments end at event {seq}, but no checkpoint the witness holds signs \
                 event {seq} with the hash they record: the archive records were altered"
            ),
            Problem::InsideArchive {
                seq,
                archived_through,
            } => write!(
                f,
                "the log holds a row at position {seq}, among the events up to {archived_through} that were \
                 archived: inserted, or left by an archive run that stopped before removing it (`weightgate \
                 audit archive` removes what is the archived events' own)"
            ),
            Problem::Archive { what, .. } => f.write_str(what),
        }
    }
}

/// Where a verification starts re-hashing the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// From the first event.
    Full,
    /// After the newest checkpoint the witness holds that a trusted key
    /// signed and whose hash the log still has at its place; from the first
    /// event when there is none.
    Witnessed,
}

/// The checkpoint a verification took the events up to as proven.
#[derive(Clone, Debug)]
pub struct StartedFrom {
    pub seq: i64,
    pub hash: String,
    pub at: i64,
    pub kid: String,
    /// Where the witness keeps it.
    pub place: String,
}

/// What a verification found.
#[derive(Clone, Debug, Default)]
pub struct Verification {
    /// Events whose hash and link were checked before the first problem.
    pub events: i64,
    /// The witnessed checkpoint the walk started after, when it did not
    /// start from the first event.
    pub started_from: Option<StartedFrom>,
    /// The newest event stored: position and hash.
    pub(crate) head: Option<(i64, String)>,
    /// Stored checkpoints checked.
    pub checkpoints: i64,
    /// The newest stored checkpoint whose signature holds.
    pub latest_checkpoint: Option<CheckpointRow>,
    /// Checkpoints the witness holds, all checked.
    pub(crate) witnessed: i64,
    /// The last event moved to an archived segment (0 when none was), and
    /// in how many segments: the walk started after it.
    pub archived_through: i64,
    pub archived_segments: i64,
    /// Every problem found, the first one first; empty when the log is whole.
    pub problems: Vec<Problem>,
}

impl Verification {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Recomputes the chain, checks every stored checkpoint against `trust`,
/// and checks the log against `witnessed` (the witness's checkpoints) and
/// `exported` (a checkpoint kept elsewhere).
pub async fn verify_with(
    db: &Db,
    archive: &Archive,
    trust: &Trust,
    witnessed: &[Witnessed],
    exported: Option<&ExportedCheckpoint>,
) -> anyhow::Result<Verification> {
    verify_from(db, archive, trust, witnessed, exported, Start::Full).await
}

/// The newest checkpoint among `witnessed` that a trusted key signed and
/// whose hash the log holds at its position.
async fn newest_proven(
    db: &Db,
    trust: &Trust,
    witnessed: &[Witnessed],
) -> anyhow::Result<Option<StartedFrom>> {
    let mut candidates: Vec<&Witnessed> = witnessed
        .iter()
        .filter(|w| {
            let c = &w.checkpoint;
            c.seq > 0
                && trust.get(&c.kid).is_some_and(|public| {
                    checkpoint::signature_holds(public, c.seq, &c.hash, c.at, &c.signature)
                })
        })
        .collect();
    candidates.sort_by_key(|w| std::cmp::Reverse(w.checkpoint.seq));
    for w in candidates {
        let c = &w.checkpoint;
        if db::reports::hash_at(db.pool(), c.seq).await?.as_deref() == Some(c.hash.as_str()) {
            return Ok(Some(StartedFrom {
                seq: c.seq,
                hash: c.hash.clone(),
                at: c.at,
                kid: c.kid.clone(),
                place: w.place.clone(),
            }));
        }
    }
    Ok(None)
}

/// Like [`verify_with`], re-hashing the chain from `start`. Every
/// checkpoint, stored, witnessed or exported, is checked either way.
pub async fn verify_from(
    db: &Db,
    archive: &Archive,
    trust: &Trust,
    witnessed: &[Witnessed],
    exported: Option<&ExportedCheckpoint>,
    start: Start,
) -> anyhow::Result<Verification> {
    let mut problems = Vec::new();
    let archive = check_archive_records(db, archive, trust, witnessed, &mut problems).await?;
    let started_from = match start {
        Start::Full => None,
        Start::Witnessed => newest_proven(db, trust, witnessed)
            .await?
            .filter(|s| s.seq > archive.through.0),
    };
    let from = started_from
        .as_ref()
        .map_or_else(|| archive.through.clone(), |s| (s.seq, s.hash.clone()));
    let walk = walk(db, from, None).await?;
    let head = db::audit::head(db.pool()).await?;
    let log_end = head.as_ref().map(|h| h.0);
    problems.extend(walk.problem);
    let (checkpoints, latest_checkpoint) =
        check_stored_checkpoints(db, trust, witnessed, log_end, &mut problems).await?;
    // Many witness checkpoints can tell of one truncation or one fork: the
    // one reaching furthest past the end, and the earliest fork, say it.
    let mut told = Vec::new();
    for w in witnessed {
        let source = CheckpointSource::Witness {
            place: w.place.clone(),
        };
        check_kept(db, trust, &w.checkpoint, source, log_end, &mut told).await?;
    }
    let furthest = told
        .iter()
        .filter_map(|p| match p {
            Problem::Truncated { checkpoint_seq, .. } => Some(*checkpoint_seq),
            _ => None,
        })
        .max();
    let earliest_fork = told
        .iter()
        .filter_map(|p| match p {
            Problem::Forked { seq, .. } => Some(*seq),
            _ => None,
        })
        .min();
    let mut told: Vec<Problem> = told
        .into_iter()
        .filter(|p| match p {
            Problem::Truncated { checkpoint_seq, .. } => Some(*checkpoint_seq) == furthest,
            Problem::Forked { seq, .. } => Some(*seq) == earliest_fork,
            _ => true,
        })
        .collect();
    told.truncate(MAX_CHECKPOINT_PROBLEMS);
    problems.extend(told);
    if let Some(exported) = exported {
        if !exported.signature_holds() {
            problems.push(Problem::BadSignature {
                source: CheckpointSource::Exported,
            });
        } else {
            check_kept(
                db,
                trust,
                exported,
                CheckpointSource::Exported,
                log_end,
                &mut problems,
            )
            .await?;
        }
    }
    problems.sort_by_key(Problem::position);
    problems.dedup();
    Ok(Verification {
        events: walk.events,
        started_from,
        head,
        checkpoints,
        latest_checkpoint,
        witnessed: i64::try_from(witnessed.len()).unwrap_or(i64::MAX),
        archived_through: archive.through.0,
        archived_segments: archive.segments,
        problems,
    })
}

/// Where the archived segments leave the live log to go on from.
struct ArchiveRecords {
    /// The last archived event and its hash; `(0, GENESIS)` when none is.
    through: (i64, String),
    segments: i64,
}

/// Checks the database's records of archived segments against their
/// manifests in the store, without reading the segments (`verify --archive`
/// does): each record is its manifest's, with a trusted checkpoint of its
/// last event; they cover every position from the first without a gap, each
/// chaining on from the one before; the witness holds a checkpoint of the
/// last archived event with the hash recorded, and none with another; the
/// live log starts right after it, chaining on from its hash.
async fn check_archive_records(
    db: &Db,
    archive: &Archive,
    trust: &Trust,
    witnessed: &[Witnessed],
    problems: &mut Vec<Problem>,
) -> anyhow::Result<ArchiveRecords> {
    let records = archive::check_records(db, archive, trust).await?;
    problems.extend(records.problems.iter().map(|(first, what)| Problem::Archive {
        first: *first,
        what: what.clone(),
    }));
    let rows = &records.rows;
    let mut through = (0, GENESIS.to_owned());
    for a in rows {
        if a.first_seq > through.0 + 1 {
            problems.push(Problem::NotArchived {
                first: through.0 + 1,
                last: a.first_seq - 1,
            });
        } else if a.first_seq <= through.0 || a.prev_hash != through.1 {
            problems.push(Problem::Archive {
                first: a.first_seq,
                what: format!(
                    "the record of the archived events {} to {} does not follow on from event {}",
                    a.first_seq, a.last_seq, through.0
                ),
            });
        }
        through = (a.last_seq, a.last_hash.clone());
    }
    let lowest = db::archives::lowest_live(db.pool()).await?;
    if through.0 > 0 {
        let trusted = |c: &ExportedCheckpoint| {
            trust
                .get(&c.kid)
                .is_some_and(|public| checkpoint::signature_holds(public, c.seq, &c.hash, c.at, &c.signature))
        };
        let at_end: Vec<&Witnessed> = witnessed
            .iter()
            .filter(|w| w.checkpoint.seq == through.0 && trusted(&w.checkpoint))
            .collect();
        if let Some(other) = at_end.iter().find(|w| w.checkpoint.hash != through.1) {
            problems.push(Problem::Forked {
                source: CheckpointSource::Witness {
                    place: other.place.clone(),
                },
                seq: through.0,
            });
        } else if at_end.is_empty() {
            problems.push(Problem::ArchiveUnproven { seq: through.0 });
        }
        let first_prev = match lowest {
            Some(lowest) if lowest == through.0 + 1 => db::audit::find_event(db.pool(), lowest)
                .await?
                .map(|first| first.prev_hash),
            _ => None,
        };
        match lowest {
            Some(lowest) if lowest <= through.0 => problems.push(Problem::InsideArchive {
                seq: lowest,
                archived_through: through.0,
            }),
            Some(lowest) if lowest > through.0 + 1 => problems.push(Problem::NotArchived {
                first: through.0 + 1,
                last: lowest - 1,
            }),
            Some(lowest) if first_prev.as_ref().is_some_and(|prev| *prev != through.1) => {
                problems.push(Problem::Archive {
                    first: lowest,
                    what: format!(
                        "event {lowest} does not follow on from event {}, the last archived",
                        through.0
                    ),
                });
            }
            _ => {}
        }
    } else if let Some(lowest) = lowest
        && lowest > 1
    {
        // What a walk from the first event would say; a walk from a
        // checkpoint would not see it.
        problems.push(Problem::Missing {
            first: 1,
            last: lowest - 1,
        });
    }
    Ok(ArchiveRecords {
        through,
        segments: i64::try_from(rows.len()).unwrap_or(i64::MAX),
    })
}

/// How far a walk got.
pub(super) struct Walk {
    /// The last event that checked out (position, hash), or where the walk started.
    pub(crate) last: (i64, String),
    pub(crate) events: i64,
    pub(crate) problem: Option<Problem>,
}

/// Walks the chain from the event `from` (position and hash; `(0, GENESIS)`
/// for the start) to the end, or to `until`, and stops at the first event
/// that does not hold.
///
/// Pages are read ahead on their own task or thread, and each page's hashes
/// are recomputed on every core; the links between events are then checked
/// in order.
pub(super) async fn walk(db: &Db, from: (i64, String), until: Option<i64>) -> anyhow::Result<Walk> {
    let (mut last_seq, mut last_hash) = from;
    let mut events = 0;
    // From the start, also read rows at positions no event can have.
    let mut pages = db::audit::Pages::open(db, if last_seq == 0 { i64::MIN } else { last_seq }, PAGE);
    while let Some(page) = pages.next().await? {
        let (page, intact) = hashed(page).await?;
        for (i, r) in page.iter().enumerate() {
            if until.is_some_and(|u| r.seq > u) {
                return Ok(Walk {
                    last: (last_seq, last_hash),
                    events,
                    problem: None,
                });
            }
            let in_place = r.seq == last_seq + 1;
            let linked = r.prev_hash == last_hash;
            if in_place && linked && intact[i] {
                last_seq = r.seq;
                last_hash.clone_from(&r.hash);
                events += 1;
                continue;
            }
            drop(pages);
            let problem = diagnose(db, r, page.get(i + 1), last_seq, &last_hash, linked, intact[i]).await?;
            return Ok(Walk {
                last: (last_seq, last_hash),
                events,
                problem: Some(problem),
            });
        }
        pages.recycle(page);
    }
    Ok(Walk {
        last: (last_seq, last_hash),
        events,
        problem: None,
    })
}

/// `page`, and whether each of its events still matches its stored hash,
/// worked out off the runtime's threads.
pub(super) async fn hashed(page: Vec<EventRow>) -> anyhow::Result<(Vec<EventRow>, Vec<bool>)> {
    Ok(tokio::task::spawn_blocking(move || {
        let intact = hashes_hold(&page);
        (page, intact)
    })
    .await?)
}

/// Whether each event's contents still match its stored hash, computed on
/// every core.
fn hashes_hold(page: &[EventRow]) -> Vec<bool> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let share = page.len().div_ceil(threads).max(1);
    let mut intact = vec![false; page.len()];
    std::thread::scope(|scope| {
        for (rows, out) in page.chunks(share).zip(intact.chunks_mut(share)) {
            scope.spawn(move || {
                let mut buf = Vec::with_capacity(1024);
                for (r, holds) in rows.iter().zip(out) {
                    *holds = hash_matches(r, r.seq, &mut buf);
                }
            });
        }
    });
    intact
}

/// `true` when `r`, stored elsewhere, is the original event `seq`.
fn is_event(r: &EventRow, seq: i64) -> bool {
    hash_matches(r, seq, &mut Vec::new())
}

/// Says what happened to `r`, the first row that does not fit after event
/// `last_seq` (whose hash is `last_hash`). `following` is the row after `r`
/// when it is at hand.
async fn diagnose(
    db: &Db,
    r: &EventRow,
    following: Option<&EventRow>,
    last_seq: i64,
    last_hash: &str,
    linked: bool,
    intact: bool,
) -> anyhow::Result<Problem> {
    let pool = db.pool();
    let expected = last_seq + 1;
    if r.seq < expected {
        return Ok(Problem::InsertedBeforeStart { seq: r.seq });
    }
    if r.seq > expected {
        // Is the event that belongs here somewhere else?
        for at in db::audit::seqs_with_prev_hash(pool, last_hash).await? {
            if at != r.seq
                && let Some(moved) = db::audit::find_event(pool, at).await?
                && is_event(&moved, expected)
            {
                return Ok(Problem::Moved {
                    seq: expected,
                    to: at,
                });
            }
        }
        return Ok(Problem::Missing {
            first: expected,
            last: r.seq - 1,
        });
    }
    let seq = r.seq;
    let following = match following {
        Some(row) if row.seq == seq + 1 => Some(row.clone()),
        _ => db::audit::find_event(pool, seq + 1).await?,
    };
    // A row slipped in before the original event, which now sits one further.
    let pushed_on = following.as_ref().is_some_and(|f| is_event(f, seq));
    match (intact, linked) {
        (true, false) => return Ok(Problem::BrokenLink { seq }),
        (false, true) if pushed_on => return Ok(Problem::Inserted { seq }),
        (false, true) => return Ok(Problem::Modified { seq }),
        _ => {}
    }
    // Neither contents nor link fit: which event is this row?
    let mut candidates = vec![seq + 1, seq - 1];
    if r.prev_hash == GENESIS {
        candidates.push(1);
    }
    for before in db::audit::seqs_with_hash(pool, &r.prev_hash).await? {
        candidates.push(before + 1);
    }
    for after in db::audit::seqs_with_prev_hash(pool, &r.hash).await? {
        candidates.push(after - 1);
    }
    let original = candidates
        .into_iter()
        .find(|&c| c >= 1 && c != seq && is_event(r, c));
    // And where is the event that belongs here?
    let mut rightful = None;
    for at in db::audit::seqs_with_prev_hash(pool, last_hash).await? {
        if at != seq
            && let Some(row) = db::audit::find_event(pool, at).await?
            && is_event(&row, seq)
        {
            rightful = Some(at);
            break;
        }
    }
    Ok(match (original, rightful) {
        (None, _) if pushed_on => Problem::Inserted { seq },
        (None, _) => Problem::Forged { seq },
        (Some(o), Some(j)) if o == j => Problem::Swapped {
            first: seq.min(o),
            second: seq.max(o),
        },
        (Some(o), None) if o == seq - 1 => Problem::Inserted { seq: o },
        (Some(o), None) if o == seq + 1 => Problem::DeletedAndRenumbered { seq },
        (Some(o), _) => Problem::Reordered {
            position: seq,
            holds: o,
        },
    })
}

/// Checks every stored checkpoint: its key, its signature, that the log
/// still reaches its event with its hash, and that the witness received it.
/// Returns how many were checked and the newest whose signature holds.
async fn check_stored_checkpoints(
    db: &Db,
    trust: &Trust,
    witnessed: &[Witnessed],
    log_end: Option<i64>,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<(i64, Option<CheckpointRow>)> {
    let witness: std::collections::HashSet<(i64, i64, &str, &str)> = witnessed
        .iter()
        .map(|w| {
            let c = &w.checkpoint;
            (c.seq, c.at, c.kid.as_str(), c.signature.as_str())
        })
        .collect();
    let mut checked = 0;
    let mut latest = None;
    let mut found = Vec::new();
    let mut beyond_end = None;
    let mut after = (i64::MIN, String::new());
    loop {
        let page = db::audit::checkpoints_page(db.pool(), (after.0, &after.1), CHECKPOINT_PAGE).await?;
        for c in &page {
            checked += 1;
            let source = CheckpointSource::Stored {
                seq: c.seq,
                at: c.at,
                kid: c.kid.clone(),
            };
            let Some(public) = trust.get(&c.kid) else {
                found.push(Problem::UnknownKey {
                    source,
                    kid: c.kid.clone(),
                });
                continue;
            };
            if !checkpoint::signature_holds(public, c.seq, &c.hash, c.at, &c.signature) {
                found.push(Problem::BadSignature { source });
                continue;
            }
            if !witness.contains(&(c.seq, c.at, c.kid.as_str(), c.signature.as_str())) {
                found.push(Problem::NotWitnessed {
                    source: source.clone(),
                    seq: c.seq,
                });
            }
            latest = Some(c.checkpoint());
            if log_end.is_none_or(|end| c.seq > end) {
                // Past the end the log had when the walk ended; it may have grown since.
                match db::audit::find_event(db.pool(), c.seq).await? {
                    Some(event) if event.hash != c.hash => {
                        found.push(Problem::Rewritten { source, seq: c.seq });
                    }
                    Some(_) => {}
                    // The checkpoint reaching furthest tells the most.
                    None => beyond_end = Some((source, c.seq)),
                }
            } else if c.event_hash.as_ref().is_some_and(|h| *h != c.hash) {
                found.push(Problem::Rewritten { source, seq: c.seq });
            }
            // No event at a position inside the log: the walk reports it missing.
        }
        match page.last() {
            Some(last) if page.len() as i64 == CHECKPOINT_PAGE => after = (last.seq, last.id.clone()),
            _ => break,
        }
    }
    found.truncate(MAX_CHECKPOINT_PROBLEMS);
    problems.extend(found);
    if let Some((source, checkpoint_seq)) = beyond_end {
        let log_end = db::audit::head(db.pool()).await?.map(|h| h.0);
        if log_end.is_none_or(|end| checkpoint_seq > end) {
            problems.push(Problem::Truncated {
                source,
                checkpoint_seq,
                log_end,
            });
        }
    }
    Ok((checked, latest))
}

/// Checks the log against a checkpoint kept outside the database (by the
/// witness, or exported by an operator): a trusted key's signature, and the
/// log still holding its hash at its event.
async fn check_kept(
    db: &Db,
    trust: &Trust,
    kept: &ExportedCheckpoint,
    source: CheckpointSource,
    log_end: Option<i64>,
    problems: &mut Vec<Problem>,
) -> anyhow::Result<()> {
    let Some(public) = trust.get(&kept.kid) else {
        problems.push(Problem::UnknownKey {
            source,
            kid: kept.kid.clone(),
        });
        return Ok(());
    };
    if !checkpoint::signature_holds(public, kept.seq, &kept.hash, kept.at, &kept.signature) {
        problems.push(Problem::BadSignature { source });
        return Ok(());
    }
    let from_witness = matches!(source, CheckpointSource::Witness { .. });
    if log_end.is_none_or(|end| kept.seq > end) {
        problems.push(Problem::Truncated {
            source,
            checkpoint_seq: kept.seq,
            log_end,
        });
    } else if let Some(event) = db::audit::find_event(db.pool(), kept.seq).await?
        && event.hash != kept.hash
    {
        problems.push(if from_witness {
            Problem::Forked {
                source,
                seq: kept.seq,
            }
        } else {
            Problem::Rewritten {
                source,
                seq: kept.seq,
            }
        });
    }
    Ok(())
}
