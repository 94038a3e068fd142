//! Benchmark (ignored by default; figures in BENCHMARKS.md): bids appended
//! through the event log's script and notices delivered to subscribed edges,
//! on one Redis node and on a 3 + 3 Redis Cluster, with the Redis CPU time
//! they cost. Run with
//!   cargo test --release -p system-tests --test cluster_bench -- --ignored --nocapture
//! Each "edge" is a live connection like an edge replica's, watching every
//! auction of the run; bids come from concurrent appenders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use auction_domain::{AuctionId, BidSource, Bidder, BidderId, BidderName};
use event_log::{AuctionSpec, AuctionWriter, LiveConnection, LiveMessage, ReplicaAck};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use test_support::{RedisCluster, RedisServer};

const AUCTIONS: usize = 256;
const APPENDERS: usize = 64;
const SECONDS: u64 = 8;

/// Sum of `used_cpu_sys` + `used_cpu_user` in `INFO cpu` replies.
fn cpu_of_info(info: &str) -> f64 {
    info.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            matches!(name, "used_cpu_sys" | "used_cpu_user")
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

struct Figures {
    bids_per_s: f64,
    notices_per_s: f64,
    cpu_per_million_bids: f64,
    cpu_per_million_notices_per_edge: f64,
}

async fn run(url: &str, edges: usize, ack: u32, redis_cpu: &dyn Fn() -> f64) -> Figures {
    let target = event_log::parse_redis_url(url).unwrap();
    let writer = AuctionWriter::new(event_log::connect_manager(&target, || {}).unwrap(), 1000)
        .with_replica_ack(ReplicaAck {
            replicas: ack,
            timeout: Duration::from_millis(1000),
        });
    let run = std::process::id() ^ fastrand_seed();
    let auctions: Vec<AuctionId> = (0..AUCTIONS)
        .map(|i| AuctionId::parse(&format!("bench-{run}-{i}")).unwrap())
        .collect();
    for auction in &auctions {
        writer
            .create(&AuctionSpec {
                id: auction.clone(),
                title: "bench".into(),
                starting_price: 1,
                min_increment: 1,
                duration_ms: 3_600_000,
                description: None,
                image_url: None,
                seller: None,
                terms: None,
                rules: Default::default(),
            })
            .await
            .unwrap();
    }
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners = Vec::new();
    for _ in 0..edges {
        let mut live = LiveConnection::open(&target).await.unwrap();
        for batch in auctions.chunks(256) {
            live.watch(batch).await.unwrap();
        }
        // Each node's subscriptions are announced once made.
        let mut subscribed = 0;
        while subscribed < auctions.len() {
            match tokio::time::timeout(Duration::from_secs(30), live.next()).await {
                Ok(Some(LiveMessage::Subscribed { auctions })) => subscribed += auctions.len(),
                other => panic!("expected the subscriptions, got {other:?}"),
            }
        }
        let (received, stop) = (received.clone(), stop.clone());
        listeners.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), live.next()).await {
                    Ok(Some(LiveMessage::Event { .. })) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(_)) | Err(_) => {}
                    Ok(None) => panic!("a live connection ended during the run"),
                }
            }
        }));
    }
    let bidder = Bidder {
        id: BidderId::parse("bench").unwrap(),
        name: BidderName::parse("bench").unwrap(),
    };
    let cpu_before = redis_cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(SECONDS);
    let mut appenders = Vec::new();
    for a in 0..APPENDERS {
        let (writer, auctions, bidder) = (writer.clone(), auctions.clone(), bidder.clone());
        appenders.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            let mut amount = 10u64;
            while Instant::now() < deadline {
                let auction = &auctions[(a + amount as usize) % auctions.len()];
                amount += 1;
                let attempt = writer
                    .place_bid(auction, amount * 1000, &bidder, BidSource::User, None, None)
                    .await;
                if let Ok(Some(attempt)) = attempt
                    && matches!(attempt.answer, event_log::BidAnswer::Accepted { .. })
                {
                    accepted += 1;
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for appender in appenders {
        accepted += appender.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Notices still in flight arrive within a moment.
    let settle = Instant::now() + Duration::from_secs(5);
    while received.load(Ordering::Relaxed) < accepted * edges as u64 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = redis_cpu() - cpu_before;
    stop.store(true, Ordering::Relaxed);
    for listener in listeners {
        listener.await.unwrap();
    }
    let delivered = received.load(Ordering::Relaxed);
    assert_eq!(
        delivered,
        accepted * edges as u64,
        "every edge got every notice"
    );
    Figures {
        bids_per_s: accepted as f64 / elapsed,
        notices_per_s: delivered as f64 / elapsed,
        cpu_per_million_bids: cpu / accepted as f64 * 1e6,
        cpu_per_million_notices_per_edge: cpu / delivered as f64 * 1e6,
    }
}

fn fastrand_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn report(what: &str, edges: usize, figures: &Figures) {
    eprintln!(
        "| {what} | {edges} | {:.0} | {:.0} | {:.1} | {:.1} |",
        figures.bids_per_s,
        figures.notices_per_s,
        figures.cpu_per_million_bids,
        figures.cpu_per_million_notices_per_edge
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand with --release (BENCHMARKS.md)"]
async fn bench_bids_and_notices_one_node_vs_three_primaries() {
    eprintln!(
        "| Redis | subscribed edges | accepted bids/s | notices delivered to edges/s | Redis CPU-s per million bids | Redis CPU-s per million notices per edge |"
    );
    eprintln!("|---|---|---|---|---|---|");
    for edges in [1, 4] {
        let single = RedisServer::start();
        let cpu = || cpu_of_info(&single.command("INFO cpu"));
        let figures = run(&single.url(), edges, 0, &cpu).await;
        report("1 node", edges, &figures);
    }
    for (edges, ack) in [(1, 0), (4, 0), (4, 1)] {
        let cluster = RedisCluster::start();
        let cpu = || cluster.cpu_seconds();
        let figures = run(&cluster.url(), edges, ack, &cpu).await;
        let what = if ack == 0 {
            "cluster, 3 primaries + 3 replicas".to_owned()
        } else {
            "cluster, 3 + 3, bids wait for 1 replica".to_owned()
        };
        report(&what, edges, &figures);
    }
}
