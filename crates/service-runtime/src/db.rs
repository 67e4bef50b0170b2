//! PostgreSQL: a pool plus the service's own sqlx migrations.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{ConfigError, DatabaseConfig};

/// A pool that connects on first use, so a service starts while PostgreSQL is away. A URL
/// that does not parse is a configuration error, never a silent fallback to defaults.
pub fn lazy_pool(config: &DatabaseConfig) -> Result<PgPool, ConfigError> {
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
        .connect_lazy_with(config.connect_options()?))
}

/// Runs `migrator`, retrying with backoff while PostgreSQL does not answer, until it succeeds
/// or `shutdown` fires. Migrations take an advisory lock, so replicas starting together are
/// safe. Returns whether they ran.
pub async fn migrate_with_retry(
    pool: &PgPool,
    migrator: &Migrator,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match migrator.run(pool).await {
            Ok(()) => {
                tracing::info!("migrations applied");
                return true;
            }
            Err(err) => tracing::warn!(error = %err, "migrations not applied yet"),
        }
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}

/// `SELECT 1` through the pool.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
