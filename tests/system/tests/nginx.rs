//! Through the project's nginx configuration: an SSE client and a
//! WebSocket client, each edge serving them killed mid-stream, both resume
//! on the other replica with nothing lost and nothing repeated.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::clients::{sse_follow, ws_follow};
use test_support::{Nginx, RedisServer, ServiceProcess, id_pair, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_websocket_clients_resume_through_nginx_when_an_edge_dies() {
    let redis = RedisServer::start();
    let bidder = ServiceProcess::start(
        "bidder",
        &[
            ("AUCTION_REDIS_URL", redis.url()),
            ("AUCTION_SIM_AUCTIONS", "lb".into()),
            ("AUCTION_SIM_INTERVAL_MS", "20".into()),
            // Simulated bidders that never reach their limits: bids all along.
            ("AUCTION_SIM_LIMIT_RANGE_CENTS", "1000000000000".into()),
            test_support::session_secret_env(),
        ],
    );
    let edge = |binary| {
        ServiceProcess::start(
            binary,
            &[
                ("AUCTION_REDIS_URL", redis.url()),
                ("AUCTION_SSE_RETRY_MS", "50".into()),
                test_support::session_secret_env(),
            ],
        )
    };
    let mut sse = [edge("sse-edge"), edge("sse-edge")];
    let mut ws = [edge("ws-edge"), edge("ws-edge")];
    let nginx = Nginx::start(
        &[bidder.addr],
        &[sse[0].addr, sse[1].addr],
        &[ws[0].addr, ws[1].addr],
    );
    wait_for("the simulated auction", Duration::from_secs(20), || {
        (!redis.stream("lb").is_empty()).then_some(())
    });

    let target: Arc<Mutex<Option<String>>> = Arc::default();
    let reached = |target: &Arc<Mutex<Option<String>>>| {
        let target = target.clone();
        move |seen: &test_support::Seen| {
            target
                .lock()
                .unwrap()
                .as_deref()
                .is_some_and(|t| seen.has_reached(t))
        }
    };
    let sse_client = {
        let urls = vec![nginx.url()];
        let done = reached(&target);
        tokio::spawn(async move { sse_follow(&urls, "lb", Duration::from_secs(60), done).await })
    };
    let ws_client = {
        let urls = vec![format!("ws://127.0.0.1:{}/ws", nginx.port)];
        let done = reached(&target);
        tokio::spawn(async move { ws_follow(&urls, "lb", Duration::from_secs(60), done).await })
    };
    tokio::task::block_in_place(|| {
        let serving = |replicas: &[ServiceProcess; 2], transport: &str| {
            wait_for("a client on a replica", Duration::from_secs(20), || {
                replicas.iter().position(|r| {
                    r.metric(&format!("auction_connections{{transport=\"{transport}\"}}")) >= 1.0
                })
            })
        };
        let sse_index = serving(&sse, "sse");
        let ws_index = serving(&ws, "ws");
        let head = redis.stream("lb").last().unwrap().id.clone();
        wait_for("some events", Duration::from_secs(20), || {
            (redis
                .stream("lb")
                .iter()
                .filter(|e| id_pair(&e.id) > id_pair(&head))
                .count()
                >= 15)
                .then_some(())
        });
        sse[sse_index].kill();
        ws[ws_index].kill();
        let head = redis.stream("lb").last().unwrap().id.clone();
        let last = wait_for("events after the kill", Duration::from_secs(20), || {
            let newer: Vec<_> = redis
                .stream("lb")
                .into_iter()
                .filter(|e| id_pair(&e.id) > id_pair(&head))
                .collect();
            (newer.len() >= 30).then(|| newer.last().unwrap().id.clone())
        });
        *target.lock().unwrap() = Some(last);
    });
    for client in [sse_client, ws_client] {
        let seen = client.await.unwrap();
        assert!(
            seen.reconnects >= 1,
            "the client lost its replica: {seen:?}"
        );
        assert_eq!(seen.inits.len(), 1, "resumed, not reset: {:?}", seen.inits);
        seen.assert_exact(&redis, "lb");
    }
}

#[test]
fn the_ops_endpoints_are_not_reachable_through_nginx() {
    use std::io::{Read, Write};
    let redis = RedisServer::start();
    let bidder = ServiceProcess::start("bidder", &test_support::bidder_env(&redis, "", 1000));
    let env = [
        ("AUCTION_REDIS_URL", redis.url()),
        test_support::session_secret_env(),
    ];
    let sse = ServiceProcess::start("sse-edge", &env);
    let ws = ServiceProcess::start("ws-edge", &env);
    let nginx = Nginx::start(&[bidder.addr], &[sse.addr], &[ws.addr]);
    let status = |path: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text.split(' ').nth(1).unwrap_or_default().to_owned()
    };
    // The public routes are there...
    assert_eq!(status("/openapi.json"), "200");
    assert_eq!(status("/"), "200");
    // ...the ops endpoints are not, though every replica serves them on its
    // ops listener.
    for path in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/readyz?x=1",
        "/metrics/",
    ] {
        assert_eq!(status(path), "404", "{path}");
    }
    for service in [&bidder, &sse, &ws] {
        assert!(service.answers("/healthz", 200));
    }
}
