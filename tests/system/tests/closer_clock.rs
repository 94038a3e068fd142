//! The closer picks due auctions by Redis's clock, the one the close
//! itself checks: bidders whose own clocks run behind still close each
//! auction on time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use test_support::{RedisServer, ServiceProcess, wait_for};

/// The ms part of a stream id (Redis's clock when it was appended).
fn id_ms(id: &str) -> u64 {
    id.split('-').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidders_three_seconds_behind_close_auctions_within_half_a_second_of_their_end() {
    let redis = RedisServer::start();
    let mut env = test_support::bidder_env(&redis, "", 1000);
    env.push(("AUCTION_TEST_CLOCK_BEHIND_MS", "3000".into()));
    let bidders: Vec<ServiceProcess> = (0..2)
        .map(|_| ServiceProcess::start("bidder", &env))
        .collect();
    let ids: Vec<String> = (0..4).map(|i| format!("skewed-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        test_support::auctions::create(
            &redis.url(),
            std::slice::from_ref(id),
            1500 + 300 * i as u64,
        )
        .await;
    }
    for id in &ids {
        // Ends within 2.4 s; a close by the bidders' clocks would come 3 s
        // after the end.
        let closed = tokio::task::block_in_place(|| {
            wait_for("the auction's close", Duration::from_secs(15), || {
                redis
                    .stream(id)
                    .into_iter()
                    .find(|entry| entry.kind == "closed")
            })
        });
        let data: serde_json::Value = serde_json::from_str(&closed.data).unwrap();
        let ends_at = data["auction"]["ends_at"].as_u64().unwrap();
        let closed_at = id_ms(&closed.id);
        assert!(
            closed_at >= ends_at && closed_at - ends_at < 500,
            "{id} ended at {ends_at} and closed at {closed_at} ({} ms late)",
            closed_at.saturating_sub(ends_at)
        );
    }
    // Each close's lag is observed once, by the replica that closed it.
    // The replica observes it when Redis answers the close, which can be
    // just after the `closed` entry is readable: wait for four, then check
    // there are not more.
    let closes = tokio::task::block_in_place(|| {
        wait_for("four close lags observed", Duration::from_secs(10), || {
            let closes: f64 = bidders
                .iter()
                .map(|bidder| bidder.metric("auction_close_lag_seconds_count"))
                .sum();
            (closes >= 4.0).then_some(closes)
        })
    });
    assert_eq!(closes, 4.0);
}
