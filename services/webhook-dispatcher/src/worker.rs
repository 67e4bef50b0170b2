//! Sending deliveries: claim due ones, sign, POST, and record the outcome.
//!
//! Claims come from PostgreSQL (`FOR UPDATE SKIP LOCKED` plus a lease and a lease token), so
//! any number of replicas share the work without sending a delivery twice; a crashed
//! replica's claims fall back to the others when their lease expires. A claim takes only what
//! the subscriptions' limits let start at once plus a local queue a few rounds deep
//! ([`admission`]), so every claimed attempt starts well within its lease (`lease_secs` >
//! `timeout_secs`); one that could no longer finish inside it is released unsent. Outcomes are
//! written in batches by one recorder task ([`recorder`]), which keeps the database round
//! trips per attempt well below one.

pub mod admission;
pub mod handoff;
mod http;
pub mod recorder;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use service_runtime::Backoff;
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use self::handoff::{Handed, Handoff};
use self::http::{AttemptError, Response, classify};
pub use self::http::{HttpClientError, http_client, literal_ip, parse_retry_after};
use crate::config::DeliveryConfig;
use crate::signing::{SigningKey, sign};
use crate::store::{Claimed, DeliveryStatus, Outcome, Store};
use egress::AddressPolicy;
use events::trace_context::set_remote_parent;

/// Everything an attempt needs.
#[derive(Debug)]
pub struct Dispatcher {
    store: Store,
    http: reqwest::Client,
    config: DeliveryConfig,
    policy: Arc<AddressPolicy>,
    admission: Arc<admission::Admission>,
    /// The replica's attempt slots (`delivery.concurrency`), held from claim to outcome.
    permits: Arc<Semaphore>,
    /// Intake's side of the hand-over of deliveries it claims as it stores them.
    handoff: Handoff,
    /// The workers' side, taken by [`Dispatcher::run`].
    handed: Mutex<Option<mpsc::Receiver<Handed>>>,
    /// Delays between a delivery's attempts.
    retry: Backoff,
}

/// What a launched attempt reports to: the recorder, the claim loop, shutdown.
#[derive(Debug, Clone)]
struct Launcher {
    outcomes: mpsc::Sender<Outcome>,
    finished: Arc<Notify>,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// A dispatcher over `store`.
    pub fn new(
        store: Store,
        http: reqwest::Client,
        config: DeliveryConfig,
        policy: Arc<AddressPolicy>,
    ) -> Self {
        let lease = Duration::from_secs(config.lease_secs);
        let admission = Arc::new(admission::Admission::new(admission::QueuePolicy::new(
            lease,
            Duration::from_secs(config.timeout_secs),
            config.concurrency,
        )));
        let permits = Arc::new(Semaphore::new(config.concurrency));
        let (tx, rx) = mpsc::channel(64);
        Self {
            retry: retry_backoff(&config),
            store,
            http,
            handoff: Handoff::new(Arc::clone(&permits), Arc::clone(&admission), lease, tx),
            handed: Mutex::new(Some(rx)),
            admission,
            permits,
            config,
            policy,
        }
    }

    /// Intake's side of the hand-over (`delivery.claim_at_intake`), `None` when it is off.
    pub fn handoff(&self) -> Option<Handoff> {
        self.config.claim_at_intake.then(|| self.handoff.clone())
    }

    /// Claims and sends until shutdown, and sends what intake hands over. In-flight attempts
    /// finish (bounded by the request timeout) and are recorded before this returns.
    pub async fn run(self: Arc<Self>, work_ready: Arc<Notify>, shutdown: CancellationToken) {
        let (tx, rx) = mpsc::channel::<Outcome>(self.config.concurrency * 2);
        let recorder = tokio::spawn(recorder::run(
            recorder::Recorder::new(self.store.clone(), self.config.disable_after_failures),
            rx,
        ));
        // Signalled whenever an attempt finishes (its slot and permit are free again).
        let finished = Arc::new(Notify::new());
        let launcher = Launcher {
            outcomes: tx,
            finished: Arc::clone(&finished),
            shutdown: shutdown.clone(),
        };
        let handed = self
            .handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let handed = handed.map(|rx| tokio::spawn(Arc::clone(&self).receive(rx, launcher.clone())));
        self.claim_loop(&work_ready, &finished, &launcher).await;
        if let Some(handed) = handed {
            let _ = handed.await;
        }
        // Let in-flight attempts finish and be recorded.
        let _ = self
            .permits
            .acquire_many(self.config.concurrency as u32)
            .await;
        drop(launcher);
        let _ = recorder.await;
    }

    /// Claims due deliveries and launches their attempts until shutdown.
    async fn claim_loop(
        self: &Arc<Self>,
        work_ready: &Notify,
        finished: &Notify,
        launcher: &Launcher,
    ) {
        let permits = &self.permits;
        let shutdown = &launcher.shutdown;
        let idle = Duration::from_millis(self.config.poll_interval_ms);
        let linger = Duration::from_millis(self.config.claim_linger_ms);
        let lease = Duration::from_secs(self.config.lease_secs);
        // What a claim may take for a subscription this replica has not timed yet (see
        // `admission::QueuePolicy`); timed ones get rounds by their attempts' duration.
        let rounds = self.admission.default_rounds();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        // The last claim took everything it could: claiming again at once would come back
        // empty (or nearly), so the loop waits for something to change first.
        let mut drained = false;
        // The last claim may have left due deliveries behind for want of room (it took some,
        // or some subscription already held all it may here): a finished attempt may make
        // more claimable. Otherwise (it found no due work at all) only new work or the poll
        // interval can, and waking on every finished attempt would send a claim per attempt
        // that comes back empty.
        let mut room_bound = true;
        while !shutdown.is_cancelled() {
            if drained || permits.available_permits() == 0 {
                // Nothing more is claimable until work arrives, an attempt finishes, or the
                // poll interval passes (rate budgets refill with time; other replicas'
                // intake does not notify this one).
                let on_finish = !drained || room_bound;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = work_ready.notified() => {}
                    () = finished.notified(), if on_finish => {}
                    () = tokio::time::sleep(idle) => {}
                }
                // Under load, let more slots free up so the claim stays a batch.
                if !linger.is_zero() && permits.available_permits() < self.config.concurrency {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(linger) => {}
                    }
                }
            }
            let free = permits.available_permits() as i64;
            if free == 0 {
                drained = false;
                continue;
            }
            // Taken before the claim is sent, so it is never later than the database's lease.
            let lease_deadline = Instant::now() + lease;
            let loads = self.admission.loads();
            let full = self.admission.any_full();
            let limit = free.min(self.config.claim_batch);
            let claim = self.store.claim(
                limit,
                self.config.lease_secs,
                Uuid::now_v7(),
                &loads,
                rounds,
            );
            let claimed = match tokio::select! {
                () = shutdown.cancelled() => break,
                c = claim => c,
            } {
                Ok(c) => {
                    backoff.reset();
                    c
                }
                Err(err) => {
                    tracing::warn!(error = %err, "claiming deliveries failed; retrying");
                    if !backoff.wait(shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            // A claim that got less than it asked for took every due delivery the
            // subscriptions' room allowed: asking again at once would come back empty.
            drained = (claimed.len() as i64) < limit;
            room_bound = full || !claimed.is_empty();
            metrics::histogram!("webhook_claim_batch_size").record(claimed.len() as f64);
            for delivery in claimed {
                // At most `free` were claimed, but intake may have reserved slots meanwhile
                // (`handoff`): then this waits for attempts to finish, as bounded by the
                // request timeout, well inside the lease.
                let permit = match Arc::clone(permits).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => match Arc::clone(permits).acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                self.launch(
                    admission::Queued {
                        delivery,
                        lease_deadline,
                        permit,
                    },
                    launcher,
                );
            }
        }
    }

    /// Launches what intake hands over until shutdown; what is handed over after that is
    /// released.
    async fn receive(self: Arc<Self>, mut handed: mpsc::Receiver<Handed>, launcher: Launcher) {
        loop {
            let batch = tokio::select! {
                () = launcher.shutdown.cancelled() => break,
                batch = handed.recv() => batch,
            };
            let Some(Handed { queued }) = batch else {
                break;
            };
            for q in queued {
                self.launch(q, &launcher);
            }
        }
        handed.close();
        while let Some(Handed { queued }) = handed.recv().await {
            handoff::release(&self.store, &queued).await;
        }
    }

    /// Admits a claimed delivery: queued behind its subscription's running attempts, or sent
    /// now by a task that then sends whatever queues behind it.
    fn launch(self: &Arc<Self>, queued: admission::Queued, launcher: &Launcher) {
        let Some((mut slot, mut next)) = self.admission.admit(queued) else {
            return;
        };
        let this = Arc::clone(self);
        let launcher = launcher.clone();
        tokio::spawn(async move {
            loop {
                let admission::Queued {
                    delivery,
                    lease_deadline,
                    permit,
                } = next;
                let started = Instant::now();
                let outcome = this.attempt(delivery, lease_deadline).await;
                slot.observe(started.elapsed());
                let _ = launcher.outcomes.send(outcome).await;
                drop(permit);
                launcher.finished.notify_one();
                match this.next_sendable(&mut slot, &launcher.shutdown).await {
                    Some(queued) => next = queued,
                    None => break,
                }
            }
        });
    }

    /// The subscription's next queued delivery that can still be sent inside its lease (its
    /// attempt may take the whole timeout). Those that cannot, and at shutdown all of them,
    /// are released: handed back unsent, to be claimed again at once.
    async fn next_sendable(
        &self,
        slot: &mut admission::Slot,
        shutdown: &CancellationToken,
    ) -> Option<admission::Queued> {
        let needed = Duration::from_secs(self.config.timeout_secs + 1);
        let mut stale = Vec::new();
        let next = loop {
            match slot.next_queued() {
                Some(q)
                    if shutdown.is_cancelled()
                        || q.lease_deadline.saturating_duration_since(Instant::now()) < needed =>
                {
                    stale.push(q);
                }
                next => break next,
            }
        };
        if !stale.is_empty() {
            handoff::release(&self.store, &stale).await;
        }
        next
    }

    async fn attempt(&self, d: Claimed, lease_deadline: Instant) -> Outcome {
        let span = attempt_span(&d);
        let started_at = OffsetDateTime::now_utc();
        let clock = Instant::now();
        let result = self
            .send(&d, started_at.unix_timestamp())
            .instrument(span.clone())
            .await;
        let duration = clock.elapsed();
        metrics::histogram!("webhook_attempt_duration_seconds").record(duration.as_secs_f64());
        let mut outcome = Outcome {
            delivery_id: d.id,
            subscription_id: d.subscription_id,
            lease_token: d.lease_token,
            lease_deadline,
            attempt: d.attempts,
            started_at,
            duration_ms: i32::try_from(duration.as_millis()).unwrap_or(i32::MAX),
            response_status: None,
            response_body: None,
            error: None,
            status: DeliveryStatus::Pending,
            next_attempt_at: started_at,
            disable: None,
        };
        let mut retry_after = None;
        let mut permanent = false;
        let mut success = false;
        match result {
            Ok(response) => {
                let status = response.status;
                outcome.response_status = Some(i32::from(status));
                outcome.response_body = Some(response.body);
                if (200..300).contains(&status) {
                    success = true;
                } else if status == 410 {
                    permanent = true;
                    outcome.disable = Some("endpoint answered 410 Gone".to_owned());
                } else if status == 429 || status == 503 {
                    retry_after = response.retry_after;
                }
            }
            Err(AttemptError::Refused(why)) => {
                permanent = true;
                outcome.error = Some(storable(why));
            }
            Err(AttemptError::Transport(why)) => outcome.error = Some(storable(why)),
        }
        let label = if success {
            "success"
        } else if permanent {
            "refused"
        } else {
            "failure"
        };
        metrics::counter!("webhook_attempts_total", "outcome" => label).increment(1);
        span.record("webhook.outcome", label);
        if let Some(status) = outcome.response_status {
            span.record("http.response.status_code", status);
        }
        if !success {
            span.record("otel.status_code", "error");
        }
        if success {
            outcome.status = DeliveryStatus::Succeeded;
        } else if permanent || d.attempts >= d.max_attempts {
            outcome.status = DeliveryStatus::Failed;
        } else {
            outcome.next_attempt_at = started_at + self.retry_delay(d.attempts, retry_after);
        }
        if outcome.status != DeliveryStatus::Pending {
            metrics::counter!("webhook_deliveries_total", "outcome" => outcome.status.as_str())
                .increment(1);
        }
        outcome
    }

    /// The wait before the next attempt after attempt number `attempt` failed: the backoff,
    /// or longer when the endpoint asked for it, never longer than `retry_max_secs`.
    fn retry_delay(&self, attempt: i32, retry_after: Option<Duration>) -> Duration {
        let retry = u32::try_from(attempt).unwrap_or(1);
        self.retry
            .delay(retry)
            .max(retry_after.unwrap_or_default())
            .min(Duration::from_secs(self.config.retry_max_secs))
    }

    async fn send(&self, d: &Claimed, timestamp: i64) -> Result<Response, AttemptError> {
        let url = reqwest::Url::parse(&d.url)
            .map_err(|e| AttemptError::Refused(format!("invalid url: {e}")))?;
        if let Some(ip) = literal_ip(&url) {
            self.policy
                .check(ip)
                .map_err(|r| AttemptError::Refused(r.to_string()))?;
        }
        let keys: Vec<SigningKey> = d
            .secrets
            .iter()
            .filter_map(|s| match SigningKey::parse(s) {
                Ok(key) => Some(key),
                Err(err) => {
                    // The API stores only secrets that parse; this one was put there otherwise.
                    tracing::error!(subscription = %d.subscription_id, error = %err, "stored signing secret does not parse; not used");
                    None
                }
            })
            .collect();
        if keys.is_empty() {
            return Err(AttemptError::Transport(
                "subscription has no valid signing secret".to_owned(),
            ));
        }
        let Some(payload) = d.payload.as_deref() else {
            return Err(AttemptError::Refused(
                "the event's stored bytes are gone".to_owned(),
            ));
        };
        let event_id = d.event_id.to_string();
        let body = payload.as_bytes();
        let signatures = sign(&keys, &event_id, timestamp, body);
        let mut headers = HeaderMap::with_capacity(10);
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        put("content-type", "application/json".to_owned());
        put("webhook-id", event_id.clone());
        put("webhook-timestamp", timestamp.to_string());
        put("webhook-signature", signatures.webhook_signature);
        put("x-webhook-signature", signatures.x_webhook_signature);
        put("x-webhook-event", d.event_type.clone());
        put("x-webhook-attempt", d.attempts.to_string());
        put("x-webhook-delivery", d.id.to_string());
        let mut response = self
            .http
            .post(url)
            .headers(headers)
            .body(payload.to_owned())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        while body.len() < self.config.max_response_body_bytes {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(self.config.max_response_body_bytes);
        Ok(Response {
            status,
            retry_after,
            body,
        })
    }
}

/// The span of one attempt: a child of the span that published the event (the `traceparent`
/// stored with it at intake), so the attempt shows in the publisher's trace however much later
/// it is made. Its duration is the HTTP exchange's; outcome and status are recorded after it.
fn attempt_span(d: &Claimed) -> tracing::Span {
    let span = tracing::info_span!(
        "webhook.attempt",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        event.id = %d.event_id,
        event.type = %d.event_type,
        webhook.delivery_id = %d.id,
        webhook.subscription_id = %d.subscription_id,
        webhook.attempt = d.attempts,
        webhook.outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    set_remote_parent(&span, d.traceparent.as_deref());
    span
}

/// Error text goes into `text` columns, which refuse 0x00; such a byte (from a peer's reply
/// echoed in a library's message) becomes U+FFFD.
fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// `retry_base_ms × 2^(attempt−1)`, ±20 % jitter, at most `retry_max_secs`.
fn retry_backoff(config: &DeliveryConfig) -> Backoff {
    Backoff::new(
        Duration::from_millis(config.retry_base_ms),
        Duration::from_secs(config.retry_max_secs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter() {
        let config = DeliveryConfig {
            retry_base_ms: 1000,
            ..DeliveryConfig::default()
        };
        let backoff = retry_backoff(&config);
        for (attempt, center) in [(1, 1000.0), (2, 2000.0), (3, 4000.0)] {
            let ms = backoff.delay(attempt).as_millis() as f64;
            assert!(
                (center * 0.8..=center * 1.2).contains(&ms),
                "{attempt}: {ms}"
            );
        }
        let capped = retry_backoff(&DeliveryConfig {
            retry_base_ms: 1000,
            retry_max_secs: 3,
            ..DeliveryConfig::default()
        });
        assert!(capped.delay(10) <= Duration::from_secs(3));
    }

    #[test]
    fn error_text_never_carries_nul() {
        assert_eq!(storable("a\0b".to_owned()), "a\u{FFFD}b");
        assert_eq!(storable("plain".to_owned()), "plain");
    }
}
