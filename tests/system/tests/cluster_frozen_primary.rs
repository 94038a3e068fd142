//! One primary of a Redis Cluster frozen (`SIGSTOP`) for 10 s, with a node
//! timeout long enough that no failover happens: the failure stays on its
//! shard. Auctions on the other primaries keep going through it: their
//! bids are answered 201 (none `bid_outcome_unknown`), and their clients,
//! on both edges, get every event with no gap over a second. After
//! `SIGCONT` the frozen shard's clients get everything. Every client's
//! events are compared with the stream (`XRANGE`): nothing lost, nothing
//! twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use test_support::shard_load::{
    Followed, Following, assert_healthy_shards_answered, bid_until, one_auction_per_primary,
};
use test_support::{RedisCluster, ServiceProcess};

const FREEZE: Duration = Duration::from_secs(10);
/// Longer than the freeze: the frozen primary stays the owner of its slots.
const NODE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest gap allowed between two events of an auction on a healthy
/// shard (bids come every 100 ms).
const MAX_GAP: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_holds_up_only_its_own_auctions() {
    let cluster = RedisCluster::start();
    cluster.set_node_timeout(NODE_TIMEOUT);
    let auctions = one_auction_per_primary(&cluster, "fz");
    let ids: Vec<String> = auctions.iter().map(|(id, _)| id.clone()).collect();
    test_support::auctions::create(&cluster.url(), &ids, 3_600_000).await;
    let (frozen_auction, frozen_port) = auctions[0].clone();

    let env = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("AUCTION_REDIS_URL", cluster.url()),
            test_support::session_secret_env(),
        ];
        env.extend_from_slice(extra);
        env
    };
    let bidder = ServiceProcess::start("bidder", &env(&[]));
    let sse = ServiceProcess::start("sse-edge", &env(&[]));
    let ws = ServiceProcess::start("ws-edge", &env(&[]));

    // Each client follows until its auction's head (set once bidding ends).
    let following = Following::start(&ids, &sse, &ws, Duration::from_secs(30));

    let stop = Arc::new(AtomicBool::new(false));
    let bidders: Vec<_> = ids
        .iter()
        .map(|id| tokio::spawn(bid_until(bidder.url(), id.clone(), stop.clone())))
        .collect();
    // Events flow on every auction before the freeze.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frozen_at = Instant::now();
    cluster.freeze(frozen_port);
    tokio::time::sleep(FREEZE).await;
    cluster.thaw(frozen_port);
    let thawed_at = Instant::now();
    // A little more after the thaw: the frozen shard's bids land again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = HashMap::new();
    for (id, bidding) in ids.iter().zip(bidders) {
        answers.insert(id.clone(), bidding.await.unwrap());
    }

    // Bids on the healthy primaries were all answered 201, also during the
    // freeze.
    assert_healthy_shards_answered(
        &answers,
        &frozen_auction,
        frozen_at,
        thawed_at,
        20,
        "freeze",
    );

    // The streams as they are now; each client must reach its head.
    let (streams, followed) = following.finish(&cluster).await;
    for followed in followed {
        followed.assert_exact(&streams[&followed.auction]);
        let Followed {
            auction, transport, ..
        } = &followed;
        if *auction == frozen_auction {
            continue;
        }
        // No gap over a second from the freeze until after the thaw.
        let gap = followed.largest_gap(frozen_at, thawed_at).unwrap_or(FREEZE);
        eprintln!("{transport} client of {auction} (healthy shard): largest gap {gap:?}");
        assert!(
            gap <= MAX_GAP,
            "{transport} client of {auction} (healthy shard): a gap of {gap:?} between events"
        );
    }
    drop((bidder, sse, ws));
}
