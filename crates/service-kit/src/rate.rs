//! The token bucket every rate limit of the project is made of.

use std::time::Instant;

/// Up to `burst` tokens, refilled at `per_second`; each allowed action
/// takes one. Plain data: the owner decides where it lives (per socket,
/// or in a bounded table keyed by client).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

/// A limit's two numbers.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub fn new(per_second: u64, burst: u64) -> Rate {
        Rate {
            per_second: per_second as f64,
            burst: burst as f64,
        }
    }

    /// How long an idle bucket takes to fill up again, seconds: after that
    /// it is indistinguishable from a new one.
    pub fn refill_seconds(&self) -> f64 {
        self.burst / self.per_second
    }
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: rate.burst,
            refilled: now,
        }
    }

    /// Takes one token: `Ok`, or `Err(seconds)` to wait for the next one
    /// (at least 1, for `Retry-After`).
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), u64> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / rate.per_second).ceil().max(1.0) as u64)
        }
    }

    /// When the bucket was last used.
    pub fn last_used(&self) -> Instant {
        self.refilled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_refills_at_the_rate() {
        let rate = Rate::new(2, 3);
        let start = Instant::now();
        let mut bucket = TokenBucket::full(rate, start);
        for _ in 0..3 {
            assert!(bucket.take(rate, start).is_ok());
        }
        assert_eq!(bucket.take(rate, start), Err(1));
        assert!(
            bucket
                .take(rate, start + Duration::from_millis(600))
                .is_ok()
        );
        assert!(
            bucket
                .take(rate, start + Duration::from_millis(600))
                .is_err()
        );
    }
}
