//! `integration:execute` and `integration:test`: the access check (cached), an `executionId`
//! (UUIDv7) made here, the started event to the room (through `rt.integration.room`, so every
//! instance emits it to its own sockets), `cmd.integration.execute` with `deadlineMs =
//! integrations.execute_timeout_ms` awaited that long plus [`REPLY_GRACE`], then the outcome to
//! the caller (with the data) and to the room (a summary, never the data). No reply in time
//! (no runner, or it died) fails `runner_unavailable`, never silence.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use super::error::{IntegrationError, refuse};
use super::payload::{self, Execute};
use super::relay::{self, RoomEvent};
use super::{SocketExecutions, now, principal};
use crate::ack::{Answer, WantsAck};
use crate::gateway::{Gateway, Shared};

/// How long past `deadlineMs` the gateway still waits for the runner's reply (its failure reply
/// is sent before the deadline; this covers the trip).
pub(crate) const REPLY_GRACE: Duration = Duration::from_millis(1000);

/// Which of the two events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Execute,
    Test,
}

impl Mode {
    const fn request(self) -> &'static str {
        match self {
            Self::Execute => "integration:execute",
            Self::Test => "integration:test",
        }
    }

    const fn wire(self) -> &'static str {
        match self {
            Self::Execute => "execute",
            Self::Test => "test",
        }
    }

    const fn started(self) -> &'static str {
        match self {
            Self::Execute => "integration:execution:started",
            Self::Test => "integration:test:started",
        }
    }

    const fn completed(self) -> &'static str {
        match self {
            Self::Execute => "integration:execution:completed",
            Self::Test => "integration:test:completed",
        }
    }

    const fn failed(self) -> &'static str {
        match self {
            Self::Execute => "integration:execution:failed",
            Self::Test => "integration:test:failed",
        }
    }
}

pub(crate) async fn execute(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    run(
        s,
        &g,
        payload.ok(),
        PendingAnswer { wants_ack, ack },
        Mode::Execute,
    )
    .await;
}

pub(crate) async fn test(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    run(
        s,
        &g,
        payload.ok(),
        PendingAnswer { wants_ack, ack },
        Mode::Test,
    )
    .await;
}

/// The runner's `ExecuteReply`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    ok: bool,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    duration_ms: Option<u64>,
    #[serde(default)]
    error: Option<Value>,
}

/// What came of one execution.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Success {
        status: Option<u16>,
        data: Value,
        duration_ms: Option<u64>,
    },
    /// An error object with a `code`.
    Failure(Value),
}

/// An `ExecuteReply` (or why there is none) as an outcome.
pub(crate) fn outcome(reply: Result<Value, IntegrationError>) -> Outcome {
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => return Outcome::Failure(e.error()),
    };
    match serde_json::from_value::<Reply>(reply) {
        Ok(Reply {
            ok: true,
            status,
            data,
            duration_ms,
            ..
        }) => Outcome::Success {
            status,
            data: data.unwrap_or(Value::Null),
            duration_ms,
        },
        Ok(Reply {
            ok: false,
            error: Some(error @ Value::Object(_)),
            ..
        }) if error.get("code").is_some_and(Value::is_string) => Outcome::Failure(error),
        Ok(_) | Err(_) => {
            tracing::warn!("unreadable execute reply");
            Outcome::Failure(IntegrationError::RunnerUnavailable.error())
        }
    }
}

/// Gives the socket's in-flight place back when the execution ends.
struct SocketPlace(SocketExecutions);

impl Drop for SocketPlace {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take_socket_place(s: &SocketRef, limit: usize) -> Result<SocketPlace, IntegrationError> {
    let counter = s.extensions.get::<SocketExecutions>().unwrap_or_default();
    let before = counter.0.fetch_add(1, Ordering::AcqRel);
    let place = SocketPlace(counter);
    if before >= limit {
        return Err(IntegrationError::Busy);
    }
    Ok(place)
}

async fn run(s: SocketRef, g: &Gateway, payload: Option<Value>, answer: PendingAnswer, mode: Mode) {
    let event = mode.request();
    let id = payload::integration_id_of(payload.as_ref());
    let config = &g.config.integrations;
    let request = match admit(&s, g, payload.as_ref()).await {
        Ok(admitted) => admitted,
        Err(e) => {
            metrics::counter!("socketio_integration_events_total", "event" => event, "outcome" => e.code())
                .increment(1);
            return refuse(&s, answer.into_answer(&s), event, id.as_deref(), e);
        }
    };
    let (request, _socket_place) = request;
    let Ok(_permit) = g.integrations.executions.try_acquire() else {
        metrics::counter!("socketio_integration_events_total", "event" => event, "outcome" => "busy")
            .increment(1);
        return refuse(
            &s,
            answer.into_answer(&s),
            event,
            id.as_deref(),
            IntegrationError::Busy,
        );
    };
    let execution_id = uuid::Uuid::now_v7().to_string();
    let integration_id = request.target.integration_id.as_str();
    let endpoint = request.endpoint.as_str();
    let room = request.target.room();
    let started = json!({
        "integrationId": integration_id,
        "endpoint": endpoint,
        "executionId": execution_id,
        "timestamp": now(),
    });
    relay::publish(
        g,
        &RoomEvent::except_caller(&room, mode.started(), &started, g, &s),
    )
    .await;
    if mode == Mode::Test {
        let _ = s.emit(mode.started(), &started);
    }

    let body = json!({
        "executionId": execution_id,
        "projectId": request.target.project_id.as_str(),
        "integrationId": integration_id,
        "endpoint": endpoint,
        "params": request.params,
        "requestData": request.request_data,
        "mode": mode.wire(),
        "deadlineMs": config.execute_timeout_ms,
    });
    let deadline = Duration::from_millis(config.execute_timeout_ms).saturating_add(REPLY_GRACE);
    let reply = g
        .commands
        .request_in(
            &g.integrations.execute_slots,
            events::subject::INTEGRATION_EXECUTE,
            &body,
            config.max_payload_bytes.saturating_add(1024),
            deadline,
        )
        .await
        .map_err(IntegrationError::from);
    let outcome = outcome(reply);
    let head = |extra: (&str, Value)| {
        let mut body = json!({
            "integrationId": integration_id,
            "endpoint": endpoint,
            "executionId": execution_id,
            "timestamp": now(),
        });
        body[extra.0] = extra.1;
        body
    };
    let (name, to_caller, to_room, label) = match outcome {
        Outcome::Success {
            status,
            data,
            duration_ms,
        } => (
            mode.completed(),
            head((
                "result",
                json!({"success": true, "data": data, "status": status}),
            )),
            head((
                "summary",
                json!({"success": true, "status": status, "durationMs": duration_ms}),
            )),
            "ok",
        ),
        Outcome::Failure(error) => {
            let body = head(("error", error));
            (mode.failed(), body.clone(), body, "failed")
        }
    };
    metrics::counter!("socketio_integration_events_total", "event" => event, "outcome" => label)
        .increment(1);
    relay::publish(g, &RoomEvent::except_caller(&room, name, &to_room, g, &s)).await;
    let answer = answer.into_answer(&s);
    match mode {
        // The caller hears the outcome through its ack, or as the event.
        Mode::Execute if label == "ok" => answer.send_ok(name, to_caller),
        Mode::Execute => {
            if !answer.ack_only_if_wanted(&with_ok(to_caller.clone(), false)) {
                let _ = s.emit(name, &to_caller);
            }
        }
        // The test events go to the caller as to the room; the ack gets the outcome too.
        Mode::Test => {
            let _ = s.emit(name, &to_caller);
            answer.ack_only(&with_ok(to_caller, label == "ok"));
        }
    }
}

fn with_ok(mut body: Value, ok: bool) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("ok".to_owned(), Value::Bool(ok));
    }
    body
}

/// The parsed request, checked, with the socket's in-flight place.
async fn admit(
    s: &SocketRef,
    g: &Gateway,
    payload: Option<&Value>,
) -> Result<(Execute, SocketPlace), IntegrationError> {
    let config = &g.config.integrations;
    let request = payload::execute(payload, config.max_payload_bytes)?;
    let place = take_socket_place(s, config.max_in_flight_per_socket)?;
    let principal = principal(s)?;
    g.integrations
        .access
        .check(&g.commands, &principal, &request.target)
        .await?;
    Ok((request, place))
}

/// The ack of the event being handled, kept until the outcome is known.
pub(crate) struct PendingAnswer {
    wants_ack: WantsAck,
    ack: AckSender,
}

impl PendingAnswer {
    fn into_answer(self, s: &SocketRef) -> Answer {
        Answer::new(s, self.ack, self.wants_ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_outcomes() {
        assert_eq!(
            outcome(Ok(
                json!({"ok": true, "status": 200, "data": {"a": 1}, "durationMs": 12})
            )),
            Outcome::Success {
                status: Some(200),
                data: json!({"a": 1}),
                duration_ms: Some(12)
            }
        );
        let failed = json!({"ok": false, "error": {"code": "upstream_status", "message": "m", "status": 404}});
        assert_eq!(
            outcome(Ok(failed)),
            Outcome::Failure(json!({"code": "upstream_status", "message": "m", "status": 404}))
        );
        for junk in [
            json!({"ok": false}),
            json!({"ok": false, "error": "x"}),
            json!([1]),
        ] {
            let Outcome::Failure(error) = outcome(Ok(junk)) else {
                panic!("not a failure")
            };
            assert_eq!(error["code"], "runner_unavailable");
        }
        let Outcome::Failure(error) = outcome(Err(IntegrationError::RunnerUnavailable)) else {
            panic!("not a failure")
        };
        assert_eq!(error["code"], "runner_unavailable");
    }
}
