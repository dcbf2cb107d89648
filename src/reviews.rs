//! Review decisions: approving an application creates a grant and tells the
//! researcher where to download; denying one tells them why.

use std::time::Duration;

use crate::{
    app::App,
    audit::{self, Client, Event, Outcome},
    db::{self, applications::ApplicationView, reviewers::Reviewer},
    mail,
    types::{format_ms, hash_token, new_id, new_token, now_ms},
};

pub const MAX_REASON: usize = 2000;
/// The longest grant a reviewer may give in one decision.
pub const MAX_GRANT_DAYS: u64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no such application")]
    NotFound,
    #[error("this application is {0}, not waiting for a decision")]
    NotPending(String),
    #[error("a denial needs a reason (at most {MAX_REASON} characters)")]
    ReasonRequired,
    #[error("a grant lasts 1 to {MAX_GRANT_DAYS} days")]
    BadDuration,
}

/// What an approval produced.
#[derive(Debug)]
pub struct Approval {
    pub grant_id: String,
    pub access_url: String,
    pub expires_at: i64,
}

async fn pending(app: &App, application_id: &str) -> anyhow::Result<ApplicationView> {
    let view = db::applications::find_view(app.db.pool(), application_id)
        .await?
        .ok_or(ReviewError::NotFound)?;
    if view.status != "pending" {
        return Err(ReviewError::NotPending(view.status).into());
    }
    Ok(view)
}

fn decision_event(
    action: &'static str,
    reviewer: &Reviewer,
    view: &ApplicationView,
    client: &Client,
) -> Event {
    let mut event = Event::new(action, Outcome::Ok);
    event.actor = Some(reviewer.email.clone());
    event.subject = Some(view.email.clone());
    event.model_id = Some(view.model_id.clone());
    event.application_id = Some(view.id.clone());
    event.researcher_id = Some(view.researcher_id.clone());
    event.client = client.clone();
    event
}

/// Approves a pending application with a grant lasting `days` (or the
/// configured default) and e-mails the researcher their access page.
pub async fn approve(
    app: &App,
    reviewer: &Reviewer,
    application_id: &str,
    days: Option<u64>,
    client: Client,
) -> anyhow::Result<Approval> {
    let ttl = match days {
        Some(d) if (1..=MAX_GRANT_DAYS).contains(&d) => Duration::from_secs(d * 86_400),
        Some(_) => return Err(ReviewError::BadDuration.into()),
        None => app.config.grant_ttl,
    };
    let view = pending(app, application_id).await?;
    // A renewal extends the grant it names rather than making a second one.
    if view.kind == "renewal" {
        return crate::renewals::approve(app, reviewer, &view, ttl, client).await;
    }
    let now = now_ms();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let token = new_token();
    let grant_id = new_id();
    let access_url = app.url(&format!("/access/{token}"));

    let mut tx = app.db.begin().await?;
    if !db::applications::mark_decided(&mut tx, &view.id, "approved", now).await? {
        return Err(ReviewError::NotPending("already decided".into()).into());
    }
    db::applications::insert_review(&mut tx, &new_id(), &view.id, &reviewer.id, "approve", None, now).await?;
    db::grants::insert_grant(
        &mut tx,
        &db::grants::NewGrant {
            id: &grant_id,
            application_id: &view.id,
            researcher_id: &view.researcher_id,
            model_id: &view.model_id,
            access_token_hash: &hash_token(&token),
            created_at: now,
            expires_at,
        },
    )
    .await?;
    mail::enqueue(
        &mut tx,
        &view.email,
        &format!("Your access to {} is approved", view.model_title),
        &format!(
            "Hello {name},\n\nyour application for {title} was approved. Your access lasts until\n\
             {until} UTC. Download the files from your access page:\n\n{access_url}\n\n\
             Keep this link to yourself: it is your key to the files.\n",
            name = view.name,
            title = view.model_title,
            until = format_ms(expires_at),
        ),
    )
    .await?;
    let approved = decision_event("review.approved", reviewer, &view, &client);
    let mut granted = decision_event("grant.created", reviewer, &view, &client);
    granted.grant_id = Some(grant_id.clone());
    audit::append(&mut tx, app.db.backend(), &[approved, granted]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(Approval {
        grant_id,
        access_url,
        expires_at,
    })
}

/// Denies a pending application; the reason is e-mailed to the researcher.
pub async fn deny(
    app: &App,
    reviewer: &Reviewer,
    application_id: &str,
    reason: &str,
    client: Client,
) -> anyhow::Result<()> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ReviewError::ReasonRequired.into());
    }
    let view = pending(app, application_id).await?;
    let now = now_ms();
    let mut tx = app.db.begin().await?;
    if !db::applications::mark_decided(&mut tx, &view.id, "denied", now).await? {
        return Err(ReviewError::NotPending("already decided".into()).into());
    }
    db::applications::insert_review(
        &mut tx,
        &new_id(),
        &view.id,
        &reviewer.id,
        "deny",
        Some(reason),
        now,
    )
    .await?;
    mail::enqueue(
        &mut tx,
        &view.email,
        &format!("Your application for {}", view.model_title),
        &format!(
            "Hello {name},\n\nyour application for {title} was not approved. The reviewers wrote:\n\n\
             {reason}\n",
            name = view.name,
            title = view.model_title,
        ),
    )
    .await?;
    let mut event = decision_event("review.denied", reviewer, &view, &client);
    event.reason = Some(reason.to_owned());
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(())
}
