//! Reviewer accounts: creation, password hashing (argon2id) and sign-in.

use std::sync::LazyLock;

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};

use crate::{
    app::App,
    audit::{self, Client, Event, Outcome},
    db::{self, reviewers::Reviewer},
    types::{Email, new_id, now_ms},
};

pub const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("a password needs at least {MIN_PASSWORD} characters")]
    PasswordTooShort,
    #[error("a password has at most {MAX_PASSWORD} characters")]
    PasswordTooLong,
}

/// An argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))
}

fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Verified against when an account does not exist, so that a wrong e-mail
/// takes as long as a wrong password.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("weightgate-no-such-account").expect("hashing a constant works"));

/// Creates a reviewer, or sets a new password and role for an existing one.
pub async fn add_reviewer(
    app: &App,
    email: &Email,
    password: &str,
    is_admin: bool,
    actor: &str,
) -> anyhow::Result<String> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AccountError::PasswordTooShort.into());
    }
    if password.len() > MAX_PASSWORD {
        return Err(AccountError::PasswordTooLong.into());
    }
    let owned = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&owned)).await??;
    let mut tx = app.db.begin().await?;
    let id = db::reviewers::upsert(&mut *tx, &new_id(), email.as_str(), &hash, is_admin, now_ms()).await?;
    let mut event = Event::new("reviewer.saved", Outcome::Ok);
    event.actor = Some(actor.to_owned());
    event.subject = Some(format!("{email}{}", if is_admin { " (admin)" } else { "" }));
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(id)
}

/// Checks a reviewer's credentials. Success and failure are both audited;
/// the failure does not say whether the account exists.
pub async fn authenticate(
    app: &App,
    email: &str,
    password: &str,
    client: Client,
) -> anyhow::Result<Option<Reviewer>> {
    let email = email.trim().to_lowercase();
    let reviewer = if password.len() > MAX_PASSWORD {
        None
    } else {
        db::reviewers::find_by_email(app.db.pool(), &email).await?
    };
    let phc = reviewer
        .as_ref()
        .map_or_else(|| DUMMY_HASH.clone(), |r| r.password_hash.clone());
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc)).await?;
    let signed_in = reviewer.filter(|_| ok);
    let mut event = Event::new(
        "reviewer.sign_in",
        if signed_in.is_some() {
            Outcome::Ok
        } else {
            Outcome::Refused
        },
    );
    if signed_in.is_none() {
        event.reason = Some("bad_credentials".into());
    }
    event.subject = Some(email.chars().take(254).collect());
    event.actor = signed_in.as_ref().map(|r| r.email.clone());
    event.client = client;
    audit::append_now(&app.db, event).await?;
    Ok(signed_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("wrong horse battery", &phc));
        assert!(!verify_password("anything", "not a phc string"));
    }
}
