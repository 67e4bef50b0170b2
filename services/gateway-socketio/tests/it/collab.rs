//! Collaboration on `/admin` and `/provider` ("collaboration" in `docs/gateway-socketio.md`):
//! typing between instances, chat pushes, attention items, followed chats and what
//! `/provider` receives. Two instances are two gateways on one NATS server and database.
//!
//! Negative checks are sound: what must not arrive is caused first, then a marker that travels
//! the same ordered path (one publisher connection, one gateway subscription, one socket);
//! once the marker is in, anything else would have been too.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use test_support::{NatsServer, TestDatabase, WAIT};

use crate::common::*;

/// Short typing timings, so an indicator times out within the test, and renewals are relayed
/// often enough for the start loop ([`type_until`]).
fn typing_env() -> Vec<(&'static str, String)> {
    vec![
        ("TYPING__TIMEOUT_MS", TYPING_TIMEOUT.as_millis().to_string()),
        ("TYPING__RENEW_MS", TYPING_RENEW.as_millis().to_string()),
    ]
}

const TYPING_TIMEOUT: Duration = Duration::from_millis(1500);
const TYPING_RENEW: Duration = Duration::from_millis(100);

/// Subscribes to `rt.gateway.typing` (in place on the server when it returns); keep the
/// client as long as the subscription.
async fn typing_relay(nats: &NatsServer) -> (async_nats::Client, async_nats::Subscriber) {
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let sub = nc.subscribe(events::subject::GATEWAY_TYPING).await.unwrap();
    nats_sync(&nc).await;
    (nc, sub)
}

/// The ops of `from`'s `rt.gateway.typing` messages in `channel` read from `sub`, until `stops`
/// stops of theirs were read. The gateway publishes on one connection, so everything it
/// relayed before those stops has been read too.
async fn relayed_ops(
    sub: &mut async_nats::Subscriber,
    channel: &str,
    from: &str,
    stops: usize,
) -> Vec<String> {
    let mut ops = Vec::new();
    while ops.iter().filter(|op| *op == "stop").count() < stops {
        let message = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no typing stop of {from} in {channel}: {ops:?}"))
            .unwrap();
        let v: Value = serde_json::from_slice(&message.payload).unwrap();
        if v["channel_id"] == channel && v["from"]["id"] == from {
            ops.push(v["op"].as_str().unwrap().to_owned());
        }
    }
    ops
}

/// At most how many starts `typing.renew_ms` lets through in `elapsed`.
fn allowed_starts(elapsed: Duration, renew: Duration) -> usize {
    elapsed.as_millis().div_ceil(renew.as_millis()) as usize + 1
}

/// Connects `name` to `/admin` of `gw` as user `sub`.
async fn admin_as(d: &Driver, name: &str, gw: &Gateway, sub: &str) {
    d.connect_ok(
        name,
        Connect::to(gw, "/admin").token(&admin_token(json!({"sub": sub}))),
    )
    .await;
}

/// Two gateway instances on one NATS server and database.
async fn two_instances(extra: &[(&str, String)]) -> (NatsServer, TestDatabase, Gateway, Gateway) {
    let (nats, db) = backends().await;
    let one = Gateway::start(&nats, &db, extra).await;
    let two = Gateway::start(&nats, &db, extra).await;
    (nats, db, one, two)
}

/// `{"channel_id", "kind", "id"}` of `user:typing` / `user:typing:stop`.
fn typing(channel: &str, kind: &str, id: &str) -> Value {
    json!({"channel_id": channel, "kind": kind, "id": id})
}

/// Emits `typing:start` in `channel` on `conn` (each acked ok) until every one of `receivers`
/// got `user:typing` `expected`: the first indicator of a test, which also proves the
/// receivers' instances subscribed to typing (core NATS drops what is published before).
/// Starts are relayed again once `typing.renew_ms` passed, and shown by an instance that had
/// not shown them yet.
async fn type_until(d: &Driver, conn: &str, channel: &str, expected: &Value, receivers: &[&str]) {
    let started = Instant::now();
    let mut pending: Vec<&str> = receivers.to_vec();
    while !pending.is_empty() {
        let ack = d
            .emit_ack(conn, "typing:start", json!([{"channel_id": channel}]))
            .await;
        assert_eq!(ack, json!({"ok": true}), "typing:start on {conn}");
        let mut still = Vec::new();
        for r in pending {
            let got = d
                .wait_pushed(
                    r,
                    "user:typing",
                    |v| v == expected,
                    Duration::from_millis(250),
                )
                .await;
            if got.is_none() {
                still.push(r);
            }
        }
        pending = still;
        assert!(
            started.elapsed() < WAIT,
            "{pending:?} never received user:typing {expected}"
        );
    }
}

/// Publishes pushes `make(n)` on `subject` until `conn` receives `event` with the `data` of
/// one of them: the first push of a test, which also proves the gateway
/// subscribed (core NATS drops what is published before). Like [`nats_publish_until`], for
/// pushes whose event carries only their `data`.
async fn push_until(
    d: &Driver,
    nc: &async_nats::Client,
    subject: &str,
    conn: &str,
    event: &str,
    make: impl Fn(u64) -> Value,
) {
    let started = Instant::now();
    let mut patience = Duration::from_millis(250);
    for n in 0.. {
        let message = make(n);
        let data = &message["data"];
        nc.publish(subject.to_owned(), message.to_string().into())
            .await
            .unwrap();
        nc.flush().await.unwrap();
        if d.wait_pushed(conn, event, |v| v == data, patience)
            .await
            .is_some()
        {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{conn} never received {event:?} from {subject}; it received:\n{}",
            d.dump(conn)
        );
        patience = (patience * 2).min(Duration::from_secs(2));
    }
}

/// Asserts `reply` is the refusal `{"ok": false, "error": {"code": code, "message"}}`.
fn assert_refused(reply: &Value, code: &str) {
    assert_eq!(reply["ok"], json!(false), "{reply}");
    assert_eq!(reply["error"]["code"], json!(code), "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
}

// ---------------------------------------------------------------------------------------------
// Typing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_other_members_on_every_instance_and_ends() {
    let (nats, _db, one, two) = two_instances(&typing_env()).await;
    let backend = ChatBackend::start(&nats).await;
    // u-3 sends its markers in channels of their own, so each marker is unique.
    for channel in ["c1", "m1", "m2"] {
        backend.channel(channel, &["u-1", "u-2", "u-3"], &[]);
    }
    let d = Driver::start().await;
    // u-1 types on instance one, with two more tabs (one per instance); u-2 reads on
    // instance two; u-3 on instance one sends the markers.
    admin_as(&d, "u1", &one, "u-1").await;
    admin_as(&d, "u1-same", &one, "u-1").await;
    admin_as(&d, "u1-other", &two, "u-1").await;
    admin_as(&d, "u2", &two, "u-2").await;
    admin_as(&d, "u3", &one, "u-3").await;
    let (u1, u3) = (typing("c1", "user", "u-1"), typing("c1", "user", "u-3"));
    let from_u1 = |v: &Value| v["id"] == "u-1";

    // Both instances deliver typing (u-3's reaches u-1's tabs and u-2).
    type_until(&d, "u3", "c1", &u3, &["u1", "u1-same", "u1-other", "u2"]).await;
    let ack = d
        .emit_ack("u3", "typing:stop", json!([{"channel_id": "c1"}]))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    for conn in ["u1", "u1-same", "u1-other", "u2"] {
        d.next_pushed(conn, "user:typing:stop", |v| *v == u3).await;
    }

    // Not renewed: it times out on its own, typing.timeout_ms after the start.
    let started = Instant::now();
    let ack = d
        .emit_ack("u1", "typing:start", json!([{"channel_id": "c1"}]))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    d.next_pushed("u2", "user:typing", |v| *v == u1).await;
    d.next_pushed("u3", "user:typing", |v| *v == u1).await; // the same instance
    let stop = d.next_pushed("u2", "user:typing:stop", |v| *v == u1).await;
    assert!(
        stop.at.duration_since(started) >= TYPING_TIMEOUT,
        "timed out after {:?}",
        stop.at.duration_since(started)
    );
    d.next_pushed("u3", "user:typing:stop", |v| *v == u1).await;

    // Renewals within typing.renew_ms are acked and absorbed (not relayed between
    // instances); typing:stop ends it at once.
    let (_relay, mut relayed) = typing_relay(&nats).await;
    let renewing = Instant::now();
    for _ in 0..3 {
        let ack = d
            .emit_ack("u1", "typing:start", json!([{"channel_id": "c1"}]))
            .await;
        assert_eq!(ack, json!({"ok": true}));
    }
    let renewed_in = renewing.elapsed();
    let shown = d.next_pushed("u2", "user:typing", |v| *v == u1).await;
    let ack = d
        .emit_ack("u1", "typing:stop", json!([{"channel_id": "c1"}]))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    let stop = d.next_pushed("u2", "user:typing:stop", |v| *v == u1).await;
    assert!(
        stop.at.duration_since(shown.at) < TYPING_TIMEOUT,
        "typing:stop, not the timeout"
    );
    let ops = relayed_ops(&mut relayed, "c1", "u-1", 1).await;
    let starts = ops.iter().filter(|op| *op == "start").count();
    assert!(
        (1..=allowed_starts(renewed_in, TYPING_RENEW)).contains(&starts),
        "{starts} of 3 starts in {renewed_in:?} relayed: {ops:?}"
    );

    // Nothing of u-1's typing reached any of its own sockets, on either instance: the marker
    // is u-3's typing, relayed after it by the same instance.
    let m1 = typing("m1", "user", "u-3");
    d.emit_ack("u3", "typing:start", json!([{"channel_id": "m1"}]))
        .await;
    for conn in ["u1", "u1-same", "u1-other"] {
        d.assert_no_event(conn, "user:typing", from_u1, "user:typing", |v| *v == m1)
            .await;
        assert_eq!(d.count(conn, "user:typing:stop", from_u1), 0, "{conn}");
    }

    // A socket that leaves while typing stops typing. (Its participant's last start here was
    // relayed above: one more is relayed once typing.renew_ms passed, stop or not.)
    tokio::time::sleep(TYPING_RENEW).await;
    d.emit_ack("u1", "typing:start", json!([{"channel_id": "c1"}]))
        .await;
    let shown = d.next_pushed("u2", "user:typing", |v| *v == u1).await;
    d.close("u1").await;
    let stop = d.next_pushed("u2", "user:typing:stop", |v| *v == u1).await;
    assert!(
        stop.at.duration_since(shown.at) < TYPING_TIMEOUT,
        "the socket leaving, not the timeout"
    );
    let m2 = typing("m2", "user", "u-3");
    d.emit_ack("u3", "typing:start", json!([{"channel_id": "m2"}]))
        .await;
    for conn in ["u1-same", "u1-other"] {
        d.assert_no_event(conn, "user:typing", from_u1, "user:typing", |v| *v == m2)
            .await;
        assert_eq!(d.count(conn, "user:typing:stop", from_u1), 0, "{conn}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_start_and_stop_relays_one_start_per_renewal() {
    let renew = Duration::from_millis(1000);
    let (nats, _db, gw) = admin_gateway(&[
        ("TYPING__RENEW_MS", renew.as_millis().to_string()),
        ("TYPING__TIMEOUT_MS", "6000".to_owned()),
    ])
    .await;
    let backend = ChatBackend::start(&nats).await;
    backend.channel("c1", &["u-1", "u-2"], &[]);
    let d = Driver::start().await;
    admin_as(&d, "u1", &gw, "u-1").await;
    admin_as(&d, "u1-tab", &gw, "u-1").await;
    let (_relay, mut relayed) = typing_relay(&nats).await;
    let c1 = json!([{"channel_id": "c1"}]);
    let started = Instant::now();
    for i in 0..10 {
        // Both tabs of the participant, in turn: the throttle is the participant's.
        let conn = if i % 2 == 0 { "u1" } else { "u1-tab" };
        assert_eq!(
            d.emit_ack(conn, "typing:start", c1.clone()).await,
            json!({"ok": true})
        );
        assert_eq!(
            d.emit_ack(conn, "typing:stop", c1.clone()).await,
            json!({"ok": true})
        );
    }
    let elapsed = started.elapsed();
    let ops = relayed_ops(&mut relayed, "c1", "u-1", 10).await;
    let starts = ops.iter().filter(|op| *op == "start").count();
    assert!(
        (1..=allowed_starts(elapsed, renew)).contains(&starts),
        "{starts} starts relayed in {elapsed:?}: {ops:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_viewing_does_not_undo_a_later_left() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let backend = ChatBackend::start(&nats).await;
    backend.channel("slow", &["u-1"], &[]);
    let d = Driver::start().await;
    admin_as(&d, "viewer", &gw, "u-1").await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    push_until(
        &d,
        &nc,
        "rt.chat.alert",
        "viewer",
        "chat_alert",
        |n| json!({"to": {"user_ids": ["u-1"]}, "data": {"warm": n}}),
    )
    .await;

    // channel:viewing waits for membership (not cached, a slow backend); channel:left, sent
    // right after it, does not.
    backend.delay(Duration::from_millis(500));
    let slow = json!([{"channel_id": "slow"}]);
    let (viewing, left) = tokio::join!(
        d.emit_ack("viewer", "channel:viewing", slow.clone()),
        d.emit_ack("viewer", "channel:left", slow.clone()),
    );
    assert_eq!(viewing, json!({"ok": true, "channel_id": "slow"}));
    assert_eq!(left, json!({"ok": true, "channel_id": "slow"}));
    assert_eq!(backend.requests(), 1, "membership was asked");

    // The socket does not view it: a message notifies it, and chat_message (emitted before
    // the notification, to the same socket) did not come.
    let data = json!({"id": "m-1", "channel_id": "slow"});
    let message =
        json!({"channel_id": "slow", "participants": {"user_ids": ["u-1"]}, "data": data});
    nc.publish("rt.chat.message", message.to_string().into())
        .await
        .unwrap();
    d.assert_no_event(
        "viewer",
        "chat_message",
        |_| true,
        "chatNotification",
        |v| *v == data,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_of_one_channel_share_one_request() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let backend = ChatBackend::start(&nats).await;
    backend.channel("c1", &["u-1"], &[]);
    backend.delay(Duration::from_millis(300));
    let d = Driver::start().await;
    admin_as(&d, "u1", &gw, "u-1").await;
    let c1 = json!([{"channel_id": "c1"}]);
    let acks = futures_util::future::join_all(
        (0..20).map(|_| d.emit_ack("u1", "typing:start", c1.clone())),
    )
    .await;
    assert!(acks.iter().all(|a| *a == json!({"ok": true})), "{acks:?}");
    assert_eq!(backend.requests(), 1);

    // A refusal is cached too (apart from member lists): asked once.
    let nope = json!([{"channel_id": "nope"}]);
    let acks = futures_util::future::join_all(
        (0..5).map(|_| d.emit_ack("u1", "typing:start", nope.clone())),
    )
    .await;
    for ack in &acks {
        assert_refused(ack, "forbidden");
    }
    assert_refused(&d.emit_ack("u1", "typing:start", nope).await, "forbidden");
    assert_eq!(backend.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_needs_membership_and_a_backend_to_ask() {
    let (nats, _db, gw) = admin_gateway(&typing_env()).await;
    let d = Driver::start().await;
    admin_as(&d, "member", &gw, "u-1").await;
    admin_as(&d, "outsider", &gw, "u-9").await;
    d.connect_ok(
        "nobody",
        Connect::to(&gw, "/admin").token(&admin_token(json!({"sub": null}))),
    )
    .await;
    let c1 = json!([{"channel_id": "c1"}]);

    // No backend: nothing is allowed.
    let reply = d.emit_ack("member", "typing:start", c1.clone()).await;
    assert_refused(&reply, "unavailable");

    let backend = ChatBackend::start(&nats).await;
    backend.channel("c1", &["u-1"], &[]);
    assert_refused(
        &d.emit_ack("outsider", "typing:start", c1.clone()).await,
        "forbidden",
    );
    assert_eq!(
        d.emit_ack("member", "typing:start", c1.clone()).await,
        json!({"ok": true})
    );
    assert_refused(
        &d.emit_ack("nobody", "typing:start", c1.clone()).await,
        "no_identity",
    );
    for bad in [json!([{"channel_id": "c 1"}]), json!([{}]), json!([])] {
        assert_refused(
            &d.emit_ack("member", "typing:start", bad.clone()).await,
            "malformed",
        );
    }
    // Without an ack, a refusal is a collab:error.
    d.emit("outsider", "typing:start", c1.clone()).await;
    let error = d.next_event("outsider", "collab:error").await;
    assert_eq!(error["event"], "typing:start", "{error}");
    assert_eq!(error["error"]["code"], "forbidden", "{error}");
}

// ---------------------------------------------------------------------------------------------
// Chat pushes
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_message_goes_to_viewers_and_notifies_the_other_participants() {
    let (nats, _db, one, two) = two_instances(&[]).await;
    let backend = ChatBackend::start(&nats).await;
    backend.channel("c1", &["u-1", "u-2"], &[]);
    let d = Driver::start().await;
    // u-1 views c1 on instance one (and has a tab there that does not); u-2 is on instance
    // two; u-9 is not a participant, on both instances.
    admin_as(&d, "viewer", &one, "u-1").await;
    admin_as(&d, "viewer-tab", &one, "u-1").await;
    admin_as(&d, "notified", &two, "u-2").await;
    admin_as(&d, "outsider-one", &one, "u-9").await;
    admin_as(&d, "outsider-two", &two, "u-9").await;
    let ack = d
        .emit_ack("viewer", "channel:viewing", json!([{"channel_id": "c1"}]))
        .await;
    assert_eq!(ack["ok"], json!(true), "channel:viewing: {ack}");

    let nc = async_nats::connect(nats.url()).await.unwrap();
    // Both instances relay chat pushes (the first of each proves the subscription).
    for (conn, user) in [
        ("viewer", "u-1"),
        ("notified", "u-2"),
        ("outsider-two", "u-9"),
    ] {
        push_until(
            &d,
            &nc,
            "rt.chat.alert",
            conn,
            "chat_alert",
            |n| json!({"to": {"user_ids": [user]}, "data": {"warm": n}}),
        )
        .await;
    }

    let data = json!({"id": "m-1", "channel_id": "c1", "text": "hello",
                      "sender": {"kind": "user", "id": "u-2"}});
    let message = json!({"channel_id": "c1",
                         "participants": {"user_ids": ["u-1", "u-2"], "profile_ids": []},
                         "data": data});
    nc.publish("rt.chat.message", message.to_string().into())
        .await
        .unwrap();
    assert_eq!(d.next_event("viewer", "chat_message").await, data);
    assert_eq!(d.next_event("notified", "chatNotification").await, data);

    // Nobody else received it, in either form.
    let marker = json!({"marker": true});
    let push = json!({"to": {"user_ids": ["u-1", "u-2", "u-9"]}, "data": marker});
    nc.publish("rt.chat.alert", push.to_string().into())
        .await
        .unwrap();
    let is_m1 = |v: &Value| v["id"] == "m-1";
    let is_marker = |v: &Value| *v == json!({"marker": true});
    for (conn, unwanted) in [
        ("viewer", &["chatNotification"][..]),
        ("viewer-tab", &["chat_message", "chatNotification"]),
        ("notified", &["chat_message"]),
        ("outsider-one", &["chat_message", "chatNotification"]),
        ("outsider-two", &["chat_message", "chatNotification"]),
    ] {
        d.next_pushed(conn, "chat_alert", is_marker).await;
        for event in unwanted {
            assert_eq!(d.count(conn, event, is_m1), 0, "{conn} got {event}");
        }
    }
    assert_eq!(d.count("viewer", "chat_message", is_m1), 1, "once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_pushes_reach_the_addressed_users_and_invalid_ones_are_skipped() {
    let (nats, _db, gw) = admin_gateway(&[("COLLAB__MAX_RECIPIENTS", "3".to_owned())]).await;
    let d = Driver::start().await;
    admin_as(&d, "u1", &gw, "u-1").await;
    admin_as(&d, "u2", &gw, "u-2").await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    push_until(
        &d,
        &nc,
        "rt.chat.notification",
        "u1",
        "chatNotification",
        |n| json!({"to": {"user_ids": ["u-1"]}, "data": {"warm": n}}),
    )
    .await;

    let table = [
        ("notification", "chatNotification"),
        ("channel_read", "channel:read"),
        ("message_read", "message:read"),
        ("alert", "chat_alert"),
        ("assignment_changed", "assignment_changed"),
        ("followed_chats", "followed_chats"),
    ];
    for (kind, _) in table {
        let push = json!({"to": {"user_ids": ["u-1", 7]}, "data": {"kind": kind}});
        nc.publish(format!("rt.chat.{kind}"), push.to_string().into())
            .await
            .unwrap();
    }
    // Skipped: an unknown kind, not JSON, too many recipients, no data, a bad channel.
    let skipped = [
        (
            "rt.chat.typing",
            json!({"to": {"user_ids": ["u-2"]}, "data": {"bad": 1}}).to_string(),
        ),
        ("rt.chat.alert", "{not json".to_owned()),
        (
            "rt.chat.alert",
            json!({"to": {"user_ids": ["u-2", "a", "b", "c"]}, "data": {"bad": 2}}).to_string(),
        ),
        (
            "rt.chat.alert",
            json!({"to": {"user_ids": ["u-2"]}}).to_string(),
        ),
        (
            "rt.chat.message",
            json!({"channel_id": "c.1", "participants": {"user_ids": ["u-2"]}, "data": {"bad": 3}})
                .to_string(),
        ),
    ];
    for (subject, payload) in skipped {
        nc.publish(subject, payload.into()).await.unwrap();
    }
    for (kind, event) in table {
        assert_eq!(
            d.next_matching("u1", event, |v| v.get("kind").is_some())
                .await,
            json!({"kind": kind}),
            "{event}"
        );
    }
    let marker = json!({"to": {"user_ids": ["u-2"]}, "data": {"marker": true}});
    nc.publish("rt.chat.alert", marker.to_string().into())
        .await
        .unwrap();
    let is_bad = |v: &Value| v.get("bad").is_some() || v.get("kind").is_some();
    d.assert_no_event("u2", "chat_alert", is_bad, "chat_alert", |v| {
        v["marker"] == true
    })
    .await;
    for (_, event) in table {
        assert_eq!(d.count("u2", event, is_bad), 0, "u2 got {event}");
    }
    assert_eq!(d.count("u2", "chat_message", |_| true), 0);
}

// ---------------------------------------------------------------------------------------------
// Attention items
// ---------------------------------------------------------------------------------------------

const ATTENTION_KINDS: [&str; 7] = [
    "item_added",
    "item_removed",
    "item_resolved",
    "item_snoozed",
    "item_restored",
    "item_moved",
    "items_changed",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attention_events_reach_the_addressed_operator_only() {
    let (nats, _db, gw) = admin_gateway(&[]).await;
    let d = Driver::start().await;
    admin_as(&d, "op", &gw, "u-1").await;
    admin_as(&d, "other", &gw, "u-2").await;
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let to_op = |data: Value| json!({"to": {"user_ids": ["u-1"]}, "data": data});
    push_until(
        &d,
        &nc,
        "rt.attention.item_added",
        "op",
        "attention:item_added",
        |n| to_op(json!({"warm": n})),
    )
    .await;
    let publish = |subject: String, payload: Value| {
        let nc = nc.clone();
        async move {
            nc.publish(subject, payload.to_string().into())
                .await
                .unwrap();
        }
    };

    for kind in ATTENTION_KINDS {
        publish(format!("rt.attention.{kind}"), to_op(json!({"item": kind}))).await;
        let event = format!("attention:{kind}");
        assert_eq!(
            d.next_matching("op", &event, |v| v.get("item").is_some())
                .await,
            json!({"item": kind}),
            "{event}"
        );
    }
    publish("rt.attention.reraised".into(), to_op(json!({"item": "r"}))).await;
    assert_eq!(
        d.next_event("op", "attention:reraised").await,
        json!({"item": "r"})
    );

    // legacy "alongside": the modern event, then attention:reraised with the same data.
    let mut alongside = to_op(json!({"item": "a"}));
    alongside["legacy"] = json!("alongside");
    publish("rt.attention.item_restored".into(), alongside).await;
    let modern = d
        .next_pushed("op", "attention:item_restored", |v| v["item"] == "a")
        .await;
    let legacy = d
        .next_pushed("op", "attention:reraised", |v| v["item"] == "a")
        .await;
    assert_eq!(legacy.first(), modern.first());
    assert!(modern.seq < legacy.seq, "the modern event comes first");

    // legacy "instead": only attention:reraised. An unknown legacy value: skipped.
    let mut instead = to_op(json!({"item": "i"}));
    instead["legacy"] = json!("instead");
    publish("rt.attention.item_resolved".into(), instead).await;
    let mut unknown = to_op(json!({"item": "u"}));
    unknown["legacy"] = json!("both");
    publish("rt.attention.item_resolved".into(), unknown).await;
    publish(
        "rt.attention.item_deleted".into(),
        to_op(json!({"item": "d"})),
    )
    .await;
    assert_eq!(
        d.next_matching("op", "attention:reraised", |v| v["item"] == "i")
            .await,
        json!({"item": "i"})
    );
    // Profiles have no attention items.
    publish(
        "rt.attention.item_moved".into(),
        json!({"to": {"profile_ids": ["u-2"]}, "data": {"item": "p"}}),
    )
    .await;

    // The marker, to both operators, after everything else.
    publish(
        "rt.attention.items_changed".into(),
        json!({"to": {"user_ids": ["u-1", "u-2"]}, "data": {"marker": true}}),
    )
    .await;
    let is_marker = |v: &Value| v["marker"] == true;
    for conn in ["op", "other"] {
        d.next_pushed(conn, "attention:items_changed", is_marker)
            .await;
    }
    assert_eq!(
        d.count("op", "attention:item_resolved", |v| v["item"] == "i"),
        0
    );
    for item in ["u", "d"] {
        for event in [
            "attention:item_resolved",
            "attention:reraised",
            "attention:item_deleted",
        ] {
            assert_eq!(
                d.count("op", event, |v| v["item"] == item),
                0,
                "{event} {item}"
            );
        }
    }
    let other_got: Vec<String> = ATTENTION_KINDS
        .iter()
        .map(|k| format!("attention:{k}"))
        .chain(["attention:reraised".to_owned()])
        .filter(|event| d.count("other", event, |v| !is_marker(v)) > 0)
        .collect();
    assert!(
        other_got.is_empty(),
        "u-2 received {other_got:?}:\n{}",
        d.dump("other")
    );
}

// ---------------------------------------------------------------------------------------------
// Followed chats
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_chats_are_asked_of_the_backend() {
    let (nats, _db, gw) = admin_gateway(&[("COLLAB__REQUEST_TIMEOUT_MS", "400".to_owned())]).await;
    let d = Driver::start().await;
    admin_as(&d, "u1", &gw, "u-1").await;
    d.connect_ok(
        "nobody",
        Connect::to(&gw, "/admin").token(&admin_token(json!({"sub": null}))),
    )
    .await;
    let check = |r: &Value, codes: &[&str]| {
        assert_eq!(r["ok"], false, "{r}");
        let code = r["error"]["code"].as_str().unwrap_or_default();
        assert!(codes.contains(&code), "code {code:?} not in {codes:?}: {r}");
        assert_schema("command-reply.schema.json", r);
    };

    // No backend.
    let reply = d.emit_ack("u1", "get_followed_chats", json!([{}])).await;
    check(&reply, &["unavailable", "timeout"]);
    check(
        &d.emit_ack("nobody", "get_followed_chats", json!([])).await,
        &["no_identity"],
    );
    // Over collab.max_request_bytes: not sent.
    let big = json!([{"filter": "x".repeat(17 * 1024)}]);
    check(
        &d.emit_ack("u1", "get_followed_chats", big).await,
        &["too_large"],
    );

    // A backend that never answers: timeout, after collab.request_timeout_ms.
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut silent = nc.subscribe("cmd.chat.followed_chats").await.unwrap();
    nats_sync(&nc).await;
    let started = Instant::now();
    let reply = d
        .emit_ack("u1", "get_followed_chats", json!([{"n": 1}]))
        .await;
    check(&reply, &["timeout"]);
    assert!(started.elapsed() >= Duration::from_millis(400), "it waited");
    let seen = silent.next().await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&seen.payload).unwrap(),
        json!({"kind": "user", "id": "u-1", "data": {"n": 1}})
    );

    // A backend that answers (the silent one still listens: the first answer wins).
    let mut sub = nc.subscribe("cmd.chat.followed_chats").await.unwrap();
    nats_sync(&nc).await;
    let (tx, mut requests) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let responder = nc.clone();
    tokio::spawn(async move {
        while let Some(message) = sub.next().await {
            let body: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            let reply = json!({"ok": true, "chats": [{"channel_id": "c1"}], "asked": body["data"]});
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
    let reply = d
        .emit_ack("u1", "get_followed_chats", json!([{"page": 2}]))
        .await;
    assert_eq!(
        reply,
        json!({"ok": true, "chats": [{"channel_id": "c1"}], "asked": {"page": 2}})
    );
    assert_eq!(
        requests.recv().await.unwrap(),
        json!({"kind": "user", "id": "u-1", "data": {"page": 2}})
    );
    // No payload: data is null. Without an ack, the answer is the followed_chats event.
    d.emit("u1", "get_followed_chats", json!([])).await;
    assert_eq!(
        d.next_event("u1", "followed_chats").await,
        json!({"ok": true, "chats": [{"channel_id": "c1"}], "asked": null})
    );
    assert_eq!(requests.recv().await.unwrap()["data"], Value::Null);
}

// ---------------------------------------------------------------------------------------------
// /provider
// ---------------------------------------------------------------------------------------------

fn provider_env(jwks_url: &str) -> Vec<(&'static str, String)> {
    let mut env = typing_env();
    env.extend([
        ("PROVIDER__ISSUER", PROVIDER_ISSUER.to_owned()),
        ("PROVIDER__JWKS_URL", jwks_url.to_owned()),
        ("PROVIDER__AUDIENCE", PROVIDER_AUDIENCE.to_owned()),
        ("PROVIDER__JWKS_TIMEOUT_SECS", "2".to_owned()),
    ]);
    env
}

fn provider_token(key: &EncodingKey, sub: &str) -> String {
    let claims = claims(json!({"iss": PROVIDER_ISSUER, "aud": PROVIDER_AUDIENCE, "sub": sub}));
    sign(Algorithm::ES384, key, Some("key-a"), &claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_profiles_receive_their_chats_and_typing() {
    let jwks = JwksServer::start(vec![jwk("provider-es384-a.jwk.json", "key-a", "ES384")]).await;
    let (nats, _db, gw) = admin_gateway(&provider_env(&jwks.url)).await;
    let backend = ChatBackend::start(&nats).await;
    backend.channel("c1", &["u-1"], &["p-1"]);
    let d = Driver::start().await;
    let key = ec_key("provider-es384-a.key.pem");
    admin_as(&d, "admin", &gw, "u-1").await;
    d.connect_ok(
        "provider",
        Connect::to(&gw, "/provider").token(&provider_token(&key, "p-1")),
    )
    .await;
    d.connect_ok(
        "other-provider",
        Connect::to(&gw, "/provider").token(&provider_token(&key, "p-2")),
    )
    .await;
    let nc = async_nats::connect(nats.url()).await.unwrap();

    // A message of its chat, as a participant profile (no viewing on /provider).
    push_until(
        &d,
        &nc,
        "rt.chat.message",
        "provider",
        "chat_message",
        |n| {
            json!({"channel_id": "c1",
               "participants": {"user_ids": ["u-1"], "profile_ids": ["p-1"]},
               "data": {"id": format!("m-{n}"), "channel_id": "c1"}})
        },
    )
    .await;

    // Pushes addressed to its profile.
    for (kind, event) in [("channel_read", "channel:read"), ("alert", "chat_alert")] {
        let push = json!({"to": {"profile_ids": ["p-1"]}, "data": {"kind": kind}});
        nc.publish(format!("rt.chat.{kind}"), push.to_string().into())
            .await
            .unwrap();
        assert_eq!(
            d.next_event("provider", event).await,
            json!({"kind": kind}),
            "{event}"
        );
    }

    // /admin-only pushes never reach /provider, even naming the profile.
    for kind in ["assignment_changed", "followed_chats"] {
        let push = json!({"to": {"user_ids": ["p-1"], "profile_ids": ["p-1"]},
                          "data": {"admin_only": kind}});
        nc.publish(format!("rt.chat.{kind}"), push.to_string().into())
            .await
            .unwrap();
    }
    let marker = json!({"to": {"profile_ids": ["p-1", "p-2"]}, "data": {"marker": true}});
    nc.publish("rt.chat.alert", marker.to_string().into())
        .await
        .unwrap();
    d.assert_no_event(
        "provider",
        "assignment_changed",
        |_| true,
        "chat_alert",
        |v| v["marker"] == true,
    )
    .await;
    assert_eq!(d.count("provider", "followed_chats", |_| true), 0);
    // The other profile got none of p-1's chat.
    d.next_pushed("other-provider", "chat_alert", |v| v["marker"] == true)
        .await;
    for event in ["chat_message", "channel:read"] {
        assert_eq!(d.count("other-provider", event, |_| true), 0, "{event}");
    }
    assert_eq!(
        d.count("other-provider", "chat_alert", |v| v["marker"] != true),
        0
    );

    // Typing of an /admin user reaches the member profile, and the other way round.
    type_until(
        &d,
        "admin",
        "c1",
        &typing("c1", "user", "u-1"),
        &["provider"],
    )
    .await;
    type_until(
        &d,
        "provider",
        "c1",
        &typing("c1", "profile", "p-1"),
        &["admin"],
    )
    .await;
    let ack = d
        .emit_ack("provider", "typing:stop", json!([{"channel_id": "c1"}]))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    let p1 = typing("c1", "profile", "p-1");
    d.next_pushed("admin", "user:typing:stop", |v| *v == p1)
        .await;
    // p-2 is no member: refused.
    assert_refused(
        &d.emit_ack(
            "other-provider",
            "typing:start",
            json!([{"channel_id": "c1"}]),
        )
        .await,
        "forbidden",
    );
}
