//! Per-connection limits: the client message rate and the idle check. Connection caps (total
//! and per client address) are `service_runtime::net::ConnectionLimiter`, shared with the
//! other gateways.

use std::time::{Duration, Instant};

/// A token bucket: `rate` messages per second, bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    /// Takes one token at `now`; false when the bucket is empty.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Time a connection without any frame from its peer may last before it counts as dead.
pub fn is_idle_past(last_seen: Instant, now: Instant, timeout: Duration) -> bool {
    now.saturating_duration_since(last_seen) >= timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_bursts_then_the_rate() {
        let start = Instant::now();
        let mut bucket = RateLimiter::new(10, 20);
        assert_eq!((0..25).filter(|_| bucket.allow(start)).count(), 20);
        assert!(!bucket.allow(start));
        assert!(bucket.allow(start + Duration::from_millis(100)));
        assert!(!bucket.allow(start + Duration::from_millis(100)));
        assert_eq!(
            (0..100)
                .filter(|_| bucket.allow(start + Duration::from_secs(10)))
                .count(),
            20
        );
    }
}
