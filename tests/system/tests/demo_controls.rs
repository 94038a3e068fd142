//! `AUCTION_DEMO_CONTROLS`: off by default (404); on, a drop ends only the
//! named client's connections on the replica that holds them, abruptly
//! (reset) or as the transport ends gracefully (SSE: FIN; WebSocket: close
//! 1012), and a refusal answers new streams and upgrades 503 with
//! `Retry-After` for its period.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use std::net::SocketAddr;
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess, bidder_env, session_secret_env, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

fn edge(binary: &str, redis: &RedisServer, demo: bool) -> ServiceProcess {
    let mut env = vec![("AUCTION_REDIS_URL", redis.url()), session_secret_env()];
    if demo {
        env.push(("AUCTION_DEMO_CONTROLS", "true".into()));
    }
    ServiceProcess::start(binary, &env)
}

/// `POST path` on `addr`: the status and the body.
async fn post(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

fn ended(body: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["ended"].as_u64().unwrap()
}

/// An SSE stream of auction 1234 opened as `client` (on its own, or with
/// `many`, a stream of several auctions), read up to its head and first
/// event.
async fn sse_stream(addr: SocketAddr, client: &str, many: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let path = if many {
        format!("/events?auctions=1234&demo={client}")
    } else {
        format!("/auctions/1234/events?demo={client}")
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("event: init") {
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the stream's start")
            .unwrap();
        assert!(read > 0, "the stream ended at its start: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    stream
}

/// Reads `stream` until it ends: `Ok(())` on a FIN, the error otherwise.
async fn read_to_end(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the stream to end")?;
        if read == 0 {
            return Ok(());
        }
    }
}

fn start_bidder(redis: &RedisServer) -> ServiceProcess {
    let bidder = ServiceProcess::start("bidder", &bidder_env(redis, "1234", 60_000));
    wait_for("auction 1234", Duration::from_secs(20), || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(bidder.addr).ok()?;
        write!(stream, "GET /auctions/1234 HTTP/1.0\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        (text.split(' ').nth(1) == Some("200")).then_some(())
    });
    bidder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_controls_are_off_by_default() {
    let redis = RedisServer::start();
    for (binary, transport) in [("sse-edge", "sse"), ("ws-edge", "ws")] {
        let service = edge(binary, &redis, false);
        for path in [
            format!("/demo/{transport}/drop?client=a&how=reset"),
            format!("/demo/{transport}/refuse?seconds=5"),
        ] {
            assert_eq!(post(service.addr, &path).await.0, 404, "{binary} {path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_demo_drop_ends_only_that_clients_streams_with_a_reset_or_a_fin() {
    let redis = RedisServer::start();
    let _bidder = start_bidder(&redis);
    let sse = edge("sse-edge", &redis, true);
    // Streams of one auction and of several alike.
    for many in [false, true] {
        let mut page = sse_stream(sse.addr, "page-1", many).await;
        let mut other = sse_stream(sse.addr, "page-2", many).await;

        let (status, body) = post(sse.addr, "/demo/sse/drop?client=page-1&how=reset").await;
        assert_eq!((status, ended(&body)), (200, 1), "{body}");
        // The answer tells the `retry:` the streams were sent (the
        // default, 2 s): a page cannot read it from EventSource.
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["retry_ms"], 2000, "{body}");
        let error = read_to_end(&mut page)
            .await
            .expect_err("a reset, not a FIN");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);

        // The other client's stream was left alone: a drain now ends it,
        // with a FIN.
        let (status, body) = post(sse.addr, "/demo/sse/drop?client=page-2&how=drain").await;
        assert_eq!((status, ended(&body)), (200, 1), "{body}");
        read_to_end(&mut other).await.expect("a FIN");
    }

    // Nothing left of either.
    let (_, body) = post(sse.addr, "/demo/sse/drop?client=page-1&how=reset").await;
    assert_eq!(ended(&body), 0);
    // Bad requests are answered 400, never a panic.
    for path in [
        "/demo/sse/drop?client=page-1&how=explode",
        "/demo/sse/drop?how=reset",
        "/demo/sse/drop?client=%00&how=reset",
        "/demo/sse/refuse?seconds=0",
        "/demo/sse/refuse?seconds=x",
    ] {
        assert_eq!(post(sse.addr, path).await.0, 400, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ws_demo_drain_closes_with_1012_and_a_reset_resets() {
    let redis = RedisServer::start();
    let ws = edge("ws-edge", &redis, true);
    let url = |client: &str| format!("ws://{}/ws?demo={client}", ws.addr);
    let (mut drained, _) = tokio_tungstenite::connect_async(url("page-1"))
        .await
        .unwrap();
    let (mut reset, _) = tokio_tungstenite::connect_async(url("page-2"))
        .await
        .unwrap();

    let (status, body) = post(ws.addr, "/demo/ws/drop?client=page-1&how=drain").await;
    assert_eq!((status, ended(&body)), (200, 1), "{body}");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), drained.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1012);

    let (status, body) = post(ws.addr, "/demo/ws/drop?client=page-2&how=reset").await;
    assert_eq!((status, ended(&body)), (200, 1), "{body}");
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(10), reset.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => panic!("a close frame: {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(error))) => break error,
            other => panic!("no reset: {other:?}"),
        }
    };
    assert!(
        matches!(&error, WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_refusal_answers_new_streams_and_upgrades_503_for_its_period() {
    let redis = RedisServer::start();
    let _bidder = start_bidder(&redis);
    let sse = edge("sse-edge", &redis, true);
    let ws = edge("ws-edge", &redis, true);
    let (status, body) = post(sse.addr, "/demo/sse/refuse?seconds=3").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(ws.addr, "/demo/ws/refuse?seconds=3").await;
    assert_eq!(status, 200, "{body}");

    let answer = |addr: SocketAddr, request: String| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    };
    let sse_request = "GET /auctions/1234/events HTTP/1.1\r\nHost: x\r\n\r\n".to_owned();
    let many_request = "GET /events?auctions=1234 HTTP/1.1\r\nHost: x\r\n\r\n".to_owned();
    let ws_request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_owned();
    for (addr, request) in [
        (sse.addr, &sse_request),
        (sse.addr, &many_request),
        (ws.addr, &ws_request),
    ] {
        let refused = answer(addr, request.clone()).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.contains("demo_refusing"), "{refused}");
        assert!(
            refused.to_ascii_lowercase().contains("retry-after: "),
            "{refused}"
        );
    }
    // And only for its period: then served again.
    for (addr, request, served) in [
        (sse.addr, &sse_request, "HTTP/1.1 200"),
        (sse.addr, &many_request, "HTTP/1.1 200"),
        (ws.addr, &ws_request, "HTTP/1.1 101"),
    ] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if answer(addr, request.clone()).await.starts_with(served) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "still refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
