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
            let (addr, resume_from, head) = (edge.addr, resume_from.clone(), head.clone());
            tokio::spawn(async move {
                let mut conn = Conn::open(transport, addr, "storm", Some(&resume_from), None).await;
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
            })
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
