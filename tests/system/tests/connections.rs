//! Every connection of every service has a deadline and a place among a
//! bounded number: oversized heads are answered 431, absolute-form targets
//! are served, clients that hold connections without finishing a request
//! cannot keep a real client out (at a low file limit too), and health is
//! answered on the ops listener even when every slot holds a stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use test_support::conn::{Conn, Received, Transport};
use test_support::{RedisServer, ServiceProcess, bidder_env, session_secret_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BINARIES: [&str; 3] = ["bidder", "sse-edge", "ws-edge"];

fn env(
    redis: &RedisServer,
    binary: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = if binary == "bidder" {
        bidder_env(redis, "", 1000)
    } else {
        vec![("AUCTION_REDIS_URL", redis.url()), session_secret_env()]
    };
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

/// A public route of `binary` that answers 200 to a plain GET.
fn served_path(binary: &str) -> &'static str {
    if binary == "bidder" {
        "/openapi.json"
    } else {
        "/"
    }
}

/// Sends `request` whole and returns the status line's code.
async fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    let text = answer_to(addr, request).await;
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Sends `request` whole and returns the start of the answer.
async fn answer_to(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 2048];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_100_lines_or_16_kib_get_431_on_every_service() {
    let redis = RedisServer::start();
    for binary in BINARIES {
        let service = ServiceProcess::start(binary, &env(&redis, binary, &[]));
        let many: String = (0..120)
            .map(|i| format!("X-Padding-{i}: {i}\r\n"))
            .collect();
        let long = format!("X-Long: {}\r\n", "a".repeat(16_900));
        for path in [served_path(binary), "/auctions/a/events", "/ws"] {
            for headers in [&many, &long] {
                let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
                assert_eq!(
                    status_of(service.addr, request.as_bytes()).await,
                    431,
                    "{binary} {path}"
                );
            }
        }
        // 60 header lines are served (they were refused as 404 once).
        let fine: String = (0..60).map(|i| format!("X-Padding-{i}: {i}\r\n")).collect();
        let path = served_path(binary);
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{fine}\r\n");
        assert_eq!(
            status_of(service.addr, request.as_bytes()).await,
            200,
            "{binary}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_targets_are_served() {
    let redis = RedisServer::start();
    test_support::auctions::create(&redis.url(), &["abs".into()], 600_000).await;
    let sse = ServiceProcess::start("sse-edge", &env(&redis, "sse-edge", &[]));
    let request = format!(
        "GET http://{}/auctions/abs/events HTTP/1.1\r\nHost: {}\r\n\r\n",
        sse.addr, sse.addr
    );
    assert_eq!(status_of(sse.addr, request.as_bytes()).await, 200);
    let ws = ServiceProcess::start("ws-edge", &env(&redis, "ws-edge", &[]));
    let request = format!(
        "GET http://{}/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        ws.addr
    );
    assert_eq!(status_of(ws.addr, request.as_bytes()).await, 101);
}

/// A connection that never finishes its request: part of a head (or, with
/// `body`, a whole head and part of its body), then a byte now and then.
async fn slow_client(addr: SocketAddr, body: bool) -> Duration {
    let started = Instant::now();
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return started.elapsed();
    };
    let start: &[u8] = if body {
        b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    } else {
        b"GET / HTTP/1.1\r\nHost: x\r\n"
    };
    if stream.write_all(start).await.is_err() {
        return started.elapsed();
    }
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            read = stream.read(&mut scratch) => match read {
                // Closed (or answered 408 and closed): done.
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            },
            () = tokio::time::sleep(Duration::from_millis(300)) => {
                if stream.write_all(b" ").await.is_err() {
                    return started.elapsed();
                }
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return started.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_keep_a_real_client_out_at_a_low_file_limit() {
    let redis = RedisServer::start();
    test_support::auctions::create(&redis.url(), &["busy".into()], 600_000).await;
    let deadlines = [
        ("AUCTION_HEAD_TIMEOUT_MS", "2000"),
        ("AUCTION_BODY_TIMEOUT_MS", "2000"),
    ];
    for binary in BINARIES {
        let service =
            ServiceProcess::start_with_file_limit(binary, &env(&redis, binary, &deadlines), 256);
        let slow: Vec<_> = (0..300)
            .map(|i| tokio::spawn(slow_client(service.addr, binary == "bidder" && i % 2 == 0)))
            .collect();
        // Meanwhile, a real client is served.
        tokio::time::sleep(Duration::from_millis(500)).await;
        match binary {
            "bidder" => {
                let response = reqwest::Client::new()
                    .post(format!("{}/sessions", service.url()))
                    .json(&serde_json::json!({"name": "Ada"}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .expect("the bidder answers a real client");
                assert_eq!(response.status(), 201, "bidder");
            }
            edge => {
                let transport = if edge == "sse-edge" {
                    Transport::Sse
                } else {
                    Transport::Ws
                };
                let mut conn = Conn::open(transport, service.addr, "busy", None, None).await;
                assert!(
                    matches!(
                        conn.next(Duration::from_secs(10)).await,
                        Some(Received::Init { .. })
                    ),
                    "{edge} serves a real client"
                );
            }
        }
        // And every slow client is closed within its deadline (or evicted
        // sooner to make room).
        for client in slow {
            let held = client.await.unwrap();
            assert!(
                held < Duration::from_secs(6),
                "{binary}: a slow client was held {held:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_answered_when_every_slot_holds_a_stream() {
    let redis = RedisServer::start();
    test_support::auctions::create(&redis.url(), &["full".into()], 600_000).await;
    // 256 descriptors leave 192 slots for clients.
    let edge =
        ServiceProcess::start_with_file_limit("sse-edge", &env(&redis, "sse-edge", &[]), 256);
    let mut streams = Vec::new();
    let mut refused = 0;
    for _ in 0..220 {
        let mut conn = Conn::open(Transport::Sse, edge.addr, "full", None, None).await;
        match conn.next(Duration::from_secs(10)).await {
            Some(Received::Init { .. }) => streams.push(conn),
            Some(Received::Refused(code)) => {
                assert_eq!(code, "too_many_connections");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        refused > 0 && streams.len() >= 150,
        "{} streams, {refused} refused",
        streams.len()
    );
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        status_of(edge.ops_addr, request.as_bytes()).await,
        200,
        "/healthz on the ops listener"
    );
    // Readiness is answered too (its value is Redis's health, which a
    // loaded machine may make flap; what matters here is the answer).
    let request = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = answer_to(edge.ops_addr, request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.contains("redis unreachable"),
        "/readyz is answered by readiness, not refused: {answer}"
    );
    // The public port has no ops routes to fall back on: a full replica
    // refuses the connection.
    let answer = answer_to(edge.addr, request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"),
        "{answer}"
    );
}
