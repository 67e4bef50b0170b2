//! gateway-socketio: turns ready as its user (presence bucket provisioned, watched and written;
//! every relay subscribed), announces a widget key deactivation and its socket counts; it may
//! not forge the public counters, and `backend` may not fake typing indicators.

use events::subject::{GATEWAY_TYPING, SOCKET_METRICS, WIDGET_KEY_DEACTIVATED};
use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::{InProcess, TestDatabase, WAIT, http_client};

use crate::common::AuthNats;

const API_KEY: &str = "deploy-tests-api-key-0123456789";

#[tokio::test]
async fn the_gateway_works_as_its_user_and_its_bucket_and_typing_are_its_own() {
    let nats = AuthNats::start();
    let db = TestDatabase::create().await;
    let mut env = nats.service_env("GATEWAY_SOCKETIO_", "gateway-socketio");
    env.extend(
        [
            ("DATABASE__URL", db.url().to_owned()),
            (
                "ADMIN__SECRET",
                "deploy-tests-admin-secret-0123456789".to_owned(),
            ),
            ("API__KEYS", format!("[\"{API_KEY}\"]")),
            ("METRICS__INTERVAL_SECS", "1".to_owned()),
            ("SHUTDOWN__GRACE_SECS", "5".to_owned()),
        ]
        .map(|(k, v)| (format!("GATEWAY_SOCKETIO_{k}"), v)),
    );
    let observer = nats.client("admin").await;
    let mut socket_counts = observer.subscribe(SOCKET_METRICS).await.unwrap();
    let mut deactivated = observer.subscribe(WIDGET_KEY_DEACTIVATED).await.unwrap();
    observer.flush().await.unwrap();
    // Ready means: EVENTS provisioned, the presence bucket loaded through its watch (after a
    // heartbeat the gateway wrote), every relay and integration subscription made.
    let gateway = InProcess::start(
        &gateway_socketio::SPEC,
        env,
        gateway_socketio::prepare,
        gateway_socketio::run,
    )
    .await;
    tokio::time::timeout(WAIT, socket_counts.next())
        .await
        .expect("socket counts in time")
        .expect("subscription open");

    let http = http_client();
    let created: Value = http
        .post(gateway.url("/api/widget-keys"))
        .bearer_auth(API_KEY)
        .json(&json!({"name": "shop", "allowed_origins": ["https://shop.example.com"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().expect("a widget key").to_owned();
    let status = http
        .post(gateway.url(&format!("/api/widget-keys/{key}/deactivate")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
    let message = tokio::time::timeout(WAIT, deactivated.next())
        .await
        .expect("the deactivation in time")
        .expect("subscription open");
    assert_eq!(message.payload, key.as_bytes());

    let as_gateway = nats.client("gateway-socketio").await;
    let forged = "$KV.stat_snapshot.current";
    nats.publish_refused(&as_gateway, "gateway-socketio", forged)
        .await;
    let backend = nats.client("backend").await;
    nats.publish_refused(&backend, "backend", GATEWAY_TYPING)
        .await;
    nats.assert_only_refused(&[("gateway-socketio", forged), ("backend", GATEWAY_TYPING)]);
}
