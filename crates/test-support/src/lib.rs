//! Real processes for tests: a `redis-server` of the test's own on a free
//! loopback port, and the project's binaries started as child processes.
//! Everything is killed on drop, so a failing test leaves nothing behind.
//! Beside them, an event store in memory ([`MemoryStore`]) for driving the
//! fan-out's hub in-process.
//!
//! Test-only crate: failures to set up the environment panic with a message
//! that says what is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod auctions;
pub mod clients;
pub mod conn;
pub mod idp;
pub mod memory;
mod nginx;
mod ports;
mod redis_cluster;
mod redis_server;
mod seen;
mod service;
pub mod shard_load;

pub use memory::MemoryStore;
pub use nginx::Nginx;
pub use ports::{free_cluster_ports, free_port};
pub use redis_cluster::{NodeInfo, RedisCluster};
pub use redis_server::{
    APPEND_WITHOUT_NOTICE, Entry, RedisServer, TestRedis, TestRedisProcesses, id_pair,
};
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

/// The guest-session secret every test process shares (test-only; any
/// deployment sets its own `AUCTION_SESSION_SECRET`).
pub const TEST_SESSION_SECRET: &str = "test-only session secret, 32+ bytes, never deployed";

/// `AUCTION_SESSION_SECRET` for a bidder or ws-edge under test.
pub fn session_secret_env() -> (&'static str, String) {
    ("AUCTION_SESSION_SECRET", TEST_SESSION_SECRET.into())
}

/// A guest token for `name` (a fresh bidder id each call), signed with
/// [`TEST_SESSION_SECRET`], lasting an hour.
pub fn guest_token(name: &str) -> String {
    mint(name, &[])
}

/// A guest token with the `seller` role, to create auctions.
pub fn seller_token() -> String {
    mint("seller", &[identity::SELLER_ROLE])
}

/// A guest token named `name` with the `seller` role (a fresh bidder id
/// each call).
pub fn seller_token_named(name: &str) -> String {
    mint(name, &[identity::SELLER_ROLE])
}

/// A guest token named `name` with the `admin` role, as `bidder token
/// --name NAME --role admin` mints.
pub fn admin_token(name: &str) -> String {
    mint(name, &[identity::ADMIN_ROLE])
}

fn mint(name: &str, roles: &[&str]) -> String {
    let key =
        identity::GuestKey::new(TEST_SESSION_SECRET.as_bytes(), Duration::from_secs(3600)).unwrap();
    let name = auction_domain::BidderName::parse(name).unwrap();
    key.mint(&name, roles).unwrap().token
}

/// Settings for a bidder on `redis`: the simulator on `sim_auctions` (a
/// comma list; empty turns it off) every `interval_ms`, in ten-minute
/// rounds with limits so high that its bidders keep bidding for as long as
/// a test watches, and rate limits high enough for tests.
pub fn bidder_env(
    redis: &impl TestRedis,
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
        ("AUCTION_SIM_DURATION_MS", "600000".into()),
        ("AUCTION_SIM_LIMIT_RANGE_CENTS", "1000000000000".into()),
        ("AUCTION_RATE_LIMIT_PER_S", "1000000".into()),
        ("AUCTION_RATE_LIMIT_BURST", "1000000".into()),
        ("AUCTION_ADDRESS_RATE_LIMIT_PER_S", "1000000".into()),
        ("AUCTION_ADDRESS_RATE_LIMIT_BURST", "1000000".into()),
        ("AUCTION_SESSION_RATE_LIMIT_PER_S", "1000000".into()),
        ("AUCTION_SESSION_RATE_LIMIT_BURST", "1000000".into()),
        session_secret_env(),
    ]
}
