//! webhook-dispatcher: its durable consumer takes a `backend` event off EVENTS and a delivery
//! is recorded; its user may not delete another service's consumer.

use events::{Envelope, EventType, Publisher};
use serde_json::{Value, json};
use test_support::{InProcess, TestDatabase, eventually, http_client};

use crate::common::AuthNats;

const API_KEY: &str = "deploy-tests-api-key-0123456789";

#[tokio::test]
async fn events_are_consumed_into_deliveries_and_other_consumers_are_out_of_reach() {
    let nats = AuthNats::start();
    let db = TestDatabase::create().await;
    let mut env = nats.service_env("WEBHOOK_DISPATCHER_", "webhook-dispatcher");
    env.extend(
        [
            ("DATABASE__URL", db.url().to_owned()),
            ("API__KEYS", format!("[{API_KEY}]")),
            ("DELIVERY__ALLOW_NETWORKS", "[127.0.0.1/32]".to_owned()),
            ("SHUTDOWN__GRACE_SECS", "5".to_owned()),
        ]
        .map(|(k, v)| (format!("WEBHOOK_DISPATCHER_{k}"), v)),
    );
    let dispatcher = InProcess::start(
        &webhook_dispatcher::SPEC,
        env,
        webhook_dispatcher::prepare,
        webhook_dispatcher::run,
    )
    .await;

    let http = http_client();
    // Nobody listens there: the attempt fails, the delivery is recorded all the same.
    let created: Value = http
        .post(dispatcher.url("/crm/webhook-subscriptions"))
        .bearer_auth(API_KEY)
        .json(&json!({"url": "http://127.0.0.1:9/hook", "event_types": ["deal.*"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"]
        .as_str()
        .expect("a subscription id")
        .to_owned();

    let event = Envelope::new(
        EventType::parse("deal.created").unwrap(),
        "555",
        json!({"id": 555}),
    )
    .unwrap();
    Publisher::new(nats.client("backend").await)
        .publish(&event)
        .await
        .unwrap();
    let deliveries = dispatcher.url(&format!("/crm/webhook-subscriptions/{id}/deliveries"));
    eventually("a delivery of the event", || async {
        let page: Value = http
            .get(&deliveries)
            .bearer_auth(API_KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let found = page["data"]
            .as_array()?
            .iter()
            .any(|d| d.to_string().contains(&event.id.to_string()));
        found.then_some(())
    })
    .await;

    let as_dispatcher = nats.client("webhook-dispatcher").await;
    let other = "$JS.API.CONSUMER.DELETE.EVENTS.stat-aggregator";
    nats.publish_refused(&as_dispatcher, "webhook-dispatcher", other)
        .await;
    nats.assert_only_refused(&[("webhook-dispatcher", other)]);
}
