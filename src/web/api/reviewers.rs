//! Reviewer accounts, for admins.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Caller, maybe_time, time};
use crate::{
    db,
    domain::authz::{self, ReviewerAction},
    web::{AppState, Error},
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
    let app = &state.app;
    authz::reviewer_may(app, &caller.reviewer, ReviewerAction::Administer).await?;
    let rows = db::reviewers::list(app.db.pool()).await?;
    let assignments = db::policy::assignments(app.db.pool()).await?;
    Ok(Json(
        rows.into_iter()
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
            .collect(),
    ))
}
