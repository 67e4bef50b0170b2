//! A bounded cache whose entries expire after a fixed time and, when it is full, leave oldest
//! first: a flood of new keys pushes out the oldest entries, never the whole cache.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Entries by key, each with the time it was stored; `order` lists (time, key) oldest first.
/// A key stored again gets a new `order` record; the old one is stale (its time no longer
/// matches the entry) and is skipped when it reaches the front.
#[derive(Debug)]
pub struct AgedCache<V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<String, (Instant, V)>,
    order: VecDeque<(Instant, String)>,
}

impl<V: Clone> AgedCache<V> {
    /// Entries live `ttl`; at most `capacity` of them (at least 1).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The value stored for `key`, unless it expired by `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Stores `value` for `key` at `now`; drops expired entries, then the oldest, to stay
    /// within capacity.
    pub fn insert(&mut self, key: &str, value: V, now: Instant) {
        self.entries.insert(key.to_owned(), (now, value));
        self.order.push_back((now, key.to_owned()));
        while let Some((at, front)) = self.order.front() {
            let live = self.entries.get(front).is_some_and(|(t, _)| t == at);
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if live && !expired && self.entries.len() <= self.capacity {
                break;
            }
            if live {
                self.entries.remove(front);
            }
            self.order.pop_front();
        }
        // Stale records of keys stored again pile up only behind a live front; keep the queue
        // within a constant factor of the entries.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(at, k)| entries.get(k).is_some_and(|(t, _)| t == at));
        }
    }

    /// Forgets `key` (its `order` record becomes stale).
    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Entries held (expired ones included until they are pushed out).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_drops_the_oldest_entries_only() {
        let t0 = Instant::now();
        let mut cache = AgedCache::new(Duration::from_secs(10), 3);
        for (i, key) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            cache.insert(key, i, t0 + Duration::from_millis(i as u64));
        }
        let now = t0 + Duration::from_millis(10);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("a", now), None);
        assert_eq!(cache.get("b", now), None);
        assert_eq!(cache.get("c", now), Some(2));
        assert_eq!(cache.get("e", now), Some(4));
    }

    #[test]
    fn storing_a_key_again_renews_its_age() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut cache = AgedCache::new(Duration::from_secs(10), 2);
        cache.insert("a", 1, ms(0));
        cache.insert("b", 2, ms(1));
        cache.insert("a", 3, ms(2));
        cache.insert("c", 4, ms(3));
        // "b" is now the oldest; "a" was renewed.
        assert_eq!(cache.get("b", ms(4)), None);
        assert_eq!(cache.get("a", ms(4)), Some(3));
        assert_eq!(cache.get("c", ms(4)), Some(4));
    }

    #[test]
    fn entries_expire_and_are_pushed_out() {
        let t0 = Instant::now();
        let mut cache = AgedCache::new(Duration::from_secs(1), 100);
        cache.insert("a", 1, t0);
        assert_eq!(cache.get("a", t0 + Duration::from_secs(1)), None);
        cache.insert("b", 2, t0 + Duration::from_secs(2));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_order_queue_stays_bounded_when_one_key_is_renewed_forever() {
        let t0 = Instant::now();
        let mut cache = AgedCache::new(Duration::from_secs(1000), 4);
        cache.insert("old", 0, t0);
        for i in 1..1000 {
            cache.insert("hot", i, t0 + Duration::from_millis(i));
        }
        assert!(cache.order.len() <= 8, "{}", cache.order.len());
        assert_eq!(cache.get("old", t0), Some(0));
    }
}
