//! Who may do what: every authorization rule of the portal, in one place.
//! Handlers and commands ask here before they read or change anything, and
//! the route-by-role test (`tests/it/routes.rs`) walks every route of the
//! router for every role against [`crate::web::Access`].
//!
//! Signing in is not decided here: the web extractors establish who is
//! asking (an enabled reviewer with a current password, a researcher with a
//! session); this module decides what that person may do.

use crate::{
    app::App,
    db::{self, reviewers::Reviewer},
    domain::error::Result,
};

/// Why something was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Denied {
    /// What was asked for is not the asker's to see; answered as if it did
    /// not exist, so that its existence is not revealed.
    #[error("no such application or grant")]
    Hidden,
    #[error("you are not a reviewer of this model")]
    NotAssigned,
    #[error("only admins may do this")]
    AdminsOnly,
}

impl From<Denied> for crate::domain::Error {
    fn from(err: Denied) -> Self {
        match err {
            Denied::Hidden => Self::not_found(err.to_string()),
            Denied::NotAssigned => Self::Forbidden {
                code: "not_assigned",
                message: err.to_string(),
            },
            Denied::AdminsOnly => Self::Forbidden {
                code: "admins_only",
                message: err.to_string(),
            },
        }
    }
}

/// What a reviewer asks to do.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ReviewerAction<'a> {
    /// See an application or grant of this model, with the researcher's
    /// data and history.
    Read { model_id: &'a str },
    /// Decide, ask, extend or revoke for this model.
    Act { model_id: &'a str },
    /// Go past a model's approval policy (an extension without the other
    /// approvals, or of an ended grant).
    OverridePolicy,
    /// Manage reviewers, models, policies and templates; read the audit log.
    Administer,
}

/// Whether `reviewer` may do `action`. Admins may do everything; reviewers
/// read and act for the models an admin assigned them, and nothing else.
pub(crate) async fn reviewer_may(app: &App, reviewer: &Reviewer, action: ReviewerAction<'_>) -> Result<()> {
    if reviewer.is_admin() {
        return Ok(());
    }
    let denied = match action {
        ReviewerAction::Read { model_id } => {
            if assigned(app, reviewer, model_id).await? {
                return Ok(());
            }
            Denied::Hidden
        }
        ReviewerAction::Act { model_id } => {
            if assigned(app, reviewer, model_id).await? {
                return Ok(());
            }
            Denied::NotAssigned
        }
        ReviewerAction::OverridePolicy | ReviewerAction::Administer => Denied::AdminsOnly,
    };
    Err(denied.into())
}

/// Whether an admin assigned `reviewer` to the model.
async fn assigned(app: &App, reviewer: &Reviewer, model_id: &str) -> Result<bool> {
    Ok(db::policy::models_of(app.db.pool(), &reviewer.id)
        .await?
        .iter()
        .any(|m| m == model_id))
}

/// The models whose applications and grants `reviewer` sees in lists:
/// `None` for every model (an admin).
pub(crate) async fn visible_models(app: &App, reviewer: &Reviewer) -> Result<Option<Vec<String>>> {
    if reviewer.is_admin() {
        Ok(None)
    } else {
        Ok(Some(db::policy::models_of(app.db.pool(), &reviewer.id).await?))
    }
}

/// Whether the researcher `researcher_id` may see and act on a record that
/// belongs to `owner_id`: their own applications and grants only.
pub(crate) fn researcher_owns(researcher_id: &str, owner_id: &str) -> Result<(), Denied> {
    if researcher_id == owner_id {
        Ok(())
    } else {
        Err(Denied::Hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_researcher_owns_only_their_own_records() {
        assert_eq!(researcher_owns("r1", "r1"), Ok(()));
        assert_eq!(researcher_owns("r1", "r2"), Err(Denied::Hidden));
    }
}
