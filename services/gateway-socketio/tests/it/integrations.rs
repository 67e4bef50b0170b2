//! Integrations on `/` and `/admin` (seed 002, `docs/integrations.md`): what the gateway does
//! on its own, with two instances, real NATS and the real socket.io-client, and a stand-in
//! answering only the runner's `cmd.integration.status` (the access checks). The whole chain
//! with the real integrations-runner (executions, test, status, rate limits, inbound webhooks,
//! a runner dying) is [`crate::integrations_runner`]; what stays here is hard to produce
//! through it: the relay of `rt.integration.usage` / `webhook` pushes with exact payloads and
//! what `integration:leave` gives up (the runner pushes usage only after its flushes), and
//! `integrations.access = "backend"` (there is no real backend service to ask).

use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::{NatsServer, TestDatabase};
use tokio::task::JoinHandle;

use crate::common::*;

const PROJECT: &str = "6958511e8397f2dfa88090d8";
const OTHER_PROJECT: &str = "6958511e8397f2dfa88090d9";
const INTEGRATION: &str = "64b2c3d4e5f6789012345678";
const OTHER_INTEGRATION: &str = "64b2c3d4e5f6789012345679";

/// Answers `cmd.integration.status` (in the runner's queue group) as the runner would:
/// `INTEGRATION` is in `PROJECT`, `OTHER_INTEGRATION` in `OTHER_PROJECT`, nothing else exists.
/// Enough for the access checks; dropping it stops answering.
struct StandIn(JoinHandle<()>);

impl Drop for StandIn {
    fn drop(&mut self) {
        self.0.abort();
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
    let mut status = nc
        .queue_subscribe(
            events::subject::INTEGRATION_STATUS,
            events::subject::INTEGRATIONS_QUEUE.to_owned(),
        )
        .await
        .unwrap();
    nc.flush().await.unwrap();
    StandIn(tokio::spawn(async move {
        while let Some(m) = status.next().await {
            let req: Value = serde_json::from_slice(&m.payload).unwrap();
            let id = req["integrationId"].as_str().unwrap_or_default();
            let reply = match project_of(id) {
                Some(p) if p == req["projectId"] => json!({"ok": true, "projectId": p, "status": {
                    "isActive": true, "usage": {}, "rateLimit": null, "lastUsed": null}}),
                _ => {
                    json!({"ok": false, "error": {"code": "not_found", "message": "no such integration"}})
                }
            };
            if let Some(to) = m.reply {
                nc.publish(to, reply.to_string().into()).await.unwrap();
            }
        }
    }))
}

fn env() -> Vec<(&'static str, String)> {
    vec![("INTEGRATIONS__ACCESS", "claim".to_owned())]
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
