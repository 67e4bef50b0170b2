//! The deliveries log: listing deliveries with their attempts, redelivery, recovery, pruning
//! and queue statistics.

use base64::Engine;
use serde::Serialize;
use serde::ser::SerializeStruct;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{DeliveryStatus, Store};

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
    pub status: DeliveryStatus,
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
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attempt {
    /// The delivery it belongs to (not shown).
    pub delivery_id: Uuid,
    /// Attempt number, from 1.
    pub attempt: i32,
    /// Start.
    pub started_at: OffsetDateTime,
    /// Latency.
    pub duration_ms: i32,
    /// HTTP status, if a response came.
    pub response_status: Option<i32>,
    /// The response body's first bytes, exactly as received.
    pub response_body: Option<Vec<u8>>,
    /// Transport error or refusal.
    pub error: Option<String>,
}

/// The API shape of an attempt: `response_body` is the body as text (bytes that are not UTF-8
/// become U+FFFD; JSON escapes control characters such as 0x00), and `response_body_base64`
/// carries the exact bytes whenever the text is not exact, `null` otherwise.
impl Serialize for Attempt {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let body = self.response_body.as_deref();
        let text = body.map(String::from_utf8_lossy);
        let exact = body
            .filter(|b| std::str::from_utf8(b).is_err())
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b));
        let started = self
            .started_at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        let mut s = serializer.serialize_struct("Attempt", 7)?;
        s.serialize_field("attempt", &self.attempt)?;
        s.serialize_field("started_at", &started)?;
        s.serialize_field("duration_ms", &self.duration_ms)?;
        s.serialize_field("response_status", &self.response_status)?;
        s.serialize_field("response_body", &text)?;
        s.serialize_field("response_body_base64", &exact)?;
        s.serialize_field("error", &self.error)?;
        s.end()
    }
}

/// What a redelivery request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// The delivery is pending again from a fresh attempt count.
    Scheduled,
    /// An attempt holds its lease right now; nothing was changed (its outcome will be recorded,
    /// and a redelivery can be asked for after it).
    InFlight,
    /// No such delivery.
    NotFound,
}

impl Store {
    /// A page of a subscription's deliveries, newest first, with their attempts.
    pub async fn list_deliveries(
        &self,
        subscription_id: Uuid,
        status: Option<DeliveryStatus>,
        event_type: Option<&str>,
        limit: i64,
        before: Option<Uuid>,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let mut deliveries: Vec<Delivery> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE subscription_id = $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR event_type = $3) \
             AND ($4::uuid IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
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
            "SELECT delivery_id, attempt, started_at, duration_ms, response_status, response_body, error \
             FROM webhook_attempts WHERE delivery_id = ANY($1) ORDER BY id",
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

    /// Sends a delivery again from a fresh attempt count, unless an attempt of it is in flight
    /// (pending and leased): resetting that lease would let a second claim send it at the same
    /// time. The row lock orders this against a concurrent claim.
    pub async fn redeliver(&self, id: Uuid) -> Result<Redelivery, sqlx::Error> {
        let in_flight: Option<bool> = sqlx::query_scalar(
            "WITH target AS ( \
               SELECT id, (status = 'pending' AND lease_until IS NOT NULL AND lease_until > now()) AS in_flight \
               FROM webhook_deliveries WHERE id = $1 FOR UPDATE), \
             reset AS ( \
               UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_at = now(), \
                 lease_until = NULL, lease_token = NULL, completed_at = NULL \
               FROM target t WHERE d.id = t.id AND NOT t.in_flight RETURNING d.id) \
             SELECT in_flight FROM target",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match in_flight {
            None => Redelivery::NotFound,
            Some(true) => Redelivery::InFlight,
            Some(false) => Redelivery::Scheduled,
        })
    }

    /// Sends again every failed delivery of a subscription created since `since` (failed ones
    /// hold no lease).
    pub async fn recover(
        &self,
        subscription_id: Uuid,
        since: OffsetDateTime,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(), \
             lease_until = NULL, lease_token = NULL, completed_at = NULL \
             WHERE subscription_id = $1 AND status = 'failed' AND created_at >= $2",
        )
        .bind(subscription_id)
        .bind(since)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deletes finished deliveries (and their attempts) older than `days`, and events no
    /// delivery refers to any more. Returns deliveries deleted.
    ///
    /// The attempts go in the same statement as their deliveries: a finished delivery gets no
    /// new attempt (only a claim's outcome adds one, and only to a pending delivery under that
    /// claim), and a delivery made pending again meanwhile fails the status test on its new
    /// version and stays. An event received again by intake has a fresh `received_at` (see
    /// `insert_outbox`), so one that a new delivery is about to refer to is never pruned.
    pub async fn prune(&self, days: u32) -> Result<u64, sqlx::Error> {
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS ( \
               DELETE FROM webhook_deliveries WHERE status <> 'pending' \
                 AND created_at < now() - make_interval(days => $1) RETURNING id), \
             attempts AS ( \
               DELETE FROM webhook_attempts a USING gone WHERE a.delivery_id = gone.id) \
             SELECT count(*) FROM gone",
        )
        .bind(days as i32)
        .fetch_one(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM webhook_events e WHERE received_at < now() - make_interval(days => $1) \
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = e.id)",
        )
        .bind(days as i32)
        .execute(&self.pool)
        .await?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    /// Pending deliveries, the age in seconds of the oldest due one, and disabled subscriptions.
    /// The oldest due delivery is the first of some subscription's pending ones: one probe of
    /// `webhook_deliveries_due_by_subscription` per subscription finds it.
    pub async fn stats(&self) -> Result<(i64, f64, i64), sqlx::Error> {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'), \
               COALESCE((SELECT EXTRACT(EPOCH FROM now() - min(f.next_attempt_at))::float8 \
                 FROM webhook_subscriptions s CROSS JOIN LATERAL ( \
                   SELECT d.next_attempt_at FROM webhook_deliveries d \
                   WHERE d.subscription_id = s.id AND d.status = 'pending' \
                   ORDER BY d.next_attempt_at LIMIT 1) f \
                 WHERE f.next_attempt_at <= now()), 0), \
               (SELECT count(*) FROM webhook_subscriptions WHERE NOT enabled)",
        )
        .fetch_one(&self.pool)
        .await
    }
}
