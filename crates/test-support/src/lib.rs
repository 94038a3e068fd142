//! Real processes for tests: a `redis-server` of the test's own on a free
//! loopback port, and the project's binaries started as child processes.
//! Everything is killed on drop, so a failing test leaves nothing behind.
//!
//! Test-only crate: failures to set up the environment panic with a message
//! that says what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod clients;
pub mod conn;
mod nginx;
mod redis_server;
mod seen;
mod service;

pub use nginx::Nginx;
pub use redis_server::{Entry, RedisServer, id_pair};
pub use seen::Seen;
pub use service::{ServiceProcess, binary_path, run_to_exit};

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, or panics after
/// `timeout` with `what` in the message. For waiting on real events (a port
/// opening, a process exiting), never as a sleep.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Settings for a bidder on `redis`: the simulator on `sim_auctions` (a
/// comma list; empty turns it off) every `interval_ms`, and rate limits high
/// enough for tests.
pub fn bidder_env(
    redis: &RedisServer,
    sim_auctions: &str,
    interval_ms: u64,
) -> Vec<(&'static str, String)> {
    vec![
        ("AUCTION_REDIS_URL", redis.url()),
        ("AUCTION_SIMULATE", (!sim_auctions.is_empty()).to_string()),
        (
            "AUCTION_SIM_AUCTIONS",
            if sim_auctions.is_empty() {
                "unused".into()
            } else {
                sim_auctions.into()
            },
        ),
        ("AUCTION_SIM_INTERVAL_MS", interval_ms.to_string()),
        ("AUCTION_RATE_LIMIT_PER_S", "1000000".into()),
        ("AUCTION_RATE_LIMIT_BURST", "1000000".into()),
    ]
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("cannot bind a loopback port")
}
