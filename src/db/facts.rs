//! What a fetch needs to know that never changes, kept in memory: the fixed
//! facts of grants and the published files.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::OnceCell;

use crate::db::{self, Db, models::FileInModel};

/// The parts of a grant that never change once it is made.
#[derive(Clone, Debug)]
pub(crate) struct GrantFacts {
    pub(crate) id: String,
    pub(crate) researcher_id: String,
    pub(crate) model_id: String,
    pub(crate) email: String,
}

/// Published files and the fixed facts of grants, kept in memory so that a
/// fetch reads neither from the database once they are known. Neither
/// changes: a published file is immutable, and a grant keeps its researcher
/// and model. What can change about a grant is read by the audit writer.
///
/// Concurrent fetches of a grant or file not yet known wait for one lookup
/// instead of each making its own: when hundreds of clients start at once
/// (a portal just started, a release just announced), they would otherwise
/// take every database connection with the same query and keep the pages
/// waiting.
#[derive(Debug, Default)]
pub(crate) struct FetchFacts {
    grants: Kept<GrantFacts>,
    files: Kept<FileInModel>,
}

/// Entries each map holds before it is emptied and fills again.
const FACTS_KEPT: usize = 100_000;

/// One lookup per key at a time; what it found is kept.
#[derive(Debug)]
struct Kept<T>(Mutex<HashMap<String, Arc<OnceCell<Outcome<T>>>>>);

/// What one lookup came to, shared with every caller that waited for it.
type Outcome<T> = Result<Option<Arc<T>>, Arc<anyhow::Error>>;

/// A failed lookup as each caller that waited for it sees it. Its causes
/// stay reachable, so that a database that stopped answering is still told
/// apart from a bug.
#[derive(Debug)]
struct SharedFailure(Arc<anyhow::Error>);

impl std::fmt::Display for SharedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot look up what the fetch needs")
    }
}

impl std::error::Error for SharedFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause: &(dyn std::error::Error + 'static) = &**self.0;
        Some(cause)
    }
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> Kept<T> {
    fn cell(&self, key: &str) -> Arc<OnceCell<Outcome<T>>> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = map.get(key) {
            return cell.clone();
        }
        if map.len() >= FACTS_KEPT {
            map.clear();
        }
        map.entry(key.to_owned()).or_default().clone()
    }

    /// What `look_up` finds for `key`. Callers that ask while a lookup is
    /// under way wait for it and share its outcome, a failure included
    /// (were each to try again in turn when the database does not answer,
    /// the last would wait once for every caller before it). What it found
    /// is kept; nothing found or a failure is not, so the next caller asks
    /// again.
    async fn get(
        &self,
        key: &str,
        look_up: impl Future<Output = anyhow::Result<Option<T>>>,
    ) -> anyhow::Result<Option<Arc<T>>> {
        let cell = self.cell(key);
        let outcome = cell
            .get_or_init(|| async { look_up.await.map(|found| found.map(Arc::new)).map_err(Arc::new) })
            .await
            .clone();
        if !matches!(outcome, Ok(Some(_))) {
            let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            if map.get(key).is_some_and(|kept| Arc::ptr_eq(kept, &cell)) {
                map.remove(key);
            }
        }
        outcome.map_err(|failure| anyhow::Error::new(SharedFailure(failure)))
    }
}

impl FetchFacts {
    pub(crate) async fn grant(&self, db: &Db, id: &str) -> anyhow::Result<Option<Arc<GrantFacts>>> {
        let look_up = async {
            Ok(db::grants::find_view(db.pool(), id)
                .await?
                .map(|view| GrantFacts {
                    id: view.id,
                    researcher_id: view.researcher_id,
                    model_id: view.model_id,
                    email: view.email,
                }))
        };
        self.grants.get(id, look_up).await
    }

    /// A file of a published release; files not (yet) published are not kept.
    pub(crate) async fn file(&self, db: &Db, id: &str) -> anyhow::Result<Option<Arc<FileInModel>>> {
        self.files
            .get(id, async {
                Ok(db::models::find_published_file(db.pool(), id).await?)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// `callers` asking for one key at once, each with a lookup that takes a
    /// while and comes to `outcome`: what each got, and how many lookups ran.
    async fn at_once(
        callers: usize,
        outcome: fn() -> anyhow::Result<Option<String>>,
    ) -> (Vec<anyhow::Result<Option<Arc<String>>>>, usize) {
        let kept = Arc::new(Kept::<String>::default());
        let lookups = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..callers)
            .map(|_| {
                let (kept, lookups) = (kept.clone(), lookups.clone());
                tokio::spawn(async move {
                    kept.get("g1", async {
                        lookups.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        outcome()
                    })
                    .await
                })
            })
            .collect();
        let mut got = Vec::new();
        for caller in callers {
            got.push(caller.await.unwrap());
        }
        (got, lookups.load(Ordering::SeqCst))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_fetches_of_an_unknown_key_make_one_lookup() {
        let (got, lookups) = at_once(200, || Ok(Some("facts".to_owned()))).await;
        for found in got {
            assert_eq!(found.unwrap().as_deref().map(String::as_str), Some("facts"));
        }
        assert_eq!(lookups, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_lookup_fails_everyone_waiting_for_it_at_once() {
        let (got, lookups) = at_once(100, || Err(sqlx::Error::PoolTimedOut.into())).await;
        for found in got {
            let failure = found.unwrap_err();
            // Still told apart as the database not answering: the domain
            // sorts a failure by the causes in its chain.
            assert!(
                failure
                    .chain()
                    .any(|cause| matches!(cause.downcast_ref(), Some(sqlx::Error::PoolTimedOut))),
                "{failure:#}"
            );
        }
        assert_eq!(lookups, 1, "one lookup, not one per caller in turn");
    }

    #[tokio::test]
    async fn nothing_found_and_failures_are_not_kept() {
        let kept = Kept::<String>::default();
        assert!(kept.get("g1", async { Ok(None) }).await.unwrap().is_none());
        assert!(
            kept.get("g1", async { Err(anyhow::anyhow!("database gone")) })
                .await
                .is_err()
        );
        assert_eq!(kept.0.lock().unwrap().len(), 0);
        let found = kept
            .get("g1", async { Ok(Some("later".to_owned())) })
            .await
            .unwrap();
        assert_eq!(found.as_deref().map(String::as_str), Some("later"));
        let kept_value = kept
            .get("g1", async { Ok(Some("not asked".to_owned())) })
            .await
            .unwrap();
        assert_eq!(kept_value.as_deref().map(String::as_str), Some("later"));
    }
}
