//! Integrations on `/` and `/admin` (seed 002, `docs/integrations.md`): two gateway instances,
//! real NATS, the real socket.io-client, and a stand-in runner answering the NATS contract
//! (`cmd.integration.execute` / `status` in the runner's queue group) — the real
//! integrations-runner was not usable yet when these were written.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::{NatsServer, TestDatabase};
use tokio::task::JoinHandle;

use crate::common::*;

const PROJECT: &str = "6958511e8397f2dfa88090d8";
const OTHER_PROJECT: &str = "6958511e8397f2dfa88090d9";
const INTEGRATION: &str = "64b2c3d4e5f6789012345678";
const OTHER_INTEGRATION: &str = "64b2c3d4e5f6789012345679";

/// Answers the runner's NATS contract: `INTEGRATION` is in `PROJECT`, `OTHER_INTEGRATION` in
/// `OTHER_PROJECT`. Endpoint `getUserTweets` succeeds with data, `failing` is an upstream 404,
/// `hang` never answers. Counts executions; dropping it stops answering.
struct StandIn {
    tasks: Vec<JoinHandle<()>>,
    requests: Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn project_of(integration: &str) -> Option<&'static str> {
    match integration {
        INTEGRATION => Some(PROJECT),
        OTHER_INTEGRATION => Some(OTHER_PROJECT),
        _ => None,
    }
}

async fn stand_in(nats: &NatsServer) -> StandIn {
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let executions = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut status = nc
        .queue_subscribe(
            events::subject::INTEGRATION_STATUS,
            events::subject::INTEGRATIONS_QUEUE.to_owned(),
        )
        .await
        .unwrap();
    let mut execute = nc
        .queue_subscribe(
            events::subject::INTEGRATION_EXECUTE,
            events::subject::INTEGRATIONS_QUEUE.to_owned(),
        )
        .await
        .unwrap();
    nc.flush().await.unwrap();
    let (n1, n2) = (nc.clone(), nc);
    let counted = Arc::clone(&executions);
    let status_task = tokio::spawn(async move {
        while let Some(m) = status.next().await {
            let req: Value = serde_json::from_slice(&m.payload).unwrap();
            let id = req["integrationId"].as_str().unwrap_or_default();
            let reply = match project_of(id) {
                Some(p) if p == req["projectId"] => json!({"ok": true, "projectId": p, "status": {
                    "isActive": true,
                    "usage": {"total": {"calls": counted.load(Ordering::SeqCst), "successes": 0, "failures": 0}},
                    "rateLimit": null, "lastUsed": null}}),
                _ => {
                    json!({"ok": false, "error": {"code": "not_found", "message": "no such integration"}})
                }
            };
            if let Some(to) = m.reply {
                n1.publish(to, reply.to_string().into()).await.unwrap();
            }
        }
    });
    let (counted, seen) = (Arc::clone(&executions), Arc::clone(&requests));
    let execute_task = tokio::spawn(async move {
        while let Some(m) = execute.next().await {
            let req: Value = serde_json::from_slice(&m.payload).unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(req.clone());
            let reply = match req["endpoint"].as_str() {
                Some("getUserTweets" | "healthCheck") => {
                    json!({"ok": true, "status": 200, "data": {"tweets": [{"id": "1"}], "user": req["params"]["userId"]}, "durationMs": 7})
                }
                Some("failing") => json!({"ok": false, "error": {"code": "upstream_status",
                    "message": "the third party answered 404", "status": 404, "data": {"error": "nope"}}}),
                Some("hang") => continue,
                _ => {
                    json!({"ok": false, "error": {"code": "unknown_endpoint", "message": "no such endpoint"}})
                }
            };
            if let Some(to) = m.reply {
                n2.publish(to, reply.to_string().into()).await.unwrap();
            }
        }
    });
    StandIn {
        tasks: vec![status_task, execute_task],
        requests,
    }
}

fn env() -> Vec<(&'static str, String)> {
    vec![
        ("INTEGRATIONS__ACCESS", "claim".to_owned()),
        ("INTEGRATIONS__EXECUTE_TIMEOUT_MS", "1500".to_owned()),
    ]
}

async fn two_instances(extra: &[(&str, String)]) -> (NatsServer, TestDatabase, Gateway, Gateway) {
    let (nats, db) = backends().await;
    let one = Gateway::start(&nats, &db, extra).await;
    let two = Gateway::start(&nats, &db, extra).await;
    (nats, db, one, two)
}

fn token_for(projects: &[&str]) -> String {
    admin_token(json!({"projects": projects}))
}

fn target(project: &str, integration: &str) -> Value {
    json!({"projectId": project, "integrationId": integration})
}

async fn join(d: &Driver, conn: &str) {
    let ack = d
        .emit_ack(
            conn,
            "integration:join",
            json!([target(PROJECT, INTEGRATION)]),
        )
        .await;
    assert_eq!(
        ack,
        json!({"ok": true, "integrationId": INTEGRATION, "projectId": PROJECT,
            "room": format!("integration:{INTEGRATION}")}),
        "join on {conn}"
    );
}

fn is_timestamp(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    s.ends_with('Z')
        && s.len() == "2026-03-18T10:00:00.000Z".len()
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
}

#[tokio::test]
async fn join_is_checked_against_the_project_claim_and_the_runner() {
    let (nats, _db, one, _two) = two_instances(&env()).await;
    let _runner = stand_in(&nats).await;
    let d = Driver::start().await;
    d.connect_ok("root", Connect::to(&one, "/").token(&token_for(&[PROJECT])))
        .await;
    d.connect_ok(
        "admin",
        Connect::to(&one, "/admin").token(&token_for(&[PROJECT])),
    )
    .await;
    // Without a callback, the answer is the event.
    d.emit(
        "root",
        "integration:join",
        json!([target(PROJECT, INTEGRATION)]),
    )
    .await;
    let joined = d.next_event("root", "integration:joined").await;
    assert_eq!(joined["room"], format!("integration:{INTEGRATION}"));
    join(&d, "admin").await;

    // A project the token does not list.
    let ack = d
        .emit_ack(
            "root",
            "integration:join",
            json!([target(OTHER_PROJECT, OTHER_INTEGRATION)]),
        )
        .await;
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"]["code"], "forbidden", "{ack}");
    // An integration of another project, asked for in this one.
    let ack = d
        .emit_ack(
            "root",
            "integration:join",
            json!([target(PROJECT, OTHER_INTEGRATION)]),
        )
        .await;
    assert_eq!(ack["error"]["code"], "not_found", "{ack}");
    // Bad ids, without a callback: integration:error naming the field.
    d.emit(
        "root",
        "integration:join",
        json!([{"projectId": PROJECT, "integrationId": "a:b"}]),
    )
    .await;
    let error = d.next_event("root", "integration:error").await;
    assert_eq!(error["event"], "integration:join");
    assert_eq!(error["error"]["code"], "invalid_payload");
    assert_eq!(error["error"]["field"], "integrationId");

    // The handshake is the /admin one.
    let refused = d.connect_err("anon", Connect::to(&one, "/")).await;
    assert!(refused.contains("auth.token"), "{refused}");
}

#[tokio::test]
async fn an_execution_reaches_the_caller_with_data_and_the_room_with_a_summary() {
    let (nats, _db, one, two) = two_instances(&env()).await;
    let runner = stand_in(&nats).await;
    let d = Driver::start().await;
    let token = token_for(&[PROJECT]);
    d.connect_ok("caller", Connect::to(&one, "/").token(&token))
        .await;
    d.connect_ok("local", Connect::to(&one, "/admin").token(&token))
        .await;
    d.connect_ok("remote", Connect::to(&two, "/").token(&token))
        .await;
    for conn in ["caller", "local", "remote"] {
        join(&d, conn).await;
    }
    let request = json!({"projectId": PROJECT, "integrationId": INTEGRATION, "endpoint": "getUserTweets",
        "params": {"userId": "123"}, "requestData": {}});
    d.emit("caller", "integration:execute", json!([request]))
        .await;
    let done = d
        .next_event("caller", "integration:execution:completed")
        .await;
    assert_eq!(done["integrationId"], INTEGRATION);
    assert_eq!(done["endpoint"], "getUserTweets");
    assert_eq!(done["result"]["success"], true);
    assert_eq!(done["result"]["status"], 200);
    assert_eq!(done["result"]["data"]["user"], "123");
    assert!(is_timestamp(&done["timestamp"]), "{done}");
    let execution = done["executionId"].as_str().unwrap().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&execution).unwrap().get_version_num(),
        7
    );

    for member in ["local", "remote"] {
        let started = d.next_event(member, "integration:execution:started").await;
        assert_eq!(started["executionId"], execution.as_str(), "{member}");
        assert!(is_timestamp(&started["timestamp"]));
        let completed = d
            .next_event(member, "integration:execution:completed")
            .await;
        assert_eq!(completed["executionId"], execution.as_str());
        assert_eq!(
            completed["summary"],
            json!({"success": true, "status": 200, "durationMs": 7})
        );
        assert!(
            completed.get("result").is_none(),
            "room got the data: {completed}"
        );
        // started came first.
        let order = d.dump(member);
        assert!(
            order.find("execution:started") < order.find("execution:completed"),
            "{order}"
        );
    }
    // The runner got the documented request.
    let sent = runner.requests.lock().unwrap()[0].clone();
    assert_eq!(sent["executionId"], execution.as_str());
    assert_eq!(sent["mode"], "execute");
    assert_eq!(sent["deadlineMs"], 1500);
    assert_eq!(sent["params"], json!({"userId": "123"}));

    // The caller is not in its own room broadcast: a marker (status) after the room events.
    d.emit_ack(
        "caller",
        "integration:status",
        json!([target(PROJECT, INTEGRATION)]),
    )
    .await;
    assert_eq!(
        d.count("caller", "integration:execution:started", |_| true),
        0
    );
    assert_eq!(
        d.count("caller", "integration:execution:completed", |_| true),
        1
    );

    // With a callback, the ack carries the outcome.
    let ack = d
        .emit_ack("caller", "integration:execute", json!([request]))
        .await;
    assert_eq!(ack["ok"], true);
    assert_eq!(ack["result"]["data"]["tweets"][0]["id"], "1");
}

#[tokio::test]
async fn failures_reach_the_caller_and_the_room() {
    let (nats, _db, one, two) = two_instances(&env()).await;
    let runner = stand_in(&nats).await;
    let d = Driver::start().await;
    let token = token_for(&[PROJECT]);
    d.connect_ok("caller", Connect::to(&one, "/").token(&token))
        .await;
    d.connect_ok("remote", Connect::to(&two, "/admin").token(&token))
        .await;
    join(&d, "caller").await;
    join(&d, "remote").await;
    let run = |endpoint: &str| json!([{"projectId": PROJECT, "integrationId": INTEGRATION, "endpoint": endpoint, "params": {}}]);

    let ack = d
        .emit_ack("caller", "integration:execute", run("failing"))
        .await;
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"]["code"], "upstream_status", "{ack}");
    assert_eq!(ack["error"]["status"], 404);
    let failed = d.next_event("remote", "integration:execution:failed").await;
    assert_eq!(failed["error"]["code"], "upstream_status");
    assert_eq!(failed["executionId"], ack["executionId"]);

    let ack = d
        .emit_ack("caller", "integration:execute", run("nope"))
        .await;
    assert_eq!(ack["error"]["code"], "unknown_endpoint", "{ack}");

    // The runner takes the request and never answers: the gateway's deadline answers.
    d.emit("caller", "integration:execute", run("hang")).await;
    let failed = d.next_event("caller", "integration:execution:failed").await;
    assert_eq!(failed["error"]["code"], "runner_unavailable", "{failed}");
    let room = d
        .next_matching("remote", "integration:execution:failed", |v| {
            v["endpoint"] == "hang"
        })
        .await;
    assert_eq!(room["error"]["code"], "runner_unavailable");

    // No runner at all (access still cached): failed, not silence.
    drop(runner);
    let ack = d
        .emit_ack("caller", "integration:execute", run("getUserTweets"))
        .await;
    assert_eq!(ack["error"]["code"], "runner_unavailable", "{ack}");
    // Validation before anything is sent.
    let ack = d
        .emit_ack("caller", "integration:execute", json!([{"projectId": PROJECT, "integrationId": INTEGRATION, "endpoint": "getUserTweets", "params": [1]}]))
        .await;
    assert_eq!(ack["error"]["code"], "invalid_payload");
    assert_eq!(ack["error"]["field"], "params");
}

#[tokio::test]
async fn the_test_flow_and_status() {
    let (nats, _db, one, two) = two_instances(&env()).await;
    let runner = stand_in(&nats).await;
    let d = Driver::start().await;
    let token = token_for(&[PROJECT]);
    d.connect_ok("caller", Connect::to(&one, "/").token(&token))
        .await;
    d.connect_ok("remote", Connect::to(&two, "/").token(&token))
        .await;
    join(&d, "caller").await;
    join(&d, "remote").await;
    d.emit(
        "caller",
        "integration:test",
        json!([{"projectId": PROJECT, "integrationId": INTEGRATION, "endpoint": "healthCheck"}]),
    )
    .await;
    for conn in ["caller", "remote"] {
        let started = d.next_event(conn, "integration:test:started").await;
        let completed = d.next_event(conn, "integration:test:completed").await;
        assert_eq!(started["executionId"], completed["executionId"], "{conn}");
    }
    // The caller (in the room) got each once.
    d.emit_ack(
        "caller",
        "integration:status",
        json!([target(PROJECT, INTEGRATION)]),
    )
    .await;
    assert_eq!(d.count("caller", "integration:test:started", |_| true), 1);
    assert_eq!(d.count("caller", "integration:test:completed", |_| true), 1);
    assert_eq!(runner.requests.lock().unwrap()[0]["mode"], "test");

    d.emit(
        "caller",
        "integration:status",
        json!([target(PROJECT, INTEGRATION)]),
    )
    .await;
    let status = d.next_event("caller", "integration:status:response").await;
    assert_eq!(status["integrationId"], INTEGRATION);
    assert_eq!(status["status"]["isActive"], true);
    assert_eq!(status["status"]["usage"]["total"]["calls"], 1);
    assert!(is_timestamp(&status["timestamp"]));
    let ack = d
        .emit_ack(
            "caller",
            "integration:status",
            json!([target(PROJECT, OTHER_INTEGRATION)]),
        )
        .await;
    assert_eq!(ack["error"]["code"], "not_found", "{ack}");
}

#[tokio::test]
async fn usage_and_webhooks_are_relayed_to_their_rooms_on_every_instance() {
    let (nats, _db, one, two) = two_instances(&env()).await;
    let _runner = stand_in(&nats).await;
    let d = Driver::start().await;
    let token = token_for(&[PROJECT]);
    d.connect_ok("a", Connect::to(&one, "/").token(&token))
        .await;
    d.connect_ok("b", Connect::to(&two, "/admin").token(&token))
        .await;
    d.connect_ok("a_marker", Connect::to(&one, "/").token(&token))
        .await;
    d.connect_ok("joined_only", Connect::to(&two, "/").token(&token))
        .await;
    for conn in ["a", "b", "a_marker", "joined_only"] {
        join(&d, conn).await;
    }
    for conn in ["a", "b", "a_marker"] {
        let ack = d
            .emit_ack(
                conn,
                "integration:webhook:subscribe",
                json!([target(PROJECT, INTEGRATION)]),
            )
            .await;
        assert_eq!(
            ack,
            json!({"ok": true, "integrationId": INTEGRATION, "projectId": PROJECT})
        );
    }
    let nc = async_nats::connect(nats.url()).await.unwrap();
    let hook = json!({"integrationId": INTEGRATION, "projectId": PROJECT, "event": "stripe.invoice.paid",
        "data": {"id": "evt_1"}, "timestamp": "2026-03-18T10:00:00.000Z"});
    nc.publish(
        events::subject::INTEGRATION_WEBHOOK,
        hook.to_string().into(),
    )
    .await
    .unwrap();
    let usage = json!({"integrationId": INTEGRATION, "projectId": PROJECT,
        "usage": {"total": {"calls": 3, "successes": 2, "failures": 1}},
        "lastUsed": "2026-03-18T10:00:00.000Z", "timestamp": "2026-03-18T10:00:01.000Z"});
    nc.publish(events::subject::INTEGRATION_USAGE, usage.to_string().into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
    for conn in ["a", "b", "a_marker"] {
        let received = d.next_event(conn, "integration:webhook:received").await;
        assert_eq!(
            received,
            json!({"integrationId": INTEGRATION, "event": "stripe.invoice.paid", "data": {"id": "evt_1"},
                "timestamp": "2026-03-18T10:00:00.000Z"})
        );
    }
    for conn in ["a", "b", "joined_only"] {
        let updated = d.next_event(conn, "integration:usage:updated").await;
        assert_eq!(updated["usage"]["total"]["calls"], 3, "{conn}");
        assert_eq!(updated["lastUsed"], "2026-03-18T10:00:00.000Z");
    }
    // Not subscribed to webhooks: the usage push (published after) is the marker.
    assert_eq!(
        d.count("joined_only", "integration:webhook:received", |_| true),
        0
    );

    // Leaving gives up both rooms.
    let ack = d
        .emit_ack(
            "a",
            "integration:leave",
            json!([target(PROJECT, INTEGRATION)]),
        )
        .await;
    assert_eq!(ack["ok"], true);
    nc.publish(
        events::subject::INTEGRATION_WEBHOOK,
        hook.to_string().into(),
    )
    .await
    .unwrap();
    nc.publish(events::subject::INTEGRATION_USAGE, usage.to_string().into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
    d.next_event("b", "integration:webhook:received").await;
    // `a_marker` is on `a`'s instance: once it has the second push, `a` would have it too.
    d.next_event("a_marker", "integration:webhook:received")
        .await;
    d.next_event("a_marker", "integration:usage:updated").await;
    d.next_event("a_marker", "integration:usage:updated").await;
    assert_eq!(d.count("a", "integration:webhook:received", |_| true), 1);
    assert_eq!(d.count("a", "integration:usage:updated", |_| true), 1);
}

/// `integrations.access = "backend"`: `cmd.project.access {projectId, subject}` decides, and
/// its answer (allowed or refused) is cached; without a backend every project is refused.
#[tokio::test]
async fn backend_access_is_asked_once_and_cached() {
    let env = [("INTEGRATIONS__ACCESS", "backend".to_owned())];
    let (nats, _db, one, _two) = two_instances(&env).await;
    let _runner = stand_in(&nats).await;
    let d = Driver::start().await;
    d.connect_ok(
        "u",
        Connect::to(&one, "/").token(&admin_token(json!({"sub": "user-7"}))),
    )
    .await;
    let ack = d
        .emit_ack(
            "u",
            "integration:join",
            json!([target(PROJECT, INTEGRATION)]),
        )
        .await;
    assert_eq!(
        ack["error"]["code"], "runner_unavailable",
        "no backend: {ack}"
    );

    let nc = async_nats::connect(nats.url()).await.unwrap();
    let mut access = nc.subscribe(events::subject::PROJECT_ACCESS).await.unwrap();
    nc.flush().await.unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    let backend = tokio::spawn(async move {
        while let Some(m) = access.next().await {
            let req: Value = serde_json::from_slice(&m.payload).unwrap();
            seen.lock().unwrap().push(req.clone());
            let allowed = req["projectId"] == PROJECT && req["subject"] == "user-7";
            nc.publish(
                m.reply.unwrap(),
                json!({"allowed": allowed}).to_string().into(),
            )
            .await
            .unwrap();
        }
    });
    for _ in 0..2 {
        join(&d, "u").await;
        let ack = d
            .emit_ack(
                "u",
                "integration:join",
                json!([target(OTHER_PROJECT, OTHER_INTEGRATION)]),
            )
            .await;
        assert_eq!(ack["error"]["code"], "forbidden", "{ack}");
    }
    let asked = asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        [
            json!({"projectId": PROJECT, "subject": "user-7"}),
            json!({"projectId": OTHER_PROJECT, "subject": "user-7"})
        ]
    );
    backend.abort();
}
