//! Socket.IO gateway (seed 000, 002): namespaces `/admin`, `/provider`, `/widget`, `/stat`,
//! per-namespace authentication, subscriptions mapped to rooms through `events::surface`, and
//! relays from NATS to rooms.
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
    name: "gateway-socketio",
    env_prefix: "GATEWAY_SOCKETIO_",
    default_port: 8081,
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
