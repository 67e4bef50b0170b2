//! `load webhook latency`: publish → first attempt latency at a steady publish rate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use uuid::Uuid;

use super::observe::Window;
use super::receiver::Hit;
use super::stack::{Stack, StackOptions};
use super::{
    P99_TARGET_MS, calibrate, config_json, config_line, envelope, on_own_thread, secs_since,
    subject, unix_secs,
};
use crate::output::Out;
use crate::stats::{summary, summary_line};

#[derive(Debug, Clone, Copy)]
struct Sent {
    id: Uuid,
    at: Instant,
    wall: SystemTime,
    /// Lateness against the ideal schedule `start + i / rate`.
    lag: Duration,
}

/// Publishes `total` events at `rate` per second with core NATS publishes (the `EVENTS` stream
/// stores them), ticking every millisecond and sending at most 5 ms' worth per tick.
async fn publish_steady(url: String, rate: u64, total: usize) -> (Instant, Vec<Sent>) {
    let client = async_nats::connect(url).await.unwrap();
    let subject = subject();
    let cap = ((rate / 200) as usize).max(1);
    let mut sent = Vec::with_capacity(total);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    while sent.len() < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize + 1).min(total);
        let mut n = 0;
        while sent.len() < due && n < cap {
            let e = envelope(sent.len());
            let headers = events::publisher::publish_headers(&e);
            let payload = e.encode();
            let scheduled = start + Duration::from_secs_f64(sent.len() as f64 / rate as f64);
            let at = Instant::now();
            let wall = SystemTime::now();
            client
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .unwrap();
            sent.push(Sent {
                id: e.id,
                at,
                wall,
                lag: at.saturating_duration_since(scheduled),
            });
            n += 1;
        }
    }
    client.flush().await.unwrap();
    (start, sent)
}

/// Publishes `rate` events a second for `seconds` and measures each one's way to the receiver.
pub async fn latency(
    options: &StackOptions,
    rate: u64,
    seconds: u64,
    drain: Duration,
    out: Out,
) -> Value {
    let total = (rate * seconds) as usize;
    let expected = total * options.subscriptions;
    out.line(format!(
        "latency: {rate} events/s for {seconds} s ({total} events x {} subscription(s))",
        options.subscriptions
    ));
    out.line(config_line(options));
    let calibration = calibrate();
    let mut stack = Stack::start(options).await;
    let window = Window::open(&stack, options, calibration).await;
    let url = stack.nats.url();
    let (start, sent) = on_own_thread("publisher", move || publish_steady(url, rate, total)).await;
    let published = Instant::now();
    let deadline = published + drain;
    while (stack.receiver.count() as usize) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended = window.end(&stack, options, out).await;
    let hits = stack.receiver.hits();
    let signatures = stack.receiver.signatures(&stack.secret);
    // Let the recorder finish, then read each delivery's stages.
    let record_deadline = Instant::now() + Duration::from_secs(5);
    while stack.attempt_count().await < expected as i64 && Instant::now() < record_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let observed = ended.counters(&mut stack).await;
    let stages: Vec<(Uuid, f64, f64)> = sqlx::query_as(
        "SELECT d.event_id, min(EXTRACT(EPOCH FROM d.created_at))::float8, min(EXTRACT(EPOCH FROM a.started_at))::float8 \
         FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id AND a.attempt = 1 \
         GROUP BY d.event_id",
    )
    .fetch_all(&stack.observer)
    .await
    .unwrap_or_default();
    let attempts = stack.attempt_count().await;
    let statuses = stack.status_counts().await;
    stack.close().await;

    // First request per webhook-id.
    let mut first: HashMap<Uuid, Hit> = HashMap::with_capacity(total);
    for h in &hits {
        first
            .entry(h.id)
            .and_modify(|f| {
                if h.at < f.at {
                    *f = *h;
                }
            })
            .or_insert(*h);
    }
    let stages: HashMap<Uuid, (f64, f64)> = stages
        .into_iter()
        .map(|(id, created, started)| (id, (created, started)))
        .collect();
    let mut all = Vec::with_capacity(total);
    let mut missing = Vec::new();
    let mut per_second: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let (mut intake, mut queue, mut send) = (Vec::new(), Vec::new(), Vec::new());
    let mut lags: Vec<f64> = sent.iter().map(|s| s.lag.as_secs_f64() * 1e3).collect();
    for s in &sent {
        let Some(hit) = first.get(&s.id) else {
            missing.push(s.id);
            continue;
        };
        let ms = hit.at.saturating_duration_since(s.at).as_secs_f64() * 1e3;
        all.push(ms);
        per_second
            .entry(s.at.saturating_duration_since(start).as_secs())
            .or_default()
            .push(ms);
        if let Some((created, started)) = stages.get(&s.id) {
            let published = unix_secs(s.wall);
            intake.push((created - published) * 1e3);
            queue.push((started - created) * 1e3);
            send.push((unix_secs(hit.wall) - started) * 1e3);
        }
    }
    let sent_ids: HashSet<Uuid> = sent.iter().map(|s| s.id).collect();
    let unknown = first.keys().filter(|id| !sent_ids.contains(id)).count();
    let overall = summary(&mut all);
    let lag = summary(&mut lags);
    let p99 = overall["p99"].as_f64().unwrap_or(f64::NAN);
    let met = missing.is_empty() && signatures.invalid == 0 && p99 <= P99_TARGET_MS;
    let publish_secs = secs_since(published, start);
    let windows: Vec<Value> = per_second
        .into_iter()
        .map(|(sec, mut v)| {
            let mut s = summary(&mut v);
            s["second"] = json!(sec);
            s
        })
        .collect();
    let stage_json = json!({
        "publish_to_outbox_tx": summary(&mut intake),
        "outbox_to_attempt_start": summary(&mut queue),
        "attempt_start_to_receiver": summary(&mut send),
    });

    out.line(format!(
        "published {} events in {publish_secs:.2} s ({:.0}/s); schedule lag {}",
        sent.len(),
        sent.len() as f64 / publish_secs.max(1e-9),
        summary_line(&lag)
    ));
    out.line(format!(
        "publish -> first attempt at the receiver ({} events): {}",
        all.len(),
        summary_line(&overall)
    ));
    out.line(format!(
        "  stages (wall clock): publish -> outbox transaction start {}",
        summary_line(&stage_json["publish_to_outbox_tx"])
    ));
    out.line(format!(
        "                       outbox -> attempt start (commit, claim, admission) {}",
        summary_line(&stage_json["outbox_to_attempt_start"])
    ));
    out.line(format!(
        "                       attempt start -> receiver {}",
        summary_line(&stage_json["attempt_start_to_receiver"])
    ));
    let worst: Vec<String> = windows
        .iter()
        .map(|w| format!("{:.0}", w["p99"].as_f64().unwrap_or(f64::NAN)))
        .collect();
    out.line(format!(
        "  p99 per second of publishing (ms): {}",
        worst.join(" ")
    ));
    out.line(format!(
        "missing: {} of {total} events never reached the receiver{}; requests {} (expected {expected}), unexpected ids {unknown}",
        missing.len(),
        missing
            .first()
            .map_or_else(String::new, |id| format!(" (first: {id})")),
        hits.len()
    ));
    out.line(format!(
        "webhook_attempts rows: {attempts}; deliveries by status: {statuses}; signatures: {} valid, {} not",
        signatures.valid, signatures.invalid
    ));
    out.line(format!(
        "=> p99 {p99:.1} ms (target <= {P99_TARGET_MS:.0} ms, no missing events, every signature valid: {})",
        if met { "met" } else { "MISSED" }
    ));
    observed.lines(expected, out);

    let mut report = json!({
        "scenario": "latency",
        "rate": rate,
        "seconds": seconds,
        "events": total,
        "config": config_json(options),
        "published": sent.len(),
        "publish_secs": publish_secs,
        "schedule_lag_ms": lag,
        "latency_ms": overall,
        "stages_ms": stage_json,
        "per_second_ms": windows,
        "missing": missing.len(),
        "missing_ids": missing.iter().take(20).map(|id| id.to_string()).collect::<Vec<_>>(),
        "receiver_requests": hits.len(),
        "signatures_valid": signatures.valid,
        "signatures_invalid": signatures.invalid,
        "attempt_rows": attempts,
        "statuses": statuses,
        "target_p99_ms": P99_TARGET_MS,
        "target_met": met,
    });
    observed.add_to(&mut report, expected);
    report
}
