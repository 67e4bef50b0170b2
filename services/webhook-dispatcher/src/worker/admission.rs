//! Per-subscription limits in this replica: attempts in flight (`max_concurrency`) and a
//! token bucket for `rate_limit_per_sec`.
//!
//! The limits are applied before claiming, not after: the claim is told what each
//! subscription already has here ([`Admission::loads`]) and returns no more than it may
//! send now plus some rounds more. What cannot start at once waits in the subscription's
//! local queue and is sent by the next of its attempts to finish, so a subscription's slots
//! never stand idle while the next claim is on its way. A slow or rate-limited endpoint holds
//! at most its own share of the replica's global concurrency, never all of it.
//!
//! How many rounds a subscription may hold ([`QueuePolicy`]) follows how long its attempts
//! take: a fast endpoint gets a queue deep enough to cover the next claim's round trip, a
//! slow one only what it will surely send inside the lease. A subscription not seen yet gets
//! the rounds that fit even if every attempt runs into the timeout. Should an endpoint turn
//! slow with a deep queue, the queued deliveries whose lease could run out during their
//! attempt are handed back unsent (the worker releases them), never sent late.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use crate::store::{Claimed, LocalLoad};

/// The limits' state for every subscription with attempts in flight or a budget in use.
#[derive(Debug, Default)]
pub struct Admission {
    policy: QueuePolicy,
    subscriptions: Mutex<HashMap<Uuid, Limits>>,
}

/// How deep a subscription's local queue may be, in rounds of its `max_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueuePolicy {
    /// For a subscription whose attempts have not been timed yet: rounds that fit in the
    /// lease even if each attempt takes the whole timeout.
    pub default_rounds: i32,
    /// What the queue may hold in expected waiting time (rounds × the subscription's mean
    /// attempt duration): a fraction of the lease, so a queued delivery is normally sent long
    /// before its lease could run out.
    pub wait_budget: Duration,
    /// No subscription holds more than this many claimed deliveries (running and queued)
    /// beyond one round: half the replica's concurrency, so a fast endpoint's queue never
    /// takes every permit from the others.
    pub max_held: i32,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            default_rounds: 1,
            wait_budget: Duration::ZERO,
            max_held: 0,
        }
    }
}

impl QueuePolicy {
    /// The most rounds any subscription may hold.
    const MAX_ROUNDS: i32 = 16;

    /// The policy for a replica whose leases last `lease` and attempts at most `timeout`,
    /// with `concurrency` attempts (running or queued) at once.
    pub fn new(lease: Duration, timeout: Duration, concurrency: usize) -> Self {
        let timeout = timeout.max(Duration::from_secs(1));
        // A queued delivery waits for at most `rounds − 1` attempts before its own.
        let default_rounds = (lease.saturating_sub(Duration::from_secs(1)).as_secs_f64()
            / timeout.as_secs_f64())
        .floor()
        .clamp(1.0, 3.0) as i32;
        Self {
            default_rounds,
            wait_budget: lease.saturating_sub(timeout) / 2,
            max_held: i32::try_from(concurrency / 2).unwrap_or(i32::MAX),
        }
    }

    /// Rounds for a subscription of `max_concurrency` whose attempts take `mean` on average
    /// (`None`: not timed yet).
    fn rounds(&self, max_concurrency: i32, mean: Option<Duration>) -> i32 {
        let Some(mean) = mean else {
            return self.default_rounds;
        };
        let by_time = (self.wait_budget.as_secs_f64() / mean.as_secs_f64().max(1e-6)).floor();
        let by_share = f64::from(self.max_held / max_concurrency.max(1));
        by_time
            .min(by_share.max(f64::from(self.default_rounds)))
            .clamp(1.0, f64::from(Self::MAX_ROUNDS)) as i32
    }
}

#[derive(Debug)]
struct Limits {
    in_flight: i32,
    max_concurrency: i32,
    rate: Option<Bucket>,
    queue: VecDeque<Queued>,
    /// Mean attempt duration (exponentially weighted), once one has finished.
    mean_attempt: Option<Duration>,
    /// The last admission or finished attempt: an idle subscription's timing is kept for
    /// [`FORGET_AFTER`], so the next burst's first claim already knows how deep to go.
    active_at: Instant,
}

/// How long the timing of an idle subscription is kept.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// A claimed delivery with what its attempt holds: its lease deadline and its permit of
/// the replica's global concurrency.
#[derive(Debug)]
pub struct Queued {
    /// The delivery.
    pub delivery: Claimed,
    /// Until when its claim is surely held.
    pub lease_deadline: Instant,
    /// Its share of the replica's concurrency, held from claim to outcome.
    pub permit: OwnedSemaphorePermit,
}

/// `per_sec` tokens refilled per second, holding at most `per_sec`: a burst of one second's
/// budget, then the steady rate.
#[derive(Debug)]
struct Bucket {
    per_sec: i32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(per_sec: i32, now: Instant) -> Self {
        Self {
            per_sec,
            tokens: f64::from(per_sec),
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * f64::from(self.per_sec)).min(f64::from(self.per_sec));
        self.at = now;
    }

    fn is_full(&self) -> bool {
        self.tokens >= f64::from(self.per_sec)
    }
}

/// One attempt's concurrency slot; freed when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    subscription_id: Uuid,
    held: bool,
}

impl Slot {
    /// Counts how long one of the subscription's attempts took.
    pub fn observe(&self, took: Duration) {
        if let Some(l) = self.admission.lock().get_mut(&self.subscription_id) {
            l.active_at = Instant::now();
            l.mean_attempt = Some(match l.mean_attempt {
                None => took,
                Some(mean) => mean.mul_f64(0.8) + took.mul_f64(0.2),
            });
        }
    }

    /// The subscription's next queued delivery, sent under this same slot; `None` frees the
    /// slot. One step under the lock, so a delivery queued meanwhile is never left behind.
    pub fn next_queued(&mut self) -> Option<Queued> {
        if !self.held {
            return None;
        }
        let mut map = self.admission.lock();
        let limits = map.get_mut(&self.subscription_id)?;
        // The subscription's limit may have been lowered: then the slot goes.
        if limits.in_flight <= limits.max_concurrency
            && let Some(q) = limits.queue.pop_front()
        {
            return Some(q);
        }
        limits.in_flight -= 1;
        self.held = false;
        None
    }
}

impl Admission {
    /// No subscription known yet.
    pub fn new(policy: QueuePolicy) -> Self {
        Self {
            policy,
            subscriptions: Mutex::default(),
        }
    }

    /// What each subscription already uses here, for the next claim. Subscriptions that are
    /// idle with a full budget are forgotten (the claim assumes exactly that for unknown ones),
    /// once their timing is [`FORGET_AFTER`] old.
    pub fn loads(&self) -> Vec<LocalLoad> {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, l| {
            if let Some(b) = &mut l.rate {
                b.refill(now);
            }
            l.in_flight > 0
                || !l.queue.is_empty()
                || l.rate.as_ref().is_some_and(|b| !b.is_full())
                || (l.mean_attempt.is_some()
                    && now.saturating_duration_since(l.active_at) < FORGET_AFTER)
        });
        map.iter()
            .map(|(id, l)| LocalLoad {
                subscription_id: *id,
                in_flight: l.in_flight + l.queue.len() as i32,
                rate_tokens: l.rate.as_ref().map(|b| b.tokens.floor() as i32),
                rounds: self.policy.rounds(l.max_concurrency, l.mean_attempt),
            })
            .collect()
    }

    /// Takes a rate token for a claimed delivery, and a slot when its subscription has one
    /// free: then the delivery is handed back to be sent now. Otherwise it joins the
    /// subscription's queue, and the next of its attempts to finish sends it
    /// ([`Slot::next_queued`]). Never waits: the claim only returned what [`Self::loads`] left room
    /// for.
    pub fn admit(self: &Arc<Self>, q: Queued) -> Option<(Slot, Queued)> {
        let now = Instant::now();
        let d = &q.delivery;
        let subscription_id = d.subscription_id;
        let mut map = self.lock();
        let limits = map.entry(subscription_id).or_insert_with(|| Limits {
            in_flight: 0,
            max_concurrency: d.max_concurrency,
            rate: None,
            queue: VecDeque::new(),
            mean_attempt: None,
            active_at: now,
        });
        limits.active_at = now;
        limits.max_concurrency = d.max_concurrency;
        limits.rate = match (limits.rate.take(), d.rate_limit_per_sec.filter(|r| *r > 0)) {
            (_, None) => None,
            (Some(mut b), Some(rate)) if b.per_sec == rate => {
                b.refill(now);
                Some(b)
            }
            (_, Some(rate)) => Some(Bucket::full(rate, now)),
        };
        if let Some(b) = &mut limits.rate {
            b.tokens -= 1.0;
        }
        if limits.in_flight < limits.max_concurrency {
            limits.in_flight += 1;
            Some((
                Slot {
                    admission: Arc::clone(self),
                    subscription_id,
                    held: true,
                },
                q,
            ))
        } else {
            limits.queue.push_back(q);
            None
        }
    }

    /// Rounds for a subscription not timed here yet ([`QueuePolicy::default_rounds`]).
    pub fn default_rounds(&self) -> i32 {
        self.policy.default_rounds
    }

    /// Whether some subscription holds (running and queued) all it may here: then a claim
    /// may have left due deliveries of it behind for want of room, not for want of work.
    pub fn any_full(&self) -> bool {
        self.lock().values().any(|l| {
            l.in_flight + l.queue.len() as i32
                >= l.max_concurrency * self.policy.rounds(l.max_concurrency, l.mean_attempt)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Limits>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held
            && let Some(l) = self.admission.lock().get_mut(&self.subscription_id)
        {
            l.in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(sub: Uuid, max_concurrency: i32, rate: Option<i32>) -> Claimed {
        Claimed {
            id: Uuid::now_v7(),
            event_id: Uuid::now_v7(),
            subscription_id: sub,
            attempts: 1,
            event_type: "deal.created".to_owned(),
            lease_token: Uuid::now_v7(),
            payload: Some("{}".to_owned()),
            url: "https://example.com/".to_owned(),
            max_attempts: 3,
            rate_limit_per_sec: rate,
            max_concurrency,
            secrets: vec![],
            traceparent: None,
        }
    }

    fn queued(d: Claimed) -> Queued {
        let permits = Arc::new(tokio::sync::Semaphore::new(16));
        Queued {
            delivery: d,
            lease_deadline: Instant::now(),
            permit: permits.try_acquire_owned().unwrap(),
        }
    }

    fn run(admission: &Arc<Admission>, d: Claimed) -> Slot {
        admission.admit(queued(d)).expect("a free slot").0
    }

    #[test]
    fn queue_depth_follows_attempt_duration_within_the_lease_and_a_fair_share() {
        let policy = QueuePolicy::new(Duration::from_secs(60), Duration::from_secs(15), 256);
        // Untimed: what fits if every attempt runs into the timeout (3 × 15 s < 60 s).
        assert_eq!(policy.default_rounds, 3);
        assert_eq!(policy.rounds(16, None), 3);
        // Fast: as deep as half the replica's concurrency allows (128 / 16).
        assert_eq!(policy.rounds(16, Some(Duration::from_millis(2))), 8);
        // A wide subscription keeps the untimed depth (its share is already one round).
        assert_eq!(policy.rounds(256, Some(Duration::from_millis(2))), 3);
        // Slow: only what is expected to be sent within half of the lease beyond the timeout.
        assert_eq!(policy.rounds(16, Some(Duration::from_secs(5))), 4);
        assert_eq!(policy.rounds(16, Some(Duration::from_secs(14))), 1);
        // A short lease: one round, whatever the speed.
        let tight = QueuePolicy::new(Duration::from_secs(3), Duration::from_secs(2), 4);
        assert_eq!(tight.default_rounds, 1);
        assert_eq!(tight.rounds(1, Some(Duration::from_millis(900))), 1);
    }

    #[test]
    fn a_slot_times_its_subscriptions_attempts() {
        let admission = Arc::new(Admission::new(QueuePolicy::new(
            Duration::from_secs(60),
            Duration::from_secs(15),
            256,
        )));
        let slot = run(&admission, claimed(Uuid::now_v7(), 16, None));
        assert_eq!(admission.loads()[0].rounds, 3, "not timed yet");
        slot.observe(Duration::from_millis(3));
        assert_eq!(admission.loads()[0].rounds, 8);
        // One slow attempt moves the mean a fifth of the way: 3 ms → ~2 s.
        slot.observe(Duration::from_secs(10));
        assert_eq!(admission.loads()[0].rounds, 8);
        for _ in 0..20 {
            slot.observe(Duration::from_secs(10));
        }
        assert_eq!(admission.loads()[0].rounds, 2);
        // Idle again: still known (for a while), so the next burst starts at that depth.
        drop(slot);
        let idle = admission.loads();
        assert_eq!((idle[0].in_flight, idle[0].rounds), (0, 2));
    }

    #[test]
    fn slots_and_tokens_are_reported_and_released() {
        let admission = Arc::new(Admission::default());
        let sub = Uuid::now_v7();
        let a = run(&admission, claimed(sub, 2, Some(5)));
        let b = run(&admission, claimed(sub, 2, Some(5)));
        let loads = admission.loads();
        assert_eq!(loads.len(), 1);
        assert_eq!(loads[0].in_flight, 2);
        assert_eq!(loads[0].rate_tokens, Some(3));
        drop(a);
        assert_eq!(admission.loads()[0].in_flight, 1);
        drop(b);
        // Idle, but the budget is not refilled yet: still reported.
        assert_eq!(admission.loads()[0].in_flight, 0);
    }

    #[test]
    fn idle_unlimited_subscriptions_are_forgotten() {
        let admission = Arc::new(Admission::default());
        let slot = run(&admission, claimed(Uuid::now_v7(), 1, None));
        assert_eq!(admission.loads()[0].rate_tokens, None);
        drop(slot);
        assert!(admission.loads().is_empty());
    }

    #[test]
    fn past_the_limit_deliveries_queue_and_the_running_slot_takes_them_in_order() {
        let admission = Arc::new(Admission::default());
        let sub = Uuid::now_v7();
        let (first, second) = (claimed(sub, 1, None), claimed(sub, 1, None));
        let second_id = second.id;
        let mut slot = run(&admission, first);
        assert!(admission.admit(queued(second)).is_none(), "no second slot");
        // Queued deliveries count against the subscription's room for the next claim.
        assert_eq!(admission.loads()[0].in_flight, 2);
        let next = slot.next_queued().expect("the queued delivery");
        assert_eq!(next.delivery.id, second_id);
        assert_eq!(admission.loads()[0].in_flight, 1);
        assert!(slot.next_queued().is_none());
        // The slot was freed by `next_queued`, not again by drop.
        drop(slot);
        assert!(admission.loads().is_empty());
        // A free slot again: the next delivery runs at once.
        assert!(admission.admit(queued(claimed(sub, 1, None))).is_some());
    }
}
