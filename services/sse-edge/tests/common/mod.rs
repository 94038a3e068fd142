//! Helpers for the sse-edge end-to-end tests: real redis-server, bidder
//! and edge processes, and an SSE client that behaves like a browser's
//! EventSource (reconnects with Last-Event-ID), built on a standard parser.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use std::time::Duration;
pub use test_support::Seen;
use test_support::{RedisServer, ServiceProcess};

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

/// Follows an auction like EventSource: on every end or error it reconnects
/// (to the next URL of `edges` when one refuses) with Last-Event-ID, until
/// `done` says so or `timeout` passes (then it returns what it saw).
pub async fn follow(
    edges: &[String],
    auction: &str,
    timeout: Duration,
    done: impl FnMut(&Seen) -> bool,
) -> Seen {
    follow_from(edges, auction, None, timeout, done).await
}

/// [`follow`], starting from the resume point `last` (as a reconnecting
/// EventSource would).
pub async fn follow_from(
    edges: &[String],
    auction: &str,
    last: Option<String>,
    timeout: Duration,
    mut done: impl FnMut(&Seen) -> bool,
) -> Seen {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut seen = Seen {
        last,
        ..Seen::default()
    };
    let mut edge = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline && !done(&seen) {
        let url = format!("{}/auctions/{auction}/events", edges[edge % edges.len()]);
        let mut request = http.get(&url);
        if let Some(last) = &seen.last {
            request = request.header("Last-Event-ID", last);
        }
        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Ok(Ok(response)) if response.status() == 200 => response,
            Ok(Ok(response)) => {
                seen.refusals.push(response.status().as_u16());
                edge += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Ok(Err(_)) => {
                edge += 1; // connection refused: this replica is gone
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(_) => break,
        };
        let mut events = response.bytes_stream().eventsource();
        loop {
            // Wake up now and then so `done` is asked even when nothing arrives.
            let wake = (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline);
            let next = tokio::time::timeout_at(wake, events.next()).await;
            let event = match next {
                Ok(Some(Ok(event))) => event,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    if done(&seen) {
                        return seen;
                    }
                    continue;
                }
                _ => break,
            };
            match event.event.as_str() {
                "init" => {
                    let json: serde_json::Value = serde_json::from_str(&event.data).unwrap();
                    seen.inits
                        .push((event.id.clone(), json["reset"].as_bool().unwrap()));
                }
                _ => seen.ids.push(event.id.clone()),
            }
            if !event.id.is_empty() {
                seen.last = Some(event.id.clone());
            }
            if done(&seen) {
                return seen;
            }
        }
        seen.reconnects += 1;
    }
    seen
}

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
