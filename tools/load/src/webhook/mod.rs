//! `load webhook`: measures webhook-dispatcher end to end on one machine.
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

mod cpu;
mod latency;
mod observe;
mod pgstats;
mod receiver;
mod stack;
mod throughput;

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use events::{Envelope, EventType};
use serde_json::{Value, json};

use crate::args::key_value;
use crate::output::Out;
use crate::procfs;
use stack::StackOptions;

/// Target: deliveries completed (and recorded) per second (issue 14).
const THROUGHPUT_TARGET: f64 = 10_000.0;
/// Target: p99 publish → first attempt at the receiver, milliseconds.
const P99_TARGET_MS: f64 = 100.0;
/// The event type published; every subscription matches it.
const EVENT_TYPE: &str = "order.updated";
/// Name of the runtime threads the dispatcher runs on (its CPU is reported under it).
pub const RUNTIME_THREAD: &str = "dispatcher-rt";

/// `load webhook`: webhook-dispatcher (delivery throughput, latency).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dispatcher `DELIVERY__CONCURRENCY`: attempts in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    concurrency: usize,
    /// `max_concurrency` of each subscription (the dispatcher's
    /// `DELIVERY__DEFAULT_MAX_CONCURRENCY`, 16, when omitted).
    #[arg(long, global = true)]
    subscription_concurrency: Option<i32>,
    /// Further dispatcher setting, `KEY=VALUE` without the `WEBHOOK_DISPATCHER_` prefix, e.g.
    /// `--set DELIVERY__CLAIM_BATCH=500`. Repeatable.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = setting)]
    settings: Vec<(String, String)>,
    /// Query parameters appended to the dispatcher's database URL, e.g. `sslmode=disable` or
    /// `options[work_mem]=16MB` (sqlx's connect parameters; `plan_cache_mode` is the
    /// dispatcher's own, `Store::SESSION`, and wins over one given here).
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
    /// Finished deliveries (with their events and attempts) already in the database before
    /// the measurement, spread over 30 days and analyzed: a dispatcher that has run for a
    /// while, e.g. `--history-rows 1000000`.
    #[arg(long, global = true, default_value_t = 0)]
    history_rows: u64,
    /// Run this webhook-dispatcher binary (e.g. `target/release/webhook-dispatcher`) as its
    /// own process, as it is deployed, instead of in this process. Its CPU is reported as
    /// `dispatcher process`.
    #[arg(long, global = true, value_name = "PATH")]
    dispatcher_bin: Option<std::path::PathBuf>,
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

/// A dispatcher setting: `KEY=VALUE`, the `WEBHOOK_DISPATCHER_` prefix optional.
fn setting(raw: &str) -> Result<(String, String), String> {
    let (k, v) = key_value(raw)?;
    let k = k.trim_start_matches("WEBHOOK_DISPATCHER_");
    if k.is_empty() {
        return Err(format!("{raw:?} has no key"));
    }
    Ok((k.to_owned(), v))
}

/// The dispatcher logs through the global subscriber: JSON lines as the service writes them,
/// but on stderr (stdout carries the report), at `warn` unless RUST_LOG says otherwise (at
/// `info` sqlx logs every statement, which would dominate the measurement).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Runs `load webhook ...`.
pub async fn run(args: &Args, out: Out) -> anyhow::Result<()> {
    let report = match args.scenario {
        Scenario::Throughput {
            events,
            subscriptions,
            runs,
            timeout_secs,
        } => {
            let options = stack_options(args, subscriptions);
            throughput::throughput(
                &options,
                events,
                runs.max(1),
                Duration::from_secs(timeout_secs),
                out,
            )
            .await
        }
        Scenario::Latency {
            rate,
            seconds,
            subscriptions,
            drain_secs,
        } => {
            let options = stack_options(args, subscriptions);
            latency::latency(
                &options,
                rate.max(1),
                seconds.max(1),
                Duration::from_secs(drain_secs),
                out,
            )
            .await
        }
    };
    out.finish(&report);
    Ok(())
}

fn stack_options(cli: &Args, subscriptions: usize) -> StackOptions {
    StackOptions {
        concurrency: cli.concurrency,
        settings: cli.settings.clone(),
        subscriptions: subscriptions.max(1),
        subscription_concurrency: cli.subscription_concurrency,
        sample_activity: cli.sample_activity_ms.map(Duration::from_millis),
        statement_log: cli.log_statements.clone(),
        db_url_params: cli.db_url_params.clone(),
        analyze_every: cli.analyze_every_ms.map(Duration::from_millis),
        dispatcher_binary: cli.dispatcher_bin.clone(),
        history_rows: cli.history_rows,
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
        "history_rows": options.history_rows,
        "dispatcher": options.dispatcher_binary.as_ref().map_or_else(
            || "in this process".to_owned(),
            |p| p.display().to_string()
        ),
        "subscription_max_concurrency": options.subscription_concurrency,
        "db_url_params": options.db_url_params,
        "analyze_every_ms": options.analyze_every.map(|d| d.as_millis() as u64),
        "cores": procfs::cores(),
    })
}

fn config_line(options: &StackOptions) -> String {
    let settings: Vec<String> = options
        .dispatcher_settings()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "dispatcher ({}): {}{}; {} subscription(s), max_concurrency {}{}",
        options.dispatcher_binary.as_ref().map_or_else(
            || "in this process".to_owned(),
            |p| format!("process {}", p.display())
        ),
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
            .map_or_else(|| "default".to_owned(), |c| c.to_string()),
        if options.history_rows > 0 {
            format!("; {} finished deliveries of history", options.history_rows)
        } else {
            String::new()
        }
    )
}

/// A fresh `order.updated` envelope for entity `i`.
fn envelope(i: usize) -> Envelope {
    Envelope::new(
        event_type(),
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

fn event_type() -> EventType {
    EventType::parse(EVENT_TYPE).expect("order.updated is a valid event type")
}

fn subject() -> String {
    events::subject::event_subject(&event_type())
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
/// CPU (this process, nats-server, PostgreSQL) per delivery, in microseconds.
fn cpu_per_delivery(cpu: &Value, deliveries: usize) -> f64 {
    let g = |k: &str| cpu[k].as_f64().unwrap_or(0.0);
    (g("this_process_cpu_secs")
        + g("dispatcher_process_cpu_secs")
        + g("nats_server_cpu_secs")
        + g("postgres_cpu_secs"))
        * 1e6
        / deliveries.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_drop_the_prefix() {
        assert_eq!(
            setting("WEBHOOK_DISPATCHER_DELIVERY__CLAIM_BATCH=500"),
            Ok(("DELIVERY__CLAIM_BATCH".to_owned(), "500".to_owned()))
        );
        assert_eq!(
            setting("DELIVERY__CONCURRENCY=8"),
            Ok(("DELIVERY__CONCURRENCY".to_owned(), "8".to_owned()))
        );
        assert!(setting("WEBHOOK_DISPATCHER_=1").is_err());
    }
}
