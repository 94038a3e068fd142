//! How the services reach Redis: over TLS (`rediss://`), and as an ACL
//! user with a password.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bids_flow_through_a_tls_only_redis() {
    let redis = RedisServer::start_tls();
    assert!(redis.url().starts_with("rediss://"));
    bids_reach_a_watcher(redis.url(), "tls", &[100]).await;
    assert_eq!(
        redis.stream("tls").len(),
        1,
        "the stream is read over TLS too"
    );
}

/// The edge's pub/sub connection is its own (not redis-rs's) on plain
/// TCP: it must authenticate as the URL's user, or it may not subscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bids_flow_through_a_redis_that_lets_only_a_named_user_use_channels() {
    let redis = RedisServer::start();
    let user = redis.command("ACL SETUSER fanout on >s3cret ~* &* +@all");
    assert!(user.starts_with("+OK"), "{user}");
    // Without logging in as `fanout`, no channel may be published or
    // subscribed to.
    let default = redis.command("ACL SETUSER default resetchannels");
    assert!(default.starts_with("+OK"), "{default}");
    let url = format!("redis://fanout:s3cret@127.0.0.1:{}", redis.port());
    bids_reach_a_watcher(url, "acl", &[100, 110]).await;
}

/// The bidder and an SSE edge on Redis at `url`: the auction `id` is
/// created in Redis, a client watches it, and each bid of `amounts`
/// (placed after the one before reached the client) reaches the client.
async fn bids_reach_a_watcher(url: String, id: &str, amounts: &[u64]) {
    test_support::auctions::create(&url, &[id.to_owned()], 600_000).await;
    let env = [
        ("AUCTION_REDIS_URL", url),
        ("AUCTION_SIMULATE", "false".to_owned()),
        test_support::session_secret_env(),
    ];
    let bidder = ServiceProcess::start("bidder", &env);
    let edge = ServiceProcess::start("sse-edge", &env);
    let http = reqwest::Client::new();
    let stream = http
        .get(format!("{}/auctions/{id}/events", edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200, "the edge subscribed");
    let mut events = stream.bytes_stream().eventsource();
    assert_eq!(events.next().await.unwrap().unwrap().event, "init");
    for amount in amounts {
        let placed = http
            .post(format!("{}/auctions/{id}/bids", bidder.url()))
            .bearer_auth(test_support::guest_token("reached"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"amount":{amount}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), 201);
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.event, "bid");
        assert!(
            event.data.contains("\"bidder\":\"reached\"")
                && event.data.contains(&format!("\"amount\":{amount}")),
            "{}",
            event.data
        );
    }
}
