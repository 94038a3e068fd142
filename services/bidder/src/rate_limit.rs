//! Per-client token buckets for the write endpoints, keyed by whatever names
//! the client (an address, a bidder id). The table is bounded: when full,
//! buckets that have refilled (idle clients) are dropped first.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

const MAX_CLIENTS: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter<K> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(per_second: u64, burst: u64) -> Self {
        RateLimiter {
            per_second: per_second as f64,
            burst: burst as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`: `Ok` to proceed, or `Err(seconds)` to
    /// wait before the next token.
    pub fn check(&self, client: &K, now: Instant) -> Result<(), u64> {
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(client) {
            let full_after = self.burst / self.per_second;
            buckets
                .retain(|_, bucket| now.duration_since(bucket.updated).as_secs_f64() < full_after);
            if buckets.len() >= MAX_CLIENTS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(client.clone()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::Duration;

    #[test]
    fn allows_a_burst_then_refills() {
        let limiter = RateLimiter::new(2, 3);
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(&client, start).is_ok());
        }
        assert_eq!(limiter.check(&client, start), Err(1));
        assert!(
            limiter
                .check(&client, start + Duration::from_millis(600))
                .is_ok()
        );
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(
            limiter.check(&other, start).is_ok(),
            "buckets are per client"
        );
    }
}
