//! Harness of the gateway-socketio end-to-end tests: the gateway in process, a real
//! socket.io-client (Node, `tests/client/driver.mjs`) driven over stdin/stdout, JWT minting,
//! a JWKS server, and publishing helpers. Everything waits on conditions, never on sleeps.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use events::{Envelope, EventType, Publisher};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};
use test_support::{InProcess, NatsServer, TestDatabase, WAIT, http_client};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, watch};

mod backend;
mod scenario;

pub use backend::ChatBackend;
pub use scenario::*;

/// `admin.secret` of every gateway started here (HS256).
pub const ADMIN_SECRET: &str = "test-admin-secret-0123456789";
/// The operator API key (`api.keys`).
pub const API_KEY: &str = "test-api-key-0123456789";
/// Environment prefix of the service.
pub const PREFIX: &str = "GATEWAY_SOCKETIO_";

// ---------------------------------------------------------------------------------------------
// The gateway, in process
// ---------------------------------------------------------------------------------------------

/// A gateway running in this process; cancelled when dropped.
pub struct Gateway(InProcess);

impl std::ops::Deref for Gateway {
    type Target = InProcess;
    fn deref(&self) -> &InProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut InProcess {
        &mut self.0
    }
}

impl Gateway {
    /// Starts the gateway on `127.0.0.1:0` against `nats` and `db` and waits for `/readyz`.
    /// `extra` are environment variables without the `GATEWAY_SOCKETIO_` prefix
    /// (`("ADMIN__AUDIENCE", "crm".into())`); they override the defaults set here.
    pub async fn start(nats: &NatsServer, db: &TestDatabase, extra: &[(&str, String)]) -> Self {
        let mut env: Vec<(String, String)> = [
            ("NATS__URL", nats.url()),
            ("DATABASE__URL", db.url().to_owned()),
            ("ADMIN__SECRET", ADMIN_SECRET.to_owned()),
            ("API__KEYS", format!("[\"{API_KEY}\"]")),
            ("SHUTDOWN__GRACE_SECS", "5".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{PREFIX}{k}"), v))
        .collect();
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("{PREFIX}{k}"), v.clone())),
        );
        Self(
            InProcess::start(
                &gateway_socketio::SPEC,
                env,
                gateway_socketio::prepare,
                gateway_socketio::run,
            )
            .await,
        )
    }

    /// Creates a widget key through the operator API; returns the key.
    pub async fn create_widget_key(&self, name: &str, origins: &[&str]) -> String {
        let response = http_client()
            .post(self.url("/api/widget-keys"))
            .bearer_auth(API_KEY)
            .json(&json!({"name": name, "allowed_origins": origins}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "creating a widget key");
        let body: Value = response.json().await.unwrap();
        body["key"].as_str().expect("a key in the reply").to_owned()
    }
}

/// A fresh database and NATS server for one test.
pub async fn backends() -> (NatsServer, TestDatabase) {
    (NatsServer::start(), TestDatabase::create().await)
}

// ---------------------------------------------------------------------------------------------
// The socket.io-client driver
// ---------------------------------------------------------------------------------------------

/// `services/gateway-socketio/tests/client`.
pub fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client")
}

/// Options of one socket.io-client connection.
#[derive(Debug, Clone)]
pub struct Connect {
    url: String,
    ns: String,
    auth: Value,
    headers: Map<String, Value>,
    query: Map<String, Value>,
    transports: Vec<String>,
    emits: Vec<Value>,
}

impl Connect {
    /// A connection to namespace `ns` (`/admin`...) of `gateway`, WebSocket transport only,
    /// no auth, no extra headers.
    pub fn to(gateway: &Gateway, ns: &str) -> Self {
        Self::to_url(&gateway.url(""), ns)
    }

    /// As [`Connect::to`], for a gateway at `url` (`http://127.0.0.1:<port>`), e.g. one
    /// running as a process.
    pub fn to_url(url: &str, ns: &str) -> Self {
        Self {
            url: url.to_owned(),
            ns: ns.to_owned(),
            auth: json!({}),
            headers: Map::new(),
            query: Map::new(),
            transports: vec!["websocket".to_owned()],
            emits: Vec::new(),
        }
    }

    /// Emits `event` with `args` (a JSON array) right after starting the connection, before
    /// it is up, as the seed's example does (`io(...); socket.emit(...)`): the client buffers
    /// it until the namespace is joined. With `ack`, the ack is pushed as a `driver:ack` event
    /// `[event, ...response]` (or `driver:ack-timeout` `[event]`).
    pub fn emit_early(mut self, event: &str, args: Value, ack: bool) -> Self {
        self.emits.push(json!({
            "event": event,
            "args": args,
            "ack": ack,
            "timeoutMs": WAIT.as_millis() as u64,
        }));
        self
    }

    /// The handshake's `auth` object.
    pub fn auth(mut self, auth: Value) -> Self {
        self.auth = auth;
        self
    }

    /// `auth: {token}`.
    pub fn token(self, token: &str) -> Self {
        self.auth(json!({ "token": token }))
    }

    /// An extra HTTP header on the handshake request(s).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name.to_owned(), json!(value));
        self
    }

    /// The `Origin` header.
    pub fn origin(self, origin: &str) -> Self {
        self.header("Origin", origin)
    }

    /// A query parameter of the handshake URL.
    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.query.insert(name.to_owned(), json!(value));
        self
    }

    /// The Engine.IO transports the client may use (`["polling"]`).
    pub fn transports(mut self, transports: &[&str]) -> Self {
        self.transports = transports.iter().map(|t| (*t).to_owned()).collect();
        self
    }
}

/// What the driver reports about an accepted connection.
#[derive(Debug, Clone)]
pub struct Connected {
    pub sid: String,
    /// The Engine.IO transport in use when the namespace was joined.
    pub transport: String,
}

/// One event a connection received, in the order the driver saw them.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub seq: usize,
    pub conn: String,
    pub event: String,
    pub args: Vec<Value>,
    pub at: Instant,
    taken: bool,
}

impl Pushed {
    /// The first argument (`null` when there is none).
    pub fn first(&self) -> Value {
        self.args.first().cloned().unwrap_or(Value::Null)
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A `node driver.mjs` process holding any number of named socket.io-client connections.
pub struct Driver {
    _child: Child,
    stdin: tokio::sync::Mutex<ChildStdin>,
    next_id: AtomicU64,
    pending: Pending,
    log: Arc<Mutex<Vec<Pushed>>>,
    changed: watch::Receiver<usize>,
}

impl Driver {
    /// Starts the driver. Panics with instructions when `npm ci` was not run.
    pub async fn start() -> Self {
        let dir = client_dir();
        assert!(
            dir.join("node_modules/socket.io-client/package.json")
                .is_file(),
            "{}/node_modules is missing: run `npm ci` in that directory \
             (`cd services/gateway-socketio/tests/client && npm ci`; scripts/test.sh does it)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("driver.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting `node driver.mjs` (is Node.js 20+ installed?): {e}")
            });
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let pending: Pending = Arc::default();
        let log: Arc<Mutex<Vec<Pushed>>> = Arc::default();
        let (tx, changed) = watch::channel(0usize);
        {
            let (pending, log) = (Arc::clone(&pending), Arc::clone(&log));
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Ok(message) = serde_json::from_str::<Value>(&line) else {
                        eprintln!("driver printed a non-JSON line: {line}");
                        continue;
                    };
                    if let Some(id) = message.get("id").and_then(Value::as_u64) {
                        if let Some(reply) = pending.lock().unwrap().remove(&id) {
                            let _ = reply.send(message);
                        }
                    } else if let (Some(conn), Some(event)) = (
                        message.get("conn").and_then(Value::as_str),
                        message.get("event").and_then(Value::as_str),
                    ) {
                        let mut log = log.lock().unwrap();
                        let seq = log.len();
                        log.push(Pushed {
                            seq,
                            conn: conn.to_owned(),
                            event: event.to_owned(),
                            args: message
                                .get("args")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default(),
                            at: Instant::now(),
                            taken: false,
                        });
                        drop(log);
                        tx.send_replace(seq + 1);
                    } else {
                        eprintln!("driver: {line}");
                    }
                }
                // The driver exited: requests waiting for a reply fail (their senders drop).
                pending.lock().unwrap().clear();
            });
        }
        Self {
            _child: child,
            stdin: tokio::sync::Mutex::new(stdin),
            next_id: AtomicU64::new(1),
            pending,
            log,
            changed,
        }
    }

    async fn request(&self, mut command: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        command["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut line = command.to_string();
        line.push('\n');
        {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(line.as_bytes()).await.unwrap();
            stdin.flush().await.unwrap();
        }
        match tokio::time::timeout(WAIT * 2, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => panic!("the driver exited before answering {command}"),
            Err(_) => panic!("the driver did not answer {command} in time"),
        }
    }

    /// Opens connection `name`; `Err(message)` is the `connect_error` message.
    pub async fn connect(&self, name: &str, options: Connect) -> Result<Connected, String> {
        let reply = self
            .request(json!({
                "op": "connect",
                "name": name,
                "url": options.url,
                "ns": options.ns,
                "auth": options.auth,
                "headers": options.headers,
                "query": options.query,
                "transports": options.transports,
                "emits": options.emits,
            }))
            .await;
        if let Some(error) = reply.get("error").filter(|_| reply.get("ok").is_none()) {
            panic!("driver refused connect {name}: {error}");
        }
        if reply["ok"] == json!(true) {
            Ok(Connected {
                sid: reply["sid"].as_str().unwrap_or_default().to_owned(),
                transport: reply["transport"].as_str().unwrap_or_default().to_owned(),
            })
        } else {
            Err(reply["error"].as_str().unwrap_or_default().to_owned())
        }
    }

    /// Opens connection `name` and panics when it is refused.
    pub async fn connect_ok(&self, name: &str, options: Connect) -> Connected {
        match self.connect(name, options).await {
            Ok(connected) => connected,
            Err(e) => panic!("connection {name} was refused: {e:?}"),
        }
    }

    /// Connects `name` to `/admin` of `gateway` with a valid token.
    pub async fn connect_admin(&self, name: &str, gateway: &Gateway) -> Connected {
        self.connect_ok(
            name,
            Connect::to(gateway, "/admin").token(&admin_token(json!({}))),
        )
        .await
    }

    /// `subscribe` with an ack callback on `conn`; returns the reply.
    pub async fn subscribe(&self, conn: &str, payload: Value) -> Value {
        self.emit_ack(conn, "subscribe", json!([payload])).await
    }

    /// Tries connection `name` and returns the `connect_error` message; panics when accepted.
    pub async fn connect_err(&self, name: &str, options: Connect) -> String {
        match self.connect(name, options).await {
            Ok(_) => panic!("connection {name} was accepted, expected a connect_error"),
            Err(e) => e,
        }
    }

    /// Emits `event` with `args` (a JSON array) and no ack callback.
    pub async fn emit(&self, conn: &str, event: &str, args: Value) {
        let reply = self
            .request(json!({"op": "emit", "name": conn, "event": event, "args": args}))
            .await;
        assert_eq!(reply["ok"], json!(true), "emit {event} on {conn}: {reply}");
    }

    /// Emits `event` with `args` and an ack callback; returns the ack's first argument.
    pub async fn emit_ack(&self, conn: &str, event: &str, args: Value) -> Value {
        let reply = self
            .request(json!({"op": "emit", "name": conn, "event": event, "args": args, "ack": true, "timeoutMs": WAIT.as_millis() as u64}))
            .await;
        let ack = reply
            .get("ack")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("emit {event} on {conn} got no ack: {reply}"));
        ack.first().cloned().unwrap_or(Value::Null)
    }

    /// Closes connection `name` from the client side.
    pub async fn close(&self, conn: &str) {
        let reply = self.request(json!({"op": "close", "name": conn})).await;
        assert_eq!(reply["ok"], json!(true), "close {conn}: {reply}");
    }

    /// Whether connection `name` is connected, as the client sees it.
    pub async fn is_connected(&self, conn: &str) -> bool {
        self.request(json!({"op": "connected", "name": conn}))
            .await
            .get("connected")
            == Some(&json!(true))
    }

    /// Waits up to `timeout` for a not yet taken `event` on `conn` whose first argument
    /// satisfies `pred`; takes it.
    pub async fn wait_pushed(
        &self,
        conn: &str,
        event: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Pushed> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.changed.clone();
        loop {
            changed.borrow_and_update();
            {
                let mut log = self.log.lock().unwrap();
                if let Some(found) = log
                    .iter_mut()
                    .find(|p| !p.taken && p.conn == conn && p.event == event && pred(&p.first()))
                {
                    found.taken = true;
                    return Some(found.clone());
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// The next `event` on `conn` whose first argument satisfies `pred` (up to [`WAIT`]).
    pub async fn next_pushed(
        &self,
        conn: &str,
        event: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Pushed {
        match self.wait_pushed(conn, event, pred, WAIT).await {
            Some(p) => p,
            None => panic!(
                "{conn} did not receive a matching {event:?} in {WAIT:?}; it received:\n{}",
                self.dump(conn)
            ),
        }
    }

    /// The first argument of the next `event` on `conn` matching `pred`.
    pub async fn next_matching(
        &self,
        conn: &str,
        event: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.next_pushed(conn, event, pred).await.first()
    }

    /// The first argument of the next `event` on `conn`.
    pub async fn next_event(&self, conn: &str, event: &str) -> Value {
        self.next_matching(conn, event, |_| true).await
    }

    /// The first argument of the next `event` on `conn`, waiting up to `timeout`.
    pub async fn next_event_within(
        &self,
        conn: &str,
        event: &str,
        timeout: Duration,
    ) -> Option<Value> {
        self.wait_pushed(conn, event, |_| true, timeout)
            .await
            .map(|p| p.first())
    }

    /// How many `event`s matching `pred` `conn` received so far (taken or not).
    pub fn count(&self, conn: &str, event: &str, pred: impl Fn(&Value) -> bool) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.conn == conn && p.event == event && pred(&p.first()))
            .count()
    }

    /// Sound negative check: the caller has already caused the thing that must NOT produce
    /// `event` (matching `pred`) on `conn`, and then caused a later `marker_event` (matching
    /// `marker_pred`) that travels the same ordered path (one NATS publisher connection, one
    /// gateway subscription, one socket). Waits for the marker; anything that was going to
    /// arrive arrived before it, so none may be in the log.
    pub async fn assert_no_event(
        &self,
        conn: &str,
        event: &str,
        pred: impl Fn(&Value) -> bool,
        marker_event: &str,
        marker_pred: impl Fn(&Value) -> bool,
    ) {
        self.next_pushed(conn, marker_event, marker_pred).await;
        let n = self.count(conn, event, pred);
        assert_eq!(
            n,
            0,
            "{conn} received {n} {event:?} it must not have received:\n{}",
            self.dump(conn)
        );
    }

    /// Everything `conn` received, for failure messages.
    pub fn dump(&self, conn: &str) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.conn == conn)
            .map(|p| format!("  #{} {} {}", p.seq, p.event, Value::Array(p.args.clone())))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// JWTs
// ---------------------------------------------------------------------------------------------

/// Unix seconds now.
pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `tests/fixtures/<name>` as text.
pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD.decode(body).unwrap()
}

/// An RSA signing key from a PKCS#1 PEM fixture.
pub fn rsa_key(name: &str) -> EncodingKey {
    let pem = fixture(name);
    assert!(
        pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{name}: PKCS#1 expected"
    );
    EncodingKey::from_rsa_der(&pem_der(&pem))
}

/// An EC signing key from a PKCS#8 PEM fixture.
pub fn ec_key(name: &str) -> EncodingKey {
    let pem = fixture(name);
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{name}: PKCS#8 expected"
    );
    EncodingKey::from_ec_der(&pem_der(&pem))
}

/// A public JWK from a `.jwk.json` fixture, with `kid`, `alg` and `use: sig`.
pub fn jwk(name: &str, kid: &str, alg: &str) -> Value {
    let mut key: Value = serde_json::from_str(&fixture(name)).unwrap();
    key["kid"] = json!(kid);
    key["alg"] = json!(alg);
    key["use"] = json!("sig");
    key
}

/// Signs `claims` with `alg`, `key` and an optional `kid`.
pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// HS256 with `secret`.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret),
        None,
        claims,
    )
}

/// `{sub, exp: now + 1 h}` merged with `extra` (whose keys win; `null` removes a claim).
pub fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "user-42", "iat": now(), "exp": now() + 3600});
    if let (Some(base), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                base.remove(&k);
            } else {
                base.insert(k, v);
            }
        }
    }
    claims
}

/// An `/admin` token (HS256, [`ADMIN_SECRET`]) with [`claims`]`(extra)`.
pub fn admin_token(extra: Value) -> String {
    hs256(ADMIN_SECRET.as_bytes(), &claims(extra))
}

/// `base64url(header).base64url(payload).` with no signature (`alg: none` and friends).
pub fn unsigned_token(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

// ---------------------------------------------------------------------------------------------
// Published schemas
// ---------------------------------------------------------------------------------------------

/// Asserts `instance` is valid against `proto/schemas/<name>`.
pub fn assert_schema(name: &str, instance: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../proto/schemas")
        .join(name);
    let raw: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {instance}\n{errors:#?}");
}

// ---------------------------------------------------------------------------------------------
// A JWKS endpoint
// ---------------------------------------------------------------------------------------------

/// An HTTP server on 127.0.0.1:0 serving `GET /jwks` from a key set that can be swapped, and
/// counting requests.
pub struct JwksServer {
    pub url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `{"keys": keys}`.
    pub async fn start(keys: Vec<Value>) -> Self {
        let state = (
            Arc::new(Mutex::new(json!({ "keys": keys }))),
            Arc::new(AtomicUsize::new(0)),
        );
        let (set, hits) = (Arc::clone(&state.0), Arc::clone(&state.1));
        let app = axum::Router::new()
            .route(
                "/jwks",
                axum::routing::get(
                    |axum::extract::State((keys, hits)): axum::extract::State<(
                        Arc<Mutex<Value>>,
                        Arc<AtomicUsize>,
                    )>| async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let body = keys.lock().unwrap().clone();
                        axum::Json(body)
                    },
                ),
            )
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            keys: set,
            hits,
            task,
        }
    }

    /// Serves `{"keys": keys}` from now on (a key rotation).
    pub fn rotate(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = json!({ "keys": keys });
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing
// ---------------------------------------------------------------------------------------------

/// A JetStream publisher on its own NATS connection.
pub async fn publisher(nats: &NatsServer) -> Publisher {
    Publisher::new(async_nats::connect(nats.url()).await.unwrap())
}

/// `event_type` for entity `id` with a small payload.
pub fn envelope(event_type: &str, id: &str) -> Envelope {
    Envelope::new(
        EventType::parse(event_type).unwrap(),
        id,
        json!({"id": id, "status": "processing"}),
    )
    .unwrap()
}

/// The seed's `order.status_changed` for order `id`.
pub fn order_status_changed(id: i64) -> Envelope {
    Envelope::new(
        EventType::parse("order.status_changed").unwrap(),
        &id.to_string(),
        json!({"id": id, "status": "processing"}),
    )
    .unwrap()
    .with_changed_fields(json!({"status": "processing"}).as_object().unwrap().clone())
}

/// Matches a payload that is the envelope with this id.
pub fn has_id(envelope: &Envelope) -> impl Fn(&Value) -> bool + use<> {
    let id = envelope.id.to_string();
    move |v: &Value| v["id"] == json!(id)
}

/// Matches any payload but the envelope with this id.
pub fn other_than(envelope: &Envelope) -> impl Fn(&Value) -> bool + use<> {
    let id = envelope.id.to_string();
    move |v: &Value| v["id"] != json!(id)
}

/// Publishes events made by `make` until `conn` receives `event` for one of them: the first
/// delivery of a test, which also proves the gateway's NATS subscription is in place (core
/// NATS drops what is published before). Earlier attempts that arrive late are harmless:
/// tests match payloads by event id. Returns the envelope delivered and the payload received.
pub async fn publish_until(
    driver: &Driver,
    publisher: &Publisher,
    conn: &str,
    event: &str,
    make: impl Fn() -> Envelope,
) -> (Envelope, Value) {
    let started = Instant::now();
    let mut patience = Duration::from_millis(250);
    loop {
        let envelope = make();
        publisher.publish(&envelope).await.unwrap();
        if let Some(got) = driver
            .wait_pushed(conn, event, has_id(&envelope), patience)
            .await
        {
            return (envelope, got.first());
        }
        assert!(
            started.elapsed() < WAIT,
            "{conn} never received {event:?}; it received:\n{}",
            driver.dump(conn)
        );
        patience = (patience * 2).min(Duration::from_secs(2));
    }
}

/// Returns once the NATS server has processed everything `client` sent before (e.g. a `SUB`):
/// `flush` only writes the socket, but a request nobody serves is answered "no responders" by
/// the server itself, after reading what came before it on the connection.
pub async fn nats_sync(client: &async_nats::Client) {
    let err = client
        .request("test.sync.barrier", "".into())
        .await
        .expect_err("nobody serves test.sync.barrier");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders,
        "{err}"
    );
}

/// Publishes core-NATS messages `make(n)` on `subject` until `conn` receives `event` with the
/// payload `make(n)` for one of them. Returns that `n`.
pub async fn nats_publish_until(
    driver: &Driver,
    nats: &async_nats::Client,
    subject: &str,
    conn: &str,
    event: &str,
    make: impl Fn(u64) -> Value,
) -> u64 {
    let started = Instant::now();
    let mut patience = Duration::from_millis(250);
    for n in 0.. {
        let payload = make(n);
        nats.publish(subject.to_owned(), payload.to_string().into())
            .await
            .unwrap();
        nats.flush().await.unwrap();
        if driver
            .wait_pushed(conn, event, |v| *v == payload, patience)
            .await
            .is_some()
        {
            return n;
        }
        assert!(
            started.elapsed() < WAIT,
            "{conn} never received {event:?} from {subject}; it received:\n{}",
            driver.dump(conn)
        );
        patience = (patience * 2).min(Duration::from_secs(2));
    }
    unreachable!()
}
