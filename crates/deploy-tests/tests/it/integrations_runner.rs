//! integrations-runner: answers a gateway's `cmd.integration.status` in its queue group and
//! mirrors a stored inbound webhook to the gateways; its user may not subscribe to commands
//! outside the queue group (which would take them from the other replicas).

use events::subject::{INTEGRATION_EXECUTE, INTEGRATION_STATUS, INTEGRATION_WEBHOOK};
use futures_util::StreamExt;
use serde_json::{Value, json};
use test_support::{InProcess, TestDatabase, WAIT};

use crate::common::{AuthNats, REQUEST_TIMEOUT};

#[tokio::test]
async fn commands_are_answered_and_webhooks_mirrored_and_plain_subscriptions_refused() {
    let nats = AuthNats::start();
    let db = TestDatabase::create().await;
    let mut env = nats.service_env("INTEGRATIONS_RUNNER_", "integrations-runner");
    env.extend(
        [
            ("DATABASE__URL", db.url().to_owned()),
            ("API__KEYS", "[deploy-tests-api-key-0123456789]".to_owned()),
            (
                "CRYPTO__KEYS",
                // base64 of 32 bytes.
                "[{id = \"k1\", key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"}]"
                    .to_owned(),
            ),
            ("SHUTDOWN__GRACE_SECS", "5".to_owned()),
        ]
        .map(|(k, v)| (format!("INTEGRATIONS_RUNNER_{k}"), v)),
    );
    let _runner = InProcess::start(
        &integrations_runner::SPEC,
        env,
        |_: &service_runtime::Settings<integrations_runner::Config>| Ok(()),
        |settings, (), listener, shutdown| integrations_runner::run(settings, listener, shutdown),
    )
    .await;

    // What gateway-socketio asks, as its user: an unknown integration still gets an answer.
    let gateway = nats.client("gateway-socketio").await;
    let reply = gateway
        .send_request(
            INTEGRATION_STATUS,
            async_nats::Request::new()
                .payload(
                    json!({"projectId": "p1", "integrationId": "i1"})
                        .to_string()
                        .into(),
                )
                .timeout(Some(REQUEST_TIMEOUT)),
        )
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(reply.is_object(), "{reply}");

    // A verified webhook as the runner's endpoint stores it; the mirror relays it.
    let mut mirrored = gateway.subscribe(INTEGRATION_WEBHOOK).await.unwrap();
    gateway.flush().await.unwrap();
    let as_runner = nats.client("integrations-runner").await;
    let stored = json!({"integrationId": "i1", "projectId": "p1", "event": "github.push",
                        "data": {"ref": "main"}, "timestamp": "2026-01-01T00:00:00.000Z"});
    async_nats::jetstream::new(as_runner.clone())
        .publish("integrations.webhooks.i1", stored.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let message = tokio::time::timeout(WAIT, mirrored.next())
        .await
        .expect("the mirrored webhook in time")
        .expect("subscription open");
    let got: Value = serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(got, stored);

    nats.subscribe_refused(&as_runner, "integrations-runner", INTEGRATION_EXECUTE)
        .await;
    nats.assert_only_refused(&[("integrations-runner", INTEGRATION_EXECUTE)]);
}
