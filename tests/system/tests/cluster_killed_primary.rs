//! One primary of a Redis Cluster killed (`SIGKILL`) under bids on
//! auctions spread over all three primaries; its replica takes over after
//! the node timeout. The failure stays on its shard: on the two healthy
//! primaries every bid is answered 201 throughout (none
//! `bid_outcome_unknown`, none `redis_unavailable`: the nodes run with
//! `cluster-require-full-coverage no`, as the project ships them), and
//! their clients, on both edges, get events with no pause over a second
//! (beyond the gaps a busy machine shows before the kill), also when the
//! edges follow the new slot map: only the killed shard's
//! auctions subscribe again (`auction_live_resubscribes_total`). The killed
//! shard's clients get everything after the promotion. Every client's
//! events are compared with the stream (`XRANGE`): nothing lost, nothing
//! twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use test_support::shard_load::{
    Following, assert_healthy_shards_answered, bid_until, one_auction_per_primary,
};
use test_support::{RedisCluster, ServiceProcess};

/// The largest pause the failover may add between two events of an
/// auction on a healthy shard (bids come every 100 ms): on an idle machine
/// no gap over about a second.
const MAX_GAP: Duration = Duration::from_secs(1);
/// How long events flow before the kill: the run's own largest gap over
/// as long a time as the failover takes, which a busy machine (other
/// builds on its 2 cores) makes much more than the 100 ms between bids.
const BASELINE: Duration = Duration::from_secs(8);
/// Events each auction gets before the kill, and the killed shard's gets
/// after the promotion.
const EVENTS_AROUND: usize = 10;
/// Setup and recovery deadlines: generous, for a loaded machine.
const SETUP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_pauses_only_its_own_auctions_through_the_failover() {
    let mut cluster = RedisCluster::start();
    let auctions = one_auction_per_primary(&cluster, "kp");
    let ids: Vec<String> = auctions.iter().map(|(id, _)| id.clone()).collect();
    test_support::auctions::create(&cluster.url(), &ids, 3_600_000).await;
    let (killed_auction, killed_port) = auctions[0].clone();

    let env = vec![
        ("AUCTION_REDIS_URL", cluster.url()),
        test_support::session_secret_env(),
    ];
    let bidder = ServiceProcess::start("bidder", &env);
    let sse = ServiceProcess::start("sse-edge", &env);
    let ws = ServiceProcess::start("ws-edge", &env);

    // Each client follows until its auction's head (set once bidding ends).
    let following = Following::start(&ids, &sse, &ws, SETUP);

    let stop = Arc::new(AtomicBool::new(false));
    let bidders: Vec<_> = ids
        .iter()
        .map(|id| tokio::spawn(bid_until(bidder.url(), id.clone(), stop.clone())))
        .collect();
    let events =
        |cluster: &RedisCluster, id: &str| tokio::task::block_in_place(|| cluster.stream(id).len());
    // Events flow on every auction before the kill.
    until("bids on every auction", || {
        ids.iter().all(|id| events(&cluster, id) >= EVENTS_AROUND)
    })
    .await;
    let resubscribed_before = resubscribes(&sse, &ws);
    let baseline_from = Instant::now();
    tokio::time::sleep(BASELINE).await;

    let killed_at = Instant::now();
    cluster.kill(killed_port);
    let failover = tokio::task::block_in_place(|| cluster.wait_for_failover(killed_port, SETUP));
    let failed_over_at = Instant::now();
    eprintln!("the replica took over {failover:?} after the kill");
    // The killed shard's auction takes bids again.
    let before = events(&cluster, &killed_auction);
    until("bids on the killed shard after the failover", || {
        events(&cluster, &killed_auction) >= before + EVENTS_AROUND
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let stopped_at = Instant::now();
    let mut answers = HashMap::new();
    for (id, bidding) in ids.iter().zip(bidders) {
        answers.insert(id.clone(), bidding.await.unwrap());
    }

    // Bids on the healthy primaries were all answered 201, also while the
    // killed primary's slots had no live owner.
    assert_healthy_shards_answered(
        &answers,
        &killed_auction,
        killed_at,
        failed_over_at,
        10,
        "kill",
    );
    let killed_refused = answers[&killed_auction]
        .iter()
        .filter(|answer| answer.status != 201)
        .count();
    eprintln!("{killed_auction} (killed shard): {killed_refused} bids refused during the failover");

    // The streams as they are now; each client must reach its head.
    let (streams, followed) = following.finish(&cluster).await;
    for followed in followed {
        followed.assert_exact(&streams[&followed.auction]);
        let (auction, transport) = (&followed.auction, followed.transport);
        if *auction == killed_auction {
            let resumed = followed
                .seen
                .ids
                .iter()
                .zip(&followed.arrivals)
                .filter(|(_, at)| **at > failed_over_at)
                .count();
            assert!(
                resumed > 0,
                "{transport} client of {auction} (killed shard): nothing after the failover"
            );
            continue;
        }
        // From the kill until bidding stopped, well after the edges
        // followed the new slot map, no pause over a second beyond the
        // largest gap the same client saw before the kill.
        let gap = followed
            .largest_gap(killed_at, stopped_at)
            .unwrap_or(stopped_at - killed_at);
        let baseline = followed
            .largest_gap(baseline_from, killed_at)
            .unwrap_or(BASELINE);
        eprintln!(
            "{transport} client of {auction} (healthy shard): largest gap {gap:?} (before the kill: {baseline:?})"
        );
        assert!(
            gap <= baseline + MAX_GAP,
            "{transport} client of {auction} (healthy shard): a gap of {gap:?} between events (before the kill: {baseline:?})"
        );
    }

    // Each edge subscribed again to the killed shard's one auction, and to
    // nothing else.
    let resubscribed = resubscribes(&sse, &ws);
    for (edge, (before, after)) in ["sse", "ws"]
        .iter()
        .zip(resubscribed_before.into_iter().zip(resubscribed))
    {
        assert_eq!(
            after - before,
            1.0,
            "{edge}-edge: auctions subscribed again over the failover"
        );
    }
    drop((bidder, sse, ws));
}

/// Waits until `check` holds, asking every 250 ms (reading streams is not
/// free, and the cluster's load is part of what the test measures);
/// panics after `SETUP`.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + SETUP;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `auction_live_resubscribes_total` of each edge.
fn resubscribes(sse: &ServiceProcess, ws: &ServiceProcess) -> [f64; 2] {
    [
        sse.metric(r#"auction_live_resubscribes_total{transport="sse"}"#),
        ws.metric(r#"auction_live_resubscribes_total{transport="ws"}"#),
    ]
}
