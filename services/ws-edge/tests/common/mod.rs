//! Helpers for the ws-edge end-to-end tests: real redis-server, bidder and
//! edge processes, and a WebSocket client that resubscribes with its last id
//! after every disconnect, like the auction page does.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess};
pub use test_support::{Seen, bidder_env};
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn start_edge(
    redis: &RedisServer,
    bidder: Option<&ServiceProcess>,
    extra: &[(&'static str, &str)],
) -> ServiceProcess {
    let mut env = vec![
        ("AUCTION_REDIS_URL", redis.url()),
        test_support::session_secret_env(),
    ];
    if let Some(bidder) = bidder {
        env.push(("AUCTION_BIDDER_URL", bidder.url()));
    }
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    ServiceProcess::start("ws-edge", &env)
}

/// Creates the auction `id` in Redis, to bid on: from 1,000 in steps of
/// 100, open ten minutes.
pub async fn create_auction(redis: &RedisServer, id: &str) {
    let terms = test_support::auctions::Terms {
        starting_price: 1000,
        min_increment: 100,
        duration_ms: 600_000,
    };
    test_support::auctions::create_with(&redis.url(), &[id.to_owned()], terms).await;
}

pub fn ws_url(edge: &ServiceProcess) -> String {
    format!("ws://{}/ws", edge.addr)
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket connect");
    ws
}

pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// Sends `auth` with a fresh guest token for `name` and returns the
/// `authenticated` reply (call before subscribing: nothing else is in
/// flight then).
pub async fn sign_in(ws: &mut Ws, name: &str) -> Value {
    let token = test_support::guest_token(name);
    send(ws, serde_json::json!({"type": "auth", "token": token})).await;
    let reply = next_json(ws, Duration::from_secs(10))
        .await
        .expect("an answer to auth");
    assert_eq!(reply["type"], "authenticated", "{reply}");
    reply
}

/// The next JSON text message, or `None` on close or after `timeout`.
pub async fn next_json(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return None,
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// Waits for the close frame; returns its code (`None` if the socket just
/// dropped).
pub async fn close_code(ws: &mut Ws, timeout: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

pub use test_support::clients::ws_follow as follow;
