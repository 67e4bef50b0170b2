//! Where the CPU went during a measurement: this process per thread name, the `nats-server`
//! children, the PostgreSQL processes serving the test database (plus the cluster's background
//! processes), and the whole machine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procfs;

/// A PostgreSQL process to account, with the group it is reported under.
#[derive(Debug, Clone)]
pub struct PgProcess {
    pub pid: i32,
    pub group: String,
}

/// CPU times at one moment.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    /// This process, exited threads included.
    process: Duration,
    /// This process: thread name → CPU time (live threads).
    threads: BTreeMap<String, Duration>,
    /// `nats-server` children of this process.
    nats: Duration,
    /// A `webhook-dispatcher` child process, when it runs as one.
    dispatcher: Duration,
    /// PostgreSQL: pid → (group, CPU time).
    postgres: BTreeMap<i32, (String, Duration)>,
    /// Whole machine: (busy, total).
    machine: (Duration, Duration),
}

/// Takes a snapshot; `postgres` lists the PostgreSQL processes to account.
pub fn snapshot(postgres: &[PgProcess]) -> CpuSnapshot {
    CpuSnapshot {
        at: Instant::now(),
        process: procfs::own_cpu_time(),
        threads: procfs::own_threads_cpu(),
        nats: procfs::children_named("nats-server")
            .into_iter()
            .filter_map(procfs::cpu_time)
            .sum(),
        // `comm` is cut at 15 bytes.
        dispatcher: procfs::children_named("webhook-dispatc")
            .into_iter()
            .filter_map(procfs::cpu_time)
            .sum(),
        postgres: postgres
            .iter()
            .filter_map(|p| {
                let cpu = procfs::cpu_time(u32::try_from(p.pid).ok()?)?;
                Some((p.pid, (p.group.clone(), cpu)))
            })
            .collect(),
        machine: procfs::machine_cpu(),
    }
}

/// CPU seconds spent between two snapshots, as JSON, plus a one-line summary.
pub fn delta(before: &CpuSnapshot, after: &CpuSnapshot) -> (Value, String) {
    let wall = after.at.duration_since(before.at).as_secs_f64();
    let mut threads = serde_json::Map::new();
    let process_total = after.process.saturating_sub(before.process);
    let mut live = Duration::ZERO;
    for (name, t) in &after.threads {
        let d = t.saturating_sub(before.threads.get(name).copied().unwrap_or_default());
        live += d;
        if !d.is_zero() {
            threads.insert(name.clone(), json!(d.as_secs_f64()));
        }
    }
    // Threads that ended in between (the publisher): the process total minus the live ones.
    let gone = process_total.saturating_sub(live);
    if !gone.is_zero() {
        threads.insert(
            "exited threads (publisher)".to_owned(),
            json!(gone.as_secs_f64()),
        );
    }
    let mut pg_groups: BTreeMap<String, Duration> = BTreeMap::new();
    for (pid, (group, t)) in &after.postgres {
        let d = t.saturating_sub(before.postgres.get(pid).map_or(Duration::ZERO, |(_, b)| *b));
        *pg_groups.entry(group.clone()).or_default() += d;
    }
    let pg_total: Duration = pg_groups.values().sum();
    let nats = after.nats.saturating_sub(before.nats);
    let dispatcher = after.dispatcher.saturating_sub(before.dispatcher);
    let busy = after.machine.0.saturating_sub(before.machine.0);
    let total = after
        .machine
        .1
        .saturating_sub(before.machine.1)
        .max(Duration::from_millis(10));
    let busy_pct = 100.0 * busy.as_secs_f64() / total.as_secs_f64();
    let json = json!({
        "wall_secs": wall,
        "machine_busy_pct": busy_pct,
        "this_process_cpu_secs": process_total.as_secs_f64(),
        "this_process_threads_cpu_secs": threads,
        "nats_server_cpu_secs": nats.as_secs_f64(),
        "dispatcher_process_cpu_secs": dispatcher.as_secs_f64(),
        "postgres_cpu_secs": pg_total.as_secs_f64(),
        "postgres_groups_cpu_secs": pg_groups
            .iter()
            .map(|(k, v)| (k.clone(), json!(v.as_secs_f64())))
            .collect::<serde_json::Map<_, _>>(),
    });
    let thread_parts: Vec<String> = threads
        .iter()
        .map(|(k, v)| format!("{k} {:.1}", v.as_f64().unwrap_or(0.0)))
        .collect();
    let pg_parts: Vec<String> = pg_groups
        .iter()
        .filter(|(_, v)| !v.is_zero())
        .map(|(k, v)| format!("{k} {:.1}", v.as_secs_f64()))
        .collect();
    let line = format!(
        "CPU over {wall:.1} s: machine {busy_pct:.0}% busy of {} cores; this process {:.1} s ({}), \
         {}nats-server {:.1} s, postgres {:.1} s ({})",
        procfs::cores(),
        process_total.as_secs_f64(),
        thread_parts.join(", "),
        if dispatcher.is_zero() {
            String::new()
        } else {
            format!("dispatcher process {:.1} s, ", dispatcher.as_secs_f64())
        },
        nats.as_secs_f64(),
        pg_total.as_secs_f64(),
        pg_parts.join(", "),
    );
    (json, line)
}
