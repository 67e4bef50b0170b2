//! The harness of [`super`]: a third-party API on 127.0.0.1:0 (and one on 127.0.0.2, a
//! loopback address the runner may not reach), the real integrations-runner on a runtime of
//! its own, its integrations, two gateways and a socket.io-client driver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Value, json};
use test_support::{InProcess, NatsServer, TestDatabase, WAIT, eventually, http_client};
use tokio::sync::watch;

use crate::common::*;

pub const PROJECT: &str = "6958511e8397f2dfa88090d8";
pub const OTHER_PROJECT: &str = "6958511e8397f2dfa88090d9";
/// The seed's integration: every endpoint of [`ThirdParty`], Stripe webhooks.
pub const MAIN: &str = "64b2c3d4e5f6789012345678";
/// Its own integration, so the 429's block does not touch [`MAIN`].
pub const RATE: &str = "64b2c3d4e5f6789012345670";
/// Based on 127.0.0.2, a loopback address the runner is not allowed to reach.
pub const REFUSED: &str = "64b2c3d4e5f6789012345671";
/// An integration of [`OTHER_PROJECT`].
pub const OTHER: &str = "64b2c3d4e5f6789012345679";
/// No integration has this id.
pub const UNKNOWN: &str = "64b2c3d4e5f67890123456ff";

const RUNNER_API_KEY: &str = "runner-api-key-0123456789";
pub const STRIPE_SECRET: &str = "whsec_chain-test-secret-0123456789";
/// `integrations.execute_timeout_ms` of the gateways (the runner's `deadlineMs`).
pub const EXECUTE_TIMEOUT: Duration = Duration::from_millis(4000);
/// How long past its deadline the gateway still waits for the runner (`execute::REPLY_GRACE`).
pub const REPLY_GRACE: Duration = Duration::from_millis(1000);

// ---------------------------------------------------------------------------------------------
// The third party
// ---------------------------------------------------------------------------------------------

/// A local HTTP API on `<ip>:0` that counts the requests it gets by path.
pub struct ThirdParty {
    base: String,
    hits: Hits,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Hits {
    paths: Arc<Mutex<Vec<String>>>,
    changed: Arc<watch::Sender<usize>>,
}

impl Hits {
    fn count(&self, path: &str) -> usize {
        self.paths
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

impl Drop for ThirdParty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ThirdParty {
    /// `GET /` and `/users/{id}/tweets` succeed, `/status/{code}` answers that code, `/hang`
    /// never answers, `/limited` is a 429 with `Retry-After: 3`, `/flaky/{name}` is a 503 on
    /// its first call and a 200 after, `/big` streams 2 MiB.
    pub async fn start(ip: &str) -> Self {
        let hits = Hits {
            paths: Arc::default(),
            changed: Arc::new(watch::Sender::new(0)),
        };
        let app = Router::new()
            .route("/", get(|| async { axum::Json(json!({"healthy": true})) }))
            .route("/users/{id}/tweets", get(tweets))
            .route("/status/{code}", get(status))
            .route("/hang", get(hang))
            .route("/limited", get(limited))
            .route("/flaky/{name}", get(flaky).post(flaky))
            .route("/big", get(big))
            .layer(middleware::from_fn_with_state(hits.clone(), record))
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
            .await
            .unwrap_or_else(|e| panic!("binding {ip}:0: {e}"));
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, hits, task }
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.count(path)
    }

    /// Waits until `path` was requested `n` times.
    pub async fn wait_hits(&self, path: &str, n: usize) {
        let mut changed = self.hits.changed.subscribe();
        let waited = tokio::time::timeout(WAIT, async {
            while self.hits(path) < n {
                changed.changed().await.unwrap();
            }
        })
        .await;
        assert!(waited.is_ok(), "{path} was not requested {n} times");
    }
}

async fn record(State(hits): State<Hits>, request: Request, next: Next) -> Response {
    hits.paths
        .lock()
        .unwrap()
        .push(request.uri().path().to_owned());
    hits.changed.send_modify(|n| *n += 1);
    next.run(request).await
}

async fn tweets(
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tp");
    axum::Json(json!({"user": id, "query": query, "bearer": bearer, "tweets": [{"id": "t1"}]}))
}

async fn status(Path(code): Path<u16>) -> Response {
    let code = StatusCode::from_u16(code).unwrap();
    (code, axum::Json(json!({"error": "nope"}))).into_response()
}

async fn hang() -> &'static str {
    std::future::pending::<()>().await;
    "never"
}

async fn limited() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [("retry-after", "3")],
        "slow down",
    )
        .into_response()
}

async fn flaky(State(hits): State<Hits>, request: Request) -> Response {
    if hits.count(request.uri().path()) == 1 {
        (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
    } else {
        axum::Json(json!({"attempt": hits.count(request.uri().path())})).into_response()
    }
}

/// 2 MiB without a Content-Length.
async fn big() -> Response {
    let chunks = (0..32).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]));
    Body::from_stream(futures_util::stream::iter(chunks)).into_response()
}

// ---------------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------------

/// The real integrations-runner, on a runtime of its own.
pub struct Runner {
    base: String,
    _process: InProcess,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Runner {
    /// Starts it against `nats` and `db`, loopback `127.0.0.1/32` allowed, and waits until it
    /// serves `cmd.integration.*` (its `/readyz` does not wait for those subscriptions).
    /// `extra` are `INTEGRATIONS_RUNNER_`-less variables that override the defaults here.
    pub async fn start(nats: &NatsServer, db: &TestDatabase, extra: &[(&str, String)]) -> Self {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let mut env: Vec<(&str, String)> = vec![
            ("NATS__URL", nats.url()),
            ("DATABASE__URL", db.url().to_owned()),
            ("API__KEYS", format!("[{RUNNER_API_KEY}]")),
            (
                "CRYPTO__KEYS",
                format!("[{{id = \"k1\", key = \"{key}\"}}]"),
            ),
            ("SHUTDOWN__GRACE_SECS", "5".to_owned()),
            ("EXECUTION__ALLOW_NETWORKS", "[\"127.0.0.1/32\"]".to_owned()),
            ("EXECUTION__RETRY_BASE_MS", "20".to_owned()),
            ("USAGE__FLUSH_MS", "100".to_owned()),
        ];
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend(extra.iter().cloned());
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (format!("{}{k}", integrations_runner::SPEC.env_prefix), v))
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("integrations-runner")
            .enable_all()
            .build()
            .unwrap();
        let process = runtime
            .spawn(async move {
                InProcess::start(
                    &integrations_runner::SPEC,
                    env,
                    |_: &service_runtime::Settings<integrations_runner::Config>| Ok(()),
                    |settings, (), listener, shutdown| {
                        integrations_runner::run(settings, listener, shutdown)
                    },
                )
                .await
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let nc = async_nats::connect(nats.url()).await.unwrap();
        let probe = json!({"projectId": PROJECT, "integrationId": UNKNOWN}).to_string();
        eventually("the runner serving cmd.integration.status", || async {
            nc.request(events::subject::INTEGRATION_STATUS, probe.clone().into())
                .await
                .ok()
                .map(drop)
        })
        .await;
        Self {
            base: process.url(""),
            _process: process,
            runtime: Some(runtime),
        }
    }

    /// Drops every task of the runner at once (a crash: nothing is answered any more).
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Creates an integration through the REST API.
    pub async fn create(&self, integration: &Value) {
        let response = http_client()
            .post(format!("{}/v1/integrations", self.base))
            .bearer_auth(RUNNER_API_KEY)
            .json(integration)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(status, 201, "creating {integration}: {body}");
    }

    /// POSTs a provider webhook to `/integrations/{id}/webhooks`.
    pub async fn webhook(&self, id: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
        let mut request = http_client()
            .post(format!("{}/integrations/{id}/webhooks", self.base))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The chain
// ---------------------------------------------------------------------------------------------

/// Everything of one test; fields drop in order (clients, gateways, runner, then the servers).
pub struct Chain {
    pub d: Driver,
    pub one: Gateway,
    pub two: Gateway,
    pub runner: Runner,
    pub api: ThirdParty,
    pub elsewhere: ThirdParty,
    pub nats: NatsServer,
    _gateway_db: TestDatabase,
    _runner_db: TestDatabase,
}

impl Chain {
    /// The runner (with `runner_extra`), the integrations, two gateways, a driver.
    pub async fn start(runner_extra: &[(&str, String)]) -> Self {
        let nats = NatsServer::start();
        let (gateway_db, runner_db) = (TestDatabase::create().await, TestDatabase::create().await);
        let api = ThirdParty::start("127.0.0.1").await;
        let elsewhere = ThirdParty::start("127.0.0.2").await;
        let runner = Runner::start(&nats, &runner_db, runner_extra).await;
        for integration in integrations(&api, &elsewhere) {
            runner.create(&integration).await;
        }
        let env = [
            ("INTEGRATIONS__ACCESS", "claim".to_owned()),
            (
                "INTEGRATIONS__EXECUTE_TIMEOUT_MS",
                EXECUTE_TIMEOUT.as_millis().to_string(),
            ),
        ];
        let one = Gateway::start(&nats, &gateway_db, &env).await;
        let two = Gateway::start(&nats, &gateway_db, &env).await;
        Self {
            d: Driver::start().await,
            one,
            two,
            runner,
            api,
            elsewhere,
            nats,
            _gateway_db: gateway_db,
            _runner_db: runner_db,
        }
    }

    /// Connects `conn` to `ns` of `gateway` as a member of [`PROJECT`].
    pub async fn connect(&self, conn: &str, gateway: &Gateway, ns: &str) {
        let token = admin_token(json!({"projects": [PROJECT]}));
        self.d
            .connect_ok(conn, Connect::to(gateway, ns).token(&token))
            .await;
    }

    /// Joins `conn` to `integration`'s room (with an ack).
    pub async fn join(&self, conn: &str, integration: &str) {
        let ack = self
            .d
            .emit_ack(conn, "integration:join", json!([target(integration)]))
            .await;
        assert_eq!(
            ack,
            json!({"ok": true, "integrationId": integration, "projectId": PROJECT,
                "room": format!("integration:{integration}")}),
            "join {integration} on {conn}"
        );
    }

    /// `integration:execute` with an ack; returns the ack.
    pub async fn execute(
        &self,
        conn: &str,
        integration: &str,
        endpoint: &str,
        params: Value,
    ) -> Value {
        self.d
            .emit_ack(
                conn,
                "integration:execute",
                json!([{"projectId": PROJECT, "integrationId": integration,
                    "endpoint": endpoint, "params": params, "requestData": {"n": 1}}]),
            )
            .await
    }

    /// `integration:status` with an ack; returns the ack.
    pub async fn status(&self, conn: &str, integration: &str) -> Value {
        self.d
            .emit_ack(conn, "integration:status", json!([target(integration)]))
            .await
    }
}

pub fn target(integration: &str) -> Value {
    json!({"projectId": PROJECT, "integrationId": integration})
}

fn integrations(api: &ThirdParty, elsewhere: &ThirdParty) -> [Value; 4] {
    let main = json!({
        "id": MAIN, "projectId": PROJECT, "provider": "stripe", "name": "Main",
        "baseUrl": api.base,
        "auth": {"type": "bearer", "token": "tp"},
        "endpoints": {
            "getUserTweets": {"method": "GET", "path": "/users/{userId}/tweets",
                "query": {"max_results": "{limit}"}},
            "notFound": {"method": "GET", "path": "/status/404"},
            "broken": {"method": "GET", "path": "/status/500"},
            "slow": {"method": "GET", "path": "/hang", "timeoutMs": 300},
            "stall": {"method": "GET", "path": "/hang"},
            "flakyGet": {"method": "GET", "path": "/flaky/get"},
            "flakyPost": {"method": "POST", "path": "/flaky/post", "body": "requestData"},
            "big": {"method": "GET", "path": "/big"}
        },
        "webhook": {"scheme": "stripe", "secret": STRIPE_SECRET}
    });
    let bare = |id: &str, project: &str, base: &str| {
        json!({"id": id, "projectId": project, "provider": "test", "name": id, "baseUrl": base,
            "auth": {"type": "none"}, "endpoints": {}})
    };
    let mut rate = bare(RATE, PROJECT, &api.base);
    rate["endpoints"] = json!({"limited": {"method": "GET", "path": "/limited"}});
    [
        main,
        rate,
        bare(REFUSED, PROJECT, &elsewhere.base),
        bare(OTHER, OTHER_PROJECT, &api.base),
    ]
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}
