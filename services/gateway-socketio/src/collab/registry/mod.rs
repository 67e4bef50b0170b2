//! Cluster-wide presence and channel viewing, kept in the JetStream key-value bucket
//! `presence.bucket` (layout in [`keys`]).
//!
//! - **Local state is authoritative** ([`local`]): this instance's sockets, their status
//!   and channels, in memory. Changes mark participants dirty; one writer task syncs them to
//!   the bucket, coalescing, and retries failures with backoff. Per participant and instance:
//!   one put when its first socket connects, one delete `presence.grace_ms` after its last
//!   leaves (none when one is back in time), one put when the aggregate status changes; per
//!   viewed channel one put and one delete. A participant's writes wait
//!   [`MIN_WRITE_INTERVAL`] after its previous ones, so toggles coalesce.
//! - **Every instance replicates the bucket** ([`replica`]) through one watch of all keys,
//!   and derives each participant's status over the instances (online when any says online,
//!   away when all say away, offline otherwise). A derived change is pushed once as
//!   `presence:update` to the participant's watch room on `/admin` and `/provider`.
//! - **Liveness** ([`kv`]): each instance puts `i.<instance>.live` every
//!   `presence.heartbeat_ms`. One not heard for `presence.ttl_ms` (by the bucket's clock) is
//!   dropped by all; the live instance with the smallest id writes the last-seen of those it
//!   took offline, purges its keys and deletes its live key, which an instance declared dead
//!   while alive hears, and then writes its whole state again.
//! - **Leaving** (graceful shutdown): the instance writes what it still has queued (last-seen
//!   values, purges) and deletes its own live key. The others, having heard it within the
//!   ttl, take that deletion for a departure: they keep its participants until
//!   `presence.grace_ms` after it (checked at their heartbeats), so clients reconnecting to
//!   another instance meanwhile do not flap; then it is dropped as a dead one, departed at
//!   that time, and the reaper writes the last-seen and purges its keys.
//! - **Last seen**: `seen.<participant>`, written by the instance whose removal took the
//!   participant offline, with the time of that removal in the bucket, which every instance
//!   already used for its `presence:update`, so the write changes nothing it pushed.

mod keys;
mod kv;
mod local;
mod replica;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service_runtime::ReadyFlag;
use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::channel::ChannelId;
use super::identity::{Kind, Participant};
use crate::config::PresenceConfig;
use local::Local;
pub(crate) use replica::Presence;
use replica::Replica;

/// What a connected socket says it is (`presence:update {status}`), and what an instance says
/// of a participant (the aggregate of its sockets there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Activity {
    Online,
    Away,
}

/// A participant's status over the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Online,
    Away,
    Offline,
}

/// `presence:update` (server → client), and the common part of a `presence:result` item.
#[derive(Debug, Serialize)]
pub(crate) struct Update<'a> {
    pub(crate) kind: Kind,
    pub(crate) id: &'a str,
    pub(crate) status: Status,
    /// RFC 3339, milliseconds; `null` while online or away, or when never seen.
    pub(crate) last_seen: Option<String>,
}

impl Presence {
    /// This presence of `who` as clients see it.
    pub(crate) fn update<'a>(&self, who: &'a Participant) -> Update<'a> {
        Update {
            kind: who.kind,
            id: &who.id,
            status: self.status,
            last_seen: self
                .last_seen
                .map(|ms| events::envelope::timestamp::format(keys::time_of(ms))),
        }
    }
}

/// How long a participant's keys are left as they are after a write before the next one:
/// status and viewing toggles in between coalesce into one write (and one `presence:update`).
/// The first put of a participant is immediate.
pub(crate) const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(250);

/// How long [`Registry::run`] may take, at most, to leave the cluster once `shutdown` is
/// cancelled.
pub(crate) const SHUTDOWN_BUDGET: Duration = Duration::from_millis(2500);

/// Cluster-wide presence and viewing of this instance.
#[derive(Debug)]
pub(crate) struct Registry {
    /// This instance in the bucket's keys (a UUID v7, new at every start).
    instance: Arc<str>,
    config: PresenceConfig,
    heartbeat: Duration,
    grace: Duration,
    ttl_ms: keys::Millis,
    grace_ms: keys::Millis,
    local: Mutex<Local>,
    replica: Mutex<Replica>,
    /// Wakes the writer: something to write, or a new grace deadline.
    wake: Notify,
    /// Asks for a heartbeat now.
    beat: Notify,
}

impl Registry {
    pub(crate) fn new(config: &PresenceConfig) -> Self {
        Self {
            instance: Arc::from(uuid::Uuid::now_v7().to_string()),
            config: config.clone(),
            heartbeat: Duration::from_millis(config.heartbeat_ms.max(1)),
            grace: Duration::from_millis(config.grace_ms),
            ttl_ms: i64::try_from(config.ttl_ms).unwrap_or(i64::MAX),
            grace_ms: i64::try_from(config.grace_ms).unwrap_or(i64::MAX),
            local: Mutex::new(Local::new(MIN_WRITE_INTERVAL)),
            replica: Mutex::default(),
            wake: Notify::new(),
            beat: Notify::new(),
        }
    }

    /// Runs until `shutdown`: sets `ready` once the cluster state is loaded, then leaves the
    /// cluster (within [`SHUTDOWN_BUDGET`]).
    pub(crate) async fn run(
        self: Arc<Self>,
        io: SocketIo,
        nats: async_nats::Client,
        ready: ReadyFlag,
        shutdown: CancellationToken,
    ) {
        kv::run(self, io, nats, ready, shutdown).await;
    }

    fn changed(&self, wake: bool) {
        if wake {
            self.wake.notify_one();
        }
    }

    /// A socket of `who` connected on this instance (idempotent).
    pub(crate) fn socket_connected(&self, who: &Participant, sid: Sid) {
        let wake = lock(&self.local).connect(who, sid);
        self.changed(wake);
    }

    /// A socket of `who` left this instance (also ends what it was viewing); idempotent. The
    /// participant stays for `presence.grace_ms` after its last socket here.
    pub(crate) fn socket_disconnected(&self, who: &Participant, sid: Sid) {
        lock(&self.local).disconnect(who, sid, std::time::Instant::now(), self.grace);
        // Also when nothing is to be written yet: the writer sleeps until the new deadline.
        self.wake.notify_one();
    }

    /// Socket `sid` of `who` says it is online or away.
    pub(crate) fn set_status(&self, who: &Participant, sid: Sid, activity: Activity) {
        let wake = lock(&self.local).set_activity(who, sid, activity);
        self.changed(wake);
    }

    /// Socket `sid` of `who` started (`on`) or stopped viewing `channel`.
    pub(crate) fn set_viewing(&self, who: &Participant, sid: Sid, channel: &ChannelId, on: bool) {
        let wake = lock(&self.local).set_viewing(who, sid, channel, on);
        self.changed(wake);
    }

    /// Whether `who` views `channel` on any socket of any instance: this instance's sockets
    /// as they are now, the others' as the bucket says.
    pub(crate) fn is_viewing_anywhere(&self, who: &Participant, channel: &ChannelId) -> bool {
        let here = lock(&self.local).views(who, channel);
        here || lock(&self.replica).views_elsewhere(&self.instance, who, channel)
    }

    /// `who`'s presence over the cluster, as pushed to watchers.
    pub(crate) fn presence(&self, who: &Participant) -> Presence {
        lock(&self.replica).presence(who)
    }
}

/// Locks registry state, poisoned or not (plain bookkeeping, consistent between calls).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
