//! The backend's chat pushes, `rt.chat.<kind>`, relayed by every instance to its own sockets.
//!
//! - `rt.chat.message` `{"channel_id", "participants", "data"}`: `chat_message` to the `/admin`
//!   sockets viewing the channel and to the `/provider` sockets of the participant profiles;
//!   `chatNotification` to the participant users that view the channel on no socket of any
//!   instance ([`super::registry::Registry::is_viewing_anywhere`]).
//! - every other kind `{"to", "data"}`: its event to the addressed participants' identity rooms,
//!   on `/admin` and, for the kinds the Provider App has, `/provider`.
//!
//! `data` is forwarded unchanged, serialised once per push. What is not one of these is skipped
//! and counted ([`super::push`]).

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

use super::channel::ChannelId;
use super::identity::Kind;
use super::push::{Addressed, Bounds, Emitter, Family, invalid};
use super::recipients::Recipients;
use crate::bus::{next, subscribe};
use crate::gateway::Gateway;
use crate::namespace::Namespace;

/// The `<kind>` of `rt.chat.<kind>`, parsed once per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChatKind {
    /// `message`: a message in a channel, `chat_message` and `chatNotification`.
    Message,
    /// Every other kind: `event` to the participants `to` names, on `/admin` and, when
    /// `provider`, on `/provider`.
    Addressed { event: &'static str, provider: bool },
}

impl ChatKind {
    fn parse(kind: &str) -> Option<Self> {
        let (event, provider) = match kind {
            "message" => return Some(Self::Message),
            "notification" => (NOTIFICATION, true),
            "channel_read" => ("channel:read", true),
            "message_read" => ("message:read", true),
            "alert" => ("chat_alert", true),
            "assignment_changed" => ("assignment_changed", false),
            "followed_chats" => ("followed_chats", false),
            _ => return None,
        };
        Some(Self::Addressed { event, provider })
    }
}

const CHAT_MESSAGE: &str = "chat_message";
const NOTIFICATION: &str = "chatNotification";

/// `rt.chat.message`.
#[derive(Debug, Deserialize)]
struct MessagePush<'a> {
    channel_id: ChannelId,
    participants: Recipients,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Addressed for MessagePush<'_> {
    fn recipients(&self) -> &Recipients {
        &self.participants
    }
}

/// Every other `rt.chat.<kind>`.
#[derive(Debug, Deserialize)]
struct AddressedPush<'a> {
    to: Recipients,
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Addressed for AddressedPush<'_> {
    fn recipients(&self) -> &Recipients {
        &self.to
    }
}

/// Relays the backend's chat pushes until `shutdown`.
pub(crate) async fn relay(io: SocketIo, g: Arc<Gateway>, shutdown: CancellationToken) {
    let Some(mut sub) = subscribe(&g.nats, events::subject::CHAT_PUSHES, &shutdown).await else {
        return;
    };
    let bounds = Bounds::new(&g.config.collab);
    while let Some(message) = next(&mut sub, &shutdown).await {
        relay_push(&io, &g, bounds, &message.subject, &message.payload).await;
    }
}

async fn relay_push(io: &SocketIo, g: &Gateway, bounds: Bounds, subject: &str, payload: &[u8]) {
    let Some(kind) =
        events::subject::push_kind(events::subject::CHAT_PUSHES, subject).and_then(ChatKind::parse)
    else {
        invalid(Family::Chat, subject, "unknown chat push kind");
        return;
    };
    let (event, provider) = match kind {
        ChatKind::Message => {
            if let Some(push) = bounds.parse::<MessagePush<'_>>(Family::Chat, subject, payload) {
                relay_message(io, g, &push).await;
            }
            return;
        }
        ChatKind::Addressed { event, provider } => (event, provider),
    };
    let Some(push) = bounds.parse::<AddressedPush<'_>>(Family::Chat, subject, payload) else {
        return;
    };
    let out = Emitter::new(io, Family::Chat);
    let data = push.data;
    out.emit(Namespace::Admin, push.to.rooms(Kind::User), event, data)
        .await;
    if provider {
        out.emit(
            Namespace::Provider,
            push.to.rooms(Kind::Profile),
            event,
            data,
        )
        .await;
    }
}

/// `chat_message` to the viewers and the participant profiles, `chatNotification` to the
/// participant users viewing it nowhere.
async fn relay_message(io: &SocketIo, g: &Gateway, push: &MessagePush<'_>) {
    let out = Emitter::new(io, Family::Chat);
    let (channel, data) = (&push.channel_id, push.data);
    out.emit(
        Namespace::Admin,
        vec![channel.view_room()],
        CHAT_MESSAGE,
        data,
    )
    .await;
    let profiles = push.participants.rooms(Kind::Profile);
    out.emit(Namespace::Provider, profiles, CHAT_MESSAGE, data)
        .await;
    let elsewhere: Vec<String> = push
        .participants
        .participants()
        .filter(|p| p.kind == Kind::User && !g.collab.registry.is_viewing_anywhere(p, channel))
        .map(|p| p.identity_room())
        .collect();
    out.emit(Namespace::Admin, elsewhere, NOTIFICATION, data)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_their_events() {
        let table = [
            ("notification", "chatNotification", true),
            ("channel_read", "channel:read", true),
            ("message_read", "message:read", true),
            ("alert", "chat_alert", true),
            ("assignment_changed", "assignment_changed", false),
            ("followed_chats", "followed_chats", false),
        ];
        for (kind, event, provider) in table {
            assert_eq!(
                ChatKind::parse(kind),
                Some(ChatKind::Addressed { event, provider }),
                "{kind}"
            );
        }
        assert_eq!(ChatKind::parse("message"), Some(ChatKind::Message));
        for unknown in ["", "Message", "typing", "message.x"] {
            assert_eq!(ChatKind::parse(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn a_message_names_a_valid_channel_and_its_participants() {
        let ok = br#"{"channel_id": "deal-555", "participants": {"user_ids": ["42"]}, "data": {"id": "m-1"}}"#;
        let bounds = Bounds::new(&crate::config::CollabConfig::default());
        let push: MessagePush<'_> = bounds.parse(Family::Chat, "rt.chat.message", ok).unwrap();
        assert_eq!(push.channel_id.as_str(), "deal-555");
        assert_eq!(push.data.get(), r#"{"id": "m-1"}"#);
        let bad_channel = br#"{"channel_id": "a.b", "participants": {}, "data": {}}"#;
        assert!(
            bounds
                .parse::<MessagePush<'_>>(Family::Chat, "rt.chat.message", bad_channel)
                .is_none()
        );
        let no_data = br#"{"channel_id": "c", "participants": {}}"#;
        assert!(
            bounds
                .parse::<MessagePush<'_>>(Family::Chat, "rt.chat.message", no_data)
                .is_none()
        );
    }
}
