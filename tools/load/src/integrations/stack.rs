//! Everything the measurement runs against: a private nats-server, the release
//! `integrations-runner` on a fresh PostgreSQL database, the release `gateway-socketio` (its
//! own fresh database, through [`crate::sio::servers`]), the local third-party [`Api`], and one
//! integration created through the runner's REST API.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use test_support::{NatsServer, ServiceProcess, TestDatabase};

use super::api::{Api, TOKEN};
use crate::gateway;
use crate::sio::protocol::SioProtocol;
use crate::sio::servers::{Kind, Launch, Server, Tuning};

/// The project every client belongs to (its token's `projects` claim).
pub const PROJECT: &str = "6958511e8397f2dfa88090d8";
/// The integration executed.
pub const INTEGRATION: &str = "64b2c3d4e5f6789012345678";
/// Its GitHub webhook signing secret.
pub const WEBHOOK_SECRET: &str = "load-integrations-github-secret";
/// HS256 secret of the gateway's `/admin` tokens.
const JWT_SECRET: &str = "load integrations hs256 secret, not for production";
/// The runner's REST API key.
const API_KEY: &str = "load-integrations-api-key-0123456789";
/// The runner's credentials key: base64 of 32 bytes of 0x4c ("L"). A measurement key only.
const CRYPTO_KEY: &str = "TExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTEw=";

/// How the processes are started.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub gateway_bin: PathBuf,
    pub runner_bin: PathBuf,
    /// More environment for the gateway (`GATEWAY_SOCKETIO_…=…`).
    pub gateway_env: Vec<(String, String)>,
    /// More environment for the runner (`INTEGRATIONS_RUNNER_…=…`).
    pub runner_env: Vec<(String, String)>,
}

/// A running stack; everything stops when it is dropped (processes killed, databases dropped).
pub struct Stack {
    pub api: Api,
    pub gateway: Server,
    pub runner: ServiceProcess,
    pub nats_url: String,
    // Dropped after the runner (field order): the database outlives its process.
    _runner_db: TestDatabase,
    _nats: NatsServer,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("gateway", &self.gateway)
            .field("runner", &self.runner.addr())
            .finish_non_exhaustive()
    }
}

impl Stack {
    pub async fn start(options: &StackOptions) -> anyhow::Result<Self> {
        if !options.runner_bin.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p load -p \
                 gateway-socketio -p integrations-runner` or pass --runner-bin",
                options.runner_bin.display()
            );
        }
        eprintln!("starting nats-server, the third-party API and integrations-runner");
        let nats = tokio::task::spawn_blocking(NatsServer::start).await?;
        let api = Api::start().await?;
        let runner_db = TestDatabase::create().await;
        let mut env: Vec<(String, String)> = [
            ("HTTP__LISTEN", "127.0.0.1:0".to_owned()),
            ("NATS__URL", nats.url()),
            ("DATABASE__URL", runner_db.url().to_owned()),
            ("API__KEYS", format!("[{API_KEY}]")),
            (
                "CRYPTO__KEYS",
                format!("[{{id = \"k1\", key = \"{CRYPTO_KEY}\"}}]"),
            ),
            ("EXECUTION__ALLOW_NETWORKS", "[127.0.0.1/32]".to_owned()),
            ("LOG__FORMAT", "json".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INTEGRATIONS_RUNNER_{k}"), v))
        .collect();
        env.extend(options.runner_env.iter().cloned());
        let runner = gateway::start(&options.runner_bin, env, &[]).await?;

        eprintln!("starting gateway-socketio");
        let mut gateway_env = vec![(
            "GATEWAY_SOCKETIO_INTEGRATIONS__ACCESS".to_owned(),
            "claim".to_owned(),
        )];
        gateway_env.extend(options.gateway_env.iter().cloned());
        let launch = Launch {
            gateway_bin: options.gateway_bin.clone(),
            node_dir: PathBuf::new(),
            node_bin: String::new(),
            secret: JWT_SECRET.to_owned(),
            nats_url: nats.url(),
            gateway_env,
            node_env: Vec::new(),
        };
        let gateway = Server::start(Kind::Rust, &launch, Tuning::default()).await?;
        let stack = Self {
            api,
            gateway,
            nats_url: nats.url(),
            runner,
            _runner_db: runner_db,
            _nats: nats,
        };
        stack.create_integration().await?;
        Ok(stack)
    }

    async fn create_integration(&self) -> anyhow::Result<()> {
        let body = json!({
            "id": INTEGRATION,
            "projectId": PROJECT,
            "provider": "twitter",
            "name": "load integrations",
            "baseUrl": self.api.base(),
            "auth": {"type": "bearer", "token": TOKEN},
            "endpoints": {
                "getUserTweets": {"method": "GET", "path": "/users/{userId}/tweets",
                                  "query": {"max_results": "{limit}"}},
                "missing": {"method": "GET", "path": "/missing"}
            },
            "webhook": {"scheme": "github", "secret": WEBHOOK_SECRET}
        });
        let response = test_support::http_client()
            .post(self.runner.url("/v1/integrations"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .context("creating the integration")?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        if status != 201 {
            bail!("creating the integration: {status} {text}");
        }
        Ok(())
    }

    /// The Socket.IO protocol of the gateway's `/admin` namespace (same handlers as `/`).
    pub fn protocol(&self) -> anyhow::Result<SioProtocol> {
        Ok(SioProtocol {
            request: SioProtocol::request(&self.gateway.ws_base())?,
            namespace: "/admin".to_owned(),
            auth: auth()?,
            join: true,
            subscribe: "{}".to_owned(),
            counted: Vec::new(),
        })
    }

    /// `POST /integrations/{id}/webhooks` to the runner, signed as GitHub signs; its status.
    pub async fn send_webhook(&self, body: &Value, delivery: &str) -> anyhow::Result<u16> {
        let body = serde_json::to_vec(body)?;
        let signature = webhook_signatures::github::sign(WEBHOOK_SECRET.as_bytes(), &body);
        let response = test_support::http_client()
            .post(
                self.runner
                    .url(&format!("/integrations/{INTEGRATION}/webhooks")),
            )
            .header("content-type", "application/json")
            .header("x-hub-signature-256", signature)
            .header("x-github-event", "issues")
            .header("x-github-delivery", delivery)
            .body(body)
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// The runner's Prometheus text.
    pub async fn runner_metrics(&self) -> String {
        gateway::metrics(&self.runner.url("/metrics")).await
    }

    /// Stops the processes (the databases are dropped after them).
    pub async fn stop(self) {
        let Self {
            api,
            gateway,
            runner,
            _runner_db,
            _nats,
            ..
        } = self;
        drop(api);
        gateway.stop().await;
        tokio::task::spawn_blocking(move || {
            drop(runner);
            drop(_runner_db);
            drop(_nats);
        })
        .await
        .ok();
    }
}

/// The namespace connect's `auth`: an HS256 token valid for a day, member of [`PROJECT`].
fn auth() -> anyhow::Result<String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims =
        json!({"sub": "load-integrations", "projects": [PROJECT], "iat": now, "exp": now + 86_400});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )?;
    Ok(json!({"token": token}).to_string())
}

/// How long a contract step waits for an answer.
pub const STEP: Duration = Duration::from_secs(10);
