//! The `aob` binary's library half: configuration, server assembly and the API
//! client, shared by `main.rs` and the integration tests.

pub mod client;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod output;
pub mod serve;
