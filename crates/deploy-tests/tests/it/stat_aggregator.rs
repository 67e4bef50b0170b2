//! stat-aggregator: counts a `backend` event, publishes the update and the snapshot that
//! gateway-socketio reads, rebuilds on `cmd.stat.rebuild` (asked by `admin`, as eventctl does);
//! its user may not write the gateways' presence nor pull from the dispatcher's consumer.

use events::stat::{RebuildReply, StatSnapshot};
use events::subject::{STAT_REBUILD, STAT_SNAPSHOT_BUCKET, STAT_SNAPSHOT_KEY, STAT_UPDATES};
use events::{Envelope, EventType, Publisher};
use futures_util::StreamExt;
use serde_json::json;
use test_support::{InProcess, WAIT, eventually};

use crate::common::{AuthNats, REQUEST_TIMEOUT};

#[tokio::test]
async fn events_are_counted_published_and_rebuilt_and_others_state_is_out_of_reach() {
    let nats = AuthNats::start();
    let mut env = nats.service_env("STAT_AGGREGATOR_", "stat-aggregator");
    env.push((
        "STAT_AGGREGATOR_SHUTDOWN__GRACE_SECS".to_owned(),
        "5".to_owned(),
    ));
    let _aggregator = InProcess::start(
        &stat_aggregator::SPEC,
        env,
        stat_aggregator::prepare,
        stat_aggregator::run,
    )
    .await;

    // What gateway-socketio does with the counters, as its user.
    let gateway = nats.client("gateway-socketio").await;
    let mut updates = gateway.subscribe(STAT_UPDATES).await.unwrap();
    gateway.flush().await.unwrap();
    let event = Envelope::new(
        EventType::parse("deal.created").unwrap(),
        "1",
        json!({"id": 1}),
    )
    .unwrap();
    Publisher::new(nats.client("backend").await)
        .publish(&event)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, updates.next())
        .await
        .expect("an rt.stat.update in time")
        .expect("subscription open");
    let js = async_nats::jetstream::new(gateway.clone());
    let snapshot: StatSnapshot = eventually("the snapshot counting the deal", || async {
        let kv = js.get_key_value(STAT_SNAPSHOT_BUCKET).await.ok()?;
        let bytes = kv.get(STAT_SNAPSHOT_KEY).await.ok()??;
        let snapshot: StatSnapshot = serde_json::from_slice(&bytes).ok()?;
        (serde_json::to_value(&snapshot.counters).ok()?["deals_created"]["total"] == 1)
            .then_some(snapshot)
    })
    .await;
    assert!(snapshot.version > 0);

    let admin = nats.client("admin").await;
    let reply = admin
        .send_request(
            STAT_REBUILD,
            async_nats::Request::new().timeout(Some(REQUEST_TIMEOUT)),
        )
        .await
        .unwrap();
    let reply: RebuildReply = serde_json::from_slice(&reply.payload).unwrap();
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.replayed, 1);

    let as_aggregator = nats.client("stat-aggregator").await;
    let presence = "$KV.gateway_presence.x";
    nats.publish_refused(&as_aggregator, "stat-aggregator", presence)
        .await;
    // It may pull from the consumers it makes up, never from the dispatcher's durable.
    let dispatchers = "$JS.API.CONSUMER.MSG.NEXT.EVENTS.webhook-dispatcher";
    nats.publish_refused(&as_aggregator, "stat-aggregator", dispatchers)
        .await;
    nats.assert_only_refused(&[
        ("stat-aggregator", presence),
        ("stat-aggregator", dispatchers),
    ]);
}
