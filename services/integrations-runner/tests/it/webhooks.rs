//! Inbound provider webhooks end to end: a real NATS server (JetStream), the runner's webhook
//! endpoint and mirror, providers' signatures computed in the test with the shared vectors'
//! secrets and fresh timestamps.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::{NatsServer, eventually, http_client};
use webhook_signatures::{github, standard, stripe};

use integrations_runner::webhooks::{self, WebhooksConfig};

fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vectors.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn stripe_secret() -> String {
    vectors()["stripe"][0]["secret"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn stripe_body() -> String {
    vectors()["stripe"][0]["body"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

mod harness {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use futures_util::future::BoxFuture;
    use integrations_runner::webhooks::{LoadError, TargetSource, WebhookTarget};

    /// Targets by integration id.
    #[derive(Default)]
    pub struct Targets(pub Mutex<HashMap<String, WebhookTarget>>);

    impl TargetSource for Targets {
        fn load<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<WebhookTarget>, LoadError>> {
            let found = self.0.lock().unwrap().get(id).cloned();
            Box::pin(async move { Ok(found) })
        }
    }
}

struct Runner {
    nats: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    base: String,
    targets: Arc<harness::Targets>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Runner {
    /// Targets from an in-memory map ([`Runner::integration`]).
    async fn start(config: WebhooksConfig) -> Self {
        let targets = Arc::new(harness::Targets::default());
        let mut runner = Self::start_with(config, targets.clone()).await;
        runner.targets = targets;
        runner
    }

    /// Targets from `source` (the integrations store in [`store_backed`]).
    async fn start_with(config: WebhooksConfig, source: Arc<dyn webhooks::TargetSource>) -> Self {
        let nats = NatsServer::start();
        let mut common = service_runtime::CommonConfig::with_port(0);
        common.nats.url = nats.url();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut ctx = service_runtime::ServiceContext::start(
            "integrations-runner",
            &common,
            None,
            shutdown.clone(),
        )
        .await
        .unwrap();
        webhooks::start_mirror(&mut ctx, &config);
        let targets = Arc::new(harness::Targets::default());
        let state = webhooks::WebhookState::new(source, ctx.jetstream.clone(), config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(ctx.serve(listener, webhooks::router(state)));
        let http = http_client();
        let ready = format!("{base}/readyz");
        eventually("runner ready", || async {
            (test_support::http_status(&http, &ready).await == Some(200)).then_some(())
        })
        .await;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        Self {
            nats,
            client,
            js,
            base,
            targets,
            shutdown,
        }
    }

    /// An active integration of `provider` whose webhooks use `verifier`.
    fn integration(&self, id: &str, provider: &str, verifier: webhooks::Verifier) {
        self.targets.0.lock().unwrap().insert(
            id.to_owned(),
            webhooks::WebhookTarget {
                integration_id: id.to_owned(),
                project_id: "6958511e8397f2dfa88090d8".to_owned(),
                provider: provider.to_lowercase(),
                verifier,
            },
        );
    }

    fn stripe(&self, id: &str) {
        self.integration(
            id,
            "Stripe",
            webhooks::Verifier::Stripe {
                secret: webhooks::SecretBytes(stripe_secret().into_bytes()),
                tolerance: webhook_signatures::Tolerance::DEFAULT,
            },
        );
    }

    async fn post(
        &self,
        id: &str,
        headers: &[(&str, String)],
        body: impl Into<Vec<u8>>,
    ) -> (u16, Value) {
        let mut request = http_client()
            .post(format!("{}/integrations/{id}/webhooks", self.base))
            .header("content-type", "application/json")
            .body(body.into());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// A Stripe delivery signed now with the vector's secret.
    async fn post_stripe(&self, id: &str, body: &str) -> (u16, Value) {
        let header = stripe::sign(stripe_secret().as_bytes(), now(), body.as_bytes());
        self.post(id, &[("stripe-signature", header)], body).await
    }

    async fn stored(&self) -> u64 {
        let mut stream = self
            .js
            .get_stream(events::subject::INTEGRATION_WEBHOOKS_STREAM)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }

    async fn mirror(&self) -> async_nats::Subscriber {
        let sub = self
            .client
            .subscribe(events::subject::INTEGRATION_WEBHOOK)
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        sub
    }
}

async fn next_mirrored(sub: &mut async_nats::Subscriber) -> Value {
    let message = tokio::time::timeout(test_support::WAIT, sub.next())
        .await
        .expect("a mirrored webhook")
        .unwrap();
    serde_json::from_slice(&message.payload).unwrap()
}

const ID: &str = "64b2c3d4e5f6789012345678";

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_signed_stripe_webhook_is_stored_before_the_answer_then_mirrored() {
    let runner = Runner::start(WebhooksConfig::default()).await;
    runner.stripe(ID);
    let mut mirrored = runner.mirror().await;
    let body = stripe_body();

    let (status, answer) = runner.post_stripe(ID, &body).await;
    assert_eq!(
        (status, answer),
        (200, json!({"received": true, "duplicate": false}))
    );
    assert_eq!(runner.stored().await, 1, "in the stream before the answer");

    let m = next_mirrored(&mut mirrored).await;
    assert_eq!(m["event"], "stripe.invoice.paid");
    assert_eq!(m["integrationId"], ID);
    assert_eq!(m["projectId"], "6958511e8397f2dfa88090d8");
    assert_eq!(m["data"], serde_json::from_str::<Value>(&body).unwrap());
    let ts = m["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "RFC 3339 with milliseconds: {ts}"
    );
}

#[tokio::test]
async fn bad_signatures_are_refused_and_not_mirrored() {
    let runner = Runner::start(WebhooksConfig::default()).await;
    runner.stripe(ID);
    let mut mirrored = runner.mirror().await;
    let body = stripe_body();
    let t = now();

    let wrong_secret = stripe::sign(b"whsec_not_the_secret", t, body.as_bytes());
    let (status, answer) = runner
        .post(ID, &[("stripe-signature", wrong_secret)], body.clone())
        .await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"]["code"], "invalid_signature");

    let signed = stripe::sign(stripe_secret().as_bytes(), t, body.as_bytes());
    let tampered = body.replace("invoice.paid", "invoice.paye");
    let (status, answer) = runner
        .post(ID, &[("stripe-signature", signed)], tampered)
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("invalid_signature"))
    );

    let (status, answer) = runner
        .post(
            ID,
            &[("stripe-signature", "t=1,v1=zz".into())],
            body.clone(),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("invalid_signature"))
    );

    let (status, answer) = runner.post(ID, &[], body.clone()).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("missing_signature"))
    );

    let stale = stripe::sign(stripe_secret().as_bytes(), t - 301, body.as_bytes());
    let (status, answer) = runner
        .post(ID, &[("stripe-signature", stale)], body.clone())
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("stale_timestamp"))
    );

    // Well past the tolerance: the runner reads its clock later than `t`, and a second that
    // turns in between brought `t + 301` back within 300 s (seen once in CI).
    let ahead = stripe::sign(stripe_secret().as_bytes(), t + 360, body.as_bytes());
    let (status, answer) = runner
        .post(ID, &[("stripe-signature", ahead)], body.clone())
        .await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("stale_timestamp"))
    );

    assert_eq!(runner.stored().await, 0);
    // Nothing was mirrored: the first message the subscriber sees is the next valid webhook.
    let valid = r#"{"id":"evt_after","type":"charge.succeeded"}"#;
    assert_eq!(runner.post_stripe(ID, valid).await.0, 200);
    assert_eq!(
        next_mirrored(&mut mirrored).await["event"],
        "stripe.charge.succeeded"
    );
}

#[tokio::test]
async fn a_replayed_delivery_is_a_duplicate_and_mirrored_once() {
    let runner = Runner::start(WebhooksConfig::default()).await;
    runner.stripe(ID);
    let mut mirrored = runner.mirror().await;
    let body = stripe_body();
    let header = stripe::sign(stripe_secret().as_bytes(), now(), body.as_bytes());

    let first = runner
        .post(ID, &[("stripe-signature", header.clone())], body.clone())
        .await;
    assert_eq!(first, (200, json!({"received": true, "duplicate": false})));
    // The very same request again (a replay), then a provider retry re-signed later: both
    // carry the same event id.
    let replay = runner
        .post(ID, &[("stripe-signature", header)], body.clone())
        .await;
    assert_eq!(replay, (200, json!({"received": true, "duplicate": true})));
    let retry = runner.post_stripe(ID, &body).await;
    assert_eq!(retry, (200, json!({"received": true, "duplicate": true})));
    assert_eq!(runner.stored().await, 1);

    assert_eq!(next_mirrored(&mut mirrored).await["data"]["id"], "evt_1");
    let other = r#"{"id":"evt_2","type":"invoice.paid"}"#;
    assert_eq!(runner.post_stripe(ID, other).await.0, 200);
    assert_eq!(
        next_mirrored(&mut mirrored).await["data"]["id"],
        "evt_2",
        "evt_1 was mirrored once"
    );
}

#[tokio::test]
async fn github_and_standard_webhooks_verify_and_are_named() {
    let runner = Runner::start(WebhooksConfig::default()).await;
    let v = vectors();
    let gh_secret = v["github"][0]["secret"].as_str().unwrap().to_owned();
    runner.integration(
        "gh1",
        "GitHub",
        webhooks::Verifier::Github {
            secret: webhooks::SecretBytes(gh_secret.clone().into_bytes()),
        },
    );
    let sw = &v["standard_webhooks"][1];
    let key = standard::SigningKey::parse(sw["secret"].as_str().unwrap()).unwrap();
    runner.integration(
        "sw1",
        "Acme",
        webhooks::Verifier::Standard {
            key: key.clone(),
            tolerance: webhook_signatures::Tolerance::DEFAULT,
        },
    );
    let mut mirrored = runner.mirror().await;

    let body = r#"{"action":"opened","issue":{"number":7}}"#;
    let headers = [
        (
            "x-hub-signature-256",
            github::sign(gh_secret.as_bytes(), body.as_bytes()),
        ),
        ("x-github-event", "issues".to_owned()),
        (
            "x-github-delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
        ),
    ];
    assert_eq!(runner.post("gh1", &headers, body).await.0, 200);
    let m = next_mirrored(&mut mirrored).await;
    assert_eq!(m["event"], "github.issues.opened");
    assert_eq!(m["integrationId"], "gh1");
    assert_eq!(m["data"]["issue"]["number"], 7);
    let replay = runner.post("gh1", &headers, body).await;
    assert_eq!(replay, (200, json!({"received": true, "duplicate": true})));

    let unsigned_event = [headers[0].clone(), headers[2].clone()];
    let (status, answer) = runner.post("gh1", &unsigned_event, body).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (400, json!("missing_event_type"))
    );

    let body = sw["body"].as_str().unwrap();
    let id = sw["id"].as_str().unwrap();
    let t = now();
    let headers = [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", t.to_string()),
        (
            "webhook-signature",
            format!("v1,AAAA {}", standard::sign(&key, id, t, body.as_bytes())),
        ),
    ];
    assert_eq!(runner.post("sw1", &headers, body).await.0, 200);
    let m = next_mirrored(&mut mirrored).await;
    assert_eq!(m["event"], "acme.deal.status_changed");
    assert_eq!(m["data"]["data"]["status"], "completed");

    let stale = [
        headers[0].clone(),
        ("webhook-timestamp", (t - 400).to_string()),
        (
            "webhook-signature",
            standard::sign(&key, id, t - 400, body.as_bytes()),
        ),
    ];
    let (status, answer) = runner.post("sw1", &stale, body).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (401, json!("stale_timestamp"))
    );
    assert_eq!(runner.stored().await, 2);
}

#[tokio::test]
async fn oversized_bodies_and_unknown_integrations_are_refused_first() {
    let config = WebhooksConfig {
        max_body_bytes: 1024,
        ..WebhooksConfig::default()
    };
    let runner = Runner::start(config).await;
    runner.stripe(ID);
    let big = format!(
        r#"{{"id":"evt_big","type":"invoice.paid","pad":"{}"}}"#,
        "x".repeat(1024)
    );
    let (status, answer) = runner.post_stripe(ID, &big).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );
    // Before the lookup: an unknown integration gets 413 too, not 404.
    assert_eq!(runner.post_stripe("unknown", &big).await.0, 413);

    for id in ["unknown", "a.b", "has%20space"] {
        let (status, answer) = runner.post_stripe(id, &stripe_body()).await;
        assert_eq!(
            (status, answer["error"]["code"].clone()),
            (404, json!("not_found")),
            "{id}"
        );
    }
    assert_eq!(runner.stored().await, 0);
}

#[tokio::test]
async fn a_stored_message_that_cannot_be_read_is_terminated_not_retried() {
    let runner = Runner::start(WebhooksConfig::default()).await;
    runner.stripe(ID);
    let mut mirrored = runner.mirror().await;
    runner
        .js
        .publish("integrations.webhooks.poison", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(runner.post_stripe(ID, &stripe_body()).await.0, 200);
    assert_eq!(
        next_mirrored(&mut mirrored).await["event"],
        "stripe.invoice.paid"
    );
    let consumer = WebhooksConfig::default().consumer;
    eventually("both handled, nothing pending", || {
        let (js, consumer) = (runner.js.clone(), consumer.clone());
        async move {
            let stream = js
                .get_stream(events::subject::INTEGRATION_WEBHOOKS_STREAM)
                .await
                .ok()?;
            let info = stream.consumer_info(&consumer).await.ok()?;
            (info.ack_floor.stream_sequence == 2 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn without_jetstream_the_provider_is_told_to_retry() {
    let config = WebhooksConfig {
        publish_timeout_ms: 500,
        ..WebhooksConfig::default()
    };
    let mut runner = Runner::start(config).await;
    runner.stripe(ID);
    runner.nats.stop();
    let (status, answer) = runner.post_stripe(ID, &stripe_body()).await;
    assert_eq!(
        (status, answer["error"]["code"].clone()),
        (503, json!("unavailable"))
    );
}

/// The same path with integrations in PostgreSQL, sealed by the store, read back through
/// `StoreTargets` (the wiring `lib.rs` uses).
mod store_backed {
    use std::collections::BTreeMap;

    use base64::Engine;
    use integrations_runner::crypto::{CryptoConfig, KeyConfig, Keyring};
    use integrations_runner::model::{HttpUrl, Id, SecretString, Secrets};
    use integrations_runner::store::{NewIntegration, Store};
    use test_support::TestDatabase;

    use super::*;

    static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

    async fn store(db: &TestDatabase) -> Store {
        let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
        MIGRATOR.run(&pool).await.unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let keyring = Keyring::from_config(&CryptoConfig {
            keys: vec![KeyConfig {
                id: "k1".to_owned(),
                key,
            }],
            active_key_id: String::new(),
        })
        .unwrap();
        Store::new(pool, keyring)
    }

    async fn create(store: &Store, id: &str, webhook: Option<Value>, active: bool) {
        let new = NewIntegration {
            id: Id::parse(id).unwrap(),
            project_id: Id::parse("6958511e8397f2dfa88090d8").unwrap(),
            provider: "stripe".to_owned(),
            name: "Stripe".to_owned(),
            base_url: HttpUrl::parse("https://api.stripe.com").unwrap(),
            auth: serde_json::from_value(json!({"type": "none"})).unwrap(),
            endpoints: BTreeMap::new(),
            rate_limit: None,
            webhook: webhook.map(|w| serde_json::from_value(w).unwrap()),
            secrets: Secrets {
                auth: None,
                webhook: Some(SecretString::new(stripe_secret())),
            },
            is_active: active,
        };
        assert!(store.create(&new).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn integrations_from_the_store_verify_and_the_rest_are_not_found() {
        let db = TestDatabase::create().await;
        let store = store(&db).await;
        let stripe = Some(json!({"scheme": "stripe", "toleranceSeconds": 300}));
        create(&store, ID, stripe.clone(), true).await;
        create(&store, "inactive1", stripe, false).await;
        create(&store, "nowebhook1", None, true).await;
        let source = Arc::new(webhooks::StoreTargets::new(store));
        let runner = Runner::start_with(WebhooksConfig::default(), source).await;
        let mut mirrored = runner.mirror().await;

        let (status, answer) = runner.post_stripe(ID, &stripe_body()).await;
        assert_eq!(
            (status, answer),
            (200, json!({"received": true, "duplicate": false}))
        );
        let m = next_mirrored(&mut mirrored).await;
        assert_eq!(m["event"], "stripe.invoice.paid");
        assert_eq!(m["projectId"], "6958511e8397f2dfa88090d8");

        let wrong = stripe::sign(b"whsec_wrong", now(), stripe_body().as_bytes());
        let (status, _) = runner
            .post(ID, &[("stripe-signature", wrong)], stripe_body())
            .await;
        assert_eq!(status, 401);

        for id in ["inactive1", "nowebhook1", "unknown1"] {
            let (status, answer) = runner.post_stripe(id, &stripe_body()).await;
            assert_eq!(
                (status, answer["error"]["code"].clone()),
                (404, json!("not_found")),
                "{id}"
            );
        }
        assert_eq!(runner.stored().await, 1);
    }
}

/// Through the service's own wiring (`lib.rs`): the integration created with the REST API, the
/// `webhooks` configuration section read from the environment.
mod wired {
    use test_support::TestDatabase;

    use super::*;
    use crate::common::{PROJECT, Runner as Service};

    #[tokio::test]
    async fn the_running_service_verifies_stores_and_mirrors() {
        let (nats, db) = (NatsServer::start(), TestDatabase::create().await);
        let limit = [("WEBHOOKS__MAX_BODY_BYTES", "2048".to_owned())];
        let service = Service::start(&nats, &db, &limit).await;
        let api = service.api();
        let integration = json!({
            "id": ID,
            "projectId": PROJECT,
            "provider": "Stripe",
            "name": "Stripe",
            "baseUrl": "https://api.stripe.com",
            "auth": {"type": "none"},
            "endpoints": {},
            "webhook": {"scheme": "stripe", "secret": stripe_secret()},
        });
        let (status, created) = api.post("/v1/integrations", &integration).await;
        assert_eq!(status, 201, "{created}");

        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut mirrored = client
            .subscribe(events::subject::INTEGRATION_WEBHOOK)
            .await
            .unwrap();
        client.flush().await.unwrap();
        let post = |body: String| {
            let header = stripe::sign(stripe_secret().as_bytes(), now(), body.as_bytes());
            http_client()
                .post(format!("{}/integrations/{ID}/webhooks", api.base))
                .header("stripe-signature", header)
                .body(body)
                .send()
        };
        let answer = post(stripe_body()).await.unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        let m = next_mirrored(&mut mirrored).await;
        assert_eq!(m["event"], "stripe.invoice.paid");
        assert_eq!(m["projectId"], PROJECT);

        let big = format!(
            r#"{{"id":"evt_big","type":"invoice.paid","pad":"{}"}}"#,
            "x".repeat(2048)
        );
        assert_eq!(post(big).await.unwrap().status().as_u16(), 413);
        let metrics = service.0.metrics().await;
        assert!(
            test_support::metric(
                &metrics,
                "integration_webhooks_total",
                "outcome=\"accepted\""
            ) >= 1.0,
            "{metrics}"
        );
        assert!(test_support::metric(&metrics, "integration_webhooks_mirrored_total", "") >= 1.0);
    }
}
