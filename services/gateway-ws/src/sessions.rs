//! Connected sessions, and the periodic check that ends connections whose session was
//! destroyed, expired, or no longer holds the user the connection authenticated as.
//!
//! Bound: such a connection closes with 1008 within `session.revalidate_secs` plus one store
//! round trip. The check re-reads every connected session in batches (`ANY($1)` on
//! PostgreSQL, a pipeline of `GET`s on Redis), so its cost grows with sessions, not with time.
//! A session is re-read rather than only checked for existence because express-session
//! rewrites a session in place, under the same sid, on logout or on a login as someone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::session_store::{self, SessionStore, UserIdPaths};

/// Sids checked per store round trip.
const BATCH: usize = 500;

/// Why a connected session stopped authenticating its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The session was destroyed or expired.
    Ended,
    /// The session exists but holds no user any more (logged out in place).
    NoUser,
    /// The session now holds a different user.
    UserChanged,
}

/// One connection's revocation: cancelled with a reason when its session no longer
/// authenticates it.
#[derive(Debug, Clone, Default)]
pub struct Revocation {
    token: CancellationToken,
    reason: Arc<OnceLock<Revoked>>,
}

impl Revocation {
    /// Records the first reason, then wakes the connection.
    fn revoke(&self, why: Revoked) {
        let _ = self.reason.set(why);
        self.token.cancel();
    }

    /// Resolves once revoked, with the reason.
    pub async fn revoked(&self) -> Revoked {
        self.token.cancelled().await;
        // `revoke` sets the reason before it cancels.
        self.reason.get().copied().unwrap_or(Revoked::Ended)
    }
}

#[derive(Debug)]
struct Entry {
    sid: String,
    /// The user the connection was told it is (`connected.userId`).
    user: Value,
    revocation: Revocation,
}

/// Which connection belongs to which session and user.
#[derive(Debug, Default)]
pub struct SessionRegistry {
    next_id: AtomicU64,
    connections: Mutex<HashMap<u64, Entry>>,
}

/// Removes a connection from the registry when dropped.
#[derive(Debug)]
pub struct Registration<'a> {
    registry: &'a SessionRegistry,
    id: u64,
    /// Fires when the connection's session no longer authenticates `user`.
    pub revocation: Revocation,
}

impl SessionRegistry {
    /// Registers a connection of session `sid`, authenticated as `user`.
    pub fn register(&self, sid: String, user: Value) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revocation = Revocation::default();
        self.lock().insert(
            id,
            Entry {
                sid,
                user,
                revocation: revocation.clone(),
            },
        );
        Registration {
            registry: self,
            id,
            revocation,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The distinct sids of open connections.
    fn sids(&self) -> Vec<String> {
        let mut sids: Vec<String> = self.lock().values().map(|e| e.sid.clone()).collect();
        sids.sort_unstable();
        sids.dedup();
        sids
    }

    /// Revokes every connection whose session is missing from `users` (sid → the user the
    /// session holds now, `None` for none) or holds another user; returns how many.
    fn revoke_stale(&self, users: &HashMap<String, Option<Value>>) -> usize {
        let map = self.lock();
        let mut n = 0;
        for entry in map.values() {
            let why = match users.get(&entry.sid) {
                None => Revoked::Ended,
                Some(None) => Revoked::NoUser,
                Some(Some(user)) if *user != entry.user => Revoked::UserChanged,
                Some(Some(_)) => continue,
            };
            entry.revocation.revoke(why);
            n += 1;
        }
        n
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Re-reads connected sessions every `interval` until shutdown, finding the user at
/// `user_id_paths` as the handshake does. A store that does not answer disconnects nobody:
/// the next round tries again.
pub async fn revalidate(
    registry: Arc<SessionRegistry>,
    store: SessionStore,
    user_id_paths: UserIdPaths,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    'rounds: loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let sids = registry.sids();
        if sids.is_empty() {
            continue;
        }
        let mut users = HashMap::with_capacity(sids.len());
        for batch in sids.chunks(BATCH) {
            match store.load_many(batch).await {
                Ok(found) => users.extend(found.into_iter().map(|(sid, sess)| {
                    let user = session_store::user_id(&sess, &user_id_paths);
                    (sid, user)
                })),
                Err(err) => {
                    tracing::warn!(error = %err, "session revalidation skipped");
                    continue 'rounds;
                }
            }
        }
        let closed = registry.revoke_stale(&users);
        if closed > 0 {
            tracing::info!(
                connections = closed,
                "sessions ended or changed user, disconnecting"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn stale_sessions_are_revoked_with_their_reason() {
        let registry = SessionRegistry::default();
        let gone = registry.register("a".to_owned(), json!(1));
        let logged_out = registry.register("b".to_owned(), json!(1));
        let switched = registry.register("c".to_owned(), json!(1));
        let kept = registry.register("d".to_owned(), json!("u-1"));
        let users = HashMap::from([
            ("b".to_owned(), None),
            ("c".to_owned(), Some(json!(2))),
            ("d".to_owned(), Some(json!("u-1"))),
        ]);
        assert_eq!(registry.revoke_stale(&users), 3);
        assert_eq!(gone.revocation.revoked().await, Revoked::Ended);
        assert_eq!(logged_out.revocation.revoked().await, Revoked::NoUser);
        assert_eq!(switched.revocation.revoked().await, Revoked::UserChanged);
        assert!(!kept.revocation.token.is_cancelled());
        drop(gone);
        assert_eq!(registry.sids(), ["b", "c", "d"]);
    }
}
