//! Renewals: before a grant expires its researcher may ask for more time.
//! The request goes to the reviewers as an application of kind `renewal`;
//! approving it extends the existing grant instead of making a second one.

use std::time::Duration;

use crate::{
    app::App,
    applications::{MAX_INTENDED_USE, text},
    audit::{self, Client, Event, Outcome},
    db::{self, applications::ApplicationView, grants::GrantView, reviewers::Reviewer},
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
    insert_renewal(app, &grant, &researcher.email, note, client).await
}

/// Sends a renewal of `grant` to the reviewers, asked for by `actor` (the
/// researcher, or a reviewer proposing an extension); `note` opens its
/// thread. Returns the renewal's id.
async fn insert_renewal(
    app: &App,
    grant: &GrantView,
    actor: &str,
    note: Option<String>,
    client: Client,
) -> anyhow::Result<String> {
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
            researcher_id: &grant.researcher_id,
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
    let by_researcher = actor == grant.email;
    if let Some(note) = note {
        db::applications::insert_message(
            &mut tx,
            &db::applications::Message {
                id: new_id(),
                application_id: id.clone(),
                author_kind: if by_researcher { "researcher" } else { "reviewer" }.into(),
                author_email: actor.to_owned(),
                body: note,
                created_at: now,
            },
        )
        .await?;
    }
    let mut event = Event::new("application.renewal_requested", Outcome::Ok);
    event.actor = Some(actor.to_owned());
    event.subject = Some(grant.email.clone());
    event.model_id = Some(grant.model_id.clone());
    event.application_id = Some(id.clone());
    event.grant_id = Some(grant.id.clone());
    event.researcher_id = Some(grant.researcher_id.clone());
    event.client = client;
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(id)
}

/// Extends the grant a renewal names, inside the transaction of the approval
/// that completed the model's policy: the grant lasts `ttl` longer, counted
/// from its current expiry (or from now, should it have lapsed meanwhile).
#[expect(clippy::too_many_arguments)]
pub async fn extend_on_approval(
    app: &App,
    tx: &mut db::Tx,
    view: &ApplicationView,
    ttl: Duration,
    actor: &str,
    client: &Client,
    approved: Event,
    now: i64,
) -> anyhow::Result<Approval> {
    let grant_id = view.grant_id.as_deref().ok_or(ReviewError::NotFound)?;
    let grant = db::grants::find_view(&mut **tx, grant_id)
        .await?
        .ok_or(ReviewError::NotFound)?;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at = grant.expires_at.max(now).saturating_add(ttl_ms);
    if !db::applications::mark_decided(tx, &view.id, "approved", now).await? {
        return Err(ReviewError::NotPending("already decided".into()).into());
    }
    if !db::grants::extend(tx, &grant.id, expires_at).await? {
        return Err(ReviewError::NotPending("its grant was revoked".into()).into());
    }
    let my_access = app.url("/me/access");
    mail::enqueue(
        tx,
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
    let mut extended = Event::new("grant.extended", Outcome::Ok);
    extended.actor = Some(actor.to_owned());
    extended.subject = Some(view.email.clone());
    extended.model_id = Some(view.model_id.clone());
    extended.application_id = Some(view.id.clone());
    extended.researcher_id = Some(view.researcher_id.clone());
    extended.grant_id = Some(grant.id.clone());
    extended.reason = Some(format!("until {}", format_ms(expires_at)));
    extended.client = client.clone();
    audit::append(tx, app.db.backend(), &[approved, extended]).await?;
    Ok(Approval::Granted {
        grant_id: grant.id,
        access_url: my_access,
        expires_at,
    })
}

/// A reviewer's extension of a grant under a model that needs more than one
/// approval: a renewal of the grant, with this reviewer's approval of `days`
/// as its first (or, when a renewal is already open, one more approval of
/// it). The grant is extended once the policy has its approvals.
pub async fn propose(
    app: &App,
    reviewer: &Reviewer,
    grant: &GrantView,
    days: u64,
    client: Client,
) -> anyhow::Result<(String, Approval)> {
    let renewal = match db::applications::open_renewal(app.db.pool(), &grant.id).await? {
        Some(open) => open,
        None => {
            let note = format!(
                "{} proposed extending this grant by {days} days; it needs the approvals the model's policy asks for.",
                reviewer.email
            );
            insert_renewal(app, grant, &reviewer.email, Some(note), client.clone()).await?
        }
    };
    let approval = crate::reviews::approve(app, reviewer, &renewal, Some(days), None, client).await?;
    Ok((renewal, approval))
}
