//! The simulator run by several bidder replicas: one simulated bid per
//! auction per interval of Redis's clock, however many replicas run it and
//! when one dies; simulated bidders that stop at limits of their own, so a
//! person who keeps bidding wins the round.

mod common;

use common::{Stack, eventually, id_pair};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// A limit range no simulated bidder reaches within a test.
const LIMITS_NEVER_REACHED: &str = "1000000000000";
/// The simulator's starting price and increment (`simulator.rs`), cents.
const STARTING_PRICE: u64 = 10_000;

/// The auction's simulated bids: (stream id's time by Redis's clock, data).
async fn simulated_bids(stack: &Stack, auction: &str) -> Vec<(u64, Value)> {
    stack
        .stream(auction)
        .await
        .into_iter()
        .filter(|(_, kind, data)| kind == "bid" && data["source"] == "simulated")
        .map(|(id, _, data)| (id_pair(&id).0, data))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_place_one_simulated_bid_per_interval_and_a_survivor_keeps_the_rate() {
    const INTERVAL_MS: u64 = 1000;
    const WINDOW_MS: u64 = 20_000;
    let mut stack = Stack::start(
        2,
        &[
            ("AUCTION_SIMULATE", "true".into()),
            ("AUCTION_SIM_AUCTIONS", "pace".into()),
            ("AUCTION_SIM_INTERVAL_MS", INTERVAL_MS.to_string()),
            ("AUCTION_SIM_DURATION_MS", "600000".into()),
            ("AUCTION_SIM_LIMIT_RANGE_CENTS", LIMITS_NEVER_REACHED.into()),
        ],
    );
    eventually(
        "both replicas to run the simulator",
        Duration::from_secs(20),
        || async {
            stack
                .bidders
                .iter()
                .all(|bidder| bidder.logs().contains("simulator started"))
                .then_some(())
        },
    )
    .await;
    // The window is measured between stream ids (Redis's clock) and opens
    // at the third simulated bid placed while both replicas ran: the first
    // ones after a start are slower (connections made, scripts loaded),
    // which would shift the window against the turns.
    let both_running = stack.redis_now_ms();
    let start = eventually("three simulated bids", Duration::from_secs(20), || async {
        simulated_bids(&stack, "pace")
            .await
            .into_iter()
            .map(|(at, _)| at)
            .filter(|at| *at >= both_running)
            .nth(2)
    })
    .await;
    let end = start + WINDOW_MS;
    eventually(
        "the middle of the window",
        Duration::from_secs(30),
        || async { (stack.redis_now_ms() >= start + WINDOW_MS / 2).then_some(()) },
    )
    .await;
    // One replica dies (SIGKILL: no goodbye); the other takes every turn.
    stack.bidders[1].kill();
    let killed_at = stack.redis_now_ms();
    eventually(
        "a simulated bid past the window",
        Duration::from_secs(30),
        || async {
            let bids = simulated_bids(&stack, "pace").await;
            bids.iter().any(|(at, _)| *at >= end).then_some(())
        },
    )
    .await;
    let times: Vec<u64> = simulated_bids(&stack, "pace")
        .await
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    let count_in = |from: u64, until: u64| {
        times
            .iter()
            .filter(|at| (from..until).contains(*at))
            .count() as u64
    };
    let expected = WINDOW_MS / INTERVAL_MS;
    let in_window = count_in(start, end);
    assert!(
        (expected - 1..=expected + 1).contains(&in_window),
        "{in_window} simulated bids in {WINDOW_MS} ms at one per {INTERVAL_MS} ms \
         (ms after the window opened: {:?})",
        times
            .iter()
            .map(|at| at.saturating_sub(start))
            .collect::<Vec<_>>()
    );
    let alone = count_in(killed_at, end);
    let intervals_alone = (end - killed_at) / INTERVAL_MS;
    eprintln!(
        "{in_window} simulated bids in {WINDOW_MS} ms; {alone} in the {} ms after one replica was killed",
        end - killed_at
    );
    assert!(
        alone + 1 >= intervals_alone,
        "{alone} simulated bids in the {} ms the survivor ran alone",
        end - killed_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_bidding_the_suggested_amounts_wins_a_short_round() {
    const LIMIT_RANGE: u64 = 30_000;
    const INTERVAL_MS: u64 = 300;
    const ROUND_MS: u64 = 20_000;
    let stack = Stack::start(
        2,
        &[
            ("AUCTION_SIMULATE", "true".into()),
            ("AUCTION_SIM_AUCTIONS", "short".into()),
            ("AUCTION_SIM_INTERVAL_MS", INTERVAL_MS.to_string()),
            ("AUCTION_SIM_DURATION_MS", ROUND_MS.to_string()),
            // The closed round stays on show for the rest of the test.
            ("AUCTION_SIM_PAUSE_MS", "600000".into()),
            ("AUCTION_SIM_LIMIT_RANGE_CENTS", LIMIT_RANGE.to_string()),
        ],
    );
    let (status, session) = stack.post_json("/sessions", r#"{"name":"Pat"}"#).await;
    assert_eq!(status, 201, "{session}");
    let token = session["token"].as_str().unwrap().to_owned();
    let person = session["bidder_id"].as_str().unwrap().to_owned();

    // The person: whenever not leading, bids the minimum next bid (what the
    // page suggests), until the round closes.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ROUND_MS + 30_000);
    let mut accepted: Vec<u64> = Vec::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the round did not close"
        );
        let (status, auction) = stack.get("/auctions/short").await;
        if status == 200 && auction["status"] != "open" {
            break;
        }
        if status == 200 && auction["current"]["bidder_id"] != person.as_str() {
            let min_next = match auction["current"]["amount"].as_u64() {
                Some(amount) => amount + auction["min_increment"].as_u64().unwrap(),
                None => auction["starting_price"].as_u64().unwrap(),
            };
            let body = json!({ "amount": min_next }).to_string();
            let (status, answer) = stack
                .post_json_as(&token, "/auctions/short/bids", &body)
                .await;
            match status {
                201 => accepted.push(min_next),
                // Outbid in between, or the round just closed.
                409 => {}
                other => panic!("bid answered {other}: {answer}"),
            }
        } else {
            assert!(
                status == 200 || status == 404,
                "GET answered {status}: {auction}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stream = stack.stream("short").await;
    let (closed_id, _, closed) = stream
        .iter()
        .find(|(_, kind, _)| kind == "closed")
        .expect("a closed event");
    let winner = &closed["auction"]["current"];
    assert_eq!(
        winner["bidder_id"],
        person.as_str(),
        "the person won: {closed}"
    );
    assert_eq!(closed["sold"], true, "{closed}");
    let winning = winner["amount"].as_u64().unwrap();
    let increment = closed["auction"]["min_increment"].as_u64().unwrap();
    assert_eq!(accepted.last(), Some(&winning));

    // The limits every replica used this round, and the bids against them.
    let stored = stack.strings("HGETALL auction:{short}:sim_limits");
    let limits: HashMap<&str, u64> = stored
        .chunks(2)
        .map(|pair| (pair[0].as_str(), pair[1].parse().unwrap()))
        .collect();
    assert!(!limits.is_empty(), "limits stored for the round");
    let simulated = simulated_bids(&stack, "short").await;
    assert!(!simulated.is_empty(), "the simulated bidders bid");
    for (_, bid) in &simulated {
        let bidder = bid["bidder_id"].as_str().unwrap();
        let limit = *limits
            .get(bidder)
            .unwrap_or_else(|| panic!("no limit stored for {bidder}"));
        assert!(
            bid["amount"].as_u64().unwrap() <= limit,
            "{bid} past its bidder's limit {limit}"
        );
    }
    for (bidder, limit) in &limits {
        assert!(
            (STARTING_PRICE..=STARTING_PRICE + LIMIT_RANGE).contains(limit),
            "{bidder}'s limit {limit}"
        );
        // None could top the winning bid: each stopped at its limit.
        assert!(
            *limit < winning + increment,
            "{bidder}'s limit {limit} allowed a bid over {winning}"
        );
    }
    // Past every limit, the simulator stopped bidding well before the end.
    let last_simulated = simulated.iter().map(|(at, _)| *at).max().unwrap();
    let closed_at = id_pair(closed_id).0;
    eprintln!(
        "won at {winning} after {} bids of the person's and {} simulated; the simulator quiet for the last {} ms",
        accepted.len(),
        simulated.len(),
        closed_at - last_simulated
    );
    assert!(
        closed_at >= last_simulated + 3_000,
        "a simulated bid {} ms before the close",
        closed_at - last_simulated
    );
}
