//! PostgreSQL: a pool plus the service's own sqlx migrations.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::config::DatabaseConfig;

/// A pool that connects on first use, so a service starts while PostgreSQL is away.
pub fn lazy_pool(config: &DatabaseConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(config.acquire_timeout_secs))
        .connect_lazy(&config.url)
        .unwrap_or_else(|_| {
            // The URL was validated at start-up; an unparsable one still yields a pool that
            // fails every query, which readiness reports.
            PgPoolOptions::new().connect_lazy_with(Default::default())
        })
}

/// Runs `migrator`, retrying with backoff while PostgreSQL does not answer, until it succeeds
/// or `shutdown` fires. Migrations take an advisory lock, so replicas starting together are
/// safe. Returns whether they ran.
pub async fn migrate_with_retry(
    pool: &PgPool,
    migrator: &Migrator,
    shutdown: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(200);
    loop {
        match migrator.run(pool).await {
            Ok(()) => {
                tracing::info!("migrations applied");
                return true;
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?delay, "migrations not applied yet")
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// `SELECT 1` through the pool.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
}
