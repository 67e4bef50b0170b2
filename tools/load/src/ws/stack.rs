//! The system under test: a private NATS server, one connect-redis session in Redis, and a
//! release `gateway-ws` process configured for the test size.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use test_support::{NatsServer, ServiceProcess};

use crate::gateway;

/// Signing secret of the test session cookie.
const SECRET: &str = "load ws secret";

/// How the gateway is started.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The `gateway-ws` binary.
    pub bin: PathBuf,
    /// Redis holding the session (connect-redis layout, prefix `sess:`).
    pub redis_url: String,
    /// Connections the test will open; the gateway's caps are set above it.
    pub connections: usize,
    /// `limits.outbound_queue` (broadcast ring capacity).
    pub outbound_queue: usize,
    /// More environment for the gateway process (e.g. `MALLOC_ARENA_MAX`).
    pub extra_env: Vec<(String, String)>,
}

/// NATS, the session and the gateway; everything is stopped and removed when dropped.
#[derive(Debug)]
pub struct Stack {
    nats: NatsServer,
    gateway: ServiceProcess,
    redis_url: String,
    session_key: String,
    /// `Cookie` header value that authenticates as the test session's user.
    pub cookie: String,
}

impl Stack {
    /// Starts everything and waits until the gateway's `/readyz` answers 200.
    pub async fn start(options: &GatewayOptions) -> anyhow::Result<Self> {
        let nats = tokio::task::spawn_blocking(NatsServer::start).await?;

        let sid = format!(
            "wsload{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let session_key = format!("sess:{sid}");
        let mut redis = redis_connection(&options.redis_url).await?;
        // connect-redis: SET sess:<sid> <json> EX <ttl>
        let sess = json!({"cookie": {"originalMaxAge": 86_400_000, "httpOnly": true, "path": "/"},
                          "passport": {"user": "load-user"}});
        let _: () = redis::cmd("SET")
            .arg(&session_key)
            .arg(sess.to_string())
            .arg("EX")
            .arg(86_400)
            .query_async(&mut redis)
            .await
            .with_context(|| format!("redis at {}", options.redis_url))?;
        let signed = gateway_ws::cookie::sign(&sid, SECRET.as_bytes());
        let cookie = format!(
            "connect.sid={}",
            signed
                .replace(':', "%3A")
                .replace('+', "%2B")
                .replace('/', "%2F")
        );

        let cap = (options.connections + 1000).to_string();
        let env: Vec<(String, String)> = [
            ("GATEWAY_WS_HTTP__LISTEN", "127.0.0.1:0".to_owned()),
            ("GATEWAY_WS_NATS__URL", nats.url()),
            ("GATEWAY_WS_LOG__FORMAT", "json".to_owned()),
            ("GATEWAY_WS_SESSION__SECRETS", format!("[\"{SECRET}\"]")),
            ("GATEWAY_WS_SESSION__STORE", "redis".to_owned()),
            ("GATEWAY_WS_SESSION__REDIS_URL", options.redis_url.clone()),
            ("GATEWAY_WS_LIMITS__MAX_CONNECTIONS", cap.clone()),
            ("GATEWAY_WS_LIMITS__MAX_CONNECTIONS_PER_IP", cap),
            (
                "GATEWAY_WS_LIMITS__OUTBOUND_QUEUE",
                options.outbound_queue.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let gateway = gateway::start(&options.bin, env, &options.extra_env).await?;
        Ok(Self {
            nats,
            gateway,
            redis_url: options.redis_url.clone(),
            session_key,
            cookie,
        })
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.gateway.pid()
    }

    /// The gateway's HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.addr()
    }

    /// `nats://...` of the private server.
    pub fn nats_url(&self) -> String {
        self.nats.url()
    }

    /// `http://<addr>/metrics` of the gateway.
    pub fn metrics_url(&self) -> String {
        self.gateway.url("/metrics")
    }

    /// The gateway's Prometheus text.
    pub async fn metrics(&self) -> String {
        gateway::metrics(&self.metrics_url()).await
    }

    /// Removes the session from Redis (the processes stop when the stack is dropped).
    pub async fn remove_session(&self) {
        let Ok(mut redis) = redis_connection(&self.redis_url).await else {
            return;
        };
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(&self.session_key)
            .query_async(&mut redis)
            .await;
    }
}

async fn redis_connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)
        .with_context(|| format!("redis url {url}"))?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("redis at {url} (is it running?)"))
}
