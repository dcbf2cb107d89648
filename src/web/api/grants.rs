//! Grants: the list, one grant with its history, extensions and revocation.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Body, Caller, audit::EventJson, doc, given, maybe_time, page_limit, page_offset, time};
use crate::{
    db::{self, audit::Filter, grants::GrantView},
    domain::{
        authz::{self, ReviewerAction},
        grants::{self, GrantState},
        renewals,
    },
    types::{now_ms, states::Scope},
    web::{
        AppState, ClientInfo, Error,
        extract::{Path, Query},
    },
};

/// A grant.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantJson {
    id: String,
    application_id: String,
    /// The model's slug.
    model: String,
    email: String,
    researcher_name: String,
    /// `active`, `expired` or `revoked`.
    state: String,
    created_at: String,
    expires_at: String,
    revoked_at: Option<String>,
    revoked_reason: Option<String>,
}

impl GrantJson {
    pub(crate) fn of(g: &GrantView, now: i64) -> Self {
        Self {
            id: g.id.clone(),
            application_id: g.application_id.clone(),
            model: g.model_slug.clone(),
            email: g.email.clone(),
            researcher_name: g.researcher_name.clone(),
            state: GrantState::of(g, now).as_str().to_owned(),
            created_at: time(g.created_at),
            expires_at: time(g.expires_at),
            revoked_at: maybe_time(g.revoked_at),
            revoked_reason: g.revoked_reason.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct GrantParams {
    /// A model's slug.
    model: Option<String>,
    /// `active`, `expired` or `revoked`.
    state: Option<String>,
    /// Part of the researcher's e-mail address.
    email: Option<String>,
    /// Active grants ending within this many days.
    expiring_days: Option<i64>,
    /// At most this many (1 to 500, 50 by default).
    limit: Option<i64>,
    /// Skip this many.
    offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantList {
    grants: Vec<GrantJson>,
    /// How many match the filters in all.
    total: i64,
}

/// The grants of the caller's models, newest first.
#[utoipa::path(get, path = "/api/v1/grants", operation_id = "listGrants", tag = "grants",
    params(GrantParams),
    responses((status = 200, body = GrantList), (status = 400, body = doc::ErrorJson)),
    security(("token" = ["read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<GrantParams>,
) -> Result<Json<GrantList>, Error> {
    let grant_state = match given(q.state).as_deref() {
        None => None,
        Some(s @ ("active" | "expired" | "revoked")) => Some(s.to_owned()),
        Some(_) => return Err(Error::BadRequest("state is active, expired or revoked".into())),
    };
    let expiring_within = match q.expiring_days {
        None => None,
        Some(d) if (0..=100_000).contains(&d) => Some(d * 86_400_000),
        Some(_) => return Err(Error::BadRequest("expiring_days is 0 or more".into())),
    };
    let filter = db::grants::GrantFilter {
        model_ids: None,
        model_slug: given(q.model),
        state: grant_state,
        email: given(q.email),
        expiring_within,
        limit: page_limit(q.limit)?,
        offset: page_offset(q.offset)?,
    };
    let (found, total) = grants::list(&state.app, &caller.reviewer, filter).await?;
    let now = now_ms();
    Ok(Json(GrantList {
        grants: found.iter().map(|g| GrantJson::of(g, now)).collect(),
        total,
    }))
}

/// A grant and what happened to it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GrantDetail {
    grant: GrantJson,
    /// The grant's events in the audit log, newest first (at most 1,000).
    history: Vec<EventJson>,
}

/// One grant with its history from the audit log.
#[utoipa::path(get, path = "/api/v1/grants/{id}", operation_id = "getGrant", tag = "grants",
    params(("id" = String, Path, description = "The grant's id")),
    responses((status = 200, body = GrantDetail), (status = 404, body = doc::ErrorJson)),
    security(("token" = ["read"])))]
pub(crate) async fn one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<GrantDetail>, Error> {
    let grant = grants::readable(&state.app, &caller.reviewer, &id).await?;
    let history = db::audit::list(
        state.app.db.pool(),
        &Filter {
            grant_id: Some(grant.id.clone()),
            limit: 1000,
            ..Default::default()
        },
    )
    .await?;
    Ok(Json(GrantDetail {
        grant: GrantJson::of(&grant, now_ms()),
        history: history.iter().map(EventJson::from).collect(),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExtendJson {
    /// Days added to the grant's end (1 to 365).
    days: u64,
    /// An admin's override of the model's approval policy (also extends a
    /// grant that has ended); the token needs the `admin` scope too.
    #[serde(default, rename = "override")]
    override_policy: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ExtensionJson {
    /// `extended`, or `proposed` when the model's policy needs more
    /// approvals (a renewal waits for them in the queue).
    outcome: String,
    grant: GrantJson,
    /// For `proposed`: the renewal application.
    renewal_id: Option<String>,
}

/// Extends a grant, under the model's approval policy unless an admin
/// overrides it.
#[utoipa::path(post, path = "/api/v1/grants/{id}/extend", operation_id = "extendGrant", tag = "grants",
    params(("id" = String, Path, description = "The grant's id"), doc::IdempotencyKey),
    request_body = ExtendJson,
    responses((status = 200, body = ExtensionJson), (status = 409, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn extend(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Body(body): Body<ExtendJson>,
) -> Result<Json<ExtensionJson>, Error> {
    let app = &state.app;
    grants::manageable(app, &caller.reviewer, &id).await?;
    let by = if body.override_policy {
        // Going past a model's policy is an admin's power: the token must
        // carry it too, not only its owner.
        authz::token_may(&caller.reviewer, caller.token.scopes.as_slice(), Scope::Admin)
            .map_err(crate::domain::Error::from)?;
        authz::reviewer_may(app, &caller.reviewer, ReviewerAction::OverridePolicy).await?;
        renewals::ExtendBy::Override {
            actor: &caller.reviewer.email,
        }
    } else {
        renewals::ExtendBy::Reviewer(&caller.reviewer)
    };
    let extension = renewals::extend(app, &id, body.days, by, client).await?;
    let grant = grants::readable(app, &caller.reviewer, &id).await?;
    let grant = GrantJson::of(&grant, now_ms());
    Ok(Json(match extension {
        renewals::Extension::Extended { .. } => ExtensionJson {
            outcome: "extended".into(),
            grant,
            renewal_id: None,
        },
        renewals::Extension::Proposed { renewal_id } => ExtensionJson {
            outcome: "proposed".into(),
            grant,
            renewal_id: Some(renewal_id),
        },
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeJson {
    /// Why, as the researcher will read it.
    reason: String,
}

/// Revokes a grant: its links stop at the next fetch, and the researcher is
/// told why.
#[utoipa::path(post, path = "/api/v1/grants/{id}/revoke", operation_id = "revokeGrant", tag = "grants",
    params(("id" = String, Path, description = "The grant's id"), doc::IdempotencyKey),
    request_body = RevokeJson,
    responses((status = 200, body = GrantJson), (status = 409, body = doc::ErrorJson)),
    security(("token" = ["review"])))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
    Body(body): Body<RevokeJson>,
) -> Result<Json<GrantJson>, Error> {
    grants::manageable(&state.app, &caller.reviewer, &id).await?;
    let grant = grants::revoke(&state.app, &id, &body.reason, &caller.reviewer.email, client).await?;
    Ok(Json(GrantJson::of(&grant, now_ms())))
}
