//! `load`: load measurements of the product's surfaces, one subcommand per surface.
//!
//! - `load sio idle|fanout`: gateway-socketio beside a Node socket.io 4.8 baseline; `load sio
//!   presence`: the gateway's cluster-wide presence (latency between instances, cost per user).
//! - `load ws idle|fanout`: gateway-ws beside a bare tokio-tungstenite broadcast server.
//! - `load webhook throughput|latency`: webhook-dispatcher end to end.
//! - `load stat throughput|latency`: stat-aggregator's fold rate and update latency.
//! - `load integrations`: executions/s through gateway-socketio → integrations-runner, and
//!   the latency the platform adds over calling the third-party API directly.
//!
//! Every surface shares one client fleet ([`fleet`]), one way of measuring (`/proc` readings
//! in [`procfs`], fan-out rounds in [`fanout`], idle memory in [`idle`], statistics in
//! [`stats`]) and one report rule ([`output`]). Each starts what it measures itself (a private
//! nats-server, PostgreSQL databases, the release binaries). See `docs/benchmarks.md` for the
//! commands and figures.

// A measurement tool: a broken setup (no nats-server, no PostgreSQL, no gateway binary) should
// stop it loudly, and its report goes to stdout/stderr.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

mod args;
mod fanout;
mod fleet;
mod gateway;
mod idle;
mod integrations;
mod output;
mod procfs;
mod sio;
mod stat;
mod stats;
mod webhook;
mod ws;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use output::Out;

#[derive(Debug, Parser)]
#[command(
    name = "load",
    about = "Load measurements of gateway-socketio, gateway-ws and webhook-dispatcher"
)]
struct Cli {
    /// Print one JSON object on stdout (the human-readable report goes to stderr).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    surface: Surface,
}

#[derive(Debug, Subcommand)]
enum Surface {
    /// gateway-socketio beside a Node socket.io 4.8 baseline (idle memory, room fan-out).
    Sio(sio::Args),
    /// gateway-ws beside a bare tokio-tungstenite server (idle memory, fan-out).
    Ws(ws::Args),
    /// webhook-dispatcher (delivery throughput, publish → delivery latency).
    Webhook(webhook::Args),
    /// stat-aggregator (events folded per second, publish → update latency).
    Stat(stat::Args),
    /// Integrations (executions/s through gateway-socketio and integrations-runner, added
    /// latency).
    Integrations(integrations::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Surface::Webhook(_) = cli.surface {
        // The dispatcher runs in this process: its logs and its threads' CPU are reported.
        webhook::init_logging();
        runtime.thread_name(webhook::RUNTIME_THREAD);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = Out { json: cli.json };
    let result = runtime.block_on(async {
        match &cli.surface {
            Surface::Sio(args) => sio::run(args, out).await,
            Surface::Ws(args) => ws::run(args, out).await,
            Surface::Webhook(args) => webhook::run(args, out).await,
            Surface::Stat(args) => stat::run(args, out).await,
            Surface::Integrations(args) => integrations::run(args, out).await,
        }
    });
    // Background tasks (pool reapers, NATS clients) are abandoned rather than awaited.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e:#}");
            ExitCode::FAILURE
        }
    }
}
