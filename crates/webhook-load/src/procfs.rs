//! CPU accounting from `/proc`: this process per thread name, the `nats-server` child, the
//! PostgreSQL processes serving the test database (plus the cluster's background processes),
//! and the whole machine.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

/// Linux reports `/proc/*/stat` times in USER_HZ, 100 on every mainstream architecture.
const TICKS_PER_SEC: f64 = 100.0;

/// A PostgreSQL process to account, with the group it is reported under.
#[derive(Debug, Clone)]
pub struct PgProcess {
    pub pid: i32,
    pub group: String,
}

/// CPU ticks at one moment.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    at: Instant,
    /// This process, exited threads included.
    process: u64,
    /// This process: thread name → ticks (live threads).
    threads: BTreeMap<String, u64>,
    /// `nats-server` children of this process.
    nats: u64,
    /// PostgreSQL: pid → (group, ticks).
    postgres: BTreeMap<i32, (String, u64)>,
    /// Whole machine: (busy, total) jiffies.
    machine: (u64, u64),
}

/// `(comm, ppid, utime + stime)` of a `/proc/.../stat` file.
fn read_stat(path: &str) -> Option<(String, i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, ppid, utime + stime))
}

fn machine() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Takes a snapshot; `postgres` lists the PostgreSQL processes to account.
pub fn snapshot(postgres: &[PgProcess]) -> CpuSnapshot {
    let me = std::process::id();
    let mut threads = BTreeMap::new();
    // The whole process, exited threads included.
    let process = read_stat("/proc/self/stat").map_or(0, |(_, _, t)| t);
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let path = format!("{}/stat", entry.path().display());
            if let Some((comm, _, ticks)) = read_stat(&path) {
                *threads.entry(comm).or_insert(0) += ticks;
            }
        }
    }
    let mut nats = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((comm, ppid, ticks)) = read_stat(&format!("/proc/{pid}/stat"))
                && ppid == me as i32
                && comm.starts_with("nats-server")
            {
                nats += ticks;
            }
        }
    }
    let postgres = postgres
        .iter()
        .filter_map(|p| {
            read_stat(&format!("/proc/{}/stat", p.pid))
                .map(|(_, _, t)| (p.pid, (p.group.clone(), t)))
        })
        .collect();
    CpuSnapshot {
        at: Instant::now(),
        process,
        threads,
        nats,
        postgres,
        machine: machine(),
    }
}

/// CPU seconds spent between two snapshots, as JSON, plus a one-line summary.
pub fn delta(before: &CpuSnapshot, after: &CpuSnapshot) -> (Value, String) {
    let secs = |ticks: u64| ticks as f64 / TICKS_PER_SEC;
    let wall = after.at.duration_since(before.at).as_secs_f64();
    let mut threads = serde_json::Map::new();
    let process_total = after.process.saturating_sub(before.process);
    let mut live = 0;
    for (name, t) in &after.threads {
        let d = t.saturating_sub(before.threads.get(name).copied().unwrap_or(0));
        live += d;
        if d > 0 {
            threads.insert(name.clone(), json!(secs(d)));
        }
    }
    // Threads that ended in between (the publisher): the process total minus the live ones.
    let gone = process_total.saturating_sub(live);
    if gone > 0 {
        threads.insert("exited threads (publisher)".to_owned(), json!(secs(gone)));
    }
    let mut pg_groups: BTreeMap<String, u64> = BTreeMap::new();
    for (pid, (group, t)) in &after.postgres {
        let d = t.saturating_sub(before.postgres.get(pid).map_or(0, |(_, b)| *b));
        *pg_groups.entry(group.clone()).or_insert(0) += d;
    }
    let pg_total: u64 = pg_groups.values().sum();
    let nats = after.nats.saturating_sub(before.nats);
    let busy = after.machine.0.saturating_sub(before.machine.0);
    let total = after.machine.1.saturating_sub(before.machine.1).max(1);
    let json = json!({
        "wall_secs": wall,
        "machine_busy_pct": 100.0 * busy as f64 / total as f64,
        "this_process_cpu_secs": secs(process_total),
        "this_process_threads_cpu_secs": threads,
        "nats_server_cpu_secs": secs(nats),
        "postgres_cpu_secs": secs(pg_total),
        "postgres_groups_cpu_secs": pg_groups.iter().map(|(k, v)| (k.clone(), json!(secs(*v)))).collect::<serde_json::Map<_, _>>(),
    });
    let mut line = format!(
        "CPU over {wall:.1} s: machine {:.0}% busy of {} cores; this process {:.1} s (",
        100.0 * busy as f64 / total as f64,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        secs(process_total)
    );
    let parts: Vec<String> = threads
        .iter()
        .map(|(k, v)| format!("{k} {:.1}", v.as_f64().unwrap_or(0.0)))
        .collect();
    line.push_str(&parts.join(", "));
    line.push_str(&format!(
        "), nats-server {:.1} s, postgres {:.1} s (",
        secs(nats),
        secs(pg_total)
    ));
    let parts: Vec<String> = pg_groups
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k} {:.1}", secs(*v)))
        .collect();
    line.push_str(&parts.join(", "));
    line.push(')');
    (json, line)
}
