//! Applications for access: the form's rules, submission with an e-mail
//! check, and confirmation that puts an application in the reviewers' queue.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{
    app::App,
    audit::{self, Client, Event, Outcome},
    db::{self, applications::ApplicationView, models::Model},
    mail,
    types::{Email, hash_token, new_id, new_token, now_ms},
};

pub const MAX_NAME: usize = 200;
pub const MAX_AFFILIATION: usize = 300;
pub const MAX_INTENDED_USE: usize = 5000;

/// The application form as submitted. Field names are part of the public
/// interface: people script against them.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ApplicationForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub affiliation: String,
    #[serde(default)]
    pub intended_use: String,
    #[serde(default)]
    pub accept_terms: Option<String>,
}

/// Problems with a submitted form, by field name.
pub type FieldErrors = BTreeMap<&'static str, String>;

/// A form that passed every check.
#[derive(Debug)]
pub struct ValidApplication {
    pub name: String,
    pub email: Email,
    pub affiliation: String,
    pub intended_use: String,
}

fn text(field: &str, max: usize, label: &str) -> Result<String, String> {
    let value = field.trim();
    if value.is_empty() {
        return Err(format!("{label} is required"));
    }
    if value.chars().count() > max {
        return Err(format!("{label} has at most {max} characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err(format!("{label} contains control characters"));
    }
    Ok(value.to_owned())
}

fn single_line(field: &str, max: usize, label: &str) -> Result<String, String> {
    let value = text(field, max, label)?;
    if value.contains(['\n', '\r']) {
        return Err(format!("{label} must be on one line"));
    }
    Ok(value)
}

impl ApplicationForm {
    pub fn validate(&self) -> Result<ValidApplication, FieldErrors> {
        let mut errors = FieldErrors::new();
        let name = single_line(&self.name, MAX_NAME, "Your name").map_err(|e| errors.insert("name", e));
        let email = self
            .email
            .parse::<Email>()
            .map_err(|e| errors.insert("email", e.to_owned()));
        let affiliation = single_line(&self.affiliation, MAX_AFFILIATION, "Affiliation")
            .map_err(|e| errors.insert("affiliation", e));
        let intended_use = text(&self.intended_use, MAX_INTENDED_USE, "Intended use")
            .map_err(|e| errors.insert("intended_use", e));
        let accepted = matches!(self.accept_terms.as_deref(), Some("on" | "true" | "yes" | "1"));
        if !accepted {
            errors.insert("accept_terms", "You must accept the terms to apply".into());
        }
        match (name, email, affiliation, intended_use) {
            (Ok(name), Ok(email), Ok(affiliation), Ok(intended_use)) if errors.is_empty() => {
                Ok(ValidApplication {
                    name,
                    email,
                    affiliation,
                    intended_use,
                })
            }
            _ => Err(errors),
        }
    }
}

/// Records the application and queues the e-mail that confirms the address.
/// Returns the confirmation URL (also logged, for the embedded setup).
pub async fn submit(
    app: &App,
    model: &Model,
    form: ValidApplication,
    client: Client,
) -> anyhow::Result<String> {
    let now = now_ms();
    let token = new_token();
    let id = new_id();
    let confirm_url = app.url(&format!("/confirm/{token}"));

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
            terms_version: model.terms_version,
            confirm_token_hash: &hash_token(&token),
            created_at: now,
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
    let mut event = Event::new("application.submitted", Outcome::Ok);
    event.subject = Some(form.email.to_string());
    event.model_id = Some(model.id.clone());
    event.application_id = Some(id.clone());
    event.researcher_id = Some(researcher_id);
    event.client = client;
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    app.mail.wake();
    tracing::info!(application = %id, email = %form.email, %confirm_url, "application submitted; confirmation e-mail queued");
    Ok(confirm_url)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("this confirmation link is not valid")]
    UnknownToken,
}

/// The application a confirmation token belongs to.
pub async fn find_by_token(app: &App, token: &str) -> anyhow::Result<Option<ApplicationView>> {
    Ok(db::applications::find_view_by_token(app.db.pool(), &hash_token(token)).await?)
}

/// Confirms the e-mail address behind `token`, moving the application to the
/// reviewers' queue. Confirming twice is harmless.
pub async fn confirm(app: &App, token: &str, client: Client) -> anyhow::Result<ApplicationView> {
    let view = find_by_token(app, token)
        .await?
        .ok_or(ConfirmError::UnknownToken)?;
    let mut tx = app.db.begin().await?;
    let confirmed = db::applications::mark_confirmed(&mut tx, &view.id, now_ms()).await?;
    if confirmed {
        let mut event = Event::new("application.confirmed", Outcome::Ok);
        event.subject = Some(view.email.clone());
        event.model_id = Some(view.model_id.clone());
        event.application_id = Some(view.id.clone());
        event.researcher_id = Some(view.researcher_id.clone());
        event.client = client.clone();
        audit::append(&mut tx, app.db.backend(), &[event]).await?;
    }
    tx.commit().await?;
    if confirmed {
        crate::reviews::on_confirmed(app, &view.id, client).await?;
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
        }
    }

    #[test]
    fn a_complete_form_is_valid() {
        let valid = good().validate().unwrap();
        assert_eq!(valid.email.as_str(), "ada@example.org");
    }

    #[test]
    fn each_problem_is_reported_beside_its_field() {
        let form = ApplicationForm {
            name: " ".into(),
            email: "not-an-address".into(),
            affiliation: "x".repeat(MAX_AFFILIATION + 1),
            intended_use: String::new(),
            accept_terms: None,
        };
        let errors = form.validate().unwrap_err();
        let fields: Vec<_> = errors.keys().copied().collect();
        assert_eq!(
            fields,
            ["accept_terms", "affiliation", "email", "intended_use", "name"]
        );
    }

    #[test]
    fn header_injection_in_the_name_is_refused() {
        let mut form = good();
        form.name = "Ada\r\nBcc: victim@example.org".into();
        assert!(form.validate().unwrap_err().contains_key("name"));
    }
}
