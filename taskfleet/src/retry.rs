//! Jittered exponential backoff for requests the service asks us to repeat
//! (unprocessed batch items, throttling).
//!
//! "Full jitter": the n-th wait is uniform in `[0, min(cap, base * 2^n)]`,
//! so that many clients throttled at once do not come back in step.

use std::time::Duration;

use rand::Rng;

/// How often and how patiently to repeat a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub max_attempts: u32,
    /// Upper bound of the first wait.
    pub base: Duration,
    /// Upper bound of any wait.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// About a minute of patience before giving up on a batch.
    fn default() -> Self {
        Self {
            max_attempts: 12,
            base: Duration::from_millis(50),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 = the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
        };
        for _ in 0..200 {
            assert!(p.delay(0) <= Duration::from_millis(10));
            assert!(p.delay(3) <= Duration::from_millis(80));
            assert!(p.delay(30) <= Duration::from_millis(100));
        }
    }
}
