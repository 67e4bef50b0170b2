//! What `/proc` says about processes and the machine: resident memory, CPU time, open-file
//! limits. Every figure of every surface is read through here.

use std::collections::BTreeMap;
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`...), or a count (`Threads`).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS").map(|kib| kib * 1024)
}

/// `/proc/<pid>/smaps_rollup` as `(field, KiB)` pairs (`Rss`, `Anonymous`, `Private_Dirty`...).
pub fn smaps_rollup(pid: u32) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let kib = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.trim().to_owned(), kib))
        })
        .collect()
}

/// The parts of a `/proc/.../stat` line the tool uses.
struct Stat {
    comm: String,
    ppid: u32,
    cpu: Duration,
}

fn stat(path: &str) -> Option<Stat> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    // Fields after the command name (which may hold spaces) start at field 3 (`state`);
    // ppid is field 4, utime and stime are fields 14 and 15.
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        comm,
        ppid,
        cpu: Duration::from_secs_f64((utime + stime) / CLK_TCK),
    })
}

/// User + system CPU time the process has used so far (its exited threads included).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    stat(&format!("/proc/{pid}/stat")).map(|s| s.cpu)
}

/// CPU time this process has used so far.
pub fn own_cpu_time() -> Duration {
    cpu_time(std::process::id()).unwrap_or_default()
}

/// CPU time of this process's live threads, summed by thread name.
pub fn own_threads_cpu() -> BTreeMap<String, Duration> {
    let mut threads = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for entry in dir.flatten() {
        if let Some(s) = stat(&format!("{}/stat", entry.path().display())) {
            *threads.entry(s.comm).or_default() += s.cpu;
        }
    }
    threads
}

/// Child processes of this one whose command name passes `wanted`.
fn children(wanted: impl Fn(&str) -> bool) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let s = stat(&format!("/proc/{pid}/stat"))?;
            (s.ppid == me && wanted(&s.comm)).then_some(pid)
        })
        .collect()
}

/// Child processes of this one whose command name starts with `prefix`.
pub fn children_named(prefix: &str) -> Vec<u32> {
    children(|comm| comm.starts_with(prefix))
}

/// A child process of this one whose command name is `name`.
pub fn child_named(name: &str) -> Option<u32> {
    children(|comm| comm == name).into_iter().next()
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, all CPUs summed); busy
/// is everything but `idle` and `iowait`.
pub fn machine_cpu() -> (Duration, Duration) {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return (Duration::ZERO, Duration::ZERO);
    };
    let ticks: Vec<f64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (
        Duration::from_secs_f64((total - idle) / CLK_TCK),
        Duration::from_secs_f64(total / CLK_TCK),
    )
}

/// Waits until the machine is quiet: busy below `threshold` (fraction of all CPUs) over a
/// 2-second window, for at most `limit`. Returns whether it got quiet. Other processes (a
/// compiler in the same VM) would otherwise take CPU from both sides of a comparison.
pub async fn wait_quiet(threshold: f64, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut told = false;
    loop {
        let (b0, t0) = machine_cpu();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (b1, t1) = machine_cpu();
        let busy = (b1 - b0).as_secs_f64() / (t1 - t0).as_secs_f64().max(1e-9);
        if busy < threshold {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "  machine still {:.0} % busy; measuring anyway (see other_cpu_seconds)",
                busy * 100.0
            );
            return false;
        }
        if !told {
            eprintln!(
                "  machine {:.0} % busy with other work; waiting for it to settle",
                busy * 100.0
            );
            told = true;
        }
    }
}

/// `(soft, hard)` limits on open files of this process (`/proc/self/limits`); `u64::MAX` is
/// unlimited.
fn open_files_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line.split_whitespace().skip(3);
    let value = |f: Option<&str>| match f? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    let soft = value(fields.next())?;
    Some((soft, value(fields.next())?))
}

/// Makes room for `connections` client sockets: raises the soft limit on open files up to the
/// hard limit (with `prlimit(1)`, as the tool forbids `unsafe`, so no direct `setrlimit`), then
/// warns when it is still too low. Best effort.
pub fn make_room_for(connections: usize) {
    let wanted = connections as u64 + 1000;
    if let Some((soft, hard)) = open_files_limits()
        && soft < wanted
        && soft < hard
    {
        let target = wanted.max(65_536).min(hard);
        let hard = if hard == u64::MAX {
            "unlimited".to_owned()
        } else {
            hard.to_string()
        };
        let _ = std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={target}:{hard}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    if let Some((limit, _)) = open_files_limits()
        && (limit as usize) < connections + 200
    {
        eprintln!(
            "warning: `ulimit -n` is {limit}; {connections} client connections need more \
             (run `ulimit -n {wanted}` first)"
        );
    }
}

/// Polls RSS once a second until three consecutive readings agree within 0.5 % (or `limit`
/// passes); returns the last reading in bytes.
pub async fn stable_rss(pid: u32, limit: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + limit;
    let mut readings: Vec<u64> = Vec::new();
    loop {
        let rss = rss_bytes(pid).unwrap_or(0);
        readings.push(rss);
        if let [.., a, b, c] = readings.as_slice() {
            let lo = (*a).min(*b).min(*c) as f64;
            let hi = (*a).max(*b).max(*c) as f64;
            if hi - lo <= hi * 0.005 {
                return rss;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return rss;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The machine a measurement ran on: CPUs, CPU model, memory, kernel.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    serde_json::json!({
        "cpus": cores(),
        "cpu_model": cpu,
        "mem_bytes": mem_kib * 1024,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    })
}

/// CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(rss_bytes(pid).unwrap() > 0);
        assert!(status_field(pid, "Threads").unwrap() >= 1);
        assert!(cpu_time(pid).is_some());
        assert!(!own_threads_cpu().is_empty());
        assert!(child_named("no-such-child").is_none());
        let (busy, total) = machine_cpu();
        assert!(busy <= total && total > Duration::ZERO);
        assert!(open_files_limits().unwrap().0 > 0);
        assert!(smaps_rollup(pid).iter().any(|(k, _)| k == "Rss"));
    }
}
