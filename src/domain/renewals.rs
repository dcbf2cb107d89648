//! Renewals: before a grant expires its researcher may ask for more time.
//! The request goes to the reviewers as an application of kind `renewal`;
//! approving it extends the existing grant instead of making a second one.

use crate::{
    app::App,
    audit::{self, Action, Client, Event},
    db::{self, grants::GrantView, reviewers::Reviewer},
    domain::applications::{self, FollowUp, MAX_INTENDED_USE},
    domain::error::Result,
    domain::forms::text,
    domain::grants::{GrantError, GrantState},
    domain::researchers::{self, Researcher, ResearcherError},
    domain::reviews::{Approval, MAX_EXTENSION_DAYS},
    mail,
    types::{new_id, now_ms, states::Author},
};

/// Asks the reviewers to extend an active grant. `note` (optional) says why.
pub(crate) async fn request(
    app: &App,
    researcher: &Researcher,
    grant_id: &str,
    note: &str,
    client: Client,
) -> Result<String> {
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
) -> Result<String> {
    let original = db::applications::find_view(app.db.pool(), &grant.application_id)
        .await?
        .ok_or(ResearcherError::NotFound)?;
    let model = db::models::find_model(app.db.pool(), &grant.model_id)
        .await?
        .ok_or(ResearcherError::NotFound)?;
    let now = now_ms();
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
    let id = applications::insert_follow_up(
        &mut tx,
        &original,
        FollowUp::Renewal { grant_id: &grant.id },
        model.terms_version,
        now,
    )
    .await?;
    let by_researcher = actor == grant.email;
    if let Some(note) = note {
        db::applications::insert_message(
            &mut tx,
            &db::applications::Message {
                id: new_id(),
                application_id: id.clone(),
                author_kind: if by_researcher {
                    Author::Researcher
                } else {
                    Author::Reviewer
                },
                author_email: actor.to_owned(),
                body: note,
                created_at: now,
            },
        )
        .await?;
    }
    let event = Event::ok(Action::ApplicationRenewalRequested)
        .actor(actor.to_owned())
        .about_grant(grant)
        .application_id(id.clone())
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(id)
}

/// A reviewer's extension of a grant under a model that needs more than one
/// approval: a renewal of the grant, with this reviewer's approval of `days`
/// as its first (or, when a renewal is already open, one more approval of
/// it). The grant is extended once the policy has its approvals.
pub(crate) async fn propose(
    app: &App,
    reviewer: &Reviewer,
    grant: &GrantView,
    days: u64,
    client: Client,
) -> Result<(String, Approval)> {
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
    let approval = crate::domain::reviews::approve(app, reviewer, &renewal, Some(days), None, client).await?;
    Ok((renewal, approval))
}

/// Who extends a grant, and on what authority.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ExtendBy<'a> {
    /// A reviewer of the grant's model, under the model's approval policy:
    /// when it needs more than one approval, the extension is a renewal that
    /// waits for the others.
    Reviewer(&'a Reviewer),
    /// An admin, or the operator at the command line, overriding the
    /// policy (audited as such); may extend a grant that has ended.
    Override { actor: &'a str },
}

/// What an extension did.
#[derive(Debug)]
pub(crate) enum Extension {
    /// The grant now lasts until this time.
    Extended { until: i64 },
    /// A renewal of the grant is with the reviewers, with this reviewer's
    /// approval on it.
    Proposed { renewal_id: String },
}

/// Extends a grant by `days` (at most [`MAX_EXTENSION_DAYS`]) from its
/// current end, or from now for an ended grant under an override. A
/// reviewer's extension follows the model's approval policy: alone under a
/// one-approval policy, otherwise as a renewal the other reviewers approve.
/// The researcher is told the new date.
pub(crate) async fn extend(
    app: &App,
    grant_id: &str,
    days: u64,
    by: ExtendBy<'_>,
    client: Client,
) -> Result<Extension> {
    if !(1..=MAX_EXTENSION_DAYS).contains(&days) {
        return Err(GrantError::BadExtension.into());
    }
    let grant = db::grants::find_view(app.db.pool(), grant_id)
        .await?
        .ok_or(GrantError::NotFound)?;
    let now = now_ms();
    let (actor, authority) = match by {
        ExtendBy::Reviewer(reviewer) => {
            match GrantState::of(&grant, now) {
                GrantState::Active => {}
                GrantState::Revoked => return Err(GrantError::AlreadyRevoked.into()),
                GrantState::Expired => return Err(GrantError::Ended.into()),
            }
            let needed = db::policy::find(app.db.pool(), &grant.model_id)
                .await?
                .map_or(1, |p| p.approvals_needed);
            if needed > 1 {
                let (renewal_id, approval) = propose(app, reviewer, &grant, days, client).await?;
                return Ok(match approval {
                    Approval::Granted { expires_at, .. } => Extension::Extended { until: expires_at },
                    Approval::Recorded { .. } => Extension::Proposed { renewal_id },
                });
            }
            (reviewer.email.as_str(), String::new())
        }
        ExtendBy::Override { actor } => (actor, "; an override of the model's approval policy".to_owned()),
    };
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
    let event = Event::ok(Action::GrantExtended)
        .actor(actor)
        .about_grant(&grant)
        .reason(format!(
            "until {} ({days} days{authority})",
            crate::types::format_ms(until)
        ))
        .client(client);
    crate::audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(Extension::Extended { until })
}
