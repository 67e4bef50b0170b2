//! Two replicas: one counts, the other stands by and takes over; never both count.

use crate::common::{Bus, burst, settle, total};

#[tokio::test]
async fn two_replicas_count_exactly_once_and_the_standby_takes_over() {
    let bus = Bus::start().await;
    let a = bus.aggregator(None, &[]).await;
    let b = bus.aggregator(None, &[]).await;
    let first = burst(4_000);
    bus.publish_all(&first.events).await;
    bus.snapshot_where("counted once", |s| first.matches(s))
        .await;
    settle().await;
    assert!(first.matches(&bus.snapshot().await.unwrap()));

    // Stop whichever leads: both, one after the other, keeps the test simple only if the
    // second survives; stop `a`, then the count continues through `b` (or `a` was standby).
    a.shutdown.cancel();
    crate::common::stopped(&a).await;
    let second = burst(4_000);
    bus.publish_all(&second.events).await;
    let want = first.orders_created + second.orders_created;
    let snap = bus
        .snapshot_where("counted by the survivor", |s| {
            total(s, "orders_created") == want
        })
        .await;
    assert_eq!(
        total(&snap, "deals_open"),
        first.deals_open + second.deals_open
    );
    settle().await;
    assert_eq!(
        total(&bus.snapshot().await.unwrap(), "orders_created"),
        want
    );
    drop(b);
}
