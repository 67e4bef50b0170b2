//! Rate limits per integration: the configured token bucket, shared by every replica through
//! one atomic statement on `integration_rate_state`, and what the upstream said (`429` +
//! `Retry-After`, `X-RateLimit-*`), kept in memory and written to the same row when it changes
//! meaningfully so another replica's status sees it.
//!
//! A limited call fails fast (`rate_limited` with `retryAfterMs`); it never waits for a token.
//! Integrations without a configured limit do no database write on the hot path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use time::OffsetDateTime;

use crate::exec::response::UpstreamHeaders;

/// `rate_limit {requests, perSeconds}` of an integration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Capacity, and tokens refilled per `per_seconds`.
    pub requests: u32,
    /// The window.
    pub per_seconds: u32,
}

impl Bucket {
    fn rate(self) -> f64 {
        f64::from(self.requests) / f64::from(self.per_seconds.max(1))
    }
}

/// `status.rateLimit`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitView {
    /// `configured` or `upstream`.
    pub source: &'static str,
    /// The limit, when known.
    pub limit: Option<i64>,
    /// Calls left.
    pub remaining: i64,
    /// When the window resets, when known.
    #[serde(with = "crate::usage::millis_opt")]
    pub reset_at: Option<OffsetDateTime>,
    /// Milliseconds until a call may succeed, when none may now.
    pub retry_after_ms: Option<u64>,
}

/// Why a call may not go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Milliseconds until a call may succeed.
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Upstream {
    blocked_until: Option<OffsetDateTime>,
    limit: Option<i64>,
    remaining: Option<i64>,
    reset_at: Option<OffsetDateTime>,
    /// When this state was last written to the database.
    written_at: Option<OffsetDateTime>,
}

/// Errors of the limiter's database statements.
pub type DbError = sqlx::Error;

/// The limiter of one runner.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    pool: PgPool,
    upstream: Arc<Mutex<HashMap<String, Upstream>>>,
    /// Bound on the integrations whose upstream state is kept in memory.
    max_tracked: usize,
}

const TAKE: &str = r"
INSERT INTO integration_rate_state AS s (integration_id, tokens, refilled_at)
VALUES ($1, $2::float8 - 1, now())
ON CONFLICT (integration_id) DO UPDATE SET
    tokens = CASE
        WHEN s.blocked_until > now() THEN s.tokens
        WHEN LEAST($2::float8, s.tokens + EXTRACT(EPOCH FROM now() - s.refilled_at)::float8 * $3::float8) >= 1
        THEN LEAST($2::float8, s.tokens + EXTRACT(EPOCH FROM now() - s.refilled_at)::float8 * $3::float8) - 1
        ELSE s.tokens END,
    refilled_at = CASE
        WHEN s.blocked_until > now() THEN s.refilled_at
        WHEN LEAST($2::float8, s.tokens + EXTRACT(EPOCH FROM now() - s.refilled_at)::float8 * $3::float8) >= 1
        THEN now()
        ELSE s.refilled_at END
RETURNING s.refilled_at = now() AS taken, s.tokens,
    EXTRACT(EPOCH FROM now() - s.refilled_at)::float8 AS elapsed,
    (EXTRACT(EPOCH FROM s.blocked_until - now()) * 1000)::float8 AS blocked_ms";

// A row created by an upstream report starts with a full bucket: refilled at the epoch.
const RECORD: &str = r"
INSERT INTO integration_rate_state AS s
    (integration_id, tokens, refilled_at, blocked_until, upstream_limit, upstream_remaining, upstream_reset_at)
VALUES ($1, 0, 'epoch', $2, $3, $4, $5)
ON CONFLICT (integration_id) DO UPDATE SET
    blocked_until = COALESCE(EXCLUDED.blocked_until, s.blocked_until),
    upstream_limit = COALESCE(EXCLUDED.upstream_limit, s.upstream_limit),
    upstream_remaining = COALESCE(EXCLUDED.upstream_remaining, s.upstream_remaining),
    upstream_reset_at = COALESCE(EXCLUDED.upstream_reset_at, s.upstream_reset_at)";

const READ: &str = r"
SELECT tokens, EXTRACT(EPOCH FROM now() - refilled_at)::float8 AS elapsed, blocked_until,
    upstream_limit, upstream_remaining, upstream_reset_at, now() AS now
FROM integration_rate_state WHERE integration_id = $1";

fn ms(d: time::Duration) -> u64 {
    u64::try_from(d.whole_milliseconds()).unwrap_or(0)
}

impl RateLimiter {
    /// A limiter over `pool` keeping upstream state of at most `max_tracked` integrations.
    pub fn new(pool: PgPool, max_tracked: usize) -> Self {
        Self {
            pool,
            upstream: Arc::default(),
            max_tracked,
        }
    }

    /// Takes a token for a call of integration `id`, or says how long to wait. Checks the
    /// upstream block this runner knows first (no database), then the configured bucket.
    pub async fn acquire(
        &self,
        id: &str,
        bucket: Option<Bucket>,
    ) -> Result<Result<(), Limited>, DbError> {
        let now = OffsetDateTime::now_utc();
        if let Some(until) = self.blocked_until(id)
            && until > now
        {
            return Ok(Err(Limited {
                retry_after_ms: ms(until - now).max(1),
            }));
        }
        let Some(bucket) = bucket else {
            return Ok(Ok(()));
        };
        let (taken, tokens, elapsed, blocked_ms): (bool, f64, f64, Option<f64>) =
            sqlx::query_as(TAKE)
                .bind(id)
                .bind(f64::from(bucket.requests))
                .bind(bucket.rate())
                .fetch_one(&self.pool)
                .await?;
        if taken {
            return Ok(Ok(()));
        }
        if let Some(b) = blocked_ms.filter(|b| *b > 0.0) {
            return Ok(Err(Limited {
                retry_after_ms: b.ceil() as u64,
            }));
        }
        let current = (tokens + elapsed.max(0.0) * bucket.rate()).min(f64::from(bucket.requests));
        let wait = ((1.0 - current).max(0.0) / bucket.rate() * 1000.0).ceil();
        Ok(Err(Limited {
            retry_after_ms: (wait as u64).max(1),
        }))
    }

    fn blocked_until(&self, id: &str) -> Option<OffsetDateTime> {
        let map = self.upstream.lock().ok()?;
        map.get(id)?.blocked_until
    }

    /// Records what the upstream said about integration `id` (its status and headers). A 429
    /// blocks the integration for `Retry-After` (1 s when it did not say) and is written at
    /// once; other changes are written when the limit or reset changes, when remaining reaches
    /// 0, or at most once a second.
    pub async fn record(
        &self,
        id: &str,
        status: u16,
        headers: &UpstreamHeaders,
    ) -> Result<(), DbError> {
        let now = OffsetDateTime::now_utc();
        let blocked_until = (status == 429).then(|| {
            let wait = headers.retry_after.unwrap_or(Duration::from_secs(1));
            now + time::Duration::try_from(wait).unwrap_or(time::Duration::SECOND)
        });
        if blocked_until.is_none()
            && headers.limit.is_none()
            && headers.remaining.is_none()
            && headers.reset_at.is_none()
        {
            return Ok(());
        }
        let write = {
            let Ok(mut map) = self.upstream.lock() else {
                return Ok(());
            };
            if !map.contains_key(id) && map.len() >= self.max_tracked {
                // Forget the expired ones first; past the bound, state of new integrations is
                // not kept in memory (it is still written on a 429).
                map.retain(|_, u| u.blocked_until.is_some_and(|b| b > now));
            }
            let tracked = map.contains_key(id) || map.len() < self.max_tracked;
            let mut fresh = Upstream::default();
            let entry = if tracked {
                map.entry(id.to_owned()).or_default()
            } else {
                &mut fresh
            };
            let meaningful = blocked_until.is_some()
                || entry.limit != headers.limit.or(entry.limit)
                || entry.reset_at != headers.reset_at.or(entry.reset_at)
                || (headers.remaining == Some(0) && entry.remaining != Some(0))
                || entry
                    .written_at
                    .is_none_or(|w| now - w >= time::Duration::SECOND);
            if let Some(b) = blocked_until {
                entry.blocked_until = Some(b);
            }
            entry.limit = headers.limit.or(entry.limit);
            entry.remaining = headers.remaining.or(entry.remaining);
            entry.reset_at = headers.reset_at.or(entry.reset_at);
            if meaningful {
                entry.written_at = Some(now);
            }
            meaningful
        };
        if write {
            sqlx::query(RECORD)
                .bind(id)
                .bind(blocked_until)
                .bind(headers.limit)
                .bind(headers.remaining)
                .bind(headers.reset_at)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// The current state for `status.rateLimit`: an upstream block first, then the configured
    /// bucket, then what the upstream's headers last said; `None` when no limit applies.
    pub async fn view(
        &self,
        id: &str,
        bucket: Option<Bucket>,
    ) -> Result<Option<RateLimitView>, DbError> {
        type Row = (
            f64,
            f64,
            Option<OffsetDateTime>,
            Option<i64>,
            Option<i64>,
            Option<OffsetDateTime>,
            OffsetDateTime,
        );
        let row: Option<Row> = sqlx::query_as(READ)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let now = row.as_ref().map_or_else(OffsetDateTime::now_utc, |r| r.6);
        let memory = self.upstream.lock().ok().and_then(|m| m.get(id).cloned());
        let blocked = [
            memory.as_ref().and_then(|m| m.blocked_until),
            row.as_ref().and_then(|r| r.2),
        ]
        .into_iter()
        .flatten()
        .max()
        .filter(|b| *b > now);
        let upstream_limit = memory
            .as_ref()
            .and_then(|m| m.limit)
            .or(row.as_ref().and_then(|r| r.3));
        if let Some(until) = blocked {
            return Ok(Some(RateLimitView {
                source: "upstream",
                limit: upstream_limit,
                remaining: 0,
                reset_at: Some(until),
                retry_after_ms: Some(ms(until - now).max(1)),
            }));
        }
        if let Some(bucket) = bucket {
            let tokens = row.as_ref().map_or(f64::from(bucket.requests), |r| {
                (r.0 + r.1 * bucket.rate()).min(f64::from(bucket.requests))
            });
            let remaining = tokens.floor() as i64;
            let to_full = (f64::from(bucket.requests) - tokens) / bucket.rate();
            return Ok(Some(RateLimitView {
                source: "configured",
                limit: Some(i64::from(bucket.requests)),
                remaining,
                reset_at: Some(now + time::Duration::seconds_f64(to_full.max(0.0))),
                retry_after_ms: (remaining < 1)
                    .then(|| (((1.0 - tokens) / bucket.rate()) * 1000.0).ceil() as u64),
            }));
        }
        let remaining = memory
            .as_ref()
            .and_then(|m| m.remaining)
            .or(row.as_ref().and_then(|r| r.4));
        let reset_at = memory
            .as_ref()
            .and_then(|m| m.reset_at)
            .or(row.as_ref().and_then(|r| r.5));
        Ok(remaining.map(|remaining| RateLimitView {
            source: "upstream",
            limit: upstream_limit,
            remaining,
            reset_at,
            retry_after_ms: None,
        }))
    }
}
