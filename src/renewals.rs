//! Renewals: before a grant expires its researcher may ask for more time.
//! The request goes to the reviewers as an application of kind `renewal`;
//! approving it extends the existing grant instead of making a second one.

use std::time::Duration;

use crate::{
    app::App,
    applications::{MAX_INTENDED_USE, text},
    audit::{self, Client, Event, Outcome},
    db::{self, applications::ApplicationView, reviewers::Reviewer},
    grants::GrantState,
    mail,
    researchers::{self, Researcher, ResearcherError},
    reviews::{Approval, ReviewError},
    types::{format_ms, hash_token, new_id, new_token, now_ms},
};

/// Asks the reviewers to extend an active grant. `note` (optional) says why.
pub async fn request(
    app: &App,
    researcher: &Researcher,
    grant_id: &str,
    note: &str,
    client: Client,
) -> anyhow::Result<String> {
    let grant = researchers::my_grant(app, researcher, grant_id).await?;
    if GrantState::of(&grant, now_ms()) != GrantState::Active {
        return Err(ResearcherError::NotAllowed(
            "only an active grant can be renewed; apply again from the model's page".into(),
        )
        .into());
    }
    let note = if note.trim().is_empty() {
        None
    } else {
        Some(text(note, MAX_INTENDED_USE, "Your note").map_err(ResearcherError::Invalid)?)
    };
    let original = db::applications::find_view(app.db.pool(), &grant.application_id)
        .await?
        .ok_or(ResearcherError::NotFound)?;
    let model = db::models::find_model(app.db.pool(), &grant.model_id)
        .await?
        .ok_or(ResearcherError::NotFound)?;
    let now = now_ms();
    let id = new_id();
    let mut tx = app.db.begin().await?;
    if db::applications::open_renewal(&mut *tx, &grant.id)
        .await?
        .is_some()
    {
        return Err(ResearcherError::NotAllowed(
            "a renewal of this grant is already with the reviewers".into(),
        )
        .into());
    }
    db::applications::insert_application(
        &mut tx,
        &db::applications::NewApplication {
            id: &id,
            model_id: &grant.model_id,
            researcher_id: &researcher.id,
            name: &original.name,
            affiliation: &original.affiliation,
            intended_use: &original.intended_use,
            terms_version: model.terms_version,
            confirm_token_hash: &hash_token(&new_token()),
            created_at: now,
            status: "pending",
            confirmed_at: Some(now),
            answers: &original.answers,
            kind: "renewal",
            parent_id: None,
            grant_id: Some(&grant.id),
        },
    )
    .await?;
    if let Some(note) = note {
        db::applications::insert_message(
            &mut tx,
            &db::applications::Message {
                id: new_id(),
                application_id: id.clone(),
                author_kind: "researcher".into(),
                author_email: researcher.email.clone(),
                body: note,
                created_at: now,
            },
        )
        .await?;
    }
    let mut event = Event::new("application.renewal_requested", Outcome::Ok);
    event.actor = Some(researcher.email.clone());
    event.subject = Some(researcher.email.clone());
    event.model_id = Some(grant.model_id.clone());
    event.application_id = Some(id.clone());
    event.grant_id = Some(grant.id.clone());
    event.researcher_id = Some(researcher.id.clone());
    event.client = client;
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(id)
}

/// Approves a pending renewal: the grant it names lasts `ttl` longer, counted
/// from its current expiry (or from now, should it have lapsed meanwhile).
pub async fn approve(
    app: &App,
    reviewer: &Reviewer,
    view: &ApplicationView,
    ttl: Duration,
    client: Client,
) -> anyhow::Result<Approval> {
    let grant_id = view.grant_id.as_deref().ok_or(ReviewError::NotFound)?;
    let grant = db::grants::find_view(app.db.pool(), grant_id)
        .await?
        .ok_or(ReviewError::NotFound)?;
    let now = now_ms();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at = grant.expires_at.max(now).saturating_add(ttl_ms);
    let mut tx = app.db.begin().await?;
    if !db::applications::mark_decided(&mut tx, &view.id, "approved", now).await? {
        return Err(ReviewError::NotPending("already decided".into()).into());
    }
    if !db::grants::extend(&mut tx, &grant.id, expires_at).await? {
        return Err(ReviewError::NotPending("its grant was revoked".into()).into());
    }
    db::applications::insert_review(
        &mut tx,
        &db::applications::NewReview {
            id: &new_id(),
            application_id: &view.id,
            reviewer_id: &reviewer.id,
            decision: "approve",
            reason: None,
            grant_days: None,
            note: None,
            created_at: now,
        },
    )
    .await?;
    let my_access = app.url("/me/access");
    mail::enqueue(
        &mut tx,
        &view.email,
        &format!("Your access to {} is extended", view.model_title),
        &format!(
            "Hello {name},\n\nyour renewal for {title} was approved: your access now lasts until\n\
             {until} UTC. Your access page and download links work as before; sign in to\n\
             see them on My access:\n\n{my_access}\n",
            name = view.name,
            title = view.model_title,
            until = format_ms(expires_at),
        ),
    )
    .await?;
    let mut approved = Event::new("review.approved", Outcome::Ok);
    approved.actor = Some(reviewer.email.clone());
    approved.subject = Some(view.email.clone());
    approved.model_id = Some(view.model_id.clone());
    approved.application_id = Some(view.id.clone());
    approved.researcher_id = Some(view.researcher_id.clone());
    approved.client = client;
    let mut extended = approved.clone();
    extended.action = "grant.extended";
    extended.grant_id = Some(grant.id.clone());
    extended.reason = Some(format!("until {}", format_ms(expires_at)));
    audit::append(&mut tx, app.db.backend(), &[approved, extended]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(Approval::Granted {
        grant_id: grant.id,
        access_url: my_access,
        expires_at,
    })
}
