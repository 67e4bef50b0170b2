//! The execution engine end to end: a real NATS server, a real PostgreSQL database, the
//! runner's engine (`commands::start`) in-process, and a local axum server standing in for
//! the third party. Requests are sent over NATS as the gateway sends them.
//!
//! Integrations are handed to the engine through its loader (built from the model types
//! `Endpoint`/`Target`), so these tests do not depend on the REST API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use integrations_runner::commands::{self, EngineConfig};
use integrations_runner::exec::spec::{Auth, EndpointPlan, OAuth2, Secret, Target};
use integrations_runner::exec::{ExecutionConfig, Loader, RateLimitConfig};
use integrations_runner::model::Endpoint;
use integrations_runner::ratelimit::Bucket;
use integrations_runner::usage::UsageConfig;
use serde_json::{Value, json};
use service_runtime::ReadyFlag;
use service_runtime::net::Cidr;
use test_support::{NatsServer, TestDatabase, eventually};
use tokio_util::sync::CancellationToken;

use crate::upstream::Upstream;

const PROJECT: &str = "6958511e8397f2dfa88090d8";
/// A UUID, as the gateway makes one per execution.
const EXECUTION_ID: &str = "0195a8b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn endpoint(v: Value) -> EndpointPlan {
    EndpointPlan::from_model(&serde_json::from_value::<Endpoint>(v).unwrap())
}

fn target(id: &str, base: &str, auth: Auth) -> Target {
    let endpoints: HashMap<String, EndpointPlan> = [
        (
            "getUserTweets",
            json!({"method": "GET", "path": "/users/{userId}/tweets",
                   "query": {"max_results": "{limit}", "fixed": "yes"}}),
        ),
        ("notFound", json!({"method": "GET", "path": "/status/404"})),
        ("broken", json!({"method": "GET", "path": "/status/500"})),
        (
            "slow",
            json!({"method": "GET", "path": "/slow", "timeoutMs": 300}),
        ),
        ("flakyGet", json!({"method": "GET", "path": "/flaky"})),
        (
            "flakyPost",
            json!({"method": "POST", "path": "/flaky", "body": "requestData"}),
        ),
        ("big", json!({"method": "GET", "path": "/big"})),
        ("limited", json!({"method": "GET", "path": "/limited"})),
        ("me", json!({"method": "GET", "path": "/me"})),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), endpoint(v)))
    .collect();
    Target {
        id: id.to_owned(),
        project_id: PROJECT.to_owned(),
        is_active: true,
        base_url: reqwest::Url::parse(base).unwrap(),
        auth,
        endpoints,
        bucket: None,
    }
}

struct Harness {
    _nats_server: NatsServer,
    _db: TestDatabase,
    pool: sqlx::PgPool,
    nats: async_nats::Client,
    upstream: Upstream,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(targets: Vec<Target>, allow_loopback: bool) -> Harness {
    start_with(targets, allow_loopback, |_| {}).await
}

async fn start_with(
    targets: Vec<Target>,
    allow_loopback: bool,
    tweak: impl FnOnce(&mut ExecutionConfig),
) -> Harness {
    let nats_server = NatsServer::start();
    let db = TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    for t in &targets {
        sqlx::query(
            "INSERT INTO integrations (id, project_id, provider, name, base_url, auth, endpoints)
             VALUES ($1, $2, 'test', 'test', $3, '{}', '{}')",
        )
        .bind(&t.id)
        .bind(&t.project_id)
        .bind(t.base_url.as_str())
        .execute(&pool)
        .await
        .unwrap();
    }
    let nats = async_nats::connect(nats_server.url()).await.unwrap();
    let targets: Arc<Mutex<HashMap<String, Target>>> = Arc::new(Mutex::new(
        targets.into_iter().map(|t| (t.id.clone(), t)).collect(),
    ));
    let loader: Loader = Arc::new(move |id: String| {
        let found = targets.lock().unwrap().get(&id).cloned();
        Box::pin(async move { Ok(found) })
    });
    let mut execution = ExecutionConfig {
        allow_networks: if allow_loopback {
            vec![Cidr::parse("127.0.0.1/32").unwrap()]
        } else {
            Vec::new()
        },
        retry_base_ms: 20,
        ..ExecutionConfig::default()
    };
    tweak(&mut execution);
    let config = EngineConfig {
        execution,
        usage: UsageConfig {
            flush_ms: 100,
            ..UsageConfig::default()
        },
        rate_limit: RateLimitConfig::default(),
        grace: Duration::from_secs(5),
    };
    let shutdown = CancellationToken::new();
    let migrated = ReadyFlag::default();
    migrated.set();
    let runner_nats = async_nats::connect(nats_server.url()).await.unwrap();
    commands::start(
        config,
        pool.clone(),
        runner_nats,
        migrated,
        loader,
        shutdown.clone(),
    )
    .unwrap();
    let harness = Harness {
        _nats_server: nats_server,
        _db: db,
        pool,
        nats,
        upstream: Upstream::start().await,
        shutdown,
    };
    // Ready once the runner answers (its subscription is in place).
    eventually("runner answers", || async {
        harness.status("nope").await.get("error").map(|_| ())
    })
    .await;
    harness
}

/// Panics unless `value` matches `proto/schemas/<name>`: what the runner really replies is
/// the published contract.
fn assert_schema(name: &str, value: &Value) {
    let path = format!("{}/../../proto/schemas/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&raw).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {value}\n{errors:#?}");
}

/// The request and reply schemas of a command subject.
fn command_schemas(subject: &str) -> Option<(&'static str, &'static str)> {
    match subject {
        events::subject::INTEGRATION_EXECUTE => Some((
            "integration-execute-request.schema.json",
            "integration-execute-reply.schema.json",
        )),
        events::subject::INTEGRATION_STATUS => Some((
            "integration-status-request.schema.json",
            "integration-status-reply.schema.json",
        )),
        _ => None,
    }
}

impl Harness {
    /// Sends a command as the gateway does; the request and every reply are checked against
    /// the published schemas.
    async fn request(&self, subject: &str, body: Value) -> Value {
        let schemas = command_schemas(subject);
        if let Some((request, _)) = schemas {
            assert_schema(request, &body);
        }
        let reply = self.request_unchecked(subject, body).await;
        if let Some((_, schema)) = schemas
            && reply != json!({})
        {
            assert_schema(schema, &reply);
        }
        reply
    }

    async fn request_unchecked(&self, subject: &str, body: Value) -> Value {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            self.nats.request(
                subject.to_owned(),
                serde_json::to_vec(&body).unwrap().into(),
            ),
        )
        .await
        .expect("reply in time");
        match reply {
            Ok(m) => serde_json::from_slice(&m.payload).unwrap(),
            Err(_) => json!({}),
        }
    }

    async fn execute(&self, id: &str, endpoint: &str, params: Value) -> Value {
        self.request(
            events::subject::INTEGRATION_EXECUTE,
            json!({"executionId": EXECUTION_ID, "projectId": PROJECT, "integrationId": id,
                   "endpoint": endpoint, "params": params, "requestData": {"n": 1},
                   "mode": "execute", "deadlineMs": 5000}),
        )
        .await
    }

    async fn status(&self, id: &str) -> Value {
        self.request(
            events::subject::INTEGRATION_STATUS,
            json!({"projectId": PROJECT, "integrationId": id}),
        )
        .await
    }
}

fn code(reply: &Value) -> &str {
    reply["error"]["code"].as_str().unwrap_or("<ok>")
}

async fn harness(auth: Auth) -> (Harness, &'static str) {
    // The upstream's port is known only once it runs: start it first, then the runner.
    let upstream = Upstream::start().await;
    let mut h = start(vec![target("int-1", &upstream.base(), auth)], true).await;
    h.upstream = upstream;
    (h, "int-1")
}

#[tokio::test]
async fn success_fills_path_and_query_and_sends_bearer() {
    let (h, id) = harness(Auth::Bearer(Secret("sekret".into()))).await;
    let reply = h
        .execute(id, "getUserTweets", json!({"userId": "123", "limit": 5}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["status"], 200);
    assert_eq!(reply["data"]["user"], "123");
    assert!(reply["durationMs"].is_u64());
    let seen = h.upstream.seen("/users/tweets");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer sekret"));
    assert_eq!(seen[0].query["max_results"], "5");
    assert_eq!(seen[0].query["fixed"], "yes");
}

#[tokio::test]
async fn errors_have_their_codes() {
    let (h, id) = harness(Auth::None).await;
    let r = h.execute(id, "notFound", json!({})).await;
    assert_eq!(
        (code(&r), r["error"]["status"].as_u64()),
        ("upstream_status", Some(404)),
        "{r}"
    );
    assert_eq!(r["error"]["data"]["error"], "nope");
    let r = h.execute(id, "broken", json!({})).await;
    assert_eq!(
        (code(&r), r["error"]["status"].as_u64()),
        ("upstream_status", Some(500))
    );
    let r = h.execute(id, "noSuchEndpoint", json!({})).await;
    assert_eq!(code(&r), "unknown_endpoint");
    let r = h.execute(id, "getUserTweets", json!({})).await;
    assert_eq!(
        (code(&r), r["error"]["field"].as_str()),
        ("invalid_params", Some("params.userId"))
    );
    let r = h
        .execute(id, "getUserTweets", json!({"userId": ["a"]}))
        .await;
    assert_eq!(code(&r), "invalid_params");
    let r = h
        .execute("other", "getUserTweets", json!({"userId": "1"}))
        .await;
    assert_eq!(code(&r), "not_found");
    let r = h.execute(id, "slow", json!({})).await;
    assert_eq!(code(&r), "timeout", "{r}");
    let r = h.execute(id, "big", json!({})).await;
    assert_eq!(code(&r), "response_too_large", "{r}");
    // Not the request schema's shape, on purpose; the reply still is the reply's.
    let r = h
        .request_unchecked(
            events::subject::INTEGRATION_EXECUTE,
            json!({"projectId": PROJECT}),
        )
        .await;
    assert_eq!(code(&r), "invalid_payload", "{r}");
    assert_schema("integration-execute-reply.schema.json", &r);
}

#[tokio::test]
async fn get_is_retried_on_503_and_post_is_not() {
    let (h, id) = harness(Auth::None).await;
    let r = h.execute(id, "flakyGet", json!({})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(h.upstream.seen("/flaky").len(), 2);

    let upstream = Upstream::start().await;
    let h2 = start(vec![target("int-2", &upstream.base(), Auth::None)], true).await;
    let r = h2.execute("int-2", "flakyPost", json!({})).await;
    assert_eq!(
        (code(&r), r["error"]["status"].as_u64()),
        ("upstream_status", Some(503)),
        "{r}"
    );
    let seen = upstream.seen("/flaky");
    assert_eq!(seen.len(), 1, "a POST is sent exactly once");
    assert_eq!(seen[0].body, r#"{"n":1}"#);
}

#[tokio::test]
async fn loopback_is_refused_without_the_allow_list() {
    let upstream = Upstream::start().await;
    let h = start(vec![target("int-1", &upstream.base(), Auth::None)], false).await;
    let r = h
        .execute("int-1", "getUserTweets", json!({"userId": "1"}))
        .await;
    assert_eq!(code(&r), "destination_refused", "{r}");
    assert!(upstream.seen("/users/tweets").is_empty());
    let local = start(
        vec![target(
            "int-1",
            &format!("http://localhost:{}", upstream.addr.port()),
            Auth::None,
        )],
        false,
    )
    .await;
    let r = local
        .execute("int-1", "getUserTweets", json!({"userId": "1"}))
        .await;
    assert_eq!(
        code(&r),
        "destination_refused",
        "a name resolving to loopback too: {r}"
    );
}

#[tokio::test]
async fn upstream_429_blocks_and_status_reports_it() {
    let (h, id) = harness(Auth::None).await;
    let r = h.execute(id, "limited", json!({})).await;
    assert_eq!(code(&r), "rate_limited", "{r}");
    let after = r["error"]["retryAfterMs"].as_u64().unwrap();
    assert!((2_000..=3_000).contains(&after), "{after}");
    // Fails fast from then on, without calling the upstream.
    let r = h.execute(id, "getUserTweets", json!({"userId": "1"})).await;
    assert_eq!(code(&r), "rate_limited");
    assert_eq!(h.upstream.seen("/limited").len(), 1);
    assert!(h.upstream.seen("/users/tweets").is_empty());
    let s = h.status(id).await;
    let rl = &s["status"]["rateLimit"];
    assert_eq!(rl["source"], "upstream", "{s}");
    assert_eq!(rl["remaining"], 0);
    assert_eq!(rl["limit"], 100);
    let wait = rl["retryAfterMs"].as_u64().unwrap();
    assert!((1_000..=3_000).contains(&wait), "{wait}");
    // Another replica reading the table sees the block too.
    let (blocked,): (bool,) = sqlx::query_as(
        "SELECT blocked_until > now() FROM integration_rate_state WHERE integration_id = $1",
    )
    .bind(id)
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert!(blocked);
}

#[tokio::test]
async fn configured_bucket_is_shared_and_fails_fast() {
    let upstream = Upstream::start().await;
    let mut t = target("int-1", &upstream.base(), Auth::None);
    t.bucket = Some(Bucket {
        requests: 2,
        per_seconds: 60,
    });
    let h = start(vec![t], true).await;
    let s = h.status("int-1").await;
    assert_eq!(s["status"]["rateLimit"]["source"], "configured", "{s}");
    assert_eq!(s["status"]["rateLimit"]["remaining"], 2);
    for _ in 0..2 {
        let r = h
            .execute("int-1", "getUserTweets", json!({"userId": "1"}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let r = h
        .execute("int-1", "getUserTweets", json!({"userId": "1"}))
        .await;
    assert_eq!(code(&r), "rate_limited", "{r}");
    let after = r["error"]["retryAfterMs"].as_u64().unwrap();
    assert!(
        (25_000..=30_000).contains(&after),
        "one token per 30 s: {after}"
    );
    assert_eq!(h.upstream_calls(&upstream), 2);
    let s = h.status("int-1").await;
    assert_eq!(s["status"]["rateLimit"]["remaining"], 0, "{s}");
    assert!(s["status"]["rateLimit"]["retryAfterMs"].as_u64().unwrap() > 20_000);
}

impl Harness {
    fn upstream_calls(&self, upstream: &Upstream) -> usize {
        upstream.seen("/users/tweets").len()
    }
}

#[tokio::test]
async fn oauth2_fetches_one_token_for_many_calls() {
    let upstream = Upstream::start().await;
    let auth = Auth::OAuth2(OAuth2 {
        token_url: reqwest::Url::parse(&format!("{}/oauth/token", upstream.base())).unwrap(),
        client_id: "ci-1".into(),
        client_secret: Secret("cs-1".into()),
        scope: Some("read".into()),
        audience: None,
    });
    let h = start(vec![target("int-1", &upstream.base(), auth)], true).await;
    let calls = (0..5).map(|_| h.execute("int-1", "me", json!({})));
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r["ok"], true, "{r}");
    }
    assert_eq!(upstream.tokens_issued(), 1);
    assert_eq!(upstream.seen("/oauth/token").len(), 1);
    assert!(upstream.seen("/oauth/token")[0].body.contains("scope=read"));
}

#[tokio::test]
async fn usage_is_counted_and_published() {
    let (h, id) = harness(Auth::None).await;
    let mut usage = h
        .nats
        .subscribe(events::subject::INTEGRATION_USAGE)
        .await
        .unwrap();
    h.nats.flush().await.unwrap();
    for _ in 0..3 {
        h.execute(id, "getUserTweets", json!({"userId": "1"})).await;
    }
    let r = h.execute(id, "notFound", json!({})).await;
    assert_eq!(code(&r), "upstream_status");
    let status = eventually("usage flushed", || async {
        let s = h.status(id).await;
        (s["status"]["usage"]["total"]["calls"] == 4).then_some(s)
    })
    .await;
    let u = &status["status"]["usage"];
    assert_eq!(u["total"]["successes"], 3, "{status}");
    assert_eq!(u["total"]["failures"], 1);
    assert_eq!(u["today"]["calls"], 4);
    assert_eq!(u["endpoints"]["getUserTweets"]["calls"], 3);
    assert_eq!(u["endpoints"]["notFound"]["failures"], 1);
    assert_eq!(status["projectId"], PROJECT);
    assert_eq!(status["status"]["isActive"], true);
    assert!(
        status["status"]["lastUsed"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(status["status"]["rateLimit"], Value::Null);
    let msg = tokio::time::timeout(Duration::from_secs(5), usage.next())
        .await
        .unwrap()
        .unwrap();
    let pushed: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(pushed["integrationId"], id);
    assert_eq!(pushed["projectId"], PROJECT);
    assert!(pushed["usage"]["total"]["calls"].as_i64().unwrap() >= 1);
    assert!(pushed["lastUsed"].is_string() && pushed["timestamp"].is_string());
    assert_schema("integration-usage.schema.json", &pushed);
}

#[tokio::test]
async fn stored_integrations_execute_with_their_decrypted_secrets() {
    use integrations_runner::crypto::{CryptoConfig, KeyConfig, Keyring};
    use integrations_runner::model::{
        AuthSecret, AuthSpec, HttpUrl, Id, Name, SecretString, Secrets,
    };
    use integrations_runner::store::{NewIntegration, Store};

    let upstream = Upstream::start().await;
    let nats_server = NatsServer::start();
    let db = TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    let keyring = Keyring::from_config(&CryptoConfig {
        keys: vec![KeyConfig {
            id: "k1".into(),
            key: "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        }],
        active_key_id: String::new(),
    })
    .unwrap();
    let store = Store::new(pool.clone(), keyring);
    let id = Id::parse("64b2c3d4e5f6789012345678").unwrap();
    let endpoints = [(
        Name::parse("getUserTweets").unwrap(),
        serde_json::from_value::<Endpoint>(json!({"method": "GET",
            "path": "/users/{userId}/tweets", "query": {"max_results": "{limit}"}}))
        .unwrap(),
    )]
    .into_iter()
    .collect();
    store
        .create(&NewIntegration {
            id: id.clone(),
            project_id: Id::parse(PROJECT).unwrap(),
            provider: "twitter".into(),
            name: "Twitter".into(),
            base_url: HttpUrl::parse(&upstream.base()).unwrap(),
            auth: serde_json::from_value::<AuthSpec>(json!({"type": "bearer"})).unwrap(),
            endpoints,
            rate_limit: serde_json::from_value(json!({"requests": 1, "perSeconds": 3600})).unwrap(),
            webhook: None,
            secrets: Secrets {
                auth: Some(AuthSecret::Token {
                    token: SecretString::new("stored-token"),
                }),
                webhook: None,
            },
            is_active: true,
        })
        .await
        .unwrap()
        .unwrap();

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let migrated = ReadyFlag::default();
    migrated.set();
    commands::start(
        EngineConfig {
            execution: ExecutionConfig {
                allow_networks: vec![Cidr::parse("127.0.0.1/32").unwrap()],
                ..ExecutionConfig::default()
            },
            usage: UsageConfig::default(),
            rate_limit: RateLimitConfig::default(),
            grace: Duration::from_secs(5),
        },
        pool.clone(),
        async_nats::connect(nats_server.url()).await.unwrap(),
        migrated,
        integrations_runner::exec::store_loader(store),
        shutdown.clone(),
    )
    .unwrap();
    let client = async_nats::connect(nats_server.url()).await.unwrap();
    let ask = |subject: &'static str, body: Value| {
        let client = client.clone();
        async move {
            match client
                .request(subject, serde_json::to_vec(&body).unwrap().into())
                .await
            {
                Ok(m) => Some(serde_json::from_slice::<Value>(&m.payload).unwrap()),
                Err(_) => None,
            }
        }
    };
    let execute = json!({"projectId": PROJECT, "integrationId": id.as_str(),
        "endpoint": "getUserTweets", "params": {"userId": "123"}, "deadlineMs": 5000});
    let reply = eventually("runner answers", || {
        ask(events::subject::INTEGRATION_EXECUTE, execute.clone())
    })
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        upstream.seen("/users/tweets")[0].authorization.as_deref(),
        Some("Bearer stored-token")
    );
    // The stored limit (1 per hour) is enforced.
    let again = ask(events::subject::INTEGRATION_EXECUTE, execute.clone())
        .await
        .unwrap();
    assert_eq!(code(&again), "rate_limited", "{again}");
    // The gateway's join check: another project does not see it.
    let other = ask(
        events::subject::INTEGRATION_STATUS,
        json!({"projectId": "someoneelse", "integrationId": id.as_str()}),
    )
    .await
    .unwrap();
    assert_eq!(code(&other), "not_found");
    let status = ask(
        events::subject::INTEGRATION_STATUS,
        json!({"projectId": PROJECT, "integrationId": id.as_str()}),
    )
    .await
    .unwrap();
    assert_eq!(
        status["status"]["rateLimit"]["source"], "configured",
        "{status}"
    );
    assert_eq!(status["status"]["rateLimit"]["limit"], 1);
}

#[tokio::test]
async fn busy_past_the_in_flight_bound_and_in_flight_work_finishes_on_shutdown() {
    let upstream = Upstream::start().await;
    let h = start_with(
        vec![target("int-1", &upstream.base(), Auth::None)],
        true,
        |c| c.max_in_flight = 1,
    )
    .await;
    let slow = h.execute("int-1", "slow", json!({}));
    tokio::pin!(slow);
    // The slow execution holds the only slot once the upstream has it.
    let waiting = async {
        eventually("slow request upstream", || async {
            (!upstream.seen("/slow").is_empty()).then_some(())
        })
        .await;
        let r = h
            .execute("int-1", "getUserTweets", json!({"userId": "1"}))
            .await;
        assert_eq!(code(&r), "busy", "{r}");
        // Stop taking work: the in-flight execution still gets its reply.
        h.shutdown.cancel();
    };
    let (r, ()) = tokio::join!(&mut slow, waiting);
    assert_eq!(code(&r), "timeout", "{r}");
    assert!(upstream.seen("/users/tweets").is_empty());
}
