//! Exponential backoff with jitter: the one retry delay of the workspace.
//!
//! `base × 2^n`, capped at `max`, each delay spread by ±`jitter` (20 % by default) so that
//! replicas that failed together do not retry together. The jittered delay never exceeds `max`.
//! Use [`Backoff::wait`] in retry loops (it gives up when the service shuts down) and
//! [`Backoff::delay`] where the attempt number is stored elsewhere (webhook retries).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Retry delays for one loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
    failures: u32,
}

impl Backoff {
    /// Delays from `base`, doubling to `max`, with ±20 % jitter.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            jitter: 0.2,
            failures: 0,
        }
    }

    /// Replaces the jitter fraction (0 for none; clamped to 0..=1).
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// The delay before retry number `retry` (1 = the first retry): `base × 2^(retry-1)`,
    /// jittered, at most `max`.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(32);
        let raw = self.base.saturating_mul(1u32 << exp.min(31)).min(self.max);
        let spread = 1.0 - self.jitter + rand::random::<f64>() * 2.0 * self.jitter;
        raw.mul_f64(spread).min(self.max)
    }

    /// The next delay of this loop; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.delay(self.failures)
    }

    /// Starts again from `base` (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Sleeps the next delay; `false` (at once) when `shutdown` fires first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_and_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..200 {
            let first = b.delay(1).as_millis();
            assert!((80..=120).contains(&first), "{first}");
            let third = b.delay(3).as_millis();
            assert!((320..=480).contains(&third), "{third}");
            let capped = b.delay(40);
            assert!(capped <= Duration::from_secs(5) && capped >= Duration::from_secs(4));
        }
        let exact = b.clone().with_jitter(0.0);
        assert_eq!(exact.delay(2), Duration::from_millis(200));
        assert_eq!(exact.delay(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn next_delay_grows_until_reset() {
        let mut b =
            Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).with_jitter(0.0);
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_gives_up_on_shutdown() {
        let token = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(b.wait(&token).await, "paused time runs the sleep out");
        token.cancel();
        assert!(!b.wait(&token).await);
    }
}
