//! `/widget`: embeddable customer widgets. A handshake presents a widget key (looked up in
//! PostgreSQL, origin checked); the socket joins its key's room, receives the backend's
//! `widget:update` / `widget:intercom:notify` pushes and may send `discord:request-send`.

pub(crate) mod discord;
mod keys;
mod relay;

use std::sync::Arc;

use serde_json::Value;
use socketioxide::extract::{SocketRef, State, TryData};

pub use keys::{ApiState, WidgetKey, WidgetKeys, is_key, router};
pub(crate) use relay::{deactivations, pushes};

use crate::auth::Refusal;
use crate::gateway::Shared;
use crate::handshake::{admit_socket, refused, track};
use crate::namespace::Namespace;
use discord::{SocketBudget, discord_request};

/// The widget a `/widget` socket belongs to.
#[derive(Debug, Clone)]
pub(crate) struct WidgetSession {
    pub(crate) key: Arc<str>,
    pub(crate) origin: Option<Arc<str>>,
    /// This socket's `discord:request-send` budget.
    pub(crate) budget: SocketBudget,
}

/// Room of the sockets of one widget key.
pub(crate) fn widget_room(key: &str) -> String {
    format!("widget:{key}")
}

/// The widget key of a handshake: `auth.key`, `auth.widgetKey` or the `key` query parameter.
fn widget_key(auth: Result<Value, impl std::fmt::Debug>, s: &SocketRef) -> Option<String> {
    if let Ok(Value::Object(map)) = auth {
        for name in ["key", "widgetKey"] {
            if let Some(Value::String(k)) = map.get(name)
                && !k.is_empty()
            {
                return Some(k.clone());
            }
        }
    }
    s.req_parts().uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, v)| *k == "key" && !v.is_empty())
            .map(|(_, v)| v.to_owned())
    })
}

pub(crate) async fn handshake(
    s: SocketRef,
    State(g): Shared,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let ns = Namespace::Widget;
    let (ip, slot) = admit_socket(&s, &g, ns)?;
    let key = widget_key(auth, &s).ok_or_else(|| refused(ns, Refusal::WidgetKeyRequired))?;
    let origin = s
        .req_parts()
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let widget = g
        .widgets
        .authorize(&key, origin.as_deref(), ip)
        .await
        .map_err(|r| refused(ns, r))?;
    s.join(widget_room(&widget.key));
    s.extensions.insert(WidgetSession {
        key: Arc::from(widget.key),
        origin: origin.map(Arc::from),
        budget: SocketBudget::new(g.config.widget.discord_per_socket_per_minute),
    });
    s.extensions.insert(slot);
    // Before the CONNECT packet, like /admin's handlers.
    s.on("discord:request-send", discord_request);
    Ok(())
}

pub(crate) async fn on_connect(s: SocketRef, State(g): Shared) {
    track(&s, &g, Namespace::Widget, || {});
}
