//! WebSocket fan-out against real processes: replica hop, Redis restart.
//! A drain (close 1012, then a resume elsewhere) is a conformance case
//! (tests/system), run on both transports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{follow, start_edge, ws_url};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_hops_replicas_with_nothing_lost_or_repeated() {
    let redis = RedisServer::start();
    let _bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "hop", 20));
    redis.wait_for_more("hop", "0-0", 1);
    let mut edge_a = start_edge(&redis, None, &[]);
    let edge_b = start_edge(&redis, None, &[]);
    let edges = vec![ws_url(&edge_a), ws_url(&edge_b)];
    let mut killed = false;
    let seen = follow(&edges, "hop", Duration::from_secs(30), |seen| {
        if !killed && seen.ids.len() >= 15 {
            edge_a.kill();
            killed = true;
        }
        seen.ids.len() >= 45
    })
    .await;
    assert!(killed && seen.reconnects >= 1);
    assert_eq!(
        seen.inits.len(),
        1,
        "resumed with last_id, not reset: {:?}",
        seen.inits
    );
    seen.assert_exact(&redis, "hop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_for_100_sockets() {
    let mut redis = RedisServer::start();
    let _bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "rr", 20));
    redis.wait_for_more("rr", "0-0", 1);
    let edge = start_edge(&redis, None, &[]);
    let target: Arc<Mutex<Option<String>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..100 {
        let edges = vec![ws_url(&edge)];
        let target = target.clone();
        clients.push(tokio::spawn(async move {
            follow(&edges, "rr", Duration::from_secs(60), |seen| {
                target
                    .lock()
                    .unwrap()
                    .as_deref()
                    .is_some_and(|t| seen.has_reached(t))
            })
            .await
        }));
    }
    tokio::task::block_in_place(|| {
        wait_for("100 sockets", Duration::from_secs(20), || {
            (edge.metric("auction_connections{transport=\"ws\"}") >= 100.0).then_some(())
        });
        let before = redis.head("rr");
        redis.wait_for_more("rr", &before, 10);
        redis.kill();
        wait_for("the edge to notice", Duration::from_secs(10), || {
            edge.answers("/readyz", 503).then_some(())
        });
        redis.restart();
        let after = redis.head("rr");
        *target.lock().unwrap() = Some(redis.wait_for_more("rr", &after, 20));
    });
    for client in clients {
        let seen = client.await.unwrap();
        assert_eq!(seen.inits.len(), 1, "no socket was reset: {:?}", seen.inits);
        seen.assert_exact(&redis, "rr");
    }
}
