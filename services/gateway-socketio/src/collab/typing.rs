//! Typing indicators: `typing:start` / `typing:stop` from a channel's members become
//! `user:typing` / `user:typing:stop` `{"channel_id", "kind", "id"}` for its other members, on
//! both namespaces and every instance, never for the sender's own sockets.
//!
//! The sender's instance checks membership and relays on `rt.gateway.typing`
//! `{"op": "start" | "stop", "channel_id", "from": {"kind", "id"}, "to"?: {"user_ids",
//! "profile_ids"}}` (`to`: the members the backend listed; absent with claim membership, when
//! the channel's member room is the audience). A socket's `typing:start` for one channel is
//! relayed at most once per `typing.renew_ms`; those in between are acked and absorbed. It
//! relays `stop` on `typing:stop` and for every channel it was typing in when it leaves.
//!
//! Every instance, the sender's included, delivers what it hears to its own sockets
//! ([`relay`]) and times indicators out itself (`typing.timeout_ms` after the last relayed
//! start), so a sender's instance dying leaves nobody typing. `user:typing` is emitted when a
//! participant starts typing in a channel, not on renewals; `user:typing:stop` goes to the
//! rooms its `user:typing` went to, whatever a later message names. A `stop` is only matched
//! against an indicator shown here, so it carries no `to`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::ParserError;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::channel::ChannelId;
use super::error::{CollabError, answer};
use super::identity::{Kind, Participant, ParticipantRef};
use super::indicators::{Indicator, Key, Shown, Started};
use super::membership::Access;
use super::push::{Addressed, Bounds, Family};
use super::recipients::Recipients;
use super::session::{CollabSession, lock};
use crate::ack::{Answer, WantsAck};
use crate::bus::subscribe;
use crate::config::TypingConfig;
use crate::gateway::{Gateway, Shared};

/// Indicators one instance shows at once. Each is a (channel, sender) typing right now, so
/// this is far above real use; past it new indicators are dropped (logged, counted), never
/// shown without a way to end them.
const MAX_INDICATORS: usize = 100_000;
/// Audience rooms the shown indicators hold in all (an indicator keeps its rooms for its
/// `user:typing:stop`); past it new indicators are dropped too.
const MAX_INDICATOR_ROOMS: usize = 2_000_000;

const TYPING: &str = "user:typing";
const TYPING_STOP: &str = "user:typing:stop";

/// Typing on this instance: how often a socket's `typing:start` is relayed and how long an
/// indicator lives without one.
#[derive(Debug)]
pub(crate) struct Typing {
    renew: Duration,
    timeout: Duration,
}

impl Typing {
    pub(crate) const fn new(config: &TypingConfig) -> Self {
        Self {
            renew: Duration::from_millis(config.renew_ms),
            timeout: Duration::from_millis(config.timeout_ms),
        }
    }

    /// The socket left: a `stop` is relayed for every channel it was typing in (whose
    /// indicator has not timed out already). Called from the disconnect path, which cannot
    /// wait: the publishes run in one task.
    pub(crate) fn socket_left(&self, g: &Arc<Gateway>, session: &Arc<CollabSession>) {
        let now = std::time::Instant::now();
        let channels: Vec<ChannelId> = lock(&session.typing)
            .drain()
            .filter(|(_, relayed)| !self.lapsed(*relayed, now))
            .map(|(channel, _)| channel)
            .collect();
        if channels.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no runtime to relay typing stops of a leaving socket");
            return;
        };
        let (g, who) = (Arc::clone(g), session.who.clone());
        runtime.spawn(async move {
            for channel in &channels {
                publish(&g, Op::Stop, channel, &who, None).await;
            }
        });
    }

    /// Whether this `typing:start` of `session` in `channel` is to be relayed: not when its
    /// last relayed one there is younger than `typing.renew_ms` (absorbed). Records it when
    /// relayed. The socket's map only holds channels whose indicator is still alive
    /// somewhere: it is bounded by the socket's event budget over `typing.timeout_ms`.
    fn relays_start(&self, session: &CollabSession, channel: &ChannelId) -> bool {
        let now = std::time::Instant::now();
        let mut typing = lock(&session.typing);
        match typing.get_mut(channel) {
            Some(relayed) if now.duration_since(*relayed) < self.renew => false,
            Some(relayed) => {
                *relayed = now;
                true
            }
            None => {
                typing.retain(|_, relayed| !self.lapsed(*relayed, now));
                typing.insert(channel.clone(), now);
                true
            }
        }
    }

    /// Whether an indicator relayed at `relayed` has timed out everywhere by `now`.
    fn lapsed(&self, relayed: std::time::Instant, now: std::time::Instant) -> bool {
        now.duration_since(relayed) >= self.timeout
    }
}

/// `typing:start` `{"channel_id"}`: the sender must be a member.
pub(crate) async fn start(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let result = start_typing(&s, &g, payload).await;
    answer(&s, Answer::new(&s, ack, wants_ack), "typing:start", result);
}

async fn start_typing(
    s: &SocketRef,
    g: &Gateway,
    payload: Result<Value, ParserError>,
) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let channel = channel_of(payload)?;
    let access = g
        .collab
        .membership
        .check(&g.commands, &session.principal, &session.who, &channel)
        .await?;
    if g.collab.typing.relays_start(&session, &channel) {
        let to = match &access {
            Access::Listed(members) => Some(&**members),
            Access::Claimed => None,
        };
        publish(g, Op::Start, &channel, &session.who, to).await;
    }
    Ok(json!({"ok": true}))
}

/// `typing:stop` `{"channel_id"}`: relayed when the socket was typing there; acked either way.
pub(crate) async fn stop(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let result = stop_typing(&s, &g, payload).await;
    answer(&s, Answer::new(&s, ack, wants_ack), "typing:stop", result);
}

async fn stop_typing(
    s: &SocketRef,
    g: &Gateway,
    payload: Result<Value, ParserError>,
) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let channel = channel_of(payload)?;
    let was_typing = lock(&session.typing).remove(&channel).is_some();
    if was_typing {
        publish(g, Op::Stop, &channel, &session.who, None).await;
    }
    Ok(json!({"ok": true}))
}

/// The channel of a `{"channel_id"}` payload.
fn channel_of(payload: Result<Value, ParserError>) -> Result<ChannelId, CollabError> {
    #[derive(Deserialize)]
    struct Payload {
        channel_id: ChannelId,
    }
    const EXPECTED: &str = r#"expected {"channel_id": "<1 to 128 of [A-Za-z0-9_-]>"}"#;
    let payload = payload.map_err(|_| CollabError::Malformed(EXPECTED))?;
    serde_json::from_value::<Payload>(payload)
        .map(|p| p.channel_id)
        .map_err(|_| CollabError::Malformed(EXPECTED))
}

// ---------------------------------------------------------------------------------------------
// Between instances
// ---------------------------------------------------------------------------------------------

/// `op` of a `rt.gateway.typing` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Start,
    Stop,
}

/// A `rt.gateway.typing` message as the sender's instance writes it.
#[derive(Debug, Serialize)]
struct Outgoing<'a> {
    op: Op,
    channel_id: &'a ChannelId,
    from: ParticipantRef<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<RecipientsRef<'a>>,
}

#[derive(Debug, Serialize)]
struct RecipientsRef<'a> {
    user_ids: &'a [String],
    profile_ids: &'a [String],
}

/// A `rt.gateway.typing` message as every instance reads it.
#[derive(Debug, Deserialize)]
struct Incoming {
    op: Op,
    channel_id: ChannelId,
    from: Sender,
    #[serde(default)]
    to: Option<Recipients>,
}

#[derive(Debug, Deserialize)]
struct Sender {
    kind: Kind,
    id: String,
}

static NOBODY: Recipients = Recipients {
    user_ids: Vec::new(),
    profile_ids: Vec::new(),
};

impl Addressed for Incoming {
    fn recipients(&self) -> &Recipients {
        self.to.as_ref().unwrap_or(&NOBODY)
    }
}

/// Relays `op` of `from` in `channel` to every instance. A failure is logged: typing is
/// ephemeral, the next start (or the timeout) repairs it.
async fn publish(
    g: &Gateway,
    op: Op,
    channel: &ChannelId,
    from: &Participant,
    to: Option<&Recipients>,
) {
    let message = Outgoing {
        op,
        channel_id: channel,
        from: from.as_ref(),
        to: to.map(|r| RecipientsRef {
            user_ids: &r.user_ids,
            profile_ids: &r.profile_ids,
        }),
    };
    let body = match serde_json::to_vec(&message) {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(error = %e, "typing message not serialised");
            return;
        }
    };
    if let Err(e) = g
        .nats
        .publish(events::subject::GATEWAY_TYPING, body.into())
        .await
    {
        tracing::warn!(error = %e, "typing message not published");
    }
}

/// Typing between instances, until `shutdown`: what `rt.gateway.typing` says, delivered to
/// this instance's sockets, and the indicators shown here timed out. One task drives both.
pub(crate) async fn relay(io: SocketIo, g: Arc<Gateway>, shutdown: CancellationToken) {
    let Some(mut sub) = subscribe(&g.nats, events::subject::GATEWAY_TYPING, &shutdown).await else {
        return;
    };
    let bounds = Bounds::new(&g.config.collab);
    let mut shown = Shown::new(g.collab.typing.timeout, MAX_INDICATORS, MAX_INDICATOR_ROOMS);
    loop {
        let deadline = shown.next_deadline();
        tokio::select! {
            () = shutdown.cancelled() => return,
            message = sub.next() => {
                let Some(message) = message else { return };
                let Some(change) = read(bounds, &message) else { continue };
                apply(&io, &mut shown, change).await;
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                for ended in shown.expire(Instant::now()) {
                    ended.deliver(&io, TYPING_STOP).await;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// A valid message: what it does to which indicator.
#[derive(Debug)]
struct Change {
    op: Op,
    key: Key,
    to: Option<Recipients>,
}

fn read(bounds: Bounds, message: &async_nats::Message) -> Option<Change> {
    let subject = message.subject.as_str();
    let incoming: Incoming = bounds.parse(Family::Typing, subject, &message.payload)?;
    let Some(from) = Participant::new(incoming.from.kind, &incoming.from.id) else {
        super::push::invalid(Family::Typing, subject, "from.id is empty or too long");
        return None;
    };
    Some(Change {
        op: incoming.op,
        key: (incoming.channel_id, from),
        to: incoming.to,
    })
}

async fn apply(io: &SocketIo, shown: &mut Shown, change: Change) {
    let now = Instant::now();
    match change.op {
        Op::Start => {
            let (channel, from) = &change.key;
            let make = || Indicator::new(channel, from, change.to.as_ref());
            match shown.start(change.key.clone(), make, now) {
                Started::New(indicator) => indicator.deliver(io, TYPING).await,
                Started::Renewed => {}
                Started::Full => {
                    metrics::counter!("socketio_typing_indicators_dropped_total").increment(1);
                    tracing::warn!(
                        channel = %change.key.0,
                        from = %change.key.1,
                        "too many typing indicators shown; one dropped"
                    );
                }
            }
        }
        Op::Stop => {
            if let Some(ended) = shown.stop(&change.key) {
                ended.deliver(io, TYPING_STOP).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(channel: &str, user: &str) -> Key {
        (
            ChannelId::parse(channel).unwrap(),
            Participant::new(Kind::User, user).unwrap(),
        )
    }

    #[test]
    fn messages_between_instances_round_trip() {
        let (channel, from) = key("c1", "u-1");
        let to = Recipients {
            user_ids: vec!["u-2".to_owned()],
            profile_ids: vec![],
        };
        let out = Outgoing {
            op: Op::Start,
            channel_id: &channel,
            from: from.as_ref(),
            to: Some(RecipientsRef {
                user_ids: &to.user_ids,
                profile_ids: &to.profile_ids,
            }),
        };
        let wire = serde_json::to_value(&out).unwrap();
        assert_eq!(
            wire,
            json!({"op": "start", "channel_id": "c1", "from": {"kind": "user", "id": "u-1"},
                   "to": {"user_ids": ["u-2"], "profile_ids": []}})
        );
        let back: Incoming = serde_json::from_value(wire).unwrap();
        assert_eq!((back.op, back.channel_id), (Op::Start, channel.clone()));
        assert_eq!(back.to, Some(to));
        let stop = Outgoing {
            op: Op::Stop,
            channel_id: &channel,
            from: from.as_ref(),
            to: None,
        };
        let wire = serde_json::to_value(&stop).unwrap();
        assert!(wire.get("to").is_none(), "{wire}");
        assert!(serde_json::from_value::<Incoming>(json!({"op": "pause"})).is_err());
    }

    #[test]
    fn payloads_name_one_channel() {
        assert_eq!(
            channel_of(Ok(json!({"channel_id": "deal-555"}))).unwrap(),
            ChannelId::parse("deal-555").unwrap()
        );
        for bad in [
            json!({}),
            json!({"channel_id": "a b"}),
            json!("c1"),
            json!(null),
        ] {
            assert!(matches!(
                channel_of(Ok(bad)),
                Err(CollabError::Malformed(_))
            ));
        }
    }
}
