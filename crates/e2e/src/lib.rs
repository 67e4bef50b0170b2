//! Tests across services, with every service a real process (`e2e-services`, see
//! `src/bin/e2e-services.rs`), and what those tests observe them with.
//!
//! - [`collector`]: an OTLP/HTTP trace receiver, the test's stand-in for the OpenTelemetry
//!   collector: it keeps every span the processes export, with its `service.name`.
//!
//! The tests themselves are in `tests/`: `tests/traces.rs` follows one published event through
//! both gateways' relays and a webhook attempt by its `traceparent`.
//!
//! Why a crate of its own: a service package's tests can start only that package's binaries,
//! and the process-wide tracer provider rules out running several services in one test process
//! and telling their spans apart.

pub mod collector;
