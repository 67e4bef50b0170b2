//! Exactness: bursts, double publishes, SIGKILL mid-burst, windows rolling over, coalescing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use events::stat::StatSnapshot;
use jiff::Timestamp;
use serde_json::json;
use stat_aggregator::clock::ManualClock;
use test_support::ServiceProcess;

use crate::common::{Bus, PREFIX, burst, event, settle, total};

#[tokio::test]
async fn counters_from_a_burst_are_exact() {
    let bus = Bus::start().await;
    let _agg = bus.aggregator(None, &[]).await;
    let b = burst(5_000);
    bus.publish_all(&b.events).await;
    let snap = bus.snapshot_where("burst counted", |s| b.matches(s)).await;
    assert_eq!(snap.counters["deals_completed"]["today"], b.deals_completed);
    assert_eq!(
        snap.counters["orders_created"]["last_24h"],
        b.orders_created
    );
    settle().await;
    assert!(
        b.matches(&bus.snapshot().await.unwrap()),
        "counted more than once"
    );
}

#[tokio::test]
async fn an_event_published_twice_counts_once() {
    let bus = Bus::start().await;
    let _agg = bus.aggregator(None, &[]).await;
    let e = event("deal.completed", json!({"id": 1}));
    // The same Nats-Msg-Id: JetStream drops the second.
    bus.publish(&e).await;
    bus.publish(&e).await;
    // No Nats-Msg-Id (a publisher that forgot it, or a retry after the duplicate window):
    // the stream holds it twice, the aggregator's id window drops it.
    bus.js
        .publish("events.deal.completed", e.encode().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut stream = bus.js.get_stream("EVENTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    let other = event("order.created", json!({"id": 2}));
    bus.publish(&other).await;
    let snap = bus
        .snapshot_where("both seen", |s| total(s, "orders_created") == 1)
        .await;
    assert_eq!(total(&snap, "deals_completed"), 1);
    settle().await;
    assert_eq!(total(&bus.snapshot().await.unwrap(), "deals_completed"), 1);
}

fn spawn_binary(bus: &Bus) -> ServiceProcess {
    let mut env = bus.env(&[]);
    env.push((format!("{PREFIX}HTTP__LISTEN"), "127.0.0.1:0".to_owned()));
    env.push((format!("{PREFIX}LOG__FORMAT"), "json".to_owned()));
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    ServiceProcess::spawn(env!("CARGO_BIN_EXE_stat-aggregator"), &[], &env)
}

#[tokio::test]
async fn killed_with_sigkill_mid_burst_and_restarted_it_is_still_exact() {
    let bus = Bus::start().await;
    let mut agg = spawn_binary(&bus);
    let b = burst(20_000);
    let publishing = {
        let events = b.events.clone();
        let js = bus.js.clone();
        tokio::spawn(async move {
            let publisher = events::Publisher::from_context(js);
            for chunk in events.chunks(200) {
                publisher.publish_all(chunk, 200).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Kill it once it has committed part of the burst, not all of it.
    let partial = bus
        .snapshot_where("part of the burst counted", |s| {
            s.version > 2 && total(s, "orders_created") > 0
        })
        .await;
    agg.signal("KILL");
    assert!(agg.wait_exit(Duration::from_secs(5)).is_some());
    assert!(
        !b.matches(&partial),
        "the burst was over before the kill; the test proves nothing"
    );
    // Events keep arriving while it is down; a restarted instance finds the lease of the
    // killed one and takes over once it expires.
    let _agg = spawn_binary(&bus);
    publishing.await.unwrap();
    let snap = bus
        .snapshot_where("burst counted after the restart", |s| b.matches(s))
        .await;
    assert!(snap.version > partial.version);
    settle().await;
    assert!(
        b.matches(&bus.snapshot().await.unwrap()),
        "counted more than once"
    );
}

#[tokio::test]
async fn a_day_window_rolls_over_at_midnight_without_a_restart() {
    let bus = Bus::start().await;
    let clock = Arc::new(ManualClock::new("2026-03-10T23:59:00Z".parse().unwrap()));
    let _agg = bus.aggregator(Some(Arc::clone(&clock)), &[]).await;
    let at = |s: &str| {
        let mut e = event("deal.completed", json!({}));
        let t: Timestamp = s.parse().unwrap();
        e.occurred_at = time::OffsetDateTime::from_unix_timestamp(t.as_second()).unwrap();
        e
    };
    for _ in 0..3 {
        bus.publish(&at("2026-03-10T23:59:00Z")).await;
    }
    bus.snapshot_where("3 today", |s| s.counters["deals_completed"]["today"] == 3)
        .await;
    let mut updates = bus.updates().await;
    clock.set("2026-03-11T00:00:01Z".parse().unwrap());
    // The rollover is published by itself, without any event. The update carrying the three
    // events may still be on its way (the snapshot is written before it is published): the
    // rollover is the first update whose `today` is 0.
    let update = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let update = updates.recv().await.unwrap();
            let today = update
                .counters
                .get("deals_completed")
                .and_then(|windows| windows.get("today"))
                .copied();
            if today == Some(0) {
                return update;
            }
            assert_eq!(today, Some(3), "only the events' update may come first");
        }
    })
    .await
    .expect("an update at midnight");
    assert_eq!(update.counters["deals_completed"]["today"], 0);
    assert!(!update.counters["deals_completed"].contains_key("total"));
    let snap = bus
        .snapshot_where("today restarted", |s| {
            s.counters["deals_completed"]["today"] == 0
        })
        .await;
    assert_eq!(total(&snap, "deals_completed"), 3);
    assert_eq!(snap.counters["deals_completed"]["this_week"], 3);
    for _ in 0..2 {
        bus.publish(&at("2026-03-11T00:00:01Z")).await;
    }
    let snap = bus
        .snapshot_where("2 today", |s| s.counters["deals_completed"]["today"] == 2)
        .await;
    assert_eq!(total(&snap, "deals_completed"), 5);
}

#[tokio::test]
async fn updates_are_coalesced_consecutive_and_add_up_to_the_snapshot() {
    let bus = Bus::start().await;
    let _agg = bus
        .aggregator(None, &[("AGGREGATOR__MAX_UPDATES_PER_SEC", "5")])
        .await;
    let start: StatSnapshot = bus.snapshot_where("first snapshot", |_| true).await;
    let mut updates = bus.updates().await;
    let b = burst(10_000);
    let began = Instant::now();
    bus.publish_all(&b.events).await;
    let end = bus.snapshot_where("burst counted", |s| b.matches(s)).await;
    let elapsed = began.elapsed().as_secs_f64();
    settle().await;
    let mut received = Vec::new();
    while let Ok(u) = updates.try_recv() {
        received.push(u);
    }
    // At most 5 per second (plus the tick at either end), far fewer than 10,000 events.
    let allowed = (elapsed * 5.0).ceil() as usize + 2;
    assert!(
        !received.is_empty() && received.len() <= allowed,
        "{} updates in {elapsed:.1}s (at most {allowed})",
        received.len()
    );
    let mut applied = start.clone();
    for u in &received {
        assert!(
            applied.apply(u),
            "version {} after {}",
            u.version,
            applied.version
        );
    }
    assert_eq!(applied.version, end.version);
    assert_eq!(applied.counters, end.counters);
}

#[tokio::test]
async fn a_graceful_restart_continues_from_the_stored_state() {
    let bus = Bus::start().await;
    let agg = bus.aggregator(None, &[]).await;
    let first = burst(1_000);
    bus.publish_all(&first.events).await;
    let before = bus.snapshot_where("counted", |s| first.matches(s)).await;
    agg.shutdown.cancel();
    crate::common::stopped(&agg).await;
    let _agg = bus.aggregator(None, &[]).await;
    let second = burst(1_000);
    bus.publish_all(&second.events).await;
    let after = bus
        .snapshot_where("both bursts", |s| {
            total(s, "orders_created") == first.orders_created + second.orders_created
        })
        .await;
    assert_eq!(
        total(&after, "deals_open"),
        first.deals_open + second.deals_open
    );
    assert!(after.version > before.version);
}
