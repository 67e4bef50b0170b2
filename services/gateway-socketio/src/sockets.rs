//! The four namespaces: handshake checks (connect middlewares), per-socket handlers, the
//! token-expiry sweeper and the connection counts.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use service_runtime::net::{ConnectionLimiter, limit_key};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::{DisconnectReason, Sid, Socket};
use tokio::sync::Semaphore;

use crate::auth::{AdminVerifier, Principal, ProviderVerifier, Refusal};
use crate::config::Config;
use crate::discord::{KeyBudgets, SocketBudget, discord_request};
use crate::limits::{ConnectionSlot, admit, client_ip};
use crate::policy;
use crate::widget::WidgetKeys;

/// The namespaces, in the order of their counts.
pub const NAMESPACES: [&str; 4] = ["admin", "provider", "widget", "stat"];

/// Shared by every handler (socketioxide state).
pub struct Gateway {
    pub(crate) config: Config,
    admin: AdminVerifier,
    provider: Option<ProviderVerifier>,
    pub(crate) widgets: WidgetKeys,
    pub(crate) nats: async_nats::Client,
    /// Connected sockets per namespace (this instance).
    pub(crate) counts: [AtomicI64; 4],
    expiry: Mutex<BTreeSet<(i64, Sid, &'static str)>>,
    stat_windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Places of namespace sockets, in total and per client address (`limits.*`).
    limiter: Arc<ConnectionLimiter>,
    pub(crate) discord_slots: Semaphore,
    pub(crate) discord_keys: KeyBudgets,
    /// The last `socket_metrics_updated` body, for sockets that join after it was sent.
    pub(crate) cluster_counts: Mutex<Option<Arc<Value>>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Handlers' shared state.
    pub fn new(
        config: Config,
        admin: AdminVerifier,
        provider: Option<ProviderVerifier>,
        widgets: WidgetKeys,
        nats: async_nats::Client,
    ) -> Self {
        let limiter = ConnectionLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
            "socketio_connection_slots",
        );
        let discord_keys = KeyBudgets::new(config.widget.discord_per_key_per_minute);
        Self {
            config,
            admin,
            provider,
            widgets,
            nats,
            counts: Default::default(),
            expiry: Mutex::default(),
            stat_windows: Mutex::default(),
            limiter,
            discord_slots: Semaphore::new(1024),
            discord_keys,
            cluster_counts: Mutex::default(),
        }
    }

    /// This instance's connected sockets per namespace.
    pub fn local_counts(&self) -> [i64; 4] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    fn connected(&self, ns: usize) {
        let n = self.counts[ns].fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("socketio_connections", "namespace" => NAMESPACES[ns]).set(n as f64);
        metrics::counter!("socketio_connections_total", "namespace" => NAMESPACES[ns]).increment(1);
    }

    fn disconnected(&self, ns: usize) {
        let n = self.counts[ns].fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("socketio_connections", "namespace" => NAMESPACES[ns]).set(n as f64);
    }

    fn expire_at(&self, exp: i64, sid: Sid, ns: &'static str) {
        self.expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((exp, sid, ns));
    }

    fn forget_expiry(&self, exp: i64, sid: Sid, ns: &'static str) {
        self.expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(exp, sid, ns));
    }

    /// Sockets whose token expired by `now` (Unix seconds), removed from the schedule.
    pub(crate) fn take_expired(&self, now: i64) -> Vec<(i64, Sid, &'static str)> {
        let mut schedule = self.expiry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        while let Some(first) = schedule.first()
            && first.0 <= now
        {
            if let Some(entry) = schedule.pop_first() {
                due.push(entry);
            }
        }
        due
    }

    /// Counts a new `/stat` connection from `ip` (IPv6: its /64); false when over the
    /// per-minute limit.
    fn stat_admit(&self, ip: IpAddr) -> bool {
        let ip = limit_key(ip);
        let limit = self.config.stat.connections_per_minute;
        if limit == 0 {
            return true;
        }
        let mut windows = self
            .stat_windows
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
        }
        let entry = windows.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= limit
    }
}

pub(crate) type Shared = State<Arc<Gateway>>;

/// Registers the namespaces on `io`.
pub fn register(io: &SocketIo) {
    io.ns("/admin", on_admin.with(admin_handshake));
    io.ns("/provider", on_provider.with(provider_handshake));
    io.ns("/widget", on_widget.with(widget_handshake));
    io.ns("/stat", on_stat.with(stat_handshake));
}

/// The client address of a handshake and a connection place for it on `ns` (checked first on
/// every namespace, so a refused client costs no token check or database lookup). The place is
/// handed to the socket only when the handshake succeeds; a refused handshake drops it.
fn admit_socket(
    s: &SocketRef,
    g: &Gateway,
    ns: &'static str,
) -> Result<(IpAddr, ConnectionSlot), Refusal> {
    let ip = client_ip(s, &g.config.limits.client_ip);
    let slot = admit(&g.limiter, ip).map_err(|r| refused(ns, r))?;
    Ok((ip, slot))
}

fn refused(ns: &'static str, refusal: Refusal) -> Refusal {
    metrics::counter!("socketio_auth_failures_total", "namespace" => ns, "reason" => refusal.label())
        .increment(1);
    tracing::debug!(
        namespace = ns,
        reason = refusal.label(),
        "handshake refused"
    );
    refusal
}

fn token(auth: Result<Value, impl std::fmt::Debug>) -> Option<String> {
    match auth.ok()? {
        Value::Object(mut map) => match map.remove("token")? {
            Value::String(s) if !s.is_empty() => Some(s),
            _ => None,
        },
        _ => None,
    }
}

async fn admin_handshake(
    s: SocketRef,
    State(g): Shared,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let (_, slot) = admit_socket(&s, &g, "admin")?;
    let token = token(auth).ok_or_else(|| refused("admin", Refusal::MissingToken))?;
    let principal = g.admin.verify(&token).map_err(|r| refused("admin", r))?;
    s.extensions.insert(principal);
    s.extensions.insert(slot);
    // Handlers are registered here, before the CONNECT packet is sent: the connect handler
    // runs later in its own task, and a client may emit as soon as it is connected (the seed
    // does, right after io()).
    s.on("subscribe", subscribe);
    s.on("unsubscribe", unsubscribe);
    Ok(())
}

async fn provider_handshake(
    s: SocketRef,
    State(g): Shared,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let verifier = g
        .provider
        .as_ref()
        .ok_or_else(|| refused("provider", Refusal::ProviderNotConfigured))?;
    let (_, slot) = admit_socket(&s, &g, "provider")?;
    let token = token(auth).ok_or_else(|| refused("provider", Refusal::MissingToken))?;
    let principal = verifier
        .verify(&token)
        .await
        .map_err(|r| refused("provider", r))?;
    s.extensions.insert(principal);
    s.extensions.insert(slot);
    Ok(())
}

/// The widget a `/widget` socket belongs to.
#[derive(Debug, Clone)]
pub(crate) struct WidgetSession {
    pub(crate) key: Arc<str>,
    pub(crate) origin: Option<Arc<str>>,
    /// This socket's `discord:request-send` budget.
    pub(crate) budget: SocketBudget,
}

fn widget_key(auth: Result<Value, impl std::fmt::Debug>, s: &SocketRef) -> Option<String> {
    if let Ok(Value::Object(map)) = auth {
        for name in ["key", "widgetKey"] {
            if let Some(Value::String(k)) = map.get(name)
                && !k.is_empty()
            {
                return Some(k.clone());
            }
        }
    }
    s.req_parts().uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, v)| *k == "key" && !v.is_empty())
            .map(|(_, v)| v.to_owned())
    })
}

async fn widget_handshake(
    s: SocketRef,
    State(g): Shared,
    TryData(auth): TryData<Value>,
) -> Result<(), Refusal> {
    let (ip, slot) = admit_socket(&s, &g, "widget")?;
    let key = widget_key(auth, &s).ok_or_else(|| refused("widget", Refusal::WidgetKeyRequired))?;
    let origin = s
        .req_parts()
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let widget = g
        .widgets
        .authorize(&key, origin.as_deref(), ip)
        .await
        .map_err(|r| refused("widget", r))?;
    s.join(widget_room(&widget.key));
    s.extensions.insert(WidgetSession {
        key: Arc::from(widget.key),
        origin: origin.map(Arc::from),
        budget: SocketBudget::new(g.config.widget.discord_per_socket_per_minute),
    });
    s.extensions.insert(slot);
    // Before the CONNECT packet, like /admin's handlers.
    s.on("discord:request-send", discord_request);
    Ok(())
}

async fn stat_handshake(s: SocketRef, State(g): Shared) -> Result<(), Refusal> {
    let (ip, slot) = admit_socket(&s, &g, "stat")?;
    if !g.stat_admit(ip) {
        return Err(refused("stat", Refusal::RateLimited));
    }
    s.extensions.insert(slot);
    Ok(())
}

/// Counts the socket and schedules its disconnect at the token's `exp`, undone exactly once
/// when it leaves, which also gives back its connection place. The connect handler runs in a
/// task spawned after the CONNECT packet went out, so the socket may already be gone: then the
/// disconnect handler was never called, and the bookkeeping is undone here. (A socket whose
/// CONNECT packet could not be sent never gets here; its place goes with its extensions.)
fn track(s: &SocketRef, g: &Arc<Gateway>, ns: usize) {
    g.connected(ns);
    let name = NAMESPACES[ns];
    let slot = s.extensions.get::<ConnectionSlot>();
    let exp = s.extensions.get::<Principal>().map(|p| p.expires_at);
    if let Some(exp) = exp {
        g.expire_at(exp, s.id, name);
    }
    let counted = Arc::new(AtomicBool::new(true));
    let undo = {
        let (g, counted, sid) = (Arc::clone(g), Arc::clone(&counted), s.id);
        move || {
            if counted.swap(false, Ordering::AcqRel) {
                g.disconnected(ns);
                if let Some(slot) = &slot {
                    slot.release();
                }
                if let Some(exp) = exp {
                    g.forget_expiry(exp, sid, name);
                }
            }
        }
    };
    let on_leave = undo.clone();
    s.on_disconnect(move |reason: DisconnectReason| async move {
        on_leave();
        tracing::trace!(namespace = name, ?reason, "socket disconnected");
    });
    if !s.connected() {
        undo();
    }
}

async fn on_admin(s: SocketRef, State(g): Shared) {
    track(&s, &g, 0);
    let counts = g
        .cluster_counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(counts) = counts {
        let _ = s.emit("socket_metrics_updated", &*counts);
    }
}

async fn on_provider(s: SocketRef, State(g): Shared) {
    track(&s, &g, 1);
}

async fn on_widget(s: SocketRef, State(g): Shared) {
    track(&s, &g, 2);
}

async fn on_stat(s: SocketRef, State(g): Shared) {
    track(&s, &g, 3);
}

/// Room of the sockets of one widget key.
pub(crate) fn widget_room(key: &str) -> String {
    format!("widget:{key}")
}

/// Whether the client passed an ack callback with its event.
pub(crate) struct WantsAck(pub(crate) bool);

impl<A: socketioxide::adapter::Adapter> FromMessageParts<A> for WantsAck {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Self(ack_id.is_some()))
    }
}

fn reply(s: &SocketRef, ack: AckSender, wants_ack: bool, event: &str, body: &policy::Reply) {
    let sent = if wants_ack {
        ack.send(body)
    } else {
        s.emit(event, body)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "subscription reply not sent");
    }
}

async fn subscribe(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    WantsAck(wants_ack): WantsAck,
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
            let joined = s.rooms();
            let limit = g.config.admin.max_subscriptions;
            if joined.len() + body.subscribed.len() > limit {
                let room_set: std::collections::HashSet<_> =
                    joined.iter().map(|r| r.as_ref()).collect();
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
    reply(&s, ack, wants_ack, "subscribe:result", &body);
}

async fn unsubscribe(
    s: SocketRef,
    State(g): Shared,
    TryData(payload): TryData<Value>,
    WantsAck(wants_ack): WantsAck,
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
    reply(&s, ack, wants_ack, "unsubscribe:result", &body);
}
