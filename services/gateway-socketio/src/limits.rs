//! Rate limits and connection places: token buckets (per socket, and keyed by client address
//! or widget key), and the connection slot a namespace socket holds until it leaves.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use service_runtime::net::{Breach, ClientIpPolicy, ConnectionGuard, ConnectionLimiter};
use socketioxide::extract::SocketRef;

use crate::auth::Refusal;

/// A token bucket holding up to `capacity` tokens, refilled at `capacity` per minute: "N per
/// minute", with the N available at once.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    capacity: f64,
}

impl TokenBucket {
    /// A full bucket of `per_minute` tokens.
    pub fn per_minute(per_minute: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(per_minute),
            last: now,
            capacity: f64::from(per_minute),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.capacity / 60.0).min(self.capacity);
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for something that turned out not to count.
    pub fn refund(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + 1.0).min(self.capacity);
    }

    /// Whether the bucket is full at `now`: it then behaves exactly like a new one and can be
    /// forgotten.
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// One token bucket per key (client address, widget key), `per_minute` each; 0 = unlimited.
///
/// Memory is bounded: at `max_keys`, buckets that refilled completely are dropped (they equal a
/// new one). If none did, a new key is refused until one has, at most one sweep per
/// `SWEEP_EVERY`: when that many keys are all busy the instance is under attack, and failing
/// closed for new keys is the safe side.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    per_minute: u32,
    max_keys: usize,
    state: Mutex<Keyed<K>>,
}

#[derive(Debug)]
struct Keyed<K> {
    buckets: HashMap<K, TokenBucket>,
    swept_at: Option<Instant>,
}

const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl<K: Eq + Hash + Clone> KeyedBuckets<K> {
    /// `per_minute` tokens per key, at most `max_keys` keys remembered.
    pub fn new(per_minute: u32, max_keys: usize) -> Self {
        Self {
            per_minute,
            max_keys,
            state: Mutex::new(Keyed {
                buckets: HashMap::new(),
                swept_at: None,
            }),
        }
    }

    fn with_bucket(&self, key: &K, now: Instant, f: impl FnOnce(&mut TokenBucket) -> bool) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.buckets.contains_key(key) && state.buckets.len() >= self.max_keys {
            let due = state
                .swept_at
                .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY);
            if due {
                state.swept_at = Some(now);
                state.buckets.retain(|_, bucket| !bucket.is_full(now));
            }
            if state.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let per_minute = self.per_minute;
        let bucket = state
            .buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::per_minute(per_minute, now));
        f(bucket)
    }

    /// Takes a token from `key`'s bucket; false when it is empty.
    pub fn take(&self, key: &K, now: Instant) -> bool {
        self.with_bucket(key, now, |b| b.take(now))
    }

    /// Gives back a token [`take`](Self::take)n from `key`'s bucket.
    pub fn refund(&self, key: &K, now: Instant) {
        self.with_bucket(key, now, |b| {
            b.refund(now);
            true
        });
    }
}

/// The client address of a socket's handshake, by `policy` (`X-Forwarded-For` behind trusted
/// proxies). The peer address is always there (the server is built with connect info); the
/// fallback only keeps this total.
pub fn client_ip(s: &SocketRef, policy: &ClientIpPolicy) -> IpAddr {
    let parts = s.req_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| {
            addr.ip()
        });
    policy.client_ip(peer, &parts.headers)
}

/// The place a namespace socket holds in the [`ConnectionLimiter`], kept in its extensions.
/// Released exactly once: when the socket leaves (see `sockets::track`), or when the socket is
/// dropped without ever being connected.
#[derive(Debug, Clone)]
pub struct ConnectionSlot(Arc<Mutex<Option<ConnectionGuard>>>);

impl ConnectionSlot {
    /// Gives the place back.
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// Takes a place for a new namespace socket from `ip`, or says which cap refuses it.
pub fn admit(limiter: &Arc<ConnectionLimiter>, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
    limiter
        .try_acquire(ip)
        .map(|guard| ConnectionSlot(Arc::new(Mutex::new(Some(guard)))))
        .map_err(|breach| match breach {
            Breach::Total => Refusal::AtCapacity,
            Breach::PerIp => Refusal::TooManyFromAddress,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_bucket_holds_n_and_refills_n_per_minute() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::per_minute(3, t0);
        assert_eq!((0..5).filter(|_| bucket.take(t0)).count(), 3);
        assert!(!bucket.take(t0 + Duration::from_secs(19)));
        assert!(bucket.take(t0 + Duration::from_secs(20)));
        assert!(!bucket.take(t0 + Duration::from_secs(20)));
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..5).filter(|_| bucket.take(later)).count(), 3);
    }

    #[test]
    fn keyed_buckets_are_separate_and_bounded() {
        let t0 = Instant::now();
        let buckets = KeyedBuckets::new(1, 2);
        assert!(buckets.take(&"a", t0));
        assert!(!buckets.take(&"a", t0));
        assert!(buckets.take(&"b", t0));
        // Full of busy keys: a new key is refused rather than growing the map.
        assert!(!buckets.take(&"c", t0));
        // A minute later both refilled and are swept: room again.
        let later = t0 + Duration::from_secs(61);
        assert!(buckets.take(&"c", later));
        assert!(KeyedBuckets::new(0, 0).take(&"x", t0), "0 = unlimited");
    }

    #[test]
    fn a_refund_gives_one_token_back_up_to_the_capacity() {
        let t0 = Instant::now();
        let buckets = KeyedBuckets::new(1, 10);
        assert!(buckets.take(&1, t0));
        assert!(!buckets.take(&1, t0));
        buckets.refund(&1, t0);
        buckets.refund(&1, t0);
        assert!(buckets.take(&1, t0));
        assert!(!buckets.take(&1, t0), "capped at one");
    }
}
