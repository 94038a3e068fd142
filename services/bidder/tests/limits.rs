//! Limits that identities cannot dodge, against a real bidder and Redis:
//! sessions are free, so one address minting many and bidding across them
//! is held to the address's rate, while other addresses are served; and a
//! flood of distinct clients never resets an established client's bucket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Stack, answer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

async fn new_session(stack: &Stack, from: &str, name: &str) -> (u16, String, Option<u64>, String) {
    let response = stack
        .http
        .post(stack.url("/sessions"))
        .header("x-forwarded-for", from)
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"{name}"}}"#))
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let (status, json) = common::status_and_json(response).await;
    let token = json["token"].as_str().unwrap_or_default().to_owned();
    let code = json["error"].as_str().unwrap_or_default().to_owned();
    (status, code, retry_after, token)
}

async fn bid(stack: &Stack, from: &str, token: &str, amount: u64) -> (u16, String, Option<u64>) {
    let response = stack
        .http
        .post(stack.url("/auctions/farm/bids"))
        .header("x-forwarded-for", from)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(format!(r#"{{"amount":{amount}}}"#))
        .send()
        .await
        .unwrap();
    answer(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_farm_on_one_address_is_held_to_the_address_rate() {
    const ADDRESS_RATE: f64 = 20.0;
    const ADDRESS_BURST: f64 = 40.0;
    const SESSION_RATE: f64 = 1.0;
    const SESSION_BURST: f64 = 10.0;
    let stack = Stack::start(
        1,
        &[
            // The test's requests come from loopback, a trusted proxy by
            // default: each request names its client address.
            ("AUCTION_TRUST_FORWARDED_FOR", "true".into()),
            ("AUCTION_RATE_LIMIT_PER_S", "50".into()),
            ("AUCTION_RATE_LIMIT_BURST", "100".into()),
            ("AUCTION_ADDRESS_RATE_LIMIT_PER_S", "20".into()),
            ("AUCTION_ADDRESS_RATE_LIMIT_BURST", "40".into()),
            ("AUCTION_SESSION_RATE_LIMIT_PER_S", "1".into()),
            ("AUCTION_SESSION_RATE_LIMIT_BURST", "10".into()),
        ],
    );
    stack.create_auction("farm", 1_000, 1, 600_000).await;
    let farm = "203.0.113.7";

    // Sessions: one address mints until refused.
    let started = Instant::now();
    let mut tokens = Vec::new();
    let mut refused = None;
    for n in 0..100 {
        let (status, code, retry_after, token) =
            new_session(&stack, farm, &format!("Farm {n}")).await;
        match status {
            201 => tokens.push(token),
            429 => {
                refused = Some((code, retry_after));
                break;
            }
            other => panic!("POST /sessions answered {other} {code}"),
        }
    }
    let allowed = SESSION_BURST + SESSION_RATE * started.elapsed().as_secs_f64() + 1.0;
    let (code, retry_after) = refused.expect("minting sessions from one address is refused");
    assert_eq!(code, "rate_limited");
    assert!(
        retry_after.is_some_and(|s| s >= 1),
        "429 carries Retry-After"
    );
    assert!(
        tokens.len() as f64 <= allowed,
        "{} sessions minted, at most {allowed} allowed",
        tokens.len()
    );
    assert!(tokens.len() >= 2, "a burst of sessions is allowed");

    // Bids round-robin across them: each session alone may make 100 at
    // once, all of them 100 times that, but the address is held to its rate.
    let started = Instant::now();
    let mut served = 0u32;
    let mut limited = 0u32;
    for n in 0..400u64 {
        let token = &tokens[n as usize % tokens.len()];
        let (status, code, retry_after) = bid(&stack, farm, token, 1_000 + n).await;
        match status {
            201 | 409 => served += 1,
            429 => {
                assert_eq!(code, "rate_limited");
                assert!(
                    retry_after.is_some_and(|s| s >= 1),
                    "429 carries Retry-After"
                );
                limited += 1;
            }
            other => panic!("a bid answered {other} {code}"),
        }
    }
    let allowed = ADDRESS_BURST + ADDRESS_RATE * started.elapsed().as_secs_f64() + 1.0;
    assert!(
        limited > 0,
        "the farm's bids are refused at the address's rate"
    );
    assert!(
        f64::from(served) <= allowed,
        "{served} bids served from one address, at most {allowed} allowed"
    );

    // Another address is served meanwhile: its session and its bid.
    let other = "198.51.100.20";
    let (status, code, _, token) = new_session(&stack, other, "Neighbour").await;
    assert_eq!(status, 201, "{code}");
    let (status, code, _) = bid(&stack, other, &token, 10_000).await;
    assert_eq!(status, 201, "another address bids: {code}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_name_its_own_address() {
    let stack = Stack::start(
        1,
        &[
            ("AUCTION_TRUST_FORWARDED_FOR", "true".into()),
            // Loopback (the test) is not a trusted proxy here.
            ("AUCTION_TRUSTED_PROXIES", "10.0.0.0/8".into()),
            ("AUCTION_SESSION_RATE_LIMIT_PER_S", "1".into()),
            ("AUCTION_SESSION_RATE_LIMIT_BURST", "3".into()),
        ],
    );
    // A new made-up address each time: all of them are the peer's.
    let mut statuses = Vec::new();
    for n in 0..6 {
        let (status, _, _, _) = new_session(&stack, &format!("192.0.2.{n}"), "Mallory").await;
        statuses.push(status);
    }
    assert_eq!(&statuses[..3], [201, 201, 201]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
}

/// Through the binary: one established client's spent bucket is not
/// refilled by 101,000 other clients arriving (each a distinct address,
/// named by a trusted `X-Forwarded-For`, each with a refused token, which
/// is charged to its address). The table holds 100,000 clients; the rest
/// wait with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_other_addresses_leave_an_established_bucket_spent() {
    const BURST: usize = 1000;
    const TABLE: usize = 100_000;
    const OTHERS: usize = TABLE + 1_000;
    let stack = Stack::start(
        1,
        &[
            ("AUCTION_TRUST_FORWARDED_FOR", "true".into()),
            // One token a second: the burst does not come back within the test.
            ("AUCTION_ADDRESS_RATE_LIMIT_PER_S", "1".into()),
            ("AUCTION_ADDRESS_RATE_LIMIT_BURST", BURST.to_string()),
        ],
    );
    let url = stack.url("/auctions/farm/bids");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // No body: a refused request leaves nothing unread, so the connection
    // is kept and 100,000 requests need no 100,000 connections.
    let refused_token = |from: String| {
        http.post(&url)
            .header("x-forwarded-for", from)
            .bearer_auth("not-a-token")
            .send()
    };
    let established = "203.0.113.1".to_owned();
    let drained_at = Instant::now();
    let mut spent = 0;
    loop {
        let (status, code, _) = answer(refused_token(established.clone()).await.unwrap()).await;
        match status {
            401 => spent += 1,
            429 => break,
            other => panic!("answered {other} {code}"),
        }
        assert!(spent <= BURST + 100, "the address is never limited");
    }
    assert!(spent >= BURST, "the whole burst is allowed first");

    let flood_started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let unauthorized = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..32 {
        let (next, unauthorized, limited) = (next.clone(), unauthorized.clone(), limited.clone());
        let (http, url) = (http.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= OTHERS {
                    return;
                }
                // 10.x.y.z: a distinct address for each n.
                let from = format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255);
                let response = http
                    .post(&url)
                    .header("x-forwarded-for", from)
                    .bearer_auth("not-a-token")
                    .send()
                    .await
                    .unwrap();
                let (status, code, retry_after) = answer(response).await;
                match status {
                    401 => unauthorized.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        assert_eq!(code, "rate_limited");
                        assert!(retry_after.is_some_and(|s| s >= 1));
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    other => panic!("answered {other} {code}"),
                };
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    eprintln!(
        "{OTHERS} other addresses in {:.1} s",
        flood_started.elapsed().as_secs_f64()
    );
    // The table was full: the established client and 99,999 others; the
    // rest were told to wait.
    assert_eq!(unauthorized.load(Ordering::Relaxed), TABLE - 1);
    assert_eq!(limited.load(Ordering::Relaxed), OTHERS - (TABLE - 1));

    // The established client has only what its rate refilled since it
    // was drained, not a fresh burst.
    let mut served = 0;
    loop {
        let (status, code, _) = answer(refused_token(established.clone()).await.unwrap()).await;
        match status {
            401 => served += 1,
            429 => break,
            other => panic!("answered {other} {code}"),
        }
        assert!(served <= BURST, "the established bucket was reset");
    }
    let refilled = drained_at.elapsed().as_secs_f64() + 1.0;
    assert!(
        served as f64 <= refilled,
        "{served} served after the flood, at most {refilled} refilled"
    );
}
