//! `/widget`: the operator API for widget keys, handshakes by key and origin, deactivation,
//! pushes to a key's sockets and the Discord request relay.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::http_client;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_key_api_requires_the_bearer_key_and_validates_origins() {
    let (_nats, _db, gw) = admin_gateway(&[]).await;
    let http = http_client();
    let create = json!({"name": "Acme shop", "allowed_origins": [ACME]});

    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            http.post(gw.url("/api/widget-keys"))
                .json(&create)
                .send()
                .await
                .unwrap()
        ),
        401,
        "no bearer"
    );
    assert_eq!(
        status(
            http.post(gw.url("/api/widget-keys"))
                .bearer_auth("not-the-key")
                .json(&create)
                .send()
                .await
                .unwrap()
        ),
        401,
        "wrong bearer"
    );
    assert_eq!(
        status(http.get(gw.url("/api/widget-keys")).send().await.unwrap()),
        401,
        "list without bearer"
    );

    let response = http
        .post(gw.url("/api/widget-keys"))
        .bearer_auth(API_KEY)
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let created: Value = response.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("wk_"), "{created}");
    assert_eq!(created["name"], "Acme shop");
    assert_eq!(created["allowed_origins"], json!([ACME]));
    assert_eq!(created["active"], true);
    time::OffsetDateTime::parse(
        created["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    let shown = http
        .get(gw.url(&format!("/api/widget-keys/{key}")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status().as_u16(), 200);
    let shown: Value = shown.json().await.unwrap();
    assert_eq!(shown["key"], key.as_str());
    assert_eq!(shown["active"], true);

    let list: Value = http
        .get(gw.url("/api/widget-keys"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key"] == key.as_str()),
        "{list}"
    );
    assert_eq!(
        status(
            http.get(gw.url("/api/widget-keys/wk_doesnotexist"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap()
        ),
        404
    );

    for bad in [
        "https://acme.example/shop",
        "acme.example",
        "ftp://acme.example",
    ] {
        let response = http
            .post(gw.url("/api/widget-keys"))
            .bearer_auth(API_KEY)
            .json(&json!({"name": "bad", "allowed_origins": [bad]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422, "origin {bad:?}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains("allowed_origins"),
            "422 names the field: {body}"
        );
    }

    let deactivated = http
        .post(gw.url(&format!("/api/widget-keys/{key}/deactivate")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deactivated.status().as_u16(), 200);
    let deactivated: Value = deactivated.json().await.unwrap();
    assert_eq!(deactivated["key"], key.as_str());
    assert_eq!(deactivated["active"], false);
    assert_eq!(
        status(
            http.post(gw.url("/api/widget-keys/wk_doesnotexist/deactivate"))
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap()
        ),
        404
    );
    assert_eq!(
        status(
            http.post(gw.url(&format!("/api/widget-keys/{key}/deactivate")))
                .send()
                .await
                .unwrap()
        ),
        401,
        "deactivate without bearer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_handshake_checks_key_and_origin_and_deactivation_disconnects() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let key = gw.create_widget_key("Acme shop", &[ACME]).await;
    let any = gw.create_widget_key("Anywhere", &["*"]).await;
    let w = || Connect::to(&gw, "/widget");

    d.connect_ok("by-key", w().auth(json!({"key": key})).origin(ACME))
        .await;
    d.connect_ok(
        "by-widget-key",
        w().auth(json!({"widgetKey": key})).origin(ACME),
    )
    .await;
    d.connect_ok("by-query", w().query("key", &key).origin(ACME))
        .await;
    d.connect_ok(
        "any",
        w().auth(json!({"key": any}))
            .origin("https://elsewhere.example:8443"),
    )
    .await;

    let refusals = [
        (
            "evil-origin",
            w().auth(json!({"key": key})).origin("https://evil.example"),
            "origin not allowed",
        ),
        (
            "no-origin",
            w().auth(json!({"key": key})),
            "origin not allowed",
        ),
        ("no-key", w().origin(ACME), "widget key required"),
        (
            "unknown-key",
            w().auth(json!({"key": "wk_unknown0123456789"}))
                .origin(ACME),
            "unknown widget key",
        ),
    ];
    for (name, options, expected) in refusals {
        assert_eq!(d.connect_err(name, options).await, expected, "{name}");
    }

    let response = http_client()
        .post(gw.url(&format!("/api/widget-keys/{key}/deactivate")))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    for conn in ["by-key", "by-widget-key", "by-query"] {
        let told = d.next_pushed(conn, "widget:deactivated", |_| true).await;
        assert_eq!(told.first(), json!({"reason": "widget key deactivated"}));
        let gone = d.next_pushed(conn, "disconnect", |_| true).await;
        assert_eq!(gone.first(), "io server disconnect", "{conn}");
        assert!(told.seq < gone.seq);
    }
    assert_eq!(
        d.connect_err("after", w().auth(json!({"key": key})).origin(ACME))
            .await,
        "widget key inactive"
    );

    // The other key's socket is unaffected: still connected, still receiving its pushes.
    let nc = async_nats::connect(nats.url()).await.unwrap();
    nats_publish_until(
        &d,
        &nc,
        &format!("rt.widget.{any}.update"),
        "any",
        "widget:update",
        |n| json!({"probe": n}),
    )
    .await;
    assert!(d.is_connected("any").await);
    assert_eq!(d.count("any", "widget:deactivated", |_| true), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn widget_updates_and_intercom_notifications_reach_only_their_key() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let acme = gw.create_widget_key("Acme shop", &[ACME]).await;
    let other = gw
        .create_widget_key("Other shop", &["https://other.example"])
        .await;
    d.connect_ok(
        "acme",
        Connect::to(&gw, "/widget")
            .auth(json!({"key": acme}))
            .origin(ACME),
    )
    .await;
    d.connect_ok(
        "other",
        Connect::to(&gw, "/widget")
            .auth(json!({"key": other}))
            .origin("https://other.example"),
    )
    .await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    nats_publish_until(
        &d,
        &nc,
        &format!("rt.widget.{acme}.update"),
        "acme",
        "widget:update",
        |n| json!({"probe": n}),
    )
    .await;
    nats_publish_until(
        &d,
        &nc,
        &format!("rt.widget.{other}.update"),
        "other",
        "widget:update",
        |n| json!({"probe": n}),
    )
    .await;

    let update =
        json!({"theme": {"color": "#ff6600"}, "title": "Need a boost?", "n": [1, 2.5, null, true]});
    nc.publish(
        format!("rt.widget.{acme}.update"),
        update.to_string().into(),
    )
    .await
    .unwrap();
    let notify = json!({"ticket_id": 7, "status": "answered"});
    nc.publish(
        format!("rt.widget.{acme}.intercom_notify"),
        notify.to_string().into(),
    )
    .await
    .unwrap();
    let marker = json!({"marker": "other"});
    nc.publish(
        format!("rt.widget.{other}.update"),
        marker.to_string().into(),
    )
    .await
    .unwrap();
    nc.flush().await.unwrap();

    assert_eq!(
        d.next_matching("acme", "widget:update", |v| v.get("theme").is_some())
            .await,
        update,
        "relayed as is"
    );
    assert_eq!(d.next_event("acme", "widget:intercom:notify").await, notify);
    d.assert_no_event(
        "other",
        "widget:update",
        |v| v.get("theme").is_some(),
        "widget:update",
        |v| *v == marker,
    )
    .await;
    assert_eq!(d.count("other", "widget:intercom:notify", |_| true), 0);
    assert_eq!(d.count("acme", "widget:update", |v| *v == marker), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_request_is_relayed_to_the_backend_and_answered() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    let key = gw.create_widget_key("Acme shop", &[ACME]).await;
    d.connect_ok(
        "w",
        Connect::to(&gw, "/widget")
            .auth(json!({"key": key}))
            .origin(ACME),
    )
    .await;

    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = nc.subscribe("cmd.discord.request_send").await.unwrap();
    nats_sync(&nc).await;
    let (tx, mut requests) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let responder = nc.clone();
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(message) = sub.next().await {
            n += 1;
            let body: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            let reply = json!({"ok": true, "request_id": format!("req-{n}"), "echo": body["data"]});
            if let Some(to) = message.reply {
                responder
                    .publish(to, reply.to_string().into())
                    .await
                    .unwrap();
                responder.flush().await.unwrap();
            }
            let _ = tx.send(body);
        }
    });

    let data = json!({"game": "valorant", "rank": "gold", "message": "boost me"});
    let ack = d.emit_ack("w", "discord:request-send", json!([data])).await;
    let expected = json!({"ok": true, "request_id": "req-1", "echo": data});
    assert_eq!(ack, expected, "the ack gets the backend's reply");
    assert_eq!(
        d.next_event("w", "discord:request-response").await,
        expected,
        "and it is emitted as discord:request-response"
    );
    let request = requests.recv().await.unwrap();
    assert_eq!(
        request,
        json!({"widget_key": key, "origin": ACME, "data": data})
    );
    assert_schema("discord-request.schema.json", &request);

    // Without an ack callback the reply is emitted only.
    d.emit("w", "discord:request-send", json!([{"n": 2}])).await;
    assert_eq!(
        d.next_event("w", "discord:request-response").await,
        json!({"ok": true, "request_id": "req-2", "echo": {"n": 2}})
    );
    assert_eq!(requests.recv().await.unwrap()["data"], json!({"n": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_request_without_an_answer_fails_with_the_documented_shape() {
    let (nats, _db, gw) = admin_gateway(&[("WIDGET__REQUEST_TIMEOUT_MS", "400".to_owned())]).await;
    let d = Driver::start().await;
    let key = gw.create_widget_key("Acme shop", &[ACME]).await;
    d.connect_ok(
        "w",
        Connect::to(&gw, "/widget")
            .auth(json!({"key": key}))
            .origin(ACME),
    )
    .await;

    let check = |r: &Value, codes: &[&str]| {
        assert_eq!(r["ok"], false, "{r}");
        let code = r["error"]["code"].as_str().unwrap_or_default();
        assert!(codes.contains(&code), "code {code:?} not in {codes:?}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
        assert_eq!(r.as_object().unwrap().len(), 2, "{r}");
        assert_eq!(r["error"].as_object().unwrap().len(), 2, "{r}");
        assert_schema("command-reply.schema.json", r);
    };

    // Nobody subscribed: `unavailable` (NATS reports no responders) or `timeout`.
    let nobody = d
        .emit_ack("w", "discord:request-send", json!([{"n": 1}]))
        .await;
    check(&nobody, &["unavailable", "timeout"]);
    assert_eq!(d.next_event("w", "discord:request-response").await, nobody);

    // A backend that never answers: `timeout`.
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut silent = nc.subscribe("cmd.discord.request_send").await.unwrap();
    nats_sync(&nc).await;
    let started = std::time::Instant::now();
    let late = d
        .emit_ack("w", "discord:request-send", json!([{"n": 2}]))
        .await;
    check(&late, &["timeout"]);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it waited widget.request_timeout_ms"
    );
    let seen = silent.next().await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.payload).unwrap()["data"],
        json!({"n": 2})
    );
}
