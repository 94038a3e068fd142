//! The wall clock, read in one place.
//!
//! Event times come from Redis's clock (one clock orders closing); this is
//! for what a process measures against them (delivery latency) or records
//! of its own (creation order in the listing).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as Unix milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
