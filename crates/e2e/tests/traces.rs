//! One published event followed through the platform by its `traceparent`, as an operator
//! would in the trace backend: the publisher's span, then one child span per service that
//! handled the event (each gateway's relay and the webhook attempt), all in the same trace.
//!
//! Every service runs as its own process (`e2e-services`), exporting OTLP/HTTP to a
//! [`Collector`] in this test, so each span arrives with its service's own `service.name`.
//! The test itself is the publisher: the real `events::Publisher` inside a span exported by
//! an OpenTelemetry SDK pipeline of its own (`service.name` = `e2e-publisher`).
// The harness below is test code too: a failed step should stop the test where it failed.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use e2e::collector::{Collector, ExportedSpan};
use events::{Envelope, EventType, Publisher};
use futures_util::{SinkExt, StreamExt};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Value, json};
use test_support::{
    NatsServer, ServiceProcess, TestDatabase, WAIT, eventually, http_client, http_status,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

const BIN: &str = env!("CARGO_BIN_EXE_e2e-services");
const SESSION_SECRET: &str = "e2e-session-secret";
const ADMIN_SECRET: &str = "e2e-admin-secret-0123456789abcdef";
const API_KEY: &str = "e2e-api-key-0123456789";
/// The order every client here follows.
const ORDER: i64 = 101;
/// Service name of this test's own spans.
const PUBLISHER: &str = "e2e-publisher";

#[tokio::test]
async fn one_event_is_one_trace_across_publisher_gateways_and_webhook_attempt() {
    let collector = Collector::start().await.unwrap();
    let nats = NatsServer::start();
    let stack = Stack::start(&nats, &collector).await;

    // Clients of every surface, following order 101.
    let hooks = WebhookReceiver::start().await;
    stack.subscribe_webhooks(&hooks).await;
    let ws = stack.ws_client().await;
    let sio = SocketIoClient::admin(&stack.socketio.url("")).await;

    // Core NATS drops what is published before a gateway's subscription reaches the server:
    // untraced events until both gateways relay. Their `traceparent` is an unsampled root
    // (no span published them), so nothing of theirs is exported.
    let publisher = Publisher::new(async_nats::connect(nats.url()).await.unwrap());
    let mut warmups = Vec::new();
    let mut patience = Duration::from_millis(250);
    loop {
        let warmup = order_event("warmup");
        publisher.publish(&warmup).await.unwrap();
        warmups.push(warmup.id.to_string());
        if within(patience, || ws.got("warmup") && sio.got_order_update(None)).await {
            break;
        }
        assert!(
            warmups.len() < 20,
            "the gateways never relayed: ws {:?}, socket.io {:?}",
            ws.received(),
            sio.received()
        );
        patience = (patience * 2).min(Duration::from_secs(2));
    }

    // The traced event, published inside a span of this test's own tracer.
    let tracer = PublisherTracing::start(&collector).await;
    let traced = order_event("traced");
    {
        let _default = tracing::subscriber::set_default(tracer.subscriber());
        publisher
            .publish(&traced)
            .instrument(tracing::info_span!("e2e.publish"))
            .await
            .unwrap();
    }
    tracer.flush().await;
    let event_id = traced.id.to_string();

    // Every surface got it.
    eventually("the /ws client to receive the traced event", || async {
        ws.got("traced").then_some(())
    })
    .await;
    eventually("the /admin socket to receive the traced event", || async {
        sio.got_order_update(Some(&event_id)).then_some(())
    })
    .await;
    let delivery = eventually("the webhook delivery of the traced event", || async {
        hooks.delivery_of(&event_id)
    })
    .await;

    // The publisher's spans: the test's root, and the publisher's own span under it, whose
    // context went out as the message's `traceparent`.
    let publish = eventually("the publisher's span", || async {
        collector
            .spans()
            .into_iter()
            .find(|s| s.service == PUBLISHER && s.attribute("event.id") == Some(&event_id))
    })
    .await;
    let spans = collector.spans();
    let root = spans
        .iter()
        .find(|s| s.service == PUBLISHER && s.name == "e2e.publish")
        .expect("the test's root span");
    assert_eq!(publish.name, "publish");
    assert_eq!(publish.trace_id, root.trace_id);
    assert_eq!(publish.parent_span_id, root.span_id);
    assert_eq!(root.parent_span_id, "");

    // One span per service that handled the event, each a child of the publisher's span.
    let handled_by = |spans: &[ExportedSpan]| {
        let of = |service: &str, name: &str| {
            spans
                .iter()
                .find(|s| s.service == service && s.name == name)
                .cloned()
        };
        Some((
            of("gateway-ws", "ws.relay")?,
            of("gateway-socketio", "socketio.relay")?,
            of("webhook-dispatcher", "webhook.attempt")?,
        ))
    };
    let complete = within(WAIT, || handled_by(&collector.spans()).is_some()).await;
    let spans = collector.spans();
    assert!(
        complete,
        "no span of each gateway's relay and of the attempt; exported: {spans:#?}\n\
         gateway-ws logged:\n{}\ngateway-socketio logged:\n{}\nwebhook-dispatcher logged:\n{}",
        stack.ws.logs(),
        stack.socketio.logs(),
        stack.dispatcher.logs()
    );
    let children = handled_by(&spans).unwrap();
    let (ws_relay, sio_relay, attempt) = &children;
    for span in [ws_relay, sio_relay, attempt] {
        assert_eq!(
            (span.trace_id.as_str(), span.parent_span_id.as_str()),
            (publish.trace_id.as_str(), publish.span_id.as_str()),
            "{} {} is not the publisher's child: {span:?}",
            span.service,
            span.name
        );
        assert_eq!(
            span.attribute("event.id"),
            Some(event_id.as_str()),
            "{span:?}"
        );
        assert_eq!(
            span.attribute("event.type"),
            Some("order.status_changed"),
            "{span:?}"
        );
    }
    assert_eq!(
        ws_relay.attribute("subject"),
        Some("events.order.status_changed")
    );
    assert_eq!(ws_relay.attribute("channel"), Some("order_changes"));
    assert_eq!(ws_relay.attribute("recipients"), Some("1"), "{ws_relay:?}");
    assert_eq!(
        sio_relay.attribute("subject"),
        Some("events.order.status_changed")
    );
    assert!(
        sio_relay
            .attribute("emits")
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n >= 1),
        "{sio_relay:?}"
    );
    assert_eq!(attempt.attribute("webhook.outcome"), Some("success"));
    assert_eq!(attempt.attribute("http.response.status_code"), Some("200"));
    assert_eq!(attempt.attribute("webhook.attempt"), Some("1"));

    // The warm-ups were relayed and delivered too, but exported nothing: every span of these
    // kinds belongs to the traced event.
    let all = collector.spans();
    let handled: Vec<&ExportedSpan> = all
        .iter()
        .filter(|s| ["ws.relay", "socketio.relay", "webhook.attempt"].contains(&s.name.as_str()))
        .collect();
    assert_eq!(handled.len(), 3, "{handled:#?}");

    // The trace context stays inside the platform: receivers correlate by `webhook-id`.
    assert!(
        !delivery.contains_key("traceparent"),
        "a webhook request carried a traceparent: {delivery:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The services, as processes
// ---------------------------------------------------------------------------------------------

/// The three services under test, with their databases.
struct Stack {
    ws: ServiceProcess,
    socketio: ServiceProcess,
    dispatcher: ServiceProcess,
    /// The host application's `session` table (connect-pg-simple), read by gateway-ws.
    sessions: sqlx::PgPool,
    _databases: [TestDatabase; 3],
}

impl Stack {
    async fn start(nats: &NatsServer, collector: &Collector) -> Self {
        let [ws_db, sio_db, hooks_db] = [
            TestDatabase::create().await,
            TestDatabase::create().await,
            TestDatabase::create().await,
        ];
        let sessions = session_table(&ws_db).await;
        let ws = spawn(
            "gateway-ws",
            "GATEWAY_WS_",
            nats,
            collector,
            &[
                ("DATABASE__URL", ws_db.url().to_owned()),
                ("SESSION__SECRETS", format!("[\"{SESSION_SECRET}\"]")),
            ],
        );
        let socketio = spawn(
            "gateway-socketio",
            "GATEWAY_SOCKETIO_",
            nats,
            collector,
            &[
                ("DATABASE__URL", sio_db.url().to_owned()),
                ("ADMIN__SECRET", ADMIN_SECRET.to_owned()),
            ],
        );
        let dispatcher = spawn(
            "webhook-dispatcher",
            "WEBHOOK_DISPATCHER_",
            nats,
            collector,
            &[
                ("DATABASE__URL", hooks_db.url().to_owned()),
                ("API__KEYS", format!("[{API_KEY}]")),
                ("DELIVERY__ALLOW_NETWORKS", "[127.0.0.1/32]".to_owned()),
                ("DELIVERY__POLL_INTERVAL_MS", "50".to_owned()),
            ],
        );
        for service in [&ws, &socketio, &dispatcher] {
            wait_ready(service).await;
        }
        Self {
            ws,
            socketio,
            dispatcher,
            sessions,
            _databases: [ws_db, sio_db, hooks_db],
        }
    }

    /// A subscription to `order.*` delivering to `hooks`.
    async fn subscribe_webhooks(&self, hooks: &WebhookReceiver) {
        let response = http_client()
            .post(self.dispatcher.url("/crm/webhook-subscriptions"))
            .bearer_auth(API_KEY)
            .json(&json!({"url": hooks.url(), "event_types": ["order.*"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "creating the subscription");
    }

    /// A `/ws` client with a valid session, subscribed to `order_changes`.
    async fn ws_client(&self) -> WsClient {
        let sid = "e2e-session";
        let expire = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
        sqlx::query(
            r#"INSERT INTO "session" (sid, sess, expire) VALUES ($1, $2, to_timestamp($3))"#,
        )
        .bind(sid)
        .bind(sqlx::types::Json(json!({
            "cookie": {"expires": "2999-01-01T00:00:00.000Z", "path": "/"},
            "userId": 7
        })))
        .bind(expire as f64)
        .execute(&self.sessions)
        .await
        .unwrap();
        let cookie = gateway_ws::cookie::sign(sid, SESSION_SECRET.as_bytes())
            .replace(':', "%3A")
            .replace('+', "%2B")
            .replace('/', "%2F");
        WsClient::connect(self.ws.addr(), &format!("connect.sid={cookie}")).await
    }
}

/// Starts `service` of [`BIN`] exporting traces to `collector`, every 100 ms.
fn spawn(
    service: &str,
    prefix: &str,
    nats: &NatsServer,
    collector: &Collector,
    extra: &[(&str, String)],
) -> ServiceProcess {
    let own = [
        ("HTTP__LISTEN", "127.0.0.1:0".to_owned()),
        ("NATS__URL", nats.url()),
        ("LOG__FORMAT", "json".to_owned()),
        ("SHUTDOWN__GRACE_SECS", "5".to_owned()),
    ];
    let mut env: Vec<(String, String)> = own
        .iter()
        .chain(extra)
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect();
    env.extend([
        ("E2E_SERVICE".to_owned(), service.to_owned()),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            collector.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
    ]);
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    ServiceProcess::spawn(BIN, &[], &env)
}

async fn wait_ready(service: &ServiceProcess) {
    let client = http_client();
    let url = service.url("/readyz");
    eventually(&format!("{url} ready"), || async {
        (http_status(&client, &url).await == Some(200)).then_some(())
    })
    .await;
}

/// connect-pg-simple's table, as the host application creates it.
async fn session_table(db: &TestDatabase) -> sqlx::PgPool {
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query(
        r#"CREATE TABLE "session" ("sid" varchar NOT NULL PRIMARY KEY, "sess" json NOT NULL, "expire" timestamp(6) NOT NULL)"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    pool
}

/// An `order.status_changed` of [`ORDER`], told apart by `data.marker`.
fn order_event(marker: &str) -> Envelope {
    Envelope::new(
        EventType::parse("order.status_changed").unwrap(),
        &ORDER.to_string(),
        json!({"id": ORDER, "status": "paid", "marker": marker}),
    )
    .unwrap()
}

/// Polls `check` every 25 ms for at most `limit`.
async fn within(limit: Duration, check: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The publisher's tracing: the real SDK pipeline, exporting to the collector
// ---------------------------------------------------------------------------------------------

struct PublisherTracing {
    provider: SdkTracerProvider,
}

impl PublisherTracing {
    async fn start(collector: &Collector) -> Self {
        let endpoint = format!("{}/v1/traces", collector.endpoint());
        // The blocking HTTP client must be neither built nor dropped on a runtime thread.
        let provider = tokio::task::spawn_blocking(move || {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()
                .unwrap();
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(PUBLISHER).build())
                .build()
        })
        .await
        .unwrap();
        Self { provider }
    }

    /// Every span, at every level (the publisher's own is at `debug`), to the tracer.
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(self.provider.tracer(PUBLISHER)))
    }

    /// Exports what ended, then stops the pipeline. Off the runtime thread, which meanwhile
    /// serves the collector the export goes to.
    async fn flush(self) {
        tokio::task::spawn_blocking(move || self.provider.shutdown())
            .await
            .unwrap()
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The clients
// ---------------------------------------------------------------------------------------------

/// A `/ws` connection subscribed to `order_changes`; what it receives is collected.
struct WsClient {
    received: Arc<Mutex<Vec<Value>>>,
}

impl WsClient {
    async fn connect(addr: SocketAddr, cookie: &str) -> Self {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(next_json(&mut socket).await["type"], "connected");
        socket
            .send(Message::Text(
                json!({"type": "subscribe", "channel": "order_changes"})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        assert_eq!(next_json(&mut socket).await["type"], "subscribed");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let Message::Text(text) = frame
                    && let Ok(value) = serde_json::from_str::<Value>(&text)
                {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        Self { received }
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Whether an `order:*` event with `data.marker` = `marker` arrived.
    fn got(&self, marker: &str) -> bool {
        self.received().iter().any(|m| {
            m["event"].as_str().is_some_and(|e| e.starts_with("order:"))
                && m["data"]["marker"] == marker
        })
    }
}

/// The next text message of a `/ws` connection, as JSON.
async fn next_json<S>(socket: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a /ws message in time")
            .expect("the /ws connection open")
            .unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// The real socket.io-client, through gateway-socketio's test driver
/// (`services/gateway-socketio/tests/client/driver.mjs`, one JSON object per line): one `/admin`
/// socket subscribed to order 101; every event it receives is collected.
struct SocketIoClient {
    received: Arc<Mutex<Vec<Value>>>,
    _driver: tokio::process::Child,
    /// Held open: the driver exits when its stdin closes.
    _stdin: tokio::process::ChildStdin,
}

impl SocketIoClient {
    async fn admin(url: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../services/gateway-socketio/tests/client");
        assert!(
            dir.join("node_modules/socket.io-client/package.json")
                .exists(),
            "{}/node_modules is missing: run `npm ci` there (scripts/test.sh does)",
            dir.display()
        );
        let mut driver = tokio::process::Command::new("node")
            .arg("driver.mjs")
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting `node driver.mjs` (Node.js 20+)");
        let mut stdin = driver.stdin.take().unwrap();
        let stdout = driver.stdout.take().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "user-42", "iat": now, "exp": now + 3600}),
            &jsonwebtoken::EncodingKey::from_secret(ADMIN_SECRET.as_bytes()),
        )
        .unwrap();
        let connect = json!({
            "op": "connect", "id": 1, "name": "admin", "url": url, "ns": "/admin",
            "auth": {"token": token},
            "emits": [{"event": "subscribe", "args": [{"entities": {"orders": [ORDER]}}],
                       "ack": true, "timeoutMs": WAIT.as_millis() as u64}],
        });
        stdin
            .write_all(format!("{connect}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        let client = Self {
            received,
            _driver: driver,
            _stdin: stdin,
        };
        let ack = eventually("the /admin subscribe acknowledged", || async {
            client
                .received()
                .into_iter()
                .find(|m| m["event"] == "driver:ack" && m["args"][0] == "subscribe")
        })
        .await;
        assert!(
            ack.to_string().contains("entity:orders:101"),
            "subscribe refused: {ack}; driver said {:?}",
            client.received()
        );
        client
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Whether `orders_updated` arrived (for event `id`, if given).
    fn got_order_update(&self, id: Option<&str>) -> bool {
        self.received()
            .iter()
            .any(|m| m["event"] == "orders_updated" && id.is_none_or(|id| m["args"][0]["id"] == id))
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook endpoint
// ---------------------------------------------------------------------------------------------

/// Records the headers of every request it gets; answers 200.
struct WebhookReceiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<HeaderMap>>>,
}

impl WebhookReceiver {
    async fn start() -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(Arc::clone(&requests));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The headers of the delivery of event `id` (its `webhook-id`), once it came.
    fn delivery_of(&self, id: &str) -> Option<HeaderMap> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .find(|h| h.get("webhook-id").is_some_and(|v| v == id))
            .cloned()
    }
}

async fn record(State(requests): State<Arc<Mutex<Vec<HeaderMap>>>>, headers: HeaderMap) {
    requests.lock().unwrap().push(headers);
}
