//! Domain events → `/admin` rooms: each event goes, unchanged and serialised once, to the rooms
//! `events::surface` names for it (`{domain}_updated`, `{domain}_event_log`,
//! `event_log_created`, `{feedChannel}_message`).

use events::surface::AdminEmitKind;
use events::trace_context::set_parent_from_headers;
use service_runtime::ReadyFlag;
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::{count_broadcast_error, next, raw_json, subscribe};
use crate::namespace::Namespace;

/// The `event_kind` label of `socketio_events_relayed_total` for an `/admin` emit.
const fn relayed_label(kind: AdminEmitKind) -> &'static str {
    match kind {
        AdminEmitKind::Updated => "updated",
        AdminEmitKind::EventLog => "event_log",
        AdminEmitKind::EventLogCreated => "event_log_created",
        AdminEmitKind::ChannelMessage => "feed_message",
    }
}

pub(crate) async fn relay(
    io: SocketIo,
    nats: async_nats::Client,
    subscribed: ReadyFlag,
    shutdown: CancellationToken,
) {
    let Some(mut sub) = subscribe(&nats, events::subject::ALL_EVENTS, &shutdown).await else {
        return;
    };
    subscribed.set();
    while let Some(message) = next(&mut sub, &shutdown).await {
        relay_event(&io, &message).await;
    }
}

/// One domain event to the `/admin` rooms `events::surface` names. The payload is the envelope
/// exactly as published, serialised once for all sockets.
async fn relay_event(io: &SocketIo, message: &async_nats::Message) {
    let payload = &message.payload;
    let envelope = match events::Envelope::decode(payload) {
        Ok(envelope) => envelope,
        Err(e) => {
            metrics::counter!("socketio_events_invalid_total").increment(1);
            tracing::warn!(error = %e, "undecodable domain event skipped");
            return;
        }
    };
    // Decoding succeeded, so the bytes are one JSON object in UTF-8.
    let Some(raw) = raw_json(payload) else {
        return;
    };
    let Some(admin) = io.of(Namespace::Admin.path()) else {
        return;
    };
    let emits = events::surface::admin_emits(&envelope);
    let span = relay_span(message, &envelope, emits.len());
    async move {
        for emit in emits {
            let kind = relayed_label(emit.kind);
            if let Err(e) = admin.clone().to(emit.rooms).emit(&emit.event, &raw).await {
                count_broadcast_error(&e);
            }
            metrics::counter!("socketio_events_relayed_total", "event_kind" => kind).increment(1);
        }
    }
    .instrument(span)
    .await;
}

/// One span per relayed event (not per socket or room), a child of the publisher's span named
/// by the message's `traceparent`. At `info`, so it exists only while a layer wants it; the
/// header is parsed only then (see [`events::trace_context::set_parent_from_headers`]).
fn relay_span(
    message: &async_nats::Message,
    envelope: &events::Envelope,
    emits: usize,
) -> tracing::Span {
    let span = tracing::info_span!(
        "socketio.relay",
        otel.kind = "consumer",
        subject = %message.subject,
        event.id = %envelope.id,
        event.type = %envelope.event_type,
        namespace = Namespace::Admin.path(),
        emits,
    );
    set_parent_from_headers(&span, message.headers.as_ref());
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn relayed_events_are_labelled_by_their_kind() {
        let envelope = events::Envelope::new(
            events::EventType::parse("deal.provider_assigned").unwrap(),
            "555",
            Value::Null,
        )
        .unwrap()
        .with_audience(events::envelope::Audience {
            channel: Some(events::token::Token::new("channel", "deal_feed").unwrap()),
            ..Default::default()
        });
        let labels: Vec<_> = events::surface::admin_emits(&envelope)
            .into_iter()
            .map(|emit| relayed_label(emit.kind))
            .collect();
        assert_eq!(
            labels,
            ["updated", "event_log", "event_log_created", "feed_message"]
        );
    }
}
