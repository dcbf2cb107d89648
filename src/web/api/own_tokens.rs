//! The caller's own API tokens: listed and revoked, never made. A token is
//! made on the account page or at the command line only, so that a token
//! that leaks cannot mint itself a longer life or a wider scope.

use axum::{Json, extract::State};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Caller, doc, maybe_time, time};
use crate::{
    domain::tokens::{self, RevokedBy},
    types::now_ms,
    web::{AppState, ClientInfo, Error, extract::Path},
};

/// A token, never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TokenJson {
    id: String,
    name: String,
    scopes: Vec<String>,
    /// `active`, `expired` or `revoked`.
    state: String,
    created_at: String,
    expires_at: String,
    last_used_at: Option<String>,
}

impl From<&tokens::Token> for TokenJson {
    fn from(t: &tokens::Token) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            scopes: t.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            state: t.state(now_ms()).to_owned(),
            created_at: time(t.created_at),
            expires_at: time(t.expires_at),
            last_used_at: maybe_time(t.last_used_at),
        }
    }
}

/// The caller's tokens, newest first.
#[utoipa::path(get, path = "/api/v1/tokens", operation_id = "listTokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenJson>)),
    security(("token" = ["read"])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenJson>>, Error> {
    let list = tokens::list(&state.app, &caller.reviewer, false).await?;
    Ok(Json(list.iter().map(TokenJson::from).collect()))
}

/// Revokes one of the caller's tokens (the one calling, too).
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", operation_id = "revokeToken", tag = "tokens",
    params(("id" = String, Path, description = "The token's id"), doc::IdempotencyKey),
    responses((status = 200, body = TokenJson), (status = 404, body = doc::ErrorJson)),
    security(("token" = ["read"])))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ClientInfo(client): ClientInfo,
    Path(id): Path<String>,
) -> Result<Json<TokenJson>, Error> {
    let own = tokens::list(&state.app, &caller.reviewer, false).await?;
    if !own.iter().any(|t| t.id == id) {
        return Err(Error::NotFound);
    }
    let revoked = tokens::revoke(&state.app, &id, RevokedBy::Reviewer(&caller.reviewer), client).await?;
    Ok(Json(TokenJson::from(&revoked)))
}
