//! Plain WebSocket gateway (seed 001): `GET /ws` authenticated by the host application's
//! express-session cookie, channel subscriptions, and `{event, data, timestamp}` messages made
//! from the domain events on `events.<domain>.*` through `events::surface`.
//!
//! - The `Origin` of a browser's handshake must be the gateway's own or one of
//!   `security.allowed_origins` ([`origin`]): the cookie alone would let any site's page in.
//! - Authentication happens before the upgrade; a refused client still gets a WebSocket whose
//!   first and only frame is a close with code 1008 and a reason, because browsers hide HTTP
//!   status codes from `WebSocket` users.
//! - Fan-out serialises each event once ([`hub`]); a slow client is closed with 1013.
//! - A session destroyed, expired, or no longer holding the connection's user closes its
//!   connections with 1008 within `session.revalidate_secs` ([`sessions`]).
//! - Each instance relays every event to its own clients, so instances scale out behind any
//!   load balancer without sticky sessions.
#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod cookie;
pub mod hub;
pub mod limits;
pub mod origin;
pub mod protocol;
pub mod session_store;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
pub use config::Config;
use config::StoreKind;
use connection::{ConnectionSettings, close, close_with};
use hub::Hub;
use origin::OriginPolicy;
use service_runtime::net::{Breach, ClientIpPolicy, ConnectionLimiter};
use service_runtime::{ConfigError, ServiceContext, ServiceError, ServiceSpec, Settings};
use session_store::{SessionStore, UserIdPaths};
use sessions::SessionRegistry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Name, environment prefix and defaults of this service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "gateway-ws",
    env_prefix: "GATEWAY_WS_",
    default_port: 8080,
    database_required: false,
};

/// Bytes tungstenite reserves for reading a client frame; client messages are small JSON, and
/// an idle connection should cost little.
const READ_BUFFER: usize = 1024;

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    limiter: Arc<ConnectionLimiter>,
    client_ip: Arc<ClientIpPolicy>,
    origins: Arc<OriginPolicy>,
    registry: Arc<SessionRegistry>,
    store: SessionStore,
    user_id_paths: Arc<UserIdPaths>,
    config: Arc<Config>,
    settings: ConnectionSettings,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// What [`run`] needs from the configuration, parsed and built by [`prepare`] before the port
/// is bound.
#[derive(Debug)]
pub struct Prepared {
    store: PreparedStore,
    user_id_paths: UserIdPaths,
    origins: OriginPolicy,
    client_ip: ClientIpPolicy,
}

/// The session store as far as it can be built without the service context.
#[derive(Debug)]
enum PreparedStore {
    /// connect-pg-simple over the context's pool (`database.url`, checked to be set).
    Postgres,
    /// connect-redis, its client parsed from `session.redis_url`; connects on first use.
    Redis(SessionStore),
}

/// Checks and builds everything [`run`] takes from the configuration, so a bad value exits
/// with 64 naming its key before the gateway listens.
pub fn prepare(settings: &Settings<Config>) -> Result<Prepared, ConfigError> {
    let Settings { common, service } = settings;
    let store = match service.session.store {
        StoreKind::Postgres => {
            if common.database.url.is_empty() {
                return Err(ConfigError::new(
                    "database.url",
                    "is required for session.store = postgres (the host application's database)",
                ));
            }
            common.database.connect_options()?;
            PreparedStore::Postgres
        }
        StoreKind::Redis => {
            // The error text is not repeated: it may quote the URL, which carries the password.
            let conn =
                session_store::RedisConnection::new(&service.session.redis_url).map_err(|_| {
                    ConfigError::new(
                        "session.redis_url",
                        "does not parse as redis[s]://[[user]:password@]host[:port][/db]",
                    )
                })?;
            PreparedStore::Redis(SessionStore::Redis {
                conn: Arc::new(conn),
                prefix: service.session.redis_prefix.clone(),
            })
        }
    };
    Ok(Prepared {
        store,
        user_id_paths: UserIdPaths::new(&service.session.user_id_paths),
        origins: OriginPolicy::new(&service.security.allowed_origins),
        client_ip: service.limits.client_ip_policy(),
    })
}

/// Runs the gateway until `shutdown`, then closes every connection with 1001 within the
/// grace period.
pub async fn run(
    settings: Settings<Config>,
    prepared: Prepared,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let Settings { common, service } = settings;
    let Prepared {
        store,
        user_id_paths,
        origins,
        client_ip,
    } = prepared;
    let mut ctx = ServiceContext::start(SPEC.name, &common, None, shutdown.clone()).await?;
    let store = match store {
        PreparedStore::Postgres => {
            // `prepare` checked `database.url`, so the context opened a pool on it.
            let pool = ctx
                .db
                .clone()
                .ok_or_else(|| ConfigError::new("database.url", "is required"))?;
            SessionStore::postgres(pool, &service.session.table)
        }
        PreparedStore::Redis(store) => {
            let check = store.clone();
            ctx.readiness.add("redis", move || {
                let store = check.clone();
                async move { store.ping().await.map_err(|_| "not answering".to_owned()) }
            });
            store
        }
    };

    let hub = Arc::new(Hub::new(service.limits.outbound_queue));
    let registry = Arc::new(SessionRegistry::default());
    let relay = tokio::spawn(hub::relay(
        ctx.nats.clone(),
        Arc::clone(&hub),
        shutdown.clone(),
    ));
    tokio::spawn(sessions::revalidate(
        Arc::clone(&registry),
        store.clone(),
        user_id_paths.clone(),
        Duration::from_secs(service.session.revalidate_secs),
        shutdown.clone(),
    ));

    let grace = common.grace();
    let tracker = TaskTracker::new();
    let state = AppState {
        hub,
        limiter: ConnectionLimiter::new(
            service.limits.max_connections,
            service.limits.max_connections_per_ip,
            "ws_connections",
        ),
        client_ip: Arc::new(client_ip),
        origins: Arc::new(origins),
        registry,
        store,
        user_id_paths: Arc::new(user_id_paths),
        settings: ConnectionSettings {
            limits: Arc::new(service.limits.clone()),
            heartbeat: Arc::new(service.heartbeat.clone()),
        },
        config: Arc::new(service),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    };
    let serve = ctx.serve(listener, router(state));
    tokio::pin!(serve);
    let mut relay = relay;
    let mut relay_failure = None;
    tokio::select! {
        served = &mut serve => served?,
        relayed = &mut relay => {
            // Without the relay no client would receive anything: stop (exit 1) so the
            // orchestrator restarts this instance, rather than keep silent connections.
            if !shutdown.is_cancelled() {
                let why = match relayed {
                    Ok(Ok(())) => "nats relay ended".to_owned(),
                    Ok(Err(err)) => format!("nats relay failed: {err}"),
                    Err(err) => format!("nats relay panicked: {err}"),
                };
                tracing::error!(reason = %why, "stopping");
                relay_failure = Some(why);
                shutdown.cancel();
            }
            serve.await?;
        }
    }
    // The HTTP server has stopped accepting; open WebSockets were told 1001 by the shutdown
    // token. Wait for them to finish their close handshakes, within the grace period.
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("grace period elapsed with websocket connections still open");
    }
    if let Some(why) = relay_failure {
        return Err(ServiceError::Component(why));
    }
    relay.abort();
    Ok(())
}

fn router(state: AppState) -> Router {
    Router::new().route("/ws", get(upgrade)).with_state(state)
}

/// Why a handshake is refused, and how the client is told.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Origin,
    NoCookie,
    BadCookie,
    NoSession,
    NoUser,
    StoreDown,
    Full,
    TooManyFromIp,
}

impl Refusal {
    fn close(self) -> (u16, &'static str) {
        match self {
            Self::Origin => (close::POLICY, "origin not allowed"),
            Self::NoCookie => (close::POLICY, "authentication required: no session cookie"),
            Self::BadCookie => (close::POLICY, "invalid session cookie"),
            Self::NoSession => (close::POLICY, "session not found or expired"),
            Self::NoUser => (close::POLICY, "session has no user"),
            Self::StoreDown => (
                close::TRY_AGAIN_LATER,
                "session store unavailable, try again later",
            ),
            Self::Full => (
                close::TRY_AGAIN_LATER,
                "server at capacity, try again later",
            ),
            Self::TooManyFromIp => (close::POLICY, "too many connections from this address"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::NoCookie => "no_cookie",
            Self::BadCookie => "bad_cookie",
            Self::NoSession => "no_session",
            Self::NoUser => "no_user",
            Self::StoreDown => "store_unavailable",
            Self::Full => "capacity",
            Self::TooManyFromIp => "per_ip_limit",
        }
    }
}

async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let limits = &state.config.limits;
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes);
    // Origin first: a cross-site page must not learn anything, nor take a connection slot.
    if let Err(why) = state.origins.check(&headers) {
        tracing::debug!(kind = why.label(), "websocket origin refused");
        return refuse(ws, Refusal::Origin);
    }
    let ip = state.client_ip.client_ip(peer.ip(), &headers);
    let guard = match state.limiter.try_acquire(ip) {
        Ok(g) => g,
        Err(breach) => {
            let refusal = match breach {
                Breach::Total => Refusal::Full,
                Breach::PerIp => Refusal::TooManyFromIp,
            };
            return refuse(ws, refusal);
        }
    };
    let (sid, user_id) = match authenticate(&state, &headers).await {
        Ok(found) => found,
        Err(refusal) => return refuse(ws, refusal),
    };
    let tracker = state.tracker.clone();
    ws.on_upgrade(move |socket| {
        tracker.track_future(async move {
            let registration = state.registry.register(sid, user_id.clone());
            connection::serve(
                socket,
                user_id,
                state.hub,
                state.settings,
                registration.revocation.clone(),
                state.shutdown,
            )
            .await;
            drop(registration);
            drop(guard);
        })
    })
}

fn refuse(ws: WebSocketUpgrade, refusal: Refusal) -> Response {
    metrics::counter!("ws_auth_failures_total", "reason" => refusal.label()).increment(1);
    tracing::debug!(reason = refusal.label(), "websocket refused");
    let (code, reason) = refusal.close();
    ws.on_upgrade(move |socket| close_with(socket, code, reason))
}

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, serde_json::Value), Refusal> {
    let session = &state.config.session;
    let value = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(|h| cookie::find_cookie(h, &session.cookie_name))
        .ok_or(Refusal::NoCookie)?;
    let sid = cookie::unsign(&value, &session.secrets).map_err(|_| Refusal::BadCookie)?;
    let sess = state
        .store
        .load(&sid)
        .await
        .map_err(|err| {
            tracing::warn!(error = %err, "session lookup failed");
            Refusal::StoreDown
        })?
        .ok_or(Refusal::NoSession)?;
    let user = session_store::user_id(&sess, &state.user_id_paths).ok_or(Refusal::NoUser)?;
    Ok((sid, user))
}
