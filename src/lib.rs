//! weightgate: a gated distribution portal for machine-learning model weights.
//!
//! Researchers apply for a model, reviewers decide, approved researchers
//! download checksummed files through expiring signed links, and every fetch
//! is audit-logged.

pub mod accounts;
pub mod app;
pub mod applications;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod deliveries;
pub mod grants;
pub mod limits;
pub mod links;
pub mod mail;
pub mod manifests;
pub mod models;
pub mod notices;
pub mod policy;
pub mod proxies;
pub mod questions;
pub mod renewals;
pub mod researchers;
pub mod reviews;
pub mod storage;
pub mod telemetry;
pub mod threads;
pub mod types;
pub mod web;
