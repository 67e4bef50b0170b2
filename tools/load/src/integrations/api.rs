//! The third-party API the integration calls: a local axum server in this process.
//!
//! - `GET /users/{userId}/tweets?max_results=N`: 200 with a small JSON body naming the user
//!   (the bearer token is checked, as a real API would);
//! - `GET /`: 200 (the integration's default health check);
//! - `GET /missing`: 404 with a JSON body (an `upstream_status` failure).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The bearer token the integration sends.
pub const TOKEN: &str = "load-integrations-bearer-token";

/// A running API; stopped when dropped.
#[derive(Debug)]
pub struct Api {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Api {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = Router::new()
            .route("/", get(|| async { Json(json!({"healthy": true})) }))
            .route("/users/{user}/tweets", get(tweets))
            .route(
                "/missing",
                get(|| async { (StatusCode::NOT_FOUND, Json(json!({"error": "nope"}))) }),
            );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { addr, task })
    }

    /// `http://<addr>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of the tweets of `user`, as the runner calls it.
    pub fn tweets_url(&self, user: &str) -> String {
        format!("http://{}/users/{user}/tweets?max_results=5", self.addr)
    }
}

async fn tweets(
    Path(user): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> (StatusCode, Json<Value>) {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(TOKEN) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized"})),
        );
    }
    let n = query
        .get("max_results")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1)
        .min(10);
    let tweets: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("{user}-{i}"), "text": "hello"}))
        .collect();
    (
        StatusCode::OK,
        Json(json!({"user": user, "data": tweets, "meta": {"result_count": n}})),
    )
}
