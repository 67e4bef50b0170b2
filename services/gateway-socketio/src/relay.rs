//! Starts every NATS → sockets relay. Every instance subscribes itself (core NATS, no queue
//! group) and delivers to its own sockets only; each relay lives with its namespace.

use std::sync::Arc;

use service_runtime::ReadyFlag;
use socketioxide::SocketIo;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::{admin, collab, expiry, stat, widget};

/// Starts every relay; they stop on `shutdown`. `subscribed` is set once the domain-event
/// subscription is in place, `presence` once the cluster presence state is loaded.
pub(crate) fn spawn(
    io: &SocketIo,
    gateway: &Arc<Gateway>,
    subscribed: ReadyFlag,
    presence: ReadyFlag,
    shutdown: &CancellationToken,
) -> JoinSet<()> {
    let nats = gateway.nats.clone();
    let mut set = JoinSet::new();
    set.spawn(admin::domain_events::relay(
        io.clone(),
        nats.clone(),
        subscribed,
        shutdown.clone(),
    ));
    set.spawn(widget::pushes(io.clone(), nats.clone(), shutdown.clone()));
    set.spawn(widget::deactivations(
        io.clone(),
        Arc::clone(gateway),
        nats.clone(),
        shutdown.clone(),
    ));
    set.spawn(stat::relay(
        io.clone(),
        Arc::clone(&gateway.stat.feed),
        nats.clone(),
        shutdown.clone(),
    ));
    set.spawn(admin::socket_metrics::relay(
        io.clone(),
        Arc::clone(gateway),
        nats,
        shutdown.clone(),
    ));
    collab::spawn(&mut set, io, gateway, presence, shutdown);
    set.spawn(expiry::sweeper(
        io.clone(),
        Arc::clone(gateway),
        shutdown.clone(),
    ));
    set
}
