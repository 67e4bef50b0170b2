//! Integrations (seed 002) on `/` and `/admin`, one implementation: join an integration's
//! room, execute its endpoints and its health check through the integrations runner, read its
//! status, watch its inbound webhooks and its usage. The contract is `docs/integrations.md`.
//!
//! | module | what |
//! |---|---|
//! | [`payload`] | client payloads parsed into types |
//! | [`access`] | project access (claim or backend) and "the integration is in the project" |
//! | [`execute`] | `integration:execute` / `integration:test` |
//! | [`relay`] | `rt.integration.room` / `usage` / `webhook` → rooms, on every instance |
//! | [`error`] | refusals through the ack or `integration:error` |

pub(crate) mod access;
pub(crate) mod error;
pub(crate) mod execute;
pub(crate) mod payload;
pub(crate) mod relay;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use tokio::sync::Semaphore;

use crate::ack::{Answer, WantsAck};
use crate::auth::{Principal, Refusal};
use crate::config::IntegrationsConfig;
use crate::gateway::{Gateway, Shared};
use crate::handshake::{admit_socket, refused, token, track};
use crate::namespace::Namespace;
use access::Access;
use error::{IntegrationError, answer};
use payload::Target;

/// The namespaces serving integrations: same handlers, same rooms in each.
pub(crate) const NAMESPACES: [Namespace; 2] = [Namespace::Root, Namespace::Admin];

/// The integration state of this instance.
#[derive(Debug)]
pub(crate) struct Integrations {
    pub(crate) access: Access,
    /// Executions in flight on this instance (`integrations.max_in_flight`).
    pub(crate) executions: Semaphore,
    /// What `cmd.integration.execute` requests hold while in flight (never the limit: they
    /// already hold an `executions` permit).
    pub(crate) execute_slots: Semaphore,
    /// This instance, as `RoomEvent.except.instance` names it.
    pub(crate) instance: String,
}

impl Integrations {
    pub(crate) fn new(config: &IntegrationsConfig) -> Self {
        Self {
            access: Access::new(config),
            executions: Semaphore::new(config.max_in_flight),
            execute_slots: Semaphore::new(config.max_in_flight),
            instance: uuid::Uuid::now_v7().to_string(),
        }
    }
}

/// Executions in flight on one socket.
#[derive(Debug, Clone, Default)]
pub(crate) struct SocketExecutions(pub(crate) Arc<AtomicUsize>);

/// The `/` handshake: the `/admin` JWT, verified the same way (same refusals).
pub(crate) async fn handshake(
    s: SocketRef,
    State(g): Shared,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let ns = Namespace::Root;
    let (_, slot) = admit_socket(&s, &g, ns)?;
    let token = token(auth).ok_or_else(|| refused(ns, Refusal::MissingToken))?;
    let principal = g.admin.verify(&token).map_err(|r| refused(ns, r))?;
    s.extensions.insert(principal);
    s.extensions.insert(slot);
    attach(&s);
    Ok(())
}

pub(crate) async fn on_connect(s: SocketRef, State(g): Shared) {
    track(&s, &g, Namespace::Root, || {});
}

/// Registers the integration handlers on an authenticated socket (`/` and `/admin`), in its
/// handshake, before the CONNECT packet is sent.
pub(crate) fn attach(s: &SocketRef) {
    s.extensions.insert(SocketExecutions::default());
    s.on("integration:join", join);
    s.on("integration:leave", leave);
    s.on("integration:execute", execute::execute);
    s.on("integration:test", execute::test);
    s.on("integration:status", status);
    s.on("integration:webhook:subscribe", webhook_subscribe);
    s.on("integration:webhook:unsubscribe", webhook_unsubscribe);
}

/// The target of a payload, and the principal allowed to use it.
pub(crate) async fn checked(
    s: &SocketRef,
    g: &Gateway,
    payload: Option<&Value>,
) -> Result<Target, IntegrationError> {
    let target = payload::target(payload, g.config.integrations.max_payload_bytes)?;
    let principal = principal(s)?;
    g.integrations
        .access
        .check(&g.commands, &principal, &target)
        .await?;
    Ok(target)
}

pub(crate) fn principal(s: &SocketRef) -> Result<Principal, IntegrationError> {
    s.extensions
        .get::<Principal>()
        .ok_or(IntegrationError::Forbidden)
}

fn target_body(target: &Target, room: &str) -> Value {
    json!({
        "integrationId": target.integration_id.as_str(),
        "projectId": target.project_id.as_str(),
        "room": room,
    })
}

async fn join(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    const EVENT: &str = "integration:join";
    let payload = payload.ok();
    let result = checked(&s, &g, payload.as_ref()).await.map(|target| {
        let room = target.room();
        // Sockets are in no room of their own; room events skip their caller (`except`)
        // through one, joined by the sockets that may be a caller in a room.
        s.join(vec![room.clone(), s.id.to_string()]);
        target_body(&target, &room)
    });
    let id = payload::integration_id_of(payload.as_ref());
    answer(
        &s,
        Answer::new(&s, ack, wants_ack),
        EVENT,
        id.as_deref(),
        "integration:joined",
        result,
    );
}

async fn leave(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    const EVENT: &str = "integration:leave";
    let payload = payload.ok();
    // Leaving needs no access check: it only gives up rooms.
    let result =
        payload::target(payload.as_ref(), g.config.integrations.max_payload_bytes).map(|target| {
            let room = target.room();
            s.leave(vec![room.clone(), target.webhook_room()]);
            target_body(&target, &room)
        });
    let id = payload::integration_id_of(payload.as_ref());
    answer(
        &s,
        Answer::new(&s, ack, wants_ack),
        EVENT,
        id.as_deref(),
        "integration:left",
        result,
    );
}

async fn webhook_subscribe(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    const EVENT: &str = "integration:webhook:subscribe";
    let payload = payload.ok();
    let result = checked(&s, &g, payload.as_ref()).await.map(|target| {
        s.join(target.webhook_room());
        json!({"integrationId": target.integration_id.as_str(), "projectId": target.project_id.as_str()})
    });
    let id = payload::integration_id_of(payload.as_ref());
    answer(
        &s,
        Answer::new(&s, ack, wants_ack),
        EVENT,
        id.as_deref(),
        "integration:webhook:subscribed",
        result,
    );
}

async fn webhook_unsubscribe(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    const EVENT: &str = "integration:webhook:unsubscribe";
    let payload = payload.ok();
    let result = payload::target(payload.as_ref(), g.config.integrations.max_payload_bytes).map(
        |target| {
            s.leave(target.webhook_room());
            json!({"integrationId": target.integration_id.as_str(), "projectId": target.project_id.as_str()})
        },
    );
    let id = payload::integration_id_of(payload.as_ref());
    answer(
        &s,
        Answer::new(&s, ack, wants_ack),
        EVENT,
        id.as_deref(),
        "integration:webhook:unsubscribed",
        result,
    );
}

/// `integration:status` → `integration:status:response {integrationId, status, timestamp}`
/// from the runner's `cmd.integration.status`; the runner's own refusal (`not_found`, …) is
/// passed on as the error.
async fn status(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    const EVENT: &str = "integration:status";
    let payload = payload.ok();
    let id = payload::integration_id_of(payload.as_ref());
    let answer_to = Answer::new(&s, ack, wants_ack);
    let target = match payload::target(payload.as_ref(), g.config.integrations.max_payload_bytes) {
        Ok(target) => target,
        Err(e) => return answer(&s, answer_to, EVENT, id.as_deref(), "", Err(e)),
    };
    let checked = async {
        let principal = principal(&s)?;
        g.integrations
            .access
            .project(&g.commands, &principal, &target)
            .await
    };
    if let Err(e) = checked.await {
        return answer(&s, answer_to, EVENT, id.as_deref(), "", Err(e));
    }
    let reply = g
        .commands
        .request(
            events::subject::INTEGRATION_STATUS,
            &access::status_request(&target),
            usize::MAX,
            Duration::from_millis(g.config.integrations.request_timeout_ms),
        )
        .await
        .map_err(IntegrationError::from);
    let reply = match reply {
        Ok(reply) => reply,
        Err(e) => return answer(&s, answer_to, EVENT, id.as_deref(), "", Err(e)),
    };
    match status_response(&target, reply) {
        Ok(body) => answer(
            &s,
            answer_to,
            EVENT,
            id.as_deref(),
            "integration:status:response",
            Ok(body),
        ),
        Err(error) => {
            metrics::counter!("socketio_integration_events_total", "event" => EVENT, "outcome" => "runner_error")
                .increment(1);
            runner_refusal(&s, answer_to, EVENT, &target, error);
        }
    }
}

/// The `integration:status:response` body of a `StatusReply`, or the runner's error object.
fn status_response(target: &Target, reply: Value) -> Result<Value, Value> {
    let ok = reply.get("ok").and_then(Value::as_bool) == Some(true);
    let for_project = reply
        .get("projectId")
        .and_then(Value::as_str)
        .is_none_or(|p| p == target.project_id.as_str());
    match (ok, reply.get("status")) {
        (true, Some(status)) if for_project => Ok(json!({
            "integrationId": target.integration_id.as_str(),
            "status": status,
            "timestamp": now(),
        })),
        (true, _) if !for_project => Err(IntegrationError::NotFound.error()),
        _ => Err(match reply.get("error") {
            Some(error @ Value::Object(map)) if map.get("code").is_some_and(Value::is_string) => {
                error.clone()
            }
            _ => IntegrationError::RunnerUnavailable.error(),
        }),
    }
}

/// The runner's refusal (an error object with a `code`), through the ack or `integration:error`.
fn runner_refusal(
    s: &SocketRef,
    answer: Answer,
    event: &'static str,
    target: &Target,
    error: Value,
) {
    if answer.ack_only_if_wanted(&json!({"ok": false, "error": &error})) {
        return;
    }
    let body =
        json!({"event": event, "integrationId": target.integration_id.as_str(), "error": error});
    if let Err(err) = s.emit(error::ERROR_EVENT, &body) {
        tracing::debug!(error = %err, "integration:error not sent");
    }
}

/// Now, RFC 3339 UTC with milliseconds (`2026-03-18T10:00:00.000Z`).
pub(crate) fn now() -> String {
    events::envelope::timestamp::format(time::OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use payload::Id;

    #[test]
    fn status_responses() {
        let t = Target {
            project_id: Id::parse("p1").unwrap(),
            integration_id: Id::parse("i1").unwrap(),
        };
        let ok = status_response(
            &t,
            json!({"ok": true, "projectId": "p1", "status": {"isActive": true, "usage": {}, "rateLimit": null, "lastUsed": null}}),
        )
        .unwrap();
        assert_eq!(ok["integrationId"], "i1");
        assert_eq!(ok["status"]["isActive"], true);
        assert!(ok["timestamp"].as_str().unwrap().ends_with('Z'));
        let other = status_response(&t, json!({"ok": true, "projectId": "p2", "status": {}}));
        assert_eq!(other.unwrap_err()["code"], "not_found");
        let refused = status_response(
            &t,
            json!({"ok": false, "error": {"code": "not_found", "message": "no"}}),
        );
        assert_eq!(refused.unwrap_err()["code"], "not_found");
        let junk = status_response(&t, json!({"what": 1}));
        assert_eq!(junk.unwrap_err()["code"], "runner_unavailable");
    }
}
