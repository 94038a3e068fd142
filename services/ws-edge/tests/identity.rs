//! Bidding over a socket as its signed-in user, against real processes: a
//! socket bids only after `auth`, its bids carry its user (never a name in
//! the message), and each user has their own rate limit at the bidder even
//! though every socket's bid arrives from the same ws-edge.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{connect, create_auction, next_json, send, sign_in, start_edge, ws_url};
use serde_json::{Value, json};
use std::time::Duration;
use test_support::idp::{self, guest_claims, now_s};
use test_support::{RedisServer, ServiceProcess, TEST_SESSION_SECRET, guest_token};

const SECOND: Duration = Duration::from_secs(1);

/// The answer to the bid with `reference`, skipping events.
async fn answer(ws: &mut common::Ws, reference: &str) -> Value {
    loop {
        let message = next_json(ws, 10 * SECOND).await.expect("an answer");
        if message["ref"] == reference {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_bids_only_as_its_signed_in_user() {
    let redis = RedisServer::start();
    let bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "", 1000));
    let edge = start_edge(&redis, Some(&bidder), &[]);
    create_auction(&redis, "vase").await;
    let mut ws = connect(&ws_url(&edge)).await;

    let bid = |reference: &str| json!({"type":"bid","auction":"vase","amount":5000,"bidder":"Someone Else","ref":reference});
    send(&mut ws, bid("before")).await;
    let reply = answer(&mut ws, "before").await;
    assert_eq!(reply["error"], "missing_token", "{reply}");

    let expired = idp::hs256_token(
        TEST_SESSION_SECRET.as_bytes(),
        "guest",
        &guest_claims("g_expired", now_s() - 3600),
    );
    let forged = idp::hs256_token(
        b"another secret that is long enough!!",
        "guest",
        &guest_claims("g_forged", now_s() + 3600),
    );
    let unsigned = idp::unsigned_token(&guest_claims("g_none", now_s() + 3600));
    let mut not_yet = guest_claims("g_not_yet", now_s() + 7200);
    not_yet["nbf"] = json!(now_s() + 3600);
    let not_yet = idp::hs256_token(TEST_SESSION_SECRET.as_bytes(), "guest", &not_yet);
    for (token, code) in [
        (not_yet, "invalid_token"),
        (expired, "token_expired"),
        (forged, "invalid_token"),
        (unsigned, "invalid_token"),
        ("garbage".to_owned(), "invalid_token"),
    ] {
        send(&mut ws, json!({"type":"auth","token":token})).await;
        let reply = next_json(&mut ws, 5 * SECOND).await.unwrap();
        assert_eq!(
            (reply["type"].as_str(), reply["error"].as_str()),
            (Some("error"), Some(code)),
            "{reply}"
        );
        send(&mut ws, bid("refused")).await;
        let reply = answer(&mut ws, "refused").await;
        assert_eq!(reply["error"], "missing_token", "{reply}");
    }
    assert!(redis.stream("vase").is_empty(), "nothing was written");

    let me = sign_in(&mut ws, "Ada").await;
    assert_eq!(me["name"], "Ada");
    let bidder_id = me["bidder_id"].as_str().unwrap().to_owned();
    assert!(bidder_id.starts_with("g_"), "{me}");
    send(&mut ws, bid("signed-in")).await;
    let reply = answer(&mut ws, "signed-in").await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let stream = redis.stream("vase");
    assert_eq!(stream.len(), 1);
    let data: Value = serde_json::from_str(&stream[0].data).unwrap();
    assert_eq!(data["bidder"], "Ada");
    assert_eq!(data["bidder_id"], bidder_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_flood_does_not_use_up_another_users_bids() {
    let redis = RedisServer::start();
    let mut env = common::bidder_env(&redis, "", 1000);
    // Tight per-bidder limits at the bidder; the edge's own per-socket
    // message limit is generous, so only the bidder's limit is in play.
    env.push(("AUCTION_RATE_LIMIT_PER_S", "1".into()));
    env.push(("AUCTION_RATE_LIMIT_BURST", "5".into()));
    let bidder = ServiceProcess::start("bidder", &env);
    let edge = start_edge(
        &redis,
        Some(&bidder),
        &[
            ("AUCTION_WS_RATE_PER_S", "1000"),
            ("AUCTION_WS_RATE_BURST", "1000"),
        ],
    );
    create_auction(&redis, "vase").await;
    let url = ws_url(&edge);
    let mut flooder = connect(&url).await;
    sign_in(&mut flooder, "Flooder").await;
    let mut other = connect(&url).await;
    sign_in(&mut other, "Other").await;

    // Up to 16 bids may be in flight per socket: send 15, then read them all.
    const FLOOD: u64 = 15;
    for n in 0..FLOOD {
        send(
            &mut flooder,
            json!({"type":"bid","auction":"vase","amount":1000 + n * 100,"ref":format!("f{n}")}),
        )
        .await;
    }
    let mut limited = 0;
    for _ in 0..FLOOD {
        let reply = next_json(&mut flooder, 10 * SECOND)
            .await
            .expect("an answer");
        if reply["error"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 5,
        "the flooder hit its limit ({limited} refused)"
    );

    // The other user, on the same edge, still has their whole burst.
    for n in 0..3u64 {
        let reference = format!("o{n}");
        send(
            &mut other,
            json!({"type":"bid","auction":"vase","amount":1_000_000 + n * 100,"ref":reference}),
        )
        .await;
        let reply = answer(&mut other, &reference).await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
    // With a fresh token the flooder is another user with a fresh bucket:
    // the limit follows the user, not the socket or the address.
    send(
        &mut flooder,
        json!({"type":"auth","token":guest_token("Flooder again")}),
    )
    .await;
    assert_eq!(
        next_json(&mut flooder, 5 * SECOND).await.unwrap()["type"],
        "authenticated"
    );
}

/// A WebSocket from `client` (as nginx names it in `X-Forwarded-For`).
async fn connect_from(url: &str, client: &str) -> common::Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket connect");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_users_from_one_address_share_its_bid_limit_over_sockets() {
    const ADDRESS_RATE: f64 = 2.0;
    const ADDRESS_BURST: f64 = 10.0;
    let redis = RedisServer::start();
    let mut env = common::bidder_env(&redis, "", 1000);
    // The edge's bids name each socket's client address; the bidder
    // believes it from the edge (loopback, a trusted proxy by default).
    env.push(("AUCTION_TRUST_FORWARDED_FOR", "true".into()));
    env.push(("AUCTION_ADDRESS_RATE_LIMIT_PER_S", "2".into()));
    env.push(("AUCTION_ADDRESS_RATE_LIMIT_BURST", "10".into()));
    let bidder = ServiceProcess::start("bidder", &env);
    let edge = start_edge(
        &redis,
        Some(&bidder),
        &[
            ("AUCTION_TRUST_FORWARDED_FOR", "true"),
            ("AUCTION_WS_RATE_PER_S", "1000"),
            ("AUCTION_WS_RATE_BURST", "1000"),
        ],
    );
    create_auction(&redis, "vase").await;
    let url = ws_url(&edge);

    // Five users on one address, each with a per-bidder limit to spare.
    let mut farm = Vec::new();
    for n in 0..5 {
        let mut ws = connect_from(&url, "203.0.113.5").await;
        sign_in(&mut ws, &format!("Farm {n}")).await;
        farm.push(ws);
    }
    let started = std::time::Instant::now();
    let (mut served, mut limited) = (0u32, 0u32);
    for n in 0..40u64 {
        let ws = &mut farm[n as usize % 5];
        let reference = format!("f{n}");
        send(
            ws,
            json!({"type":"bid","auction":"vase","amount":1_000 + n * 100,"ref":reference}),
        )
        .await;
        let reply = answer(ws, &reference).await;
        if reply["type"] == "ack" || reply["error"] == "bid_too_low" {
            served += 1;
        } else {
            assert_eq!(reply["error"], "rate_limited", "{reply}");
            limited += 1;
        }
    }
    let allowed = ADDRESS_BURST + ADDRESS_RATE * started.elapsed().as_secs_f64() + 1.0;
    assert!(limited > 0, "the address's limit holds over sockets");
    assert!(
        f64::from(served) <= allowed,
        "{served} bids from one address, at most {allowed} allowed"
    );

    // A user on another address is served meanwhile.
    let mut other = connect_from(&url, "198.51.100.9").await;
    sign_in(&mut other, "Neighbour").await;
    send(
        &mut other,
        json!({"type":"bid","auction":"vase","amount":1_000_000,"ref":"o"}),
    )
    .await;
    let reply = answer(&mut other, "o").await;
    assert_eq!(reply["type"], "ack", "{reply}");
}
