//! The bid path against a real Redis: ordering under races, idempotency,
//! bad input, closing, and two replicas agreeing on one order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Stack, eventually, id_pair};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bids_are_strictly_increasing_and_none_is_lost() {
    let stack = std::sync::Arc::new(Stack::start(1, &[]));
    stack.create_auction("race", 1_000, 100, 600_000).await;

    let mut clients = Vec::new();
    for client in 0..8u64 {
        let stack = stack.clone();
        clients.push(tokio::spawn(async move {
            let token = test_support::guest_token(&format!("client {client}"));
            let mut accepted = Vec::new();
            let mut rejected = 0;
            for round in 0..25u64 {
                let (_, auction) = stack.get("/auctions/race").await;
                let base = auction["current"]["amount"].as_u64().unwrap_or(900);
                // Everyone aims at nearly the same amount, so most bids race.
                let amount = base + 100 + (client + round) % 3 * 50;
                let body = format!(r#"{{"amount":{amount}}}"#);
                let (status, json) = stack
                    .post_json_as(&token, "/auctions/race/bids", &body)
                    .await;
                match status {
                    201 => accepted.push((json["id"].as_str().unwrap().to_owned(), amount)),
                    409 => {
                        assert_eq!(json["error"], "bid_too_low", "{json}");
                        let current = json["current"].as_u64().expect("current");
                        let min_next = json["min_next"].as_u64().expect("min_next");
                        assert_eq!(min_next, current + 100, "{json}");
                        assert!(amount < min_next, "a bid of {amount} was refused: {json}");
                        rejected += 1;
                    }
                    other => panic!("unexpected status {other}: {json}"),
                }
            }
            (accepted, rejected)
        }));
    }
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for client in clients {
        let (mine, refused) = client.await.unwrap();
        accepted.extend(mine);
        rejected += refused;
    }
    assert!(rejected > 0, "the test must produce races");

    let stream = stack.stream("race").await;
    let mut previous: Option<(u64, (u64, u64))> = None;
    for (id, kind, data) in &stream {
        assert_eq!(kind, "bid");
        let amount = data["amount"].as_u64().unwrap();
        if let Some((last_amount, last_id)) = previous {
            assert!(amount >= last_amount + 100, "{amount} after {last_amount}");
            assert!(id_pair(id) > last_id);
        }
        previous = Some((amount, id_pair(id)));
    }
    let in_stream: BTreeSet<(String, u64)> = stream
        .iter()
        .map(|(id, _, data)| (id.clone(), data["amount"].as_u64().unwrap()))
        .collect();
    let answered: BTreeSet<(String, u64)> = accepted.into_iter().collect();
    assert_eq!(in_stream, answered, "accepted bids and the stream differ");
    assert_eq!(in_stream.len() + rejected, 200);
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer_and_appends_once() {
    let stack = Stack::start(1, &[]);
    stack.create_auction("idem", 1_000, 100, 600_000).await;
    let ann = test_support::guest_token("Ann");
    let post = |key: &'static str, amount: u64| {
        let request = stack
            .http
            .post(stack.url("/auctions/idem/bids"))
            .bearer_auth(&ann)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(format!(r#"{{"amount":{amount}}}"#));
        async move { common::status_and_json(request.send().await.unwrap()).await }
    };
    let first = post("key-1", 1_500).await;
    assert_eq!(first.0, 201);
    let retry = post("key-1", 1_500).await;
    assert_eq!(retry, first, "a retry returns the first answer");
    assert_eq!(stack.stream("idem").await.len(), 1);

    let low = post("key-2", 1_000).await;
    assert_eq!(low.0, 409);
    stack
        .post_json("/auctions/idem/bids", r#"{"amount":5000}"#)
        .await;
    assert_eq!(post("key-2", 1_000).await, low, "a rejection replays too");
    assert_eq!(stack.stream("idem").await.len(), 2);

    let metrics = stack
        .http
        .get(stack.ops_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"auction_bids_total{source="user",outcome="duplicate"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_idempotency_key_is_the_bidders_own_and_bound_to_the_bid() {
    let stack = Stack::start(1, &[]);
    stack.create_auction("scoped", 1_000, 100, 600_000).await;
    let post = |token: String, amount: u64| {
        let request = stack
            .http
            .post(stack.url("/auctions/scoped/bids"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("idempotency-key", "same-key")
            .body(format!(r#"{{"amount":{amount}}}"#));
        async move { common::status_and_json(request.send().await.unwrap()).await }
    };
    let ann = test_support::guest_token("Ann");
    let bob = test_support::guest_token("Bob");
    let (status, first) = post(ann.clone(), 1_000).await;
    assert_eq!(status, 201, "{first}");
    // Another bidder's equal key is another bid.
    let (status, second) = post(bob, 1_100).await;
    assert_eq!(status, 201, "{second}");
    assert_ne!(first["id"], second["id"]);
    // The first bidder's key with another amount is refused, not replayed.
    let (status, reused) = post(ann, 1_200).await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{reused}"
    );
    let bidders: Vec<(String, u64)> = stack
        .stream("scoped")
        .await
        .iter()
        .map(|(_, _, data)| {
            (
                data["bidder"].as_str().unwrap().to_owned(),
                data["amount"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        bidders,
        vec![("Ann".to_owned(), 1_000), ("Bob".to_owned(), 1_100)]
    );
}

#[tokio::test]
async fn bad_input_gets_the_contract_error_and_leaves_the_stream_alone() {
    let stack = Stack::start(1, &[]);
    stack.create_auction("good", 1_000, 100, 600_000).await;
    let (status, _) = stack
        .post_json("/auctions/good/bids", r#"{"amount":1000,"bidder":"a"}"#)
        .await;
    assert_eq!(status, 201);
    let before = stack.stream("good").await;

    let long_id = "x".repeat(10 * 1024);
    let huge = format!(
        r#"{{"amount":5000,"bidder":"{}"}}"#,
        "a".repeat(1024 * 1024)
    );
    let cases: Vec<(String, &str, String, u16, &str)> = vec![
        (
            "/auctions/good/bids".into(),
            "application/json",
            "hello".into(),
            400,
            "malformed_json",
        ),
        (
            "/auctions/good/bids".into(),
            "text/plain",
            r#"{"amount":5000,"bidder":"a"}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (
            "/auctions/good/bids".into(),
            "application/json",
            r#"{"bidder":"a"}"#.into(),
            400,
            "missing_field",
        ),
        (
            "/auctions/good/bids".into(),
            "application/json",
            r#"{"amount":0,"bidder":"a"}"#.into(),
            400,
            "invalid_amount",
        ),
        // An f64 rounds this to 118000: a fraction must be refused, not rounded.
        (
            "/auctions/good/bids".into(),
            "application/json",
            r#"{"amount":117999.99999999999}"#.into(),
            400,
            "invalid_amount",
        ),
        (
            "/auctions/good/bids".into(),
            "application/json",
            r#"{"amount":-5000,"bidder":"a"}"#.into(),
            400,
            "invalid_amount",
        ),
        (
            "/auctions/good/bids".into(),
            "application/json",
            r#"{"amount":5000.5,"bidder":"a"}"#.into(),
            400,
            "invalid_amount",
        ),
        (
            "/auctions/good/bids".into(),
            "application/json",
            r#"{"amount":1000000000000000,"bidder":"a"}"#.into(),
            400,
            "invalid_amount",
        ),
        (
            "/auctions/b%20d/bids".into(),
            "application/json",
            r#"{"amount":5000,"bidder":"a"}"#.into(),
            400,
            "invalid_auction_id",
        ),
        (
            "/auctions/a%7Bb%7D/bids".into(),
            "application/json",
            r#"{"amount":5000,"bidder":"a"}"#.into(),
            400,
            "invalid_auction_id",
        ),
        (
            format!("/auctions/{long_id}/bids"),
            "application/json",
            r#"{"amount":5000,"bidder":"a"}"#.into(),
            400,
            "invalid_auction_id",
        ),
        (
            "/auctions/good/bids".into(),
            "application/json",
            huge,
            413,
            "body_too_large",
        ),
        (
            "/auctions/nope/bids".into(),
            "application/json",
            r#"{"amount":5000,"bidder":"a"}"#.into(),
            404,
            "not_found",
        ),
    ];
    // A fresh connection per case: after refusing a 1 MB body unread, the
    // server closes that connection, and a pooled reuse would race it.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for (path, content_type, body, want_status, want_code) in cases {
        let response = fresh
            .post(stack.url(&path))
            .bearer_auth(&stack.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, json) = common::status_and_json(response).await;
        let shown = &path[..path.len().min(40)];
        assert_eq!(status, want_status, "{shown}: {json}");
        assert_eq!(json["error"], want_code, "{shown}: {json}");
        assert!(
            json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{json}"
        );
    }
    assert_eq!(
        stack.stream("good").await,
        before,
        "the stream is untouched"
    );
    assert_eq!(stack.get("/auctions/nope").await.0, 404);
    // A method an endpoint does not take: 405, in the documented shape.
    let response = stack
        .http
        .delete(stack.url("/auctions/good/bids"))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("allow"), "{response:?}");
    let (status, json) = common::status_and_json(response).await;
    assert_eq!(status, 405, "{json}");
    assert_eq!(json["error"], "method_not_allowed", "{json}");
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    let (status, auction) = stack.get("/auctions/good").await;
    assert_eq!(status, 200);
    assert_eq!(auction["current"]["amount"], 1000);
    let metrics = stack
        .http
        .get(stack.ops_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"auction_bids_total{source="user",outcome="invalid"} 12"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn create_validates_and_refuses_duplicates() {
    let stack = Stack::start(1, &[]);
    let (status, auction) = stack
        .post_json(
            "/auctions",
            r#"{"title":"Lamp","starting_price":500,"min_increment":50,"duration_ms":60000}"#,
        )
        .await;
    assert_eq!(status, 201, "{auction}");
    assert_eq!(auction["status"], "open");
    assert_eq!(auction["current"], Value::Null);
    let id = auction["id"].as_str().unwrap().to_owned();
    let (status, json) = stack
        .post_json("/auctions", &format!(r#"{{"id":"{id}","title":"Again","starting_price":500,"min_increment":50,"duration_ms":60000}}"#))
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (409, Some("auction_exists"))
    );
    let (status, json) = stack
        .post_json(
            "/auctions",
            r#"{"title":"","starting_price":500,"min_increment":50,"duration_ms":60000}"#,
        )
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("invalid_title"))
    );
    let (status, json) = stack
        .post_json(
            "/auctions",
            r#"{"title":"Lamp","starting_price":500,"min_increment":50,"duration_ms":60000,"image_url":"javascript:alert(1)"}"#,
        )
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("invalid_image_url"))
    );
    let (status, page) = stack.get("/auctions").await;
    assert_eq!(status, 200);
    let list = &page["auctions"];
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert!(list[0].get("description").is_none() && list[0].get("image_url").is_none());
}

#[tokio::test]
async fn description_and_picture_are_stored_and_read_back_everywhere() {
    let stack = Stack::start(1, &[]);
    let body = serde_json::json!({
        "id": "desk", "title": "Desk", "starting_price": 500, "min_increment": 50,
        "duration_ms": 60000, "description": "Walnut, \"1962\".\nTwo drawers.",
        "image_url": "/assets/lot-desk.svg",
    });
    let (status, created) = stack.post_json("/auctions", &body.to_string()).await;
    assert_eq!(status, 201, "{created}");
    let (_, single) = stack.get("/auctions/desk").await;
    let (_, page) = stack.get("/auctions").await;
    let list = &page["auctions"];
    let (status, _) = stack
        .post_json("/auctions/desk/bids", r#"{"amount":500,"bidder":"a"}"#)
        .await;
    assert_eq!(status, 201);
    // The script's own JSON (create answer) and the hash read agree.
    for auction in [&created, &single, &list[0]] {
        assert_eq!(auction["description"], body["description"], "{auction}");
        assert_eq!(auction["image_url"], body["image_url"], "{auction}");
    }
}

#[tokio::test]
async fn the_seller_and_terms_are_recorded_and_read_back_and_bad_terms_refused() {
    let stack = Stack::start(1, &[]);
    let token = test_support::seller_token_named("Maison Ada");
    let body = serde_json::json!({
        "id": "chair", "title": "Chair", "starting_price": 500, "min_increment": 50,
        "duration_ms": 60000, "terms": "Collection only.\r\nPayment within 3 days.",
        // Never taken from the body: the seller is the token's.
        "seller": {"id": "x_someone", "name": "Someone else"},
    });
    let (status, created) = stack
        .post_json_as(&token, "/auctions", &body.to_string())
        .await;
    assert_eq!(status, 201, "{created}");
    // The caller's own bidder id, as the server knows it.
    let me = stack
        .http
        .get(stack.url("/auctions/chair/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (_, me) = common::status_and_json(me).await;
    let seller_id = me["bidder_id"].as_str().unwrap().to_owned();
    assert!(seller_id.starts_with("g_"), "{me}");
    let (_, single) = stack.get("/auctions/chair").await;
    let (_, page) = stack.get("/auctions").await;
    // The script's own JSON (create answer) and the hash read agree.
    for auction in [&created, &single, &page["auctions"][0]] {
        assert_eq!(
            auction["seller"],
            serde_json::json!({"id": seller_id, "name": "Maison Ada"}),
            "{auction}"
        );
        assert_eq!(
            auction["terms"], "Collection only.\nPayment within 3 days.",
            "{auction}"
        );
    }

    // Without terms: a seller, but no `terms` field at all.
    let (status, plain) = stack
        .post_json_as(
            &token,
            "/auctions",
            r#"{"id":"stool","title":"Stool","starting_price":500,"min_increment":50,"duration_ms":60000}"#,
        )
        .await;
    assert_eq!(status, 201, "{plain}");
    let (_, plain) = stack.get("/auctions/stool").await;
    assert_eq!(plain["seller"]["name"], "Maison Ada");
    assert!(plain.get("terms").is_none(), "{plain}");

    // An auction stored before sellers were recorded reads without either.
    assert_eq!(
        stack
            .redis
            .command("HDEL auction:{stool} seller_json terms_json"),
        ":2\r\n"
    );
    let (status, old) = stack.get("/auctions/stool").await;
    assert_eq!(status, 200);
    assert!(
        old.get("seller").is_none() && old.get("terms").is_none(),
        "{old}"
    );

    let long = "é".repeat(2001);
    for bad in [
        serde_json::json!(""),
        serde_json::json!("a\u{7}b"),
        serde_json::json!("a\rb"),
        serde_json::json!(5),
        serde_json::json!(long),
    ] {
        let body = serde_json::json!({
            "title": "Desk", "starting_price": 500, "min_increment": 50,
            "duration_ms": 60000, "terms": bad,
        });
        let (status, json) = stack
            .post_json_as(&token, "/auctions", &body.to_string())
            .await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("invalid_terms")),
            "{body}"
        );
    }
    // 2,000 characters are taken.
    let body = serde_json::json!({
        "title": "Desk", "starting_price": 500, "min_increment": 50,
        "duration_ms": 60000, "terms": "é".repeat(2000),
    });
    let (status, _) = stack
        .post_json_as(&token, "/auctions", &body.to_string())
        .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_description_is_counted_in_characters_and_a_crlf_is_a_line_break() {
    let stack = Stack::start(1, &[]);
    // 2,000 two-byte characters: over the 4 KiB a bid's body may have.
    let accents = "é".repeat(2000);
    let cases = [
        ("accents", accents.as_str(), accents.clone()),
        (
            "crlf",
            "Oak.\r\nTwo drawers.",
            "Oak.\nTwo drawers.".to_owned(),
        ),
    ];
    for (id, description, stored) in cases {
        let body = serde_json::json!({
            "id": id, "title": "Desk", "starting_price": 500, "min_increment": 50,
            "duration_ms": 60000, "description": description,
        });
        let (status, created) = stack.post_json("/auctions", &body.to_string()).await;
        assert_eq!(status, 201, "{id}: {created}");
        assert_eq!(created["description"], stored.as_str(), "{id}");
        let (_, read) = stack.get(&format!("/auctions/{id}")).await;
        assert_eq!(read["description"], stored.as_str(), "{id}");
    }
    // One character more is refused for its length, not its bytes.
    let body = serde_json::json!({
        "title": "Desk", "starting_price": 500, "min_increment": 50,
        "duration_ms": 60000, "description": "é".repeat(2001),
    });
    let (status, json) = stack.post_json("/auctions", &body.to_string()).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("invalid_description"))
    );
}

#[tokio::test]
async fn an_auction_closes_once_at_its_end_and_refuses_later_bids() {
    let stack = Stack::start(2, &[]);
    stack.create_auction("short", 1_000, 100, 300).await;
    let (status, _) = stack
        .post_json("/auctions/short/bids", r#"{"amount":1000,"bidder":"a"}"#)
        .await;
    assert_eq!(status, 201);
    let stream = eventually("the closed event", Duration::from_secs(10), || async {
        let stream = stack.stream("short").await;
        stream
            .iter()
            .any(|(_, kind, _)| kind == "closed")
            .then_some(stream)
    })
    .await;
    let (_, auction) = stack.get("/auctions/short").await;
    assert_eq!(auction["status"], "closed");
    assert_eq!(auction["current"]["amount"], 1000);
    let (status, json) = stack
        .post_json("/auctions/short/bids", r#"{"amount":5000,"bidder":"b"}"#)
        .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (409, Some("auction_closed"))
    );
    // Let both closers run many more passes; still exactly one closed event.
    let passes_later = stack.stream("short").await;
    assert_eq!(
        passes_later
            .iter()
            .filter(|(_, kind, _)| kind == "closed")
            .count(),
        1
    );
    assert_eq!(stream[1].2["auction"]["status"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simulating_replicas_agree_on_one_order_and_one_close_per_round() {
    let stack = Stack::start(
        2,
        &[
            ("AUCTION_SIMULATE", "true".into()),
            ("AUCTION_SIM_AUCTIONS", "sim-a,sim-b".into()),
            ("AUCTION_SIM_INTERVAL_MS", "15".into()),
            ("AUCTION_SIM_DURATION_MS", "1000".into()),
            ("AUCTION_SIM_PAUSE_MS", "400".into()),
        ],
    );
    for auction in ["sim-a", "sim-b"] {
        eventually("three rounds to close", Duration::from_secs(20), || async {
            let stream = stack.stream(auction).await;
            (stream
                .iter()
                .filter(|(_, kind, _)| kind == "closed")
                .count()
                >= 3)
                .then_some(())
        })
        .await;
    }
    for bidder in &stack.bidders {
        bidder.signal("TERM");
    }
    for auction in ["sim-a", "sim-b"] {
        let stream = stack.stream(auction).await;
        // Rounds: bids strictly increasing, then exactly one closed, then
        // (after a new round opens) bids again.
        let mut last_amount: Option<u64> = None;
        let mut previous_kind = "opened";
        let mut closed = 0;
        let mut round_ended_at = 0;
        for (id, kind, data) in &stream {
            match kind.as_str() {
                "bid" => {
                    assert_ne!(previous_kind, "closed", "a bid after close in {auction}");
                    let amount = data["amount"].as_u64().unwrap();
                    if let Some(last) = last_amount {
                        assert!(amount >= last + 1_000, "{amount} after {last} in {auction}");
                    }
                    last_amount = Some(amount);
                }
                "closed" => {
                    round_ended_at = data["auction"]["ends_at"].as_u64().unwrap();
                    assert_ne!(
                        previous_kind, "closed",
                        "two closed events in a row in {auction}"
                    );
                    closed += 1;
                }
                "opened" => {
                    assert_eq!(previous_kind, "closed", "a round opened without a close");
                    // The closed round stays on show for the pause.
                    let opened_at: u64 = id.split('-').next().unwrap().parse().unwrap();
                    assert!(
                        opened_at >= round_ended_at + 400,
                        "opened {opened_at}, the round ended at {round_ended_at} in {auction}"
                    );
                    last_amount = None;
                }
                other => panic!("unexpected kind {other}"),
            }
            previous_kind = kind;
        }
        assert!(closed >= 3);
    }
    // Both replicas did bid.
    for bidder in &stack.bidders {
        assert!(bidder.logs().contains("simulator started"));
    }
}

#[tokio::test]
async fn the_listing_pages_through_every_auction_once_newest_first() {
    let stack = Stack::start(1, &[]);
    let ids: Vec<String> = (0..7).map(|n| format!("lot{n}")).collect();
    for id in &ids {
        stack.create_auction(id, 100, 10, 600_000).await;
    }
    let mut seen = Vec::new();
    let mut path = "/auctions?limit=3".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = stack.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let auctions = page["auctions"].as_array().unwrap();
        assert!(auctions.len() <= 3, "{page}");
        seen.extend(
            auctions
                .iter()
                .map(|a| a["id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/auctions?limit=3&cursor={cursor}"),
            None => break,
        }
        // A new auction between pages goes to the front, not into them.
        if pages == 1 {
            stack.create_auction("latecomer", 100, 10, 600_000).await;
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "every auction once, newest first");
    assert_eq!(pages, 3);
    let (_, first) = stack.get("/auctions").await;
    assert_eq!(first["auctions"][0]["id"], "latecomer");
    assert_eq!(
        first["auctions"].as_array().unwrap().len(),
        8,
        "50 by default"
    );

    for (path, code) in [
        ("/auctions?limit=0", "invalid_limit"),
        ("/auctions?limit=101", "invalid_limit"),
        ("/auctions?limit=ten", "invalid_limit"),
        ("/auctions?cursor=nonsense", "invalid_cursor"),
        ("/auctions?cursor=12-no%20spaces", "invalid_cursor"),
        ("/auctions?cursor=", "invalid_cursor"),
        ("/auctions?cursor=012-a", "invalid_cursor"),
        ("/auctions?cursor=12345678901234567890-a", "invalid_cursor"),
    ] {
        let (status, json) = stack.get(path).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some(code)),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_listing_is_rate_limited_per_client_address() {
    let stack = Stack::start(
        1,
        &[
            ("AUCTION_LIST_RATE_LIMIT_PER_S", "1".into()),
            ("AUCTION_LIST_RATE_LIMIT_BURST", "2".into()),
        ],
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = stack.http.get(stack.url("/auctions")).send().await.unwrap();
        statuses.push((
            response.status().as_u16(),
            response.headers().get("retry-after").is_some(),
        ));
    }
    assert_eq!(statuses, vec![(200, false), (200, false), (429, true)]);
    // Other reads have no such limit.
    assert_eq!(stack.get("/auctions/none").await.0, 404);
}

/// The integer reply of a Redis command such as PTTL.
fn integer_reply(stack: &Stack, line: &str) -> i64 {
    let reply = stack.redis.command(line);
    reply
        .trim()
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}: {reply:?}"))
}

#[tokio::test]
async fn a_closed_auction_and_its_stream_expire_after_the_retention_and_leave_the_listing() {
    let stack = Stack::start(1, &[("AUCTION_RETENTION_MS", "3000".into())]);
    stack.create_auction("brief", 100, 10, 1000).await;
    stack.create_auction("lasting", 100, 10, 600_000).await;
    let (status, _) = stack
        .post_json("/auctions/brief/bids", r#"{"amount":100}"#)
        .await;
    assert_eq!(status, 201);
    // The close sets the expiry of the state and the stream together.
    eventually(
        "the close to set an expiry",
        Duration::from_secs(10),
        || async { (integer_reply(&stack, "PTTL auction:{brief}") > 0).then_some(()) },
    )
    .await;
    let stream_ttl = integer_reply(&stack, "PTTL auction:{brief}:events");
    assert!((1..=3000).contains(&stream_ttl), "{stream_ttl}");
    assert_eq!(
        integer_reply(&stack, "PTTL auction:{lasting}"),
        -1,
        "open: kept"
    );
    eventually(
        "the closed auction to expire",
        Duration::from_secs(15),
        || async {
            (integer_reply(&stack, "EXISTS auction:{brief} auction:{brief}:events") == 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(stack.get("/auctions/brief").await.0, 404);
    // Its id leaves the creation index (the bidder's trim), so listing
    // costs nothing for it.
    eventually(
        "the index to drop the id",
        Duration::from_secs(15),
        || async {
            let rank = stack.redis.command("ZRANK auctions:by_created brief");
            rank.starts_with("$-1").then_some(())
        },
    )
    .await;
    let (_, page) = stack.get("/auctions").await;
    let ids: Vec<&str> = page["auctions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["lasting"]);
}

#[tokio::test]
async fn a_simulated_auction_that_reopens_is_kept_again() {
    let stack = Stack::start(
        1,
        &[
            ("AUCTION_SIMULATE", "true".into()),
            ("AUCTION_SIM_AUCTIONS", "rounds".into()),
            ("AUCTION_SIM_INTERVAL_MS", "100".into()),
            ("AUCTION_SIM_DURATION_MS", "1000".into()),
            ("AUCTION_SIM_PAUSE_MS", "0".into()),
            ("AUCTION_RETENTION_MS", "600000".into()),
        ],
    );
    eventually(
        "a round to close and the next to open",
        Duration::from_secs(20),
        || async {
            let kinds: Vec<String> = stack
                .stream("rounds")
                .await
                .into_iter()
                .map(|(_, kind, _)| kind)
                .collect();
            kinds.iter().any(|kind| kind == "opened").then_some(())
        },
    )
    .await;
    // Open again: neither the state nor the stream expires any more (a
    // close after this sets a new expiry).
    eventually(
        "the open round to be kept",
        Duration::from_secs(10),
        || async {
            let open = stack.get("/auctions/rounds").await.1["status"] == "open";
            (open
                && integer_reply(&stack, "PTTL auction:{rounds}") == -1
                && integer_reply(&stack, "PTTL auction:{rounds}:events") == -1)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn names_and_titles_that_hide_or_turn_text_are_refused() {
    let stack = Stack::start(1, &[]);
    // Each passed before: invisible or direction-changing characters in a
    // name, names that render blank, a title reversed by an override.
    for name in [
        "Ada\u{061C}",
        "Ada\u{180E}",
        "A\u{034F}da",
        "Ada\u{E0041}",
        "Ada\u{FFFC}",
        "\u{00AD}",
        "\u{3164}",
        "\u{115F}",
        "\u{2800}",
    ] {
        let body = serde_json::json!({ "name": name }).to_string();
        let (status, json) = stack.post_json("/sessions", &body).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("invalid_name")),
            "{name:?}"
        );
    }
    let body = serde_json::json!({
        "title": "Desk \u{202E}kcol", "starting_price": 500, "min_increment": 50,
        "duration_ms": 60000,
    });
    let (status, json) = stack.post_json("/auctions", &body.to_string()).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("invalid_title"))
    );
    // A name with an emoji's variation selector, and a title with one, pass.
    let body = serde_json::json!({ "name": "Ada \u{2764}\u{FE0F}" }).to_string();
    assert_eq!(stack.post_json("/sessions", &body).await.0, 201);
    let body = serde_json::json!({
        "title": "Desk \u{2764}\u{FE0F}", "starting_price": 500, "min_increment": 50,
        "duration_ms": 60000,
    });
    assert_eq!(stack.post_json("/auctions", &body.to_string()).await.0, 201);
}
