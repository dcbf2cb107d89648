//! Release manifests and their signatures.
//!
//! A release's manifest lists every file with its size, SHA-256, and the
//! SHA-256 of each fixed-size chunk, so a client can verify a file as it
//! arrives and fetch again only a damaged chunk. The manifest and the
//! release's `SHA256SUMS` are signed with the portal's publishing key in
//! minisign's format, so researchers can check them with the `minisign` tool
//! and the public key served at `/.well-known/weightgate/minisign.pub`.

use std::io::Cursor;

use anyhow::Context;
use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::model_signing::ModelSigningKey;
use crate::{db::Db, types::now_ms};

/// Where the publishing keys are stored.
const PURPOSE: &str = "publish-minisign";
const MODEL_SIGNING_PURPOSE: &str = "publish-model-signing";

/// A release as published. The JSON text of this, exactly as signed, is what
/// clients verify.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    pub(crate) model: String,
    pub(crate) release: String,
    pub(crate) chunk_size: u64,
    pub(crate) files: Vec<ManifestFile>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ManifestFile {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// SHA-256 of each `chunk_size` bytes; the last chunk may be shorter.
    pub(crate) chunks: Vec<String>,
}

pub(crate) const MANIFEST_FORMAT: &str = "weightgate-manifest-v1";

impl Manifest {
    /// Parses and checks that the manifest is internally consistent.
    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        let manifest: Manifest = serde_json::from_str(text).context("the manifest is not valid JSON")?;
        anyhow::ensure!(
            manifest.format == MANIFEST_FORMAT,
            "unknown manifest format {:?}",
            manifest.format
        );
        anyhow::ensure!(manifest.chunk_size > 0, "the manifest's chunk size is zero");
        // The client makes a directory named after the release and a file
        // at each path inside it: all must stay inside the download
        // directory, and no two files may land on one path, even on a file
        // system that ignores case.
        anyhow::ensure!(
            crate::types::is_safe_file_name(&manifest.release),
            "the manifest names an unsafe release {:?}",
            manifest.release
        );
        crate::types::check_release_paths(manifest.files.iter().map(|f| f.name.as_str()))
            .map_err(|why| anyhow::anyhow!("the manifest's files: {why}"))?;
        for f in &manifest.files {
            let expected = f.size.div_ceil(manifest.chunk_size).max(1);
            anyhow::ensure!(
                f.chunks.len() as u64 == expected,
                "the manifest lists {} chunks for {} but its size needs {expected}",
                f.chunks.len(),
                f.name
            );
        }
        Ok(manifest)
    }
}

/// The portal's publishing keys: the minisign key pair that signs manifests
/// and `SHA256SUMS`, and the ECDSA key that signs `model.sig`.
pub(crate) struct Publisher {
    pk: PublicKey,
    sk: SecretKey,
    model: ModelSigningKey,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// Loads the publishing keys, creating each on first use. Every replica
    /// shares them through the database.
    pub(crate) async fn load(db: &Db) -> anyhow::Result<Self> {
        let key = crate::crypto::stored_key(db, PURPOSE, || {
            let pair = KeyPair::generate_unencrypted_keypair().map_err(|e| anyhow::anyhow!("{e}"))?;
            let sk_box = pair
                .sk
                .to_box(Some("weightgate publishing key"))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((hex::encode(pair.pk.keynum()), sk_box.into_string()))
        })
        .await?;
        let sk = SecretKeyBox::from_string(&key.secret)
            .and_then(SecretKeyBox::into_unencrypted_secret_key)
            .map_err(|e| anyhow::anyhow!("the stored publishing key is unreadable: {e}"))?;
        let pk = PublicKey::from_secret_key(&sk).map_err(|e| anyhow::anyhow!("{e}"))?;
        let model = crate::crypto::stored_key(db, MODEL_SIGNING_PURPOSE, || {
            let (key, pem) = ModelSigningKey::generate()?;
            let kid = hex::encode(&Sha256::digest(key.public_key_pem().as_bytes())[..8]);
            Ok((kid, pem))
        })
        .await?;
        let model = ModelSigningKey::from_pem(&model.secret)?;
        Ok(Self { pk, sk, model })
    }

    /// The key that signs `model.sig`.
    pub(crate) fn model_signing(&self) -> &ModelSigningKey {
        &self.model
    }

    /// The public key as a minisign `.pub` file.
    pub(crate) fn public_key_file(&self) -> String {
        self.pk
            .to_box()
            .map(PublicKeyBox::into_string)
            .unwrap_or_default()
    }

    /// A minisign signature (`.minisig` file) of `data`; `what` goes in the
    /// signed, trusted comment.
    pub(crate) fn sign(&self, data: &[u8], what: &str) -> anyhow::Result<String> {
        let trusted = format!("weightgate {what} timestamp:{}", now_ms() / 1000);
        let sig = minisign::sign(Some(&self.pk), &self.sk, Cursor::new(data), Some(&trusted), None)
            .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
        Ok(sig.into_string())
    }
}

/// Checks a minisign signature of `data` against a public key given as a
/// `.pub` file or its base64 line.
pub(crate) fn verify(public_key: &str, data: &[u8], signature: &str) -> anyhow::Result<()> {
    let pk = match PublicKeyBox::from_string(public_key) {
        Ok(b) if public_key.contains("comment") => b.into_public_key(),
        _ => PublicKey::from_base64(public_key.trim()),
    }
    .map_err(|e| anyhow::anyhow!("the public key is not a minisign key: {e}"))?;
    let sig =
        SignatureBox::from_string(signature).map_err(|e| anyhow::anyhow!("malformed signature: {e}"))?;
    minisign::verify(&pk, &sig, Cursor::new(data), true, false, false)
        .map_err(|e| anyhow::anyhow!("signature check failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher() -> Publisher {
        let pair = KeyPair::generate_unencrypted_keypair().unwrap();
        Publisher {
            pk: pair.pk,
            sk: pair.sk,
            model: ModelSigningKey::generate().unwrap().0,
        }
    }

    #[test]
    fn signatures_verify_and_catch_any_change() {
        let p = publisher();
        let sig = p.sign(b"manifest text", "manifest demo/v1").unwrap();
        assert!(sig.contains("trusted comment: weightgate manifest demo/v1"));
        verify(&p.public_key_file(), b"manifest text", &sig).unwrap();
        let base64_line = p.public_key_file().lines().nth(1).unwrap().to_owned();
        verify(&base64_line, b"manifest text", &sig).unwrap();
        assert!(verify(&p.public_key_file(), b"manifest text!", &sig).is_err());
        assert!(verify(&publisher().public_key_file(), b"manifest text", &sig).is_err());
        assert!(verify(&p.public_key_file(), b"manifest text", "garbage").is_err());
    }

    #[test]
    fn manifests_must_be_consistent() {
        let good = r#"{"format":"weightgate-manifest-v1","model":"m","release":"v1","chunk_size":4,
            "files":[{"name":"a.bin","size":9,"sha256":"00","chunks":["1","2","3"]}]}"#;
        assert!(Manifest::parse(good).is_ok());
        assert!(Manifest::parse(&good.replace(r#""3"]"#, r#""3","4"]"#)).is_err());
        assert!(Manifest::parse(&good.replace("a.bin", "../a.bin")).is_err());
        assert!(Manifest::parse(&good.replace("-v1", "-v9")).is_err());
        assert!(Manifest::parse("{").is_err());
    }

    #[test]
    fn manifests_name_only_paths_inside_the_download_directory() {
        let good = r#"{"format":"weightgate-manifest-v1","model":"m","release":"v1","chunk_size":4,
            "files":[{"name":"a.bin","size":1,"sha256":"00","chunks":["1"]},
                     {"name":"b.bin","size":1,"sha256":"00","chunks":["1"]}]}"#;
        assert!(Manifest::parse(good).is_ok());
        for release in ["", "..", ".", "/home/ada/.ssh", "../v1", "a/b", "v1\\x"] {
            let bad = good.replace(r#""release":"v1""#, &format!("\"release\":{release:?}"));
            assert_ne!(bad, good);
            assert!(Manifest::parse(&bad).is_err(), "release {release:?}");
        }
        let twice = good.replace("b.bin", "a.bin");
        assert!(Manifest::parse(&twice).is_err(), "one file listed twice");
        // Files in folders, as long as every path stays inside and no two
        // land on one path.
        let nested = good.replace("b.bin", "original/b.bin");
        assert!(Manifest::parse(&nested).is_ok());
        for file in [
            "../b.bin",
            "/etc/b.bin",
            "a/../../b.bin",
            "x//b.bin",
            ".git/b.bin",
            "A.bin",
            "a.bin/b.bin",
            "SHA256SUMS",
        ] {
            let bad = good.replace("b.bin", file);
            assert!(Manifest::parse(&bad).is_err(), "file {file:?}");
        }
    }
}
