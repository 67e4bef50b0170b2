//! The collaboration state of one `/admin` or `/provider` socket, kept in its extensions.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use socketioxide::extract::SocketRef;
use socketioxide::handler::FromMessageParts;
use socketioxide::socket::Socket;

use super::channel::ChannelId;
use super::error::CollabError;
use super::identity::Participant;
use crate::auth::Principal;
use crate::limits::TokenBucket;
use crate::namespace::Namespace;

/// One socket's participant, budget and what it is doing.
#[derive(Debug)]
pub(crate) struct CollabSession {
    /// Who the socket is.
    pub(crate) who: Participant,
    /// Its namespace (`/admin` or `/provider`).
    pub(crate) ns: Namespace,
    /// Its verified token.
    pub(crate) principal: Principal,
    /// Collaboration events it may still send (`collab.events_per_minute`); `None`: unlimited.
    budget: Option<Mutex<TokenBucket>>,
    /// The sequence number of its last event ([`Seq`]).
    seq: AtomicU64,
    /// Channels it is viewing (`channel:viewing`), at most `collab.max_viewing_per_socket`,
    /// and which event last changed each.
    pub(crate) viewing: Mutex<Viewing>,
    /// Which event last set its status (`presence:update`).
    pub(crate) status_seq: Mutex<u64>,
    /// Which event last changed its typing in each channel; held while that change is relayed,
    /// so the relays leave in the order of the events.
    pub(crate) typing_order: tokio::sync::Mutex<Order<ChannelId>>,
    /// Participants whose presence it watches, at most `presence.max_watched_per_socket`.
    pub(crate) watching: Mutex<HashSet<Participant>>,
    /// Channels it is typing in, with when its last `typing:start` there was relayed.
    pub(crate) typing: Mutex<HashMap<ChannelId, Instant>>,
}

impl CollabSession {
    pub(crate) fn new(
        who: Participant,
        ns: Namespace,
        principal: Principal,
        events_per_minute: u32,
    ) -> Self {
        Self {
            who,
            ns,
            principal,
            budget: (events_per_minute > 0)
                .then(|| Mutex::new(TokenBucket::per_minute(events_per_minute, Instant::now()))),
            seq: AtomicU64::new(0),
            viewing: Mutex::default(),
            status_seq: Mutex::new(0),
            typing_order: tokio::sync::Mutex::default(),
            watching: Mutex::default(),
            typing: Mutex::default(),
        }
    }

    /// Takes one event from the socket's budget.
    pub(crate) fn spend(&self) -> Result<(), CollabError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        if budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(Instant::now())
        {
            Ok(())
        } else {
            Err(CollabError::RateLimited)
        }
    }

    /// The session of socket `s`, or [`CollabError::NoIdentity`] when it has none (a token
    /// without `sub`), after taking one event from its budget.
    pub(crate) fn of(s: &SocketRef) -> Result<Arc<Self>, CollabError> {
        let session = s
            .extensions
            .get::<Arc<Self>>()
            .ok_or(CollabError::NoIdentity)?;
        session.spend()?;
        Ok(session)
    }
}

/// The channels a socket views, and which event last changed each.
#[derive(Debug, Default)]
pub(crate) struct Viewing {
    pub(crate) channels: HashSet<ChannelId>,
    pub(crate) order: Order<ChannelId>,
}

/// The place of an event in its socket's stream: socketioxide runs each event's handler in a
/// task of its own, so two events of one socket may finish in any order, but extractors run
/// in the order the events arrive, and this one numbers them (from 1; 0 for a socket without
/// a session). A handler applies its change only when its number is newer than that of the
/// last change applied to the same thing ([`Order`]), so a slow `channel:viewing` finishing
/// after a later `channel:left` changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Seq(pub(crate) u64);

impl<A: socketioxide::adapter::Adapter> FromMessageParts<A> for Seq {
    type Error = Infallible;
    fn from_message_parts(
        s: &Arc<Socket<A>>,
        _: &mut socketioxide::handler::Value,
        _: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Self(
            s.extensions
                .get::<Arc<CollabSession>>()
                .map_or(0, |session| session.seq.fetch_add(1, Ordering::Relaxed) + 1),
        ))
    }
}

/// Keys remembered by an [`Order`]; past it the oldest is forgotten (see [`Order::newer`]).
const MAX_ORDERED: usize = 256;

/// Which event ([`Seq`]) last changed each key's state, for at most [`MAX_ORDERED`] keys.
#[derive(Debug)]
pub(crate) struct Order<K> {
    last: HashMap<K, u64>,
    /// The newest sequence number forgotten: a key not remembered may have been changed by
    /// any event up to it.
    floor: u64,
}

impl<K> Default for Order<K> {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            floor: 0,
        }
    }
}

impl<K: Eq + Hash + Clone> Order<K> {
    /// Whether event `seq` is newer than the last change of `key` (conservatively: than the
    /// forgotten ones too, when `key` is not remembered).
    pub(crate) fn newer(&self, key: &K, seq: Seq) -> bool {
        seq.0 > self.last.get(key).copied().unwrap_or(self.floor)
    }

    /// Records that event `seq` changed `key`.
    pub(crate) fn record(&mut self, key: &K, seq: Seq) {
        if !self.last.contains_key(key)
            && self.last.len() >= MAX_ORDERED
            && let Some((oldest, at)) = self
                .last
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, at)| (k.clone(), *at))
        {
            self.last.remove(&oldest);
            self.floor = self.floor.max(at);
        }
        let last = self.last.entry(key.clone()).or_insert(0);
        *last = (*last).max(seq.0);
    }

    /// [`Self::newer`], and then [`Self::record`]: whether `seq` may change `key`.
    pub(crate) fn admit(&mut self, key: &K, seq: Seq) -> bool {
        let newer = self.newer(key, seq);
        if newer {
            self.record(key, seq);
        }
        newer
    }
}

/// Locks a session's mutex, poison or not (the data is plain bookkeeping).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_admits_newer_events_only_and_forgets_conservatively() {
        let mut order = Order::default();
        assert!(order.admit(&"a", Seq(2)));
        assert!(!order.admit(&"a", Seq(1)), "older than the last change");
        assert!(!order.admit(&"a", Seq(2)));
        assert!(order.admit(&"b", Seq(1)), "another key");
        assert!(order.admit(&"a", Seq(3)));
        let mut order = Order::default();
        for i in 0..MAX_ORDERED as u64 {
            assert!(order.admit(&i, Seq(i + 1)));
        }
        // Full: the oldest (key 0, seq 1) is forgotten, and any key not remembered is then
        // taken to have changed at seq 1.
        assert!(order.admit(&10_000, Seq(1_000)));
        assert_eq!(order.last.len(), MAX_ORDERED);
        assert!(!order.newer(&0, Seq(1)));
        assert!(order.newer(&0, Seq(2)));
        assert!(!order.newer(&5, Seq(6)));
    }
}
