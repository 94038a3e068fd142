//! Acknowledged means replicated: with `AUCTION_REDIS_MIN_REPLICAS_ACK`, a
//! bid is answered 201 only once a replica holds it; until then 503 with
//! Retry-After, and the retry with the same Idempotency-Key gets the one
//! bid, never a second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use test_support::auctions::Terms;
use test_support::{RedisServer, ServiceProcess, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_no_replica_confirmed_is_503_and_its_retry_is_201_once_a_replica_has_it() {
    let primary = RedisServer::start();
    let bidder = ServiceProcess::start(
        "bidder",
        &[
            ("AUCTION_REDIS_URL", primary.url()),
            ("AUCTION_SIMULATE", "false".into()),
            ("AUCTION_REDIS_MIN_REPLICAS_ACK", "1".into()),
            ("AUCTION_REDIS_ACK_TIMEOUT_MS", "200".into()),
            test_support::session_secret_env(),
        ],
    );
    let terms = Terms {
        min_increment: 1,
        ..Terms::open_for(3_600_000)
    };
    test_support::auctions::create_with(&primary.url(), &["acked".into()], terms).await;
    let http = reqwest::Client::new();
    let token = test_support::guest_token("Ann");
    let bid = || {
        http.post(format!("{}/auctions/acked/bids", bidder.url()))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", "only-once")
            .body(r#"{"amount":500}"#)
            .send()
    };

    // No replica: applied on the primary, but not acknowledged.
    let refused = bid().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let json: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(json["error"], "not_replicated");
    assert_eq!(primary.stream("acked").len(), 1);

    // A replica catches up; the client's retry gets the same bid, now 201.
    let replica = RedisServer::start();
    replica.command(&format!("REPLICAOF 127.0.0.1 {}", primary.port()));
    tokio::task::block_in_place(|| {
        wait_for("the replica to sync", Duration::from_secs(20), || {
            replica
                .command("INFO replication")
                .contains("master_link_status:up")
                .then_some(())
        });
    });
    let accepted = bid().await.unwrap();
    assert_eq!(accepted.status(), 201);
    let json: serde_json::Value = accepted.json().await.unwrap();
    let stream = primary.stream("acked");
    assert_eq!(stream.len(), 1, "the retry appended nothing");
    assert_eq!(json["id"], stream[0].id.as_str());
    assert_eq!(replica.stream("acked"), stream, "the replica holds the bid");
}
