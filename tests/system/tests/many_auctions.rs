//! 10,000 clients, each on an auction of its own, arriving at the same
//! moment: every one gets its `init` (or an error it can act on), on both
//! edges; none is left silent. Half the WebSocket clients send their
//! `subscribe` in the same packet as the upgrade request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use test_support::{RedisServer, ServiceProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 10_000;
const DEADLINE: Duration = Duration::from_secs(90);
/// Errors that tell a client to come back shortly.
const RETRY: [&str; 2] = ["redis_unavailable", "too_many_connections"];

fn auction(i: usize) -> String {
    format!("own-{i}")
}

/// Creates the auctions with the event log's own script, many at a time.
async fn create_auctions(redis: &RedisServer) {
    let ids: Vec<String> = (0..CLIENTS).map(auction).collect();
    test_support::auctions::create(&redis.url(), &ids, 3_600_000).await;
}

/// What a client got first.
#[derive(Debug, PartialEq, Eq)]
enum First {
    Init,
    /// An error the client can act on (retry): its code.
    Error(String),
    /// Nothing before the deadline, or the connection ended without a word.
    Silent,
}

fn edge(binary: &str, redis: &RedisServer) -> ServiceProcess {
    ServiceProcess::start(
        binary,
        &[
            ("AUCTION_REDIS_URL", redis.url()),
            ("AUCTION_MAX_CONNECTIONS", (CLIENTS + 100).to_string()),
            ("AUCTION_CLIENT_QUEUE", "16".into()),
            test_support::session_secret_env(),
        ],
    )
}

/// A masked client text frame (RFC 6455 §5.3), for payloads under 126 bytes.
fn client_text_frame(text: &str) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server frame: (opcode, payload).
async fn server_frame(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await?;
    let len = match header[1] & 0x7f {
        126 => u64::from(stream.read_u16().await?),
        127 => stream.read_u64().await?,
        len => u64::from(len),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await?;
    Ok((header[0] & 0x0f, payload))
}

/// Reads up to the end of the response head; returns the head and what
/// came after it.
async fn response_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buffer).into_owned(), rest));
        }
        let mut chunk = [0u8; 1024];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

async fn ws_client(addr: std::net::SocketAddr, i: usize) -> First {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        let subscribe = client_text_frame(&format!(
            r#"{{"type":"subscribe","auction":"{}"}}"#,
            auction(i)
        ));
        let mut request = b"GET /ws HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
        let same_packet = i.is_multiple_of(2);
        if same_packet {
            request.extend_from_slice(&subscribe);
        }
        stream.write_all(&request).await?;
        let (head, rest) = response_head(&mut stream).await?;
        if !head.starts_with("HTTP/1.1 101") {
            let body = String::from_utf8_lossy(&rest).into_owned();
            return Ok(First::Error(format!(
                "{} {body}",
                head.lines().next().unwrap_or("")
            )));
        }
        if !same_packet {
            stream.write_all(&subscribe).await?;
        }
        // The init may have come in the same read as the 101.
        let mut frames = rest.as_slice().chain(stream);
        loop {
            let (opcode, payload) = server_frame(&mut frames).await?;
            match opcode {
                0x1 => {
                    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                    return Ok(match json["type"].as_str() {
                        Some("init") if json["auction"] == auction(i).as_str() => First::Init,
                        _ => First::Error(json["error"].as_str().unwrap_or("?").to_owned()),
                    });
                }
                0x8 => return Ok(First::Silent),
                _ => continue, // a ping
            }
        }
    };
    match tokio::time::timeout(DEADLINE, attempt).await {
        Ok(Ok(first)) => first,
        Ok(Err::<_, std::io::Error>(_)) | Err(_) => First::Silent,
    }
}

async fn sse_client(addr: std::net::SocketAddr, i: usize) -> First {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET /auctions/{}/events HTTP/1.1\r\nHost: edge\r\nAccept: text/event-stream\r\n\r\n",
            auction(i)
        );
        stream.write_all(request.as_bytes()).await?;
        let (head, mut body) = response_head(&mut stream).await?;
        if !head.starts_with("HTTP/1.1 200") {
            let _ = stream.read_to_end(&mut body).await;
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            return Ok(First::Error(
                json["error"].as_str().unwrap_or("?").to_owned(),
            ));
        }
        loop {
            let text = String::from_utf8_lossy(&body);
            if let Some(at) = text.find("event: init\n")
                && text[at..].contains("\n\n")
            {
                return Ok(First::Init);
            }
            let mut chunk = [0u8; 2048];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(First::Silent);
            }
            body.extend_from_slice(&chunk[..read]);
        }
    };
    match tokio::time::timeout(DEADLINE, attempt).await {
        Ok(Ok(first)) => first,
        Ok(Err::<_, std::io::Error>(_)) | Err(_) => First::Silent,
    }
}

/// Starts every client at once and asserts each got its init.
async fn all_get_their_init<F>(
    name: &str,
    client: fn(std::net::SocketAddr, usize) -> F,
    edge: &ServiceProcess,
) where
    F: std::future::Future<Output = First> + Send + 'static,
{
    // A client told to retry (an error it can act on) retries, as the
    // pages do, until the deadline: how long the replica takes to join
    // 10,000 feeds at once depends on the machine (a loaded 2-core one
    // took over 5 s), not what the test is about.
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = edge.addr;
            tokio::spawn(async move {
                let mut first = client(addr, i).await;
                while started.elapsed() < DEADLINE {
                    match &first {
                        First::Error(code) if RETRY.contains(&code.as_str()) => {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            first = client(addr, i).await;
                        }
                        _ => break,
                    }
                }
                first
            })
        })
        .collect();
    let mut firsts = Vec::with_capacity(CLIENTS);
    for client in clients {
        firsts.push(client.await.unwrap());
    }
    let inits = firsts.iter().filter(|f| **f == First::Init).count();
    let others: Vec<_> = firsts
        .iter()
        .filter(|f| **f != First::Init)
        .take(5)
        .collect();
    assert!(
        firsts.iter().all(|f| *f != First::Silent),
        "{name}: no client is left silent ({inits} inits; first others: {others:?})"
    );
    assert_eq!(inits, CLIENTS, "{name}: first others: {others:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_on_ten_thousand_auctions_at_once_all_get_their_init() {
    let redis = RedisServer::start();
    create_auctions(&redis).await;
    let ws = edge("ws-edge", &redis);
    all_get_their_init("WebSocket", ws_client, &ws).await;
    drop(ws);
    let sse = edge("sse-edge", &redis);
    all_get_their_init("SSE", sse_client, &sse).await;
}
