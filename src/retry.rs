//! The one retry delay every retrying loop in stowage waits with.

use std::time::Duration;

/// Exponential backoff: `first` after the first failure, doubling up to `max`, each delay
/// drawn from the upper half of its step so that retries from many tasks spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) first: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// 100 ms doubling to 5 s: what S3 clients commonly use, and enough for a throttled
    /// bucket (503 SlowDown) to recover within a handful of attempts.
    pub(crate) const DEFAULT: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    /// The delay after failed attempt `attempt` (1 for the first failure).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let step = self
            .first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max);
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Waits [`delay`](Self::delay)`(attempt)`.
    pub(crate) async fn sleep(&self, attempt: u32) {
        tokio::time::sleep(self.delay(attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_stay_under_the_cap_and_keep_half_their_step() {
        let b = Backoff::DEFAULT;
        for attempt in 1..40 {
            let d = b.delay(attempt);
            let step = (b.first * 2u32.pow(attempt.saturating_sub(1).min(16))).min(b.max);
            assert!(
                d <= step && d >= step / 2,
                "attempt {attempt}: {d:?} vs step {step:?}"
            );
        }
        assert!(b.delay(1) <= Duration::from_millis(100));
        assert!(b.delay(10) >= Duration::from_millis(2500));
    }
}
