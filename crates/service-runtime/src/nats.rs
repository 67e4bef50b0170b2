//! The NATS connection: started in the background with retry and capped exponential backoff,
//! so a service comes up (not ready) while NATS is away and becomes ready when it answers.
//!
//! Each service connects as its own NATS user ([`NatsAuth`], from `nats.user` / `nats.password`
//! or `nats.token`) and receives replies on its own inbox prefix ([`inbox_prefix`]), so the
//! server's per-user permissions (`k8s/base/nats/authorization.conf`) can keep every other
//! user from reading them.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{NatsAuth, NatsConfig};

/// Why the client could not be created (bad options; unreachable servers are retried instead).
#[derive(Debug, thiserror::Error)]
#[error("connecting to nats: {0}")]
pub struct NatsError(#[from] async_nats::ConnectError);

/// The inbox prefix of a service's client: `_INBOX_<client_name>`. Request replies, JetStream
/// API answers and consumer deliveries arrive under `_INBOX_<client_name>.>`, which the
/// service's NATS user alone may subscribe to (the default `_INBOX.>` would let any user with
/// that permission read every reply).
pub fn inbox_prefix(client_name: &str) -> String {
    format!("_INBOX_{client_name}")
}

/// Connects as `auth` with retries forever; disconnects and reconnects are logged and counted
/// (`nats_connection_events_total{event}`). Refused credentials and permission violations
/// arrive as `server_error` events (the server's text names the user or subject, never a
/// secret); the client keeps retrying, and `/readyz` stays 503 until it is connected.
pub async fn connect(
    config: &NatsConfig,
    auth: &NatsAuth,
    client_name: &str,
) -> Result<Client, NatsError> {
    let options = match auth {
        NatsAuth::Anonymous => ConnectOptions::new(),
        NatsAuth::UserPassword { user, password } => {
            ConnectOptions::with_user_and_password(user.clone(), password.clone())
        }
        NatsAuth::Token(token) => ConnectOptions::with_token(token.clone()),
    };
    let options = options
        .name(client_name)
        .custom_inbox_prefix(inbox_prefix(client_name))
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
