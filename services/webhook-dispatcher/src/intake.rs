//! The durable consumer on `events.>`.
//!
//! An event is acknowledged only after the deliveries it causes are committed (together with
//! the event's bytes) in PostgreSQL. A crash at any point therefore loses nothing: JetStream
//! redelivers what was not acknowledged, and `UNIQUE (event_id, subscription_id)` turns the
//! repeat into a no-op. Events no subscription matches are acknowledged without a write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use service_runtime::{Backoff, ReadyFlag};

use crate::store::{OutboxEvent, Store};
use crate::worker::handoff::Handoff;
use events::pattern::{Pattern, any_matches};
use events::trace_context::{TRACEPARENT, format_traceparent, parse_traceparent};

/// How long intake waits for more events after the first of a batch.
const GATHER: Duration = Duration::from_millis(1);

/// How long the in-memory copy of subscription patterns is trusted. Changes made through this
/// replica's API apply at once; other replicas' within this bound.
const PATTERNS_TTL: Duration = Duration::from_secs(1);

/// `(subscription, patterns)` of every enabled subscription.
type Patterns = Arc<Vec<(Uuid, Vec<Pattern>)>>;

/// Subscription patterns, cached briefly.
#[derive(Debug, Default)]
pub struct PatternCache {
    inner: tokio::sync::Mutex<Option<(Instant, Patterns)>>,
}

impl PatternCache {
    /// Forgets the cached patterns (after a change through the API).
    pub async fn invalidate(&self) {
        *self.inner.lock().await = None;
    }

    async fn get(&self, store: &Store) -> Result<Patterns, sqlx::Error> {
        let mut guard = self.inner.lock().await;
        if let Some((at, patterns)) = guard.as_ref()
            && at.elapsed() < PATTERNS_TTL
        {
            return Ok(Arc::clone(patterns));
        }
        let fresh = Arc::new(store.enabled_patterns().await?);
        *guard = Some((Instant::now(), Arc::clone(&fresh)));
        Ok(fresh)
    }
}

/// Where stored deliveries go: straight to this replica's workers, as many as they have
/// room for (`delivery.claim_at_intake`), the rest to the claim loop, which is woken.
#[derive(Debug, Clone)]
pub struct Workers {
    /// Wakes the claim loop.
    pub work_ready: Arc<Notify>,
    /// The hand-over to the workers; `None`: every delivery goes through the claim loop.
    pub handoff: Option<Handoff>,
}

impl Workers {
    /// Stores a batch's events and deliveries (one transaction), then hands what it claimed
    /// to the workers and wakes the claim loop for the rest.
    async fn store(
        &self,
        store: &Store,
        events: &[OutboxEvent],
        deliveries: &[(Uuid, Uuid, String)],
    ) -> Result<(), sqlx::Error> {
        let reservation = self
            .handoff
            .as_ref()
            .and_then(|h| h.reserve(deliveries.len()));
        let Some(reservation) = reservation else {
            store.insert_outbox(events, deliveries).await?;
            self.work_ready.notify_one();
            return Ok(());
        };
        // Dropping the reservation on error frees its slots.
        let (inserted, claimed) = store
            .insert_outbox_claiming(events, deliveries, &reservation.claim())
            .await?;
        if (claimed.len() as u64) < inserted {
            self.work_ready.notify_one();
        }
        if let Some(handoff) = &self.handoff {
            handoff.hand_over(store, reservation, claimed).await;
        }
        Ok(())
    }
}

/// Consumes until shutdown, retrying with backoff through NATS or PostgreSQL outages.
/// `consuming` is set once the durable consumer exists (readiness).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    js: jetstream::Context,
    store: Store,
    patterns: Arc<PatternCache>,
    consumer_name: String,
    batch: usize,
    ack_wait: Duration,
    workers: Workers,
    consuming: ReadyFlag,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        // Cancelling mid-batch is safe: JetStream redelivers whatever was not acknowledged.
        let attempt = consume(
            &js,
            &store,
            &patterns,
            &consumer_name,
            batch,
            ack_wait,
            &workers,
            &consuming,
            &shutdown,
        );
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(()) => return,
            Err(err) => tracing::warn!(error = %err, "event intake interrupted; retrying"),
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn consume(
    js: &jetstream::Context,
    store: &Store,
    patterns: &PatternCache,
    consumer_name: &str,
    batch: usize,
    ack_wait: Duration,
    workers: &Workers,
    consuming: &ReadyFlag,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stream = js.get_stream(events::subject::EVENTS_STREAM).await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            consumer_name,
            consumer::pull::Config {
                durable_name: Some(consumer_name.to_owned()),
                description: Some("webhook-dispatcher intake".to_owned()),
                filter_subject: events::subject::ALL_EVENTS.to_owned(),
                // A first deployment starts from now; afterwards the durable position holds.
                deliver_policy: consumer::DeliverPolicy::New,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_ack_pending: (batch * 8) as i64,
                ..Default::default()
            },
        )
        .await?;
    tracing::info!(consumer = consumer_name, "event intake started");
    consuming.set();
    let events_in = metrics::counter!("webhook_events_consumed_total");
    let invalid = metrics::counter!("webhook_events_invalid_total");
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await?;
    loop {
        // Wait for one event, then take whatever else arrives within `GATHER` (up to
        // `batch`): low latency when idle, large transactions under load (taking only what
        // was already buffered made transactions of a few events, each waiting for its own
        // WAL flush).
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(m) => m?,
                None => return Err("consumer stream ended".into()),
            },
        };
        let mut received = Vec::with_capacity(batch);
        received.push(first);
        let gather_until = tokio::time::Instant::now() + GATHER;
        while received.len() < batch {
            let next = match messages.next().now_or_never() {
                Some(next) => next,
                None => match tokio::time::timeout_at(gather_until, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Some(m) => received.push(m?),
                None => break,
            }
        }
        if received.is_empty() {
            continue;
        }
        events_in.increment(received.len() as u64);
        let subscriptions = patterns.get(store).await?;
        let mut event_rows = Vec::new();
        let mut delivery_rows = Vec::new();
        let mut to_ack = Vec::with_capacity(received.len());
        for message in received {
            let envelope = match events::Envelope::decode(&message.payload) {
                Ok(e) => e,
                Err(err) => {
                    invalid.increment(1);
                    tracing::warn!(subject = %message.subject, error = %err, "invalid event, terminated");
                    let _ = message.ack_with(AckKind::Term).await;
                    continue;
                }
            };
            let event_type = envelope.event_type.as_str();
            let mut matched = false;
            for (sub, sub_patterns) in subscriptions.iter() {
                if any_matches(sub_patterns, event_type) {
                    delivery_rows.push((envelope.id, *sub, event_type.to_owned()));
                    matched = true;
                }
            }
            if matched {
                event_rows.push(OutboxEvent {
                    id: envelope.id,
                    event_type: event_type.to_owned(),
                    // The exact bytes are what gets signed and sent.
                    payload: String::from_utf8_lossy(&message.payload).into_owned(),
                    traceparent: stored_traceparent(message.headers.as_ref()),
                });
            }
            to_ack.push(message);
        }
        if !delivery_rows.is_empty()
            && let Err(err) = workers.store(store, &event_rows, &delivery_rows).await
        {
            for m in &to_ack {
                let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
            }
            return Err(err.into());
        }
        for m in &to_ack {
            m.ack().await?;
        }
    }
}

/// The `traceparent` to store with an event: the message's header when it is well-formed, in
/// its canonical form. Attempts are made later, from PostgreSQL, and join that trace.
fn stored_traceparent(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    let value = headers?.get(TRACEPARENT)?;
    parse_traceparent(value.as_str()).map(|cx| format_traceparent(&cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_stored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(TRACEPARENT, format!(" {tp} ").as_str());
        assert_eq!(stored_traceparent(Some(&headers)).as_deref(), Some(tp));
        headers.insert(TRACEPARENT, "00-garbage");
        assert_eq!(stored_traceparent(Some(&headers)), None);
        assert_eq!(
            stored_traceparent(Some(&async_nats::HeaderMap::new())),
            None
        );
        assert_eq!(stored_traceparent(None), None);
    }
}
