//! Rebuild from the stream while serving gives the same numbers.

use std::time::Duration;

use events::stat::RebuildReply;
use events::subject::STAT_REBUILD;

use crate::common::{Bus, burst, settle, total};

async fn rebuild(bus: &Bus) -> RebuildReply {
    let reply = bus
        .client
        .send_request(
            STAT_REBUILD,
            async_nats::Request::new().timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test]
async fn rebuild_gives_the_same_numbers() {
    let bus = Bus::start().await;
    let _agg = bus.aggregator(None, &[]).await;
    let b = burst(3_000);
    bus.publish_all(&b.events).await;
    let before = bus.snapshot_where("counted", |s| b.matches(s)).await;
    let reply = rebuild(&bus).await;
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.replayed, 3_000);
    let after = bus
        .snapshot_where("rebuilt", |s| s.version >= reply.version)
        .await;
    assert!(after.version > before.version);
    assert_eq!(after.counters, before.counters);
}

#[tokio::test]
async fn rebuild_while_events_keep_arriving_counts_nothing_twice() {
    let bus = Bus::start().await;
    let _agg = bus.aggregator(None, &[]).await;
    let first = burst(3_000);
    bus.publish_all(&first.events).await;
    bus.snapshot_where("counted", |s| first.matches(s)).await;
    let second = burst(3_000);
    let publishing = {
        let events = second.events.clone();
        let publisher = bus.publisher.clone();
        tokio::spawn(async move {
            for e in &events {
                publisher.publish(e).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = rebuild(&bus).await;
    assert!(reply.ok, "{reply:?}");
    publishing.await.unwrap();
    let want = first.orders_created + second.orders_created;
    let snap = bus
        .snapshot_where("everything", |s| total(s, "orders_created") == want)
        .await;
    assert_eq!(
        total(&snap, "deals_open"),
        first.deals_open + second.deals_open
    );
    assert_eq!(
        total(&snap, "orders_completed"),
        first.orders_completed + second.orders_completed
    );
    settle().await;
    assert_eq!(
        total(&bus.snapshot().await.unwrap(), "orders_created"),
        want
    );
}
