//! Subscribing to NATS for the relays: retried until the client is connected, ended by the
//! shutdown token; and what every relay does with what it forwards.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::value::RawValue;
use service_runtime::Backoff;
use tokio_util::sync::CancellationToken;

/// First and longest wait between two subscription attempts.
const SUBSCRIBE_RETRY_BASE: Duration = Duration::from_millis(100);
const SUBSCRIBE_RETRY_MAX: Duration = Duration::from_secs(5);

/// Subscribes, retrying while NATS is not connected yet (the client reconnects by itself).
/// `None` once shutting down.
pub(crate) async fn subscribe(
    nats: &async_nats::Client,
    subject: &'static str,
    shutdown: &CancellationToken,
) -> Option<async_nats::Subscriber> {
    let mut backoff = Backoff::new(SUBSCRIBE_RETRY_BASE, SUBSCRIBE_RETRY_MAX);
    loop {
        match nats.subscribe(subject).await {
            Ok(sub) => return Some(sub),
            Err(e) => tracing::warn!(subject, error = %e, "subscribe failed; retrying"),
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// The next message, or `None` once shutting down or the subscription ended.
pub(crate) async fn next(
    sub: &mut async_nats::Subscriber,
    shutdown: &CancellationToken,
) -> Option<async_nats::Message> {
    tokio::select! {
        () = shutdown.cancelled() => None,
        m = sub.next() => m,
    }
}

/// A NATS payload as JSON to forward unchanged, when it is JSON.
pub(crate) fn raw_json(payload: &[u8]) -> Option<Box<RawValue>> {
    let text = std::str::from_utf8(payload).ok()?;
    RawValue::from_string(text.to_owned()).ok()
}

/// Sockets whose queue was full missed the emit; they are counted (and dropped by their next
/// heartbeat, which cannot be queued either).
pub(crate) fn count_broadcast_error(error: &socketioxide::BroadcastError) {
    match error {
        socketioxide::BroadcastError::Socket(errors) => {
            metrics::counter!("socketio_emits_dropped_total").increment(errors.len() as u64);
        }
        other => tracing::warn!(error = %other, "broadcast failed"),
    }
}
