//! Applications for access: the form's rules, submission with an e-mail
//! check, and confirmation that puts an application in the reviewers' queue.

use std::collections::BTreeMap;

use serde::Deserialize;

pub(crate) use crate::domain::forms::FieldErrors;
use crate::{
    app::App,
    audit::{self, Action, Client, Event, Outcome},
    db::{self, applications::ApplicationView, models::Model},
    domain::error::Result,
    domain::forms::{single_line, text},
    domain::questions::{self, Answer},
    mail,
    types::{
        Email, format_ms, hash_token, new_id, new_token, now_ms,
        states::{Kind, Status},
    },
};

pub(crate) const MAX_NAME: usize = 200;
pub(crate) const MAX_AFFILIATION: usize = 300;
pub(crate) const MAX_INTENDED_USE: usize = 5000;

/// The application form as submitted. Field names are part of the public
/// interface: people script against them.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct ApplicationForm {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) email: String,
    #[serde(default)]
    pub(crate) affiliation: String,
    #[serde(default)]
    pub(crate) intended_use: String,
    #[serde(default)]
    pub(crate) accept_terms: Option<String>,
    /// The version of the terms the form showed.
    #[serde(default)]
    pub(crate) terms_version: Option<String>,
    /// Every other field: the answers to the model's questions (`q_ID`).
    #[serde(flatten)]
    pub(crate) answers: BTreeMap<String, String>,
}

/// A form that passed every check.
#[derive(Debug)]
pub(crate) struct ValidApplication {
    pub(crate) name: String,
    pub(crate) email: Email,
    pub(crate) affiliation: String,
    pub(crate) intended_use: String,
    pub(crate) answers: Vec<Answer>,
    pub(crate) terms_version: i64,
}

impl ApplicationForm {
    /// Checks the form against the model's questions and its current terms.
    pub(crate) fn validate(&self, model: &Model) -> Result<ValidApplication, FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut report = |field: &str, e: String| {
            errors.insert(field.to_owned(), e);
        };
        let name = single_line(&self.name, MAX_NAME, "Your name").map_err(|e| report("name", e));
        let email = self
            .email
            .parse::<Email>()
            .map_err(|e| report("email", e.to_owned()));
        let affiliation = single_line(&self.affiliation, MAX_AFFILIATION, "Affiliation")
            .map_err(|e| report("affiliation", e));
        let intended_use =
            text(&self.intended_use, MAX_INTENDED_USE, "Intended use").map_err(|e| report("intended_use", e));
        let accepted = matches!(self.accept_terms.as_deref(), Some("on" | "true" | "yes" | "1"));
        let shown = self.terms_version.as_deref().map(str::trim);
        if !accepted {
            report("accept_terms", "You must accept the terms to apply".into());
        } else if shown.is_some_and(|v| v != model.terms_version.to_string()) {
            report(
                "accept_terms",
                format!(
                    "The terms changed while you were reading them: please read version {} above and accept it",
                    model.terms_version
                ),
            );
        }
        let answers = questions::validate_answers(&questions::stored(&model.questions), &self.answers)
            .map_err(|e| errors.extend(e));
        match (name, email, affiliation, intended_use, answers) {
            (Ok(name), Ok(email), Ok(affiliation), Ok(intended_use), Ok(answers)) if errors.is_empty() => {
                Ok(ValidApplication {
                    name,
                    email,
                    affiliation,
                    intended_use,
                    answers,
                    terms_version: model.terms_version,
                })
            }
            _ => Err(errors),
        }
    }
}

/// Whether a researcher may send a new application for a model now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Eligibility {
    Open,
    /// An application is already with the reviewers.
    Waiting {
        application_id: String,
    },
    /// Access is granted and still active: a renewal is the way to go on.
    HasAccess {
        expires_at: i64,
    },
    /// The last application was denied; a new one is welcome from `from`.
    Cooldown {
        from: i64,
        denied_id: String,
    },
}

impl Eligibility {
    /// Why a new application is not possible now, in words.
    pub(crate) fn explain(&self, model_title: &str) -> String {
        match self {
            Eligibility::Open => String::new(),
            Eligibility::Waiting { .. } => format!(
                "You already have an application for {model_title} with the reviewers. \
                 You can follow it on My applications."
            ),
            Eligibility::HasAccess { expires_at } => format!(
                "You already have access to {model_title} until {} UTC. \
                 You can ask for a renewal on My access.",
                format_ms(*expires_at)
            ),
            Eligibility::Cooldown { from, .. } => format!(
                "Your last application for {model_title} was denied. You can apply again from {} UTC; \
                 until then you can appeal the decision once from My applications.",
                format_ms(*from)
            ),
        }
    }
}

const DAY_MS: i64 = 86_400_000;

/// Whether `researcher_id` may apply for `model` now.
pub(crate) async fn eligibility(app: &App, researcher_id: &str, model: &Model) -> Result<Eligibility> {
    let now = now_ms();
    let mine: Vec<ApplicationView> = db::applications::list_of_researcher(app.db.pool(), researcher_id)
        .await?
        .into_iter()
        .filter(|a| a.model_id == model.id)
        .collect();
    if let Some(waiting) = mine.iter().find(|a| a.status.is_open()) {
        return Ok(Eligibility::Waiting {
            application_id: waiting.id.clone(),
        });
    }
    let grants = db::grants::list_of_researcher(app.db.pool(), researcher_id).await?;
    if let Some(grant) = grants.iter().find(|g| {
        g.model_id == model.id
            && crate::domain::grants::GrantState::of(g, now) == crate::domain::grants::GrantState::Active
    }) {
        return Ok(Eligibility::HasAccess {
            expires_at: grant.expires_at,
        });
    }
    let last_decided = mine
        .iter()
        .filter(|a| a.decided_at.is_some())
        .max_by_key(|a| a.decided_at);
    if let Some(denied) = last_decided.filter(|a| a.status == Status::Denied) {
        let from = denied
            .decided_at
            .unwrap_or(now)
            .saturating_add(model.reapply_after_days.saturating_mul(DAY_MS));
        if now < from {
            return Ok(Eligibility::Cooldown {
                from,
                denied_id: denied.id.clone(),
            });
        }
    }
    Ok(Eligibility::Open)
}

/// Records the application and queues the e-mail that confirms the address;
/// or, when the address may not apply now, queues an e-mail saying why. The
/// caller learns neither, so the form reveals nothing about anyone's
/// applications: only the address's owner hears which it was.
pub(crate) async fn submit(app: &App, model: &Model, form: ValidApplication, client: Client) -> Result<()> {
    let now = now_ms();
    if let Some(researcher_id) = db::researchers::find_id_by_email(app.db.pool(), form.email.as_str()).await?
    {
        let eligibility = eligibility(app, &researcher_id, model).await?;
        if eligibility != Eligibility::Open {
            decline(app, model, &form, &researcher_id, &eligibility, client).await?;
            return Ok(());
        }
    }
    let token = new_token();
    let id = new_id();
    let confirm_url = app.url(&format!("/confirm/{token}"));
    let answers = serde_json::to_string(&form.answers)?;

    let mut tx = app.db.begin().await?;
    let researcher_id =
        db::applications::upsert_researcher(&mut tx, &new_id(), form.email.as_str(), now).await?;
    db::applications::insert_application(
        &mut tx,
        &db::applications::NewApplication {
            id: &id,
            model_id: &model.id,
            researcher_id: &researcher_id,
            name: &form.name,
            affiliation: &form.affiliation,
            intended_use: &form.intended_use,
            terms_version: form.terms_version,
            confirm_token_hash: &hash_token(&token),
            created_at: now,
            status: Status::Unconfirmed,
            confirmed_at: None,
            answers: &answers,
            kind: Kind::New,
            parent_id: None,
            grant_id: None,
        },
    )
    .await?;
    mail::enqueue(
        &mut tx,
        form.email.as_str(),
        &format!("Confirm your application for {}", model.title),
        &format!(
            "Hello {name},\n\nyou applied for access to {title}.\n\
             Please confirm your e-mail address so that the reviewers\n\
             can consider your application:\n\n{confirm_url}\n\n\
             If you did not apply, ignore this message.\n",
            name = form.name,
            title = model.title,
        ),
    )
    .await?;
    let event = Event::ok(Action::ApplicationSubmitted)
        .subject(form.email.to_string())
        .model(model.id.clone())
        .application_id(id.clone())
        .researcher(researcher_id)
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    // The confirmation URL is a secret for the applicant's inbox alone: it
    // stays out of the logs.
    tracing::info!(application = %id, "application submitted; confirmation e-mail queued");
    Ok(())
}

/// Tells the owner of the address why their new application was not recorded.
async fn decline(
    app: &App,
    model: &Model,
    form: &ValidApplication,
    researcher_id: &str,
    eligibility: &Eligibility,
    client: Client,
) -> Result<()> {
    let mut tx = app.db.begin().await?;
    mail::enqueue(
        &mut tx,
        form.email.as_str(),
        &format!("Your new application for {}", model.title),
        &format!(
            "Hello {name},\n\nsomeone (probably you) applied for access to {title} with this address.\n\
             The application was not recorded:\n\n{why}\n\n\
             Sign in with this address to see your applications and access:\n\n{signin}\n",
            name = form.name,
            title = model.title,
            why = eligibility.explain(&model.title),
            signin = app.url("/signin"),
        ),
    )
    .await?;
    let mut event = Event::new(Action::ApplicationDeclined, Outcome::Refused);
    event.reason = Some(
        match eligibility {
            Eligibility::Open => "open",
            Eligibility::Waiting { .. } => "already_waiting",
            Eligibility::HasAccess { .. } => "has_access",
            Eligibility::Cooldown { .. } => "reapply_cooldown",
        }
        .to_owned(),
    );
    event.subject = Some(form.email.to_string());
    event.model_id = Some(model.id.clone());
    event.researcher_id = Some(researcher_id.to_owned());
    event.client = client;
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    Ok(())
}

/// The median time from confirmation to decision over the model's latest
/// decisions, in milliseconds; `None` before the first decision.
pub(crate) async fn typical_review_time(app: &App, model_id: &str) -> Result<Option<i64>> {
    let mut durations = db::models::recent_review_durations(app.db.pool(), model_id, 50).await?;
    durations.retain(|d| *d >= 0);
    durations.sort_unstable();
    Ok(match durations.len() {
        0 => None,
        n if n % 2 == 1 => Some(durations[n / 2]),
        n => Some((durations[n / 2 - 1] + durations[n / 2]) / 2),
    })
}

/// A duration in words, rounded the way people say it.
pub(crate) fn describe_duration(ms: i64) -> String {
    let minutes = ms / 60_000;
    let hours = (ms + 1_800_000) / 3_600_000;
    let days = (ms + DAY_MS / 2) / DAY_MS;
    match ms {
        _ if minutes < 60 => "under an hour".into(),
        _ if hours == 1 => "about an hour".into(),
        _ if hours < 36 => format!("about {hours} hours"),
        _ if days < 14 => format!("about {days} days"),
        _ => format!("about {} weeks", (days + 3) / 7),
    }
}

/// What a follow-up of an earlier application asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum FollowUp<'a> {
    /// A longer life for this grant (of the earlier application).
    Renewal { grant_id: &'a str },
    /// Another look at the earlier application, which was denied.
    Appeal,
}

/// Records a follow-up of `earlier` inside `tx`: the same researcher, model,
/// words and answers, straight to the reviewers (the address is already
/// confirmed), under the terms version given. New applications are recorded
/// by [`submit`], which asks for the address to be confirmed first. Returns
/// the follow-up's id.
pub(crate) async fn insert_follow_up(
    tx: &mut db::Tx,
    earlier: &ApplicationView,
    follow_up: FollowUp<'_>,
    terms_version: i64,
    now: i64,
) -> Result<String> {
    let id = new_id();
    let (kind, parent_id, grant_id) = match follow_up {
        FollowUp::Renewal { grant_id } => (Kind::Renewal, None, Some(grant_id)),
        FollowUp::Appeal => (Kind::Appeal, Some(earlier.id.as_str()), None),
    };
    db::applications::insert_application(
        tx,
        &db::applications::NewApplication {
            id: &id,
            model_id: &earlier.model_id,
            researcher_id: &earlier.researcher_id,
            name: &earlier.name,
            affiliation: &earlier.affiliation,
            intended_use: &earlier.intended_use,
            terms_version,
            // Never sent: a follow-up needs no confirmation.
            confirm_token_hash: &hash_token(&new_token()),
            created_at: now,
            status: Status::Pending,
            confirmed_at: Some(now),
            answers: &earlier.answers,
            kind,
            parent_id,
            grant_id,
        },
    )
    .await?;
    Ok(id)
}

/// A status in the researcher's words.
pub(crate) fn status_label(status: Status) -> &'static str {
    match status {
        Status::Unconfirmed => "e-mail not confirmed",
        Status::Pending => "with the reviewers",
        Status::InfoRequested => "question for you",
        Status::Approved => "approved",
        Status::Denied => "denied",
    }
}

/// What a researcher reads about an application in each state: what happens
/// next, and when.
pub(crate) fn next_step(status: Status, kind: Kind, typical: Option<i64>) -> String {
    let wait = match typical {
        Some(ms) => format!("Reviews of this model usually take {}.", describe_duration(ms)),
        None => "This model has no decisions yet, so we cannot say how long reviews take.".into(),
    };
    match status {
        Status::Unconfirmed => "Confirm your e-mail address with the link we sent you; until then the \
                          reviewers do not see this application."
            .into(),
        Status::Pending => format!("The reviewers will decide and e-mail you. {wait}"),
        Status::InfoRequested => "The reviewers asked you a question: answer it below, and the \
                             application goes back to them."
            .into(),
        Status::Approved if kind == Kind::Renewal => {
            "Approved: your access was extended; see My access.".into()
        }
        Status::Approved => "Approved: your files are on My access.".into(),
        Status::Denied => "Denied. The reviewers' reason is below.".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfirmError {
    #[error("this confirmation link is not valid")]
    UnknownToken,
}

impl From<ConfirmError> for crate::domain::Error {
    fn from(err: ConfirmError) -> Self {
        match err {
            ConfirmError::UnknownToken => Self::not_found(err.to_string()),
        }
    }
}

/// The application a confirmation token belongs to.
pub(crate) async fn find_by_token(app: &App, token: &str) -> Result<Option<ApplicationView>> {
    Ok(db::applications::find_view_by_token(app.db.pool(), &hash_token(token)).await?)
}

/// Confirms the e-mail address behind `token`, moving the application to the
/// reviewers' queue. Confirming twice is harmless.
pub(crate) async fn confirm(app: &App, token: &str, client: Client) -> Result<ApplicationView> {
    let view = find_by_token(app, token)
        .await?
        .ok_or(ConfirmError::UnknownToken)?;
    let mut tx = app.db.begin().await?;
    let confirmed = db::applications::mark_confirmed(&mut tx, &view.id, now_ms()).await?;
    if confirmed {
        let event = Event::ok(Action::ApplicationConfirmed)
            .about_application(&view)
            .client(client.clone());
        audit::append(&mut tx, app.db.backend(), &[event]).await?;
    }
    tx.commit().await?;
    if confirmed {
        crate::domain::reviews::on_confirmed(app, &view.id, client).await?;
    }
    let view = db::applications::find_view(app.db.pool(), &view.id)
        .await?
        .ok_or(ConfirmError::UnknownToken)?;
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ApplicationForm {
        ApplicationForm {
            name: "Ada Lovelace".into(),
            email: "ada@example.org".into(),
            affiliation: "Analytical Engines Ltd".into(),
            intended_use: "Evaluation".into(),
            accept_terms: Some("on".into()),
            terms_version: Some("2".into()),
            answers: BTreeMap::new(),
        }
    }

    fn model() -> Model {
        Model {
            id: "m".into(),
            slug: "m".into(),
            title: "M".into(),
            terms: "Be nice.".into(),
            terms_version: 2,
            created_at: 0,
            quota_bytes: None,
            quota_files: None,
            questions: r#"[{"id": "orcid", "label": "ORCID iD", "kind": "url", "required": true}]"#.into(),
            reapply_after_days: 30,
        }
    }

    #[test]
    fn a_complete_form_is_valid() {
        let mut form = good();
        form.answers
            .insert("q_orcid".into(), "https://orcid.org/0000-0002-1825-0097".into());
        let valid = form.validate(&model()).unwrap();
        assert_eq!(valid.email.as_str(), "ada@example.org");
        assert_eq!(valid.terms_version, 2);
        assert_eq!(valid.answers.len(), 1);
    }

    #[test]
    fn terms_that_changed_since_the_form_was_shown_must_be_accepted_again() {
        let mut form = good();
        form.answers
            .insert("q_orcid".into(), "https://orcid.org/x".into());
        form.terms_version = Some("1".into());
        let errors = form.validate(&model()).unwrap_err();
        assert!(errors["accept_terms"].contains("version 2"), "{errors:?}");
    }

    #[test]
    fn durations_read_the_way_people_say_them() {
        assert_eq!(describe_duration(5 * 60_000), "under an hour");
        assert_eq!(describe_duration(3 * 3_600_000), "about 3 hours");
        assert_eq!(describe_duration(3 * DAY_MS), "about 3 days");
        assert_eq!(describe_duration(30 * DAY_MS), "about 4 weeks");
    }

    #[test]
    fn each_problem_is_reported_beside_its_field() {
        let form = ApplicationForm {
            name: " ".into(),
            email: "not-an-address".into(),
            affiliation: "x".repeat(MAX_AFFILIATION + 1),
            intended_use: String::new(),
            accept_terms: None,
            terms_version: None,
            answers: BTreeMap::new(),
        };
        let errors = form.validate(&model()).unwrap_err();
        let fields: Vec<_> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "accept_terms",
                "affiliation",
                "email",
                "intended_use",
                "name",
                "q_orcid"
            ]
        );
    }

    #[test]
    fn header_injection_in_the_name_is_refused() {
        let mut form = good();
        form.name = "Ada\r\nBcc: victim@example.org".into();
        assert!(form.validate(&model()).unwrap_err().contains_key("name"));
    }
}
