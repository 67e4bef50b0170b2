//! Integrations runner (seed 002): executes integration endpoints against third-party HTTP APIs
//! on command, with timeouts, rate limits and usage accounting; mirrors inbound provider
//! webhooks to integration rooms.
//!
//! - [`model`]: an integration parsed once into types; [`crypto`]: its credentials sealed
//!   with AES-256-GCM under a rotating keyring; [`store`]: the `integrations` rows.
//! - [`api`]: the REST API (`/v1/integrations`), described by `GET /openapi.json`.
//! - [`exec`], [`commands`], [`ratelimit`], [`usage`]: executing endpoints on NATS commands.
//! - [`webhooks`]: inbound provider webhooks, verified and mirrored to integration rooms.
#![warn(missing_docs)]

// Data layer, encryption and REST API.
pub mod api;
pub mod config;
pub mod crypto;
pub mod model;
pub mod openapi_import;
pub mod store;
// Inbound provider webhooks.
pub mod webhooks;
// Execution engine, rate limits, usage and NATS commands.
pub mod commands;
pub mod exec;
pub mod ratelimit;
pub mod usage;

pub use config::Config;
use service_runtime::{ConfigError, ServiceContext, ServiceError, ServiceSpec, Settings};
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Name, environment prefix and defaults of this service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "integrations-runner",
    env_prefix: "INTEGRATIONS_RUNNER_",
    default_port: 8083,
    database_required: true,
};

/// The runner's schema, run at start.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Runs the service until `shutdown` is cancelled, then drains within the grace period.
pub async fn run(
    settings: Settings<Config>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let Settings { common, service } = settings;
    // Both were judged when the configuration was loaded; built here before anything starts.
    let keyring = crypto::Keyring::from_config(&service.crypto)?;
    let auth = api::auth::Authenticator::new(&service.api);
    let mut ctx =
        ServiceContext::start(SPEC.name, &common, Some(&MIGRATOR), shutdown.clone()).await?;
    let pool = ctx
        .db
        .clone()
        .ok_or_else(|| ConfigError::new("database.url", "is required"))?;
    let store = store::Store::new(pool, keyring);

    // Execution engine: NATS command handlers and the usage flusher.
    let (_executor, engine) = commands::start(
        commands::EngineConfig {
            execution: service.execution.clone(),
            usage: service.usage.clone(),
            rate_limit: service.rate_limit.clone(),
            grace: common.grace(),
        },
        store.pool().clone(),
        ctx.nats.clone(),
        ctx.migrated.clone(),
        exec::store_loader(store.clone()),
        shutdown.clone(),
    )
    .map_err(|err| ServiceError::Component(err.to_string()))?;

    let routes = api::router(api::ApiState::new(store.clone()), auth);
    // Inbound webhooks: the provider-facing endpoint and the mirror to the gateways.
    webhooks::start_mirror(&mut ctx, &service.webhooks);
    let routes = routes.merge(webhooks::router(webhooks::WebhookState::new(
        std::sync::Arc::new(webhooks::StoreTargets::new(store.clone())),
        ctx.jetstream.clone(),
        service.webhooks.clone(),
    )));
    ctx.serve(listener, routes).await?;
    // The engine drains in parallel (same grace): wait for its last replies and usage flush.
    let _ = engine.await;
    Ok(())
}
