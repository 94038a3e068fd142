//! One conformance suite for both edges: every case runs against the real
//! `sse-edge` and `ws-edge` binaries on a real redis-server, and both
//! transports must give the same outcome, with the same metric counts.
//!
//! The events come from the bidder's simulator (one bid per interval on a
//! simulated auction), so the cases exercise the edges, not the bid API.
//!
//! Every case runs twice: on one node and on a Redis Cluster (3 primaries +
//! 3 replicas, sharded notices). What a case does to Redis itself it does,
//! on the cluster, to the primary holding the auction's keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use test_support::conn::{Conn, Origin, Received, Transport};
use test_support::{
    RedisCluster, RedisServer, ServiceProcess, TestRedis, TestRedisProcesses, bidder_env, id_pair,
    wait_for,
};

const QUIET: Duration = Duration::from_secs(10);
/// Five rounds of viewer counts at `AUCTION_VIEWERS_INTERVAL_MS` 200: a
/// count that was going to move has moved by then.
const SETTLED: Duration = Duration::from_secs(1);

fn start_edge(
    transport: Transport,
    redis: &impl TestRedis,
    extra: &[(&str, &str)],
) -> ServiceProcess {
    let mut env = vec![
        ("AUCTION_REDIS_URL", redis.url()),
        test_support::session_secret_env(),
    ];
    env.extend(
        extra
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned())),
    );
    ServiceProcess::start(transport.binary(), &env)
}

/// A bidder simulating bids on `auction`. Its stream keeps every event:
/// the cases compare what clients got with the stream, and on a loaded
/// machine a case can outlast the default window (10,000 events, 100 s at
/// 10 ms), whose trimming would make a received event look extra.
fn simulator(redis: &impl TestRedis, auction: &str, interval_ms: u64) -> ServiceProcess {
    let mut env = bidder_env(redis, auction, interval_ms);
    env.push(("AUCTION_STREAM_MAXLEN", "10000000".into()));
    ServiceProcess::start("bidder", &env)
}

/// The delivery metrics of one edge, as the conformance cases compare them.
#[derive(Debug, PartialEq)]
struct Counts {
    delivered: f64,
    replayed: f64,
    reset: f64,
    slow: f64,
}

fn counts(edge: &ServiceProcess, transport: Transport) -> Counts {
    let t = transport.label();
    Counts {
        delivered: edge.metric(&format!(
            "auction_events_delivered_total{{transport=\"{t}\"}}"
        )),
        replayed: edge.metric(&format!(
            "auction_resumes_total{{transport=\"{t}\",outcome=\"replayed\"}}"
        )),
        reset: edge.metric(&format!(
            "auction_resumes_total{{transport=\"{t}\",outcome=\"reset\"}}"
        )),
        slow: edge.metric(&format!(
            "auction_slow_consumer_disconnects_total{{transport=\"{t}\"}}"
        )),
    }
}

/// Event ids among `received`, in order.
fn event_ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .filter_map(|r| match r {
            Received::Event { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// Reads until an event at or past `target` arrived (or the stream ends).
async fn read_until(conn: &mut Conn, target: &str, into: &mut Vec<Received>) {
    loop {
        let received = conn.next(QUIET).await.expect("the stream went quiet");
        let done = match &received {
            Received::Event { id, .. } => id_pair(id) >= id_pair(target),
            Received::Ended(_) | Received::Refused(_) => true,
            Received::Init { .. } => false,
        };
        into.push(received);
        if done {
            return;
        }
    }
}

/// Asserts that `ids` is exactly the stream's events after `after`, up to
/// and including its own last one: nothing missing, nothing twice.
fn assert_exact(redis: &impl TestRedis, auction: &str, after: &str, ids: &[String]) {
    let last = ids.last().expect("events were received");
    let expected = redis.stream_ids_between(auction, after, last);
    assert_eq!(
        ids.len(),
        expected.len(),
        "received {} events, the stream has {} (first received {:?})",
        ids.len(),
        expected.len(),
        ids.first()
    );
    assert_eq!(ids, expected.as_slice());
}

fn init_id(received: &[Received]) -> String {
    received
        .iter()
        .find_map(|r| match r {
            Received::Init { id, .. } => Some(id.clone()),
            _ => None,
        })
        .expect("an init")
}

/// Where a client resumes after `received`: its last event's id, or its
/// init's when no event came.
fn last_id(received: &[Received]) -> String {
    received
        .iter()
        .rev()
        .find_map(|r| match r {
            Received::Event { id, .. } | Received::Init { id, .. } => Some(id.clone()),
            _ => None,
        })
        .expect("an init or an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_hop_replicas_after_a_sigkill_with_nothing_lost() {
    hop_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_hop_replicas_after_a_sigkill_with_nothing_lost_on_a_cluster() {
    hop_case(&RedisCluster::start()).await;
}

async fn hop_case(redis: &impl TestRedis) {
    let _bidder = simulator(&redis, "hop", 10);
    redis.wait_for_more("hop", "0-0", 1);
    let mut outcomes = Vec::new();
    for transport in Transport::BOTH {
        let mut edge_a = start_edge(transport, &redis, &[]);
        let edge_b = start_edge(transport, &redis, &[]);
        let mut conn = Conn::open(transport, edge_a.addr, "hop", None, None).await;
        let mut first = Vec::new();
        let target = redis.wait_for_more("hop", &redis.head("hop"), 10);
        read_until(&mut conn, &target, &mut first).await;
        edge_a.kill(); // no goodbye
        first.extend(conn.drain(QUIET).await);
        assert!(
            matches!(first.last(), Some(Received::Ended(_))),
            "{first:?}"
        );
        let start = init_id(&first);
        let mut ids = event_ids(&first);
        let last = ids.last().unwrap().clone();
        let mut resumed = Vec::new();
        let mut conn = Conn::open(transport, edge_b.addr, "hop", Some(&last), None).await;
        let target = redis.wait_for_more("hop", &redis.head("hop"), 10);
        read_until(&mut conn, &target, &mut resumed).await;
        assert!(
            !resumed.iter().any(|r| matches!(r, Received::Init { .. })),
            "{transport:?}: the hop resumed, it did not restart"
        );
        ids.extend(event_ids(&resumed));
        assert_exact(&redis, "hop", &start, &ids);
        outcomes.push(counts(&edge_b, transport).replayed);
    }
    assert_eq!(
        outcomes,
        [1.0, 1.0],
        "one replayed resume on each transport"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_ride_out_a_redis_restart_with_nothing_lost() {
    restart_case(RedisServer::start()).await;
}

/// On a cluster, the Redis restart an operator meets is a node's: the
/// primary serving the auction's slot crashes (SIGKILL) and its supervisor
/// starts it again with its data, before a replica takes over (a failover
/// is the hop's and the cluster tests' case). Every other node stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_transports_ride_out_a_redis_restart_with_nothing_lost_on_a_cluster() {
    restart_case(RedisCluster::start()).await;
}

async fn restart_case(mut redis: impl TestRedisProcesses) {
    let _bidder = simulator(&redis, "rr", 10);
    redis.wait_for_more("rr", "0-0", 1);
    let sse = start_edge(Transport::Sse, &redis, &[]);
    let ws = start_edge(Transport::Ws, &redis, &[]);
    let mut conns = Vec::new();
    for (transport, edge) in [(Transport::Sse, &sse), (Transport::Ws, &ws)] {
        let mut conn = Conn::open(transport, edge.addr, "rr", None, None).await;
        let mut seen = Vec::new();
        let target = redis.wait_for_more("rr", &redis.head("rr"), 3);
        read_until(&mut conn, &target, &mut seen).await;
        conns.push((transport, conn, seen));
    }
    tokio::task::block_in_place(|| {
        // Noticed: on one node the edges turn unready; on a cluster, whose
        // other primaries still answer (so the edges stay ready), each edge
        // loses its live connection to that node alone.
        const NODE_LOST: &str = "a cluster node's live connection was lost";
        redis.crash_and_restart_owner("rr", &mut || {
            wait_for("both edges to notice", Duration::from_secs(10), || {
                let unready = sse.answers("/readyz", 503) && ws.answers("/readyz", 503);
                let node_lost = sse.logs().contains(NODE_LOST) && ws.logs().contains(NODE_LOST);
                (unready || node_lost).then_some(())
            });
        });
    });
    let target = redis.wait_for_more("rr", &redis.head("rr"), 10);
    for (transport, mut conn, mut seen) in conns {
        read_until(&mut conn, &target, &mut seen).await;
        assert_eq!(
            seen.iter()
                .filter(|r| matches!(r, Received::Init { .. }))
                .count(),
            1,
            "{transport:?}: the connection stayed open through the restart"
        );
        assert_exact(&redis, "rr", &init_id(&seen), &event_ids(&seen));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_middle_of_a_replay_restarts_the_view_on_both_transports() {
    gap_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_middle_of_a_replay_restarts_the_view_on_both_transports_on_a_cluster() {
    gap_case(&RedisCluster::start()).await;
}

async fn gap_case(redis: &impl TestRedis) {
    let mut bidder = simulator(&redis, "gap", 2);
    redis.wait_for_more("gap", "0-0", 420);
    bidder.kill(); // a still stream: the case is exact
    let ids: Vec<String> = redis.stream("gap").into_iter().map(|e| e.id).collect();
    let from = ids.len() - 400;
    // The 300th event after the resume point disappears: the replay's
    // second read (256 events each) meets the hole.
    let hole = &ids[from + 300];
    assert!(redis.delete_event("gap", hole));
    let mut outcomes = Vec::new();
    for transport in Transport::BOTH {
        let edge = start_edge(transport, &redis, &[]);
        let mut conn = Conn::open(transport, edge.addr, "gap", Some(&ids[from]), None).await;
        let mut received = Vec::new();
        while received.len() < 300 {
            received.push(conn.next(QUIET).await.expect("the replay went quiet"));
        }
        assert_eq!(
            event_ids(&received[..299]),
            ids[from + 1..from + 300].to_vec(),
            "{transport:?}: every event before the hole, in order"
        );
        let position = |r: &Received| match r {
            Received::Event { id, .. } => ids.iter().position(|i| i == id),
            _ => None,
        };
        assert_eq!(
            received[299],
            Received::Init {
                id: ids.last().unwrap().clone(),
                reset: true
            },
            "{transport:?}: then a fresh view (got event #{:?}, hole #{})",
            position(&received[299]).map(|p| p as isize - from as isize),
            300
        );
        assert_eq!(conn.next(Duration::from_millis(300)).await, None);
        outcomes.push(counts(&edge, transport));
    }
    assert_eq!(
        outcomes[0],
        Counts {
            delivered: 299.0,
            replayed: 0.0,
            reset: 1.0,
            slow: 0.0
        }
    );
    assert_eq!(outcomes[0], outcomes[1], "same counts on both transports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_notice_is_recovered_for_a_client_that_is_replaying() {
    lost_notice_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_notice_is_recovered_for_a_client_that_is_replaying_on_a_cluster() {
    lost_notice_case(&RedisCluster::start()).await;
}

async fn lost_notice_case(redis: &impl TestRedis) {
    let _bidder = simulator(&redis, "lost", 5);
    let start = redis.wait_for_more("lost", "0-0", 300);
    for transport in Transport::BOTH {
        let edge = start_edge(transport, &redis, &[]);
        let mut conn = Conn::open(transport, edge.addr, "lost", Some(&start), None).await;
        // An event appended without its notice, as if the notice were lost
        // on the way: only the next notice's `prev` shows it.
        let silent = redis.append_without_notice("lost");
        let mut received = Vec::new();
        let target = redis.wait_for_more("lost", &silent, 20);
        read_until(&mut conn, &target, &mut received).await;
        let ids = event_ids(&received);
        assert!(
            ids.contains(&silent),
            "{transport:?}: the silent event arrived"
        );
        assert_exact(&redis, "lost", &start, &ids);
    }
}

/// A client that stops reading until the edge gives up on it: cut off
/// once, counted once, and a resume from its last id misses nothing.
async fn slow_client_case(
    redis: &impl TestRedis,
    settings: &[(&str, &str)],
    stop_events_after: Option<usize>,
) -> Vec<Counts> {
    let mut bidder = simulator(&redis, "slow", 2);
    redis.wait_for_more("slow", "0-0", 1);
    let mut outcomes = Vec::new();
    for transport in Transport::BOTH {
        if bidder.wait_exit(Duration::ZERO).is_some() {
            bidder = simulator(&redis, "slow", 2);
        }
        let edge = start_edge(transport, &redis, settings);
        let mut conn = Conn::open(transport, edge.addr, "slow", None, Some(4096)).await;
        let mut received = vec![conn.next(QUIET).await.expect("init")];
        let start = init_id(&received);
        if let Some(events) = stop_events_after {
            tokio::task::block_in_place(|| redis.wait_for_more("slow", &start, events));
            bidder.kill();
        }
        // Not reading now: the edge must notice by itself.
        tokio::task::block_in_place(|| {
            wait_for(
                "the edge to cut the client off",
                Duration::from_secs(30),
                || (counts(&edge, transport).slow >= 1.0).then_some(()),
            );
        });
        received.extend(conn.drain(QUIET).await);
        assert!(
            matches!(received.last(), Some(Received::Ended(_))),
            "{transport:?}"
        );
        // Counted as it was cut off: the resume below reads at full speed,
        // but on a tiny queue a busy machine may lap it too.
        let mut counted = counts(&edge, transport);
        // Deliveries depend on how far the client got; the rest must agree.
        counted.delivered = 0.0;
        let mut ids = event_ids(&received);
        let last = ids.last().cloned().unwrap_or_else(|| start.clone());
        if bidder.wait_exit(Duration::ZERO).is_some() {
            bidder = simulator(&redis, "slow", 2);
        }
        let mut conn = Conn::open(transport, edge.addr, "slow", Some(&last), None).await;
        let target = redis.wait_for_more("slow", &redis.head("slow"), 5);
        let mut resumed = Vec::new();
        read_until(&mut conn, &target, &mut resumed).await;
        assert!(
            !resumed.iter().any(|r| matches!(r, Received::Init { .. })),
            "{transport:?}: resumed from its last id"
        );
        ids.extend(event_ids(&resumed));
        assert_exact(&redis, "slow", &start, &ids);
        outcomes.push(counted);
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapped_client_is_cut_off_once_and_resumes_exactly_on_both_transports() {
    let settings = [
        ("AUCTION_CLIENT_QUEUE", "8"),
        ("AUCTION_SOCKET_SEND_BUFFER", "4096"),
    ];
    for outcomes in [
        slow_client_case(&RedisServer::start(), &settings, None).await,
        slow_client_case(&RedisCluster::start(), &settings, None).await,
    ] {
        assert_eq!(outcomes[0].slow, 1.0, "{outcomes:?}");
        assert_eq!(outcomes[0], outcomes[1], "same counts on both transports");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_cut_off_at_the_stall_limit_on_both_transports() {
    // A queue no burst can lap: only the stall limit can end this client.
    let settings = [
        ("AUCTION_CLIENT_QUEUE", "4096"),
        ("AUCTION_SOCKET_SEND_BUFFER", "4096"),
        ("AUCTION_CLIENT_STALL_MS", "1000"),
    ];
    for outcomes in [
        slow_client_case(&RedisServer::start(), &settings, Some(600)).await,
        slow_client_case(&RedisCluster::start(), &settings, Some(600)).await,
    ] {
        assert_eq!(outcomes[0].slow, 1.0, "{outcomes:?}");
        assert_eq!(outcomes[0], outcomes[1], "same counts on both transports");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_replica_ends_its_streams_and_clients_resume_elsewhere() {
    drain_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_replica_ends_its_streams_and_clients_resume_elsewhere_on_a_cluster() {
    drain_case(&RedisCluster::start()).await;
}

/// A pause of up to 200 ms, different per client, so that refused
/// clients do not all come back at once.
fn fastrand_ms() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() % 200
}

/// Clients on the replica that is drained: its streams all end at once.
const DRAINED: usize = 500;

/// Opens `auction` on the edge at `addr` (resuming after `last` when given)
/// as a page does: told to come back shortly (`redis_unavailable`, as a
/// loaded machine may answer hundreds of clients arriving at once), it
/// comes back. Returns the connection and the first thing it received.
async fn open_served(
    transport: Transport,
    addr: std::net::SocketAddr,
    auction: &str,
    last: Option<&str>,
) -> (Conn, Received) {
    // As a page does: after a pause (a tight loop of hundreds of clients
    // would keep a loaded replica busy refusing them), for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut conn = Conn::open(transport, addr, auction, last, None).await;
        match conn.next(QUIET).await.expect("an answer") {
            Received::Refused(code) if code == "redis_unavailable" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100 + fastrand_ms())).await;
            }
            first => return (conn, first),
        }
    }
}

/// A replica drained (SIGTERM) with hundreds of clients on it ends every
/// stream in its transport's own way and exits 0 well within its grace
/// period; each client resumes from its last id on another replica, not
/// reset, with nothing lost or repeated.
async fn drain_case(redis: &impl TestRedis) {
    let _bidder = simulator(&redis, "drain", 10);
    redis.wait_for_more("drain", "0-0", 1);
    let mut endings = Vec::new();
    for transport in Transport::BOTH {
        let mut edge_a = start_edge(transport, &redis, &[("AUCTION_SHUTDOWN_GRACE_MS", "5000")]);
        let edge_b = start_edge(transport, &redis, &[]);
        // Each client reads A until its stream ends. The drain starts once
        // every client has its init from A, so no client's start is itself
        // the drain (a slow machine would let a late one begin on B).
        let started = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..DRAINED)
            .map(|_| {
                let (addr, started) = (edge_a.addr, started.clone());
                tokio::spawn(async move {
                    let (mut conn, init) = open_served(transport, addr, "drain", None).await;
                    let mut first = vec![init];
                    started.fetch_add(1, Ordering::Relaxed);
                    first.extend(conn.drain(QUIET).await);
                    first
                })
            })
            .collect();
        tokio::task::block_in_place(|| {
            wait_for(
                "every client's init from A",
                Duration::from_secs(30),
                || (started.load(Ordering::Relaxed) >= DRAINED).then_some(()),
            );
            redis.wait_for_more("drain", &redis.head("drain"), 5);
            let draining = Instant::now();
            edge_a.signal("TERM");
            let status = edge_a.wait_exit(Duration::from_secs(10));
            assert!(
                status.is_some_and(|s| s.success()),
                "{transport:?}: drained and exited 0: {}",
                edge_a.logs()
            );
            assert!(
                draining.elapsed() < Duration::from_secs(5),
                "{transport:?}: within the grace period"
            );
            assert!(
                !edge_a.logs().contains("grace period over"),
                "{transport:?}: every stream ended before the deadline"
            );
        });
        let mut firsts = Vec::new();
        for client in clients {
            firsts.push(client.await.unwrap());
        }
        let ending = firsts[0].last().cloned();
        for first in &firsts {
            assert!(
                matches!(first.first(), Some(Received::Init { .. })),
                "{transport:?}: {first:?}"
            );
            assert_eq!(
                first.last(),
                ending.as_ref(),
                "{transport:?}: every stream ended the same way"
            );
        }
        endings.push(ending);
        // Every client resumes on B from its last id, all at once.
        let target =
            tokio::task::block_in_place(|| redis.wait_for_more("drain", &redis.head("drain"), 5));
        let resumes: Vec<_> = firsts
            .iter()
            .map(|first| {
                let (addr, last, target) = (edge_b.addr, last_id(first), target.clone());
                tokio::spawn(async move {
                    let (mut conn, start) =
                        open_served(transport, addr, "drain", Some(&last)).await;
                    let reached = matches!(&start, Received::Event { id, .. }
                        if id_pair(id) >= id_pair(&target));
                    let mut resumed = vec![start];
                    if !reached {
                        read_until(&mut conn, &target, &mut resumed).await;
                    }
                    resumed
                })
            })
            .collect();
        let mut resumed = Vec::new();
        for resume in resumes {
            resumed.push(resume.await.unwrap());
        }
        for (first, resumed) in firsts.iter().zip(&resumed) {
            assert!(
                matches!(resumed.last(), Some(Received::Event { .. })),
                "{transport:?}: resumed on B up to the target: {resumed:?}"
            );
            assert!(
                !resumed.iter().any(|r| matches!(r, Received::Init { .. })),
                "{transport:?}: resumed on B, not reset"
            );
            let mut ids = event_ids(first);
            ids.extend(event_ids(resumed));
            assert_exact(&redis, "drain", &init_id(first), &ids);
        }
    }
    // Each transport's own way of saying "reconnect": the end of the SSE
    // stream, and close code 1012 (service restart).
    assert_eq!(
        endings,
        [
            Some(Received::Ended(None)),
            Some(Received::Ended(Some(1012)))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_or_future_resume_ids_get_a_reset_init_on_both_transports() {
    garbled_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_or_future_resume_ids_get_a_reset_init_on_both_transports_on_a_cluster() {
    garbled_case(&RedisCluster::start()).await;
}

async fn garbled_case(redis: &impl TestRedis) {
    let mut bidder = simulator(&redis, "garbled", 5);
    redis.wait_for_more("garbled", "0-0", 3);
    bidder.kill();
    let head = redis.head("garbled");
    let mut outcomes = Vec::new();
    for transport in Transport::BOTH {
        let edge = start_edge(transport, &redis, &[]);
        for resume in ["garbage", "99999999999999-0", "-1"] {
            let mut conn = Conn::open(transport, edge.addr, "garbled", Some(resume), None).await;
            assert_eq!(
                conn.next(QUIET).await,
                Some(Received::Init {
                    id: head.clone(),
                    reset: true
                }),
                "{transport:?} resuming from {resume:?}"
            );
        }
        outcomes.push(counts(&edge, transport));
    }
    assert_eq!(outcomes[0].reset, 3.0);
    assert_eq!(outcomes[0], outcomes[1], "same counts on both transports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_events_latency_runs_from_the_close_not_from_the_last_bid() {
    closing_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_events_latency_runs_from_the_close_not_from_the_last_bid_on_a_cluster() {
    closing_case(&RedisCluster::start()).await;
}

async fn closing_case(redis: &impl TestRedis) {
    use auction_domain::{AuctionId, BidSource, Bidder, BidderId, BidderName};
    use event_log::AuctionWriter;
    // The bidder only closes auctions here (no simulator).
    let _closer = ServiceProcess::start(
        "bidder",
        &[
            ("AUCTION_REDIS_URL", redis.url()),
            ("AUCTION_SIMULATE", "false".into()),
            ("AUCTION_CLOSE_CHECK_MS", "20".into()),
            test_support::session_secret_env(),
        ],
    );
    let target = event_log::parse_redis_url(&redis.url()).unwrap();
    let writer = AuctionWriter::new(event_log::connect_manager(&target, || {}).unwrap(), 100);
    let sse = start_edge(Transport::Sse, &redis, &[]);
    let ws = start_edge(Transport::Ws, &redis, &[]);
    for (transport, edge) in [(Transport::Sse, &sse), (Transport::Ws, &ws)] {
        let auction = format!("closing-{}", transport.label());
        let id = AuctionId::parse(&auction).unwrap();
        test_support::auctions::create(&redis.url(), std::slice::from_ref(&auction), 1_500).await;
        let mut conn = Conn::open(transport, edge.addr, &auction, None, None).await;
        assert!(matches!(
            conn.next(QUIET).await,
            Some(Received::Init { .. })
        ));
        let bidder = Bidder {
            id: BidderId::parse("g_early").unwrap(),
            name: BidderName::parse("early").unwrap(),
        };
        writer
            .place_bid(&id, 100, &bidder, BidSource::User, None, None)
            .await
            .unwrap();
        // The last bid comes about 1.5 s before the close.
        let mut kinds = Vec::new();
        while kinds.len() < 2 {
            match conn.next(QUIET).await {
                Some(Received::Event { kind, .. }) => kinds.push(kind),
                other => panic!("{transport:?}: {other:?}"),
            }
        }
        assert_eq!(kinds, ["bid", "closed"], "{transport:?}");
        let t = transport.label();
        let observed = edge.metric(&format!(
            "auction_delivery_latency_seconds_count{{transport=\"{t}\"}}"
        ));
        let under_half_a_second = edge.metric(&format!(
            "auction_delivery_latency_seconds_bucket{{le=\"0.512\",transport=\"{t}\"}}"
        ));
        assert_eq!(observed, 2.0, "{transport:?}: the bid and the close");
        assert_eq!(
            under_half_a_second, 2.0,
            "{transport:?}: both delivered within half a second of their own time"
        );
    }
}

/// Reads until the connection is sent away: ended, or told its auction is
/// gone. Returns that last message.
async fn sent_away(conn: &mut Conn) -> Vec<Received> {
    loop {
        let received = conn
            .next(QUIET)
            .await
            .expect("sent away before going quiet");
        let away = matches!(received, Received::Ended(_))
            || matches!(&received, Received::Event { kind, .. } if kind == "gone");
        if away {
            return vec![received];
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_an_auction_deleted_while_watched_are_told_it_is_gone() {
    deleted_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_an_auction_deleted_while_watched_are_told_it_is_gone_on_a_cluster() {
    deleted_case(&RedisCluster::start()).await;
}

/// An auction that stops existing while the edges stay connected to Redis
/// (expired, deleted): nothing is published for it any more, so each
/// edge's audit (every 10 s) finds it missing and its clients are told it
/// is gone, without holding up any other auction's events.
async fn deleted_case(redis: &impl TestRedis) {
    test_support::auctions::create(&redis.url(), &["doomed".into()], 3_600_000).await;
    let sse = start_edge(Transport::Sse, &redis, &[]);
    let ws = start_edge(Transport::Ws, &redis, &[]);
    let mut watching = Vec::new();
    for (transport, edge) in [(Transport::Sse, &sse), (Transport::Ws, &ws)] {
        let mut conn = Conn::open(transport, edge.addr, "doomed", None, None).await;
        assert!(matches!(
            conn.next(QUIET).await,
            Some(Received::Init { .. })
        ));
        watching.push((transport, conn));
    }
    redis.on_owner(
        "doomed",
        &["DEL", "auction:{doomed}", "auction:{doomed}:events"],
    );
    for (transport, mut conn) in watching {
        // The audit runs every 10 s: up to one round, plus slack.
        let told = loop {
            let received = conn
                .next(Duration::from_secs(25))
                .await
                .expect("told before going quiet");
            if !matches!(received, Received::Event { ref kind, .. } if kind == "viewers") {
                break received;
            }
        };
        assert_eq!(
            told,
            Received::Event {
                kind: "gone".into(),
                id: String::new()
            },
            "{transport:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_comes_back_empty_clients_are_reset_or_told_the_auction_is_gone() {
    empty_case(RedisServer::start()).await;
}

/// On a cluster, the primaries serving the auctions' slots come back empty:
/// restarted by their supervisor after their data was lost (a primary
/// without persistence, or on a volume that did not survive), before any
/// replica took over. They keep their place in the cluster and their slots,
/// and their replicas resync from them, empty too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_comes_back_empty_clients_are_reset_or_told_the_auction_is_gone_on_a_cluster() {
    empty_case(RedisCluster::start()).await;
}

async fn empty_case(mut redis: impl TestRedisProcesses) {
    let _bidder = simulator(&redis, "phoenix", 10);
    redis.wait_for_more("phoenix", "0-0", 5);
    test_support::auctions::create(&redis.url(), &["ghost".into()], 3_600_000).await;
    let sse = start_edge(Transport::Sse, &redis, &[]);
    let ws = start_edge(Transport::Ws, &redis, &[]);
    let edges = [(Transport::Sse, &sse), (Transport::Ws, &ws)];
    let mut watching = Vec::new();
    for (transport, edge) in edges {
        let mut ghost = Conn::open(transport, edge.addr, "ghost", None, None).await;
        assert!(matches!(
            ghost.next(QUIET).await,
            Some(Received::Init { .. })
        ));
        let mut phoenix = Conn::open(transport, edge.addr, "phoenix", None, None).await;
        let mut seen = Vec::new();
        let target = redis.wait_for_more("phoenix", &redis.head("phoenix"), 3);
        read_until(&mut phoenix, &target, &mut seen).await;
        let last = event_ids(&seen).last().unwrap().clone();
        watching.push((transport, edge, ghost, phoenix, last));
    }
    tokio::task::block_in_place(|| {
        redis.restart_owners_empty(&["phoenix", "ghost"]);
        // The simulator starts its auction again: a new stream, same name.
        redis.wait_for_more("phoenix", "0-0", 3);
    });
    for (transport, edge, mut ghost, mut phoenix, last) in watching {
        let told = sent_away(&mut ghost).await;
        assert_eq!(
            told.first(),
            Some(&Received::Event {
                kind: "gone".into(),
                id: String::new()
            }),
            "{transport:?}: a vanished auction's clients are told: {told:?}"
        );
        if transport == Transport::Sse {
            let end = ghost.next(QUIET).await;
            assert_eq!(end, Some(Received::Ended(None)), "and the stream ends");
        }
        let mut again = Conn::open(transport, edge.addr, "ghost", None, None).await;
        assert_eq!(
            again.next(QUIET).await,
            Some(Received::Refused("not_found".into())),
            "{transport:?}: and a reconnect is told it does not exist"
        );
        // The old stream's clients are sent away: reset (told to resume),
        // or told it was gone if the edge looked before the simulator had
        // started it again. Their id is one the new stream never held.
        sent_away(&mut phoenix).await;
        let mut resumed = Conn::open(transport, edge.addr, "phoenix", Some(&last), None).await;
        assert!(
            matches!(
                resumed.next(QUIET).await,
                Some(Received::Init { reset: true, .. })
            ),
            "{transport:?}: a resume from the lost stream starts over"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_are_counted_across_replicas_and_transports() {
    viewers_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_are_counted_across_replicas_and_transports_on_a_cluster() {
    viewers_case(&RedisCluster::start()).await;
}

async fn viewers_case(redis: &impl TestRedis) {
    let _bidder = simulator(&redis, "watched", 200);
    redis.wait_for_more("watched", "0-0", 1);
    let fast = [("AUCTION_VIEWERS_INTERVAL_MS", "200")];
    let sse = start_edge(Transport::Sse, &redis, &fast);
    let ws = start_edge(Transport::Ws, &redis, &fast);
    // Loopback is 127.0.0.0/8: each source address is a client address.
    let from = |n: u8| Origin::source(&format!("127.0.0.{n}"));
    let mut conns = Vec::new();
    for (transport, edge, address) in [
        (Transport::Sse, &sse, 11),
        (Transport::Sse, &sse, 12),
        (Transport::Ws, &ws, 13),
    ] {
        conns.push(Conn::open_from(transport, edge.addr, "watched", &from(address)).await);
    }
    for conn in &mut conns {
        assert!(
            conn.wait_for_viewers(3, QUIET).await,
            "every client sees 3 viewers: {:?}",
            conn.viewers()
        );
    }
    // One leaves: the others see it within a few rounds.
    conns.pop();
    for conn in &mut conns {
        assert!(
            conn.wait_for_viewers(2, QUIET).await,
            "{:?}",
            conn.viewers()
        );
    }
    // A client that joins later is told the count as it starts.
    let mut late = Conn::open_from(Transport::Ws, ws.addr, "watched", &from(14)).await;
    assert!(
        late.wait_for_viewers(3, QUIET).await,
        "{:?}",
        late.viewers()
    );
    // An address watching twice on one replica (a second tab, or a client
    // opening more to inflate the count) is still one viewer: a new
    // address moves the count by one, the second watch not at all.
    let _again = Conn::open_from(Transport::Sse, sse.addr, "watched", &from(11)).await;
    let _newcomer = Conn::open_from(Transport::Sse, sse.addr, "watched", &from(15)).await;
    assert!(
        late.wait_for_viewers(4, QUIET).await,
        "{:?}",
        late.viewers()
    );
    assert!(
        !late.wait_for_viewers(5, SETTLED).await,
        "a second watch from one address counted as another viewer: {:?}",
        late.viewers()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_written_by_the_hub_and_by_group_writers_all_get_every_event_once() {
    direct_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_written_by_the_hub_and_by_group_writers_all_get_every_event_once_on_a_cluster() {
    direct_case(&RedisCluster::start()).await;
}

/// More clients of one auction than the hub writes to itself (16) and
/// than one group writer takes (64): once caught up, every one of them is
/// parked (`auction_direct_clients`), written by the hub or by one of two
/// group writers, and every one gets the stream exactly, whatever wrote
/// it (their own tasks too, between a keepalive's hand-back and their
/// parking again). Clients that leave leave the feed's hands too.
async fn direct_case(redis: &impl TestRedis) {
    const CLIENTS: usize = 90;
    let _bidder = simulator(&redis, "direct", 20);
    redis.wait_for_more("direct", "0-0", 1);
    for transport in Transport::BOTH {
        let edge = start_edge(transport, &redis, &[]);
        let mut conns = Vec::new();
        for _ in 0..CLIENTS {
            conns.push(Conn::open(transport, edge.addr, "direct", None, None).await);
        }
        let mut received: Vec<Vec<Received>> = Vec::new();
        for conn in &mut conns {
            received.push(vec![conn.next(QUIET).await.expect("init")]);
        }
        let gauge = format!(
            "auction_direct_clients{{transport=\"{}\"}}",
            transport.label()
        );
        tokio::task::block_in_place(|| {
            wait_for("every client to be parked", QUIET, || {
                (edge.metric(&gauge) == CLIENTS as f64).then_some(())
            });
        });
        let target = redis.wait_for_more("direct", &redis.head("direct"), 20);
        for (conn, received) in conns.iter_mut().zip(&mut received) {
            read_until(conn, &target, received).await;
            let ids = event_ids(received);
            assert_exact(&redis, "direct", &init_id(received), &ids);
        }
        drop(conns);
        tokio::task::block_in_place(|| {
            wait_for("the hub to let go of the clients that left", QUIET, || {
                (edge.metric(&gauge) == 0.0).then_some(())
            });
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_falls_far_behind_and_catches_up_gets_every_event_once() {
    catch_up_case(&RedisServer::start()).await;
}

/// A client that stops reading while hundreds of events pile up (its
/// queue is big enough not to lap it), then reads again: its task takes
/// far more items in a row than Tokio's cooperative budget allows, and
/// must not mistake the budget's "not yet" for being caught up (which
/// would hand its socket to the hub and drop what its queue still held).
async fn catch_up_case(redis: &impl TestRedis) {
    let _bidder = simulator(&redis, "behind", 1);
    redis.wait_for_more("behind", "0-0", 1);
    let settings = [
        ("AUCTION_CLIENT_QUEUE", "8192"),
        ("AUCTION_SOCKET_SEND_BUFFER", "4096"),
    ];
    for transport in Transport::BOTH {
        let edge = start_edge(transport, &redis, &settings);
        let mut conn = Conn::open(transport, edge.addr, "behind", None, Some(4096)).await;
        let mut received = vec![conn.next(QUIET).await.expect("init")];
        let start = init_id(&received);
        // Not reading meanwhile: the events pile up in the client's queue.
        tokio::task::block_in_place(|| redis.wait_for_more("behind", &start, 1500));
        let target = redis.wait_for_more("behind", &redis.head("behind"), 20);
        read_until(&mut conn, &target, &mut received).await;
        assert_exact(&redis, "behind", &start, &event_ids(&received));
        assert_eq!(counts(&edge, transport).slow, 0.0, "{transport:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_clients_of_a_quiet_auction_share_one_init() {
    quiet_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_clients_of_a_quiet_auction_share_one_init_on_a_cluster() {
    quiet_case(&RedisCluster::start()).await;
}

/// Each fresh `init` read from Redis is one MULTI/EXEC on the node holding
/// the auction: counted there.
async fn quiet_case(redis: &impl TestRedis) {
    test_support::auctions::create(&redis.url(), &["quiet".into()], 3_600_000).await;
    for transport in Transport::BOTH {
        let edge = start_edge(transport, &redis, &[]);
        let mut first = Conn::open(transport, edge.addr, "quiet", None, None).await;
        let Some(Received::Init { id, reset: false }) = first.next(QUIET).await else {
            panic!("{transport:?}: an init");
        };
        let before = redis.command_calls("quiet", "exec");
        let mut clients = Vec::new();
        for _ in 0..100 {
            let mut conn = Conn::open(transport, edge.addr, "quiet", None, None).await;
            assert_eq!(
                conn.next(QUIET).await,
                Some(Received::Init {
                    id: id.clone(),
                    reset: false
                }),
                "{transport:?}"
            );
            clients.push(conn);
        }
        assert_eq!(
            redis.command_calls("quiet", "exec") - before,
            0,
            "{transport:?}: 100 fresh clients read no snapshot of their own"
        );
        // Caught up, but nothing moves: their sockets stay with their own
        // tasks (a parked socket would save nothing here).
        let gauge = format!(
            "auction_direct_clients{{transport=\"{}\"}}",
            transport.label()
        );
        assert_eq!(edge.metric(&gauge), 0.0, "{transport:?}");
    }
}
