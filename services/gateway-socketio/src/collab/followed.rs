//! `get_followed_chats` from `/admin` sockets: asked of the backend on
//! `cmd.chat.followed_chats` with `{"kind": "user", "id": "<sub>", "data": <payload or null>}`
//! (at most `collab.max_request_bytes`, within `collab.request_timeout_ms`). The backend's JSON
//! answer, or the command-reply error shape, is the `followed_chats` result: through the ack
//! when the client passed one, else emitted as `followed_chats`. A socket without identity or
//! over its collaboration budget gets its refusal the same way.

use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use super::identity::Participant;
use super::session::CollabSession;
use crate::ack::{Answer, WantsAck};
use crate::command::{CommandError, outcome};
use crate::gateway::{Gateway, Shared};

/// The result event.
const RESULT: &str = "followed_chats";

/// The `cmd.chat.followed_chats` request body.
fn request_body(who: &Participant, data: Value) -> Value {
    json!({"kind": who.kind, "id": &*who.id, "data": data})
}

pub(crate) async fn get_followed_chats(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let answer = Answer::new(&s, ack, wants_ack);
    let session = match CollabSession::of(&s) {
        Ok(session) => session,
        Err(refused) => {
            metrics::counter!("socketio_followed_chats_requests_total", "outcome" => refused.code())
                .increment(1);
            answer.send(RESULT, &refused.body());
            return;
        }
    };
    // No payload (`socket.emit('get_followed_chats', cb)`) is `null`.
    let data = payload.unwrap_or(Value::Null);
    let result = ask(&g, &session.who, data).await;
    metrics::counter!("socketio_followed_chats_requests_total", "outcome" => outcome(&result))
        .increment(1);
    answer.send(RESULT, &result.unwrap_or_else(CommandError::body));
}

async fn ask(g: &Gateway, who: &Participant, data: Value) -> Result<Value, CommandError> {
    g.commands
        .request(
            events::subject::FOLLOWED_CHATS,
            &request_body(who, data),
            g.config.collab.max_request_bytes,
            Duration::from_millis(g.config.collab.request_timeout_ms),
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::identity::Kind;

    #[test]
    fn the_request_names_the_user() {
        let who = Participant::new(Kind::User, "42").unwrap();
        assert_eq!(
            request_body(&who, json!({"page": 2})),
            json!({"kind": "user", "id": "42", "data": {"page": 2}})
        );
        assert_eq!(request_body(&who, Value::Null)["data"], Value::Null);
    }
}
