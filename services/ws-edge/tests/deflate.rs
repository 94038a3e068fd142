//! permessage-deflate (RFC 7692) through the binary: a client that offers
//! it gets events compressed (each frame inflating alone to exactly the
//! plain event), a client that does not gets plain frames, compressed
//! client messages are inflated, and one that inflates past the message
//! limit gets close 1009.
//!
//! tungstenite knows no extensions, so the client here speaks the frames
//! itself on a raw socket, and inflates with flate2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{create_auction, start_edge};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);
const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A WebSocket client on a raw socket.
struct RawClient {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// The 101's head.
    head: String,
    /// Bytes of every data frame read (headers included).
    data_bytes: usize,
    /// The inflater of the server's compressed messages: kept from one to
    /// the next unless the 101 said `server_no_context_takeover` (then
    /// each must inflate alone, and does here).
    inflater: Decompress,
}

/// One frame from the server: its first byte and payload.
struct ServerFrame {
    first: u8,
    payload: Vec<u8>,
}

impl ServerFrame {
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    fn compressed(&self) -> bool {
        self.first & 0x40 != 0
    }
}

impl RawClient {
    async fn connect(edge: &ServiceProcess, extensions: Option<&str>) -> RawClient {
        let mut stream = TcpStream::connect(edge.addr).await.unwrap();
        let offer = extensions
            .map(|value| format!("Sec-WebSocket-Extensions: {value}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient {
            stream,
            buffer: Vec::new(),
            head: String::new(),
            data_bytes: 0,
            inflater: Decompress::new(false),
        };
        let end = loop {
            if let Some(end) = client.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            client.fill().await;
        };
        client.head = String::from_utf8(client.buffer.drain(..end).collect()).unwrap();
        assert!(client.head.starts_with("HTTP/1.1 101"), "{}", client.head);
        client
    }

    /// The 101's `Sec-WebSocket-Extensions`, if any.
    fn extensions(&self) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        })
    }

    async fn fill(&mut self) {
        let mut chunk = [0; 4096];
        let read = tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .unwrap();
        assert!(read > 0, "the server closed the connection");
        self.buffer.extend_from_slice(&chunk[..read]);
    }

    async fn frame(&mut self) -> ServerFrame {
        loop {
            if self.buffer.len() >= 2 {
                assert_eq!(self.buffer[1] & 0x80, 0, "server frames are unmasked");
                let (len, start) = match self.buffer[1] {
                    126 if self.buffer.len() >= 4 => (
                        u16::from_be_bytes([self.buffer[2], self.buffer[3]]) as usize,
                        4,
                    ),
                    127 if self.buffer.len() >= 10 => (
                        u64::from_be_bytes(self.buffer[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    len => (len as usize, 2),
                };
                if start > 0 && self.buffer.len() >= start + len {
                    let first = self.buffer[0];
                    let payload = self.buffer[start..start + len].to_vec();
                    self.buffer.drain(..start + len);
                    if first & 0x0f <= 0x2 {
                        self.data_bytes += start + len;
                    }
                    return ServerFrame { first, payload };
                }
            }
            self.fill().await;
        }
    }

    /// The next text message (pings are skipped).
    async fn message(&mut self) -> ServerFrame {
        loop {
            let frame = self.frame().await;
            match frame.opcode() {
                0x1 => return frame,
                0x9 | 0xa => continue,
                other => panic!("unexpected frame opcode {other}"),
            }
        }
    }

    async fn json(&mut self) -> Value {
        let message = self.message().await;
        serde_json::from_str(&self.text(&message)).unwrap()
    }

    /// A message's text, inflated if it is compressed: after the messages
    /// before it, or alone if the server was asked to keep no context.
    fn text(&mut self, frame: &ServerFrame) -> String {
        assert_eq!(frame.first & 0x80, 0x80, "events are single frames");
        if !frame.compressed() {
            return String::from_utf8(frame.payload.clone()).unwrap();
        }
        let alone = self
            .extensions()
            .is_some_and(|value| value.contains("server_no_context_takeover"));
        if alone {
            self.inflater.reset(false);
        }
        let mut input = frame.payload.clone();
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(64 * 1024);
        self.inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .expect("a compressed frame inflates");
        String::from_utf8(out).unwrap()
    }

    /// Sends a masked frame.
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let key = [0x12, 0x34, 0x56, 0x78];
        let mut frame = vec![first];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn send_text(&mut self, value: Value) {
        self.send_frame(0x81, value.to_string().as_bytes()).await;
    }

    /// Sends a compressed text message (RSV1 set).
    async fn send_compressed(&mut self, text: &str) {
        self.send_frame(0xc1, &deflate(text.as_bytes())).await;
    }
}

/// Raw DEFLATE of one message, sync-flushed, without its tail.
fn deflate(bytes: &[u8]) -> Vec<u8> {
    let mut compressor = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(bytes.len() + 1024);
    compressor
        .compress_vec(bytes, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

struct Stack {
    redis: RedisServer,
    bidder: ServiceProcess,
    edge: ServiceProcess,
}

async fn stack(extra: &[(&'static str, &str)]) -> Stack {
    let redis = RedisServer::start();
    let bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "", 1000));
    let edge = start_edge(&redis, Some(&bidder), extra);
    create_auction(&redis, "vase").await;
    Stack {
        redis,
        bidder,
        edge,
    }
}

async fn bid_over_http(stack: &Stack, amount: u64) {
    bid_on(stack, "vase", amount).await;
}

async fn bid_on(stack: &Stack, auction: &str, amount: u64) {
    let response = reqwest::Client::new()
        .post(format!("{}/auctions/{auction}/bids", stack.bidder.url()))
        .bearer_auth(test_support::seller_token())
        .header("content-type", "application/json")
        .body(json!({"amount": amount, "bidder": "b"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_deflate_gets_compressed_events_that_inflate_to_the_plain_ones() {
    let stack = stack(&[]).await;
    // One that keeps its context (events chained to the one before), one
    // that asks the server to keep none (each event alone), one plain.
    let mut chained = RawClient::connect(&stack.edge, Some(OFFER)).await;
    let mut alone = RawClient::connect(
        &stack.edge,
        Some("permessage-deflate; server_no_context_takeover"),
    )
    .await;
    let mut plain = RawClient::connect(&stack.edge, None).await;
    assert_eq!(
        chained.extensions().as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
    assert_eq!(
        alone.extensions().as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    assert_eq!(plain.extensions(), None);
    for client in [&mut chained, &mut alone, &mut plain] {
        client
            .send_text(json!({"type":"subscribe","auction":"vase"}))
            .await;
        assert_eq!(client.json().await["type"], "init");
        client.data_bytes = 0;
    }
    let bids = 20;
    for n in 0..bids {
        bid_over_http(&stack, 1000 + n * 100).await;
    }
    for n in 0..bids {
        let theirs = plain.message().await;
        assert!(!theirs.compressed(), "bid {n} is plain");
        let theirs = plain.text(&theirs);
        for client in [&mut chained, &mut alone] {
            let ours = client.message().await;
            assert!(ours.compressed(), "bid {n} is compressed");
            assert_eq!(
                client.text(&ours),
                theirs,
                "bid {n} inflates to the plain event"
            );
        }
        let event: Value = serde_json::from_str(&theirs).unwrap();
        assert_eq!(event["type"], "bid");
        assert_eq!(event["payload"]["amount"], 1000 + n * 100);
    }
    let per_event = |client: &RawClient| client.data_bytes as f64 / bids as f64;
    let (chained, alone, plain) = (per_event(&chained), per_event(&alone), per_event(&plain));
    println!(
        "bytes per bid event: {chained:.1} chained ({:.2}), {alone:.1} alone ({:.2}), {plain:.1} plain",
        chained / plain,
        alone / plain
    );
    assert!(alone < 0.85 * plain, "compression pays");
    // Chained frames refer back into the event before: all but the first
    // take a fraction of the lone frame.
    assert!(chained < 0.5 * alone, "chaining pays");
}

/// Every compressed socket decodes each event exactly as a plain socket
/// reads it, whoever wrote it (the client's task, the hub's direct writes
/// to the first parked sockets, the group writers of the rest) and
/// whatever came before it on the socket (another auction's event, which
/// the next event must not be chained past).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compressed_socket_decodes_each_event_as_a_plain_one_whoever_writes_it() {
    const CLIENTS: usize = 100; // the hub's 16 and two group writers
    const BIDS: u64 = 40;
    let stack = stack(&[]).await;
    create_auction(&stack.redis, "lamp").await;
    let mut plain = RawClient::connect(&stack.edge, None).await;
    let mut chained = Vec::new();
    for _ in 0..CLIENTS {
        chained.push(RawClient::connect(&stack.edge, Some(OFFER)).await);
    }
    // One socket following both auctions, whose bids alternate.
    let mut both = RawClient::connect(&stack.edge, Some(OFFER)).await;
    for client in std::iter::once(&mut plain).chain(chained.iter_mut()) {
        client
            .send_text(json!({"type":"subscribe","auction":"vase"}))
            .await;
        assert_eq!(client.json().await["type"], "init");
    }
    for auction in ["vase", "lamp"] {
        both.send_text(json!({"type":"subscribe","auction":auction}))
            .await;
        assert_eq!(both.json().await["type"], "init");
    }
    for n in 0..BIDS {
        bid_on(&stack, "vase", 1000 + n * 100).await;
        bid_on(&stack, "lamp", 1000 + n * 100).await;
    }
    let mut expected = Vec::new();
    while expected.len() < BIDS as usize {
        let message = plain.message().await;
        let text = plain.text(&message);
        if serde_json::from_str::<Value>(&text).unwrap()["type"] == "bid" {
            expected.push(text);
        }
    }
    for (n, client) in chained.iter_mut().enumerate() {
        let mut texts = Vec::new();
        let mut compressed = 0;
        while texts.len() < expected.len() {
            let message = client.message().await;
            compressed += usize::from(message.compressed());
            let text = client.text(&message);
            if serde_json::from_str::<Value>(&text).unwrap()["type"] == "bid" {
                texts.push(text);
            }
        }
        assert_eq!(texts, expected, "client {n}");
        assert_eq!(
            compressed,
            expected.len(),
            "client {n}: every bid compressed"
        );
    }
    let mut by_auction: [Vec<String>; 2] = Default::default();
    while by_auction.iter().map(Vec::len).sum::<usize>() < 2 * expected.len() {
        let message = both.message().await;
        let text = both.text(&message);
        let event: Value = serde_json::from_str(&text).unwrap();
        if event["type"] == "bid" {
            by_auction[usize::from(event["auction"] == "lamp")].push(text);
        }
    }
    assert_eq!(
        by_auction[0], expected,
        "the vase's bids on the shared socket"
    );
    let lamp: Vec<u64> = by_auction[1]
        .iter()
        .map(|text| {
            serde_json::from_str::<Value>(text).unwrap()["payload"]["amount"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lamp, (0..BIDS).map(|n| 1000 + n * 100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_client_messages_are_inflated_and_one_too_large_inflated_gets_1009() {
    let stack = stack(&[]).await;
    let mut client = RawClient::connect(&stack.edge, Some(OFFER)).await;
    let token = test_support::guest_token("Zip");
    client
        .send_compressed(&json!({"type":"auth","token":token}).to_string())
        .await;
    assert_eq!(client.json().await["type"], "authenticated");
    client
        .send_compressed(&json!({"type":"subscribe","auction":"vase"}).to_string())
        .await;
    assert_eq!(client.json().await["type"], "init");
    let bid = json!({"type":"bid","auction":"vase","amount":1000,"ref":"z1"}).to_string();
    // In two fragments, RSV1 on the first only (RFC 7692 6.1).
    let compressed_bid = deflate(bid.as_bytes());
    let (one, two) = compressed_bid.split_at(compressed_bid.len() / 2);
    client.send_frame(0x41, one).await;
    client.send_frame(0x80, two).await;
    let mut acked = false;
    while !acked {
        let reply = client.json().await;
        match reply["type"].as_str() {
            Some("ack") => {
                assert_eq!(reply["ref"], "z1");
                acked = true;
            }
            Some("bid" | "viewers") => {}
            _ => panic!("unexpected {reply}"),
        }
    }
    // Small on the wire, far past AUCTION_WS_MAX_MESSAGE (4096) inflated.
    let padding = " ".repeat(1_000_000);
    let bomb = format!("{{\"type\":\"subscribe\",\"auction\":\"vase\"{padding}}}");
    let compressed_bomb = deflate(bomb.as_bytes());
    assert!(compressed_bomb.len() < 4096);
    client.send_frame(0xc1, &compressed_bomb).await;
    loop {
        let frame = client.frame().await;
        if frame.opcode() == 0x8 {
            assert_eq!(&frame.payload[..2], &1009u16.to_be_bytes());
            break;
        }
    }
}

#[tokio::test]
async fn with_compression_off_an_offer_is_not_taken_up() {
    let redis = RedisServer::start();
    let edge = start_edge(&redis, None, &[("AUCTION_WS_COMPRESSION", "false")]);
    let client = RawClient::connect(&edge, Some(OFFER)).await;
    assert_eq!(client.extensions(), None);
    // An offer the server cannot honour is declined as well.
    let on = start_edge(&redis, None, &[]);
    let narrow = "permessage-deflate; server_max_window_bits=10";
    assert_eq!(
        RawClient::connect(&on, Some(narrow)).await.extensions(),
        None
    );
}
