//! The portal's keys and hashes: signed download links, signed release
//! manifests and reviewers' password hashes. Mechanisms only; who gets a link
//! or may sign in is decided in `domain`.

pub(crate) mod links;
pub(crate) mod manifests;
pub(crate) mod passwords;
