//! `/stat`: public counters, no credentials; new connections are rate-limited per client
//! address. On connect a socket gets `stat:load` (the snapshot), then `stat:update` per
//! version; see [`feed`].

mod feed;

pub(crate) use feed::relay;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use service_runtime::net::limit_key;
use socketioxide::extract::{SocketRef, State};

use crate::auth::Refusal;
use crate::gateway::Shared;
use crate::handshake::{admit_socket, refused, track};
use crate::namespace::Namespace;

/// Client addresses whose minute window is remembered before old windows are swept.
const WINDOWS: usize = 100_000;

/// New `/stat` connections per client address (IPv6: its /64) and minute; and the counters
/// feed those connections get.
#[derive(Debug)]
pub(crate) struct StatAdmission {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// The snapshot this instance holds (kept by [`relay`]).
    pub(crate) feed: Arc<feed::Feed>,
}

impl StatAdmission {
    /// `per_minute` connections per address; 0 = unlimited.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::default(),
            feed: Arc::default(),
        }
    }

    /// Counts a new connection from `ip`; false when over the per-minute limit.
    fn admit(&self, ip: IpAddr) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let ip = limit_key(ip);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > WINDOWS {
            windows.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
        }
        let entry = windows.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_minute
    }
}

pub(crate) async fn handshake(s: SocketRef, State(g): Shared) -> Result<(), Refusal> {
    let (ip, slot) = admit_socket(&s, &g, Namespace::Stat)?;
    if !g.stat.admit(ip) {
        return Err(refused(Namespace::Stat, Refusal::RateLimited));
    }
    s.extensions.insert(slot);
    Ok(())
}

pub(crate) async fn on_connect(s: SocketRef, State(g): Shared) {
    track(&s, &g, Namespace::Stat, || {});
    let js = async_nats::jetstream::new(g.nats.clone());
    g.stat.feed.welcome(&s, &js).await;
}
