//! Connected sessions, and the periodic check that ends connections whose session was
//! destroyed or expired in the store.
//!
//! Bound: a destroyed session's connections close with 1008 within `session.revalidate_secs`
//! plus one store round trip. The check batches every connected sid into `ANY($1)` queries
//! (PostgreSQL) or pipelined `EXISTS` (Redis), so its cost grows with sessions, not with time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::session_store::SessionStore;

/// Sids checked per store round trip.
const BATCH: usize = 500;

/// Which connection belongs to which session.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, (String, CancellationToken)>>,
}

/// Removes a connection from the registry when dropped.
#[derive(Debug)]
pub struct Registration<'a> {
    registry: &'a SessionRegistry,
    id: u64,
    /// Cancelled when the connection's session no longer exists.
    pub revoked: CancellationToken,
}

impl SessionRegistry {
    /// Registers a connection of session `sid`.
    pub fn register(&self, sid: String) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoked = CancellationToken::new();
        self.lock().insert(id, (sid, revoked.clone()));
        Registration {
            registry: self,
            id,
            revoked,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, CancellationToken)>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The distinct sids of open connections.
    fn sids(&self) -> Vec<String> {
        let mut sids: Vec<String> = self.lock().values().map(|(s, _)| s.clone()).collect();
        sids.sort_unstable();
        sids.dedup();
        sids
    }

    /// Revokes every connection of the given sessions; returns how many.
    fn revoke(&self, dead: &[String]) -> usize {
        let map = self.lock();
        let mut n = 0;
        for (sid, token) in map.values() {
            if dead.binary_search(sid).is_ok() {
                token.cancel();
                n += 1;
            }
        }
        n
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Checks every `interval` that connected sessions still exist, until shutdown. A store that
/// does not answer disconnects nobody: the next round tries again.
pub async fn revalidate(
    registry: std::sync::Arc<SessionRegistry>,
    store: SessionStore,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let sids = registry.sids();
        let mut dead = Vec::new();
        for batch in sids.chunks(BATCH) {
            match store.alive(batch).await {
                Ok(alive) => dead.extend(batch.iter().filter(|s| !alive.contains(*s)).cloned()),
                Err(err) => {
                    tracing::warn!(error = %err, "session revalidation skipped");
                    dead.clear();
                    break;
                }
            }
        }
        if !dead.is_empty() {
            dead.sort_unstable();
            let closed = registry.revoke(&dead);
            tracing::info!(
                sessions = dead.len(),
                connections = closed,
                "sessions ended, disconnecting"
            );
        }
    }
}
