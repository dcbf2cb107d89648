//! Webhook subscriptions: a reviewer's endpoints that hear of events on the
//! models they review (every model for an admin). Delivery is
//! [`crate::webhooks`]'; this says who may subscribe, change and read what.

use std::str::FromStr;

use crate::{
    app::App,
    audit::{self, Action, Client, Event},
    db::{self, reviewers::Reviewer, webhooks::Subscription},
    domain::error::Result,
    types::{new_id, now_ms},
    webhooks::{EventType, new_secret},
};

/// The most subscriptions one reviewer may have.
pub(crate) const MAX_PER_OWNER: usize = 20;
/// How long a rotated secret still signs beside the new one.
pub(crate) const ROTATION_OVERLAP_MS: i64 = 86_400_000;
const MAX_URL: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    #[error("an endpoint is an http or https URL of at most {MAX_URL} characters")]
    BadUrl,
    #[error(
        "{0} is a loopback, private or link-local address, which webhooks do not call unless \
         WEIGHTGATE_WEBHOOK_ALLOW_PRIVATE is set"
    )]
    PrivateUrl(String),
    #[error("{0:?} is not an event type (one of {1})")]
    UnknownType(String, String),
    #[error("a subscription hears of at least one event type")]
    NoType,
    #[error("you have {MAX_PER_OWNER} subscriptions already; remove one first")]
    TooMany,
    #[error("no such subscription")]
    NotFound,
    #[error("no such message")]
    NoMessage,
    #[error("this subscription is enabled already")]
    AlreadyEnabled,
}

impl From<WebhookError> for crate::domain::Error {
    fn from(err: WebhookError) -> Self {
        match err {
            WebhookError::BadUrl
            | WebhookError::PrivateUrl(_)
            | WebhookError::UnknownType(..)
            | WebhookError::NoType => Self::invalid(err.to_string()),
            WebhookError::TooMany | WebhookError::AlreadyEnabled => Self::conflict(err.to_string()),
            WebhookError::NotFound | WebhookError::NoMessage => Self::not_found(err.to_string()),
        }
    }
}

/// Event types as a subscription lists them: `grant.created,grant.revoked`.
pub(crate) fn parse_types(text: &str) -> Result<Vec<EventType>, WebhookError> {
    let mut types = Vec::new();
    for name in text.split([',', ' ']).map(str::trim).filter(|n| !n.is_empty()) {
        let t = EventType::from_str(name).map_err(|_| {
            WebhookError::UnknownType(
                name.chars().take(60).collect(),
                EventType::ALL
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    if types.is_empty() {
        return Err(WebhookError::NoType);
    }
    types.sort_by_key(|t| EventType::ALL.iter().position(|a| a == t));
    Ok(types)
}

fn checked_url(app: &App, url: &str) -> Result<String, WebhookError> {
    let url = url.trim();
    let parsed = url::Url::parse(url).map_err(|_| WebhookError::BadUrl)?;
    if url.len() > MAX_URL
        || !matches!(parsed.scheme(), "http" | "https")
        || parsed.host_str().is_none_or(str::is_empty)
        || !parsed.username().is_empty()
        || parsed.password().is_some()
    {
        return Err(WebhookError::BadUrl);
    }
    if !app.config.webhook_allow_private {
        let private = match parsed.host() {
            Some(url::Host::Ipv4(ip)) => crate::webhooks::is_private(ip.into()),
            Some(url::Host::Ipv6(ip)) => crate::webhooks::is_private(ip.into()),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost"),
            None => true,
        };
        if private {
            return Err(WebhookError::PrivateUrl(
                parsed.host_str().unwrap_or("").to_owned(),
            ));
        }
    }
    Ok(url.to_owned())
}

/// A subscription just made, with its secret, shown this once.
pub(crate) struct Subscribed {
    pub(crate) subscription: Subscription,
    pub(crate) secret: String,
}

/// Subscribes `owner`'s endpoint `url` to `types`; it hears of events from
/// now on.
pub(crate) async fn subscribe(
    app: &App,
    owner: &Reviewer,
    url: &str,
    types: &[EventType],
    actor: &str,
    client: Client,
) -> Result<Subscribed> {
    let url = checked_url(app, url)?;
    if types.is_empty() {
        return Err(WebhookError::NoType.into());
    }
    let pool = app.db.pool();
    if db::webhooks::list(pool, Some(&owner.id)).await?.len() >= MAX_PER_OWNER {
        return Err(WebhookError::TooMany.into());
    }
    let secret = new_secret();
    let subscription = Subscription {
        id: format!("whs_{}", new_id()),
        owner_id: owner.id.clone(),
        url,
        event_types: types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
        secret: secret.clone(),
        previous_secret: None,
        previous_until: None,
        created_at: now_ms(),
        from_seq: 0,
        disabled_at: None,
        disabled_reason: None,
    };
    let event = Event::ok(Action::WebhookSubscribed)
        .actor(actor.to_owned())
        .subject(format!(
            "{} {} to {}",
            owner.email,
            subscription.id,
            crate::webhooks::endpoint_origin(&subscription.url)
        ))
        .reason(subscription.event_types.clone())
        .client(client);
    let mut tx = app.db.begin().await?;
    // It hears of what the log records after the event that says it was made.
    let seqs = audit::append(&mut tx, app.db.backend(), &[event]).await?;
    let subscription = Subscription {
        from_seq: seqs.last().copied().unwrap_or(0),
        ..subscription
    };
    db::webhooks::insert(&mut *tx, &subscription).await?;
    tx.commit().await?;
    Ok(Subscribed { subscription, secret })
}

/// Who changes a subscription.
pub(crate) enum By<'a> {
    /// Its owner, or an admin.
    Reviewer(&'a Reviewer),
    /// The operator at the command line.
    Operator(&'a str),
}

impl By<'_> {
    fn actor(&self) -> String {
        match self {
            By::Reviewer(r) => r.email.clone(),
            By::Operator(name) => (*name).to_owned(),
        }
    }
}

/// The subscription, if `by` may see and change it: its owner, or the
/// operator at the command line; hidden from everyone else, admins included
/// (its secret and its receiver's answers are its owner's).
pub(crate) async fn owned(app: &App, by: &By<'_>, id: &str) -> Result<Subscription> {
    let sub = db::webhooks::find(app.db.pool(), id)
        .await?
        .ok_or(WebhookError::NotFound)?;
    if let By::Reviewer(reviewer) = by
        && sub.owner_id != reviewer.id
    {
        return Err(WebhookError::NotFound.into());
    }
    Ok(sub)
}

/// The subscriptions of `reviewer`; everyone's for `None`.
pub(crate) async fn list(app: &App, reviewer: Option<&Reviewer>) -> Result<Vec<Subscription>> {
    Ok(db::webhooks::list(app.db.pool(), reviewer.map(|r| r.id.as_str())).await?)
}

async fn audited(app: &App, action: Action, by: &By<'_>, sub: &Subscription, client: Client) -> Result<()> {
    let event = Event::ok(action)
        .actor(by.actor())
        .subject(format!(
            "{} to {}",
            sub.id,
            crate::webhooks::endpoint_origin(&sub.url)
        ))
        .client(client);
    audit::append_now(&app.db, event).await?;
    Ok(())
}

/// Removes a subscription, with its messages and its delivery log.
pub(crate) async fn remove(app: &App, by: By<'_>, id: &str, client: Client) -> Result<()> {
    let sub = owned(app, &by, id).await?;
    let mut tx = app.db.begin().await?;
    db::webhooks::delete_messages(&mut tx, &sub.id).await?;
    db::webhooks::delete(&mut *tx, &sub.id).await?;
    let event = Event::ok(Action::WebhookRemoved)
        .actor(by.actor())
        .subject(format!(
            "{} to {}",
            sub.id,
            crate::webhooks::endpoint_origin(&sub.url)
        ))
        .client(client);
    audit::append(&mut tx, app.db.backend(), &[event]).await?;
    tx.commit().await?;
    Ok(())
}

/// Gives a subscription a new secret; the old one signs beside it for a
/// day, so that its receiver can change over without losing a message.
pub(crate) async fn rotate(app: &App, by: By<'_>, id: &str, client: Client) -> Result<String> {
    let sub = owned(app, &by, id).await?;
    let secret = new_secret();
    db::webhooks::rotate(app.db.pool(), &sub.id, &secret, now_ms() + ROTATION_OVERLAP_MS).await?;
    audited(app, Action::WebhookSecretRotated, &by, &sub, client).await?;
    Ok(secret)
}

/// Enables a subscription that was disabled; its waiting messages are sent
/// in order, the first at once.
pub(crate) async fn enable(app: &App, by: By<'_>, id: &str, client: Client) -> Result<()> {
    let sub = owned(app, &by, id).await?;
    if sub.disabled_at.is_none() {
        return Err(WebhookError::AlreadyEnabled.into());
    }
    let pool = app.db.pool();
    if let Some(head) = db::webhooks::oldest_waiting(pool, &sub.id).await? {
        db::webhooks::retry_now(pool, &head, now_ms()).await?;
    }
    db::webhooks::set_disabled(pool, &sub.id, None, None).await?;
    audited(app, Action::WebhookEnabled, &by, &sub, client).await?;
    Ok(())
}

/// Sends a message again, with the same `webhook-id`: at once if its
/// subscription's older messages are delivered, else after them.
pub(crate) async fn resend(app: &App, by: By<'_>, message_id: &str, client: Client) -> Result<()> {
    let message = db::webhooks::find_message(app.db.pool(), message_id)
        .await?
        .ok_or(WebhookError::NoMessage)?;
    let sub = owned(app, &by, &message.subscription_id)
        .await
        .map_err(|_| WebhookError::NoMessage)?;
    db::webhooks::retry_now(app.db.pool(), &message.id, now_ms()).await?;
    let event = Event::ok(Action::WebhookResent)
        .actor(by.actor())
        .subject(format!(
            "{} of {} to {}",
            message.id,
            sub.id,
            crate::webhooks::endpoint_origin(&sub.url)
        ))
        .client(client);
    audit::append_now(&app.db, event).await?;
    Ok(())
}

/// A subscription's newest messages and attempts, for its delivery log.
pub(crate) async fn deliveries(
    app: &App,
    by: By<'_>,
    id: &str,
) -> Result<(
    Subscription,
    Vec<db::webhooks::Message>,
    Vec<db::webhooks::Attempt>,
)> {
    let sub = owned(app, &by, id).await?;
    let pool = app.db.pool();
    let messages = db::webhooks::messages(pool, &sub.id, 100).await?;
    let attempts = db::webhooks::attempts(pool, &sub.id, 200).await?;
    Ok((sub, messages, attempts))
}
