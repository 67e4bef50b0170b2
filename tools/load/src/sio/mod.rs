//! `load sio`: the release `gateway-socketio` beside a Node `socket.io` 4.8 server doing the
//! same `/admin` work, in the same run, on the same NATS server.
//!
//! - `idle`: resident memory per idle authenticated `/admin` connection (`VmRSS` of
//!   `/proc/<pid>/status` after all connected, minus before, divided by the count), then also
//!   subscribed.
//! - `fanout`: S subscribers of `{entities: {orders: [101]}}`; E envelopes published on
//!   `events.order.status_changed` for order 101; each subscriber receives `orders_updated` and
//!   `orders_event_log` per event. Rate = messages counted at the clients / (first publish →
//!   last delivery).
//! - `presence` (gateway only): presence change latency between two instances, and bucket
//!   writes, bucket bytes and resident memory per connected presence user ([`presence`]).
//!
//! It starts its own `nats-server` (via `test-support`), a fresh PostgreSQL database for the
//! gateway (dropped afterwards), the gateway binary from the target dir, and `node
//! sio-baseline/server.mjs` (after `npm ci` when `node_modules` is missing). Clients are a
//! minimal Engine.IO 4 / Socket.IO 5 client over tokio-tungstenite, all in this process.

mod presence;
pub(crate) mod protocol;
mod report;
pub(crate) mod servers;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Subcommand, ValueEnum};
use events::{Envelope, EventType};
use serde_json::{Value, json};
use test_support::metric;
use tokio_tungstenite::tungstenite::Bytes;

use crate::args::{FanoutArgs, FleetArgs, IdleArgs, key_value};
use crate::fanout::{self, Rounds};
use crate::fleet::FleetOptions;
use crate::idle::{self, Gauges, Idle};
use crate::output::Out;
use crate::procfs;
use protocol::SioProtocol;
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
const SECRET: &str = "load sio hs256 secret, not for production";

/// `load sio`: gateway-socketio beside a Node socket.io 4.8 baseline.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The release gateway binary.
    #[arg(long, global = true, default_value = "target/release/gateway-socketio")]
    gateway_bin: PathBuf,
    /// Directory of the Node baseline (`server.mjs`, `package.json`).
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/sio-baseline"))]
    node_dir: PathBuf,
    /// The `node` executable.
    #[arg(long, global = true, default_value = "node")]
    node_bin: String,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Before each fan-out run and RSS reading, wait up to this many seconds for the machine to
    /// be less than 15 % busy (0: do not wait).
    #[arg(long, global = true, default_value_t = 180)]
    quiet_wait_secs: u64,
    /// Extra environment for the node process, `KEY=VALUE` (repeatable), e.g.
    /// `NODE_OPTIONS=--max-semi-space-size=16`.
    #[arg(long = "node-env", global = true, value_parser = key_value)]
    node_env: Vec<(String, String)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resident memory per idle authenticated `/admin` connection.
    Idle {
        #[command(flatten)]
        idle: IdleArgs,
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
        #[command(flatten)]
        fanout: FanoutArgs,
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
    /// Presence (gateway only): update latency between two instances; bucket writes, bucket
    /// bytes and resident memory per connected presence user.
    Presence {
        #[command(flatten)]
        presence: presence::PresenceArgs,
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

/// Runs `load sio ...`.
pub async fn run(args: &Args, out: Out) -> anyhow::Result<()> {
    let connections = match &args.command {
        Command::Idle { idle, .. } => idle.connections,
        Command::Fanout { fanout, .. } => fanout.subscribers,
        Command::Presence { presence } => presence.users.max(presence.watched + 2),
    };
    procfs::make_room_for(connections);

    eprintln!("starting nats-server");
    let nats = tokio::task::spawn_blocking(test_support::NatsServer::start).await?;
    let launch = Launch {
        gateway_bin: args.gateway_bin.clone(),
        node_dir: args.node_dir.clone(),
        node_bin: args.node_bin.clone(),
        secret: SECRET.to_owned(),
        nats_url: nats.url(),
        gateway_env: args.fleet.gateway_env.clone(),
        node_env: args.node_env.clone(),
    };
    let mut report = match &args.command {
        Command::Idle {
            idle: workload,
            engine_only,
            server,
        } => {
            let join = !*engine_only;
            let subscribe = join && !workload.no_subscribe;
            idle(
                args,
                &launch,
                server.kinds(),
                workload.connections,
                join,
                subscribe,
            )
            .await
        }
        Command::Fanout {
            fanout: workload,
            max_buffer,
            ping_timeout_secs,
            server,
        } => {
            let shape = Shape {
                workload: *workload,
                max_buffer: if *max_buffer == 0 {
                    workload.events * EMITS_PER_EVENT as usize + 256
                } else {
                    *max_buffer
                },
                ping_timeout_secs: *ping_timeout_secs,
            };
            fanout(args, &launch, server.kinds(), shape).await?
        }
        Command::Presence { presence } => presence::run(args, &launch, presence).await?,
    };
    drop(nats);
    report["machine"] = procfs::machine();
    if report["mode"] != "presence" {
        report["node_version"] = json!(node_version(&args.node_bin).await);
    }
    out.line(report::human(&report));
    out.finish(&report);
    Ok(())
}

/// An HS256 token both servers accept, valid for 30 days.
fn token() -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = json!({"sub": "load-sio", "iat": now, "exp": now + 30 * 86_400});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

fn protocol(server: &Server, join: bool) -> anyhow::Result<SioProtocol> {
    Ok(SioProtocol {
        request: SioProtocol::request(&server.ws_base())?,
        namespace: "/admin".to_owned(),
        auth: json!({"token": token()?}).to_string(),
        join,
        subscribe: SUBSCRIBE.to_owned(),
        counted: COUNTED.iter().map(|s| (*s).to_owned()).collect(),
    })
}

/// One side's figures; its failure becomes the side's `error`.
fn side(kind: Kind, measured: anyhow::Result<Value>) -> Value {
    measured.unwrap_or_else(|e| {
        eprintln!("{}: {e:#}", kind.name());
        json!({"error": format!("{e:#}")})
    })
}

async fn idle(
    args: &Args,
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
        out[kind.name()] = side(kind, idle_one(args, launch, kind, n, join, subscribe).await);
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
    args: &Args,
    launch: &Launch,
    kind: Kind,
    n: usize,
    join: bool,
    subscribe: bool,
) -> anyhow::Result<Value> {
    eprintln!("{}: starting the server", kind.name());
    let tuning = Tuning {
        // Sessions that never join a namespace are closed after the connect timeout.
        connect_timeout_secs: (!join).then_some(3600),
        ..Tuning::default()
    };
    let server = Server::start(kind, launch, tuning).await?;
    let spec = Idle {
        name: kind.name(),
        pid: server.pid,
        connections: n,
        what: if join {
            "/admin connections"
        } else {
            "Engine.IO sessions (no namespace)"
        },
        subscribe,
        ready_timeout: Duration::from_secs(900),
        quiet_wait_secs: args.quiet_wait_secs,
        gauges: (kind == Kind::Rust).then(|| Gauges {
            url: format!("http://{}/metrics", server.addr),
            connections: ("socketio_connections", "namespace=\"admin\""),
            subscriptions: None,
        }),
    };
    let figures = idle::measure(&spec, protocol(&server, join)?, args.fleet.fleet_options()).await;
    server.stop().await;
    Ok(figures)
}

/// The fan-out workload.
#[derive(Debug, Clone, Copy)]
struct Shape {
    workload: FanoutArgs,
    max_buffer: usize,
    ping_timeout_secs: u64,
}

/// `events` distinct envelopes (`order.status_changed` for order 101), encoded.
fn envelopes(events: usize, payload_bytes: usize) -> anyhow::Result<Vec<Bytes>> {
    let event_type = EventType::parse("order.status_changed")?;
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
            let envelope =
                Envelope::new(event_type.clone(), ORDER_ID, data)?.with_changed_fields(changed);
            Ok(Bytes::from(envelope.encode()))
        })
        .collect()
}

async fn fanout(
    args: &Args,
    launch: &Launch,
    kinds: Vec<Kind>,
    shape: Shape,
) -> anyhow::Result<Value> {
    let FanoutArgs {
        subscribers,
        events,
        payload_bytes,
        runs,
    } = shape.workload;
    let payloads = envelopes(events, payload_bytes)?;
    let nats = async_nats::connect(launch.nats_url.as_str()).await?;
    let mut out = json!({
        "mode": "fanout",
        "subscribers": subscribers,
        "events": events,
        "runs": runs,
        "envelope_bytes": payloads.first().map_or(0, Bytes::len),
        "gateway_max_buffer": shape.max_buffer,
        "ping_timeout_secs": shape.ping_timeout_secs,
        "target_ratio": FANOUT_TARGET_RATIO,
    });
    for kind in kinds {
        let measured = fanout_one(args, launch, kind, shape, &payloads, &nats).await;
        out[kind.name()] = side(kind, measured);
    }
    fanout::compare(
        &mut out,
        "rust",
        "node",
        "rust_over_node",
        FANOUT_TARGET_RATIO,
    );
    Ok(out)
}

async fn fanout_one(
    args: &Args,
    launch: &Launch,
    kind: Kind,
    shape: Shape,
    payloads: &[Bytes],
    nats: &async_nats::Client,
) -> anyhow::Result<Value> {
    let name = kind.name();
    eprintln!("{name}: starting the server");
    let tuning = Tuning {
        max_buffer: Some(shape.max_buffer),
        ping_timeout_secs: (shape.ping_timeout_secs > 0).then_some(shape.ping_timeout_secs),
        ..Tuning::default()
    };
    let server = Server::start(kind, launch, tuning).await?;
    let FanoutArgs {
        subscribers,
        events,
        runs,
        ..
    } = shape.workload;
    let per_subscriber = events as u64 * EMITS_PER_EVENT;
    let options = FleetOptions {
        subscribe_on_connect: true,
        per_round: per_subscriber,
        live_counts: true,
        ..args.fleet.fleet_options()
    };
    let (mut fleet, subscribed) =
        fanout::subscribers(name, subscribers, protocol(&server, true)?, options).await;
    let rounds = Rounds {
        name,
        runs,
        subscribers,
        per_subscriber,
        timeout: Duration::from_secs(600),
        stall: Some(Duration::from_secs(15)),
        server_pid: server.pid,
        nats_pid: procfs::child_named("nats-server"),
        quiet_wait_secs: args.quiet_wait_secs,
    };
    let results = fanout::measure(&mut fleet, &rounds, async || {
        for payload in payloads {
            nats.publish(SUBJECT, payload.clone()).await?;
        }
        Ok(nats.flush().await?)
    })
    .await;
    let metrics = server.metrics().await;
    let counters = &fleet.counters;
    let per_event: serde_json::Map<String, Value> = COUNTED
        .iter()
        .zip(&counters.per_kind)
        .map(|(n, c)| {
            (
                (*n).to_owned(),
                json!(c.load(std::sync::atomic::Ordering::Relaxed)),
            )
        })
        .collect();
    let other_events = counters.other.load(std::sync::atomic::Ordering::Relaxed);
    let problems = fleet.problem_lines();
    fleet.close().await;
    server.stop().await;
    let mut side = fanout::side_json(&results?, problems);
    side["pid"] = json!(rounds.server_pid);
    side["subscribed"] = json!(subscribed);
    side["events_received"] = per_event.into();
    side["other_events_received"] = json!(other_events);
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
