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
    let env = [
        ("AUCTION_REDIS_URL", redis.url()),
        ("AUCTION_SIMULATE", "false".to_owned()),
        test_support::session_secret_env(),
    ];
    let bidder = ServiceProcess::start("bidder", &env);
    let edge = ServiceProcess::start("sse-edge", &env);
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/auctions", bidder.url()))
        .bearer_auth(test_support::seller_token())
        .header("content-type", "application/json")
        .body(r#"{"id":"tls","title":"Safe","starting_price":100,"min_increment":10,"duration_ms":600000}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let stream = http
        .get(format!("{}/auctions/tls/events", edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut events = stream.bytes_stream().eventsource();
    assert_eq!(events.next().await.unwrap().unwrap().event, "init");
    let placed = http
        .post(format!("{}/auctions/tls/bids", bidder.url()))
        .bearer_auth(test_support::guest_token("secure"))
        .header("content-type", "application/json")
        .body(r#"{"amount":100}"#)
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
    assert!(event.data.contains("\"bidder\":\"secure\""));
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
    let env = [
        ("AUCTION_REDIS_URL", url),
        ("AUCTION_SIMULATE", "false".to_owned()),
        test_support::session_secret_env(),
    ];
    let bidder = ServiceProcess::start("bidder", &env);
    let edge = ServiceProcess::start("sse-edge", &env);
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/auctions", bidder.url()))
        .bearer_auth(test_support::seller_token())
        .header("content-type", "application/json")
        .body(r#"{"id":"acl","title":"Named","starting_price":100,"min_increment":10,"duration_ms":600000}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let stream = http
        .get(format!("{}/auctions/acl/events", edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stream.status(),
        200,
        "the edge subscribed as the URL's user"
    );
    let mut events = stream.bytes_stream().eventsource();
    assert_eq!(events.next().await.unwrap().unwrap().event, "init");
    for amount in [100, 110] {
        let placed = http
            .post(format!("{}/auctions/acl/bids", bidder.url()))
            .bearer_auth(test_support::guest_token("named"))
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
            event.data.contains(&format!("\"amount\":{amount}")),
            "{}",
            event.data
        );
    }
}
