//! The cluster as this instance sees it: every instance's participants and viewers, and every
//! participant's last-seen time, rebuilt from the bucket's watch (last value per key, then
//! changes, in stream order, so every instance applies the same sequence).
//!
//! Times are the bucket's own (`created`, set by the NATS server), never this host's clock:
//! an instance is dead when this instance's latest heartbeat is more than `ttl` after the
//! other's last write, so a stalled watch (this instance cut off) declares nobody dead, and
//! every instance derives the same departure time for the same event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::keys::{self, AtValue, Key, Millis, PresenceValue};
use super::local::Published;
use super::{Activity, Status};
use crate::collab::channel::ChannelId;
use crate::collab::identity::Participant;

/// A participant's status as the cluster says it, and when it was last seen (only while
/// offline; `None` when never seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Presence {
    pub(crate) status: Status,
    pub(crate) last_seen: Option<Millis>,
}

/// Participants whose presence changed, with the new one.
pub(super) type Changes = Vec<(Participant, Presence)>;

/// One bucket entry, as the replica reads it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Change<'a> {
    pub(super) key: &'a str,
    pub(super) value: &'a [u8],
    /// Its stream sequence.
    pub(super) revision: u64,
    /// When the server stored it.
    pub(super) created: Millis,
    /// A delete or purge marker.
    pub(super) removed: bool,
}

/// What applying one entry means beyond the replica.
#[derive(Debug, Default)]
pub(super) struct Applied {
    pub(super) changes: Changes,
    /// This instance's own heartbeat came back, stored at this time; `true` when the one
    /// before was more than `ttl` earlier (others may have declared this instance dead).
    pub(super) own_heartbeat: Option<(Millis, bool)>,
    /// This instance's live key was removed; its departure time.
    pub(super) own_removed: Option<Millis>,
    /// This instance's delete took the participant offline: its last-seen is to be written.
    pub(super) seen_due: Option<(Participant, Millis)>,
}

/// An instance found dead by [`Replica::sweep`].
#[derive(Debug)]
pub(super) struct Dead {
    pub(super) instance: Arc<str>,
    /// Purge its keys written before this stream sequence (what was seen of it).
    pub(super) bound: u64,
    /// Its last write: the departure of its participants.
    pub(super) departed: Millis,
    /// Its participants that went offline with it.
    pub(super) offline: Vec<Participant>,
    /// Whether its live key is still to be deleted (it did not leave by itself).
    pub(super) tombstone: bool,
}

/// What [`Replica::sweep`] found.
#[derive(Debug, Default)]
pub(super) struct Swept {
    pub(super) changes: Changes,
    pub(super) dead: Vec<Dead>,
    /// Live-key tombstones older than `ttl`, with their purge bound.
    pub(super) expired: Vec<(Arc<str>, u64)>,
    /// Whether this instance has the smallest id among the live ones: it alone purges.
    pub(super) reaper: bool,
}

#[derive(Debug, Default)]
struct Instance {
    /// Its latest write (server time).
    heard: Millis,
    /// When it deleted its own live key (a graceful departure, server time): its participants
    /// stay until `presence.grace_ms` after it, so that clients reconnecting to another
    /// instance meanwhile do not flap offline.
    leaving: Option<Millis>,
    /// Its latest heartbeat.
    heartbeat: Option<Millis>,
    /// The latest stream sequence of its keys.
    revision: u64,
    presence: HashMap<Participant, Activity>,
    viewing: HashSet<(ChannelId, Participant)>,
}

/// The replica of the bucket.
#[derive(Debug, Default)]
pub(super) struct Replica {
    instances: HashMap<Arc<str>, Instance>,
    /// Last seen per participant (one entry per participant ever seen: what the bucket holds).
    seen: HashMap<Participant, Millis>,
    /// Instances whose live key was deleted, with the marker's sequence and time.
    tombstones: HashMap<Arc<str>, (u64, Millis)>,
    /// The latest `created` applied.
    latest: Millis,
}

impl Replica {
    /// `who`'s presence: online when any instance says online, away when all that hold it say
    /// away, offline when none does.
    pub(super) fn presence(&self, who: &Participant) -> Presence {
        let mut status = Status::Offline;
        for instance in self.instances.values() {
            match instance.presence.get(who) {
                Some(Activity::Online) => {
                    status = Status::Online;
                    break;
                }
                Some(Activity::Away) => status = Status::Away,
                None => {}
            }
        }
        Presence {
            status,
            last_seen: if status == Status::Offline {
                self.seen.get(who).copied()
            } else {
                None
            },
        }
    }

    /// Whether `who` views `channel` on any instance but `me`.
    pub(super) fn views_elsewhere(&self, me: &str, who: &Participant, channel: &ChannelId) -> bool {
        let key = (channel.clone(), who.clone());
        self.instances
            .iter()
            .any(|(id, i)| **id != *me && i.viewing.contains(&key))
    }

    /// Instances known (not dropped).
    pub(super) fn instances(&self) -> usize {
        self.instances.len()
    }

    /// The latest server time applied.
    pub(super) const fn latest(&self) -> Millis {
        self.latest
    }

    /// What the bucket holds for instance `me`.
    pub(super) fn own(&self, me: &str) -> Published {
        self.instances
            .get(me)
            .map(|i| Published {
                presence: i.presence.clone(),
                viewing: i.viewing.clone(),
            })
            .unwrap_or_default()
    }

    /// Applies one entry. `me` is this instance; `ttl` is `presence.ttl_ms`.
    pub(super) fn apply(&mut self, me: &str, change: &Change<'_>, ttl: Millis) -> Applied {
        self.latest = self.latest.max(change.created);
        let mut applied = Applied::default();
        let Some(key) = Key::parse(change.key) else {
            tracing::debug!(key = change.key, "unknown presence key ignored");
            return applied;
        };
        match key {
            Key::Live { instance } if change.removed => {
                if instance != me {
                    self.tombstones.insert(
                        keys::instance_id(instance),
                        (change.revision, change.created),
                    );
                }
                match self.instances.get_mut(instance) {
                    // Heard within the ttl: the instance itself left (a reaper deletes the
                    // live key of the silent only). Dropped by the sweep after the grace.
                    Some(known) if instance != me && change.created - known.heard <= ttl => {
                        known.leaving = Some(change.created);
                    }
                    known => {
                        let departed = known.map_or(change.created, |i| {
                            if change.created - i.heard > ttl {
                                i.heard
                            } else {
                                change.created
                            }
                        });
                        applied.changes = self.drop_instance(instance, departed).0;
                        if instance == me {
                            applied.own_removed = Some(departed);
                        }
                    }
                }
            }
            Key::Live { instance } => {
                let known = self.instance_mut(instance, change);
                let previous = known.heartbeat.replace(change.created);
                if instance == me {
                    let gap = previous.is_some_and(|p| change.created - p > ttl);
                    applied.own_heartbeat = Some((change.created, gap));
                }
            }
            Key::Presence { instance, who } => {
                let before = self.presence(&who);
                if change.removed {
                    let Some(known) = self.instances.get_mut(instance) else {
                        return applied;
                    };
                    known.revision = known.revision.max(change.revision);
                    known.presence.remove(&who);
                    if self.went_offline(&who, before, change.created) && instance == me {
                        applied.seen_due = Some((who.clone(), change.created));
                    }
                } else {
                    let value = serde_json::from_slice::<PresenceValue>(change.value);
                    let known = self.instance_mut(instance, change);
                    match value {
                        Ok(v) => {
                            known.presence.insert(who.clone(), v.status);
                        }
                        Err(e) => {
                            tracing::debug!(key = change.key, error = %e, "unreadable presence value")
                        }
                    }
                }
                self.changed(&mut applied.changes, who, before);
            }
            Key::Viewing {
                instance,
                channel,
                who,
            } => {
                if change.removed {
                    if let Some(known) = self.instances.get_mut(instance) {
                        known.revision = known.revision.max(change.revision);
                        known.viewing.remove(&(channel, who));
                    }
                } else {
                    self.instance_mut(instance, change)
                        .viewing
                        .insert((channel, who));
                }
            }
            Key::Seen { who } if !change.removed => {
                match serde_json::from_slice::<AtValue>(change.value) {
                    Ok(v) => {
                        let before = self.presence(&who);
                        let seen = self.seen.entry(who.clone()).or_insert(i64::MIN);
                        *seen = (*seen).max(keys::millis(v.at));
                        self.changed(&mut applied.changes, who, before);
                    }
                    Err(e) => {
                        tracing::debug!(key = change.key, error = %e, "unreadable last-seen value");
                    }
                }
            }
            Key::Seen { .. } => {}
        }
        applied
    }

    /// The instance a write of `change` comes from, created when unknown; it was heard then.
    fn instance_mut(&mut self, id: &str, change: &Change<'_>) -> &mut Instance {
        self.tombstones.remove(id);
        let known = self.instances.entry(keys::instance_id(id)).or_default();
        known.leaving = None;
        known.heard = known.heard.max(change.created);
        known.revision = known.revision.max(change.revision);
        known
    }

    /// After a removal: when `who` was present before and is offline now, it was last seen
    /// at `at`. Returns whether it went offline.
    fn went_offline(&mut self, who: &Participant, before: Presence, at: Millis) -> bool {
        if before.status == Status::Offline || self.presence(who).status != Status::Offline {
            return false;
        }
        let seen = self.seen.entry(who.clone()).or_insert(at);
        *seen = (*seen).max(at);
        true
    }

    fn changed(&self, changes: &mut Changes, who: Participant, before: Presence) {
        let after = self.presence(&who);
        if after != before {
            changes.push((who, after));
        }
    }

    /// Drops instance `id`, its participants last seen at `departed` when it took them
    /// offline. Returns the changes and the participants it took offline.
    fn drop_instance(&mut self, id: &str, departed: Millis) -> (Changes, Vec<Participant>) {
        let Some(known) = self.instances.get(id) else {
            return (Vec::new(), Vec::new());
        };
        let before: Vec<(Participant, Presence)> = known
            .presence
            .keys()
            .map(|p| (p.clone(), self.presence(p)))
            .collect();
        self.instances.remove(id);
        let (mut changes, mut offline) = (Vec::new(), Vec::new());
        for (who, was) in before {
            if self.went_offline(&who, was, departed) {
                offline.push(who.clone());
            }
            self.changed(&mut changes, who, was);
        }
        (changes, offline)
    }

    /// Drops every other instance not heard from for more than `ttl` before `now` (this
    /// instance's latest heartbeat), every instance that left `grace` or more before `now`
    /// (its participants last seen at its departure plus `grace`), and the live-key
    /// tombstones older than `ttl`.
    pub(super) fn sweep(&mut self, me: &str, now: Millis, ttl: Millis, grace: Millis) -> Swept {
        let mut swept = Swept::default();
        let dead: Vec<(Arc<str>, Millis, u64, bool)> = self
            .instances
            .iter()
            .filter(|(id, i)| {
                ***id != *me
                    && match i.leaving {
                        Some(left) => now - left >= grace,
                        None => now - i.heard > ttl,
                    }
            })
            .map(|(id, i)| {
                let departed = i.leaving.map_or(i.heard, |left| left.saturating_add(grace));
                (Arc::clone(id), departed, i.revision, i.leaving.is_none())
            })
            .collect();
        for (instance, departed, revision, tombstone) in dead {
            let (changes, offline) = self.drop_instance(&instance, departed);
            swept.changes.extend(changes);
            swept.dead.push(Dead {
                instance,
                bound: revision + 1,
                departed,
                offline,
                tombstone,
            });
        }
        let expired: Vec<Arc<str>> = self
            .tombstones
            .iter()
            .filter(|(_, (_, at))| now - at > ttl)
            .map(|(id, _)| Arc::clone(id))
            .collect();
        for id in expired {
            if let Some((revision, _)) = self.tombstones.remove(&id) {
                swept.expired.push((id, revision + 1));
            }
        }
        // Among the live instances: one that is leaving reaps nothing any more.
        swept.reaper = self
            .instances
            .iter()
            .all(|(id, i)| **id >= *me || i.leaving.is_some());
        swept
    }

    /// The participants whose presence differs between `old` and this replica, with the new.
    pub(super) fn diff(&self, old: &Self) -> Changes {
        let mut who: HashSet<&Participant> = HashSet::new();
        for replica in [old, self] {
            for instance in replica.instances.values() {
                who.extend(instance.presence.keys());
            }
        }
        who.extend(
            self.seen
                .iter()
                .filter(|(p, at)| old.seen.get(*p) != Some(*at))
                .map(|(p, _)| p),
        );
        who.into_iter()
            .filter_map(|p| {
                let now = self.presence(p);
                (old.presence(p) != now).then(|| (p.clone(), now))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::identity::Kind;

    const TTL: Millis = 1000;
    const GRACE: Millis = 300;

    fn user(id: &str) -> Participant {
        Participant::new(Kind::User, id).unwrap()
    }

    /// Feeds entries with increasing revisions.
    struct Feed {
        replica: Replica,
        revision: u64,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                replica: Replica::default(),
                revision: 0,
            }
        }

        fn put(&mut self, me: &str, key: &str, value: &str, at: Millis) -> Applied {
            self.revision += 1;
            let change = Change {
                key,
                value: value.as_bytes(),
                revision: self.revision,
                created: at,
                removed: false,
            };
            self.replica.apply(me, &change, TTL)
        }

        fn delete(&mut self, me: &str, key: &str, at: Millis) -> Applied {
            self.revision += 1;
            let change = Change {
                key,
                value: b"",
                revision: self.revision,
                created: at,
                removed: true,
            };
            self.replica.apply(me, &change, TTL)
        }
    }

    const ONLINE: &str = r#"{"status":"online"}"#;
    const AWAY: &str = r#"{"status":"away"}"#;

    #[test]
    fn status_is_derived_over_instances() {
        let mut f = Feed::new();
        let u = user("u");
        let on_a = f.put("me", &keys::presence("a", &u), AWAY, 10);
        assert_eq!(on_a.changes.len(), 1);
        assert_eq!(f.replica.presence(&u).status, Status::Away);
        let on_b = f.put("me", &keys::presence("b", &u), ONLINE, 11);
        assert_eq!(on_b.changes[0].1.status, Status::Online);
        let gone_b = f.delete("me", &keys::presence("b", &u), 12);
        assert_eq!(gone_b.changes[0].1.status, Status::Away);
        assert!(gone_b.seen_due.is_none());
        let gone_a = f.delete("me", &keys::presence("a", &u), 13);
        assert_eq!(
            gone_a.changes,
            [(
                u.clone(),
                Presence {
                    status: Status::Offline,
                    last_seen: Some(13)
                }
            )]
        );
        assert!(gone_a.seen_due.is_none(), "not this instance's key");
        // The seen key written by a's instance afterwards changes nothing.
        let seen = f.put(
            "me",
            &keys::seen(&u),
            std::str::from_utf8(&keys::at_value(13)).unwrap(),
            14,
        );
        assert!(seen.changes.is_empty());
    }

    #[test]
    fn the_instance_whose_delete_takes_a_participant_offline_writes_its_last_seen() {
        let mut f = Feed::new();
        let u = user("u");
        f.put("me", &keys::presence("me", &u), ONLINE, 10);
        let gone = f.delete("me", &keys::presence("me", &u), 20);
        assert_eq!(gone.seen_due, Some((u, 20)));
    }

    #[test]
    fn a_silent_instance_dies_after_the_ttl_of_our_own_heartbeats() {
        let mut f = Feed::new();
        let u = user("u");
        f.put("me", &keys::live("b"), "{}", 100);
        f.put("me", &keys::presence("b", &u), ONLINE, 150);
        let beat = f.put("me", &keys::live("me"), "{}", 1000);
        assert_eq!(beat.own_heartbeat, Some((1000, false)));
        assert!(f.replica.sweep("me", 1000, TTL, GRACE).dead.is_empty());
        let swept = f.replica.sweep("me", 1151, TTL, GRACE);
        assert_eq!(swept.dead.len(), 1);
        assert_eq!(swept.dead[0].departed, 150);
        assert_eq!(swept.dead[0].bound, 3);
        assert_eq!(swept.dead[0].offline, std::slice::from_ref(&u));
        assert!(swept.reaper);
        assert_eq!(
            swept.changes,
            [(
                u,
                Presence {
                    status: Status::Offline,
                    last_seen: Some(150)
                }
            )]
        );
        assert_eq!(f.replica.instances(), 1, "only this instance is left");
    }

    #[test]
    fn only_the_smallest_live_instance_reaps() {
        let mut f = Feed::new();
        f.put("b", &keys::live("a"), "{}", 1000);
        f.put("b", &keys::live("b"), "{}", 1000);
        assert!(!f.replica.sweep("b", 1000, TTL, GRACE).reaper);
        assert!(f.replica.sweep("a", 1000, TTL, GRACE).reaper);
    }

    #[test]
    fn a_graceful_leave_drops_the_instance_after_the_grace() {
        let mut f = Feed::new();
        let u = user("u");
        f.put("me", &keys::live("a"), "{}", 100);
        f.put("me", &keys::live("b"), "{}", 100);
        f.put("me", &keys::presence("b", &u), ONLINE, 110);
        let left = f.delete("me", &keys::live("b"), 200);
        assert!(left.changes.is_empty(), "held for the grace");
        assert!(left.own_removed.is_none());
        assert_eq!(f.replica.presence(&u).status, Status::Online);
        let swept = f.replica.sweep("me", 200 + GRACE - 1, TTL, GRACE);
        assert!(swept.dead.is_empty());
        assert!(
            !swept.reaper,
            "a is live and smaller; b, leaving, does not count"
        );
        let swept = f.replica.sweep("me", 200 + GRACE, TTL, GRACE);
        assert_eq!(swept.dead.len(), 1);
        assert_eq!(swept.dead[0].departed, 200 + GRACE);
        assert!(!swept.dead[0].tombstone, "it deleted its live key itself");
        assert_eq!(
            swept.changes,
            [(
                u,
                Presence {
                    status: Status::Offline,
                    last_seen: Some(200 + GRACE)
                }
            )]
        );
        // Its tombstone is purged once older than the ttl.
        let swept = f.replica.sweep("me", 1300, TTL, GRACE);
        assert_eq!(swept.expired, [(Arc::from("b"), 5)]);
    }

    #[test]
    fn a_reconnect_elsewhere_during_a_graceful_leave_does_not_go_offline() {
        let mut f = Feed::new();
        let u = user("u");
        f.put("me", &keys::live("b"), "{}", 100);
        f.put("me", &keys::presence("b", &u), ONLINE, 110);
        f.delete("me", &keys::live("b"), 200);
        let back = f.put("me", &keys::presence("c", &u), AWAY, 250);
        assert!(back.changes.is_empty(), "still online through b");
        let swept = f.replica.sweep("me", 200 + GRACE, TTL, GRACE);
        assert!(swept.dead[0].offline.is_empty());
        assert_eq!(swept.changes[0].1.status, Status::Away);
    }

    #[test]
    fn a_tombstone_after_the_ttl_departs_at_the_last_write() {
        let mut f = Feed::new();
        let u = user("u");
        f.put("me", &keys::presence("b", &u), ONLINE, 100);
        let reaped = f.delete("me", &keys::live("b"), 5000);
        assert_eq!(reaped.changes[0].1.last_seen, Some(100));
    }

    #[test]
    fn our_own_live_key_removed_by_another_is_reported() {
        let mut f = Feed::new();
        f.put("me", &keys::live("me"), "{}", 100);
        let removed = f.delete("me", &keys::live("me"), 150);
        assert_eq!(removed.own_removed, Some(150));
        let gap = f.put("me", &keys::live("me"), "{}", 2000);
        assert_eq!(
            gap.own_heartbeat,
            Some((2000, false)),
            "dropped: no gap known"
        );
        let gap = f.put("me", &keys::live("me"), "{}", 3500);
        assert_eq!(gap.own_heartbeat, Some((3500, true)));
    }

    #[test]
    fn a_write_revives_a_tombstoned_instance() {
        let mut f = Feed::new();
        f.delete("me", &keys::live("b"), 100);
        f.put("me", &keys::live("b"), "{}", 200);
        assert!(f.replica.sweep("me", 5000, TTL, GRACE).expired.is_empty());
    }

    #[test]
    fn viewing_is_cluster_wide() {
        let mut f = Feed::new();
        let (u, c) = (user("u"), ChannelId::parse("c1").unwrap());
        f.put("me", &keys::viewing("b", &c, &u), "{}", 10);
        f.put("me", &keys::viewing("me", &c, &u), "{}", 10);
        assert!(f.replica.views_elsewhere("me", &u, &c));
        f.delete("me", &keys::viewing("b", &c, &u), 11);
        assert!(
            !f.replica.views_elsewhere("me", &u, &c),
            "our own is the local state's"
        );
        assert!(f.replica.views_elsewhere("b", &u, &c));
    }

    #[test]
    fn a_reload_reports_only_what_changed() {
        let mut old = Feed::new();
        let (u, v) = (user("u"), user("v"));
        old.put("me", &keys::presence("b", &u), ONLINE, 10);
        old.put("me", &keys::presence("b", &v), ONLINE, 10);
        let mut new = Feed::new();
        new.put("me", &keys::presence("b", &u), ONLINE, 10);
        new.put("me", &keys::presence("b", &v), AWAY, 20);
        let diff = new.replica.diff(&old.replica);
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].0, v);
    }
}
