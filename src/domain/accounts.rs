//! Reviewer accounts: creation, password hashing (argon2id) and sign-in.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{
    app::App,
    audit::{self, Action, Client, Event, Outcome},
    crypto::passwords::hash_password,
    db::{self, reviewers::Reviewer},
    domain::error::Result,
    types::{Email, new_id, now_ms, states::Notify},
};

pub(crate) const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("a password needs at least {MIN_PASSWORD} characters")]
    PasswordTooShort,
    #[error("a password has at most {MAX_PASSWORD} characters")]
    PasswordTooLong,
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("{0} already has an account; change its role in the list, or its owner changes its password")]
    AlreadyReviewer(Email),
}

impl From<AccountError> for crate::domain::Error {
    fn from(err: AccountError) -> Self {
        match err {
            AccountError::PasswordTooShort | AccountError::PasswordTooLong => Self::invalid(err.to_string()),
            AccountError::WrongPassword => Self::Forbidden {
                code: "wrong_password",
                message: err.to_string(),
            },
            AccountError::AlreadyReviewer(_) => Self::conflict(err.to_string()),
        }
    }
}

/// Verified against when an account does not exist, so that a wrong e-mail
/// takes as long as a wrong password.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("weightgate-no-such-account").expect("hashing a constant works"));

/// Creates a reviewer account, as an admin does from the dashboard. An
/// address that already has an account is refused: an admin changes roles in
/// the reviewer list, and only the account's owner changes its password (with
/// the current one), so that no admin can take over another's account or
/// demote themselves from this form.
pub async fn add_reviewer(
    app: &App,
    email: &Email,
    password: &str,
    is_admin: bool,
    actor: &str,
) -> Result<String> {
    save_reviewer(app, email, password, is_admin, actor, Existing::Refuse).await
}

/// Creates a reviewer, or sets a new password and role for an existing one:
/// the operator's way back in (`weightgate reviewer add`), for whoever holds
/// the server's configuration.
pub(crate) async fn set_reviewer(
    app: &App,
    email: &Email,
    password: &str,
    is_admin: bool,
    actor: &str,
) -> Result<String> {
    save_reviewer(app, email, password, is_admin, actor, Existing::Overwrite).await
}

#[derive(PartialEq)]
enum Existing {
    Refuse,
    Overwrite,
}

async fn save_reviewer(
    app: &App,
    email: &Email,
    password: &str,
    is_admin: bool,
    actor: &str,
    existing: Existing,
) -> Result<String> {
    check_new_password(password)?;
    let owned = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&owned)).await??;
    let mut tx = app.db.begin().await?;
    let id = if existing == Existing::Refuse {
        db::reviewers::insert(&mut *tx, &new_id(), email.as_str(), &hash, is_admin, now_ms())
            .await?
            .ok_or_else(|| AccountError::AlreadyReviewer(email.clone()))?
    } else {
        db::reviewers::upsert(&mut *tx, &new_id(), email.as_str(), &hash, is_admin, now_ms()).await?
    };
    let event = Event::ok(Action::ReviewerSaved)
        .actor(actor.to_owned())
        .subject(format!("{email}{}", if is_admin { " (admin)" } else { "" }));
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(id)
}

/// Checks a reviewer's credentials. Success and failure are both audited;
/// the failure does not say whether the account exists.
pub(crate) async fn authenticate(
    app: &App,
    email: &str,
    password: &str,
    client: Client,
) -> Result<Option<Reviewer>> {
    let email = Email::lookup_key(email);
    let reviewer = if password.len() > MAX_PASSWORD {
        None
    } else {
        db::reviewers::find_by_email(app.db.pool(), &email).await?
    };
    let phc = reviewer
        .as_ref()
        .map_or_else(|| DUMMY_HASH.clone(), |r| r.password_hash.clone());
    let ok = app.passwords.verify(password, phc).await?;
    let disabled = ok && reviewer.as_ref().is_some_and(|r| r.disabled_at.is_some());
    let signed_in = reviewer.filter(|r| ok && r.disabled_at.is_none());
    let mut event = Event::new(
        Action::ReviewerSignIn,
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

/// A short fingerprint of the reviewer's password hash and session epoch.
/// A session keeps the one it signed in with, and is honoured only while it
/// still matches: a new password, or disabling the account, ends every
/// session of the account on every replica (and enabling it again does not
/// bring them back).
pub(crate) fn credential_stamp(reviewer: &Reviewer) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(reviewer.password_hash.as_bytes());
    hash.update(b"\n");
    hash.update(reviewer.session_epoch.to_le_bytes());
    hex::encode(&hash.finalize()[..12])
}

/// Changes the signed-in reviewer's own password, after checking the
/// current one; audited. Returns the account as it now is.
pub(crate) async fn change_password(
    app: &App,
    reviewer: &Reviewer,
    current: &str,
    new: &str,
    client: Client,
) -> Result<Reviewer> {
    if current.len() > MAX_PASSWORD
        || !app
            .passwords
            .verify(current, reviewer.password_hash.clone())
            .await?
    {
        let event = Event::refused(Action::ReviewerPasswordChanged, "bad_credentials")
            .actor(reviewer.email.clone())
            .subject(reviewer.email.clone())
            .client(client);
        audit::append_now(&app.db, event).await?;
        return Err(AccountError::WrongPassword.into());
    }
    check_new_password(new)?;
    let owned = new.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_password(&owned)).await??;
    let mut tx = app.db.begin().await?;
    db::reviewers::set_password(&mut *tx, &reviewer.id, &hash).await?;
    let event = Event::ok(Action::ReviewerPasswordChanged)
        .actor(reviewer.email.clone())
        .subject(reviewer.email.clone())
        .reason("other sessions ended")
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    db::reviewers::find(app.db.pool(), &reviewer.id)
        .await?
        .ok_or_else(|| {
            crate::domain::Error::Internal(anyhow::anyhow!("the account vanished while its password changed"))
        })
}

fn check_new_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AccountError::PasswordTooShort);
    }
    if password.len() > MAX_PASSWORD {
        return Err(AccountError::PasswordTooLong);
    }
    Ok(())
}

/// What an admin changes about a reviewer.
#[derive(Debug, Clone, Copy)]
pub enum ReviewerChange {
    Admin(bool),
    Disabled(bool),
    Notify(Notify),
}

/// Changes a reviewer's role, access or notifications, audited.
pub async fn change_reviewer(app: &App, id: &str, change: ReviewerChange, actor: &str) -> Result<()> {
    let reviewer = db::reviewers::find(app.db.pool(), id)
        .await?
        .ok_or_else(|| crate::domain::policy::PolicyError::NoReviewer(id.to_owned()))?;
    // An admin who could demote or disable themselves could leave the
    // portal with no admin at all.
    if reviewer.email == actor
        && matches!(
            change,
            ReviewerChange::Admin(false) | ReviewerChange::Disabled(true)
        )
    {
        return Err(crate::domain::Error::invalid(
            "you cannot take away your own admin rights or sign-in; ask another admin",
        ));
    }
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
            db::reviewers::set_notify(&mut *tx, id, notify).await?;
            format!("notifications: {notify}")
        }
    };
    if db::reviewers::enabled_admins(&mut *tx).await? == 0 {
        return Err(crate::domain::Error::conflict(
            "this would leave no admin who can sign in; make another admin first",
        ));
    }
    let event = Event::ok(Action::ReviewerChanged)
        .actor(actor.to_owned())
        .subject(reviewer.email)
        .reason(what);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(())
}

/// Audits a sign-in refused because of too many attempts. Anyone can send
/// these as fast as they like, so they are counted per client network: the
/// first of each window is written, the rest summed up when it ends.
pub(crate) async fn record_throttled(app: &App, email: &str, client: Client) -> Result<()> {
    let event = Event::refused(Action::ReviewerSignIn, "throttled")
        .subject(email.chars().take(254).collect::<String>())
        .client(client);
    Ok(app.record_refusal(event).await?)
}

/// Limits sign-in attempts per account and per client address, so that
/// passwords cannot be guessed at speed. An attempt is counted before its
/// password is checked, so a burst of concurrent guesses gets no more checks
/// than a slow series would; a successful sign-in gives its count back, so
/// only failures (and attempts still being checked) use the allowance.
/// Attempts on accounts that do not exist count the same, so the limit says
/// nothing about which exist; a blocked account or address is refused even
/// the right password until the wait is over.
///
/// The counters are leaky buckets kept here rather than a rate-limit crate's,
/// because giving back an attempt that succeeded is part of the rule.
#[derive(Debug)]
pub(crate) struct SignInThrottle {
    accounts: Bucket,
    addresses: Bucket,
}

impl Default for SignInThrottle {
    fn default() -> Self {
        Self::new(ACCOUNT_BURST, ACCOUNT_REFILL, ADDRESS_BURST, ADDRESS_REFILL)
    }
}

/// Attempts on one account before it is slowed down, then one per refill period.
const ACCOUNT_BURST: u32 = 5;
const ACCOUNT_REFILL: Duration = Duration::from_secs(60);
/// Attempts from one address (over every account), then one per refill period.
const ADDRESS_BURST: u32 = 20;
const ADDRESS_REFILL: Duration = Duration::from_secs(10);
/// Keys kept before the counters that have drained are dropped.
const MAX_KEYS: usize = 100_000;

/// Counts per key that drain by one every `refill`.
#[derive(Debug)]
struct Bucket {
    burst: f64,
    refill: Duration,
    levels: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Bucket {
    fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            levels: Mutex::default(),
        }
    }

    fn drained(&self, (level, at): (f64, Instant), now: Instant) -> f64 {
        (level - now.duration_since(at).as_secs_f64() / self.refill.as_secs_f64()).max(0.0)
    }

    /// Counts one attempt for `key`; `Err` with the wait when the key has no
    /// allowance left (the refused attempt is not counted).
    fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut levels = self.levels.lock().unwrap_or_else(PoisonError::into_inner);
        if levels.len() >= MAX_KEYS {
            levels.retain(|_, entry| self.drained(*entry, now) > 0.0);
        }
        let level = levels.get(key).map_or(0.0, |entry| self.drained(*entry, now));
        if level + 1.0 > self.burst {
            let over = level + 1.0 - self.burst;
            return Err(self.refill.mul_f64(over).max(Duration::from_secs(1)));
        }
        levels.insert(key.to_owned(), (level + 1.0, now));
        Ok(())
    }

    /// Gives back an attempt counted by [`Bucket::take`].
    fn give_back(&self, key: &str, now: Instant) {
        let mut levels = self.levels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = levels.get(key).copied() {
            levels.insert(key.to_owned(), ((self.drained(entry, now) - 1.0).max(0.0), now));
        }
    }
}

/// An attempt the throttle let through. Dropped without
/// [`Attempt::succeeded`], it stays counted as a failure.
#[must_use]
pub(crate) struct Attempt<'a> {
    throttle: &'a SignInThrottle,
    account: Option<String>,
    address: Option<String>,
}

impl Attempt<'_> {
    /// The attempt succeeded (or was never checked): its count is given back.
    pub(crate) fn succeeded(self) {
        let now = Instant::now();
        if let Some(key) = &self.account {
            self.throttle.accounts.give_back(key, now);
        }
        if let Some(key) = &self.address {
            self.throttle.addresses.give_back(key, now);
        }
    }
}

impl SignInThrottle {
    pub(crate) fn new(
        account_burst: u32,
        account_refill: Duration,
        address_burst: u32,
        address_refill: Duration,
    ) -> Self {
        Self {
            accounts: Bucket::new(account_burst, account_refill),
            addresses: Bucket::new(address_burst, address_refill),
        }
    }

    /// Counts an attempt on `account` (an e-mail address; `None` for a
    /// sign-in link, which names no account) from `address` (the client's
    /// rate-limit key), before anything is checked. `Err` with the time to
    /// wait when either is blocked.
    pub(crate) fn attempt(&self, account: Option<&str>, address: &str) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let account = account.map(|a| format!("account {}", Email::lookup_key(a)));
        if let Some(key) = &account {
            self.accounts.take(key, now)?;
        }
        let address_key = format!("address {address}");
        if let Err(wait) = self.addresses.take(&address_key, now) {
            if let Some(key) = &account {
                self.accounts.give_back(key, now);
            }
            return Err(wait);
        }
        Ok(Attempt {
            throttle: self,
            account,
            address: Some(address_key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_attempts_are_counted_before_they_are_checked() {
        let minute = Duration::from_secs(60);
        let t = SignInThrottle::new(2, minute, 3, minute);
        // Two attempts in flight at once use the account's allowance...
        let first = t.attempt(Some("a@example.org"), "10.0.0.1").unwrap();
        let second = t.attempt(Some("A@example.org "), "10.0.0.2").unwrap();
        let wait = t.attempt(Some("a@example.org"), "10.0.0.3").err().unwrap();
        assert!(wait >= Duration::from_secs(1), "{wait:?}");
        // ...and one that succeeds gives its count back.
        first.succeeded();
        let third = t.attempt(Some("a@example.org"), "10.0.0.3").unwrap();
        drop((second, third));
        assert!(
            t.attempt(Some("a@example.org"), "10.0.0.9").is_err(),
            "two failures block the account"
        );
        // Another account from a fresh address is not affected...
        t.attempt(Some("b@example.org"), "10.0.0.4").unwrap().succeeded();
        // ...but one address cannot try accounts without end.
        for account in ["c@example.org", "d@example.org", "e@example.org"] {
            drop(t.attempt(Some(account), "10.0.0.5").unwrap());
        }
        assert!(
            t.attempt(Some("f@example.org"), "10.0.0.5").is_err(),
            "the address is blocked"
        );
        assert!(t.attempt(None, "10.0.0.5").is_err(), "sign-in links from it too");
        // A refusal by the address does not use the account's allowance.
        t.attempt(Some("f@example.org"), "10.0.0.6").unwrap().succeeded();
        t.attempt(Some("f@example.org"), "10.0.0.6").unwrap().succeeded();
    }

    #[test]
    fn a_blocked_key_waits_for_one_refill_and_then_gets_one_attempt() {
        let t = SignInThrottle::new(1, Duration::from_millis(200), 100, Duration::from_secs(60));
        drop(t.attempt(Some("a@example.org"), "10.0.0.1").unwrap());
        let wait = t.attempt(Some("a@example.org"), "10.0.0.1").err().unwrap();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        std::thread::sleep(Duration::from_millis(250));
        drop(t.attempt(Some("a@example.org"), "10.0.0.1").unwrap());
        assert!(t.attempt(Some("a@example.org"), "10.0.0.1").is_err());
    }
}
