//! A local stand-in for a third-party API, on 127.0.0.1:0, that records what it was sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// One request the upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: HashMap<String, String>,
    pub authorization: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, Default)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    tokens_issued: Arc<Mutex<u32>>,
}

/// The running upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Shared,
}

impl Upstream {
    pub async fn start() -> Self {
        let shared = Shared::default();
        let app = Router::new()
            .route("/users/{id}/tweets", get(tweets))
            .route("/status/{code}", get(status))
            .route("/slow", get(slow))
            .route("/flaky", get(flaky).post(flaky))
            .route("/big", get(big))
            .route("/limited", get(limited))
            .route("/oauth/token", post(token))
            .route("/me", get(me))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests seen on `path`.
    pub fn seen(&self, path: &str) -> Vec<Seen> {
        self.shared
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    pub fn tokens_issued(&self) -> u32 {
        *self.shared.tokens_issued.lock().unwrap()
    }
}

fn record(
    s: &Shared,
    path: String,
    query: HashMap<String, String>,
    headers: &HeaderMap,
    body: String,
) -> usize {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut seen = s.seen.lock().unwrap();
    seen.push(Seen {
        authorization: header("authorization"),
        path: path.clone(),
        query,
        body,
    });
    seen.iter().filter(|x| x.path == path).count()
}

async fn tweets(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(
        &s,
        "/users/tweets".into(),
        q.clone(),
        &headers,
        String::new(),
    );
    axum::Json(json!({"user": id, "query": q, "tweets": [{"id": "t1"}]}))
}

async fn status(State(s): State<Shared>, Path(code): Path<u16>, headers: HeaderMap) -> Response {
    record(
        &s,
        format!("/status/{code}"),
        HashMap::new(),
        &headers,
        String::new(),
    );
    let code = StatusCode::from_u16(code).unwrap();
    (
        code,
        axum::Json(json!({"error": "nope", "code": code.as_u16()})),
    )
        .into_response()
}

async fn slow(State(s): State<Shared>, headers: HeaderMap) -> &'static str {
    record(&s, "/slow".into(), HashMap::new(), &headers, String::new());
    tokio::time::sleep(Duration::from_secs(10)).await;
    "late"
}

/// 503 on the first call, 200 afterwards.
async fn flaky(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let n = record(&s, "/flaky".into(), HashMap::new(), &headers, body);
    if n == 1 {
        (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
    } else {
        axum::Json(json!({"attempt": n})).into_response()
    }
}

/// 2 MiB without a Content-Length (streamed).
async fn big(State(s): State<Shared>, headers: HeaderMap) -> Response {
    record(&s, "/big".into(), HashMap::new(), &headers, String::new());
    let chunks = (0..32).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]));
    Body::from_stream(futures_util::stream::iter(chunks)).into_response()
}

async fn limited(State(s): State<Shared>, headers: HeaderMap) -> Response {
    record(
        &s,
        "/limited".into(),
        HashMap::new(),
        &headers,
        String::new(),
    );
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            ("retry-after", "3"),
            ("x-ratelimit-limit", "100"),
            ("x-ratelimit-remaining", "0"),
        ],
        "slow down",
    )
        .into_response()
}

async fn token(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    record(
        &s,
        "/oauth/token".into(),
        HashMap::new(),
        &headers,
        body.clone(),
    );
    if !body.contains("grant_type=client_credentials") || !body.contains("client_secret=cs-1") {
        return (StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    let mut n = s.tokens_issued.lock().unwrap();
    *n += 1;
    axum::Json(
        json!({"access_token": format!("tok-{n}"), "token_type": "bearer", "expires_in": 3600}),
    )
    .into_response()
}

async fn me(State(s): State<Shared>, headers: HeaderMap) -> Response {
    record(&s, "/me".into(), HashMap::new(), &headers, String::new());
    let expected = format!("Bearer tok-{}", *s.tokens_issued.lock().unwrap());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str()) {
        axum::Json(json!({"me": true})).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, axum::Json(Value::Null)).into_response()
    }
}
