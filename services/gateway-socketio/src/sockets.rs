//! The four namespaces: handshake checks (connect middlewares), per-socket handlers, the
//! token-expiry sweeper and the connection counts.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts};
use socketioxide::socket::{DisconnectReason, Sid, Socket};
use tokio::sync::Semaphore;

use crate::auth::{AdminVerifier, Principal, ProviderVerifier, Refusal};
use crate::config::Config;
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
    discord_slots: Semaphore,
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
        Self {
            config,
            admin,
            provider,
            widgets,
            nats,
            counts: Default::default(),
            expiry: Mutex::default(),
            stat_windows: Mutex::default(),
            discord_slots: Semaphore::new(1024),
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

    /// Counts a new `/stat` connection from `ip`; false when over the per-minute limit.
    fn stat_admit(&self, ip: IpAddr) -> bool {
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

type Shared = State<Arc<Gateway>>;

/// Registers the namespaces on `io`.
pub fn register(io: &SocketIo) {
    io.ns("/admin", on_admin.with(admin_handshake));
    io.ns("/provider", on_provider.with(provider_handshake));
    io.ns("/widget", on_widget.with(widget_handshake));
    io.ns("/stat", on_stat.with(stat_handshake));
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
    let token = token(auth).ok_or_else(|| refused("admin", Refusal::MissingToken))?;
    let principal = g.admin.verify(&token).map_err(|r| refused("admin", r))?;
    s.extensions.insert(principal);
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
    let token = token(auth).ok_or_else(|| refused("provider", Refusal::MissingToken))?;
    let principal = verifier
        .verify(&token)
        .await
        .map_err(|r| refused("provider", r))?;
    s.extensions.insert(principal);
    Ok(())
}

/// The widget a `/widget` socket belongs to.
#[derive(Debug, Clone)]
pub(crate) struct WidgetSession {
    pub(crate) key: Arc<str>,
    origin: Option<Arc<str>>,
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
    let key = widget_key(auth, &s).ok_or_else(|| refused("widget", Refusal::WidgetKeyRequired))?;
    let origin = s
        .req_parts()
        .headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let widget = g
        .widgets
        .authorize(&key, origin.as_deref())
        .await
        .map_err(|r| refused("widget", r))?;
    s.join(widget_room(&widget.key));
    s.extensions.insert(WidgetSession {
        key: Arc::from(widget.key),
        origin: origin.map(Arc::from),
    });
    // Before the CONNECT packet, like /admin's handlers.
    s.on("discord:request-send", discord_request);
    Ok(())
}

fn client_ip(s: &SocketRef, trust_forwarded_for: bool) -> Option<IpAddr> {
    let parts = s.req_parts();
    if trust_forwarded_for
        && let Some(ip) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

async fn stat_handshake(s: SocketRef, State(g): Shared) -> Result<(), Refusal> {
    let ip = client_ip(&s, g.config.stat.trust_forwarded_for);
    match ip {
        Some(ip) if !g.stat_admit(ip) => Err(refused("stat", Refusal::RateLimited)),
        _ => Ok(()),
    }
}

/// Counts the socket and schedules its disconnect at the token's `exp`, undone exactly once
/// when it leaves. The connect handler runs in a task spawned after the CONNECT packet went out,
/// so the socket may already be gone: then the disconnect handler was never called, and the
/// bookkeeping is undone here.
fn track(s: &SocketRef, g: &Arc<Gateway>, ns: usize) {
    g.connected(ns);
    let name = NAMESPACES[ns];
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
struct WantsAck(bool);

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
            let mut body = policy::plan(&payload, &principal.grants, true);
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
    TryData(payload): TryData<Value>,
    WantsAck(wants_ack): WantsAck,
    ack: AckSender,
) {
    let body = match payload {
        Ok(payload) => {
            let body = policy::plan(&payload, &policy::Grants::default(), false);
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

/// The `cmd.discord.request_send` request body.
pub(crate) fn discord_body(key: &str, origin: Option<&str>, data: Value) -> Value {
    json!({"widget_key": key, "origin": origin, "data": data})
}

fn discord_error(code: &str, message: &str) -> Value {
    json!({"ok": false, "error": {"code": code, "message": message}})
}

async fn discord_request(
    s: SocketRef,
    State(g): Shared,
    Data(data): Data<Value>,
    WantsAck(wants_ack): WantsAck,
    ack: AckSender,
) {
    let Some(session) = s.extensions.get::<WidgetSession>() else {
        return;
    };
    let body = discord_body(&session.key, session.origin.as_deref(), data).to_string();
    let (outcome, response) = forward_discord(&g, body).await;
    metrics::counter!("socketio_discord_requests_total", "outcome" => outcome).increment(1);
    if let Err(e) = s.emit("discord:request-response", &response) {
        tracing::debug!(error = %e, "discord response not delivered");
    }
    if wants_ack {
        let _ = ack.send(&response);
    }
}

/// Sends one Discord request to the backend; returns the outcome (for metrics) and what the
/// widget gets: the backend's JSON reply, or an error in the command-reply shape.
async fn forward_discord(g: &Gateway, body: String) -> (&'static str, Value) {
    use async_nats::client::RequestErrorKind;
    const TIMEOUT: &str = "the backend did not answer in time";
    if body.len() > g.config.widget.max_request_bytes {
        return ("too_large", discord_error("too_large", "request too large"));
    }
    let Ok(_slot) = g.discord_slots.try_acquire() else {
        return (
            "busy",
            discord_error("busy", "too many requests in flight, retry later"),
        );
    };
    let timeout = Duration::from_millis(g.config.widget.request_timeout_ms);
    let request = g
        .nats
        .request(crate::relay::DISCORD_SUBJECT, body.into_bytes().into());
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(message)) => match serde_json::from_slice::<Value>(&message.payload) {
            Ok(value) => ("ok", value),
            Err(_) => (
                "invalid",
                discord_error(
                    "invalid_response",
                    "the backend answered something else than JSON",
                ),
            ),
        },
        Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => (
            "unavailable",
            discord_error("unavailable", "no backend is available for this request"),
        ),
        Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => {
            ("timeout", discord_error("timeout", TIMEOUT))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "discord request failed");
            (
                "error",
                discord_error("unavailable", "the request could not be sent, retry later"),
            )
        }
        Err(_) => ("timeout", discord_error("timeout", TIMEOUT)),
    }
}
