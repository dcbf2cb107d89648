//! Review decisions. A model's policy says how many distinct reviewers must
//! approve (N of M) and which applications are approved by rule; the last
//! approval creates the grant and tells the researcher where to download, and
//! any denial tells them why.

use std::time::Duration;

use crate::{
    app::App,
    audit::{self, Action, Client, Event},
    db::{
        self,
        applications::{ApplicationView, Message, NewReview, ReviewView},
        grants::GrantView,
        policy::ReviewPolicy,
        reviewers::Reviewer,
    },
    domain::authz::{self, ReviewerAction},
    domain::error::{Error, Result},
    domain::questions::{self, Answer, Question},
    mail,
    types::{
        format_ms, hash_token, new_id, new_token, now_ms,
        states::{Decision, Kind, Status},
    },
};

pub(crate) const MAX_REASON: usize = 2000;
/// The longest grant a reviewer may give in one decision.
pub(crate) const MAX_GRANT_DAYS: u64 = 3650;
/// The most days one extension or renewal adds to a grant.
pub(crate) const MAX_EXTENSION_DAYS: u64 = 365;
/// The most applications one bulk decision takes.
pub(crate) const MAX_BULK: usize = 200;
/// Who the audit log names for decisions taken by a model's rules.
pub const RULES_ACTOR: &str = "weightgate (automatic approval)";

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReviewError {
    #[error("no such application")]
    NotFound,
    #[error("this application is {0}, not waiting for a decision")]
    NotPending(String),
    #[error("a denial needs a reason (at most {MAX_REASON} characters)")]
    ReasonRequired,
    #[error("a note has at most {MAX_REASON} characters")]
    NoteTooLong,
    #[error("a grant lasts 1 to {MAX_GRANT_DAYS} days")]
    BadDuration,
    #[error("an extension adds 1 to {MAX_EXTENSION_DAYS} days")]
    BadExtension,
    #[error("you already approved this application; it needs another reviewer's approval")]
    AlreadyApproved,
    #[error("select at least one application, at most {MAX_BULK}")]
    BadSelection,
}

impl From<ReviewError> for crate::domain::Error {
    fn from(err: ReviewError) -> Self {
        match err {
            ReviewError::NotFound => Self::not_found(err.to_string()),
            ReviewError::NotPending(_) | ReviewError::AlreadyApproved => Self::conflict(err.to_string()),
            ReviewError::ReasonRequired
            | ReviewError::NoteTooLong
            | ReviewError::BadDuration
            | ReviewError::BadExtension
            | ReviewError::BadSelection => Self::invalid(err.to_string()),
        }
    }
}

/// What an approval produced: the grant, or one more vote towards it.
#[derive(Debug)]
pub(crate) enum Approval {
    /// The grant exists (or was extended) and lasts until `expires_at`.
    Granted { expires_at: i64 },
    /// Recorded; the policy needs `needed` approvals from distinct reviewers.
    Recorded { approvals: usize, needed: usize },
}

async fn decidable(app: &App, reviewer: &Reviewer, application_id: &str) -> Result<ApplicationView> {
    let view = db::applications::find_view(app.db.pool(), application_id)
        .await?
        .ok_or(ReviewError::NotFound)?;
    authz::reviewer_may(
        app,
        reviewer,
        ReviewerAction::Act {
            model_id: &view.model_id,
        },
    )
    .await?;
    if !view.status.is_open() {
        return Err(ReviewError::NotPending(view.status.to_string()).into());
    }
    Ok(view)
}

async fn policy_of(app: &App, model_id: &str) -> Result<ReviewPolicy> {
    db::policy::find(app.db.pool(), model_id)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("the model of this application is gone")))
}

/// Everything a reviewer reads before deciding one application.
#[derive(Debug)]
pub(crate) struct CaseFile {
    pub(crate) application: ApplicationView,
    /// Whether this reviewer may decide it (not only read it).
    pub(crate) may_decide: bool,
    /// Every decision recorded, in order.
    pub(crate) reviews: Vec<ReviewView>,
    /// The approvals the model's policy needs, and those that count so far
    /// (from reviewers who may still decide).
    pub(crate) approvals_needed: i64,
    pub(crate) approvals_counted: usize,
    /// This reviewer has approved it already.
    pub(crate) approved_by_reader: bool,
    /// The grant this application made, once approved.
    pub(crate) grant: Option<GrantView>,
    /// The researcher's other applications, and their other grants.
    pub(crate) earlier_applications: Vec<ApplicationView>,
    pub(crate) grants: Vec<GrantView>,
    /// Questions asked and answers given, in order.
    pub(crate) messages: Vec<Message>,
    /// The answers to the model's questions.
    pub(crate) answers: Vec<Answer>,
}

/// The applications of the queue that `reviewer` may see, as `filter`
/// asks (its model list is replaced by the reviewer's), and how many match.
pub(crate) async fn queue(
    app: &App,
    reviewer: &Reviewer,
    mut filter: db::applications::QueueFilter,
) -> Result<(Vec<ApplicationView>, i64)> {
    filter.model_ids = authz::visible_models(app, reviewer).await?;
    Ok(db::applications::search(app.db.pool(), &filter, now_ms()).await?)
}

/// The case file of an application, for a reviewer who may read it.
pub(crate) async fn case_file(app: &App, reviewer: &Reviewer, application_id: &str) -> Result<CaseFile> {
    let pool = app.db.pool();
    let application = db::applications::find_view(pool, application_id)
        .await?
        .ok_or_else(|| Error::not_found("no such application"))?;
    let model_id = application.model_id.as_str();
    authz::reviewer_may(app, reviewer, ReviewerAction::Read { model_id }).await?;
    let may_decide = authz::reviewer_may(app, reviewer, ReviewerAction::Act { model_id })
        .await
        .is_ok();
    let reviews = db::applications::reviews_of(pool, application_id).await?;
    let approved_by_reader = reviews
        .iter()
        .any(|r| r.decision == Decision::Approve && r.reviewer_email == reviewer.email);
    let approvals_needed = db::policy::find(pool, model_id)
        .await?
        .map_or(1, |p| p.approvals_needed.max(1));
    let approvals_counted = db::applications::approvals(pool, application_id).await?.len();
    let earlier_applications = db::applications::list_of_researcher(pool, &application.researcher_id)
        .await?
        .into_iter()
        .filter(|a| a.id != application.id)
        .collect();
    let (mine, grants): (Vec<GrantView>, Vec<GrantView>) =
        db::grants::list_of_researcher(pool, &application.researcher_id)
            .await?
            .into_iter()
            .partition(|g| g.application_id == application.id);
    let grant = mine.into_iter().next();
    let messages = db::applications::messages_of(pool, application_id).await?;
    let answers = questions::stored_answers(&application.answers);
    Ok(CaseFile {
        application,
        may_decide,
        reviews,
        approvals_needed,
        approvals_counted,
        approved_by_reader,
        grant,
        earlier_applications,
        grants,
        messages,
        answers,
    })
}

fn decision_event(action: Action, actor: &str, view: &ApplicationView, client: &Client) -> Event {
    Event::ok(action)
        .actor(actor)
        .about_application(view)
        .client(client.clone())
}

fn grant_ttl(app: &App, days: Option<u64>) -> Result<Duration, ReviewError> {
    match days {
        Some(d) if (1..=MAX_GRANT_DAYS).contains(&d) => Ok(Duration::from_secs(d * 86_400)),
        Some(_) => Err(ReviewError::BadDuration),
        None => Ok(app.config.grant_ttl),
    }
}

/// How long an extension or a renewal adds: the days chosen, or the default
/// grant length, never more than [`MAX_EXTENSION_DAYS`].
pub(crate) fn extension_ttl(app: &App, days: Option<u64>) -> Result<Duration, ReviewError> {
    match days {
        Some(d) if (1..=MAX_EXTENSION_DAYS).contains(&d) => Ok(Duration::from_secs(d * 86_400)),
        Some(_) => Err(ReviewError::BadExtension),
        None => Ok(app
            .config
            .grant_ttl
            .min(Duration::from_secs(MAX_EXTENSION_DAYS * 86_400))),
    }
}

/// An application the reviewers have had for longer than its model's
/// review target (a model without a policy row has the default, 7 days).
/// Only one in the queue is overdue: one waiting for the applicant is not.
pub(crate) fn is_overdue(view: &ApplicationView, policy: Option<&ReviewPolicy>, now: i64) -> bool {
    let target_days = policy.map_or(DEFAULT_TARGET_DAYS, |p| p.review_target_days);
    view.status == Status::Pending
        && now.saturating_sub(waiting_since(view)) > target_days.saturating_mul(86_400_000)
}

/// When an application entered the queue (or was sent, if it never did).
pub(crate) fn waiting_since(view: &ApplicationView) -> i64 {
    view.confirmed_at.unwrap_or(view.created_at)
}

/// The review target of a model whose policy says nothing else.
pub(crate) const DEFAULT_TARGET_DAYS: i64 = 7;

/// The days a form offers for a new grant: the configured grant length, in
/// whole days (at least one).
pub(crate) fn default_grant_days(app: &App) -> u64 {
    (app.config.grant_ttl.as_secs() / 86_400).clamp(1, MAX_GRANT_DAYS)
}

/// The days a form offers for an extension: what one adds when the reviewer
/// does not choose, in whole days (at least one).
pub(crate) fn default_extension_days(app: &App) -> u64 {
    default_grant_days(app).min(MAX_EXTENSION_DAYS)
}

/// The days an application's approve form offers: an extension's for a
/// renewal (which extends a grant), a new grant's for anything else.
pub(crate) fn default_days_for(app: &App, kind: Kind) -> u64 {
    if kind == Kind::Renewal {
        default_extension_days(app)
    } else {
        default_grant_days(app)
    }
}

/// The most days an application's approval may give.
pub(crate) fn max_days_for(kind: Kind) -> u64 {
    if kind == Kind::Renewal {
        MAX_EXTENSION_DAYS
    } else {
        MAX_GRANT_DAYS
    }
}

fn checked_note(note: Option<&str>) -> Result<Option<&str>, ReviewError> {
    match note.map(str::trim) {
        Some("") | None => Ok(None),
        Some(n) if n.chars().count() > MAX_REASON => Err(ReviewError::NoteTooLong),
        Some(n) => Ok(Some(n)),
    }
}

/// Approves a pending application as `reviewer`. The grant is created once
/// the model's policy has its approvals from distinct reviewers (until then
/// the approval is recorded); it lasts the shortest of the durations the
/// approving reviewers chose (the configured default when none did). A
/// renewal follows the same policy, and extends the grant it names instead.
pub(crate) async fn approve(
    app: &App,
    reviewer: &Reviewer,
    application_id: &str,
    days: Option<u64>,
    note: Option<&str>,
    client: Client,
) -> Result<Approval> {
    let view = decidable(app, reviewer, application_id).await?;
    // A renewal extends the grant it names rather than making a second one.
    let renewal = view.kind == Kind::Renewal;
    let ttl_of = |days: Option<u64>| {
        if renewal {
            extension_ttl(app, days)
        } else {
            grant_ttl(app, days)
        }
    };
    let ttl = ttl_of(days)?;
    let note = checked_note(note)?;
    let policy = policy_of(app, &view.model_id).await?;
    let needed = usize::try_from(policy.approvals_needed.max(1)).unwrap_or(1);
    let now = now_ms();

    let mut tx = app.db.begin().await?;
    if !db::applications::lock_pending(&mut tx, &view.id).await? {
        return Err(ReviewError::NotPending("already decided".into()).into());
    }
    let mut approvals = db::applications::approvals(&mut *tx, &view.id).await?;
    if approvals.iter().any(|a| a.reviewer_id == reviewer.id) {
        return Err(ReviewError::AlreadyApproved.into());
    }
    let grant_days = days.map(|d| i64::try_from(d).unwrap_or(i64::MAX));
    db::applications::insert_review(
        &mut tx,
        &NewReview {
            id: &new_id(),
            application_id: &view.id,
            reviewer_id: &reviewer.id,
            decision: Decision::Approve,
            reason: None,
            grant_days,
            note,
            created_at: now,
        },
    )
    .await?;
    approvals.push(db::applications::ApprovalSoFar {
        reviewer_id: reviewer.id.clone(),
        grant_days,
        note: note.map(str::to_owned),
    });
    let mut approved = decision_event(Action::ReviewApproved, &reviewer.email, &view, &client);
    approved.reason = Some(format!("approval {} of {needed}", approvals.len()));
    if approvals.len() < needed {
        audit::append(&mut tx, app.db.backend(), &[approved]).await?;
        tx.commit().await?;
        return Ok(Approval::Recorded {
            approvals: approvals.len(),
            needed,
        });
    }
    // The grant lasts no longer than any approving reviewer agreed to, and
    // carries every reviewer's note.
    let ttl = match approvals.iter().filter_map(|a| a.grant_days).min() {
        Some(d) => ttl_of(u64::try_from(d).ok())?,
        None => ttl,
    };
    if renewal {
        let extended =
            extend_on_approval(app, &mut tx, &view, ttl, &reviewer.email, &client, approved, now).await?;
        tx.commit().await?;
        app.mail.wake();
        return Ok(extended);
    }
    let notes: Vec<&str> = approvals.iter().filter_map(|a| a.note.as_deref()).collect();
    let note = (!notes.is_empty()).then(|| notes.join("\n\n"));
    let granted = grant(
        app,
        &mut tx,
        &view,
        ttl,
        note.as_deref(),
        &reviewer.email,
        &client,
        approved,
        now,
    )
    .await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(granted)
}

/// Extends the grant a renewal names, inside the transaction of the approval
/// that completed the model's policy: the grant lasts `ttl` longer, counted
/// from its current expiry (or from now, should it have lapsed meanwhile).
#[expect(clippy::too_many_arguments)]
pub(crate) async fn extend_on_approval(
    app: &App,
    tx: &mut db::Tx,
    view: &ApplicationView,
    ttl: Duration,
    actor: &str,
    client: &Client,
    approved: Event,
    now: i64,
) -> Result<Approval> {
    let grant_id = view.grant_id.as_deref().ok_or(ReviewError::NotFound)?;
    let grant = db::grants::find_view(&mut **tx, grant_id)
        .await?
        .ok_or(ReviewError::NotFound)?;
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at = grant.expires_at.max(now).saturating_add(ttl_ms);
    if !db::applications::mark_decided(tx, &view.id, Status::Approved, now).await? {
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
    let extended = Event::ok(Action::GrantExtended)
        .actor(actor.to_owned())
        .about_application(view)
        .grant(grant.id.clone())
        .reason(format!("until {}", format_ms(expires_at)))
        .client(client.clone());
    audit::append(tx, app.db.backend(), &[approved, extended]).await?;
    Ok(Approval::Granted { expires_at })
}

/// Creates the grant of an approved application inside `tx`, with the
/// approval's event before the grant's.
#[expect(clippy::too_many_arguments)]
async fn grant(
    app: &App,
    tx: &mut db::Tx,
    view: &ApplicationView,
    ttl: Duration,
    note: Option<&str>,
    actor: &str,
    client: &Client,
    approved: Event,
    now: i64,
) -> Result<Approval> {
    let expires_at = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let token = new_token();
    let grant_id = new_id();
    let access_url = app.url(&format!("/access/{token}"));
    if !db::applications::mark_decided(tx, &view.id, Status::Approved, now).await? {
        return Err(ReviewError::NotPending("already decided".into()).into());
    }
    db::grants::insert_grant(
        tx,
        &db::grants::NewGrant {
            id: &grant_id,
            application_id: &view.id,
            researcher_id: &view.researcher_id,
            model_id: &view.model_id,
            access_url_id: &new_id(),
            access_token_hash: &hash_token(&token),
            created_at: now,
            expires_at,
        },
    )
    .await?;
    let note = note
        .map(|n| format!("The reviewers added:\n\n{n}\n\n"))
        .unwrap_or_default();
    mail::enqueue(
        tx,
        &view.email,
        &format!("Your access to {} is approved", view.model_title),
        &format!(
            "Hello {name},\n\nyour application for {title} was approved. Your access lasts until\n\
             {until} UTC. Download the files from your access page:\n\n{access_url}\n\n{note}\
             Keep this link to yourself: it is your key to the files.\n",
            name = view.name,
            title = view.model_title,
            until = format_ms(expires_at),
        ),
    )
    .await?;
    let granted = decision_event(Action::GrantCreated, actor, view, client)
        .grant(grant_id.clone())
        .reason(format!("until {}", format_ms(expires_at)));
    audit::append(tx, app.db.backend(), &[approved, granted]).await?;
    Ok(Approval::Granted { expires_at })
}

/// Denies a pending application; the reason is e-mailed to the researcher.
/// One denial decides, whatever the number of approvals the policy needs.
pub(crate) async fn deny(
    app: &App,
    reviewer: &Reviewer,
    application_id: &str,
    reason: &str,
    client: Client,
) -> Result<()> {
    let view = decidable(app, reviewer, application_id).await?;
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ReviewError::ReasonRequired.into());
    }
    let now = now_ms();
    let mut tx = app.db.begin().await?;
    if !db::applications::mark_decided(&mut tx, &view.id, Status::Denied, now).await? {
        return Err(ReviewError::NotPending("already decided".into()).into());
    }
    db::applications::insert_review(
        &mut tx,
        &NewReview {
            id: &new_id(),
            application_id: &view.id,
            reviewer_id: &reviewer.id,
            decision: Decision::Deny,
            reason: Some(reason),
            grant_days: None,
            note: None,
            created_at: now,
        },
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
    let mut event = decision_event(Action::ReviewDenied, &reviewer.email, &view, &client);
    event.reason = Some(reason.to_owned());
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(())
}

/// The rule of `policy` that approves `view` without a reviewer, if any:
/// the researcher's e-mail domain (or a parent domain) is in the allow-list,
/// and every question the model requires now has an answer.
pub(crate) fn approving_rule(
    policy: &ReviewPolicy,
    view: &ApplicationView,
    questions: &[Question],
) -> Option<String> {
    let domain = view.email.rsplit_once('@')?.1.to_ascii_lowercase();
    let allowed = allowed_domains(policy.auto_approve_domains.as_deref())
        .into_iter()
        .find(|allowed| domain == *allowed || domain.ends_with(&format!(".{allowed}")))?;
    let answers = crate::domain::questions::stored_answers(&view.answers);
    let answered = |q: &Question| answers.iter().any(|a| a.id == q.id && !a.value.trim().is_empty());
    if !questions.iter().filter(|q| q.required).all(answered) {
        return None;
    }
    Some(format!(
        "e-mail domain {domain} is in the allow-list ({allowed}) and every required question is answered"
    ))
}

/// The allow-list of a policy, normalised.
pub(crate) fn allowed_domains(list: Option<&str>) -> Vec<String> {
    list.unwrap_or_default()
        .split([',', ' ', '\n'])
        .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect()
}

/// Called when an application enters the queue: approves it when one of the
/// model's rules holds, and otherwise lets its reviewers know it waits.
pub(crate) async fn on_confirmed(app: &App, application_id: &str, client: Client) -> Result<()> {
    let Some(view) = db::applications::find_view(app.db.pool(), application_id).await? else {
        return Ok(());
    };
    if view.status != Status::Pending {
        return Ok(());
    }
    let policy = policy_of(app, &view.model_id).await?;
    let questions = db::models::find_model(app.db.pool(), &view.model_id)
        .await?
        .map(|m| crate::domain::questions::stored(&m.questions))
        .unwrap_or_default();
    let Some(rule) = approving_rule(&policy, &view, &questions) else {
        return crate::domain::notices::application_waiting(app, &view).await;
    };
    let now = now_ms();
    let mut tx = app.db.begin().await?;
    if !db::applications::lock_pending(&mut tx, &view.id).await? {
        return Ok(());
    }
    let mut approved = decision_event(Action::ReviewApproved, RULES_ACTOR, &view, &client);
    approved.reason = Some(format!("rule: {rule}"));
    grant(
        app,
        &mut tx,
        &view,
        app.config.grant_ttl,
        None,
        RULES_ACTOR,
        &client,
        approved,
        now,
    )
    .await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(())
}

/// What a bulk decision did to one application.
#[derive(Debug)]
pub(crate) struct BulkOutcome {
    pub(crate) application_id: String,
    pub(crate) email: String,
    pub(crate) result: Result<String, String>,
}

/// The decision a bulk action applies to every selected application.
pub(crate) enum BulkDecision<'a> {
    Approve {
        days: Option<u64>,
        note: Option<&'a str>,
    },
    Deny {
        reason: &'a str,
    },
}

/// Applies one decision to each selected application, each recorded (and
/// audited) on its own: one that cannot be decided does not stop the rest.
pub(crate) async fn bulk(
    app: &App,
    reviewer: &Reviewer,
    application_ids: &[String],
    decision: &BulkDecision<'_>,
    client: Client,
) -> Result<Vec<BulkOutcome>> {
    if application_ids.is_empty() || application_ids.len() > MAX_BULK {
        return Err(ReviewError::BadSelection.into());
    }
    // Refuse the whole batch up front for input that no row could take.
    match decision {
        BulkDecision::Approve { days, note } => {
            grant_ttl(app, *days)?;
            checked_note(*note)?;
        }
        BulkDecision::Deny { reason } => {
            if reason.trim().is_empty() || reason.trim().chars().count() > MAX_REASON {
                return Err(ReviewError::ReasonRequired.into());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut outcomes = Vec::new();
    for id in application_ids.iter().filter(|id| seen.insert(id.as_str())) {
        // The applicant's address is shown only to those who may see the
        // application; to anyone else the row is "no such application".
        let view = db::applications::find_view(app.db.pool(), id).await?;
        let visible = match &view {
            Some(v) => authz::reviewer_may(
                app,
                reviewer,
                ReviewerAction::Read {
                    model_id: &v.model_id,
                },
            )
            .await
            .is_ok(),
            None => false,
        };
        let Some(email) = view.filter(|_| visible).map(|v| v.email) else {
            outcomes.push(BulkOutcome {
                application_id: id.clone(),
                email: String::new(),
                result: Err(ReviewError::NotFound.to_string()),
            });
            continue;
        };
        let result = match decision {
            BulkDecision::Approve { days, note } => approve(app, reviewer, id, *days, *note, client.clone())
                .await
                .map(|a| match a {
                    Approval::Granted { .. } => "approved".to_owned(),
                    Approval::Recorded { approvals, needed } => {
                        format!("approval {approvals} of {needed} recorded")
                    }
                }),
            BulkDecision::Deny { reason } => deny(app, reviewer, id, reason, client.clone())
                .await
                .map(|()| "denied".to_owned()),
        };
        let result = match result {
            Ok(done) => Ok(done),
            // What is about this one application goes on its row; a
            // failure of the portal stops the whole batch.
            Err(
                err @ (Error::NotFound(_) | Error::Conflict(_) | Error::Invalid(_) | Error::Forbidden { .. }),
            ) => Err(err.to_string()),
            Err(err) => return Err(err),
        };
        outcomes.push(BulkOutcome {
            application_id: id.clone(),
            email,
            result,
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(domains: &str) -> ReviewPolicy {
        ReviewPolicy {
            model_id: "m".into(),
            model_slug: "m".into(),
            approvals_needed: 1,
            auto_approve_domains: Some(domains.into()),
            review_target_days: 7,
        }
    }

    fn view(email: &str) -> ApplicationView {
        ApplicationView {
            id: "a".into(),
            model_id: "m".into(),
            researcher_id: "r".into(),
            name: "n".into(),
            affiliation: "x".into(),
            intended_use: "y".into(),
            terms_version: 1,
            status: Status::Pending,
            created_at: 0,
            confirmed_at: Some(0),
            decided_at: None,
            email: email.into(),
            model_slug: "m".into(),
            model_title: "M".into(),
            answers: "[]".into(),
            kind: Kind::New,
            parent_id: None,
            grant_id: None,
        }
    }

    #[test]
    fn an_application_is_overdue_only_in_the_queue_and_past_its_target() {
        let day = 86_400_000;
        let p = policy("");
        let mut v = view("a@x.example.org");
        assert!(!is_overdue(&v, Some(&p), 7 * day));
        assert!(is_overdue(&v, Some(&p), 7 * day + 1));
        v.status = Status::InfoRequested;
        assert!(!is_overdue(&v, Some(&p), 30 * day), "waiting for the applicant");
        v.status = Status::Pending;
        let strict = ReviewPolicy {
            review_target_days: 1,
            ..p
        };
        assert!(is_overdue(&v, Some(&strict), day + 1));
        assert!(!is_overdue(&v, None, 7 * day) && is_overdue(&v, None, 8 * day));
    }

    #[test]
    fn the_allow_list_matches_whole_domains_and_their_subdomains() {
        let p = policy("uni.example.edu, @lab.example.org");
        let rule = |email: &str| approving_rule(&p, &view(email), &[]);
        assert!(rule("a@uni.example.edu").is_some());
        assert!(rule("a@cs.uni.example.edu").is_some());
        assert!(rule("a@LAB.example.org").is_some());
        assert!(rule("a@evil-uni.example.edu").is_none());
        assert!(rule("a@uni.example.edu.evil.example").is_none());
        assert!(approving_rule(&policy(""), &view("a@uni.example.edu"), &[]).is_none());
    }

    #[test]
    fn the_rule_that_approved_is_named() {
        let rule = approving_rule(&policy("example.edu"), &view("a@cs.example.edu"), &[]).unwrap();
        assert_eq!(
            rule,
            "e-mail domain cs.example.edu is in the allow-list (example.edu) and every required question is answered"
        );
    }

    #[test]
    fn a_required_question_left_unanswered_stops_the_automatic_approval() {
        let questions = crate::domain::questions::parse_definitions(
            r#"[{"id": "orcid", "label": "ORCID", "kind": "url", "required": true}]"#,
        )
        .unwrap();
        let mut v = view("a@example.edu");
        assert!(approving_rule(&policy("example.edu"), &v, &questions).is_none());
        v.answers =
            r#"[{"id": "orcid", "label": "ORCID", "kind": "url", "value": "https://orcid.org/1"}]"#.into();
        assert!(approving_rule(&policy("example.edu"), &v, &questions).is_some());
    }
}
