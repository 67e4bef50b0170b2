//! `load ws`: measures a release `gateway-ws` process.
//!
//! - `idle`: resident memory per authenticated idle connection (connected, then also
//!   subscribed), from `/proc/<pid>/status` `VmRSS`.
//! - `fanout`: messages delivered per second to S subscribers of `order_changes` for E events
//!   published on NATS, against a bare tokio-tungstenite broadcast server driven by the same
//!   clients.
//!
//! It starts its own `nats-server` (via `test-support`), puts one connect-redis session in
//! Redis, and starts the gateway binary with connection caps above the test size. All clients
//! live in this process.

mod baseline;
mod protocol;
mod report;
mod stack;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use events::surface::{ws_message, ws_route};
use events::{Envelope, EventType};
use serde_json::{Value, json};
use test_support::metric;
use tokio_tungstenite::tungstenite::{Bytes, Utf8Bytes};

use crate::args::{FanoutArgs, FleetArgs, IdleArgs};
use crate::fanout::{self, Rounds};
use crate::fleet::FleetOptions;
use crate::idle::{self, Gauges, Idle};
use crate::output::Out;
use crate::procfs;
use baseline::Baseline;
use protocol::WsProtocol;
use stack::{GatewayOptions, Stack};

/// Target: resident bytes per idle connection.
const IDLE_TARGET_BYTES: f64 = 6.0 * 1024.0;
/// Target: gateway throughput as a fraction of the baseline's.
const FANOUT_TARGET_RATIO: f64 = 0.70;
/// NATS subject the events are published on (`events.<domain>.<event_type>`).
const SUBJECT: &str = "events.order.updated";

/// `load ws`: gateway-ws (idle memory, fan-out throughput).
#[derive(Debug, clap::Args)]
pub struct Args {
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
    #[command(flatten)]
    fleet: FleetArgs,
    /// Broadcast ring capacity of both servers (the gateway's `LIMITS__OUTBOUND_QUEUE`).
    #[arg(long, global = true, default_value_t = 4096)]
    queue: usize,
    /// Before each fan-out run and RSS reading, wait up to this many seconds for the machine to
    /// be less than 15 % busy (0: do not wait).
    #[arg(long, global = true, default_value_t = 600)]
    quiet_wait_secs: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resident memory per authenticated idle connection.
    Idle {
        #[command(flatten)]
        idle: IdleArgs,
    },
    /// Delivered messages per second, gateway versus a bare tokio-tungstenite server.
    Fanout {
        #[command(flatten)]
        fanout: FanoutArgs,
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

/// Runs `load ws ...`.
pub async fn run(args: &Args, out: Out) -> anyhow::Result<()> {
    let mut report = match &args.command {
        Command::ServeBaseline {
            queue,
            baseline_loop,
            connected,
            frame,
        } => {
            baseline::serve_process(*queue, *baseline_loop, connected.clone(), frame.clone()).await;
            return Ok(());
        }
        Command::Idle { idle: workload } => {
            procfs::make_room_for(workload.connections);
            idle(args, workload.connections, !workload.no_subscribe).await?
        }
        Command::Fanout {
            fanout: shape,
            sides,
            baseline_loop,
        } => {
            procfs::make_room_for(shape.subscribers);
            fanout(args, *shape, *sides, *baseline_loop).await?
        }
    };
    report["machine"] = procfs::machine();
    out.line(report::human(&report));
    out.finish(&report);
    Ok(())
}

fn gateway_options(args: &Args, connections: usize) -> GatewayOptions {
    GatewayOptions {
        bin: args.gateway_bin.clone(),
        redis_url: args.redis_url.clone(),
        connections,
        outbound_queue: args.queue,
        extra_env: args.fleet.gateway_env.clone(),
    }
}

fn gateway_protocol(stack: &Stack) -> anyhow::Result<WsProtocol> {
    WsProtocol::new(&format!("ws://{}/ws", stack.addr()), Some(&stack.cookie))
}

async fn idle(args: &Args, n: usize, subscribe: bool) -> anyhow::Result<Value> {
    eprintln!(
        "gateway: starting nats-server and gateway ({})",
        args.gateway_bin.display()
    );
    let stack = Stack::start(&gateway_options(args, n)).await?;
    let spec = Idle {
        name: "gateway",
        pid: stack.pid(),
        connections: n,
        what: "connections",
        subscribe,
        ready_timeout: Duration::from_secs(600),
        quiet_wait_secs: args.quiet_wait_secs,
        gauges: Some(Gauges {
            url: stack.metrics_url(),
            connections: ("ws_connections", ""),
            subscriptions: Some(("ws_subscriptions", "order_changes")),
        }),
    };
    let gateway = idle::measure(&spec, gateway_protocol(&stack)?, args.fleet.fleet_options()).await;
    stack.remove_session().await;
    // The headline is the subscribed figure when there is one.
    let headline = gateway["bytes_per_connection_subscribed"]
        .as_f64()
        .or(gateway["bytes_per_connection_connected"].as_f64())
        .unwrap_or(f64::INFINITY);
    Ok(json!({
        "mode": "idle",
        "connections_requested": n,
        "gateway": gateway,
        "target_bytes_per_connection": IDLE_TARGET_BYTES,
        "meets_target": headline <= IDLE_TARGET_BYTES,
    }))
}

/// The event published, and the `/ws` frame the gateway makes of it (which the baseline sends).
fn event(payload_bytes: usize) -> anyhow::Result<(Bytes, Utf8Bytes)> {
    let mut data = json!({"id": 1, "order_number": "ORD-0000000001", "status": "processing",
                          "payment_status": "paid", "total": 99.99, "customer_id": 45,
                          "currency": "USD", "note": ""});
    let pad = payload_bytes.saturating_sub(data.to_string().len());
    data["note"] = json!("x".repeat(pad));
    let envelope = Envelope::new(EventType::parse("order.updated")?, "1", data)?;
    let route = ws_route(&envelope.event_type).ok_or_else(|| anyhow::anyhow!("no /ws route"))?;
    Ok((
        Bytes::from(envelope.encode()),
        Utf8Bytes::from(ws_message(&envelope, route)),
    ))
}

fn round_timeout(subscribers: usize, events: usize) -> Duration {
    // Allow down to 10,000 deliveries per second before calling a run stuck.
    Duration::from_secs(60.max((subscribers * events / 10_000) as u64))
}

/// The fan-out workload.
type Shape = FanoutArgs;

impl Shape {
    fn rounds<'a>(&self, args: &Args, name: &'a str, server_pid: u32) -> Rounds<'a> {
        Rounds {
            name,
            runs: self.runs,
            subscribers: self.subscribers,
            per_subscriber: self.events as u64,
            timeout: round_timeout(self.subscribers, self.events),
            stall: None,
            server_pid,
            nats_pid: None,
            quiet_wait_secs: args.quiet_wait_secs,
        }
    }

    fn fleet_options(&self, args: &Args, subscribe_on_connect: bool) -> FleetOptions {
        FleetOptions {
            subscribe_on_connect,
            per_round: self.events as u64,
            ..args.fleet.fleet_options()
        }
    }
}

async fn fanout(
    args: &Args,
    shape: Shape,
    sides: Sides,
    baseline_loop: baseline::Loop,
) -> anyhow::Result<Value> {
    let (payload, frame) = event(shape.payload_bytes)?;
    if shape.events > args.queue {
        eprintln!(
            "warning: {} events exceed the ring of {} frames: subscribers that fall that far \
             behind are closed as slow consumers (raise --queue)",
            shape.events, args.queue
        );
    }
    let mut out = json!({
        "mode": "fanout",
        "subscribers": shape.subscribers,
        "events": shape.events,
        "runs": shape.runs,
        "queue": args.queue,
        "envelope_bytes": payload.len(),
        "frame_bytes": frame.len(),
        "target_ratio": FANOUT_TARGET_RATIO,
    });
    if sides != Sides::Baseline {
        out["gateway"] = fanout_gateway(args, shape, &payload).await?;
    }
    if sides != Sides::Gateway {
        out["baseline"] = fanout_baseline(args, shape, &frame, baseline_loop).await?;
    }
    fanout::compare(
        &mut out,
        "gateway",
        "baseline",
        "ratio",
        FANOUT_TARGET_RATIO,
    );
    Ok(out)
}

async fn fanout_gateway(args: &Args, shape: Shape, payload: &Bytes) -> anyhow::Result<Value> {
    eprintln!("gateway: starting nats-server and gateway");
    let stack = Stack::start(&gateway_options(args, shape.subscribers)).await?;
    let (mut fleet, subscribed) = fanout::subscribers(
        "gateway",
        shape.subscribers,
        gateway_protocol(&stack)?,
        shape.fleet_options(args, true),
    )
    .await;
    let gauge = metric(&stack.metrics().await, "ws_subscriptions", "order_changes");
    let nats = async_nats::connect(stack.nats_url()).await?;
    nats.flush().await?;
    let rounds = Rounds {
        nats_pid: procfs::child_named("nats-server"),
        ..shape.rounds(args, "gateway", stack.pid())
    };
    let results = fanout::measure(&mut fleet, &rounds, async || {
        for _ in 0..shape.events {
            nats.publish(SUBJECT, payload.clone()).await?;
        }
        Ok(nats.flush().await?)
    })
    .await;
    let metrics = stack.metrics().await;
    let problems = fleet.problem_lines();
    fleet.close().await;
    stack.remove_session().await;
    drop(stack);
    let mut side = fanout::side_json(&results?, problems);
    side["subscribed"] = json!(subscribed);
    side["gateway_ws_subscriptions"] = json!(gauge);
    side["events_relayed"] = json!(metric(&metrics, "ws_events_relayed_total", ""));
    side["messages_out"] = json!(metric(&metrics, "ws_messages_out_total", ""));
    side["slow_consumer_closes"] = json!(metric(&metrics, "ws_dropped_total", "slow_consumer"));
    side["write_timeouts"] = json!(metric(&metrics, "ws_dropped_total", "write_timeout"));
    Ok(side)
}

async fn fanout_baseline(
    args: &Args,
    shape: Shape,
    frame: &Utf8Bytes,
    kind: baseline::Loop,
) -> anyhow::Result<Value> {
    let connected = gateway_ws::protocol::connected(&json!("load-user"));
    let mut server = Baseline::spawn(args.queue, kind, &connected, frame.as_str()).await?;
    let pid = server.pid().unwrap_or(0);
    let (mut fleet, connected) = fanout::subscribers(
        "baseline",
        shape.subscribers,
        WsProtocol::new(&server.url(), None)?,
        shape.fleet_options(args, false),
    )
    .await;
    eprintln!("baseline: {} ring receivers", server.stats().await.1);
    let rounds = shape.rounds(args, "baseline", pid);
    let results = fanout::measure(&mut fleet, &rounds, async || {
        Ok(server.broadcast(shape.events).await?)
    })
    .await;
    let problems = fleet.problem_lines();
    let (lagged, _) = server.stats().await;
    fleet.close().await;
    drop(server);
    let mut side = fanout::side_json(&results?, problems);
    side["loop"] = json!(format!("{kind:?}"));
    side["connected"] = json!(connected);
    side["slow_consumer_closes"] = json!(lagged);
    Ok(side)
}
