//! Shared pieces of the dispatcher's end-to-end tests: a real HTTP receiver, the dispatcher
//! running in process (or as a process), and an API client.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use events::{Envelope, EventType, Publisher};
use serde_json::{Value, json};
use test_support::{InProcess, NatsServer, TestDatabase, eventually, http_client, http_status};
use tokio::net::TcpListener;

pub const API_KEY: &str = "test-api-key-0123456789";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

/// A scripted response: status, extra headers, delay before answering, body (a greeting when
/// `None`).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    pub body: Option<Vec<u8>>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            delay: Duration::ZERO,
            body: None,
        }
    }

    pub fn delayed(status: u16, delay: Duration) -> Self {
        Self {
            delay,
            ..Self::status(status)
        }
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    script: VecDeque<Reply>,
    default: Option<Reply>,
}

/// A real HTTP endpoint on 127.0.0.1 that records what it gets and answers as scripted
/// (200 when the script is empty and no default is set).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let app = Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    pub fn always(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(&format!("{n} requests at the receiver"), || async {
            let got = self.received();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut s = state.lock().unwrap();
        s.received.push(Received {
            headers,
            body,
            at: Instant::now(),
        });
        s.script
            .pop_front()
            .or_else(|| s.default.clone())
            .unwrap_or(Reply::status(200))
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let body = reply.body.unwrap_or_else(|| b"receiver says hi".to_vec());
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), body).into_response();
    for (k, v) in reply.headers {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}

/// The environment a dispatcher under test runs with.
pub fn dispatcher_env(
    nats: &NatsServer,
    db: &TestDatabase,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("NATS__URL", nats.url()),
        ("DATABASE__URL", db.url().to_owned()),
        ("API__KEYS", format!("[{API_KEY}]")),
        ("DELIVERY__ALLOW_NETWORKS", "[127.0.0.1/32]".to_owned()),
        ("DELIVERY__RETRY_BASE_MS", "100".to_owned()),
        ("DELIVERY__POLL_INTERVAL_MS", "50".to_owned()),
        ("SHUTDOWN__GRACE_SECS", "5".to_owned()),
        ("LOG__FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("WEBHOOK_DISPATCHER_{k}"), v))
    .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (format!("WEBHOOK_DISPATCHER_{k}"), (*v).to_owned())),
    );
    env
}

/// A dispatcher running in this process (see [`InProcess`]: `addr`, `shutdown`, `task`).
pub struct Dispatcher(InProcess);

impl std::ops::Deref for Dispatcher {
    type Target = InProcess;
    fn deref(&self) -> &InProcess {
        &self.0
    }
}

impl Dispatcher {
    pub async fn start(nats: &NatsServer, db: &TestDatabase, extra: &[(&str, &str)]) -> Self {
        Self(
            InProcess::start(
                &webhook_dispatcher::SPEC,
                dispatcher_env(nats, db, extra),
                webhook_dispatcher::prepare,
                webhook_dispatcher::run,
            )
            .await,
        )
    }

    pub fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.addr),
        }
    }

    /// The value of a metric series on `/metrics` (see [`test_support::metric`]).
    pub async fn metric(&self, name: &str, label: &str) -> f64 {
        test_support::metric(&self.metrics().await, name, label)
    }
}

pub async fn wait_ready(addr: SocketAddr) {
    let client = http_client();
    let url = format!("http://{addr}/readyz");
    eventually("dispatcher ready", || async {
        (http_status(&client, &url).await == Some(200)).then_some(())
    })
    .await;
}

/// The REST API with a valid key.
pub struct Api {
    pub base: String,
}

impl Api {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = http_client();
        let mut req = client
            .request(method.parse().unwrap(), format!("{}{path}", self.base))
            .bearer_auth(API_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a subscription and returns (id, secret).
    pub async fn subscribe(&self, url: &str, patterns: &[&str], extra: Value) -> (String, String) {
        let mut body = json!({"url": url, "event_types": patterns});
        if let Value::Object(map) = extra {
            for (k, v) in map {
                body[k] = v;
            }
        }
        let (status, created) = self
            .call("POST", "/crm/webhook-subscriptions", Some(body))
            .await;
        assert_eq!(status, 201, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["secret"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn deliveries(&self, sub: &str, query: &str) -> Vec<Value> {
        let (status, page) = self
            .call(
                "GET",
                &format!("/crm/webhook-subscriptions/{sub}/deliveries{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["data"].as_array().unwrap().clone()
    }

    /// Waits until the subscription has a delivery matching `pred`.
    pub async fn wait_delivery(&self, sub: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually("a matching delivery", || async {
            self.deliveries(sub, "").await.into_iter().find(|d| pred(d))
        })
        .await
    }
}

pub async fn publisher(nats: &NatsServer) -> Publisher {
    Publisher::new(async_nats::connect(nats.url()).await.unwrap())
}

pub fn event(t: &str, id: i64) -> Envelope {
    Envelope::new(
        EventType::parse(t).unwrap(),
        &id.to_string(),
        json!({"id": id, "status": "completed"}),
    )
    .unwrap()
}

pub fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}
