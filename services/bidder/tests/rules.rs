//! The auction rules (docs/api.md: "Auction rules") against real Redis and real
//! bidder replicas: soft close, maximum (proxy) bids checked against an
//! independent model, the reserve, buy now, and each bidder's standing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Stack, eventually, id_pair};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

/// Posts to bidder replica `replica`.
async fn post_to(
    stack: &Stack,
    replica: usize,
    token: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = stack
        .http
        .post(format!("{}{path}", stack.bidders[replica].url()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    common::status_and_json(response).await
}

async fn get_as(stack: &Stack, token: &str, path: &str) -> (u16, Value) {
    let response = stack
        .http
        .get(stack.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    common::status_and_json(response).await
}

async fn create(stack: &Stack, body: Value) -> Value {
    let (status, json) = stack.post_json("/auctions", &body.to_string()).await;
    assert_eq!(status, 201, "create failed: {json}");
    json
}

/// Redis's clock (the one the scripts decide by), Unix ms.
fn redis_now(stack: &Stack) -> u64 {
    // RESP: *2, $n, seconds, $n, microseconds.
    let time = stack.redis.command("TIME");
    let numbers: Vec<u64> = time
        .lines()
        .filter(|line| !line.starts_with(['*', '$']))
        .map(|line| line.trim().parse().unwrap())
        .collect();
    numbers[0] * 1000 + numbers[1] / 1000
}

async fn wait_closed(stack: &Stack, auction: &str) -> Vec<(String, String, Value)> {
    eventually("the closed event", Duration::from_secs(30), || async {
        let events = stack.stream(auction).await;
        events
            .iter()
            .any(|(_, kind, _)| kind == "closed")
            .then_some(events)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bids_near_the_end_extend_it_and_close_once_at_the_last_end() {
    let stack = std::sync::Arc::new(Stack::start(2, &[]));
    const SOFT: u64 = 1500;
    let auction = create(
        &stack,
        json!({"id": "soft", "title": "Lamp", "starting_price": 1000, "min_increment": 10,
               "duration_ms": 2000, "soft_close_ms": SOFT}),
    )
    .await;
    assert_eq!(auction["soft_close_ms"], SOFT);
    let first_end = auction["ends_at"].as_u64().unwrap();
    // Into the window, by Redis's clock.
    eventually("the soft-close window", Duration::from_secs(5), || async {
        (redis_now(&stack) + SOFT > first_end + 200).then_some(())
    })
    .await;
    // Four bidders, two on each replica, each bidding the next amount until
    // the auction closes (at most 12 bids each, so it does close).
    let mut tasks = Vec::new();
    for bidder in 0..4usize {
        let stack = stack.clone();
        tasks.push(tokio::spawn(async move {
            let token = test_support::guest_token(&format!("racer {bidder}"));
            let mut accepted = 0;
            for _ in 0..12 {
                let (_, now) = stack.get("/auctions/soft").await;
                let next = now["current"]["amount"].as_u64().map_or(1000, |a| a + 10);
                let (status, json) = post_to(
                    &stack,
                    bidder % 2,
                    &token,
                    "/auctions/soft/bids",
                    json!({"amount": next}),
                )
                .await;
                match (status, json["error"].as_str()) {
                    (201, _) => accepted += 1,
                    (409, Some("bid_too_low")) => {}
                    (409, Some("auction_closed")) => break,
                    other => panic!("unexpected answer {other:?}: {json}"),
                }
                // Pacing, not a wait for anything: spreads the bids over
                // several windows.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.unwrap();
    }
    let events = wait_closed(&stack, "soft").await;
    // The rule, replayed over the stream: every bid placed within the
    // window of the end in force is followed by an `extended` event moving
    // that end by the window; nothing else moves it.
    let mut end = first_end;
    let mut bids = 0;
    let mut extensions = 0;
    for (index, (id, kind, data)) in events.iter().enumerate() {
        match kind.as_str() {
            "bid" => {
                bids += 1;
                let at = data["placed_at"].as_u64().unwrap();
                assert!(at < end, "a bid after the end in force: {data}");
                let next = events.get(index + 1);
                if end - at < SOFT {
                    let (_, kind, data) = next.expect("an extended event after the bid");
                    assert_eq!(kind, "extended", "{data}");
                    assert_eq!(data, &json!({"auction": "soft", "ends_at": end + SOFT}));
                } else {
                    assert!(next.is_none_or(|(_, kind, _)| kind != "extended"));
                }
            }
            "extended" => {
                extensions += 1;
                end = data["ends_at"].as_u64().unwrap();
            }
            "closed" => {
                assert_eq!(index, events.len() - 1, "closed is the last event");
                let (ms, _) = id_pair(id);
                assert!(ms >= end, "closed at {ms}, before the end {end}");
                assert!(ms < end + 2000, "closed at {ms}, long after the end {end}");
                assert_eq!(data["auction"]["ends_at"], end);
                let last_bid = events
                    .iter()
                    .rev()
                    .find(|(_, kind, _)| kind == "bid")
                    .unwrap();
                assert_eq!(data["auction"]["current"], last_bid.2, "the last bid wins");
                assert_eq!(data["sold"], true);
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(bids, accepted, "every accepted bid is in the stream once");
    assert!(extensions >= 2, "the race extended the end several times");
    let closed: Vec<_> = events
        .iter()
        .filter(|(_, kind, _)| kind == "closed")
        .collect();
    assert_eq!(closed.len(), 1, "exactly one closed event");
    // Both replicas' closers kept running: neither closes it again.
    let (_, auction) = stack.get("/auctions/soft").await;
    assert_eq!(auction["status"], "closed");
    assert_eq!(auction["ends_at"], end);
}

/// One request of the maximum-bids test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Plain(u64),
    Max(u64),
}

/// What the model says a request is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// 201: whether the caller leads, and the current bid after it.
    Accepted {
        leading: bool,
        amount: u64,
        leader: usize,
    },
    TooLow {
        min_next: u64,
    },
    NotRaised,
}

/// The rules of docs/api.md "Auction rules" (no reserve), written out here on
/// their own: the state is the price, the leader and the leader's maximum.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    start: u64,
    increment: u64,
    price: Option<u64>,
    leader: usize,
    leader_max: u64,
}

impl Model {
    /// Applies one request; returns its answer and the bids it shows, in
    /// order: (amount, bidder, placed by the system for a maximum).
    fn apply(&mut self, who: usize, request: Request) -> (Answer, Vec<(u64, usize, bool)>) {
        let (value, plain) = match request {
            Request::Plain(amount) => (amount, true),
            Request::Max(max) => (max, false),
        };
        let min_next = self
            .price
            .map_or(self.start, |price| price + self.increment);
        if value < min_next {
            return (Answer::TooLow { min_next }, vec![]);
        }
        let mut shown = Vec::new();
        match self.price {
            None => {
                let price = if plain { value } else { self.start };
                shown.push((price, who, false));
                self.leader = who;
                self.leader_max = value;
            }
            Some(_) if self.leader == who => {
                if plain {
                    shown.push((value, who, false));
                    self.leader_max = self.leader_max.max(value);
                } else if value <= self.leader_max {
                    return (Answer::NotRaised, vec![]);
                } else {
                    self.leader_max = value;
                }
            }
            Some(_) if value > self.leader_max => {
                // One increment over the beaten maximum, up to the new one;
                // a plain bid is never lowered.
                let over = (self.leader_max + self.increment).min(value);
                let price = if plain { value } else { over.max(min_next) };
                shown.push((price, who, false));
                self.leader = who;
                self.leader_max = value;
            }
            Some(_) => {
                // The earlier maximum holds, ties included.
                if plain {
                    shown.push((value, who, false));
                }
                let answer = (value + self.increment).min(self.leader_max);
                shown.push((answer, self.leader, true));
            }
        }
        if let Some(&(amount, _, _)) = shown.last() {
            self.price = Some(amount);
        }
        let answer = Answer::Accepted {
            leading: self.leader == who,
            amount: self.price.unwrap_or(0),
            leader: self.leader,
        };
        (answer, shown)
    }
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut all = Vec::new();
    for rest in permutations(n - 1) {
        for at in 0..=rest.len() {
            let mut order = rest.clone();
            order.insert(at, n - 1);
            all.push(order);
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maximum_bids_follow_the_rules_on_racing_replicas_and_stay_hidden() {
    let stack = std::sync::Arc::new(Stack::start(2, &[]));
    create(
        &stack,
        json!({"id": "proxy", "title": "Clock", "starting_price": 1000, "min_increment": 100,
               "duration_ms": 600_000}),
    )
    .await;
    let tokens: Vec<String> = ["Max A", "Max B", "Plain C"]
        .iter()
        .map(|name| test_support::guest_token(name))
        .collect();
    let mut ids = Vec::new();
    for token in &tokens {
        let (status, me) = get_as(&stack, token, "/auctions/proxy/me").await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["status"], "none");
        ids.push(me["bidder_id"].as_str().unwrap().to_owned());
    }
    // Rounds of three racing requests, one per bidder, spread over both
    // replicas. The maximums include a tie (2600) and raises below the
    // bidder's own; C bids plain amounts around the next one.
    let maxes_a = [1500, 2600, 2600, 4000, 4000, 5200, 5200, 6100];
    let maxes_b = [1800, 2600, 3000, 3900, 4550, 5200, 6000, 6100];
    let plain_steps = [0, 100, 300, 0, 250, 0, 100, 700];
    // Every model state consistent with what the server answered so far.
    let mut candidates = vec![Model {
        start: 1000,
        increment: 100,
        price: None,
        leader: usize::MAX,
        leader_max: 0,
    }];
    let mut seen_events = 0;
    // Each bidder's latest accepted maximum.
    let mut own_max: [Option<u64>; 3] = [None; 3];
    for round in 0..maxes_a.len() {
        let (_, now) = stack.get("/auctions/proxy").await;
        let next = now["current"]["amount"].as_u64().map_or(1000, |a| a + 100);
        let requests = [
            Request::Max(maxes_a[round]),
            Request::Max(maxes_b[round]),
            Request::Plain(next + plain_steps[round]),
        ];
        let mut tasks = Vec::new();
        for (who, request) in requests.iter().enumerate() {
            let stack = stack.clone();
            let token = tokens[who].clone();
            let body = match request {
                Request::Plain(amount) => json!({"amount": amount}),
                Request::Max(max) => json!({"max_amount": max}),
            };
            tasks.push(tokio::spawn(async move {
                post_to(
                    &stack,
                    (who + round) % 2,
                    &token,
                    "/auctions/proxy/bids",
                    body,
                )
                .await
            }));
        }
        let mut answers = Vec::new();
        for (who, task) in tasks.into_iter().enumerate() {
            let (status, json) = task.await.unwrap();
            let answer = match (status, json["error"].as_str()) {
                (201, _) => {
                    // A maximum is shown to its bidder only, in their answer.
                    if let Request::Max(max) = requests[who] {
                        assert_eq!(json["max_amount"], max, "{json}");
                        own_max[who] = Some(max);
                    } else {
                        assert!(json.get("max_amount").is_none(), "{json}");
                    }
                    let leader = ids
                        .iter()
                        .position(|id| json["bid"]["bidder_id"] == id.as_str())
                        .expect("a known leader");
                    Answer::Accepted {
                        leading: json["leading"].as_bool().unwrap(),
                        amount: json["bid"]["amount"].as_u64().unwrap(),
                        leader,
                    }
                }
                (409, Some("bid_too_low")) => Answer::TooLow {
                    min_next: json["min_next"].as_u64().unwrap(),
                },
                (409, Some("max_not_raised")) => Answer::NotRaised,
                other => panic!("unexpected answer {other:?}: {json}"),
            };
            answers.push(answer);
        }
        let events = stack.stream("proxy").await;
        let shown: Vec<(u64, usize, bool)> = events[seen_events..]
            .iter()
            .map(|(_, kind, data)| {
                assert_eq!(kind, "bid");
                // A bid shows who and how much, never a maximum.
                let keys: BTreeSet<&str> = data
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect();
                assert_eq!(
                    keys,
                    BTreeSet::from([
                        "amount",
                        "auction",
                        "bidder",
                        "bidder_id",
                        "placed_at",
                        "source"
                    ])
                );
                let who = ids
                    .iter()
                    .position(|id| data["bidder_id"] == id.as_str())
                    .unwrap();
                (
                    data["amount"].as_u64().unwrap(),
                    who,
                    data["source"] == "proxy",
                )
            })
            .collect();
        seen_events = events.len();
        // Keep each model state from which some order of the three
        // requests gives exactly these answers and these bids.
        let mut next_candidates = Vec::new();
        for model in &candidates {
            for order in permutations(3) {
                let mut trial = model.clone();
                let mut trial_answers = [None; 3];
                let mut trial_shown = Vec::new();
                for &who in &order {
                    let (answer, bids) = trial.apply(who, requests[who]);
                    trial_answers[who] = Some(answer);
                    trial_shown.extend(bids);
                }
                let matches = trial_shown == shown
                    && trial_answers
                        .iter()
                        .zip(&answers)
                        .all(|(model, server)| model.as_ref() == Some(server));
                if matches && !next_candidates.contains(&trial) {
                    next_candidates.push(trial);
                }
            }
        }
        assert!(
            !next_candidates.is_empty(),
            "round {round}: no order of {requests:?} gives answers {answers:?} and bids {shown:?}"
        );
        candidates = next_candidates;
        // The public auction never carries a maximum.
        let (_, auction) = stack.get("/auctions/proxy").await;
        assert!(!auction.to_string().contains("max"), "{auction}");
        let price = auction["current"]["amount"].as_u64();
        assert!(candidates.iter().all(|model| model.price == price));
    }
    // The bidders' standings come from the server, and each sees only
    // their own maximum.
    let model = &candidates[0];
    for (who, token) in tokens.iter().enumerate() {
        let (_, me) = get_as(&stack, token, "/auctions/proxy/me").await;
        assert_eq!(me["leading"], model.leader == who, "{me}");
        assert_eq!(
            me["status"],
            if model.leader == who {
                "leading"
            } else {
                "outbid"
            }
        );
        assert_eq!(me["max_amount"].as_u64(), own_max[who], "{me}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_nothing_is_sold_and_the_reserve_stays_hidden() {
    let stack = Stack::start(1, &[]);
    let created = create(
        &stack,
        json!({"id": "reserve", "title": "Vase", "starting_price": 1000, "min_increment": 100,
               "duration_ms": 1500, "reserve_price": 5000}),
    )
    .await;
    assert!(!created.to_string().contains("5000"), "{created}");
    assert!(
        created.get("reserve_met").is_none(),
        "no bid yet: {created}"
    );
    let token = test_support::guest_token("Low bidder");
    let (status, json) = stack
        .post_json_as(&token, "/auctions/reserve/bids", r#"{"amount":2000}"#)
        .await;
    assert_eq!(status, 201, "{json}");
    let (_, auction) = stack.get("/auctions/reserve").await;
    assert_eq!(auction["reserve_met"], false);
    assert!(!auction.to_string().contains("5000"), "{auction}");
    let events = wait_closed(&stack, "reserve").await;
    let (_, _, closed) = events.last().unwrap();
    assert_eq!(closed["sold"], false);
    assert_eq!(closed["reserve_met"], false);
    assert_eq!(closed["auction"]["sold"], false);
    assert!(!closed.to_string().contains("5000"), "{closed}");
    let (_, me) = get_as(&stack, &token, "/auctions/reserve/me").await;
    assert_eq!(me["status"], "lost", "below the reserve nobody wins: {me}");

    // A maximum that reaches the reserve takes the price up to it.
    create(
        &stack,
        json!({"id": "reserve2", "title": "Bowl", "starting_price": 1000, "min_increment": 100,
               "duration_ms": 600_000, "reserve_price": 5000}),
    )
    .await;
    let (status, json) = stack
        .post_json_as(&token, "/auctions/reserve2/bids", r#"{"max_amount":7000}"#)
        .await;
    assert_eq!(status, 201, "{json}");
    assert_eq!(json["bid"]["amount"], 5000);
    let (_, auction) = stack.get("/auctions/reserve2").await;
    assert_eq!(auction["reserve_met"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buy_now_ends_the_auction_at_its_price() {
    let stack = Stack::start(1, &[]);
    create(
        &stack,
        json!({"id": "buy", "title": "Chair", "starting_price": 1000, "min_increment": 100,
               "duration_ms": 600_000, "buy_now_price": 3000}),
    )
    .await;
    let buyer = test_support::guest_token("Buyer");
    let (status, json) = stack
        .post_json_as(&buyer, "/auctions/buy/bids", r#"{"buy_now":true}"#)
        .await;
    assert_eq!(status, 201, "{json}");
    assert_eq!(json["bid"]["amount"], 3000);
    let (status, json) = stack
        .post_json_as(&buyer, "/auctions/buy/bids", r#"{"buy_now":true}"#)
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (409, Some("auction_closed"))
    );
    let events = stack.stream("buy").await;
    let kinds: Vec<&str> = events.iter().map(|(_, kind, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["bid", "closed"]);
    assert_eq!(events[1].2["sold"], true);
    let (_, me) = get_as(&stack, &buyer, "/auctions/buy/me").await;
    assert_eq!(me["status"], "won");
}
