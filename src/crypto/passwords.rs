//! Reviewer passwords: argon2id hashes, and checks bounded in number and
//! memory.

use std::sync::{Mutex, PoisonError};

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, phc::PasswordHash},
};

/// An argon2id PHC string for `password`.
pub(crate) fn hash_password(password: &str) -> anyhow::Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))
}

/// Password checks, bounded. An argon2id check takes 19 MiB and tens of
/// milliseconds of a core, so a burst of sign-ins (no account needed) would
/// otherwise take memory and CPU without limit: beyond `at_once` checks in
/// progress, a sign-in is refused at once, and asked to come back. Each
/// check works in one of at most `at_once` memory areas, allocated once and
/// used again: memory the allocator would otherwise keep for each of the
/// blocking pool's threads after every check.
#[derive(Debug)]
pub(crate) struct Passwords {
    checks: std::sync::Arc<tokio::sync::Semaphore>,
    memory: std::sync::Arc<Mutex<Vec<Vec<argon2::Block>>>>,
}

/// Every password check allowed at once is in use.
#[derive(Debug, thiserror::Error)]
#[error("too many sign-ins are being checked right now; try again in a moment")]
pub(crate) struct PasswordsBusy;

impl Passwords {
    pub(crate) fn new(at_once: usize) -> Self {
        Self {
            checks: std::sync::Arc::new(tokio::sync::Semaphore::new(at_once.max(1))),
            memory: std::sync::Arc::default(),
        }
    }

    /// Whether `password` matches `phc`, checked on the blocking pool;
    /// [`PasswordsBusy`] when every check allowed at once is in use.
    pub(crate) async fn verify(&self, password: &str, phc: String) -> anyhow::Result<bool> {
        let permit = self
            .checks
            .clone()
            .try_acquire_owned()
            .map_err(|_| PasswordsBusy)?;
        let password = password.to_owned();
        let memory = self.memory.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let mut area = memory
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .unwrap_or_default();
            let ok = verify_in(password.as_bytes(), &phc, &mut area);
            memory.lock().unwrap_or_else(PoisonError::into_inner).push(area);
            drop(permit);
            ok
        })
        .await?)
    }
}

/// Whether `password` matches the argon2 PHC string `phc`, computed in
/// `memory` (grown to what the hash's parameters need) and compared in
/// constant time.
fn verify_in(password: &[u8], phc: &str, memory: &mut Vec<argon2::Block>) -> bool {
    use argon2::{Algorithm, Params, Version};
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::new(hash.algorithm.as_str()), Params::try_from(&hash))
    else {
        return false;
    };
    let Ok(version) = hash.version.map_or(Ok(Version::default()), Version::try_from) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, &mut memory[..blocks])
        .is_ok()
        && bool::from(subtle::ConstantTimeEq::ct_eq(out.as_slice(), expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let verify = |password: &str, phc: &str| verify_in(password.as_bytes(), phc, &mut Vec::new());
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &phc));
        assert!(!verify("wrong horse battery", &phc));
        assert!(!verify("anything", "not a phc string"));
        // The crate's own verifier agrees, and one memory area serves both.
        let mut area = Vec::new();
        assert!(verify_in(b"correct horse battery", &phc, &mut area));
        assert!(!verify_in(b"correct horse batterz", &phc, &mut area));
        let hash = PasswordHash::new(&phc).unwrap();
        let crate_says = argon2::password_hash::PasswordVerifier::verify_password(
            &Argon2::default(),
            b"correct horse battery",
            &hash,
        );
        assert!(crate_says.is_ok());
    }
}
