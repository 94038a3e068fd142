//! Every answer tells the truth across role changes: under keyed bid load
//! with replica acknowledgement, ten `CLUSTER FAILOVER` swaps and two
//! primaries killed (SIGKILL). Every answer is compared with the streams
//! (`XRANGE`) afterwards: no bid in a stream was answered 500,
//! `redis_unavailable` or any other "not placed" answer; each
//! `not_replicated` or `bid_outcome_unknown`, retried with its
//! Idempotency-Key, resolves to exactly the one bid. Meanwhile the bidder's
//! `/readyz` goes 503 at most once per fault.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use test_support::auctions::Terms;
use test_support::{RedisCluster, ServiceProcess, wait_for};

const AUCTIONS: usize = 4;
const SWAPS: usize = 10;
const KILLS: usize = 2;
/// How long a bid whose outcome is open is retried with its key.
const RESOLVE_WITHIN: Duration = Duration::from_secs(30);

/// What one keyed bid was answered, first request and retries.
#[derive(Debug)]
struct Bid {
    amount: u64,
    /// (status, error code or the event id of a 201), in order.
    answers: Vec<(u16, String)>,
}

impl Bid {
    /// The event id, if the bid was finally answered 201.
    fn placed(&self) -> Option<&str> {
        match self.answers.last() {
            Some((201, id)) => Some(id),
            _ => None,
        }
    }
}

/// A code that leaves a bid's outcome open: retried with the same key.
fn open_outcome(code: &str) -> bool {
    matches!(code, "not_replicated" | "bid_outcome_unknown")
}

/// Bids on `auction` one after another, each with a key of its own and an
/// amount above the last, until `stop`; each bid whose outcome is open is
/// retried with its key until it resolves.
async fn bid_until(
    url: String,
    auction: String,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
) -> Vec<Bid> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = test_support::guest_token("Loader");
    let mut bids = Vec::new();
    let mut amount = 1_000;
    while !stop.load(Ordering::Relaxed) {
        amount += 1;
        let key = format!("{auction}-{amount}");
        let mut bid = Bid {
            amount,
            answers: Vec::new(),
        };
        let started = Instant::now();
        loop {
            let response = http
                .post(format!("{url}/auctions/{auction}/bids"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("idempotency-key", &key)
                .body(format!(r#"{{"amount":{amount}}}"#))
                .send()
                .await
                .expect("the bidder answers");
            let status = response.status().as_u16();
            let json: serde_json::Value = response.json().await.unwrap();
            let detail = if status == 201 {
                json["id"].as_str().unwrap().to_owned()
            } else {
                json["error"].as_str().unwrap_or("?").to_owned()
            };
            let retry = status == 503
                && (open_outcome(&detail) || (!bid.answers.is_empty() && detail != "internal"));
            bid.answers.push((status, detail));
            if status == 201 {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            if !retry {
                break;
            }
            assert!(
                started.elapsed() < RESOLVE_WITHIN,
                "bid {amount} on {auction} did not resolve: {:?}",
                bid.answers
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bids.push(bid);
        // A steady load, not a flood: the faults are what is tested.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bids
}

/// Watches `/readyz` every 25 ms until `stop`: (time, ready) at each change.
async fn watch_ready(ops: String, stop: Arc<AtomicBool>) -> Vec<(Instant, bool)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    // From its first 200 (it is unready until Redis first answers).
    let mut changes: Vec<(Instant, bool)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let ready = http
            .get(format!("{ops}/readyz"))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        if changes.last().map_or(ready, |&(_, was)| was != ready) {
            changes.push((Instant::now(), ready));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_under_keyed_load_never_answer_a_placed_bid_as_not_placed() {
    let began = Instant::now();
    let mut cluster = RedisCluster::start();
    let ids: Vec<String> = (0..AUCTIONS).map(|i| format!("swap-{i}")).collect();
    let terms = Terms {
        min_increment: 1,
        ..Terms::open_for(3_600_000)
    };
    test_support::auctions::create_with(&cluster.url(), &ids, terms).await;
    let mut env = test_support::bidder_env(&cluster, "", 1000);
    env.push(("AUCTION_REDIS_MIN_REPLICAS_ACK", "1".into()));
    let bidder = ServiceProcess::start("bidder", &env);

    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = ids
        .iter()
        .map(|id| {
            tokio::spawn(bid_until(
                bidder.url(),
                id.clone(),
                stop.clone(),
                accepted.clone(),
            ))
        })
        .collect();
    let ready_stop = Arc::new(AtomicBool::new(false));
    let readiness = tokio::spawn(watch_ready(bidder.ops_url(), ready_stop.clone()));

    // Each fault comes once the bidder is placing bids again.
    let serving_again = |accepted: &AtomicUsize| {
        let before = accepted.load(Ordering::Relaxed);
        wait_for("201s again", Duration::from_secs(30), || {
            (accepted.load(Ordering::Relaxed) >= before + AUCTIONS).then_some(())
        });
    };
    let mut faults: Vec<(Instant, Instant)> = Vec::new();
    tokio::task::block_in_place(|| {
        serving_again(&accepted);
        for swap in 0..SWAPS {
            // Round the shards: each of the three has its roles swapped.
            let port = cluster.primaries()[swap % 3];
            let start = Instant::now();
            cluster.swap_with_replica(port);
            serving_again(&accepted);
            faults.push((start, Instant::now()));
        }
        for auction in ids.iter().take(KILLS) {
            let port = cluster.primary_of_auction(auction).port;
            let start = Instant::now();
            cluster.kill(port);
            cluster.wait_for_failover(port, Duration::from_secs(30));
            cluster.restart(port);
            cluster.wait_until_healthy(Duration::from_secs(30));
            serving_again(&accepted);
            faults.push((start, Instant::now()));
        }
    });
    stop.store(true, Ordering::Relaxed);
    let mut answered: HashMap<String, Vec<Bid>> = HashMap::new();
    for (id, loader) in ids.iter().zip(loaders) {
        answered.insert(id.clone(), loader.await.unwrap());
    }
    ready_stop.store(true, Ordering::Relaxed);
    let changes = readiness.await.unwrap();

    // Every answer against the streams.
    let mut tally: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let stream: Vec<(String, u64)> = cluster
            .stream(id)
            .into_iter()
            .filter(|entry| entry.kind == "bid")
            .map(|entry| {
                let data: serde_json::Value = serde_json::from_str(&entry.data).unwrap();
                (entry.id, data["amount"].as_u64().unwrap())
            })
            .collect();
        for bid in &answered[id] {
            for (status, detail) in &bid.answers {
                let code = if *status == 201 { "201" } else { detail };
                *tally.entry(code.to_owned()).or_default() += 1;
                assert_ne!(
                    *status, 500,
                    "bid {} on {id}: {:?}",
                    bid.amount, bid.answers
                );
            }
            let held: Vec<&str> = stream
                .iter()
                .filter(|(_, amount)| *amount == bid.amount)
                .map(|(event, _)| event.as_str())
                .collect();
            match bid.placed() {
                // Answered 201 (at once or on a retry): exactly that bid.
                Some(event) => assert_eq!(
                    held,
                    [event],
                    "bid {} on {id}: {:?}",
                    bid.amount,
                    bid.answers
                ),
                // Answered "not placed" at last: nothing in the stream.
                None => assert!(
                    held.is_empty(),
                    "bid {} on {id} is in the stream ({held:?}) but was answered {:?}",
                    bid.amount,
                    bid.answers
                ),
            }
            // The first answer either placed the bid, left its outcome
            // open, or said truthfully that it was not placed.
            let (status, first) = &bid.answers[0];
            assert!(
                *status == 201 || open_outcome(first) || held.is_empty(),
                "bid {} on {id}: {:?}",
                bid.amount,
                bid.answers
            );
        }
        // Nothing in the stream that no request placed.
        for (event, amount) in &stream {
            assert!(
                answered[id].iter().any(|bid| bid.amount == *amount),
                "{event} ({amount}) on {id} was never sent"
            );
        }
    }

    println!(
        "answers: {tally:?}; /readyz 503 spells: {}; took {:?}",
        changes.iter().filter(|(_, ready)| !ready).count(),
        began.elapsed()
    );

    // Readiness: at most one 503 spell per fault.
    let went_unready: Vec<Instant> = changes
        .iter()
        .filter(|(_, ready)| !ready)
        .map(|&(at, _)| at)
        .collect();
    for (start, end) in &faults {
        let spells = went_unready
            .iter()
            .filter(|&&at| (*start..=*end).contains(&at))
            .count();
        assert!(
            spells <= 1,
            "/readyz went 503 {spells} times during one fault: {changes:?}"
        );
    }
}
