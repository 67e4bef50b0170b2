//! This instance's own presence and viewing: authoritative, in memory, and what the writer
//! syncs to the bucket.
//!
//! Nothing is queued per event. Each participant keeps its desired state (its sockets, their
//! status and channels, the grace after the last one left) beside what the bucket holds for
//! it (as last written); a change only marks the participant dirty, and the writer compares
//! the two when it gets to it, so any number of changes between two writes cost one write (or
//! none, when they cancel out). A failed write leaves the participant dirty for a retry.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socketioxide::socket::Sid;

use super::Activity;
use super::keys::Millis;
use crate::collab::channel::ChannelId;
use crate::collab::identity::Participant;

/// One write the writer is to make.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// Put the participant's presence key (`Some`) or delete it.
    Presence {
        who: Participant,
        value: Option<Activity>,
    },
    /// Put (`on`) or delete the participant's viewing key of `channel`.
    View {
        who: Participant,
        channel: ChannelId,
        on: bool,
    },
    /// Put the participant's last-seen key.
    Seen { who: Participant, at: Millis },
    /// Purge every key of a dead instance written before `bound` (a stream sequence), then
    /// (`tombstone`) delete its live key so that, were it alive after all, it hears it and
    /// writes its state again.
    Reap {
        instance: Arc<str>,
        bound: u64,
        tombstone: bool,
    },
}

/// What the bucket should hold, beside what it holds, for one participant on this instance.
/// Every event costs O(1) (O(channels of the socket) when it leaves).
#[derive(Debug)]
struct Here {
    sockets: HashMap<Sid, SocketHere>,
    /// Sockets saying online.
    online: usize,
    /// Channels viewed, with how many sockets view each.
    views: HashMap<ChannelId, usize>,
    /// Set when the last socket left: the presence key stays until then.
    grace_until: Option<Instant>,
    /// The aggregate of the sockets, kept through the grace.
    activity: Activity,
    /// The presence value in the bucket, as last written.
    published: Option<Activity>,
    /// The channels whose viewing key is in the bucket, as last written.
    published_views: HashSet<ChannelId>,
    /// When the writer last took writes of this participant (none before the next is due).
    written_at: Option<Instant>,
}

#[derive(Debug)]
struct SocketHere {
    activity: Activity,
    /// Bounded by `collab.max_viewing_per_socket`.
    viewing: Vec<ChannelId>,
}

impl Here {
    fn new() -> Self {
        Self {
            sockets: HashMap::new(),
            online: 0,
            views: HashMap::new(),
            grace_until: None,
            activity: Activity::Online,
            published: None,
            published_views: HashSet::new(),
            written_at: None,
        }
    }

    /// Socket `sid`, added (online, viewing nothing) when new.
    fn socket(&mut self, sid: Sid) -> &mut SocketHere {
        self.grace_until = None;
        match self.sockets.entry(sid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.online += 1;
                e.insert(SocketHere {
                    activity: Activity::Online,
                    viewing: Vec::new(),
                })
            }
        }
    }

    fn set_activity(&mut self, sid: Sid, activity: Activity) {
        let socket = self.socket(sid);
        let before = std::mem::replace(&mut socket.activity, activity);
        match (before, activity) {
            (Activity::Away, Activity::Online) => self.online += 1,
            (Activity::Online, Activity::Away) => self.online -= 1,
            _ => {}
        }
        self.aggregate();
    }

    fn view(&mut self, sid: Sid, channel: &ChannelId) {
        let socket = self.socket(sid);
        if !socket.viewing.contains(channel) {
            socket.viewing.push(channel.clone());
            *self.views.entry(channel.clone()).or_default() += 1;
        }
    }

    fn unview(&mut self, sid: Sid, channel: &ChannelId) {
        let Some(socket) = self.sockets.get_mut(&sid) else {
            return;
        };
        let Some(at) = socket.viewing.iter().position(|c| c == channel) else {
            return;
        };
        socket.viewing.swap_remove(at);
        self.unviewed(channel);
    }

    fn unviewed(&mut self, channel: &ChannelId) {
        if let Entry::Occupied(mut e) = self.views.entry(channel.clone()) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// Removes socket `sid`; whether it was here.
    fn remove(&mut self, sid: Sid) -> bool {
        let Some(socket) = self.sockets.remove(&sid) else {
            return false;
        };
        if socket.activity == Activity::Online {
            self.online -= 1;
        }
        for channel in &socket.viewing {
            self.unviewed(channel);
        }
        self.aggregate();
        true
    }

    /// Online when any socket is; kept as it was when none is left.
    fn aggregate(&mut self) {
        if !self.sockets.is_empty() {
            self.activity = if self.online > 0 {
                Activity::Online
            } else {
                Activity::Away
            };
        }
    }

    fn desired(&self) -> Option<Activity> {
        (!self.sockets.is_empty() || self.grace_until.is_some()).then_some(self.activity)
    }

    fn views(&self, channel: &ChannelId) -> bool {
        self.views.contains_key(channel)
    }

    fn in_sync(&self) -> bool {
        self.published == self.desired()
            && self.published_views.len() == self.views.len()
            && self.published_views.iter().all(|c| self.views(c))
    }

    /// Nothing wanted and nothing in the bucket: the entry can go.
    fn is_empty(&self) -> bool {
        self.sockets.is_empty()
            && self.grace_until.is_none()
            && self.published.is_none()
            && self.published_views.is_empty()
    }
}

/// What the bucket holds for this instance, when known (after a reload of the replica).
#[derive(Debug, Default)]
pub(super) struct Published {
    pub(super) presence: HashMap<Participant, Activity>,
    pub(super) viewing: HashSet<(ChannelId, Participant)>,
}

/// This instance's participants and the writes they need.
#[derive(Debug, Default)]
pub(super) struct Local {
    here: HashMap<Participant, Here>,
    dirty: HashSet<Participant>,
    /// A participant's writes wait this long after its previous ones (zero: never).
    min_interval: Duration,
    /// When the next dirty participant held by `min_interval` is due.
    held_until: Option<Instant>,
    /// Grace deadlines; an entry whose participant was back (or left again) since is stale
    /// and skipped.
    graces: BinaryHeap<Reverse<(Instant, Participant)>>,
    /// Last-seen values to write.
    seen: HashMap<Participant, Millis>,
    /// Dead instances to purge, with the stream sequence bound of the purge.
    reaps: HashMap<Arc<str>, (u64, bool)>,
}

impl Local {
    pub(super) fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            ..Self::default()
        }
    }

    /// Marks `who` dirty when its bucket state differs from what it should be. Returns
    /// whether the writer has something new to do.
    fn touch(&mut self, who: &Participant) -> bool {
        match self.here.get(who) {
            Some(here) if !here.in_sync() => self.dirty.insert(who.clone()),
            _ => false,
        }
    }

    /// Socket `sid` of `who` is here (idempotent).
    pub(super) fn connect(&mut self, who: &Participant, sid: Sid) -> bool {
        let here = self.here.entry(who.clone()).or_insert_with(Here::new);
        here.socket(sid);
        here.aggregate();
        self.touch(who)
    }

    /// Socket `sid` of `who` left: its channels at once, the participant after `grace`.
    pub(super) fn disconnect(
        &mut self,
        who: &Participant,
        sid: Sid,
        now: Instant,
        grace: Duration,
    ) -> bool {
        let Some(here) = self.here.get_mut(who) else {
            return false;
        };
        if !here.remove(sid) {
            return false;
        }
        if here.sockets.is_empty() && !grace.is_zero() {
            let until = now + grace;
            here.grace_until = Some(until);
            self.graces.push(Reverse((until, who.clone())));
        }
        self.touch(who)
    }

    /// Socket `sid` of `who` says it is online or away.
    pub(super) fn set_activity(&mut self, who: &Participant, sid: Sid, activity: Activity) -> bool {
        self.here
            .entry(who.clone())
            .or_insert_with(Here::new)
            .set_activity(sid, activity);
        self.touch(who)
    }

    /// Socket `sid` of `who` views `channel` (`on`) or no longer does.
    pub(super) fn set_viewing(
        &mut self,
        who: &Participant,
        sid: Sid,
        channel: &ChannelId,
        on: bool,
    ) -> bool {
        let here = match self.here.entry(who.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if !on => return false,
            Entry::Vacant(e) => e.insert(Here::new()),
        };
        if on {
            here.view(sid, channel);
            here.aggregate();
        } else {
            here.unview(sid, channel);
        }
        self.touch(who)
    }

    /// Whether a socket of `who` here views `channel`.
    pub(super) fn views(&self, who: &Participant, channel: &ChannelId) -> bool {
        self.here.get(who).is_some_and(|h| h.views(channel))
    }

    /// Ends the graces due by `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(Reverse((until, _))) = self.graces.peek()
            && *until <= now
        {
            let Some(Reverse((until, who))) = self.graces.pop() else {
                break;
            };
            if let Some(here) = self.here.get_mut(&who)
                && here.grace_until == Some(until)
            {
                here.grace_until = None;
                self.touch(&who);
            }
        }
    }

    /// The next grace deadline, or the next time a held dirty participant is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let grace = self.graces.peek().map(|Reverse((until, _))| *until);
        match (grace, self.held_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The queued last-seen values and purges (leaving the cluster: the rest is left to the
    /// grace and the reaper).
    pub(super) fn take_queued(&mut self) -> Vec<Op> {
        let mut ops: Vec<Op> = self
            .reaps
            .iter()
            .map(|(instance, (bound, tombstone))| Op::Reap {
                instance: Arc::clone(instance),
                bound: *bound,
                tombstone: *tombstone,
            })
            .collect();
        ops.extend(self.seen.iter().map(|(who, at)| Op::Seen {
            who: who.clone(),
            at: *at,
        }));
        ops
    }

    /// The writes of up to `limit` reaps, last-seen values and dirty participants due at
    /// `now` (a participant's writes are taken together, and the writer finishes them before
    /// taking more, so two writes of one key are never in flight together; after them, the
    /// participant's next ones wait `min_interval`, so that toggles in between coalesce).
    pub(super) fn take(&mut self, limit: usize, now: Instant) -> Vec<Op> {
        let mut ops = Vec::new();
        let reaps: Vec<Arc<str>> = self.reaps.keys().take(limit).cloned().collect();
        for instance in reaps {
            if let Some((bound, tombstone)) = self.reaps.get(&instance).copied() {
                ops.push(Op::Reap {
                    instance,
                    bound,
                    tombstone,
                });
            }
        }
        let seen: Vec<(Participant, Millis)> = self
            .seen
            .iter()
            .take(limit.saturating_sub(ops.len()))
            .map(|(p, at)| (p.clone(), *at))
            .collect();
        ops.extend(seen.into_iter().map(|(who, at)| Op::Seen { who, at }));
        let mut held_until: Option<Instant> = None;
        let batch: Vec<Participant> = self
            .dirty
            .iter()
            .filter(|who| {
                let due = self
                    .here
                    .get(*who)
                    .and_then(|h| h.written_at)
                    .map(|at| at + self.min_interval)
                    .filter(|due| *due > now);
                if let Some(due) = due {
                    held_until = Some(held_until.map_or(due, |h| h.min(due)));
                }
                due.is_none()
            })
            .take(limit.saturating_sub(ops.len()))
            .cloned()
            .collect();
        self.held_until = held_until;
        for who in batch {
            self.dirty.remove(&who);
            let Some(here) = self.here.get_mut(&who) else {
                continue;
            };
            let before = ops.len();
            let desired = here.desired();
            if desired != here.published {
                ops.push(Op::Presence {
                    who: who.clone(),
                    value: desired,
                });
            }
            for channel in here
                .views
                .keys()
                .filter(|c| !here.published_views.contains(*c))
            {
                ops.push(Op::View {
                    who: who.clone(),
                    channel: channel.clone(),
                    on: true,
                });
            }
            for channel in here
                .published_views
                .iter()
                .filter(|c| !here.views.contains_key(*c))
            {
                ops.push(Op::View {
                    who: who.clone(),
                    channel: channel.clone(),
                    on: false,
                });
            }
            if ops.len() > before && !self.min_interval.is_zero() {
                here.written_at = Some(now);
            }
            if here.is_empty() {
                self.here.remove(&who);
            }
        }
        ops
    }

    /// Records the outcome of a write taken by [`Self::take`].
    pub(super) fn done(&mut self, op: Op, ok: bool) {
        match op {
            Op::Presence { who, value } => {
                if ok && let Some(here) = self.here.get_mut(&who) {
                    here.published = value;
                }
                self.settle(&who, ok);
            }
            Op::View { who, channel, on } => {
                if ok && let Some(here) = self.here.get_mut(&who) {
                    if on {
                        here.published_views.insert(channel);
                    } else {
                        here.published_views.remove(&channel);
                    }
                }
                self.settle(&who, ok);
            }
            Op::Seen { who, at } => {
                if ok && self.seen.get(&who) == Some(&at) {
                    self.seen.remove(&who);
                }
            }
            Op::Reap {
                instance, bound, ..
            } => {
                if ok && self.reaps.get(&instance).is_some_and(|(b, _)| *b == bound) {
                    self.reaps.remove(&instance);
                }
            }
        }
    }

    fn settle(&mut self, who: &Participant, ok: bool) {
        if !ok {
            self.dirty.insert(who.clone());
        } else if !self.touch(who) && self.here.get(who).is_some_and(Here::is_empty) {
            self.here.remove(who);
        }
    }

    /// `who` went offline at `at` by this instance's doing: its last-seen is to be written.
    pub(super) fn seen_due(&mut self, who: Participant, at: Millis) {
        let due = self.seen.entry(who).or_insert(at);
        *due = (*due).max(at);
    }

    /// A dead instance's keys are to be purged.
    pub(super) fn reap_due(&mut self, instance: Arc<str>, bound: u64, tombstone: bool) {
        let due = self.reaps.entry(instance).or_insert((bound, tombstone));
        due.0 = due.0.max(bound);
        due.1 |= tombstone;
    }

    /// The bucket may not hold what was written: with `Some`, it holds exactly that (a fresh
    /// load of the replica); with `None`, anything (this instance was declared dead and
    /// purged, or cut off): every desired key is written again and every key written is
    /// deleted if no longer desired. Returns whether there is anything to write.
    pub(super) fn republish(&mut self, known: Option<&Published>) -> bool {
        if let Some(known) = known {
            for (who, activity) in &known.presence {
                let here = self.here.entry(who.clone()).or_insert_with(Here::new);
                here.published = Some(*activity);
            }
            for (channel, who) in &known.viewing {
                let here = self.here.entry(who.clone()).or_insert_with(Here::new);
                here.published_views.insert(channel.clone());
            }
        }
        for (who, here) in &mut self.here {
            match known {
                Some(known) => {
                    here.published = known.presence.get(who).copied();
                    here.published_views
                        .retain(|c| known.viewing.contains(&(c.clone(), who.clone())));
                }
                None => {
                    if here.desired().is_some() {
                        here.published = None;
                    }
                    let views = &here.views;
                    here.published_views.retain(|c| !views.contains_key(c));
                }
            }
        }
        let stale: Vec<Participant> = self
            .here
            .iter()
            .filter(|(_, h)| !h.in_sync())
            .map(|(p, _)| p.clone())
            .collect();
        let any = !stale.is_empty();
        self.dirty.extend(stale);
        self.here.retain(|_, h| !h.is_empty());
        any
    }

    /// Participants held in memory (for tests of the bounds).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.here.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collab::identity::Kind;

    fn user(id: &str) -> Participant {
        Participant::new(Kind::User, id).unwrap()
    }

    fn sid() -> Sid {
        Sid::new()
    }

    /// Runs the writer once, every write succeeding; returns what it wrote.
    fn flush(local: &mut Local) -> Vec<String> {
        flush_at(local, Instant::now())
    }

    fn flush_at(local: &mut Local, now: Instant) -> Vec<String> {
        let ops = local.take(usize::MAX, now);
        let written = ops
            .iter()
            .map(|op| match op {
                Op::Presence { who, value } => format!("p {} {value:?}", who.id),
                Op::View { who, channel, on } => format!("v {} {channel} {on}", who.id),
                Op::Seen { who, at } => format!("seen {} {at}", who.id),
                Op::Reap { instance, .. } => format!("reap {instance}"),
            })
            .collect();
        for op in ops {
            local.done(op, true);
        }
        written
    }

    #[test]
    fn one_put_per_first_socket_and_one_delete_after_the_grace() {
        let mut l = Local::default();
        let (u, a, b) = (user("u"), sid(), sid());
        let grace = Duration::from_secs(3);
        let t0 = Instant::now();
        assert!(l.connect(&u, a));
        assert!(!l.connect(&u, b), "a second socket writes nothing");
        assert_eq!(flush(&mut l), ["p u Some(Online)"]);
        l.disconnect(&u, a, t0, grace);
        assert!(flush(&mut l).is_empty());
        l.disconnect(&u, b, t0, grace);
        assert!(flush(&mut l).is_empty(), "the grace keeps the key");
        l.expire(t0 + grace);
        assert_eq!(flush(&mut l), ["p u None"]);
        assert_eq!(l.len(), 0, "nothing kept once deleted");
    }

    #[test]
    fn a_reconnect_within_the_grace_writes_nothing() {
        let mut l = Local::default();
        let (u, a, b) = (user("u"), sid(), sid());
        let t0 = Instant::now();
        l.connect(&u, a);
        flush(&mut l);
        l.disconnect(&u, a, t0, Duration::from_secs(3));
        l.connect(&u, b);
        l.expire(t0 + Duration::from_secs(10));
        assert!(flush(&mut l).is_empty());
    }

    #[test]
    fn changes_between_writes_coalesce() {
        let mut l = Local::default();
        let (u, a) = (user("u"), sid());
        l.connect(&u, a);
        l.disconnect(&u, a, Instant::now(), Duration::ZERO);
        assert!(flush(&mut l).is_empty(), "connected and gone: nothing");
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn status_writes_only_when_the_aggregate_changes() {
        let mut l = Local::default();
        let (u, a, b) = (user("u"), sid(), sid());
        l.connect(&u, a);
        l.connect(&u, b);
        flush(&mut l);
        l.set_activity(&u, a, Activity::Away);
        assert!(flush(&mut l).is_empty(), "b is still online");
        l.set_activity(&u, b, Activity::Away);
        assert_eq!(flush(&mut l), ["p u Some(Away)"]);
        l.set_activity(&u, b, Activity::Online);
        assert_eq!(flush(&mut l), ["p u Some(Online)"]);
    }

    #[test]
    fn viewing_keys_follow_the_sockets() {
        let mut l = Local::default();
        let (u, a, b) = (user("u"), sid(), sid());
        let c = ChannelId::parse("c1").unwrap();
        l.connect(&u, a);
        l.connect(&u, b);
        flush(&mut l);
        l.set_viewing(&u, a, &c, true);
        l.set_viewing(&u, b, &c, true);
        assert_eq!(flush(&mut l), ["v u c1 true"]);
        assert!(l.views(&u, &c));
        l.set_viewing(&u, a, &c, false);
        assert!(flush(&mut l).is_empty());
        l.disconnect(&u, b, Instant::now(), Duration::from_secs(3));
        assert_eq!(
            flush(&mut l),
            ["v u c1 false"],
            "a leaving socket ends its viewing"
        );
        assert!(!l.views(&u, &c));
    }

    #[test]
    fn a_failed_write_is_retried_with_the_latest_state() {
        let mut l = Local::default();
        let (u, a) = (user("u"), sid());
        l.connect(&u, a);
        let ops = l.take(usize::MAX, Instant::now());
        l.set_activity(&u, a, Activity::Away);
        for op in ops {
            l.done(op, false);
        }
        assert_eq!(flush(&mut l), ["p u Some(Away)"]);
    }

    #[test]
    fn republish_after_a_purge_puts_everything_desired_again() {
        let mut l = Local::default();
        let (u, v, a, b) = (user("u"), user("v"), sid(), sid());
        l.connect(&u, a);
        l.connect(&v, b);
        flush(&mut l);
        l.disconnect(&v, b, Instant::now(), Duration::ZERO);
        // v's delete is pending when the purge is noticed: it is still made.
        assert!(l.republish(None));
        let mut written = flush(&mut l);
        written.sort();
        assert_eq!(written, ["p u Some(Online)", "p v None"]);
    }

    #[test]
    fn republish_with_a_known_state_writes_only_the_difference() {
        let mut l = Local::default();
        let (u, stale, a) = (user("u"), user("stale"), sid());
        l.connect(&u, a);
        flush(&mut l);
        let mut known = Published::default();
        known.presence.insert(u.clone(), Activity::Online);
        known.presence.insert(stale.clone(), Activity::Away);
        assert!(l.republish(Some(&known)));
        assert_eq!(flush(&mut l), ["p stale None"]);
        assert!(!l.republish(Some(&{
            let mut k = Published::default();
            k.presence.insert(u.clone(), Activity::Online);
            k
        })));
    }

    #[test]
    fn toggles_within_the_min_interval_coalesce() {
        let interval = Duration::from_millis(250);
        let mut l = Local::new(interval);
        let (u, a) = (user("u"), sid());
        let t0 = Instant::now();
        l.connect(&u, a);
        assert_eq!(
            flush_at(&mut l, t0),
            ["p u Some(Online)"],
            "the first put at once"
        );
        for _ in 0..10 {
            l.set_activity(&u, a, Activity::Away);
            assert!(flush_at(&mut l, t0 + interval / 2).is_empty(), "held");
            l.set_activity(&u, a, Activity::Online);
        }
        l.set_activity(&u, a, Activity::Away);
        assert_eq!(l.next_deadline(), Some(t0 + interval));
        assert_eq!(flush_at(&mut l, t0 + interval), ["p u Some(Away)"]);
        l.set_activity(&u, a, Activity::Online);
        assert!(flush_at(&mut l, t0 + interval + interval / 2).is_empty());
        l.set_activity(&u, a, Activity::Away);
        assert!(
            flush_at(&mut l, t0 + interval * 2).is_empty(),
            "back as written: nothing"
        );
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn sockets_are_counted_per_participant() {
        let mut l = Local::default();
        let (u, a, b) = (user("u"), sid(), sid());
        let c = ChannelId::parse("c1").unwrap();
        l.connect(&u, a);
        l.set_activity(&u, b, Activity::Away);
        l.set_viewing(&u, a, &c, true);
        l.set_viewing(&u, a, &c, true);
        l.set_viewing(&u, b, &c, true);
        assert_eq!(flush(&mut l).len(), 2);
        l.disconnect(&u, a, Instant::now(), Duration::from_secs(3));
        assert!(l.views(&u, &c), "b still views it");
        assert_eq!(flush(&mut l), ["p u Some(Away)"]);
        l.set_viewing(&u, b, &c, false);
        assert!(!l.views(&u, &c));
        l.set_activity(&u, b, Activity::Online);
        let mut written = flush(&mut l);
        written.sort();
        assert_eq!(written, ["p u Some(Online)", "v u c1 false"]);
    }

    #[test]
    fn seen_and_reaps_are_written_once() {
        let mut l = Local::default();
        l.seen_due(user("u"), 10);
        l.seen_due(user("u"), 5);
        l.reap_due(Arc::from("dead"), 7, true);
        let mut written = flush(&mut l);
        written.sort();
        assert_eq!(written, ["reap dead", "seen u 10"]);
        assert!(flush(&mut l).is_empty());
    }
}
