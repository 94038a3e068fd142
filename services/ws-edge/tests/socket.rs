//! One socket's contract: bids, bad input, limits, liveness, origins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{close_code, connect, create_auction, next_json, send, start_edge, ws_url};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

const SECOND: Duration = Duration::from_secs(1);

struct Stack {
    redis: RedisServer,
    _bidder: ServiceProcess,
    edge: ServiceProcess,
}

async fn stack(extra: &[(&'static str, &str)]) -> Stack {
    let redis = RedisServer::start();
    let bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "", 1000));
    let edge = start_edge(&redis, Some(&bidder), extra);
    create_auction(&redis, "vase").await;
    Stack {
        redis,
        _bidder: bidder,
        edge,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_bids_over_sockets_get_acks_or_the_bidders_error() {
    let stack = stack(&[]).await;
    let url = ws_url(&stack.edge);
    let mut tasks = Vec::new();
    for socket in 0..6u64 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(&url).await;
            common::sign_in(&mut ws, &format!("sock{socket}")).await;
            send(&mut ws, json!({"type":"subscribe","auction":"vase"})).await;
            let mut current = 900;
            let (mut acks, mut refusals) = (Vec::new(), Vec::new());
            for round in 0..15u64 {
                let reference = format!("s{socket}-{round}");
                let amount = current + 100 + (socket % 2) * 50;
                send(&mut ws, json!({"type":"bid","auction":"vase","amount":amount,"bidder":format!("sock{socket}"),"ref":reference})).await;
                // Read until this bid's answer, tracking the live price.
                loop {
                    let message = next_json(&mut ws, 10 * SECOND).await.expect("an answer");
                    match message["type"].as_str().unwrap() {
                        "init" => {
                            current = message["payload"]["auction"]["current"]["amount"].as_u64().unwrap_or(900);
                        }
                        "bid" => current = current.max(message["payload"]["amount"].as_u64().unwrap()),
                        "ack" => {
                            assert_eq!(message["ref"], reference.as_str());
                            acks.push(message["id"].as_str().unwrap().to_owned());
                            break;
                        }
                        "error" => {
                            assert_eq!(message["ref"], reference.as_str(), "{message}");
                            assert_eq!(message["error"], "bid_too_low", "{message}");
                            assert!(message["min_next"].as_u64().unwrap() > amount);
                            refusals.push(message);
                            break;
                        }
                        other => panic!("unexpected {other}"),
                    }
                }
            }
            (acks, refusals.len())
        }));
    }
    let (mut acks, mut refused) = (BTreeSet::new(), 0);
    for task in tasks {
        let (mine, theirs) = task.await.unwrap();
        acks.extend(mine);
        refused += theirs;
    }
    assert!(refused > 0, "the sockets must race");
    let stream: BTreeSet<String> = stack
        .redis
        .stream("vase")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        acks, stream,
        "every ack is in the stream, and every accepted bid was acked"
    );
}

#[tokio::test]
async fn bad_input_gets_an_error_or_the_contract_close_code() {
    let stack = stack(&[
        ("AUCTION_WS_RATE_PER_S", "100"),
        ("AUCTION_WS_RATE_BURST", "100"),
    ])
    .await;
    let url = ws_url(&stack.edge);
    // A bystander subscribed to the auction, to show others are unaffected.
    let mut bystander = connect(&url).await;
    common::sign_in(&mut bystander, "bystander").await;
    send(&mut bystander, json!({"type":"subscribe","auction":"vase"})).await;
    assert_eq!(
        next_json(&mut bystander, 5 * SECOND).await.unwrap()["type"],
        "init"
    );

    let mut ws = connect(&url).await;
    common::sign_in(&mut ws, "tester").await;
    let cases = [
        ("not json", "malformed_json"),
        ("[1,2]", "malformed_json"),
        (r#"{"type":"dance"}"#, "unknown_type"),
        (r#"{"auction":"vase"}"#, "missing_field"),
        (r#"{"type":"subscribe"}"#, "missing_field"),
        (
            r#"{"type":"bid","auction":"vase","ref":"r1"}"#,
            "missing_field",
        ),
        (
            r#"{"type":"subscribe","auction":"bad id"}"#,
            "invalid_auction_id",
        ),
        (r#"{"type":"subscribe","auction":"nope"}"#, "not_found"),
        (
            r#"{"type":"bid","auction":"vase","amount":0,"bidder":"x","ref":"r2"}"#,
            "invalid_amount",
        ),
        // Fractions an f64 would round to a whole amount are refused as
        // over HTTP, not placed a cent higher.
        (
            r#"{"type":"bid","auction":"vase","amount":117999.99999999999,"ref":"r4"}"#,
            "invalid_amount",
        ),
        (
            r#"{"type":"bid","auction":"vase","amount":999999999999.99999,"ref":"r5"}"#,
            "invalid_amount",
        ),
        (
            r#"{"type":"bid","auction":"nope","amount":5000,"bidder":"x","ref":"r3"}"#,
            "not_found",
        ),
    ];
    for (text, code) in cases {
        ws.send(Message::Text(text.into())).await.unwrap();
        let reply = next_json(&mut ws, 5 * SECOND).await.expect("a reply");
        assert_eq!(
            (reply["type"].as_str(), reply["error"].as_str()),
            (Some("error"), Some(code)),
            "{text}: {reply}"
        );
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut ws, 5 * SECOND).await.unwrap()["error"],
        "binary_not_supported"
    );
    // Still open and working.
    send(&mut ws, json!({"type":"subscribe","auction":"vase"})).await;
    assert_eq!(
        next_json(&mut ws, 5 * SECOND).await.unwrap()["type"],
        "init"
    );

    // Invalid UTF-8 in a text frame: 1007.
    let mut bad_utf8 = connect(&url).await;
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    bad_utf8.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(close_code(&mut bad_utf8, 5 * SECOND).await, Some(1007));

    // A 1 MB frame: 1009.
    let mut huge = connect(&url).await;
    let _ = huge
        .send(Message::Text("x".repeat(1024 * 1024).into()))
        .await;
    assert_eq!(close_code(&mut huge, 5 * SECOND).await, Some(1009));

    // 10,000 messages as fast as possible: rate limited, still serving.
    let mut flood = connect(&url).await;
    for _ in 0..10_000 {
        flood
            .feed(Message::Text(
                r#"{"type":"unsubscribe","auction":"vase"}"#.into(),
            ))
            .await
            .unwrap();
    }
    flood.flush().await.unwrap();
    let reply = next_json(&mut flood, 5 * SECOND).await.unwrap();
    assert_eq!(reply["error"], "rate_limited");

    // The bystander still gets events and its own bid acked.
    send(
        &mut bystander,
        json!({"type":"bid","auction":"vase","amount":5000,"bidder":"b","ref":"ok"}),
    )
    .await;
    let mut got_bid = false;
    let mut got_ack = false;
    while !(got_bid && got_ack) {
        let message = next_json(&mut bystander, 5 * SECOND)
            .await
            .expect("bystander keeps going");
        got_bid |= message["type"] == "bid";
        got_ack |= message["type"] == "ack";
    }
    assert!(!stack.edge.logs().contains("panicked"));
}

#[tokio::test]
async fn a_bidder_that_is_down_gives_a_clear_error_quickly() {
    let redis = RedisServer::start();
    create_auction(&redis, "vase").await;
    // Point the edge at a port where nothing listens.
    let dead = format!("http://127.0.0.1:{}", test_support::free_port());
    let edge = start_edge(&redis, None, &[("AUCTION_BIDDER_URL", &dead)]);
    let mut ws = connect(&ws_url(&edge)).await;
    common::sign_in(&mut ws, "tester").await;
    let started = std::time::Instant::now();
    send(
        &mut ws,
        json!({"type":"bid","auction":"vase","amount":5000,"bidder":"b","ref":"r"}),
    )
    .await;
    let reply = next_json(&mut ws, 10 * SECOND).await.unwrap();
    assert_eq!(
        (reply["error"].as_str(), reply["ref"].as_str()),
        (Some("bidder_unavailable"), Some("r"))
    );
    assert!(started.elapsed() < 6 * SECOND);
}

#[tokio::test]
async fn origins_off_the_allow_list_are_refused() {
    let stack = stack(&[("AUCTION_WS_ALLOWED_ORIGINS", "https://auction.example")]).await;
    let request = |origin: &str| {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url(
                &stack.edge,
            ))
            .unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        request
    };
    assert!(
        tokio_tungstenite::connect_async(request("https://auction.example"))
            .await
            .is_ok()
    );
    let refused = tokio_tungstenite::connect_async(request("https://evil.example")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed() {
    let stack = stack(&[("AUCTION_WS_PING_MS", "200")]).await;
    // A raw client that completes the handshake and then never reads, so
    // it never answers a ping.
    let mut raw = tokio::net::TcpStream::connect(stack.edge.addr)
        .await
        .unwrap();
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // Without pongs the edge closes within about two ping intervals.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(5 * SECOND, raw.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the edge closed the silent socket");
    // The last frame before the end is a close frame with 1008.
    let close = rest
        .windows(4)
        .rposition(|w| w[0] == 0x88 && w[2] == 0x03 && w[3] == 0xf0);
    assert!(close.is_some(), "close frame with code 1008");
}

/// Places one bid on the stack's auction over HTTP.
async fn bid(stack: &Stack, amount: u64) {
    let response = reqwest::Client::new()
        .post(format!("{}/auctions/vase/bids", stack._bidder.url()))
        .bearer_auth(test_support::seller_token())
        .header("content-type", "application/json")
        .body(json!({"amount": amount, "bidder": "b"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

/// Reads (answering each ping, as a browser does) until `pings` pings
/// came; `None` if the socket closed first.
async fn answer_pings(ws: &mut common::Ws, pings: usize) -> Option<()> {
    let mut seen = 0;
    while seen < pings {
        match tokio::time::timeout(5 * SECOND, ws.next()).await.ok()?? {
            Ok(Message::Ping(_)) => seen += 1,
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    // The answer to the last ping goes out with the next write or flush.
    ws.flush().await.ok()
}

/// Subscribed sockets that took a live event are parked (written by the
/// hub); their pings are written there and their pongs read without
/// taking the socket back, which would leave it unparked until the next
/// event (and cost two wake-ups of its task per ping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_sockets_are_pinged_and_answer_without_leaving_the_hub() {
    const SOCKETS: usize = 3;
    let stack = stack(&[
        ("AUCTION_WS_PING_MS", "500"),
        // No viewer counts: they hand parked sockets back by design.
        ("AUCTION_VIEWERS_INTERVAL_MS", "600000"),
    ])
    .await;
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let mut ws = connect(&ws_url(&stack.edge)).await;
        send(&mut ws, json!({"type":"subscribe","auction":"vase"})).await;
        assert_eq!(
            next_json(&mut ws, 5 * SECOND).await.unwrap()["type"],
            "init"
        );
        sockets.push(ws);
    }
    bid(&stack, 1000).await;
    for ws in &mut sockets {
        assert_eq!(next_json(ws, 5 * SECOND).await.unwrap()["type"], "bid");
    }
    let gauge = "auction_direct_clients{transport=\"ws\"}";
    test_support::wait_for("every socket to be parked", 5 * SECOND, || {
        (stack.edge.metric(gauge) == SOCKETS as f64).then_some(())
    });
    let answered = futures_util::future::join_all(sockets.iter_mut().map(|ws| answer_pings(ws, 3)));
    assert!(
        answered.await.iter().all(Option::is_some),
        "every socket answered three pings and stayed open"
    );
    assert_eq!(
        stack.edge.metric(gauge),
        SOCKETS as f64,
        "still parked after three pings"
    );
    bid(&stack, 1100).await;
    for ws in &mut sockets {
        let event = next_json(ws, 5 * SECOND).await.unwrap();
        assert_eq!(event["payload"]["amount"], 1100, "{event}");
    }
}

/// The parked counterpart of `a_peer_that_never_answers_pings_is_closed`.
#[tokio::test]
async fn a_parked_socket_that_never_answers_pings_is_closed() {
    let stack = stack(&[
        ("AUCTION_WS_PING_MS", "200"),
        ("AUCTION_VIEWERS_INTERVAL_MS", "600000"),
    ])
    .await;
    let mut ws = connect(&ws_url(&stack.edge)).await;
    send(&mut ws, json!({"type":"subscribe","auction":"vase"})).await;
    assert_eq!(
        next_json(&mut ws, 5 * SECOND).await.unwrap()["type"],
        "init"
    );
    bid(&stack, 1000).await;
    assert_eq!(next_json(&mut ws, 5 * SECOND).await.unwrap()["type"], "bid");
    let gauge = "auction_direct_clients{transport=\"ws\"}";
    test_support::wait_for("the socket to be parked", 5 * SECOND, || {
        (stack.edge.metric(gauge) == 1.0).then_some(())
    });
    // Not reading: no pong goes out. The edge closes within about two
    // ping intervals; reading then finds the pings and the close.
    test_support::wait_for("the socket to be closed", 5 * SECOND, || {
        (stack.edge.metric(gauge) == 0.0).then_some(())
    });
    assert_eq!(close_code(&mut ws, 5 * SECOND).await, Some(1008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_and_event_frames_never_interleave() {
    let stack = stack(&[]).await;
    let mut ws = connect(&ws_url(&stack.edge)).await;
    send(&mut ws, json!({"type":"subscribe","auction":"vase"})).await;
    assert_eq!(
        next_json(&mut ws, 5 * SECOND).await.unwrap()["type"],
        "init"
    );
    let bidder = stack._bidder.url();
    let bids = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for amount in 0..200u64 {
            let body = json!({"amount": 1000 + amount * 100, "bidder": "b"});
            let response = http
                .post(format!("{bidder}/auctions/vase/bids"))
                .bearer_auth(test_support::seller_token())
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        }
    });
    let (mut pongs, mut bids_seen) = (0, 0);
    let mut pinged = 0;
    while bids_seen < 200 || pongs < pinged {
        if pinged < 100 && bids_seen > pinged {
            ws.send(Message::Ping(vec![pinged as u8; 100].into()))
                .await
                .unwrap();
            pinged += 1;
        }
        use futures_util::StreamExt;
        match tokio::time::timeout(10 * SECOND, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Pong(payload) => {
                assert_eq!(payload.len(), 100);
                pongs += 1;
            }
            Message::Text(text) => {
                let message: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "bid");
                bids_seen += 1;
            }
            // The edge's own pings: its first may come any time after
            // the socket opened (sockets are dealt to phases of the
            // interval), and tungstenite answers them.
            Message::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    bids.await.unwrap();
    assert_eq!(pongs, pinged);
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_code_or_1002() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let redis = RedisServer::start();
    let edge = start_edge(&redis, None, &[]);
    // (code sent, code expected back): RFC 6455 §5.5.1 echoes the code;
    // §7.4.1 codes an endpoint must not send get 1002 (protocol error).
    for (sent, expected) in [(1000u16, 1000u16), (4000, 4000), (1005, 1002), (999, 1002)] {
        let mut ws = connect(&ws_url(&edge)).await;
        let frame = CloseFrame {
            code: CloseCode::from(sent),
            reason: "bye".into(),
        };
        ws.send(Message::Close(Some(frame))).await.unwrap();
        assert_eq!(
            close_code(&mut ws, 5 * SECOND).await,
            Some(expected),
            "close code {sent}"
        );
    }
}

/// The answer to a raw upgrade request: its head.
async fn upgrade_answer(edge: &ServiceProcess, headers: &str) -> String {
    let mut raw = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{headers}\r\n"
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(5 * SECOND, raw.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_426_names_the_version_and_a_malformed_key_is_refused() {
    let redis = RedisServer::start();
    let edge = start_edge(&redis, None, &[]);
    let old = upgrade_answer(
        &edge,
        "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    )
    .await;
    assert!(old.starts_with("HTTP/1.1 426"), "{old}");
    assert!(
        old.contains("Sec-WebSocket-Version: 13\r\n"),
        "RFC 6455 §4.4: {old}"
    );
    assert!(old.contains("Upgrade: websocket\r\n"), "RFC 9110: {old}");
    // A plain GET of the WebSocket path: 426, naming the upgrade, with the
    // documented error body.
    let mut raw = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    raw.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut plain = Vec::new();
    let _ = tokio::time::timeout(5 * SECOND, raw.read_to_end(&mut plain)).await;
    let plain = String::from_utf8_lossy(&plain);
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    assert!(
        plain.contains("Upgrade: websocket\r\n"),
        "RFC 9110: {plain}"
    );
    assert!(plain.contains(r#""error":"upgrade_required""#), "{plain}");
    for key in [
        "short",
        "dGhlIHNhbXBsZSBub25jZR==",
        "not base64 at all, no no!!",
    ] {
        let answer = upgrade_answer(
            &edge,
            &format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{key}: {answer}");
        assert!(answer.contains("invalid_key"), "{answer}");
    }
}

#[tokio::test]
async fn binary_frames_count_against_the_message_rate_limit() {
    let redis = RedisServer::start();
    let edge = start_edge(
        &redis,
        None,
        &[
            ("AUCTION_WS_RATE_PER_S", "10"),
            ("AUCTION_WS_RATE_BURST", "10"),
        ],
    );
    let mut ws = connect(&ws_url(&edge)).await;
    for _ in 0..500 {
        ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
    }
    let mut replies = Vec::new();
    while let Some(reply) = next_json(&mut ws, SECOND).await {
        replies.push(reply["error"].as_str().unwrap_or("").to_owned());
    }
    let answered = replies
        .iter()
        .filter(|r| *r == "binary_not_supported")
        .count();
    assert!(
        answered <= 20,
        "{answered} binary frames were answered: the limit held none back"
    );
    assert!(replies.iter().any(|r| r == "rate_limited"), "{replies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_answering_pings_within_an_interval_are_never_closed() {
    let redis = RedisServer::start();
    let edge = start_edge(&redis, None, &[("AUCTION_WS_PING_MS", "1000")]);
    // The replica's ticks have been running for a while when they connect.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 40 peers that read (and so answer pings) only every 300 ms, as over
    // a slow link: each answers well within the one-second interval.
    // They connect spread over one interval, so some connect just before
    // a shared tick.
    let peers: Vec<_> = (0..40u64)
        .map(|i| {
            let url = ws_url(&edge);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(25 * i)).await;
                let mut ws = connect(&url).await;
                let until = tokio::time::Instant::now() + 4 * SECOND;
                while tokio::time::Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    // Whatever is waiting (pings) is read and answered.
                    loop {
                        match tokio::time::timeout(Duration::from_millis(1), ws.next()).await {
                            Ok(Some(Ok(Message::Close(frame)))) => {
                                return frame.map(|f| u16::from(f.code));
                            }
                            Ok(Some(Ok(_))) => continue,
                            Ok(_) => return Some(0),
                            Err(_) => break,
                        }
                    }
                }
                None
            })
        })
        .collect();
    for peer in peers {
        assert_eq!(peer.await.unwrap(), None, "a peer was closed");
    }
}
