//! Options more than one surface takes.

use std::time::Duration;

use crate::fleet::FleetOptions;
use crate::procfs;

/// How the gateway runs and the client fleet connects (`load sio`, `load ws`).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Extra environment for the gateway process, `KEY=VALUE` (repeatable), e.g.
    /// `MALLOC_ARENA_MAX=2`.
    #[arg(long = "gateway-env", global = true, value_parser = key_value)]
    pub gateway_env: Vec<(String, String)>,
    /// WebSocket handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 200)]
    pub concurrency: usize,
    /// tungstenite read buffer of each client connection, in bytes.
    #[arg(long, global = true, default_value_t = 4096)]
    pub client_read_buffer: usize,
}

impl FleetArgs {
    /// Fleet options that hold every client connected (no subscribe on connect, no rounds).
    pub fn fleet_options(&self) -> FleetOptions {
        FleetOptions {
            concurrency: self.concurrency,
            read_buffer: self.client_read_buffer,
            subscribe_on_connect: false,
            per_round: 0,
            live_counts: false,
        }
    }
}

/// The idle workload (`load sio idle`, `load ws idle`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Measure connected-only connections; do not subscribe them afterwards.
    #[arg(long)]
    pub no_subscribe: bool,
}

/// The fan-out workload (`load sio fanout`, `load ws fanout`).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct FanoutArgs {
    /// Subscribed clients.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Events (envelopes) published per run.
    #[arg(long, default_value_t = 2000)]
    pub events: usize,
    /// Approximate size of each event's `data` JSON in bytes.
    #[arg(long, default_value_t = 200)]
    pub payload_bytes: usize,
    /// Runs per side; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// Before a reading, waits up to `limit_secs` for the machine to be less than 15 % busy (0:
/// do not wait). Returns whether it was quiet.
pub async fn quiet(limit_secs: u64) -> bool {
    limit_secs == 0 || procfs::wait_quiet(0.15, Duration::from_secs(limit_secs)).await
}

/// Parses `KEY=VALUE`.
pub fn key_value(raw: &str) -> Result<(String, String), String> {
    let (k, v) = raw
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {raw:?}"))?;
    if k.trim().is_empty() {
        return Err(format!("{raw:?} has no key"));
    }
    Ok((k.trim().to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value() {
        assert_eq!(
            key_value("MALLOC_ARENA_MAX=2"),
            Ok(("MALLOC_ARENA_MAX".to_owned(), "2".to_owned()))
        );
        assert_eq!(key_value("A=b=c"), Ok(("A".to_owned(), "b=c".to_owned())));
        assert!(key_value("nothing").is_err());
        assert!(key_value("=1").is_err());
    }
}
