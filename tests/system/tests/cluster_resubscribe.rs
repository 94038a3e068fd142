//! An edge watching 10,000 auctions on a Redis Cluster loses the primary of
//! one of them: how long until a client of an auction on that shard gets
//! events again, without restarting the edge. The time is printed (and
//! recorded in BENCHMARKS.md); the test bounds it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::{RedisCluster, ServiceProcess, id_pair, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WATCHED: usize = 10_000;
/// The bound the measured time must stay under on a loaded 2-core machine.
const RESUBSCRIBE_BOUND: Duration = Duration::from_secs(20);

fn auction(i: usize) -> String {
    format!("w-{i}")
}

async fn create_auctions(cluster: &RedisCluster) {
    let ids: Vec<String> = (0..WATCHED).map(auction).collect();
    test_support::auctions::create(&cluster.url(), &ids, 3_600_000).await;
}

/// An SSE client that stays connected after its `init` (so the edge keeps
/// the auction watched); returns the open stream.
async fn hold_open(addr: std::net::SocketAddr, i: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /auctions/{}/events HTTP/1.1\r\nHost: edge\r\nAccept: text/event-stream\r\n\r\n",
        auction(i)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("event: init\n") {
        let mut chunk = [0u8; 2048];
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the edge closed client {i}");
        seen.extend_from_slice(&chunk[..read]);
    }
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_watching_10k_auctions_resubscribes_after_a_primary_failover_within_a_bound() {
    let mut cluster = RedisCluster::start();
    create_auctions(&cluster).await;
    let probe = auction(0);
    let bidder = ServiceProcess::start(
        "bidder",
        &[
            ("AUCTION_REDIS_URL", cluster.url()),
            ("AUCTION_SIMULATE", "true".into()),
            ("AUCTION_SIM_AUCTIONS", probe.clone()),
            ("AUCTION_SIM_INTERVAL_MS", "50".into()),
            // Simulated bidders that never reach their limits: bids all along.
            ("AUCTION_SIM_LIMIT_RANGE_CENTS", "1000000000000".into()),
            test_support::session_secret_env(),
        ],
    );
    let edge = ServiceProcess::start(
        "sse-edge",
        &[
            ("AUCTION_REDIS_URL", cluster.url()),
            ("AUCTION_MAX_CONNECTIONS", (WATCHED + 100).to_string()),
            ("AUCTION_CLIENT_QUEUE", "16".into()),
            test_support::session_secret_env(),
        ],
    );
    let addr: std::net::SocketAddr = edge.url().trim_start_matches("http://").parse().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in (1..WATCHED).collect::<Vec<_>>().chunks(WATCHED / 16) {
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let mut held = Vec::new();
            for i in chunk {
                held.push(hold_open(addr, i).await);
            }
            held
        });
    }
    let mut held = Vec::new();
    while let Some(streams) = tasks.join_next().await {
        held.extend(streams.unwrap());
    }
    assert_eq!(held.len(), WATCHED - 1);

    // The probe client records the newest id it received.
    let newest: Arc<Mutex<Option<String>>> = Arc::default();
    let stop = Arc::new(Mutex::new(false));
    let follower = {
        let (newest, stop) = (newest.clone(), stop.clone());
        let edges = vec![edge.url()];
        let probe = probe.clone();
        tokio::spawn(async move {
            test_support::clients::sse_follow(&edges, &probe, Duration::from_secs(180), |seen| {
                *newest.lock().unwrap() = seen.last.clone();
                *stop.lock().unwrap()
            })
            .await
        })
    };
    let received = |id: &str| {
        newest
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|last| id_pair(last) >= id_pair(id))
    };
    let head = |cluster: &RedisCluster| {
        cluster
            .stream(&probe)
            .last()
            .map(|entry| entry.id.clone())
            .unwrap_or_else(|| "0-0".into())
    };
    tokio::task::block_in_place(|| {
        let live = head(&cluster);
        wait_for(
            "the probe's events to flow",
            Duration::from_secs(60),
            || (received(&live) && live != "0-0").then_some(()),
        );
    });

    let primary = cluster.primary_of_auction(&probe);
    let killed_at = Instant::now();
    cluster.kill(primary.port);
    let (failover, resubscribe) = tokio::task::block_in_place(|| {
        let failover = cluster.wait_for_failover(primary.port, Duration::from_secs(30));
        let failed_over_at = Instant::now();
        // The first event appended after the failover, as the probe sees it.
        let before = head(&cluster);
        let after = wait_for("a bid after the failover", Duration::from_secs(30), || {
            let newest = head(&cluster);
            (id_pair(&newest) > id_pair(&before)).then_some(newest)
        });
        while !received(&after) {
            if failed_over_at.elapsed() > RESUBSCRIBE_BOUND {
                let logs = edge.logs();
                let tail: Vec<&str> = logs.lines().rev().take(30).collect();
                panic!(
                    "the probe received nothing after the failover within {RESUBSCRIBE_BOUND:?}; edge log (newest first):\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (failover, failed_over_at.elapsed())
    });
    eprintln!(
        "watched {WATCHED} auctions; failover took {failover:?}; the edge delivered again \
         {resubscribe:?} after the failover ({:?} after the kill); edge reconnects {}",
        killed_at.elapsed(),
        edge.metric("auction_redis_reconnects_total")
    );
    assert!(resubscribe < RESUBSCRIBE_BOUND);
    *stop.lock().unwrap() = true;
    follower.await.unwrap();
    drop(held);
    drop(bidder);
}
