//! The states the database stores as text, as enums. Text becomes one of these
//! in `db` (a row field marked `#[sqlx(try_from = "String")]`, a bind of
//! `as_str()`); everywhere else a state is compared as a value, so a typo is a
//! compile error and a `match` names every case.

/// Defines an enum stored as text: `as_str`, `ALL`, `Display`, `FromStr` and
/// `TryFrom<String>` (what a row field needs), each from one list of names.
macro_rules! stored_as_text {
    ($(#[$meta:meta])* $vis:vis $name:ident ($noun:literal) { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order written.
            $vis const ALL: &[Self] = &[$(Self::$variant,)+];

            /// The stored text.
            $vis fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::types::states::UnknownState;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err($crate::types::states::UnknownState {
                        what: $noun,
                        text: s.chars().take(40).collect(),
                        known: &[$($text,)+],
                    }),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::types::states::UnknownState;

            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    };
}

pub(crate) use stored_as_text;

/// Text that names no value of a state: a row written by something else, or
/// a form field or flag that was not one of the choices offered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {what} (one of {})", known.join(", "))]
pub struct UnknownState {
    pub(crate) what: &'static str,
    pub(crate) text: String,
    pub(crate) known: &'static [&'static str],
}

stored_as_text! {
    /// Where an application is in its life. The moves between these are
    /// `domain::applications`' and `domain::reviews`' to make.
    pub Status ("an application status") {
        /// Sent, but the e-mail address is not confirmed yet; reviewers do not see it.
        Unconfirmed = "unconfirmed",
        /// In the reviewers' queue.
        Pending = "pending",
        /// A reviewer asked the researcher a question; out of the queue until answered.
        InfoRequested = "info_requested",
        Approved = "approved",
        Denied = "denied",
    }
}

impl Status {
    /// Still waiting for a decision (in the queue, or with a question out).
    pub(crate) fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::InfoRequested)
    }
}

stored_as_text! {
    /// What an application asks for.
    pub Kind ("a kind of application") {
        /// Access to a model.
        New = "new",
        /// A longer life for an existing grant.
        Renewal = "renewal",
        /// Another look at a denied application.
        Appeal = "appeal",
    }
}

stored_as_text! {
    /// One reviewer's vote on an application.
    pub Decision ("a review decision") {
        Approve = "approve",
        Deny = "deny",
    }
}

stored_as_text! {
    /// What an API token may be used for (`crate::domain::tokens`).
    pub Scope ("a token scope") {
        /// Read applications, grants and models (the reviewer's models).
        Read = "read",
        /// Read, and decide, ask, extend and revoke on the reviewer's models.
        Review = "review",
        /// Manage reviewers and models; the owner must be an admin.
        Admin = "admin",
        /// Read the audit log and its reports; the owner must be an admin.
        Audit = "audit",
    }
}

stored_as_text! {
    /// When a reviewer hears of applications that wait for them.
    pub Notify ("a notification choice") {
        /// An e-mail for each application.
        Immediate = "immediate",
        /// One e-mail a day listing what waits.
        Digest = "digest",
        Off = "off",
    }
}

stored_as_text! {
    /// Where an access URL of a grant came from.
    pub Origin ("an access URL's origin") {
        /// The approval e-mail.
        Approval = "approval",
        /// Made by the researcher on My access (for the download client, or
        /// a named one).
        MyAccess = "my_access",
    }
}

stored_as_text! {
    /// Who wrote a message in an application's thread.
    pub Author ("an author of a message") {
        Researcher = "researcher",
        Reviewer = "reviewer",
    }
}

#[cfg(test)]
mod tests {
    use std::{fmt, str::FromStr};

    use super::*;

    #[test]
    fn every_state_reads_back_from_its_text() {
        fn round_trip<T: FromStr + Copy + PartialEq + fmt::Debug + fmt::Display>(all: &[T]) {
            for &v in all {
                assert_eq!(v.to_string().parse::<T>().ok(), Some(v));
            }
        }
        round_trip(Status::ALL);
        round_trip(Kind::ALL);
        round_trip(Decision::ALL);
        round_trip(Notify::ALL);
        round_trip(Author::ALL);
        round_trip(Origin::ALL);
    }

    #[test]
    fn unknown_text_is_refused_by_name() {
        let err = "Pending".parse::<Status>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"Pending\" is not an application status \
             (one of unconfirmed, pending, info_requested, approved, denied)"
        );
        assert!("".parse::<Kind>().is_err());
        assert!("approve ".parse::<Decision>().is_err());
    }

    /// The values a migration lists after `column IN (` or `column NOT IN (`,
    /// each list once.
    fn listed(sql: &str, column: &str) -> Vec<Vec<String>> {
        let mut lists = Vec::new();
        for opening in [format!("{column} IN ("), format!("{column} NOT IN (")] {
            for (at, _) in sql.match_indices(&opening) {
                let before = sql[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // another column whose name ends in this one's
                }
                let rest = &sql[at + opening.len()..];
                let list = &rest[..rest.find(')').expect("a closed list")];
                lists.push(
                    list.split(',')
                        .map(|v| v.trim().trim_matches('\'').to_owned())
                        .collect(),
                );
            }
        }
        lists
    }

    #[test]
    fn the_database_accepts_exactly_the_states_the_portal_knows() {
        fn same<T: fmt::Display>(sql: &str, column: &str, all: &[T], checks: usize) {
            let want: Vec<String> = all.iter().map(ToString::to_string).collect();
            let lists = listed(sql, column);
            assert_eq!(lists.len(), checks, "{column}: {lists:?}");
            for list in lists {
                assert_eq!(list, want, "{column}");
            }
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        // PostgreSQL has one CHECK per column, SQLite a trigger for inserts
        // and one for updates.
        for (backend, checks) in [("postgres", 1), ("sqlite", 2)] {
            let sql =
                std::fs::read_to_string(dir.join(backend).join("20261130140000_known_states.sql")).unwrap();
            same(&sql, "status", Status::ALL, checks);
            same(&sql, "kind", Kind::ALL, checks);
            same(&sql, "decision", Decision::ALL, checks);
            same(&sql, "notify", Notify::ALL, checks);
            same(&sql, "author_kind", Author::ALL, checks);
        }
        for backend in ["postgres", "sqlite"] {
            let sql =
                std::fs::read_to_string(dir.join(backend).join("20261130150000_access_urls.sql")).unwrap();
            same(&sql, "origin", Origin::ALL, 1);
        }
    }
}
