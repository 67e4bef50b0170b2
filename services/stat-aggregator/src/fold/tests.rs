use std::sync::Arc;

use events::{Envelope, EventType};
use jiff::Timestamp;
use serde_json::json;

use super::{Folder, Outcome};
use crate::clock::{Clock, ManualClock};
use crate::config::{Config, CounterConfig, FilterConfig, RuleConfig};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn event(ty: &str, at: Timestamp, data: serde_json::Value) -> Envelope {
    let (d, n) = ty.split_once('.').unwrap();
    let mut e = Envelope::new(EventType::new(d, n).unwrap(), "1", data).unwrap();
    e.occurred_at = time::OffsetDateTime::from_unix_timestamp(at.as_second()).unwrap();
    e
}

fn counter(name: &str, types: &[&str], windows: &[&str]) -> CounterConfig {
    CounterConfig {
        name: name.into(),
        event_types: types.iter().map(|s| (*s).to_owned()).collect(),
        filter: None,
        rules: vec![],
        windows: windows.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn folder(counters: Vec<CounterConfig>, clock: &Arc<ManualClock>) -> Folder {
    let config = Config {
        counters: Some(counters),
        ..Config::default()
    };
    let defs = Arc::new(config.definitions().unwrap());
    Folder::new(defs, Arc::clone(clock) as Arc<dyn Clock>, 100)
}

fn value(f: &Folder, counter: &str, window: &str) -> i64 {
    f.values()[counter][window]
}

#[test]
fn a_burst_counts_exactly_and_repeats_count_once() {
    let clock = Arc::new(ManualClock::new(ts("2026-03-10T12:00:00Z")));
    let mut completed = counter("orders_completed", &["order.*"], &["total", "today"]);
    completed.filter = Some(FilterConfig {
        field: "data.status".into(),
        equals: json!("completed"),
    });
    let mut f = folder(vec![completed], &clock);
    let now = clock.now();
    let mut seq = 0;
    for i in 0..1_000 {
        seq += 1;
        let status = if i % 4 == 0 {
            "completed"
        } else {
            "processing"
        };
        let e = event("order.status_changed", now, json!({"status": status}));
        f.fold(seq, &e);
    }
    assert_eq!(value(&f, "orders_completed", "total"), 250);
    // A redelivery of an included sequence, and the same event under a new sequence.
    let e = event("order.status_changed", now, json!({"status": "completed"}));
    assert_eq!(f.fold(seq + 1, &e), Outcome::Counted);
    assert_eq!(f.fold(seq + 1, &e), Outcome::AlreadyIncluded);
    assert_eq!(f.fold(seq + 2, &e), Outcome::Duplicate);
    assert_eq!(value(&f, "orders_completed", "total"), 251);
    assert_eq!(f.seq(), seq + 2);
}

#[test]
fn gauges_go_up_and_down() {
    let clock = Arc::new(ManualClock::new(ts("2026-03-10T12:00:00Z")));
    let mut gauge = counter("deals_open", &[], &["total"]);
    gauge.rules = vec![
        RuleConfig {
            event_types: vec!["deal.created".into()],
            filter: None,
            delta: 1,
        },
        RuleConfig {
            event_types: vec!["deal.completed".into()],
            filter: None,
            delta: -1,
        },
    ];
    let mut f = folder(vec![gauge], &clock);
    let now = clock.now();
    for seq in 1..=5 {
        f.fold(seq, &event("deal.created", now, json!({})));
    }
    for seq in 6..=7 {
        f.fold(seq, &event("deal.completed", now, json!({})));
    }
    assert_eq!(value(&f, "deals_open", "total"), 3);
}

#[test]
fn the_day_rolls_over_at_midnight_without_events() {
    let clock = Arc::new(ManualClock::new(ts("2026-03-10T23:59:00Z")));
    let mut f = folder(
        vec![counter(
            "deals_completed",
            &["deal.completed"],
            &["total", "today", "this_week", "this_month"],
        )],
        &clock,
    );
    for seq in 1..=3 {
        f.fold(seq, &event("deal.completed", clock.now(), json!({})));
    }
    let _ = f.take_changes();
    assert_eq!(value(&f, "deals_completed", "today"), 3);
    clock.set(ts("2026-03-11T00:00:01Z"));
    f.roll();
    let changes = f.take_changes();
    assert_eq!(changes["deals_completed"].get("today"), Some(&0));
    assert!(!changes["deals_completed"].contains_key("total"));
    assert_eq!(value(&f, "deals_completed", "total"), 3);
    assert_eq!(value(&f, "deals_completed", "this_week"), 3);
    // A late event from yesterday counts in total and this week, not today.
    f.fold(
        4,
        &event("deal.completed", ts("2026-03-10T23:59:30Z"), json!({})),
    );
    f.fold(5, &event("deal.completed", clock.now(), json!({})));
    assert_eq!(value(&f, "deals_completed", "today"), 1);
    assert_eq!(value(&f, "deals_completed", "total"), 5);
    // Sunday 2026-03-15 → Monday: the week rolls; April: the month does.
    clock.set(ts("2026-03-16T00:00:00Z"));
    f.roll();
    assert_eq!(value(&f, "deals_completed", "this_week"), 0);
    assert_eq!(value(&f, "deals_completed", "this_month"), 5);
    clock.set(ts("2026-04-01T00:00:00Z"));
    f.roll();
    assert_eq!(value(&f, "deals_completed", "this_month"), 0);
}

#[test]
fn a_rolling_window_forgets_old_buckets() {
    let clock = Arc::new(ManualClock::new(ts("2026-03-10T12:00:00Z")));
    let mut f = folder(vec![counter("x", &["deal.*"], &["last_1h"])], &clock);
    f.fold(1, &event("deal.created", clock.now(), json!({})));
    clock.set(ts("2026-03-10T12:30:00Z"));
    f.fold(2, &event("deal.created", clock.now(), json!({})));
    // Too old to count at all.
    f.fold(
        3,
        &event("deal.created", ts("2026-03-10T11:00:00Z"), json!({})),
    );
    assert_eq!(value(&f, "x", "last_1h"), 2);
    clock.set(ts("2026-03-10T13:10:00Z"));
    f.roll();
    assert_eq!(value(&f, "x", "last_1h"), 1);
    clock.set(ts("2026-03-10T13:40:00Z"));
    f.roll();
    assert_eq!(value(&f, "x", "last_1h"), 0);
}

#[test]
fn encode_restore_keeps_everything_and_resets_ended_periods() {
    let clock = Arc::new(ManualClock::new(ts("2026-03-10T22:00:00Z")));
    let defs = vec![counter("d", &["deal.*"], &["total", "today", "last_24h"])];
    let mut f = folder(defs.clone(), &clock);
    let dup = event("deal.created", clock.now(), json!({}));
    f.fold(1, &dup);
    f.fold(2, &event("deal.created", clock.now(), json!({})));
    f.bump_version();
    let bytes = f.encode();

    let config = Config {
        counters: Some(vec![
            defs[0].clone(),
            counter("new_one", &["order.*"], &["total"]),
        ]),
        ..Config::default()
    };
    let defs2 = Arc::new(config.definitions().unwrap());
    let mut r = Folder::restore(
        Arc::clone(&defs2),
        Arc::clone(&clock) as Arc<dyn Clock>,
        100,
        &bytes,
    )
    .unwrap();
    assert_eq!((r.seq(), r.version()), (2, 1));
    assert_eq!(r.values(), {
        let mut v = f.values();
        v.entry("new_one".into())
            .or_default()
            .insert("total".into(), 0);
        v
    });
    // The dedupe window came along.
    assert_eq!(r.fold(3, &dup), Outcome::Duplicate);

    // Restored the next day: `today` starts over, the rest is kept.
    clock.set(ts("2026-03-11T01:00:00Z"));
    let r = Folder::restore(defs2, Arc::clone(&clock) as Arc<dyn Clock>, 100, &bytes).unwrap();
    assert_eq!(value(&r, "d", "today"), 0);
    assert_eq!(value(&r, "d", "total"), 2);
    assert_eq!(value(&r, "d", "last_24h"), 2);
    assert!(
        Folder::restore(
            Arc::new(Config::default().definitions().unwrap()),
            clock as Arc<dyn Clock>,
            100,
            b"garbage"
        )
        .is_err()
    );
}

#[test]
fn changes_are_coalesced_until_taken() {
    let clock = Arc::new(ManualClock::new(ts("2026-03-10T12:00:00Z")));
    let mut f = folder(
        vec![
            counter("a", &["deal.*"], &["total"]),
            counter("b", &["order.*"], &["total"]),
        ],
        &clock,
    );
    for seq in 1..=100 {
        f.fold(seq, &event("deal.created", clock.now(), json!({})));
    }
    let changes = f.take_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes["a"]["total"], 100);
    assert!(!f.has_changes());
    assert!(f.take_changes().is_empty());
}
