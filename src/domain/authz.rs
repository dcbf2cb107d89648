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
    types::states::Scope,
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
    #[error("this token does not have the {0} scope this needs")]
    Scope(Scope),
}

impl Denied {
    /// The rule's name, for programs and the audit log.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Denied::Hidden => "not_found",
            Denied::NotAssigned => "not_assigned",
            Denied::AdminsOnly => "admins_only",
            Denied::Scope(_) => "insufficient_scope",
        }
    }
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
            Denied::Scope(_) => Self::Forbidden {
                code: "insufficient_scope",
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

/// Whether a request made with a token holding `held` may use a route that
/// needs `scope`.
/// A token acts as its owner and never beyond: `review` includes `read`;
/// `admin` and `audit` hold only while the owner is an admin. What the owner
/// may do with each record is then asked of [`reviewer_may`], as for a
/// signed-in reviewer.
pub(crate) fn token_may(owner: &Reviewer, held: &[Scope], scope: Scope) -> Result<(), Denied> {
    let held = held.contains(&scope) || (scope == Scope::Read && held.contains(&Scope::Review));
    if !held {
        return Err(Denied::Scope(scope));
    }
    match scope {
        Scope::Admin | Scope::Audit if !owner.is_admin() => Err(Denied::AdminsOnly),
        _ => Ok(()),
    }
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

    #[test]
    fn a_token_acts_within_its_scopes_and_its_owners_role() {
        let reviewer = |admin: bool| Reviewer {
            id: "r".into(),
            email: "r@lab.example.org".into(),
            password_hash: String::new(),
            is_admin: i64::from(admin),
            created_at: 0,
            notify: crate::types::states::Notify::ALL[0],
            last_digest_at: None,
            disabled_at: None,
            session_epoch: 0,
        };
        let (admin, plain) = (reviewer(true), reviewer(false));
        use Scope::*;
        assert_eq!(token_may(&plain, &[Review], Read), Ok(()), "review includes read");
        assert_eq!(token_may(&plain, &[Read], Review), Err(Denied::Scope(Review)));
        assert_eq!(token_may(&admin, &[Admin], Read), Err(Denied::Scope(Read)));
        assert_eq!(token_may(&admin, &[Audit], Audit), Ok(()));
        assert_eq!(
            token_may(&plain, &[Audit], Audit),
            Err(Denied::AdminsOnly),
            "an audit token of a reviewer no longer an admin"
        );
        assert_eq!(token_may(&admin, &[], Read), Err(Denied::Scope(Read)));
    }
}
