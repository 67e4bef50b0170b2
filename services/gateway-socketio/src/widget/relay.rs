//! NATS → `/widget` rooms: the backend's pushes per widget key, and deactivated keys.

use std::sync::Arc;

use events::subject::{WIDGET_KEY_DEACTIVATED, WIDGET_PUSHES};
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

use super::widget_room;
use crate::bus::{count_broadcast_error, next, raw_json, subscribe};
use crate::gateway::Gateway;
use crate::namespace::Namespace;

/// `rt.widget.<key>.<kind>` → the kind's event to the key's room.
pub(crate) async fn pushes(io: SocketIo, nats: async_nats::Client, shutdown: CancellationToken) {
    let Some(mut sub) = subscribe(&nats, WIDGET_PUSHES, &shutdown).await else {
        return;
    };
    while let Some(message) = next(&mut sub, &shutdown).await {
        let mut tokens = message.subject.split('.').skip(2);
        let (Some(key), Some(kind)) = (tokens.next(), tokens.next()) else {
            continue;
        };
        let event = match kind {
            "update" => "widget:update",
            "intercom_notify" => "widget:intercom:notify",
            _ => continue,
        };
        let Some(raw) = raw_json(&message.payload) else {
            metrics::counter!("socketio_widget_pushes_invalid_total").increment(1);
            tracing::warn!(subject = %message.subject, "widget push is not JSON; skipped");
            continue;
        };
        let Some(widget) = io.of(Namespace::Widget.path()) else {
            continue;
        };
        if let Err(e) = widget.to(widget_room(key)).emit(event, &raw).await {
            count_broadcast_error(&e);
        }
        metrics::counter!("socketio_events_relayed_total", "event_kind" => "widget").increment(1);
    }
}

/// A deactivated key: dropped from the cache, its sockets told and disconnected.
pub(crate) async fn deactivations(
    io: SocketIo,
    gateway: Arc<Gateway>,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) {
    let Some(mut sub) = subscribe(&nats, WIDGET_KEY_DEACTIVATED, &shutdown).await else {
        return;
    };
    while let Some(message) = next(&mut sub, &shutdown).await {
        let Ok(key) = std::str::from_utf8(&message.payload) else {
            continue;
        };
        gateway.widgets.invalidate(key);
        let Some(widget) = io.of(Namespace::Widget.path()) else {
            continue;
        };
        let room = widget_room(key);
        let reason = serde_json::json!({"reason": "widget key deactivated"});
        let _ = widget
            .clone()
            .to(room.clone())
            .emit("widget:deactivated", &reason)
            .await;
        if let Err(e) = widget.to(room).disconnect().await {
            tracing::debug!(error = %e, "disconnecting a deactivated widget's sockets");
        }
        tracing::info!("widget key deactivated; its sockets were disconnected");
    }
}
