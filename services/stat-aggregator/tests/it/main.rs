//! stat-aggregator's integration tests, one binary: a private NATS (JetStream) per test, the
//! service in process (with an injectable clock) and as a process (SIGKILL).
#![allow(clippy::unwrap_used, missing_debug_implementations)]

mod common;
mod counting;
mod lifecycle;
mod rebuild;
mod replicas;
