//! Typing indicators: `typing:start` / `typing:stop` from a channel's members become
//! `user:typing` / `user:typing:stop` `{"channel_id", "kind", "id"}` for its other members, on
//! both namespaces and every instance, never for the sender's own sockets.
//!
//! The sender's instance checks membership and relays on `rt.gateway.typing`
//! `{"op": "start" | "stop", "channel_id", "from": {"kind", "id"}, "to"?: {"user_ids",
//! "profile_ids"}}` (`to`: the members the backend listed; absent with claim membership, when
//! the channel's member room is the audience). A participant's `typing:start` for one channel
//! is relayed at most once per `typing.renew_ms` by this instance, whichever of its sockets
//! sends it and whether or not a `typing:stop` came in between; those in between are acked and
//! absorbed. A socket relays `stop` on `typing:stop` and for every channel it was typing in
//! when it leaves. A message over `collab.max_push_bytes` (which every instance would skip) is
//! not published: the event is refused (`limit`) and the error logged.
//!
//! A socket's events may finish in any order (`typing:start` waits for membership): each
//! applies only when it came after the last one applied in that channel ([`Seq`]), and the
//! relays leave in the order of the events.
//!
//! Every instance, the sender's included, delivers what it hears to its own sockets
//! ([`relay`]) and times indicators out itself (`typing.timeout_ms` after the last relayed
//! start), so a sender's instance dying leaves nobody typing. `user:typing` is emitted when a
//! participant starts typing in a channel, not on renewals; `user:typing:stop` goes to the
//! rooms its `user:typing` went to, whatever a later message names. A `stop` is only matched
//! against an indicator shown here, so it carries no `to`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::ParserError;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::channel::{ChannelId, channel_ref};
use super::error::{CollabError, answer};
use super::identity::{Kind, Participant, ParticipantRef};
use super::indicators::{Indicator, Key, Shown, Started};
use super::membership::Access;
use super::push::{Addressed, Bounds, Family};
use super::recipients::Recipients;
use super::session::{CollabSession, Seq, lock};
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

/// (participant, channel) whose last relayed start this instance remembers (for the
/// `typing.renew_ms` throttle); past it, once those older than `typing.renew_ms` are dropped,
/// new starts are absorbed (logged).
const MAX_THROTTLED: usize = 100_000;

const TYPING: &str = "user:typing";
const TYPING_STOP: &str = "user:typing:stop";

/// Typing on this instance: how often a participant's `typing:start` is relayed and how long
/// an indicator lives without one.
#[derive(Debug)]
pub(crate) struct Typing {
    renew: Duration,
    timeout: Duration,
    /// When a start of each (participant, channel) was last relayed by this instance.
    relayed: Mutex<HashMap<Key, std::time::Instant>>,
    max_throttled: usize,
}

impl Typing {
    pub(crate) fn new(config: &TypingConfig) -> Self {
        Self {
            renew: Duration::from_millis(config.renew_ms),
            timeout: Duration::from_millis(config.timeout_ms),
            relayed: Mutex::default(),
            max_throttled: MAX_THROTTLED,
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
                // A stop carries no `to`: never over the size bound.
                let _ = publish(&g, Op::Stop, channel, &who, None).await;
            }
        });
    }

    /// Whether this `typing:start` of `session` in `channel` is to be relayed: not when a start
    /// of its participant there was relayed by this instance less than `typing.renew_ms` ago
    /// (absorbed), from any of its sockets, stopped since or not. Records it in the socket's
    /// map (for its `typing:stop` and its leaving) either way, and as relayed when it is. The
    /// socket's map only holds channels whose indicator may still be alive somewhere: it is
    /// bounded by the socket's event budget over `typing.timeout_ms`.
    fn relays_start(&self, session: &CollabSession, channel: &ChannelId) -> bool {
        let now = std::time::Instant::now();
        {
            let mut typing = lock(&session.typing);
            if !typing.contains_key(channel) {
                typing.retain(|_, at| !self.lapsed(*at, now));
            }
            typing.insert(channel.clone(), now);
        }
        self.throttle((channel.clone(), session.who.clone()), now)
    }

    /// Whether a start of `key` at `now` is relayed (recorded when it is).
    fn throttle(&self, key: Key, now: std::time::Instant) -> bool {
        let mut relayed = lock(&self.relayed);
        if let Some(at) = relayed.get_mut(&key) {
            if now.duration_since(*at) < self.renew {
                return false;
            }
            *at = now;
            return true;
        }
        if relayed.len() >= self.max_throttled {
            relayed.retain(|_, at| now.duration_since(*at) < self.renew);
            if relayed.len() >= self.max_throttled {
                metrics::counter!("socketio_typing_indicators_dropped_total").increment(1);
                tracing::warn!(channel = %key.0, from = %key.1, "too many participants typing; a start absorbed");
                return false;
            }
        }
        relayed.insert(key, now);
        true
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
    seq: Seq,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let result = start_typing(&s, &g, payload, seq).await;
    answer(&s, Answer::new(&s, ack, wants_ack), "typing:start", result);
}

async fn start_typing(
    s: &SocketRef,
    g: &Gateway,
    payload: Result<Value, ParserError>,
    seq: Seq,
) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let channel = channel_ref(payload.ok())?;
    let access = g
        .collab
        .membership
        .check(&g.commands, &session.principal, &session.who, &channel)
        .await?;
    let mut order = session.typing_order.lock().await;
    if !order.admit(&channel, seq) {
        // A later `typing:stop` (or start) of the socket in this channel already applied.
        return Ok(json!({"ok": true}));
    }
    if g.collab.typing.relays_start(&session, &channel) {
        let to = match &access {
            Access::Listed(members) => Some(&**members),
            Access::Claimed => None,
        };
        publish(g, Op::Start, &channel, &session.who, to).await?;
    }
    // The socket left while membership was asked, after its stops were relayed: this start
    // must not outlive it.
    if !s.connected() && lock(&session.typing).remove(&channel).is_some() {
        publish(g, Op::Stop, &channel, &session.who, None).await?;
    }
    drop(order);
    Ok(json!({"ok": true}))
}

/// `typing:stop` `{"channel_id"}`: relayed when the socket was typing there; acked either way.
pub(crate) async fn stop(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    seq: Seq,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let result = stop_typing(&s, &g, payload, seq).await;
    answer(&s, Answer::new(&s, ack, wants_ack), "typing:stop", result);
}

async fn stop_typing(
    s: &SocketRef,
    g: &Gateway,
    payload: Result<Value, ParserError>,
    seq: Seq,
) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let channel = channel_ref(payload.ok())?;
    let mut order = session.typing_order.lock().await;
    // Recorded even when the socket is not typing there (yet): an older `typing:start` still
    // waiting for membership must not relay after this.
    if !order.admit(&channel, seq) {
        return Ok(json!({"ok": true}));
    }
    let was_typing = lock(&session.typing).remove(&channel).is_some();
    if was_typing {
        publish(g, Op::Stop, &channel, &session.who, None).await?;
    }
    drop(order);
    Ok(json!({"ok": true}))
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

/// Relays `op` of `from` in `channel` to every instance. A message over
/// `collab.max_push_bytes`, which every instance would skip, is not sent (an error, logged).
/// A failure to publish is logged: typing is ephemeral, the next start (or the timeout)
/// repairs it.
async fn publish(
    g: &Gateway,
    op: Op,
    channel: &ChannelId,
    from: &Participant,
    to: Option<&Recipients>,
) -> Result<(), CollabError> {
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
            return Ok(());
        }
    };
    if body.len() > g.config.collab.max_push_bytes {
        tracing::error!(
            %channel,
            bytes = body.len(),
            limit = g.config.collab.max_push_bytes,
            "typing message over collab.max_push_bytes; not relayed"
        );
        return Err(CollabError::Limit("collab.max_push_bytes"));
    }
    if let Err(e) = g
        .nats
        .publish(events::subject::GATEWAY_TYPING, body.into())
        .await
    {
        tracing::warn!(error = %e, "typing message not published");
    }
    Ok(())
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
    fn starts_are_throttled_per_participant_and_channel_and_bounded() {
        let config = TypingConfig {
            renew_ms: 1000,
            ..TypingConfig::default()
        };
        let mut typing = Typing::new(&config);
        typing.max_throttled = 2;
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert!(typing.throttle(key("c1", "u-1"), t0));
        assert!(
            !typing.throttle(key("c1", "u-1"), ms(999)),
            "within renew_ms"
        );
        assert!(typing.throttle(key("c1", "u-1"), ms(1000)));
        assert!(
            typing.throttle(key("c2", "u-1"), ms(1000)),
            "another channel"
        );
        assert!(
            !typing.throttle(key("c3", "u-1"), ms(1000)),
            "full of live entries"
        );
        assert!(
            typing.throttle(key("c3", "u-1"), ms(2000)),
            "the old ones dropped"
        );
    }

    #[test]
    fn payloads_name_one_channel() {
        assert_eq!(
            channel_ref(Some(json!({"channel_id": "deal-555"}))).unwrap(),
            ChannelId::parse("deal-555").unwrap()
        );
        for bad in [
            json!({}),
            json!({"channel_id": "a b"}),
            json!("c1"),
            json!(null),
        ] {
            assert!(matches!(
                channel_ref(Some(bad)),
                Err(CollabError::Malformed(_))
            ));
        }
    }
}
