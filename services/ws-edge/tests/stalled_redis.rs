//! A bid's outcome is never misreported, against real processes: while
//! Redis is frozen (SIGSTOP) a bid sent to it may still run when Redis
//! resumes, so no client may be told it was refused. Bids go through both
//! client paths the pages use: HTTP with a token and an `Idempotency-Key`
//! (retried with the same key, as `web/common.js` does) and a socket of
//! ws-edge (retried with the same `ref`, or the same `idempotency_key` on
//! another socket). After SIGCONT every bid is in the stream exactly once
//! and every client's final answer says what happened to its bid.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Ws, connect, create_auction, next_json, send, start_edge, ws_url};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess, bidder_env, guest_token};
use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
const AUCTION: &str = "stall";

/// One HTTP bid the way the pages place it: `{status, body}` of one attempt
/// (status 0: no HTTP answer at all).
async fn post_bid(
    http: &reqwest::Client,
    bidder: &str,
    token: &str,
    key: &str,
    amount: u64,
) -> (u16, Value) {
    let response = http
        .post(format!("{bidder}/auctions/{AUCTION}/bids"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({ "amount": amount }))
        .send()
        .await;
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Whether an answer is definite: it says what became of the bid. The
/// pages retry the others (no answer, `bid_outcome_unknown`,
/// `redis_unavailable`) with the same key.
fn definite(status: u16) -> bool {
    status != 0 && status != 503
}

/// The answer on `ws` to the bid with `reference`, skipping events.
async fn answer(ws: &mut Ws, reference: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = next_json(ws, left).await.expect("an answer to the bid");
        if message["ref"] == reference {
            return message;
        }
    }
}

async fn signed_in_socket(edge: &ServiceProcess, token: &str) -> Ws {
    let mut ws = connect(&ws_url(edge)).await;
    send(&mut ws, json!({"type": "auth", "token": token})).await;
    let reply = next_json(&mut ws, 10 * SECOND)
        .await
        .expect("an auth reply");
    assert_eq!(reply["type"], "authenticated", "{reply}");
    ws
}

/// What a client was finally told: `Some(event id)` accepted, `None`
/// refused (too low).
type Told = Option<String>;

fn told_from_http(status: u16, body: &Value) -> Told {
    match status {
        201 => Some(body["id"].as_str().expect("an id").to_owned()),
        409 => {
            assert_eq!(body["error"], "bid_too_low", "{body}");
            None
        }
        _ => panic!("not a definite answer: {status} {body}"),
    }
}

fn told_from_socket(reply: &Value) -> Told {
    match reply["type"].as_str() {
        Some("ack") => Some(reply["id"].as_str().expect("an id").to_owned()),
        _ => {
            assert_eq!(reply["error"], "bid_too_low", "{reply}");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bids_sent_while_redis_is_frozen_are_placed_once_and_reported_truthfully() {
    let redis = RedisServer::start();
    let bidder = ServiceProcess::start("bidder", &bidder_env(&redis, "", 1000));
    let edge = start_edge(&redis, Some(&bidder), &[]);
    let bidder_url = bidder.url();
    let http = reqwest::Client::builder()
        .timeout(10 * SECOND)
        .build()
        .unwrap();
    create_auction(&redis, AUCTION).await;

    // Every path is warm (connections open) before Redis freezes, as in
    // production: the bid's script is then sent and queued in Redis.
    let warm_token = guest_token("Warm");
    let (status, _) = post_bid(&http, &bidder_url, &warm_token, "warm", 1000).await;
    assert_eq!(status, 201);
    let mut by_ref = signed_in_socket(&edge, &guest_token("Socket by ref")).await;
    let key_token = guest_token("Socket by key");
    let mut by_key = signed_in_socket(&edge, &key_token).await;
    let bid_message = |reference: &str, amount: u64, key: Option<&str>| {
        let mut message = json!({"type":"bid","auction":AUCTION,"amount":amount,"ref":reference});
        if let Some(key) = key {
            message["idempotency_key"] = json!(key);
        }
        message
    };
    send(&mut by_ref, bid_message("warm", 1100, None)).await;
    assert_eq!(
        answer(&mut by_ref, "warm", 10 * SECOND).await["type"],
        "ack"
    );

    // Amounts are distinct, so each bid in the stream names its client.
    let http_bids: Vec<(String, String, u64)> = (0..4)
        .map(|n| {
            (
                guest_token(&format!("Page {n}")),
                format!("page-key-{n}"),
                5000 + 1000 * n,
            )
        })
        .collect();
    let (socket_ref_amount, socket_key_amount) = (20_000, 30_000);

    redis.pause();
    let frozen_at = Instant::now();
    send(&mut by_ref, bid_message("r1", socket_ref_amount, None)).await;
    send(
        &mut by_key,
        bid_message("k1", socket_key_amount, Some("socket-key-1")),
    )
    .await;
    let first_http = futures_util::future::join_all(
        http_bids
            .iter()
            .map(|(token, key, amount)| post_bid(&http, &bidder_url, token, key, *amount)),
    )
    .await;
    // Each was sent to Redis and not answered: its outcome is unknown, and
    // the answer says so instead of "unavailable".
    for (status, body) in &first_http {
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["error"], "bid_outcome_unknown", "{body}");
    }
    let first_ref = answer(&mut by_ref, "r1", 10 * SECOND).await;
    let first_key = answer(&mut by_key, "k1", 10 * SECOND).await;
    for reply in [&first_ref, &first_key] {
        assert_eq!(reply["error"], "bid_outcome_unknown", "{reply}");
    }
    assert!(
        frozen_at.elapsed() < 8 * SECOND,
        "a socket's bid is answered within its 5 s budget"
    );
    redis.unpause();

    // Retries with the same keys learn the real outcome.
    let mut told: HashMap<u64, Told> = HashMap::new();
    for ((token, key, amount), (mut status, mut body)) in http_bids.iter().zip(first_http) {
        let deadline = Instant::now() + 20 * SECOND;
        while !definite(status) {
            assert!(Instant::now() < deadline, "no definite answer for {key}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            (status, body) = post_bid(&http, &bidder_url, token, key, *amount).await;
        }
        told.insert(*amount, told_from_http(status, &body));
    }
    send(&mut by_ref, bid_message("r1", socket_ref_amount, None)).await;
    let reply = answer(&mut by_ref, "r1", 10 * SECOND).await;
    told.insert(socket_ref_amount, told_from_socket(&reply));
    // The same key from a new socket (the page reconnected) is the same bid.
    drop(by_key);
    let mut reconnected = signed_in_socket(&edge, &key_token).await;
    send(
        &mut reconnected,
        bid_message("k2", socket_key_amount, Some("socket-key-1")),
    )
    .await;
    let reply = answer(&mut reconnected, "k2", 10 * SECOND).await;
    told.insert(socket_key_amount, told_from_socket(&reply));

    // The stream holds each accepted bid once, under the id its client was
    // told, and none of the bids its client was told were refused.
    let in_stream: Vec<(String, u64)> = redis
        .stream(AUCTION)
        .into_iter()
        .filter(|entry| entry.kind == "bid")
        .map(|entry| {
            let bid: Value = serde_json::from_str(&entry.data).unwrap();
            (entry.id, bid["amount"].as_u64().unwrap())
        })
        .collect();
    for (amount, told) in &told {
        let ids: Vec<&String> = in_stream
            .iter()
            .filter(|(_, a)| a == amount)
            .map(|(id, _)| id)
            .collect();
        match told {
            Some(id) => assert_eq!(ids, vec![id], "bid of {amount}: told {id}"),
            None => assert!(ids.is_empty(), "bid of {amount} told too low is in {ids:?}"),
        }
    }
    assert!(
        told.values().any(Option::is_some),
        "at least the first bid to run is accepted"
    );
}
