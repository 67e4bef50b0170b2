//! `load webhook throughput`: deliveries completed per second for a burst of events.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use serde_json::{Value, json};
use uuid::Uuid;

use super::observe::Window;
use super::stack::{Stack, StackOptions};
use super::{
    THROUGHPUT_TARGET, calibrate, config_json, config_line, envelope, on_own_thread, secs_since,
    subject,
};
use crate::output::Out;
use crate::stats::median_by;

/// Runs `runs` measurements, each on a fresh stack, and reports each and their medians.
pub async fn throughput(
    options: &StackOptions,
    events: usize,
    runs: usize,
    timeout: Duration,
    out: Out,
) -> Value {
    out.line(format!(
        "throughput: {events} events x {} subscription(s) = {} deliveries, {runs} run(s)",
        options.subscriptions,
        events * options.subscriptions
    ));
    out.line(config_line(options));
    let mut results = Vec::with_capacity(runs);
    for run in 1..=runs {
        out.line(format!("-- run {run}/{runs}"));
        results.push(throughput_run(options, events, timeout, out).await);
    }
    let median = |key: &str| {
        let values: Vec<f64> = results.iter().filter_map(|r| r[key].as_f64()).collect();
        median_by(&values, |v| *v)
    };
    let rate = median("deliveries_per_sec");
    let receiver_rate = median("receiver_per_sec");
    let ok = results.iter().all(|r| r["verified"] == json!(true));
    let verdict = rate.is_some_and(|r| r >= THROUGHPUT_TARGET);
    out.line(format!(
        "median of {runs}: {:.0} deliveries/s completed and recorded (target >= {THROUGHPUT_TARGET:.0}: {}), receiver {:.0} req/s; every run verified: {ok}",
        rate.unwrap_or(f64::NAN),
        if verdict { "met" } else { "MISSED" },
        receiver_rate.unwrap_or(f64::NAN),
    ));
    json!({
        "scenario": "throughput",
        "events": events,
        "deliveries": events * options.subscriptions,
        "config": config_json(options),
        "runs": results,
        "median_deliveries_per_sec": rate,
        "median_receiver_per_sec": receiver_rate,
        "target_deliveries_per_sec": THROUGHPUT_TARGET,
        "target_met": verdict,
        "all_verified": ok,
    })
}

#[derive(Debug)]
struct BurstTimes {
    started: Instant,
    started_wall: std::time::SystemTime,
    sent: Instant,
    acked: Instant,
    failed: usize,
}

/// Publishes every payload through JetStream without waiting for each acknowledgement; a
/// separate task awaits the acknowledgements (the client holds at most 5,000 unacknowledged).
async fn publish_burst(url: String, payloads: Vec<(HeaderMap, Vec<u8>)>) -> BurstTimes {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let subject = subject();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let acker = tokio::spawn(async move {
        let mut failed = 0;
        while let Some(ack) = rx.recv().await {
            let ack: async_nats::jetstream::context::PublishAckFuture = ack;
            if ack.await.is_err() {
                failed += 1;
            }
        }
        failed
    });
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let mut failed = 0;
    for (headers, payload) in payloads {
        match js
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
        {
            Ok(ack) => {
                let _ = tx.send(ack);
            }
            Err(_) => failed += 1,
        }
    }
    let sent = Instant::now();
    drop(tx);
    failed += acker.await.unwrap_or(0);
    let acked = Instant::now();
    let _ = client.flush().await;
    BurstTimes {
        started,
        started_wall,
        sent,
        acked,
        failed,
    }
}

async fn throughput_run(
    options: &StackOptions,
    events: usize,
    timeout: Duration,
    out: Out,
) -> Value {
    let expected = events * options.subscriptions;
    let calibration = calibrate();
    let mut stack = Stack::start(options).await;
    let payloads: Vec<(HeaderMap, Vec<u8>)> = (0..events)
        .map(|i| {
            let e = envelope(i);
            (events::publisher::publish_headers(&e), e.encode())
        })
        .collect();

    let window = Window::open(&stack, options, calibration).await;
    let url = stack.nats.url();
    let publisher = tokio::spawn(on_own_thread("publisher", move || {
        publish_burst(url, payloads)
    }));

    // Done when the receiver has seen every delivery (counted in memory) and nothing is
    // pending any more (all recorded). Only the second condition reads the database, through
    // the partial index on pending deliveries, so polling adds no scan to the timed window.
    let deadline = Instant::now() + timeout;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut done = None;
    let mut pending = -1;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if stack.receiver.count() as usize >= expected {
            pending = stack.pending_count().await;
            if pending == 0 {
                done = Some(now);
                break;
            }
        }
        if now > deadline {
            break;
        }
    }
    let ended = window.end(&stack, options, out).await;
    let burst = publisher.await.unwrap();
    let hits = stack.receiver.hits();
    let signatures = stack.receiver.signatures(&stack.secret);
    let observed = ended.counters(&mut stack).await;
    let attempts = stack.attempt_count().await;
    let (succeeded, all) = stack.delivery_counts().await;
    let last_insert = stack.last_insert_unix().await;
    let db_span = stack.attempt_span_secs().await;
    let statuses = stack.status_counts().await;
    stack.close().await;

    let first = hits.iter().map(|h| h.at).min();
    let last_hit = hits.iter().map(|h| h.at).max();
    let distinct: std::collections::HashSet<Uuid> = hits.iter().map(|h| h.id).collect();
    let t0 = burst.started;
    // By the database's clock (the same machine's), relative to the first publish.
    let outbox_full = last_insert.map(|at| at - super::unix_secs(burst.started_wall));
    let rel = |t: Option<Instant>| t.map(|t| secs_since(t, t0));
    let window = match (first, done) {
        (Some(f), Some(d)) => Some(secs_since(d, f)),
        _ => None,
    };
    let rate = window.map(|w| expected as f64 / w);
    // A second measure of the same run: attempts / their own span in the database.
    let db_rate = db_span.filter(|s| *s > 0.0).map(|s| attempts as f64 / s);
    let receiver_span = match (first, last_hit) {
        (Some(f), Some(l)) => secs_since(l, f),
        _ => 0.0,
    };
    let receiver_rate =
        (hits.len() > 1 && receiver_span > 0.0).then(|| (hits.len() - 1) as f64 / receiver_span);
    let verified = done.is_some()
        && succeeded == expected as i64
        && all == expected as i64
        && attempts == expected as i64
        && hits.len() == expected
        && distinct.len() == events
        && signatures.valid == hits.len()
        && burst.failed == 0;

    out.line(format!(
        "publish: {events} events sent in {:.2} s ({:.0}/s), all acknowledged after {:.2} s, {} failed",
        secs_since(burst.sent, t0),
        events as f64 / secs_since(burst.sent, t0).max(1e-9),
        secs_since(burst.acked, t0),
        burst.failed
    ));
    out.line(format!(
        "first delivery at +{:.2} s; outbox complete (all {expected} deliveries inserted) at +{}; all succeeded at +{}",
        rel(first).unwrap_or(f64::NAN),
        outbox_full.map_or_else(|| "never".to_owned(), |s| format!("{s:.2} s")),
        rel(done).map_or_else(|| format!("never ({} received, {pending} pending, {succeeded} of {all} succeeded)", hits.len()), |s| format!("{s:.2} s")),
    ));
    out.line(format!(
        "=> {:.0} deliveries/s completed and recorded ({expected} in {:.2} s from the first delivery); receiver {:.0} req/s ({} requests, {} distinct webhook-ids)",
        rate.unwrap_or(f64::NAN),
        window.unwrap_or(f64::NAN),
        receiver_rate.unwrap_or(f64::NAN),
        hits.len(),
        distinct.len(),
    ));
    out.line(format!(
        "   by the attempt rows' own timestamps: {:.0} attempts/s ({attempts} started and finished within {:.2} s)",
        db_rate.unwrap_or(f64::NAN),
        db_span.unwrap_or(f64::NAN),
    ));
    out.line(format!(
        "webhook_attempts rows: {attempts} (expected {expected}); deliveries by status: {statuses}; signatures: {} valid, {} not; verified: {verified}",
        signatures.valid, signatures.invalid
    ));
    observed.lines(expected, out);

    let mut report = json!({
        "deliveries": expected,
        "deliveries_per_sec": rate,
        "receiver_per_sec": receiver_rate,
        "db_attempts_per_sec": db_rate,
        "db_attempt_span_secs": db_span,
        "window_secs": window,
        "publish_sent_secs": secs_since(burst.sent, t0),
        "publish_acked_secs": secs_since(burst.acked, t0),
        "publish_failed": burst.failed,
        "first_delivery_secs": rel(first),
        "outbox_complete_secs": outbox_full,
        "all_succeeded_secs": rel(done),
        "receiver_requests": hits.len(),
        "receiver_distinct_ids": distinct.len(),
        "attempt_rows": attempts,
        "signatures_valid": signatures.valid,
        "signatures_invalid": signatures.invalid,
        "statuses": statuses,
        "verified": verified,
    });
    observed.add_to(&mut report, expected);
    report
}
