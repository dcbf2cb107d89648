//! The witness: every checkpoint, also kept where whoever can write the
//! database cannot rewrite it.
//!
//! - An object per checkpoint in the object store (by default the bucket or
//!   directory that holds the weights; `WEIGHTGATE_WITNESS_URL` names
//!   another), under `audit-witness/`, never replaced, and on a bucket with
//!   S3 Object Lock retained in compliance mode for
//!   `WEIGHTGATE_WITNESS_RETENTION`: then not even the store's operator can
//!   delete it.
//! - Optionally a local file each checkpoint is appended to
//!   (`WEIGHTGATE_WITNESS_FILE`), say on another disk or an append-only
//!   mount.
//! - Optionally an e-mail to auditors (`WEIGHTGATE_WITNESS_EMAIL`), who then
//!   hold their own copies.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;

use super::checkpoint::ExportedCheckpoint;
use crate::{
    config::Config,
    db::Db,
    storage::{self, Locked, ObjectStore},
    types::Email,
};

/// Where the witness objects live in their store.
pub(crate) const PREFIX: &str = "audit-witness/";

/// The checkpoints' witness.
pub(crate) struct Witness {
    store: Arc<dyn ObjectStore>,
    retention: Duration,
    file: Option<PathBuf>,
    auditors: Vec<Email>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("store", &self.store)
            .field("file", &self.file)
            .field("auditors", &self.auditors.len())
            .finish_non_exhaustive()
    }
}

/// A checkpoint as a witness holds it, and where.
#[derive(Clone, Debug)]
pub struct Witnessed {
    /// Where it was found, for people: an object's key, a file and line.
    pub(crate) place: String,
    pub(crate) checkpoint: ExportedCheckpoint,
}

impl Witness {
    /// The witness the configuration names; `weights` is the store of the
    /// weight files, used when `WEIGHTGATE_WITNESS_URL` names no other.
    pub(crate) async fn open(config: &Config, weights: Arc<dyn ObjectStore>) -> anyhow::Result<Self> {
        let store = match &config.witness_url {
            Some(url) => storage::open_url(config, url)
                .await
                .context("WEIGHTGATE_WITNESS_URL")?,
            None => weights,
        };
        let auditors = config
            .witness_email
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<Email>()
                    .map_err(|e| anyhow::anyhow!("WEIGHTGATE_WITNESS_EMAIL: {a:?}: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            store,
            retention: config.witness_retention,
            file: config.witness_file.clone(),
            auditors,
        })
    }

    /// The store the witness's objects are kept in.
    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The object key of a checkpoint: its position, time and key id.
    fn key_of(c: &ExportedCheckpoint) -> String {
        format!("{PREFIX}{:020}.{}.{}.json", c.seq, c.at, c.kid)
    }

    /// Writes `c` to every witness configured; says whether the object store
    /// locked it. The object store must take it; the file and the e-mails
    /// must too, or the checkpoint is not stored.
    pub(crate) async fn record(&self, db: &Db, c: &ExportedCheckpoint) -> anyhow::Result<Locked> {
        let json = serde_json::to_string_pretty(c)? + "\n";
        let until = std::time::SystemTime::now() + self.retention;
        let locked = self
            .store
            .put_record(&Self::key_of(c), json.clone().into_bytes(), Some(until))
            .await?;
        if let Some(path) = &self.file {
            let line = serde_json::to_string(c)? + "\n";
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)
                    .with_context(|| format!("cannot open the witness file {}", path.display()))?;
                file.write_all(line.as_bytes())?;
                file.sync_all()?;
                Ok(())
            })
            .await??;
        }
        if !self.auditors.is_empty() {
            let mut tx = db.begin().await?;
            for auditor in &self.auditors {
                crate::mail::enqueue(
                    &mut tx,
                    auditor.as_str(),
                    &format!("weightgate audit checkpoint of event {}", c.seq),
                    &format!(
                        "The audit log reached event {} with hash {} at {} UTC.\n\
                         Keep this message: `weightgate audit verify --checkpoint FILE`, with the JSON\n\
                         below saved as FILE, shows whether the log still holds that history.\n\n{json}",
                        c.seq, c.hash, c.time
                    ),
                )
                .await?;
            }
            tx.commit().await?;
        }
        Ok(locked)
    }

    /// The newest checkpoint in the object store, if any: the last object
    /// by name (position, then time).
    pub(crate) async fn latest(&self) -> anyhow::Result<Option<Witnessed>> {
        match self
            .store
            .list(PREFIX)
            .await
            .context("cannot read the witness")?
            .pop()
        {
            Some(key) => self.object(key).await.map(Some),
            None => Ok(None),
        }
    }

    /// The checkpoint stored in the witness object `key`.
    async fn object(&self, key: String) -> anyhow::Result<Witnessed> {
        let place = format!("the witness object {key}");
        let bytes = self
            .store
            .get_record(&key)
            .await?
            .with_context(|| format!("{place} vanished while the witness was read"))?;
        let text = String::from_utf8(bytes).with_context(|| format!("{place} is not a checkpoint"))?;
        let checkpoint =
            ExportedCheckpoint::parse(&text).with_context(|| format!("{place} is not a checkpoint"))?;
        Ok(Witnessed { place, checkpoint })
    }

    /// Every checkpoint the witness holds: the object store's and the
    /// witness file's.
    pub(crate) async fn read(&self) -> anyhow::Result<Vec<Witnessed>> {
        let mut found = Vec::new();
        for key in self.store.list(PREFIX).await.context("cannot read the witness")? {
            found.push(self.object(key).await?);
        }
        if let Some(path) = &self.file {
            let text = match tokio::fs::read_to_string(path).await {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot read the witness file {}", path.display()));
                }
            };
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let place = format!("line {} of the witness file {}", n + 1, path.display());
                let checkpoint = ExportedCheckpoint::parse(line)
                    .with_context(|| format!("{place} is not a checkpoint"))?;
                found.push(Witnessed { place, checkpoint });
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::AuditKey;

    #[test]
    fn a_witness_object_is_named_by_position_time_and_key() {
        let key = AuditKey::from_seed(&[3; 32]).unwrap();
        let c = ExportedCheckpoint::new(
            &key.sign(42, &"ab".repeat(32), 1_700_000_000_000),
            &key.public_key(),
        );
        let name = Witness::key_of(&c);
        assert_eq!(
            name,
            format!(
                "audit-witness/00000000000000000042.1700000000000.{}.json",
                key.kid
            )
        );
    }
}
