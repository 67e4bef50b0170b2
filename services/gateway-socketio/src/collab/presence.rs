//! `presence:query` → `presence:result` (and the watches it starts), and `presence:update`
//! from a client (its socket's own status), on `/admin` and `/provider`.
//!
//! Who may see whose presence:
//! - with a `channel_id`, a member of the channel sees its members (every member when no id
//!   is named, with `request` membership; with `claim` membership the ids must be named, as
//!   the gateway knows no member list); ids that are not members are refused one by one;
//! - without one, only `/admin` principals, when `presence.admin_query_any` (CRM staff seeing
//!   colleagues).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use super::channel::ChannelId;
use super::error::{self, CollabError};
use super::identity::{Kind, Participant};
use super::membership::Access;
use super::recipients::Recipients;
use super::registry::{Activity, Update};
use super::session::{CollabSession, lock};
use crate::ack::{Answer, WantsAck};
use crate::gateway::{Gateway, Shared};
use crate::namespace::Namespace;

const QUERY_SHAPE: &str =
    "expected {user_ids?: [id], profile_ids?: [id], channel_id?: string of 1 to 128 [A-Za-z0-9_-]}";
const UPDATE_SHAPE: &str = r#"expected {status: "online" | "away"}"#;
/// Why an id of a channel query is refused.
const NOT_MEMBER: &str = "not a member of the channel";

/// `presence:query`: the ids asked for, and the channel that allows it.
#[derive(Debug, Deserialize)]
struct Query {
    #[serde(flatten)]
    ids: Recipients,
    #[serde(default)]
    channel_id: Option<ChannelId>,
}

/// `presence:update` from a client.
#[derive(Debug, Deserialize)]
struct SetStatus {
    status: Activity,
}

/// One participant of a `presence:result`.
#[derive(Debug, Serialize)]
struct Item<'a> {
    #[serde(flatten)]
    presence: Update<'a>,
    watched: bool,
}

/// One refused id of a `presence:result`.
#[derive(Debug, Serialize)]
struct Refused<'a> {
    kind: Kind,
    id: &'a str,
    reason: &'static str,
}

/// `presence:query`: answered through the ack, or as `presence:result` without one.
pub(crate) async fn query(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let answer = Answer::new(&s, ack, wants_ack);
    let result = answer_query(&s, &g, payload.ok()).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    metrics::counter!("socketio_collab_events_total", "event" => "presence:query", "outcome" => outcome)
        .increment(1);
    match result {
        Ok(body) => answer.send("presence:result", &body),
        Err(e) => answer.send("presence:result", &e.body()),
    }
}

async fn answer_query(
    s: &SocketRef,
    g: &Gateway,
    payload: Option<Value>,
) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let query: Query = payload
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or(CollabError::Malformed(QUERY_SHAPE))?;
    // Before anything else: a payload naming too many is refused whole.
    if query.ids.len() > g.config.presence.max_query_ids {
        return Err(CollabError::Limit("presence.max_query_ids"));
    }
    let (asked, refused): (Vec<Participant>, Vec<Participant>) = match &query.channel_id {
        Some(channel) => {
            let access = g
                .collab
                .membership
                .check(&g.commands, &session.principal, &session.who, channel)
                .await?;
            match access {
                Access::Listed(members) if query.ids.is_empty() => {
                    (members.participants().collect(), Vec::new())
                }
                Access::Listed(members) => {
                    query.ids.participants().partition(|p| members.contains(p))
                }
                Access::Claimed if query.ids.is_empty() => {
                    return Err(CollabError::Malformed(
                        "name user_ids or profile_ids: the channel's members are not known (claim membership)",
                    ));
                }
                Access::Claimed => (query.ids.participants().collect(), Vec::new()),
            }
        }
        None if session.ns == Namespace::Admin && g.config.presence.admin_query_any => {
            (query.ids.participants().collect(), Vec::new())
        }
        None => return Err(CollabError::NotMember),
    };
    let asked = distinct(asked);
    // Watch first, then read: a change in between is pushed, never missed.
    let watched = watch(
        s,
        &session,
        &asked,
        g.config.presence.max_watched_per_socket,
    );
    let presence: Vec<Value> = asked
        .iter()
        .zip(watched)
        .map(|(who, watched)| {
            let item = Item {
                presence: g.collab.registry.presence(who).update(who),
                watched,
            };
            serde_json::to_value(&item).unwrap_or(Value::Null)
        })
        .collect();
    let refused = distinct(refused);
    let refused: Vec<Refused<'_>> = refused
        .iter()
        .map(|who| Refused {
            kind: who.kind,
            id: &who.id,
            reason: NOT_MEMBER,
        })
        .collect();
    Ok(json!({"ok": true, "presence": presence, "refused": refused}))
}

/// `items` without repeats, in order.
fn distinct(items: Vec<Participant>) -> Vec<Participant> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

/// Starts watching `asked` on this socket, up to `max` participants in all; returns whether
/// each is watched.
fn watch(s: &SocketRef, session: &CollabSession, asked: &[Participant], max: usize) -> Vec<bool> {
    let mut rooms = Vec::new();
    let watched = {
        let mut watching = lock(&session.watching);
        asked
            .iter()
            .map(|who| {
                if watching.contains(who) {
                    true
                } else if watching.len() < max {
                    watching.insert(who.clone());
                    rooms.push(who.watch_room());
                    true
                } else {
                    false
                }
            })
            .collect()
    };
    if !rooms.is_empty() {
        join(s, rooms);
    }
    watched
}

/// Joins `rooms`, unless the socket is gone (a disconnect between the check and the join
/// already cleared its rooms, so they are left again).
pub(super) fn join(s: &SocketRef, rooms: Vec<String>) {
    s.join(rooms);
    if !s.connected() {
        s.leave_all();
    }
}

/// `presence:update` `{"status"}`: this socket's own status; acked `{"ok": true, "status"}`.
pub(crate) async fn update(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let result = set_status(&s, &g, payload.ok());
    error::answer(
        &s,
        Answer::new(&s, ack, wants_ack),
        "presence:update",
        result,
    );
}

fn set_status(s: &SocketRef, g: &Gateway, payload: Option<Value>) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let SetStatus { status } = payload
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or(CollabError::Malformed(UPDATE_SHAPE))?;
    let registry = &g.collab.registry;
    registry.set_status(&session.who, s.id, status);
    // A status set while the socket was leaving would outlive it.
    if !s.connected() {
        registry.socket_disconnected(&session.who, s.id);
    }
    Ok(json!({"ok": true, "status": status}))
}
