//! Webhook dispatcher (seed 000 "Webhook Events"): a subscriptions API, a durable JetStream
//! consumer on `events.>` feeding a PostgreSQL outbox, and workers that sign, send, retry and
//! record every attempt.
//!
//! - [`intake`]: events become deliveries in one transaction before they are acknowledged.
//! - [`worker`]: replicas claim due deliveries with `FOR UPDATE SKIP LOCKED` and a lease.
//! - [`signing`]: Standard Webhooks headers and the seed's `X-Webhook-Signature`.
//! - [`egress`] (shared crate): non-public destinations are refused unless allow-listed.
//! - [`api`]: REST API, described by `GET /openapi.json`.
#![warn(missing_docs)]

pub mod api;
pub mod config;
pub mod intake;
pub mod signing;
pub mod store;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
use service_runtime::{ConfigError, ServiceContext, ServiceError, ServiceSpec, Settings};
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Name, environment prefix and defaults of this service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "webhook-dispatcher",
    env_prefix: "WEBHOOK_DISPATCHER_",
    default_port: 8082,
    database_required: true,
};

/// The dispatcher's schema.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What [`run`] needs built from the configuration, made by [`prepare`] before the port is
/// bound so that a configuration only the dispatcher can judge never starts listening.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The destination policy (`delivery.allow_networks`).
    pub policy: Arc<egress::AddressPolicy>,
    /// The delivery HTTP client (`delivery.proxy`, timeouts, the policy in its resolver).
    pub http: reqwest::Client,
    /// The API's credential check (`api.*`).
    pub auth: api::auth::Authenticator,
}

/// Builds [`Prepared`] from `settings`; the error names the key at fault.
pub fn prepare(settings: &Settings<Config>) -> Result<Prepared, ConfigError> {
    let service = &settings.service;
    // Judged here too (not only by loading), so a `run` called with settings built some other
    // way cannot get as far as listening without a database.
    settings.common.database.connect_options()?;
    let policy = Arc::new(egress::AddressPolicy::new(
        service.delivery.allow_networks.clone(),
    ));
    let http = worker::http_client(&service.delivery, Arc::clone(&policy))
        .map_err(|e| ConfigError::new(e.key(), e.to_string()))?;
    Ok(Prepared {
        policy,
        http,
        auth: api::auth::Authenticator::new(&service.api),
    })
}

/// Runs the API, intake, workers and pruning until `shutdown`; then stops consuming, lets
/// in-flight attempts finish and be recorded, and returns.
pub async fn run(
    settings: Settings<Config>,
    prepared: Prepared,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let Settings {
        mut common,
        service,
    } = settings;
    let Prepared { policy, http, auth } = prepared;
    common.database.session = store::Store::SESSION;
    let mut ctx =
        ServiceContext::start(SPEC.name, &common, Some(&MIGRATOR), shutdown.clone()).await?;
    let pool = ctx
        .db
        .clone()
        .ok_or_else(|| ConfigError::new("database.url", "is required"))?;
    let store = store::Store::new(pool);
    let patterns = Arc::new(intake::PatternCache::default());
    let work_ready = Arc::new(Notify::new());

    let dispatcher = Arc::new(worker::Dispatcher::new(
        store.clone(),
        http,
        service.delivery.clone(),
        Arc::clone(&policy),
    ));
    let consuming = ctx.readiness.flag("intake", "consumer not created yet");
    // Intake, workers and maintenance read the schema: they start once migrations have run
    // (a fresh database would otherwise log "relation does not exist" until then).
    let intake = after_migrations(
        &ctx.migrated,
        &shutdown,
        intake::run(
            ctx.jetstream.clone(),
            store.clone(),
            Arc::clone(&patterns),
            service.intake.consumer.clone(),
            service.intake.batch,
            Duration::from_secs(service.intake.ack_wait_secs),
            intake::Workers {
                work_ready: Arc::clone(&work_ready),
                handoff: dispatcher.handoff(),
            },
            consuming,
            shutdown.clone(),
        ),
    );
    let workers = after_migrations(
        &ctx.migrated,
        &shutdown,
        dispatcher.run(Arc::clone(&work_ready), shutdown.clone()),
    );
    after_migrations(
        &ctx.migrated,
        &shutdown,
        maintenance(store.clone(), service.retention.clone(), shutdown.clone()),
    );

    let state = api::ApiState {
        store,
        delivery: Arc::new(service.delivery),
        policy,
        patterns,
        work_ready,
    };
    let grace = common.grace();
    ctx.serve(listener, api::router(state, auth)).await?;
    if tokio::time::timeout(grace, async {
        let _ = intake.await;
        let _ = workers.await;
    })
    .await
    .is_err()
    {
        tracing::warn!("grace period elapsed with attempts in flight; their leases will expire");
    }
    Ok(())
}

/// Spawns `work` once `migrated` is set; never, if `shutdown` comes first.
fn after_migrations<F>(
    migrated: &service_runtime::ReadyFlag,
    shutdown: &CancellationToken,
    work: F,
) -> tokio::task::JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (migrated, shutdown) = (migrated.clone(), shutdown.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = migrated.wait() => work.await,
            () = shutdown.cancelled() => {}
        }
    })
}

/// Prunes old records and publishes queue gauges.
async fn maintenance(
    store: store::Store,
    retention: config::RetentionConfig,
    shutdown: CancellationToken,
) {
    let mut stats = tokio::time::interval(Duration::from_secs(5));
    let mut prune = tokio::time::interval(Duration::from_secs(retention.interval_secs));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = stats.tick() => {
                if let Ok((pending, lag, disabled)) = store.stats().await {
                    metrics::gauge!("webhook_queue_depth").set(pending as f64);
                    metrics::gauge!("webhook_queue_lag_seconds").set(lag);
                    metrics::gauge!("webhook_subscriptions_disabled").set(disabled as f64);
                }
            }
            _ = prune.tick() => match store.prune(retention.days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deliveries = n, "pruned old deliveries"),
                Err(err) => tracing::warn!(error = %err, "pruning failed"),
            },
        }
    }
}
