//! Every SQL statement the dispatcher runs: subscriptions, secrets and the outbox here;
//! claiming and recording attempts in [`claims`]; the deliveries log in [`deliveries`].

/// The CTE `targets`: the subscriptions whose ids `$ids` (a subquery) returns, once each, with
/// what an attempt needs: URL, limits and active signing secrets, newest first. Materialized,
/// so the secrets are read once per subscription of a claim, not once per claimed row (a
/// subquery in the select list of the final join ran per row).
macro_rules! targets {
    ($ids:literal) => {
        concat!(
            "targets AS MATERIALIZED ( \
               SELECT s.id, s.url, s.max_attempts, s.rate_limit_per_sec, s.max_concurrency, \
                 ARRAY(SELECT k.secret FROM webhook_secrets k WHERE k.subscription_id = s.id \
                   AND (k.expires_at IS NULL OR k.expires_at > now()) ORDER BY k.id DESC) AS secrets \
               FROM webhook_subscriptions s WHERE s.id IN (",
            $ids,
            "))"
        )
    };
}

mod claims;
mod deliveries;
mod status;

pub use claims::{Claimed, LocalLoad, Outcome, Recorded};
pub use deliveries::{Attempt, Delivery, Redelivery};
pub use status::{DeliveryStatus, UnknownStatus};

use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use events::pattern::Pattern;

/// An event as the outbox stores it, once some subscription matched it.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// The event id.
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The exact bytes that are signed and sent.
    pub payload: String,
    /// The W3C `traceparent` it was published with, when well-formed: attempts join that trace.
    pub traceparent: Option<String>,
}

/// A webhook subscription as the API shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Subscription {
    /// Id (UUIDv7).
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Patterns: `deal.status_changed`, `deal.*`, `*`.
    pub event_types: Vec<Pattern>,
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
    pub event_types: Vec<Pattern>,
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
    pub event_types: Option<Vec<Pattern>>,
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

/// Data access.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Settings for the connections of the store's pool (`database.session`).
    ///
    /// The delivery path's statements (intake, claim, outcome) are prepared once per
    /// connection and planned for every execution: PostgreSQL's default would switch a
    /// prepared statement to a generic plan after five executions, and one chosen while the
    /// tables were near-empty or not analyzed yet was kept as they grew (a claim that scanned
    /// every pending delivery, `docs/benchmarks.md`). Unnamed statements, planned each time
    /// too, were parsed and described again on every execution as well: 13–16 % of the
    /// database's CPU per delivery at `max_concurrency` 16 (`docs/benchmarks.md`).
    pub const SESSION: &'static [(&'static str, &'static str)] =
        &[("plan_cache_mode", "force_custom_plan")];

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
    ///
    /// In one transaction, in this order: the subscription (and its secrets, by their foreign
    /// key), so that intake, which inserts deliveries only for a subscription it holds a
    /// key-share lock on, adds none after this; then its deliveries, each waiting for an
    /// outcome being recorded for it; then their attempts, in a statement of its own so that
    /// it also sees the attempts those outcomes added.
    pub async fn delete_subscription(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM webhook_subscriptions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        let deliveries: Vec<Uuid> = sqlx::query_scalar(
            "DELETE FROM webhook_deliveries WHERE subscription_id = $1 RETURNING id",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM webhook_attempts WHERE delivery_id = ANY($1)")
            .bind(&deliveries)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
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

    /// `(id, patterns)` of every enabled subscription. The API stores only patterns that
    /// parse; a row that holds another value anyway (edited by hand) is logged as an error and
    /// left out, rather than stopping intake for every subscription.
    pub async fn enabled_patterns(&self) -> Result<Vec<(Uuid, Vec<Pattern>)>, sqlx::Error> {
        let rows: Vec<(Uuid, Vec<String>)> =
            sqlx::query_as("SELECT id, event_types FROM webhook_subscriptions WHERE enabled")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(
                |(id, raw)| match raw.iter().map(|p| Pattern::parse(p)).collect() {
                    Ok(patterns) => Some((id, patterns)),
                    Err(err) => {
                        tracing::error!(
                            subscription = %id, error = %err,
                            "stored pattern does not parse; the subscription receives nothing"
                        );
                        None
                    }
                },
            )
            .collect())
    }

    /// Stores events and their deliveries in one transaction; repeats are ignored, so a
    /// redelivered event creates no duplicate deliveries, and a delivery for a subscription
    /// deleted meanwhile is not stored (the insert holds a key-share lock on each subscription
    /// it adds deliveries for, once per batch). Returns how many deliveries were stored.
    pub async fn insert_outbox(
        &self,
        events: &[OutboxEvent],
        deliveries: &[(Uuid, Uuid, String)],
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let (inserted, _) = insert_outbox_tx(&mut tx, events, deliveries, None).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// [`Store::insert_outbox`], claiming some of the new deliveries as they are stored (see
    /// [`ClaimOnInsert`]): each is written already leased under `claim.token`, its first
    /// attempt counted, exactly as [`Store::claim`] would leave it, so the claim's round
    /// trip, row lock and second write of the row are saved. Returns how many deliveries were
    /// stored and the claimed ones, to be sent now that the transaction has committed.
    pub async fn insert_outbox_claiming(
        &self,
        events: &[OutboxEvent],
        deliveries: &[(Uuid, Uuid, String)],
        claim: &ClaimOnInsert<'_>,
    ) -> Result<(u64, Vec<Claimed>), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let stored = insert_outbox_tx(&mut tx, events, deliveries, Some(claim)).await?;
        tx.commit().await?;
        Ok(stored)
    }
}

/// Which new deliveries [`Store::insert_outbox_claiming`] claims: in the batch's order, per
/// subscription no more than its room here (its `max_concurrency` × `rounds`, its entry in
/// `local` or else `rounds`, minus its attempts in flight or queued here), at most `limit` in
/// all, and none of a subscription that is disabled or rate-limited (their budget is the
/// claim loop's to spend).
#[derive(Debug, Clone, Copy)]
pub struct ClaimOnInsert<'a> {
    /// Deliveries claimed at most (the attempt slots reserved for them).
    pub limit: i64,
    /// Seconds the claims are held.
    pub lease_secs: u64,
    /// The claims' token.
    pub token: Uuid,
    /// What this replica already has under way, as for [`Store::claim`].
    pub local: &'a [LocalLoad],
    /// Rounds for a subscription not in `local`.
    pub rounds: i32,
}

async fn insert_outbox_tx(
    tx: &mut Transaction<'static, Postgres>,
    events: &[OutboxEvent],
    deliveries: &[(Uuid, Uuid, String)],
    claim: Option<&ClaimOnInsert<'_>>,
) -> Result<(u64, Vec<Claimed>), sqlx::Error> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let traceparents: Vec<Option<&str>> = events.iter().map(|e| e.traceparent.as_deref()).collect();
    // An event received again (a JetStream redelivery, a publisher's retry) after an hour gets
    // a fresh `received_at`, so pruning, which deletes only events older than its retention
    // (at least a day) that no delivery refers to, cannot delete it under the delivery this
    // batch is about to add: the update and the prune's delete lock the same row. The batch's
    // repeats are dropped first (an upsert may not touch a row twice).
    sqlx::query(
        "INSERT INTO webhook_events AS e (id, event_type, payload, traceparent) \
         SELECT DISTINCT ON (u.id) u.* FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) \
           AS u(id, event_type, payload, traceparent) \
         ON CONFLICT (id) DO UPDATE SET received_at = now() \
           WHERE e.received_at < now() - interval '1 hour'",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&payloads)
    .bind(&traceparents)
    .execute(&mut **tx)
    .await?;
    let delivery_ids: Vec<Uuid> = deliveries.iter().map(|_| Uuid::now_v7()).collect();
    let event_ids: Vec<Uuid> = deliveries.iter().map(|d| d.0).collect();
    let sub_ids: Vec<Uuid> = deliveries.iter().map(|d| d.1).collect();
    let d_types: Vec<&str> = deliveries.iter().map(|d| d.2.as_str()).collect();
    let local = claim.map_or(&[][..], |c| c.local);
    // One statement whether or not it claims: every stored delivery comes back (`inserted`
    // counts them), the claimed ones with what their attempt needs. Planned per execution, as
    // the claim is, since it looks up events and subscriptions by key and a plan cached on
    // near-empty tables would not.
    let rows: Vec<InsertedRow> = sqlx::query_as(concat!(
        "WITH u AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[]) WITH ORDINALITY \
             AS u(id, event_id, subscription_id, event_type, n)), \
         local AS ( \
           SELECT * FROM UNNEST($5::uuid[], $6::int[], $7::int[]) AS l(id, in_flight, rounds)), \
         subs AS ( \
           SELECT s.id, s.enabled AND s.rate_limit_per_sec IS NULL AS direct, \
                  s.max_concurrency * COALESCE(l.rounds, $8) - COALESCE(l.in_flight, 0) AS room \
           FROM webhook_subscriptions s LEFT JOIN local l ON l.id = s.id \
           WHERE s.id = ANY($3) FOR KEY SHARE OF s), \
         fitting AS ( \
           SELECT u.*, s.direct AND row_number() OVER (PARTITION BY u.subscription_id ORDER BY u.n) <= s.room AS fits \
           FROM u JOIN subs s ON s.id = u.subscription_id), \
         taken AS ( \
           SELECT f.*, f.fits AND count(*) FILTER (WHERE f.fits) OVER (ORDER BY f.n) <= $9 AS take \
           FROM fitting f), \
         ins AS ( \
           INSERT INTO webhook_deliveries \
             (id, event_id, subscription_id, event_type, attempts, next_attempt_at, lease_until, lease_token) \
           SELECT t.id, t.event_id, t.subscription_id, t.event_type, \
                  CASE WHEN t.take THEN 1 ELSE 0 END, \
                  CASE WHEN t.take THEN now() + make_interval(secs => $10) ELSE now() END, \
                  CASE WHEN t.take THEN now() + make_interval(secs => $10) END, \
                  CASE WHEN t.take THEN $11::uuid END \
           FROM taken t ORDER BY t.n \
           ON CONFLICT (event_id, subscription_id) DO NOTHING \
           RETURNING id, event_id, subscription_id, attempts, event_type, lease_token), ",
        targets!("SELECT subscription_id FROM ins WHERE lease_token IS NOT NULL"),
        " SELECT i.id, i.event_id, i.subscription_id, i.attempts, i.event_type, i.lease_token, \
                e.payload, s.url, s.max_attempts, s.rate_limit_per_sec, s.max_concurrency, \
                s.secrets, e.traceparent \
         FROM ins i LEFT JOIN targets s ON s.id = i.subscription_id AND i.lease_token IS NOT NULL \
         LEFT JOIN LATERAL (SELECT e.payload, e.traceparent FROM webhook_events e \
                            WHERE e.id = i.event_id AND i.lease_token IS NOT NULL) e ON TRUE"),
    )
    .bind(&delivery_ids)
    .bind(&event_ids)
    .bind(&sub_ids)
    .bind(&d_types)
    .bind(local.iter().map(|l| l.subscription_id).collect::<Vec<_>>())
    .bind(local.iter().map(|l| l.in_flight).collect::<Vec<_>>())
    .bind(local.iter().map(|l| l.rounds.max(1)).collect::<Vec<_>>())
    .bind(claim.map_or(1, |c| c.rounds.max(1)))
    .bind(claim.map_or(0, |c| c.limit))
    .bind(claim.map_or(0.0, |c| c.lease_secs as f64))
    .bind(claim.map_or(Uuid::nil(), |c| c.token))
    .fetch_all(&mut **tx)
    .await?;
    let inserted = rows.len() as u64;
    let claimed = rows
        .into_iter()
        .filter_map(InsertedRow::into_claimed)
        .collect();
    Ok((inserted, claimed))
}

/// A delivery [`insert_outbox_tx`] stored; claimed when it carries a lease token.
#[derive(sqlx::FromRow)]
struct InsertedRow {
    id: Uuid,
    event_id: Uuid,
    subscription_id: Uuid,
    attempts: i32,
    event_type: String,
    lease_token: Option<Uuid>,
    payload: Option<String>,
    // The subscription's part: only for claimed rows.
    url: Option<String>,
    max_attempts: Option<i32>,
    rate_limit_per_sec: Option<i32>,
    max_concurrency: Option<i32>,
    secrets: Option<Vec<String>>,
    traceparent: Option<String>,
}

impl InsertedRow {
    fn into_claimed(self) -> Option<Claimed> {
        Some(Claimed {
            lease_token: self.lease_token?,
            id: self.id,
            event_id: self.event_id,
            subscription_id: self.subscription_id,
            attempts: self.attempts,
            event_type: self.event_type,
            payload: self.payload,
            url: self.url?,
            max_attempts: self.max_attempts?,
            rate_limit_per_sec: self.rate_limit_per_sec,
            max_concurrency: self.max_concurrency?,
            secrets: self.secrets?,
            traceparent: self.traceparent,
        })
    }
}
