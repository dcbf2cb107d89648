//! The audit log: every event appended to one hash chain.
//!
//! State changes append their event inside their own transaction
//! ([`append`]), so the change and its record commit together. Fetches go
//! through [`AuditLog::record`], which hands the event to one writer task that
//! commits whatever has queued up in a single transaction and answers each
//! caller only once its event is durable.
//!
//! [`verify_with`] walks the chain and checks the signed checkpoints of its
//! head ([`checkpoint`]) and their [`witness`]; [`report`] reads who
//! fetched what.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use sqlx::{AnyConnection, Connection};

use crate::{
    db::{self, Backend, Db, Tx, audit::EventRow, grants::GrantNow},
    types::now_ms,
};

pub(crate) mod action;
pub mod archive;
pub mod checkpoint;
pub(crate) mod filter;
pub mod refusals;
pub mod report;
mod verify;
pub(crate) mod witness;

pub use action::Action;

pub use verify::{CheckpointSource, Problem, Start, StartedFrom, Verification, verify_from, verify_with};

/// The hash that precedes the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Refused,
    /// A transfer that ended before its last byte.
    Aborted,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Aborted => "aborted",
        }
    }
}

/// Who made a request, as far as the portal can tell.
#[derive(Clone, Debug, Default)]
pub struct Client {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl Client {
    /// The network the client counts as for limits and tallies: an IPv4
    /// address, an IPv6 /64 ([`crate::network::network_key`]); clients
    /// without an address (never the case over TCP) share one.
    pub(crate) fn network(&self) -> String {
        self.ip
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .map_or_else(|| "unknown".to_owned(), crate::network::network_key)
    }
}

/// One thing that happened. `subject` names what it happened to in words
/// (an e-mail, a file path) so the log reads on its own, whatever later
/// happens to the other tables.
#[derive(Clone, Debug)]
pub struct Event {
    pub(crate) action: Action,
    pub(crate) outcome: Outcome,
    pub reason: Option<String>,
    pub(crate) actor: Option<String>,
    pub subject: Option<String>,
    pub model_id: Option<String>,
    pub(crate) application_id: Option<String>,
    pub grant_id: Option<String>,
    pub researcher_id: Option<String>,
    pub(crate) file_id: Option<String>,
    pub(crate) range: Option<(u64, u64)>,
    pub(crate) bytes: Option<u64>,
    pub client: Client,
    /// How many occurrences the event stands for, when it sums up many
    /// alike (see [`refusals`]); `None` for one.
    pub(crate) occurrences: Option<u64>,
}

impl Event {
    pub fn new(action: Action, outcome: Outcome) -> Self {
        Self {
            action,
            outcome,
            reason: None,
            actor: None,
            subject: None,
            model_id: None,
            application_id: None,
            grant_id: None,
            researcher_id: None,
            file_id: None,
            range: None,
            bytes: None,
            client: Client::default(),
            occurrences: None,
        }
    }
    /// Something that happened as it should.
    pub(crate) fn ok(action: Action) -> Self {
        Self::new(action, Outcome::Ok)
    }

    /// Something that was asked for and refused; `reason` says why.
    pub(crate) fn refused(action: Action, reason: impl Into<String>) -> Self {
        Self::new(action, Outcome::Refused).reason(reason)
    }

    /// Who did it: a reviewer's or researcher's e-mail, an operator, or the
    /// portal itself.
    pub(crate) fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Whom or what it is about, in words (usually an e-mail address).
    pub(crate) fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    pub(crate) fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub(crate) fn model(mut self, model_id: impl Into<String>) -> Self {
        self.model_id = Some(model_id.into());
        self
    }

    pub(crate) fn grant(mut self, grant_id: impl Into<String>) -> Self {
        self.grant_id = Some(grant_id.into());
        self
    }

    pub(crate) fn application_id(mut self, application_id: impl Into<String>) -> Self {
        self.application_id = Some(application_id.into());
        self
    }

    pub(crate) fn researcher(mut self, researcher_id: impl Into<String>) -> Self {
        self.researcher_id = Some(researcher_id.into());
        self
    }

    pub(crate) fn client(mut self, client: Client) -> Self {
        self.client = client;
        self
    }

    /// About an application: its applicant (as subject), model, id and
    /// researcher.
    pub(crate) fn about_application(mut self, view: &crate::db::applications::ApplicationView) -> Self {
        self.subject = Some(view.email.clone());
        self.model_id = Some(view.model_id.clone());
        self.application_id = Some(view.id.clone());
        self.researcher_id = Some(view.researcher_id.clone());
        self
    }

    /// About a grant: its holder (as subject), model, id and researcher.
    pub(crate) fn about_grant(mut self, grant: &crate::db::grants::GrantView) -> Self {
        self.subject = Some(grant.email.clone());
        self.model_id = Some(grant.model_id.clone());
        self.grant_id = Some(grant.id.clone());
        self.researcher_id = Some(grant.researcher_id.clone());
        self
    }
}

/// The part of an event its hash covers, in a fixed order.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    at: i64,
    action: &'a str,
    outcome: &'a str,
    reason: &'a Option<String>,
    actor: &'a Option<String>,
    subject: &'a Option<String>,
    model_id: &'a Option<String>,
    application_id: &'a Option<String>,
    grant_id: &'a Option<String>,
    researcher_id: &'a Option<String>,
    file_id: &'a Option<String>,
    range_start: Option<i64>,
    range_end: Option<i64>,
    bytes: Option<i64>,
    client_ip: &'a Option<String>,
    user_agent: &'a Option<String>,
    request_id: &'a Option<String>,
    prev_hash: &'a str,
    /// Left out when unset, so that events from before it keep their hashes.
    #[serde(skip_serializing_if = "Option::is_none")]
    occurrences: Option<i64>,
}

/// The chain hash of a stored event: SHA-256 over its canonical JSON encoding,
/// which includes the previous event's hash.
pub fn event_hash(r: &EventRow) -> String {
    hex::encode(digest_at(r, r.seq, &mut Vec::new()))
}

/// Whether `r`, were it stored at position `seq`, would have the hash it
/// carries: tells an intact event, and where a moved one came from. `buf` is
/// scratch space, kept between calls to save an allocation per event.
fn hash_matches(r: &EventRow, seq: i64, buf: &mut Vec<u8>) -> bool {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(digest_at(r, seq, buf), &mut hex).expect("a SHA-256 digest is 64 hex digits");
    hex == r.hash.as_bytes()
}

fn digest_at(r: &EventRow, seq: i64, buf: &mut Vec<u8>) -> [u8; 32] {
    encode_canonical(r, seq, &r.prev_hash, buf);
    let mut h = Sha256::new();
    h.update(b"weightgate-audit-v1\n");
    h.update(&buf);
    h.finalize().into()
}

/// Writes into `buf` the canonical JSON encoding of `r` at position `seq`
/// after `prev_hash`.
fn encode_canonical(r: &EventRow, seq: i64, prev_hash: &str, buf: &mut Vec<u8>) {
    let canonical = Canonical {
        seq,
        at: r.at,
        action: &r.action,
        outcome: &r.outcome,
        reason: &r.reason,
        actor: &r.actor,
        subject: &r.subject,
        model_id: &r.model_id,
        application_id: &r.application_id,
        grant_id: &r.grant_id,
        researcher_id: &r.researcher_id,
        file_id: &r.file_id,
        range_start: r.range_start,
        range_end: r.range_end,
        bytes: r.bytes,
        client_ip: &r.client_ip,
        user_agent: &r.user_agent,
        request_id: &r.request_id,
        prev_hash,
        occurrences: r.occurrences,
    };
    buf.clear();
    serde_json::to_writer(&mut *buf, &canonical).expect("an event always encodes");
}

/// Takes the log's write lock for this transaction. SQLite's write
/// transactions already serialise (`BEGIN IMMEDIATE`); on PostgreSQL an advisory
/// lock keeps replicas from forking the chain.
async fn lock_chain(conn: &mut AnyConnection, backend: Backend) -> sqlx::Result<()> {
    if backend == Backend::Postgres {
        db::audit::lock_chain_postgres(conn).await?;
    }
    Ok(())
}

/// Appends events inside `tx` and returns their sequence numbers. They become
/// durable when `tx` commits.
pub async fn append(tx: &mut Tx, backend: Backend, events: &[Event]) -> anyhow::Result<Vec<i64>> {
    lock_chain(tx, backend).await?;
    append_locked(tx, now_ms(), events).await
}

/// Appends events, all at time `at`, in a transaction that holds the chain lock.
async fn append_locked(conn: &mut AnyConnection, at: i64, events: &[Event]) -> anyhow::Result<Vec<i64>> {
    let head = db::audit::head(&mut *conn).await?;
    let rows = chain(head, at, events);
    db::audit::insert_many(conn, &rows)
        .await
        .context("cannot append to the audit log")?;
    Ok(rows.iter().map(|r| r.seq).collect())
}

/// The rows of `events`, all at time `at`, chained on after `head` (the
/// newest event's position and hash; `None` for an empty log).
fn chain(head: Option<(i64, String)>, at: i64, events: &[Event]) -> Vec<EventRow> {
    let (mut seq, mut prev) = head.unwrap_or((0, GENESIS.to_owned()));
    let mut buf = Vec::with_capacity(1024);
    events
        .iter()
        .map(|e| {
            seq += 1;
            let mut row = row_of(e, at);
            row.seq = seq;
            row.prev_hash = std::mem::take(&mut prev);
            row.hash = hex::encode(digest_at(&row, seq, &mut buf));
            prev.clone_from(&row.hash);
            row
        })
        .collect()
}

/// The row of an event recorded at `at`, not yet chained: no position, no
/// hashes.
fn row_of(e: &Event, at: i64) -> EventRow {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    EventRow {
        seq: 0,
        at,
        action: e.action.as_str().to_owned(),
        outcome: e.outcome.as_str().to_owned(),
        reason: e.reason.clone(),
        actor: e.actor.clone(),
        subject: e.subject.clone(),
        model_id: e.model_id.clone(),
        application_id: e.application_id.clone(),
        grant_id: e.grant_id.clone(),
        researcher_id: e.researcher_id.clone(),
        file_id: e.file_id.clone(),
        range_start: e.range.map(|r| to_i64(r.0)),
        range_end: e.range.map(|r| to_i64(r.1)),
        bytes: e.bytes.map(to_i64),
        client_ip: e.client.ip.clone(),
        user_agent: e.client.user_agent.clone(),
        request_id: e.client.request_id.clone(),
        prev_hash: String::new(),
        hash: String::new(),
        occurrences: e.occurrences.map(to_i64),
    }
}

/// What an event's hash covers before its position: the domain tag and the
/// start of its canonical encoding, whose first field is `seq`.
const HASHED_PREFIX: &str = concat!("weightgate-audit-v1\n", "{\"seq\":");

/// An unchained row's canonical encoding split around the two values only
/// the chain's head decides: what follows its position up to its previous
/// hash, and what follows that. Its hash at position `seq` after `prev` is
/// SHA-256 over `HASHED_PREFIX, seq, mid, prev, post`; the database computes
/// it so when it chains a batch decided outside the lock.
fn fragments(r: &EventRow, buf: &mut Vec<u8>) -> (String, String) {
    const SEQ: &str = "{\"seq\":0";
    const PREV: &str = ",\"prev_hash\":\"";
    encode_canonical(r, 0, "", buf);
    let json = std::str::from_utf8(buf).expect("JSON is UTF-8");
    debug_assert!(json.starts_with(SEQ));
    // Only `occurrences`, a number, follows the previous hash; a quote
    // inside a text field is escaped, so the last match is the field.
    let prev = json
        .rfind(PREV)
        .expect("an event's encoding names its previous hash")
        + PREV.len();
    (json[SEQ.len()..prev].to_owned(), json[prev..].to_owned())
}

/// Appends one event in its own transaction.
pub async fn append_now(db: &Db, event: Event) -> anyhow::Result<i64> {
    let mut tx = db.begin().await?;
    let seq = append(&mut tx, db.backend(), std::slice::from_ref(&event)).await?;
    tx.commit().await?;
    Ok(seq[0])
}

/// What the writer reads, in the transaction that appends a guarded event,
/// about what the event depends on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now<'a> {
    /// The grant as it stands, with its transfers under way; `None` when
    /// there is no such grant.
    pub(crate) grant: Option<&'a GrantNow>,
    /// Whether the key that signed the link has been retired.
    pub(crate) key_retired: bool,
}

/// Decides a fetch's event from what the writer finds ([`Now`]) and the
/// time the event is recorded at; asked again when what it found changed
/// before the event was appended.
pub(crate) type Decide = Box<dyn Fn(Now<'_>, i64) -> Event + Send>;

/// An event that depends on the state of a grant and of a link key: the
/// writer reads them in the transaction that appends the event, under the
/// chain lock, so no revocation, expiry or key retirement can come between
/// the check and the record.
pub(crate) struct Guarded {
    pub(crate) grant_id: String,
    /// The id of the key that signed the link.
    pub(crate) link_kid: String,
    pub(crate) decide: Decide,
}

enum Item {
    Event(Box<Event>),
    /// An event that ends the transfer the fetch event at `closes` let through.
    Closing {
        event: Box<Event>,
        closes: i64,
    },
    Guarded(Guarded),
}

impl Item {
    fn grant_id(&self) -> Option<&str> {
        match self {
            Item::Guarded(g) => Some(&g.grant_id),
            Item::Event(_) | Item::Closing { .. } => None,
        }
    }
}

/// How long a transfer under way counts against its grant's quota when its
/// delivery is never recorded (the replica that served it died).
pub(crate) const RESERVATION_LIFETIME_MS: i64 = 86_400_000;

/// What a batch reads before deciding its guarded events.
#[derive(Default)]
struct BatchFacts {
    /// The grants the batch's fetches name, each with the transfers under
    /// way on it when its model has a quota.
    pub(crate) grants: Vec<GrantNow>,
    /// Retired link-signing keys.
    pub(crate) retired_keys: HashSet<String>,
}

/// A transfer under way on a grant with a quota: recorded with the fetch
/// event at `index` of its batch, until an event closes it.
struct Reservation {
    pub(crate) index: usize,
    pub(crate) grant_id: String,
    pub(crate) file_id: String,
    pub(crate) bytes: u64,
}

/// A batch's events as decided, and the changes to the transfers under way
/// that commit with them.
struct Decided {
    events: Vec<Event>,
    reserve: Vec<Reservation>,
    release: Vec<i64>,
}

impl Decided {
    /// The transfers to record, each under the position its fetch event
    /// got in `rows`.
    fn reserved<'a>(&'a self, rows: &[EventRow]) -> Vec<db::grants::Reserved<'a>> {
        self.reserve
            .iter()
            .map(|r| db::grants::Reserved {
                fetch_seq: rows[r.index].seq,
                grant_id: &r.grant_id,
                file_id: &r.file_id,
                bytes: r.bytes,
            })
            .collect()
    }
}

/// The transfers under way that one writer recorded against a quota, by the
/// position of the fetch event that opened each, with when: only the writer
/// that let a transfer through records its end, so it knows which ends have
/// a reservation to remove, and a delivery on a grant without a quota costs
/// no statement.
#[derive(Debug, Default)]
struct Reservations {
    open: HashMap<i64, i64>,
    /// When entries older than a reservation's lifetime were last dropped.
    pruned_at: i64,
}

impl Reservations {
    /// Of the transfers a batch closes, those that hold a reservation.
    fn held(&self, closes: Vec<i64>) -> Vec<i64> {
        closes
            .into_iter()
            .filter(|seq| self.open.contains_key(seq))
            .collect()
    }

    /// Takes in what a batch committed at `at`. A transfer never closed (its
    /// handler died) stops counting after the reservation's lifetime, here
    /// as in the database.
    fn committed(&mut self, reserved: &[db::grants::Reserved<'_>], released: &[i64], at: i64) {
        for seq in released {
            self.open.remove(seq);
        }
        self.open.extend(reserved.iter().map(|r| (r.fetch_seq, at)));
        if at - self.pruned_at > 60_000 {
            self.open.retain(|_, since| *since > at - RESERVATION_LIFETIME_MS);
            self.pruned_at = at;
        }
    }
}

/// The transfer a fetch event opens, as (file id, bytes asked for): an ok
/// `file.fetch` of a range, other than a HEAD (which delivers nothing and
/// says so in its reason).
fn opens(event: &Event) -> Option<(String, u64)> {
    let (Some(file), Some((start, last))) = (&event.file_id, event.range) else {
        return None;
    };
    (event.action == Action::FileFetch && event.outcome == Outcome::Ok && event.reason.is_none())
        .then(|| (file.clone(), last.saturating_sub(start).saturating_add(1)))
}

/// Decides a batch's events at `at` on what the writer read. A fetch let
/// through on a grant with a quota joins the grant's transfers under way at
/// once, so that the next fetch in the same batch counts it too.
fn decide_batch(facts: BatchFacts, items: &[Item], at: i64) -> Decided {
    let mut grants: HashMap<String, GrantNow> = facts.grants.into_iter().map(|g| (g.id.clone(), g)).collect();
    let mut decided = Decided {
        events: Vec::with_capacity(items.len()),
        reserve: Vec::new(),
        release: Vec::new(),
    };
    for (index, item) in items.iter().enumerate() {
        let event = match item {
            Item::Event(event) => (**event).clone(),
            Item::Closing { event, closes } => {
                decided.release.push(*closes);
                (**event).clone()
            }
            Item::Guarded(g) => {
                let now = Now {
                    grant: grants.get(&g.grant_id),
                    key_retired: facts.retired_keys.contains(&g.link_kid),
                };
                let event = (g.decide)(now, at);
                if let Some(grant) = grants.get_mut(&g.grant_id)
                    && grant.has_quota()
                    && let Some((file_id, bytes)) = opens(&event)
                {
                    grant.open.push((file_id.clone(), bytes));
                    decided.reserve.push(Reservation {
                        index,
                        grant_id: g.grant_id.clone(),
                        file_id,
                        bytes,
                    });
                }
                event
            }
        };
        decided.events.push(event);
    }
    decided
}

/// The grants a batch's guarded events name, each once.
fn grant_ids(items: &[Item]) -> Vec<&str> {
    let mut ids: Vec<&str> = items.iter().filter_map(Item::grant_id).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

type Written = Result<Vec<(i64, Event)>, String>;

/// An event could not be made durable (the database refused the write or
/// is unreachable): whatever it was to record does not happen.
#[derive(Debug, thiserror::Error)]
#[error("the audit log cannot be written: {0}")]
pub(crate) struct AuditUnavailable(pub(crate) String);

struct Pending {
    item: Item,
    done: oneshot::Sender<Result<(i64, Event), String>>,
}

/// Handle on the batching writer used by the download path.
#[derive(Clone, Debug)]
pub struct AuditLog {
    queue: mpsc::Sender<Pending>,
    /// Proxied transfers whose `file.delivered` event is still to come.
    open_transfers: Arc<AtomicUsize>,
}

/// Most events one transaction takes.
const MAX_BATCH: usize = 1024;

impl AuditLog {
    /// Starts the writer on a thread of its own, with a database connection
    /// of its own: on SQLite it runs each batch's statements itself, on
    /// PostgreSQL it drives its connection on a runtime of its own.
    pub(crate) fn start(db: Db) -> Self {
        let (queue, rx) = mpsc::channel::<Pending>(4 * MAX_BATCH);
        match db.sqlite_file() {
            Some(file) => {
                let file = file.to_owned();
                std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || write_sqlite(&file, rx))
                    .expect("cannot start the audit writer thread");
            }
            None => {
                // A thread and a runtime of its own: each batch makes a few
                // round trips while it holds the chain's lock, and on a busy
                // runtime every answer from the database would wait for its
                // turn behind the requests being served, holding the lock
                // (and every other replica) that much longer.
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cannot start the audit writer's runtime");
                std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || runtime.block_on(write_pooled(db, rx)))
                    .expect("cannot start the audit writer thread");
            }
        }
        Self {
            queue,
            open_transfers: Arc::default(),
        }
    }

    /// Counts a proxied transfer as open until [`AuditLog::transfer_ended`].
    pub(crate) fn transfer_started(&self) {
        self.open_transfers.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn transfer_ended(&self) {
        self.open_transfers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records that this replica stopped, and returns once that event, and
    /// so every event queued before it, is durable (or after `wait`).
    /// Transfers still open then were cut without their `file.delivered`
    /// event; the stop event says how many.
    pub(crate) async fn stopped(&self, wait: Duration) {
        let open = self.open_transfers.load(Ordering::Relaxed);
        let mut event = Event::ok(Action::PortalStopped);
        if open > 0 {
            event.reason = Some("transfers_cut".into());
            event.subject = Some(format!(
                "{open} transfer(s) still open were cut; their deliveries are not recorded"
            ));
        }
        match tokio::time::timeout(wait, self.record(event)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::error!(error = %format!("{err:#}"), "cannot record the stop in the audit log")
            }
            Err(_) => tracing::error!(
                ?wait,
                "the audit log did not take the stop event in time; events queued before it may be lost"
            ),
        }
    }

    async fn submit(&self, item: Item) -> anyhow::Result<(i64, Event)> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending { item, done })
            .await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?
            .map_err(|e| AuditUnavailable(e).into())
    }

    /// Appends an event and returns once it is durable.
    pub(crate) async fn record(&self, event: Event) -> anyhow::Result<i64> {
        Ok(self.submit(Item::Event(Box::new(event))).await?.0)
    }

    /// Queues an event that ends the transfer the fetch event at `fetch_seq`
    /// let through, without waiting for it: from then on the transfer no
    /// longer counts as under way.
    pub(crate) fn record_closing_unawaited(&self, event: Event, fetch_seq: i64) {
        self.queue_unawaited(Item::Closing {
            event: Box::new(event),
            closes: fetch_seq,
        });
    }

    /// Like [`AuditLog::record_closing_unawaited`], returning once the event
    /// is durable.
    pub(crate) async fn record_closing(&self, event: Event, fetch_seq: i64) -> anyhow::Result<i64> {
        Ok(self
            .submit(Item::Closing {
                event: Box::new(event),
                closes: fetch_seq,
            })
            .await?
            .0)
    }

    fn queue_unawaited(&self, item: Item) {
        let (done, _) = oneshot::channel();
        let pending = Pending { item, done };
        match self.queue.try_send(pending) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(pending)) => {
                let queue = self.queue.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        if queue.send(pending).await.is_err() {
                            tracing::error!("the audit writer has stopped: an event was lost");
                        }
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("the audit writer has stopped: an event was lost");
            }
        }
    }

    /// Appends the event `guarded` decides on, and returns once it is durable,
    /// with its position and the event as written.
    pub(crate) async fn record_guarded(&self, guarded: Guarded) -> anyhow::Result<(i64, Event)> {
        self.submit(Item::Guarded(guarded)).await
    }
}

/// Answers every caller of a batch.
fn answer(waiters: Vec<oneshot::Sender<Result<(i64, Event), String>>>, written: Written, count: usize) {
    match written {
        Ok(written) => {
            for (done, written) in waiters.into_iter().zip(written) {
                let _ = done.send(Ok(written));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, events = count, "audit write failed");
            for done in waiters {
                let _ = done.send(Err(err.clone()));
            }
        }
    }
}

/// The writer on SQLite: each batch in one transaction on its own connection.
fn write_sqlite(file: &std::path::Path, mut rx: mpsc::Receiver<Pending>) {
    let mut conn = None;
    let mut reservations = Reservations::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        let (items, waiters): (Vec<_>, Vec<_>) = batch.drain(..).map(|p| (p.item, p.done)).unzip();
        let count = items.len();
        let written = write_sqlite_batch(file, &mut conn, &mut reservations, items);
        if written.is_err() {
            // Start the next batch on a fresh connection, in case this one is broken.
            conn = None;
        }
        answer(waiters, written.map_err(|err| format!("{err:#}")), count);
    }
}

fn write_sqlite_batch(
    file: &std::path::Path,
    conn: &mut Option<rusqlite::Connection>,
    reservations: &mut Reservations,
    items: Vec<Item>,
) -> anyhow::Result<Vec<(i64, Event)>> {
    use db::sqlite_writer as sql;
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(sql::open(file).with_context(|| format!("cannot open {}", file.display()))?),
    };
    let asked = Instant::now();
    let tx = sql::begin(conn)?;
    let locked = Instant::now();
    let at = now_ms();
    let facts = if grant_ids(&items).is_empty() {
        BatchFacts::default()
    } else {
        let (grants, retired_keys) = sql::batch_facts(&tx, &grant_ids(&items), at - RESERVATION_LIFETIME_MS)?;
        BatchFacts { grants, retired_keys }
    };
    let mut decided = decide_batch(facts, &items, at);
    let rows = chain(sql::head(&tx)?, at, &decided.events);
    sql::insert_events(&tx, &rows).context("cannot append to the audit log")?;
    let released = reservations.held(std::mem::take(&mut decided.release));
    let reserved = decided.reserved(&rows);
    sql::reserve(&tx, &reserved, at)?;
    sql::release(&tx, &released)?;
    tx.commit()?;
    reservations.committed(&reserved, &released, at);
    record_batch("sqlite", locked - asked, locked.elapsed(), rows.len());
    Ok(rows.iter().map(|r| r.seq).zip(decided.events).collect())
}

/// How long a batch waited for the chain's lock (SQLite's write lock, or
/// PostgreSQL's advisory lock that every replica takes), how long it held it
/// until its commit was durable, and how many events it appended: what
/// decides how many replicas can append at once.
fn record_batch(backend: &'static str, wait: Duration, held: Duration, events: usize) {
    metrics::histogram!("weightgate_audit_chain_lock_wait_seconds", "backend" => backend)
        .record(wait.as_secs_f64());
    metrics::histogram!("weightgate_audit_chain_lock_held_seconds", "backend" => backend)
        .record(held.as_secs_f64());
    metrics::histogram!("weightgate_audit_batch_events", "backend" => backend).record(events as f64);
}

/// The writer on PostgreSQL: each batch in one transaction on its own
/// connection, under the advisory lock that keeps replicas on one chain.
async fn write_pooled(db: Db, mut rx: mpsc::Receiver<Pending>) {
    let mut conn: Option<AnyConnection> = None;
    let mut belief = Belief::default();
    let mut reservations = Reservations::default();
    let mut last_batch = Instant::now();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (items, waiters): (Vec<_>, Vec<_>) = batch.drain(..).map(|p| (p.item, p.done)).unzip();
        let count = items.len();
        // A server connection can have been dropped while the writer was
        // idle (a database restart, a network cut): after any pause, check
        // it first, as the pool does, rather than fail the batch. Under load
        // the batches follow one another without a pause, and the check
        // would only cost a round trip each.
        if last_batch.elapsed() > IDLE_BEFORE_PING
            && let Some(open) = &mut conn
            && open.ping().await.is_err()
        {
            conn = None;
        }
        let written = write_pooled_batch(&db, &mut conn, &mut belief, &mut reservations, items).await;
        last_batch = Instant::now();
        if written.is_err() {
            conn = None;
        }
        answer(waiters, written.map_err(|err| format!("{err:#}")), count);
    }
}

/// How long the pooled writer's connection may sit unused before a batch
/// checks that it still answers: longer than the writer waits between
/// batches under load, shorter than any pause.
const IDLE_BEFORE_PING: Duration = Duration::from_millis(10);

/// One batch on the pooled writer's connection: on PostgreSQL decided
/// outside the chain's lock when it can be, else under it.
async fn write_pooled_batch(
    db: &Db,
    conn: &mut Option<AnyConnection>,
    belief: &mut Belief,
    reservations: &mut Reservations,
    items: Vec<Item>,
) -> anyhow::Result<Vec<(i64, Event)>> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(db.connect_one().await?),
    };
    if db.backend() == Backend::Postgres
        && let Some(written) = append_unlocked(conn, belief, reservations, &items).await?
    {
        return Ok(written);
    }
    write_locked(db, conn, reservations, &items).await
}

/// What the PostgreSQL writer believes about the grants its fetches name
/// and the link keys' retirement, kept from batch to batch: a batch is
/// decided on it without the chain's lock, and the database checks it under
/// the lock before appending (see [`append_unlocked`]). A belief proved
/// wrong is dropped whole and read again.
#[derive(Debug, Default)]
struct Belief {
    grants: HashMap<String, GrantNow>,
    retired_keys: Option<HashSet<String>>,
}

/// Grants a belief holds before it is dropped and read again.
const BELIEF_KEPT: usize = 100_000;

/// PostgreSQL: decides the batch on the writer's [`Belief`] (reading what it
/// lacks, without the chain's lock), then appends it in one statement
/// (`weightgate_audit_append`) that holds the lock only while it runs and
/// its commit, and that first checks that nothing the decisions rest on has
/// changed: no grant revoked, extended, removed or given a quota, none live
/// when decided expired while the batch waited for the lock, no link key of
/// the batch retired. No round trip is made while the lock is held,
/// so replicas append side by side, and a batch makes one round trip in all.
///
/// `None` when the batch must be decided under the lock instead: it names a
/// grant with a quota (whose transfers under way change with every fetch on
/// it), or the belief was wrong, which the database found before appending
/// anything.
async fn append_unlocked(
    conn: &mut AnyConnection,
    belief: &mut Belief,
    reservations: &mut Reservations,
    items: &[Item],
) -> anyhow::Result<Option<Vec<(i64, Event)>>> {
    use db::postgres_writer as pg;
    let ids = grant_ids(items);
    let mut unknown: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !belief.grants.contains_key(*id))
        .collect();
    if !unknown.is_empty() || belief.retired_keys.is_none() {
        if belief.grants.len() + unknown.len() > BELIEF_KEPT {
            // Dropped whole: every grant of the batch is to be read again.
            *belief = Belief::default();
            unknown.clone_from(&ids);
        }
        let facts = pg::facts(conn, &unknown, db::keys::LINK).await?;
        belief
            .grants
            .extend(facts.grants.into_iter().map(|g| (g.id.clone(), g)));
        belief.retired_keys = Some(facts.retired_keys);
    }
    let grants: Vec<GrantNow> = ids
        .iter()
        .filter_map(|id| belief.grants.get(*id).cloned())
        .collect();
    if grants.iter().any(GrantNow::has_quota) {
        return Ok(None);
    }
    let retired_keys = belief.retired_keys.clone().unwrap_or_default();
    let mut keys: Vec<(&str, bool)> = items
        .iter()
        .filter_map(|item| match item {
            Item::Guarded(g) => Some((g.link_kid.as_str(), retired_keys.contains(&g.link_kid))),
            Item::Event(_) | Item::Closing { .. } => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let at = now_ms();
    let mut decided = decide_batch(
        BatchFacts {
            grants: grants.clone(),
            retired_keys,
        },
        items,
        at,
    );
    if !decided.reserve.is_empty() {
        return Ok(None);
    }
    let released = reservations.held(std::mem::take(&mut decided.release));
    let rows: Vec<EventRow> = decided.events.iter().map(|e| row_of(e, at)).collect();
    let seen = pg::Seen {
        grants: &grants,
        keys: &keys,
    };
    let mut buf = Vec::with_capacity(1024);
    let unchained: Vec<pg::Unchained<'_>> = rows
        .iter()
        .enumerate()
        .map(|(ord, row)| {
            let (mid, post) = fragments(row, &mut buf);
            pg::Unchained { ord, row, mid, post }
        })
        .collect();
    let Some(appended) = pg::append(conn, HASHED_PREFIX, at, &unchained, &seen, &released).await? else {
        metrics::counter!("weightgate_audit_batches_decided_again_total").increment(1);
        *belief = Belief::default();
        return Ok(None);
    };
    reservations.committed(&[], &released, at);
    record_batch("postgres", appended.wait, appended.held, rows.len());
    Ok(Some((appended.first..).zip(decided.events).collect()))
}

/// A batch decided and appended in one transaction under the chain's lock:
/// on PostgreSQL three round trips while it is held (the facts with the
/// head, the writes, the commit), and two more per grant with a quota.
async fn write_locked(
    db: &Db,
    conn: &mut AnyConnection,
    reservations: &mut Reservations,
    items: &[Item],
) -> anyhow::Result<Vec<(i64, Event)>> {
    let asked = Instant::now();
    let mut tx = db::audit::begin_appending(conn).await?;
    let locked = Instant::now();
    let at = now_ms();
    let open_since = at - RESERVATION_LIFETIME_MS;
    let postgres = db.backend() == Backend::Postgres;
    let (facts, head) = if postgres {
        let facts = db::postgres_writer::facts(&mut tx, &grant_ids(items), db::keys::LINK).await?;
        let grants = db::grants::with_quota_details(&mut tx, facts.grants, open_since).await?;
        let facts_head = facts.head;
        let facts = BatchFacts {
            grants,
            retired_keys: facts.retired_keys,
        };
        (facts, facts_head)
    } else {
        let facts = if grant_ids(items).is_empty() {
            BatchFacts::default()
        } else {
            BatchFacts {
                grants: db::grants::current(&mut tx, &grant_ids(items), open_since).await?,
                retired_keys: db::keys::retired(&mut *tx, db::keys::LINK).await?,
            }
        };
        (facts, db::audit::head(&mut *tx).await?)
    };
    let mut decided = decide_batch(facts, items, at);
    let rows = chain(head, at, &decided.events);
    let released = reservations.held(std::mem::take(&mut decided.release));
    let reserved = decided.reserved(&rows);
    if postgres {
        db::postgres_writer::write(&mut tx, &rows, &reserved, &released, at)
            .await
            .context("cannot append to the audit log")?;
    } else {
        db::audit::insert_many(&mut tx, &rows)
            .await
            .context("cannot append to the audit log")?;
        db::grants::reserve(&mut tx, &reserved, at).await?;
        db::grants::release(&mut tx, &released).await?;
    }
    tx.commit().await?;
    reservations.committed(&reserved, &released, at);
    let backend = match db.backend() {
        db::Backend::Sqlite => "sqlite",
        db::Backend::Postgres => "postgres",
    };
    record_batch(backend, locked - asked, locked.elapsed(), rows.len());
    Ok(rows.iter().map(|r| r.seq).zip(decided.events).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event whose text fields hold what could confuse a split of its
    /// encoding: quotes, backslashes, the name of the field the split looks
    /// for, control characters and text beyond ASCII.
    fn awkward(occurrences: Option<u64>) -> Event {
        let mut event = Event::refused(Action::FileFetch, "grant_revoked")
            .subject(r#"x","prev_hash":"","occurrences":1}\"#)
            .actor("Zoë \u{1F9EA} \u{0007}\n\"quoted\"")
            .model(r"C:\models\")
            .grant("g-1");
        event.client.user_agent = Some(",\"prev_hash\":\"".into());
        event.range = Some((0, u64::MAX));
        event.occurrences = occurrences;
        event
    }

    #[test]
    fn fragments_around_position_and_previous_hash_hash_as_the_chain_does() {
        let mut buf = Vec::new();
        for occurrences in [None, Some(7)] {
            let events = [awkward(occurrences), Event::ok(Action::PortalStopped)];
            let mut prev = "ab".repeat(32);
            let chained = chain(Some((41, prev.clone())), 1_764_600_000_123, &events);
            for (row, event) in chained.iter().zip(&events) {
                let (mid, post) = fragments(&row_of(event, 1_764_600_000_123), &mut buf);
                let hashed = format!("{HASHED_PREFIX}{}{mid}{prev}{post}", row.seq);
                let mut h = Sha256::new();
                h.update(hashed.as_bytes());
                assert_eq!(hex::encode(h.finalize()), row.hash, "{hashed}");
                assert_eq!(row.hash, event_hash(row));
                prev.clone_from(&row.hash);
            }
        }
    }

    #[test]
    fn a_batch_decided_twice_decides_alike() {
        let items = [
            Item::Event(Box::new(awkward(None))),
            Item::Closing {
                event: Box::new(Event::ok(Action::FileDelivered)),
                closes: 9,
            },
        ];
        let first = decide_batch(BatchFacts::default(), &items, 5);
        let again = decide_batch(BatchFacts::default(), &items, 5);
        assert_eq!(
            chain(None, 5, &first.events)[1].hash,
            chain(None, 5, &again.events)[1].hash
        );
        assert_eq!((first.release, again.release), (vec![9], vec![9]));
    }
}
