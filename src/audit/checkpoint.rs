//! Signed checkpoints of the chain's head, and the key that signs them.
//!
//! The hash chain shows an edit, a deletion or a reordering, but not a log cut
//! short after its last event: the shorter log is a valid chain too. A
//! checkpoint signs "event SEQ had hash HASH at time AT" with an Ed25519 key;
//! a log that later lacks event SEQ, or holds another hash there, was
//! truncated or rewritten.
//!
//! Whoever can write the database must not be able to sign: the key never
//! lives in it. It is read from `WEIGHTGATE_AUDIT_KEY` or a key file
//! (`WEIGHTGATE_AUDIT_KEY_FILE`, by default in the data directory, made on
//! the first start), and its public half is published. Every checkpoint is
//! also written to a witness outside the database ([`super::witness`])
//! before it is stored, so that `audit verify` can tell a log the witness
//! never saw.

use std::{collections::HashMap, path::PathBuf};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::witness::Witness;
use super::{
    GENESIS,
    verify::{self, CheckpointSource, Problem},
};
use crate::{
    config::Config,
    db::{self, Db, audit::CheckpointRow},
    types::{format_ms_rfc3339, new_id, now_ms},
};

/// The first line of the signed text, and the `format` of an exported checkpoint.
pub(crate) const FORMAT: &str = "weightgate-audit-checkpoint-v1";

/// The text a checkpoint's signature covers.
pub(crate) fn signed_text(seq: i64, hash: &str, at: i64) -> String {
    format!("{FORMAT}\n{seq}\n{hash}\n{at}")
}

/// `true` when `signature` (hex) is `public`'s signature of the checkpoint.
pub(crate) fn signature_holds(public: &VerifyingKey, seq: i64, hash: &str, at: i64, signature: &str) -> bool {
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

/// The id of a checkpoint key: the first 16 hex digits of the SHA-256 of
/// its public key, so that the same key has the same id on every replica and
/// another key cannot pass under it.
pub(crate) fn kid_of(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// The key that signs new checkpoints.
pub struct AuditKey {
    pub(crate) kid: String,
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
    pub(crate) fn from_seed(seed: &[u8]) -> anyhow::Result<Self> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| anyhow::anyhow!("an audit checkpoint key is a 32-byte Ed25519 seed"))?;
        let signing = SigningKey::from_bytes(&seed);
        Ok(Self {
            kid: kid_of(&signing.verifying_key()),
            signing,
        })
    }

    /// A key as written in `WEIGHTGATE_AUDIT_KEY` or a key file: the seed in
    /// URL-safe base64.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let seed = URL_SAFE_NO_PAD
            .decode(text.trim())
            .context("an audit checkpoint key is 32 bytes in URL-safe base64")?;
        Self::from_seed(&seed)
    }

    /// The key the configuration names: `WEIGHTGATE_AUDIT_KEY`, or the key
    /// file. `None` when neither holds one.
    pub(crate) fn configured(config: &Config) -> anyhow::Result<Option<Self>> {
        if let Some(text) = &config.audit_key {
            return Self::parse(text).map(Some).context("WEIGHTGATE_AUDIT_KEY");
        }
        let path = key_file(config);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text)
                .map(Some)
                .with_context(|| format!("the audit checkpoint key in {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The configured key, or a new one written to the key file (readable by
    /// its owner only) when there is none and nothing was ever signed (the
    /// first start of a portal). A key gone missing once checkpoints exist
    /// is an error, not a reason to sign the log afresh with a new key.
    pub(crate) async fn configured_or_new(
        config: &Config,
        db: &crate::db::Db,
        witness: &super::witness::Witness,
    ) -> anyhow::Result<Self> {
        if let Some(key) = Self::configured(config)? {
            return Ok(key);
        }
        let path = key_file(config);
        anyhow::ensure!(
            db::audit::latest_checkpoint(db.pool()).await?.is_none() && witness.latest().await?.is_none(),
            "the audit checkpoint key is missing ({} does not exist and WEIGHTGATE_AUDIT_KEY is unset), but \
             checkpoints signed with it exist: restore the key rather than start over with a new one",
            path.display()
        );
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let key = Self::from_seed(&seed)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let written = {
            use std::io::Write;
            #[cfg(unix)]
            use std::os::unix::fs::OpenOptionsExt;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            options.mode(0o600);
            options.open(&path).and_then(|mut file| {
                file.write_all(format!("{}\n", URL_SAFE_NO_PAD.encode(seed)).as_bytes())
                    .and(file.sync_all())
            })
        };
        match written {
            Ok(()) => {
                tracing::warn!(
                    file = %path.display(),
                    kid = %key.kid,
                    public_key = %hex::encode(key.public_key().as_bytes()),
                    "made a new audit checkpoint key: keep a copy of the file somewhere safe, away from the database, \
                     and publish its public key"
                );
                Ok(key)
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::configured(config)?.with_context(|| format!("{} appeared empty", path.display()))
            }
            Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
        }
    }

    pub(crate) fn public_key(&self) -> VerifyingKey {
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

/// Where the checkpoint key is kept when `WEIGHTGATE_AUDIT_KEY` is not set.
pub(crate) fn key_file(config: &Config) -> PathBuf {
    config
        .audit_key_file
        .clone()
        .unwrap_or_else(|| config.data_dir.join("audit-checkpoint.key"))
}

/// The checkpoint keys a verification believes, by key id: the configured
/// key's public half and the older public keys `WEIGHTGATE_AUDIT_TRUSTED_KEYS`
/// names. Never a key from the database.
#[derive(Clone, Debug, Default)]
pub struct Trust(HashMap<String, VerifyingKey>);

impl Trust {
    pub(crate) fn from_config(config: &Config) -> anyhow::Result<Self> {
        let mut trust = Self::default();
        if let Some(key) = AuditKey::configured(config)? {
            trust.add(key.public_key());
        }
        for hex_key in config
            .audit_trusted_keys
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            trust.add(parse_public_key(hex_key).context("WEIGHTGATE_AUDIT_TRUSTED_KEYS")?);
        }
        Ok(trust)
    }

    pub(crate) fn add(&mut self, public: VerifyingKey) {
        self.0.insert(kid_of(&public), public);
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.0.get(kid)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids of the trusted keys.
    pub(crate) fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.0.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }
}

/// An Ed25519 public key written as 64 hex digits.
pub(crate) fn parse_public_key(text: &str) -> anyhow::Result<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{text:?} is not an Ed25519 public key (64 hex digits)"))?;
    VerifyingKey::from_bytes(&bytes).with_context(|| format!("{text:?} is not an Ed25519 public key"))
}

/// A checkpoint as an operator keeps it away from the portal: everything
/// needed to check it, including the public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedCheckpoint {
    pub(crate) format: String,
    pub(crate) seq: i64,
    pub(crate) hash: String,
    pub(crate) at: i64,
    /// `at` in RFC 3339, for people; not signed.
    pub(crate) time: String,
    pub(crate) kid: String,
    /// The Ed25519 public key, hex.
    pub(crate) public_key: String,
    /// The Ed25519 signature of [`signed_text`], hex.
    pub(crate) signature: String,
}

impl ExportedCheckpoint {
    pub(crate) fn new(c: &CheckpointRow, public: &VerifyingKey) -> Self {
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
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
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
    pub(crate) fn public(&self) -> anyhow::Result<VerifyingKey> {
        let bytes: [u8; 32] = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("the checkpoint's public_key is not 32 bytes of hex")?;
        VerifyingKey::from_bytes(&bytes).context("the checkpoint's public_key is not an Ed25519 key")
    }

    /// `true` when the signature is the named key's signature of the checkpoint.
    pub(crate) fn signature_holds(&self) -> bool {
        self.public()
            .is_ok_and(|public| signature_holds(&public, self.seq, &self.hash, self.at, &self.signature))
    }
}

/// A checkpoint of the current head.
#[derive(Clone, Debug)]
pub(crate) struct Checkpointed {
    pub(crate) checkpoint: CheckpointRow,
    pub(crate) public_key: VerifyingKey,
    /// `false` when this key had already signed the head.
    pub(crate) new: bool,
    /// Whether the witness stored it under a lock its store enforces.
    pub(crate) locked: bool,
}

impl Checkpointed {
    pub(crate) fn exported(&self) -> ExportedCheckpoint {
        ExportedCheckpoint::new(&self.checkpoint, &self.public_key)
    }
}

/// Signs the current head with `key`, after checking the events since the
/// last checkpoint `trust` believes: a damaged log is never signed. The
/// checkpoint goes to the witness first and to the database after, so the
/// database never holds one the witness lacks. When this key already signed
/// the head, returns that checkpoint.
pub(crate) async fn checkpoint(
    db: &Db,
    key: &AuditKey,
    trust: &Trust,
    witness: &Witness,
) -> anyhow::Result<Checkpointed> {
    let public_key = key.public_key();
    let mut trust = trust.clone();
    trust.add(public_key);
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
            let source = CheckpointSource::stored(&last);
            let Some(public) = trust.get(&last.kid) else {
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
            // The last event of an archived segment is signed by the
            // checkpoint it ends at, and its hash recorded.
            match super::archive::hash_at(db, last.seq).await? {
                Some(hash) if hash == last.hash => {}
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
                    locked: false,
                });
            }
            (last.seq, last.hash)
        }
    };
    // The witness's newest checkpoint must still hold: a log rewritten
    // (and its checkpoints deleted from the database) is never signed.
    let start = match witness.latest().await? {
        Some(w) if w.checkpoint.seq > start.0 => {
            let kept = &w.checkpoint;
            let source = CheckpointSource::Witness {
                place: w.place.clone(),
            };
            let Some(public) = trust.get(&kept.kid) else {
                return Err(refuse(Problem::UnknownKey {
                    source,
                    kid: kept.kid.clone(),
                }));
            };
            if !signature_holds(public, kept.seq, &kept.hash, kept.at, &kept.signature) {
                return Err(refuse(Problem::BadSignature { source }));
            }
            match super::archive::hash_at(db, kept.seq).await? {
                Some(hash) if hash == kept.hash => (kept.seq, kept.hash.clone()),
                Some(_) => {
                    return Err(refuse(Problem::Forked {
                        source,
                        seq: kept.seq,
                    }));
                }
                None => {
                    return Err(refuse(Problem::Truncated {
                        source,
                        checkpoint_seq: kept.seq,
                        log_end: Some(head_seq),
                    }));
                }
            }
        }
        _ => start,
    };
    // Archived events are no longer in the database to walk; the archive
    // ends at a witnessed checkpoint.
    let through = super::archive::boundary(db).await?;
    let start = if through.0 > start.0 { through } else { start };
    let walk = verify::walk(db, start, Some(head_seq)).await?;
    if let Some(problem) = walk.problem {
        return Err(refuse(problem));
    }
    anyhow::ensure!(
        walk.last.0 == head_seq && walk.last.1 == head_hash,
        "the audit log changed while it was being checked; try again"
    );
    let signed = key.sign(head_seq, &head_hash, now_ms());
    let exported = ExportedCheckpoint::new(&signed, &public_key);
    let locked = witness
        .record(db, &exported)
        .await
        .context("the checkpoint could not be written to its witness, so it was not stored")?;
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
        locked: locked == crate::storage::Locked::Retained,
    })
}

/// Signs the head if it moved since the newest checkpoint.
pub(crate) async fn checkpoint_if_moved(
    db: &Db,
    key: &AuditKey,
    trust: &Trust,
    witness: &Witness,
) -> anyhow::Result<Option<Checkpointed>> {
    let Some((head_seq, _)) = db::audit::head(db.pool()).await? else {
        return Ok(None);
    };
    if let Some(last) = db::audit::latest_checkpoint(db.pool()).await?
        && last.seq == head_seq
    {
        return Ok(None);
    }
    checkpoint(db, key, trust, witness).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::from_seed(&[7; 32]).unwrap()
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
        let other = AuditKey::from_seed(&[8; 32]).unwrap();
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
    fn seeds_must_be_32_bytes_and_name_their_key() {
        assert!(AuditKey::from_seed(&[1; 31]).is_err());
        let key = AuditKey::from_seed(&[1; 32]).unwrap();
        assert_eq!(key.kid.len(), 16);
        assert_eq!(key.kid, kid_of(&key.public_key()));
        assert_ne!(key.kid, AuditKey::from_seed(&[2; 32]).unwrap().kid);
        let written = URL_SAFE_NO_PAD.encode([1u8; 32]);
        assert_eq!(AuditKey::parse(&format!("{written}\n")).unwrap().kid, key.kid);
        assert!(AuditKey::parse("not a key").is_err());
    }
}
