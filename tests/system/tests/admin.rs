//! The admin role through the real binaries: each admin action is an
//! `admin` event naming who acted, and reaches an SSE and a WebSocket
//! client; a suspended bidder is refused on HTTP and WebSocket, and their
//! socket is told; a token without the role is refused every admin action
//! and nothing reaches the stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use eventsource_stream::Eventsource;
use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use test_support::{RedisCluster, RedisServer, ServiceProcess, TestRedis};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

struct Stack<R> {
    redis: R,
    bidder: ServiceProcess,
    sse: ServiceProcess,
    ws: ServiceProcess,
    http: reqwest::Client,
}

impl<R: TestRedis> Stack<R> {
    async fn start(redis: R, auctions: &[&str]) -> Stack<R> {
        let bidder = ServiceProcess::start("bidder", &test_support::bidder_env(&redis, "", 1000));
        let edge_env = |extra: Vec<(&'static str, String)>| {
            let mut env = vec![
                ("AUCTION_REDIS_URL", redis.url()),
                test_support::session_secret_env(),
            ];
            env.extend(extra);
            env
        };
        let sse = ServiceProcess::start("sse-edge", &edge_env(vec![]));
        let ws = ServiceProcess::start(
            "ws-edge",
            &edge_env(vec![("AUCTION_BIDDER_URL", bidder.url())]),
        );
        let ids: Vec<String> = auctions.iter().map(|id| id.to_string()).collect();
        test_support::auctions::create(&redis.url(), &ids, 3_600_000).await;
        Stack {
            redis,
            bidder,
            sse,
            ws,
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.bidder.url()))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.bidder.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn sse(&self, auction: &str) -> SseEvents {
        let response = self
            .http
            .get(format!("{}/auctions/{auction}/events", self.sse.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut events: SseEvents = Box::pin(
            response
                .bytes_stream()
                .eventsource()
                .map(|event| event.map_err(|error| error.to_string())),
        );
        assert_eq!(events.next().await.unwrap().unwrap().event, "init");
        events
    }

    async fn socket(&self) -> Socket {
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", self.ws.addr))
            .await
            .unwrap();
        socket
    }
}

type SseEvents =
    std::pin::Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(socket: &mut Socket, auction: &str) {
    send(socket, json!({"type":"subscribe","auction":auction})).await;
    let init = ws_until(socket, |m| m["type"] == "init").await;
    assert_eq!(init["auction"], auction);
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The first message `matches` accepts, skipping others (viewer counts).
async fn ws_until(socket: &mut Socket, matches: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if matches(&message) {
                        return message;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("the socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the message in time")
}

/// The first SSE event of `kind`, its data as JSON.
async fn sse_until(events: &mut SseEvents, kind: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.next().await.expect("the stream goes on").unwrap();
            if event.event == kind {
                return serde_json::from_str(&event.data).unwrap_or(Value::Null);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("a {kind} event in time"))
}

/// Each auction action, seen by an SSE and a WebSocket client of its
/// auction as an `admin` event naming the admin, with its effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_admin_action_reaches_sse_and_websocket_clients_naming_the_admin() {
    each_admin_action(RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_admin_action_reaches_sse_and_websocket_clients_naming_the_admin_on_a_cluster() {
    each_admin_action(RedisCluster::start()).await;
}

async fn each_admin_action(redis: impl TestRedis) {
    let stack = Stack::start(redis, &["to-close", "to-extend", "to-cancel", "to-delete"]).await;
    let admin = test_support::admin_token("Olive Ops");
    let bidder = test_support::guest_token("Ann");
    let (placed, _) = stack
        .post(
            "/auctions/to-close/bids",
            &bidder,
            Some(json!({"amount": 150})),
        )
        .await;
    assert_eq!(placed, 201);

    let mut socket = stack.socket().await;
    for (auction, action, body) in [
        ("to-close", "close", Some(json!({"reason": "seller asked"}))),
        ("to-extend", "extend", None),
        (
            "to-cancel",
            "cancel",
            Some(json!({"reason": "fake listing"})),
        ),
        ("to-delete", "delete", None),
    ] {
        let mut sse = stack.sse(auction).await;
        subscribe(&mut socket, auction).await;
        let (_, before) = stack.get(&format!("/auctions/{auction}"), None).await;
        let body = if action == "extend" {
            Some(json!({"ends_at": before["ends_at"].as_u64().unwrap() + 600_000}))
        } else {
            body
        };
        let (status, answer) = stack
            .post(&format!("/admin/auctions/{auction}/{action}"), &admin, body)
            .await;
        assert_eq!(status, 200, "{action}: {answer}");
        assert_eq!(answer["action"], action);

        let over_sse = sse_until(&mut sse, "admin").await;
        let over_ws = ws_until(&mut socket, |m| m["type"] == "admin").await;
        assert_eq!(over_ws["auction"], auction);
        assert_eq!(over_ws["id"], answer["id"]);
        for payload in [&over_sse, &over_ws["payload"]] {
            assert_eq!(payload["action"], action, "{payload}");
            assert_eq!(payload["by"]["name"], "Olive Ops", "{payload}");
            assert!(payload["by"]["id"].as_str().unwrap().starts_with("g_"));
        }
        let (status, after) = stack.get(&format!("/auctions/{auction}"), None).await;
        match action {
            "close" => {
                assert_eq!(over_sse["reason"], "seller asked");
                // The close itself follows, as the closer's would.
                let closed = sse_until(&mut sse, "closed").await;
                assert_eq!(closed["auction"]["status"], "closed");
                assert_eq!(closed["auction"]["current"]["amount"], 150);
                let closed = ws_until(&mut socket, |m| m["type"] == "closed").await;
                assert_eq!(closed["payload"]["auction"]["status"], "closed");
                assert_eq!(after["status"], "closed");
            }
            "extend" => {
                let ends_at = before["ends_at"].as_u64().unwrap() + 600_000;
                assert_eq!(over_sse["auction"]["ends_at"], ends_at);
                assert_eq!(after["ends_at"], ends_at);
                assert_eq!(after["status"], "open");
            }
            "cancel" => {
                assert_eq!(over_sse["auction"]["status"], "cancelled");
                assert_eq!(after["status"], "cancelled");
                // No winner: bids are refused as on any ended auction.
                let (refused, answer) = stack
                    .post(
                        "/auctions/to-cancel/bids",
                        &bidder,
                        Some(json!({"amount": 500})),
                    )
                    .await;
                assert_eq!(
                    (refused, answer["error"].as_str()),
                    (409, Some("auction_closed"))
                );
            }
            "delete" => {
                assert_eq!(status, 404, "{after}");
                let (_, listing) = stack.get("/auctions", None).await;
                assert!(
                    listing["auctions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|a| a["id"] != "to-delete"),
                    "{listing}"
                );
                // Then the pages are told the auction is gone.
                let gone = ws_until(&mut socket, |m| m["type"] == "gone").await;
                assert_eq!(gone["auction"], "to-delete");
                sse_until(&mut sse, "gone").await;
            }
            _ => unreachable!(),
        }
    }

    // A second close of a closed auction changes nothing.
    let (status, answer) = stack
        .post("/admin/auctions/to-close/close", &admin, None)
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (409, Some("auction_not_open"))
    );
    // An extension must end later.
    let (status, answer) = stack
        .post(
            "/admin/auctions/to-extend/extend",
            &admin,
            Some(json!({"ends_at": 1})),
        )
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (409, Some("ends_at_not_later"))
    );

    // The admin log lists every action, newest first.
    let (status, log) = stack.get("/admin/actions", Some(&admin)).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = log["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["delete", "cancel", "extend", "close"]);
    // The operator metrics saw it: each action counted, each script timed,
    // the bids timed, the build named.
    for action in ["close", "extend", "cancel", "delete"] {
        let series = format!("auction_admin_actions_total{{action=\"{action}\"}}");
        assert_eq!(stack.bidder.metric(&series), 1.0, "{series}");
    }
    assert_eq!(
        stack
            .bidder
            .metric("auction_redis_command_duration_seconds_count{command=\"admin\"}"),
        6.0,
        "four actions and two refusals"
    );
    assert_eq!(
        stack.bidder.metric("auction_bid_duration_seconds_count"),
        2.0
    );
    // As `--version` prints it (the same build, so the same GIT_COMMIT).
    let version = match option_env!("GIT_COMMIT").filter(|commit| !commit.is_empty()) {
        Some(commit) => format!("{} (commit {commit})", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    };
    let series = format!("auction_build_info{{service=\"bidder\",version=\"{version}\"}}");
    assert_eq!(stack.bidder.metric(&series), 1.0, "{series}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_bidder_is_refused_on_http_and_websocket_and_their_socket_is_told() {
    suspension(RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_bidder_is_refused_on_http_and_websocket_and_their_socket_is_told_on_a_cluster()
{
    suspension(RedisCluster::start()).await;
}

async fn suspension(redis: impl TestRedis) {
    let stack = Stack::start(redis, &["lot"]).await;
    let admin = test_support::admin_token("Olive Ops");
    let mallory = test_support::guest_token("Mallory");
    let mut socket = stack.socket().await;
    send(&mut socket, json!({"type":"auth","token":mallory})).await;
    let who = ws_until(&mut socket, |m| m["type"] == "authenticated").await;
    let id = who["bidder_id"].as_str().unwrap().to_owned();

    let (status, answer) = stack
        .post(
            &format!("/admin/bidders/{id}/suspend"),
            &admin,
            Some(json!({"reason": "shill bidding"})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["suspended"], true);
    // Their socket is told.
    let told = ws_until(&mut socket, |m| m["type"] == "error").await;
    assert_eq!(told["error"], "bidder_suspended");

    let (status, answer) = stack
        .post("/auctions/lot/bids", &mallory, Some(json!({"amount": 200})))
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (403, Some("bidder_suspended"))
    );
    send(
        &mut socket,
        json!({"type":"bid","auction":"lot","amount":300,"ref":"r1"}),
    )
    .await;
    let refused = ws_until(&mut socket, |m| m["ref"] == "r1").await;
    assert_eq!(refused["error"], "bidder_suspended", "{refused}");
    assert!(stack.redis.stream("lot").is_empty(), "nothing was appended");
    let (_, listed) = stack.get("/admin/suspended", Some(&admin)).await;
    assert_eq!(listed["bidders"], json!([id]));

    // Reinstated, they bid again.
    let (status, _) = stack
        .post(&format!("/admin/bidders/{id}/reinstate"), &admin, None)
        .await;
    assert_eq!(status, 200);
    ws_until(&mut socket, |m| m["type"] == "reinstated").await;
    let (status, _) = stack
        .post("/auctions/lot/bids", &mallory, Some(json!({"amount": 200})))
        .await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_without_the_admin_role_are_refused_every_admin_action_and_append_nothing() {
    let stack = Stack::start(RedisServer::start(), &["lot"]).await;
    let bidder = test_support::guest_token("Ann");
    let bidder_id = {
        let mut socket = stack.socket().await;
        send(&mut socket, json!({"type":"auth","token":bidder})).await;
        let who = ws_until(&mut socket, |m| m["type"] == "authenticated").await;
        who["bidder_id"].as_str().unwrap().to_owned()
    };
    for token in [bidder.clone(), test_support::seller_token()] {
        for action in ["close", "extend", "cancel", "delete"] {
            let body = (action == "extend").then(|| json!({"ends_at": 99_999_999_999_999u64}));
            let (status, answer) = stack
                .post(&format!("/admin/auctions/lot/{action}"), &token, body)
                .await;
            assert_eq!(
                (status, answer["error"].as_str()),
                (403, Some("forbidden")),
                "{action}"
            );
        }
        for action in ["suspend", "reinstate"] {
            let (status, answer) = stack
                .post(
                    &format!("/admin/bidders/{bidder_id}/{action}"),
                    &token,
                    None,
                )
                .await;
            assert_eq!(
                (status, answer["error"].as_str()),
                (403, Some("forbidden")),
                "{action}"
            );
        }
        for path in ["/admin/actions", "/admin/suspended"] {
            assert_eq!(stack.get(path, Some(&token)).await.0, 403, "{path}");
        }
    }
    // No token at all: 401.
    let (status, _) = stack
        .http
        .post(format!("{}/admin/auctions/lot/close", stack.bidder.url()))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 401);

    assert!(stack.redis.stream("lot").is_empty(), "nothing was appended");
    let (_, auction) = stack.get("/auctions/lot", None).await;
    assert_eq!(auction["status"], "open");
    let (status, _) = stack
        .post("/auctions/lot/bids", &bidder, Some(json!({"amount": 100})))
        .await;
    assert_eq!(status, 201, "the bidder was not suspended");
    let admin = test_support::admin_token("Olive Ops");
    let (_, log) = stack.get("/admin/actions", Some(&admin)).await;
    assert_eq!(log["actions"], json!([]));
}
