//! Idle memory, the same for every surface: resident memory of the server before, with N
//! connected clients, and with them also subscribed (`VmRSS` once stable), then after they
//! closed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::metric;

use crate::args::quiet;
use crate::fleet::{Awaited, Fleet, FleetOptions, Phase, Protocol};
use crate::gateway;
use crate::output::{kib, num};
use crate::procfs;

/// Smaps fields reported.
const SMAPS: [&str; 6] = [
    "Rss",
    "Pss",
    "Anonymous",
    "Private_Dirty",
    "Shared_Clean",
    "Private_Clean",
];

/// One idle measurement.
#[derive(Debug, Clone)]
pub struct Idle<'a> {
    /// The side, for progress lines.
    pub name: &'a str,
    /// The server process.
    pub pid: u32,
    /// Connections to open.
    pub connections: usize,
    /// What they are, for progress lines (`/admin connections`).
    pub what: &'a str,
    /// Subscribe them once connected, and read RSS again.
    pub subscribe: bool,
    /// How long the connections may take.
    pub ready_timeout: Duration,
    /// Seconds to wait for a quiet machine before the first reading.
    pub quiet_wait_secs: u64,
    /// The server's gauges, when it has them.
    pub gauges: Option<Gauges<'a>>,
}

/// The server's Prometheus gauges of connections and subscriptions.
#[derive(Debug, Clone)]
pub struct Gauges<'a> {
    /// `http://<addr>/metrics`.
    pub url: String,
    /// `(name, label)` of the connections gauge.
    pub connections: (&'a str, &'a str),
    /// `(name, label)` of the subscriptions gauge.
    pub subscriptions: Option<(&'a str, &'a str)>,
}

impl Gauges<'_> {
    async fn read(&self, (name, label): (&str, &str)) -> f64 {
        metric(&gateway::metrics(&self.url).await, name, label)
    }
}

fn smaps_json(pid: u32) -> Value {
    procfs::smaps_rollup(pid)
        .into_iter()
        .filter(|(k, _)| SMAPS.contains(&k.as_str()))
        .map(|(k, v)| (format!("{k}_kib"), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Measures `idle.connections` clients speaking `protocol` against the server `idle.pid`.
pub async fn measure(idle: &Idle<'_>, protocol: impl Protocol, options: FleetOptions) -> Value {
    let Idle {
        name,
        pid,
        connections: n,
        ..
    } = *idle;
    tokio::time::sleep(Duration::from_secs(2)).await;
    quiet(idle.quiet_wait_secs).await;
    let rss_before = procfs::stable_rss(pid, Duration::from_secs(20)).await;
    let smaps_before = smaps_json(pid);
    eprintln!(
        "{name}: ready, pid {pid}, RSS {} KiB; opening {n} {}",
        rss_before / 1024,
        idle.what
    );

    let started = Instant::now();
    let mut fleet = Fleet::spawn(n, protocol, options);
    let ready = fleet
        .wait(Awaited::Ready, idle.ready_timeout, None, true)
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = ready.matched;
    eprintln!("{name}: {connected} connected in {connect_seconds:.1} s; waiting for a stable RSS");
    let rss_connected = procfs::stable_rss(pid, Duration::from_secs(30)).await;
    let smaps_connected = smaps_json(pid);
    let connections_gauge = match &idle.gauges {
        Some(g) => Some(g.read(g.connections).await),
        None => None,
    };

    let mut subscribed = Value::Null;
    let mut smaps_subscribed = Value::Null;
    if idle.subscribe && connected > 0 {
        fleet.set_phase(Phase::Subscribe);
        let acks = fleet
            .wait(Awaited::Subscribed, Duration::from_secs(300), None, true)
            .await;
        let rss = procfs::stable_rss(pid, Duration::from_secs(30)).await;
        smaps_subscribed = smaps_json(pid);
        let gauge = match idle
            .gauges
            .as_ref()
            .and_then(|g| Some((g, g.subscriptions?)))
        {
            Some((g, which)) => Some(g.read(which).await),
            None => None,
        };
        subscribed = json!({
            "connections": acks.matched,
            "rss_bytes": rss,
            "bytes_per_connection": rss.saturating_sub(rss_before) as f64
                / acks.matched.max(1) as f64,
            "subscriptions_gauge": gauge,
        });
    }
    let threads = procfs::status_field(pid, "Threads");
    let hwm = procfs::status_field(pid, "VmHWM").map(|k| k * 1024);
    let client_rss = procfs::rss_bytes(std::process::id());
    let problems = fleet.problem_lines();
    fleet.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_closed = procfs::stable_rss(pid, Duration::from_secs(20)).await;

    let per = rss_connected.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    eprintln!("{name}: {per:.0} B per connected socket");
    json!({
        "pid": pid,
        "connections_open": connected,
        "connections_gauge": connections_gauge,
        "connect_seconds": connect_seconds,
        "rss_before_bytes": rss_before,
        "rss_connected_bytes": rss_connected,
        "bytes_per_connection_connected": per,
        "subscribed": subscribed,
        "bytes_per_connection_subscribed": subscribed["bytes_per_connection"],
        "rss_after_close_bytes": rss_closed,
        "vm_hwm_bytes": hwm,
        "threads": threads,
        "client_rss_bytes": client_rss,
        "smaps_rollup": {"before": smaps_before, "connected": smaps_connected,
                         "subscribed": smaps_subscribed},
        "problems": problems,
    })
}

/// Human lines of one side of [`measure`]; `label` is the side's name padded for the report,
/// `indent` the continuation line's indent.
pub fn lines(label: &str, indent: &str, side: &Value) -> Vec<String> {
    if let Some(e) = side["error"].as_str() {
        return vec![format!("  {label}: error: {e}")];
    }
    let gauge = side["connections_gauge"]
        .as_f64()
        .map_or_else(String::new, |g| format!(" (server gauge {g})"));
    vec![
        format!(
            "  {label}: {} open in {:.1} s{gauge}; RSS before {}, connected {}, subscribed {}, \
             after close {} (peak {}, {} threads)",
            side["connections_open"],
            side["connect_seconds"].as_f64().unwrap_or(0.0),
            kib(&side["rss_before_bytes"]),
            kib(&side["rss_connected_bytes"]),
            kib(&side["subscribed"]["rss_bytes"]),
            kib(&side["rss_after_close_bytes"]),
            kib(&side["vm_hwm_bytes"]),
            side["threads"],
        ),
        format!(
            "{indent}per connection: connected {} B, connected + subscribed {} B; client \
             process RSS {}",
            num(&side["bytes_per_connection_connected"], 0),
            num(&side["bytes_per_connection_subscribed"], 0),
            kib(&side["client_rss_bytes"]),
        ),
    ]
}
