//! Stat aggregator (seed 000 `/stat`): folds domain events into public counters, keeps the
//! snapshot in a JetStream key-value bucket and publishes coalesced increments.
//!
//! - [`config`]: `[aggregator]` settings and `[[counters]]` definitions (defaults in
//!   `default_counters.toml`), parsed before the port is bound.
//! - [`counters`] and [`window`]: what moves a counter, and its windows.
//! - [`fold`]: the state, one event at a time, exactly once; [`dedupe`]: the id window.
//! - [`store`]: the state (compare-and-set) and the public snapshot; [`lease`]: one counting
//!   replica at a time.
//! - [`aggregator`]: the leader's loop (consume, fold, commit, ack, publish);
//!   [`rebuild`]: recompute from the stream while serving.
//! - [`clock`]: injectable "now".
//!
//! See `docs/stat-aggregator.md`.
#![warn(missing_docs)]

pub mod aggregator;
pub mod clock;
pub mod config;
pub mod counters;
pub mod dedupe;
pub mod fold;
pub mod lease;
pub mod rebuild;
pub mod store;
pub mod window;

use std::sync::Arc;

use axum::Router;
use service_runtime::{ConfigError, ServiceContext, ServiceError, ServiceSpec, Settings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Name, environment prefix and defaults of this service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "stat-aggregator",
    env_prefix: "STAT_AGGREGATOR_",
    default_port: 8084,
    database_required: false,
};

/// What `run` needs, parsed before the port is bound.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The counters and the time zone.
    pub defs: Arc<config::Definitions>,
    /// Now; tests inject a [`clock::ManualClock`].
    pub clock: Arc<dyn clock::Clock>,
}

/// Parses the counter definitions and the time zone.
pub fn prepare(settings: &Settings<Config>) -> Result<Prepared, ConfigError> {
    Ok(Prepared {
        defs: Arc::new(settings.service.definitions()?),
        clock: Arc::new(clock::SystemClock),
    })
}

/// Runs the service until `shutdown` is cancelled: the counting loop (or standby) plus the
/// ops endpoints; on shutdown the loop commits what it folded and releases its lease.
pub async fn run(
    settings: Settings<Config>,
    prepared: Prepared,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let mut ctx =
        ServiceContext::start(SPEC.name, &settings.common, None, shutdown.clone()).await?;
    let ready = ctx
        .readiness
        .flag("aggregator", "lease and state not checked yet");
    let aggregator = aggregator::Aggregator {
        nats: ctx.nats.clone(),
        js: ctx.jetstream.clone(),
        defs: prepared.defs,
        clock: prepared.clock,
        config: settings.service.aggregator.clone(),
        replicas: settings.common.nats.replicas,
    };
    let task = tokio::spawn(aggregator.run(ready, shutdown.clone()));
    let grace = settings.common.grace();
    ctx.serve(listener, Router::new()).await?;
    if tokio::time::timeout(grace, task).await.is_err() {
        tracing::warn!("aggregator did not stop within the grace period");
    }
    Ok(())
}
