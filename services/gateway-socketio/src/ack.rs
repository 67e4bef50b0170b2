//! Answers to client→server events: through the ack callback when the client passed one,
//! else as an event.

use std::convert::Infallible;
use std::sync::Arc;

use serde::Serialize;
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::handler::FromMessageParts;
use socketioxide::socket::Socket;

/// Whether the client passed an ack callback with its event.
pub(crate) struct WantsAck(pub(crate) bool);

impl<A: socketioxide::adapter::Adapter> FromMessageParts<A> for WantsAck {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Self(ack_id.is_some()))
    }
}

/// Where the answer to one client event goes: its ack callback when it passed one, else
/// `event` on the socket.
pub(crate) struct Answer {
    socket: SocketRef,
    ack: AckSender,
    wants_ack: bool,
}

impl Answer {
    /// For the event being handled.
    pub(crate) fn new(socket: &SocketRef, ack: AckSender, WantsAck(wants_ack): WantsAck) -> Self {
        Self {
            socket: socket.clone(),
            ack,
            wants_ack,
        }
    }

    /// Sends `body` through the ack, or as `event` when there is no ack.
    pub(crate) fn send(self, event: &str, body: &impl Serialize) {
        let sent = if self.wants_ack {
            self.ack.send(body)
        } else {
            self.socket.emit(event, body)
        };
        if let Err(e) = sent {
            tracing::debug!(event, error = %e, "reply not sent");
        }
    }

    /// Sends `body` as `event`, or through the ack with `"ok": true` added when there is one
    /// (the command-reply success shape).
    pub(crate) fn send_ok(self, event: &str, mut body: serde_json::Value) {
        if self.wants_ack
            && let serde_json::Value::Object(map) = &mut body
        {
            map.insert("ok".to_owned(), serde_json::Value::Bool(true));
        }
        self.send(event, &body);
    }

    /// Sends `body` through the ack when there is one; nothing otherwise.
    pub(crate) fn ack_only(self, body: &impl Serialize) {
        if self.wants_ack
            && let Err(e) = self.ack.send(body)
        {
            tracing::debug!(error = %e, "ack not sent");
        }
    }

    /// Sends `body` through the ack and returns true when there is one; false (nothing sent)
    /// otherwise.
    pub(crate) fn ack_only_if_wanted(self, body: &impl Serialize) -> bool {
        if !self.wants_ack {
            return false;
        }
        if let Err(e) = self.ack.send(body) {
            tracing::debug!(error = %e, "ack not sent");
        }
        true
    }

    /// Emits `event` with `body` and also acks it when the client asked.
    pub(crate) fn emit_and_ack(self, event: &str, body: &impl Serialize) {
        if let Err(e) = self.socket.emit(event, body) {
            tracing::debug!(event, error = %e, "reply not sent");
        }
        self.ack_only(body);
    }
}
