//! Which events a person asks for, by name: the dashboard's audit page and
//! `weightgate audit list|tail|downloads|export` say a filter the same way and
//! have it checked and looked up here, so both refuse the same mistakes.

use crate::{
    db::{self, audit::Filter},
    types::Email,
};

/// A filter as typed: a model's slug and a researcher's e-mail rather than
/// their ids; empty and blank values mean "any".
#[derive(Clone, Debug, Default)]
pub(crate) struct Asked {
    pub(crate) since_ms: Option<i64>,
    pub(crate) until_ms: Option<i64>,
    pub(crate) model: Option<String>,
    pub(crate) researcher: Option<String>,
    pub(crate) grant: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) ip: Option<String>,
    pub(crate) outcome: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("no model is called {0:?}")]
    NoModel(String),
    #[error("no researcher has the e-mail address {0:?}")]
    NoResearcher(String),
    #[error("the start of the period must be earlier than its end")]
    Backwards,
    #[error("the outcome is one of ok, refused, aborted")]
    Outcome,
    #[error(transparent)]
    Action(#[from] crate::types::states::UnknownState),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A value worth filtering on: trimmed, at most 254 characters, not blank.
fn given(value: Option<String>) -> Option<String> {
    let value = value?;
    let value = value.trim();
    (!value.is_empty()).then(|| value.chars().take(254).collect())
}

impl Asked {
    /// The database filter: names looked up, the period checked. `limit`
    /// and paging are left for the caller.
    pub(crate) async fn resolve(self, pool: &sqlx::AnyPool) -> Result<Filter, FilterError> {
        if let (Some(since), Some(until)) = (self.since_ms, self.until_ms)
            && since >= until
        {
            return Err(FilterError::Backwards);
        }
        let model_id = match given(self.model) {
            Some(slug) => Some(
                db::models::find_model_by_slug(pool, &slug)
                    .await?
                    .ok_or(FilterError::NoModel(slug))?
                    .id,
            ),
            None => None,
        };
        let researcher_id = match given(self.researcher) {
            Some(typed) => {
                let email = Email::lookup_key(&typed);
                Some(
                    db::audit::researcher_id_by_email(pool, &email)
                        .await?
                        .ok_or(FilterError::NoResearcher(email))?,
                )
            }
            None => None,
        };
        let outcome = given(self.outcome);
        if outcome
            .as_deref()
            .is_some_and(|o| !["ok", "refused", "aborted"].contains(&o))
        {
            return Err(FilterError::Outcome);
        }
        let action = given(self.action);
        if let Some(action) = &action {
            action.parse::<crate::audit::Action>()?;
        }
        Ok(Filter {
            grant_id: given(self.grant),
            action,
            model_id,
            researcher_id,
            client_ip: given(self.ip),
            outcome,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            after_seq: None,
            before_seq: None,
            limit: 0,
        })
    }
}
