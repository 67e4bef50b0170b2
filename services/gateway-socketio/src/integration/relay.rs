//! NATS → rooms, on every instance (core NATS, no queue group), for `/` and `/admin` alike:
//!
//! - `rt.integration.room`: a [`RoomEvent`] published by a gateway (the started and finished
//!   events of an execution), emitted to the room except the caller's socket on its instance;
//! - `rt.integration.usage` (runner): `integration:usage:updated {integrationId, usage,
//!   lastUsed, timestamp}` to room `integration:<id>`;
//! - `rt.integration.webhook` (runner): `integration:webhook:received {integrationId, event,
//!   data, timestamp}` to room `integration:<id>:webhooks`.
//!
//! Every payload is bounded (`integrations.max_push_bytes`) before it is parsed, parsed once,
//! and its body serialised once for every namespace's room.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use service_runtime::ReadyFlag;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio_util::sync::CancellationToken;

use super::NAMESPACES;
use super::payload::{self, Id};
use crate::bus::{count_broadcast_error, next, subscribe};
use crate::gateway::Gateway;

/// Events a [`RoomEvent`] may carry: the ones this gateway publishes.
const ROOM_EVENTS: [&str; 6] = [
    "integration:execution:started",
    "integration:execution:completed",
    "integration:execution:failed",
    "integration:test:started",
    "integration:test:completed",
    "integration:test:failed",
];

/// The socket a room event skips: the caller, on its instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Except {
    pub(crate) instance: String,
    pub(crate) sid: String,
}

/// One event for an integration room, on every instance (`rt.integration.room`).
#[derive(Debug, Serialize)]
pub(crate) struct RoomEvent<'a> {
    pub(crate) room: &'a str,
    pub(crate) event: &'a str,
    pub(crate) data: &'a Value,
    pub(crate) except: Option<Except>,
}

impl<'a> RoomEvent<'a> {
    /// `event` with `data` to `room`, except `s` (on this instance).
    pub(crate) fn except_caller(
        room: &'a str,
        event: &'a str,
        data: &'a Value,
        g: &Gateway,
        s: &SocketRef,
    ) -> Self {
        Self {
            room,
            event,
            data,
            except: Some(Except {
                instance: g.integrations.instance.clone(),
                sid: s.id.to_string(),
            }),
        }
    }
}

/// A received room event, borrowing from the message.
#[derive(Debug, Deserialize)]
struct Received<'a> {
    #[serde(borrow)]
    room: &'a str,
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    except: Option<Except>,
}

/// Publishes a room event (this instance receives it too, like every other).
pub(crate) async fn publish(g: &Gateway, event: &RoomEvent<'_>) {
    let Ok(body) = serde_json::to_vec(event) else {
        return;
    };
    if let Err(e) = g
        .nats
        .publish(events::subject::INTEGRATION_ROOM, body.into())
        .await
    {
        tracing::warn!(error = %e, "room event not published");
    }
}

/// Starts the three relays; `ready` is set once all three are subscribed.
pub(crate) fn spawn(
    set: &mut tokio::task::JoinSet<()>,
    io: &SocketIo,
    g: &Arc<Gateway>,
    ready: ReadyFlag,
    shutdown: &CancellationToken,
) {
    let pending = Arc::new((AtomicUsize::new(3), ready));
    for subject in [
        events::subject::INTEGRATION_ROOM,
        events::subject::INTEGRATION_USAGE,
        events::subject::INTEGRATION_WEBHOOK,
    ] {
        set.spawn(relay(
            subject,
            io.clone(),
            Arc::clone(g),
            Arc::clone(&pending),
            shutdown.clone(),
        ));
    }
}

async fn relay(
    subject: &'static str,
    io: SocketIo,
    g: Arc<Gateway>,
    pending: Arc<(AtomicUsize, ReadyFlag)>,
    shutdown: CancellationToken,
) {
    let Some(mut sub) = subscribe(&g.nats, subject, &shutdown).await else {
        return;
    };
    if pending.0.fetch_sub(1, Ordering::AcqRel) == 1 {
        pending.1.set();
    }
    let max = g.config.integrations.max_push_bytes;
    while let Some(message) = next(&mut sub, &shutdown).await {
        let Some(delivery) = parse(subject, &message.payload, max, &g.integrations.instance) else {
            metrics::counter!("socketio_integration_pushes_invalid_total", "subject" => subject)
                .increment(1);
            continue;
        };
        deliver(&io, delivery).await;
    }
}

/// What to emit where, built once from one message.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) room: String,
    pub(crate) event: &'static str,
    pub(crate) body: Box<RawValue>,
    pub(crate) except: Option<Sid>,
}

/// A NATS message of `subject` as a delivery, when it is within `max` bytes, UTF-8 JSON of the
/// subject's shape and names a valid integration room.
pub(crate) fn parse(subject: &str, payload: &[u8], max: usize, instance: &str) -> Option<Delivery> {
    if payload.len() > max {
        tracing::warn!(
            subject,
            bytes = payload.len(),
            "push over integrations.max_push_bytes; dropped"
        );
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    let delivery = match subject {
        events::subject::INTEGRATION_ROOM => room_event(text, instance),
        events::subject::INTEGRATION_USAGE => usage(text),
        events::subject::INTEGRATION_WEBHOOK => webhook(text),
        _ => None,
    };
    if delivery.is_none() {
        tracing::warn!(subject, "unreadable integration push; dropped");
    }
    delivery
}

fn room_event(text: &str, instance: &str) -> Option<Delivery> {
    let received: Received<'_> = serde_json::from_str(text).ok()?;
    let event = ROOM_EVENTS.into_iter().find(|e| *e == received.event)?;
    let integration = received.room.strip_prefix("integration:")?;
    Id::parse(integration)?;
    let except = received
        .except
        .filter(|e| e.instance == instance)
        .and_then(|e| Sid::from_str(&e.sid).ok());
    Some(Delivery {
        room: received.room.to_owned(),
        event,
        body: received.data.to_owned(),
        except,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Usage<'a> {
    #[serde(borrow)]
    integration_id: &'a str,
    #[serde(borrow)]
    usage: &'a RawValue,
    #[serde(default, borrow)]
    last_used: Option<&'a RawValue>,
    #[serde(default, borrow)]
    timestamp: Option<&'a str>,
}

fn usage(text: &str) -> Option<Delivery> {
    let push: Usage<'_> = serde_json::from_str(text).ok()?;
    Id::parse(push.integration_id)?;
    let now = super::now();
    let body = serde_json::value::to_raw_value(&serde_json::json!({
        "integrationId": push.integration_id,
        "usage": push.usage,
        "lastUsed": push.last_used,
        "timestamp": push.timestamp.unwrap_or(&now),
    }))
    .ok()?;
    Some(Delivery {
        room: payload::room(push.integration_id),
        event: "integration:usage:updated",
        body,
        except: None,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Webhook<'a> {
    #[serde(borrow)]
    integration_id: &'a str,
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    timestamp: Option<&'a str>,
}

fn webhook(text: &str) -> Option<Delivery> {
    let push: Webhook<'_> = serde_json::from_str(text).ok()?;
    Id::parse(push.integration_id)?;
    let now = super::now();
    let body = serde_json::value::to_raw_value(&serde_json::json!({
        "integrationId": push.integration_id,
        "event": push.event,
        "data": push.data,
        "timestamp": push.timestamp.unwrap_or(&now),
    }))
    .ok()?;
    Some(Delivery {
        room: payload::webhook_room(push.integration_id),
        event: "integration:webhook:received",
        body,
        except: None,
    })
}

async fn deliver(io: &SocketIo, delivery: Delivery) {
    for ns in NAMESPACES {
        let Some(ops) = io.of(ns.path()) else {
            continue;
        };
        let ops = ops.to(delivery.room.clone());
        let ops = match delivery.except {
            Some(sid) => ops.except(sid),
            None => ops,
        };
        if let Err(e) = ops.emit(delivery.event, &*delivery.body).await {
            count_broadcast_error(&e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn room_events_skip_the_caller_on_its_instance_only() {
        let sid = Sid::new();
        let text = json!({"room": "integration:i1", "event": "integration:execution:started",
            "data": {"a": 1}, "except": {"instance": "me", "sid": sid.to_string()}})
        .to_string();
        let mine = parse(
            events::subject::INTEGRATION_ROOM,
            text.as_bytes(),
            4096,
            "me",
        )
        .unwrap();
        assert_eq!(mine.except, Some(sid));
        assert_eq!(mine.room, "integration:i1");
        assert_eq!(mine.body.get(), r#"{"a":1}"#);
        let other = parse(
            events::subject::INTEGRATION_ROOM,
            text.as_bytes(),
            4096,
            "you",
        )
        .unwrap();
        assert_eq!(other.except, None);
        assert!(parse(events::subject::INTEGRATION_ROOM, text.as_bytes(), 10, "me").is_none());
        for bad in [
            json!({"room": "chat:1", "event": "integration:execution:started", "data": {}}),
            json!({"room": "integration:i1", "event": "disconnect", "data": {}}),
            json!({"room": "integration:a b", "event": "integration:test:started", "data": {}}),
        ] {
            assert!(
                parse(
                    events::subject::INTEGRATION_ROOM,
                    bad.to_string().as_bytes(),
                    4096,
                    "me"
                )
                .is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn usage_and_webhooks_go_to_their_rooms() {
        let usage = json!({"integrationId": "i1", "projectId": "p1", "usage": {"total": {"calls": 1}},
            "lastUsed": "2026-03-18T10:00:00.000Z", "timestamp": "2026-03-18T10:00:00.000Z"});
        let d = parse(
            events::subject::INTEGRATION_USAGE,
            usage.to_string().as_bytes(),
            4096,
            "me",
        )
        .unwrap();
        assert_eq!(d.room, "integration:i1");
        assert_eq!(d.event, "integration:usage:updated");
        let body: Value = serde_json::from_str(d.body.get()).unwrap();
        assert_eq!(body["usage"]["total"]["calls"], 1);
        assert!(body.get("projectId").is_none());
        let hook = json!({"integrationId": "i1", "projectId": "p1", "event": "stripe.invoice.paid",
            "data": {"id": "evt"}, "timestamp": "2026-03-18T10:00:00.000Z"});
        let d = parse(
            events::subject::INTEGRATION_WEBHOOK,
            hook.to_string().as_bytes(),
            4096,
            "me",
        )
        .unwrap();
        assert_eq!(d.room, "integration:i1:webhooks");
        let body: Value = serde_json::from_str(d.body.get()).unwrap();
        assert_eq!(
            body,
            json!({"integrationId": "i1", "event": "stripe.invoice.paid", "data": {"id": "evt"}, "timestamp": "2026-03-18T10:00:00.000Z"})
        );
        assert!(parse(events::subject::INTEGRATION_WEBHOOK, b"{}", 4096, "me").is_none());
    }
}
