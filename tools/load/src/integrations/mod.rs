//! `load integrations`: executions per second through gateway-socketio → NATS →
//! integrations-runner → a local third-party API (issue 13), and the latency the platform
//! adds over calling that API directly.
//!
//! It starts its own stack ([`stack`]): a private nats-server, the release runner and gateway
//! as processes (each on a fresh PostgreSQL database), the local axum API ([`api`]) in this
//! process, and one integration created through the runner's REST API. Then:
//!
//! 1. **contract** ([`contract`]): every integration event once, each payload seen on a socket
//!    or on NATS validated against `proto/schemas/`;
//! 2. **latency**: `--latency-concurrency` callers, `--latency-executions` calls, directly to
//!    the API and then through the gateway: p50/p99 of each and the difference (the platform's
//!    added latency, target ≤ 2 ms at p50);
//! 3. **throughput**: `--clients` Socket.IO clients with `--in-flight-per-client` calls each
//!    in flight, `--executions` calls through the gateway (target ≥ 2,000/s), then the same
//!    count directly with the same concurrency; the CPU each process used per execution.
//!
//! Clients are the fleet's minimal Socket.IO client ([`client`]) on `/admin` (the same
//! handlers as `/`); each call is `integration:execute` with an ack ([`measure`]).

mod api;
mod client;
mod contract;
mod measure;
mod stack;

use std::path::PathBuf;

use anyhow::bail;
use serde_json::{Value, json};
use test_support::metric;
use tokio::task::JoinSet;

use crate::args::{key_value, quiet};
use crate::output::{Out, machine_line, num, verdict};
use crate::procfs;
use crate::stats::summary_line;
use client::Client;
use stack::{Stack, StackOptions};

/// Target: executions per second through the platform.
const TARGET_PER_SEC: f64 = 2000.0;
/// Target: milliseconds the platform adds at p50.
const TARGET_ADDED_P50_MS: f64 = 2.0;

/// `load integrations`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The release gateway binary.
    #[arg(long, default_value = "target/release/gateway-socketio")]
    gateway_bin: PathBuf,
    /// The release runner binary.
    #[arg(long, default_value = "target/release/integrations-runner")]
    runner_bin: PathBuf,
    /// Socket.IO clients of the throughput phase.
    #[arg(long, default_value_t = 256)]
    clients: usize,
    /// Calls in flight on each client (the gateway allows
    /// `integrations.max_in_flight_per_socket`, 8 by default).
    #[arg(long, default_value_t = 1)]
    in_flight_per_client: usize,
    /// Calls of the throughput phase (each side).
    #[arg(long, default_value_t = 30_000)]
    executions: usize,
    /// Callers of the latency phase.
    #[arg(long, default_value_t = 4)]
    latency_concurrency: usize,
    /// Calls of the latency phase (each side).
    #[arg(long, default_value_t = 5_000)]
    latency_executions: usize,
    /// Calls before measuring (each side), to warm caches and connection pools.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Before each phase, wait up to this many seconds for the machine to be less than 15 %
    /// busy (0: do not wait).
    #[arg(long, default_value_t = 60)]
    quiet_wait_secs: u64,
    /// Skip the contract check.
    #[arg(long)]
    skip_contract: bool,
    /// Extra environment for the gateway, `KEY=VALUE` (repeatable), e.g.
    /// `GATEWAY_SOCKETIO_INTEGRATIONS__MAX_IN_FLIGHT=4096`.
    #[arg(long = "gateway-env", value_parser = key_value)]
    gateway_env: Vec<(String, String)>,
    /// Extra environment for the runner, `KEY=VALUE` (repeatable), e.g.
    /// `INTEGRATIONS_RUNNER_EXECUTION__MAX_IN_FLIGHT=2048`.
    #[arg(long = "runner-env", value_parser = key_value)]
    runner_env: Vec<(String, String)>,
}

/// Runs `load integrations`.
pub async fn run(args: &Args, out: Out) -> anyhow::Result<()> {
    if args.clients == 0 || args.in_flight_per_client == 0 || args.latency_concurrency == 0 {
        bail!("--clients, --in-flight-per-client and --latency-concurrency must be at least 1");
    }
    let load_before = loadavg();
    procfs::make_room_for(args.clients + args.latency_concurrency + 64);
    let schemas = contract::Schemas::load()?;
    let stack = Stack::start(&StackOptions {
        gateway_bin: args.gateway_bin.clone(),
        runner_bin: args.runner_bin.clone(),
        gateway_env: args.gateway_env.clone(),
        runner_env: args.runner_env.clone(),
    })
    .await?;
    let result = measure_all(args, &stack, &schemas).await;
    let gateway_metrics = stack.gateway.metrics().await;
    let runner_metrics = stack.runner_metrics().await;
    stack.stop().await;
    let mut report = result?;
    report["runner_executions"] = json!({
        "ok": metric(&runner_metrics, "integration_executions_total", "outcome=\"ok\""),
        "busy": metric(&runner_metrics, "integration_executions_total", "outcome=\"busy\""),
    });
    report["gateway_busy"] = json!(metric(
        &gateway_metrics,
        "socketio_integration_events_total",
        "outcome=\"busy\""
    ));
    report["machine"] = procfs::machine();
    report["loadavg_before"] = json!(load_before);
    report["loadavg_after"] = json!(loadavg());
    out.line(human(&report));
    out.finish(&report);
    let problems = report["contract"]["problems"]
        .as_array()
        .map_or(0, Vec::len);
    if problems > 0 {
        bail!("{problems} contract problem(s), listed above");
    }
    Ok(())
}

async fn measure_all(
    args: &Args,
    stack: &Stack,
    schemas: &contract::Schemas,
) -> anyhow::Result<Value> {
    let mut report = json!({
        "mode": "integrations",
        "clients": args.clients,
        "in_flight_per_client": args.in_flight_per_client,
        "executions": args.executions,
        "latency_concurrency": args.latency_concurrency,
        "latency_executions": args.latency_executions,
        "warmup": args.warmup,
        "targets": {"per_sec": TARGET_PER_SEC, "added_p50_ms": TARGET_ADDED_P50_MS},
    });
    report["contract"] = if args.skip_contract {
        json!({"skipped": true})
    } else {
        eprintln!("contract: every event once, payloads against proto/schemas");
        contract::run(stack, schemas).await?.json()
    };

    eprintln!("connecting {} clients", args.clients);
    let clients = connect(stack, args.clients.max(args.latency_concurrency)).await?;
    eprintln!("warming up ({} calls each side)", args.warmup);
    let (clients, warm) = measure::platform(clients, 1, args.warmup).await;
    let warm_direct = measure::direct(&stack.api, args.clients, args.warmup).await;
    report["warmup_failures"] = json!({"platform": warm.failures, "direct": warm_direct.failures});

    // Latency: few callers, so the figures are the path's, not a queue's.
    let quiet_latency = quiet(args.quiet_wait_secs).await;
    eprintln!(
        "latency: {} callers, {} calls each side",
        args.latency_concurrency, args.latency_executions
    );
    let direct = measure::direct(
        &stack.api,
        args.latency_concurrency,
        args.latency_executions,
    )
    .await;
    let mut clients = clients;
    let rest = clients.split_off(args.latency_concurrency.min(clients.len()));
    let (mut all, platform) = measure::platform(clients, 1, args.latency_executions).await;
    all.extend(rest);
    report["latency"] = compare(direct.json(), platform.json());
    report["latency"]["quiet"] = json!(quiet_latency);

    // Throughput: every client, closed loop.
    let quiet_throughput = quiet(args.quiet_wait_secs).await;
    let concurrency = args.clients * args.in_flight_per_client;
    eprintln!(
        "throughput: {concurrency} in flight, {} calls each side",
        args.executions
    );
    let pids = Pids {
        gateway: stack.gateway.pid,
        runner: stack.runner.pid(),
        nats: procfs::child_named("nats-server"),
    };
    let before = pids.cpu();
    let (clients, platform) =
        measure::platform(all, args.in_flight_per_client, args.executions).await;
    let after = pids.cpu();
    let direct = measure::direct(&stack.api, concurrency, args.executions).await;
    let ok = platform.latencies_ms.len();
    report["throughput"] = compare(direct.json(), platform.json());
    report["throughput"]["concurrency"] = json!(concurrency);
    report["throughput"]["quiet"] = json!(quiet_throughput);
    report["throughput"]["cpu"] = cpu_report(&before, &after, ok);
    for client in clients {
        client.close().await;
    }

    let per_sec = report["throughput"]["platform"]["per_sec"].as_f64();
    let added = report["latency"]["added_p50_ms"].as_f64();
    report["meets_per_sec"] = json!(per_sec.map(|r| r >= TARGET_PER_SEC));
    report["meets_added_p50"] = json!(added.map(|a| a <= TARGET_ADDED_P50_MS));
    Ok(report)
}

/// Connects `n` clients, 32 handshakes at a time.
async fn connect(stack: &Stack, n: usize) -> anyhow::Result<Vec<Client>> {
    let protocol = std::sync::Arc::new(stack.protocol()?);
    let mut clients = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    for _ in 0..n {
        if set.len() == 32
            && let Some(done) = set.join_next().await
        {
            clients.push(done??);
        }
        let protocol = std::sync::Arc::clone(&protocol);
        set.spawn(async move { Client::connect(&protocol, &protocol.auth).await });
    }
    while let Some(done) = set.join_next().await {
        clients.push(done??);
    }
    Ok(clients)
}

/// Both sides of a phase and what the platform adds.
fn compare(direct: Value, platform: Value) -> Value {
    let diff = |p: &str| {
        let d = direct["latency_ms"][p].as_f64()?;
        let g = platform["latency_ms"][p].as_f64()?;
        (d.is_finite() && g.is_finite()).then_some(g - d)
    };
    json!({
        "added_p50_ms": diff("p50"),
        "added_p99_ms": diff("p99"),
        "direct": direct,
        "platform": platform,
    })
}

#[derive(Debug, Clone, Copy)]
struct Pids {
    gateway: u32,
    runner: u32,
    nats: Option<u32>,
}

/// CPU seconds used so far: gateway, runner, nats-server, this process, the machine (busy).
#[derive(Debug, Clone, Copy)]
struct Cpu([f64; 5], f64);

impl Pids {
    fn cpu(&self) -> Cpu {
        let of = |pid: Option<u32>| {
            pid.and_then(procfs::cpu_time)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let (busy, total) = procfs::machine_cpu();
        Cpu(
            [
                of(Some(self.gateway)),
                of(Some(self.runner)),
                of(self.nats),
                procfs::own_cpu_time().as_secs_f64(),
                busy.as_secs_f64(),
            ],
            total.as_secs_f64(),
        )
    }
}

/// CPU microseconds per execution of each process, and the machine's busy share.
fn cpu_report(before: &Cpu, after: &Cpu, executions: usize) -> Value {
    let names = ["gateway", "runner", "nats", "load_tool", "machine_busy"];
    let n = executions.max(1) as f64;
    let mut out = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let secs = after.0[i] - before.0[i];
        out.insert(format!("{name}_us_per_exec"), json!(secs * 1e6 / n));
    }
    let total = after.1 - before.1;
    if total > 0.0 {
        out.insert(
            "machine_busy_share".into(),
            json!((after.0[4] - before.0[4]) / total),
        );
    }
    Value::Object(out)
}

/// `/proc/loadavg`'s first three figures.
fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn human(r: &Value) -> String {
    let mut lines = vec![
        "load integrations: gateway-socketio → NATS → integrations-runner → local API".to_owned(),
        machine_line(&r["machine"]),
        format!(
            "load average before {}, after {}",
            r["loadavg_before"].as_str().unwrap_or("-"),
            r["loadavg_after"].as_str().unwrap_or("-")
        ),
    ];
    let contract = &r["contract"];
    if contract["skipped"] != true {
        let checked: u64 = contract["checked"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        let problems = contract["problems"].as_array().cloned().unwrap_or_default();
        lines.push(format!(
            "contract: {checked} payloads against {} schemas, {} problem(s)",
            contract["checked"].as_object().map_or(0, |m| m.len()),
            problems.len()
        ));
        lines.extend(
            problems
                .iter()
                .map(|p| format!("  problem: {}", p.as_str().unwrap_or(""))),
        );
    }
    for (phase, title) in [("latency", "latency"), ("throughput", "throughput")] {
        let p = &r[phase];
        let conc = if phase == "latency" {
            r["latency_concurrency"].clone()
        } else {
            p["concurrency"].clone()
        };
        lines.push(format!("{title} ({conc} in flight):"));
        for side in ["direct", "platform"] {
            let s = &p[side];
            lines.push(format!(
                "  {side:<8} {:>8}/s, {} ok, {} failed; {}",
                num(&s["per_sec"], 0),
                s["ok"],
                s["failed"],
                summary_line(&s["latency_ms"])
            ));
            if s["failed"].as_u64().unwrap_or(0) > 0 {
                lines.push(format!("           failures: {}", s["failures"]));
            }
        }
        lines.push(format!(
            "  added by the platform: p50 {} ms, p99 {} ms",
            num(&p["added_p50_ms"], 2),
            num(&p["added_p99_ms"], 2)
        ));
    }
    let cpu = &r["throughput"]["cpu"];
    lines.push(format!(
        "CPU per execution (throughput): gateway {} µs, runner {} µs, nats {} µs, load tool \
         (clients + API) {} µs; machine busy {} %",
        num(&cpu["gateway_us_per_exec"], 0),
        num(&cpu["runner_us_per_exec"], 0),
        num(&cpu["nats_us_per_exec"], 0),
        num(&cpu["load_tool_us_per_exec"], 0),
        num(
            &json!(cpu["machine_busy_share"].as_f64().map(|s| s * 100.0)),
            0
        ),
    ));
    lines.push(format!(
        "targets: ≥ {TARGET_PER_SEC} executions/s: {}; ≤ {TARGET_ADDED_P50_MS} ms added at p50: {}",
        verdict(&r["meets_per_sec"]),
        verdict(&r["meets_added_p50"])
    ));
    lines.join("\n")
}
