//! Why a collaboration event was refused, and how the client hears it: the ack's
//! `{"ok": false, "error": {"code", "message"}}` (the command-reply shape), or, without an ack,
//! a `collab:error` event `{"event", "error": {"code", "message"}}`.

use serde_json::{Value, json};
use socketioxide::extract::SocketRef;

use crate::ack::Answer;
use crate::command::CommandError;

/// A refused collaboration event. Its `Display` is the client-safe message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CollabError {
    /// The payload is not what the event takes; the text says what was expected.
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
    /// The token has no `sub`, so the socket is nobody to collaborate as.
    #[error("the token has no subject (sub)")]
    NoIdentity,
    /// The principal is not a member of the channel (or may not see that presence).
    #[error("not a member of this channel")]
    NotMember,
    /// Membership could not be decided (no backend, timeout): refused, retry later.
    #[error("channel membership is unavailable, retry later")]
    Unavailable,
    /// The socket sends collaboration events too fast.
    #[error("too many events, slow down")]
    RateLimited,
    /// A per-socket or per-request bound; the text names it.
    #[error("limit reached: {0}")]
    Limit(&'static str),
}

impl CollabError {
    /// The `error.code` clients see.
    pub(crate) const fn code(self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::NoIdentity => "no_identity",
            Self::NotMember => "forbidden",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
            Self::Limit(_) => "limit",
        }
    }

    /// `{"code", "message"}`.
    pub(crate) fn error(self) -> Value {
        json!({"code": self.code(), "message": self.to_string()})
    }

    /// The command-reply error body, `{"ok": false, "error": {...}}`.
    pub(crate) fn body(self) -> Value {
        json!({"ok": false, "error": self.error()})
    }
}

impl From<CommandError> for CollabError {
    fn from(_: CommandError) -> Self {
        Self::Unavailable
    }
}

/// Answers a client event: on success `ok` through the ack (nothing without one); on refusal
/// the error through the ack, else as `collab:error` naming `event`. Counted by event and
/// outcome.
pub(crate) fn answer(
    s: &SocketRef,
    answer: Answer,
    event: &'static str,
    result: Result<Value, CollabError>,
) {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    metrics::counter!("socketio_collab_events_total", "event" => event, "outcome" => outcome)
        .increment(1);
    match result {
        Ok(body) => answer.ack_only(&body),
        Err(e) => {
            if answer.ack_only_if_wanted(&e.body()) {
                return;
            }
            if let Err(err) = s.emit("collab:error", &json!({"event": event, "error": e.error()})) {
                tracing::debug!(error = %err, "collab:error not sent");
            }
        }
    }
}
