//! Redis at `maxmemory` (noeviction): bids and creations are refused with
//! the documented 503 `redis_out_of_memory` and `Retry-After`, counted in
//! `auction_redis_out_of_memory_refusals_total`; once memory frees, the
//! same bidder serves them again, no restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use test_support::auctions::Terms;
use test_support::{RedisServer, ServiceProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_maxmemory_writes_are_refused_as_out_of_memory_and_resume_when_it_frees() {
    let redis = RedisServer::start();
    let bidder = ServiceProcess::start("bidder", &test_support::bidder_env(&redis, "", 1000));
    let terms = Terms {
        min_increment: 1,
        ..Terms::open_for(3_600_000)
    };
    test_support::auctions::create_with(&redis.url(), &["full".into()], terms).await;
    let http = reqwest::Client::new();
    let token = test_support::guest_token("Ann");
    let seller = test_support::seller_token();
    let bid = |amount: u64| {
        http.post(format!("{}/auctions/full/bids", bidder.url()))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("k-{amount}"))
            .body(format!(r#"{{"amount":{amount}}}"#))
            .send()
    };
    let create = || {
        http.post(format!("{}/auctions", bidder.url()))
            .bearer_auth(&seller)
            .header("content-type", "application/json")
            .body(r#"{"title":"Lot","starting_price":100,"min_increment":10,"duration_ms":60000}"#)
            .send()
    };
    assert_eq!(bid(500).await.unwrap().status(), 201);

    fill(&redis);

    for refused in [bid(600).await.unwrap(), create().await.unwrap()] {
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "5");
        let json: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(json["error"], "redis_out_of_memory", "{json}");
    }
    assert_eq!(
        redis.stream("full").len(),
        1,
        "the refused bid was not placed"
    );
    assert_eq!(
        bidder.metric("auction_redis_out_of_memory_refusals_total"),
        2.0
    );
    // Still ready: Redis answers, it is full.
    assert!(bidder.answers("/readyz", 200));

    // Memory frees: the same bidder serves again.
    redis.command("CONFIG SET maxmemory 0");
    let placed = bid(600).await.unwrap();
    assert_eq!(placed.status(), 201);
    assert_eq!(create().await.unwrap().status(), 201);
    assert_eq!(redis.stream("full").len(), 2);
}

/// Fills Redis past a small `maxmemory` (noeviction): every write is
/// refused with OOM from here. Well over it, not at its edge: a freed
/// query buffer would let a small write in.
fn fill(redis: &RedisServer) {
    redis.command("CONFIG SET maxmemory-policy noeviction");
    let used: u64 = redis
        .command("INFO memory")
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    redis.command(&format!("CONFIG SET maxmemory {}", used + 1_000_000));
    let mut filled = 0;
    while !redis
        .command(&format!("SET filler-{filled} {}", "x".repeat(10_000)))
        .contains("OOM")
    {
        filled += 1;
        assert!(filled < 1_000, "maxmemory never reached");
    }
    redis.command(&format!("CONFIG SET maxmemory {}", used / 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_maxmemory_new_viewers_are_told_out_of_memory_and_served_when_it_frees() {
    use test_support::conn::{Conn, Received, Transport};
    let redis = RedisServer::start();
    let terms = Terms::open_for(3_600_000);
    test_support::auctions::create_with(&redis.url(), &["seen".into()], terms).await;
    let edges: Vec<(Transport, ServiceProcess)> = Transport::BOTH
        .into_iter()
        .map(|transport| {
            let edge = ServiceProcess::start(
                transport.binary(),
                &[
                    ("AUCTION_REDIS_URL", redis.url()),
                    test_support::session_secret_env(),
                ],
            );
            (transport, edge)
        })
        .collect();
    // Ready before Redis fills, so that "still ready" below means it.
    for (transport, edge) in &edges {
        test_support::wait_for(
            &format!("{transport:?} edge to be ready"),
            std::time::Duration::from_secs(10),
            || edge.answers("/readyz", 200).then_some(()),
        );
    }
    fill(&redis);
    for (transport, edge) in &edges {
        let mut conn = Conn::open(*transport, edge.addr, "seen", None, None).await;
        let first = conn.next(std::time::Duration::from_secs(10)).await;
        assert_eq!(
            first,
            Some(Received::Refused("redis_out_of_memory".into())),
            "{transport:?}: {}",
            edge.logs()
        );
        assert_eq!(
            edge.metric("auction_redis_out_of_memory_refusals_total"),
            1.0
        );
        assert!(edge.answers("/readyz", 200), "{transport:?}: still ready");
    }
    redis.command("CONFIG SET maxmemory 0");
    for (transport, edge) in &edges {
        let mut conn = Conn::open(*transport, edge.addr, "seen", None, None).await;
        let first = conn.next(std::time::Duration::from_secs(10)).await;
        assert!(
            matches!(first, Some(Received::Init { .. })),
            "{transport:?}: served again: {first:?}"
        );
    }
}
