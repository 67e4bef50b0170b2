//! What every namespace's handshake (connect middleware) shares: the connection place taken
//! first, refusals counted and logged in one place, the credential read from `auth`, and the
//! bookkeeping undone exactly once when the socket leaves.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use socketioxide::extract::SocketRef;
use socketioxide::socket::DisconnectReason;

use crate::auth::{Principal, Refusal};
use crate::gateway::Gateway;
use crate::limits::{ConnectionSlot, admit, client_ip};
use crate::namespace::Namespace;

/// The client address of a handshake and a connection place for it on `ns` (checked first on
/// every namespace, so a refused client costs no token check or database lookup). The place is
/// handed to the socket only when the handshake succeeds; a refused handshake drops it.
pub(crate) fn admit_socket(
    s: &SocketRef,
    g: &Gateway,
    ns: Namespace,
) -> Result<(IpAddr, ConnectionSlot), Refusal> {
    let ip = client_ip(s, &g.config.limits.client_ip);
    let slot = admit(&g.limiter, ip).map_err(|r| refused(ns, r))?;
    Ok((ip, slot))
}

/// Counts and logs a refused handshake; returns the refusal (the client's `connect_error`).
pub(crate) fn refused(ns: Namespace, refusal: Refusal) -> Refusal {
    metrics::counter!(
        "socketio_auth_failures_total",
        "namespace" => ns.name(),
        "reason" => refusal.label()
    )
    .increment(1);
    tracing::debug!(
        namespace = ns.name(),
        reason = refusal.label(),
        "handshake refused"
    );
    refusal
}

/// `auth.token`, when it is a non-empty string.
pub(crate) fn token(auth: Result<Value, impl std::fmt::Debug>) -> Option<String> {
    match auth.ok()? {
        Value::Object(mut map) => match map.remove("token")? {
            Value::String(s) if !s.is_empty() => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Counts the socket and schedules its disconnect at the token's `exp`, undone exactly once
/// when it leaves, which also gives back its connection place; `on_leave` runs then too. The
/// connect handler runs in a task spawned after the CONNECT packet went out, so the socket may
/// already be gone: then the disconnect handler was never called, and the bookkeeping is undone
/// here. (A socket whose CONNECT packet could not be sent never gets here; its place goes with
/// its extensions.)
pub(crate) fn track(
    s: &SocketRef,
    g: &Arc<Gateway>,
    ns: Namespace,
    on_leave: impl FnOnce() + Send + 'static,
) {
    g.connected(ns);
    let slot = s.extensions.get::<ConnectionSlot>();
    let exp = s.extensions.get::<Principal>().map(|p| p.expires_at);
    if let Some(exp) = exp {
        g.expiry.insert(exp, s.id, ns);
    }
    let counted = Arc::new(AtomicBool::new(true));
    let on_leave = Arc::new(std::sync::Mutex::new(Some(on_leave)));
    let undo = {
        let (g, counted, sid) = (Arc::clone(g), Arc::clone(&counted), s.id);
        move || {
            if counted.swap(false, Ordering::AcqRel) {
                g.disconnected(ns);
                if let Some(slot) = &slot {
                    slot.release();
                }
                if let Some(exp) = exp {
                    g.expiry.remove(exp, sid, ns);
                }
                let leave = on_leave
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                if let Some(leave) = leave {
                    leave();
                }
            }
        }
    };
    let on_disconnect = undo.clone();
    s.on_disconnect(move |reason: DisconnectReason| async move {
        on_disconnect();
        tracing::trace!(namespace = ns.name(), ?reason, "socket disconnected");
    });
    if !s.connected() {
        undo();
    }
}
