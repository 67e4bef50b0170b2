//! The servers under test: the release `gateway-socketio` (with a fresh PostgreSQL database)
//! and the Node `socket.io` baseline (`sio-baseline/server.mjs`), both on the same private NATS
//! server. A second gateway may join the first on its database ([`Server::start_peer`]): two
//! instances of one cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use test_support::{ServiceProcess, TestDatabase};

use crate::gateway;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `target/release/gateway-socketio`.
    Rust,
    /// `node sio-baseline/server.mjs` (socket.io 4.8).
    Node,
}

impl Kind {
    /// `rust` / `node`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::Node => "node",
        }
    }
}

/// How the servers are started.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The release gateway binary.
    pub gateway_bin: PathBuf,
    /// Directory of `server.mjs` and `package.json`.
    pub node_dir: PathBuf,
    /// The `node` executable.
    pub node_bin: String,
    /// HS256 secret both servers verify tokens with.
    pub secret: String,
    /// `nats://...` of the shared server.
    pub nats_url: String,
    /// More environment for the gateway (`KEY=VALUE`).
    pub gateway_env: Vec<(String, String)>,
    /// More environment for node (`KEY=VALUE`).
    pub node_env: Vec<(String, String)>,
}

/// Namespace sockets the gateway admits, in all and per client address: the whole fleet connects
/// from one loopback address, past the default 200 per address.
const GATEWAY_CONNECTION_CAP: usize = 200_000;

/// Settings both servers get for one test (`None`: their defaults).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    /// The gateway's per-socket queue (`socketio.max_buffer`; Node's is unbounded).
    pub max_buffer: Option<usize>,
    /// Engine.IO ping timeout of both servers.
    pub ping_timeout_secs: Option<u64>,
    /// How long both servers wait for a namespace join after the Engine.IO handshake.
    pub connect_timeout_secs: Option<u64>,
}

enum Process {
    Rust {
        service: ServiceProcess,
        // Dropped after the service (field order): the database is removed once the gateway is
        // gone. `None` for a peer, which uses the first instance's.
        _database: Option<TestDatabase>,
    },
    Node(Child),
}

/// A running server; stopped (and its database dropped) when dropped.
pub struct Server {
    /// Which implementation.
    pub kind: Kind,
    /// Its process id (RSS and CPU are read from `/proc/<pid>`).
    pub pid: u32,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// The gateway's database URL (`None` for node).
    database_url: Option<String>,
    process: Process,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("kind", &self.kind)
            .field("pid", &self.pid)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Starts `kind` with `tuning` and waits until `/readyz` answers 200.
    pub async fn start(kind: Kind, launch: &Launch, tuning: Tuning) -> anyhow::Result<Self> {
        let server = match kind {
            Kind::Rust => start_rust(launch, tuning, None).await?,
            Kind::Node => start_node(launch, tuning).await?,
        };
        gateway::wait_ready(
            &format!("http://{}/readyz", server.addr),
            Duration::from_secs(60),
            || server.logs(),
        )
        .await
        .with_context(|| format!("{} server", kind.name()))?;
        Ok(server)
    }

    /// Starts another gateway on the NATS server of `launch` and the database of `self` (a
    /// gateway): a second instance of one cluster, with `launch`'s environment. Stop it before
    /// `self`, which drops the database.
    pub async fn start_peer(&self, launch: &Launch, tuning: Tuning) -> anyhow::Result<Self> {
        let database = self
            .database_url
            .as_deref()
            .context("a peer needs a gateway to join")?;
        start_rust(launch, tuning, Some(database)).await
    }

    /// `ws://<addr>`.
    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The gateway's Prometheus text (empty for node).
    pub async fn metrics(&self) -> String {
        if self.kind != Kind::Rust {
            return String::new();
        }
        gateway::metrics(&format!("http://{}/metrics", self.addr)).await
    }

    /// The gateway's log so far.
    pub fn logs(&self) -> Option<String> {
        match &self.process {
            Process::Rust { service, .. } => Some(service.logs()),
            Process::Node(_) => None,
        }
    }

    /// Stops the process and waits for it.
    pub async fn stop(self) {
        match self.process {
            Process::Rust { service, _database } => {
                tokio::task::spawn_blocking(move || {
                    drop(service);
                    drop(_database);
                })
                .await
                .ok();
            }
            Process::Node(mut child) => {
                let _ = child.kill().await;
            }
        }
    }
}

/// Starts the gateway on `database` (a URL), or on a fresh database when `None`; the
/// gateway's own `wait_ready` is done by [`gateway::start`].
async fn start_rust(
    launch: &Launch,
    tuning: Tuning,
    database: Option<&str>,
) -> anyhow::Result<Server> {
    let (database, url) = match database {
        Some(url) => (None, url.to_owned()),
        None => {
            let database = TestDatabase::create().await;
            let url = database.url().to_owned();
            (Some(database), url)
        }
    };
    let cap = GATEWAY_CONNECTION_CAP.to_string();
    let mut env: Vec<(String, String)> = vec![
        ("GATEWAY_SOCKETIO_HTTP__LISTEN".into(), "127.0.0.1:0".into()),
        ("GATEWAY_SOCKETIO_NATS__URL".into(), launch.nats_url.clone()),
        ("GATEWAY_SOCKETIO_DATABASE__URL".into(), url.clone()),
        (
            "GATEWAY_SOCKETIO_LIMITS__MAX_CONNECTIONS".into(),
            cap.clone(),
        ),
        (
            "GATEWAY_SOCKETIO_LIMITS__MAX_CONNECTIONS_PER_IP".into(),
            cap,
        ),
        ("GATEWAY_SOCKETIO_ADMIN__ALGORITHM".into(), "HS256".into()),
        (
            "GATEWAY_SOCKETIO_ADMIN__SECRET".into(),
            launch.secret.clone(),
        ),
        ("GATEWAY_SOCKETIO_LOG__FORMAT".into(), "json".into()),
    ];
    if let Some(n) = tuning.max_buffer {
        env.push((
            "GATEWAY_SOCKETIO_SOCKETIO__MAX_BUFFER".into(),
            n.to_string(),
        ));
    }
    if let Some(secs) = tuning.ping_timeout_secs {
        env.push((
            "GATEWAY_SOCKETIO_SOCKETIO__PING_TIMEOUT_SECS".into(),
            secs.to_string(),
        ));
    }
    if let Some(secs) = tuning.connect_timeout_secs {
        env.push((
            "GATEWAY_SOCKETIO_SOCKETIO__CONNECT_TIMEOUT_SECS".into(),
            secs.to_string(),
        ));
    }
    let service = gateway::start(&launch.gateway_bin, env, &launch.gateway_env).await?;
    Ok(Server {
        kind: Kind::Rust,
        pid: service.pid(),
        addr: service.addr(),
        database_url: Some(url),
        process: Process::Rust {
            service,
            _database: database,
        },
    })
}

/// Runs `npm ci` in `dir` when its `node_modules` is missing.
async fn ensure_node_modules(dir: &Path) -> anyhow::Result<()> {
    if dir.join("node_modules/socket.io/package.json").exists()
        && dir.join("node_modules/nats/package.json").exists()
    {
        return Ok(());
    }
    eprintln!("node: running `npm ci` in {}", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .await
        .context("running npm ci (is npm installed?)")?;
    if !status.success() {
        bail!("npm ci in {} failed: {status}", dir.display());
    }
    Ok(())
}

async fn start_node(launch: &Launch, tuning: Tuning) -> anyhow::Result<Server> {
    ensure_node_modules(&launch.node_dir).await?;
    let mut command = Command::new(&launch.node_bin);
    if let Some(secs) = tuning.ping_timeout_secs {
        command.env("PING_TIMEOUT_MS", (secs * 1000).to_string());
    }
    if let Some(secs) = tuning.connect_timeout_secs {
        command.env("CONNECT_TIMEOUT_MS", (secs * 1000).to_string());
    }
    let mut child = command
        .arg("server.mjs")
        .current_dir(&launch.node_dir)
        .env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("NATS_URL", &launch.nats_url)
        .env("JWT_SECRET", &launch.secret)
        .envs(
            launch
                .node_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {} (is node installed?)", launch.node_bin))?;
    let pid = child.id().context("node exited at once")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("node did not print its port within 30 s")??
        .context("node exited before printing its port")?;
    let port = serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| v["listening"].as_u64())
        .with_context(|| format!("unexpected first line from node: {line}"))?;
    // Keep reading stdout so node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Server {
        kind: Kind::Node,
        pid,
        addr: SocketAddr::from(([127, 0, 0, 1], port as u16)),
        database_url: None,
        process: Process::Node(child),
    })
}
