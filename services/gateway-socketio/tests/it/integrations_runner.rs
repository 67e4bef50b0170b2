//! Integrations (seed 002, `docs/integrations.md`) through the whole chain: the real
//! socket.io-client, two gateway instances, a real nats-server and PostgreSQL, the real
//! integrations-runner in process (integrations created through its REST API) and a local axum
//! API standing in for the third party. Every case goes through Socket.IO; what only the
//! runner decides in detail (retry timing, bucket arithmetic, signature schemes) is tested in
//! `services/integrations-runner/tests/it`.
//!
//! The runner runs on a runtime of its own, so [`Runner::kill`] can drop every task it has (its
//! NATS connection and in-flight executions included) at once, as a crash would.

mod chain;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::{WAIT, eventually};

use crate::common::*;
use chain::*;

#[tokio::test]
async fn join_is_allowed_in_the_project_and_refused_outside_it() {
    let c = Chain::start(&[]).await;
    c.connect("root", &c.one, "/").await;
    c.connect("admin", &c.two, "/admin").await;
    // Without a callback, the answer is the event.
    c.d.emit("root", "integration:join", json!([target(MAIN)]))
        .await;
    let joined = c.d.next_event("root", "integration:joined").await;
    assert_eq!(
        joined,
        json!({"integrationId": MAIN, "projectId": PROJECT, "room": format!("integration:{MAIN}")})
    );
    assert_schema("socketio-integration-room.schema.json", &joined);
    c.join("admin", MAIN).await;

    // A project the token does not list: the gateway refuses without asking the runner.
    let ack =
        c.d.emit_ack(
            "root",
            "integration:join",
            json!([{"projectId": OTHER_PROJECT, "integrationId": OTHER}]),
        )
        .await;
    assert_eq!(code(&ack), "forbidden", "{ack}");
    assert_schema("socketio-integration-ack.schema.json", &ack);
    // The runner says the integration is in another project, or does not exist.
    for id in [OTHER, UNKNOWN] {
        let ack =
            c.d.emit_ack("admin", "integration:join", json!([target(id)]))
                .await;
        assert_eq!(ack["ok"], false, "{ack}");
        assert_eq!(code(&ack), "not_found", "{id}: {ack}");
    }
    // Without a callback the refusal is integration:error.
    c.d.emit("root", "integration:join", json!([target(UNKNOWN)]))
        .await;
    let error = c.d.next_event("root", "integration:error").await;
    assert_eq!(error["event"], "integration:join");
    assert_eq!(error["integrationId"], UNKNOWN);
    assert_eq!(code(&error), "not_found", "{error}");
    assert_schema("socketio-integration-error.schema.json", &error);
    // Malformed, refused before any lookup: the error names the field.
    c.d.emit(
        "root",
        "integration:join",
        json!([{"projectId": PROJECT, "integrationId": "a:b"}]),
    )
    .await;
    let error = c.d.next_event("root", "integration:error").await;
    assert_eq!(code(&error), "invalid_payload", "{error}");
    assert_eq!(error["error"]["field"], "integrationId");
    // The handshake of `/` is the `/admin` one.
    let refused = c.d.connect_err("anonymous", Connect::to(&c.one, "/")).await;
    assert!(refused.contains("auth.token"), "{refused}");
}

/// Success and every kind of failure, to the caller and to the room on both instances, then
/// the usage they add up to in `integration:status` and in the room's usage push.
#[tokio::test]
async fn executions_reach_the_caller_and_the_room_then_status_counts_them() {
    let c = Chain::start(&[]).await;
    c.connect("caller", &c.one, "/").await;
    c.connect("local", &c.one, "/admin").await;
    c.connect("remote", &c.two, "/").await;
    for conn in ["caller", "local", "remote"] {
        c.join(conn, MAIN).await;
    }

    // A copy of what the gateway sends the runner (a plain subscriber beside its queue group).
    let nc = async_nats::connect(c.nats.url()).await.unwrap();
    let mut sent = nc
        .subscribe(events::subject::INTEGRATION_EXECUTE)
        .await
        .unwrap();
    nats_sync(&nc).await;

    // Without a callback: the caller's answer is the event, with the third party's data.
    c.d.emit(
        "caller",
        "integration:execute",
        json!([{"projectId": PROJECT, "integrationId": MAIN, "endpoint": "getUserTweets",
            "params": {"userId": "123", "limit": 5}, "requestData": {}}]),
    )
    .await;
    let done =
        c.d.next_event("caller", "integration:execution:completed")
            .await;
    assert_schema(
        "socketio-integration-execution-completed.schema.json",
        &done,
    );
    assert_eq!(done["endpoint"], "getUserTweets");
    assert_eq!(done["result"]["success"], true);
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(
        done["result"]["data"],
        json!({"user": "123", "query": {"max_results": "5"}, "bearer": true, "tweets": [{"id": "t1"}]})
    );
    let execution = done["executionId"].as_str().unwrap().to_owned();
    let request = tokio::time::timeout(WAIT, sent.next())
        .await
        .unwrap()
        .unwrap();
    let request: Value = serde_json::from_slice(&request.payload).unwrap();
    assert_schema("integration-execute-request.schema.json", &request);
    assert_eq!(request["executionId"], execution.as_str());
    assert_eq!(request["mode"], "execute");
    assert_eq!(request["deadlineMs"], EXECUTE_TIMEOUT.as_millis() as u64);
    assert_eq!(request["params"], json!({"userId": "123", "limit": 5}));
    for member in ["local", "remote"] {
        let started =
            c.d.next_pushed(member, "integration:execution:started", |v| {
                v["executionId"] == execution.as_str()
            })
            .await;
        assert_schema(
            "socketio-integration-execution-started.schema.json",
            &started.first(),
        );
        let completed =
            c.d.next_pushed(member, "integration:execution:completed", |v| {
                v["executionId"] == execution.as_str()
            })
            .await;
        assert!(started.seq < completed.seq, "{member}: started came first");
        let completed = completed.first();
        assert_schema(
            "socketio-integration-execution-completed.schema.json",
            &completed,
        );
        assert_eq!(completed["summary"]["success"], true, "{member}");
        assert_eq!(completed["summary"]["status"], 200);
        assert!(completed["summary"]["durationMs"].is_u64(), "{completed}");
        assert!(completed.get("result").is_none(), "room got the data");
    }
    // With a callback, the ack carries the outcome.
    let ack = c
        .execute("caller", MAIN, "getUserTweets", json!({"userId": "9"}))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["result"]["data"]["user"], "9");

    // Failures: (endpoint, params, code, what else the error says).
    let cases = [
        (
            "notFound",
            json!({}),
            "upstream_status",
            json!({"status": 404, "data": {"error": "nope"}}),
        ),
        (
            "broken",
            json!({}),
            "upstream_status",
            json!({"status": 500}),
        ),
        ("slow", json!({}), "timeout", json!({})),
        ("nope", json!({}), "unknown_endpoint", json!({})),
        (
            "getUserTweets",
            json!({"limit": 5}),
            "invalid_params",
            json!({"field": "params.userId"}),
        ),
    ];
    for (endpoint, params, expected, details) in cases {
        let ack = c.execute("caller", MAIN, endpoint, params).await;
        assert_eq!(ack["ok"], false, "{endpoint}: {ack}");
        assert_eq!(code(&ack), expected, "{endpoint}: {ack}");
        for (k, v) in details.as_object().unwrap() {
            assert_eq!(&ack["error"][k], v, "{endpoint}: {ack}");
        }
        for member in ["local", "remote"] {
            let failed =
                c.d.next_matching(member, "integration:execution:failed", |v| {
                    v["executionId"] == ack["executionId"]
                })
                .await;
            assert_schema("socketio-integration-execution-failed.schema.json", &failed);
            assert_eq!(failed["error"], ack["error"], "{member}: {endpoint}");
        }
    }
    // Not the documented shape: refused by the gateway, never sent.
    let ack = c
        .d
        .emit_ack(
            "caller",
            "integration:execute",
            json!([{"projectId": PROJECT, "integrationId": MAIN, "endpoint": "getUserTweets", "params": [1]}]),
        )
        .await;
    assert_eq!(code(&ack), "invalid_payload", "{ack}");
    assert_eq!(ack["error"]["field"], "params");
    // The 500 was not retried (only 502/503/504 are).
    assert_eq!(c.api.hits("/status/500"), 1);
    // The caller is not in its own room's broadcasts: the status answer comes after them.
    c.status("caller", MAIN).await;
    assert_eq!(
        c.d.count("caller", "integration:execution:started", |_| true),
        0,
        "{}",
        c.d.dump("caller")
    );
    assert_eq!(
        c.d.count("caller", "integration:execution:failed", |_| true),
        0
    );

    // Status after the executions: the calls that reached an endpoint with valid params
    // (2 successes, 3 failures), once a usage flush has run.
    let status = eventually("usage of 5 calls in integration:status", || async {
        let ack = c.status("remote", MAIN).await;
        (ack["status"]["usage"]["total"]["calls"] == 5).then_some(ack)
    })
    .await;
    assert_eq!(status["ok"], true);
    assert_schema("socketio-integration-status-response.schema.json", &status);
    let s = &status["status"];
    assert_eq!(s["isActive"], true);
    assert_eq!(
        s["usage"]["total"],
        json!({"calls": 5, "successes": 2, "failures": 3})
    );
    assert_eq!(
        s["usage"]["endpoints"]["getUserTweets"],
        json!({"calls": 2, "successes": 2, "failures": 0})
    );
    assert_eq!(s["usage"]["endpoints"]["slow"]["failures"], 1);
    assert_eq!(s["rateLimit"], Value::Null);
    assert!(s["lastUsed"].is_string(), "{status}");
    // The runner's usage push reached the room on both instances.
    for member in ["local", "remote"] {
        let updated =
            c.d.next_matching(member, "integration:usage:updated", |v| {
                v["usage"]["total"]["calls"] == 5
            })
            .await;
        assert_schema("socketio-integration-usage-updated.schema.json", &updated);
        assert_eq!(updated["integrationId"], MAIN);
    }
}

/// `integration:test`: started and the outcome to the room and (once) to the caller; a base
/// URL on a loopback address that is not allowed fails `destination_refused` without a
/// request, where the allowed one (127.0.0.1) is reached.
#[tokio::test]
async fn the_test_flow_and_a_refused_destination() {
    let c = Chain::start(&[]).await;
    c.connect("caller", &c.one, "/").await;
    c.connect("remote", &c.two, "/").await;
    for conn in ["caller", "remote"] {
        c.join(conn, MAIN).await;
        c.join(conn, REFUSED).await;
    }
    let test =
        |id: &str| json!([{"projectId": PROJECT, "integrationId": id, "endpoint": "healthCheck"}]);
    c.d.emit("caller", "integration:test", test(MAIN)).await;
    for conn in ["caller", "remote"] {
        let started =
            c.d.next_pushed(conn, "integration:test:started", |_| true)
                .await;
        let completed =
            c.d.next_pushed(conn, "integration:test:completed", |_| true)
                .await;
        assert!(started.seq < completed.seq, "{conn}");
        let (started, completed) = (started.first(), completed.first());
        assert_eq!(started["executionId"], completed["executionId"], "{conn}");
        assert_eq!(completed["endpoint"], "healthCheck");
        assert_schema(
            "socketio-integration-execution-completed.schema.json",
            &completed,
        );
    }
    // No healthCheck defined: `GET /` on the base URL.
    assert_eq!(c.api.hits("/"), 1);

    let ack =
        c.d.emit_ack("caller", "integration:test", test(REFUSED))
            .await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(code(&ack), "destination_refused", "{ack}");
    for conn in ["caller", "remote"] {
        let failed = c.d.next_event(conn, "integration:test:failed").await;
        assert_eq!(failed["executionId"], ack["executionId"], "{conn}");
        assert_eq!(code(&failed), "destination_refused");
    }
    assert_eq!(c.elsewhere.hits("/"), 0, "the refused address was reached");
    // The caller got each test event once although it is in the room.
    for event in [
        "integration:test:started",
        "integration:test:completed",
        "integration:test:failed",
    ] {
        assert_eq!(
            c.d.count("caller", event, |_| true),
            if event == "integration:test:started" {
                2
            } else {
                1
            },
            "{event}: {}",
            c.d.dump("caller")
        );
    }
}

/// The third party's rate limit, retries and size: as the caller sees them.
#[tokio::test]
async fn upstream_rate_limits_retries_and_sizes() {
    let c = Chain::start(&[]).await;
    c.connect("caller", &c.one, "/").await;
    c.join("caller", MAIN).await;
    c.join("caller", RATE).await;

    // 429 with Retry-After: 3 → rate_limited, and status.rateLimit shows the block.
    let ack = c.execute("caller", RATE, "limited", json!({})).await;
    assert_eq!(code(&ack), "rate_limited", "{ack}");
    let after = ack["error"]["retryAfterMs"].as_u64().unwrap();
    assert!((1..=3000).contains(&after), "{ack}");
    let status = c.status("caller", RATE).await;
    let limit = &status["status"]["rateLimit"];
    assert_eq!(limit["source"], "upstream", "{status}");
    assert_eq!(limit["remaining"], 0);
    assert!(
        limit["retryAfterMs"].as_u64().is_some_and(|ms| ms <= 3000),
        "{status}"
    );
    assert!(limit["resetAt"].is_string(), "{status}");
    // Blocked: the next call fails fast without reaching the third party.
    let again = c.execute("caller", RATE, "limited", json!({})).await;
    assert_eq!(code(&again), "rate_limited", "{again}");
    assert_eq!(c.api.hits("/limited"), 1);

    // A GET is retried after a 503; a POST is not.
    let ack = c.execute("caller", MAIN, "flakyGet", json!({})).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["result"]["data"], json!({"attempt": 2}));
    assert_eq!(c.api.hits("/flaky/get"), 2);
    let ack = c.execute("caller", MAIN, "flakyPost", json!({})).await;
    assert_eq!(code(&ack), "upstream_status", "{ack}");
    assert_eq!(ack["error"]["status"], 503);
    assert_eq!(c.api.hits("/flaky/post"), 1);

    // 2 MiB against the default 1 MiB cap.
    let ack = c.execute("caller", MAIN, "big", json!({})).await;
    assert_eq!(code(&ack), "response_too_large", "{ack}");
}

/// A provider's webhook, signed as the integration's scheme (Stripe) says, is mirrored to the
/// webhook room on both instances; a bad signature is refused and a replay is not pushed again.
#[tokio::test]
async fn inbound_webhooks_are_verified_and_mirrored_to_subscribed_sockets() {
    let c = Chain::start(&[]).await;
    c.connect("one", &c.one, "/").await;
    c.connect("two", &c.two, "/admin").await;
    for conn in ["one", "two"] {
        c.join(conn, MAIN).await;
        let ack =
            c.d.emit_ack(conn, "integration:webhook:subscribe", json!([target(MAIN)]))
                .await;
        assert_eq!(
            ack,
            json!({"ok": true, "integrationId": MAIN, "projectId": PROJECT})
        );
    }
    let delivery = |id: &str| {
        json!({"id": id, "type": "invoice.paid", "data": {"object": {"amount_paid": 1200}}})
            .to_string()
    };
    let signed = |body: &str, secret: &str| {
        vec![(
            "stripe-signature",
            webhook_signatures::stripe::sign(secret.as_bytes(), now(), body.as_bytes()),
        )]
    };
    let body = delivery("evt_1");
    let headers = signed(&body, STRIPE_SECRET);
    let answer = c.runner.webhook(MAIN, &headers, &body).await;
    assert_eq!(answer, (200, json!({"received": true, "duplicate": false})));
    for conn in ["one", "two"] {
        let received = c.d.next_event(conn, "integration:webhook:received").await;
        assert_schema(
            "socketio-integration-webhook-received.schema.json",
            &received,
        );
        assert_eq!(received["integrationId"], MAIN);
        assert_eq!(received["event"], "stripe.invoice.paid");
        assert_eq!(received["data"]["id"], "evt_1", "{received}");
        assert_eq!(received["data"]["data"]["object"]["amount_paid"], 1200);
    }

    // Signed with another secret: refused, nothing stored.
    let forged = delivery("evt_forged");
    let (status, refusal) = c
        .runner
        .webhook(MAIN, &signed(&forged, "whsec_not-the-secret"), &forged)
        .await;
    assert_eq!(
        (status, code(&refusal)),
        (401, "invalid_signature"),
        "{refusal}"
    );
    // The same delivery again (a replay within the tolerance): acknowledged, not mirrored.
    let replay = c.runner.webhook(MAIN, &headers, &body).await;
    assert_eq!(replay, (200, json!({"received": true, "duplicate": true})));
    // A later delivery travels the same ordered path (stream, mirror, subscription, socket):
    // once it arrived, anything of the two above would have too.
    let marker = delivery("evt_2");
    let answer = c
        .runner
        .webhook(MAIN, &signed(&marker, STRIPE_SECRET), &marker)
        .await;
    assert_eq!(answer.0, 200, "{answer:?}");
    for conn in ["one", "two"] {
        c.d.next_matching(conn, "integration:webhook:received", |v| {
            v["data"]["id"] == "evt_2"
        })
        .await;
        assert_eq!(
            c.d.count(conn, "integration:webhook:received", |_| true),
            2,
            "{conn} got the replay or the forgery:\n{}",
            c.d.dump(conn)
        );
    }
}

/// The runner dies while an execution waits on the third party: the caller and the room get
/// `runner_unavailable` by the gateway's deadline, not silence; later requests fail at once.
#[tokio::test]
async fn a_runner_killed_mid_execution_fails_the_execution() {
    let mut c = Chain::start(&[]).await;
    c.connect("caller", &c.one, "/").await;
    c.connect("remote", &c.two, "/").await;
    c.join("caller", MAIN).await;
    c.join("remote", MAIN).await;
    let asked = Instant::now();
    c.d.emit(
        "caller",
        "integration:execute",
        json!([{"projectId": PROJECT, "integrationId": MAIN, "endpoint": "stall", "params": {}}]),
    )
    .await;
    c.api.wait_hits("/hang", 1).await;
    c.runner.kill();
    let failed =
        c.d.next_event("caller", "integration:execution:failed")
            .await;
    let waited = asked.elapsed();
    assert_eq!(failed["endpoint"], "stall");
    assert_eq!(code(&failed), "runner_unavailable", "{failed}");
    assert!(
        waited >= EXECUTE_TIMEOUT
            && waited < EXECUTE_TIMEOUT + REPLY_GRACE + Duration::from_secs(2),
        "answered after {waited:?}"
    );
    let room =
        c.d.next_matching("remote", "integration:execution:failed", |v| {
            v["executionId"] == failed["executionId"]
        })
        .await;
    assert_eq!(code(&room), "runner_unavailable");

    // No runner at all now: nobody takes the request, refused at once.
    let asked = Instant::now();
    let ack = c
        .execute("caller", MAIN, "getUserTweets", json!({"userId": "1"}))
        .await;
    assert_eq!(code(&ack), "runner_unavailable", "{ack}");
    assert!(asked.elapsed() < EXECUTE_TIMEOUT, "{:?}", asked.elapsed());
}

/// The runner's in-flight limit (`execution.max_in_flight = 1`) reached: the next execution,
/// from another gateway with nothing in flight, is answered `busy`.
#[tokio::test]
async fn the_runners_in_flight_limit_answers_busy() {
    let c = Chain::start(&[("EXECUTION__MAX_IN_FLIGHT", "1".to_owned())]).await;
    c.connect("first", &c.one, "/").await;
    c.connect("second", &c.two, "/").await;
    // Both joined (the runner's status check) before the runner's one place is taken.
    c.join("first", MAIN).await;
    c.join("second", MAIN).await;
    c.d.emit(
        "first",
        "integration:execute",
        json!([{"projectId": PROJECT, "integrationId": MAIN, "endpoint": "stall", "params": {}}]),
    )
    .await;
    c.api.wait_hits("/hang", 1).await;
    let ack = c
        .execute("second", MAIN, "getUserTweets", json!({"userId": "1"}))
        .await;
    assert_eq!(ack["ok"], false, "{ack}");
    assert_eq!(code(&ack), "busy", "{ack}");
    let failed =
        c.d.next_matching("first", "integration:execution:failed", |v| {
            v["executionId"] == ack["executionId"]
        })
        .await;
    assert_eq!(code(&failed), "busy");
    assert_eq!(c.api.hits("/users/1/tweets"), 0);
}
