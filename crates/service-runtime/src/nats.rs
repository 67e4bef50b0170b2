//! The NATS connection: started in the background with retry and capped exponential backoff,
//! so a service comes up (not ready) while NATS is away and becomes ready when it answers.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::NatsConfig;

/// Why the client could not be created (bad options; unreachable servers are retried instead).
#[derive(Debug, thiserror::Error)]
#[error("connecting to nats: {0}")]
pub struct NatsError(#[from] async_nats::ConnectError);

/// Connects with retries forever; disconnects and reconnects are logged and counted
/// (`nats_connection_events_total{event}`).
pub async fn connect(config: &NatsConfig, client_name: &str) -> Result<Client, NatsError> {
    let options = ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(config.connect_timeout_secs))
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(|event| async move {
            let label = match &event {
                Event::Connected => "connected",
                Event::Disconnected => "disconnected",
                Event::LameDuckMode => "lame_duck",
                Event::Draining => "draining",
                Event::Closed => "closed",
                Event::SlowConsumer(_) => "slow_consumer",
                Event::ServerError(_) => "server_error",
                Event::ClientError(_) => "client_error",
            };
            metrics::counter!("nats_connection_events_total", "event" => label).increment(1);
            match event {
                Event::Connected => tracing::info!("nats connected"),
                Event::Disconnected => tracing::warn!("nats disconnected, reconnecting"),
                other => tracing::warn!(event = %other, "nats event"),
            }
        });
    let servers: Vec<&str> = config.url.split(',').map(str::trim).collect();
    Ok(options.connect(servers).await?)
}

/// 0 ms, then 100 ms doubling to a 5 s cap, with ±20 % jitter.
fn reconnect_delay(attempts: usize) -> Duration {
    const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    match attempts {
        0 | 1 => Duration::ZERO,
        n => RECONNECT.delay(u32::try_from(n - 1).unwrap_or(u32::MAX)),
    }
}

/// Whether the client is connected right now.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == State::Connected
}

/// Provisions the `EVENTS` stream, retrying with backoff until it succeeds or `shutdown` fires.
/// Returns whether it succeeded.
pub async fn provision_events_stream(
    js: &async_nats::jetstream::Context,
    settings: &events::provision::StreamSettings,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match events::provision::ensure_stream(js, settings).await {
            Ok(info) => {
                tracing::info!(stream = %info.config.name, messages = info.state.messages, "stream provisioned");
                return true;
            }
            Err(err) => tracing::warn!(error = %err, "stream provisioning failed"),
        }
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert!(reconnect_delay(2) <= Duration::from_millis(120));
        assert!(reconnect_delay(2) >= Duration::from_millis(80));
        for n in 10..100 {
            let d = reconnect_delay(n);
            assert!(
                d <= Duration::from_secs(5) && d >= Duration::from_secs(4),
                "{n}: {d:?}"
            );
        }
    }
}
