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
    let disabled = ok && reviewer.as_ref().is_some_and(|r| r.disabled_at.is_some());
    let signed_in = reviewer.filter(|r| ok && r.disabled_at.is_none());
    let mut event = Event::new(
        "reviewer.sign_in",
        if signed_in.is_some() {
            Outcome::Ok
        } else {
            Outcome::Refused
        },
    );
    if signed_in.is_none() {
        event.reason = Some(if disabled { "disabled" } else { "bad_credentials" }.into());
    }
    event.subject = Some(email.chars().take(254).collect());
    event.actor = signed_in.as_ref().map(|r| r.email.clone());
    event.client = client;
    audit::append_now(&app.db, event).await?;
    Ok(signed_in)
}

/// What an admin changes about a reviewer.
#[derive(Debug, Clone, Copy)]
pub enum ReviewerChange<'a> {
    Admin(bool),
    Disabled(bool),
    Notify(&'a str),
}

/// Changes a reviewer's role, access or notifications, audited.
pub async fn change_reviewer(
    app: &App,
    id: &str,
    change: ReviewerChange<'_>,
    actor: &str,
) -> anyhow::Result<()> {
    let reviewer = db::reviewers::find(app.db.pool(), id)
        .await?
        .ok_or_else(|| crate::policy::PolicyError::NoReviewer(id.to_owned()))?;
    let mut tx = app.db.begin().await?;
    let what = match change {
        ReviewerChange::Admin(admin) => {
            db::reviewers::set_admin(&mut *tx, id, admin).await?;
            if admin { "made admin" } else { "made reviewer" }.to_owned()
        }
        ReviewerChange::Disabled(disabled) => {
            db::reviewers::set_disabled(&mut *tx, id, disabled.then(now_ms)).await?;
            // Open sessions stop working too: every request checks the account.
            if disabled { "disabled" } else { "enabled" }.to_owned()
        }
        ReviewerChange::Notify(notify) => {
            if !NOTIFY.contains(&notify) {
                return Err(crate::policy::PolicyError::Invalid(format!(
                    "notifications are one of {}",
                    NOTIFY.join(", ")
                ))
                .into());
            }
            db::reviewers::set_notify(&mut *tx, id, notify).await?;
            format!("notifications: {notify}")
        }
    };
    let mut event = Event::new("reviewer.changed", Outcome::Ok);
    event.actor = Some(actor.to_owned());
    event.subject = Some(reviewer.email);
    event.reason = Some(what);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(())
}

/// How a reviewer may choose to hear of waiting applications.
pub const NOTIFY: [&str; 3] = ["immediate", "digest", "off"];

/// Audits a sign-in refused because of too many attempts.
pub async fn record_throttled(app: &App, email: &str, client: Client) -> anyhow::Result<()> {
    let mut event = Event::new("reviewer.sign_in", Outcome::Refused);
    event.reason = Some("throttled".into());
    event.subject = Some(email.chars().take(254).collect());
    event.client = client;
    audit::append_now(&app.db, event).await?;
    Ok(())
}

/// Limits failed sign-ins per account and per client address, so that
/// passwords cannot be guessed at speed. Failures on accounts that do not
/// exist count the same, so the limit says nothing about which exist; a
/// blocked account or address is refused even the right password until the
/// wait is over.
#[derive(Debug)]
pub struct SignInThrottle {
    accounts: governor::DefaultKeyedRateLimiter<String>,
    addresses: governor::DefaultKeyedRateLimiter<String>,
    /// Keys over their limit, and until when.
    blocked: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Default for SignInThrottle {
    fn default() -> Self {
        Self::new(ACCOUNT_BURST, ACCOUNT_REFILL, ADDRESS_BURST, ADDRESS_REFILL)
    }
}

/// Failures on one account before it is slowed down, then one per refill period.
const ACCOUNT_BURST: u32 = 5;
const ACCOUNT_REFILL: std::time::Duration = std::time::Duration::from_secs(60);
/// Failures from one address (over every account), then one per refill period.
const ADDRESS_BURST: u32 = 20;
const ADDRESS_REFILL: std::time::Duration = std::time::Duration::from_secs(10);

impl SignInThrottle {
    pub fn new(
        account_burst: u32,
        account_refill: std::time::Duration,
        address_burst: u32,
        address_refill: std::time::Duration,
    ) -> Self {
        let quota = |burst: u32, refill| {
            governor::Quota::with_period(refill)
                .expect("a refill period is not zero")
                .allow_burst(std::num::NonZeroU32::new(burst.max(1)).expect("at least one"))
        };
        Self {
            accounts: governor::RateLimiter::keyed(quota(account_burst, account_refill)),
            addresses: governor::RateLimiter::keyed(quota(address_burst, address_refill)),
            blocked: Default::default(),
        }
    }

    fn keys(email: &str, address: Option<&str>) -> Vec<String> {
        let mut keys = vec![format!("account {}", email.trim().to_lowercase())];
        if let Some(address) = address {
            keys.push(format!("address {address}"));
        }
        keys
    }

    /// `Err` with the time left when the account or the address is blocked.
    pub fn check(&self, email: &str, address: Option<&str>) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let blocked = self
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wait = Self::keys(email, address)
            .iter()
            .filter_map(|k| blocked.get(k))
            .filter_map(|until| until.checked_duration_since(now))
            .max();
        wait.map_or(Ok(()), Err)
    }

    /// Counts a failed sign-in; `Err` with the time to wait when this one
    /// went over a limit, which then blocks further attempts.
    pub fn failed(&self, email: &str, address: Option<&str>) -> Result<(), std::time::Duration> {
        use governor::clock::{Clock, DefaultClock};
        let now = DefaultClock::default().now();
        let keys = Self::keys(email, address);
        let mut wait = None;
        for (key, limiter) in keys.iter().zip([&self.accounts, &self.addresses]) {
            if let Err(not_until) = limiter.check_key(key) {
                let w = not_until.wait_time_from(now);
                wait = Some(wait.map_or(w, |old: std::time::Duration| old.max(w)));
                let mut blocked = self
                    .blocked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if blocked.len() > 100_000 {
                    let now = std::time::Instant::now();
                    blocked.retain(|_, until| *until > now);
                    limiter.retain_recent();
                }
                blocked.insert(key.clone(), std::time::Instant::now() + w);
            }
        }
        wait.map_or(Ok(()), Err)
    }
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

    #[test]
    fn sign_in_is_throttled_per_account_and_per_address() {
        let minute = std::time::Duration::from_secs(60);
        let t = SignInThrottle::new(2, minute, 3, minute);
        assert!(t.failed("a@example.org", Some("10.0.0.1")).is_ok());
        assert!(t.failed("A@example.org ", Some("10.0.0.2")).is_ok());
        assert!(
            t.check("a@example.org", Some("10.0.0.3")).is_ok(),
            "two failures are allowed"
        );
        let wait = t.failed("a@example.org", Some("10.0.0.3")).unwrap_err();
        assert!(wait > std::time::Duration::from_secs(1), "{wait:?}");
        assert!(
            t.check("a@example.org", Some("10.0.0.9")).is_err(),
            "the account is blocked"
        );
        // Another account from a fresh address is not affected...
        assert!(t.check("b@example.org", Some("10.0.0.4")).is_ok());
        // ...but one address cannot try accounts without end.
        for account in ["c@example.org", "d@example.org", "e@example.org"] {
            assert!(t.failed(account, Some("10.0.0.5")).is_ok());
        }
        assert!(t.failed("f@example.org", Some("10.0.0.5")).is_err());
        assert!(
            t.check("g@example.org", Some("10.0.0.5")).is_err(),
            "the address is blocked"
        );
    }
}
