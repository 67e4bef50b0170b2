//! Socket.IO gateway (seed 000): namespaces `/` (integrations, seed 002), `/admin`, `/provider`, `/widget`, `/stat` with
//! their own authentication, `/admin` subscriptions mapped to rooms through `events::surface`,
//! and relays from NATS to rooms. The contract is `docs/gateway-socketio.md`.
#![warn(missing_docs)]

mod ack;
mod admin;
pub mod auth;
mod bus;
mod collab;
mod command;
pub mod config;
mod expiry;
mod gateway;
mod handshake;
mod integration;
mod key_cache;
mod limits;
pub mod namespace;
mod provider;
mod relay;
#[cfg(test)]
mod schema_check;
mod stat;
pub mod widget;

pub use admin::policy;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use service_runtime::http_api::ApiKeys;
use service_runtime::{ConfigError, ServiceContext, ServiceError, ServiceSpec, Settings};
use socketioxide::SocketIo;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use config::Config;
pub use namespace::Namespace;

/// Name, environment prefix and defaults of this service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "gateway-socketio",
    env_prefix: "GATEWAY_SOCKETIO_",
    default_port: 8081,
    database_required: true,
};

/// The widget-key table.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What [`run`] needs already built from the configuration: the token verifiers (PEM keys,
/// the JWKS client), the CORS layer and the operator API keys.
pub struct Prepared {
    admin: auth::AdminVerifier,
    provider: Option<auth::ProviderVerifier>,
    cors: Option<CorsLayer>,
    api_keys: ApiKeys,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("admin", &self.admin)
            .field("provider", &self.provider)
            .field("cors", &self.cors.is_some())
            .field("api_keys", &self.api_keys)
            .finish()
    }
}

/// Checks and builds everything [`run`] takes from the configuration, so a bad value (a PEM
/// key, a CORS origin, the database URL) exits with 64 naming its key before the gateway
/// listens.
pub fn prepare(settings: &Settings<Config>) -> Result<Prepared, ConfigError> {
    let Settings { common, service } = settings;
    if common.database.url.is_empty() {
        return Err(ConfigError::new(
            "database.url",
            "is required (widget keys)",
        ));
    }
    common.database.connect_options()?;
    // With claim membership, the verifiers read the channel list at the handshake.
    let channel_claim = match service.collab.membership {
        config::MembershipSource::Claim => service.collab.membership_claim.as_str(),
        config::MembershipSource::Request => "",
    };
    let project_claim = match service.integrations.access {
        config::ProjectAccessSource::Claim => service.integrations.projects_claim.as_str(),
        config::ProjectAccessSource::Backend => "",
    };
    let admin = auth::AdminVerifier::new(&service.admin)?
        .with_channel_claim(channel_claim)
        .with_project_claim(project_claim);
    let provider = auth::ProviderVerifier::new(&service.provider)?
        .map(|verifier| verifier.with_channel_claim(channel_claim));
    Ok(Prepared {
        admin,
        provider,
        cors: cors(&service.socketio.cors_origins)?,
        api_keys: ApiKeys::new(&service.api.keys),
    })
}

/// Runs the gateway until `shutdown` is cancelled; then turns not-ready, disconnects every
/// socket (clients reconnect elsewhere) and returns within the grace period.
pub async fn run(
    settings: Settings<Config>,
    prepared: Prepared,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let Settings { common, service } = settings;
    let Prepared {
        admin,
        provider,
        cors,
        api_keys,
    } = prepared;
    if provider.is_none() {
        tracing::info!("provider.issuer is not set: /provider refuses every handshake");
    }
    let mut ctx =
        ServiceContext::start(SPEC.name, &common, Some(&MIGRATOR), shutdown.clone()).await?;
    // `prepare` checked `database.url`, so the context opened a pool on it.
    let pool = ctx
        .db
        .clone()
        .ok_or_else(|| ConfigError::new("database.url", "is required (widget keys)"))?;
    let widgets = widget::WidgetKeys::new(
        pool,
        Duration::from_secs(service.widget.cache_secs),
        service.widget.cache_entries,
        service.widget.unknown_keys_per_minute,
    );

    let state = Arc::new(gateway::Gateway::new(
        service.clone(),
        admin,
        provider,
        widgets.clone(),
        ctx.nats.clone(),
    ));
    let io_config = &service.socketio;
    let (svc, io) = SocketIo::builder()
        .ping_interval(Duration::from_secs(io_config.ping_interval_secs))
        .ping_timeout(Duration::from_secs(io_config.ping_timeout_secs))
        .connect_timeout(Duration::from_secs(io_config.connect_timeout_secs))
        .max_buffer_size(io_config.max_buffer)
        .max_payload(io_config.max_payload_bytes)
        // max_payload bounds long-polling bodies only; the WebSocket transport has its own
        // limits (64 MiB / 16 MiB by default). A larger message or frame is refused as soon as
        // its header is read and closes the transport, as Node's socket.io does.
        .ws_max_message_size(ws_limit(io_config.max_payload_bytes))
        .ws_max_frame_size(ws_limit(io_config.max_payload_bytes))
        .ws_read_buffer_size(io_config.ws_read_buffer_bytes)
        .with_state(Arc::clone(&state))
        .build_svc();
    register(&io);

    let subscribed = ctx.readiness.flag("relay", "not subscribed to events yet");
    let presence = ctx
        .readiness
        .flag("presence", "cluster presence not loaded yet");
    let integrations = ctx
        .readiness
        .flag("integrations", "not subscribed to integration events yet");
    let mut relays = relay::spawn(&io, &state, subscribed, presence, &shutdown);
    integration::relay::spawn(&mut relays, &io, &state, integrations, &shutdown);

    {
        let (io, token) = (io.clone(), shutdown.clone());
        tokio::spawn(async move {
            token.cancelled().await;
            tracing::info!("disconnecting every socket");
            io.close().await;
        });
    }

    let api = widget::router(widget::ApiState {
        keys: widgets,
        nats: ctx.nats.clone(),
        api_keys,
    });
    let mut engine = Router::new()
        .route_service("/socket.io/", svc)
        .layer(axum::middleware::map_request(detach_request));
    if let Some(cors) = cors {
        engine = engine.layer(cors);
    }
    let served = ctx.serve(listener, api.merge(engine)).await;
    // The relays end on `shutdown`; the presence registry takes up to its SHUTDOWN_BUDGET to
    // leave the cluster (queued last-seen values, its live key). Whatever is still running
    // then is aborted.
    let _ = tokio::time::timeout(RELAYS_STOP, async {
        while relays.join_next().await.is_some() {}
    })
    .await;
    relays.abort_all();
    served
}

/// How long the relays may take to end after the HTTP server stopped: the presence
/// registry's budget to leave the cluster (it starts with the shutdown, so it usually ends
/// before), and a margin.
const RELAYS_STOP: Duration =
    collab::registry::SHUTDOWN_BUDGET.saturating_add(Duration::from_millis(500));

/// Registers the namespaces on `io`, each with its handshake (connect middleware).
fn register(io: &SocketIo) {
    use socketioxide::handler::ConnectHandler;
    io.ns(
        Namespace::Root.path(),
        integration::on_connect.with(integration::handshake),
    );
    io.ns(
        Namespace::Admin.path(),
        admin::on_connect.with(admin::handshake),
    );
    io.ns(
        Namespace::Provider.path(),
        provider::on_connect.with(provider::handshake),
    );
    io.ns(
        Namespace::Widget.path(),
        widget::on_connect.with(widget::handshake),
    );
    io.ns(
        Namespace::Stat.path(),
        stat::on_connect.with(stat::handshake),
    );
}

/// Request headers a socket may need after its handshake: the WebSocket upgrade, the body's
/// framing for long-polling, and what the namespaces read (`Origin`, `X-Forwarded-For`).
const KEPT_HEADERS: [header::HeaderName; 12] = [
    header::HOST,
    header::ORIGIN,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HeaderName::from_static("x-forwarded-for"),
];

/// Gives the Engine.IO layer a request that owns its URI and headers. hyper parses a request
/// head as slices of the connection's read buffer, and engineioxide keeps every socket's request
/// parts for the socket's lifetime, which pinned that whole buffer (~16 KB) per connection.
/// Copying the few values a socket needs frees it when the HTTP connection ends (upgrade).
async fn detach_request(request: axum::extract::Request) -> axum::extract::Request {
    let (parts, body) = request.into_parts();
    let mut owned = axum::http::Request::new(body);
    *owned.method_mut() = parts.method;
    *owned.version_mut() = parts.version;
    // Parsing from a `&str` copies into a fresh allocation.
    if let Ok(uri) = parts.uri.to_string().parse() {
        *owned.uri_mut() = uri;
    }
    let headers = owned.headers_mut();
    for name in &KEPT_HEADERS {
        for value in parts.headers.get_all(name) {
            if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                headers.append(name.clone(), value);
            }
        }
    }
    *owned.extensions_mut() = parts.extensions;
    owned
}

fn ws_limit(max_payload_bytes: u64) -> usize {
    usize::try_from(max_payload_bytes).unwrap_or(usize::MAX)
}

fn cors(origins: &[String]) -> Result<Option<CorsLayer>, ConfigError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o).map_err(|_| {
                    ConfigError::new("socketio.cors_origins", format!("not an origin: {o:?}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .max_age(Duration::from_secs(600)),
    ))
}
