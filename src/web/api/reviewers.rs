//! Reviewer accounts, for admins.

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, Caller, maybe_time, time};
use crate::{
    db,
    domain::{
        accounts::{self, ReviewerChange},
        authz::{self, ReviewerAction},
        policy,
    },
    types::Email,
    web::{AppState, Error, extract::Path},
};

/// A reviewer account.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ReviewerJson {
    id: String,
    email: String,
    /// `admin` or `reviewer`.
    role: String,
    /// The slugs of the models they review.
    models: Vec<String>,
    /// `active` or `disabled`.
    state: String,
    disabled_at: Option<String>,
    created_at: String,
}

/// Every reviewer, with their role and models.
#[utoipa::path(get, path = "/api/v1/reviewers", operation_id = "listReviewers", tag = "reviewers",
    responses((status = 200, body = Vec<ReviewerJson>), (status = 403, body = super::doc::ErrorJson)),
    security(("token" = ["admin"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ReviewerJson>>, Error> {
    authz::reviewer_may(&state.app, &caller.reviewer, ReviewerAction::Administer).await?;
    Ok(Json(list_all(&state).await?))
}

/// A new reviewer account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewReviewerJson {
    email: String,
    /// At least 12 characters; its owner changes it on the account page.
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn one_reviewer(state: &AppState, id: &str) -> Result<ReviewerJson, Error> {
    let list = list_all(state).await?;
    list.into_iter().find(|r| r.id == id).ok_or(Error::NotFound)
}

async fn list_all(state: &AppState) -> Result<Vec<ReviewerJson>, Error> {
    let app = &state.app;
    let rows = db::reviewers::list(app.db.pool()).await?;
    let assignments = db::policy::assignments(app.db.pool()).await?;
    Ok(rows
        .into_iter()
        .map(|r| ReviewerJson {
            models: assignments
                .iter()
                .filter(|(_, email)| *email == r.email)
                .map(|(slug, _)| slug.clone())
                .collect(),
            role: if r.is_admin() { "admin" } else { "reviewer" }.into(),
            state: if r.disabled_at.is_some() {
                "disabled"
            } else {
                "active"
            }
            .into(),
            disabled_at: maybe_time(r.disabled_at),
            created_at: time(r.created_at),
            id: r.id,
            email: r.email,
        })
        .collect())
}

/// Creates a reviewer account.
#[utoipa::path(post, path = "/api/v1/reviewers", operation_id = "addReviewer", tag = "reviewers",
    params(super::doc::IdempotencyKey),
    request_body = NewReviewerJson,
    responses((status = 200, body = ReviewerJson), (status = 409, body = super::doc::ErrorJson)),
    security(("token" = ["admin"])))]
pub(crate) async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<NewReviewerJson>,
) -> Result<Json<ReviewerJson>, Error> {
    let app = &state.app;
    authz::reviewer_may(app, &caller.reviewer, ReviewerAction::Administer).await?;
    let email: Email = body
        .email
        .parse()
        .map_err(|e: &str| Error::BadRequest(e.to_owned()))?;
    let id = accounts::add_reviewer(app, &email, &body.password, body.admin, &caller.reviewer.email).await?;
    Ok(Json(one_reviewer(&state, &id).await?))
}

/// A change to a reviewer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeJson {
    /// `admin`, `reviewer` (not an admin), `disable`, `enable`, `assign` or
    /// `unassign`.
    change: String,
    /// For `assign` and `unassign`: the model's slug.
    model: Option<String>,
}

/// Changes a reviewer's role, access or models.
#[utoipa::path(post, path = "/api/v1/reviewers/{id}", operation_id = "changeReviewer", tag = "reviewers",
    params(("id" = String, Path, description = "The reviewer's id"), super::doc::IdempotencyKey),
    request_body = ChangeJson,
    responses((status = 200, body = ReviewerJson), (status = 404, body = super::doc::ErrorJson)),
    security(("token" = ["admin"])))]
pub(crate) async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<ChangeJson>,
) -> Result<Json<ReviewerJson>, Error> {
    let app = &state.app;
    authz::reviewer_may(app, &caller.reviewer, ReviewerAction::Administer).await?;
    let target = db::reviewers::find(app.db.pool(), &id)
        .await?
        .ok_or(Error::NotFound)?;
    let actor = caller.reviewer.email.as_str();
    match body.change.as_str() {
        "admin" => accounts::change_reviewer(app, &id, ReviewerChange::Admin(true), actor).await?,
        "reviewer" => accounts::change_reviewer(app, &id, ReviewerChange::Admin(false), actor).await?,
        "disable" => accounts::change_reviewer(app, &id, ReviewerChange::Disabled(true), actor).await?,
        "enable" => accounts::change_reviewer(app, &id, ReviewerChange::Disabled(false), actor).await?,
        "assign" | "unassign" => {
            let email: Email = target
                .email
                .parse()
                .map_err(|e: &str| Error::Internal(anyhow::anyhow!("{e}")))?;
            let model = body
                .model
                .as_deref()
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .ok_or_else(|| Error::BadRequest("name the model".into()))?;
            policy::assign(app, model, &email, body.change == "assign", actor).await?;
        }
        _ => {
            return Err(Error::BadRequest(
                "change is admin, reviewer, disable, enable, assign or unassign".into(),
            ));
        }
    }
    Ok(Json(one_reviewer(&state, &id).await?))
}
