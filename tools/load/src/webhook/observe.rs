//! What the database did during a measurement: activity counters per delivery, the sampled
//! `pg_stat_activity`, the periodic ANALYZE, and the statement log summary.

use serde_json::{Value, json};

use super::cpu::{self, CpuSnapshot};
use super::stack::{Stack, StackOptions};
use super::{cpu_per_delivery, pgstats};
use crate::output::Out;

/// The observation of one measured interval, opened once the stack is up.
#[derive(Debug)]
pub struct Window {
    calibration: f64,
    pg_before: pgstats::Counters,
    cpu_before: CpuSnapshot,
    sampler: Option<Sampler>,
    log_from: u64,
}

/// A [`Window`] whose interval ended; the database counters are read once the dispatcher
/// stopped.
#[derive(Debug)]
pub struct Ended {
    calibration: f64,
    pg_before: pgstats::Counters,
    cpu: Value,
    cpu_line: String,
    activity: Value,
    statements: Value,
}

/// Everything a [`Window`] saw.
#[derive(Debug)]
pub struct Observed {
    calibration: f64,
    cpu: Value,
    cpu_line: String,
    postgres: Value,
    activity: Value,
    statements: Value,
}

impl Window {
    /// Starts observing `stack`; `calibration` is the reference loop measured before it
    /// started (see [`super::calibrate`]).
    pub async fn open(stack: &Stack, options: &StackOptions, calibration: f64) -> Self {
        Self {
            calibration,
            pg_before: pgstats::snapshot(&stack.observer).await,
            cpu_before: cpu::snapshot(&pgstats::processes(&stack.observer).await),
            sampler: start_sampler(stack, options),
            log_from: log_offset(options),
        }
    }

    /// Ends the measured interval: CPU up to now, the sampler and the statement log (printing
    /// their top entries).
    pub async fn end(self, stack: &Stack, options: &StackOptions, out: Out) -> Ended {
        let cpu_after = cpu::snapshot(&pgstats::processes(&stack.observer).await);
        let activity = finish_sampler(self.sampler, out).await;
        let statements = statement_summary(options, self.log_from, &stack.database_name(), out);
        let (cpu, cpu_line) = cpu::delta(&self.cpu_before, &cpu_after);
        Ended {
            calibration: self.calibration,
            pg_before: self.pg_before,
            cpu,
            cpu_line,
            activity,
            statements,
        }
    }
}

impl Ended {
    /// Stops the dispatcher (its connections flush their statistics) and reads the database
    /// counters: before the tool's own verification queries, which scan this run's rows
    /// (history included) and are not the dispatcher's work.
    pub async fn counters(self, stack: &mut Stack) -> Observed {
        stack.stop_dispatcher().await;
        let pg_after = pgstats::snapshot(&stack.observer).await;
        Observed {
            calibration: self.calibration,
            cpu: self.cpu,
            cpu_line: self.cpu_line,
            postgres: pgstats::delta(&self.pg_before, &pg_after),
            activity: self.activity,
            statements: self.statements,
        }
    }
}

impl Observed {
    /// Prints the CPU and PostgreSQL lines, per delivery.
    pub fn lines(&self, deliveries: usize, out: Out) {
        out.line(format!(
            "{}; CPU per delivery {:.0} µs; reference loop {:.0} ms",
            self.cpu_line,
            cpu_per_delivery(&self.cpu, deliveries),
            self.calibration
        ));
        out.line(pg_line(&self.postgres, deliveries));
    }

    /// Adds the figures to `report`.
    pub fn add_to(self, report: &mut Value, deliveries: usize) {
        report["calibration_ms"] = json!(self.calibration);
        report["cpu_us_per_delivery"] = json!(cpu_per_delivery(&self.cpu, deliveries));
        report["cpu"] = self.cpu;
        report["postgres"] = self.postgres;
        report["pg_activity"] = self.activity;
        report["pg_statements"] = self.statements;
    }
}

/// A running `pg_stat_activity` sampler (and ANALYZE loop): its stop token and its result.
pub type Sampler = (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Value>,
);

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
fn start_sampler(stack: &Stack, options: &StackOptions) -> Option<Sampler> {
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
async fn finish_sampler(sampler: Option<Sampler>, out: Out) -> Value {
    let Some((stop, task)) = sampler else {
        return Value::Null;
    };
    stop.cancel();
    let activity = task.await.unwrap_or(Value::Null);
    if activity.is_null() {
        return activity;
    }
    out.line(format!(
        "pg_stat_activity: {} samples every {} ms, {:.2} dispatcher statements active on average; top:",
        activity["samples"],
        activity["interval_ms"],
        activity["active_backends_avg"].as_f64().unwrap_or(0.0)
    ));
    let total: f64 = activity["top"].as_array().map_or(0.0, |t| {
        t.iter().filter_map(|e| e["samples"].as_f64()).sum()
    });
    for e in activity["top"].as_array().into_iter().flatten().take(10) {
        out.line(format!(
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
fn statement_summary(options: &StackOptions, from: u64, database: &str, out: Out) -> Value {
    let Some(path) = &options.statement_log else {
        return Value::Null;
    };
    let summary = pgstats::statement_log(path, from, database);
    out.line(format!(
        "statement log ({database}): {} statements, {:.2} s in total; top by total time:",
        summary["statements"],
        summary["total_ms"].as_f64().unwrap_or(0.0) / 1000.0
    ));
    for e in summary["top"].as_array().into_iter().flatten().take(12) {
        out.line(format!(
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
