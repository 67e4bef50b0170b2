//! What every platform service stands on.
//!
//! A service is a library exposing `run(config, listener, shutdown)`; its `main.rs` only calls
//! [`main`], which parses `--config`, loads and validates the layered [`config`], sets up
//! [`telemetry`], binds the listener and turns SIGTERM/Ctrl-C into a cancellation token.
//! Inside `run`, [`ServiceContext::start`] connects NATS (and PostgreSQL when configured)
//! without blocking on them, and [`ServiceContext::serve`] serves the service's routes plus
//! `/healthz`, `/readyz` and `/metrics` until shutdown, bounded by the grace period.
#![warn(missing_docs)]

pub mod backoff;
pub mod config;
pub mod db;
pub mod http_api;
pub mod nats;
pub mod net;
pub mod ops;
pub mod server;
pub mod shutdown;
pub mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use clap::Parser;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
pub use config::{
    CommonConfig, ConfigError, ConfigSource, NatsAuth, Settings, Validate, reject_placeholder,
};
pub use ops::{Readiness, ReadyFlag};

/// Identity of a service binary.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// Name used in logs, traces and the NATS client name, e.g. `gateway-ws`.
    pub name: &'static str,
    /// Prefix of its environment variables, e.g. `GATEWAY_WS_`.
    pub env_prefix: &'static str,
    /// Default HTTP port.
    pub default_port: u16,
    /// Whether `database.url` must be set.
    pub database_required: bool,
}

impl ServiceSpec {
    /// Loads this service's settings from `source`.
    pub fn load<S>(&self, source: &ConfigSource) -> Result<Settings<S>, ConfigError>
    where
        S: DeserializeOwned + Serialize + Default + Validate,
    {
        config::load(
            self.env_prefix,
            source,
            CommonConfig::with_port(self.default_port),
            self.database_required,
        )
    }
}

#[derive(Debug, Parser)]
#[command(about = None, long_about = None)]
struct Args {
    /// TOML file layered between the built-in defaults and the environment.
    #[arg(short, long, env = "CONFIG_FILE", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Why a service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The NATS client could not be created.
    #[error(transparent)]
    Nats(#[from] nats::NatsError),
    /// Serving HTTP failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
    /// A setting that only the service itself can check is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A component the service cannot work without stopped.
    #[error("{0}")]
    Component(String),
}

/// The whole life of a service process whose configuration needs nothing beyond
/// [`Validate`]: [`main_with`] with no preparation step.
pub fn main<S, F, Fut>(spec: ServiceSpec, run: F) -> ExitCode
where
    S: DeserializeOwned + Serialize + Default + Validate,
    F: FnOnce(Settings<S>, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    main_with(spec, |_: &Settings<S>| Ok(()), |s, (), l, t| run(s, l, t))
}

/// The whole life of a service process: arguments, configuration, `prepare`, telemetry,
/// listener, signal handling, then `run`.
///
/// `prepare` turns the settings into what `run` needs already parsed (verifiers from PEM keys,
/// CORS layers, networks, store clients); it runs **before the port is bound**, so every
/// configuration error is reported without the service ever listening. Exit codes: 0 after a
/// clean shutdown, 64 for invalid configuration or arguments (including what `prepare` or
/// `run` finds), 1 when `run` fails otherwise.
#[allow(clippy::print_stderr)]
pub fn main_with<S, P, B, F, Fut>(spec: ServiceSpec, prepare: B, run: F) -> ExitCode
where
    S: DeserializeOwned + Serialize + Default + Validate,
    B: FnOnce(&Settings<S>) -> Result<P, ConfigError>,
    F: FnOnce(Settings<S>, P, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), ServiceError>>,
{
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) if !err.use_stderr() => {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(config::EXIT_INVALID_CONFIG);
        }
    };
    let config: Settings<S> = match spec.load(&ConfigSource::from_process(args.config)) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("{}: {err}", spec.name);
            return ExitCode::from(config::EXIT_INVALID_CONFIG);
        }
    };
    let _telemetry = telemetry::init(
        spec.name,
        config.common.log.format,
        std::env::var(telemetry::OTLP_ENDPOINT_ENV).ok(),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Inside the runtime: preparing may build clients that need one.
        let prepared = match prepare(&config) {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(error = %err, "invalid configuration");
                eprintln!("{}: {err}", spec.name);
                return ExitCode::from(config::EXIT_INVALID_CONFIG);
            }
        };
        let listen = config.common.http.listen;
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(err) => {
                tracing::error!(addr = %listen, error = %err, "cannot bind http listener");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = shutdown::on_signal();
        match run(config, prepared, listener, shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(ServiceError::Config(err)) => {
                tracing::error!(error = %err, "invalid configuration");
                eprintln!("{}: {err}", spec.name);
                ExitCode::from(config::EXIT_INVALID_CONFIG)
            }
            Err(err) => {
                tracing::error!(error = %err, "service failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// Connections and health state shared by a running service.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// Service name.
    pub name: &'static str,
    /// NATS client; may still be connecting.
    pub nats: async_nats::Client,
    /// JetStream over [`Self::nats`].
    pub jetstream: jetstream::Context,
    /// PostgreSQL pool, when `database.url` is set. Lazily connected; `/readyz` says when it
    /// answers and its migrations have run.
    pub db: Option<PgPool>,
    /// Checks behind `/readyz`; add the service's own before [`Self::serve`].
    pub readiness: Readiness,
    /// Set once the service's migrations have run (at once without a database or migrator):
    /// work that needs the schema waits for it.
    pub migrated: ReadyFlag,
    /// Cancelled when the service must stop.
    pub shutdown: CancellationToken,
    grace: Duration,
}

impl ServiceContext {
    /// Connects NATS in the background, provisions the `EVENTS` stream once it answers, and
    /// (when `database.url` is set) opens a lazy pool and runs `migrator` once PostgreSQL
    /// answers. Nothing here waits for a dependency: readiness reports what is missing.
    pub async fn start(
        name: &'static str,
        common: &CommonConfig,
        migrator: Option<&'static Migrator>,
        shutdown: CancellationToken,
    ) -> Result<Self, ServiceError> {
        // Install the recorder before anything counts, or early counts are lost.
        let _ = ops::metrics_handle();
        // Validated at load already; an invalid combination is a configuration error (64).
        let auth = common.nats.auth()?;
        let nats = nats::connect(&common.nats, &auth, name).await?;
        let jetstream = jetstream::new(nats.clone());
        let mut readiness = Readiness::default();

        let client = nats.clone();
        readiness.add("nats", move || {
            let up = nats::is_connected(&client);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("not connected".to_owned())
                }
            }
        });

        let provisioned = readiness.flag("jetstream", "stream not provisioned yet");
        {
            let (js, settings, token) = (
                jetstream.clone(),
                common.nats.events_stream(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                if nats::provision_events_stream(&js, &settings, &token).await {
                    provisioned.set();
                }
            });
        }

        let migrated = ReadyFlag::default();
        let db = if common.database.url.is_empty() {
            migrated.set();
            None
        } else {
            Some(start_database(
                &common.database,
                migrator,
                &migrated,
                &shutdown,
                &mut readiness,
            )?)
        };

        Ok(Self {
            name,
            nats,
            jetstream,
            db,
            readiness,
            migrated,
            shutdown,
            grace: common.grace(),
        })
    }

    /// Serves `routes` plus the ops endpoints until shutdown. On shutdown `/readyz` turns 503
    /// first, then the listener stops accepting and open connections get the grace period.
    pub async fn serve(self, listener: TcpListener, routes: Router) -> Result<(), ServiceError> {
        let app = routes.merge(ops::router(self.readiness.clone()));
        let readiness = self.readiness.clone();
        let token = self.shutdown.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            readiness.set_draining();
        });
        server::serve(listener, app, self.shutdown.clone(), self.grace).await?;
        // Flush what the client still buffers; bounded so a dead server cannot hold us.
        if nats::is_connected(&self.nats) {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.nats.flush()).await;
        }
        Ok(())
    }
}

fn start_database(
    config: &config::DatabaseConfig,
    migrator: Option<&'static Migrator>,
    migrated: &ReadyFlag,
    shutdown: &CancellationToken,
    readiness: &mut Readiness,
) -> Result<PgPool, ConfigError> {
    let migrated = migrated.clone();
    let pool = db::lazy_pool(config)?;
    match migrator {
        Some(migrator) => {
            let (pool, token, flag) = (pool.clone(), shutdown.clone(), migrated.clone());
            tokio::spawn(async move {
                if db::migrate_with_retry(&pool, migrator, &token).await {
                    flag.set();
                }
            });
        }
        None => migrated.set(),
    }
    let check_pool = pool.clone();
    readiness.add("postgres", move || {
        let pool = check_pool.clone();
        let migrated = migrated.is_set();
        async move {
            db::ping(&pool)
                .await
                .map_err(|_| "not answering".to_owned())?;
            if migrated {
                Ok(())
            } else {
                Err("migrations pending".to_owned())
            }
        }
    });
    Ok(pool)
}
