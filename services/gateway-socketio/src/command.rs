//! Requests to the backend over NATS request/reply (`cmd.*`): bounded in size, in flight and
//! in time. A failure becomes the command-reply error shape
//! (`{"ok": false, "error": {"code", "message"}}`, `proto/schemas/command-reply.schema.json`),
//! which is what the client then receives.

use std::time::Duration;

use async_nats::client::RequestErrorKind;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// Why a request got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CommandError {
    /// The request body is over its limit.
    #[error("request too large")]
    TooLarge,
    /// Too many requests are in flight on this instance.
    #[error("too many requests in flight, retry later")]
    Busy,
    /// Nobody serves the subject.
    #[error("no backend is available for this request")]
    Unavailable,
    /// The backend did not answer in time.
    #[error("the backend did not answer in time")]
    Timeout,
    /// The answer is not JSON.
    #[error("the backend answered something else than JSON")]
    InvalidResponse,
    /// NATS failed otherwise (disconnected...).
    #[error("the request could not be sent, retry later")]
    Failed,
    /// The caller's own budget is spent.
    #[error("too many requests, retry later")]
    RateLimited,
}

impl CommandError {
    /// The `error.code` clients see, and the `outcome` label of metrics.
    pub(crate) const fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Busy => "busy",
            Self::Unavailable | Self::Failed => "unavailable",
            Self::Timeout => "timeout",
            Self::InvalidResponse => "invalid_response",
            Self::RateLimited => "rate_limited",
        }
    }

    /// The command-reply error body.
    pub(crate) fn body(self) -> Value {
        error_body(self.code(), &self.to_string())
    }
}

/// `{"ok": false, "error": {"code", "message"}}`.
pub(crate) fn error_body(code: &str, message: &str) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message}})
}

/// The NATS client and the in-flight bound of this instance's requests.
#[derive(Debug)]
pub(crate) struct Commands {
    nats: async_nats::Client,
    slots: Semaphore,
}

impl Commands {
    pub(crate) const fn new(nats: async_nats::Client, slots: Semaphore) -> Self {
        Self { nats, slots }
    }

    /// Sends `body` (JSON) to `subject` and returns the backend's JSON answer, holding one of
    /// the instance-wide slots while it is in flight.
    pub(crate) async fn request(
        &self,
        subject: &'static str,
        body: &impl Serialize,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Value, CommandError> {
        self.request_in(&self.slots, subject, body, max_bytes, timeout)
            .await
    }

    /// [`Self::request`], holding one of `slots` instead of the instance-wide ones: for a kind
    /// of request with its own in-flight bound (membership), which then neither starves nor is
    /// starved by the others.
    pub(crate) async fn request_in(
        &self,
        slots: &Semaphore,
        subject: &'static str,
        body: &impl Serialize,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Value, CommandError> {
        let body = serde_json::to_vec(body).map_err(|_| CommandError::Failed)?;
        if body.len() > max_bytes {
            return Err(CommandError::TooLarge);
        }
        let Ok(_slot) = slots.try_acquire() else {
            return Err(CommandError::Busy);
        };
        let request = self.nats.request(subject, body.into());
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(message)) => serde_json::from_slice::<Value>(&message.payload)
                .map_err(|_| CommandError::InvalidResponse),
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                Err(CommandError::Unavailable)
            }
            Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => Err(CommandError::Timeout),
            Ok(Err(e)) => {
                tracing::warn!(subject, error = %e, "backend request failed");
                Err(CommandError::Failed)
            }
            Err(_) => Err(CommandError::Timeout),
        }
    }
}

/// The outcome label of a request for metrics: `ok` or the error code.
pub(crate) fn outcome(result: &Result<Value, CommandError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(CommandError::Failed) => "error",
        Err(CommandError::InvalidResponse) => "invalid",
        Err(e) => e.code(),
    }
}
