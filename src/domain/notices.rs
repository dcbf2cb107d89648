//! What the portal tells people on its own: reviewers that applications wait
//! for them (at once or in a daily digest), researchers that their access
//! ends soon; and the audit log that a grant has expired.

use std::time::Duration;

use crate::{
    app::App,
    audit::{self, Action, Event},
    db::{self, applications::ApplicationView},
    domain::error::Result,
    mail,
    types::{
        format_ms, now_ms,
        states::{Notify, Status},
    },
};

/// How often a reviewer who chose the digest hears of waiting applications.
pub(crate) const DIGEST_EVERY: Duration = Duration::from_secs(86_400);

/// Tells the reviewers of the application's model who want to hear at once
/// that it waits for them.
pub(crate) async fn application_waiting(app: &App, view: &ApplicationView) -> Result<()> {
    let link = app.url(&format!("/admin/applications/{}", view.id));
    tell_deciders(
        app,
        view,
        &format!("An application for {} waits for review", view.model_title),
        &format!(
            "Hello,\n\n{name} ({email}, {affiliation}) applied for {title}.\n\n\
             Review it here:\n\n{link}\n\n\
             You get this e-mail for every application; choose a daily digest in the dashboard.\n",
            name = view.name,
            email = view.email,
            affiliation = view.affiliation,
            title = view.model_title,
        ),
    )
    .await
}

/// Tells the reviewers of the application's model who want to hear at once
/// that the applicant answered their question.
pub(crate) async fn application_answered(app: &App, view: &ApplicationView, answer: &str) -> Result<()> {
    let link = app.url(&format!("/admin/applications/{}", view.id));
    tell_deciders(
        app,
        view,
        &format!("{} answered your question about {}", view.name, view.model_title),
        &format!(
            "Hello,\n\n{name} ({email}) answered:\n\n{answer}\n\n\
             The application waits for a decision again:\n\n{link}\n",
            name = view.name,
            email = view.email,
        ),
    )
    .await
}

async fn tell_deciders(app: &App, view: &ApplicationView, subject: &str, body: &str) -> Result<()> {
    let reviewers = db::reviewers::deciders_of(app.db.pool(), &view.model_id).await?;
    let mut tx = app.db.begin().await?;
    let mut queued = false;
    for reviewer in reviewers.iter().filter(|r| r.notify == Notify::Immediate) {
        mail::enqueue(&mut tx, &reviewer.email, subject, body).await?;
        queued = true;
    }
    tx.commit().await?;
    if queued {
        app.mail.wake();
    }
    Ok(())
}

/// What one round of [`run_once`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub reminders: usize,
    pub expired: usize,
    pub digests: usize,
}

/// Sends the expiry reminders and digests that are due and records the
/// expiries that have passed. Each is claimed in its own transaction, so
/// replicas running this at once send each message once.
pub async fn run_once(app: &App) -> Result<Round> {
    let now = now_ms();
    let mut round = Round::default();
    // Transfers whose delivery never came (their replica stopped without
    // it) stop counting against quotas after a day; their rows go too.
    db::grants::forget_reservations(app.db.pool(), now - crate::audit::RESERVATION_LIFETIME_MS).await?;
    let ahead = i64::try_from(app.config.expiry_reminder.as_millis()).unwrap_or(i64::MAX);
    for grant in db::grants::due_reminders(app.db.pool(), now, now.saturating_add(ahead)).await? {
        let mut tx = app.db.begin().await?;
        if !db::grants::mark_reminded(&mut tx, &grant.id, now).await? {
            continue;
        }
        mail::enqueue(
            &mut tx,
            &grant.email,
            &format!(
                "Your access to {} ends on {}",
                grant.model_title,
                format_ms(grant.expires_at)
            ),
            &format!(
                "Hello {name},\n\nyour access to {title} ends on {until} UTC. Finish your downloads before then,\n\
                 or sign in at {signin} to ask for a renewal.\n",
                name = grant.researcher_name,
                title = grant.model_title,
                until = format_ms(grant.expires_at),
                signin = app.url("/"),
            ),
        )
        .await?;
        let event = Event::ok(Action::GrantReminded)
            .about_grant(&grant)
            .reason(format!("ends {}", format_ms(grant.expires_at)));
        audit::append(&mut tx, app.db.backend(), &[event]).await?;
        tx.commit().await?;
        round.reminders += 1;
    }
    for grant in db::grants::expired_unlogged(app.db.pool(), now).await? {
        let mut tx = app.db.begin().await?;
        if !db::grants::mark_expiry_logged(&mut tx, &grant.id, now).await? {
            continue;
        }
        let event = Event::ok(Action::GrantExpired)
            .about_grant(&grant)
            .reason(format!("ended {}", format_ms(grant.expires_at)));
        audit::append(&mut tx, app.db.backend(), &[event]).await?;
        tx.commit().await?;
        round.expired += 1;
    }
    round.digests = send_digests(app, now).await?;
    if round != Round::default() {
        app.mail.wake();
    }
    Ok(round)
}

async fn send_digests(app: &App, now: i64) -> Result<usize> {
    let every = i64::try_from(DIGEST_EVERY.as_millis()).unwrap_or(i64::MAX);
    let due: Vec<_> = db::reviewers::list(app.db.pool())
        .await?
        .into_iter()
        .filter(|r| r.notify == Notify::Digest && r.disabled_at.is_none())
        .filter(|r| r.last_digest_at.is_none_or(|at| now.saturating_sub(at) >= every))
        .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let filter = db::applications::QueueFilter {
        status: Some(Status::Pending),
        limit: 1000,
        ..Default::default()
    };
    let (pending, _) = db::applications::search(app.db.pool(), &filter, now).await?;
    // Each application goes to the reviewers told of it at once under the
    // other choice: those assigned to its model, or the admins if nobody is.
    let mut deciders = std::collections::HashMap::new();
    for view in &pending {
        if !deciders.contains_key(&view.model_id) {
            let ids: Vec<String> = db::reviewers::deciders_of(app.db.pool(), &view.model_id)
                .await?
                .into_iter()
                .map(|r| r.id)
                .collect();
            deciders.insert(view.model_id.clone(), ids);
        }
    }
    let mut sent = 0;
    for reviewer in due {
        let mine: Vec<_> = pending
            .iter()
            .filter(|v| {
                deciders
                    .get(&v.model_id)
                    .is_some_and(|ids| ids.contains(&reviewer.id))
            })
            .collect();
        let mut tx = app.db.begin().await?;
        db::reviewers::digest_sent(&mut *tx, &reviewer.id, now).await?;
        if !mine.is_empty() {
            let lines: String = mine
                .iter()
                .map(|v| {
                    format!(
                        "- {title}: {name} <{email}>, waiting since {since}\n  {link}\n",
                        title = v.model_title,
                        name = v.name,
                        email = v.email,
                        since = format_ms(v.confirmed_at.unwrap_or(v.created_at)),
                        link = app.url(&format!("/admin/applications/{}", v.id)),
                    )
                })
                .collect();
            mail::enqueue(
                &mut tx,
                &reviewer.email,
                &format!("{} applications wait for your review", mine.len()),
                &format!("Hello,\n\nthese applications wait for a decision:\n\n{lines}"),
            )
            .await?;
            sent += 1;
        }
        tx.commit().await?;
    }
    Ok(sent)
}

/// Runs [`run_once`] every `every` until the task is aborted.
pub(crate) async fn run_periodically(app: std::sync::Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(err) = run_once(&app).await {
            tracing::error!(error = %format!("{err:#}"), "cannot send the notices that are due");
        }
    }
}
