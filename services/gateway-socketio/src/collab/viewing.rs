//! `channel:viewing` / `channel:left` (`/admin`): which chat channels a socket shows. A
//! viewing socket is in the channel's view room (`chat_message` reaches it) and counts, in the
//! cluster-wide registry, as its participant viewing the channel (no `chatNotification`).
//!
//! A socket's events may finish in any order (`channel:viewing` waits for membership): each
//! change applies only when its event came after the last one applied to that channel
//! ([`Seq`]); an older one is acked and does nothing.

use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};

use super::channel::channel_ref;
use super::error::{self, CollabError};
use super::session::{CollabSession, Seq, lock};
use crate::ack::{Answer, WantsAck};
use crate::gateway::{Gateway, Shared};

/// `channel:viewing` `{"channel_id"}`: members only, at most `collab.max_viewing_per_socket`
/// channels per socket (viewing one again is no new one); acked `{"ok": true, "channel_id"}`.
pub(crate) async fn viewing(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    seq: Seq,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let answer = Answer::new(&s, ack, wants_ack);
    let result = start(&s, &g, payload.ok(), seq).await;
    error::answer(&s, answer, "channel:viewing", result);
}

async fn start(
    s: &SocketRef,
    g: &Gateway,
    payload: Option<Value>,
    seq: Seq,
) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let channel = channel_ref(payload)?;
    g.collab
        .membership
        .check(&g.commands, &session.principal, &session.who, &channel)
        .await?;
    {
        // The session's set, the room and the registry change together, so a concurrent
        // `channel:left` cannot leave them disagreeing.
        let mut viewing = lock(&session.viewing);
        if !viewing.order.newer(&channel, seq) {
            // A later event of the socket already changed this channel.
            return Ok(json!({"ok": true, "channel_id": channel}));
        }
        if !viewing.channels.contains(&channel) {
            if viewing.channels.len() >= g.config.collab.max_viewing_per_socket {
                return Err(CollabError::Limit("collab.max_viewing_per_socket"));
            }
            viewing.channels.insert(channel.clone());
        }
        viewing.order.record(&channel, seq);
        super::presence::join(s, vec![channel.view_room()]);
        g.collab
            .registry
            .set_viewing(&session.who, s.id, &channel, true);
    }
    // The socket left while membership was asked: what it started must not outlive it.
    if !s.connected() {
        g.collab.registry.socket_disconnected(&session.who, s.id);
    }
    Ok(json!({"ok": true, "channel_id": channel}))
}

/// `channel:left` `{"channel_id"}`: the socket no longer shows the channel (nothing when it
/// did not); acked `{"ok": true, "channel_id"}`.
pub(crate) async fn left(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    seq: Seq,
    wants_ack: WantsAck,
    ack: AckSender,
) {
    let result = stop(&s, &g, payload.ok(), seq);
    error::answer(&s, Answer::new(&s, ack, wants_ack), "channel:left", result);
}

fn stop(
    s: &SocketRef,
    g: &Gateway,
    payload: Option<Value>,
    seq: Seq,
) -> Result<Value, CollabError> {
    let session = CollabSession::of(s)?;
    let channel = channel_ref(payload)?;
    let mut viewing = lock(&session.viewing);
    // Recorded even when the socket does not view the channel (yet): an older
    // `channel:viewing` still waiting for membership must not apply after this.
    if viewing.order.admit(&channel, seq) && viewing.channels.remove(&channel) {
        s.leave(channel.view_room());
        g.collab
            .registry
            .set_viewing(&session.who, s.id, &channel, false);
    }
    drop(viewing);
    Ok(json!({"ok": true, "channel_id": channel}))
}
