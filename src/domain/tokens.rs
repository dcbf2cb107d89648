//! API tokens: a reviewer's credentials for programs. A token is made by its
//! reviewer (dashboard or `weightgate token create`), shown once, and kept
//! only as the SHA-256 of its secret; it carries scopes, a name and an end.
//! It acts as its reviewer and never beyond them: its scopes narrow what the
//! reviewer may do ([`crate::domain::authz::token_may`]), and a reviewer who
//! is disabled, or no longer an admin, loses what their tokens could do at
//! the next request.

use std::{fmt, str::FromStr};

pub use crate::types::states::Scope;

use crate::{
    app::App,
    audit::{self, Action, Client, Event},
    db::{self, reviewers::Reviewer, tokens::TokenRow},
    domain::authz::{self, ReviewerAction},
    domain::error::Result,
    types::{hash_token, new_id, new_token, now_ms},
};

/// Where every token's secret starts, so that it is recognised in a leak
/// (a secret scanner matches `wgt_` and 43 characters of base64url).
pub const SECRET_PREFIX: &str = "wgt_";
/// The longest a token lasts.
pub const MAX_DAYS: u64 = 366;
const DAY_MS: i64 = 86_400_000;
const MAX_NAME: usize = 100;

/// A token's scopes, in the order [`Scope::ALL`] lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    pub fn iter(&self) -> impl Iterator<Item = Scope> + '_ {
        self.0.iter().copied()
    }

    pub fn as_slice(&self) -> &[Scope] {
        &self.0
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|s| s.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Scopes {
    type Err = TokenError;

    /// `read,review`: names separated by commas or spaces, each once.
    fn from_str(s: &str) -> Result<Self, TokenError> {
        let mut scopes = Vec::new();
        for name in s.split([',', ' ']).map(str::trim).filter(|n| !n.is_empty()) {
            let scope: Scope = name
                .parse()
                .map_err(|_| TokenError::UnknownScope(name.chars().take(40).collect()))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        if scopes.is_empty() {
            return Err(TokenError::NoScope);
        }
        scopes.sort_by_key(|s| Scope::ALL.iter().position(|a| a == s));
        Ok(Self(scopes))
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes: Vec<Scope> = Vec::new();
        for scope in iter {
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        scopes.sort_by_key(|s| Scope::ALL.iter().position(|a| a == s));
        Self(scopes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("a token needs a name of 1 to {MAX_NAME} characters")]
    BadName,
    #[error("you already have a token called {0:?}; revoke it or choose another name")]
    NameInUse(String),
    #[error("{0:?} is not a scope (one of read, review, admin, audit)")]
    UnknownScope(String),
    #[error("a token needs at least one scope (read, review, admin, audit)")]
    NoScope,
    #[error("only an admin's token may have the admin or audit scope")]
    AdminScope,
    #[error("a token lasts 1 to {MAX_DAYS} days")]
    BadDuration,
    #[error("no such token")]
    NotFound,
    #[error("this token was revoked already")]
    AlreadyRevoked,
}

impl From<TokenError> for crate::domain::Error {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::BadName
            | TokenError::UnknownScope(_)
            | TokenError::NoScope
            | TokenError::BadDuration => Self::invalid(err.to_string()),
            TokenError::NameInUse(_) | TokenError::AlreadyRevoked => Self::conflict(err.to_string()),
            TokenError::AdminScope => Self::Forbidden {
                code: "admins_only",
                message: err.to_string(),
            },
            TokenError::NotFound => Self::not_found(err.to_string()),
        }
    }
}

/// A token as its owner and the admins see it (never its secret).
#[derive(Clone, Debug)]
pub struct Token {
    pub id: String,
    pub reviewer_id: String,
    pub name: String,
    pub scopes: Scopes,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl Token {
    fn of(row: TokenRow) -> Self {
        // A stored scope this version does not know grants nothing.
        let scopes = row
            .scopes
            .split(',')
            .filter_map(|s| s.parse::<Scope>().ok())
            .collect();
        Self {
            id: row.id,
            reviewer_id: row.reviewer_id,
            name: row.name,
            scopes,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
        }
    }

    /// `active`, `expired` or `revoked`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "active"
        }
    }
}

/// A token just made, with the secret that is shown this once.
pub struct Created {
    pub token: Token,
    pub secret: String,
}

impl fmt::Debug for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Created")
            .field("token", &self.token)
            .field("secret", &"wgt_…")
            .finish()
    }
}

/// Makes a token for `owner`. `actor` is who asked (the owner, or an
/// operator at the command line).
pub async fn create(
    app: &App,
    owner: &Reviewer,
    name: &str,
    scopes: Scopes,
    days: u64,
    actor: &str,
    client: Client,
) -> Result<Created> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(TokenError::BadName.into());
    }
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(TokenError::BadDuration.into());
    }
    if (scopes.contains(Scope::Admin) || scopes.contains(Scope::Audit)) && !owner.is_admin() {
        return Err(TokenError::AdminScope.into());
    }
    let now = now_ms();
    let secret = format!("{SECRET_PREFIX}{}", new_token());
    let id = new_id();
    let expires_at = now + i64::try_from(days).unwrap_or(1) * DAY_MS;
    let scope_text = scopes.to_string();
    let mut tx = app.db.begin().await?;
    if db::tokens::name_in_use(&mut *tx, &owner.id, name, now).await? {
        return Err(TokenError::NameInUse(name.to_owned()).into());
    }
    db::tokens::insert(
        &mut *tx,
        &db::tokens::NewToken {
            id: &id,
            reviewer_id: &owner.id,
            name,
            scopes: &scope_text,
            secret_hash: &hash_token(&secret),
            created_at: now,
            expires_at,
        },
    )
    .await?;
    let event = Event::ok(Action::TokenCreated)
        .actor(actor.to_owned())
        .subject(format!("{} token {name:?}", owner.email))
        .reason(format!(
            "scopes {scope_text}; until {}",
            crate::types::format_ms(expires_at)
        ))
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    let token = db::tokens::find(app.db.pool(), &id)
        .await?
        .map(Token::of)
        .ok_or(TokenError::NotFound)?;
    Ok(Created { token, secret })
}

/// The tokens of `reviewer`; every reviewer's for an admin asking with
/// `everyone`.
pub async fn list(app: &App, reviewer: &Reviewer, everyone: bool) -> Result<Vec<Token>> {
    let of = if everyone {
        authz::reviewer_may(app, reviewer, ReviewerAction::Administer).await?;
        None
    } else {
        Some(reviewer.id.as_str())
    };
    Ok(db::tokens::list(app.db.pool(), of)
        .await?
        .into_iter()
        .map(Token::of)
        .collect())
}

/// Every token, for the operator at the command line.
pub async fn list_all(app: &App) -> Result<Vec<Token>> {
    Ok(db::tokens::list(app.db.pool(), None)
        .await?
        .into_iter()
        .map(Token::of)
        .collect())
}

/// Who revokes a token.
pub enum RevokedBy<'a> {
    /// Its owner, or an admin.
    Reviewer(&'a Reviewer),
    /// The operator at the command line.
    Operator(&'a str),
}

/// Revokes a token: its next request is refused.
pub async fn revoke(app: &App, id: &str, by: RevokedBy<'_>, client: Client) -> Result<Token> {
    let token = db::tokens::find(app.db.pool(), id)
        .await?
        .map(Token::of)
        .ok_or(TokenError::NotFound)?;
    let actor = match by {
        RevokedBy::Reviewer(reviewer) => {
            if token.reviewer_id != reviewer.id {
                // Another's token: an admin's to revoke, hidden from the rest.
                authz::reviewer_may(app, reviewer, ReviewerAction::Administer)
                    .await
                    .map_err(|_| TokenError::NotFound)?;
            }
            reviewer.email.clone()
        }
        RevokedBy::Operator(actor) => actor.to_owned(),
    };
    let owner = db::reviewers::find(app.db.pool(), &token.reviewer_id)
        .await?
        .map_or_else(|| token.reviewer_id.clone(), |r| r.email);
    let mut tx = app.db.begin().await?;
    if !db::tokens::revoke(&mut *tx, &token.id, now_ms()).await? {
        return Err(TokenError::AlreadyRevoked.into());
    }
    let event = Event::ok(Action::TokenRevoked)
        .actor(actor)
        .subject(format!("{owner} token {:?}", token.name))
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(db::tokens::find(app.db.pool(), id)
        .await?
        .map(Token::of)
        .ok_or(TokenError::NotFound)?)
}

/// Why a request's token was not accepted. All are answered alike (401), so
/// that a guess learns nothing; the audit log keeps the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unaccepted {
    Unknown,
    Revoked,
    Expired,
    OwnerDisabled,
}

impl Unaccepted {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Unaccepted::Unknown => "unknown_token",
            Unaccepted::Revoked => "token_revoked",
            Unaccepted::Expired => "token_expired",
            Unaccepted::OwnerDisabled => "owner_disabled",
        }
    }
}

/// The token whose secret a request presented, with its owner, if it may
/// be used now.
pub(crate) async fn accept(app: &App, secret: &str) -> Result<Result<(Token, Reviewer), Unaccepted>> {
    if !secret.starts_with(SECRET_PREFIX) || secret.len() > 200 {
        return Ok(Err(Unaccepted::Unknown));
    }
    let Some(row) = db::tokens::find_by_secret_hash(app.db.pool(), &hash_token(secret)).await? else {
        return Ok(Err(Unaccepted::Unknown));
    };
    let token = Token::of(row);
    if token.revoked_at.is_some() {
        return Ok(Err(Unaccepted::Revoked));
    }
    if token.expires_at <= now_ms() {
        return Ok(Err(Unaccepted::Expired));
    }
    match db::reviewers::find(app.db.pool(), &token.reviewer_id).await? {
        Some(owner) if owner.disabled_at.is_none() => Ok(Ok((token, owner))),
        _ => Ok(Err(Unaccepted::OwnerDisabled)),
    }
}

/// Records one use of a token: an event naming the token, the reviewer and
/// the request, whose request id the events of whatever the request does
/// share.
/// `refused` names the rule that refused it, if one did.
pub(crate) async fn record_use(
    app: &App,
    token: &Token,
    owner: &Reviewer,
    what: &str,
    refused: Option<&'static str>,
    client: Client,
) -> Result<()> {
    let event = match refused {
        None => Event::ok(Action::TokenUsed),
        Some(why) => Event::refused(Action::TokenUsed, why),
    };
    let event = event
        .actor(owner.email.clone())
        .subject(format!(
            "token {:?}: {}",
            token.name,
            what.chars().take(300).collect::<String>()
        ))
        .client(client);
    let mut tx = app.db.begin().await?;
    db::tokens::used(&mut *tx, &token.id, now_ms()).await?;
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(())
}

/// Audits a request whose token was not accepted, counted per client
/// network like other refusals anyone can repeat.
pub(crate) async fn record_unaccepted(app: &App, why: Unaccepted, what: &str, client: Client) -> Result<()> {
    let event = Event::refused(Action::TokenUsed, why.as_str())
        .subject(what.chars().take(300).collect::<String>())
        .client(client);
    Ok(app.record_refusal(event).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_in_any_order_and_write_in_one() {
        let s: Scopes = "review, read review".parse().unwrap();
        assert_eq!(s.to_string(), "read,review");
        assert!(s.contains(Scope::Review) && !s.contains(Scope::Admin));
        assert!(matches!("".parse::<Scopes>(), Err(TokenError::NoScope)));
        assert!(matches!(
            "read,write".parse::<Scopes>(),
            Err(TokenError::UnknownScope(s)) if s == "write"
        ));
    }
}
