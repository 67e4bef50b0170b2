//! The gateway under test (in process, on `127.0.0.1:0`) and the helpers every module uses:
//! connect-pg-simple and connect-redis sessions, signed cookies, a WebSocket client.

use events::{Envelope, EventType, Publisher};
use futures_util::{SinkExt, StreamExt};
use gateway_ws::cookie::sign;
use serde_json::{Value, json};
use test_support::{InProcess, NatsServer, TestDatabase, WAIT};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) const SECRET: &str = "keyboard cat";

pub(crate) type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A gateway running in this process (see [`InProcess`]: `addr`, `shutdown`, `task`).
pub(crate) struct Gateway(InProcess);

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
    pub(crate) async fn start(nats: &NatsServer, extra: &[(&str, String)]) -> Self {
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
        Self(InProcess::start(&gateway_ws::SPEC, env, gateway_ws::prepare, gateway_ws::run).await)
    }

    pub(crate) async fn connect(&self, cookie: Option<&str>) -> Client {
        self.connect_with(cookie, &[]).await
    }

    /// Connects with extra request headers (`Origin`, `X-Forwarded-For`, ...).
    pub(crate) async fn connect_with(
        &self,
        cookie: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Client {
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
}

pub(crate) fn cookie_for(sid: &str) -> String {
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
pub(crate) fn random_sid() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    format!("sid{:016x}", h.finish())
}

/// connect-pg-simple's `table.sql`, and its upsert.
pub(crate) async fn pg_sessions() -> (TestDatabase, sqlx::PgPool) {
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

pub(crate) async fn put_pg_session(pool: &sqlx::PgPool, sid: &str, sess: Value, ttl_secs: i64) {
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

pub(crate) fn session_json(user: Value) -> Value {
    json!({"cookie": {"originalMaxAge": 86_400_000, "expires": "2999-01-01T00:00:00.000Z", "httpOnly": true, "path": "/"}, "userId": user})
}

pub(crate) async fn pg_gateway(
    nats: &NatsServer,
    db: &TestDatabase,
    extra: &[(&str, String)],
) -> Gateway {
    let mut env = vec![("DATABASE__URL", db.url().to_owned())];
    env.extend(extra.iter().cloned());
    Gateway::start(nats, &env).await
}

pub(crate) async fn next_json(client: &mut Client) -> Value {
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

pub(crate) async fn expect_close(client: &mut Client) -> (u16, String) {
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

pub(crate) async fn send_json(client: &mut Client, value: Value) {
    client
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

pub(crate) async fn subscribe(client: &mut Client, channel: &str) {
    send_json(client, json!({"type": "subscribe", "channel": channel})).await;
    assert_eq!(
        next_json(client).await,
        json!({"type": "subscribed", "channel": channel})
    );
}

pub(crate) async fn ping(client: &mut Client) {
    send_json(client, json!({"type": "ping"})).await;
    assert_eq!(next_json(client).await, json!({"type": "pong"}));
}

pub(crate) async fn publisher(nats: &NatsServer) -> Publisher {
    Publisher::new(async_nats::connect(nats.url()).await.unwrap())
}

pub(crate) fn order_status_changed(id: i64) -> Envelope {
    Envelope::new(
        EventType::parse("order.status_changed").unwrap(),
        &id.to_string(),
        json!({"id": id, "order_number": "ORD-1234567890", "status": "processing", "payment_status": "paid",
               "total": 99.99, "customer_id": 45, "currency": "USD"}),
    )
    .unwrap()
    .with_changed_fields(json!({"status": "processing", "payment_status": "paid"}).as_object().unwrap().clone())
}

pub(crate) fn event(t: &str, id: i64) -> Envelope {
    Envelope::new(
        EventType::parse(t).unwrap(),
        &id.to_string(),
        json!({"id": id}),
    )
    .unwrap()
}

/// The first message of a connection: `connected`, or the close of a refusal.
pub(crate) async fn outcome(client: &mut Client) -> Result<Value, (u16, String)> {
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
