//! The runner's integration tests, one binary: real PostgreSQL, real NATS, real HTTP, and the
//! binary itself as a process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

mod api;
mod common;
mod crypto;
mod execute;
mod lifecycle;
mod openapi;
mod upstream;
mod usage;
mod webhooks;
