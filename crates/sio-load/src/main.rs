//! `sio-load`: measures the release `gateway-socketio` beside a Node `socket.io` 4.8 server
//! doing the same `/admin` work, in the same run, on the same NATS server.
//!
//! - `idle`: resident memory per idle authenticated `/admin` connection (`VmRSS` of
//!   `/proc/<pid>/status` after all connected, minus before, divided by the count), then also
//!   subscribed.
//! - `fanout`: S subscribers of `{entities: {orders: [101]}}`; E envelopes published on
//!   `events.order.status_changed` for order 101; each subscriber receives `orders_updated` and
//!   `orders_event_log` per event. Rate = messages counted at the clients / (first publish →
//!   last delivery).
//!
//! The tool starts its own `nats-server` (via `test-support`), a fresh PostgreSQL database for
//! the gateway (dropped afterwards), the gateway binary from the target dir, and `node
//! node/server.mjs` (after `npm ci` when `node_modules` is missing). Clients are a minimal
//! Engine.IO 4 / Socket.IO 5 client over tokio-tungstenite, all in this process.
//!
//! See `docs/benchmarks.md` for the commands and figures.

// A measurement tool: a broken setup (no nats-server, no PostgreSQL, no gateway binary) should
// stop it loudly, and its report goes to stdout/stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod client;
use test_support::{metric, procfs};
mod servers;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use events::{Envelope, EventType};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Bytes;

use client::{Awaited, Fleet, FleetOptions, Phase};
use servers::{Kind, Launch, Server, Tuning};

/// Target for the gateway: resident bytes per idle connection.
const IDLE_TARGET_BYTES: f64 = 8.0 * 1024.0;
/// Target: gateway fan-out rate as a multiple of the Node baseline's.
const FANOUT_TARGET_RATIO: f64 = 3.0;
/// NATS subject the events are published on (`events.<domain>.<event_type>`).
const SUBJECT: &str = "events.order.status_changed";
/// The order every subscriber follows.
const ORDER_ID: &str = "101";
/// What every subscriber sends.
const SUBSCRIBE: &str = r#"{"entities":{"orders":[101]}}"#;
/// Events each subscriber receives per envelope.
const EMITS_PER_EVENT: u64 = 2;
/// Events counted as deliveries (the third must not arrive: nobody is in `domain:event_log`).
const COUNTED: [&str; 3] = ["orders_updated", "orders_event_log", "event_log_created"];
/// HS256 secret of the test tokens (both servers).
const SECRET: &str = "sio-load hs256 secret, not for production";

#[derive(Debug, Parser)]
#[command(
    about = "Load measurements for gateway-socketio beside a Node socket.io 4.8 baseline \
             (idle memory, room fan-out throughput)"
)]
struct Cli {
    /// The release gateway binary.
    #[arg(long, global = true, default_value = "target/release/gateway-socketio")]
    gateway_bin: PathBuf,
    /// Directory of the Node baseline (`server.mjs`, `package.json`).
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/node"))]
    node_dir: PathBuf,
    /// The `node` executable.
    #[arg(long, global = true, default_value = "node")]
    node_bin: String,
    /// WebSocket handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 200)]
    concurrency: usize,
    /// tungstenite read buffer of each client connection, in bytes.
    #[arg(long, global = true, default_value_t = 4096)]
    client_read_buffer: usize,
    /// Before each fan-out run and RSS reading, wait up to this many seconds for the machine to
    /// be less than 15 % busy (0: do not wait).
    #[arg(long, global = true, default_value_t = 180)]
    quiet_wait_secs: u64,
    /// Extra environment for the gateway process, `KEY=VALUE` (repeatable), e.g.
    /// `MALLOC_ARENA_MAX=2`.
    #[arg(long = "gateway-env", global = true, value_parser = parse_env)]
    gateway_env: Vec<(String, String)>,
    /// Extra environment for the node process, `KEY=VALUE` (repeatable), e.g.
    /// `NODE_OPTIONS=--max-semi-space-size=16`.
    #[arg(long = "node-env", global = true, value_parser = parse_env)]
    node_env: Vec<(String, String)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resident memory per idle authenticated `/admin` connection.
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Measure connected-only connections; do not subscribe them afterwards.
        #[arg(long)]
        no_subscribe: bool,
        /// Open Engine.IO sessions only, without joining `/admin` (a breakdown of the memory:
        /// transport and Engine.IO versus the namespace). Implies `--no-subscribe`.
        #[arg(long)]
        engine_only: bool,
        /// Which servers to measure (one after the other).
        #[arg(long, value_enum, default_value_t = Servers::Both)]
        server: Servers,
    },
    /// Delivered messages per second for room fan-out.
    Fanout {
        /// Subscribed clients.
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Envelopes published per run.
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Approximate size of each envelope's `data` JSON in bytes.
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        /// Runs per server; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The gateway's per-socket queue (`socketio.max_buffer`) for this test; 0: room for
        /// a whole run (2 x events + 256), as Node's queues are unbounded.
        #[arg(long, default_value_t = 0)]
        max_buffer: usize,
        /// Engine.IO ping timeout of both servers for this test, in seconds. A run queues
        /// thousands of packets per socket ahead of the server's ping, so with the default
        /// 20 s slow runs lose sockets to missed heartbeats; 0 keeps the servers' defaults.
        #[arg(long, default_value_t = 120)]
        ping_timeout_secs: u64,
        /// Which servers to measure (one after the other).
        #[arg(long, value_enum, default_value_t = Servers::Both)]
        server: Servers,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Servers {
    Both,
    Rust,
    Node,
}

impl Servers {
    fn kinds(self) -> Vec<Kind> {
        match self {
            Self::Both => vec![Kind::Rust, Kind::Node],
            Self::Rust => vec![Kind::Rust],
            Self::Node => vec![Kind::Node],
        }
    }
}

fn parse_env(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let connections = match &cli.command {
        Command::Idle { connections, .. } => *connections,
        Command::Fanout { subscribers, .. } => *subscribers,
    };
    procfs::raise_open_files(connections as u64 + 1000);
    if let Some(limit) = procfs::open_files_soft_limit()
        && (limit as usize) < connections + 200
    {
        eprintln!(
            "warning: `ulimit -n` is {limit}; {connections} client connections need more \
             (run `ulimit -n {}` first)",
            connections + 1000
        );
    }

    eprintln!("starting nats-server");
    let nats = tokio::task::spawn_blocking(test_support::NatsServer::start).await?;
    let launch = Launch {
        gateway_bin: cli.gateway_bin.clone(),
        node_dir: cli.node_dir.clone(),
        node_bin: cli.node_bin.clone(),
        secret: SECRET.to_owned(),
        nats_url: nats.url(),
        gateway_env: cli.gateway_env.clone(),
        node_env: cli.node_env.clone(),
    };
    let mut report = match &cli.command {
        Command::Idle {
            connections,
            no_subscribe,
            engine_only,
            server,
        } => {
            let join = !*engine_only;
            let subscribe = join && !*no_subscribe;
            idle(&cli, &launch, server.kinds(), *connections, join, subscribe).await
        }
        Command::Fanout {
            subscribers,
            events,
            payload_bytes,
            runs,
            max_buffer,
            ping_timeout_secs,
            server,
        } => {
            let shape = Shape {
                subscribers: *subscribers,
                events: *events,
                payload_bytes: *payload_bytes,
                runs: *runs,
                max_buffer: if *max_buffer == 0 {
                    events * EMITS_PER_EVENT as usize + 256
                } else {
                    *max_buffer
                },
                ping_timeout_secs: *ping_timeout_secs,
            };
            fanout(&cli, &launch, server.kinds(), shape).await?
        }
    };
    drop(nats);
    report["machine"] = procfs::machine();
    report["node_version"] = json!(node_version(&cli.node_bin).await);
    println!("{}", human(&report));
    println!("{report}");
    Ok(())
}

/// An HS256 token both servers accept, valid for 30 days.
fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = json!({"sub": "sio-load", "iat": now, "exp": now + 30 * 86_400});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn fleet_options(cli: &Cli, server: &Server, subscribe_on_connect: bool) -> FleetOptions {
    FleetOptions {
        base: server.ws_base(),
        namespace: "/admin".to_owned(),
        auth: json!({"token": token()}).to_string(),
        join: true,
        subscribe: SUBSCRIBE.to_owned(),
        subscribe_on_connect,
        per_round: 0,
        counted: COUNTED.iter().map(|s| (*s).to_owned()).collect(),
        read_buffer: cli.client_read_buffer,
        concurrency: cli.concurrency,
    }
}

async fn quiet(cli: &Cli) -> bool {
    cli.quiet_wait_secs == 0
        || procfs::wait_quiet(0.15, Duration::from_secs(cli.quiet_wait_secs)).await
}

fn smaps_json(pid: u32) -> Value {
    let wanted = ["Rss", "Anonymous", "Private_Dirty", "Shared_Clean"];
    procfs::smaps_rollup(pid)
        .into_iter()
        .filter(|(k, _)| wanted.contains(&k.as_str()))
        .map(|(k, v)| (format!("{k}_kib"), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn idle(
    cli: &Cli,
    launch: &Launch,
    kinds: Vec<Kind>,
    n: usize,
    join: bool,
    subscribe: bool,
) -> Value {
    let mut out = json!({
        "mode": "idle",
        "connections_requested": n,
        "namespace_joined": join,
        "target_bytes_per_connection": IDLE_TARGET_BYTES,
    });
    for kind in kinds {
        let side = match idle_one(cli, launch, kind, n, join, subscribe).await {
            Ok(side) => side,
            Err(e) => {
                eprintln!("{}: {e:#}", kind.name());
                json!({"error": format!("{e:#}")})
            }
        };
        out[kind.name()] = side;
    }
    let rust = out["rust"]["bytes_per_connection_connected"].as_f64();
    let node = out["node"]["bytes_per_connection_connected"].as_f64();
    if let Some(rust) = rust {
        out["meets_target"] = json!(rust <= IDLE_TARGET_BYTES);
    }
    if let (Some(rust), Some(node)) = (rust, node) {
        out["node_over_rust"] = json!(node / rust);
    }
    out
}

async fn idle_one(
    cli: &Cli,
    launch: &Launch,
    kind: Kind,
    n: usize,
    join: bool,
    subscribe: bool,
) -> anyhow::Result<Value> {
    let name = kind.name();
    eprintln!("{name}: starting the server");
    let tuning = Tuning {
        // Sessions that never join a namespace are closed after the connect timeout.
        connect_timeout_secs: (!join).then_some(3600),
        ..Tuning::default()
    };
    let server = Server::start(kind, launch, tuning).await?;
    let pid = server.pid;
    tokio::time::sleep(Duration::from_secs(2)).await;
    quiet(cli).await;
    let rss_before = procfs::stable_rss(pid, Duration::from_secs(20)).await;
    let smaps_before = smaps_json(pid);
    eprintln!(
        "{name}: ready, pid {pid}, RSS {} KiB; opening {n} {}",
        rss_before / 1024,
        if join {
            "/admin connections"
        } else {
            "Engine.IO sessions (no namespace)"
        }
    );

    let started = Instant::now();
    let mut options = fleet_options(cli, &server, false);
    options.join = join;
    let mut fleet = Fleet::spawn(n, options);
    let ready = fleet
        .wait(Awaited::Ready, Duration::from_secs(900), None, true)
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = ready.matched;
    eprintln!("{name}: {connected} connected in {connect_seconds:.1} s; waiting for a stable RSS");
    let rss_connected = procfs::stable_rss(pid, Duration::from_secs(30)).await;
    let smaps_connected = smaps_json(pid);
    let gauge = metric(
        &server.metrics().await,
        "socketio_connections",
        "namespace=\"admin\"",
    );

    let mut subscribed = Value::Null;
    if subscribe && connected > 0 {
        fleet.set_phase(Phase::Subscribe);
        let acks = fleet
            .wait(Awaited::Subscribed, Duration::from_secs(300), None, true)
            .await;
        let rss = procfs::stable_rss(pid, Duration::from_secs(30)).await;
        subscribed = json!({
            "connections": acks.matched,
            "rss_bytes": rss,
            "bytes_per_connection": rss.saturating_sub(rss_before) as f64
                / acks.matched.max(1) as f64,
            "smaps_rollup": smaps_json(pid),
        });
    }
    let threads = procfs::status_field(pid, "Threads");
    let hwm = procfs::status_field(pid, "VmHWM").map(|k| k * 1024);
    let client_rss = procfs::rss_bytes(std::process::id());
    let problems = fleet.problem_lines();
    fleet.close().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_closed = procfs::stable_rss(pid, Duration::from_secs(20)).await;
    server.stop().await;

    let per = rss_connected.saturating_sub(rss_before) as f64 / connected.max(1) as f64;
    eprintln!("{name}: {per:.0} B per connected socket");
    Ok(json!({
        "pid": pid,
        "connections_open": connected,
        "gateway_socketio_connections": (kind == Kind::Rust).then_some(gauge),
        "connect_seconds": connect_seconds,
        "rss_before_bytes": rss_before,
        "rss_connected_bytes": rss_connected,
        "bytes_per_connection_connected": per,
        "subscribed": subscribed,
        "rss_after_close_bytes": rss_closed,
        "vm_hwm_bytes": hwm,
        "threads": threads,
        "client_rss_bytes": client_rss,
        "smaps_rollup": {"before": smaps_before, "connected": smaps_connected},
        "problems": problems,
    }))
}

/// The fan-out workload.
#[derive(Debug, Clone, Copy)]
struct Shape {
    subscribers: usize,
    events: usize,
    payload_bytes: usize,
    runs: usize,
    max_buffer: usize,
    ping_timeout_secs: u64,
}

/// `events` distinct envelopes (`order.status_changed` for order 101), encoded.
fn envelopes(events: usize, payload_bytes: usize) -> Vec<Bytes> {
    (0..events)
        .map(|i| {
            let mut data = json!({"id": 101, "order_number": "ORD-0000000101",
                                  "status": "processing", "payment_status": "paid",
                                  "total": 99.99, "customer_id": 45, "currency": "USD",
                                  "seq": i, "note": ""});
            let pad = payload_bytes.saturating_sub(data.to_string().len());
            data["note"] = json!("x".repeat(pad));
            let mut changed = serde_json::Map::new();
            changed.insert("status".to_owned(), json!("processing"));
            let envelope = Envelope::new(
                EventType::parse("order.status_changed").unwrap(),
                ORDER_ID,
                data,
            )
            .unwrap()
            .with_changed_fields(changed);
            Bytes::from(envelope.encode())
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    send_seconds: f64,
    delivered: u64,
    expected: u64,
    complete: bool,
    delivered_per_second: f64,
    server_cpu_seconds: f64,
    client_cpu_seconds: f64,
    nats_cpu_seconds: Option<f64>,
    machine_busy_cpu_seconds: f64,
    quiet_before: bool,
}

impl Run {
    fn json(&self) -> Value {
        json!({"seconds": self.seconds, "send_seconds": self.send_seconds,
               "delivered": self.delivered, "expected": self.expected,
               "complete": self.complete, "delivered_per_second": self.delivered_per_second,
               "server_cpu_seconds": self.server_cpu_seconds,
               "client_cpu_seconds": self.client_cpu_seconds,
               "nats_cpu_seconds": self.nats_cpu_seconds,
               "server_cpu_us_per_message": self.server_cpu_seconds * 1e6
                   / self.delivered.max(1) as f64,
               "machine_busy_cpu_seconds": self.machine_busy_cpu_seconds,
               "quiet_before": self.quiet_before})
    }
}

fn median(runs: &[Run]) -> Option<Run> {
    let mut sorted: Vec<Run> = runs.iter().copied().filter(|r| r.complete).collect();
    if sorted.is_empty() {
        sorted = runs.to_vec();
    }
    sorted.sort_by(|a, b| a.delivered_per_second.total_cmp(&b.delivered_per_second));
    sorted.get(sorted.len() / 2).copied()
}

async fn fanout(
    cli: &Cli,
    launch: &Launch,
    kinds: Vec<Kind>,
    shape: Shape,
) -> anyhow::Result<Value> {
    let payloads = envelopes(shape.events, shape.payload_bytes);
    let nats = async_nats::connect(launch.nats_url.as_str()).await?;
    let mut out = json!({
        "mode": "fanout",
        "subscribers": shape.subscribers,
        "events": shape.events,
        "runs": shape.runs,
        "envelope_bytes": payloads.first().map_or(0, Bytes::len),
        "gateway_max_buffer": shape.max_buffer,
        "ping_timeout_secs": shape.ping_timeout_secs,
        "target_ratio": FANOUT_TARGET_RATIO,
    });
    for kind in kinds {
        let side = match fanout_one(cli, launch, kind, shape, &payloads, &nats).await {
            Ok(side) => side,
            Err(e) => {
                eprintln!("{}: {e:#}", kind.name());
                json!({"error": format!("{e:#}")})
            }
        };
        out[kind.name()] = side;
    }
    let rust = out["rust"]["median_delivered_per_second"].as_f64();
    let node = out["node"]["median_delivered_per_second"].as_f64();
    if let (Some(rust), Some(node)) = (rust, node) {
        out["rust_over_node"] = json!(rust / node);
        out["meets_target"] = json!(rust / node >= FANOUT_TARGET_RATIO);
    }
    Ok(out)
}

async fn fanout_one(
    cli: &Cli,
    launch: &Launch,
    kind: Kind,
    shape: Shape,
    payloads: &[Bytes],
    nats: &async_nats::Client,
) -> anyhow::Result<Value> {
    let name = kind.name();
    let Shape {
        subscribers,
        events,
        runs,
        max_buffer,
        ping_timeout_secs,
        ..
    } = shape;
    eprintln!("{name}: starting the server");
    let tuning = Tuning {
        max_buffer: Some(max_buffer),
        ping_timeout_secs: (ping_timeout_secs > 0).then_some(ping_timeout_secs),
        ..Tuning::default()
    };
    let server = Server::start(kind, launch, tuning).await?;
    let pid = server.pid;
    let nats_pid = procfs::child_named("nats-server");
    let mut options = fleet_options(cli, &server, true);
    options.per_round = events as u64 * EMITS_PER_EVENT;
    let started = Instant::now();
    let mut fleet = Fleet::spawn(subscribers, options);
    let ready = fleet
        .wait(Awaited::Ready, Duration::from_secs(600), None, true)
        .await;
    eprintln!(
        "{name}: {} subscribed in {:.1} s",
        ready.matched,
        started.elapsed().as_secs_f64()
    );
    let self_cpu = || procfs::cpu_time(std::process::id()).unwrap_or_default();

    let mut results = Vec::new();
    for run in 1..=runs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let quiet_before = quiet(cli).await;
        let receivers = fleet.alive;
        let delivered0 = fleet.counters.delivered();
        let (srv_cpu, my_cpu) = (procfs::cpu_time(pid).unwrap_or_default(), self_cpu());
        let nats_cpu = nats_pid.and_then(procfs::cpu_time);
        let machine0 = procfs::machine_cpu().0;
        let t0 = Instant::now();
        for payload in payloads {
            nats.publish(SUBJECT, payload.clone()).await?;
        }
        nats.flush().await?;
        let send_seconds = t0.elapsed().as_secs_f64();
        let waited = fleet
            .wait(
                Awaited::RoundDone,
                Duration::from_secs(600),
                Some(Duration::from_secs(15)),
                false,
            )
            .await;
        let delivered = fleet.counters.delivered() - delivered0;
        let seconds = fleet
            .counters
            .last_delivery()
            .saturating_duration_since(t0)
            .as_secs_f64();
        let expected = (receivers * events) as u64 * EMITS_PER_EVENT;
        let result = Run {
            seconds,
            send_seconds,
            delivered,
            expected,
            complete: waited.complete && waited.matched == receivers && delivered == expected,
            delivered_per_second: delivered as f64 / seconds.max(1e-9),
            server_cpu_seconds: (procfs::cpu_time(pid).unwrap_or_default() - srv_cpu).as_secs_f64(),
            client_cpu_seconds: (self_cpu() - my_cpu).as_secs_f64(),
            nats_cpu_seconds: nats_pid
                .and_then(procfs::cpu_time)
                .zip(nats_cpu)
                .map(|(b, a)| (b - a).as_secs_f64()),
            machine_busy_cpu_seconds: (procfs::machine_cpu().0 - machine0).as_secs_f64(),
            quiet_before,
        };
        eprintln!(
            "{name} run {run}: {:.0} msg/s ({delivered}/{expected} messages in {:.3} s, \
             {}/{subscribers} subscribers complete)",
            result.delivered_per_second, result.seconds, waited.matched
        );
        results.push(result);
    }
    let metrics = server.metrics().await;
    let per_event: Value = COUNTED
        .iter()
        .zip(&fleet.counters.per_event)
        .map(|(n, c)| {
            (
                (*n).to_owned(),
                json!(c.load(std::sync::atomic::Ordering::Relaxed)),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let other_events = fleet
        .counters
        .other
        .load(std::sync::atomic::Ordering::Relaxed);
    let problems = fleet.problem_lines();
    fleet.close().await;
    server.stop().await;
    let median = median(&results);
    let mut side = json!({
        "pid": pid,
        "subscribed": ready.matched,
        "runs": results.iter().map(Run::json).collect::<Vec<_>>(),
        "median_delivered_per_second": median.map(|m| m.delivered_per_second),
        "median_run": median.map(|m| m.json()),
        "events_received": per_event,
        "other_events_received": other_events,
        "problems": problems,
    });
    if kind == Kind::Rust {
        side["emits_dropped"] = json!(metric(&metrics, "socketio_emits_dropped_total", ""));
        side["events_relayed"] = json!(metric(&metrics, "socketio_events_relayed_total", ""));
    }
    Ok(side)
}

async fn node_version(node: &str) -> Option<String> {
    let out = tokio::process::Command::new(node)
        .arg("--version")
        .output()
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

fn human(r: &Value) -> String {
    let mut lines = Vec::new();
    let m = &r["machine"];
    lines.push(format!(
        "machine: {} CPUs ({}), {:.1} GiB, kernel {}; node {}",
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or(""),
        m["mem_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        m["kernel"].as_str().unwrap_or(""),
        r["node_version"].as_str().unwrap_or("?"),
    ));
    if r["mode"] == "idle" {
        lines.push(format!(
            "idle: {} {} requested",
            r["connections_requested"],
            if r["namespace_joined"] == false {
                "Engine.IO sessions (no namespace joined)"
            } else {
                "/admin connections"
            }
        ));
        for name in ["rust", "node"] {
            let s = &r[name];
            if s.is_null() {
                continue;
            }
            if let Some(e) = s["error"].as_str() {
                lines.push(format!("  {name:<4}: error: {e}"));
                continue;
            }
            lines.push(format!(
                "  {name:<4}: {} open in {:.1} s; RSS before {}, connected {}, subscribed {}, \
                 after close {} (peak {}, {} threads)",
                s["connections_open"],
                s["connect_seconds"].as_f64().unwrap_or(0.0),
                procfs::kib(&s["rss_before_bytes"]),
                procfs::kib(&s["rss_connected_bytes"]),
                procfs::kib(&s["subscribed"]["rss_bytes"]),
                procfs::kib(&s["rss_after_close_bytes"]),
                procfs::kib(&s["vm_hwm_bytes"]),
                s["threads"],
            ));
            lines.push(format!(
                "        per connection: connected {} B, connected + subscribed {} B; client \
                 process RSS {}",
                num(&s["bytes_per_connection_connected"], 0),
                num(&s["subscribed"]["bytes_per_connection"], 0),
                procfs::kib(&s["client_rss_bytes"]),
            ));
        }
        lines.push(format!(
            "  side by side: rust {} B/conn, node {} B/conn, node/rust {}x (rust target <= \
             {IDLE_TARGET_BYTES:.0} B: {})",
            num(&r["rust"]["bytes_per_connection_connected"], 0),
            num(&r["node"]["bytes_per_connection_connected"], 0),
            num(&r["node_over_rust"], 2),
            match r["meets_target"].as_bool() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "-",
            }
        ));
    } else {
        lines.push(format!(
            "fanout: {} subscribers x {} events x {EMITS_PER_EVENT} emits, envelope {} B, \
             gateway max_buffer {}, ping timeout {} s, {} runs per server, median reported",
            r["subscribers"],
            r["events"],
            r["envelope_bytes"],
            r["gateway_max_buffer"],
            r["ping_timeout_secs"],
            r["runs"]
        ));
        for name in ["rust", "node"] {
            let s = &r[name];
            if s.is_null() {
                continue;
            }
            if let Some(e) = s["error"].as_str() {
                lines.push(format!("  {name:<4}: error: {e}"));
                continue;
            }
            let runs: Vec<String> = s["runs"]
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
            lines.push(format!(
                "  {name:<4}: median {} msg/s (runs: {})",
                num(&s["median_delivered_per_second"], 0),
                runs.join(", ")
            ));
            let mr = &s["median_run"];
            if !mr.is_null() {
                lines.push(format!(
                    "        median run: {} s (publish {} s); CPU s: server {}, clients {}, \
                     nats-server {}, machine busy {}; server {} us/message",
                    num(&mr["seconds"], 3),
                    num(&mr["send_seconds"], 3),
                    num(&mr["server_cpu_seconds"], 2),
                    num(&mr["client_cpu_seconds"], 2),
                    num(&mr["nats_cpu_seconds"], 2),
                    num(&mr["machine_busy_cpu_seconds"], 2),
                    num(&mr["server_cpu_us_per_message"], 2),
                ));
            }
            lines.push(format!(
                "        received: {}, other events {}{}",
                s["events_received"],
                s["other_events_received"],
                if name == "rust" {
                    format!(
                        "; gateway emits dropped {}, events relayed {}",
                        s["emits_dropped"], s["events_relayed"]
                    )
                } else {
                    String::new()
                }
            ));
        }
        lines.push(format!(
            "  side by side: rust {} msg/s, node {} msg/s, rust/node {}x (target >= \
             {FANOUT_TARGET_RATIO:.0}x: {})",
            num(&r["rust"]["median_delivered_per_second"], 0),
            num(&r["node"]["median_delivered_per_second"], 0),
            num(&r["rust_over_node"], 2),
            match r["meets_target"].as_bool() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "-",
            }
        ));
    }
    for name in ["rust", "node"] {
        for p in r[name]["problems"].as_array().into_iter().flatten() {
            lines.push(format!("  {name} problem: {}", p.as_str().unwrap_or("")));
        }
    }
    lines.join("\n")
}
