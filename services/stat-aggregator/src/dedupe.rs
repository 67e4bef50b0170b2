//! The bounded set of recently counted event ids, so an event published twice (under a
//! different `Nats-Msg-Id`, or after JetStream's own 2-minute duplicate window) counts once.
//! Persisted with the state, in the same write as the counters and the stream position.

use std::collections::{HashSet, VecDeque};

use uuid::Uuid;

/// The last `capacity` counted event ids, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dedupe {
    capacity: usize,
    order: VecDeque<u128>,
    seen: HashSet<u128>,
}

impl Dedupe {
    /// An empty window of `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::with_capacity(capacity),
            seen: HashSet::with_capacity(capacity),
        }
    }

    /// Whether `id` is in the window.
    pub fn contains(&self, id: Uuid) -> bool {
        self.seen.contains(&id.as_u128())
    }

    /// Remembers `id`, forgetting the oldest when full; false if it was already there.
    pub fn insert(&mut self, id: Uuid) -> bool {
        let id = id.as_u128();
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// 16 bytes per id, oldest first.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.order.len() * 16);
        for id in &self.order {
            out.extend_from_slice(&id.to_be_bytes());
        }
    }

    /// Reads [`Self::encode_into`]'s output; keeps the newest `capacity` ids.
    pub fn decode(capacity: usize, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(16) {
            return None;
        }
        let mut d = Self::new(capacity);
        for chunk in bytes.chunks_exact(16) {
            let id = u128::from_be_bytes(chunk.try_into().ok()?);
            d.insert(Uuid::from_u128(id));
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_round_trips() {
        let mut d = Dedupe::new(3);
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            assert!(d.insert(*id));
        }
        assert!(!d.insert(ids[4]));
        assert!(!d.contains(ids[0]) && !d.contains(ids[1]));
        assert!(d.contains(ids[2]) && d.contains(ids[4]));
        let mut bytes = Vec::new();
        d.encode_into(&mut bytes);
        assert_eq!(Dedupe::decode(3, &bytes), Some(d.clone()));
        let smaller = Dedupe::decode(2, &bytes).unwrap();
        assert!(!smaller.contains(ids[2]) && smaller.contains(ids[3]));
        assert!(Dedupe::decode(3, &bytes[1..]).is_none());
    }
}
