//! `/stat`, scale-out over two instances, the long-polling transport, cluster socket counts,
//! shutdown and CORS.

use std::collections::BTreeSet;

use serde_json::json;
use test_support::{WAIT, http_client};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_connects_without_auth_and_limits_new_connections_per_address() {
    let (_nats, _db, gw) = admin_gateway(&[("STAT__CONNECTIONS_PER_MINUTE", "2".to_owned())]).await;
    let d = Driver::start().await;
    d.connect_ok("s1", Connect::to(&gw, "/stat")).await;
    d.connect_ok("s2", Connect::to(&gw, "/stat").transports(&["polling"]))
        .await;
    assert_eq!(
        d.connect_err("s3", Connect::to(&gw, "/stat")).await,
        "too many connections from this address, retry later"
    );
    // The limit is on new connections, not on open ones.
    d.close("s1").await;
    assert_eq!(
        d.connect_err("s4", Connect::to(&gw, "/stat")).await,
        "too many connections from this address, retry later"
    );
    assert!(d.is_connected("s2").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_each_deliver_an_event_exactly_once() {
    let (nats, db) = backends().await;
    let env = [("METRICS__INTERVAL_SECS", "1".to_owned())];
    let one = Gateway::start(&nats, &db, &env).await;
    let two = Gateway::start(&nats, &db, &env).await;
    let d = Driver::start().await;
    for (conn, gw) in [("on-one", &one), ("on-two", &two)] {
        d.connect_ok(
            conn,
            Connect::to(gw, "/admin").token(&admin_token(json!({}))),
        )
        .await;
        assert_eq!(
            d.emit_ack(conn, "subscribe", json!([{"entities": {"orders": [101]}}]))
                .await,
            json!({"subscribed": ["entity:orders:101"], "refused": []})
        );
    }
    let p = publisher(&nats).await;
    for conn in ["on-one", "on-two"] {
        publish_until(&d, &p, conn, "orders_updated", || order_status_changed(101)).await;
    }

    let event = order_status_changed(101);
    p.publish(&event).await.unwrap();
    let marker = order_status_changed(101);
    p.publish(&marker).await.unwrap();
    for conn in ["on-one", "on-two"] {
        assert_eq!(
            d.next_matching(conn, "orders_updated", has_id(&event))
                .await,
            json_of(&event)
        );
        d.next_matching(conn, "orders_updated", has_id(&marker))
            .await;
        d.next_matching(conn, "orders_event_log", has_id(&marker))
            .await;
        assert_eq!(
            d.count(conn, "orders_updated", has_id(&event)),
            1,
            "{}",
            d.dump(conn)
        );
        assert_eq!(
            d.count(conn, "orders_event_log", has_id(&event)),
            1,
            "{}",
            d.dump(conn)
        );
    }

    // The cluster-wide counts sum both instances.
    let metrics = d
        .next_matching("on-one", "socket_metrics_updated", |v| {
            v["instances"] == 2 && v["namespaces"]["admin"] == 2
        })
        .await;
    assert_eq!(metrics["total"], 2, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_transport_round_trip() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let connected = d
        .connect_ok(
            "poll",
            Connect::to(&gw, "/admin")
                .token(&admin_token(json!({})))
                .transports(&["polling"]),
        )
        .await;
    assert_eq!(connected.transport, "polling");
    assert_eq!(
        d.subscribe("poll", json!({"entities": {"orders": [101]}}))
            .await,
        json!({"subscribed": ["entity:orders:101"], "refused": []})
    );
    let p = publisher(&nats).await;
    let (published, got) = publish_until(&d, &p, "poll", "orders_updated", || {
        order_status_changed(101)
    })
    .await;
    assert_eq!(got, json_of(&published));
    d.emit("poll", "subscribe", json!([{"domains": ["deals"]}]))
        .await;
    assert_eq!(
        d.next_event("poll", "subscribe:result").await,
        json!({"subscribed": ["domain:deals"], "refused": []})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_metrics_updated_reaches_admin_sockets() {
    let (_nats, _db, gw) = admin_gateway(&[("METRICS__INTERVAL_SECS", "1".to_owned())]).await;
    let d = Driver::start().await;
    d.connect_ok("stat", Connect::to(&gw, "/stat")).await;
    d.connect_admin("a", &gw).await;
    let metrics = d
        .next_matching("a", "socket_metrics_updated", |v| {
            v["namespaces"]["admin"].as_i64() >= Some(1)
                && v["namespaces"]["stat"].as_i64() >= Some(1)
        })
        .await;
    assert_schema("socketio-socket-metrics.schema.json", &metrics);
    let ns = metrics["namespaces"].as_object().unwrap();
    let names: BTreeSet<&str> = ns.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["admin", "provider", "widget", "stat", "root"]),
        "{metrics}"
    );
    assert_eq!(metrics["namespaces"]["admin"], 1, "{metrics}");
    assert_eq!(metrics["namespaces"]["stat"], 1, "{metrics}");
    let sum: i64 = ns.values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(metrics["total"], sum, "{metrics}");
    assert_eq!(metrics["instances"], 1, "{metrics}");
    time::OffsetDateTime::parse(
        metrics["updated_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("updated_at is RFC 3339: {metrics}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Shutdown and CORS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_not_ready_and_disconnects_every_socket() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("ws", &gw).await;
    d.connect_ok(
        "poll",
        Connect::to(&gw, "/admin")
            .token(&admin_token(json!({})))
            .transports(&["polling"]),
    )
    .await;
    d.connect_ok("stat", Connect::to(&gw, "/stat")).await;

    gw.shutdown.cancel();
    for conn in ["ws", "poll", "stat"] {
        let gone = d.next_pushed(conn, "disconnect", |_| true).await;
        // The transport is closed (not a Socket.IO-level disconnect): socket.io-client
        // reconnects by itself on this reason, to whichever instance takes it.
        assert_eq!(gone.first(), "transport close", "{conn}");
    }
    let mut gw = gw;
    let finished = tokio::time::timeout(WAIT, &mut gw.task).await;
    assert!(
        matches!(finished, Ok(Ok(Ok(())))),
        "the gateway returned Ok within the grace period: {finished:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_configured_origins_only() {
    let (_nats, _db, gw) = admin_gateway(&[(
        "SOCKETIO__CORS_ORIGINS",
        "[\"https://crm.example\"]".to_owned(),
    )])
    .await;
    let client = http_client();
    let handshake = gw.url("/socket.io/?EIO=4&transport=polling");
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, &handshake)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    let allowed = preflight("https://crm.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://crm.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(
        !other.headers().contains_key("access-control-allow-origin"),
        "{:?}",
        other.headers()
    );

    // The Engine.IO handshake itself answers with the header for the allowed origin.
    let open = client
        .get(&handshake)
        .header("Origin", "https://crm.example")
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 200);
    assert_eq!(
        open.headers()["access-control-allow-origin"],
        "https://crm.example"
    );
    assert!(open.text().await.unwrap().starts_with("0{"));
}
