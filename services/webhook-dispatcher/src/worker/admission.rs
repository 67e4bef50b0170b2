//! Per-subscription limits in this replica: attempts in flight (`max_concurrency`) and a
//! token bucket for `rate_limit_per_sec`.
//!
//! The limits are applied before claiming, not after: the claim is told what each
//! subscription may still send ([`Admission::loads`]) and returns no more, so an attempt
//! starts as soon as it is claimed. Nothing waits for a slot while its lease runs, and a
//! slow or rate-limited endpoint holds at most its own slots of the replica's global
//! concurrency, never all of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use uuid::Uuid;

use crate::store::{Claimed, LocalLoad};

/// The limits' state for every subscription with attempts in flight or a budget in use.
#[derive(Debug, Default)]
pub struct Admission {
    subscriptions: Mutex<HashMap<Uuid, Limits>>,
    freed: Notify,
}

#[derive(Debug)]
struct Limits {
    in_flight: i32,
    max_concurrency: i32,
    rate: Option<Bucket>,
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
}

impl Admission {
    /// What each subscription already uses here, for the next claim. Subscriptions that are
    /// idle with a full budget are forgotten (the claim assumes exactly that for unknown ones).
    pub fn loads(&self) -> Vec<LocalLoad> {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, l| {
            if let Some(b) = &mut l.rate {
                b.refill(now);
            }
            l.in_flight > 0 || l.rate.as_ref().is_some_and(|b| !b.is_full())
        });
        map.iter()
            .map(|(id, l)| LocalLoad {
                subscription_id: *id,
                in_flight: l.in_flight,
                rate_tokens: l.rate.as_ref().map(|b| b.tokens.floor() as i32),
            })
            .collect()
    }

    /// Takes a slot and a rate token for a claimed delivery. Never waits: the claim only
    /// returned what [`Self::loads`] left room for, and room only grows until this runs.
    pub fn admit(self: &Arc<Self>, d: &Claimed) -> Slot {
        let now = Instant::now();
        let mut map = self.lock();
        let limits = map.entry(d.subscription_id).or_insert_with(|| Limits {
            in_flight: 0,
            max_concurrency: d.max_concurrency,
            rate: None,
        });
        limits.in_flight += 1;
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
        Slot {
            admission: Arc::clone(self),
            subscription_id: d.subscription_id,
        }
    }

    /// Notified when a subscription that was at its concurrency limit frees a slot, so a
    /// waiting claim loop can take its next delivery without polling.
    pub fn freed(&self) -> &Notify {
        &self.freed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Limits>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let was_full = {
            let mut map = self.admission.lock();
            match map.get_mut(&self.subscription_id) {
                Some(l) => {
                    let was_full = l.in_flight >= l.max_concurrency;
                    l.in_flight -= 1;
                    was_full
                }
                None => false,
            }
        };
        if was_full {
            self.admission.freed.notify_one();
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
            payload: "{}".to_owned(),
            url: "https://example.com/".to_owned(),
            max_attempts: 3,
            rate_limit_per_sec: rate,
            max_concurrency,
            secrets: vec![],
        }
    }

    #[test]
    fn slots_and_tokens_are_reported_and_released() {
        let admission = Arc::new(Admission::default());
        let sub = Uuid::now_v7();
        let a = admission.admit(&claimed(sub, 2, Some(5)));
        let b = admission.admit(&claimed(sub, 2, Some(5)));
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
        let slot = admission.admit(&claimed(Uuid::now_v7(), 1, None));
        assert_eq!(admission.loads()[0].rate_tokens, None);
        drop(slot);
        assert!(admission.loads().is_empty());
    }
}
