//! Fan-out from NATS to connections.
//!
//! Each `/ws` channel has one broadcast ring. The relay decodes an event once, serialises the
//! `/ws` message once and pushes the shared bytes into the ring; every subscribed connection
//! reads the same allocation. A connection that falls more than the ring's capacity behind is
//! told it lagged and is closed as a slow consumer, so memory stays bounded no matter how slow
//! a client is.

use axum::extract::ws::Utf8Bytes;
use events::surface::{WsChannel, ws_message, ws_route};
use events::trace_context::set_parent_from_headers;
use futures_util::StreamExt;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One serialised `/ws` event message, shared by every recipient.
pub type Frame = Utf8Bytes;

/// The broadcast rings, one per channel, at [`WsChannel::index`].
#[derive(Debug)]
pub struct Hub {
    rings: [broadcast::Sender<Frame>; WsChannel::ALL.len()],
}

impl Hub {
    /// Rings holding `capacity` messages each.
    pub fn new(capacity: usize) -> Self {
        Self {
            rings: std::array::from_fn(|_| broadcast::channel(capacity).0),
        }
    }

    /// A receiver for a channel's future events.
    pub fn subscribe(&self, channel: WsChannel) -> broadcast::Receiver<Frame> {
        let rx = self.rings[channel.index()].subscribe();
        self.report(channel);
        rx
    }

    /// Updates the subscription gauge after a receiver was added or dropped.
    pub fn report(&self, channel: WsChannel) {
        metrics::gauge!("ws_subscriptions", "channel" => channel.as_str())
            .set(self.rings[channel.index()].receiver_count() as f64);
    }

    /// Sends a frame to the channel's subscribers; returns how many there were.
    pub fn publish(&self, channel: WsChannel, frame: Frame) -> usize {
        self.rings[channel.index()].send(frame).unwrap_or(0)
    }
}

/// Relays domain events of the five `/ws` domains from core NATS until shutdown. Core NATS
/// subscriptions are re-established by the client after a reconnect; events published while
/// this instance is disconnected are not replayed (clients resynchronise on reconnect).
pub async fn relay(
    nats: async_nats::Client,
    hub: std::sync::Arc<Hub>,
    shutdown: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    // One subscription keeps events in publish order; other domains are skipped cheaply by
    // subject before any decoding.
    let mut merged = nats.subscribe("events.*.*").await?;
    let delivered = metrics::counter!("ws_messages_out_total");
    let relayed = metrics::counter!("ws_events_relayed_total");
    let invalid = metrics::counter!("ws_events_invalid_total");
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            m = merged.next() => match m {
                Some(m) => m,
                None => return Ok(()),
            },
        };
        let domain = message.subject.split('.').nth(1).unwrap_or_default();
        if WsChannel::for_domain(domain).is_none() {
            continue;
        }
        let envelope = match events::Envelope::decode(&message.payload) {
            Ok(e) => e,
            Err(err) => {
                invalid.increment(1);
                tracing::warn!(subject = %message.subject, error = %err, "dropping invalid event");
                continue;
            }
        };
        let Some(route) = ws_route(&envelope.event_type) else {
            continue;
        };
        relayed.increment(1);
        let span = relay_span(&message, &envelope, route.channel);
        let recipients = span.in_scope(|| {
            let frame = Frame::from(ws_message(&envelope, route));
            hub.publish(route.channel, frame)
        });
        span.record("recipients", recipients);
        delivered.increment(recipients as u64);
    }
}

/// One span per relayed event (not per recipient), a child of the publisher's span named by the
/// message's `traceparent`. At `info`, so it exists only while a layer wants it; the header is
/// parsed only then (see [`events::trace_context::set_parent_from_headers`]).
fn relay_span(
    message: &async_nats::Message,
    envelope: &events::Envelope,
    channel: WsChannel,
) -> tracing::Span {
    let span = tracing::info_span!(
        "ws.relay",
        otel.kind = "consumer",
        subject = %message.subject,
        event.id = %envelope.id,
        event.type = %envelope.event_type,
        channel = channel.as_str(),
        recipients = tracing::field::Empty,
    );
    set_parent_from_headers(&span, message.headers.as_ref());
    span
}
