//! What the log says about downloads: who fetched what, who holds a whole
//! copy of a release, and patterns worth a look.
//!
//! A file counts as delivered to a researcher once the bytes sent to them,
//! over any number of transfers (whole, ranged, resumed, parallel, or broken
//! off part-way, counting only the bytes actually sent), cover it from its
//! first byte to its last. The moment that last gap closed is when they
//! completed it.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Context;
use futures_util::TryStreamExt;

use crate::db::{
    self, Db,
    audit::{Delivered, ModelFile},
};

/// Byte ranges of one file, as sorted, disjoint, half-open spans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Coverage {
    spans: Vec<(u64, u64)>,
}

impl Coverage {
    /// Adds bytes `start..end`, merging with the spans it touches.
    pub(crate) fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        let mut merged = Vec::with_capacity(self.spans.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.spans {
            if b < start {
                merged.push((a, b));
            } else if a > end {
                if !placed {
                    merged.push((start, end));
                    placed = true;
                }
                merged.push((a, b));
            } else {
                start = start.min(a);
                end = end.max(b);
            }
        }
        if !placed {
            merged.push((start, end));
        }
        self.spans = merged;
    }

    /// `true` when bytes `0..size` are all covered.
    pub(crate) fn covers(&self, size: u64) -> bool {
        size == 0 || self.spans.first().is_some_and(|&(a, b)| a == 0 && b >= size)
    }

    /// Distinct bytes covered.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.spans.iter().map(|(a, b)| b - a).sum()
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

/// When each researcher completed each file: `(researcher, file) -> time`.
struct Completion {
    done: HashMap<(String, String), i64>,
    emails: HashMap<String, String>,
}

/// Follows every delivery of the given files, in log order per researcher
/// and file, to when their coverage became whole.
async fn completion(
    db: &Db,
    model_id: Option<&str>,
    sizes: &HashMap<String, u64>,
) -> anyhow::Result<Completion> {
    let mut done = HashMap::new();
    let mut emails = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut coverage = Coverage::default();
    let mut complete = false;
    let mut rows = db::audit::delivered(db.pool(), model_id);
    while let Some(row) = rows.try_next().await? {
        let Delivered {
            at,
            researcher_id,
            email,
            file_id,
            outcome,
            range_start,
            range_end,
            bytes,
            ..
        } = row;
        let Some(&size) = sizes.get(&file_id) else {
            continue;
        };
        let key = (researcher_id, file_id);
        if current.as_ref() != Some(&key) {
            current = Some(key.clone());
            coverage = Coverage::default();
            complete = false;
        }
        if let Some(email) = email {
            emails.entry(key.0.clone()).or_insert(email);
        }
        if complete {
            continue;
        }
        if let Some((start, end)) = delivered_span(range_start, range_end, bytes) {
            coverage.add(start, end);
        }
        // An empty file is complete once a transfer of it finished.
        if (size > 0 || outcome == "ok") && coverage.covers(size) {
            complete = true;
            done.insert(key, at);
        }
    }
    Ok(Completion { done, emails })
}

fn sizes(files: &[ModelFile]) -> HashMap<String, u64> {
    files
        .iter()
        .map(|f| (f.file_id.clone(), u64::try_from(f.size).unwrap_or(0)))
        .collect()
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
    let files = db::audit::published_files(db.pool(), model_id.as_deref()).await?;
    let sizes = sizes(&files);
    let model_of: HashMap<&str, &str> = files
        .iter()
        .map(|f| (f.file_id.as_str(), f.model_id.as_str()))
        .collect();
    let mut total: HashMap<&str, usize> = HashMap::new();
    for f in &files {
        *total.entry(f.model_id.as_str()).or_default() += 1;
    }
    let completion = completion(db, model_id.as_deref(), &sizes).await?;
    let mut complete: HashMap<(&str, &str), usize> = HashMap::new();
    for (researcher, file) in completion.done.keys() {
        if let Some(model) = model_of.get(file.as_str()) {
            *complete.entry((researcher.as_str(), model)).or_default() += 1;
        }
    }
    let totals = db::audit::delivery_totals(db.pool(), model_id.as_deref()).await?;
    Ok(totals
        .into_iter()
        .map(|t| DownloadSummary {
            files_complete: complete
                .get(&(t.researcher_id.as_str(), t.model_id.as_str()))
                .copied()
                .unwrap_or(0),
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

const DAY_MS: i64 = 86_400_000;

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
    for (model_id, at) in db::audit::completed_transfers_since(pool, first_day_ms).await? {
        if let Some(slug) = model_id.and_then(|id| slugs.get(&id))
            && let Some(counts) = per_model.get_mut(slug)
            && let Ok(day) = usize::try_from((at - first_day_ms) / DAY_MS)
            && let Some(count) = counts.get_mut(day)
        {
            *count += 1;
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
    let sizes = sizes(&files);
    let completion = completion(db, Some(&model_id), &sizes).await?;
    let mut releases: Vec<(&str, Vec<&ModelFile>)> = Vec::new();
    for f in &files {
        match releases.iter_mut().find(|(id, _)| *id == f.release_id) {
            Some((_, list)) => list.push(f),
            None => releases.push((&f.release_id, vec![f])),
        }
    }
    let researchers: HashSet<&str> = completion.done.keys().map(|(r, _)| r.as_str()).collect();
    let mut holders = Vec::new();
    for researcher in researchers {
        for (_, release_files) in &releases {
            let times: Option<Vec<i64>> = release_files
                .iter()
                .map(|f| {
                    completion
                        .done
                        .get(&(researcher.to_owned(), f.file_id.clone()))
                        .copied()
                })
                .collect();
            let Some(completed_at) = times.and_then(|t| t.into_iter().max()) else {
                continue;
            };
            holders.push(Holder {
                researcher: completion
                    .emails
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
    let pool = db.pool();
    let mut found = Vec::new();
    for g in db::audit::grants_with_many_addresses(pool, t.since_ms, t.max_addresses).await? {
        let addresses = db::audit::addresses_of_grant(pool, &g.grant_id, t.since_ms).await?;
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
    for b in db::audit::fetch_bursts(pool, t.since_ms, t.burst_fetches, t.burst_window_ms).await? {
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
    for g in db::audit::refused_after_revocation(pool, t.since_ms, t.revoked_fetches).await? {
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
        for a in db::audit::refusals_by_address(pool, action, reason, t.since_ms, at_least).await? {
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
        assert_eq!(c.spans, vec![(0, 25), (30, 40)]);
        assert!(!c.covers(40));
        c.add(24, 31);
        assert_eq!(c.spans, vec![(0, 40)]);
        assert!(c.covers(40));
        assert!(!c.covers(41));
        assert_eq!(c.bytes(), 40);
        c.add(5, 5);
        c.add(50, 45);
        assert_eq!(c.spans, vec![(0, 40)]);
    }

    #[test]
    fn coverage_keeps_gaps_apart() {
        let mut c = Coverage::default();
        c.add(50, 60);
        c.add(0, 10);
        c.add(20, 30);
        assert_eq!(c.spans, vec![(0, 10), (20, 30), (50, 60)]);
        assert_eq!(c.bytes(), 30);
        assert!(Coverage::default().covers(0));
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
