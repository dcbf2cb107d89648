//! The portal's rules, one file per concept: who may do what, how an
//! application becomes a grant, and what a grant lets its holder fetch.
//!
//! Nothing here speaks HTTP or HTML; the web and the operator commands call
//! these functions, and these call `db`, `storage`, `mail` and `audit`.

pub(crate) mod access_urls;
pub mod accounts;
pub(crate) mod applications;
pub(crate) mod authz;
pub(crate) mod cards;
pub(crate) mod deliveries;
pub(crate) mod error;
pub(crate) mod forms;
pub mod grants;
pub mod models;
pub mod notices;
pub mod policy;
pub(crate) mod questions;
pub(crate) mod renewals;
pub(crate) mod researchers;
pub mod reviews;
pub(crate) mod threads;
pub mod tokens;
pub(crate) mod webhooks;

pub(crate) use error::Error;
