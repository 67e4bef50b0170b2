//! `load stat throughput|latency`: stat-aggregator (in this process, release build) against a
//! private nats-server.
//!
//! - `throughput`: `--events` events of the default counters' domains are published first;
//!   then the aggregator starts and the time until its snapshot includes all of them gives
//!   events folded per second (consume, decode, fold, commit, ack, publish).
//! - `latency`: events at `--rate` per second for `--secs`; each `rt.stat.update` tells which
//!   events it newly includes (`orders_created.total` grows by one per event), so every event
//!   gets publish → update latency, measured twice: at a NATS subscriber of `rt.stat.update`
//!   (what every gateway-socketio instance receives) and at `--clients` Socket.IO `/stat`
//!   clients of a release gateway-socketio on the same NATS server (its own PostgreSQL
//!   database, `stat.connections_per_minute` 0), where `stat:update` (or a re-sync `stat:load`)
//!   carries the same counters. The difference is the gateway's hop.

use std::path::PathBuf;
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

use crate::fleet::{Ws, next_text, send_text};
use crate::output::Out;
use crate::sio::protocol::{SioProtocol, event_args};
use crate::sio::servers::{Kind, Launch, Server, Tuning};
use crate::stats;

/// The gateway's namespace of the counters.
const NAMESPACE: &str = "/stat";

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
    /// Publish → rt.stat.update (NATS) and → stat:update (`/stat` clients) latency at a
    /// steady rate.
    Latency {
        /// Events per second.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Socket.IO `/stat` clients of a release gateway-socketio (0: the NATS subscriber only,
        /// no gateway).
        #[arg(long, default_value_t = 100)]
        clients: usize,
        /// The release gateway binary.
        #[arg(long, default_value = "target/release/gateway-socketio")]
        gateway_bin: PathBuf,
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

/// A release gateway-socketio on `nats` (and a fresh PostgreSQL database) that admits any
/// number of `/stat` connections from one address.
async fn gateway(bin: &std::path::Path, nats: &NatsServer) -> anyhow::Result<Server> {
    let launch = Launch {
        gateway_bin: bin.to_owned(),
        node_dir: PathBuf::new(),
        node_bin: String::new(),
        secret: "load stat hs256 secret, not for production".to_owned(),
        nats_url: nats.url(),
        gateway_env: vec![(
            "GATEWAY_SOCKETIO_STAT__CONNECTIONS_PER_MINUTE".to_owned(),
            "0".to_owned(),
        )],
        node_env: Vec::new(),
    };
    Server::start(Kind::Rust, &launch, Tuning::default()).await
}

/// A `/stat` socket past its namespace connect (no auth).
async fn stat_client(protocol: &SioProtocol) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(protocol.request.clone())
        .await
        .context("connect /stat")?;
    protocol
        .handshake_as(&mut ws, false, &protocol.auth)
        .await
        .map_err(|e| anyhow::anyhow!("/stat handshake: {e}"))?;
    Ok(ws)
}

/// What one `/stat` client saw.
struct ClientLatency {
    /// Publish → first `stat:update` (or `stat:load`) including it, per event, in ms.
    lat: Vec<f64>,
    /// `stat:load` packets after the first (the gateway's re-sync of a skipped version).
    reloads: usize,
}

/// Reads `ws` until its counters include `total` events, answering pings.
async fn read_updates(
    mut ws: Ws,
    sent: Arc<Mutex<Vec<Instant>>>,
    total: usize,
) -> Result<ClientLatency, String> {
    let (mut seen, mut loads) = (0usize, 0usize);
    let mut lat = Vec::with_capacity(total);
    while seen < total {
        let text = next_text(&mut ws).await?;
        let at = Instant::now();
        if text == "2" {
            send_text(&mut ws, "pong", "3".to_owned()).await?;
            continue;
        }
        let Some(args) = event_args(&text, NAMESPACE) else {
            continue;
        };
        match args[0].as_str() {
            Some("stat:update") => {}
            Some("stat:load") => loads += 1,
            _ => continue,
        }
        let Some(now) = args[1]["counters"]["orders_created"]["total"].as_u64() else {
            continue;
        };
        covered(&sent, &mut seen, now as usize, at, &mut lat);
    }
    Ok(ClientLatency {
        lat,
        reloads: loads.saturating_sub(1),
    })
}

/// An update seen `at` whose `orders_created.total` is `now`: it newly covers events
/// `seen..now` (by publish order), whose latencies go to `lat`.
fn covered(
    sent: &Mutex<Vec<Instant>>,
    seen: &mut usize,
    now: usize,
    at: Instant,
    lat: &mut Vec<f64>,
) {
    let sent = sent.lock().unwrap();
    for t in &sent[(*seen).min(sent.len())..now.min(sent.len())] {
        lat.push(at.duration_since(*t).as_secs_f64() * 1000.0);
    }
    *seen = now.max(*seen);
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
            let publisher = events::Publisher::from_context(js.clone());
            for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
                let envelopes: Vec<Envelope> = chunk.iter().map(|i| event(*i)).collect();
                publisher.publish_all(&envelopes, 1_000).await?;
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
        What::Latency {
            rate,
            secs,
            clients,
            ref gateway_bin,
        } => {
            let _agg = aggregator(&nats).await;
            let total = (rate * secs) as usize;
            let gateway = if clients > 0 {
                Some(gateway(gateway_bin, &nats).await?)
            } else {
                None
            };
            let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
            let mut readers = Vec::with_capacity(clients);
            if let Some(gateway) = &gateway {
                out.line(format!(
                    "connecting {clients} {NAMESPACE} clients to gateway-socketio at {}",
                    gateway.addr
                ));
                let protocol = SioProtocol {
                    request: SioProtocol::request(&gateway.ws_base())?,
                    namespace: NAMESPACE.to_owned(),
                    auth: "{}".to_owned(),
                    join: true,
                    subscribe: "{}".to_owned(),
                    counted: Vec::new(),
                };
                let sockets =
                    futures_util::future::join_all((0..clients).map(|_| stat_client(&protocol)))
                        .await;
                for ws in sockets {
                    let sent = Arc::clone(&sent);
                    readers.push(tokio::spawn(read_updates(ws?, sent, total)));
                }
            }
            let mut sub = client.subscribe(events::subject::STAT_UPDATES).await?;
            client.flush().await?;
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
                        covered(&sent, &mut seen, *now as usize, at, &mut lat);
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
                "publish -> rt.stat.update at a NATS subscriber (ms): {}",
                stats::summary_line(&summary)
            ));
            let mut report = json!({"surface": "stat", "what": "latency", "rate": rate,
                "events": total, "latency_ms": summary});
            if let Some(gateway) = gateway {
                let results = tokio::time::timeout(
                    Duration::from_secs(30),
                    futures_util::future::join_all(readers),
                )
                .await
                .context("the /stat clients did not see every event within 30 s")?;
                let (mut lat, mut reloads, mut failed) = (Vec::new(), 0usize, Vec::new());
                for r in results {
                    match r? {
                        Ok(client) => {
                            lat.extend(client.lat);
                            reloads += client.reloads;
                        }
                        Err(e) => failed.push(e),
                    }
                }
                let summary = stats::summary(&mut lat);
                out.line(format!(
                    "publish -> stat:update at {clients} {NAMESPACE} clients (ms): {}",
                    stats::summary_line(&summary)
                ));
                out.line(format!(
                    "{} re-sync stat:load, {} clients failed{}",
                    reloads,
                    failed.len(),
                    failed
                        .first()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                ));
                report["clients"] = json!(clients);
                report["client_latency_ms"] = summary;
                report["client_reloads"] = json!(reloads);
                report["clients_failed"] = json!(failed.len());
                gateway.stop().await;
            }
            out.finish(&report);
        }
    }
    Ok(())
}
