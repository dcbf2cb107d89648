//! OpenSSF Model Signing signatures of releases (`model.sig`).
//!
//! Besides its minisign signatures, every release carries a signature in the
//! format the model-signing ecosystem verifies (`model_signing verify key`,
//! from the `model-signing` package): a Sigstore bundle (v0.3) holding a DSSE
//! envelope over an in-toto statement. The statement's predicate
//! (`https://model_signing/signature/v1.0`) lists every file of the release
//! with its SHA-256, serialized by the `files` method; its one subject is the
//! SHA-256 over those digests in the listed order. The envelope is signed
//! with the portal's ECDSA P-256 key over DSSE's pre-authentication encoding,
//! and the bundle names the key by the SHA-256 of its PEM public key, the
//! hint the verifier compares with the key it is given.
//!
//! The files weightgate writes beside a release (`SHA256SUMS`, the manifest,
//! their `.minisig`s and `model.sig` itself) are listed as ignored paths, so
//! a tree downloaded by the client, or by hand next to them, verifies as it
//! lies.

use anyhow::Context;
use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use p256::{
    ecdsa::{DerSignature, SigningKey, VerifyingKey, signature::Signer, signature::Verifier},
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::types::RESERVED_RELEASE_NAMES;

const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// What the `model_signing` tool leaves out of a model by default, named
/// again in every signature so that any verifier leaves them out too.
const GIT_PATHS: [&str; 4] = [".git", ".gitattributes", ".github", ".gitignore"];

/// The portal's model-signing key (ECDSA over P-256 with SHA-256).
pub(crate) struct ModelSigningKey {
    key: SigningKey,
    /// The public half as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    public_pem: String,
}

impl std::fmt::Debug for ModelSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSigningKey").finish_non_exhaustive()
    }
}

impl ModelSigningKey {
    /// A new random key, and its PKCS#8 PEM to store.
    pub(crate) fn generate() -> anyhow::Result<(Self, String)> {
        use p256::elliptic_curve::Generate;
        let key =
            SigningKey::try_generate().map_err(|e| anyhow::anyhow!("no randomness for a new key: {e}"))?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("cannot encode the model-signing key: {e}"))?;
        Ok((Self::from_key(key)?, pem.to_string()))
    }

    /// The key from its stored PKCS#8 PEM.
    pub(crate) fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| anyhow::anyhow!("the stored model-signing key is unreadable: {e}"))?;
        Self::from_key(key)
    }

    fn from_key(key: SigningKey) -> anyhow::Result<Self> {
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("cannot encode the model-signing public key: {e}"))?;
        Ok(Self { key, public_pem })
    }

    /// The public key, as `model_signing verify key --public_key` reads it.
    pub(crate) fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    /// `model.sig` for the release a manifest describes, named MODEL/RELEASE.
    pub(crate) fn sign_manifest(&self, manifest: &super::manifests::Manifest) -> anyhow::Result<String> {
        self.sign(
            &format!("{}/{}", manifest.model, manifest.release),
            manifest
                .files
                .iter()
                .map(|f| (f.name.as_str(), f.sha256.as_str())),
        )
    }

    /// `model.sig` for a release: `name` names the model (informative only),
    /// `files` are the release's paths with their SHA-256 in hex.
    pub(crate) fn sign<'a>(
        &self,
        name: &str,
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> anyhow::Result<String> {
        let mut resources: Vec<Resource> = files
            .into_iter()
            .map(|(name, sha256)| Resource {
                name: name.to_owned(),
                algorithm: "sha256".to_owned(),
                digest: sha256.to_owned(),
            })
            .collect();
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        let statement = Statement {
            kind: STATEMENT_TYPE.to_owned(),
            subject: vec![Subject {
                name: name.to_owned(),
                digest: SubjectDigest {
                    sha256: root_digest(&resources)?,
                },
            }],
            predicate_type: PREDICATE_TYPE.to_owned(),
            predicate: Predicate {
                serialization: Serialization::ours(),
                resources,
            },
        };
        let payload = serde_json::to_vec(&statement)?;
        let signature: DerSignature = self.key.sign(&pae(&payload));
        let bundle = Bundle {
            media_type: BUNDLE_MEDIA_TYPE.to_owned(),
            verification_material: VerificationMaterial {
                public_key: PublicKeyHint {
                    hint: key_hint(&self.public_pem),
                },
                tlog_entries: Vec::new(),
            },
            dsse_envelope: Envelope {
                payload: BASE64.encode(&payload),
                payload_type: PAYLOAD_TYPE.to_owned(),
                signatures: vec![EnvelopeSignature {
                    sig: BASE64.encode(signature.as_bytes()),
                    keyid: String::new(),
                }],
            },
        };
        Ok(serde_json::to_string_pretty(&bundle)? + "\n")
    }
}

/// What a `model.sig` signs: its files and their SHA-256, in the order
/// listed. Checks the signature against `public_pem`, that the statement is
/// a model-signing statement whose subject digest matches its files, and
/// that every digest is SHA-256.
pub(crate) fn signed_files(bundle: &str, public_pem: &str) -> anyhow::Result<Vec<(String, String)>> {
    let bundle: Bundle = serde_json::from_str(bundle).context("model.sig is not a Sigstore bundle")?;
    anyhow::ensure!(
        bundle.media_type == BUNDLE_MEDIA_TYPE,
        "model.sig is a bundle of another kind ({})",
        bundle.media_type
    );
    anyhow::ensure!(
        bundle.verification_material.public_key.hint == key_hint(public_pem),
        "model.sig names another key than the portal's model-signing key"
    );
    let envelope = &bundle.dsse_envelope;
    anyhow::ensure!(
        envelope.payload_type == PAYLOAD_TYPE,
        "model.sig signs a payload of another type ({})",
        envelope.payload_type
    );
    let [signature] = envelope.signatures.as_slice() else {
        anyhow::bail!(
            "model.sig holds {} signatures, not one",
            envelope.signatures.len()
        );
    };
    let payload = BASE64
        .decode(&envelope.payload)
        .context("model.sig's payload is not base64")?;
    let key = VerifyingKey::from_public_key_pem(public_pem)
        .map_err(|e| anyhow::anyhow!("the model-signing public key is unreadable: {e}"))?;
    let sig = BASE64
        .decode(&signature.sig)
        .ok()
        .and_then(|der| DerSignature::from_bytes(&der).ok())
        .context("model.sig's signature is malformed")?;
    key.verify(&pae(&payload), &sig).map_err(|_| {
        anyhow::anyhow!("model.sig's signature does not verify with the portal's model-signing key")
    })?;
    let statement: Statement =
        serde_json::from_slice(&payload).context("model.sig signs no in-toto statement")?;
    anyhow::ensure!(
        statement.kind == STATEMENT_TYPE && statement.predicate_type == PREDICATE_TYPE,
        "model.sig signs a statement of another kind"
    );
    // The verifier hashes the tree as the signature says: a signature that
    // ignores other paths (or follows links) would let files be added.
    anyhow::ensure!(
        statement.predicate.serialization == Serialization::ours(),
        "model.sig describes the release with other settings ({:?})",
        statement.predicate.serialization
    );
    let resources = statement.predicate.resources;
    let [subject] = statement.subject.as_slice() else {
        anyhow::bail!(
            "model.sig's statement has {} subjects, not one",
            statement.subject.len()
        );
    };
    anyhow::ensure!(
        subject.digest.sha256 == root_digest(&resources)?,
        "model.sig's subject digest does not match its files"
    );
    Ok(resources.into_iter().map(|r| (r.name, r.digest)).collect())
}

/// DSSE's pre-authentication encoding of an in-toto payload: what is signed.
fn pae(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {PAYLOAD_TYPE} {} ", PAYLOAD_TYPE.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The subject's digest: SHA-256 over every file's raw digest, in order.
fn root_digest(resources: &[Resource]) -> anyhow::Result<String> {
    let mut hasher = Sha256::new();
    for r in resources {
        anyhow::ensure!(
            r.algorithm == "sha256",
            "{} is hashed with {}, not sha256",
            r.name,
            r.algorithm
        );
        let raw = hex::decode(&r.digest)
            .ok()
            .filter(|d| d.len() == 32)
            .with_context(|| format!("the SHA-256 of {} is malformed", r.name))?;
        hasher.update(raw);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// How a bundle names its key: the SHA-256 of the PEM public key, in hex.
fn key_hint(public_pem: &str) -> String {
    hex::encode(Sha256::digest(public_pem.as_bytes()))
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    verification_material: VerificationMaterial,
    dsse_envelope: Envelope,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMaterial {
    public_key: PublicKeyHint,
    #[serde(default)]
    tlog_entries: Vec<serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct PublicKeyHint {
    hint: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeSignature {
    sig: String,
    #[serde(default)]
    keyid: String,
}

#[derive(Serialize, Deserialize)]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    predicate: Predicate,
}

#[derive(Serialize, Deserialize)]
struct Subject {
    name: String,
    digest: SubjectDigest,
}

#[derive(Serialize, Deserialize)]
struct SubjectDigest {
    sha256: String,
}

#[derive(Serialize, Deserialize)]
struct Predicate {
    serialization: Serialization,
    resources: Vec<Resource>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Serialization {
    method: String,
    hash_type: String,
    allow_symlinks: bool,
    ignore_paths: Vec<String>,
}

impl Serialization {
    /// How weightgate serializes a release: file by file, SHA-256, no links,
    /// leaving out only its own files and git's.
    fn ours() -> Self {
        Self {
            method: "files".to_owned(),
            hash_type: "sha256".to_owned(),
            allow_symlinks: false,
            ignore_paths: RESERVED_RELEASE_NAMES
                .iter()
                .chain(&GIT_PATHS)
                .map(|p| (*p).to_owned())
                .collect(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Resource {
    name: String,
    algorithm: String,
    digest: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
    const B: &str = "8993dfb06e3d688eb077799ac5fa34fc1134f017a338ddbb34c298c1cbbcf81b";

    #[test]
    fn a_signature_lists_every_file_and_verifies_only_with_its_key() {
        let (key, pem) = ModelSigningKey::generate().unwrap();
        let again = ModelSigningKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_key_pem(), key.public_key_pem());
        assert!(key.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));

        let sig = key
            .sign("tiny/v1", [("original/w.pth", B), ("config.json", A)])
            .unwrap();
        let files = signed_files(&sig, key.public_key_pem()).unwrap();
        assert_eq!(
            files,
            [
                ("config.json".to_owned(), A.to_owned()),
                ("original/w.pth".to_owned(), B.to_owned())
            ]
        );
        // The subject digest: SHA-256 over the raw digests in listed order.
        let mut both = hex::decode(A).unwrap();
        both.extend(hex::decode(B).unwrap());
        let bundle: Bundle = serde_json::from_str(&sig).unwrap();
        let statement: Statement =
            serde_json::from_slice(&BASE64.decode(&bundle.dsse_envelope.payload).unwrap()).unwrap();
        assert_eq!(
            statement.subject[0].digest.sha256,
            hex::encode(Sha256::digest(&both))
        );
        assert!(
            statement
                .predicate
                .serialization
                .ignore_paths
                .contains(&"model.sig".to_owned())
        );

        let (other, _) = ModelSigningKey::generate().unwrap();
        assert!(signed_files(&sig, other.public_key_pem()).is_err());
    }

    #[test]
    fn a_changed_statement_does_not_verify() {
        let (key, _) = ModelSigningKey::generate().unwrap();
        let sig = key.sign("tiny/v1", [("config.json", A)]).unwrap();
        let mut bundle: Bundle = serde_json::from_str(&sig).unwrap();
        let payload = String::from_utf8(BASE64.decode(&bundle.dsse_envelope.payload).unwrap()).unwrap();
        bundle.dsse_envelope.payload = BASE64.encode(payload.replace(A, B));
        let forged = serde_json::to_string(&bundle).unwrap();
        let err = signed_files(&forged, key.public_key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not verify"), "{err}");
        assert!(signed_files("{}", key.public_key_pem()).is_err());

        // Signed, but telling the verifier to ignore a file of the release.
        let mut statement: Statement = serde_json::from_str(&payload).unwrap();
        statement
            .predicate
            .serialization
            .ignore_paths
            .push("config.json".into());
        let payload = serde_json::to_vec(&statement).unwrap();
        let signature: DerSignature = key.key.sign(&pae(&payload));
        bundle.dsse_envelope.payload = BASE64.encode(&payload);
        bundle.dsse_envelope.signatures[0].sig = BASE64.encode(signature.as_bytes());
        let err = signed_files(&serde_json::to_string(&bundle).unwrap(), key.public_key_pem()).unwrap_err();
        assert!(err.to_string().contains("other settings"), "{err}");
        assert!(key.sign("tiny/v1", [("config.json", "zz")]).is_err());
    }
}
