//! `/stat`: the snapshot on connect, coalesced updates, a fresh snapshot after a missed
//! version; two gateway instances, stat-aggregator in process, the real socket.io-client.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use events::stat::{StatSnapshot, StatUpdate};
use events::subject::{STAT_SNAPSHOT_BUCKET, STAT_SNAPSHOT_KEY, STAT_UPDATES};
use events::{Envelope, EventType};
use serde_json::{Value, json};
use test_support::{InProcess, NatsServer};

use crate::common::*;

async fn aggregator(nats: &NatsServer) -> InProcess {
    let p = "STAT_AGGREGATOR_";
    InProcess::start(
        &stat_aggregator::SPEC,
        vec![
            (format!("{p}NATS__URL"), nats.url()),
            (format!("{p}SHUTDOWN__GRACE_SECS"), "5".to_owned()),
            (
                format!("{p}AGGREGATOR__MAX_UPDATES_PER_SEC"),
                "5".to_owned(),
            ),
        ],
        stat_aggregator::prepare,
        stat_aggregator::run,
    )
    .await
}

fn event(ty: &str, data: Value) -> Envelope {
    let (d, n) = ty.split_once('.').unwrap();
    Envelope::new(EventType::new(d, n).unwrap(), "1", data).unwrap()
}

/// `n` events; returns them with the `orders_created` and `deals_completed` totals.
fn burst(n: usize) -> (Vec<Envelope>, i64, i64) {
    let (mut orders, mut deals) = (0, 0);
    let events = (0..n)
        .map(|i| {
            if i % 3 == 0 {
                deals += 1;
                event("deal.completed", json!({"id": i}))
            } else {
                orders += 1;
                event("order.created", json!({"id": i}))
            }
        })
        .collect();
    (events, orders, deals)
}

async fn publish_all(js: &jetstream::Context, events: &[Envelope]) {
    events::Publisher::from_context(js.clone())
        .publish_all(events, 500)
        .await
        .unwrap();
}

async fn stored(js: &jetstream::Context) -> Option<StatSnapshot> {
    let kv = js.get_key_value(STAT_SNAPSHOT_BUCKET).await.ok()?;
    serde_json::from_slice(&kv.get(STAT_SNAPSHOT_KEY).await.ok()??).ok()
}

fn total(v: &Value, counter: &str) -> i64 {
    v["counters"][counter]["total"].as_i64().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_gets_the_sum_so_far_then_coalesced_updates_on_both_gateways() {
    let (nats, db) = backends().await;
    let _agg = aggregator(&nats).await;
    let gw1 = Gateway::start(&nats, &db, &[]).await;
    let gw2 = Gateway::start(&nats, &db, &[]).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());

    let (first, orders1, deals1) = burst(3_000);
    publish_all(&js, &first).await;
    test_support::eventually("first burst counted", || async {
        stored(&js)
            .await
            .filter(|s| s.counters["orders_created"]["total"] == orders1)
    })
    .await;

    let d = Driver::start().await;
    for (name, gw) in [("a", &gw1), ("b", &gw2)] {
        d.connect_ok(name, Connect::to(gw, "/stat")).await;
        let load = d.next_event(name, "stat:load").await;
        assert_schema("stat-snapshot.schema.json", &load);
        assert_eq!(total(&load, "orders_created"), orders1, "{name}: {load}");
        assert_eq!(total(&load, "deals_completed"), deals1, "{name}: {load}");
    }

    let (second, orders2, deals2) = burst(6_000);
    let began = Instant::now();
    publish_all(&js, &second).await;
    for name in ["a", "b"] {
        // Follow the updates: consecutive versions, each carrying only what changed, adding
        // up to the exact totals.
        let mut orders = orders1;
        let mut deals = deals1;
        let mut last: Option<u64> = None;
        while orders != orders1 + orders2 || deals != deals1 + deals2 {
            let update = d.next_event(name, "stat:update").await;
            assert_schema("stat-update.schema.json", &update);
            let version = update["version"].as_u64().unwrap();
            if let Some(prev) = last {
                assert_eq!(version, prev + 1, "{name}: versions must be consecutive");
            }
            last = Some(version);
            if let Some(v) = update["counters"]["orders_created"]["total"].as_i64() {
                orders = v;
            }
            if let Some(v) = update["counters"]["deals_completed"]["total"].as_i64() {
                deals = v;
            }
            assert!(orders <= orders1 + orders2, "{name}: counted twice");
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    for name in ["a", "b"] {
        let n = d.count(name, "stat:update", |_| true);
        let allowed = (elapsed * 5.0).ceil() as usize + 2;
        assert!(
            n <= allowed,
            "{name}: {n} updates for 6,000 events in {elapsed:.1}s"
        );
        assert_eq!(
            d.count(name, "stat:load", |_| true),
            1,
            "{name}: no resync needed"
        );
    }

    // A client that connects now gets everything so far in one snapshot.
    d.connect_ok("late", Connect::to(&gw2, "/stat")).await;
    let load = d.next_event("late", "stat:load").await;
    assert_eq!(total(&load, "orders_created"), orders1 + orders2);
    assert_eq!(total(&load, "deals_completed"), deals1 + deals2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_misses_a_version_gets_a_fresh_snapshot() {
    let (nats, db) = backends().await;
    let agg = aggregator(&nats).await;
    let gw1 = Gateway::start(&nats, &db, &[]).await;
    let gw2 = Gateway::start(&nats, &db, &[]).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let d = Driver::start().await;
    d.connect_ok("a", Connect::to(&gw1, "/stat")).await;
    d.connect_ok("b", Connect::to(&gw2, "/stat")).await;
    d.next_event("a", "stat:load").await;
    d.next_event("b", "stat:load").await;

    publish_all(&js, &burst(30).0).await;
    let now = test_support::eventually("counted", || async {
        stored(&js)
            .await
            .filter(|s| s.counters["orders_created"]["total"] == 20)
    })
    .await;
    for name in ["a", "b"] {
        d.next_matching(name, "stat:update", |u| {
            u["version"].as_u64() == Some(now.version)
        })
        .await;
    }
    // Stop the aggregator, then play one whose updates v+1 and v+2 never reached the
    // gateways: the snapshot moves to v+3, and only update v+3 is published.
    agg.shutdown.cancel();
    test_support::eventually("aggregator stopped", || async {
        agg.task.is_finished().then_some(())
    })
    .await;
    let mut later = stored(&js).await.unwrap();
    later.version += 3;
    later
        .counters
        .get_mut("orders_created")
        .unwrap()
        .insert("total".into(), 23);
    let kv = js.get_key_value(STAT_SNAPSHOT_BUCKET).await.unwrap();
    kv.put(
        STAT_SNAPSHOT_KEY,
        serde_json::to_vec(&later).unwrap().into(),
    )
    .await
    .unwrap();
    let update = StatUpdate {
        version: later.version,
        at: later.at.clone(),
        counters: [(
            "orders_created".to_owned(),
            [("total".to_owned(), 23)].into_iter().collect(),
        )]
        .into_iter()
        .collect(),
    };
    client
        .publish(STAT_UPDATES, serde_json::to_vec(&update).unwrap().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    for name in ["a", "b"] {
        let load = d.next_event(name, "stat:load").await;
        assert_eq!(
            load["version"].as_u64(),
            Some(later.version),
            "{name}: {load}"
        );
        assert_eq!(total(&load, "orders_created"), 23);
        assert!(
            d.wait_pushed(name, "stat:update", |_| true, Duration::from_millis(300))
                .await
                .is_none(),
            "{name}: the update after a gap is replaced by the snapshot"
        );
    }
}
