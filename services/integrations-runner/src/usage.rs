//! Usage accounting: calls, successes and failures per (integration, UTC day, endpoint),
//! counted in memory and flushed every `usage.flush_ms` as one multi-row upsert that
//! increments `integration_usage`, with `integrations.last_used_at` moved forward.
//!
//! A failed flush keeps its counts (up to `usage.max_pending_rows` keys; past it new keys are
//! dropped and counted) and is retried at the next tick. When the batch is refused because of
//! a row (see [`refuses_the_row`]: its integration was deleted, a counter would overflow), it is
//! retried row by row and a row the database still refuses is dropped and counted: a poison row
//! never blocks the others and is never retried forever. Any other failure, a database that
//! does not answer or answers with an error that is not about the rows (not accepting
//! connections, restarting, a deadlock, a timeout), keeps every count. After each flush one
//! `rt.integration.usage` is published per integration that had a row written (coalesced: at
//! most one per integration per flush).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use time::{Date, OffsetDateTime};
use tokio_util::sync::CancellationToken;

/// The `usage` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageConfig {
    /// Milliseconds between flushes.
    pub flush_ms: u64,
    /// Keys (integration, day, endpoint) kept in memory while the database does not answer.
    pub max_pending_rows: usize,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            flush_ms: 500,
            max_pending_rows: 10_000,
        }
    }
}

/// Calls, successes, failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Calls.
    pub calls: i64,
    /// Calls that succeeded (2xx).
    pub successes: i64,
    /// Calls that failed.
    pub failures: i64,
}

impl Counts {
    fn add(&mut self, other: Self) {
        self.calls += other.calls;
        self.successes += other.successes;
        self.failures += other.failures;
    }
}

/// `today` of [`Usage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Today {
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Counts,
}

/// The `Usage` of the NATS contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Every call ever.
    pub total: Counts,
    /// Today's (UTC).
    pub today: Today,
    /// Totals per endpoint.
    pub endpoints: BTreeMap<String, Counts>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    integration: String,
    day: Date,
    endpoint: String,
}

#[derive(Debug, Default)]
struct Pending {
    counts: HashMap<Key, Counts>,
    last_used: HashMap<String, (String, OffsetDateTime)>,
}

/// Counts usage and flushes it.
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    pending: Arc<Mutex<Pending>>,
    max_pending: usize,
}

/// One `rt.integration.usage` payload.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageUpdated {
    /// The integration.
    pub integration_id: String,
    /// Its project.
    pub project_id: String,
    /// Its usage after the flush.
    pub usage: Usage,
    /// Its last call.
    #[serde(with = "millis_opt")]
    pub last_used: Option<OffsetDateTime>,
    /// When this was published.
    #[serde(with = "events::envelope::timestamp")]
    pub timestamp: OffsetDateTime,
}

const UPSERT: &str = r"
INSERT INTO integration_usage (integration_id, day, endpoint, calls, successes, failures)
SELECT * FROM UNNEST($1::text[], $2::date[], $3::text[], $4::int8[], $5::int8[], $6::int8[])
ON CONFLICT (integration_id, day, endpoint) DO UPDATE SET
    calls = integration_usage.calls + EXCLUDED.calls,
    successes = integration_usage.successes + EXCLUDED.successes,
    failures = integration_usage.failures + EXCLUDED.failures";

const LAST_USED: &str = r"
UPDATE integrations AS i SET last_used_at = GREATEST(i.last_used_at, v.at)
FROM UNNEST($1::text[], $2::timestamptz[]) AS v(id, at) WHERE i.id = v.id";

impl UsageRecorder {
    /// An empty recorder.
    pub fn new(config: &UsageConfig) -> Self {
        Self {
            pending: Arc::default(),
            max_pending: config.max_pending_rows,
        }
    }

    /// Counts one call.
    pub fn record(&self, integration: &str, project: &str, endpoint: &str, success: bool) {
        let now = OffsetDateTime::now_utc();
        let key = Key {
            integration: integration.to_owned(),
            day: now.date(),
            endpoint: endpoint.to_owned(),
        };
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if !pending.counts.contains_key(&key) && pending.counts.len() >= self.max_pending {
            metrics::counter!("integration_usage_dropped_total", "reason" => "pending_full")
                .increment(1);
            return;
        }
        let c = pending.counts.entry(key).or_default();
        c.calls += 1;
        if success {
            c.successes += 1;
        } else {
            c.failures += 1;
        }
        pending
            .last_used
            .insert(integration.to_owned(), (project.to_owned(), now));
    }

    fn take(&self) -> Pending {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// Puts back counts whose flush failed (merged with what came in meanwhile).
    fn restore(&self, back: Pending) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        for (key, counts) in back.counts {
            if !pending.counts.contains_key(&key) && pending.counts.len() >= self.max_pending {
                metrics::counter!("integration_usage_dropped_total", "reason" => "pending_full")
                    .increment(1);
                continue;
            }
            pending.counts.entry(key).or_default().add(counts);
        }
        for (id, (project, at)) in back.last_used {
            let entry = pending.last_used.entry(id).or_insert((project, at));
            entry.1 = entry.1.max(at);
        }
    }

    /// Writes what is pending. Returns the integrations touched (id → project), empty when
    /// nothing was written.
    pub async fn flush(&self, pool: &PgPool) -> HashMap<String, String> {
        let pending = self.take();
        if pending.counts.is_empty() && pending.last_used.is_empty() {
            return HashMap::new();
        }
        let landed = match write_batch(pool, &pending).await {
            Ok(()) => None,
            Err(err) if refuses_the_row(&err) => {
                metrics::counter!("integration_usage_flush_failures_total", "kind" => "batch_refused").increment(1);
                match write_rows(pool, &pending.counts).await {
                    Ok(landed) => Some(landed),
                    Err(kept) => {
                        // The database stopped taking rows midway: keep the rest for the next tick.
                        self.restore(Pending {
                            counts: kept,
                            last_used: pending.last_used,
                        });
                        return HashMap::new();
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "usage flush failed; kept for the next one");
                metrics::counter!("integration_usage_flush_failures_total", "kind" => "unavailable").increment(1);
                self.restore(pending);
                return HashMap::new();
            }
        };
        let mut touched = pending.last_used;
        if let Some(landed) = landed {
            // Only integrations with a row written have new usage to announce (a deleted one
            // has none).
            touched.retain(|id, _| landed.contains(id));
            if let Err(err) = write_last_used(pool, &touched).await {
                tracing::warn!(error = %err, "recording last use failed; kept for the next flush");
                self.restore(Pending {
                    counts: HashMap::new(),
                    last_used: touched.clone(),
                });
            }
        }
        touched
            .into_iter()
            .map(|(id, (project, _))| (id, project))
            .collect()
    }

    /// Flushes every `flush_every`, publishing `rt.integration.usage` for the touched
    /// integrations, until `shutdown`; then flushes once more.
    pub async fn run(
        self,
        pool: PgPool,
        nats: async_nats::Client,
        flush_every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let last = tokio::select! {
                () = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            let touched = self.flush(&pool).await;
            for (id, project) in touched {
                publish(&pool, &nats, &id, &project).await;
            }
            if last {
                return;
            }
        }
    }
}

async fn publish(pool: &PgPool, nats: &async_nats::Client, id: &str, project: &str) {
    let (usage, last_used) = match (summary(pool, id).await, last_used(pool, id).await) {
        (Ok(u), Ok(l)) => (u, l),
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(error = %err, integration = id, "usage summary failed");
            return;
        }
    };
    let event = UsageUpdated {
        integration_id: id.to_owned(),
        project_id: project.to_owned(),
        usage,
        last_used,
        timestamp: OffsetDateTime::now_utc(),
    };
    let Ok(payload) = serde_json::to_vec(&event) else {
        return;
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        events::trace_context::TRACEPARENT,
        events::trace_context::current_traceparent().as_str(),
    );
    if let Err(err) = nats
        .publish_with_headers(events::subject::INTEGRATION_USAGE, headers, payload.into())
        .await
    {
        tracing::warn!(error = %err, "publishing usage failed");
    }
}

/// Whether the database refused a write because of the row itself: SQLSTATE class 22 (data
/// exception: a counter past `int8`) or 23 (integrity constraint: the integration was deleted).
/// Any other refusal (`55000` not accepting connections, `57P01` restarting, `28P01` a rotated
/// password, `40P01` a deadlock, `57014` a statement timeout, `25006` a read-only replica, a
/// missing table) says nothing about the row: dropping it would lose counts that land later.
fn refuses_the_row(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}

async fn write_batch(pool: &PgPool, pending: &Pending) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // In key order, so that replicas flushing the same keys lock them in the same order
    // rather than deadlock.
    let mut rows: Vec<_> = pending.counts.iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    sqlx::query(UPSERT)
        .bind(
            rows.iter()
                .map(|(k, _)| k.integration.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|(k, _)| k.day).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(k, _)| k.endpoint.clone())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|(_, c)| c.calls).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, c)| c.successes).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, c)| c.failures).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    write_last_used(&mut *tx, &pending.last_used).await?;
    tx.commit().await
}

async fn write_last_used<'e, E>(
    executor: E,
    last_used: &HashMap<String, (String, OffsetDateTime)>,
) -> Result<(), sqlx::Error>
where
    E: sqlx::PgExecutor<'e>,
{
    // In id order, like the rows (see `write_batch`).
    let mut rows: Vec<_> = last_used.iter().map(|(id, (_, at))| (id, *at)).collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    sqlx::query(LAST_USED)
        .bind(rows.iter().map(|(id, _)| (*id).clone()).collect::<Vec<_>>())
        .bind(rows.iter().map(|(_, at)| *at).collect::<Vec<_>>())
        .execute(executor)
        .await
        .map(|_| ())
}

/// Writes rows one by one, in key order; a row the database refuses ([`refuses_the_row`]) is
/// dropped and counted. `Ok` with the integrations that had a row written; `Err` with the rows
/// not yet written when the database stops taking them for another reason.
async fn write_rows(
    pool: &PgPool,
    counts: &HashMap<Key, Counts>,
) -> Result<HashSet<String>, HashMap<Key, Counts>> {
    let mut rows: Vec<_> = counts.iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut landed = HashSet::new();
    for (i, (key, counts)) in rows.iter().enumerate() {
        let result = sqlx::query(UPSERT)
            .bind(vec![key.integration.clone()])
            .bind(vec![key.day])
            .bind(vec![key.endpoint.clone()])
            .bind(vec![counts.calls])
            .bind(vec![counts.successes])
            .bind(vec![counts.failures])
            .execute(pool)
            .await;
        match result {
            Ok(_) => {
                landed.insert(key.integration.clone());
            }
            Err(err) if refuses_the_row(&err) => {
                tracing::warn!(integration = %key.integration, error = %err, "usage row refused; dropped");
                metrics::counter!("integration_usage_poison_rows_total").increment(1);
            }
            Err(err) => {
                tracing::warn!(error = %err, "usage flush failed midway; the rest kept for the next one");
                return Err(rows[i..].iter().map(|(k, c)| ((*k).clone(), **c)).collect());
            }
        }
    }
    Ok(landed)
}

/// The usage of integration `id`: total, today (UTC) and per endpoint.
pub async fn summary(pool: &PgPool, id: &str) -> Result<Usage, sqlx::Error> {
    let today = OffsetDateTime::now_utc().date();
    let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        r"SELECT endpoint, SUM(calls)::int8, SUM(successes)::int8, SUM(failures)::int8,
            COALESCE(SUM(calls) FILTER (WHERE day = $2), 0)::int8,
            COALESCE(SUM(successes) FILTER (WHERE day = $2), 0)::int8,
            COALESCE(SUM(failures) FILTER (WHERE day = $2), 0)::int8
          FROM integration_usage WHERE integration_id = $1 GROUP BY endpoint",
    )
    .bind(id)
    .bind(today)
    .fetch_all(pool)
    .await?;
    let mut usage = Usage {
        total: Counts::default(),
        today: Today {
            date: format!(
                "{:04}-{:02}-{:02}",
                today.year(),
                u8::from(today.month()),
                today.day()
            ),
            counts: Counts::default(),
        },
        endpoints: BTreeMap::new(),
    };
    for (endpoint, calls, successes, failures, t_calls, t_successes, t_failures) in rows {
        let all = Counts {
            calls,
            successes,
            failures,
        };
        usage.total.add(all);
        usage.today.counts.add(Counts {
            calls: t_calls,
            successes: t_successes,
            failures: t_failures,
        });
        usage.endpoints.insert(endpoint, all);
    }
    Ok(usage)
}

/// `integrations.last_used_at` of `id`.
pub async fn last_used(pool: &PgPool, id: &str) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    let row: Option<(Option<OffsetDateTime>,)> =
        sqlx::query_as("SELECT last_used_at FROM integrations WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|r| r.0))
}

/// An optional time as RFC 3339 UTC with milliseconds (`2026-03-17T22:00:00.000Z`) or `null`.
pub(crate) mod millis_opt {
    use serde::Serializer;
    use time::OffsetDateTime;

    /// Serde serialiser.
    pub fn serialize<S: Serializer>(
        at: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serializer.serialize_str(&events::envelope::timestamp::format(*at)),
            None => serializer.serialize_none(),
        }
    }
}
