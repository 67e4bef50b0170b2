//! Webhook dispatcher (seed 000 "Webhook Events"): subscriptions API, a durable JetStream
//! consumer on `events.>`, signed deliveries with retries, every attempt recorded in PostgreSQL.
//!
//! Today the service stands on the shared runtime: it loads its configuration, connects NATS,
//! provisions the `EVENTS` stream, and serves `/healthz`, `/readyz` and `/metrics`.
#![warn(missing_docs)]

use axum::Router;
use serde::{Deserialize, Serialize};
use service_runtime::{ConfigError, ServiceContext, ServiceError, ServiceSpec, Settings, Validate};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Name, environment prefix and defaults of this service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "webhook-dispatcher",
    env_prefix: "WEBHOOK_DISPATCHER_",
    default_port: 8082,
    database_required: false,
};

/// This service's own configuration sections (beside the common `http`, `nats`, `database`,
/// `shutdown` and `log`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Runs the service until `shutdown` is cancelled, then drains within the grace period.
pub async fn run(
    settings: Settings<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let ctx = ServiceContext::start(SPEC.name, &settings.common, None, shutdown).await?;
    ctx.serve(listener, Router::new()).await
}
