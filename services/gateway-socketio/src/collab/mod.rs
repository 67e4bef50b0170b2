//! Collaboration on `/admin` and `/provider` (seed 000): identity rooms, presence, typing,
//! channel viewing, chat pushes, read receipts, alerts, assignments, followed chats and
//! attention items, across any number of gateway instances. The contract is the
//! "Collaboration" part of `docs/gateway-socketio.md`.
//!
//! | module | what |
//! |---|---|
//! | [`identity`] | participants (`/admin` users, `/provider` profiles) and their rooms |
//! | [`channel`] | chat channel ids and their rooms |
//! | [`membership`] | who may use a channel (backend request or token claim) |
//! | [`registry`] | cluster-wide presence and viewing (JetStream key-value) |
//! | [`presence`] | `presence:query` → `presence:result`, `presence:update` |
//! | [`viewing`] | `channel:viewing`, `channel:left` |
//! | [`typing`] | `typing:start`/`typing:stop` → `user:typing`/`user:typing:stop` |
//! | [`chat`] | `rt.chat.*` → `chat_message`, `chatNotification`, reads, alerts, ... |
//! | [`attention`] | `rt.attention.*` → `attention:*` |
//! | [`followed`] | `get_followed_chats` → `followed_chats` |

pub(crate) mod attention;
pub(crate) mod channel;
pub(crate) mod chat;
pub(crate) mod error;
pub(crate) mod followed;
pub(crate) mod identity;
pub(crate) mod indicators;
pub(crate) mod membership;
pub(crate) mod presence;
pub(crate) mod push;
pub(crate) mod recipients;
pub(crate) mod registry;
pub(crate) mod session;
pub(crate) mod typing;
pub(crate) mod viewing;

use std::sync::Arc;

use service_runtime::ReadyFlag;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::namespace::Namespace;
use identity::{Kind, Participant};
use membership::Membership;
use registry::Registry;
use session::CollabSession;

/// The collaboration state of this instance.
#[derive(Debug)]
pub(crate) struct Collab {
    pub(crate) membership: Membership,
    pub(crate) registry: Arc<Registry>,
    pub(crate) typing: typing::Typing,
}

impl Collab {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            membership: Membership::new(&config.collab),
            registry: Arc::new(Registry::new(&config.presence)),
            typing: typing::Typing::new(&config.typing),
        }
    }
}

/// In the handshake of `/admin` and `/provider`, before the CONNECT packet (a client may emit
/// as soon as it is connected): gives the socket its session when its token has a `sub`, joins
/// its identity room (and, with claim membership, its channels' member rooms), and registers
/// the namespace's client→server collaboration events. Without `sub` the events are still
/// registered, and answer `no_identity`.
pub(crate) fn attach(s: &SocketRef, g: &Gateway, ns: Namespace, principal: &Principal) {
    let Some(kind) = Kind::of(ns) else { return };
    if let Some(who) = principal
        .subject
        .as_deref()
        .and_then(|id| Participant::new(kind, id))
    {
        s.join(who.identity_room());
        if let Some(channels) = &principal.channels {
            let rooms: Vec<String> = channels
                .iter()
                .filter_map(|c| channel::ChannelId::parse(c))
                .map(|c| c.member_room())
                .collect();
            if !rooms.is_empty() {
                s.join(rooms);
            }
        }
        s.extensions.insert(Arc::new(CollabSession::new(
            who,
            ns,
            principal.clone(),
            g.config.collab.events_per_minute,
        )));
    }
    s.on("presence:query", presence::query);
    s.on("presence:update", presence::update);
    s.on("typing:start", typing::start);
    s.on("typing:stop", typing::stop);
    if ns == Namespace::Admin {
        s.on("channel:viewing", viewing::viewing);
        s.on("channel:left", viewing::left);
        s.on("get_followed_chats", followed::get_followed_chats);
    }
}

/// In the connect handler: the socket counts as connected for presence. Returns what to do
/// when it leaves (given to [`crate::handshake::track`]).
pub(crate) fn connected(s: &SocketRef, g: &Arc<Gateway>) -> impl FnOnce() + Send + 'static {
    let session = s.extensions.get::<Arc<CollabSession>>();
    if let Some(session) = &session {
        g.collab.registry.socket_connected(&session.who, s.id);
    }
    let (g, sid) = (Arc::clone(g), s.id);
    move || {
        if let Some(session) = session {
            g.collab.typing.socket_left(&g, &session);
            g.collab.registry.socket_disconnected(&session.who, sid);
        }
    }
}

/// Starts the collaboration tasks: the registry, the typing relay between instances and the
/// relays of the backend's pushes. `presence` is set once the registry has loaded the cluster
/// state.
pub(crate) fn spawn(
    set: &mut JoinSet<()>,
    io: &SocketIo,
    gateway: &Arc<Gateway>,
    presence: ReadyFlag,
    shutdown: &CancellationToken,
) {
    set.spawn(Arc::clone(&gateway.collab.registry).run(
        io.clone(),
        gateway.nats.clone(),
        presence,
        shutdown.clone(),
    ));
    set.spawn(typing::relay(
        io.clone(),
        Arc::clone(gateway),
        shutdown.clone(),
    ));
    set.spawn(chat::relay(
        io.clone(),
        Arc::clone(gateway),
        shutdown.clone(),
    ));
    set.spawn(attention::relay(
        io.clone(),
        Arc::clone(gateway),
        shutdown.clone(),
    ));
}
