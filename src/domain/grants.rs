//! Grants in use: the researcher's access page with fresh signed links,
//! revocation, and the checks every download passes before a byte is sent.

use std::sync::Arc;

use crate::db::facts::GrantFacts;

use futures_util::StreamExt;

use crate::{
    app::App,
    audit::{Action, AuditLog, Client, Event, Guarded, Now, Outcome, refusals::Tallied},
    config::DeliveryMode,
    crypto::links::Refusal,
    db::{
        self,
        grants::{GrantNow, GrantView},
        models::{File, FileInModel, Release},
        reviewers::Reviewer,
    },
    domain::authz::{self, ReviewerAction},
    domain::error::Result,
    mail,
    storage::ByteStream,
    types::now_ms,
};

/// Whether a grant can be used right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrantState {
    Active,
    Revoked,
    Expired,
}

impl GrantState {
    pub(crate) fn of(grant: &GrantView, now_ms: i64) -> Self {
        if grant.revoked_at.is_some() {
            GrantState::Revoked
        } else if grant.expires_at <= now_ms {
            GrantState::Expired
        } else {
            GrantState::Active
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Revoked => "revoked",
            GrantState::Expired => "expired",
        }
    }
}

impl std::fmt::Display for GrantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file with a freshly signed link.
#[derive(Debug)]
pub(crate) struct LinkedFile {
    pub(crate) file: File,
    pub(crate) url: String,
}

#[derive(Debug)]
pub(crate) struct ReleaseFiles {
    pub(crate) release: Release,
    pub(crate) files: Vec<LinkedFile>,
}

/// What the access page shows.
#[derive(Debug)]
pub(crate) struct Access {
    pub(crate) grant: GrantView,
    pub(crate) state: GrantState,
    /// Unix seconds at which the links below stop working.
    pub(crate) links_expire_at: i64,
    pub(crate) releases: Vec<ReleaseFiles>,
}

/// The path of a file's download link: its path in the release follows the
/// token as it is (`/dl/T/original/consolidated.00.pth`), so `curl -O` names
/// the file and a mirror of the link tree mirrors the release. Release paths
/// need no escaping in a URL (`types::is_safe_release_path`).
pub(crate) fn download_path(token: &str, file_name: &str) -> String {
    format!("/dl/{token}/{file_name}")
}

/// The access page (or the client's manifest, as `via` says) of a grant,
/// minting a fresh link for every file. Links never outlive the grant.
pub(crate) async fn access(app: &App, grant: GrantView, via: &str, client: Client) -> Result<Access> {
    let now = now_ms();
    let state = GrantState::of(&grant, now);
    let link_ttl = i64::try_from(app.config.link_ttl.as_secs()).unwrap_or(i64::MAX);
    let links_expire_at = (now / 1000).saturating_add(link_ttl).min(grant.expires_at / 1000);
    let mut releases = Vec::new();
    if state == GrantState::Active {
        app.links.refresh_if_retired().await?;
        for release in db::models::published_releases(app.db.pool(), &grant.model_id).await? {
            let files = db::models::files_of_release(app.db.pool(), &release.id)
                .await?
                .into_iter()
                .map(|file| {
                    let token = app.links.sign(&grant.id, &file.id, links_expire_at);
                    let url = app.url(&download_path(&token, &file.name));
                    LinkedFile { file, url }
                })
                .collect();
            releases.push(ReleaseFiles { release, files });
        }
        let event = Event::ok(Action::LinksIssued)
            .subject(format!("{} via {via}", grant.email))
            .grant(grant.id.clone())
            .researcher(grant.researcher_id.clone())
            .model(grant.model_id.clone())
            .client(client);
        app.audit.record(event).await?;
    } else {
        // Refused: the grant was revoked or has ended. Anyone holding the URL
        // can ask again at will, so refusals are counted per client network.
        let reason = match state {
            GrantState::Revoked => "grant_revoked",
            _ => "grant_expired",
        };
        let event = Event::refused(Action::LinksIssued, reason)
            .about_grant(&grant)
            .subject(format!("{} via {via}", grant.email))
            .client(client);
        app.record_refusal(event).await?;
    }
    Ok(Access {
        grant,
        state,
        links_expire_at,
        releases,
    })
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum GrantError {
    #[error("no such grant")]
    NotFound,
    #[error("this grant is already revoked")]
    AlreadyRevoked,
    #[error("a revocation needs a reason (at most 2000 characters)")]
    ReasonRequired,
    #[error("an extension adds 1 to {} days", crate::domain::reviews::MAX_EXTENSION_DAYS)]
    BadExtension,
    #[error("this grant has ended: the researcher may apply again, or an admin may override the policy")]
    Ended,
}

impl From<GrantError> for crate::domain::Error {
    fn from(err: GrantError) -> Self {
        match err {
            GrantError::NotFound => Self::not_found(err.to_string()),
            GrantError::AlreadyRevoked | GrantError::Ended => Self::conflict(err.to_string()),
            GrantError::ReasonRequired | GrantError::BadExtension => Self::invalid(err.to_string()),
        }
    }
}

/// The grants `reviewer` may see, as `filter` asks (its model list is
/// replaced by the reviewer's), newest first, and how many match.
pub(crate) async fn list(
    app: &App,
    reviewer: &Reviewer,
    mut filter: db::grants::GrantFilter,
) -> Result<(Vec<GrantView>, i64)> {
    filter.model_ids = authz::visible_models(app, reviewer).await?;
    Ok(db::grants::search(app.db.pool(), &filter, now_ms()).await?)
}

/// The grant, if `reviewer` may read it and act on it.
pub(crate) async fn manageable(app: &App, reviewer: &Reviewer, id: &str) -> Result<GrantView> {
    let grant = db::grants::find_view(app.db.pool(), id)
        .await?
        .ok_or(GrantError::NotFound)?;
    let model_id = grant.model_id.as_str();
    authz::reviewer_may(app, reviewer, ReviewerAction::Read { model_id }).await?;
    authz::reviewer_may(app, reviewer, ReviewerAction::Act { model_id }).await?;
    Ok(grant)
}

/// The grant, if `reviewer` may read it.
pub(crate) async fn readable(app: &App, reviewer: &Reviewer, id: &str) -> Result<GrantView> {
    let grant = db::grants::find_view(app.db.pool(), id)
        .await?
        .ok_or(GrantError::NotFound)?;
    authz::reviewer_may(
        app,
        reviewer,
        ReviewerAction::Read {
            model_id: &grant.model_id,
        },
    )
    .await?;
    Ok(grant)
}

/// Revokes a grant: its links stop working at the next fetch, and the
/// researcher is told why.
pub async fn revoke(
    app: &App,
    grant_id: &str,
    reason: &str,
    actor: &str,
    client: Client,
) -> Result<GrantView> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 2000 {
        return Err(GrantError::ReasonRequired.into());
    }
    let grant = db::grants::find_view(app.db.pool(), grant_id)
        .await?
        .ok_or(GrantError::NotFound)?;
    let mut tx = app.db.begin().await?;
    if !db::grants::revoke(&mut tx, &grant.id, reason, now_ms()).await? {
        return Err(GrantError::AlreadyRevoked.into());
    }
    mail::enqueue(
        &mut tx,
        &grant.email,
        &format!("Your access to {} was revoked", grant.model_title),
        &format!(
            "Hello {name},\n\nyour access to {title} was revoked. The reason given:\n\n{reason}\n",
            name = grant.researcher_name,
            title = grant.model_title
        ),
    )
    .await?;
    let event = Event::ok(Action::GrantRevoked)
        .actor(actor.to_owned())
        .reason(reason.to_owned())
        .about_grant(&grant)
        .client(client);
    crate::audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(db::grants::find_view(app.db.pool(), grant_id)
        .await?
        .ok_or(GrantError::NotFound)?)
}

/// A download that passed every check and whose audit event is durable.
pub(crate) struct Download {
    pub(crate) file: Arc<FileInModel>,
    /// Bytes `start..end` of the file are sent.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// `true` when a `Range` was honoured (HTTP 206).
    pub(crate) partial: bool,
    pub(crate) body: Delivery,
}

/// How the bytes reach the researcher.
pub(crate) enum Delivery {
    /// Streamed by the portal.
    Proxy(ByteStream),
    /// Served by the object store from this short-lived presigned URL.
    Redirect(String),
    /// No bytes: the answer to a `HEAD`, from the file's metadata.
    Metadata,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DownloadError {
    #[error("{}", .0.message())]
    Refused(Refusal),
    /// Refused on the link alone, before any grant's state was read.
    #[error("{}", .0.message())]
    ByLink(Refusal),
    #[error("the requested range is outside the file")]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The first range of a `Range` header, as `start..end`; `None` means the
/// whole file. Several ranges are answered with the whole file, which HTTP allows.
pub(crate) fn requested_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, DownloadError> {
    let Some(header) = header else { return Ok(None) };
    // A header that is not a byte range at all (another unit, garbage) is
    // ignored, as RFC 9110 asks; a byte range outside the file is a 416.
    let Ok(parsed) = http_range_header::parse_range_header(header) else {
        return Ok(None);
    };
    let ranges = parsed
        .validate(size)
        .map_err(|_| DownloadError::RangeNotSatisfiable { size })?;
    match ranges.as_slice() {
        [only] => Ok(Some((*only.start(), only.end() + 1))),
        _ => Ok(None),
    }
}

/// Checks a signed link and opens the requested bytes. Every outcome is
/// audited, and bytes are handed back only after the event is durable.
///
/// The checks on what never changes (the link, the file, the range) run here,
/// on cached facts. Those on what can change (revocation, expiry, quota) run
/// in the audit writer's transaction, on the grant as it stands when the event
/// is appended: a fetch either precedes a revocation in the log or is refused
/// by it. A refusal is audited with its reason; when several apply, the one
/// checked first in [`Refusal`]'s order wins.
///
/// A `HEAD` request (`head`) is checked and audited as a fetch, and answered
/// from the file's metadata alone: the store is not asked for bytes or for a
/// presigned URL, so a HEAD can never hand out what a GET would have to count.
pub(crate) async fn open_download(
    app: &App,
    token: &str,
    file_name: &str,
    range: Option<&str>,
    if_range: Option<&str>,
    head: bool,
    client: Client,
) -> Result<Download, DownloadError> {
    let mut event = Event::ok(Action::FileFetch).client(client);
    if head {
        // Checked and logged like any fetch, but it delivers nothing.
        event.reason = Some("head".into());
    }
    let claims = match app.links.verify(token, now_ms() / 1000).await {
        Ok(claims) => claims,
        Err(refusal) => return Err(refuse(app, event, refusal, file_name).await),
    };
    // A correctly signed link always names a grant this portal made.
    let Some(grant) = app.fetch_facts.grant(&app.db, &claims.grant_id).await? else {
        return Err(refuse(app, event, Refusal::BadSignature, file_name).await);
    };
    let file = app.fetch_facts.file(&app.db, &claims.file_id).await?;
    let fixed = match &file {
        Some(f) if f.model_id == grant.model_id && f.name == file_name => {
            // With If-Range, the range holds only for the version the client
            // has: the file's ETag, compared strongly. A date, or another tag,
            // gets the whole file.
            let range =
                range.filter(|_| if_range.is_none_or(|tag| tag.trim() == format!("\"{}\"", f.sha256)));
            requested_range(range, u64::try_from(f.size).unwrap_or(0))
        }
        Some(f) if f.model_id == grant.model_id => Err(DownloadError::Refused(Refusal::Malformed)),
        _ => Err(DownloadError::Refused(Refusal::FileNotInGrant)),
    };
    let (start, end, partial) = match (&fixed, &file) {
        (Ok(Some((start, end))), _) => (*start, *end, true),
        (Ok(None), Some(f)) => (0, u64::try_from(f.size).unwrap_or(0), false),
        _ => (0, 0, false),
    };
    // The bytes are opened (or the URL signed) while the decision is made,
    // not after it; a store that fails is reported only for a fetch the
    // decision lets through, so a refusal stays a refusal and is logged.
    let opened: Option<anyhow::Result<Opened>> = match (&fixed, &file, app.config.delivery) {
        (Ok(_), Some(_), _) if head => Some(Ok(Opened::Metadata)),
        (Ok(_), Some(f), DeliveryMode::Proxy) => Some(
            app.storage
                .get_range(&f.object_key, start, end)
                .await
                .map(Opened::Stream),
        ),
        (Ok(_), Some(f), DeliveryMode::Redirect) => Some(
            app.storage
                // A ranged fetch gets a URL for that range only: an open one
                // would serve the whole file while the log records the range.
                .presign_get(
                    &f.object_key,
                    partial.then_some((start, end)),
                    crate::storage::REDIRECT_TTL,
                    crate::types::base_name(&f.name),
                )
                .await
                .and_then(|url| {
                    url.ok_or_else(|| {
                        anyhow::anyhow!("this object store cannot presign URLs for redirect delivery")
                    })
                })
                .map(Opened::Url),
        ),
        _ => None,
    };
    let fixed_reason = fixed.as_ref().err().map(reason_of);
    let decide = FetchDecision {
        grant: grant.clone(),
        file: file.clone(),
        file_name: file_name.to_owned(),
        range: fixed.is_ok().then(|| (start, end.saturating_sub(1))),
        fixed_reason,
        event,
    };
    let started = std::time::Instant::now();
    let (fetch_seq, event) = app
        .audit
        .record_guarded(Guarded {
            grant_id: grant.id.clone(),
            link_kid: claims.kid.clone(),
            decide: Box::new(move |now, at| decide.decide(now, at)),
        })
        .await?;
    count_fetch(&event, started);
    if event.outcome != Outcome::Ok {
        return Err(
            match (fixed, event.reason.as_deref().and_then(Refusal::from_code)) {
                (Err(err), Some(refusal)) if fixed_reason == Some(refusal.code()) => err,
                (Err(err), None) => err,
                (_, Some(refusal)) => DownloadError::Refused(refusal),
                (Ok(_), None) => {
                    DownloadError::Internal(anyhow::anyhow!("a fetch was refused without a reason"))
                }
            },
        );
    }
    let file = file.expect("a fetch let through names a file");
    let body = match opened.expect("a fetch let through was opened") {
        Ok(Opened::Stream(stream)) => Delivery::Proxy(track_delivery(
            stream,
            app.audit.clone(),
            event,
            fetch_seq,
            end - start,
        )),
        Err(err) => {
            // Let through, but the store failed: nothing is delivered, and the
            // log says so next to the fetch.
            let mut delivered = event;
            delivered.action = Action::FileDelivered;
            delivered.outcome = Outcome::Aborted;
            delivered.reason = Some("store_failed".into());
            delivered.bytes = Some(0);
            app.audit.record_closing_unawaited(delivered, fetch_seq);
            return Err(err.into());
        }
        Ok(Opened::Url(url)) => {
            // The store serves the bytes, so the portal cannot see how many
            // arrive: the range is recorded as delivered, marked as such.
            let mut delivered = event;
            delivered.action = Action::FileDelivered;
            delivered.reason = Some("redirect".into());
            delivered.bytes = Some(end - start);
            app.audit.record_closing(delivered, fetch_seq).await?;
            Delivery::Redirect(url)
        }
        Ok(Opened::Metadata) => Delivery::Metadata,
    };
    Ok(Download {
        file,
        start,
        end,
        partial,
        body,
    })
}

/// The bytes of a fetch, where the store serves them, or (for a `HEAD`)
/// nothing but what the portal knows of the file.
enum Opened {
    Stream(ByteStream),
    Url(String),
    Metadata,
}

/// The audit code of a refusal found before the writer's checks.
fn reason_of(err: &DownloadError) -> &'static str {
    match err {
        DownloadError::Refused(refusal) | DownloadError::ByLink(refusal) => refusal.code(),
        DownloadError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
        DownloadError::Internal(_) => "internal",
    }
}

/// Audits a fetch refused on its link alone (malformed, a bad signature, no
/// grant of this portal, a retired key, expired or valid for too long),
/// before any grant's state was read, and hands back the error to answer
/// with. Anyone can send such links as fast as they like, so they are
/// counted per client network: only the first of each reason and window
/// gets an event of its own (see [`crate::audit::refusals`]).
async fn refuse(app: &App, mut event: Event, refusal: Refusal, file_name: &str) -> DownloadError {
    event.outcome = Outcome::Refused;
    event.reason = Some(refusal.code().to_owned());
    describe(&mut event, None, None, file_name);
    let network = event.client.network();
    let started = std::time::Instant::now();
    if app.refusals.note(&network, &event) == Tallied::First
        && let Err(err) = app.audit.record(event.clone()).await
    {
        return DownloadError::Internal(err);
    }
    count_fetch(&event, started);
    DownloadError::ByLink(refusal)
}

/// Counts a fetch whose event is durable.
fn count_fetch(event: &Event, started: std::time::Instant) {
    metrics::histogram!("weightgate_audit_write_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "weightgate_fetches_total",
        "outcome" => event.outcome.as_str(),
        "reason" => event.reason.clone().unwrap_or_default()
    )
    .increment(1);
}

/// The checks of a fetch that the audit writer makes on the grant's current
/// state, and the event each outcome records.
struct FetchDecision {
    grant: Arc<GrantFacts>,
    file: Option<Arc<FileInModel>>,
    file_name: String,
    /// The range to send, when the fixed checks let the fetch through.
    range: Option<(u64, u64)>,
    /// Why the fixed checks refused it.
    fixed_reason: Option<&'static str>,
    event: Event,
}

impl FetchDecision {
    /// May be asked more than once: when what it was decided on changed
    /// before the event could be appended, the writer asks again.
    fn decide(&self, now: Now<'_>, at: i64) -> Event {
        let Self {
            grant,
            file,
            file_name,
            range,
            fixed_reason,
            event,
        } = self;
        let (range, fixed_reason, mut event) = (*range, *fixed_reason, event.clone());
        let file = file.as_deref();
        let (reason, grant, file) = match now.grant {
            None => (Some(Refusal::BadSignature.code()), None, None),
            Some(_) if now.key_retired => (Some(Refusal::KeyRetired.code()), Some(&**grant), None),
            Some(g) if g.revoked_at.is_some() => (Some(Refusal::GrantRevoked.code()), Some(&**grant), None),
            Some(g) if g.expires_at <= at => (Some(Refusal::GrantExpired.code()), Some(&**grant), None),
            Some(g) if file.is_some_and(|f| quota_spent(g, &f.id, requested(range))) => {
                (Some(Refusal::QuotaSpent.code()), Some(&**grant), file)
            }
            Some(_) => (fixed_reason, Some(&**grant), file),
        };
        describe(&mut event, grant, file, file_name);
        match reason {
            Some(reason) => {
                event.outcome = Outcome::Refused;
                event.reason = Some(reason.to_owned());
            }
            None => event.range = range,
        }
        event
    }
}

/// Follows a transfer to its end and records a `file.delivered` event with
/// the bytes actually handed to the connection: `ok` when the range was sent
/// whole, `aborted` when the client went away or the store failed mid-way.
struct DeliveryRecord {
    audit: AuditLog,
    event: Option<Event>,
    /// The position of the fetch event that let the transfer through.
    fetch_seq: i64,
    expected: u64,
    sent: u64,
}

impl Drop for DeliveryRecord {
    fn drop(&mut self) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        event.action = Action::FileDelivered;
        event.bytes = Some(self.sent);
        metrics::counter!("weightgate_bytes_delivered_total").increment(self.sent);
        event.outcome = if self.sent == self.expected {
            Outcome::Ok
        } else {
            Outcome::Aborted
        };
        // Nobody waits for this event: the bytes are gone already.
        self.audit.record_closing_unawaited(event, self.fetch_seq);
        self.audit.transfer_ended();
    }
}

fn track_delivery(
    body: ByteStream,
    audit: AuditLog,
    event: Event,
    fetch_seq: i64,
    expected: u64,
) -> ByteStream {
    audit.transfer_started();
    let mut record = DeliveryRecord {
        audit,
        event: Some(event),
        fetch_seq,
        expected,
        sent: 0,
    };
    Box::pin(body.map(move |chunk| {
        // Borrow the whole record so the closure owns it and its Drop runs
        // when the body is dropped.
        let record = &mut record;
        if let Ok(bytes) = &chunk {
            record.sent += bytes.len() as u64;
        }
        chunk
    }))
}

fn describe(event: &mut Event, grant: Option<&GrantFacts>, file: Option<&FileInModel>, file_name: &str) {
    if let Some(g) = grant {
        event.grant_id = Some(g.id.clone());
        event.researcher_id = Some(g.researcher_id.clone());
        event.model_id = Some(g.model_id.clone());
    }
    if let Some(f) = file {
        event.file_id = Some(f.id.clone());
    }
    let who = grant.map_or("", |g| g.email.as_str());
    let what = match file {
        Some(f) => format!("{}/{}/{}", f.model_slug, f.release_name, f.name),
        None => file_name.chars().take(200).collect(),
    };
    event.subject = Some(if who.is_empty() {
        what
    } else {
        format!("{who} {what}")
    });
}

/// The bytes a fetch of `range` (first and last byte) asks for.
fn requested(range: Option<(u64, u64)>) -> u64 {
    range.map_or(0, |(first, last)| last.saturating_sub(first).saturating_add(1))
}

/// Whether fetching `requested` bytes of `file_id` would take the grant past
/// its model's per-grant limits, counting what was delivered and what is
/// being delivered now (the grant's open transfers). A file the grant
/// already holds whole can always be fetched again.
fn quota_spent(grant: &GrantNow, file_id: &str, requested: u64) -> bool {
    if !grant.has_quota() {
        return false;
    }
    let completed = crate::domain::deliveries::completed_files(&grant.deliveries);
    if completed.contains(file_id) {
        return false;
    }
    let open_bytes: u64 = grant.open.iter().map(|(_, bytes)| bytes).sum();
    let over_bytes = grant.quota_bytes.is_some_and(|q| {
        let taken = crate::domain::deliveries::bytes_delivered(&grant.deliveries).saturating_add(open_bytes);
        taken.saturating_add(requested) > u64::try_from(q).unwrap_or(0)
    });
    let mut files: std::collections::BTreeSet<&str> = grant
        .open
        .iter()
        .map(|(file, _)| file.as_str())
        .filter(|file| !completed.contains(*file))
        .collect();
    files.insert(file_id);
    let over_files = grant
        .quota_files
        .is_some_and(|q| (completed.len() + files.len()) as u64 > u64::try_from(q).unwrap_or(0));
    over_bytes || over_files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(header: &str, size: u64) -> Result<Option<(u64, u64)>, u64> {
        requested_range(Some(header), size).map_err(|e| match e {
            DownloadError::RangeNotSatisfiable { size } => size,
            other => panic!("{other}"),
        })
    }

    #[test]
    fn ranges_are_honoured_ignored_or_unsatisfiable_as_http_says() {
        assert_eq!(range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 100))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(range("bytes=50-1000", 100), Ok(Some((50, 100))));
        // Several ranges: the whole file.
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        // Not a byte range at all: ignored, the whole file.
        assert_eq!(range("items=0-5", 100), Ok(None));
        assert_eq!(range("garbage", 100), Ok(None));
        // A byte range wholly past the end: 416.
        assert_eq!(range("bytes=100-", 100), Err(100));
        assert_eq!(range("bytes=150-160", 100), Err(100));
    }
}
