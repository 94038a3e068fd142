//! Helpers for the sse-edge end-to-end tests: real redis-server, bidder
//! and edge processes, and an SSE client that behaves like a browser's
//! EventSource (reconnects with Last-Event-ID), built on a standard parser.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use test_support::{RedisServer, ServiceProcess};
pub use test_support::{Seen, bidder_env};

pub fn edge_env(
    redis: &RedisServer,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AUCTION_REDIS_URL", redis.url()),
        ("AUCTION_SSE_RETRY_MS", "50".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

pub fn start_edge(redis: &RedisServer, extra: &[(&'static str, &str)]) -> ServiceProcess {
    ServiceProcess::start("sse-edge", &edge_env(redis, extra))
}

pub use test_support::clients::{sse_follow as follow, sse_follow_from as follow_from};

/// Asserts that `seen` received exactly the stream's events after its
/// first init and up to its last id.
pub fn assert_exact(redis: &RedisServer, auction: &str, seen: &Seen) {
    seen.assert_exact(redis, auction);
}

/// The newest id of the auction's stream.
pub fn stream_head(redis: &RedisServer, auction: &str) -> String {
    redis
        .stream(auction)
        .last()
        .map(|e| e.id.clone())
        .unwrap_or_else(|| "0-0".into())
}
