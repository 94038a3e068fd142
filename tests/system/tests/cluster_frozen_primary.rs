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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::{RedisCluster, Seen, ServiceProcess, id_pair, wait_for};

const FREEZE: Duration = Duration::from_secs(10);
/// Longer than the freeze: the frozen primary stays the owner of its slots.
const NODE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest gap allowed between two events of an auction on a healthy
/// shard (bids come every 100 ms).
const MAX_GAP: Duration = Duration::from_secs(1);
const BID_EVERY: Duration = Duration::from_millis(100);

/// One auction per primary: the first name of `fz-N` whose slot each
/// primary serves, in the order of `cluster.primaries()`.
fn one_auction_per_primary(cluster: &RedisCluster) -> Vec<(String, u16)> {
    let primaries = cluster.primaries();
    let mut found: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let name = format!("fz-{i}");
        let port = cluster.primary_of_auction(&name).port;
        found.entry(port).or_insert(name);
        if found.len() == primaries.len() {
            break;
        }
    }
    primaries
        .into_iter()
        .map(|port| (found[&port].clone(), port))
        .collect()
}

/// Bids on `auction` every 100 ms until `stop`: (when answered, status,
/// error code) of each.
async fn bid_until(
    url: String,
    auction: String,
    stop: Arc<AtomicBool>,
) -> Vec<(Instant, u16, String)> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = test_support::guest_token("Steady");
    let mut answers = Vec::new();
    let mut amount = 1_000;
    while !stop.load(Ordering::Relaxed) {
        // Above the last by the minimum increment (10).
        amount += 10;
        let sent = http
            .post(format!("{url}/auctions/{auction}/bids"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("{auction}-{amount}"))
            .body(format!(r#"{{"amount":{amount}}}"#))
            .send()
            .await;
        let Ok(response) = sent else {
            answers.push((Instant::now(), 0, "no answer".to_owned()));
            continue;
        };
        let status = response.status().as_u16();
        let json: serde_json::Value = response.json().await.unwrap_or_default();
        let code = json["error"].as_str().unwrap_or("").to_owned();
        answers.push((Instant::now(), status, code));
        tokio::time::sleep(BID_EVERY).await;
    }
    answers
}

/// A client's record: what it saw, and when each event arrived.
struct Followed {
    auction: String,
    transport: &'static str,
    seen: Seen,
    arrivals: Vec<Instant>,
}

/// Follows `auction` on one edge until `until` names an id it has reached.
fn follow(
    transport: &'static str,
    edge: String,
    auction: String,
    until: Arc<Mutex<Option<String>>>,
    ready: Arc<Mutex<usize>>,
) -> tokio::task::JoinHandle<Followed> {
    tokio::spawn(async move {
        let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let counted = Arc::new(AtomicBool::new(false));
        let done = {
            let (arrivals, until, ready, counted) = (
                arrivals.clone(),
                until.clone(),
                ready.clone(),
                counted.clone(),
            );
            move |seen: &Seen| {
                let mut arrivals = arrivals.lock().unwrap();
                while arrivals.len() < seen.ids.len() {
                    arrivals.push(Instant::now());
                }
                if !seen.inits.is_empty() && !counted.swap(true, Ordering::Relaxed) {
                    *ready.lock().unwrap() += 1;
                }
                until
                    .lock()
                    .unwrap()
                    .as_deref()
                    .is_some_and(|last| seen.has_reached(last))
            }
        };
        let edges = [edge];
        let timeout = Duration::from_secs(90);
        let seen = match transport {
            "sse" => test_support::clients::sse_follow(&edges, &auction, timeout, done).await,
            _ => test_support::clients::ws_follow(&edges, &auction, timeout, done).await,
        };
        let arrivals = arrivals.lock().unwrap().clone();
        Followed {
            auction,
            transport,
            seen,
            arrivals,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_holds_up_only_its_own_auctions() {
    let cluster = RedisCluster::start();
    cluster.set_node_timeout(NODE_TIMEOUT);
    let auctions = one_auction_per_primary(&cluster);
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
    let heads: HashMap<String, Arc<Mutex<Option<String>>>> =
        ids.iter().map(|id| (id.clone(), Arc::default())).collect();
    let ready: Arc<Mutex<usize>> = Arc::default();
    let ws_url = format!("{}/ws", ws.url().replacen("http", "ws", 1));
    let mut clients = Vec::new();
    for id in &ids {
        for (transport, edge) in [("sse", sse.url()), ("ws", ws_url.clone())] {
            clients.push(follow(
                transport,
                edge,
                id.clone(),
                heads[id].clone(),
                ready.clone(),
            ));
        }
    }
    let expected_clients = clients.len();
    tokio::task::block_in_place(|| {
        wait_for("every client's init", Duration::from_secs(30), || {
            (*ready.lock().unwrap() == expected_clients).then_some(())
        })
    });

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
    for id in ids.iter().filter(|id| **id != frozen_auction) {
        let answered = &answers[id];
        let during = answered
            .iter()
            .filter(|(at, _, _)| *at > frozen_at && *at < thawed_at)
            .count();
        assert!(
            during >= 20,
            "{id}: only {during} bids answered during the freeze"
        );
        let refused: Vec<_> = answered
            .iter()
            .filter(|(_, status, _)| *status != 201)
            .map(|(at, status, code)| (at.saturating_duration_since(frozen_at), *status, code))
            .collect();
        assert!(
            refused.is_empty(),
            "{id} (healthy shard): bids not answered 201 (time after the freeze, status, code): {refused:?}"
        );
    }

    // The streams as they are now; each client must reach its head.
    let streams: HashMap<String, Vec<String>> = ids
        .iter()
        .map(|id| {
            let stream: Vec<String> = cluster.stream(id).into_iter().map(|e| e.id).collect();
            *heads[id].lock().unwrap() = stream.last().cloned();
            (id.clone(), stream)
        })
        .collect();
    for client in clients {
        let followed = client.await.unwrap();
        let Followed {
            auction,
            transport,
            seen,
            arrivals,
        } = followed;
        let stream = &streams[&auction];
        let start = seen.start().to_owned();
        let expected: Vec<String> = stream
            .iter()
            .filter(|id| id_pair(id) > id_pair(&start))
            .cloned()
            .collect();
        assert!(
            !expected.is_empty(),
            "{auction}: the run must include events"
        );
        assert_eq!(
            seen.ids, expected,
            "{transport} client of {auction}: events differ from the stream (inits {:?})",
            seen.inits
        );
        if auction == frozen_auction {
            continue;
        }
        // No gap over a second from the freeze until after the thaw.
        let gap = arrivals
            .windows(2)
            .filter(|pair| pair[1] > frozen_at && pair[0] < thawed_at)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or(FREEZE);
        eprintln!("{transport} client of {auction} (healthy shard): largest gap {gap:?}");
        assert!(
            gap <= MAX_GAP,
            "{transport} client of {auction} (healthy shard): a gap of {gap:?} between events"
        );
    }
    drop((bidder, sse, ws));
}
