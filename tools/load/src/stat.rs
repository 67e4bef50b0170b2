//! `load stat throughput|latency`: stat-aggregator (in this process, release build) against a
//! private nats-server.
//!
//! - `throughput`: `--events` events of the default counters' domains are published first;
//!   then the aggregator starts and the time until its snapshot includes all of them gives
//!   events folded per second (consume, decode, fold, commit, ack, publish).
//! - `latency`: events at `--rate` per second for `--secs`; each `rt.stat.update` tells which
//!   events it newly includes (`orders_created.total` grows by one per event), so every event
//!   gets publish → update latency. Measured at a NATS subscriber of `rt.stat.update`, i.e.
//!   what every gateway-socketio instance receives; the gateway's relay to the socket is not
//!   included.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use events::stat::{StatSnapshot, StatUpdate};
use events::{Envelope, EventType};
use futures_util::StreamExt;
use serde_json::json;
use test_support::{InProcess, NatsServer};

use crate::output::Out;
use crate::stats;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Events folded per second with the default counter set.
    Throughput {
        /// Events published before the aggregator starts.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
    },
    /// Publish → rt.stat.update latency at a steady rate.
    Latency {
        /// Events per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
}

fn event(i: usize) -> Envelope {
    let (d, n, data) = match i % 5 {
        0 => ("deal", "created", json!({"id": i})),
        1 => ("deal", "completed", json!({"id": i})),
        2 => ("order", "created", json!({"id": i})),
        3 => (
            "order",
            "status_changed",
            json!({"id": i, "status": "completed"}),
        ),
        _ => (
            "provider",
            "status_changed",
            json!({"id": i, "status": "online"}),
        ),
    };
    Envelope::new(EventType::new(d, n).unwrap(), "1", data).unwrap()
}

async fn aggregator(nats: &NatsServer) -> InProcess {
    let p = "STAT_AGGREGATOR_";
    InProcess::start(
        &stat_aggregator::SPEC,
        vec![
            (format!("{p}NATS__URL"), nats.url()),
            (format!("{p}SHUTDOWN__GRACE_SECS"), "5".to_owned()),
        ],
        stat_aggregator::prepare,
        stat_aggregator::run,
    )
    .await
}

async fn snapshot(js: &jetstream::Context) -> Option<StatSnapshot> {
    let kv = js
        .get_key_value(events::subject::STAT_SNAPSHOT_BUCKET)
        .await
        .ok()?;
    serde_json::from_slice(&kv.get(events::subject::STAT_SNAPSHOT_KEY).await.ok()??).ok()
}

pub async fn run(args: &Args, out: Out) -> anyhow::Result<()> {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.context("nats")?;
    let js = jetstream::new(client.clone());
    events::provision::ensure_stream(&js, &events::provision::StreamSettings::events()).await?;
    match args.what {
        What::Throughput { events: n } => {
            out.line(format!("publishing {n} events"));
            for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
                let acks = futures_util::future::join_all(chunk.iter().map(|i| {
                    let e = event(*i);
                    js.publish_with_headers(
                        events::subject::event_subject(&e.event_type),
                        events::publisher::publish_headers(&e),
                        e.encode().into(),
                    )
                }))
                .await;
                for a in acks {
                    a?.await?;
                }
            }
            let orders_created = (0..n).filter(|i| i % 5 == 2).count() as i64;
            let started = Instant::now();
            let _agg = aggregator(&nats).await;
            loop {
                if let Some(s) = snapshot(&js).await
                    && s.counters["orders_created"]["total"] == orders_created
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let secs = started.elapsed().as_secs_f64();
            let rate = n as f64 / secs;
            out.line(format!(
                "folded {n} events in {secs:.2} s (start-up included): {rate:.0} events/s (target >= 50000)"
            ));
            out.finish(&json!({"surface": "stat", "what": "throughput", "events": n,
                "seconds": secs, "events_per_sec": rate, "target": 50_000, "met": rate >= 50_000.0}));
        }
        What::Latency { rate, secs } => {
            let _agg = aggregator(&nats).await;
            let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
            let mut sub = client.subscribe(events::subject::STAT_UPDATES).await?;
            client.flush().await?;
            let total = (rate * secs) as usize;
            let collector = {
                let sent = Arc::clone(&sent);
                tokio::spawn(async move {
                    let mut seen = 0usize;
                    let mut lat = Vec::with_capacity(total);
                    while seen < total {
                        let Some(m) = sub.next().await else { break };
                        let at = Instant::now();
                        let Ok(u) = serde_json::from_slice::<StatUpdate>(&m.payload) else {
                            continue;
                        };
                        let Some(now) = u
                            .counters
                            .get("orders_created")
                            .and_then(|w| w.get("total"))
                        else {
                            continue;
                        };
                        let now = *now as usize;
                        let sent = sent.lock().unwrap();
                        for t in &sent[seen.min(sent.len())..now.min(sent.len())] {
                            lat.push(at.duration_since(*t).as_secs_f64() * 1000.0);
                        }
                        seen = now;
                    }
                    lat
                })
            };
            out.line(format!("publishing {total} order.created at {rate}/s"));
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            for _ in 0..total {
                tick.tick().await;
                let e = Envelope::new(EventType::new("order", "created")?, "1", json!({}))?;
                sent.lock().unwrap().push(Instant::now());
                js.publish_with_headers(
                    events::subject::event_subject(&e.event_type),
                    events::publisher::publish_headers(&e),
                    e.encode().into(),
                )
                .await?;
            }
            let mut lat = tokio::time::timeout(Duration::from_secs(30), collector).await??;
            let summary = stats::summary(&mut lat);
            out.line(format!(
                "publish -> rt.stat.update (ms): {}",
                stats::summary_line(&summary)
            ));
            out.finish(&json!({"surface": "stat", "what": "latency", "rate": rate,
                "events": total, "latency_ms": summary}));
        }
    }
    Ok(())
}
