//! Subscriptions and event delivery: the seed message shape, fan-out, slow consumers,
//! several instances, NATS restarts.

use events::{Envelope, EventType};
use futures_util::SinkExt;
use serde_json::json;
use test_support::{NatsServer, WAIT, eventually, http_client, http_status};
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::harness::*;

#[tokio::test]
async fn pg_session_cookie_connects_and_order_updates_arrive_in_the_seed_shape() {
    let nats = NatsServer::start();
    let (db, pool) = pg_sessions().await;
    let mut gw = pg_gateway(&nats, &db, &[]).await;
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
    (&mut gw.task).await.unwrap().unwrap();
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
