//! A new viewer of an auction whose Redis Cluster primary hangs (`SIGSTOP`,
//! no failover) is not left waiting: on both edges it gets a bounded,
//! documented answer within a deadline. For an auction the edge does not
//! watch yet: 503 `redis_unavailable` with `Retry-After` (SSE) or an
//! `error` message with that code (WebSocket). For one it already watches
//! (other viewers have it open): its `init` from the edge's memory, or that
//! same refusal. A new viewer of an auction on a healthy primary meanwhile
//! is served at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use test_support::shard_load::one_auction_per_primary;
use test_support::{RedisCluster, ServiceProcess, wait_for};
use tokio_tungstenite::tungstenite::Message;

/// Longer than the test: the frozen primary stays the owner of its slots.
const NODE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a new viewer of the hung shard may wait for its answer
/// (the cluster command timeout is 1.2 s; a loaded machine).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// The longest a new viewer of a healthy shard may wait for its `init`
/// (generous: a loaded machine).
const HEALTHY_WITHIN: Duration = Duration::from_secs(3);

/// A new SSE viewer: (status, error code, Retry-After, time to answer).
async fn sse_viewer(edge: &str, auction: &str) -> (u16, String, Option<String>, Duration) {
    sse_viewer_held(edge, auction).await.0
}

/// [`sse_viewer`], with the stream kept open (when it is one).
async fn sse_viewer_held(
    edge: &str,
    auction: &str,
) -> (
    (u16, String, Option<String>, Duration),
    Option<reqwest::Response>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = http
        .get(format!("{edge}/auctions/{auction}/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if status != 200 {
        let json: Value = response.json().await.unwrap_or_default();
        let code = json["error"].as_str().unwrap_or("").to_owned();
        return ((status, code, retry_after, took), None);
    }
    ((status, String::new(), retry_after, took), Some(response))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A new WebSocket viewer: its first message's type and error code, and
/// the time it took.
async fn ws_viewer(edge: &str, auction: &str) -> (String, String, Duration) {
    let (answer, _socket) = ws_viewer_held(edge, auction).await;
    answer
}

/// [`ws_viewer`], with the socket kept open.
async fn ws_viewer_held(edge: &str, auction: &str) -> ((String, String, Duration), Socket) {
    let (mut ws, _) = tokio_tungstenite::connect_async(edge).await.unwrap();
    let subscribe = json!({"type":"subscribe","auction":auction});
    let started = Instant::now();
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("an answer within a minute");
        if let Some(Ok(Message::Text(text))) = message {
            let json: Value = serde_json::from_str(&text).unwrap();
            let kind = json["type"].as_str().unwrap_or("").to_owned();
            if kind == "viewers" {
                continue;
            }
            let code = json["code"]
                .as_str()
                .or_else(|| json["error"].as_str())
                .unwrap_or("")
                .to_owned();
            return ((kind, code, started.elapsed()), ws);
        }
        assert!(
            matches!(message, Some(Ok(_))),
            "the socket ended: {message:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_viewer_of_a_hung_shard_gets_a_bounded_answer() {
    let cluster = RedisCluster::start();
    cluster.set_node_timeout(NODE_TIMEOUT);
    let auctions = one_auction_per_primary(&cluster, "hv");
    let ids: Vec<String> = auctions.iter().map(|(id, _)| id.clone()).collect();
    test_support::auctions::create(&cluster.url(), &ids, 3_600_000).await;
    let (hung_auction, hung_port) = auctions[0].clone();
    let healthy_auction = auctions[1].0.clone();
    // A second auction of the hung shard, which the edges already watch
    // when the node hangs (another viewer has it open).
    let watched_auction = (0..)
        .map(|i| format!("hv-watched-{i}"))
        .find(|name| cluster.primary_of_auction(name).port == hung_port)
        .unwrap();
    test_support::auctions::create(
        &cluster.url(),
        std::slice::from_ref(&watched_auction),
        3_600_000,
    )
    .await;

    let env = vec![
        ("AUCTION_REDIS_URL", cluster.url()),
        test_support::session_secret_env(),
    ];
    let sse = ServiceProcess::start("sse-edge", &env);
    let ws = ServiceProcess::start("ws-edge", &env);
    let ws_url = format!("{}/ws", ws.url().replacen("http", "ws", 1));
    tokio::task::block_in_place(|| {
        wait_for("both edges ready", Duration::from_secs(60), || {
            (sse.answers("/readyz", 200) && ws.answers("/readyz", 200)).then_some(())
        })
    });

    let (first, _sse_held) = sse_viewer_held(&sse.url(), &watched_auction).await;
    assert_eq!(first.0, 200, "the first viewer");
    let (first, _ws_held) = ws_viewer_held(&ws_url, &watched_auction).await;
    assert_eq!(first.0, "init", "the first viewer");

    cluster.freeze(hung_port);
    let sse_hung = sse_viewer(&sse.url(), &hung_auction).await;
    let ws_hung = ws_viewer(&ws_url, &hung_auction).await;
    let sse_watched = sse_viewer(&sse.url(), &watched_auction).await;
    let ws_watched = ws_viewer(&ws_url, &watched_auction).await;
    let sse_healthy = sse_viewer(&sse.url(), &healthy_auction).await;
    let ws_healthy = ws_viewer(&ws_url, &healthy_auction).await;
    cluster.thaw(hung_port);
    eprintln!("new viewers of the hung shard: sse {sse_hung:?}, ws {ws_hung:?}");
    eprintln!("new viewers of the hung shard, watched: sse {sse_watched:?}, ws {ws_watched:?}");
    eprintln!("new viewers of a healthy shard: sse {sse_healthy:?}, ws {ws_healthy:?}");

    let (status, code, retry_after, took) = sse_hung;
    assert_eq!(
        (status, code.as_str()),
        (503, "redis_unavailable"),
        "sse: a new viewer of the hung shard"
    );
    assert!(retry_after.is_some(), "sse: 503 without Retry-After");
    assert!(took <= ANSWER_WITHIN, "sse: answered after {took:?}");
    let (kind, code, took) = ws_hung;
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("error", "redis_unavailable"),
        "ws: a new viewer of the hung shard"
    );
    assert!(took <= ANSWER_WITHIN, "ws: answered after {took:?}");

    let (status, code, _, took) = sse_watched;
    assert!(
        status == 200 || (status, code.as_str()) == (503, "redis_unavailable"),
        "sse: a new viewer of a watched auction of the hung shard: {status} {code}"
    );
    assert!(took <= ANSWER_WITHIN, "sse: answered after {took:?}");
    let (kind, code, took) = ws_watched;
    assert!(
        kind == "init" || (kind.as_str(), code.as_str()) == ("error", "redis_unavailable"),
        "ws: a new viewer of a watched auction of the hung shard: {kind} {code}"
    );
    assert!(took <= ANSWER_WITHIN, "ws: answered after {took:?}");

    let (status, _, _, took) = sse_healthy;
    assert_eq!(status, 200, "sse: a new viewer of a healthy shard");
    assert!(
        took <= HEALTHY_WITHIN,
        "sse: healthy shard served after {took:?}"
    );
    let (kind, _, took) = ws_healthy;
    assert_eq!(kind, "init", "ws: a new viewer of a healthy shard");
    assert!(
        took <= HEALTHY_WITHIN,
        "ws: healthy shard served after {took:?}"
    );
    drop((sse, ws));
}
