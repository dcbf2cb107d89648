//! weightgate's integration tests: the real server on port 0, each test with
//! its own data directory, driven over HTTP like a browser or a script.
//!
//! Every scenario runs twice: `…::sqlite` on the embedded database and
//! `…::postgres` on a fresh PostgreSQL database when
//! `WEIGHTGATE_TEST_POSTGRES_URL` is set (it says so loudly when it is not,
//! and fails under CI).

/// Runs the scenario `async fn NAME()` beside it on SQLite and on
/// PostgreSQL, as the tests `NAME::sqlite` and `NAME::postgres`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            // Two workers: a scenario that waits on a child process
            // blocks one, and the portal under test keeps the other.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                crate::helpers::TEST_DB
                    .scope(crate::helpers::TestDb::Sqlite, super::$name())
                    .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = crate::helpers::TestDb::postgres().await {
                    crate::helpers::TEST_DB.scope(db, super::$name()).await
                }
            }
        }
    };
}

mod helpers;

mod access_urls;
mod adversary;
mod api;
mod audit;
mod browser;
mod cli;
mod client;
mod dashboard;
mod downloads;
mod faults;
mod hostile;
mod journey;
mod mail;
mod ops;
mod replicas;
mod researcher;
mod review;
mod routes;
mod storage;
mod trees;
mod webhooks;
