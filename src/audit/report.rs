//! What the log says about downloads: who fetched what, who holds a whole
//! copy of a release, and patterns worth a look.
//!
//! A file counts as delivered to a researcher once the bytes sent to them,
//! over any number of transfers (whole, ranged, resumed, parallel, or broken
//! off part-way, counting only the bytes actually sent), cover it from its
//! first byte to its last. The moment that last gap closed is when they
//! completed it.
//!
//! The reports do not scan the log. The log is folded, event by event in
//! its order, into totals kept in the database (see `fold` and the report
//! tables of `db::reports`): what each researcher holds of each file, fetch
//! counts per grant, address and hour, refusals per address and hour. The
//! fold remembers the last event it took, and every report first brings it
//! to the log's head, so a report says what the whole log says; the portal
//! also folds in the background so that this is seldom more than a few
//! seconds' work. Folding is a function of the log alone:
//! `weightgate audit rebuild-reports` empties the totals and folds the log
//! again, and must arrive at the same rows.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;

use crate::db::{
    self, Db,
    audit::{EventRow, ModelFile},
    reports::{
        Additions, AddressRow, CoverageKey, CoverageRow, Cursor, DailyRow, DownloadsRow, FetchMinuteRow,
        GrantFetchesRow, RefusalRow,
    },
};

/// Byte ranges of one file, as disjoint, half-open spans keyed by their
/// start: adding a span costs a logarithm of their number, whatever order
/// the ranges come in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Coverage {
    spans: BTreeMap<u64, u64>,
}

impl Coverage {
    /// Adds bytes `start..end`, merging with the spans it touches.
    pub(crate) fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // A span that starts before `start` and reaches it.
        if let Some((&a, &b)) = self.spans.range(..start).next_back()
            && b >= start
        {
            start = a;
            end = end.max(b);
        }
        // Every span that starts within the new one.
        while let Some((&a, &b)) = self.spans.range(start..=end).next() {
            end = end.max(b);
            self.spans.remove(&a);
        }
        self.spans.insert(start, end);
    }

    /// `true` when bytes `0..size` are all covered.
    pub(crate) fn covers(&self, size: u64) -> bool {
        size == 0
            || self
                .spans
                .first_key_value()
                .is_some_and(|(&a, &b)| a == 0 && b >= size)
    }

    /// The spans, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.spans.iter().map(|(&a, &b)| (a, b))
    }

    /// Distinct bytes covered.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.spans.iter().map(|(a, b)| b - a).sum()
    }

    #[cfg(test)]
    fn spans(&self) -> Vec<(u64, u64)> {
        self.spans.iter().map(|(&a, &b)| (a, b)).collect()
    }

    /// The spans as text, `start-end` separated by commas.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        for (i, (a, b)) in self.spans.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("{a}-{b}"));
        }
        out
    }

    /// Reads what `encode` wrote.
    pub(crate) fn decode(text: &str) -> Option<Self> {
        let mut c = Coverage::default();
        for span in text.split(',').filter(|s| !s.is_empty()) {
            let (a, b) = span.split_once('-')?;
            c.add(a.parse().ok()?, b.parse().ok()?);
        }
        Some(c)
    }
}

/// The bytes `start..end` of a file that one `file.delivered` event shows as
/// sent: from the start of the requested range (`range_end` inclusive), as
/// many as were sent, never past the range.
pub(crate) fn delivered_span(
    range_start: i64,
    range_end: Option<i64>,
    bytes: Option<i64>,
) -> Option<(u64, u64)> {
    let start = u64::try_from(range_start).ok()?;
    let range_end = range_end
        .and_then(|e| u64::try_from(e).ok())
        .map(|e| e.saturating_add(1));
    let sent = bytes
        .and_then(|b| u64::try_from(b).ok())
        .map(|b| start.saturating_add(b));
    let end = match (range_end, sent) {
        (Some(r), Some(s)) => r.min(s),
        (Some(r), None) => r,
        (None, Some(s)) => s,
        (None, None) => return None,
    };
    Some((start, end))
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// The start of the `span`-long bucket `at` falls in.
fn bucket(at: i64, span: i64) -> i64 {
    at.div_euclid(span) * span
}

/// The first whole hour at or after `since`: totals kept per hour answer
/// for the time from there on, the log itself for the part-hour before it.
fn whole_hours_from(since: i64) -> i64 {
    if since == i64::MIN {
        return i64::MIN;
    }
    let start = bucket(since, HOUR_MS);
    if start == since {
        since
    } else {
        start.saturating_add(HOUR_MS)
    }
}

/// Events folded in one step (one write transaction).
const STEP: usize = 10_000;

/// What bringing the reports up to date did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaughtUp {
    /// Events folded.
    pub folded: i64,
    /// The log was no longer the one the totals were folded from (an event
    /// they had taken was changed or is gone): they were emptied and the
    /// log folded again from its start.
    pub rebuilt: bool,
}

/// Folds every event the report totals have not taken yet.
pub async fn catch_up(db: &Db) -> anyhow::Result<CaughtUp> {
    catch_up_at_most(db, i64::MAX).await
}

/// Folds the events the report totals have not taken yet, but stops after
/// about `most` of them: for a page that should not wait on a long fold.
pub(crate) async fn catch_up_at_most(db: &Db, most: i64) -> anyhow::Result<CaughtUp> {
    let mut done = CaughtUp::default();
    'look: while done.folded < most {
        // Most calls find nothing to do; they learn it without a write
        // transaction.
        let head = db::audit::head(db.pool()).await?;
        let cursor = db::reports::cursor(db.pool()).await?;
        if head.as_ref().map(|(seq, hash)| (*seq, Some(hash))) == Some((cursor.seq, cursor.hash.as_ref()))
            || (head.is_none() && cursor.seq == 0)
        {
            break;
        }
        // Archived events are folded only by a rebuild, which reads them
        // back from their segments.
        if let Some(archived) = db::archives::newest(db.pool()).await?
            && cursor.seq < archived.last_seq
        {
            return Err(BehindArchive {
                cursor: cursor.seq,
                archived: archived.last_seq,
            }
            .into());
        }
        if cursor.seq > 0 && super::archive::hash_at(db, cursor.seq).await? != cursor.hash {
            let mut tx = db.begin().await?;
            if db::reports::lock_cursor(&mut tx).await? == cursor {
                db::reports::clear(&mut tx).await?;
                tx.commit().await?;
                tracing::warn!(
                    "an event the report totals were folded from changed or is gone: the totals were emptied \
                     and are folded again from the log; run `weightgate audit verify`"
                );
                done.rebuilt = true;
            }
            continue;
        }
        // The events after the cursor, a step's worth at a time, each step
        // read in a short read of its own (see `db::audit::read_page`).
        let mut at = cursor;
        loop {
            let page = db::audit::read_page(db, at.seq, STEP).await?;
            if page.is_empty() {
                break 'look;
            }
            let Some(next) = step(db, &at, &page).await? else {
                // Another fold took these events first: look again.
                continue 'look;
            };
            done.folded += i64::try_from(page.len()).unwrap_or(i64::MAX);
            at = next;
            if done.folded >= most {
                break 'look;
            }
        }
    }
    Ok(done)
}

/// The report totals lack archived events, which only a rebuild reads back.
#[derive(Debug, thiserror::Error)]
#[error(
    "the report totals have taken the log only up to event {cursor}, and events up to {archived} are \
     archived: `weightgate audit rebuild-reports` folds them from their segments"
)]
pub struct BehindArchive {
    cursor: i64,
    archived: i64,
}

/// Empties the report totals and folds the whole log again: the archived
/// segments, read back from `archive`, then the live log.
pub async fn rebuild(
    db: &Db,
    archive: &super::archive::Archive,
    trust: &super::checkpoint::Trust,
) -> anyhow::Result<CaughtUp> {
    // Segments are read as their records say, once those hold.
    let records = super::archive::check_records(db, archive, trust).await?;
    if let Some((_, problem)) = records.problems.first() {
        anyhow::bail!("{problem}: the report totals were left as they were; run `weightgate audit verify`");
    }
    let mut tx = db.begin().await?;
    let mut at = db::reports::lock_cursor(&mut tx).await?;
    db::reports::clear(&mut tx).await?;
    tx.commit().await?;
    at.seq = 0;
    at.hash = None;
    let mut done = CaughtUp::default();
    for row in &records.rows {
        let mut reader = super::archive::SegmentReader::open(archive, row).await?;
        loop {
            let page;
            (reader, page) = reader.next_page(STEP).await?;
            if page.is_empty() {
                break;
            }
            let mut prev = (at.seq, at.hash.as_deref().unwrap_or(super::GENESIS));
            for r in &page {
                if r.seq != prev.0 + 1 || r.prev_hash != prev.1 {
                    anyhow::bail!(
                        "the archived segment {} holds event {} where event {} belongs, or not linked to it: run \
                         `weightgate audit verify --archive`",
                        row.object,
                        r.seq,
                        prev.0 + 1
                    );
                }
                prev = (r.seq, r.hash.as_str());
            }
            at = step(db, &at, &page)
                .await?
                .context("another fold moved the report totals while they were rebuilt: rebuild again")?;
            done.folded += i64::try_from(page.len()).unwrap_or(i64::MAX);
        }
    }
    let rest = catch_up(db).await?;
    done.folded += rest.folded;
    done.rebuilt = rest.rebuilt;
    Ok(done)
}

/// Folds `rows`, the events that follow `cursor`, and returns where the
/// cursor now stands; `None` when another fold moved it first. What the
/// events add is worked out before the write transaction, which then only
/// checks that the cursor did not move meanwhile, writes and moves it: on
/// SQLite the audit writer waits for the database's write lock only that
/// long.
async fn step(db: &Db, cursor: &Cursor, rows: &[EventRow]) -> anyhow::Result<Option<Cursor>> {
    let Some(last) = rows.last() else {
        return Ok(Some(cursor.clone()));
    };
    let next = Cursor {
        seq: last.seq,
        hash: Some(last.hash.clone()),
    };
    let (mut additions, delivered) = fold(rows);
    let mut tx = db.begin().await?;
    if db::reports::lock_cursor(&mut tx).await? != *cursor {
        return Ok(None);
    }
    // Coverage replaces what is stored, so it is read under the lock: a
    // cursor can come back to the same place (after a rebuild) with other
    // coverage stored than when the events were read.
    additions.coverage = fold_coverage(&mut tx, &delivered).await?;
    db::reports::add(&mut tx, &additions).await?;
    db::reports::set_cursor(&mut tx, &next).await?;
    tx.commit().await?;
    Ok(Some(next))
}

/// What `rows`, events in log order, add to the report totals: everything
/// an event contributes is decided here and in [`fold_coverage`], which
/// takes the `file.delivered` events returned, and nowhere else.
fn fold(rows: &[EventRow]) -> (Additions, Vec<&EventRow>) {
    let mut downloads: HashMap<(&str, &str), DownloadsRow> = HashMap::new();
    let mut addresses: HashSet<(&str, &str, &str)> = HashSet::new();
    let mut grant_fetches: HashMap<(&str, i64, &str), GrantFetchesRow> = HashMap::new();
    let mut fetch_minutes: HashMap<(&str, i64), i64> = HashMap::new();
    let mut refusals: HashMap<(&str, &str, &str, i64), RefusalRow> = HashMap::new();
    let mut daily: HashMap<(&str, i64), i64> = HashMap::new();
    let mut delivered: Vec<&EventRow> = Vec::new();
    for r in rows {
        let fetch = r.action == "file.fetch";
        let delivery = r.action == "file.delivered";
        if (fetch || delivery)
            && let (Some(researcher), Some(model)) = (r.researcher_id.as_deref(), r.model_id.as_deref())
        {
            let d = downloads
                .entry((researcher, model))
                .or_insert_with(|| DownloadsRow {
                    researcher_id: researcher.to_owned(),
                    model_id: model.to_owned(),
                    ..DownloadsRow::default()
                });
            if fetch {
                match r.outcome.as_str() {
                    "ok" => {
                        d.fetches += 1;
                        d.first_fetch = Some(d.first_fetch.map_or(r.at, |t| t.min(r.at)));
                        d.last_fetch = Some(d.last_fetch.map_or(r.at, |t| t.max(r.at)));
                    }
                    "refused" => d.refused += 1,
                    _ => {}
                }
                if let Some(ip) = r.client_ip.as_deref() {
                    addresses.insert((researcher, model, ip));
                }
            } else {
                d.bytes = d.bytes.saturating_add(r.bytes.unwrap_or(0));
            }
        }
        if fetch && let Some(grant) = r.grant_id.as_deref() {
            let hour = bucket(r.at, HOUR_MS);
            let ip = r.client_ip.as_deref().unwrap_or("");
            let g = grant_fetches
                .entry((grant, hour, ip))
                .or_insert_with(|| GrantFetchesRow {
                    grant_id: grant.to_owned(),
                    hour,
                    client_ip: ip.to_owned(),
                    fetches: 0,
                    revoked: 0,
                    first_at: r.at,
                    last_at: r.at,
                    revoked_first_at: None,
                    revoked_last_at: None,
                });
            g.fetches += 1;
            if r.outcome == "refused" && r.reason.as_deref() == Some("grant_revoked") {
                g.revoked += 1;
                g.revoked_first_at = Some(g.revoked_first_at.map_or(r.at, |t| t.min(r.at)));
                g.revoked_last_at = Some(g.revoked_last_at.map_or(r.at, |t| t.max(r.at)));
            }
            g.first_at = g.first_at.min(r.at);
            g.last_at = g.last_at.max(r.at);
            *fetch_minutes.entry((grant, bucket(r.at, MINUTE_MS))).or_default() += 1;
        }
        if delivery {
            if r.outcome == "ok"
                && let Some(model) = r.model_id.as_deref()
            {
                *daily.entry((model, bucket(r.at, DAY_MS))).or_default() += 1;
            }
            if r.researcher_id.is_some() && r.file_id.is_some() && r.range_start.is_some() {
                delivered.push(r);
            }
        }
        if r.outcome == "refused"
            && let (Some(reason), Some(ip)) = (r.reason.as_deref(), r.client_ip.as_deref())
        {
            let hour = bucket(r.at, HOUR_MS);
            let f = refusals
                .entry((&r.action, reason, ip, hour))
                .or_insert_with(|| RefusalRow {
                    action: r.action.clone(),
                    reason: reason.to_owned(),
                    client_ip: ip.to_owned(),
                    hour,
                    events: 0,
                    first_at: r.at,
                    last_at: r.at,
                });
            f.events = f.events.saturating_add(r.occurrences.unwrap_or(1));
            f.first_at = f.first_at.min(r.at);
            f.last_at = f.last_at.max(r.at);
        }
    }
    // The all-time totals are the hourly ones summed over the hours.
    let mut grant_addresses: HashMap<(&str, &str), GrantFetchesRow> = HashMap::new();
    for g in grant_fetches.values() {
        let total = grant_addresses
            .entry((&g.grant_id, &g.client_ip))
            .or_insert_with(|| GrantFetchesRow {
                hour: 0,
                fetches: 0,
                revoked: 0,
                revoked_first_at: None,
                revoked_last_at: None,
                ..g.clone()
            });
        total.fetches += g.fetches;
        total.revoked += g.revoked;
        total.first_at = total.first_at.min(g.first_at);
        total.last_at = total.last_at.max(g.last_at);
        total.revoked_first_at = earlier(total.revoked_first_at, g.revoked_first_at);
        total.revoked_last_at = later(total.revoked_last_at, g.revoked_last_at);
    }
    let grant_addresses: Vec<GrantFetchesRow> = grant_addresses.into_values().collect();
    let mut refusal_totals: HashMap<(&str, &str, &str), RefusalRow> = HashMap::new();
    for f in refusals.values() {
        let total = refusal_totals
            .entry((&f.action, &f.reason, &f.client_ip))
            .or_insert_with(|| RefusalRow {
                hour: 0,
                events: 0,
                ..f.clone()
            });
        total.events = total.events.saturating_add(f.events);
        total.first_at = total.first_at.min(f.first_at);
        total.last_at = total.last_at.max(f.last_at);
    }
    let refusal_totals: Vec<RefusalRow> = refusal_totals.into_values().collect();
    let additions = Additions {
        coverage: Vec::new(),
        downloads: downloads.into_values().collect(),
        addresses: addresses
            .into_iter()
            .map(|(researcher, model, ip)| AddressRow {
                researcher_id: researcher.to_owned(),
                model_id: model.to_owned(),
                client_ip: ip.to_owned(),
            })
            .collect(),
        grant_fetches: grant_fetches.into_values().collect(),
        grant_addresses,
        fetch_minutes: fetch_minutes
            .into_iter()
            .map(|((grant, minute), fetches)| FetchMinuteRow {
                grant_id: grant.to_owned(),
                minute,
                fetches,
            })
            .collect(),
        refusals: refusals.into_values().collect(),
        refusal_totals,
        daily: daily
            .into_iter()
            .map(|((model, day), count)| DailyRow {
                model_id: model.to_owned(),
                day,
                count,
            })
            .collect(),
    };
    (additions, delivered)
}

fn earlier(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn later(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// A researcher's coverage of a file while the fold follows it.
struct Following {
    model_id: Option<String>,
    coverage: Coverage,
    completed_at: Option<i64>,
}

/// The new coverage of every (researcher, file) that `delivered`, the
/// `file.delivered` events of a step in log order, adds bytes to.
async fn fold_coverage(
    conn: &mut sqlx::AnyConnection,
    delivered: &[&EventRow],
) -> anyhow::Result<Vec<CoverageRow>> {
    let mut keys: Vec<CoverageKey<'_>> = Vec::new();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut files: Vec<&str> = Vec::new();
    for r in delivered {
        let (Some(researcher), Some(file)) = (r.researcher_id.as_deref(), r.file_id.as_deref()) else {
            continue;
        };
        if seen.insert((researcher, file)) {
            keys.push(CoverageKey {
                researcher_id: researcher,
                file_id: file,
            });
            if !files.contains(&file) {
                files.push(file);
            }
        }
    }
    let sizes: HashMap<String, u64> = db::reports::file_sizes(conn, &files)
        .await?
        .into_iter()
        .map(|(id, size)| (id, u64::try_from(size).unwrap_or(0)))
        .collect();
    let mut following: HashMap<(String, String), Following> = HashMap::new();
    for row in db::reports::coverage_of(conn, &keys).await? {
        let coverage = Coverage::decode(&row.spans).with_context(|| {
            format!(
                "the stored coverage of file {} by researcher {} is unreadable; run `weightgate audit rebuild-reports`",
                row.file_id, row.researcher_id
            )
        })?;
        following.insert(
            (row.researcher_id, row.file_id),
            Following {
                model_id: row.model_id,
                coverage,
                completed_at: row.completed_at,
            },
        );
    }
    let mut changed: HashSet<(String, String)> = HashSet::new();
    for r in delivered {
        let (Some(researcher), Some(file), Some(range_start)) =
            (r.researcher_id.as_deref(), r.file_id.as_deref(), r.range_start)
        else {
            continue;
        };
        // Bytes of a file the portal no longer knows count for nothing.
        let Some(&size) = sizes.get(file) else { continue };
        let key = (researcher.to_owned(), file.to_owned());
        let f = following.entry(key.clone()).or_insert_with(|| Following {
            model_id: r.model_id.clone(),
            coverage: Coverage::default(),
            completed_at: None,
        });
        if f.completed_at.is_some() {
            continue;
        }
        if let Some((start, end)) = delivered_span(range_start, r.range_end, r.bytes) {
            f.coverage.add(start, end);
        }
        // An empty file is complete once a transfer of it finished.
        if (size > 0 || r.outcome == "ok") && f.coverage.covers(size) {
            f.completed_at = Some(r.at);
        }
        changed.insert(key);
    }
    Ok(changed
        .into_iter()
        .filter_map(|key| {
            let f = following.remove(&key)?;
            Some(CoverageRow {
                researcher_id: key.0,
                file_id: key.1,
                model_id: f.model_id,
                spans: f.coverage.encode(),
                completed_at: f.completed_at,
            })
        })
        .collect())
}

async fn model_id(db: &Db, slug: &str) -> anyhow::Result<String> {
    Ok(db::models::find_model_by_slug(db.pool(), slug)
        .await?
        .with_context(|| format!("no model is called {slug:?}"))?
        .id)
}

/// What one researcher fetched of one model.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct DownloadSummary {
    pub(crate) researcher: String,
    pub(crate) researcher_id: String,
    pub(crate) model: String,
    /// Files of the model's published releases the researcher has whole.
    pub(crate) files_complete: usize,
    pub(crate) files_total: usize,
    /// Bytes sent, over every transfer (repeats included).
    pub(crate) bytes: i64,
    pub(crate) fetches: i64,
    pub(crate) refused: i64,
    pub(crate) first_fetch: Option<i64>,
    pub(crate) last_fetch: Option<i64>,
    /// Distinct client addresses the fetches came from.
    pub(crate) addresses: i64,
}

/// Downloads per researcher and model, optionally of one model.
pub(crate) async fn downloads(db: &Db, model: Option<&str>) -> anyhow::Result<Vec<DownloadSummary>> {
    let model_id = match model {
        Some(slug) => Some(model_id(db, slug).await?),
        None => None,
    };
    catch_up(db).await?;
    let files = db::audit::published_files(db.pool(), model_id.as_deref()).await?;
    let mut total: HashMap<&str, usize> = HashMap::new();
    for f in &files {
        *total.entry(f.model_id.as_str()).or_default() += 1;
    }
    let totals = db::reports::delivery_totals(db.pool(), model_id.as_deref()).await?;
    Ok(totals
        .into_iter()
        .map(|t| DownloadSummary {
            files_complete: usize::try_from(t.files_complete).unwrap_or(0),
            files_total: total.get(t.model_id.as_str()).copied().unwrap_or(0),
            researcher: t.email.unwrap_or_else(|| t.researcher_id.clone()),
            researcher_id: t.researcher_id,
            model: t.model_slug.unwrap_or(t.model_id),
            bytes: t.bytes,
            fetches: t.fetches,
            refused: t.refused,
            first_fetch: t.first_fetch,
            last_fetch: t.last_fetch,
            addresses: t.addresses,
        })
        .collect())
}

/// A researcher holding every file of a release.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Holder {
    pub(crate) researcher: String,
    pub(crate) researcher_id: String,
    pub(crate) model: String,
    pub(crate) release: String,
    pub(crate) files: usize,
    pub(crate) bytes: u64,
    /// When the last missing byte of the release reached them.
    pub(crate) completed_at: i64,
}

/// Completed downloads per model per day over the last days, for the
/// dashboard's charts: every model, with a zero for each quiet day.
#[derive(Debug)]
pub(crate) struct DailyDeliveries {
    /// The start (UTC midnight, ms) of the first day counted.
    pub(crate) first_day_ms: i64,
    /// Each model's counts by slug, oldest day first, one per day.
    pub(crate) per_model: BTreeMap<String, Vec<u64>>,
}

/// The `days` days up to and including the one `now_ms` falls in.
pub(crate) async fn daily_deliveries(db: &Db, days: usize, now_ms: i64) -> anyhow::Result<DailyDeliveries> {
    let pool = db.pool();
    let span = i64::try_from(days).context("a number of days")?;
    let first_day_ms = now_ms / DAY_MS * DAY_MS - (span - 1).max(0) * DAY_MS;
    let slugs: HashMap<String, String> = db::models::list_models(pool)
        .await?
        .into_iter()
        .map(|m| (m.id, m.slug))
        .collect();
    let mut per_model: BTreeMap<String, Vec<u64>> =
        slugs.values().map(|slug| (slug.clone(), vec![0; days])).collect();
    // A page should not wait on a long fold; the portal folds in the
    // background too.
    catch_up_at_most(db, STEP as i64).await?;
    for (model_id, day, count) in db::reports::daily_deliveries(pool, first_day_ms).await? {
        if let Some(slug) = slugs.get(&model_id)
            && let Some(counts) = per_model.get_mut(slug)
            && let Ok(index) = usize::try_from((day - first_day_ms) / DAY_MS)
            && let Some(slot) = counts.get_mut(index)
        {
            *slot += u64::try_from(count).unwrap_or(0);
        }
    }
    Ok(DailyDeliveries {
        first_day_ms,
        per_model,
    })
}

/// Researchers who hold a complete copy of a release of `model` (of
/// `release` only, when given), oldest first.
pub(crate) async fn who_has(db: &Db, model: &str, release: Option<&str>) -> anyhow::Result<Vec<Holder>> {
    let model_id = model_id(db, model).await?;
    let mut files = db::audit::published_files(db.pool(), Some(&model_id)).await?;
    if let Some(release) = release {
        files.retain(|f| f.release_name == release);
        anyhow::ensure!(
            !files.is_empty(),
            "model {model} has no published release {release:?} with files"
        );
    }
    catch_up(db).await?;
    let mut done: HashMap<(String, String), i64> = HashMap::new();
    let mut emails: HashMap<String, String> = HashMap::new();
    for c in db::reports::completed(db.pool(), &model_id).await? {
        if let Some(email) = c.email {
            emails.insert(c.researcher_id.clone(), email);
        }
        done.insert((c.researcher_id, c.file_id), c.completed_at);
    }
    let mut releases: Vec<(&str, Vec<&ModelFile>)> = Vec::new();
    for f in &files {
        match releases.iter_mut().find(|(id, _)| *id == f.release_id) {
            Some((_, list)) => list.push(f),
            None => releases.push((&f.release_id, vec![f])),
        }
    }
    let researchers: HashSet<&str> = done.keys().map(|(r, _)| r.as_str()).collect();
    let mut holders = Vec::new();
    for researcher in researchers {
        for (_, release_files) in &releases {
            let times: Option<Vec<i64>> = release_files
                .iter()
                .map(|f| done.get(&(researcher.to_owned(), f.file_id.clone())).copied())
                .collect();
            let Some(completed_at) = times.and_then(|t| t.into_iter().max()) else {
                continue;
            };
            holders.push(Holder {
                researcher: emails
                    .get(researcher)
                    .cloned()
                    .unwrap_or_else(|| researcher.to_owned()),
                researcher_id: researcher.to_owned(),
                model: model.to_owned(),
                release: release_files[0].release_name.clone(),
                files: release_files.len(),
                bytes: release_files
                    .iter()
                    .map(|f| u64::try_from(f.size).unwrap_or(0))
                    .sum(),
                completed_at,
            });
        }
    }
    holders.sort_by(|a, b| {
        (a.completed_at, &a.researcher, &a.release).cmp(&(b.completed_at, &b.researcher, &b.release))
    });
    Ok(holders)
}

/// When the anomaly report flags something.
#[derive(Clone, Debug)]
pub(crate) struct Thresholds {
    /// Only events at or after this time (Unix milliseconds).
    pub(crate) since_ms: i64,
    /// A grant fetched from more distinct addresses than this.
    pub(crate) max_addresses: i64,
    /// This many fetches under one grant ...
    pub(crate) burst_fetches: i64,
    /// ... within this many milliseconds.
    pub(crate) burst_window_ms: i64,
    /// At least this many fetches refused because the grant was revoked.
    pub(crate) revoked_fetches: i64,
    /// At least this many links with a bad signature from one address.
    pub(crate) bad_signatures: i64,
    /// At least this many refused reviewer sign-ins from one address.
    pub(crate) failed_sign_ins: i64,
    /// An access URL used from more client networks than this.
    pub(crate) access_url_networks: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum AnomalyKind {
    ManyAddresses,
    Burst,
    AfterRevocation,
    BadSignatures,
    FailedSignIns,
    SharedAccessUrl,
}

impl AnomalyKind {
    /// The kind `as_str` names.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        [
            AnomalyKind::ManyAddresses,
            AnomalyKind::Burst,
            AnomalyKind::AfterRevocation,
            AnomalyKind::BadSignatures,
            AnomalyKind::FailedSignIns,
            AnomalyKind::SharedAccessUrl,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::ManyAddresses => "many-addresses",
            AnomalyKind::Burst => "burst",
            AnomalyKind::AfterRevocation => "after-revocation",
            AnomalyKind::BadSignatures => "bad-signatures",
            AnomalyKind::FailedSignIns => "failed-sign-ins",
            AnomalyKind::SharedAccessUrl => "shared-access-url",
        }
    }
}

/// One thing worth a look.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Anomaly {
    pub(crate) kind: AnomalyKind,
    pub(crate) grant_id: Option<String>,
    pub(crate) researcher: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) client_ip: Option<String>,
    /// How many events it is made of.
    pub(crate) count: i64,
    pub(crate) detail: String,
    pub(crate) first_at: i64,
    pub(crate) last_at: i64,
    /// The addresses involved, for grants used from many.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) addresses: Vec<String>,
}

fn format_ms_duration(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))).to_string()
}

/// Every anomaly the thresholds flag, by kind.
pub(crate) async fn anomalies(db: &Db, t: &Thresholds) -> anyhow::Result<Vec<Anomaly>> {
    anyhow::ensure!(t.burst_fetches >= 2, "a burst takes at least 2 fetches");
    catch_up(db).await?;
    let pool = db.pool();
    let since = t.since_ms;
    let window = db::reports::Window {
        since,
        whole_from: whole_hours_from(since),
    };
    let mut found = Vec::new();
    let mut part_hour: HashMap<String, Vec<String>> = HashMap::new();
    for (grant, ip) in db::reports::part_hour_addresses(pool, window).await? {
        part_hour.entry(grant).or_default().push(ip);
    }
    for g in db::reports::grants_with_many_addresses(pool, window, t.max_addresses).await? {
        let mut addresses = db::reports::addresses_of_grant(pool, &g.grant_id, window).await?;
        if let Some(more) = part_hour.get(&g.grant_id) {
            addresses.extend(more.iter().cloned());
            addresses.sort();
            addresses.dedup();
            addresses.truncate(100);
        }
        found.push(Anomaly {
            kind: AnomalyKind::ManyAddresses,
            detail: format!(
                "{} fetches from {} addresses (more than {})",
                g.fetches, g.addresses, t.max_addresses
            ),
            grant_id: Some(g.grant_id),
            researcher: g.email,
            model: g.model_slug,
            client_ip: None,
            count: g.fetches,
            first_at: g.first_at,
            last_at: g.last_at,
            addresses,
        });
    }
    let now = crate::types::now_ms();
    for u in db::grants::shared_access_urls(pool, t.access_url_networks, t.since_ms, now).await? {
        let addresses = db::grants::access_url_networks(pool, &u.id).await?;
        found.push(Anomaly {
            kind: AnomalyKind::SharedAccessUrl,
            detail: format!(
                "access URL {} used from {} client networks (more than {}); withdraw it on the grant's page",
                u.id, u.networks, t.access_url_networks
            ),
            grant_id: Some(u.grant_id),
            researcher: Some(u.email),
            model: Some(u.model_slug),
            client_ip: None,
            count: u.networks,
            first_at: u.first_at,
            last_at: u.last_at,
            addresses,
        });
    }
    for b in bursts(db, since, t.burst_fetches, t.burst_window_ms).await? {
        found.push(Anomaly {
            kind: AnomalyKind::Burst,
            detail: format!(
                "{n} fetches within {tightest} at the tightest (flagged: {n} within {window})",
                n = t.burst_fetches,
                tightest = format_ms_duration(b.tightest_ms),
                window = format_ms_duration(t.burst_window_ms),
            ),
            grant_id: Some(b.grant_id),
            researcher: b.email,
            model: b.model_slug,
            client_ip: None,
            count: b.windows,
            first_at: b.first_at,
            last_at: b.last_at,
            addresses: Vec::new(),
        });
    }
    for g in db::reports::refused_after_revocation(pool, window, t.revoked_fetches).await? {
        found.push(Anomaly {
            kind: AnomalyKind::AfterRevocation,
            detail: format!(
                "{} fetches refused after revocation, from {} addresses",
                g.fetches, g.addresses
            ),
            grant_id: Some(g.grant_id),
            researcher: g.email,
            model: g.model_slug,
            client_ip: None,
            count: g.fetches,
            first_at: g.first_at,
            last_at: g.last_at,
            addresses: Vec::new(),
        });
    }
    let by_address = [
        (
            AnomalyKind::BadSignatures,
            "file.fetch",
            "bad_signature",
            t.bad_signatures,
            "download links with a bad signature",
        ),
        (
            AnomalyKind::FailedSignIns,
            "reviewer.sign_in",
            "bad_credentials",
            t.failed_sign_ins,
            "refused reviewer sign-ins",
        ),
    ];
    for (kind, action, reason, at_least, what) in by_address {
        for a in db::reports::refusals_by_address(pool, action, reason, window, at_least).await? {
            found.push(Anomaly {
                kind,
                detail: format!("{} {what} from {}", a.count, a.client_ip),
                grant_id: None,
                researcher: None,
                model: None,
                client_ip: Some(a.client_ip),
                count: a.count,
                first_at: a.first_at,
                last_at: a.last_at,
                addresses: Vec::new(),
            });
        }
    }
    Ok(found)
}

/// Windows in which one grant's links were fetched many times.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Burst {
    grant_id: String,
    email: Option<String>,
    model_slug: Option<String>,
    /// How many fetches closed a window of the given size.
    windows: i64,
    /// The shortest time in which the given number of fetches happened.
    tightest_ms: i64,
    first_at: i64,
    last_at: i64,
}

/// How far, in time, a fetch may sit from its place in the log's order: the
/// log is read this much wider than a burst can reach, so that the fetches
/// around one are all read whatever order they were written in.
const ORDER_SLACK_MS: i64 = 60_000;

/// Grants with `fetches` or more fetches within `window_ms` since `since`:
/// each fetch (in log order) is compared with the one `fetches - 1` before
/// it. The per-minute (or, for windows over ten minutes, per-hour) counts
/// say where that can be: `fetches` within the window lie in at most
/// `k = ceil(window / bucket) + 1` buckets, so one of them holds at least
/// `fetches / k`. Only the log around such buckets is read.
async fn bursts(db: &Db, since: i64, fetches: i64, window_ms: i64) -> anyhow::Result<Vec<Burst>> {
    let pool = db.pool();
    let window_ms = window_ms.max(0);
    let span = if window_ms <= 10 * MINUTE_MS {
        MINUTE_MS
    } else {
        HOUR_MS
    };
    // Fetches written slightly out of time order (a batch decided before
    // an earlier one was appended) can stretch a window's fetches over up
    // to a slack either side.
    let k = (window_ms.saturating_add(2 * ORDER_SLACK_MS) / span).saturating_add(2);
    let at_least = (fetches + k - 1) / k;
    let busy = db::reports::busy_buckets(pool, span == HOUR_MS, at_least.max(1), since).await?;
    // Per grant, the times in which a window can close, merged.
    let mut around: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for (grant, start) in &busy {
        let from = start.saturating_sub(window_ms).max(since);
        let to = start.saturating_add(span - 1).saturating_add(window_ms);
        let ranges = around.entry(grant).or_default();
        match ranges.last_mut() {
            Some(last) if from <= last.1.saturating_add(1) => last.1 = last.1.max(to),
            _ => ranges.push((from, to)),
        }
    }
    let needed = usize::try_from(fetches - 1).context("a burst's size")?;
    let mut found = Vec::new();
    for (grant, ranges) in around {
        // One read of the grant's fetches from its first such time to its
        // last: a walk of the grant's entries in the log's index costs the
        // same for a short range as for a long one.
        let (Some(&(first, _)), Some(&(_, last))) = (ranges.first(), ranges.last()) else {
            continue;
        };
        let read_from = first.saturating_sub(ORDER_SLACK_MS).max(since);
        let times =
            db::reports::fetch_times(pool, grant, read_from, last.saturating_add(ORDER_SLACK_MS)).await?;
        let mut burst: Option<Burst> = None;
        for (i, &at) in times.iter().enumerate().skip(needed) {
            let gap = at - times[i - needed];
            // The range that starts last at or before `at` must reach it.
            let inside = ranges
                .partition_point(|&(from, _)| from <= at)
                .checked_sub(1)
                .is_some_and(|r| at <= ranges[r].1);
            if gap > window_ms || !inside {
                continue;
            }
            let b = burst.get_or_insert_with(|| Burst {
                grant_id: grant.to_owned(),
                email: None,
                model_slug: None,
                windows: 0,
                tightest_ms: gap,
                first_at: at,
                last_at: at,
            });
            b.windows += 1;
            b.tightest_ms = b.tightest_ms.min(gap);
            b.first_at = b.first_at.min(at);
            b.last_at = b.last_at.max(at);
        }
        if let Some(mut b) = burst {
            if let Some((email, slug)) = db::reports::grant_owner(pool, grant).await? {
                b.email = email;
                b.model_slug = slug;
            }
            found.push(b);
        }
    }
    found.sort_by(|a, b| (a.first_at, &a.grant_id).cmp(&(b.first_at, &b.grant_id)));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_merges_overlapping_and_touching_ranges() {
        let mut c = Coverage::default();
        c.add(10, 20);
        c.add(30, 40);
        assert!(!c.covers(40));
        c.add(0, 10);
        c.add(20, 25);
        assert_eq!(c.spans(), vec![(0, 25), (30, 40)]);
        assert!(!c.covers(40));
        c.add(24, 31);
        assert_eq!(c.spans(), vec![(0, 40)]);
        assert!(c.covers(40));
        assert!(!c.covers(41));
        assert_eq!(c.bytes(), 40);
        c.add(5, 5);
        c.add(50, 45);
        assert_eq!(c.spans(), vec![(0, 40)]);
    }

    #[test]
    fn coverage_keeps_gaps_apart() {
        let mut c = Coverage::default();
        c.add(50, 60);
        c.add(0, 10);
        c.add(20, 30);
        assert_eq!(c.spans(), vec![(0, 10), (20, 30), (50, 60)]);
        assert_eq!(c.bytes(), 30);
        assert!(Coverage::default().covers(0));
    }

    #[test]
    fn coverage_reads_back_what_it_wrote_and_refuses_garbage() {
        let mut c = Coverage::default();
        c.add(50, 60);
        c.add(0, 10);
        assert_eq!(c.encode(), "0-10,50-60");
        assert_eq!(Coverage::decode(&c.encode()), Some(c));
        assert_eq!(Coverage::decode(""), Some(Coverage::default()));
        assert_eq!(Coverage::decode("5-x"), None);
        assert_eq!(Coverage::decode("12"), None);
    }

    #[test]
    fn many_disjoint_ranges_cost_no_more_than_a_logarithm_each() {
        let mut c = Coverage::default();
        // Every other byte of a 400,000-byte file, from both ends inwards.
        for i in 0..100_000u64 {
            c.add(2 * i, 2 * i + 1);
            c.add(399_998 - 2 * i, 399_999 - 2 * i);
        }
        assert_eq!(c.spans.len(), 200_000);
        for i in 0..200_000u64 {
            c.add(2 * i + 1, 2 * i + 2);
        }
        assert_eq!(c.spans(), vec![(0, 400_000)]);
        assert!(c.covers(400_000));
    }

    #[test]
    fn whole_hours_start_at_the_first_hour_boundary_from_since() {
        assert_eq!(whole_hours_from(i64::MIN), i64::MIN);
        assert_eq!(whole_hours_from(0), 0);
        assert_eq!(whole_hours_from(1), HOUR_MS);
        assert_eq!(whole_hours_from(HOUR_MS), HOUR_MS);
        assert_eq!(whole_hours_from(-1), 0);
    }

    #[test]
    fn a_broken_off_transfer_covers_only_what_was_sent() {
        assert_eq!(delivered_span(0, Some(999), Some(1000)), Some((0, 1000)));
        assert_eq!(delivered_span(100, Some(999), Some(250)), Some((100, 350)));
        assert_eq!(delivered_span(100, Some(199), Some(5000)), Some((100, 200)));
        assert_eq!(delivered_span(100, Some(199), None), Some((100, 200)));
        assert_eq!(delivered_span(100, None, None), None);
        assert_eq!(delivered_span(-1, Some(10), Some(5)), None);
    }
}
