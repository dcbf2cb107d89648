//! The researcher's own pages: passwordless sign-in by e-mailed one-time
//! link, the history and next step of each application, appeals, and the
//! download-client URL of a grant.

use crate::{
    app::App,
    audit::{self, Action, Client, Event, Outcome},
    db::{self, Tx, applications::ApplicationView, grants::GrantView},
    domain::applications::{self, FollowUp, MAX_INTENDED_USE},
    domain::error::Result,
    domain::forms::text,
    domain::questions::{self, Answer},
    mail,
    types::{
        Email, hash_token, new_id, new_token, now_ms,
        states::{Author, Decision, Kind, Status},
    },
};

/// How long an e-mailed sign-in link works.
pub(crate) const SIGNIN_LINK_TTL_MS: i64 = 15 * 60_000;
/// At most this many sign-in links per address and hour, so the form cannot
/// be used to flood someone's inbox.
pub(crate) const MAX_SIGNIN_LINKS_PER_HOUR: i64 = 5;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResearcherError {
    #[error("no such application or grant")]
    NotFound,
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<ResearcherError> for crate::domain::Error {
    fn from(err: ResearcherError) -> Self {
        match err {
            ResearcherError::NotFound => Self::not_found(err.to_string()),
            ResearcherError::NotAllowed(_) => Self::conflict(err.to_string()),
            ResearcherError::Invalid(_) => Self::invalid(err.to_string()),
        }
    }
}

/// Stores a fresh sign-in link for a researcher and returns its URL.
pub(crate) async fn issue_signin_link(tx: &mut Tx, app: &App, researcher_id: &str) -> Result<String> {
    let token = new_token();
    let now = now_ms();
    db::researchers::insert_signin_token(
        tx,
        &hash_token(&token),
        researcher_id,
        now,
        now + SIGNIN_LINK_TTL_MS,
    )
    .await?;
    Ok(app.url(&format!("/signin/{token}")))
}

/// E-mails a sign-in link to `email` if a researcher has that address. The
/// caller's answer is the same either way, so the form reveals nothing.
pub(crate) async fn request_signin(app: &App, email: &Email, client: Client) -> Result<()> {
    let now = now_ms();
    let mut tx = app.db.begin().await?;
    let mut event = Event::ok(Action::ResearcherSignInLink)
        .subject(email.to_string())
        .client(client);
    match db::researchers::find_id_by_email(&mut *tx, email.as_str()).await? {
        None => {
            event.outcome = Outcome::Refused;
            event.reason = Some("unknown_address".into());
        }
        Some(id) => {
            let recent = db::researchers::count_signin_tokens_since(&mut tx, &id, now - 3_600_000).await?;
            if recent >= MAX_SIGNIN_LINKS_PER_HOUR {
                event.outcome = Outcome::Refused;
                event.reason = Some("too_many_links".into());
            } else {
                let url = issue_signin_link(&mut tx, app, &id).await?;
                mail::enqueue(
                    &mut tx,
                    email.as_str(),
                    "Your weightgate sign-in link",
                    &format!(
                        "Hello,\n\nopen this link to sign in and see your applications and access:\n\n{url}\n\n\
                         It works once, for {} minutes. If you did not ask for it, ignore this message.\n",
                        SIGNIN_LINK_TTL_MS / 60_000
                    ),
                )
                .await?;
            }
            event.researcher_id = Some(id);
        }
    }
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(())
}

/// A signed-in researcher.
#[derive(Clone, Debug)]
pub(crate) struct Researcher {
    pub(crate) id: String,
    pub(crate) email: String,
}

/// Uses up a sign-in link: the researcher it was sent to, or `None` when the
/// link is unknown, already used or expired.
pub(crate) async fn sign_in(app: &App, token: &str, client: Client) -> Result<Option<Researcher>> {
    let mut tx = app.db.begin().await?;
    let found = db::researchers::consume_signin_token(&mut tx, &hash_token(token), now_ms()).await?;
    let mut event = Event::ok(Action::ResearcherSignIn).client(client);
    let researcher = match found {
        Some(id) => {
            let email = db::researchers::email_of(&mut *tx, &id)
                .await?
                .unwrap_or_default();
            event.subject = Some(email.clone());
            event.actor = Some(email.clone());
            event.researcher_id = Some(id.clone());
            Some(Researcher { id, email })
        }
        None => {
            event.outcome = Outcome::Refused;
            event.reason = Some("link_used_or_expired".into());
            None
        }
    };
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(researcher)
}

/// The researcher behind a session's id, if they still exist.
pub(crate) async fn find(app: &App, id: &str) -> Result<Option<Researcher>> {
    Ok(db::researchers::email_of(app.db.pool(), id)
        .await?
        .map(|email| Researcher {
            id: id.to_owned(),
            email,
        }))
}

/// One line of an application's history.
#[derive(Clone, Debug)]
pub(crate) struct HistoryEntry {
    pub(crate) at: i64,
    pub(crate) what: String,
    /// A question, an answer or a reason, in the writer's words.
    pub(crate) body: String,
}

/// An application as its researcher sees it.
#[derive(Debug)]
pub(crate) struct MyApplication {
    pub(crate) view: ApplicationView,
    pub(crate) answers: Vec<Answer>,
    pub(crate) history: Vec<HistoryEntry>,
    pub(crate) next_step: String,
    pub(crate) denial_reason: Option<String>,
    pub(crate) can_answer: bool,
    pub(crate) can_appeal: bool,
    /// For a denied application: when a new one is welcome.
    pub(crate) reapply_from: Option<i64>,
}

/// Every application of a researcher with its history and next step.
pub(crate) async fn my_applications(app: &App, researcher: &Researcher) -> Result<Vec<MyApplication>> {
    let pool = app.db.pool();
    let views = db::applications::list_of_researcher(pool, &researcher.id).await?;
    let mut typical = std::collections::HashMap::new();
    let mut mine = Vec::with_capacity(views.len());
    for view in views {
        if !typical.contains_key(&view.model_id) {
            let t = applications::typical_review_time(app, &view.model_id).await?;
            typical.insert(view.model_id.clone(), t);
        }
        let mut history = vec![HistoryEntry {
            at: view.created_at,
            what: match view.kind {
                Kind::Renewal => "Renewal requested".into(),
                Kind::Appeal => "Appeal sent".into(),
                Kind::New => "Application submitted".into(),
            },
            body: String::new(),
        }];
        if let Some(at) = view.confirmed_at.filter(|_| view.kind == Kind::New) {
            history.push(HistoryEntry {
                at,
                what: "E-mail address confirmed; sent to the reviewers".into(),
                body: String::new(),
            });
        }
        for m in db::applications::messages_of(pool, &view.id).await? {
            let what = match m.author_kind {
                Author::Reviewer => "The reviewers asked",
                Author::Researcher => "You wrote",
            };
            history.push(HistoryEntry {
                at: m.created_at,
                what: what.into(),
                body: m.body,
            });
        }
        let reviews = db::applications::reviews_of(pool, &view.id).await?;
        let denial_reason = (view.status == Status::Denied)
            .then(|| {
                reviews
                    .iter()
                    .rev()
                    .find(|r| r.decision == Decision::Deny)
                    .and_then(|r| r.reason.clone())
            })
            .flatten();
        if let Some(at) = view.decided_at {
            history.push(HistoryEntry {
                at,
                what: format!("Decision: {}", view.status),
                body: denial_reason.clone().unwrap_or_default(),
            });
        }
        history.sort_by_key(|h| h.at);
        let can_appeal = view.status == Status::Denied
            && view.kind != Kind::Appeal
            && db::applications::appeal_of(pool, &view.id).await?.is_none();
        let reapply_from = match (view.status, view.decided_at) {
            (Status::Denied, Some(at)) => {
                let days = db::models::find_model(pool, &view.model_id)
                    .await?
                    .map_or(0, |m| m.reapply_after_days);
                Some(at.saturating_add(days.saturating_mul(86_400_000)))
            }
            _ => None,
        };
        mine.push(MyApplication {
            next_step: applications::next_step(view.status, view.kind, typical[&view.model_id]),
            answers: questions::stored_answers(&view.answers),
            can_answer: view.status == Status::InfoRequested,
            can_appeal,
            reapply_from,
            denial_reason,
            history,
            view,
        });
    }
    Ok(mine)
}

/// A researcher's grants, newest first.
pub(crate) async fn my_grants(app: &App, researcher: &Researcher) -> Result<Vec<GrantView>> {
    Ok(db::grants::list_of_researcher(app.db.pool(), &researcher.id).await?)
}

/// A grant of this researcher.
pub(crate) async fn my_grant(app: &App, researcher: &Researcher, grant_id: &str) -> Result<GrantView> {
    let grant = db::grants::find_view(app.db.pool(), grant_id)
        .await?
        .ok_or(ResearcherError::NotFound)?;
    crate::domain::authz::researcher_owns(&researcher.id, &grant.researcher_id)?;
    Ok(grant)
}

/// An application of this researcher.
pub(crate) async fn my_application(
    app: &App,
    researcher: &Researcher,
    application_id: &str,
) -> Result<ApplicationView> {
    let application = db::applications::find_view(app.db.pool(), application_id)
        .await?
        .ok_or(ResearcherError::NotFound)?;
    crate::domain::authz::researcher_owns(&researcher.id, &application.researcher_id)?;
    Ok(application)
}

/// Appeals a denial, once: a new application marked as an appeal, linked to
/// the denied one, straight to the reviewers with the researcher's words.
pub(crate) async fn appeal(
    app: &App,
    researcher: &Researcher,
    denied_id: &str,
    why: &str,
    client: Client,
) -> Result<String> {
    let denied = my_application(app, researcher, denied_id).await?;
    let why = text(why, MAX_INTENDED_USE, "Your appeal").map_err(ResearcherError::Invalid)?;
    if denied.status != Status::Denied || denied.kind == Kind::Appeal {
        return Err(ResearcherError::NotAllowed(
            "only a denied application can be appealed, and an appeal cannot be".into(),
        )
        .into());
    }
    let now = now_ms();
    let mut tx = app.db.begin().await?;
    if db::applications::appeal_of(&mut *tx, &denied.id).await?.is_some() {
        return Err(ResearcherError::NotAllowed(
            "this decision was already appealed; a denial can be appealed once".into(),
        )
        .into());
    }
    let id =
        applications::insert_follow_up(&mut tx, &denied, FollowUp::Appeal, denied.terms_version, now).await?;
    db::applications::insert_message(
        &mut tx,
        &db::applications::Message {
            id: new_id(),
            application_id: id.clone(),
            author_kind: Author::Researcher,
            author_email: researcher.email.clone(),
            body: why,
            created_at: now,
        },
    )
    .await?;
    let event = Event::ok(Action::ApplicationAppealed)
        .actor(researcher.email.clone())
        .subject(researcher.email.clone())
        .reason(format!("appeal of {}", denied.id))
        .model(denied.model_id.clone())
        .application_id(id.clone())
        .researcher(researcher.id.clone())
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(id)
}
