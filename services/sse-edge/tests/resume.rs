//! Resuming without gaps or duplicates: across replicas, across a Redis
//! restart, after a slow-client disconnect, and from the replica's memory
//! while Redis does not answer. Resuming after a drain is a conformance
//! case (tests/system), run on both transports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_exact, follow, start_edge};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::auctions::Terms;
use test_support::{RedisServer, ServiceProcess, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hops_replicas_with_nothing_lost_or_repeated() {
    let redis = RedisServer::start();
    let _bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "hop", 20));
    redis.wait_for_more("hop", "0-0", 1);
    let mut edge_a = start_edge(&redis, &[]);
    let edge_b = start_edge(&redis, &[]);
    let edges = vec![edge_a.url(), edge_b.url()];
    let mut killed = false;
    let seen = follow(&edges, "hop", Duration::from_secs(30), |seen| {
        if !killed && seen.ids.len() >= 15 {
            edge_a.kill(); // SIGKILL: no goodbye
            killed = true;
        }
        seen.ids.len() >= 45
    })
    .await;
    assert!(killed && seen.reconnects >= 1, "{seen:?}");
    assert_eq!(
        seen.inits.len(),
        1,
        "the hop resumed, it did not restart: {:?}",
        seen.inits
    );
    assert_exact(&redis, "hop", &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_for_100_clients() {
    let mut redis = RedisServer::start();
    let _bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "rr", 20));
    redis.wait_for_more("rr", "0-0", 1);
    let edge = start_edge(&redis, &[]);
    let target: Arc<Mutex<Option<String>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..100 {
        let edges = vec![edge.url()];
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
        wait_for("100 connections", Duration::from_secs(20), || {
            (edge.metric("auction_connections{transport=\"sse\"}") >= 100.0).then_some(())
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
        assert_eq!(seen.inits.len(), 1, "no client was reset: {:?}", seen.inits);
        assert_exact(&redis, "rr", &seen);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_and_resumes_without_loss() {
    let redis = RedisServer::start();
    let bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "", 1000));
    let edge = start_edge(
        &redis,
        &[
            ("AUCTION_CLIENT_QUEUE", "128"),
            ("AUCTION_SOCKET_SEND_BUFFER", "16384"),
        ],
    );
    let terms = Terms {
        starting_price: 1,
        min_increment: 1,
        duration_ms: 600_000,
    };
    test_support::auctions::create_with(&redis.url(), &["slow".into()], terms).await;
    let http = reqwest::Client::new();

    // The slow client: a tiny receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut slow = socket.connect(edge.addr).await.unwrap();
    slow.write_all(b"GET /auctions/slow/events HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .unwrap();

    // A healthy client on the same auction, reading throughout.
    let target: Arc<Mutex<Option<String>>> = Arc::default();
    let healthy = {
        let edges = vec![edge.url()];
        let target = target.clone();
        tokio::spawn(async move {
            follow(&edges, "slow", Duration::from_secs(60), |seen| {
                target
                    .lock()
                    .unwrap()
                    .as_deref()
                    .is_some_and(|t| seen.has_reached(t))
            })
            .await
        })
    };
    tokio::task::block_in_place(|| {
        wait_for("both connections", Duration::from_secs(10), || {
            (edge.metric("auction_connections{transport=\"sse\"}") >= 2.0).then_some(())
        })
    });
    let mut last = String::new();
    for amount in 1..=6000u64 {
        let body = format!(r#"{{"amount":{amount},"bidder":"b"}}"#);
        let response = http
            .post(format!("{}/auctions/slow/bids", bidder.url()))
            .bearer_auth(test_support::seller_token())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let json: serde_json::Value = response.json().await.unwrap();
        last = json["id"].as_str().unwrap().to_owned();
        if amount % 500 == 0
            && edge.metric("auction_slow_consumer_disconnects_total{transport=\"sse\"}") >= 1.0
        {
            break;
        }
    }
    *target.lock().unwrap() = Some(last.clone());
    tokio::task::block_in_place(|| {
        wait_for(
            "the slow client to be dropped",
            Duration::from_secs(20),
            || {
                (edge.metric("auction_slow_consumer_disconnects_total{transport=\"sse\"}") >= 1.0)
                    .then_some(())
            },
        )
    });
    let healthy = healthy.await.unwrap();
    assert_exact(&redis, "slow", &healthy);
    assert_eq!(
        healthy.reconnects, 0,
        "the healthy client kept its connection"
    );

    // The slow client now reads what it was sent before the edge closed it,
    // then resumes from its last id like EventSource would.
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let body_at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = bytes::Bytes::copy_from_slice(&raw[body_at..]);
    let mut before = common::Seen::default();
    let mut events =
        futures_util::stream::iter([Ok::<_, std::convert::Infallible>(body)]).eventsource();
    while let Some(Ok(event)) = events.next().await {
        match event.event.as_str() {
            "init" => before.inits.push((event.id.clone(), false)),
            "bid" | "closed" | "opened" => before.ids.push(event.id.clone()),
            _ => continue,
        }
        before.last = Some(event.id.clone());
    }
    assert!(before.ids.len() < 6000, "it was cut off early");
    let mut rest = before.clone();
    let resumed = common::follow_from(
        &[edge.url()],
        "slow",
        before.last.clone(),
        Duration::from_secs(30),
        |seen| seen.has_reached(&last),
    )
    .await;
    assert!(
        resumed.inits.is_empty(),
        "resumed, not reset: {:?}",
        resumed.inits
    );
    rest.ids.extend(resumed.ids);
    rest.last = resumed.last;
    assert_exact(&redis, "slow", &rest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recent_resume_is_served_from_memory_while_redis_hangs() {
    let redis = RedisServer::start();
    let _bidder = ServiceProcess::start("bidder", &common::bidder_env(&redis, "mem", 20));
    redis.wait_for_more("mem", "0-0", 1);
    let edge = start_edge(&redis, &[]);
    let edges = vec![edge.url()];

    // A keeps the auction's feed busy and tells how far the feed has got.
    let a_last: Arc<Mutex<Option<String>>> = Arc::default();
    let stop_a = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (edges, a_last, stop_a) = (edges.clone(), a_last.clone(), stop_a.clone());
        tokio::spawn(async move {
            follow(&edges, "mem", Duration::from_secs(60), |seen| {
                *a_last.lock().unwrap() = seen.last.clone();
                stop_a.load(std::sync::atomic::Ordering::Relaxed)
            })
            .await
        })
    };
    // B reads a few events and hangs up.
    let before = follow(&edges, "mem", Duration::from_secs(20), |seen| {
        seen.ids.len() >= 3
    })
    .await;
    let b_last = before.last.clone().unwrap();
    // The feed moves on; then Redis stops answering.
    let head = tokio::task::block_in_place(|| {
        let target = redis.wait_for_more("mem", &b_last, 5);
        wait_for("A to reach the target", Duration::from_secs(10), || {
            let last = a_last.lock().unwrap().clone()?;
            (test_support::id_pair(&last) >= test_support::id_pair(&target)).then_some(last)
        })
    });
    redis.pause();
    let resumed = common::follow_from(
        &edges,
        "mem",
        Some(b_last.clone()),
        Duration::from_secs(10),
        |seen| seen.has_reached(&head),
    )
    .await;
    redis.unpause();
    stop_a.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await.unwrap();

    assert!(
        resumed.refusals.is_empty() && resumed.inits.is_empty(),
        "replayed, not refused or reset: {resumed:?}"
    );
    assert!(resumed.has_reached(&head), "{resumed:?}");
    let last = resumed.last.clone().unwrap();
    assert_eq!(
        resumed.ids,
        redis.stream_ids_between("mem", &b_last, &last),
        "exactly the events after B's id"
    );
}
