//! What a fetch needs to know that never changes, kept in memory: the fixed
//! facts of grants and the published files.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

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
#[derive(Debug, Default)]
pub(crate) struct FetchFacts {
    grants: Mutex<HashMap<String, Arc<GrantFacts>>>,
    files: Mutex<HashMap<String, Arc<FileInModel>>>,
}

/// Entries each map holds before it is emptied and fills again.
const FACTS_KEPT: usize = 100_000;

fn remember<T>(map: &Mutex<HashMap<String, Arc<T>>>, key: &str, value: Arc<T>) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= FACTS_KEPT {
        map.clear();
    }
    map.insert(key.to_owned(), value);
}

impl FetchFacts {
    pub(crate) async fn grant(&self, db: &Db, id: &str) -> anyhow::Result<Option<Arc<GrantFacts>>> {
        if let Some(found) = self.grants.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(Some(found.clone()));
        }
        let Some(view) = db::grants::find_view(db.pool(), id).await? else {
            return Ok(None);
        };
        let facts = Arc::new(GrantFacts {
            id: view.id,
            researcher_id: view.researcher_id,
            model_id: view.model_id,
            email: view.email,
        });
        remember(&self.grants, id, facts.clone());
        Ok(Some(facts))
    }

    /// A file of a published release; files not (yet) published are not kept.
    pub(crate) async fn file(&self, db: &Db, id: &str) -> anyhow::Result<Option<Arc<FileInModel>>> {
        if let Some(found) = self.files.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(Some(found.clone()));
        }
        let Some(file) = db::models::find_published_file(db.pool(), id).await? else {
            return Ok(None);
        };
        let file = Arc::new(file);
        remember(&self.files, id, file.clone());
        Ok(Some(file))
    }
}
