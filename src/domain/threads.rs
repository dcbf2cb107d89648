//! The question thread of an application: a reviewer asks for more
//! information, the researcher answers, and the application goes back to the
//! reviewers. Every step is audited with who took it.

use crate::{
    app::App,
    audit::{self, Action, Client, Event},
    db::{self, applications::Message, reviewers::Reviewer},
    domain::error::Result,
    domain::forms::text,
    domain::researchers::{self, Researcher, ResearcherError},
    domain::reviews::ReviewError,
    mail,
    types::{
        new_id, now_ms,
        states::{Author, Status},
    },
};

pub(crate) const MAX_MESSAGE: usize = 5000;

fn message(application_id: &str, author_kind: Author, author_email: &str, body: String) -> Message {
    Message {
        id: new_id(),
        application_id: application_id.to_owned(),
        author_kind,
        author_email: author_email.to_owned(),
        body,
        created_at: now_ms(),
    }
}

/// A reviewer asks the applicant for more information: the application waits
/// for the answer (`info_requested`), and the researcher is e-mailed the
/// question with a sign-in link.
pub(crate) async fn ask(
    app: &App,
    reviewer: &Reviewer,
    application_id: &str,
    question: &str,
    client: Client,
) -> Result<()> {
    let view = db::applications::find_view(app.db.pool(), application_id)
        .await?
        .ok_or(ReviewError::NotFound)?;
    crate::domain::authz::reviewer_may(
        app,
        reviewer,
        crate::domain::authz::ReviewerAction::Act {
            model_id: &view.model_id,
        },
    )
    .await?;
    let question = text(question, MAX_MESSAGE, "The question").map_err(ResearcherError::Invalid)?;
    let mut tx = app.db.begin().await?;
    // A follow-up question while the first is unanswered is fine too.
    if !db::applications::set_status(&mut tx, &view.id, Status::Pending, Status::InfoRequested).await?
        && view.status != Status::InfoRequested
    {
        return Err(ReviewError::NotPending(view.status.to_string()).into());
    }
    db::applications::insert_message(
        &mut tx,
        &message(&view.id, Author::Reviewer, &reviewer.email, question.clone()),
    )
    .await?;
    let signin = researchers::issue_signin_link(&mut tx, app, &view.researcher_id).await?;
    mail::enqueue(
        &mut tx,
        &view.email,
        &format!("A question about your application for {}", view.model_title),
        &format!(
            "Hello {name},\n\nthe reviewers of your application for {title} ask:\n\n{question}\n\n\
             Sign in to answer on My applications (this link works once, for {minutes} minutes;\n\
             later, ask for a new one at {again}):\n\n{signin}\n",
            name = view.name,
            title = view.model_title,
            minutes = researchers::SIGNIN_LINK_TTL_MS / 60_000,
            again = app.url("/signin"),
        ),
    )
    .await?;
    let event = Event::ok(Action::ApplicationQuestion)
        .actor(reviewer.email.clone())
        .about_application(&view)
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(())
}

/// The researcher answers the reviewers' question; the application goes
/// back to the queue.
pub(crate) async fn answer(
    app: &App,
    researcher: &Researcher,
    application_id: &str,
    answer: &str,
    client: Client,
) -> Result<()> {
    let view = researchers::my_application(app, researcher, application_id).await?;
    let answer = text(answer, MAX_MESSAGE, "Your answer").map_err(ResearcherError::Invalid)?;
    let mut tx = app.db.begin().await?;
    if !db::applications::set_status(&mut tx, &view.id, Status::InfoRequested, Status::Pending).await? {
        return Err(ResearcherError::NotAllowed(
            "the reviewers are not waiting for an answer on this application".into(),
        )
        .into());
    }
    db::applications::insert_message(
        &mut tx,
        &message(&view.id, Author::Researcher, &researcher.email, answer.clone()),
    )
    .await?;
    let event = Event::ok(Action::ApplicationAnswered)
        .actor(researcher.email.clone())
        .subject(researcher.email.clone())
        .model(view.model_id.clone())
        .application_id(view.id.clone())
        .researcher(researcher.id.clone())
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    crate::domain::notices::application_answered(app, &view, &answer).await
}
