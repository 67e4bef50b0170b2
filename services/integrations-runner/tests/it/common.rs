//! The runner in process, its environment, and an API client.
#![allow(dead_code)]

use base64::Engine;
use serde_json::Value;
use test_support::{InProcess, NatsServer, TestDatabase, http_client};

pub const API_KEY: &str = "test-api-key-0123456789";
pub const PREFIX: &str = "INTEGRATIONS_RUNNER_";

/// `crypto.keys` holding `(id, byte)` keys of 32 equal bytes.
pub fn keys(keys: &[(&str, u8)]) -> String {
    let items: Vec<String> = keys
        .iter()
        .map(|(id, b)| {
            let key = base64::engine::general_purpose::STANDARD.encode([*b; 32]);
            format!("{{id = \"{id}\", key = \"{key}\"}}")
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// The environment a runner under test runs with (`extra` wins).
pub fn runner_env(
    nats: &NatsServer,
    db: &TestDatabase,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("NATS__URL", nats.url()),
        ("DATABASE__URL", db.url().to_owned()),
        ("API__KEYS", format!("[{API_KEY}]")),
        ("CRYPTO__KEYS", keys(&[("k1", 1)])),
        ("SHUTDOWN__GRACE_SECS", "5".to_owned()),
        ("LOG__FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
    .map(|(k, v)| (format!("{PREFIX}{k}"), v))
    .collect();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.clone())),
    );
    env
}

/// A runner in this process.
pub struct Runner(pub InProcess);

impl Runner {
    pub async fn start(nats: &NatsServer, db: &TestDatabase, extra: &[(&str, String)]) -> Self {
        Self(
            InProcess::start(
                &integrations_runner::SPEC,
                runner_env(nats, db, extra),
                |_: &service_runtime::Settings<integrations_runner::Config>| Ok(()),
                |settings, (), listener, shutdown| {
                    integrations_runner::run(settings, listener, shutdown)
                },
            )
            .await,
        )
    }

    pub fn api(&self) -> Api {
        Api {
            base: format!("http://{}", self.0.addr),
            client: http_client(),
            key: Some(API_KEY.to_owned()),
        }
    }

    /// Stops the runner and waits for it.
    pub async fn stop(mut self) {
        self.0.shutdown.cancel();
        let _ = (&mut self.0.task).await;
    }
}

/// A REST client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub key: Option<String>,
}

impl Api {
    pub fn anonymous(&self) -> Self {
        Self {
            key: None,
            ..self.clone()
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("POST", path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("PATCH", path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send("PUT", path, Some(body)).await
    }
}

pub const PROJECT: &str = "6958511e8397f2dfa88090d8";
pub const TOKEN: &str = "tw-secret-bearer-token-9f8e7d";

/// The seed's Twitter integration, with a bearer token.
pub fn twitter(id: &str) -> Value {
    serde_json::json!({
        "id": id,
        "projectId": PROJECT,
        "provider": "twitter",
        "name": "Twitter",
        "baseUrl": "https://api.twitter.com",
        "auth": {"type": "bearer", "token": TOKEN},
        "endpoints": {
            "getUserTweets": {"method": "GET", "path": "/2/users/{userId}/tweets",
                "query": {"max_results": "{limit}"}}
        },
        "rateLimit": {"requests": 100, "perSeconds": 60},
        "webhook": {"scheme": "github", "secret": "gh-webhook-secret-xyz"}
    })
}
