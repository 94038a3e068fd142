//! The wall clock, read in one place.
//!
//! Event times come from Redis's clock (one clock orders closing); this is
//! for what a process measures against them (delivery latency) or records
//! of its own (creation order in the listing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far this process's clock is made to run behind (tests only).
static BEHIND_MS: AtomicU64 = AtomicU64::new(0);

/// Now, as Unix milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
        .saturating_sub(BEHIND_MS.load(Ordering::Relaxed))
}

/// Makes [`now_ms`] read `ms` behind the system clock, for the whole
/// process: how tests show that nothing that must be on time depends on a
/// service's own clock (`AUCTION_TEST_CLOCK_BEHIND_MS`). Never for
/// production.
pub fn set_behind_for_tests(ms: u64) {
    BEHIND_MS.store(ms, Ordering::Relaxed);
}
