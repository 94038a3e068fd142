//! Per-client token buckets for the write endpoints, keyed by whatever names
//! the client (an address, a bidder id). The table is bounded: when full,
//! buckets that have refilled (idle clients) are dropped; if every bucket
//! is still in use, a new client waits until one refills. No bucket is ever
//! reset by others arriving: whoever makes many identities cannot give
//! everyone (themselves included) a fresh burst.

use service_kit::rate::{Rate, TokenBucket};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

const MAX_CLIENTS: usize = 100_000;

pub struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, TokenBucket>>,
    /// Most clients with a bucket at once.
    max_clients: usize,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(per_second: u64, burst: u64) -> Self {
        RateLimiter::bounded(per_second, burst, MAX_CLIENTS)
    }

    fn bounded(per_second: u64, burst: u64, max_clients: usize) -> Self {
        RateLimiter {
            rate: Rate::new(per_second, burst),
            buckets: Mutex::new(HashMap::new()),
            max_clients,
        }
    }

    /// Takes one token for `client`: `Ok` to proceed, or `Err(seconds)` to
    /// wait before the next token.
    pub fn check(&self, client: &K, now: Instant) -> Result<(), u64> {
        let mut buckets = match self.buckets.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if buckets.len() >= self.max_clients && !buckets.contains_key(client) {
            let full_after = self.rate.refill_seconds();
            buckets.retain(|_, bucket| {
                now.saturating_duration_since(bucket.last_used())
                    .as_secs_f64()
                    < full_after
            });
            if buckets.len() >= self.max_clients {
                // Every bucket was used within a refill: the oldest frees
                // its place within that time.
                return Err(full_after.ceil().max(1.0) as u64);
            }
        }
        buckets
            .entry(client.clone())
            .or_insert_with(|| TokenBucket::full(self.rate, now))
            .take(self.rate, now)
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

    #[test]
    fn a_full_table_never_resets_the_buckets_in_use() {
        let limiter = RateLimiter::bounded(1, 2, 3);
        let start = Instant::now();
        for client in 0..3u32 {
            assert!(limiter.check(&client, start).is_ok());
            assert!(limiter.check(&client, start).is_ok());
            assert_eq!(limiter.check(&client, start), Err(1), "spent");
        }
        // A fourth identity finds every place in use: it waits, and the
        // three stay spent (they were cleared before: a fresh burst each).
        assert_eq!(limiter.check(&3, start), Err(2));
        for client in 0..3u32 {
            assert_eq!(limiter.check(&client, start), Err(1), "still spent");
        }
        // Once a bucket has refilled, its place goes to the newcomer.
        let later = start + Duration::from_secs(3);
        assert!(limiter.check(&3, later).is_ok());
    }
}
