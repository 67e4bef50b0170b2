//! The dispatcher's integration tests, one binary: real PostgreSQL, real NATS, real HTTP
//! receivers, and the binary itself as a process.
#![allow(clippy::unwrap_used, missing_debug_implementations)]

mod common;
mod dispatch;
mod lifecycle;
mod openapi;
mod prop_parsers;
mod recording;
mod robustness;
