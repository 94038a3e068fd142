//! A reconnect storm: many clients of one auction come back at once with
//! the same old id (an edge restarted, a load balancer reshuffled). Each
//! must get exactly the events after its id, and the edge must read them
//! from the stream once, not once per client.
//!
//! To make "at once" certain rather than likely, Redis is frozen (SIGSTOP)
//! while the clients arrive: the edge's first replay read waits in Redis,
//! and the test lets Redis go once the edge reports every other client
//! waiting for that read. The freeze stays well under the edge's Redis
//! response timeout (2 s), so nothing times out.
//!
//! A storm that is not frozen arrives in waves over some time; pages read
//! for one wave are kept for the next (`AUCTION_REPLAY_KEEP_MS`), so each
//! page of the stream is read once however the clients spread out.
//!
//! On a Redis Cluster only the primary holding the auction is frozen, and
//! the freeze stays under the cluster's node timeout too (2 s), so no other
//! node takes it for failed; the reads are counted on that primary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};
use test_support::conn::{Conn, Received, Transport};
use test_support::{RedisCluster, RedisServer, ServiceProcess, TestRedis, id_pair};

/// Clients in the storm.
const CLIENTS: usize = 1000;
/// Events in the stream after the clients' id: one page.
const MISSED: usize = 40;
/// Longest Redis stays frozen while the clients arrive.
const FREEZE: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sse_clients_resuming_from_the_same_old_id_cost_one_stream_read() {
    storm(Transport::Sse, &RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_ws_clients_resuming_from_the_same_old_id_cost_one_stream_read() {
    storm(Transport::Ws, &RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sse_clients_resuming_from_the_same_old_id_cost_one_stream_read_on_a_cluster() {
    storm(Transport::Sse, &RedisCluster::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_ws_clients_resuming_from_the_same_old_id_cost_one_stream_read_on_a_cluster() {
    storm(Transport::Ws, &RedisCluster::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_clients_resuming_in_waves_from_the_same_old_id_cost_one_read_per_page() {
    waves(Transport::Sse, &RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_clients_resuming_in_waves_from_the_same_old_id_cost_one_read_per_page() {
    waves(Transport::Ws, &RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resuming_in_waves_cost_one_read_per_page_on_a_cluster() {
    waves(Transport::Sse, &RedisCluster::start()).await;
}

/// Events behind the waves' id: three pages of 255 events at most.
const WAVE_MISSED: usize = 600;
const PAGES: u64 = 3;
const WAVE_CLIENTS: usize = 300;

/// Two waves of clients resume from the same id, the second once the first
/// is done (so no read of the first is still in flight): every page is
/// read from the stream once for both.
async fn waves(transport: Transport, redis: &impl TestRedis) {
    test_support::auctions::create(&redis.url(), &["waves".into()], 3_600_000).await;
    let resume_from = redis.append_without_notice("waves");
    let mut head = resume_from.clone();
    for _ in 0..WAVE_MISSED {
        head = redis.append_without_notice("waves");
    }
    let expected = redis.stream_ids_between("waves", &resume_from, &head);
    assert_eq!(expected.len(), WAVE_MISSED);
    // Kept far longer than the test takes: what is asserted is that pages
    // are kept, not how fast a wave is.
    let edge = ServiceProcess::start(
        transport.binary(),
        &[
            ("AUCTION_REDIS_URL", redis.url()),
            ("AUCTION_REPLAY_KEEP_MS", "60000".into()),
            test_support::session_secret_env(),
        ],
    );
    let mut watcher = Conn::open(transport, edge.addr, "waves", None, None).await;
    let init = watcher.next(Duration::from_secs(10)).await;
    assert!(
        matches!(&init, Some(Received::Init { id, .. }) if *id == head),
        "{init:?}"
    );
    let reads_before = redis.command_calls("waves", "xrange");
    for wave in 0..2 {
        let clients: Vec<_> = (0..WAVE_CLIENTS)
            .map(|_| {
                tokio::spawn(resume(
                    transport,
                    edge.addr,
                    "waves",
                    resume_from.clone(),
                    head.clone(),
                ))
            })
            .collect();
        for client in clients {
            let ids = client
                .await
                .expect("a client task")
                .unwrap_or_else(|(ids, last)| {
                    panic!("wave {wave}: after {} events: {last:?}", ids.len())
                });
            assert_eq!(ids, expected, "exactly the events after the id, in order");
        }
    }
    let reads = redis.command_calls("waves", "xrange") - reads_before;
    println!(
        "2 waves of {WAVE_CLIENTS} clients of {}: {reads} stream read(s)",
        transport.label()
    );
    assert_eq!(reads, PAGES, "one stream read per page for both waves");
    drop(watcher);
}

/// A client resuming from `resume_from`: the ids it got, up to `head`, or
/// those and what came instead of the next one.
async fn resume(
    transport: Transport,
    addr: std::net::SocketAddr,
    auction: &'static str,
    resume_from: String,
    head: String,
) -> Result<Vec<String>, (Vec<String>, Option<Received>)> {
    let mut conn = Conn::open(transport, addr, auction, Some(&resume_from), None).await;
    let mut ids = Vec::new();
    loop {
        match conn.next(Duration::from_secs(10)).await {
            Some(Received::Event { id, .. }) => {
                let done = id_pair(&id) >= id_pair(&head);
                ids.push(id);
                if done {
                    return Ok(ids);
                }
            }
            other => return Err((ids, other)),
        }
    }
}

async fn storm(transport: Transport, redis: &impl TestRedis) {
    test_support::auctions::create(&redis.url(), &["storm".into()], 3_600_000).await;
    let resume_from = redis.append_without_notice("storm");
    let mut head = resume_from.clone();
    for _ in 0..MISSED {
        head = redis.append_without_notice("storm");
    }
    let expected = redis.stream_ids_between("storm", &resume_from, &head);
    assert_eq!(expected.len(), MISSED);
    let edge = ServiceProcess::start(
        transport.binary(),
        &[
            ("AUCTION_REDIS_URL", redis.url()),
            test_support::session_secret_env(),
        ],
    );
    // A client already watching: the edge's feed of the auction is live,
    // so the storm's clients need nothing from Redis until their replay.
    let mut watcher = Conn::open(transport, edge.addr, "storm", None, None).await;
    let init = watcher.next(Duration::from_secs(10)).await;
    assert!(
        matches!(&init, Some(Received::Init { id, .. }) if *id == head),
        "{init:?}"
    );

    let reads_before = redis.command_calls("storm", "xrange");
    let shared = format!(
        "auction_replay_reads_shared_total{{transport=\"{}\"}}",
        transport.label()
    );
    let shared_before = edge.metric(&shared);
    redis.pause_owner("storm");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(resume(
                transport,
                edge.addr,
                "storm",
                resume_from.clone(),
                head.clone(),
            ))
        })
        .collect();
    // Every client but the first waits for the first one's read.
    let frozen = Instant::now();
    let waiting = loop {
        let waiting = edge.metric(&shared) - shared_before;
        if waiting >= (CLIENTS - 1) as f64 || frozen.elapsed() >= FREEZE {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let arrived_in = frozen.elapsed();
    redis.unpause();
    assert_eq!(
        waiting,
        (CLIENTS - 1) as f64,
        "only {waiting} clients were waiting for a read in flight after {arrived_in:?}"
    );

    for client in clients {
        let ids = client
            .await
            .expect("a client task")
            .unwrap_or_else(|(ids, last)| panic!("after {} events: {last:?}", ids.len()));
        assert_eq!(ids, expected, "exactly the events after the id, in order");
    }
    let reads = redis.command_calls("storm", "xrange") - reads_before;
    println!(
        "{} clients of {}: all waiting after {arrived_in:?}; {reads} stream read(s)",
        CLIENTS,
        transport.label()
    );
    assert_eq!(reads, 1, "one stream read for the whole storm");
    drop(watcher);
}
