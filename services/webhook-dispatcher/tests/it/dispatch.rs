//! webhook-dispatcher end to end: real PostgreSQL, real NATS, a real HTTP receiver.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use test_support::{NatsServer, ServiceProcess, TestDatabase, eventually};

#[tokio::test]
async fn crud_and_validation_errors_name_the_field() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let d = Dispatcher::start(&nats, &db, &[]).await;
    let api = d.api();

    let unauthorized = test_support::http_client()
        .get(format!("{}/crm/webhook-subscriptions", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    for (body, field) in [
        (json!({"event_types": ["deal.*"]}), "url"),
        (json!({"url": "ftp://x", "event_types": ["deal.*"]}), "url"),
        (
            json!({"url": "https://example.com/h", "event_types": []}),
            "event_types",
        ),
        (
            json!({"url": "https://example.com/h", "event_types": ["deal.*", "deal.status*"]}),
            "event_types[1]",
        ),
        (
            json!({"url": "https://example.com/h", "event_types": ["*.created"]}),
            "event_types[0]",
        ),
        (
            json!({"url": "https://example.com/h", "event_types": "deal.*"}),
            "event_types",
        ),
        (
            json!({"url": "https://example.com/h", "event_types": ["deal.*"], "max_attempts": 0}),
            "max_attempts",
        ),
        (
            json!({"url": "https://example.com/h", "event_types": ["deal.*"], "secret": "plain"}),
            "secret",
        ),
        (
            json!({"url": "http://10.0.0.5/h", "event_types": ["deal.*"]}),
            "url",
        ),
        (
            json!({"url": "https://example.com/h", "event_types": ["deal.*"], "colour": "red"}),
            "colour",
        ),
    ] {
        let (status, err) = api
            .call("POST", "/crm/webhook-subscriptions", Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{body}: {err}");
        assert_eq!(err["error"]["code"], "validation_failed");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    let (status, err) = test_support::http_client()
        .post(format!("{}/crm/webhook-subscriptions", api.base))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert_eq!(status, 400, "{err:?}");

    let (id, secret) = api
        .subscribe(
            "https://example.com/hook",
            &["deal.*"],
            json!({"description": "crm"}),
        )
        .await;
    assert!(secret.starts_with("whsec_"));
    let (status, one) = api
        .call("GET", &format!("/crm/webhook-subscriptions/{id}"), None)
        .await;
    assert_eq!((status, one["description"].as_str()), (200, Some("crm")));
    assert_eq!(one["max_attempts"], 3, "seed default");
    assert!(
        one.get("secret").is_none(),
        "the secret is not listed with the subscription"
    );
    let (_, s) = api
        .call(
            "GET",
            &format!("/crm/webhook-subscriptions/{id}/secret"),
            None,
        )
        .await;
    assert_eq!(s["secret"], secret.as_str());

    let (status, patched) = api
        .call(
            "PATCH",
            &format!("/crm/webhook-subscriptions/{id}"),
            Some(json!({"event_types": ["order.created"], "rate_limit_per_sec": 5})),
        )
        .await;
    assert_eq!(
        (
            status,
            patched["event_types"].clone(),
            patched["rate_limit_per_sec"].clone()
        ),
        (200, json!(["order.created"]), json!(5))
    );
    let (_, patched) = api
        .call(
            "PATCH",
            &format!("/crm/webhook-subscriptions/{id}"),
            Some(json!({"rate_limit_per_sec": null})),
        )
        .await;
    assert_eq!(patched["rate_limit_per_sec"], Value::Null);

    for _ in 0..2 {
        api.subscribe("https://example.com/other", &["*"], json!({}))
            .await;
    }
    let (_, page) = api
        .call("GET", "/crm/webhook-subscriptions?limit=2", None)
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = api
        .call(
            "GET",
            &format!("/crm/webhook-subscriptions?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.call("GET", "/crm/webhook-subscriptions?limit=0", None)
            .await
            .0,
        422
    );

    let (_, types) = api.call("GET", "/crm/webhook-event-types", None).await;
    assert_eq!(types["data"].as_array().unwrap().len(), 37);

    assert_eq!(
        api.call("DELETE", &format!("/crm/webhook-subscriptions/{id}"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        api.call("GET", &format!("/crm/webhook-subscriptions/{id}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        api.call("GET", "/crm/webhook-subscriptions/not-a-uuid", None)
            .await
            .0,
        422
    );
}

#[tokio::test]
async fn deliveries_are_signed_for_standard_webhooks_and_the_seed_header() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let d = Dispatcher::start(&nats, &db, &[]).await;
    let receiver = Receiver::start().await;
    let api = d.api();
    let (deal_sub, secret) = api.subscribe(&receiver.url(), &["deal.*"], json!({})).await;

    let publisher = publisher(&nats).await;
    publisher.publish(&event("order.created", 1)).await.unwrap();
    let published = event("deal.status_changed", 555);
    publisher.publish(&published).await.unwrap();
    publisher
        .publish(&event("deal.created", 556))
        .await
        .unwrap();

    let got = receiver.wait_for(2).await;
    let types: Vec<&str> = got.iter().map(|r| header(r, "x-webhook-event")).collect();
    assert!(
        types.contains(&"deal.status_changed") && types.contains(&"deal.created"),
        "{types:?}"
    );
    let r = got
        .iter()
        .find(|r| header(r, "x-webhook-event") == "deal.status_changed")
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&r.body).unwrap()["id"],
        published.id.to_string()
    );
    assert_eq!(header(r, "webhook-id"), published.id.to_string());
    assert_eq!(header(r, "x-webhook-attempt"), "1");
    assert_eq!(header(r, "content-type"), "application/json");

    // The Standard Webhooks reference implementation accepts the delivery.
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&r.body, &r.headers)
        .unwrap();

    // An independent HMAC over "t.body" matches X-Webhook-Signature.
    let x = header(r, "x-webhook-signature");
    let t = x.split(',').find_map(|p| p.strip_prefix("t=")).unwrap();
    assert_eq!(t, header(r, "webhook-timestamp"));
    let key = base64_decode(secret.strip_prefix("whsec_").unwrap());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&r.body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(x, format!("t={t},v1={expected}"));

    // order.created matched no subscription: never delivered. The deal ones are recorded.
    let deliveries = eventually("both deliveries recorded as succeeded", || async {
        let done = api.deliveries(&deal_sub, "?status=succeeded").await;
        (done.len() == 2).then_some(done)
    })
    .await;
    assert!(
        deliveries
            .iter()
            .all(|d| d["event_type"].as_str().unwrap().starts_with("deal."))
    );
    assert_eq!(deliveries[0]["attempt_log"][0]["response_status"], 200);
    assert_eq!(
        deliveries[0]["attempt_log"][0]["response_body"],
        "receiver says hi"
    );
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| header(r, "x-webhook-event") != "order.created")
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

#[tokio::test]
async fn failures_are_retried_then_succeed_or_fail_and_can_be_redelivered() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let d = Dispatcher::start(&nats, &db, &[]).await;
    let api = d.api();
    let flaky = Receiver::start().await;
    flaky.script([Reply::status(500), Reply::status(500)]);
    let (flaky_sub, _) = api
        .subscribe(&flaky.url(), &["order.status_changed"], json!({}))
        .await;
    let publisher = publisher(&nats).await;
    publisher
        .publish(&event("order.status_changed", 1))
        .await
        .unwrap();

    let got = flaky.wait_for(3).await;
    let attempts: Vec<&str> = got.iter().map(|r| header(r, "x-webhook-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert!(
        got.windows(2)
            .all(|w| header(&w[0], "webhook-id") == header(&w[1], "webhook-id"))
    );
    assert!(
        got[2].at - got[1].at > got[1].at - got[0].at,
        "backoff grows"
    );
    let done = api
        .wait_delivery(&flaky_sub, |d| d["status"] == "succeeded")
        .await;
    let statuses: Vec<i64> = done["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["response_status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 200]);

    let down = Receiver::start().await;
    down.always(Reply::status(500));
    let (down_sub, _) = api.subscribe(&down.url(), &["payout.*"], json!({})).await;
    publisher
        .publish(&event("payout.created", 9))
        .await
        .unwrap();
    let failed = api
        .wait_delivery(&down_sub, |d| d["status"] == "failed")
        .await;
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["attempt_log"].as_array().unwrap().len(), 3);
    assert_eq!(down.received().len(), 3, "exactly 3 attempts");
    assert_eq!(api.deliveries(&down_sub, "?status=failed").await.len(), 1);
    assert_eq!(api.deliveries(&down_sub, "?status=pending").await.len(), 0);

    down.always(Reply::status(204));
    let id = failed["id"].as_str().unwrap();
    assert_eq!(
        api.call(
            "POST",
            &format!("/crm/webhook-deliveries/{id}/redeliver"),
            None
        )
        .await
        .0,
        202
    );
    let (_, again) = eventually("redelivered", || async {
        let (s, d) = api
            .call("GET", &format!("/crm/webhook-deliveries/{id}"), None)
            .await;
        (d["status"] == "succeeded").then_some((s, d))
    })
    .await;
    assert_eq!(again["attempt_log"].as_array().unwrap().len(), 4);
    assert_eq!(down.received().len(), 4);

    // Recover everything that failed since a time.
    down.always(Reply::status(500));
    publisher
        .publish(&event("payout.status_changed", 10))
        .await
        .unwrap();
    api.wait_delivery(&down_sub, |d| d["status"] == "failed")
        .await;
    down.always(Reply::status(200));
    let (status, recovered) = api
        .call(
            "POST",
            &format!("/crm/webhook-subscriptions/{down_sub}/recover"),
            Some(json!({"since": "2000-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!((status, recovered["recovered"].as_i64()), (202, Some(1)));
    eventually("recovered delivery succeeds", || async {
        api.deliveries(&down_sub, "?status=failed")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn gone_disables_and_retry_after_is_honoured() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let d = Dispatcher::start(&nats, &db, &[]).await;
    let api = d.api();
    let publisher = publisher(&nats).await;

    let gone = Receiver::start().await;
    gone.always(Reply::status(410));
    let (gone_sub, _) = api.subscribe(&gone.url(), &["customer.*"], json!({})).await;
    publisher
        .publish(&event("customer.created", 1))
        .await
        .unwrap();
    let sub = eventually("disabled by 410", || async {
        let (_, s) = api
            .call(
                "GET",
                &format!("/crm/webhook-subscriptions/{gone_sub}"),
                None,
            )
            .await;
        (s["enabled"] == false).then_some(s)
    })
    .await;
    assert!(sub["disabled_reason"].as_str().unwrap().contains("410"));
    assert_eq!(gone.received().len(), 1, "no retry after 410");

    let busy = Receiver::start().await;
    busy.script([Reply {
        headers: vec![("retry-after", "2".to_owned())],
        ..Reply::status(429)
    }]);
    api.subscribe(&busy.url(), &["product.*"], json!({})).await;
    publisher
        .publish(&event("product.created", 2))
        .await
        .unwrap();
    let got = busy.wait_for(2).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After 2 s honoured, waited {gap:?}"
    );
}

#[tokio::test]
async fn rotation_signs_with_both_secrets() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let d = Dispatcher::start(&nats, &db, &[]).await;
    let api = d.api();
    let receiver = Receiver::start().await;
    let (sub, old) = api
        .subscribe(&receiver.url(), &["profile.*"], json!({}))
        .await;
    let (status, rotated) = api
        .call(
            "POST",
            &format!("/crm/webhook-subscriptions/{sub}/secret/rotate"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    publisher(&nats)
        .await
        .publish(&event("profile.updated", 3))
        .await
        .unwrap();
    let r = receiver.wait_for(1).await.remove(0);
    assert_eq!(header(&r, "webhook-signature").split(' ').count(), 2);
    assert_eq!(header(&r, "x-webhook-signature").matches("v1=").count(), 2);
    for secret in [&old, &new] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .unwrap();
    }
    let (_, current) = api
        .call(
            "GET",
            &format!("/crm/webhook-subscriptions/{sub}/secret"),
            None,
        )
        .await;
    assert_eq!(current["secret"], new.as_str());

    // A rotation with no grace retires the old secret at once.
    let (_, third) = api
        .call(
            "POST",
            &format!("/crm/webhook-subscriptions/{sub}/secret/rotate"),
            Some(json!({"grace_secs": 0})),
        )
        .await;
    let (status, _) = api
        .call(
            "POST",
            &format!("/crm/webhook-subscriptions/{sub}/test"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let r = receiver.wait_for(2).await.remove(1);
    assert_eq!(header(&r, "x-webhook-event"), "webhook.test");
    assert_eq!(header(&r, "webhook-signature").split(' ').count(), 1);
    standardwebhooks::Webhook::new(third["secret"].as_str().unwrap())
        .unwrap()
        .verify(&r.body, &r.headers)
        .unwrap();
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allow_listed() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    // No allow-list: 127.0.0.1 is refused at creation and at delivery (via a hostname).
    let d = Dispatcher::start(&nats, &db, &[("DELIVERY__ALLOW_NETWORKS", "[]")]).await;
    let api = d.api();
    let receiver = Receiver::start().await;
    let (status, err) = api
        .call(
            "POST",
            "/crm/webhook-subscriptions",
            Some(json!({"url": receiver.url(), "event_types": ["*"]})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(err["error"]["field"], "url");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("loopback"),
        "{err}"
    );

    let via_name = format!("http://localhost:{}/hook", receiver.addr.port());
    let (sub, _) = api.subscribe(&via_name, &["deal.*"], json!({})).await;
    publisher(&nats)
        .await
        .publish(&event("deal.created", 1))
        .await
        .unwrap();
    let failed = api.wait_delivery(&sub, |d| d["status"] == "failed").await;
    assert_eq!(failed["attempts"], 1, "a refusal is not retried");
    assert!(
        failed["last_error"].as_str().unwrap().contains("refused"),
        "{failed}"
    );
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn two_replicas_never_send_the_same_delivery_twice() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let a = Dispatcher::start(&nats, &db, &[]).await;
    let _b = Dispatcher::start(&nats, &db, &[]).await;
    let receiver = Receiver::start().await;
    let (sub, _) = a
        .api()
        .subscribe(&receiver.url(), &["order.*"], json!({}))
        .await;
    let publisher = publisher(&nats).await;
    let n = 100;
    for i in 0..n {
        publisher.publish(&event("order.updated", i)).await.unwrap();
    }
    receiver.wait_for(n as usize).await;
    let api = a.api();
    eventually("all recorded", || async {
        let done = api.deliveries(&sub, "?status=succeeded&limit=200").await;
        (done.len() == n as usize).then_some(())
    })
    .await;
    let all = api.deliveries(&sub, "?limit=200").await;
    assert!(all.iter().all(|d| d["attempts"] == 1), "one attempt each");
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for r in receiver.received() {
        *per_id
            .entry(header(&r, "webhook-id").to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_id.len(), n as usize);
    assert!(
        per_id.values().all(|c| *c == 1),
        "a webhook-id was sent twice"
    );
}

#[tokio::test]
async fn a_killed_dispatcher_loses_nothing_after_restart() {
    let nats = NatsServer::start();
    let db = TestDatabase::create().await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::delayed(200, Duration::from_millis(50)));
    let extra = [
        ("DELIVERY__LEASE_SECS", "3"),
        ("INTAKE__ACK_WAIT_SECS", "2"),
        ("DELIVERY__TIMEOUT_SECS", "2"),
        ("DELIVERY__CONNECT_TIMEOUT_SECS", "1"),
        ("DELIVERY__CONCURRENCY", "4"),
        ("HTTP__LISTEN", "127.0.0.1:0"),
    ];
    let env = dispatcher_env(&nats, &db, &extra);
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let bin = env!("CARGO_BIN_EXE_webhook-dispatcher");
    let first = ServiceProcess::spawn(bin, &[], &env);
    wait_ready(first.addr()).await;
    let api = Api {
        base: format!("http://{}", first.addr()),
    };
    api.subscribe(&receiver.url(), &["deal.*"], json!({})).await;

    let publisher = publisher(&nats).await;
    let mut published = Vec::new();
    for i in 0..60 {
        let e = event("deal.message_sent", i);
        published.push(e.id.to_string());
        publisher.publish(&e).await.unwrap();
    }
    receiver.wait_for(5).await;
    first.signal("KILL");
    drop(first);

    let second = ServiceProcess::spawn(bin, &[], &env);
    wait_ready(second.addr()).await;
    let seen = eventually("every event delivered after the restart", || async {
        let ids: std::collections::HashSet<String> = receiver
            .received()
            .iter()
            .map(|r| header(r, "webhook-id").to_owned())
            .collect();
        (ids.len() == published.len()).then_some(ids)
    })
    .await;
    for id in &published {
        assert!(seen.contains(id), "{id} lost");
    }
    // Any repeat carries the same webhook-id and the same body as the first send.
    let mut bodies: HashMap<String, axum::body::Bytes> = HashMap::new();
    for r in receiver.received() {
        let id = header(&r, "webhook-id").to_owned();
        if let Some(previous) = bodies.insert(id.clone(), r.body.clone()) {
            assert_eq!(previous, r.body, "{id} resent with another body");
        }
    }
}
