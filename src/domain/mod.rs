//! The portal's rules, one file per concept: who may do what, how an
//! application becomes a grant, and what a grant lets its holder fetch.
//!
//! Nothing here speaks HTTP or HTML; the web and the operator commands call
//! these functions, and these call `db`, `storage`, `mail` and `audit`.

pub mod accounts;
pub mod applications;
pub mod authz;
pub mod deliveries;
pub mod error;
pub mod forms;
pub mod grants;
pub mod models;
pub mod notices;
pub mod policy;
pub mod questions;
pub mod renewals;
pub mod researchers;
pub mod reviews;
pub mod threads;

pub use error::{Error, Result};
