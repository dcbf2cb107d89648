//! The API's OpenAPI 3.1 document, generated from the handlers' own
//! annotations and served at `/api/v1/openapi.json`. A test checks that
//! every API route of the router is in it, and validates it.

use axum::{Json, http::header, response::IntoResponse};
use serde::{Deserialize, Serialize};
use utoipa::{
    IntoParams, Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{applications, audit, grants, models, own_tokens, reviewers, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "weightgate",
        description = "Review access requests to model weights, manage grants, and audit downloads. \
            Every route takes a token (`Authorization: Bearer wgt_…`) whose scopes it names: `read`, \
            `review` (which includes `read`), `admin`, `audit`. A token acts as the reviewer who made it, \
            on that reviewer's models. Writes may carry an `Idempotency-Key`: sent again with the same \
            key and body within a day, a write is answered as the first time, not done twice. Errors \
            are `{\"error\": code, \"message\": text, \"request_id\": id}`.",
    ),
    paths(
        models::list,
        applications::list,
        applications::one,
        applications::approve,
        applications::deny,
        applications::ask,
        applications::bulk,
        grants::list,
        grants::one,
        grants::extend,
        grants::revoke,
        audit::events,
        audit::downloads,
        audit::who_has,
        audit::anomalies,
        audit::verify,
        audit::checkpoints,
        audit::export,
        reviewers::list,
        reviewers::add,
        reviewers::change,
        own_tokens::list,
        own_tokens::revoke,
        webhooks::list,
        webhooks::subscribe,
        webhooks::deliveries,
        webhooks::remove,
        webhooks::rotate,
        webhooks::enable,
        webhooks::resend,
    ),
    modifiers(&TokenAuth),
    tags(
        (name = "models", description = "The models a reviewer reviews"),
        (name = "applications", description = "The review queue and decisions"),
        (name = "grants", description = "Grants, extensions and revocation"),
        (name = "audit", description = "The audit log and its reports"),
        (name = "reviewers", description = "Reviewer accounts, for admins"),
        (name = "tokens", description = "The caller's own tokens: listed and revoked; made on the account page or the command line only"),
        (name = "webhooks", description = "Subscriptions to events, signed per Standard Webhooks, and their delivery logs"),
    )
)]
pub(crate) struct ApiDoc;

struct TokenAuth;

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token made on the dashboard's account page or with `weightgate token create`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorJson {
    /// A stable code for programs, e.g. `not_found`, `insufficient_scope`.
    error: String,
    message: String,
    /// Quote it when reporting a problem.
    request_id: String,
}

/// The header that makes a write idempotent.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub(crate) struct IdempotencyKey {
    /// 1 to 255 visible ASCII characters, new for each write (a UUID);
    /// the same write sent again with the same key is done once.
    #[serde(rename = "Idempotency-Key")]
    #[expect(
        dead_code,
        reason = "read by the idempotency layer, declared here for the document"
    )]
    idempotency_key: Option<String>,
}

/// The document as JSON.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub(crate) async fn openapi_json() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "public, max-age=300")], Json(document()))
}
