//! `ws-load`: measures a release `gateway-ws` process.
//!
//! - `idle`: resident memory per authenticated idle connection (connected, then also
//!   subscribed), from `/proc/<pid>/status` `VmRSS`.
//! - `fanout`: messages delivered per second to S subscribers of `order_changes` for E events
//!   published on NATS, against a bare tokio-tungstenite broadcast server driven by the same
//!   clients.
//!
//! The tool starts its own `nats-server` (via `test-support`), puts one connect-redis session
//! in Redis, and starts the gateway binary with connection caps above the test size. All
//! clients live in this process: raise `ulimit -n` above the connection count.
//!
//! See `docs/benchmarks.md` for the commands and figures.

// A measurement tool: a broken setup (no Redis, no nats-server, no gateway binary) should stop
// it loudly, and its report goes to stdout/stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod baseline;
mod client;
use test_support::{metric, procfs};
mod stack;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use events::surface::{ws_message, ws_route};
use events::{Envelope, EventType};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

use baseline::Baseline;
use client::{Awaited, Fleet, FleetOptions, Phase};
use stack::{GatewayOptions, Stack};

/// Target: resident bytes per idle connection.
const IDLE_TARGET_BYTES: f64 = 6.0 * 1024.0;
/// Target: gateway throughput as a fraction of the baseline's.
const FANOUT_TARGET_RATIO: f64 = 0.70;
/// NATS subject the events are published on (`events.<domain>.<event_type>`).
const SUBJECT: &str = "events.order.updated";

#[derive(Debug, Parser)]
#[command(about = "Load measurements for gateway-ws (idle memory, fan-out throughput)")]
struct Cli {
    /// Print one JSON object on stdout (the human-readable report goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    /// The release gateway binary.
    #[arg(long, global = true, default_value = "target/release/gateway-ws")]
    gateway_bin: PathBuf,
    /// Redis holding the test session.
    #[arg(
        long,
        global = true,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// WebSocket handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 200)]
    concurrency: usize,
    /// Broadcast ring capacity of both servers (the gateway's `LIMITS__OUTBOUND_QUEUE`).
    #[arg(long, global = true, default_value_t = 4096)]
    queue: usize,
    /// tungstenite read buffer of each client connection, in bytes.
    #[arg(long, global = true, default_value_t = 4096)]
    client_read_buffer: usize,
    /// Before each fan-out run and RSS reading, wait up to this many seconds for the machine to
    /// be less than 15 % busy (0: do not wait).
    #[arg(long, global = true, default_value_t = 600)]
    quiet_wait_secs: u64,
    /// Extra environment for the gateway process, `KEY=VALUE` (repeatable), e.g.
    /// `MALLOC_ARENA_MAX=2`.
    #[arg(long = "gateway-env", global = true, value_parser = parse_env)]
    gateway_env: Vec<(String, String)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resident memory per authenticated idle connection.
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Measure connected-only connections; do not subscribe them afterwards.
        #[arg(long)]
        no_subscribe: bool,
    },
    /// Delivered messages per second, gateway versus a bare tokio-tungstenite server.
    Fanout {
        /// Subscribed clients.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Events per run.
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Approximate size of the event's `data` JSON in bytes.
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        /// Runs per side; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Which sides to measure.
        #[arg(long, value_enum, default_value_t = Sides::Both)]
        sides: Sides,
        /// The baseline server's per-connection loop: `bare` is the baseline; the others
        /// reproduce or trim the gateway's loop to locate its CPU cost.
        #[arg(long, value_enum, default_value_t = baseline::Loop::Bare)]
        baseline_loop: baseline::Loop,
    },
    /// The baseline server process that `fanout` starts (driven over stdin/stdout).
    #[command(hide = true)]
    ServeBaseline {
        /// Ring capacity.
        #[arg(long)]
        queue: usize,
        /// Per-connection loop.
        #[arg(long, value_enum)]
        baseline_loop: baseline::Loop,
        /// First frame of every connection.
        #[arg(long)]
        connected: String,
        /// The frame broadcast.
        #[arg(long)]
        frame: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sides {
    Both,
    Gateway,
    Baseline,
}

fn parse_env(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let connections = match &cli.command {
        Command::Idle { connections, .. } => *connections,
        Command::Fanout { subscribers, .. } => *subscribers,
        Command::ServeBaseline {
            queue,
            baseline_loop,
            connected,
            frame,
        } => {
            baseline::serve_process(*queue, *baseline_loop, connected.clone(), frame.clone()).await;
            return;
        }
    };
    if let Some(limit) = procfs::open_files_soft_limit()
        && (limit as usize) < connections + 200
    {
        eprintln!(
            "warning: `ulimit -n` is {limit}; {connections} client connections need more \
             (run `ulimit -n {}` first)",
            connections + 1000
        );
    }
    let mut report = match &cli.command {
        Command::Idle {
            connections,
            no_subscribe,
        } => idle(&cli, *connections, !*no_subscribe).await,
        Command::Fanout {
            subscribers,
            events,
            payload_bytes,
            runs,
            sides,
            baseline_loop,
        } => {
            let shape = Shape {
                subscribers: *subscribers,
                events: *events,
                payload_bytes: *payload_bytes,
                runs: *runs,
            };
            fanout(&cli, shape, *sides, *baseline_loop).await
        }
        Command::ServeBaseline { .. } => return,
    };
    report["machine"] = procfs::machine();
    let text = human(&report);
    if cli.json {
        eprintln!("{text}");
        println!("{report}");
    } else {
        println!("{text}");
    }
}

fn gateway_options(cli: &Cli, connections: usize) -> GatewayOptions {
    GatewayOptions {
        bin: cli.gateway_bin.clone(),
        redis_url: cli.redis_url.clone(),
        connections,
        outbound_queue: cli.queue,
        extra_env: cli.gateway_env.clone(),
    }
}

fn fleet_options(cli: &Cli, url: String, cookie: Option<String>) -> FleetOptions {
    FleetOptions {
        url,
        cookie,
        subscribe_on_connect: false,
        per_round: 0,
        read_buffer: cli.client_read_buffer,
        concurrency: cli.concurrency,
    }
}

fn smaps_json(pid: u32) -> Value {
    let wanted = [
        "Rss",
        "Pss",
        "Anonymous",
        "Private_Dirty",
        "Shared_Clean",
        "Private_Clean",
    ];
    procfs::smaps_rollup(pid)
        .into_iter()
        .filter(|(k, _)| wanted.contains(&k.as_str()))
        .map(|(k, v)| (format!("{k}_kib"), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn idle(cli: &Cli, n: usize, subscribe: bool) -> Value {
    eprintln!(
        "starting nats-server and gateway ({})",
        cli.gateway_bin.display()
    );
    let stack = Stack::start(&gateway_options(cli, n)).await;
    let pid = stack.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    quiet(cli).await;
    let rss_before = procfs::stable_rss(pid, Duration::from_secs(20)).await;
    let smaps_before = smaps_json(pid);
    eprintln!(
        "gateway ready, pid {pid}, RSS {} KiB; opening {n} connections",
        rss_before / 1024
    );

    let started = Instant::now();
    let mut fleet = Fleet::spawn(
        n,
        fleet_options(
            cli,
            format!("ws://{}/ws", stack.addr()),
            Some(stack.cookie.clone()),
        ),
    );
    let ready = fleet
        .wait(Awaited::Ready, Duration::from_secs(600), true)
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = ready.matched;
    eprintln!("{connected} connected in {connect_seconds:.1} s; waiting for a stable RSS");
    let rss_connected = procfs::stable_rss(pid, Duration::from_secs(30)).await;
    let smaps_connected = smaps_json(pid);
    let gauge_connections = metric(&stack.metrics().await, "ws_connections", "");

    let mut subscribed = Value::Null;
    let mut subscribed_per_connection = Value::Null;
    let mut smaps_subscribed = Value::Null;
    if subscribe {
        fleet.set_phase(Phase::Subscribe);
        let acks = fleet
            .wait(Awaited::Subscribed, Duration::from_secs(300), true)
            .await;
        let rss = procfs::stable_rss(pid, Duration::from_secs(30)).await;
        smaps_subscribed = smaps_json(pid);
        let gauge = metric(&stack.metrics().await, "ws_subscriptions", "order_changes");
        subscribed = json!({"connections": acks.matched, "rss_bytes": rss,
                            "gateway_ws_subscriptions": gauge});
        subscribed_per_connection =
            json!(rss.saturating_sub(rss_before) as f64 / acks.matched.max(1) as f64);
    }
    let threads = procfs::status_field(pid, "Threads");
    let hwm = procfs::status_field(pid, "VmHWM").map(|k| k * 1024);
    let client_rss = procfs::rss_bytes(std::process::id());
    let problems = fleet.problem_lines();
    fleet.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_closed = procfs::stable_rss(pid, Duration::from_secs(20)).await;
    stack.remove_session().await;

    let connected_per = rss_connected.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    let headline = subscribed_per_connection.as_f64().unwrap_or(connected_per);
    json!({
        "mode": "idle",
        "connections_requested": n,
        "connections_open": connected,
        "gateway_ws_connections": gauge_connections,
        "connect_seconds": connect_seconds,
        "rss_before_bytes": rss_before,
        "rss_connected_bytes": rss_connected,
        "bytes_per_connection_connected": connected_per,
        "subscribed": subscribed,
        "bytes_per_connection_subscribed": subscribed_per_connection,
        "rss_after_close_bytes": rss_closed,
        "gateway_vm_hwm_bytes": hwm,
        "gateway_threads": threads,
        "client_rss_bytes": client_rss,
        "smaps_rollup": {"before": smaps_before, "connected": smaps_connected,
                         "subscribed": smaps_subscribed},
        "target_bytes_per_connection": IDLE_TARGET_BYTES,
        "meets_target": headline <= IDLE_TARGET_BYTES,
        "problems": problems,
    })
}

/// The event published, and the `/ws` frame the gateway makes of it (which the baseline sends).
fn event(payload_bytes: usize) -> (Bytes, Utf8Bytes) {
    let mut data = json!({"id": 1, "order_number": "ORD-0000000001", "status": "processing",
                          "payment_status": "paid", "total": 99.99, "customer_id": 45,
                          "currency": "USD", "note": ""});
    let pad = payload_bytes.saturating_sub(data.to_string().len());
    data["note"] = json!("x".repeat(pad));
    let envelope = Envelope::new(EventType::parse("order.updated").unwrap(), "1", data).unwrap();
    let route = ws_route(&envelope.event_type).unwrap();
    (
        Bytes::from(envelope.encode()),
        Utf8Bytes::from(ws_message(&envelope, route)),
    )
}

#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    send_seconds: f64,
    complete: bool,
    delivered_per_second: f64,
    server_cpu_seconds: f64,
    client_cpu_seconds: f64,
    nats_cpu_seconds: Option<f64>,
    /// CPU time the whole machine was busy during the run (all processes, kernel included).
    machine_busy_cpu_seconds: f64,
    /// Whether the machine was quiet before the run started.
    quiet_before: bool,
}

impl Run {
    fn json(&self) -> Value {
        json!({"seconds": self.seconds, "send_seconds": self.send_seconds,
               "complete": self.complete, "delivered_per_second": self.delivered_per_second,
               "server_cpu_seconds": self.server_cpu_seconds,
               "client_cpu_seconds": self.client_cpu_seconds,
               "nats_cpu_seconds": self.nats_cpu_seconds,
               "server_cpu_us_per_message": self.server_cpu_seconds * 1e6
                   / (self.delivered_per_second * self.seconds),
               "client_cpu_us_per_message": self.client_cpu_seconds * 1e6
                   / (self.delivered_per_second * self.seconds),
               "machine_busy_cpu_seconds": self.machine_busy_cpu_seconds,
               "quiet_before": self.quiet_before,
               "other_cpu_seconds": self.machine_busy_cpu_seconds - self.server_cpu_seconds
                   - self.client_cpu_seconds - self.nats_cpu_seconds.unwrap_or(0.0)})
    }
}

fn median(runs: &[Run]) -> Option<Run> {
    let mut complete: Vec<Run> = runs.iter().copied().filter(|r| r.complete).collect();
    complete.sort_by(|a, b| a.delivered_per_second.total_cmp(&b.delivered_per_second));
    complete.get(complete.len() / 2).copied()
}

fn round_timeout(subscribers: usize, events: usize) -> Duration {
    // Allow down to 10,000 deliveries per second before calling a run stuck.
    Duration::from_secs(60.max((subscribers * events / 10_000) as u64))
}

async fn quiet(cli: &Cli) -> bool {
    cli.quiet_wait_secs == 0
        || procfs::wait_quiet(0.15, Duration::from_secs(cli.quiet_wait_secs)).await
}

fn self_cpu() -> Duration {
    procfs::cpu_time(std::process::id()).unwrap_or_default()
}

/// The fan-out workload.
#[derive(Debug, Clone, Copy)]
struct Shape {
    subscribers: usize,
    events: usize,
    payload_bytes: usize,
    runs: usize,
}

async fn fanout(cli: &Cli, shape: Shape, sides: Sides, baseline_loop: baseline::Loop) -> Value {
    let Shape {
        subscribers,
        events,
        payload_bytes,
        runs,
    } = shape;
    let (payload, frame) = event(payload_bytes);
    if events > cli.queue {
        eprintln!(
            "warning: {events} events exceed the ring of {} frames: subscribers that fall that \
             far behind are closed as slow consumers (raise --queue)",
            cli.queue
        );
    }
    let mut out = json!({
        "mode": "fanout",
        "subscribers": subscribers,
        "events": events,
        "runs": runs,
        "queue": cli.queue,
        "envelope_bytes": payload.len(),
        "frame_bytes": frame.len(),
        "target_ratio": FANOUT_TARGET_RATIO,
    });
    let mut gateway_median = None;
    let mut baseline_median = None;
    if sides != Sides::Baseline {
        let side = fanout_gateway(cli, subscribers, events, runs, &payload).await;
        gateway_median = side["median_delivered_per_second"].as_f64();
        out["gateway"] = side;
    }
    if sides != Sides::Gateway {
        let side = fanout_baseline(cli, shape, &frame, baseline_loop).await;
        baseline_median = side["median_delivered_per_second"].as_f64();
        out["baseline"] = side;
    }
    if let (Some(g), Some(b)) = (gateway_median, baseline_median) {
        out["ratio"] = json!(g / b);
        out["meets_target"] = json!(g / b >= FANOUT_TARGET_RATIO);
    }
    out
}

async fn fanout_gateway(
    cli: &Cli,
    subscribers: usize,
    events: usize,
    runs: usize,
    payload: &Bytes,
) -> Value {
    eprintln!("gateway: starting nats-server and gateway");
    let stack = Stack::start(&gateway_options(cli, subscribers)).await;
    let pid = stack.pid();
    let nats_pid = procfs::child_named("nats-server");
    let mut options = fleet_options(
        cli,
        format!("ws://{}/ws", stack.addr()),
        Some(stack.cookie.clone()),
    );
    options.subscribe_on_connect = true;
    options.per_round = events as u64;
    let started = Instant::now();
    let mut fleet = Fleet::spawn(subscribers, options);
    let ready = fleet
        .wait(Awaited::Ready, Duration::from_secs(600), true)
        .await;
    eprintln!(
        "gateway: {} subscribed in {:.1} s",
        ready.matched,
        started.elapsed().as_secs_f64()
    );
    let gauge = metric(&stack.metrics().await, "ws_subscriptions", "order_changes");
    let nats = async_nats::connect(stack.nats_url()).await.unwrap();
    nats.flush().await.unwrap();

    let mut results = Vec::new();
    for run in 1..=runs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet_before = quiet(cli).await;
        let receivers = fleet.alive;
        let (gw_cpu, my_cpu) = (procfs::cpu_time(pid).unwrap_or_default(), self_cpu());
        let nats_cpu = nats_pid.and_then(procfs::cpu_time);
        let machine0 = procfs::machine_cpu().0;
        let t0 = Instant::now();
        for _ in 0..events {
            nats.publish(SUBJECT, payload.clone()).await.unwrap();
        }
        nats.flush().await.unwrap();
        let send_seconds = t0.elapsed().as_secs_f64();
        let waited = fleet
            .wait(
                Awaited::RoundDone,
                round_timeout(subscribers, events),
                false,
            )
            .await;
        let seconds = waited
            .latest
            .map_or(f64::NAN, |l| l.duration_since(t0).as_secs_f64());
        let result = Run {
            seconds,
            send_seconds,
            complete: waited.complete && waited.matched == subscribers,
            delivered_per_second: (receivers * events) as f64 / seconds,
            server_cpu_seconds: (procfs::cpu_time(pid).unwrap_or_default() - gw_cpu).as_secs_f64(),
            client_cpu_seconds: (self_cpu() - my_cpu).as_secs_f64(),
            nats_cpu_seconds: nats_pid
                .and_then(procfs::cpu_time)
                .zip(nats_cpu)
                .map(|(b, a)| (b - a).as_secs_f64()),
            machine_busy_cpu_seconds: (procfs::machine_cpu().0 - machine0).as_secs_f64(),
            quiet_before,
        };
        eprintln!(
            "gateway run {run}: {:.0} msg/s ({:.3} s, {}/{} subscribers complete)",
            result.delivered_per_second, result.seconds, waited.matched, subscribers
        );
        results.push(result);
    }
    let metrics = stack.metrics().await;
    let problems = fleet.problem_lines();
    fleet.close().await;
    stack.remove_session().await;
    drop(stack);
    let median = median(&results);
    json!({
        "subscribed": ready.matched,
        "gateway_ws_subscriptions": gauge,
        "runs": results.iter().map(Run::json).collect::<Vec<_>>(),
        "median_delivered_per_second": median.map(|m| m.delivered_per_second),
        "median_run": median.map(|m| m.json()),
        "events_relayed": metric(&metrics, "ws_events_relayed_total", ""),
        "messages_out": metric(&metrics, "ws_messages_out_total", ""),
        "slow_consumer_closes": metric(&metrics, "ws_dropped_total", "slow_consumer"),
        "write_timeouts": metric(&metrics, "ws_dropped_total", "write_timeout"),
        "problems": problems,
    })
}

async fn fanout_baseline(
    cli: &Cli,
    shape: Shape,
    frame: &Utf8Bytes,
    kind: baseline::Loop,
) -> Value {
    let Shape {
        subscribers,
        events,
        runs,
        ..
    } = shape;
    let connected = gateway_ws::protocol::connected(&json!("load-user"));
    let mut server = Baseline::spawn(cli.queue, kind, &connected, frame.as_str())
        .await
        .unwrap();
    let pid = server.pid().unwrap_or(0);
    let mut options = fleet_options(cli, server.url(), None);
    options.per_round = events as u64;
    let started = Instant::now();
    let mut fleet = Fleet::spawn(subscribers, options);
    let ready = fleet
        .wait(Awaited::Ready, Duration::from_secs(600), true)
        .await;
    eprintln!(
        "baseline: {} connected in {:.1} s ({} ring receivers)",
        ready.matched,
        started.elapsed().as_secs_f64(),
        server.stats().await.1
    );

    let mut results = Vec::new();
    for run in 1..=runs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet_before = quiet(cli).await;
        let receivers = fleet.alive;
        let (srv_cpu, my_cpu) = (procfs::cpu_time(pid).unwrap_or_default(), self_cpu());
        let machine0 = procfs::machine_cpu().0;
        let t0 = Instant::now();
        server.broadcast(events).await.unwrap();
        let send_seconds = t0.elapsed().as_secs_f64();
        let waited = fleet
            .wait(
                Awaited::RoundDone,
                round_timeout(subscribers, events),
                false,
            )
            .await;
        let seconds = waited
            .latest
            .map_or(f64::NAN, |l| l.duration_since(t0).as_secs_f64());
        let server_cpu = procfs::cpu_time(pid).unwrap_or_default() - srv_cpu;
        let result = Run {
            seconds,
            send_seconds,
            complete: waited.complete && waited.matched == subscribers,
            delivered_per_second: (receivers * events) as f64 / seconds,
            server_cpu_seconds: server_cpu.as_secs_f64(),
            client_cpu_seconds: (self_cpu() - my_cpu).as_secs_f64(),
            nats_cpu_seconds: None,
            machine_busy_cpu_seconds: (procfs::machine_cpu().0 - machine0).as_secs_f64(),
            quiet_before,
        };
        eprintln!(
            "baseline run {run}: {:.0} msg/s ({:.3} s, {}/{} subscribers complete)",
            result.delivered_per_second, result.seconds, waited.matched, subscribers
        );
        results.push(result);
    }
    let problems = fleet.problem_lines();
    let (lagged, _) = server.stats().await;
    fleet.close().await;
    drop(server);
    let median = median(&results);
    json!({
        "loop": format!("{kind:?}"),
        "connected": ready.matched,
        "runs": results.iter().map(Run::json).collect::<Vec<_>>(),
        "median_delivered_per_second": median.map(|m| m.delivered_per_second),
        "median_run": median.map(|m| m.json()),
        "slow_consumer_closes": lagged,
        "problems": problems,
    })
}

fn human(r: &Value) -> String {
    let mut lines = Vec::new();
    let m = &r["machine"];
    lines.push(format!(
        "machine: {} CPUs ({}), {:.1} GiB, kernel {}",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or(""),
        m["mem_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        m["kernel"].as_str().unwrap_or("")
    ));
    if r["mode"] == "idle" {
        lines.push(format!(
            "idle: {} of {} connections open (gateway gauge {}), opened in {:.1} s",
            r["connections_open"],
            r["connections_requested"],
            r["gateway_ws_connections"],
            r["connect_seconds"].as_f64().unwrap_or(0.0)
        ));
        lines.push(format!(
            "  gateway RSS: before {}, connected {}, connected+subscribed {}, after close {} \
             (peak {}, {} threads)",
            procfs::kib(&r["rss_before_bytes"]),
            procfs::kib(&r["rss_connected_bytes"]),
            procfs::kib(&r["subscribed"]["rss_bytes"]),
            procfs::kib(&r["rss_after_close_bytes"]),
            procfs::kib(&r["gateway_vm_hwm_bytes"]),
            r["gateway_threads"]
        ));
        lines.push(format!(
            "  per connection: connected only {:.0} B, connected + subscribed {} \
             (target <= {:.0} B: {})",
            r["bytes_per_connection_connected"].as_f64().unwrap_or(0.0),
            r["bytes_per_connection_subscribed"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0} B")),
            IDLE_TARGET_BYTES,
            if r["meets_target"] == true {
                "met"
            } else {
                "MISSED"
            }
        ));
        lines.push(format!(
            "  client process RSS: {}",
            procfs::kib(&r["client_rss_bytes"])
        ));
    } else {
        lines.push(format!(
            "fanout: {} subscribers x {} events, frame {} B (envelope {} B), ring {}, {} runs \
             per side, median reported",
            r["subscribers"],
            r["events"],
            r["frame_bytes"],
            r["envelope_bytes"],
            r["queue"],
            r["runs"]
        ));
        for side in ["gateway", "baseline"] {
            let s = &r[side];
            if s.is_null() {
                continue;
            }
            let runs: Vec<String> = s["runs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|run| {
                            format!(
                                "{:.0}{}",
                                run["delivered_per_second"].as_f64().unwrap_or(f64::NAN),
                                if run["complete"] == true {
                                    ""
                                } else {
                                    " (incomplete)"
                                }
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let side = match s["loop"].as_str() {
                Some(kind) if kind != "Bare" => format!("{side} ({kind} loop)"),
                _ => side.to_owned(),
            };
            lines.push(format!(
                "  {side:<8}: median {} msg/s  (runs: {})",
                s["median_delivered_per_second"]
                    .as_f64()
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
                runs.join(", ")
            ));
            let mr = &s["median_run"];
            if !mr.is_null() {
                lines.push(format!(
                    "            median run: {:.3} s, send {:.3} s, CPU s: server {:.2}, \
                     clients {:.2}{}, other {:.2}, machine busy {:.2} of {:.2}; CPU per \
                     message: server {:.2} us, clients {:.2} us",
                    mr["seconds"].as_f64().unwrap_or(0.0),
                    mr["send_seconds"].as_f64().unwrap_or(0.0),
                    mr["server_cpu_seconds"].as_f64().unwrap_or(0.0),
                    mr["client_cpu_seconds"].as_f64().unwrap_or(0.0),
                    mr["nats_cpu_seconds"]
                        .as_f64()
                        .map_or_else(String::new, |v| format!(", nats-server {v:.2}")),
                    mr["other_cpu_seconds"].as_f64().unwrap_or(0.0),
                    mr["machine_busy_cpu_seconds"].as_f64().unwrap_or(0.0),
                    mr["seconds"].as_f64().unwrap_or(0.0)
                        * r["machine"]["cpus"].as_f64().unwrap_or(0.0),
                    mr["server_cpu_us_per_message"].as_f64().unwrap_or(0.0),
                    mr["client_cpu_us_per_message"].as_f64().unwrap_or(0.0),
                ));
            }
            lines.push(format!(
                "            slow-consumer closes: {}{}",
                s["slow_consumer_closes"],
                if side.as_str() == "gateway" {
                    format!(
                        ", write timeouts: {}, events relayed: {}, messages out: {}",
                        s["write_timeouts"], s["events_relayed"], s["messages_out"]
                    )
                } else {
                    String::new()
                }
            ));
        }
        if let Some(ratio) = r["ratio"].as_f64() {
            lines.push(format!(
                "  ratio gateway/baseline: {:.1} % (target >= {:.0} %: {})",
                ratio * 100.0,
                FANOUT_TARGET_RATIO * 100.0,
                if r["meets_target"] == true {
                    "met"
                } else {
                    "MISSED"
                }
            ));
        }
    }
    for side in [
        &r["problems"],
        &r["gateway"]["problems"],
        &r["baseline"]["problems"],
    ] {
        for p in side.as_array().into_iter().flatten() {
            lines.push(format!("  problem: {}", p.as_str().unwrap_or("")));
        }
    }
    lines.join("\n")
}
