//! `/admin`: the CRM panel. JWT handshake, entity and domain subscriptions, domain events
//! relayed to rooms, cluster socket counts, and the collaboration events of [`crate::collab`].

pub(crate) mod domain_events;
pub mod policy;
pub(crate) mod socket_metrics;
mod subscriptions;

use std::sync::PoisonError;

use serde_json::Value;
use socketioxide::extract::{SocketRef, State, TryData};

use crate::auth::Refusal;
use crate::gateway::Shared;
use crate::handshake::{admit_socket, refused, token, track};
use crate::namespace::Namespace;

pub(crate) async fn handshake(
    s: SocketRef,
    State(g): Shared,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let ns = Namespace::Admin;
    let (_, slot) = admit_socket(&s, &g, ns)?;
    let token = token(auth).ok_or_else(|| refused(ns, Refusal::MissingToken))?;
    let principal = g.admin.verify(&token).map_err(|r| refused(ns, r))?;
    crate::collab::attach(&s, &g, ns, &principal);
    s.extensions.insert(principal);
    s.extensions.insert(slot);
    // Handlers are registered here, before the CONNECT packet is sent: the connect handler
    // runs later in its own task, and a client may emit as soon as it is connected (the seed
    // does, right after io()).
    s.on("subscribe", subscriptions::subscribe);
    s.on("unsubscribe", subscriptions::unsubscribe);
    crate::integration::attach(&s);
    Ok(())
}

pub(crate) async fn on_connect(s: SocketRef, State(g): Shared) {
    track(&s, &g, Namespace::Admin, crate::collab::connected(&s, &g));
    let counts = g
        .cluster_counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(counts) = counts {
        let _ = s.emit("socket_metrics_updated", &*counts);
    }
}
