//! gateway-ws: a domain event published by `backend` reaches a `/ws` client; the gateway's
//! user may not publish domain events.

use events::{Envelope, EventType, Publisher};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use test_support::{InProcess, WAIT};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::AuthNats;

const SECRET: &str = "deploy-tests session secret";

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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

#[tokio::test]
async fn backend_events_reach_ws_clients_and_the_gateway_cannot_publish_them() {
    let nats = AuthNats::start();
    // A connect-redis session under a prefix of this test's own.
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("deploy-tests:{}:", std::process::id());
    let sid = "sid-deploy-tests";
    let mut redis = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let session =
        json!({"cookie": {"originalMaxAge": 600_000, "httpOnly": true, "path": "/"}, "userId": 7});
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}{sid}"))
        .arg(session.to_string())
        .arg("EX")
        .arg(600)
        .query_async(&mut redis)
        .await
        .unwrap();

    let mut env = nats.service_env("GATEWAY_WS_", "gateway-ws");
    env.extend([
        ("GATEWAY_WS_SESSION__STORE".to_owned(), "redis".to_owned()),
        ("GATEWAY_WS_SESSION__REDIS_URL".to_owned(), redis_url),
        (
            "GATEWAY_WS_SESSION__REDIS_PREFIX".to_owned(),
            prefix.clone(),
        ),
        (
            "GATEWAY_WS_SESSION__SECRETS".to_owned(),
            format!("[\"{SECRET}\"]"),
        ),
        ("GATEWAY_WS_SHUTDOWN__GRACE_SECS".to_owned(), "5".to_owned()),
    ]);
    let gateway =
        InProcess::start(&gateway_ws::SPEC, env, gateway_ws::prepare, gateway_ws::run).await;

    let cookie = gateway_ws::cookie::sign(sid, SECRET.as_bytes())
        .replace(':', "%3A")
        .replace('+', "%2B")
        .replace('/', "%2F");
    let mut request = format!("ws://{}/ws", gateway.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", format!("connect.sid={cookie}").parse().unwrap());
    let mut client = tokio_tungstenite::connect_async(request).await.unwrap().0;
    assert_eq!(next_json(&mut client).await["type"], "connected");
    client
        .send(Message::Text(
            json!({"type": "subscribe", "channel": "order_changes"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(next_json(&mut client).await["type"], "subscribed");

    let event = Envelope::new(
        EventType::parse("order.created").unwrap(),
        "4711",
        json!({"id": 4711}),
    )
    .unwrap();
    Publisher::new(nats.client("backend").await)
        .publish(&event)
        .await
        .unwrap();
    let got = next_json(&mut client).await;
    assert_eq!(got["event"], "order:created");
    assert_eq!(got["data"]["id"], 4711);

    let as_gateway = nats.client("gateway-ws").await;
    nats.publish_refused(&as_gateway, "gateway-ws", "events.order.created")
        .await;
    nats.subscribe_refused(&as_gateway, "gateway-ws", "rt.chat.*")
        .await;
    nats.assert_only_refused(&[
        ("gateway-ws", "events.order.created"),
        ("gateway-ws", "rt.chat.*"),
    ]);
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}{sid}"))
        .query_async(&mut redis)
        .await
        .unwrap();
}
