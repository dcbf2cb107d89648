//! weightgate's integration tests: the real server on port 0, each test with
//! its own data directory, driven over HTTP like a browser or a script.

mod helpers;

mod cli;
mod downloads;
mod journey;
mod review;
