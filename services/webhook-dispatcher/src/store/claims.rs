//! Claiming due deliveries and recording attempt outcomes.
//!
//! A claim leases a delivery to one attempt and stamps it with a fresh `lease_token`; the
//! outcome of that attempt is recorded only while the delivery still carries the token. So an
//! outcome whose claim was taken over (its lease ran out and another claim sent the delivery
//! again) or reset by redelivery is dropped rather than overwriting the newer state, and an
//! outcome whose delivery was deleted meanwhile simply matches no row.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use time::OffsetDateTime;
use uuid::Uuid;

use super::{DeliveryStatus, Store};

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
    /// The token of this claim; the outcome must carry it.
    pub lease_token: Uuid,
    /// The exact bytes to POST; `None` if the event is no longer stored (nothing keeps a
    /// delivery's event by a foreign key: the attempt fails for good rather than the claim).
    pub payload: Option<String>,
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
    /// The event's W3C `traceparent`, if it was published with one: the attempt's parent span.
    pub traceparent: Option<String>,
}

/// What this replica already has under way for one subscription, so a claim takes only what
/// can be sent at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLoad {
    /// The subscription.
    pub subscription_id: Uuid,
    /// Its attempts in flight in this replica.
    pub in_flight: i32,
    /// Attempts its rate limit allows right now; `None`: its full per-second budget.
    pub rate_tokens: Option<i32>,
    /// Rounds of its `max_concurrency` it may hold here (running and queued).
    pub rounds: i32,
}

/// The result of one attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Delivery.
    pub delivery_id: Uuid,
    /// Subscription.
    pub subscription_id: Uuid,
    /// The token of the claim this attempt ran under.
    pub lease_token: Uuid,
    /// Until when the claim is surely held (taken before the claim was sent, so never later
    /// than the database's `lease_until`). Past it, a recorder that cannot reach the database
    /// gives the outcome up: the delivery will be claimed and sent again anyway.
    pub lease_deadline: Instant,
    /// Attempt number.
    pub attempt: i32,
    /// Start.
    pub started_at: OffsetDateTime,
    /// Latency.
    pub duration_ms: i32,
    /// HTTP status.
    pub response_status: Option<i32>,
    /// The body's first bytes, exactly as received.
    pub response_body: Option<Vec<u8>>,
    /// Error.
    pub error: Option<String>,
    /// The delivery's new state.
    pub status: DeliveryStatus,
    /// Next attempt, for [`DeliveryStatus::Pending`].
    pub next_attempt_at: OffsetDateTime,
    /// Disable the subscription with this reason (410 Gone).
    pub disable: Option<String>,
}

/// Which outcomes of a batch were written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Written.
    pub recorded: usize,
    /// Deliveries that no longer exist (their subscription was deleted): nothing to record.
    pub vanished: Vec<Uuid>,
    /// Deliveries whose claim was taken over or reset: the newer claim owns them now.
    pub lease_lost: Vec<Uuid>,
}

impl Store {
    /// Claims up to `limit` due deliveries of enabled subscriptions for `lease_secs` under
    /// `token`, counting the attempt.
    ///
    /// Only what can be sent within a few rounds is claimed: each subscription contributes
    /// at most its rounds (`local`, else `rounds`) × its `max_concurrency` minus its attempts
    /// in flight or queued here (`local`), and at most its rate limit's
    /// current budget, so no claim waits for a rate token while its lease runs. Across
    /// subscriptions the oldest due deliveries win, but no subscription takes more than its
    /// share, so one backlog cannot crowd the others out. Each subscription is probed through
    /// `webhook_deliveries_due_by_subscription` without locking; only the chosen rows are
    /// locked, with SKIP LOCKED and the conditions checked again on the locked version, so
    /// replicas never claim the same delivery (candidates are twice `limit`, so a replica
    /// racing another for the same oldest rows still finds work). A claim's lease must expire
    /// before anyone else takes it.
    ///
    /// Every row is reached through an index: candidates by a per-subscription LATERAL probe,
    /// the lock by a primary-key LATERAL lookup per candidate (its conditions are checked on
    /// the locked, latest version, and the status test is written `IS NOT DISTINCT FROM`, the
    /// same as `=` on a NOT NULL column, so that the planner cannot prove the pending-deliveries
    /// index usable for it: statistics dominated by finished history make that index look
    /// tiny, and the plan on it scanned the whole backlog per candidate), the event (bytes and
    /// traceparent) by one primary-key lookup. The statement is prepared once per connection
    /// but planned for each execution ([`Store::SESSION`]): a generic plan cached by the first
    /// executions, on near-empty tables, was kept as they grew and scanned every pending
    /// delivery per claim, O(backlog) (`docs/benchmarks.md`).
    ///
    /// A claimed delivery's `next_attempt_at` moves to its lease's end (when it is due again
    /// should this attempt be lost), so the deliveries in flight drop out of the due range the
    /// next claim walks: each claim reads only what it takes, however many are in flight.
    pub async fn claim(
        &self,
        limit: i64,
        lease_secs: u64,
        token: Uuid,
        local: &[LocalLoad],
        rounds: i32,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        sqlx::query_as(concat!(
            "WITH local AS ( \
               SELECT * FROM UNNEST($4::uuid[], $5::int[], $6::int[], $8::int[]) AS l(id, in_flight, rate_tokens, rounds)), \
             open AS ( \
               SELECT s.id, GREATEST(0, LEAST($1, s.max_concurrency * COALESCE(l.rounds, $7) - COALESCE(l.in_flight, 0), \
                        CASE WHEN s.rate_limit_per_sec IS NULL THEN $1 \
                             ELSE COALESCE(l.rate_tokens, s.rate_limit_per_sec) END)) AS room \
               FROM webhook_subscriptions s LEFT JOIN local l ON l.id = s.id WHERE s.enabled), \
             candidates AS ( \
               SELECT p.id FROM open o CROSS JOIN LATERAL ( \
                 SELECT d.id, d.next_attempt_at FROM webhook_deliveries d \
                 WHERE d.subscription_id = o.id AND d.status = 'pending' AND d.next_attempt_at <= now() \
                   AND (d.lease_until IS NULL OR d.lease_until < now()) \
                 ORDER BY d.next_attempt_at LIMIT o.room) p \
               WHERE o.room > 0 \
               ORDER BY p.next_attempt_at LIMIT 2 * $1), \
             picked AS ( \
               SELECT x.id FROM candidates c CROSS JOIN LATERAL ( \
                 SELECT d.id, d.status, d.next_attempt_at, d.lease_until FROM webhook_deliveries d \
                 WHERE d.id = c.id FOR UPDATE SKIP LOCKED) x \
               WHERE x.status IS NOT DISTINCT FROM 'pending' AND x.next_attempt_at <= now() \
                 AND (x.lease_until IS NULL OR x.lease_until < now()) \
               ORDER BY x.next_attempt_at LIMIT $1), \
             claimed AS ( \
               UPDATE webhook_deliveries d \
               SET lease_until = now() + make_interval(secs => $2), next_attempt_at = now() + make_interval(secs => $2), \
                   lease_token = $3, attempts = d.attempts + 1 \
               WHERE d.id = ANY(ARRAY(SELECT id FROM picked)) \
               RETURNING d.id, d.event_id, d.subscription_id, d.attempts, d.event_type, d.lease_token), ",
            targets!("SELECT subscription_id FROM claimed"),
            " SELECT c.id, c.event_id, c.subscription_id, c.attempts, c.event_type, c.lease_token, \
                    e.payload, s.url, s.max_attempts, s.rate_limit_per_sec, s.max_concurrency, \
                    s.secrets, e.traceparent \
             FROM claimed c JOIN targets s ON s.id = c.subscription_id \
             LEFT JOIN LATERAL (SELECT e.payload, e.traceparent FROM webhook_events e WHERE e.id = c.event_id) e ON TRUE"),
        )
        // Prepared once per connection, planned for each execution (see `Store::SESSION`).
        .bind(limit)
        .bind(lease_secs as f64)
        .bind(token)
        .bind(local.iter().map(|l| l.subscription_id).collect::<Vec<_>>())
        .bind(local.iter().map(|l| l.in_flight).collect::<Vec<_>>())
        .bind(local.iter().map(|l| l.rate_tokens).collect::<Vec<_>>())
        .bind(rounds.max(1))
        .bind(local.iter().map(|l| l.rounds.max(1)).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await
    }

    /// Hands claimed deliveries back unsent, `(delivery, lease token)`: their lease ends now
    /// and the attempt the claim counted is uncounted, so the next claim sends them as if this
    /// one had never been made. Only deliveries still under that claim are touched. Returns
    /// how many were released.
    pub async fn release(&self, claims: &[(Uuid, Uuid)]) -> Result<u64, sqlx::Error> {
        let ids: Vec<Uuid> = claims.iter().map(|(id, _)| *id).collect();
        let done = sqlx::query(
            "UPDATE webhook_deliveries d SET lease_until = NULL, lease_token = NULL, \
               next_attempt_at = now(), attempts = GREATEST(d.attempts - 1, 0) \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS u(id, token) \
             WHERE d.id = ANY($1) AND d.id = u.id AND d.lease_token = u.token",
        )
        .bind(&ids)
        .bind(claims.iter().map(|(_, token)| *token).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Records a batch of attempt results in one transaction: the attempts, the deliveries'
    /// new state, the subscriptions' failure counts, and disabling (410 Gone, or too many
    /// consecutive failures when `disable_after` > 0).
    ///
    /// Outcomes whose delivery vanished or whose claim is no longer the delivery's are left
    /// out (see [`Recorded`]) rather than failing the batch. An error fails the whole batch;
    /// the caller decides whether to retry or split it.
    pub async fn record(
        &self,
        outcomes: &[Outcome],
        disable_after: i32,
    ) -> Result<Recorded, sqlx::Error> {
        if outcomes.is_empty() {
            return Ok(Recorded::default());
        }
        let mut tx = self.pool.begin().await?;
        let ids: Vec<Uuid> = outcomes.iter().map(|o| o.delivery_id).collect();
        // The delivery UPDATE decides which outcomes count (lease token still ours); only
        // their attempts are inserted, so a vanished delivery never trips the foreign key.
        let written: Vec<Uuid> = sqlx::query_scalar(
            "WITH u AS ( \
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[]) \
                 AS u(id, token, status, next_at, error)), \
             done AS ( \
               UPDATE webhook_deliveries d SET status = u.status, next_attempt_at = u.next_at, \
                 lease_until = NULL, lease_token = NULL, \
                 last_error = COALESCE(u.error, CASE WHEN u.status = 'succeeded' THEN NULL ELSE d.last_error END), \
                 completed_at = CASE WHEN u.status = 'pending' THEN NULL ELSE now() END \
               FROM u WHERE d.id = ANY($1) AND d.id = u.id AND d.lease_token = u.token \
               RETURNING d.id, u.token), \
             attempts AS ( \
               INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, response_status, response_body, error) \
               SELECT a.id, a.attempt, a.started_at, a.duration_ms, a.status, a.body, a.error \
               FROM UNNEST($1::uuid[], $2::uuid[], $6::int[], $7::timestamptz[], $8::int[], $9::int[], $10::bytea[], $11::text[]) \
                 AS a(id, token, attempt, started_at, duration_ms, status, body, error) \
               JOIN done ON done.id = a.id AND done.token = a.token) \
             SELECT id FROM done",
        )
        // As the claim: planned per execution (`Store::SESSION`), and every delivery reached by
        // its primary key (`id = ANY($1)`, which also gives the planner the batch's true size, so the join
        // with `u` is hashed, not a loop over `u` per row). No status test: only a claim sets
        // `lease_token` (on a pending delivery) and every change of status clears it, so a
        // matching token means the delivery is still pending under this claim. A status test
        // here was estimated to keep almost no row (a nested loop over the batch per row) or,
        // written as `=`, drew the planner to the pending-deliveries index, which statistics
        // dominated by finished history make look tiny (a scan of the whole backlog).
        .bind(&ids)
        .bind(outcomes.iter().map(|o| o.lease_token).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.status.as_str()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.next_attempt_at).collect::<Vec<_>>())
        .bind(outcomes.iter().map(last_error).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.attempt).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.started_at).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.duration_ms).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.response_status).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.response_body.clone()).collect::<Vec<_>>())
        .bind(outcomes.iter().map(|o| o.error.clone()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;

        // A set: this runs for every batch of up to 512 outcomes.
        let written: HashSet<Uuid> = written.into_iter().collect();
        let mut report = Recorded {
            recorded: written.len(),
            ..Recorded::default()
        };
        let kept: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| written.contains(&o.delivery_id))
            .collect();
        if kept.len() < outcomes.len() {
            let missing: Vec<Uuid> = ids
                .iter()
                .copied()
                .filter(|id| !written.contains(id))
                .collect();
            let present: Vec<Uuid> =
                sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE id = ANY($1)")
                    .bind(&missing)
                    .fetch_all(&mut *tx)
                    .await?;
            for id in missing {
                if present.contains(&id) {
                    report.lease_lost.push(id);
                } else {
                    report.vanished.push(id);
                }
            }
        }
        if kept.is_empty() {
            tx.commit().await?;
            return Ok(report);
        }

        // Failure counts per subscription, in attempt order within this batch. Sorted by id,
        // so concurrent recorders lock subscriptions in the same order. A count that would not
        // change (a healthy endpoint: reset to 0 while 0) is not written, so recorders of a busy
        // subscription neither write its row per batch nor queue behind each other for it.
        let mut counts: HashMap<Uuid, (bool, i32)> = HashMap::new();
        for o in &kept {
            let entry = counts.entry(o.subscription_id).or_insert((false, 0));
            if o.status == DeliveryStatus::Succeeded {
                *entry = (true, 0);
            } else {
                entry.1 += 1;
            }
        }
        let mut counts: Vec<(Uuid, (bool, i32))> = counts.into_iter().collect();
        counts.sort_unstable_by_key(|(id, _)| *id);
        let subs: Vec<Uuid> = counts.iter().map(|(id, _)| *id).collect();
        sqlx::query(
            "UPDATE webhook_subscriptions s SET consecutive_failures = \
               CASE WHEN u.reset THEN u.failures ELSE s.consecutive_failures + u.failures END \
             FROM UNNEST($1::uuid[], $2::bool[], $3::int[]) AS u(id, reset, failures) \
             WHERE s.id = u.id AND NOT (u.reset AND s.consecutive_failures = u.failures)",
        )
        .bind(&subs)
        .bind(counts.iter().map(|(_, (r, _))| *r).collect::<Vec<_>>())
        .bind(counts.iter().map(|(_, (_, n))| *n).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        if disable_after > 0 {
            sqlx::query(
                "UPDATE webhook_subscriptions SET enabled = FALSE, disabled_at = now(), updated_at = now(), \
                   disabled_reason = format('disabled after %s consecutive failed attempts', consecutive_failures) \
                 WHERE id = ANY($1) AND enabled AND consecutive_failures >= $2",
            )
            .bind(&subs)
            .bind(disable_after)
            .execute(&mut *tx)
            .await?;
        }
        let gone: Vec<(Uuid, &str)> = kept
            .iter()
            .filter_map(|o| o.disable.as_deref().map(|why| (o.subscription_id, why)))
            .collect();
        if !gone.is_empty() {
            sqlx::query(
                "UPDATE webhook_subscriptions s SET enabled = FALSE, disabled_at = now(), updated_at = now(), \
                   disabled_reason = u.reason \
                 FROM UNNEST($1::uuid[], $2::text[]) AS u(id, reason) WHERE s.id = u.id AND s.enabled",
            )
            .bind(gone.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(gone.iter().map(|(_, why)| *why).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(report)
    }
}

/// The delivery's `last_error` after this outcome: the error, or the HTTP status of a failure.
fn last_error(o: &Outcome) -> Option<String> {
    o.error.clone().or_else(|| {
        o.response_status
            .filter(|_| o.status != DeliveryStatus::Succeeded)
            .map(|s| format!("HTTP {s}"))
    })
}
