//! Grants in use: the researcher's access page with fresh signed links,
//! revocation, and the checks every download passes before a byte is sent.

use futures_util::StreamExt;

use crate::{
    app::App,
    audit::{AuditLog, Client, Event, Outcome},
    config::DeliveryMode,
    db::{
        self,
        grants::GrantView,
        models::{File, FileInModel, Release},
    },
    links::Refusal,
    mail,
    storage::ByteStream,
    types::{hash_token, now_ms},
};

/// Whether a grant can be used right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantState {
    Active,
    Revoked,
    Expired,
}

impl GrantState {
    pub fn of(grant: &GrantView, now_ms: i64) -> Self {
        if grant.revoked_at.is_some() {
            GrantState::Revoked
        } else if grant.expires_at <= now_ms {
            GrantState::Expired
        } else {
            GrantState::Active
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Active => "active",
            GrantState::Revoked => "revoked",
            GrantState::Expired => "expired",
        }
    }
}

/// A file with a freshly signed link.
#[derive(Debug)]
pub struct LinkedFile {
    pub file: File,
    pub url: String,
}

#[derive(Debug)]
pub struct ReleaseFiles {
    pub release: Release,
    pub files: Vec<LinkedFile>,
}

/// What the access page shows.
#[derive(Debug)]
pub struct Access {
    pub grant: GrantView,
    pub state: GrantState,
    /// Unix seconds at which the links below stop working.
    pub links_expire_at: i64,
    pub releases: Vec<ReleaseFiles>,
}

/// The download URL of a file: the signed token, then the file's name so that
/// `curl -O` saves it under that name.
pub fn download_path(token: &str, file_name: &str) -> String {
    format!("/dl/{token}/{file_name}")
}

/// The grant behind an access token.
pub async fn find_by_access_token(app: &App, token: &str) -> anyhow::Result<Option<GrantView>> {
    Ok(db::grants::find_view_by_access_token(app.db.pool(), &hash_token(token)).await?)
}

/// The access page (or the client's manifest, as `via` says) of a grant,
/// minting a fresh link for every file. Links never outlive the grant.
pub async fn access(app: &App, grant: GrantView, via: &str, client: Client) -> anyhow::Result<Access> {
    let now = now_ms();
    let state = GrantState::of(&grant, now);
    let link_ttl = i64::try_from(app.config.link_ttl.as_secs()).unwrap_or(i64::MAX);
    let links_expire_at = (now / 1000).saturating_add(link_ttl).min(grant.expires_at / 1000);
    let mut releases = Vec::new();
    if state == GrantState::Active {
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
        let mut event = Event::new("links.issued", Outcome::Ok);
        event.subject = Some(format!("{} via {via}", grant.email));
        event.grant_id = Some(grant.id.clone());
        event.researcher_id = Some(grant.researcher_id.clone());
        event.model_id = Some(grant.model_id.clone());
        event.client = client;
        app.audit.record(event).await?;
    }
    Ok(Access {
        grant,
        state,
        links_expire_at,
        releases,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("no such grant")]
    NotFound,
    #[error("this grant is already revoked")]
    AlreadyRevoked,
    #[error("a revocation needs a reason (at most 2000 characters)")]
    ReasonRequired,
    #[error("an extension is 1 to {} days", crate::reviews::MAX_GRANT_DAYS)]
    BadExtension,
}

/// Revokes a grant: its links stop working at the next fetch, and the
/// researcher is told why.
pub async fn revoke(
    app: &App,
    grant_id: &str,
    reason: &str,
    actor: &str,
    client: Client,
) -> anyhow::Result<GrantView> {
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
            "Hello,\n\nyour access to {title} was revoked. The reason given:\n\n{reason}\n",
            title = grant.model_title
        ),
    )
    .await?;
    let mut event = Event::new("grant.revoked", Outcome::Ok);
    event.actor = Some(actor.to_owned());
    event.reason = Some(reason.to_owned());
    event.subject = Some(grant.email.clone());
    event.grant_id = Some(grant.id.clone());
    event.researcher_id = Some(grant.researcher_id.clone());
    event.model_id = Some(grant.model_id.clone());
    event.client = client;
    crate::audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(db::grants::find_view(app.db.pool(), grant_id)
        .await?
        .ok_or(GrantError::NotFound)?)
}

/// Extends a grant by `days` from its current end (or from now, when it has
/// already ended); the researcher is told the new date.
pub async fn extend(
    app: &App,
    grant_id: &str,
    days: u64,
    actor: &str,
    client: Client,
) -> anyhow::Result<GrantView> {
    if !(1..=crate::reviews::MAX_GRANT_DAYS).contains(&days) {
        return Err(GrantError::BadExtension.into());
    }
    let grant = db::grants::find_view(app.db.pool(), grant_id)
        .await?
        .ok_or(GrantError::NotFound)?;
    let now = now_ms();
    let from = grant.expires_at.max(now);
    let until = from.saturating_add(i64::try_from(days).unwrap_or(0).saturating_mul(86_400_000));
    let mut tx = app.db.begin().await?;
    if !db::grants::extend(&mut tx, &grant.id, until).await? {
        return Err(GrantError::AlreadyRevoked.into());
    }
    mail::enqueue(
        &mut tx,
        &grant.email,
        &format!("Your access to {} was extended", grant.model_title),
        &format!(
            "Hello,\n\nyour access to {title} now lasts until {until} UTC. Your access page and its\n\
             links stay the same.\n",
            title = grant.model_title,
            until = crate::types::format_ms(until),
        ),
    )
    .await?;
    let mut event = Event::new("grant.extended", Outcome::Ok);
    event.actor = Some(actor.to_owned());
    event.reason = Some(format!("until {} ({days} days)", crate::types::format_ms(until)));
    event.subject = Some(grant.email.clone());
    event.grant_id = Some(grant.id.clone());
    event.researcher_id = Some(grant.researcher_id.clone());
    event.model_id = Some(grant.model_id.clone());
    event.client = client;
    crate::audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(db::grants::find_view(app.db.pool(), grant_id)
        .await?
        .ok_or(GrantError::NotFound)?)
}

/// A download that passed every check and whose audit event is durable.
pub struct Download {
    pub file: FileInModel,
    /// Bytes `start..end` of the file are sent.
    pub start: u64,
    pub end: u64,
    /// `true` when a `Range` was honoured (HTTP 206).
    pub partial: bool,
    pub body: Delivery,
}

/// How the bytes reach the researcher.
pub enum Delivery {
    /// Streamed by the portal.
    Proxy(ByteStream),
    /// Served by the object store from this short-lived presigned URL.
    Redirect(String),
}

/// How long a presigned redirect stays valid: long enough to follow it,
/// short enough that a copied URL is useless soon after.
pub const REDIRECT_TTL: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{}", .0.message())]
    Refused(Refusal),
    #[error("the requested range is outside the file")]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The first range of a `Range` header, as `start..end`; `None` means the
/// whole file. Several ranges are answered with the whole file, which HTTP allows.
pub fn requested_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, DownloadError> {
    let Some(header) = header else { return Ok(None) };
    let ranges = http_range_header::parse_range_header(header)
        .and_then(|r| r.validate(size))
        .map_err(|_| DownloadError::RangeNotSatisfiable { size })?;
    match ranges.as_slice() {
        [only] => Ok(Some((*only.start(), only.end() + 1))),
        _ => Ok(None),
    }
}

/// Checks a signed link, cheapest check first, and opens the requested bytes.
/// Every outcome is audited; bytes are handed back only after the event is
/// durable, and a refusal is audited with its reason.
pub async fn open_download(
    app: &App,
    token: &str,
    file_name: &str,
    range: Option<&str>,
    client: Client,
) -> Result<Download, DownloadError> {
    let checked = check_link(app, token, file_name).await?;
    let mut event = Event::new("file.fetch", Outcome::Ok);
    event.client = client;
    let (grant, file) = match checked {
        Ok(found) => found,
        Err((refusal, grant, file)) => {
            event.outcome = Outcome::Refused;
            event.reason = Some(refusal.code().to_owned());
            describe(&mut event, grant.as_ref(), file.as_ref(), file_name);
            record_fetch(app, event).await?;
            return Err(DownloadError::Refused(refusal));
        }
    };
    describe(&mut event, Some(&grant), Some(&file), file_name);
    let size = u64::try_from(file.size).unwrap_or(0);
    let (start, end, partial) = match requested_range(range, size) {
        Ok(Some((start, end))) => (start, end, true),
        Ok(None) => (0, size, false),
        Err(err) => {
            event.outcome = Outcome::Refused;
            event.reason = Some("range_not_satisfiable".into());
            record_fetch(app, event).await?;
            return Err(err);
        }
    };
    event.range = Some((start, end.saturating_sub(1)));
    let body = match app.config.delivery {
        DeliveryMode::Proxy => {
            let stream = app.storage.get_range(&file.object_key, start, end).await?;
            record_fetch(app, event.clone()).await?;
            Delivery::Proxy(track_delivery(stream, app.audit.clone(), event, end - start))
        }
        DeliveryMode::Redirect => {
            let url = app
                .storage
                .presign_get(&file.object_key, None, REDIRECT_TTL, &file.name)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!("this object store cannot presign URLs for redirect delivery")
                })?;
            record_fetch(app, event.clone()).await?;
            // The store serves the bytes, so the portal cannot see how many
            // arrive: the range is recorded as delivered, marked as such.
            event.action = "file.delivered";
            event.reason = Some("redirect".into());
            event.bytes = Some(end - start);
            app.audit.record(event).await?;
            Delivery::Redirect(url)
        }
    };
    Ok(Download {
        file,
        start,
        end,
        partial,
        body,
    })
}

/// Makes a fetch's event durable, and counts it.
async fn record_fetch(app: &App, event: Event) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let outcome = event.outcome.as_str();
    let reason = event.reason.clone().unwrap_or_default();
    app.audit.record(event).await?;
    metrics::histogram!("weightgate_audit_write_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("weightgate_fetches_total", "outcome" => outcome, "reason" => reason).increment(1);
    Ok(())
}

/// Follows a transfer to its end and records a `file.delivered` event with
/// the bytes actually handed to the connection: `ok` when the range was sent
/// whole, `aborted` when the client went away or the store failed mid-way.
struct DeliveryRecord {
    audit: AuditLog,
    event: Option<Event>,
    expected: u64,
    sent: u64,
}

impl Drop for DeliveryRecord {
    fn drop(&mut self) {
        let Some(mut event) = self.event.take() else {
            return;
        };
        event.action = "file.delivered";
        event.bytes = Some(self.sent);
        metrics::counter!("weightgate_bytes_delivered_total").increment(self.sent);
        event.outcome = if self.sent == self.expected {
            Outcome::Ok
        } else {
            Outcome::Aborted
        };
        let audit = self.audit.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = audit.record(event).await {
                    tracing::error!(error = %format!("{err:#}"), "cannot record the end of a transfer");
                }
            });
        }
    }
}

fn track_delivery(body: ByteStream, audit: AuditLog, event: Event, expected: u64) -> ByteStream {
    let mut record = DeliveryRecord {
        audit,
        event: Some(event),
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

fn describe(event: &mut Event, grant: Option<&GrantView>, file: Option<&FileInModel>, file_name: &str) {
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

/// Whether fetching `file_id` would exceed the model's per-grant limits. A
/// file the grant already holds whole can always be fetched again.
async fn quota_spent(app: &App, grant: &GrantView, file_id: &str) -> anyhow::Result<bool> {
    if grant.quota_bytes.is_none() && grant.quota_files.is_none() {
        return Ok(false);
    }
    let deliveries = db::grants::deliveries(app.db.pool(), &grant.id).await?;
    let completed = crate::deliveries::completed_files(&deliveries);
    if completed.contains(file_id) {
        return Ok(false);
    }
    let over_bytes = grant
        .quota_bytes
        .is_some_and(|q| crate::deliveries::bytes_delivered(&deliveries) >= u64::try_from(q).unwrap_or(0));
    let over_files = grant
        .quota_files
        .is_some_and(|q| completed.len() as u64 >= u64::try_from(q).unwrap_or(0));
    Ok(over_bytes || over_files)
}

type Refused = (Refusal, Option<GrantView>, Option<FileInModel>);

async fn check_link(
    app: &App,
    token: &str,
    file_name: &str,
) -> anyhow::Result<Result<(GrantView, FileInModel), Refused>> {
    let now = now_ms();
    let claims = match app.links.verify(token, now / 1000).await {
        Ok(claims) => claims,
        Err(refusal) => return Ok(Err((refusal, None, None))),
    };
    // A correctly signed link always names a grant this portal made.
    let Some(grant) = db::grants::find_view(app.db.pool(), &claims.grant_id).await? else {
        return Ok(Err((Refusal::BadSignature, None, None)));
    };
    match GrantState::of(&grant, now) {
        GrantState::Active => {}
        GrantState::Revoked => return Ok(Err((Refusal::GrantRevoked, Some(grant), None))),
        GrantState::Expired => return Ok(Err((Refusal::GrantExpired, Some(grant), None))),
    }
    let file = db::models::find_published_file(app.db.pool(), &claims.file_id).await?;
    if let Some(f) = &file
        && quota_spent(app, &grant, &f.id).await?
    {
        return Ok(Err((Refusal::QuotaSpent, Some(grant), file)));
    }
    Ok(match file {
        Some(f) if f.model_id == grant.model_id && f.name == file_name => Ok((grant, f)),
        Some(f) if f.model_id == grant.model_id => Err((Refusal::Malformed, Some(grant), Some(f))),
        other => Err((Refusal::FileNotInGrant, Some(grant), other)),
    })
}
