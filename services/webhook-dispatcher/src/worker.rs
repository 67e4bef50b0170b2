//! Sending deliveries: claim due ones, sign, POST, and record the outcome.
//!
//! Claims come from PostgreSQL (`FOR UPDATE SKIP LOCKED` plus a lease), so any number of
//! replicas share the work without sending a delivery twice; a crashed replica's claims fall
//! back to the others when their lease expires. Outcomes are written in batches by one
//! recorder task, which keeps the database round trips per attempt well below one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::DeliveryConfig;
use crate::signing::{SigningKey, sign};
use crate::ssrf::{AddressPolicy, PolicyResolver};
use crate::store::{Claimed, Outcome, Store};

/// Everything an attempt needs.
#[derive(Debug)]
pub struct Dispatcher {
    store: Store,
    http: reqwest::Client,
    config: DeliveryConfig,
    policy: Arc<AddressPolicy>,
    per_subscription: Mutex<HashMap<Uuid, SubscriptionLimits>>,
}

#[derive(Debug)]
struct SubscriptionLimits {
    concurrency: Arc<Semaphore>,
    max_concurrency: i32,
    next_slot: Instant,
}

/// Builds the HTTP client deliveries use: no redirects, bounded timeouts, destination policy
/// enforced in the resolver.
pub fn http_client(
    config: &DeliveryConfig,
    policy: Arc<AddressPolicy>,
) -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
        .timeout(Duration::from_secs(config.timeout_secs))
        .pool_max_idle_per_host(32)
        .dns_resolver(Arc::new(PolicyResolver::new(policy)))
        .user_agent(concat!("realtime-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Dispatcher {
    /// A dispatcher over `store`.
    pub fn new(
        store: Store,
        http: reqwest::Client,
        config: DeliveryConfig,
        policy: Arc<AddressPolicy>,
    ) -> Self {
        Self {
            store,
            http,
            config,
            policy,
            per_subscription: Mutex::new(HashMap::new()),
        }
    }

    /// Claims and sends until shutdown. In-flight attempts finish (bounded by the request
    /// timeout) and are recorded before this returns.
    pub async fn run(self: Arc<Self>, work_ready: Arc<Notify>, shutdown: CancellationToken) {
        let (tx, rx) = mpsc::channel::<Outcome>(self.config.concurrency * 2);
        let recorder = tokio::spawn(record_outcomes(
            self.store.clone(),
            rx,
            self.config.disable_after_failures,
        ));
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let idle = Duration::from_millis(self.config.poll_interval_ms);
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let free = permits.available_permits() as i64;
            if free == 0 {
                // Wait for one attempt to finish.
                let Ok(p) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                drop(p);
                continue;
            }
            let claim = self
                .store
                .claim(free.min(self.config.claim_batch), self.config.lease_secs);
            let claimed = match tokio::select! {
                () = shutdown.cancelled() => break,
                c = claim => c,
            } {
                Ok(c) => {
                    delay = Duration::from_millis(100);
                    c
                }
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?delay, "claiming deliveries failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = work_ready.notified() => {}
                    () = tokio::time::sleep(idle) => {}
                }
                continue;
            }
            for delivery in claimed {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let (this, tx) = (Arc::clone(&self), tx.clone());
                tokio::spawn(async move {
                    let outcome = this.attempt(delivery).await;
                    let _ = tx.send(outcome).await;
                    drop(permit);
                });
            }
        }
        // Let in-flight attempts finish and be recorded.
        let _ = permits.acquire_many(self.config.concurrency as u32).await;
        drop(tx);
        let _ = recorder.await;
    }

    /// Waits for the subscription's concurrency slot and rate limit.
    async fn admit(&self, d: &Claimed) -> tokio::sync::OwnedSemaphorePermit {
        let (semaphore, wait) = {
            let mut map = self
                .per_subscription
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let limits = map
                .entry(d.subscription_id)
                .or_insert_with(|| SubscriptionLimits {
                    concurrency: Arc::new(Semaphore::new(d.max_concurrency.max(1) as usize)),
                    max_concurrency: d.max_concurrency,
                    next_slot: Instant::now(),
                });
            if limits.max_concurrency != d.max_concurrency {
                limits.concurrency = Arc::new(Semaphore::new(d.max_concurrency.max(1) as usize));
                limits.max_concurrency = d.max_concurrency;
            }
            let now = Instant::now();
            let wait = match d.rate_limit_per_sec.filter(|r| *r > 0) {
                Some(rate) => {
                    let slot = limits.next_slot.max(now);
                    limits.next_slot = slot + Duration::from_secs_f64(1.0 / f64::from(rate));
                    slot - now
                }
                None => Duration::ZERO,
            };
            (Arc::clone(&limits.concurrency), wait)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        // The semaphore is never closed.
        semaphore
            .acquire_owned()
            .await
            .expect("subscription semaphore is never closed")
    }

    async fn attempt(&self, d: Claimed) -> Outcome {
        let _slot = self.admit(&d).await;
        let started_at = OffsetDateTime::now_utc();
        let clock = Instant::now();
        let result = self.send(&d, started_at.unix_timestamp()).await;
        let duration = clock.elapsed();
        metrics::histogram!("webhook_attempt_duration_seconds").record(duration.as_secs_f64());
        let mut outcome = Outcome {
            delivery_id: d.id,
            subscription_id: d.subscription_id,
            attempt: d.attempts,
            started_at,
            duration_ms: i32::try_from(duration.as_millis()).unwrap_or(i32::MAX),
            response_status: None,
            response_body: None,
            error: None,
            status: "pending",
            next_attempt_at: started_at,
            success: false,
            disable: None,
        };
        let mut retry_after = None;
        let mut permanent = false;
        match result {
            Ok(response) => {
                let status = response.status;
                outcome.response_status = Some(i32::from(status));
                outcome.response_body = Some(response.body);
                if (200..300).contains(&status) {
                    outcome.success = true;
                } else if status == 410 {
                    permanent = true;
                    outcome.disable = Some("endpoint answered 410 Gone".to_owned());
                } else if status == 429 || status == 503 {
                    retry_after = response.retry_after;
                }
            }
            Err(AttemptError::Refused(why)) => {
                permanent = true;
                outcome.error = Some(why);
            }
            Err(AttemptError::Transport(why)) => outcome.error = Some(why),
        }
        let label = if outcome.success {
            "success"
        } else if permanent {
            "refused"
        } else {
            "failure"
        };
        metrics::counter!("webhook_attempts_total", "outcome" => label).increment(1);
        if outcome.success {
            outcome.status = "succeeded";
        } else if permanent || d.attempts >= d.max_attempts {
            outcome.status = "failed";
        } else {
            let wait = backoff(&self.config, d.attempts).max(retry_after.unwrap_or_default());
            let wait = wait.min(Duration::from_secs(self.config.retry_max_secs));
            outcome.next_attempt_at = started_at + wait;
        }
        if outcome.status != "pending" {
            metrics::counter!("webhook_deliveries_total", "outcome" => outcome.status).increment(1);
        }
        outcome
    }

    async fn send(&self, d: &Claimed, timestamp: i64) -> Result<Response, AttemptError> {
        let url = reqwest::Url::parse(&d.url)
            .map_err(|e| AttemptError::Refused(format!("invalid url: {e}")))?;
        if let Some(ip) = literal_ip(&url) {
            self.policy.check(ip).map_err(AttemptError::Refused)?;
        }
        let keys: Vec<SigningKey> = d
            .secrets
            .iter()
            .filter_map(|s| SigningKey::parse(s).ok())
            .collect();
        if keys.is_empty() {
            return Err(AttemptError::Transport(
                "subscription has no valid signing secret".to_owned(),
            ));
        }
        let event_id = d.event_id.to_string();
        let body = d.payload.as_bytes();
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
            .body(d.payload.clone())
            .send()
            .await
            .map_err(classify)?;
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
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The address of a URL whose host is an IP literal.
pub fn literal_ip(url: &reqwest::Url) -> Option<std::net::IpAddr> {
    url.host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

struct Response {
    status: u16,
    retry_after: Option<Duration>,
    body: String,
}

enum AttemptError {
    /// The destination is not allowed: retrying cannot help.
    Refused(String),
    /// Connection, TLS or timeout failure.
    Transport(String),
}

fn classify(err: reqwest::Error) -> AttemptError {
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        let text = e.to_string();
        if text.starts_with("destination ") && text.contains(" refused: ") {
            return AttemptError::Refused(text);
        }
        source = e.source();
    }
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    AttemptError::Transport(format!(
        "{kind}: {}",
        std::error::Error::source(&err).map_or_else(|| err.to_string(), |s| s.to_string())
    ))
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at =
        OffsetDateTime::parse(value.trim(), &time::format_description::well_known::Rfc2822).ok()?;
    let secs = (at - OffsetDateTime::now_utc()).whole_seconds();
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// `retry_base_ms * 2^(attempt-1)`, ±20 % jitter.
fn backoff(config: &DeliveryConfig, attempt: i32) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(0)
        .min(20);
    let base = config.retry_base_ms.saturating_mul(1u64 << exp) as f64;
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    Duration::from_millis((base * jitter) as u64)
}

async fn record_outcomes(store: Store, mut rx: mpsc::Receiver<Outcome>, disable_after: i32) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let mut delay = Duration::from_millis(100);
        loop {
            match store.record(&batch, disable_after).await {
                Ok(()) => break,
                Err(err) => {
                    // Claims stay leased meanwhile; if this never succeeds the lease expires
                    // and the deliveries are attempted again (same webhook-id).
                    tracing::warn!(error = %err, outcomes = batch.len(), "recording attempts failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    if delay >= Duration::from_secs(5) && rx.is_closed() {
                        break;
                    }
                }
            }
        }
        batch.clear();
    }
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
        for (attempt, center) in [(1, 1000.0), (2, 2000.0), (3, 4000.0)] {
            let ms = backoff(&config, attempt).as_millis() as f64;
            assert!(
                (center * 0.8..=center * 1.2).contains(&ms),
                "{attempt}: {ms}"
            );
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
