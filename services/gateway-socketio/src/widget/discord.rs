//! `discord:request-send` from `/widget` sockets: limited per socket and per widget key (token
//! buckets), then relayed as a NATS request to `cmd.discord.request_send`; the backend's reply
//! (or an error in the command-reply shape) goes back as `discord:request-response`, and
//! through the ack when the client passed one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, Data, SocketRef, State};

use super::WidgetSession;
use crate::ack::{Answer, WantsAck};
use crate::command::{CommandError, outcome};
use crate::gateway::{Gateway, Shared};
use crate::limits::{KeyedBuckets, TokenBucket};

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

pub(crate) async fn discord_request(
    s: SocketRef,
    State(g): Shared,
    Data(data): Data<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let Some(session) = s.extensions.get::<WidgetSession>() else {
        return;
    };
    let result = if within_budget(&g, &session) {
        let body = discord_body(&session.key, session.origin.as_deref(), data);
        g.commands
            .request(
                events::subject::DISCORD_REQUEST_SEND,
                &body,
                g.config.widget.max_request_bytes,
                Duration::from_millis(g.config.widget.request_timeout_ms),
            )
            .await
    } else {
        Err(CommandError::RateLimited)
    };
    metrics::counter!("socketio_discord_requests_total", "outcome" => outcome(&result))
        .increment(1);
    let response = result.unwrap_or_else(CommandError::body);
    Answer::new(&s, ack, wants_ack).emit_and_ack("discord:request-response", &response);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema_check::assert_matches_schema;

    #[test]
    fn the_request_matches_its_published_schema() {
        assert_matches_schema(
            "discord-request.schema.json",
            &discord_body("wk_abcdef", Some("https://a.example"), Value::Null),
        );
        assert_matches_schema("command-reply.schema.json", &CommandError::Timeout.body());
    }
}
