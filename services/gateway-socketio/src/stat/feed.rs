//! `/stat` feed: the counters snapshot this instance holds, and the relay that keeps it and
//! every `/stat` socket exact.
//!
//! Each instance subscribes to `rt.stat.update` itself (core NATS, no queue group) and reads
//! the snapshot from the `stat_snapshot` key-value bucket that stat-aggregator keeps. A
//! socket gets `stat:load` (the whole snapshot) on connect, then `stat:update` for each next
//! version. Every socket's last version is tracked: a socket that would skip a version (the
//! instance missed an update, or an emit to it was dropped) gets a fresh `stat:load`
//! instead, so what it shows is always the aggregator's numbers at some version.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream;
use events::stat::{StatSnapshot, StatUpdate};
use events::subject::{STAT_SNAPSHOT_BUCKET, STAT_SNAPSHOT_KEY, STAT_UPDATES};
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::bus::{next, subscribe};
use crate::namespace::Namespace;

/// `stat:load` payload: [`StatSnapshot`].
pub(crate) const LOAD: &str = "stat:load";
/// `stat:update` payload: [`StatUpdate`].
pub(crate) const UPDATE: &str = "stat:update";

/// The version a socket has (in its extensions).
#[derive(Debug, Clone, Default)]
struct SocketVersion(Arc<AtomicU64>);

/// The instance's snapshot. One lock orders "apply an update and fan it out" against "send a
/// new socket its snapshot", so a socket never sees an update older than its snapshot.
#[derive(Debug, Default)]
pub(crate) struct Feed {
    current: Mutex<Option<StatSnapshot>>,
}

/// The snapshot before the aggregator wrote one: every counter unknown, version 0.
fn empty() -> StatSnapshot {
    StatSnapshot {
        version: 0,
        at: String::new(),
        time_zone: String::new(),
        counters: Default::default(),
    }
}

async fn read_snapshot(js: &jetstream::Context) -> Option<StatSnapshot> {
    let kv = js.get_key_value(STAT_SNAPSHOT_BUCKET).await.ok()?;
    let bytes = kv.get(STAT_SNAPSHOT_KEY).await.ok()??;
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(error = %err, "stat snapshot does not parse; ignored");
            None
        }
    }
}

fn send_load(s: &SocketRef, snapshot: &StatSnapshot) {
    let version = s.extensions.get::<SocketVersion>().unwrap_or_default();
    if s.emit(LOAD, snapshot).is_ok() {
        version.0.store(snapshot.version, Ordering::Release);
    } else {
        metrics::counter!("socketio_emits_dropped_total").increment(1);
    }
    s.extensions.insert(version);
}

impl Feed {
    /// Sends a newly connected socket the snapshot (read from the bucket when this instance
    /// has none yet).
    pub(crate) async fn welcome(&self, s: &SocketRef, js: &jetstream::Context) {
        let mut current = self.current.lock().await;
        if current.is_none() {
            *current = read_snapshot(js).await;
        }
        let snapshot = current.clone().unwrap_or_else(empty);
        send_load(s, &snapshot);
    }

    /// Applies `update` and fans it out; on a gap, reloads the snapshot from the bucket and
    /// sends it to every socket that is behind.
    async fn on_update(&self, io: &SocketIo, js: &jetstream::Context, update: StatUpdate) {
        let mut current = self.current.lock().await;
        let applied = match current.as_mut() {
            Some(snap) if update.version <= snap.version => return, // already included
            Some(snap) => snap.apply(&update),
            None => false,
        };
        if !applied {
            metrics::counter!("socketio_stat_resyncs_total").increment(1);
            match read_snapshot(js).await {
                Some(fresh) if current.as_ref().is_none_or(|c| fresh.version > c.version) => {
                    *current = Some(fresh);
                }
                _ => return, // nothing newer yet: the next update retries
            }
        }
        let Some(snapshot) = current.as_ref() else {
            return;
        };
        let Some(ns) = io.of(Namespace::Stat.path()) else {
            return;
        };
        for s in ns.sockets() {
            let Some(version) = s.extensions.get::<SocketVersion>() else {
                continue; // not welcomed yet: welcome() sends it the snapshot
            };
            let have = version.0.load(Ordering::Acquire);
            if have >= snapshot.version {
                continue;
            }
            if applied && have + 1 == update.version {
                if s.emit(UPDATE, &update).is_ok() {
                    version.0.store(update.version, Ordering::Release);
                } else {
                    metrics::counter!("socketio_emits_dropped_total").increment(1);
                }
            } else {
                send_load(&s, snapshot);
            }
        }
        metrics::counter!("socketio_events_relayed_total", "event_kind" => "stat").increment(1);
    }
}

/// `rt.stat.update` → `/stat` sockets, until `shutdown`.
pub(crate) async fn relay(
    io: SocketIo,
    feed: Arc<Feed>,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) {
    let js = jetstream::new(nats.clone());
    let Some(mut sub) = subscribe(&nats, STAT_UPDATES, &shutdown).await else {
        return;
    };
    while let Some(message) = next(&mut sub, &shutdown).await {
        match serde_json::from_slice::<StatUpdate>(&message.payload) {
            Ok(update) => feed.on_update(&io, &js, update).await,
            Err(err) => {
                tracing::warn!(error = %err, "stat update does not parse; skipped");
            }
        }
    }
}
