//! The portal's keys and hashes: signed download links, signed release
//! manifests and reviewers' password hashes. Mechanisms only; who gets a link
//! or may sign in is decided in `domain`.

pub mod links;
pub mod manifests;
pub mod passwords;
