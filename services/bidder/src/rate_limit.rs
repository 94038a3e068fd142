//! Per-client token buckets for the write endpoints, keyed by whatever names
//! the client (an address, a bidder id). The table is bounded and kept in
//! least-recently-used order: when it is full, a new client takes the place
//! of the least recently used bucket only if that bucket has refilled (its
//! client idle long enough to be indistinguishable from a new one);
//! otherwise the new client gets 429 until it has. No bucket in use is ever
//! reset by others arriving: whoever makes many identities cannot give
//! everyone (themselves included) a fresh burst. Each check costs
//! O(log n), whatever the table holds (no sweep over it).

use service_kit::rate::{Rate, TokenBucket};
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most clients with a bucket at once, per limit.
pub const MAX_CLIENTS: usize = 100_000;

pub struct RateLimiter<K> {
    rate: Rate,
    table: Mutex<Table<K>>,
    /// Most clients with a bucket at once.
    max_clients: usize,
}

struct Table<K> {
    buckets: HashMap<K, Entry>,
    /// Every key of `buckets` by the sequence number of its last use: the
    /// first entry is the least recently used. Invariant: `order` and
    /// `buckets` hold the same keys, and `order[buckets[k].used] == k`.
    order: BTreeMap<u64, K>,
    next: u64,
}

struct Entry {
    bucket: TokenBucket,
    used: u64,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(per_second: u64, burst: u64) -> Self {
        RateLimiter::bounded(per_second, burst, MAX_CLIENTS)
    }

    fn bounded(per_second: u64, burst: u64, max_clients: usize) -> Self {
        RateLimiter {
            rate: Rate::new(per_second, burst),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                order: BTreeMap::new(),
                next: 0,
            }),
            max_clients: max_clients.max(1),
        }
    }

    /// Takes one token for `client`: `Ok` to proceed, or `Err(seconds)` to
    /// wait before the next token.
    pub fn check(&self, client: &K, now: Instant) -> Result<(), u64> {
        let mut table = match self.table.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let table = &mut *table;
        let used = table.next;
        table.next += 1;
        if let Some(entry) = table.buckets.get_mut(client) {
            table.order.remove(&entry.used);
            table.order.insert(used, client.clone());
            entry.used = used;
            return entry.bucket.take(self.rate, now);
        }
        if table.buckets.len() >= self.max_clients {
            let refill = Duration::from_secs_f64(self.rate.refill_seconds());
            let Some((&oldest_used, oldest)) = table.order.first_key_value() else {
                return Err(1);
            };
            let idle = table.buckets.get(oldest).map_or(refill, |entry| {
                now.saturating_duration_since(entry.bucket.last_used())
            });
            if idle < refill {
                // Every bucket was used more recently than the oldest, and
                // the oldest frees its place once it has refilled.
                let wait = (refill - idle).as_secs_f64().ceil().max(1.0);
                return Err(wait as u64);
            }
            if let Some(oldest) = table.order.remove(&oldest_used) {
                table.buckets.remove(&oldest);
            }
        }
        let mut bucket = TokenBucket::full(self.rate, now);
        let taken = bucket.take(self.rate, now);
        table.order.insert(used, client.clone());
        table.buckets.insert(client.clone(), Entry { bucket, used });
        taken
    }

    /// How many clients have a bucket.
    #[cfg(test)]
    fn len(&self) -> usize {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        debug_assert_eq!(table.buckets.len(), table.order.len());
        table.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

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
        assert_eq!(limiter.len(), 3);
    }

    #[test]
    fn the_least_recently_used_refilled_bucket_makes_room() {
        let limiter = RateLimiter::bounded(1, 1, 2);
        let start = Instant::now();
        assert!(limiter.check(&0u32, start).is_ok());
        let later = start + Duration::from_secs(2);
        assert!(limiter.check(&1u32, later).is_ok());
        // 0 is the least recently used and has refilled: 2 takes its place.
        assert!(limiter.check(&2u32, later).is_ok());
        // 1 (in use) kept its spent bucket.
        assert_eq!(limiter.check(&1u32, later), Err(1));
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn a_hundred_thousand_other_keys_leave_a_spent_bucket_spent() {
        // Slow refill: nothing refills within the test.
        let limiter = RateLimiter::new(1, 1_000);
        let start = Instant::now();
        let established = u64::MAX;
        while limiter.check(&established, start).is_ok() {}
        let mut refused = 0;
        for client in 0..(MAX_CLIENTS as u64 + 10_000) {
            if limiter.check(&client, start).is_err() {
                refused += 1;
            }
        }
        // The table held the established key and 99,999 others; the rest
        // waited, and the established bucket is as spent as before.
        assert_eq!(refused, 10_001);
        assert!(limiter.len() <= MAX_CLIENTS);
        assert_eq!(limiter.check(&established, start), Err(1));
    }
}
