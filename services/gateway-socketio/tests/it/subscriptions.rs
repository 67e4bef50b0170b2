//! `/admin` subscriptions (entities, domains, the event log, channels) and the domain events
//! relayed to them.

use events::envelope::Audience;
use events::token::Token;
use serde_json::{Value, json};
use test_support::WAIT;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_entity_subscription_relays_only_those_entities() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    let ack = d
        .subscribe("a", json!({"entities": {"orders": [101], "deals": [555]}}))
        .await;
    assert_eq!(
        set(&ack["subscribed"]),
        strings(&["entity:orders:101", "entity:deals:555"]),
        "{ack}"
    );
    assert_eq!(ack["refused"], json!([]), "{ack}");
    assert_eq!(ack.as_object().unwrap().len(), 2, "{ack}");
    assert_schema("socketio-admin-subscribe-ack.schema.json", &ack);

    let p = publisher(&nats).await;
    let (published, got) =
        publish_until(&d, &p, "a", "orders_updated", || order_status_changed(101)).await;
    assert_eq!(
        got,
        json_of(&published),
        "the payload is the envelope as published"
    );
    assert_schema("envelope.schema.json", &got);
    assert_eq!(got["id"], published.id.to_string());
    assert_eq!(got["type"], "order.status_changed");
    assert_eq!(got["entity"], json!({"domain": "order", "id": "101"}));
    assert_eq!(
        d.next_matching("a", "orders_event_log", has_id(&published))
            .await,
        json_of(&published)
    );

    let deal = envelope("deal.status_changed", "555");
    p.publish(&deal).await.unwrap();
    assert_eq!(
        d.next_matching("a", "deals_updated", has_id(&deal)).await,
        json_of(&deal)
    );

    // Order 102 is not subscribed: nothing, proven by a later event for 101.
    let other = order_status_changed(102);
    p.publish(&other).await.unwrap();
    let marker = order_status_changed(101);
    p.publish(&marker).await.unwrap();
    d.next_matching("a", "orders_event_log", has_id(&marker))
        .await;
    d.assert_no_event(
        "a",
        "orders_updated",
        has_id(&other),
        "orders_updated",
        has_id(&marker),
    )
    .await;
    assert_eq!(d.count("a", "orders_event_log", has_id(&other)), 0);
    assert_eq!(
        d.count("a", "event_log_created", other_than(&marker)),
        0,
        "not subscribed to domain:event_log"
    );

    // In two matching rooms (entity and domain), an event still arrives once.
    assert_eq!(
        d.subscribe("a", json!({"domains": ["orders"]})).await,
        json!({"subscribed": ["domain:orders"], "refused": []})
    );
    let twice = order_status_changed(101);
    p.publish(&twice).await.unwrap();
    let marker = order_status_changed(103);
    p.publish(&marker).await.unwrap();
    d.next_matching("a", "orders_updated", has_id(&marker))
        .await;
    d.next_matching("a", "orders_event_log", has_id(&marker))
        .await;
    assert_eq!(
        d.count("a", "orders_updated", has_id(&twice)),
        1,
        "{}",
        d.dump("a")
    );
    assert_eq!(
        d.count("a", "orders_event_log", has_id(&twice)),
        1,
        "{}",
        d.dump("a")
    );
}

/// The seed's snippet as written: `io(...)` then `socket.emit('subscribe', ...)` at once, with
/// no ack callback and before the connection is up (socket.io-client sends it right after the
/// namespace CONNECT). Many sockets at once, so a gateway that registers its event handlers
/// after acknowledging the connection loses some of these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_snippet_subscribe_emitted_before_connect_is_honoured() {
    const SOCKETS: usize = 24;
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let seed = json!([{"entities": {"orders": [101], "deals": [555]}}]);
    let names: Vec<String> = (0..SOCKETS).map(|i| format!("seed-{i}")).collect();
    let connects = names.iter().enumerate().map(|(i, name)| {
        let options = Connect::to(&gw, "/admin")
            .token(&admin_token(json!({})))
            .emit_early("subscribe", seed.clone(), i % 2 == 1);
        let d = &d;
        async move { d.connect_ok(name, options).await }
    });
    futures_util::future::join_all(connects).await;
    let expected = strings(&["entity:orders:101", "entity:deals:555"]);
    let mut lost = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let reply = if i % 2 == 1 {
            d.wait_pushed(name, "driver:ack", |v| *v == "subscribe", WAIT)
                .await
                .map(|p| p.args.get(1).cloned().unwrap_or(Value::Null))
        } else {
            d.wait_pushed(name, "subscribe:result", |_| true, WAIT)
                .await
                .map(|p| p.first())
        };
        match reply {
            Some(reply) => {
                assert_eq!(set(&reply["subscribed"]), expected, "{name}: {reply}");
                assert_eq!(reply["refused"], json!([]), "{name}: {reply}");
            }
            None => lost.push(name.clone()),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {SOCKETS} sockets got no reply to the subscribe they emitted before the \
         connection was up: {lost:?}",
        lost.len()
    );
    let p = publisher(&nats).await;
    let (published, _) = publish_until(&d, &p, &names[0], "orders_updated", || {
        order_status_changed(101)
    })
    .await;
    for name in &names[1..] {
        assert_eq!(
            d.next_matching(name, "orders_updated", has_id(&published))
                .await,
            json_of(&published)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_event_log_and_channel_subscriptions() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    for conn in ["orders", "log", "feed"] {
        d.connect_ok(
            conn,
            Connect::to(&gw, "/admin").token(&admin_token(json!({}))),
        )
        .await;
    }
    assert_eq!(
        d.subscribe("orders", json!({"domains": ["orders"]})).await,
        json!({"subscribed": ["domain:orders"], "refused": []})
    );
    assert_eq!(
        d.subscribe("log", json!({"domains": ["event_log"]})).await,
        json!({"subscribed": ["domain:event_log"], "refused": []})
    );
    assert_eq!(
        d.subscribe("feed", json!({"channels": ["ops_feed"]})).await,
        json!({"subscribed": ["channel:ops_feed"], "refused": []})
    );
    let p = publisher(&nats).await;
    publish_until(&d, &p, "log", "event_log_created", || {
        envelope("payout.created", "1")
    })
    .await;

    let o101 = order_status_changed(101);
    let o102 = order_status_changed(102);
    let deal = envelope("deal.created", "555");
    let fed = envelope("customer.updated", "9").with_audience(Audience {
        channel: Some(Token::new("channel", "ops_feed").unwrap()),
        ..Audience::default()
    });
    let marker = envelope("order.created", "104").with_audience(Audience {
        channel: Some(Token::new("channel", "ops_feed").unwrap()),
        ..Audience::default()
    });
    for e in [&o101, &o102, &deal, &fed, &marker] {
        p.publish(e).await.unwrap();
    }

    for e in [&o101, &o102] {
        assert_eq!(
            d.next_matching("orders", "orders_updated", has_id(e)).await,
            json_of(e)
        );
        d.next_matching("orders", "orders_event_log", has_id(e))
            .await;
    }
    for e in [&o101, &o102, &deal, &fed, &marker] {
        assert_eq!(
            d.next_matching("log", "event_log_created", has_id(e)).await,
            json_of(e),
            "event_log_created for every event"
        );
    }
    assert_eq!(
        d.next_matching("feed", "ops_feed_message", has_id(&fed))
            .await,
        json_of(&fed)
    );
    // Only events whose audience.channel is ops_feed reach the feed (marker is one, last).
    d.assert_no_event(
        "feed",
        "ops_feed_message",
        |v| v["entity"]["domain"] != "customer" && v["id"] != json!(marker.id.to_string()),
        "ops_feed_message",
        has_id(&marker),
    )
    .await;
    // Each socket got only what its rooms receive.
    d.next_matching("orders", "orders_updated", has_id(&marker))
        .await;
    // (The marker's own other emits may still be on their way: left out.)
    assert_eq!(d.count("orders", "deals_updated", |_| true), 0);
    assert_eq!(
        d.count("orders", "event_log_created", other_than(&marker)),
        0
    );
    assert_eq!(
        d.count("orders", "ops_feed_message", other_than(&marker)),
        0
    );
    assert_eq!(d.count("log", "orders_updated", other_than(&marker)), 0);
    assert_eq!(d.count("feed", "orders_updated", other_than(&marker)), 0);
    assert_eq!(d.count("feed", "event_log_created", other_than(&marker)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    let ack = d
        .subscribe("a", json!({"entities": {"orders": [101, 999]}}))
        .await;
    assert_eq!(
        set(&ack["subscribed"]),
        strings(&["entity:orders:101", "entity:orders:999"])
    );
    let p = publisher(&nats).await;
    publish_until(&d, &p, "a", "orders_updated", || order_status_changed(101)).await;

    let ack = d
        .emit_ack("a", "unsubscribe", json!([{"entities": {"orders": [101]}}]))
        .await;
    assert_eq!(
        ack,
        json!({"subscribed": ["entity:orders:101"], "refused": []})
    );
    let gone = order_status_changed(101);
    p.publish(&gone).await.unwrap();
    let marker = order_status_changed(999);
    p.publish(&marker).await.unwrap();
    d.assert_no_event(
        "a",
        "orders_updated",
        has_id(&gone),
        "orders_updated",
        has_id(&marker),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_without_an_ack_callback_emits_the_result() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    d.emit("a", "subscribe", json!([{"entities": {"orders": [7]}}]))
        .await;
    assert_eq!(
        d.next_event("a", "subscribe:result").await,
        json!({"subscribed": ["entity:orders:7"], "refused": []})
    );
    d.emit("a", "unsubscribe", json!([{"entities": {"orders": [7]}}]))
        .await;
    assert_eq!(
        d.next_event("a", "unsubscribe:result").await,
        json!({"subscribed": ["entity:orders:7"], "refused": []})
    );
    // With an ack callback, nothing is emitted besides the ack.
    d.subscribe("a", json!({"domains": ["deals"]})).await;
    d.emit("a", "subscribe", json!([{"domains": ["payouts"]}]))
        .await;
    assert_eq!(
        d.next_event("a", "subscribe:result").await,
        json!({"subscribed": ["domain:payouts"], "refused": []})
    );
    assert_eq!(d.count("a", "subscribe:result", |_| true), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_subscriptions_are_refused_and_the_socket_stays_usable() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    for (what, payload) in [
        ("a string", json!("orders")),
        ("ids not a list", json!({"entities": {"orders": "x"}})),
        ("entities not a map", json!({"entities": ["orders"]})),
        ("domains not a list", json!({"domains": "orders"})),
        ("a number", json!(42)),
    ] {
        let reply = d.subscribe("a", json!(payload)).await;
        assert_payload_refused(&reply, what);
    }
    // Malformed without an ack callback: the refusal is emitted.
    d.emit("a", "subscribe", json!(["orders"])).await;
    assert_payload_refused(&d.next_event("a", "subscribe:result").await, "emitted");

    let reply = d.subscribe("a", json!({"domains": ["widgets"]})).await;
    assert_refused_one(&reply, "unknown domain", "unknown domain");
    assert!(
        reply["refused"][0]["target"]
            .as_str()
            .is_some_and(|t| t.contains("widgets")),
        "{reply}"
    );
    let reply = d
        .subscribe("a", json!({"entities": {"gadgets": [1]}}))
        .await;
    assert_refused_one(&reply, "unknown domain", "unknown entity domain");
    let reply = d
        .subscribe("a", json!({"entities": {"orders": ["not a valid id!"]}}))
        .await;
    assert_refused_one(&reply, "invalid id", "invalid id");
    let reply = d.subscribe("a", json!({"channels": ["ops feed!"]})).await;
    assert_refused_one(&reply, "invalid channel", "invalid channel");

    // Targets are refused one by one; the valid ones are joined.
    let reply = d
        .subscribe(
            "a",
            json!({"entities": {"orders": [101]}, "domains": ["widgets"]}),
        )
        .await;
    assert_eq!(reply["subscribed"], json!(["entity:orders:101"]), "{reply}");
    assert_eq!(reply["refused"].as_array().unwrap().len(), 1, "{reply}");
    assert_eq!(reply["refused"][0]["reason"], "unknown domain", "{reply}");

    let p = publisher(&nats).await;
    let (published, got) =
        publish_until(&d, &p, "a", "orders_updated", || order_status_changed(101)).await;
    assert_eq!(got, json_of(&published));
    assert!(d.is_connected("a").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_claim_limits_what_a_token_may_subscribe_to() {
    let (_nats, _db, gw) =
        admin_gateway(&[("ADMIN__SUBSCRIBE_CLAIM", "subscriptions".to_owned())]).await;
    let d = Driver::start().await;
    let connect = |name: &'static str, claim: Value| {
        let token = admin_token(json!({ "subscriptions": claim }));
        let d = &d;
        let gw = &gw;
        async move {
            d.connect_ok(name, Connect::to(gw, "/admin").token(&token))
                .await;
        }
    };
    connect("orders", json!(["orders"])).await;
    let reply = d
        .subscribe(
            "orders",
            json!({"entities": {"orders": [101], "deals": [555]}}),
        )
        .await;
    assert_eq!(
        reply,
        json!({"subscribed": ["entity:orders:101"], "refused": [{"target": "entity:deals:555", "reason": "forbidden"}]}),
        "the contract's example"
    );
    assert_schema("socketio-admin-subscribe-ack.schema.json", &reply);
    let reply = d.subscribe("orders", json!({"domains": ["deals"]})).await;
    assert_eq!(
        reply,
        json!({"subscribed": [], "refused": [{"target": "domain:deals", "reason": "forbidden"}]})
    );
    let reply = d
        .subscribe(
            "orders",
            json!({"domains": ["orders"], "channels": ["ops_feed"]}),
        )
        .await;
    assert_eq!(reply["subscribed"], json!(["domain:orders"]), "{reply}");
    assert_eq!(
        reply["refused"],
        json!([{"target": "channel:ops_feed", "reason": "forbidden"}])
    );

    // A space-separated string claim.
    connect("spaced", json!("deals channel:*")).await;
    let reply = d
        .subscribe(
            "spaced",
            json!({"entities": {"deals": [1]}, "channels": ["ops_feed"], "domains": ["orders"]}),
        )
        .await;
    assert_eq!(
        set(&reply["subscribed"]),
        strings(&["entity:deals:1", "channel:ops_feed"]),
        "{reply}"
    );
    assert_eq!(
        reply["refused"],
        json!([{"target": "domain:orders", "reason": "forbidden"}])
    );

    // `*`: everything.
    connect("star", json!(["*"])).await;
    let reply = d
        .subscribe(
            "star",
            json!({"domains": ["deals", "event_log"], "channels": ["ops_feed"]}),
        )
        .await;
    assert_eq!(
        set(&reply["subscribed"]),
        strings(&["domain:deals", "domain:event_log", "channel:ops_feed"])
    );
    assert_eq!(reply["refused"], json!([]));

    // Without the claim: nothing.
    d.connect_admin("none", &gw).await;
    let reply = d
        .subscribe("none", json!({"entities": {"orders": [1]}}))
        .await;
    assert_eq!(
        reply,
        json!({"subscribed": [], "refused": [{"target": "entity:orders:1", "reason": "forbidden"}]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_limits_the_rooms_of_one_socket() {
    let (_nats, _db, gw) = admin_gateway(&[("ADMIN__MAX_SUBSCRIPTIONS", "3".to_owned())]).await;
    let d = Driver::start().await;
    d.connect_admin("a", &gw).await;
    let reply = d
        .subscribe("a", json!({"entities": {"orders": [1, 2]}}))
        .await;
    assert_eq!(set(&reply["subscribed"]).len(), 2, "{reply}");
    let reply = d
        .subscribe("a", json!({"domains": ["orders", "deals"]}))
        .await;
    assert_eq!(reply["subscribed"].as_array().unwrap().len(), 1, "{reply}");
    let refused = reply["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{reply}");
    assert_eq!(refused[0]["reason"], "too many subscriptions", "{reply}");
    // Leaving a room makes space again.
    d.emit_ack("a", "unsubscribe", json!([{"entities": {"orders": [1]}}]))
        .await;
    let reply = d.subscribe("a", json!({"entities": {"orders": [3]}})).await;
    assert_eq!(
        reply,
        json!({"subscribed": ["entity:orders:3"], "refused": []})
    );
}
