//! Post/redirect/get for signed-in forms: a handler that changed something
//! keeps what the next page should say in the session and answers `303 See
//! Other`; the page it points to shows the message once. A reload of that
//! page sends nothing again, and the browser's history holds only pages.
//!
//! Only signed-in sessions carry a flash: an anonymous visitor's form (apply,
//! sign-in) redirects to a page that needs no state, so an unauthenticated
//! client cannot make the portal store anything by posting.

use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use tower_sessions::Session;

use super::{Error, auth::session_error, pages::BulkResultRow};

const KEY: &str = "flash";

/// What the page after a form says about it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Flash {
    /// What was done ("The policy of demo/model is saved.").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) message: String,
    /// One line per application of a bulk decision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) results: Vec<BulkResultRow>,
}

impl Flash {
    pub(crate) fn message(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            results: Vec::new(),
        }
    }
}

/// Keeps `flash` for the next page and answers `303 See Other` to `to`.
pub(crate) async fn redirect(session: &Session, to: &str, flash: Flash) -> Result<Response, Error> {
    session.insert(KEY, flash).await.map_err(session_error)?;
    Ok(Redirect::to(to).into_response())
}

/// What the previous form left for this page, removed so that it shows once.
pub(crate) async fn take(session: &Session) -> Result<Flash, Error> {
    Ok(session
        .remove::<Flash>(KEY)
        .await
        .map_err(session_error)?
        .unwrap_or_default())
}
