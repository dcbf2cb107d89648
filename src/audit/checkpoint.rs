//! Signed checkpoints of the chain's head.
//!
//! The hash chain shows an edit, a deletion or a reordering, but not a log cut
//! short after its last event: the shorter log is a valid chain too. A
//! checkpoint signs "event SEQ had hash HASH at time AT" with an Ed25519 key
//! kept in `signing_keys`; a log that later lacks event SEQ, or holds another
//! hash there, was truncated or rewritten. An operator who exports a
//! checkpoint (with its public key) and keeps it elsewhere can show this even
//! against someone who deleted the checkpoints or replaced the key.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{
    GENESIS,
    verify::{self, CheckpointSource, Problem},
};
use crate::{
    db::{self, Db, audit::CheckpointRow},
    links::load_or_create_keys,
    types::{format_ms_rfc3339, new_id, now_ms},
};

/// The `signing_keys` purpose of checkpoint keys: 32-byte Ed25519 seeds.
pub const KEY_PURPOSE: &str = "audit-ed25519";

/// The first line of the signed text, and the `format` of an exported checkpoint.
pub const FORMAT: &str = "weightgate-audit-checkpoint-v1";

/// The text a checkpoint's signature covers.
pub fn signed_text(seq: i64, hash: &str, at: i64) -> String {
    format!("{FORMAT}\n{seq}\n{hash}\n{at}")
}

/// `true` when `signature` (hex) is `public`'s signature of the checkpoint.
pub fn signature_holds(public: &VerifyingKey, seq: i64, hash: &str, at: i64, signature: &str) -> bool {
    let Ok(bytes) = hex::decode(signature) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&bytes) else {
        return false;
    };
    public
        .verify_strict(signed_text(seq, hash, at).as_bytes(), &signature)
        .is_ok()
}

/// The key that signs new checkpoints.
pub struct AuditKey {
    pub kid: String,
    signing: SigningKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    /// The newest checkpoint key, made on first use.
    pub async fn load(db: &Db) -> anyhow::Result<Self> {
        let keys = load_or_create_keys(db, KEY_PURPOSE, 32).await?;
        let (kid, seed) = keys
            .into_iter()
            .next()
            .context("no audit checkpoint key could be made")?;
        Self::from_seed(kid, &seed)
    }

    pub fn from_seed(kid: String, seed: &[u8]) -> anyhow::Result<Self> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| anyhow::anyhow!("audit key {kid} is not a 32-byte Ed25519 seed"))?;
        Ok(Self {
            kid,
            signing: SigningKey::from_bytes(&seed),
        })
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// A checkpoint of event `seq` with hash `hash`, signed at `at`.
    pub fn sign(&self, seq: i64, hash: &str, at: i64) -> CheckpointRow {
        let signature = self.signing.sign(signed_text(seq, hash, at).as_bytes());
        CheckpointRow {
            id: new_id(),
            seq,
            hash: hash.to_owned(),
            at,
            kid: self.kid.clone(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

/// The public halves of every checkpoint key in the database, by key id.
pub async fn verifying_keys(db: &Db) -> anyhow::Result<HashMap<String, VerifyingKey>> {
    db::keys::list(db.pool(), KEY_PURPOSE)
        .await?
        .into_iter()
        .map(|k| {
            let seed = URL_SAFE_NO_PAD
                .decode(&k.secret)
                .with_context(|| format!("stored audit key {} is not valid base64", k.kid))?;
            let key = AuditKey::from_seed(k.kid.clone(), &seed)?;
            Ok((k.kid, key.public_key()))
        })
        .collect()
}

/// A checkpoint as an operator keeps it away from the portal: everything
/// needed to check it, including the public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedCheckpoint {
    pub format: String,
    pub seq: i64,
    pub hash: String,
    pub at: i64,
    /// `at` in RFC 3339, for people; not signed.
    pub time: String,
    pub kid: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
    /// The Ed25519 signature of [`signed_text`], hex.
    pub signature: String,
}

impl ExportedCheckpoint {
    pub fn new(c: &CheckpointRow, public: &VerifyingKey) -> Self {
        Self {
            format: FORMAT.to_owned(),
            seq: c.seq,
            hash: c.hash.clone(),
            at: c.at,
            time: format_ms_rfc3339(c.at),
            kid: c.kid.clone(),
            public_key: hex::encode(public.to_bytes()),
            signature: c.signature.clone(),
        }
    }

    /// Reads an exported checkpoint, refusing anything that is not one.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let exported: Self = serde_json::from_str(text).context("not an exported weightgate checkpoint")?;
        anyhow::ensure!(
            exported.format == FORMAT,
            "not an exported weightgate checkpoint: format is {:?}, expected {FORMAT:?}",
            exported.format
        );
        exported.public()?;
        Ok(exported)
    }

    /// The public key it names.
    pub fn public(&self) -> anyhow::Result<VerifyingKey> {
        let bytes: [u8; 32] = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("the checkpoint's public_key is not 32 bytes of hex")?;
        VerifyingKey::from_bytes(&bytes).context("the checkpoint's public_key is not an Ed25519 key")
    }

    /// `true` when the signature is the named key's signature of the checkpoint.
    pub fn signature_holds(&self) -> bool {
        self.public()
            .is_ok_and(|public| signature_holds(&public, self.seq, &self.hash, self.at, &self.signature))
    }
}

/// A checkpoint of the current head.
#[derive(Clone, Debug)]
pub struct Checkpointed {
    pub checkpoint: CheckpointRow,
    pub public_key: VerifyingKey,
    /// `false` when this key had already signed the head.
    pub new: bool,
}

impl Checkpointed {
    pub fn exported(&self) -> ExportedCheckpoint {
        ExportedCheckpoint::new(&self.checkpoint, &self.public_key)
    }
}

/// Signs the current head, after checking the events since the last
/// checkpoint: a damaged log is never signed. When this key already signed
/// the head, returns that checkpoint.
pub async fn checkpoint(db: &Db) -> anyhow::Result<Checkpointed> {
    let key = AuditKey::load(db).await?;
    let public_key = key.public_key();
    let (head_seq, head_hash) = db::audit::head(db.pool())
        .await?
        .context("the audit log is empty: there is nothing to sign yet")?;
    let refuse = |problem: Problem| {
        anyhow::anyhow!(
            "the audit log is damaged, so no checkpoint was signed: {problem}; run `weightgate audit verify`"
        )
    };
    let start = match db::audit::latest_checkpoint(db.pool()).await? {
        None => (0, GENESIS.to_owned()),
        Some(last) => {
            let keys = verifying_keys(db).await?;
            let source = CheckpointSource::stored(&last);
            let Some(public) = keys.get(&last.kid) else {
                return Err(refuse(Problem::UnknownKey {
                    source,
                    kid: last.kid,
                }));
            };
            if !signature_holds(public, last.seq, &last.hash, last.at, &last.signature) {
                return Err(refuse(Problem::BadSignature { source }));
            }
            if last.seq > head_seq {
                return Err(refuse(Problem::Truncated {
                    source,
                    checkpoint_seq: last.seq,
                    log_end: Some(head_seq),
                }));
            }
            match db::audit::find_event(db.pool(), last.seq).await? {
                Some(event) if event.hash == last.hash => {}
                Some(_) => {
                    return Err(refuse(Problem::Rewritten {
                        source,
                        seq: last.seq,
                    }));
                }
                None => {
                    return Err(refuse(Problem::Missing {
                        first: last.seq,
                        last: last.seq,
                    }));
                }
            }
            if last.seq == head_seq && last.kid == key.kid {
                return Ok(Checkpointed {
                    checkpoint: last,
                    public_key,
                    new: false,
                });
            }
            (last.seq, last.hash)
        }
    };
    let walk = verify::walk(db, start, Some(head_seq)).await?;
    if let Some(problem) = walk.problem {
        return Err(refuse(problem));
    }
    anyhow::ensure!(
        walk.last.0 == head_seq && walk.last.1 == head_hash,
        "the audit log changed while it was being checked; try again"
    );
    let signed = key.sign(head_seq, &head_hash, now_ms());
    let new = db::audit::insert_checkpoint(db.pool(), &signed).await?;
    let checkpoint = if new {
        signed
    } else {
        db::audit::find_checkpoint(db.pool(), head_seq, &key.kid)
            .await?
            .context("a checkpoint of this event vanished while it was being written")?
    };
    Ok(Checkpointed {
        checkpoint,
        public_key,
        new,
    })
}

/// Signs the head if it moved since the newest checkpoint.
pub async fn checkpoint_if_moved(db: &Db) -> anyhow::Result<Option<Checkpointed>> {
    let Some((head_seq, _)) = db::audit::head(db.pool()).await? else {
        return Ok(None);
    };
    if let Some(last) = db::audit::latest_checkpoint(db.pool()).await?
        && last.seq == head_seq
    {
        return Ok(None);
    }
    checkpoint(db).await.map(Some)
}

/// Signs the head every `every` (at least a second) whenever it moved; runs
/// until the task is dropped. A failure is logged and tried again next time,
/// so a damaged log keeps being reported rather than signed.
pub async fn checkpoint_periodically(db: Db, every: Duration) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: skip it, so a start does not sign at once.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match checkpoint_if_moved(&db).await {
            Ok(Some(done)) if done.new => tracing::info!(
                seq = done.checkpoint.seq,
                kid = %done.checkpoint.kid,
                "signed an audit checkpoint"
            ),
            Ok(_) => {}
            Err(err) => tracing::error!(error = %format!("{err:#}"), "cannot sign an audit checkpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::from_seed("k1".into(), &[7; 32]).unwrap()
    }

    #[test]
    fn the_signed_text_names_format_position_hash_and_time() {
        assert_eq!(
            signed_text(42, "ab12", 1_700_000_000_000),
            "weightgate-audit-checkpoint-v1\n42\nab12\n1700000000000"
        );
    }

    #[test]
    fn a_checkpoint_verifies_only_as_signed() {
        let key = key();
        let c = key.sign(42, "ab12", 1_000);
        let public = key.public_key();
        assert!(signature_holds(&public, 42, "ab12", 1_000, &c.signature));
        assert!(!signature_holds(&public, 41, "ab12", 1_000, &c.signature));
        assert!(!signature_holds(&public, 42, "ab13", 1_000, &c.signature));
        assert!(!signature_holds(&public, 42, "ab12", 1_001, &c.signature));
        assert!(!signature_holds(&public, 42, "ab12", 1_000, "not hex"));
        assert!(!signature_holds(&public, 42, "ab12", 1_000, "abcd"));
        let other = AuditKey::from_seed("k2".into(), &[8; 32]).unwrap();
        assert!(!signature_holds(
            &other.public_key(),
            42,
            "ab12",
            1_000,
            &c.signature
        ));
    }

    #[test]
    fn an_exported_checkpoint_carries_what_checks_it() {
        let key = key();
        let c = key.sign(3, "ff", 86_400_000);
        let exported = ExportedCheckpoint::new(&c, &key.public_key());
        assert_eq!(exported.time, "1970-01-02T00:00:00Z");
        let text = serde_json::to_string_pretty(&exported).unwrap();
        let back = ExportedCheckpoint::parse(&text).unwrap();
        assert_eq!(back, exported);
        assert!(back.signature_holds());

        let mut moved = back.clone();
        moved.seq = 4;
        assert!(!moved.signature_holds());
        assert!(ExportedCheckpoint::parse("{}").is_err());
        assert!(ExportedCheckpoint::parse(&text.replace(FORMAT, "something-else")).is_err());
        assert!(ExportedCheckpoint::parse(&text.replace(&exported.public_key, "00")).is_err());
    }

    #[test]
    fn seeds_must_be_32_bytes() {
        assert!(AuditKey::from_seed("k".into(), &[1; 31]).is_err());
        assert!(AuditKey::from_seed("k".into(), &[1; 32]).is_ok());
    }
}
