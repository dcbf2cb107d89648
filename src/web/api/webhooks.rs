//! Webhook subscriptions of the caller, and their delivery logs.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, Caller, doc, maybe_time, time};
use crate::{
    db,
    domain::webhooks::{self, By},
    web::{AppState, ClientInfo, Error, extract::Path},
};

/// A subscription (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscriptionJson {
    id: String,
    url: String,
    /// The event types it hears of.
    events: Vec<String>,
    enabled: bool,
    /// Why it was disabled (its deliveries kept failing).
    disabled_reason: Option<String>,
    created_at: String,
    /// While a rotated secret still signs beside the new one.
    previous_secret_until: Option<String>,
}

impl From<&db::webhooks::Subscription> for SubscriptionJson {
    fn from(s: &db::webhooks::Subscription) -> Self {
        Self {
            id: s.id.clone(),
            url: s.url.clone(),
            events: s.event_types.split(',').map(str::to_owned).collect(),
            enabled: s.disabled_at.is_none(),
            disabled_reason: s.disabled_reason.clone(),
            created_at: time(s.created_at),
            previous_secret_until: maybe_time(s.previous_until),
        }
    }
}

/// The caller's subscriptions.
#[utoipa::path(get, path = "/api/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks",
    responses((status = 200, body = Vec<SubscriptionJson>)),
    security(("token" = ["read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<SubscriptionJson>>, Error> {
    let subs = webhooks::list(&state.app, Some(&caller.reviewer)).await?;
    Ok(Json(subs.iter().map(SubscriptionJson::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeJson {
    /// The endpoint, http or https.
    url: String,
    /// Event types: `application.submitted`, `application.confirmed`,
    /// `application.decided`, `grant.created`, `grant.extended`,
    /// `grant.revoked`, `grant.expired`, `release.published`,
    /// `file.delivered`.
    events: Vec<String>,
}

/// A new subscription with its signing secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscribedJson {
    subscription: SubscriptionJson,
    /// `whsec_…`: verify each message's `webhook-signature` with it, as the
    /// Standard Webhooks libraries do.
    secret: String,
}

/// Subscribes an endpoint to event types of the models the caller reviews.
#[utoipa::path(post, path = "/api/v1/webhooks", operation_id = "subscribeWebhook", tag = "webhooks",
    params(doc::IdempotencyKey),
    request_body = SubscribeJson,
    responses((status = 200, body = SubscribedJson), (status = 400, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Body(body): Body<SubscribeJson>,
) -> Result<Json<SubscribedJson>, Error> {
    let types = webhooks::parse_types(&body.events.join(",")).map_err(crate::domain::Error::from)?;
    let made = webhooks::subscribe(
        &state.app,
        &caller.reviewer,
        &body.url,
        &types,
        &caller.reviewer.email,
        client,
    )
    .await?;
    Ok(Json(SubscribedJson {
        subscription: SubscriptionJson::from(&made.subscription),
        secret: made.secret,
    }))
}

/// One attempt at delivering a message.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct AttemptJson {
    message_id: String,
    event: String,
    at: String,
    /// The receiver's HTTP status; absent when no answer came.
    status: Option<i64>,
    /// The start of the answer (1 KiB), or what went wrong.
    answer: String,
    took_ms: i64,
}

/// A message of the subscription.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct MessageJson {
    /// Its `webhook-id`.
    id: String,
    event: String,
    created_at: String,
    attempts: i64,
    delivered_at: Option<String>,
    /// The body, as signed and sent.
    payload: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveriesJson {
    subscription: SubscriptionJson,
    /// The newest 100 messages.
    messages: Vec<MessageJson>,
    /// The newest 200 attempts.
    attempts: Vec<AttemptJson>,
}

/// A subscription's delivery log.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks",
    params(("id" = String, Path, description = "The subscription's id")),
    responses((status = 200, body = DeliveriesJson), (status = 404, body = doc::ErrorJson)),
    security(("token" = ["read"])))]
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeliveriesJson>, Error> {
    let (sub, messages, attempts) =
        webhooks::deliveries(&state.app, By::Reviewer(&caller.reviewer), &id).await?;
    let event_of = |id: &str| {
        messages
            .iter()
            .find(|m| m.id == id)
            .map_or_else(String::new, |m| m.event_type.clone())
    };
    Ok(Json(DeliveriesJson {
        subscription: SubscriptionJson::from(&sub),
        attempts: attempts
            .iter()
            .map(|a| AttemptJson {
                event: event_of(&a.message_id),
                message_id: a.message_id.clone(),
                at: time(a.at),
                status: a.status,
                answer: a.answer.clone(),
                took_ms: a.took_ms,
            })
            .collect(),
        messages: messages
            .iter()
            .map(|m| MessageJson {
                id: m.id.clone(),
                event: m.event_type.clone(),
                created_at: time(m.created_at),
                attempts: m.attempts,
                delivered_at: maybe_time(m.delivered_at),
                payload: serde_json::from_str(&m.payload).unwrap_or_default(),
            })
            .collect(),
    }))
}

/// What a change to a subscription did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChangedJson {
    /// For a rotation: the new secret, shown this once.
    secret: Option<String>,
}

/// Removes a subscription with its messages and delivery log.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/remove", operation_id = "removeWebhook", tag = "webhooks",
    params(("id" = String, Path, description = "The subscription's id"), doc::IdempotencyKey),
    responses((status = 200, body = ChangedJson), (status = 404, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
) -> Result<Json<ChangedJson>, Error> {
    webhooks::remove(&state.app, By::Reviewer(&caller.reviewer), &id, client).await?;
    Ok(Json(ChangedJson { secret: None }))
}

/// Gives a subscription a new secret; the old one signs beside it for a day.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate", operation_id = "rotateWebhookSecret", tag = "webhooks",
    params(("id" = String, Path, description = "The subscription's id"), doc::IdempotencyKey),
    responses((status = 200, body = ChangedJson), (status = 404, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
) -> Result<Json<ChangedJson>, Error> {
    let secret = webhooks::rotate(&state.app, By::Reviewer(&caller.reviewer), &id, client).await?;
    Ok(Json(ChangedJson { secret: Some(secret) }))
}

/// Enables a subscription that was disabled; its waiting messages are sent
/// in order.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/enable", operation_id = "enableWebhook", tag = "webhooks",
    params(("id" = String, Path, description = "The subscription's id"), doc::IdempotencyKey),
    responses((status = 200, body = ChangedJson), (status = 409, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
) -> Result<Json<ChangedJson>, Error> {
    webhooks::enable(&state.app, By::Reviewer(&caller.reviewer), &id, client).await?;
    Ok(Json(ChangedJson { secret: None }))
}

/// Sends a message again, with the same `webhook-id`.
#[utoipa::path(post, path = "/api/v1/webhooks/messages/{id}/resend", operation_id = "resendWebhookMessage", tag = "webhooks",
    params(("id" = String, Path, description = "The message's id (its webhook-id)"), doc::IdempotencyKey),
    responses((status = 200, body = ChangedJson), (status = 404, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn resend(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
) -> Result<Json<ChangedJson>, Error> {
    webhooks::resend(&state.app, By::Reviewer(&caller.reviewer), &id, client).await?;
    Ok(Json(ChangedJson { secret: None }))
}
