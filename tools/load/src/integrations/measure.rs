//! One measured phase, run twice with the same shape: `concurrency` callers, `executions`
//! calls in all (a shared budget, so the count is exact), each caller sending its next call
//! when the previous one answered (closed loop).
//!
//! - **platform**: each caller is a Socket.IO client; a call is `integration:execute` with an
//!   ack, timed from the send to the ack (gateway → NATS → runner → the local API → back);
//! - **direct**: each caller is a task of one keep-alive HTTP client calling the local API's
//!   same URL (what the runner sends), timed from the send to the body.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::api::{Api, TOKEN};
use super::client::{Client, Frame};
use super::stack::{INTEGRATION, PROJECT};
use crate::stats;

/// How long one call may take before the phase gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(40);

/// The calls left in a phase.
#[derive(Debug)]
struct Budget(AtomicUsize);

impl Budget {
    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// What one side of a phase measured.
#[derive(Debug, Default)]
pub struct Sample {
    /// Call latencies, in milliseconds (successes only).
    pub latencies_ms: Vec<f64>,
    /// Failures by kind (`error.code`, HTTP status, transport).
    pub failures: BTreeMap<String, u64>,
    /// First send → last answer.
    pub elapsed: Duration,
}

impl Sample {
    fn merge(&mut self, other: Self) {
        self.latencies_ms.extend(other.latencies_ms);
        for (k, n) in other.failures {
            *self.failures.entry(k).or_default() += n;
        }
    }

    /// `{ok, failed, per_sec, elapsed_s, latency_ms: {n, p50, p90, p99, max}, failures}`.
    pub fn json(mut self) -> Value {
        let ok = self.latencies_ms.len();
        let failed: u64 = self.failures.values().sum();
        let secs = self.elapsed.as_secs_f64();
        json!({
            "ok": ok,
            "failed": failed,
            "elapsed_s": secs,
            "per_sec": if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            "latency_ms": stats::summary(&mut self.latencies_ms),
            "failures": self.failures,
        })
    }
}

/// The `integration:execute` payload; `user` is echoed in the API's answer.
pub fn execute_payload(user: &str) -> Value {
    json!({"projectId": PROJECT, "integrationId": INTEGRATION, "endpoint": "getUserTweets",
           "params": {"userId": user, "limit": 5}, "requestData": {}})
}

/// Through the gateway: `executions` calls over `clients`, `per_client` in flight on each.
/// The clients are handed back (connected) for the next phase.
pub async fn platform(
    clients: Vec<Client>,
    per_client: usize,
    executions: usize,
) -> (Vec<Client>, Sample) {
    let budget = Arc::new(Budget(AtomicUsize::new(executions)));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        let budget = Arc::clone(&budget);
        set.spawn(platform_caller(client, i, per_client, budget));
    }
    let mut sample = Sample::default();
    let mut clients = Vec::new();
    while let Some(done) = set.join_next().await {
        match done {
            Ok((client, part)) => {
                sample.merge(part);
                clients.extend(client);
            }
            Err(e) => *sample.failures.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    sample.elapsed = started.elapsed();
    (clients, sample)
}

async fn platform_caller(
    mut client: Client,
    index: usize,
    per_client: usize,
    budget: Arc<Budget>,
) -> (Option<Client>, Sample) {
    let user = format!("u{index}");
    let payload = execute_payload(&user);
    let mut sample = Sample::default();
    let mut in_flight: Vec<(u32, Instant)> = Vec::with_capacity(per_client);
    loop {
        while in_flight.len() < per_client && budget.take() {
            let sent = Instant::now();
            match client.emit("integration:execute", &payload, true).await {
                Ok(Some(id)) => in_flight.push((id, sent)),
                Ok(None) | Err(_) => {
                    *sample.failures.entry("send".to_owned()).or_default() += 1;
                    return (None, sample);
                }
            }
        }
        if in_flight.is_empty() {
            return (Some(client), sample);
        }
        let frame = match tokio::time::timeout(CALL_TIMEOUT, client.next()).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) | Err(_) => {
                *sample.failures.entry("connection".to_owned()).or_default() +=
                    in_flight.len() as u64;
                return (None, sample);
            }
        };
        let Frame::Ack(id, body) = frame else {
            continue;
        };
        let Some(pos) = in_flight.iter().position(|(i, _)| *i == id) else {
            continue;
        };
        let (_, sent) = in_flight.swap_remove(pos);
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        if body["ok"] == true && body["result"]["data"]["user"] == user.as_str() {
            sample.latencies_ms.push(ms);
        } else {
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or("unexpected answer");
            *sample.failures.entry(code.to_owned()).or_default() += 1;
        }
    }
}

/// The same calls straight to the API: `concurrency` tasks, one shared keep-alive client.
pub async fn direct(api: &Api, concurrency: usize, executions: usize) -> Sample {
    let budget = Arc::new(Budget(AtomicUsize::new(executions)));
    let http = test_support::http_client();
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..concurrency {
        let budget = Arc::clone(&budget);
        let http = http.clone();
        let user = format!("u{i}");
        let url = api.tweets_url(&user);
        set.spawn(async move {
            let mut sample = Sample::default();
            while budget.take() {
                let sent = Instant::now();
                let answer = async {
                    let response = http.get(&url).bearer_auth(TOKEN).send().await?;
                    let status = response.status().as_u16();
                    let body = response.bytes().await?;
                    Ok::<_, anyhow::Error>((status, body))
                };
                match tokio::time::timeout(CALL_TIMEOUT, answer).await {
                    Ok(Ok((200, body))) => {
                        let ms = sent.elapsed().as_secs_f64() * 1000.0;
                        let value: Value = serde_json::from_slice(&body).unwrap_or_default();
                        if value["user"] == user.as_str() {
                            sample.latencies_ms.push(ms);
                        } else {
                            *sample.failures.entry("unexpected body".into()).or_default() += 1;
                        }
                    }
                    Ok(Ok((status, _))) => {
                        *sample.failures.entry(format!("http {status}")).or_default() += 1;
                    }
                    Ok(Err(_)) | Err(_) => {
                        *sample.failures.entry("transport".into()).or_default() += 1;
                    }
                }
            }
            sample
        });
    }
    let mut sample = Sample::default();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(part) => sample.merge(part),
            Err(e) => *sample.failures.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    sample.elapsed = started.elapsed();
    sample
}
