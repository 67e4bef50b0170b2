//! gateway-ws end to end: the real service (in process), real NATS, real PostgreSQL and Redis
//! session stores written the way connect-pg-simple and connect-redis write them, and a real
//! WebSocket client.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use events::{Envelope, EventType, Publisher};
use futures_util::{SinkExt, StreamExt};
use gateway_ws::cookie::sign;
use serde_json::{Value, json};
use service_runtime::ConfigSource;
use test_support::{NatsServer, TestDatabase, WAIT, eventually, http_client, http_status};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "keyboard cat";

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A gateway running in this process.
struct Gateway {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), service_runtime::ServiceError>>,
}

impl Gateway {
    async fn start(nats: &NatsServer, extra: &[(&str, String)]) -> Self {
        let mut env = vec![
            ("GATEWAY_WS_NATS__URL".to_owned(), nats.url()),
            (
                "GATEWAY_WS_SESSION__SECRETS".to_owned(),
                format!("[\"old secret\", \"{SECRET}\"]"),
            ),
            ("GATEWAY_WS_SHUTDOWN__GRACE_SECS".to_owned(), "5".to_owned()),
        ];
        env.extend(
            extra
                .iter()
                .map(|(k, v)| (format!("GATEWAY_WS_{k}"), v.clone())),
        );
        let settings = gateway_ws::SPEC
            .load::<gateway_ws::Config>(&ConfigSource { file: None, env })
            .expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(gateway_ws::run(settings, listener, shutdown.clone()));
        let gateway = Self {
            addr,
            shutdown,
            task,
        };
        let client = http_client();
        let url = format!("http://{addr}/readyz");
        eventually("gateway ready", || async {
            (http_status(&client, &url).await == Some(200)).then_some(())
        })
        .await;
        gateway
    }

    async fn connect(&self, cookie: Option<&str>) -> Client {
        self.connect_with(cookie, &[]).await
    }

    /// Connects with extra request headers (`Origin`, `X-Forwarded-For`, ...).
    async fn connect_with(&self, cookie: Option<&str>, headers: &[(&str, &str)]) -> Client {
        let mut request = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(cookie) = cookie {
            request
                .headers_mut()
                .insert("cookie", cookie.parse().unwrap());
        }
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse().unwrap();
            request.headers_mut().append(name, value.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request).await.unwrap().0
    }

    async fn metrics(&self) -> String {
        http_client()
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn cookie_for(sid: &str) -> String {
    let signed = sign(sid, SECRET.as_bytes());
    format!(
        "theme=dark; connect.sid={}",
        signed
            .replace(':', "%3A")
            .replace('+', "%2B")
            .replace('/', "%2F")
    )
}

/// A session id no other test (or run) uses.
fn random_sid() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("sid{:016x}", h.finish())
}

/// connect-pg-simple's `table.sql`, and its upsert.
async fn pg_sessions() -> (TestDatabase, sqlx::PgPool) {
    let db = TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    for ddl in [
        r#"CREATE TABLE "session" ("sid" varchar NOT NULL COLLATE "default", "sess" json NOT NULL, "expire" timestamp(6) NOT NULL) WITH (OIDS=FALSE)"#,
        r#"ALTER TABLE "session" ADD CONSTRAINT "session_pkey" PRIMARY KEY ("sid") NOT DEFERRABLE INITIALLY IMMEDIATE"#,
        r#"CREATE INDEX "IDX_session_expire" ON "session" ("expire")"#,
    ] {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    (db, pool)
}

async fn put_pg_session(pool: &sqlx::PgPool, sid: &str, sess: Value, ttl_secs: i64) {
    let expire = time::OffsetDateTime::now_utc().unix_timestamp() + ttl_secs;
    sqlx::query(
        r#"INSERT INTO "session" (sess, expire, sid) SELECT $1, to_timestamp($2), $3 ON CONFLICT (sid) DO UPDATE SET "sess"=$1, "expire"=to_timestamp($2) RETURNING sid"#,
    )
    .bind(sqlx::types::Json(sess))
    .bind(expire as f64)
    .bind(sid)
    .execute(pool)
    .await
    .unwrap();
}

fn session_json(user: Value) -> Value {
    json!({"cookie": {"originalMaxAge": 86_400_000, "expires": "2999-01-01T00:00:00.000Z", "httpOnly": true, "path": "/"}, "userId": user})
}

async fn pg_gateway(nats: &NatsServer, db: &TestDatabase, extra: &[(&str, String)]) -> Gateway {
    let mut env = vec![("DATABASE__URL", db.url().to_owned())];
    env.extend(extra.iter().cloned());
    Gateway::start(nats, &env).await
}

async fn next_json(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .expect("no error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

async fn expect_close(client: &mut Client) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (u16::from(code), reason.to_string());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a close frame first, got {other:?}"),
        }
    }
}

async fn send_json(client: &mut Client, value: Value) {
    client
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

async fn subscribe(client: &mut Client, channel: &str) {
    send_json(client, json!({"type": "subscribe", "channel": channel})).await;
    assert_eq!(
        next_json(client).await,
        json!({"type": "subscribed", "channel": channel})
    );
}

async fn ping(client: &mut Client) {
    send_json(client, json!({"type": "ping"})).await;
    assert_eq!(next_json(client).await, json!({"type": "pong"}));
}

async fn publisher(nats: &NatsServer) -> Publisher {
    Publisher::new(async_nats::connect(nats.url()).await.unwrap())
}

fn order_status_changed(id: i64) -> Envelope {
    Envelope::new(
        EventType::parse("order.status_changed").unwrap(),
        &id.to_string(),
        json!({"id": id, "order_number": "ORD-1234567890", "status": "processing", "payment_status": "paid",
               "total": 99.99, "customer_id": 45, "currency": "USD"}),
    )
    .unwrap()
    .with_changed_fields(json!({"status": "processing", "payment_status": "paid"}).as_object().unwrap().clone())
}

fn event(t: &str, id: i64) -> Envelope {
    Envelope::new(
        EventType::parse(t).unwrap(),
        &id.to_string(),
        json!({"id": id}),
    )
    .unwrap()
}

#[tokio::test]
async fn pg_session_cookie_connects_and_order_updates_arrive_in_the_seed_shape() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[]).await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;

    let mut client = gw.connect(Some(&cookie_for(&sid))).await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"type": "connected", "message": "WebSocket connection established", "userId": 1})
    );
    subscribe(&mut client, "order_changes").await;

    let published = order_status_changed(123);
    publisher(&nats).await.publish(&published).await.unwrap();
    let got = next_json(&mut client).await;
    assert_eq!(got["event"], "order:updated");
    assert_eq!(
        got["data"],
        json!({"id": 123, "order_number": "ORD-1234567890", "status": "processing", "payment_status": "paid",
               "total": 99.99, "customer_id": 45, "currency": "USD",
               "changed_fields": {"status": "processing", "payment_status": "paid"}})
    );
    assert_eq!(
        got["timestamp"],
        events::envelope::timestamp::format(published.occurred_at)
    );
    let ts = got["timestamp"].as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "{ts}"
    );

    publisher(&nats)
        .await
        .publish(&event("order.created", 124))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["event"], "order:created");
    publisher(&nats)
        .await
        .publish(&event("order.deleted", 124))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["event"], "order:deleted");
    ping(&mut client).await;
    gw.shutdown.cancel();
    assert_eq!(expect_close(&mut client).await.0, 1001);
    gw.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn redis_session_cookie_connects_with_the_passport_user() {
    let nats = NatsServer::start();
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let gw = Gateway::start(
        &nats,
        &[
            ("SESSION__STORE", "redis".to_owned()),
            ("SESSION__REDIS_URL", redis_url.clone()),
        ],
    )
    .await;
    let sid = random_sid();
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let sess = json!({"cookie": {"originalMaxAge": 3_600_000, "httpOnly": true, "path": "/"}, "passport": {"user": "u-42"}});
    // connect-redis: SET sess:<sid> <json> EX <ttl>
    let _: () = redis::cmd("SET")
        .arg(format!("sess:{sid}"))
        .arg(sess.to_string())
        .arg("EX")
        .arg(3600)
        .query_async(&mut redis)
        .await
        .unwrap();

    let mut client = gw.connect(Some(&cookie_for(&sid))).await;
    assert_eq!(next_json(&mut client).await["userId"], "u-42");

    let mut unknown = gw.connect(Some(&cookie_for(&random_sid()))).await;
    assert_eq!(expect_close(&mut unknown).await.0, 1008);

    let _: () = redis::cmd("DEL")
        .arg(format!("sess:{sid}"))
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn missing_forged_unknown_and_expired_sessions_close_with_1008_before_anything_else() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[]).await;
    let expired = random_sid();
    put_pg_session(&pool, &expired, session_json(json!(7)), -60).await;
    let good = random_sid();
    put_pg_session(&pool, &good, session_json(json!(7)), 3600).await;
    let forged = cookie_for(&good).replace("connect.sid=s%3A", "connect.sid=s%3AX");
    let wrong_secret = format!(
        "connect.sid={}",
        sign(&good, b"not the secret").replace(':', "%3A")
    );
    let no_user = random_sid();
    put_pg_session(&pool, &no_user, json!({"cookie": {}}), 3600).await;

    for (cookie, reason) in [
        (None, "authentication required"),
        (
            Some("connect.sid=garbage".to_owned()),
            "invalid session cookie",
        ),
        (Some(forged), "invalid session cookie"),
        (Some(wrong_secret), "invalid session cookie"),
        (
            Some(cookie_for(&random_sid())),
            "session not found or expired",
        ),
        (Some(cookie_for(&expired)), "session not found or expired"),
        (Some(cookie_for(&no_user)), "session has no user"),
    ] {
        let mut client = gw.connect(cookie.as_deref()).await;
        let (code, text) = expect_close(&mut client).await;
        assert_eq!(code, 1008, "{cookie:?}");
        assert!(text.contains(reason), "{cookie:?}: {text}");
    }
    assert!(gw.metrics().await.contains("ws_auth_failures_total"));
}

#[tokio::test]
async fn only_subscribers_receive_and_unsubscribe_stops_delivery() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[]).await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    let (mut orders, mut products, mut sentinel) = (
        gw.connect(Some(&cookie)).await,
        gw.connect(Some(&cookie)).await,
        gw.connect(Some(&cookie)).await,
    );
    for c in [&mut orders, &mut products, &mut sentinel] {
        next_json(c).await;
    }
    subscribe(&mut orders, "order_changes").await;
    subscribe(&mut products, "product_changes").await;
    subscribe(&mut sentinel, "order_changes").await;
    let publisher = publisher(&nats).await;

    // Three order events: the orders client gets each; the products client none of them.
    for id in 1..=3 {
        publisher
            .publish(&event("order.updated", id))
            .await
            .unwrap();
        assert_eq!(next_json(&mut orders).await["data"]["id"], id);
        assert_eq!(next_json(&mut sentinel).await["data"]["id"], id);
    }
    publisher
        .publish(&event("product.pricing_changed", 9))
        .await
        .unwrap();
    let first = next_json(&mut products).await;
    assert_eq!(
        (first["event"].as_str(), first["data"]["id"].as_i64()),
        (Some("product:updated"), Some(9))
    );

    send_json(
        &mut orders,
        json!({"type": "unsubscribe", "channel": "order_changes"}),
    )
    .await;
    assert_eq!(
        next_json(&mut orders).await,
        json!({"type": "unsubscribed", "channel": "order_changes"})
    );
    for id in 10..=12 {
        publisher
            .publish(&event("order.updated", id))
            .await
            .unwrap();
        assert_eq!(next_json(&mut sentinel).await["data"]["id"], id);
    }
    // The sentinel saw every event, so the unsubscribed client would have them queued by now:
    // its next message must be the answer to this ping.
    ping(&mut orders).await;
    ping(&mut products).await;
}

#[tokio::test]
async fn bad_input_gets_errors_and_the_connection_stays_open() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(
        &nats,
        &db,
        &[("LIMITS__MAX_MESSAGE_BYTES", "256".to_owned())],
    )
    .await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(5)), 3600).await;
    let mut client = gw.connect(Some(&cookie_for(&sid))).await;
    next_json(&mut client).await;

    for (raw, expected) in [
        ("{not json", "invalid JSON"),
        (r#"{"type":"dance"}"#, "unknown message type"),
        (
            r#"{"type":"subscribe","channel":"deal_changes"}"#,
            "unknown channel",
        ),
        (r#"{"type":"subscribe"}"#, "missing field \"channel\""),
        (r#"{"channel":"order_changes"}"#, "missing field \"type\""),
        ("[]", "must be a JSON object"),
    ] {
        client.send(Message::Text(raw.into())).await.unwrap();
        let reply = next_json(&mut client).await;
        assert_eq!(reply["type"], "error", "{raw}");
        assert!(
            reply["message"].as_str().unwrap().contains(expected),
            "{raw}: {reply}"
        );
    }
    client
        .send(Message::Binary(Bytes::from_static(b"\x00\x01")))
        .await
        .unwrap();
    let reply = next_json(&mut client).await;
    assert!(
        reply["message"].as_str().unwrap().contains("binary"),
        "{reply}"
    );
    ping(&mut client).await;

    client
        .send(Message::Text("x".repeat(1024).into()))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut client).await.0, 1009);
}

#[tokio::test]
async fn two_gateway_instances_each_deliver_once() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let (a, b) = (
        pg_gateway(&nats, &db, &[]).await,
        pg_gateway(&nats, &db, &[]).await,
    );
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let (mut on_a, mut on_b) = (
        a.connect(Some(&cookie_for(&sid))).await,
        b.connect(Some(&cookie_for(&sid))).await,
    );
    for c in [&mut on_a, &mut on_b] {
        next_json(c).await;
        subscribe(c, "shipment_changes").await;
    }
    let publisher = publisher(&nats).await;
    publisher
        .publish(&event("shipment.updated", 1))
        .await
        .unwrap();
    publisher
        .publish(&event("shipment.updated", 2))
        .await
        .unwrap();
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(next_json(c).await["data"]["id"], 1);
        assert_eq!(
            next_json(c).await["data"]["id"],
            2,
            "exactly once: the next is the second event"
        );
    }
}

#[tokio::test]
async fn a_destroyed_session_is_disconnected_with_1008_within_the_bound() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[("SESSION__REVALIDATE_SECS", "1".to_owned())]).await;
    let (gone, stays) = (random_sid(), random_sid());
    put_pg_session(&pool, &gone, session_json(json!(1)), 3600).await;
    put_pg_session(&pool, &stays, session_json(json!(2)), 3600).await;
    let mut doomed = gw.connect(Some(&cookie_for(&gone))).await;
    let mut kept = gw.connect(Some(&cookie_for(&stays))).await;
    next_json(&mut doomed).await;
    next_json(&mut kept).await;

    sqlx::query(r#"DELETE FROM "session" WHERE sid = $1"#)
        .bind(&gone)
        .execute(&pool)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (code, reason) = expect_close(&mut doomed).await;
    assert_eq!(code, 1008);
    assert!(reason.contains("session"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    ping(&mut kept).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_others_keep_receiving() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(
        &nats,
        &db,
        &[
            ("LIMITS__OUTBOUND_QUEUE", "8".to_owned()),
            ("LIMITS__WRITE_TIMEOUT_SECS", "1".to_owned()),
        ],
    )
    .await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let mut stuck = gw.connect(Some(&cookie_for(&sid))).await;
    let mut healthy = gw.connect(Some(&cookie_for(&sid))).await;
    for c in [&mut stuck, &mut healthy] {
        next_json(c).await;
        subscribe(c, "customer_changes").await;
    }
    // The healthy client reads everything, concurrently.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let got = next_json(&mut healthy).await;
            if seen_tx.send(got["data"]["id"].as_i64().unwrap()).is_err() {
                return;
            }
        }
    });
    // `stuck` never reads again. 64 KiB events fill its socket buffers quickly.
    let big = "x".repeat(64 * 1024);
    let publisher = publisher(&nats).await;
    let mut id = 0;
    eventually("the stuck client is dropped", || {
        id += 1;
        let envelope = Envelope::new(
            EventType::parse("customer.updated").unwrap(),
            &id.to_string(),
            json!({"id": id, "blob": big}),
        )
        .unwrap();
        let publisher = publisher.clone();
        let gw = &gw;
        async move {
            publisher.publish(&envelope).await.unwrap();
            let metrics = gw.metrics().await;
            metrics.contains("ws_dropped_total{reason=\"").then_some(())
        }
    })
    .await;
    // The healthy client got every event, in order, none skipped.
    for expected in 1..=id {
        let got = tokio::time::timeout(WAIT, seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, expected);
    }
    reader.abort();
    drop(stuck);
}

#[tokio::test]
async fn survives_a_nats_restart() {
    let mut nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[]).await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let mut client = gw.connect(Some(&cookie_for(&sid))).await;
    next_json(&mut client).await;
    subscribe(&mut client, "transaction_changes").await;

    nats.stop();
    let ready = format!("http://{}/readyz", gw.addr);
    let http = http_client();
    eventually("not ready without nats", || async {
        (http_status(&http, &ready).await == Some(503)).then_some(())
    })
    .await;
    ping(&mut client).await;
    nats.restart();
    eventually("ready again", || async {
        (http_status(&http, &ready).await == Some(200)).then_some(())
    })
    .await;

    let publisher = publisher(&nats).await;
    publisher
        .publish(&event("transaction.created", 202))
        .await
        .unwrap();
    let got = next_json(&mut client).await;
    assert_eq!(
        (got["event"].as_str(), got["data"]["id"].as_i64()),
        (Some("transaction:created"), Some(202))
    );
}

#[tokio::test]
async fn connection_and_message_limits_are_enforced() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(
        &nats,
        &db,
        &[
            ("LIMITS__MAX_CONNECTIONS_PER_IP", "2".to_owned()),
            ("LIMITS__MESSAGES_PER_SECOND", "5".to_owned()),
        ],
    )
    .await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    let mut first = gw.connect(Some(&cookie)).await;
    let mut second = gw.connect(Some(&cookie)).await;
    next_json(&mut first).await;
    next_json(&mut second).await;
    let mut third = gw.connect(Some(&cookie)).await;
    let (code, reason) = expect_close(&mut third).await;
    assert_eq!(
        (code, reason.contains("too many connections")),
        (1008, true),
        "{reason}"
    );

    // Burst of 10 allowed (2 x 5/s), then errors, then a close for persistent abuse.
    for _ in 0..40 {
        if first
            .send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(WAIT, first.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "pong" {
                    pongs += 1
                } else if v["message"].as_str().unwrap_or("").contains("rate limit") {
                    limited += 1
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            other => panic!("{other:?}"),
        }
    };
    assert!((10..=12).contains(&pongs), "{pongs}");
    assert!(limited >= 1);
    assert_eq!(code, 1008);
    // The slot freed by the closed connection can be used again.
    drop(first);
    let mut again = eventually("a free slot", || {
        let gw = &gw;
        let cookie = cookie.clone();
        async move {
            let mut c = gw.connect(Some(&cookie)).await;
            match tokio::time::timeout(WAIT, c.next()).await.ok()?? {
                Ok(Message::Text(t)) if t.contains("connected") => Some(c),
                _ => None,
            }
        }
    })
    .await;
    ping(&mut again).await;
}

/// The first message of a connection: `connected`, or the close of a refusal.
async fn outcome(client: &mut Client) -> Result<Value, (u16, String)> {
    loop {
        match tokio::time::timeout(WAIT, client.next())
            .await
            .expect("a first frame in time")
        {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return Err((u16::from(code), reason.to_string()));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected connected or a close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn cross_site_origins_are_refused_and_same_origin_or_no_origin_connects() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[]).await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    // tungstenite sends `Host: 127.0.0.1:<port>`; a page served from there is same-origin,
    // whatever its scheme (TLS may end at a proxy in front).
    let port = gw.addr.port();
    for origin in [
        format!("http://{}", gw.addr),
        format!("https://{}", gw.addr),
        format!("HTTP://127.0.0.1:{port}"),
    ] {
        let mut client = gw.connect_with(Some(&cookie), &[("origin", &origin)]).await;
        assert_eq!(
            outcome(&mut client).await.unwrap()["type"],
            "connected",
            "{origin}"
        );
    }
    // Not a browser: no Origin, nothing to hijack.
    let mut client = gw.connect(Some(&cookie)).await;
    assert_eq!(outcome(&mut client).await.unwrap()["type"], "connected");

    for origin in [
        "https://evil.example".to_owned(),
        format!("http://localhost:{port}"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("http://{}.evil.example", gw.addr.ip()),
        "null".to_owned(),
        "not an origin".to_owned(),
    ] {
        let mut client = gw.connect_with(Some(&cookie), &[("origin", &origin)]).await;
        let (code, reason) = outcome(&mut client).await.unwrap_err();
        assert_eq!(code, 1008, "{origin}");
        assert_eq!(reason, "origin not allowed", "{origin}");
    }
    assert!(
        gw.metrics()
            .await
            .contains(r#"ws_auth_failures_total{reason="origin"}"#)
    );
}

#[tokio::test]
async fn allowed_origins_replace_the_same_origin_default() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(
        &nats,
        &db,
        &[(
            "SECURITY__ALLOWED_ORIGINS",
            r#"["https://crm.example.com", "http://localhost:3000"]"#.to_owned(),
        )],
    )
    .await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    for origin in [
        "https://crm.example.com",
        "https://CRM.example.com:443",
        "http://localhost:3000",
    ] {
        let mut client = gw.connect_with(Some(&cookie), &[("origin", origin)]).await;
        assert_eq!(
            outcome(&mut client).await.unwrap()["type"],
            "connected",
            "{origin}"
        );
    }
    let mut client = gw.connect(Some(&cookie)).await;
    assert_eq!(outcome(&mut client).await.unwrap()["type"], "connected");

    let same_origin = format!("http://{}", gw.addr);
    for origin in [
        "http://crm.example.com",
        "https://crm.example.com:8443",
        "https://crm.example.com.evil.example",
        "http://localhost:3001",
        same_origin.as_str(),
    ] {
        let mut client = gw.connect_with(Some(&cookie), &[("origin", origin)]).await;
        let (code, reason) = outcome(&mut client).await.unwrap_err();
        assert_eq!(
            (code, reason.as_str()),
            (1008, "origin not allowed"),
            "{origin}"
        );
    }
}

/// Rewrites sessions the way express-session does on logout-in-place or a login as someone
/// else, and checks that revalidation re-reads the user, not only that the session exists.
async fn sessions_that_lose_their_user_are_disconnected(
    gw: &Gateway,
    mut put: impl AsyncFnMut(&str, Value),
) {
    let (logout, switched, touched) = (random_sid(), random_sid(), random_sid());
    for sid in [&logout, &switched, &touched] {
        put(sid, session_json(json!(1))).await;
    }
    let mut logged_out = gw.connect(Some(&cookie_for(&logout))).await;
    let mut other_user = gw.connect(Some(&cookie_for(&switched))).await;
    let mut kept = gw.connect(Some(&cookie_for(&touched))).await;
    for c in [&mut logged_out, &mut other_user, &mut kept] {
        assert_eq!(next_json(c).await["userId"], 1);
    }

    put(
        &logout,
        json!({"cookie": {"originalMaxAge": 86_400_000, "path": "/"}}),
    )
    .await;
    put(&switched, session_json(json!(2))).await;
    put(&touched, session_json(json!(1))).await;
    let started = std::time::Instant::now();
    assert_eq!(
        expect_close(&mut logged_out).await,
        (1008, "session has no user".to_owned())
    );
    assert_eq!(
        expect_close(&mut other_user).await,
        (1008, "session user changed".to_owned())
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    ping(&mut kept).await;
}

#[tokio::test]
async fn a_pg_session_that_loses_its_user_is_disconnected_with_1008_within_the_bound() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(&nats, &db, &[("SESSION__REVALIDATE_SECS", "1".to_owned())]).await;
    sessions_that_lose_their_user_are_disconnected(&gw, async |sid, sess| {
        put_pg_session(&pool, sid, sess, 3600).await;
    })
    .await;
}

#[tokio::test]
async fn a_redis_session_that_loses_its_user_is_disconnected_with_1008_within_the_bound() {
    let nats = NatsServer::start();
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let gw = Gateway::start(
        &nats,
        &[
            ("SESSION__STORE", "redis".to_owned()),
            ("SESSION__REDIS_URL", redis_url.clone()),
            ("SESSION__REVALIDATE_SECS", "1".to_owned()),
        ],
    )
    .await;
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut written = Vec::new();
    sessions_that_lose_their_user_are_disconnected(&gw, async |sid, sess| {
        // connect-redis: SET sess:<sid> <json> EX <ttl>
        let _: () = redis::cmd("SET")
            .arg(format!("sess:{sid}"))
            .arg(sess.to_string())
            .arg("EX")
            .arg(3600)
            .query_async(&mut redis)
            .await
            .unwrap();
        written.push(format!("sess:{sid}"));
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(&written)
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_forged_forwarded_for_is_counted_under_the_real_client_address() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let gw = pg_gateway(
        &nats,
        &db,
        &[
            ("LIMITS__MAX_CONNECTIONS_PER_IP", "2".to_owned()),
            ("LIMITS__TRUST_FORWARDED_FOR", "true".to_owned()),
            ("LIMITS__TRUSTED_PROXIES", r#"["127.0.0.0/8"]"#.to_owned()),
        ],
    )
    .await;
    let sid = random_sid();
    put_pg_session(&pool, &sid, session_json(json!(1)), 3600).await;
    let cookie = cookie_for(&sid);
    // The test client plays the trusted proxy on 127.0.0.1. The attacker at 198.51.100.9 sent
    // an `X-Forwarded-For` of its own choosing; the proxy appended the address it saw.
    let (victim, real) = ("203.0.113.7", "198.51.100.9");
    let mut attacker = Vec::new();
    for forged in [victim, "192.0.2.1", "192.0.2.2"] {
        let chain = format!("{forged}, {real}");
        attacker.push(
            gw.connect_with(Some(&cookie), &[("x-forwarded-for", &chain)])
                .await,
        );
    }
    assert_eq!(
        outcome(&mut attacker[0]).await.unwrap()["type"],
        "connected"
    );
    assert_eq!(
        outcome(&mut attacker[1]).await.unwrap()["type"],
        "connected"
    );
    // Varying the forged part does not dodge the attacker's own cap...
    let (code, reason) = outcome(&mut attacker[2]).await.unwrap_err();
    assert_eq!(
        (code, reason.as_str()),
        (1008, "too many connections from this address")
    );
    // ...and naming the victim did not use up the victim's.
    for _ in 0..2 {
        let mut client = gw
            .connect_with(Some(&cookie), &[("x-forwarded-for", victim)])
            .await;
        assert_eq!(outcome(&mut client).await.unwrap()["type"], "connected");
        attacker.push(client);
    }
}
