//! What an endpoint or an operator can do that must not stall or duplicate deliveries: odd
//! response bodies, deleting a subscription mid-attempt, slow endpoints, redelivering an
//! attempt in flight, and proxies in the environment. Real PostgreSQL, NATS and receivers.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use serde_json::json;
use test_support::{NatsServer, ServiceProcess, TestDatabase, eventually};

#[tokio::test]
async fn a_nul_byte_in_a_response_body_stalls_no_recording() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let d = Dispatcher::start(&nats, &db, &[]).await;
    let api = d.api();
    let odd = Receiver::start().await;
    odd.always(Reply {
        body: Some(b"ok\0\xff".to_vec()),
        ..Reply::status(200)
    });
    let plain = Receiver::start().await;
    let (odd_sub, _) = api.subscribe(&odd.url(), &["deal.*"], json!({})).await;
    let (plain_sub, _) = api.subscribe(&plain.url(), &["deal.*"], json!({})).await;
    let publisher = publisher(&nats).await;
    publisher.publish(&event("deal.created", 1)).await.unwrap();
    odd.wait_for(1).await;
    plain.wait_for(1).await;
    publisher.publish(&event("deal.created", 2)).await.unwrap();

    for sub in [&odd_sub, &plain_sub] {
        eventually("both deliveries of each subscription recorded", || async {
            let done = api.deliveries(sub, "?status=succeeded").await;
            (done.len() == 2).then_some(())
        })
        .await;
    }
    let shown = &api.deliveries(&odd_sub, "").await[0]["attempt_log"][0];
    assert_eq!(shown["response_body"], "ok\u{0}\u{FFFD}", "{shown}");
    assert_eq!(shown["response_body_base64"], "b2sA/w==");
    assert_eq!(odd.received().len(), 2, "nothing re-sent");
}

#[tokio::test]
async fn deleting_a_subscription_mid_attempt_stalls_no_recording() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let d = Dispatcher::start(&nats, &db, &[]).await;
    let api = d.api();
    let slow = Receiver::start().await;
    slow.always(Reply::delayed(200, Duration::from_millis(800)));
    let other = Receiver::start().await;
    let (slow_sub, _) = api
        .subscribe(&slow.url(), &["order.created"], json!({}))
        .await;
    let (other_sub, _) = api.subscribe(&other.url(), &["order.*"], json!({})).await;
    let publisher = publisher(&nats).await;
    publisher.publish(&event("order.created", 1)).await.unwrap();
    slow.wait_for(1).await;
    let (status, _) = api
        .call(
            "DELETE",
            &format!("/crm/webhook-subscriptions/{slow_sub}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    // The slow attempt's outcome arrives after its delivery is gone; later outcomes of other
    // subscriptions are still recorded.
    eventually("the orphaned outcome is dropped", || async {
        (d.metric("webhook_outcomes_dropped_total", "reason=\"vanished\"")
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    publisher.publish(&event("order.updated", 2)).await.unwrap();
    eventually("later outcomes recorded", || async {
        let done = api.deliveries(&other_sub, "?status=succeeded").await;
        (done.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_slow_subscription_neither_outlives_its_leases_nor_starves_others() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let extra = [
        ("DELIVERY__LEASE_SECS", "3"),
        ("DELIVERY__TIMEOUT_SECS", "2"),
        ("DELIVERY__CONNECT_TIMEOUT_SECS", "1"),
        ("DELIVERY__CONCURRENCY", "4"),
    ];
    let d = Dispatcher::start(&nats, &db, &extra).await;
    let api = d.api();
    let slow = Receiver::start().await;
    slow.always(Reply::delayed(200, Duration::from_millis(900)));
    let fast = Receiver::start().await;
    let (slow_sub, _) = api
        .subscribe(&slow.url(), &["payout.*"], json!({"max_concurrency": 1}))
        .await;
    api.subscribe(&fast.url(), &["customer.*"], json!({})).await;
    let publisher = publisher(&nats).await;
    let n = 6;
    for i in 0..n {
        publisher
            .publish(&event("payout.created", i))
            .await
            .unwrap();
    }
    slow.wait_for(1).await;
    publisher
        .publish(&event("customer.created", 100))
        .await
        .unwrap();
    fast.wait_for(1).await;
    assert!(
        slow.received().len() <= 2,
        "the fast endpoint waited for the slow one's backlog"
    );

    eventually("every slow delivery recorded", || async {
        let done = api.deliveries(&slow_sub, "?status=succeeded").await;
        (done.len() == n as usize).then_some(())
    })
    .await;
    let all = api.deliveries(&slow_sub, "").await;
    assert!(all.iter().all(|d| d["attempts"] == 1), "a lease ran out");
    let got = slow.received();
    let ids: HashSet<&str> = got.iter().map(|r| header(r, "webhook-id")).collect();
    assert_eq!(
        (got.len(), ids.len()),
        (n as usize, n as usize),
        "sent twice"
    );
    // max_concurrency 1: one at a time.
    for pair in got.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_millis(850));
    }
}

#[tokio::test]
async fn an_endpoint_turning_slow_gets_its_unsendable_claims_handed_back_unsent() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let extra = [
        ("DELIVERY__LEASE_SECS", "4"),
        ("DELIVERY__TIMEOUT_SECS", "1"),
        ("DELIVERY__CONNECT_TIMEOUT_SECS", "1"),
        ("DELIVERY__CONCURRENCY", "8"),
    ];
    let d = Dispatcher::start(&nats, &db, &extra).await;
    let api = d.api();
    let receiver = Receiver::start().await;
    let (sub, _) = api
        .subscribe(
            &receiver.url(),
            &["payout.*"],
            json!({"max_concurrency": 1}),
        )
        .await;
    let publisher = publisher(&nats).await;
    // Fast at first: the dispatcher learns to claim four rounds ahead (half its concurrency).
    let fast = 10;
    for i in 0..fast {
        publisher
            .publish(&event("payout.created", i))
            .await
            .unwrap();
    }
    receiver.wait_for(fast as usize).await;
    // Then each attempt takes 0.9 s of a 4 s lease: a delivery queued behind three of them
    // would start with too little lease left for its 1 s timeout.
    receiver.always(Reply::delayed(200, Duration::from_millis(900)));
    let slow = 6;
    for i in fast..fast + slow {
        publisher
            .publish(&event("payout.created", i))
            .await
            .unwrap();
    }
    let n = (fast + slow) as usize;
    eventually("every delivery recorded", || async {
        let done = api.deliveries(&sub, "?status=succeeded&limit=100").await;
        (done.len() == n).then_some(())
    })
    .await;
    assert!(
        d.metric("webhook_claims_released_total", "").await >= 1.0,
        "a queued delivery was handed back"
    );
    // Handed back, not sent late or twice, and the claim that never sent it left no attempt.
    let all = api.deliveries(&sub, "?limit=100").await;
    assert!(all.iter().all(|d| d["attempts"] == 1), "{all:?}");
    let got = receiver.received();
    let ids: HashSet<&str> = got.iter().map(|r| header(r, "webhook-id")).collect();
    assert_eq!((got.len(), ids.len()), (n, n), "sent twice");
}

#[tokio::test]
async fn redeliver_leaves_an_attempt_in_flight_alone() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let d = Dispatcher::start(&nats, &db, &[]).await;
    let api = d.api();
    let receiver = Receiver::start().await;
    receiver.script([Reply::delayed(200, Duration::from_millis(1500))]);
    let (sub, _) = api.subscribe(&receiver.url(), &["deal.*"], json!({})).await;
    publisher(&nats)
        .await
        .publish(&event("deal.created", 1))
        .await
        .unwrap();
    let first = receiver.wait_for(1).await.remove(0);
    let id = header(&first, "x-webhook-delivery").to_owned();
    let (status, err) = api
        .call(
            "POST",
            &format!("/crm/webhook-deliveries/{id}/redeliver"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "delivery_in_flight");
    api.wait_delivery(&sub, |d| d["status"] == "succeeded")
        .await;
    assert_eq!(
        receiver.received().len(),
        1,
        "no second send while in flight"
    );

    let (status, _) = api
        .call(
            "POST",
            &format!("/crm/webhook-deliveries/{id}/redeliver"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    receiver.wait_for(2).await;
}

#[tokio::test]
async fn proxies_from_the_environment_are_ignored_and_a_configured_one_is_used() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let target = Receiver::start().await;
    // A plain HTTP server sees a proxied request as `POST http://<target>/hook`, so a
    // receiver stands in for a forwarding proxy.
    let proxy = Receiver::start().await;
    let proxy_url = format!("http://{}", proxy.addr);

    let mut env = dispatcher_env(&nats, &db, &[("HTTP__LISTEN", "127.0.0.1:0")]);
    for name in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"] {
        env.push((name.to_owned(), proxy_url.clone()));
    }
    env.push(("NO_PROXY".to_owned(), String::new()));
    env.push(("no_proxy".to_owned(), String::new()));
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let process = ServiceProcess::spawn(env!("CARGO_BIN_EXE_webhook-dispatcher"), &[], &env);
    wait_ready(process.addr()).await;
    let api = Api {
        base: format!("http://{}", process.addr()),
    };
    api.subscribe(&target.url(), &["deal.*"], json!({})).await;
    let publisher = publisher(&nats).await;
    publisher.publish(&event("deal.created", 1)).await.unwrap();
    target.wait_for(1).await;
    assert!(proxy.received().is_empty(), "went through the env proxy");
    drop(process);

    let configured = Dispatcher::start(
        &nats,
        &db,
        &[
            ("DELIVERY__PROXY", proxy_url.as_str()),
            ("INTAKE__CONSUMER", "with-proxy"),
        ],
    )
    .await;
    let (status, _) = configured
        .api()
        .call("GET", "/crm/webhook-subscriptions", None)
        .await;
    assert_eq!(status, 200);
    publisher.publish(&event("deal.created", 2)).await.unwrap();
    let via = proxy.wait_for(1).await.remove(0);
    assert_eq!(header(&via, "x-webhook-event"), "deal.created");
}
