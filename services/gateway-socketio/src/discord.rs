//! `discord:request-send` from `/widget` sockets: limited per socket and per widget key (token
//! buckets), then relayed as a NATS request to `cmd.discord.request_send`; the backend's reply
//! (or an error in the command-reply shape) goes back as `discord:request-response`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Data, SocketRef, State};

use crate::limits::{KeyedBuckets, TokenBucket};
use crate::sockets::{Gateway, Shared, WantsAck, WidgetSession};

/// Widget keys whose request budget is remembered at once. Keys are real (a socket exists
/// for each), so this is far above what an instance serves.
const BUDGETED_KEYS: usize = 100_000;

/// The per-widget-key budgets of this instance.
#[derive(Debug)]
pub(crate) struct KeyBudgets(KeyedBuckets<Arc<str>>);

impl KeyBudgets {
    /// `per_minute` requests per key; 0 = unlimited.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self(KeyedBuckets::new(per_minute, BUDGETED_KEYS))
    }
}

/// One socket's request budget, kept in its [`WidgetSession`]; `None` = unlimited.
#[derive(Debug, Clone)]
pub(crate) struct SocketBudget(Option<Arc<Mutex<TokenBucket>>>);

impl SocketBudget {
    /// `per_minute` requests; 0 = unlimited.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self((per_minute > 0).then(|| {
            Arc::new(Mutex::new(TokenBucket::per_minute(
                per_minute,
                Instant::now(),
            )))
        }))
    }

    fn take(&self, now: Instant) -> bool {
        self.0.as_ref().is_none_or(|bucket| {
            bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(now)
        })
    }
}

/// Whether a request of this socket may go out now. The socket's own budget is checked first:
/// a socket over its limit must not use up the budget its key shares with other sockets.
fn within_budget(g: &Gateway, session: &WidgetSession) -> bool {
    let now = Instant::now();
    session.budget.take(now) && g.discord_keys.0.take(&session.key, now)
}

/// The `cmd.discord.request_send` request body.
pub(crate) fn discord_body(key: &str, origin: Option<&str>, data: Value) -> Value {
    json!({"widget_key": key, "origin": origin, "data": data})
}

fn discord_error(code: &str, message: &str) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message}})
}

pub(crate) async fn discord_request(
    s: SocketRef,
    State(g): Shared,
    Data(data): Data<Value>,
    WantsAck(wants_ack): WantsAck,
    ack: AckSender,
) {
    let Some(session) = s.extensions.get::<WidgetSession>() else {
        return;
    };
    let (outcome, response) = if within_budget(&g, &session) {
        let body = discord_body(&session.key, session.origin.as_deref(), data).to_string();
        forward_discord(&g, body).await
    } else {
        (
            "rate_limited",
            discord_error("rate_limited", "too many requests, retry later"),
        )
    };
    metrics::counter!("socketio_discord_requests_total", "outcome" => outcome).increment(1);
    if let Err(e) = s.emit("discord:request-response", &response) {
        tracing::debug!(error = %e, "discord response not delivered");
    }
    if wants_ack {
        let _ = ack.send(&response);
    }
}

/// Sends one Discord request to the backend; returns the outcome (for metrics) and what the
/// widget gets: the backend's JSON reply, or an error in the command-reply shape.
async fn forward_discord(g: &Gateway, body: String) -> (&'static str, Value) {
    use async_nats::client::RequestErrorKind;
    const TIMEOUT: &str = "the backend did not answer in time";
    if body.len() > g.config.widget.max_request_bytes {
        return ("too_large", discord_error("too_large", "request too large"));
    }
    let Ok(_slot) = g.discord_slots.try_acquire() else {
        return (
            "busy",
            discord_error("busy", "too many requests in flight, retry later"),
        );
    };
    let timeout = Duration::from_millis(g.config.widget.request_timeout_ms);
    let request = g
        .nats
        .request(crate::relay::DISCORD_SUBJECT, body.into_bytes().into());
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(message)) => match serde_json::from_slice::<Value>(&message.payload) {
            Ok(value) => ("ok", value),
            Err(_) => (
                "invalid",
                discord_error(
                    "invalid_response",
                    "the backend answered something else than JSON",
                ),
            ),
        },
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => (
            "unavailable",
            discord_error("unavailable", "no backend is available for this request"),
        ),
        Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => {
            ("timeout", discord_error("timeout", TIMEOUT))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "discord request failed");
            (
                "error",
                discord_error("unavailable", "the request could not be sent, retry later"),
            )
        }
        Err(_) => ("timeout", discord_error("timeout", TIMEOUT)),
    }
}
