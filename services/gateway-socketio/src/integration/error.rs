//! Why an integration event was refused, and how the client hears it: the ack's
//! `{"ok": false, "error": {"code", "message", "field"?}}`, or, without an ack, an
//! `integration:error` event `{"event", "integrationId"?, "error": {...}}`.

use serde_json::{Value, json};
use socketioxide::extract::SocketRef;

use crate::ack::Answer;
use crate::command::CommandError;

/// The event a refusal is reported as when the client passed no ack.
pub(crate) const ERROR_EVENT: &str = "integration:error";

/// A refused integration event (before or instead of the runner's own answer). Its `Display`
/// is the client-safe message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IntegrationError {
    /// The payload is not the documented shape; the field names what is wrong.
    #[error("invalid payload: {0}")]
    InvalidPayload(&'static str),
    /// The principal may not use the project.
    #[error("not a member of this project")]
    Forbidden,
    /// No such integration in that project.
    #[error("no such integration in this project")]
    NotFound,
    /// No runner (or no backend for project access) answered.
    #[error("no integrations runner is available, retry later")]
    RunnerUnavailable,
    /// Too many executions in flight on this gateway or this socket.
    #[error("too many executions in flight, retry later")]
    Busy,
}

impl IntegrationError {
    /// The `error.code` clients see.
    pub(crate) const fn code(self) -> &'static str {
        match self {
            Self::InvalidPayload(_) => "invalid_payload",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::RunnerUnavailable => "runner_unavailable",
            Self::Busy => "busy",
        }
    }

    /// `{"code", "message", "field"?}`.
    pub(crate) fn error(self) -> Value {
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let Self::InvalidPayload(field) = self {
            error["field"] = Value::from(field);
        }
        error
    }

    /// `{"ok": false, "error": {...}}`.
    pub(crate) fn body(self) -> Value {
        json!({"ok": false, "error": self.error()})
    }
}

impl From<CommandError> for IntegrationError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Busy | CommandError::RateLimited => Self::Busy,
            CommandError::TooLarge => Self::InvalidPayload("payload"),
            CommandError::Unavailable
            | CommandError::Timeout
            | CommandError::InvalidResponse
            | CommandError::Failed => Self::RunnerUnavailable,
        }
    }
}

/// Answers a client event: on success `body` (with `"ok": true`) through the ack, else emitted
/// as `success_event`; on refusal the error through the ack, else as `integration:error`.
/// Counted by event and outcome.
pub(crate) fn answer(
    s: &SocketRef,
    answer: Answer,
    event: &'static str,
    integration_id: Option<&str>,
    success_event: &'static str,
    result: Result<Value, IntegrationError>,
) {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    metrics::counter!("socketio_integration_events_total", "event" => event, "outcome" => outcome)
        .increment(1);
    match result {
        Ok(body) => answer.send_ok(success_event, body),
        Err(e) => refuse(s, answer, event, integration_id, e),
    }
}

/// Sends a refusal through the ack, or as `integration:error` naming `event`.
pub(crate) fn refuse(
    s: &SocketRef,
    answer: Answer,
    event: &'static str,
    integration_id: Option<&str>,
    error: IntegrationError,
) {
    if answer.ack_only_if_wanted(&error.body()) {
        return;
    }
    let mut body = json!({"event": event, "error": error.error()});
    if let Some(id) = integration_id {
        body["integrationId"] = Value::from(id);
    }
    if let Err(err) = s.emit(ERROR_EVENT, &body) {
        tracing::debug!(error = %err, "integration:error not sent");
    }
}
