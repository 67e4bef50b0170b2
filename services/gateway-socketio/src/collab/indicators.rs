//! The typing indicators one instance shows its sockets: each (channel, sender) typing, the
//! rooms its `user:typing` went to (so its `user:typing:stop` goes to the same ones) and its
//! deadline, `typing.timeout_ms` after the last start heard. Bounded in indicators and in the
//! rooms they hold; [`super::typing::relay`] drives it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;
use socketioxide::SocketIo;
use tokio::time::Instant;

use super::channel::ChannelId;
use super::identity::{Kind, Participant};
use super::push::{Emitter, Family};
use super::recipients::Recipients;
use crate::namespace::Namespace;

/// A (channel, sender) typing.
pub(super) type Key = (ChannelId, Participant);

/// One indicator shown by this instance: who sees it and what they see.
#[derive(Debug)]
pub(super) struct Indicator {
    /// `{"channel_id", "kind", "id"}`, serialised once for `user:typing` and its stop.
    payload: Box<RawValue>,
    sender: Participant,
    /// Identity rooms (or the channel's member room) on `/admin` and on `/provider`.
    admin_rooms: Vec<String>,
    provider_rooms: Vec<String>,
}

impl Indicator {
    /// `to` absent (claim membership): the channel's member room on both namespaces.
    pub(super) fn new(channel: &ChannelId, from: &Participant, to: Option<&Recipients>) -> Self {
        let (admin_rooms, provider_rooms) = match to {
            Some(to) => (to.rooms(Kind::User), to.rooms(Kind::Profile)),
            None => (vec![channel.member_room()], vec![channel.member_room()]),
        };
        let payload = json!({"channel_id": channel, "kind": from.kind, "id": &*from.id});
        Self {
            // A `Value` always serialises.
            payload: serde_json::value::to_raw_value(&payload)
                .unwrap_or_else(|_| RawValue::NULL.to_owned()),
            sender: from.clone(),
            admin_rooms,
            provider_rooms,
        }
    }

    /// `event` for this indicator to its audience on both namespaces, never to the sender's
    /// sockets.
    pub(super) async fn deliver(&self, io: &SocketIo, event: &'static str) {
        let out = Emitter::new(io, Family::Typing);
        let sender_ns = self.sender.kind.namespace();
        let payload: &RawValue = &self.payload;
        for (ns, rooms) in [
            (Namespace::Admin, &self.admin_rooms),
            (Namespace::Provider, &self.provider_rooms),
        ] {
            let except = (ns == sender_ns).then(|| self.sender.identity_room());
            out.emit_except(ns, rooms.clone(), except, event, payload)
                .await;
        }
    }

    fn rooms(&self) -> usize {
        self.admin_rooms.len() + self.provider_rooms.len()
    }
}

/// What a `start` did.
#[derive(Debug)]
pub(super) enum Started<'a> {
    /// Shown now: emit `user:typing`.
    New(&'a Indicator),
    /// Already shown: its deadline moved, nothing to emit.
    Renewed,
    /// Not shown: the table is full.
    Full,
}

/// The indicators this instance shows, each with its deadline. Bounded in indicators and in
/// the rooms they hold.
#[derive(Debug)]
pub(super) struct Shown {
    timeout: Duration,
    max_indicators: usize,
    max_rooms: usize,
    indicators: HashMap<Key, Entry>,
    /// Deadlines in order; the sequence number tells equal instants apart.
    deadlines: BTreeMap<(Instant, u64), Key>,
    next_seq: u64,
    rooms: usize,
}

#[derive(Debug)]
struct Entry {
    deadline: (Instant, u64),
    indicator: Indicator,
}

impl Shown {
    pub(super) fn new(timeout: Duration, max_indicators: usize, max_rooms: usize) -> Self {
        Self {
            timeout,
            max_indicators,
            max_rooms,
            indicators: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_seq: 0,
            rooms: 0,
        }
    }

    fn deadline(&mut self, now: Instant) -> (Instant, u64) {
        self.next_seq += 1;
        (now + self.timeout, self.next_seq)
    }

    /// `key` started (or renewed) typing at `now`; `make` builds its indicator when new.
    pub(super) fn start(
        &mut self,
        key: Key,
        make: impl FnOnce() -> Indicator,
        now: Instant,
    ) -> Started<'_> {
        let deadline = self.deadline(now);
        if let Some(entry) = self.indicators.get_mut(&key) {
            self.deadlines.remove(&entry.deadline);
            entry.deadline = deadline;
            self.deadlines.insert(deadline, key);
            return Started::Renewed;
        }
        let indicator = make();
        if self.indicators.len() >= self.max_indicators
            || self.rooms + indicator.rooms() > self.max_rooms
        {
            return Started::Full;
        }
        self.rooms += indicator.rooms();
        self.deadlines.insert(deadline, key.clone());
        let entry = self.indicators.entry(key).or_insert(Entry {
            deadline,
            indicator,
        });
        Started::New(&entry.indicator)
    }

    /// `key` stopped: its indicator, when shown.
    pub(super) fn stop(&mut self, key: &Key) -> Option<Indicator> {
        let entry = self.indicators.remove(key)?;
        self.deadlines.remove(&entry.deadline);
        self.rooms -= entry.indicator.rooms();
        Some(entry.indicator)
    }

    /// The indicators whose deadline is at or before `now`, removed.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Indicator> {
        let mut ended = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            if let Some(entry) = self.indicators.remove(&key) {
                self.rooms -= entry.indicator.rooms();
                ended.push(entry.indicator);
            }
        }
        ended
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|((at, _), _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn key(channel: &str, user: &str) -> Key {
        (
            ChannelId::parse(channel).unwrap(),
            Participant::new(Kind::User, user).unwrap(),
        )
    }

    fn indicator(key: &Key, users: &[&str]) -> Indicator {
        let to = Recipients {
            user_ids: users.iter().map(|u| (*u).to_owned()).collect(),
            profile_ids: vec!["p-1".to_owned()],
        };
        Indicator::new(&key.0, &key.1, Some(&to))
    }

    #[test]
    fn indicators_start_once_renew_silently_and_time_out() {
        let timeout = Duration::from_millis(600);
        let mut shown = Shown::new(timeout, 10, 100);
        let t0 = Instant::now();
        let a = key("c1", "u-1");
        let started = shown.start(a.clone(), || indicator(&a, &["u-1", "u-2"]), t0);
        let Started::New(new) = started else {
            panic!("{started:?}")
        };
        assert_eq!(
            new.payload.get(),
            r#"{"channel_id":"c1","id":"u-1","kind":"user"}"#
        );
        assert_eq!(new.admin_rooms, ["user:u-1", "user:u-2"]);
        assert_eq!(new.provider_rooms, ["profile:p-1"]);
        assert_eq!(shown.next_deadline(), Some(t0 + timeout));

        let t1 = t0 + Duration::from_millis(400);
        let renewed = shown.start(a.clone(), || panic!("not rebuilt"), t1);
        assert!(matches!(renewed, Started::Renewed), "{renewed:?}");
        assert_eq!(shown.next_deadline(), Some(t1 + timeout));
        assert!(
            shown.expire(t0 + timeout).is_empty(),
            "the renewal moved it"
        );

        let b = key("c1", "u-2");
        let _ = shown.start(b.clone(), || indicator(&b, &["u-1"]), t1);
        let ended = shown.expire(t1 + timeout);
        assert_eq!(ended.len(), 2);
        assert_eq!(shown.next_deadline(), None);
        assert_eq!(shown.rooms, 0);
        assert!(shown.stop(&a).is_none(), "already ended");
    }

    #[test]
    fn a_stop_ends_the_indicator_and_the_table_is_bounded() {
        let mut shown = Shown::new(Duration::from_secs(6), 2, 7);
        let now = Instant::now();
        let (a, b, c) = (key("c1", "a"), key("c1", "b"), key("c2", "c"));
        assert!(matches!(
            shown.start(a.clone(), || indicator(&a, &["x", "y"]), now),
            Started::New(_)
        ));
        assert!(matches!(
            shown.start(b.clone(), || indicator(&b, &["x", "y", "z"]), now),
            Started::New(_)
        ));
        assert!(matches!(
            shown.start(c.clone(), || indicator(&c, &[]), now),
            Started::Full
        ));
        assert_eq!(shown.stop(&a).map(|i| i.sender.id), Some(Arc::from("a")));
        assert!(
            matches!(
                shown.start(c.clone(), || indicator(&c, &["x", "y", "z"]), now),
                Started::Full
            ),
            "over the room budget"
        );
        assert!(matches!(
            shown.start(c.clone(), || indicator(&c, &[]), now),
            Started::New(_)
        ));
        assert_eq!(shown.deadlines.len(), 2);
    }

    #[test]
    fn claim_membership_reaches_the_member_room() {
        let a = key("deal-5", "u-1");
        let shown = Indicator::new(&a.0, &a.1, None);
        assert_eq!(shown.admin_rooms, ["member:deal-5"]);
        assert_eq!(shown.provider_rooms, ["member:deal-5"]);
    }
}
