//! Every SQL statement the dispatcher runs.

use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

/// A webhook subscription as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Subscription {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Patterns: `deal.status_changed`, `deal.*`, `*`.
    pub event_types: Vec<String>,
    /// Free text.
    pub description: String,
    /// Attempts per delivery.
    pub max_attempts: i32,
    /// Attempts per second, if limited.
    pub rate_limit_per_sec: Option<i32>,
    /// Attempts in flight at once.
    pub max_concurrency: i32,
    /// Whether deliveries are sent.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When it was disabled.
    #[serde(with = "time::serde::rfc3339::option")]
    pub disabled_at: Option<OffsetDateTime>,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

const SUBSCRIPTION_COLUMNS: &str = "id, url, event_types, description, max_attempts, rate_limit_per_sec, \
     max_concurrency, enabled, disabled_reason, disabled_at, consecutive_failures, created_at, updated_at";

/// Fields of a new subscription.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    /// URL.
    pub url: String,
    /// Patterns.
    pub event_types: Vec<String>,
    /// Description.
    pub description: String,
    /// Attempts per delivery.
    pub max_attempts: i32,
    /// Rate limit.
    pub rate_limit_per_sec: Option<i32>,
    /// Concurrency limit.
    pub max_concurrency: i32,
    /// Signing secret, `whsec_...`.
    pub secret: String,
}

/// Changes to a subscription; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionPatch {
    /// URL.
    pub url: Option<String>,
    /// Patterns.
    pub event_types: Option<Vec<String>>,
    /// Description.
    pub description: Option<String>,
    /// Enable (clears the failure count and reason) or disable.
    pub enabled: Option<bool>,
    /// Attempts per delivery.
    pub max_attempts: Option<i32>,
    /// Rate limit; `Some(None)` removes it.
    pub rate_limit_per_sec: Option<Option<i32>>,
    /// Concurrency limit.
    pub max_concurrency: Option<i32>,
}

/// A delivery as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Delivery {
    /// Id.
    pub id: Uuid,
    /// The event (also the `webhook-id` header).
    pub event_id: Uuid,
    /// The subscription.
    pub subscription_id: Uuid,
    /// Event type.
    pub event_type: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// When the next attempt is due (pending only).
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    /// The last failure.
    pub last_error: Option<String>,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it succeeded or failed for good.
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    /// Every attempt, oldest first.
    #[sqlx(skip)]
    pub attempt_log: Vec<Attempt>,
}

const DELIVERY_COLUMNS: &str = "id, event_id, subscription_id, event_type, status, attempts, next_attempt_at, last_error, created_at, completed_at";

/// One attempt.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Attempt {
    /// Attempt number, from 1.
    pub attempt: i32,
    /// Start.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Latency.
    pub duration_ms: i32,
    /// HTTP status, if a response came.
    pub response_status: Option<i32>,
    /// Response body, truncated.
    pub response_body: Option<String>,
    /// Transport error or refusal.
    pub error: Option<String>,
    #[serde(skip)]
    #[allow(missing_docs)]
    pub delivery_id: Uuid,
}

/// A delivery claimed for one attempt, with what is needed to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// Delivery id.
    pub id: Uuid,
    /// Event id.
    pub event_id: Uuid,
    /// Subscription.
    pub subscription_id: Uuid,
    /// This attempt's number.
    pub attempts: i32,
    /// Event type.
    pub event_type: String,
    /// The exact bytes to POST.
    pub payload: String,
    /// Target.
    pub url: String,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Rate limit.
    pub rate_limit_per_sec: Option<i32>,
    /// Concurrency limit.
    pub max_concurrency: i32,
    /// Active secrets, newest first.
    pub secrets: Vec<String>,
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Delivery.
    pub delivery_id: Uuid,
    /// Subscription.
    pub subscription_id: Uuid,
    /// Attempt number.
    pub attempt: i32,
    /// Start.
    pub started_at: OffsetDateTime,
    /// Latency.
    pub duration_ms: i32,
    /// HTTP status.
    pub response_status: Option<i32>,
    /// Truncated body.
    pub response_body: Option<String>,
    /// Error.
    pub error: Option<String>,
    /// `pending` (retry at `next_attempt_at`), `succeeded` or `failed`.
    pub status: &'static str,
    /// Next attempt, for `pending`.
    pub next_attempt_at: OffsetDateTime,
    /// Whether the endpoint accepted it.
    pub success: bool,
    /// Disable the subscription with this reason (410 Gone).
    pub disable: Option<String>,
}

/// Data access.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Over a migrated pool.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates a subscription with its first secret.
    pub async fn create_subscription(
        &self,
        new: &NewSubscription,
    ) -> Result<Subscription, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let sub: Subscription = sqlx::query_as(&format!(
            "INSERT INTO webhook_subscriptions (id, url, event_types, description, max_attempts, rate_limit_per_sec, max_concurrency) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {SUBSCRIPTION_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(&new.url)
        .bind(&new.event_types)
        .bind(&new.description)
        .bind(new.max_attempts)
        .bind(new.rate_limit_per_sec)
        .bind(new.max_concurrency)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO webhook_secrets (subscription_id, secret) VALUES ($1, $2)")
            .bind(sub.id)
            .bind(&new.secret)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(sub)
    }

    /// A page of subscriptions in creation order, after `cursor`.
    pub async fn list_subscriptions(
        &self,
        limit: i64,
        cursor: Option<Uuid>,
    ) -> Result<Vec<Subscription>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2"
        ))
        .bind(cursor)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// One subscription.
    pub async fn get_subscription(&self, id: Uuid) -> Result<Option<Subscription>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM webhook_subscriptions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Applies a patch.
    pub async fn update_subscription(
        &self,
        id: Uuid,
        patch: &SubscriptionPatch,
    ) -> Result<Option<Subscription>, sqlx::Error> {
        sqlx::query_as(&format!(
            "UPDATE webhook_subscriptions SET \
               url = COALESCE($2, url), \
               event_types = COALESCE($3, event_types), \
               description = COALESCE($4, description), \
               max_attempts = COALESCE($5, max_attempts), \
               rate_limit_per_sec = CASE WHEN $6 THEN $7 ELSE rate_limit_per_sec END, \
               max_concurrency = COALESCE($8, max_concurrency), \
               enabled = COALESCE($9, enabled), \
               disabled_reason = CASE WHEN $9 IS NULL THEN disabled_reason WHEN $9 THEN NULL ELSE 'disabled through the API' END, \
               disabled_at = CASE WHEN $9 IS NULL THEN disabled_at WHEN $9 THEN NULL ELSE now() END, \
               consecutive_failures = CASE WHEN $9 THEN 0 ELSE consecutive_failures END, \
               updated_at = now() \
             WHERE id = $1 RETURNING {SUBSCRIPTION_COLUMNS}"
        ))
        .bind(id)
        .bind(&patch.url)
        .bind(&patch.event_types)
        .bind(&patch.description)
        .bind(patch.max_attempts)
        .bind(patch.rate_limit_per_sec.is_some())
        .bind(patch.rate_limit_per_sec.flatten())
        .bind(patch.max_concurrency)
        .bind(patch.enabled)
        .fetch_optional(&self.pool)
        .await
    }

    /// Deletes a subscription and everything it owns; false if it did not exist.
    pub async fn delete_subscription(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM webhook_subscriptions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The newest active secret.
    pub async fn current_secret(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT secret FROM webhook_secrets WHERE subscription_id = $1 AND expires_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Makes `secret` current; the previous ones keep signing for `grace_secs`.
    pub async fn rotate_secret(
        &self,
        id: Uuid,
        secret: &str,
        grace_secs: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM webhook_subscriptions WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $2) \
             WHERE subscription_id = $1 AND (expires_at IS NULL OR expires_at > now() + make_interval(secs => $2))",
        )
        .bind(id)
        .bind(grace_secs as f64)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO webhook_secrets (subscription_id, secret) VALUES ($1, $2)")
            .bind(id)
            .bind(secret)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// `(id, patterns)` of every enabled subscription.
    pub async fn enabled_patterns(&self) -> Result<Vec<(Uuid, Vec<String>)>, sqlx::Error> {
        sqlx::query_as("SELECT id, event_types FROM webhook_subscriptions WHERE enabled")
            .fetch_all(&self.pool)
            .await
    }

    /// Stores events and their deliveries in one transaction; repeats are ignored, so a
    /// redelivered event creates no duplicate deliveries.
    pub async fn insert_outbox(
        &self,
        events: &[(Uuid, String, String)],
        deliveries: &[(Uuid, Uuid, String)],
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let inserted = insert_outbox_tx(&mut tx, events, deliveries).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// Claims up to `limit` due deliveries of enabled subscriptions for `lease_secs`, counting
    /// the attempt. Replicas never claim the same delivery: rows are locked with SKIP LOCKED
    /// and a claim's lease must expire before anyone else takes it.
    pub async fn claim(&self, limit: i64, lease_secs: u64) -> Result<Vec<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "WITH claimed AS (                UPDATE webhook_deliveries d                SET lease_until = now() + make_interval(secs => $2), attempts = d.attempts + 1                WHERE d.id IN (                  SELECT d2.id FROM webhook_deliveries d2                  JOIN webhook_subscriptions s2 ON s2.id = d2.subscription_id                  WHERE d2.status = 'pending' AND d2.next_attempt_at <= now()                    AND (d2.lease_until IS NULL OR d2.lease_until < now()) AND s2.enabled                  ORDER BY d2.next_attempt_at LIMIT $1                  FOR UPDATE OF d2 SKIP LOCKED)                RETURNING d.id, d.event_id, d.subscription_id, d.attempts, d.event_type)              SELECT c.id, c.event_id, c.subscription_id, c.attempts, c.event_type, e.payload, s.url,                     s.max_attempts, s.rate_limit_per_sec, s.max_concurrency,                     ARRAY(SELECT k.secret FROM webhook_secrets k WHERE k.subscription_id = s.id                           AND (k.expires_at IS NULL OR k.expires_at > now()) ORDER BY k.id DESC) AS secrets              FROM claimed c JOIN webhook_events e ON e.id = c.event_id              JOIN webhook_subscriptions s ON s.id = c.subscription_id",
        )
        .bind(limit)
        .bind(lease_secs as f64)
        .fetch_all(&self.pool)
        .await
    }

    /// Records a batch of attempt results in one transaction: the attempts, the deliveries'
    /// new state, the subscriptions' failure counts, and disabling (410 Gone, or too many
    /// consecutive failures when `disable_after` > 0).
    pub async fn record(
        &self,
        outcomes: &[Outcome],
        disable_after: i32,
    ) -> Result<(), sqlx::Error> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let col = |f: fn(&Outcome) -> Option<String>| outcomes.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<Uuid> = outcomes.iter().map(|o| o.delivery_id).collect();
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, response_status, response_body, error)              SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::timestamptz[], $4::int[], $5::int[], $6::text[], $7::text[])",
        )
        .bind(&ids)
        .bind(outcomes.iter().map(|o| o.attempt).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.started_at).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.duration_ms).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.response_status).collect::<Vec<_>>())
        .bind(col(|o| o.response_body.clone()))
        .bind(col(|o| o.error.clone()))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries d SET status = u.status, next_attempt_at = u.next_at, lease_until = NULL,                last_error = COALESCE(u.error, CASE WHEN u.status = 'succeeded' THEN NULL ELSE d.last_error END),                completed_at = CASE WHEN u.status = 'pending' THEN NULL ELSE now() END              FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[]) AS u(id, status, next_at, error)              WHERE d.id = u.id",
        )
        .bind(&ids)
        .bind(outcomes.iter().map(|o| o.status.to_owned()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.next_attempt_at).collect::<Vec<_>>())
        .bind(col(|o| o.error.clone().or_else(|| o.response_status.filter(|_| !o.success).map(|s| format!("HTTP {s}")))))
        .execute(&mut *tx)
        .await?;

        // Failure counts per subscription, in attempt order within this batch.
        let mut counts: std::collections::HashMap<Uuid, (bool, i32)> =
            std::collections::HashMap::new();
        for o in outcomes {
            let entry = counts.entry(o.subscription_id).or_insert((false, 0));
            if o.success {
                *entry = (true, 0);
            } else {
                entry.1 += 1;
            }
        }
        let (subs, resets, failures): (Vec<Uuid>, Vec<bool>, Vec<i32>) = counts.into_iter().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut a, mut b, mut c), (id, (reset, n))| {
                a.push(id);
                b.push(reset);
                c.push(n);
                (a, b, c)
            },
        );
        sqlx::query(
            "UPDATE webhook_subscriptions s SET consecutive_failures =                CASE WHEN u.reset THEN u.failures ELSE s.consecutive_failures + u.failures END              FROM UNNEST($1::uuid[], $2::bool[], $3::int[]) AS u(id, reset, failures) WHERE s.id = u.id",
        )
        .bind(&subs)
        .bind(&resets)
        .bind(&failures)
        .execute(&mut *tx)
        .await?;
        if disable_after > 0 {
            sqlx::query(
                "UPDATE webhook_subscriptions SET enabled = FALSE, disabled_at = now(), updated_at = now(),                    disabled_reason = format('disabled after %s consecutive failed attempts', consecutive_failures)                  WHERE id = ANY($1) AND enabled AND consecutive_failures >= $2",
            )
            .bind(&subs)
            .bind(disable_after)
            .execute(&mut *tx)
            .await?;
        }
        for o in outcomes.iter().filter(|o| o.disable.is_some()) {
            sqlx::query(
                "UPDATE webhook_subscriptions SET enabled = FALSE, disabled_at = now(), updated_at = now(), disabled_reason = $2                  WHERE id = $1 AND enabled",
            )
            .bind(o.subscription_id)
            .bind(&o.disable)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// A page of a subscription's deliveries, newest first, with their attempts.
    pub async fn list_deliveries(
        &self,
        subscription_id: Uuid,
        status: Option<&str>,
        event_type: Option<&str>,
        limit: i64,
        before: Option<Uuid>,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let mut deliveries: Vec<Delivery> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE subscription_id = $1              AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR event_type = $3)              AND ($4::uuid IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        ))
        .bind(subscription_id)
        .bind(status)
        .bind(event_type)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        self.attach_attempts(&mut deliveries).await?;
        Ok(deliveries)
    }

    /// One delivery with its attempts.
    pub async fn get_delivery(&self, id: Uuid) -> Result<Option<Delivery>, sqlx::Error> {
        let found: Option<Delivery> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let mut list: Vec<Delivery> = found.into_iter().collect();
        self.attach_attempts(&mut list).await?;
        Ok(list.pop())
    }

    async fn attach_attempts(&self, deliveries: &mut [Delivery]) -> Result<(), sqlx::Error> {
        let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
        let attempts: Vec<Attempt> = sqlx::query_as(
            "SELECT delivery_id, attempt, started_at, duration_ms, response_status, response_body, error              FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        for a in attempts {
            if let Some(d) = deliveries.iter_mut().find(|d| d.id == a.delivery_id) {
                d.attempt_log.push(a);
            }
        }
        Ok(())
    }

    /// Sends a delivery again from a fresh attempt count.
    pub async fn redeliver(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),              lease_until = NULL, completed_at = NULL WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sends again every failed delivery of a subscription created since `since`.
    pub async fn recover(
        &self,
        subscription_id: Uuid,
        since: OffsetDateTime,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(),              lease_until = NULL, completed_at = NULL              WHERE subscription_id = $1 AND status = 'failed' AND created_at >= $2",
        )
        .bind(subscription_id)
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes finished deliveries (and their attempts) older than `days`, and events no
    /// delivery refers to any more. Returns deliveries deleted.
    pub async fn prune(&self, days: u32) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE status <> 'pending' AND created_at < now() - make_interval(days => $1)",
        )
        .bind(days as i32)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM webhook_events e WHERE received_at < now() - make_interval(days => $1)              AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)",
        )
        .bind(days as i32)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Pending deliveries, the age in seconds of the oldest due one, and disabled subscriptions.
    pub async fn stats(&self) -> Result<(i64, f64, i64), sqlx::Error> {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'),                     COALESCE((SELECT EXTRACT(EPOCH FROM now() - min(next_attempt_at))::float8 FROM webhook_deliveries                               WHERE status = 'pending' AND next_attempt_at <= now()), 0),                     (SELECT count(*) FROM webhook_subscriptions WHERE NOT enabled)",
        )
        .fetch_one(&self.pool)
        .await
    }
}

async fn insert_outbox_tx(
    tx: &mut Transaction<'static, Postgres>,
    events: &[(Uuid, String, String)],
    deliveries: &[(Uuid, Uuid, String)],
) -> Result<u64, sqlx::Error> {
    let (ids, types, payloads): (Vec<Uuid>, Vec<String>, Vec<String>) =
        events.iter().cloned().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut a, mut b, mut c), (x, y, z)| {
                a.push(x);
                b.push(y);
                c.push(z);
                (a, b, c)
            },
        );
    sqlx::query(
        "INSERT INTO webhook_events (id, event_type, payload) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    let delivery_ids: Vec<Uuid> = deliveries.iter().map(|_| Uuid::now_v7()).collect();
    let event_ids: Vec<Uuid> = deliveries.iter().map(|d| d.0).collect();
    let sub_ids: Vec<Uuid> = deliveries.iter().map(|d| d.1).collect();
    let d_types: Vec<String> = deliveries.iter().map(|d| d.2.clone()).collect();
    let done = sqlx::query(
        "INSERT INTO webhook_deliveries (id, event_id, subscription_id, event_type) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[]) \
         ON CONFLICT (event_id, subscription_id) DO NOTHING",
    )
    .bind(&delivery_ids)
    .bind(&event_ids)
    .bind(&sub_ids)
    .bind(&d_types)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}
