//! `subscribe` / `unsubscribe` on `/admin`: the payload planned into rooms by [`policy`],
//! bounded by `admin.max_subscriptions`, answered through the ack or `subscribe:result`.

use std::collections::HashSet;

use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use super::policy;
use crate::ack::{Answer, WantsAck};
use crate::auth::Principal;
use crate::gateway::Shared;

pub(crate) async fn subscribe(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let body = match (payload, s.extensions.get::<Principal>()) {
        (Ok(payload), Some(principal)) => {
            let mut body = policy::plan_within(
                &payload,
                &principal.grants,
                true,
                g.config.admin.max_targets_per_request,
            );
            cap_rooms(&s, &mut body, g.config.admin.max_subscriptions);
            if !body.subscribed.is_empty() {
                s.join(body.subscribed.clone());
            }
            metrics::counter!("socketio_subscriptions_total", "op" => "subscribe")
                .increment(body.subscribed.len() as u64);
            body
        }
        (Err(_), _) => policy::Reply::malformed("expected a JSON object"),
        (_, None) => policy::Reply::malformed("not authenticated"),
    };
    Answer::new(&s, ack, wants_ack).send("subscribe:result", &body);
}

/// Moves the rooms past `limit` (counting the subscription rooms the socket is in) to
/// `refused`; rooms it is in already cost nothing. Collaboration rooms (identity, viewing,
/// presence) have their own bounds and do not count.
fn cap_rooms(s: &SocketRef, body: &mut policy::Reply, limit: usize) {
    let joined: Vec<_> = s
        .rooms()
        .into_iter()
        .filter(|room| events::surface::rooms::is_subscription(room))
        .collect();
    if joined.len() + body.subscribed.len() <= limit {
        return;
    }
    let room_set: HashSet<_> = joined.iter().map(|r| r.as_ref()).collect();
    let mut room_count = joined.len();
    let mut kept = Vec::with_capacity(body.subscribed.len());
    for room in std::mem::take(&mut body.subscribed) {
        if room_set.contains(room.as_str()) {
            kept.push(room);
        } else if room_count < limit {
            room_count += 1;
            kept.push(room);
        } else {
            body.refused.push(policy::Refused {
                target: room,
                reason: "too many subscriptions".to_owned(),
            });
        }
    }
    body.subscribed = kept;
}

pub(crate) async fn unsubscribe(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let body = match payload {
        Ok(payload) => {
            let body = policy::plan_within(
                &payload,
                &policy::Grants::default(),
                false,
                g.config.admin.max_targets_per_request,
            );
            if !body.subscribed.is_empty() {
                s.leave(body.subscribed.clone());
            }
            metrics::counter!("socketio_subscriptions_total", "op" => "unsubscribe")
                .increment(body.subscribed.len() as u64);
            body
        }
        Err(_) => policy::Reply::malformed("expected a JSON object"),
    };
    Answer::new(&s, ack, wants_ack).send("unsubscribe:result", &body);
}
