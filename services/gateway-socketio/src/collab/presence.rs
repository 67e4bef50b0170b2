//! `presence:query` → `presence:result` (and the watches it starts), and `presence:update`
//! from a client (its socket's own status), on `/admin` and `/provider`.
//!
//! Who may see whose presence:
//! - with a `channel_id`, a member of the channel sees its members (every member when no id
//!   is named, with `request` membership; with `claim` membership the ids must be named, as
//!   the gateway knows no member list); ids that are not members are refused one by one;
//! - without one, only `/admin` principals, when `presence.admin_query_any` (CRM staff seeing
//!   colleagues).
//!
//! With `claim` membership the gateway cannot tell whether a named id is a member, so a
//! channel does not widen what the caller may see: `/provider` is refused (`forbidden`), and
//! `/admin` is answered as without a channel (`presence.admin_query_any`).

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
use super::session::{CollabSession, Seq, lock};
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
    let access = match &query.channel_id {
        Some(channel) => Some(
            g.collab
                .membership
                .check(&g.commands, &session.principal, &session.who, channel)
                .await?,
        ),
        None => None,
    };
    let (asked, refused) = scope(
        &query.ids,
        access,
        session.ns,
        g.config.presence.admin_query_any,
    )?;
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

/// Who of `ids` a query may see (and who it is refused), given the caller's `access` to the
/// query's channel (`None`: no channel), its namespace and `presence.admin_query_any`.
fn scope(
    ids: &Recipients,
    access: Option<Access>,
    ns: Namespace,
    admin_query_any: bool,
) -> Result<(Vec<Participant>, Vec<Participant>), CollabError> {
    let anyone = ns == Namespace::Admin && admin_query_any;
    match access {
        Some(Access::Listed(members)) if ids.is_empty() => {
            Ok((members.participants().collect(), Vec::new()))
        }
        Some(Access::Listed(members)) => Ok(ids.participants().partition(|p| members.contains(p))),
        Some(Access::Claimed) if ids.is_empty() => Err(CollabError::Malformed(
            "name user_ids or profile_ids: the channel's members are not known (claim membership)",
        )),
        // The gateway cannot tell whether the ids are members: a claimed channel allows no more
        // than no channel does.
        Some(Access::Claimed) | None if anyone => Ok((ids.participants().collect(), Vec::new())),
        Some(Access::Claimed) | None => Err(CollabError::NotMember),
    }
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
    seq: Seq,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let result = set_status(&s, &g, payload.ok(), seq);
    error::answer(
        &s,
        Answer::new(&s, ack, wants_ack),
        "presence:update",
        result,
    );
}

fn set_status(
    s: &SocketRef,
    g: &Gateway,
    payload: Option<Value>,
    seq: Seq,
) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let SetStatus { status } = payload
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or(CollabError::Malformed(UPDATE_SHAPE))?;
    let registry = &g.collab.registry;
    {
        // A later `presence:update` of the socket that already ran wins.
        let mut last = lock(&session.status_seq);
        if seq.0 <= *last {
            return Ok(json!({"ok": true, "status": status}));
        }
        *last = seq.0;
        registry.set_status(&session.who, s.id, status);
    }
    // A status set while the socket was leaving would outlive it.
    if !s.connected() {
        registry.socket_disconnected(&session.who, s.id);
    }
    Ok(json!({"ok": true, "status": status}))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn ids(users: &[&str]) -> Recipients {
        Recipients {
            user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
            profile_ids: vec![],
        }
    }

    fn names(p: &[Participant]) -> Vec<&str> {
        p.iter().map(|p| &*p.id).collect()
    }

    #[test]
    fn a_claimed_channel_widens_nothing() {
        let named = ids(&["u-1", "u-2"]);
        // /provider: a claimed channel does not let it name anyone.
        for any in [true, false] {
            assert_eq!(
                scope(&named, Some(Access::Claimed), Namespace::Provider, any).err(),
                Some(CollabError::NotMember)
            );
        }
        // /admin: as without a channel.
        let (asked, refused) =
            scope(&named, Some(Access::Claimed), Namespace::Admin, true).unwrap();
        assert_eq!((names(&asked), refused.len()), (vec!["u-1", "u-2"], 0));
        assert_eq!(
            scope(&named, Some(Access::Claimed), Namespace::Admin, false).err(),
            Some(CollabError::NotMember)
        );
        assert_eq!(
            scope(&named, None, Namespace::Admin, false).err(),
            Some(CollabError::NotMember)
        );
        assert!(matches!(
            scope(&ids(&[]), Some(Access::Claimed), Namespace::Admin, true),
            Err(CollabError::Malformed(_))
        ));
    }

    #[test]
    fn a_listed_channel_shows_its_members_only() {
        let members = Arc::new(ids(&["u-1", "u-3"]));
        let (asked, refused) = scope(
            &ids(&["u-1", "u-2"]),
            Some(Access::Listed(Arc::clone(&members))),
            Namespace::Provider,
            false,
        )
        .unwrap();
        assert_eq!((names(&asked), names(&refused)), (vec!["u-1"], vec!["u-2"]));
        let (asked, _) = scope(
            &ids(&[]),
            Some(Access::Listed(members)),
            Namespace::Provider,
            false,
        )
        .unwrap();
        assert_eq!(names(&asked), ["u-1", "u-3"]);
    }
}
