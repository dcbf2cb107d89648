//! How each model is reviewed, changed by admins: approvals needed (N of M),
//! automatic approval by e-mail domain, the overdue target, which reviewers
//! decide for it, and the denial templates reviewers start from. Every change
//! is audited with the admin's identity.

use crate::{
    app::App,
    audit::{self, Action, Event},
    db::{self, policy::DenyTemplate},
    domain::error::Result,
    domain::reviews::allowed_domains,
    types::{Email, new_id, now_ms},
};

pub(crate) const MAX_APPROVALS: i64 = 10;
pub(crate) const MAX_TARGET_DAYS: i64 = 365;
const MAX_TEMPLATE: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PolicyError {
    #[error("no model {0}")]
    NoModel(String),
    #[error("no reviewer {0}")]
    NoReviewer(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<PolicyError> for crate::domain::Error {
    fn from(err: PolicyError) -> Self {
        match err {
            PolicyError::NoModel(_) | PolicyError::NoReviewer(_) | PolicyError::Invalid(_) => {
                Self::invalid(err.to_string())
            }
        }
    }
}

/// A policy as an admin sets it.
#[derive(Debug, Clone)]
pub struct PolicyChange {
    pub approvals_needed: i64,
    pub auto_approve_domains: String,
    pub review_target_days: i64,
}

fn audited(action: Action, actor: &str, subject: String, reason: Option<String>) -> Event {
    let mut event = Event::ok(action).actor(actor).subject(subject);
    event.reason = reason;
    event
}

pub async fn set(app: &App, slug: &str, change: &PolicyChange, actor: &str) -> Result<()> {
    if !(1..=MAX_APPROVALS).contains(&change.approvals_needed) {
        return Err(PolicyError::Invalid(format!("approvals needed is 1 to {MAX_APPROVALS}")).into());
    }
    if !(1..=MAX_TARGET_DAYS).contains(&change.review_target_days) {
        return Err(PolicyError::Invalid(format!("the review target is 1 to {MAX_TARGET_DAYS} days")).into());
    }
    let domains = allowed_domains(Some(&change.auto_approve_domains));
    if let Some(bad) = domains.iter().find(|d| !is_domain(d)) {
        return Err(PolicyError::Invalid(format!("{bad:?} is not an e-mail domain")).into());
    }
    let model = db::models::find_model_by_slug(app.db.pool(), slug)
        .await?
        .ok_or_else(|| PolicyError::NoModel(slug.to_owned()))?;
    let policy = db::policy::ReviewPolicy {
        model_id: model.id.clone(),
        model_slug: model.slug.clone(),
        approvals_needed: change.approvals_needed,
        auto_approve_domains: (!domains.is_empty()).then(|| domains.join(", ")),
        review_target_days: change.review_target_days,
    };
    let mut tx = app.db.begin().await?;
    db::policy::set(&mut tx, &policy).await?;
    let mut event = audited(
        Action::ModelPolicy,
        actor,
        model.slug.clone(),
        Some(format!(
            "approvals needed {}, automatic approval for [{}], target {} days",
            policy.approvals_needed,
            domains.join(", "),
            policy.review_target_days
        )),
    );
    event.model_id = Some(model.id);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(())
}

fn is_domain(d: &str) -> bool {
    d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Assigns (or with `assign == false` unassigns) a reviewer to a model;
/// returns whether anything changed.
pub async fn assign(app: &App, slug: &str, email: &Email, assign: bool, actor: &str) -> Result<bool> {
    let model = db::models::find_model_by_slug(app.db.pool(), slug)
        .await?
        .ok_or_else(|| PolicyError::NoModel(slug.to_owned()))?;
    let reviewer = db::reviewers::find_by_email(app.db.pool(), email.as_str())
        .await?
        .ok_or_else(|| PolicyError::NoReviewer(email.to_string()))?;
    let mut tx = app.db.begin().await?;
    let changed = if assign {
        db::policy::assign(&mut tx, &model.id, &reviewer.id).await?
    } else {
        db::policy::unassign(&mut tx, &model.id, &reviewer.id).await?
    };
    if changed {
        let mut event = audited(
            if assign {
                Action::ReviewerAssigned
            } else {
                Action::ReviewerUnassigned
            },
            actor,
            format!("{} {}", reviewer.email, model.slug),
            None,
        );
        event.model_id = Some(model.id);
        audit::append(&mut tx, app.db.backend(), &[event]).await?;
    }
    tx.commit().await?;
    Ok(changed)
}

pub async fn save_template(app: &App, title: &str, body: &str, actor: &str) -> Result<()> {
    let (title, body) = (title.trim(), body.trim());
    if title.is_empty() || title.chars().count() > 100 {
        return Err(PolicyError::Invalid("a template needs a title of at most 100 characters".into()).into());
    }
    if body.is_empty() || body.chars().count() > MAX_TEMPLATE {
        return Err(
            PolicyError::Invalid(format!("a template's text is 1 to {MAX_TEMPLATE} characters")).into(),
        );
    }
    let mut tx = app.db.begin().await?;
    db::policy::save_deny_template(
        &mut tx,
        &DenyTemplate {
            id: new_id(),
            title: title.to_owned(),
            body: body.to_owned(),
            created_at: now_ms(),
        },
    )
    .await?;
    let event = audited(Action::TemplateSaved, actor, title.to_owned(), None);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn delete_template(app: &App, id: &str, actor: &str) -> Result<bool> {
    let mut tx = app.db.begin().await?;
    let Some(title) = db::policy::delete_deny_template(&mut tx, id).await? else {
        return Ok(false);
    };
    let event = audited(Action::TemplateDeleted, actor, title, None);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_domains_go_in_the_allow_list() {
        assert!(is_domain("uni.example.edu"));
        assert!(is_domain("xn--bcher-kva.example"));
        assert!(!is_domain("localhost"));
        assert!(!is_domain("-bad.example"));
        assert!(!is_domain("a..b"));
        assert!(!is_domain("<script>.example"));
    }
}
