//! Fan-out rounds, the same for every surface: publish a burst, wait until every subscriber
//! has its share, and account the time and the CPU of the server, the clients, nats-server and
//! the machine. The surface says how a burst is published.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::args::quiet;
use crate::fleet::{Awaited, Fleet, FleetOptions, Protocol};
use crate::output::num;
use crate::procfs;
use crate::stats::median_by;

/// How the rounds of one side run.
#[derive(Debug, Clone)]
pub struct Rounds<'a> {
    /// The side, for progress lines.
    pub name: &'a str,
    /// Rounds to run.
    pub runs: usize,
    /// Subscribers asked for; a round is complete when every one got its share.
    pub subscribers: usize,
    /// Deliveries each subscriber gets per round.
    pub per_subscriber: u64,
    /// Give up on a round after this long.
    pub timeout: Duration,
    /// Or once nothing was delivered for this long (needs live counts).
    pub stall: Option<Duration>,
    /// The server whose CPU is accounted.
    pub server_pid: u32,
    /// The nats-server, when events go through one.
    pub nats_pid: Option<u32>,
    /// Seconds to wait for a quiet machine before each round.
    pub quiet_wait_secs: u64,
}

/// CPU seconds over one round.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// The server under test.
    pub server: f64,
    /// This process (the clients).
    pub client: f64,
    /// nats-server, when events go through one.
    pub nats: Option<f64>,
    /// The whole machine (every process, kernel included).
    pub machine_busy: f64,
}

/// CPU times at one moment, for [`CpuUse`].
#[derive(Debug, Clone, Copy)]
struct CpuMark {
    server: Duration,
    client: Duration,
    nats: Option<Duration>,
    machine_busy: Duration,
}

impl CpuMark {
    fn take(server_pid: u32, nats_pid: Option<u32>) -> Self {
        Self {
            server: procfs::cpu_time(server_pid).unwrap_or_default(),
            client: procfs::own_cpu_time(),
            nats: nats_pid.and_then(procfs::cpu_time),
            machine_busy: procfs::machine_cpu().0,
        }
    }

    fn since(self, before: Self) -> CpuUse {
        CpuUse {
            server: (self.server - before.server).as_secs_f64(),
            client: (self.client - before.client).as_secs_f64(),
            nats: self
                .nats
                .zip(before.nats)
                .map(|(a, b)| (a - b).as_secs_f64()),
            machine_busy: (self.machine_busy - before.machine_busy).as_secs_f64(),
        }
    }
}

/// One round.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// First publish to last delivery.
    pub seconds: f64,
    /// First publish to the last one sent.
    pub send_seconds: f64,
    /// Deliveries counted.
    pub delivered: u64,
    /// Deliveries asked for: subscribers x per-subscriber share.
    pub expected: u64,
    /// Every subscriber got its share.
    pub complete: bool,
    /// `delivered / seconds`.
    pub delivered_per_second: f64,
    /// CPU over the round.
    pub cpu: CpuUse,
    /// Whether the machine was quiet before the round started.
    pub quiet_before: bool,
}

impl Run {
    /// The round as JSON.
    pub fn json(&self) -> Value {
        let per_message = |cpu: f64| cpu * 1e6 / self.delivered.max(1) as f64;
        json!({"seconds": self.seconds, "send_seconds": self.send_seconds,
               "delivered": self.delivered, "expected": self.expected,
               "complete": self.complete, "delivered_per_second": self.delivered_per_second,
               "server_cpu_seconds": self.cpu.server,
               "client_cpu_seconds": self.cpu.client,
               "nats_cpu_seconds": self.cpu.nats,
               "server_cpu_us_per_message": per_message(self.cpu.server),
               "client_cpu_us_per_message": per_message(self.cpu.client),
               "machine_busy_cpu_seconds": self.cpu.machine_busy,
               "other_cpu_seconds": self.cpu.machine_busy - self.cpu.server - self.cpu.client
                   - self.cpu.nats.unwrap_or(0.0),
               "quiet_before": self.quiet_before})
    }
}

/// Opens `n` subscribers speaking `protocol` and waits (up to 10 minutes) until they are
/// ready; returns the fleet and how many got ready.
pub async fn subscribers(
    name: &str,
    n: usize,
    protocol: impl Protocol,
    options: FleetOptions,
) -> (Fleet, usize) {
    let started = Instant::now();
    let mut fleet = Fleet::spawn(n, protocol, options);
    let ready = fleet
        .wait(Awaited::Ready, Duration::from_secs(600), None, true)
        .await;
    eprintln!(
        "{name}: {} ready in {:.1} s",
        ready.matched,
        started.elapsed().as_secs_f64()
    );
    (fleet, ready.matched)
}

/// Sets `report[ratio]` to the median rate of side `ours` over side `theirs`, and
/// `report["meets_target"]` to whether it reaches `target`, when both sides have a median.
pub fn compare(report: &mut Value, ours: &str, theirs: &str, ratio: &str, target: f64) {
    let key = "median_delivered_per_second";
    if let (Some(a), Some(b)) = (report[ours][key].as_f64(), report[theirs][key].as_f64()) {
        report[ratio] = json!(a / b);
        report["meets_target"] = json!(a / b >= target);
    }
}

/// Runs `rounds.runs` rounds; `publish` sends one burst and returns once it is sent.
pub async fn measure(
    fleet: &mut Fleet,
    rounds: &Rounds<'_>,
    mut publish: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Run>> {
    let mut results = Vec::with_capacity(rounds.runs);
    let expected = rounds.subscribers as u64 * rounds.per_subscriber;
    for run in 1..=rounds.runs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet_before = quiet(rounds.quiet_wait_secs).await;
        let start = fleet.round_start();
        let cpu = CpuMark::take(rounds.server_pid, rounds.nats_pid);
        let t0 = Instant::now();
        publish().await?;
        let send_seconds = t0.elapsed().as_secs_f64();
        let waited = fleet
            .wait(Awaited::RoundDone, rounds.timeout, rounds.stall, false)
            .await;
        let outcome = fleet.round(start, &waited);
        let seconds = outcome
            .last
            .map_or(f64::NAN, |l| l.saturating_duration_since(t0).as_secs_f64());
        let result = Run {
            seconds,
            send_seconds,
            delivered: outcome.delivered,
            expected,
            complete: waited.complete
                && waited.matched == rounds.subscribers
                && outcome.delivered == expected,
            delivered_per_second: if outcome.delivered == 0 {
                0.0
            } else {
                outcome.delivered as f64 / seconds.max(1e-9)
            },
            cpu: CpuMark::take(rounds.server_pid, rounds.nats_pid).since(cpu),
            quiet_before,
        };
        eprintln!(
            "{} run {run}: {:.0} msg/s ({}/{expected} messages in {:.3} s, {}/{} subscribers \
             complete)",
            rounds.name,
            result.delivered_per_second,
            result.delivered,
            result.seconds,
            waited.matched,
            rounds.subscribers
        );
        results.push(result);
    }
    Ok(results)
}

/// The runs, their median, and the problems of one side. The median is of the complete runs;
/// when none completed, of all of them (and `median_of_complete_runs` says so).
pub fn side_json(runs: &[Run], problems: Vec<String>) -> Value {
    let complete: Vec<Run> = runs.iter().copied().filter(|r| r.complete).collect();
    let pool = if complete.is_empty() { runs } else { &complete };
    let median = median_by(pool, |r| r.delivered_per_second);
    json!({
        "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
        "median_delivered_per_second": median.map(|m| m.delivered_per_second),
        "median_run": median.map(|m| m.json()),
        "median_of_complete_runs": median.is_some() && !complete.is_empty(),
        "problems": problems,
    })
}

/// Human lines of one side of [`side_json`]: the runs and the median run's figures. `label`
/// is the side's name padded for the report, `indent` the continuation lines' indent.
pub fn side_lines(label: &str, indent: &str, side: &Value, cpus: f64) -> Vec<String> {
    let runs: Vec<String> = side["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|run| {
            format!(
                "{}{}",
                num(&run["delivered_per_second"], 0),
                if run["complete"] == true {
                    String::new()
                } else {
                    format!(" (incomplete: {}/{})", run["delivered"], run["expected"])
                }
            )
        })
        .collect();
    let mut lines = vec![format!(
        "  {label}: median {} msg/s{} (runs: {})",
        num(&side["median_delivered_per_second"], 0),
        if side["median_of_complete_runs"] == false && !side["median_run"].is_null() {
            " of incomplete runs"
        } else {
            ""
        },
        runs.join(", ")
    )];
    let mr = &side["median_run"];
    if !mr.is_null() {
        lines.push(format!(
            "{indent}median run: {} s (publish {} s); CPU s: server {}, clients {}{}, other {}, \
             machine busy {} of {:.2}; CPU per message: server {} us, clients {} us",
            num(&mr["seconds"], 3),
            num(&mr["send_seconds"], 3),
            num(&mr["server_cpu_seconds"], 2),
            num(&mr["client_cpu_seconds"], 2),
            mr["nats_cpu_seconds"]
                .as_f64()
                .map_or_else(String::new, |v| format!(", nats-server {v:.2}")),
            num(&mr["other_cpu_seconds"], 2),
            num(&mr["machine_busy_cpu_seconds"], 2),
            mr["seconds"].as_f64().unwrap_or(0.0) * cpus,
            num(&mr["server_cpu_us_per_message"], 2),
            num(&mr["client_cpu_us_per_message"], 2),
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: f64, complete: bool) -> Run {
        Run {
            seconds: 1.0,
            send_seconds: 0.5,
            delivered: rate as u64,
            expected: 100,
            complete,
            delivered_per_second: rate,
            cpu: CpuUse {
                server: 0.5,
                client: 0.25,
                nats: None,
                machine_busy: 1.0,
            },
            quiet_before: true,
        }
    }

    #[test]
    fn median_prefers_complete_runs() {
        let side = side_json(
            &[run(10.0, false), run(100.0, true), run(90.0, true)],
            vec![],
        );
        assert_eq!(side["median_delivered_per_second"], 100.0);
        assert_eq!(side["median_of_complete_runs"], true);
        let side = side_json(&[run(10.0, false), run(20.0, false)], vec![]);
        assert_eq!(side["median_delivered_per_second"], 20.0);
        assert_eq!(side["median_of_complete_runs"], false);
        assert_eq!(side_json(&[], vec![])["median_run"], Value::Null);
    }

    #[test]
    fn run_json_accounts_other_cpu() {
        let json = run(100.0, true).json();
        assert_eq!(json["other_cpu_seconds"], 0.25);
        assert_eq!(json["server_cpu_us_per_message"], 5000.0);
    }
}
