//! The one error every domain function returns: the cases a caller must tell
//! apart, each concept's own error sorted into them where it is defined, and
//! failures of the services under the portal sorted into "unavailable" (try
//! again later) and "internal" (a bug). The web turns each case into a status
//! code with one exhaustive `match`; the operator commands print the message.

use std::time::Duration;

/// A domain function's result.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What was asked for does not exist, or is not the asker's to see.
    #[error("{0}")]
    NotFound(String),
    /// It exists, but its state does not allow this now (already decided,
    /// already revoked, appealed once).
    #[error("{0}")]
    Conflict(String),
    /// What was entered is refused; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The asker may not do this; `code` names the rule for programs.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// Too much of something at once; asking again after `retry_after` works.
    #[error("{what}")]
    Busy {
        /// Which limit, for programs and metrics.
        limit: &'static str,
        /// The limit in words.
        what: &'static str,
        retry_after: Duration,
    },
    /// A service the portal needs (database, object store, audit log, disk)
    /// failed; nothing was changed, and trying again later works.
    #[error("{message}")]
    Unavailable {
        /// What was unavailable, for metrics: `database`, `audit_log`,
        /// `object_store` or `disk`.
        what: &'static str,
        /// What the person is told.
        message: String,
    },
    /// Anything else: a bug, or a failure nobody can act on.
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl Error {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound(what.into())
    }

    pub(crate) fn conflict(why: impl Into<String>) -> Self {
        Self::Conflict(why.into())
    }

    pub(crate) fn invalid(why: impl Into<String>) -> Self {
        Self::Invalid(why.into())
    }

    pub(crate) fn unavailable(what: &'static str, message: impl Into<String>) -> Self {
        Self::Unavailable {
            what,
            message: message.into(),
        }
    }
}

/// Sorts a failure from below the domain: a service that is down or full is
/// `Unavailable`, a password check the portal has no room for is `Busy`,
/// anything else `Internal`.
impl From<anyhow::Error> for Error {
    fn from(err: anyhow::Error) -> Self {
        if err.is::<crate::crypto::passwords::PasswordsBusy>() {
            return Error::Busy {
                limit: "password_checks",
                what: "The portal is busy checking other passwords",
                retry_after: Duration::from_secs(1),
            };
        }
        let sorted = sort_failure(&err);
        if let Some(Error::Unavailable { message: told, .. }) = &sorted {
            // The person is told what to do; the operator needs what failed.
            tracing::warn!(
                error = format!("{err:#}"),
                told = told.as_str(),
                "a service is unavailable"
            );
        }
        sorted.unwrap_or(Error::Internal(err))
    }
}

/// `Unavailable` for a service that is down or full, `None` for anything else.
fn sort_failure(err: &anyhow::Error) -> Option<Error> {
    if err.is::<crate::audit::AuditUnavailable>() {
        return Some(Error::unavailable(
            "audit_log",
            "The audit log cannot be written right now, so nothing was sent. \
             Please try again in a few minutes.",
        ));
    }
    if err.is::<crate::storage::StoreUnavailable>() {
        return Some(Error::unavailable(
            "object_store",
            "The file store is not answering right now; nothing was sent. \
             Please try again in a few minutes.",
        ));
    }
    for cause in err.chain() {
        if let Some(db) = cause.downcast_ref::<sqlx::Error>()
            && let Some(unavailable) = database_unavailable(db)
        {
            return Some(unavailable);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return Some(disk_full());
        }
    }
    None
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        Error::from(anyhow::Error::from(err))
    }
}

/// Failures that are bugs wherever the domain meets them.
macro_rules! internal {
    ($($from:ty),+) => {
        $(impl From<$from> for Error {
            fn from(err: $from) -> Self {
                Error::Internal(err.into())
            }
        })+
    };
}

internal!(
    serde_json::Error,
    tokio::task::JoinError,
    tokio::sync::AcquireError,
    std::num::TryFromIntError
);

/// A file the domain reads or writes: a full disk is `Unavailable`.
impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::from(anyhow::Error::from(err))
    }
}

fn disk_full() -> Error {
    Error::unavailable(
        "disk",
        "The portal's disk is full; nothing was saved. Please try again later.",
    )
}

fn database_unavailable(err: &sqlx::Error) -> Option<Error> {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            Some(Error::unavailable(
                "database",
                "The database is not answering right now; nothing was saved. Please try again in a minute.",
            ))
        }
        // SQLITE_FULL: the disk holding the embedded database is full.
        sqlx::Error::Database(e) if e.code().as_deref() == Some("13") => Some(disk_full()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_below_is_sorted_by_what_it_means() {
        let pool = Error::from(sqlx::Error::PoolTimedOut);
        assert!(
            matches!(pool, Error::Unavailable { what: "database", .. }),
            "{pool:?}"
        );
        let full = Error::from(anyhow::Error::from(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        assert!(
            matches!(full, Error::Unavailable { what: "disk", ref message } if message.contains("disk is full")),
            "{full:?}"
        );
        let busy = Error::from(anyhow::Error::from(crate::crypto::passwords::PasswordsBusy));
        assert!(
            matches!(
                busy,
                Error::Busy {
                    limit: "password_checks",
                    ..
                }
            ),
            "{busy:?}"
        );
        let bug = Error::from(anyhow::anyhow!("a bug"));
        assert!(matches!(bug, Error::Internal(_)), "{bug:?}");
        let row = Error::from(sqlx::Error::RowNotFound);
        assert!(matches!(row, Error::Internal(_)), "{row:?}");
    }
}
