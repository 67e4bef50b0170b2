//! `webhook-load`: measures webhook-dispatcher end to end on one machine.
//!
//! - `throughput`: publishes E `order.updated` events as fast as JetStream takes them and
//!   measures the rate at which deliveries complete: from the first request at the receiver
//!   until every delivery is recorded `succeeded` in PostgreSQL (polled every 100 ms), with
//!   every attempt in `webhook_attempts`.
//! - `latency`: publishes at a steady rate and measures, per event, the time from just before
//!   the publish to the first request carrying its id (`webhook-id`) at the receiver.
//!
//! Each run starts its own nats-server, a fresh PostgreSQL database, the dispatcher in this
//! process (as its e2e tests run it) and a local receiver (200, empty body). Alongside the
//! figures it reports where the CPU went (per thread of this process, nats-server,
//! PostgreSQL) and PostgreSQL activity counters, to say what bounds the figures.
//!
//! See `docs/benchmarks-webhooks.md` for the commands and figures.

// A measurement tool: a broken setup (no PostgreSQL, no nats-server) should stop it loudly, and
// its report goes to stdout/stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod pgstats;
mod procfs;
mod receiver;
mod stack;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use clap::{Parser, Subcommand};
use events::{Envelope, EventType};
use serde_json::{Value, json};
use uuid::Uuid;

use stack::{Stack, StackOptions};

/// Target: deliveries completed (and recorded) per second.
const THROUGHPUT_TARGET: f64 = 5_000.0;
/// Target: p99 publish → first attempt at the receiver, milliseconds.
const P99_TARGET_MS: f64 = 100.0;
/// The event type published; every subscription matches it.
const EVENT_TYPE: &str = "order.updated";

#[derive(Debug, Parser)]
#[command(about = "Load measurements for webhook-dispatcher (delivery throughput, latency)")]
struct Cli {
    /// Print one JSON object on stdout (the human-readable report goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// Dispatcher `DELIVERY__CONCURRENCY`: attempts in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    concurrency: usize,
    /// `max_concurrency` of each subscription (the dispatcher's
    /// `DELIVERY__DEFAULT_MAX_CONCURRENCY`, 16, when omitted).
    #[arg(long, global = true)]
    subscription_concurrency: Option<i32>,
    /// Further dispatcher setting, `KEY=VALUE` without the `WEBHOOK_DISPATCHER_` prefix, e.g.
    /// `--set DELIVERY__CLAIM_BATCH=500`. Repeatable.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = parse_setting)]
    settings: Vec<(String, String)>,
    /// Query parameters appended to the dispatcher's database URL, e.g. `sslmode=disable` or
    /// `options[plan_cache_mode]=force_custom_plan` (sqlx's connect parameters).
    #[arg(long, global = true, value_name = "PARAMS")]
    db_url_params: Option<String>,
    /// Run `ANALYZE` on the dispatcher's tables every N ms during the measurement, as
    /// autovacuum eventually would: the database starts empty, and plans cached while a table
    /// is tiny (never analyzed) stay in use as it grows.
    #[arg(long, global = true, value_name = "MS")]
    analyze_every_ms: Option<u64>,
    /// Log the test database's statements with their durations (`log_min_duration_statement =
    /// 0` on that database only) and summarise them from this PostgreSQL server log file, e.g.
    /// `/var/log/postgresql/postgresql-15-main.log`. Logging adds load.
    #[arg(long, global = true, value_name = "SERVER_LOG")]
    log_statements: Option<std::path::PathBuf>,
    /// Sample `pg_stat_activity` every N ms during the measurement and report which dispatcher
    /// statements (and wait events) the database time goes to. Adds a little load.
    #[arg(long, global = true, value_name = "MS")]
    sample_activity_ms: Option<u64>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Deliveries completed per second for a burst of events.
    Throughput {
        /// Events published.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// Subscriptions matching every event (each event fans out to this many deliveries).
        #[arg(long, default_value_t = 1)]
        subscriptions: usize,
        /// Runs, each on a fresh stack; the report gives each and the median.
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Give up on a run after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Publish → first attempt latency at a steady publish rate.
    Latency {
        /// Events per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Subscriptions matching every event.
        #[arg(long, default_value_t = 1)]
        subscriptions: usize,
        /// Seconds to wait for stragglers after the last publish.
        #[arg(long, default_value_t = 15)]
        drain_secs: u64,
    },
}

fn parse_setting(raw: &str) -> Result<(String, String), String> {
    let (k, v) = raw
        .split_once('=')
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))?;
    let k = k.trim().trim_start_matches("WEBHOOK_DISPATCHER_");
    if k.is_empty() {
        return Err(format!("{raw:?} has no key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Human-readable lines: stdout, or stderr when stdout carries the JSON object.
#[derive(Debug, Clone, Copy)]
struct Say {
    json: bool,
}

impl Say {
    fn line(self, text: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", text.as_ref());
        } else {
            println!("{}", text.as_ref());
        }
    }
}

fn main() {
    let cli = Cli::parse();
    // The dispatcher logs through the global subscriber: JSON lines as the service writes them,
    // but on stderr (stdout carries the report), at `warn` unless RUST_LOG says otherwise (at
    // `info` sqlx logs every statement, which would dominate the measurement).
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dispatcher-rt")
        .build()
        .unwrap();
    let say = Say { json: cli.json };
    let report = runtime.block_on(run(&cli, say));
    if cli.json {
        println!("{report}");
    }
    // Background tasks (pool reapers, NATS clients) are abandoned rather than awaited.
    runtime.shutdown_timeout(Duration::from_secs(2));
}

async fn run(cli: &Cli, say: Say) -> Value {
    match cli.scenario {
        Scenario::Throughput {
            events,
            subscriptions,
            runs,
            timeout_secs,
        } => {
            let options = stack_options(cli, subscriptions);
            throughput(
                &options,
                events,
                runs.max(1),
                Duration::from_secs(timeout_secs),
                say,
            )
            .await
        }
        Scenario::Latency {
            rate,
            seconds,
            subscriptions,
            drain_secs,
        } => {
            let options = stack_options(cli, subscriptions);
            latency(
                &options,
                rate.max(1),
                seconds.max(1),
                Duration::from_secs(drain_secs),
                say,
            )
            .await
        }
    }
}

fn stack_options(cli: &Cli, subscriptions: usize) -> StackOptions {
    StackOptions {
        concurrency: cli.concurrency,
        settings: cli.settings.clone(),
        subscriptions: subscriptions.max(1),
        subscription_concurrency: cli.subscription_concurrency,
        sample_activity: cli.sample_activity_ms.map(Duration::from_millis),
        statement_log: cli.log_statements.clone(),
        db_url_params: cli.db_url_params.clone(),
        analyze_every: cli.analyze_every_ms.map(Duration::from_millis),
    }
}

fn config_json(options: &StackOptions) -> Value {
    json!({
        "dispatcher_settings": options
            .dispatcher_settings()
            .into_iter()
            .map(|(k, v)| (k, json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "subscriptions": options.subscriptions,
        "subscription_max_concurrency": options.subscription_concurrency,
        "db_url_params": options.db_url_params,
        "analyze_every_ms": options.analyze_every.map(|d| d.as_millis() as u64),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
    })
}

fn config_line(options: &StackOptions) -> String {
    let settings: Vec<String> = options
        .dispatcher_settings()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "dispatcher: {}{}; {} subscription(s), max_concurrency {}",
        settings.join(" "),
        options
            .db_url_params
            .as_ref()
            .map_or_else(String::new, |p| format!(" DATABASE__URL=...?{p}"))
            + &options.analyze_every.map_or_else(String::new, |d| {
                format!(" (tool runs ANALYZE every {} ms)", d.as_millis())
            }),
        options.subscriptions,
        options
            .subscription_concurrency
            .map_or_else(|| "default".to_owned(), |c| c.to_string())
    )
}

/// A fresh `order.updated` envelope for entity `i`.
fn envelope(i: usize) -> Envelope {
    Envelope::new(
        EventType::parse(EVENT_TYPE).unwrap(),
        &(i + 1).to_string(),
        json!({
            "id": i + 1,
            "status": "paid",
            "total": "125.40",
            "currency": "EUR",
            "items": [{"sku": "SKU-1", "quantity": 2}, {"sku": "SKU-7", "quantity": 1}],
        }),
    )
    .unwrap()
}

fn subject() -> String {
    events::subject::event_subject(&EventType::parse(EVENT_TYPE).unwrap())
}

/// Runs `make()` to completion on a new thread with its own single-threaded runtime (so the
/// NATS client it creates is driven there, apart from the dispatcher's runtime).
async fn on_own_thread<T, F, Fut>(name: &str, make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let out = rt.block_on(make());
            let _ = tx.send(out);
        })
        .unwrap();
    rx.await.unwrap()
}

fn secs_since(later: Instant, earlier: Instant) -> f64 {
    later.saturating_duration_since(earlier).as_secs_f64()
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Milliseconds a fixed single-threaded integer loop takes (best of 3), measured right before a
/// run: this machine is a VM whose speed drifts (the same run's CPU cost per delivery varied
/// 2.5x over an afternoon), so figures are only comparable alongside this.
fn calibrate() -> f64 {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for i in 0..50_000_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x = x.wrapping_add(i);
            }
            std::hint::black_box(x);
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    json!({
        "n": values.len(),
        "p50": percentile(values, 50.0),
        "p90": percentile(values, 90.0),
        "p99": percentile(values, 99.0),
        "max": values.last().copied().unwrap_or(f64::NAN),
    })
}

fn summary_line(s: &Value) -> String {
    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        f("p50"),
        f("p90"),
        f("p99"),
        f("max")
    )
}

/// CPU (this process, nats-server, PostgreSQL) per delivery, in microseconds.
fn cpu_per_delivery(cpu: &Value, deliveries: usize) -> f64 {
    let g = |k: &str| cpu[k].as_f64().unwrap_or(0.0);
    (g("this_process_cpu_secs") + g("nats_server_cpu_secs") + g("postgres_cpu_secs")) * 1e6
        / deliveries.max(1) as f64
}

/// PostgreSQL figures per delivery, from the counters' deltas.
fn pg_line(pg: &Value, deliveries: usize) -> String {
    let g = |k: &str| pg[k].as_f64().unwrap_or(0.0);
    let per = |k: &str| g(k) / deliveries.max(1) as f64;
    format!(
        "PostgreSQL (test db): {:.0} commits ({:.3}/delivery), {:.0} rows inserted, {:.0} updated \
         ({:.0} HOT), {:.0} rows read by seq scans, statements active {:.1} s ({:.0} µs/delivery); \
         cluster WAL {:.1} MB ({:.0} B/delivery), {:.0} WAL syncs",
        g("db.xact_commit"),
        per("db.xact_commit"),
        g("db.tup_inserted"),
        g("db.tup_updated"),
        g("webhook_deliveries.n_tup_hot_upd"),
        g("webhook_deliveries.seq_tup_read")
            + g("webhook_events.seq_tup_read")
            + g("webhook_subscriptions.seq_tup_read")
            + g("webhook_attempts.seq_tup_read"),
        g("db.active_time") / 1000.0,
        per("db.active_time") * 1000.0,
        g("wal.wal_bytes") / 1e6,
        per("wal.wal_bytes"),
        g("wal.wal_sync"),
    )
}

/// Starts the `pg_stat_activity` sampler and the periodic ANALYZE when asked for.
fn start_sampler(
    stack: &Stack,
    options: &StackOptions,
) -> Option<(
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Value>,
)> {
    if options.sample_activity.is_none() && options.analyze_every.is_none() {
        return None;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(every) = options.analyze_every {
        tokio::spawn(pgstats::analyze_periodically(
            stack.observer.clone(),
            every,
            stop.clone(),
        ));
    }
    let task = tokio::spawn(pgstats::sample_activity(
        stack.observer.clone(),
        options.sample_activity,
        stop.clone(),
    ));
    Some((stop, task))
}

/// Stops the sampler and prints its top entries.
async fn finish_sampler(
    sampler: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Value>,
    )>,
    say: Say,
) -> Value {
    let Some((stop, task)) = sampler else {
        return Value::Null;
    };
    stop.cancel();
    let activity = task.await.unwrap_or(Value::Null);
    if activity.is_null() {
        return activity;
    }
    say.line(format!(
        "pg_stat_activity: {} samples every {} ms, {:.2} dispatcher statements active on average; top:",
        activity["samples"],
        activity["interval_ms"],
        activity["active_backends_avg"].as_f64().unwrap_or(0.0)
    ));
    let total: f64 = activity["top"].as_array().map_or(0.0, |t| {
        t.iter().filter_map(|e| e["samples"].as_f64()).sum()
    });
    for e in activity["top"].as_array().into_iter().flatten().take(10) {
        say.line(format!(
            "  {:>5.1}%  {:.2} backends  {}  [{}]",
            100.0 * e["samples"].as_f64().unwrap_or(0.0) / total.max(1.0),
            e["avg_backends"].as_f64().unwrap_or(0.0),
            e["statement"].as_str().unwrap_or(""),
            e["wait"].as_str().unwrap_or("")
        ));
    }
    activity
}

/// Where the server log ends now (statements after this are the measurement's).
fn log_offset(options: &StackOptions) -> u64 {
    options
        .statement_log
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

/// Summarises the statements logged since `from` and prints the top ones.
fn statement_summary(options: &StackOptions, from: u64, database: &str, say: Say) -> Value {
    let Some(path) = &options.statement_log else {
        return Value::Null;
    };
    let summary = pgstats::statement_log(path, from, database);
    say.line(format!(
        "statement log ({database}): {} statements, {:.2} s in total; top by total time:",
        summary["statements"],
        summary["total_ms"].as_f64().unwrap_or(0.0) / 1000.0
    ));
    for e in summary["top"].as_array().into_iter().flatten().take(12) {
        say.line(format!(
            "  {:>8.0} ms {:>5.1}%  {:>6} x {:>7.3} ms  {}",
            e["total_ms"].as_f64().unwrap_or(0.0),
            e["share_pct"].as_f64().unwrap_or(0.0),
            e["count"],
            e["mean_ms"].as_f64().unwrap_or(0.0),
            e["statement"].as_str().unwrap_or("")
        ));
    }
    summary
}

// ---------------------------------------------------------------------------------------------
// throughput

async fn throughput(
    options: &StackOptions,
    events: usize,
    runs: usize,
    timeout: Duration,
    say: Say,
) -> Value {
    say.line(format!(
        "throughput: {events} events x {} subscription(s) = {} deliveries, {runs} run(s)",
        options.subscriptions,
        events * options.subscriptions
    ));
    say.line(config_line(options));
    let mut results = Vec::with_capacity(runs);
    for run in 1..=runs {
        say.line(format!("-- run {run}/{runs}"));
        results.push(throughput_run(options, events, timeout, say).await);
    }
    let median = |key: &str| {
        let mut v: Vec<f64> = results.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let rate = median("deliveries_per_sec");
    let receiver_rate = median("receiver_per_sec");
    let ok = results.iter().all(|r| r["verified"] == json!(true));
    let verdict = rate.is_some_and(|r| r >= THROUGHPUT_TARGET);
    say.line(format!(
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
        sent,
        acked,
        failed,
    }
}

async fn throughput_run(
    options: &StackOptions,
    events: usize,
    timeout: Duration,
    say: Say,
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

    let pg_before = pgstats::snapshot(&stack.observer).await;
    let cpu_before = procfs::snapshot(&pgstats::processes(&stack.observer).await);
    let sampler = start_sampler(&stack, options);
    let log_from = log_offset(options);
    let url = stack.nats.url();
    let publisher = tokio::spawn(on_own_thread("publisher", move || {
        publish_burst(url, payloads)
    }));

    let deadline = Instant::now() + timeout;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut outbox_full = None;
    let mut done = None;
    let mut last: (i64, i64);
    loop {
        ticker.tick().await;
        let (succeeded, all) = stack.delivery_counts().await;
        let now = Instant::now();
        last = (succeeded, all);
        if outbox_full.is_none() && all as usize >= expected {
            outbox_full = Some(now);
        }
        if succeeded as usize >= expected {
            done = Some(now);
            break;
        }
        if now > deadline {
            break;
        }
    }
    let cpu_after = procfs::snapshot(&pgstats::processes(&stack.observer).await);
    let activity = finish_sampler(sampler, say).await;
    let statements = statement_summary(options, log_from, &stack.database_name(), say);
    let burst = publisher.await.unwrap();
    let hits = stack.receiver.hits();
    let attempts = stack.attempt_count().await;
    let statuses = stack.status_counts().await;
    stack.stop_dispatcher().await;
    let pg_after = pgstats::snapshot(&stack.observer).await;
    stack.close().await;

    let first = hits.iter().map(|h| h.at).min();
    let last_hit = hits.iter().map(|h| h.at).max();
    let distinct: std::collections::HashSet<Uuid> = hits.iter().map(|h| h.id).collect();
    let t0 = burst.started;
    let rel = |t: Option<Instant>| t.map(|t| secs_since(t, t0));
    let window = match (first, done) {
        (Some(f), Some(d)) => Some(secs_since(d, f)),
        _ => None,
    };
    let rate = window.map(|w| expected as f64 / w);
    let receiver_span = match (first, last_hit) {
        (Some(f), Some(l)) => secs_since(l, f),
        _ => 0.0,
    };
    let receiver_rate =
        (hits.len() > 1 && receiver_span > 0.0).then(|| (hits.len() - 1) as f64 / receiver_span);
    let verified = done.is_some()
        && attempts == expected as i64
        && hits.len() == expected
        && distinct.len() == events
        && burst.failed == 0;
    let (cpu, cpu_line) = procfs::delta(&cpu_before, &cpu_after);
    let pg = pgstats::delta(&pg_before, &pg_after);

    say.line(format!(
        "publish: {events} events sent in {:.2} s ({:.0}/s), all acknowledged after {:.2} s, {} failed",
        secs_since(burst.sent, t0),
        events as f64 / secs_since(burst.sent, t0).max(1e-9),
        secs_since(burst.acked, t0),
        burst.failed
    ));
    say.line(format!(
        "first delivery at +{:.2} s; outbox complete (all {expected} deliveries inserted) at +{}; all succeeded at +{}",
        rel(first).unwrap_or(f64::NAN),
        rel(outbox_full).map_or_else(|| "never".to_owned(), |s| format!("{s:.2} s")),
        rel(done).map_or_else(|| format!("never (last poll: {} of {} succeeded)", last.0, last.1), |s| format!("{s:.2} s")),
    ));
    say.line(format!(
        "=> {:.0} deliveries/s completed and recorded ({expected} in {:.2} s from the first delivery); receiver {:.0} req/s ({} requests, {} distinct webhook-ids)",
        rate.unwrap_or(f64::NAN),
        window.unwrap_or(f64::NAN),
        receiver_rate.unwrap_or(f64::NAN),
        hits.len(),
        distinct.len(),
    ));
    say.line(format!(
        "webhook_attempts rows: {attempts} (expected {expected}); deliveries by status: {statuses}; verified: {verified}"
    ));
    say.line(format!(
        "{cpu_line}; CPU per delivery {:.0} µs; reference loop {calibration:.0} ms",
        cpu_per_delivery(&cpu, expected)
    ));
    say.line(pg_line(&pg, expected));

    json!({
        "calibration_ms": calibration,
        "cpu_us_per_delivery": cpu_per_delivery(&cpu, expected),
        "deliveries": expected,
        "deliveries_per_sec": rate,
        "receiver_per_sec": receiver_rate,
        "window_secs": window,
        "publish_sent_secs": secs_since(burst.sent, t0),
        "publish_acked_secs": secs_since(burst.acked, t0),
        "publish_failed": burst.failed,
        "first_delivery_secs": rel(first),
        "outbox_complete_secs": rel(outbox_full),
        "all_succeeded_secs": rel(done),
        "receiver_requests": hits.len(),
        "receiver_distinct_ids": distinct.len(),
        "attempt_rows": attempts,
        "statuses": statuses,
        "verified": verified,
        "cpu": cpu,
        "postgres": pg,
        "pg_activity": activity,
        "pg_statements": statements,
    })
}

// ---------------------------------------------------------------------------------------------
// latency

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

async fn latency(
    options: &StackOptions,
    rate: u64,
    seconds: u64,
    drain: Duration,
    say: Say,
) -> Value {
    let total = (rate * seconds) as usize;
    let expected = total * options.subscriptions;
    say.line(format!(
        "latency: {rate} events/s for {seconds} s ({total} events x {} subscription(s))",
        options.subscriptions
    ));
    say.line(config_line(options));
    let calibration = calibrate();
    let mut stack = Stack::start(options).await;
    let pg_before = pgstats::snapshot(&stack.observer).await;
    let cpu_before = procfs::snapshot(&pgstats::processes(&stack.observer).await);

    let sampler = start_sampler(&stack, options);
    let log_from = log_offset(options);
    let url = stack.nats.url();
    let (start, sent) = on_own_thread("publisher", move || publish_steady(url, rate, total)).await;
    let published = Instant::now();
    let deadline = published + drain;
    while (stack.receiver.count() as usize) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = procfs::snapshot(&pgstats::processes(&stack.observer).await);
    let activity = finish_sampler(sampler, say).await;
    let statements = statement_summary(options, log_from, &stack.database_name(), say);
    let hits = stack.receiver.hits();
    // Let the recorder finish, then read each delivery's stages.
    let record_deadline = Instant::now() + Duration::from_secs(5);
    while stack.attempt_count().await < expected as i64 && Instant::now() < record_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    stack.stop_dispatcher().await;
    let pg_after = pgstats::snapshot(&stack.observer).await;
    stack.close().await;

    // First request per webhook-id.
    let mut first: HashMap<Uuid, receiver::Hit> = HashMap::with_capacity(total);
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
    let sent_ids: std::collections::HashSet<Uuid> = sent.iter().map(|s| s.id).collect();
    let unknown = first.keys().filter(|id| !sent_ids.contains(id)).count();
    let overall = summary(&mut all);
    let lag = summary(&mut lags);
    let p99 = overall["p99"].as_f64().unwrap_or(f64::NAN);
    let met = missing.is_empty() && p99 <= P99_TARGET_MS;
    let publish_secs = secs_since(published, start);
    let (cpu, cpu_line) = procfs::delta(&cpu_before, &cpu_after);
    let pg = pgstats::delta(&pg_before, &pg_after);
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

    say.line(format!(
        "published {} events in {publish_secs:.2} s ({:.0}/s); schedule lag {}",
        sent.len(),
        sent.len() as f64 / publish_secs.max(1e-9),
        summary_line(&lag)
    ));
    say.line(format!(
        "publish -> first attempt at the receiver ({} events): {}",
        all.len(),
        summary_line(&overall)
    ));
    say.line(format!(
        "  stages (wall clock): publish -> outbox transaction start {}",
        summary_line(&stage_json["publish_to_outbox_tx"])
    ));
    say.line(format!(
        "                       outbox -> attempt start (commit, claim, admission) {}",
        summary_line(&stage_json["outbox_to_attempt_start"])
    ));
    say.line(format!(
        "                       attempt start -> receiver {}",
        summary_line(&stage_json["attempt_start_to_receiver"])
    ));
    let worst: Vec<String> = windows
        .iter()
        .map(|w| format!("{:.0}", w["p99"].as_f64().unwrap_or(f64::NAN)))
        .collect();
    say.line(format!(
        "  p99 per second of publishing (ms): {}",
        worst.join(" ")
    ));
    say.line(format!(
        "missing: {} of {total} events never reached the receiver{}; requests {} (expected {expected}), unexpected ids {unknown}",
        missing.len(),
        missing
            .first()
            .map_or_else(String::new, |id| format!(" (first: {id})")),
        hits.len()
    ));
    say.line(format!(
        "webhook_attempts rows: {attempts}; deliveries by status: {statuses}"
    ));
    say.line(format!(
        "=> p99 {p99:.1} ms (target <= {P99_TARGET_MS:.0} ms, no missing events: {})",
        if met { "met" } else { "MISSED" }
    ));
    say.line(format!(
        "{cpu_line}; CPU per delivery {:.0} µs; reference loop {calibration:.0} ms",
        cpu_per_delivery(&cpu, expected)
    ));
    say.line(pg_line(&pg, expected));

    json!({
        "scenario": "latency",
        "calibration_ms": calibration,
        "cpu_us_per_delivery": cpu_per_delivery(&cpu, expected),
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
        "attempt_rows": attempts,
        "statuses": statuses,
        "target_p99_ms": P99_TARGET_MS,
        "target_met": met,
        "cpu": cpu,
        "postgres": pg,
        "pg_activity": activity,
        "pg_statements": statements,
    })
}
