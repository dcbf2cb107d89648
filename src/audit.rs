//! The audit log: every event appended to one hash chain.
//!
//! State changes append their event inside their own transaction
//! ([`append`]), so the change and its record commit together. Fetches go
//! through [`AuditLog::record`], which hands the event to one writer task that
//! commits whatever has queued up in a single transaction and answers each
//! caller only once its event is durable.
//!
//! [`verify_chain`] walks the chain and checks the signed checkpoints of its
//! head ([`checkpoint`]); [`report`] reads who fetched what.

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::{
    db::{self, Backend, Db, Tx, audit::EventRow},
    types::now_ms,
};

pub mod checkpoint;
pub mod report;
mod verify;

pub use checkpoint::{checkpoint_if_moved, checkpoint_periodically};
pub use verify::{CheckpointSource, Problem, Verification, verify_chain, verify_with};

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
    pub fn as_str(self) -> &'static str {
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

/// One thing that happened. `subject` names what it happened to in words
/// (an e-mail, a file path) so the log reads on its own, whatever later
/// happens to the other tables.
#[derive(Clone, Debug)]
pub struct Event {
    pub action: &'static str,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub subject: Option<String>,
    pub model_id: Option<String>,
    pub application_id: Option<String>,
    pub grant_id: Option<String>,
    pub researcher_id: Option<String>,
    pub file_id: Option<String>,
    pub range: Option<(u64, u64)>,
    pub bytes: Option<u64>,
    pub client: Client,
}

impl Event {
    pub fn new(action: &'static str, outcome: Outcome) -> Self {
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
        }
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
        prev_hash: &r.prev_hash,
    };
    buf.clear();
    serde_json::to_writer(&mut *buf, &canonical).expect("an event always encodes");
    let mut h = Sha256::new();
    h.update(b"weightgate-audit-v1\n");
    h.update(&buf);
    h.finalize().into()
}

/// Takes the log's write lock for this transaction. SQLite's write
/// transactions already serialise (`BEGIN IMMEDIATE`); on PostgreSQL an advisory
/// lock keeps replicas from forking the chain.
async fn lock_chain(tx: &mut Tx, backend: Backend) -> sqlx::Result<()> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(4242001)")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Appends events inside `tx` and returns their sequence numbers. They become
/// durable when `tx` commits.
pub async fn append(tx: &mut Tx, backend: Backend, events: &[Event]) -> anyhow::Result<Vec<i64>> {
    lock_chain(tx, backend).await?;
    let (mut seq, mut prev) = db::audit::head(&mut **tx)
        .await?
        .unwrap_or((0, GENESIS.to_owned()));
    let at = now_ms();
    let mut seqs = Vec::with_capacity(events.len());
    for e in events {
        seq += 1;
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut row = EventRow {
            seq,
            at,
            action: e.action.to_owned(),
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
            prev_hash: prev,
            hash: String::new(),
        };
        row.hash = event_hash(&row);
        db::audit::insert(tx, &row)
            .await
            .context("cannot append to the audit log")?;
        prev = row.hash;
        seqs.push(seq);
    }
    Ok(seqs)
}

/// Appends one event in its own transaction.
pub async fn append_now(db: &Db, event: Event) -> anyhow::Result<i64> {
    let mut tx = db.begin().await?;
    let seq = append(&mut tx, db.backend(), std::slice::from_ref(&event)).await?;
    tx.commit().await?;
    Ok(seq[0])
}

struct Pending {
    event: Event,
    done: oneshot::Sender<Result<i64, String>>,
}

/// Handle on the batching writer used by the download path.
#[derive(Clone, Debug)]
pub struct AuditLog {
    queue: mpsc::Sender<Pending>,
}

/// Most events one transaction takes.
const MAX_BATCH: usize = 1024;

impl AuditLog {
    /// Starts the writer task.
    pub fn start(db: Db) -> Self {
        let (queue, mut rx) = mpsc::channel::<Pending>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let (events, waiters): (Vec<_>, Vec<_>) = batch.drain(..).map(|p| (p.event, p.done)).unzip();
                let result = async {
                    let mut tx = db.begin().await?;
                    let seqs = append(&mut tx, db.backend(), &events).await?;
                    tx.commit().await?;
                    anyhow::Ok(seqs)
                }
                .await;
                match result {
                    Ok(seqs) => {
                        for (done, seq) in waiters.into_iter().zip(seqs) {
                            let _ = done.send(Ok(seq));
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %format!("{err:#}"), events = events.len(), "audit write failed");
                        for done in waiters {
                            let _ = done.send(Err(format!("{err:#}")));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Appends an event and returns once it is durable.
    pub async fn record(&self, event: Event) -> anyhow::Result<i64> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Pending { event, done })
            .await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?
            .map_err(|e| anyhow::anyhow!(e))
    }
}
