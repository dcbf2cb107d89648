//! Models, as the caller sees them.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Caller, time};
use crate::{
    db,
    domain::authz,
    web::{AppState, Error},
};

/// A model.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelJson {
    id: String,
    slug: String,
    title: String,
    /// The version of the terms applicants accept now.
    terms_version: i64,
    created_at: String,
    /// Bytes each grant may fetch, when limited.
    quota_bytes: Option<i64>,
    /// Whole-file fetches each grant may make, when limited.
    quota_files: Option<i64>,
    /// Days a denied researcher waits before applying again.
    reapply_after_days: i64,
}

/// The models whose applications and grants the caller reviews (every
/// model for an admin).
#[utoipa::path(get, path = "/api/v1/models", operation_id = "listModels", tag = "models",
    responses((status = 200, body = Vec<ModelJson>)),
    security(("token" = ["read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ModelJson>>, Error> {
    let visible = authz::visible_models(&state.app, &caller.reviewer).await?;
    let models = db::models::list_models(state.app.db.pool()).await?;
    Ok(Json(
        models
            .into_iter()
            .filter(|m| visible.as_ref().is_none_or(|ids| ids.contains(&m.id)))
            .map(|m| ModelJson {
                id: m.id,
                slug: m.slug,
                title: m.title,
                terms_version: m.terms_version,
                created_at: time(m.created_at),
                quota_bytes: m.quota_bytes,
                quota_files: m.quota_files,
                reapply_after_days: m.reapply_after_days,
            })
            .collect(),
    ))
}
