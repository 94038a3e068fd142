//! The same guarantees on a Redis Cluster (3 primaries + 3 replicas, formed
//! with `redis-cli --cluster create`): scripts touch one slot, notices go
//! out on sharded channels, and losing a primary or moving a slot loses no
//! acknowledged bid and no event a client should see.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use auction_domain::{AuctionId, BidSource, Bidder, BidderId, BidderName};
use event_log::{
    AuctionSpec, AuctionWriter, BidAnswer, Catalogue, LiveConnection, LiveMessage, RedisConnection,
    ReplicaAck, StreamReader, Watching,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::auctions::Terms;
use test_support::{RedisCluster, Seen, ServiceProcess, id_pair, wait_for};

fn spec(id: &str, duration_ms: u64) -> AuctionSpec {
    AuctionSpec {
        id: AuctionId::parse(id).unwrap(),
        title: format!("Lot {id}"),
        starting_price: 100,
        min_increment: 1,
        duration_ms,
        description: None,
        image_url: None,
        seller: None,
        terms: None,
        rules: Default::default(),
    }
}

fn bidder(name: &str) -> Bidder {
    Bidder {
        id: BidderId::parse(name).unwrap(),
        name: BidderName::parse(name).unwrap(),
    }
}

fn cluster_connection(cluster: &RedisCluster) -> RedisConnection {
    let target = event_log::parse_redis_url(&cluster.url()).unwrap();
    event_log::connect_manager(&target, || {}).unwrap()
}

fn cluster_writer(cluster: &RedisCluster) -> AuctionWriter {
    AuctionWriter::new(cluster_connection(cluster), 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_runs_on_a_cluster_with_sharded_notices() {
    let cluster = RedisCluster::start();
    let conn = cluster_connection(&cluster);
    let writer = AuctionWriter::new(conn.clone(), 1000);
    let reader = StreamReader::new(conn.clone());
    let catalogue = Catalogue::new(conn);
    let ids: Vec<String> = (0..30).map(|i| format!("c-{i}")).collect();
    // Auctions on every primary.
    let owners: BTreeSet<u16> = ids
        .iter()
        .map(|id| cluster.primary_of_auction(id).port)
        .collect();
    assert_eq!(owners.len(), 3, "the ids must spread over the primaries");
    for id in &ids {
        writer.create(&spec(id, 3_600_000)).await.unwrap();
    }
    let auctions: Vec<AuctionId> = ids.iter().map(|id| AuctionId::parse(id).unwrap()).collect();

    let target = event_log::parse_redis_url(&cluster.url()).unwrap();
    let mut live = LiveConnection::open(&target).await.unwrap();
    // On a cluster each node's subscriptions are announced once made.
    assert_eq!(live.watch(&auctions).await.unwrap(), Watching::Later);
    let mut subscribed = BTreeSet::new();
    while subscribed.len() < auctions.len() {
        let message = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("the subscriptions are announced")
            .expect("the connection is up");
        match message {
            LiveMessage::Subscribed { auctions } => subscribed.extend(auctions),
            other => panic!("unexpected {other:?}"),
        }
    }
    for auction in &auctions {
        let attempt = writer
            .place_bid(auction, 500, &bidder("ann"), BidSource::User, None, None)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(attempt.answer, BidAnswer::Accepted { .. }));
    }
    // Every auction's notice arrives on its sharded channel.
    let mut notified = BTreeSet::new();
    while notified.len() < auctions.len() {
        let message = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("a notice")
            .expect("the connection is up");
        match message {
            LiveMessage::Event { auction, event } => {
                assert_eq!(event.kind, auction_domain::EventKind::Bid);
                notified.insert(auction);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Reads that span auctions (and so slots) answer for each, in order.
    let windows = reader.windows(&auctions).await.unwrap();
    assert!(windows.iter().all(|w| w.exists && w.last.is_some()));
    let missing = AuctionId::parse("never-created").unwrap();
    let exist = reader.exist(&[auctions[0].clone(), missing]).await.unwrap();
    assert_eq!(exist, vec![true, false]);
    // The listing walks every partition of the index, newest first, and
    // pages through them with its cursor: each auction once.
    let (all, next) = catalogue.list_page(None, 100).await.unwrap();
    let listed: Vec<String> = all.into_iter().map(|a| a.id).collect();
    assert_eq!(listed.len(), ids.len());
    assert_eq!(listed.first(), ids.last());
    assert!(next.is_none());
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = catalogue.list_page(cursor.as_ref(), 5).await.unwrap();
        assert!(page.len() <= 5);
        paged.extend(page.into_iter().map(|a| a.id));
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, listed);

    // The closer finds due auctions in every partition.
    let short: Vec<String> = (0..6).map(|i| format!("short-{i}")).collect();
    for id in &short {
        writer.create(&spec(id, 1000)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let due = loop {
        let due = writer.due_for_close(100).await.unwrap();
        if due.len() == short.len() {
            break due;
        }
        assert!(Instant::now() < deadline, "only {} auctions due", due.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for auction in &due {
        writer.close_if_due(auction).await.unwrap();
    }
    assert!(writer.due_for_close(100).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replica_acks_an_accepted_bid_is_on_a_replica() {
    let cluster = RedisCluster::start();
    let writer = cluster_writer(&cluster).with_replica_ack(ReplicaAck {
        replicas: 1,
        timeout: Duration::from_millis(1000),
    });
    writer.create(&spec("acked", 3_600_000)).await.unwrap();
    let auction = AuctionId::parse("acked").unwrap();
    let attempt = writer
        .place_bid(&auction, 500, &bidder("ann"), BidSource::User, None, None)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(attempt.answer, BidAnswer::Accepted { .. }));

    // Asking for more replicas than exist: applied, but not confirmed.
    let strict = cluster_writer(&cluster).with_replica_ack(ReplicaAck {
        replicas: 2,
        timeout: Duration::from_millis(200),
    });
    let error = strict
        .place_bid(&auction, 600, &bidder("ann"), BidSource::User, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, event_log::LogError::NotReplicated(_)),
        "{error}"
    );
}

/// A bidder on the cluster, waiting for one replica's acknowledgement.
fn start_bidder(cluster: &RedisCluster) -> ServiceProcess {
    ServiceProcess::start(
        "bidder",
        &[
            ("AUCTION_REDIS_URL", cluster.url()),
            ("AUCTION_SIMULATE", "false".into()),
            ("AUCTION_SIM_AUCTIONS", "unused".into()),
            ("AUCTION_RATE_LIMIT_PER_S", "1000000".into()),
            ("AUCTION_RATE_LIMIT_BURST", "1000000".into()),
            ("AUCTION_ADDRESS_RATE_LIMIT_PER_S", "1000000".into()),
            ("AUCTION_ADDRESS_RATE_LIMIT_BURST", "1000000".into()),
            ("AUCTION_REDIS_MIN_REPLICAS_ACK", "1".into()),
            ("AUCTION_REDIS_ACK_TIMEOUT_MS", "1000".into()),
            test_support::session_secret_env(),
        ],
    )
}

/// An SSE edge on the cluster.
fn start_sse_edge(cluster: &RedisCluster) -> ServiceProcess {
    ServiceProcess::start(
        "sse-edge",
        &[
            ("AUCTION_REDIS_URL", cluster.url()),
            test_support::session_secret_env(),
        ],
    )
}

/// Creates `auction` (from 100 in steps of 1, open an hour) on the cluster.
async fn create_auction(cluster: &RedisCluster, auction: &str) {
    let terms = Terms {
        min_increment: 1,
        ..Terms::open_for(3_600_000)
    };
    test_support::auctions::create_with(&cluster.url(), &[auction.to_owned()], terms).await;
}

/// Bids on `auction` until `stop`, each with its own Idempotency-Key and
/// retried with it until it gets an answer other than 503 (or the key's
/// deadline passes). Returns the event ids answered 201.
async fn bid_until(
    bidder_url: String,
    auction: String,
    stop: Arc<Mutex<bool>>,
    answered: Arc<Mutex<Vec<String>>>,
) -> usize {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let token = test_support::guest_token("runner");
    let mut unavailable = 0;
    for n in 0u64.. {
        if *stop.lock().unwrap() {
            break;
        }
        let key = format!("bid-{n}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let response = http
                .post(format!("{bidder_url}/auctions/{auction}/bids"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .header("idempotency-key", &key)
                .body(format!(r#"{{"amount":{}}}"#, 1_000 + n))
                .send()
                .await;
            let Ok(response) = response else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let status = response.status().as_u16();
            if status == 503 {
                assert!(response.headers().contains_key("retry-after"));
                unavailable += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let json: serde_json::Value = response.json().await.unwrap();
            if status == 201 {
                answered
                    .lock()
                    .unwrap()
                    .push(json["id"].as_str().unwrap().to_owned());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unavailable
}

/// Asserts a client saw exactly the stream's events after its first init,
/// up to its last: nothing missing, nothing twice, in order.
fn assert_exact(seen: &Seen, cluster: &RedisCluster, auction: &str) {
    let last = seen.last.as_deref().expect("the client received something");
    let (after, until) = (id_pair(seen.start()), id_pair(last));
    let expected: Vec<String> = cluster
        .stream(auction)
        .into_iter()
        .map(|entry| entry.id)
        .filter(|id| id_pair(id) > after && id_pair(id) <= until)
        .collect();
    assert!(!expected.is_empty(), "the run must include events");
    assert_eq!(
        seen.ids.len(),
        expected.len(),
        "received {} events, the stream has {}; inits {:?}",
        seen.ids.len(),
        expected.len(),
        seen.inits
    );
    assert_eq!(seen.ids, expected);
}

/// Runs bids and SSE clients on `auction`, calls `disrupt` once some events
/// flowed, keeps going until `after` more bids were acknowledged, then
/// checks every acknowledged bid is in the stream and every client saw
/// every event once, in order (the edge never restarted).
async fn survives(
    cluster: &mut RedisCluster,
    auction: &str,
    disrupt: impl FnOnce(&mut RedisCluster),
) {
    let (bidder, edge) = (start_bidder(cluster), start_sse_edge(cluster));
    create_auction(cluster, auction).await;
    let stop = Arc::new(Mutex::new(false));
    let answered = Arc::new(Mutex::new(Vec::new()));
    let bids = tokio::spawn(bid_until(
        bidder.url(),
        auction.to_owned(),
        stop.clone(),
        answered.clone(),
    ));
    let acked = || answered.lock().unwrap().len();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let edges = vec![edge.url()];
        let auction = auction.to_owned();
        let (stop, answered) = (stop.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            test_support::clients::sse_follow(&edges, &auction, Duration::from_secs(120), |seen| {
                // Done once bidding stopped and the last acknowledged bid arrived.
                *stop.lock().unwrap()
                    && answered
                        .lock()
                        .unwrap()
                        .last()
                        .is_some_and(|last| seen.has_reached(last))
            })
            .await
        }));
    }
    let deadline = Duration::from_secs(60);
    tokio::task::block_in_place(|| {
        wait_for("bids before the disruption", deadline, || {
            (acked() >= 20).then_some(())
        });
    });
    let before = acked();
    tokio::task::block_in_place(|| disrupt(cluster));
    tokio::task::block_in_place(|| {
        wait_for("bids after the disruption", deadline, || {
            (acked() >= before + 30).then_some(())
        });
    });
    *stop.lock().unwrap() = true;
    let unavailable = bids.await.unwrap();
    let answered: Vec<String> = answered.lock().unwrap().clone();

    let in_stream: BTreeSet<String> = cluster
        .stream(auction)
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    for id in &answered {
        assert!(
            in_stream.contains(id),
            "bid {id} was answered 201 but is not in the stream"
        );
    }
    let mut reconnects = HashMap::new();
    for client in clients {
        let seen = client.await.unwrap();
        assert!(
            seen.has_reached(answered.last().unwrap()),
            "a client did not reach the last bid; inits {:?}",
            seen.inits
        );
        assert_exact(&seen, cluster, auction);
        *reconnects.entry(seen.reconnects).or_insert(0) += 1;
    }
    // The edge noticed: it subscribed to the auction again on its new
    // primary (and backfilled) at least once, without a restart of the
    // process.
    let resubscribed = edge.metric(r#"auction_live_resubscribes_total{transport="sse"}"#);
    assert!(resubscribed >= 1.0, "the edge never resubscribed");
    eprintln!(
        "{} bids acknowledged, {unavailable} answers 503 on the way, client reconnects {reconnects:?}, edge resubscriptions {resubscribed}",
        answered.len()
    );
    drop(edge);
    drop(bidder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_bids_loses_no_acknowledged_bid_and_no_client_event() {
    let mut cluster = RedisCluster::start();
    let auction = "busy";
    survives(&mut cluster, auction, |cluster| {
        let primary = cluster.primary_of_auction(auction);
        cluster.kill(primary.port);
        let took = cluster.wait_for_failover(primary.port, Duration::from_secs(30));
        eprintln!("failover took {took:?}");
        let now = cluster.primary_of_auction(auction);
        assert_ne!(now.port, primary.port, "a replica took over");
        // The promoted replica has no replica of its own: with one required
        // acknowledgement its bids wait (503) until the crashed node is
        // back, as a replica (a restarted pod).
        cluster.restart(primary.port);
        cluster.wait_until_healthy(Duration::from_secs(30));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_while_clients_watch_loses_nothing() {
    let mut cluster = RedisCluster::start();
    let auction = "moving";
    survives(&mut cluster, auction, |cluster| {
        let before = cluster.primary_of_auction(auction);
        let slot = cluster.slot_of(&format!("{{{auction}}}"));
        let to = cluster.migrate_slot(slot);
        assert_ne!(before.port, to);
        assert_eq!(cluster.primary_of_auction(auction).port, to);
    })
    .await;
}

/// A notice lost with the primary that published it (the bid reached a
/// replica, the notice never reached the edge) is recovered once the
/// replica takes over, with no further bid to reveal the gap: the edge
/// notices the new slot map and backfills every feed from its last id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_notice_died_with_its_primary_reaches_clients_after_the_failover() {
    let mut cluster = RedisCluster::start();
    let auction = "orphan";
    let edge = start_sse_edge(&cluster);
    create_auction(&cluster, auction).await;
    let primary = cluster.primary_of_auction(auction);

    // A client watching; once it has its init, the event is written.
    let edges = vec![edge.url()];
    let orphan: Arc<Mutex<Option<String>>> = Arc::default();
    let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = {
        let (orphan, started) = (orphan.clone(), started.clone());
        tokio::spawn(async move {
            test_support::clients::sse_follow(&edges, auction, Duration::from_secs(60), |seen| {
                if !seen.inits.is_empty() {
                    started.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                orphan
                    .lock()
                    .unwrap()
                    .as_deref()
                    .is_some_and(|id| seen.has_reached(id))
            })
            .await
        })
    };
    tokio::task::block_in_place(|| {
        wait_for("the client's init", Duration::from_secs(20), || {
            started
                .load(std::sync::atomic::Ordering::SeqCst)
                .then_some(())
        });
    });

    // On the primary, over one connection: the event without its notice
    // (as if the notice died with the primary), then WAIT until the replica
    // holds it (it survives the failover).
    let id = {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", primary.port)).unwrap();
        let mut conn = client.get_connection().unwrap();
        let id: String = redis::Script::new(test_support::APPEND_WITHOUT_NOTICE)
            .key(format!("auction:{{{auction}}}"))
            .key(format!("auction:{{{auction}}}:events"))
            .invoke(&mut conn)
            .unwrap();
        let replicas: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query(&mut conn)
            .unwrap();
        assert_eq!(replicas, 1, "the replica holds the event");
        id
    };
    *orphan.lock().unwrap() = Some(id.clone());

    tokio::task::block_in_place(|| {
        cluster.kill(primary.port);
        cluster.wait_for_failover(primary.port, Duration::from_secs(30));
    });
    let failed_over = Instant::now();
    let seen = watching.await.unwrap();
    assert!(seen.has_reached(&id), "the client got the event");
    eprintln!(
        "the event arrived {:?} after the failover completed; edge reconnects {}",
        failed_over.elapsed(),
        edge.metric("auction_redis_reconnects_total")
    );
    assert!(
        failed_over.elapsed() < Duration::from_secs(10),
        "the edge noticed the new slot map within seconds, not at the next bid"
    );
}

/// The simulator's turn and its bidders' limits live in the auction's slot:
/// two replicas simulating on a cluster bid once per interval between them,
/// by the clock of the node that owns the auction.
#[test]
fn two_simulating_replicas_on_a_cluster_bid_once_per_interval() {
    use test_support::TestRedis;
    const INTERVAL_MS: u64 = 1000;
    const WINDOW_MS: u64 = 20_000;
    let cluster = RedisCluster::start();
    let env = test_support::bidder_env(&cluster, "paced", INTERVAL_MS);
    let bidders = [
        ServiceProcess::start("bidder", &env),
        ServiceProcess::start("bidder", &env),
    ];
    wait_for(
        "both replicas to run the simulator",
        Duration::from_secs(20),
        || {
            bidders
                .iter()
                .all(|bidder| bidder.logs().contains("simulator started"))
                .then_some(())
        },
    );
    let owner_now_ms = || {
        let (seconds, micros): (u64, u64) =
            redis::from_redis_value(cluster.on_owner("paced", &["TIME"])).unwrap();
        seconds * 1000 + micros / 1000
    };
    let simulated_bid_times = || -> Vec<u64> {
        cluster
            .stream("paced")
            .into_iter()
            .filter(|entry| {
                entry.kind == "bid"
                    && serde_json::from_str::<serde_json::Value>(&entry.data).unwrap()["source"]
                        == "simulated"
            })
            .map(|entry| id_pair(&entry.id).0)
            .collect()
    };
    // The window opens at the third simulated bid placed while both
    // replicas ran: the first ones after a start are slower (connections
    // made, scripts loaded), which would shift the window against the turns.
    let both_running = owner_now_ms();
    let start = wait_for("three simulated bids", Duration::from_secs(20), || {
        simulated_bid_times()
            .into_iter()
            .filter(|at| *at >= both_running)
            .nth(2)
    });
    let end = start + WINDOW_MS;
    let times = wait_for(
        "a simulated bid past the window",
        Duration::from_secs(40),
        || {
            let times = simulated_bid_times();
            times.iter().any(|at| *at >= end).then_some(times)
        },
    );
    let in_window = times.iter().filter(|at| (start..end).contains(*at)).count() as u64;
    eprintln!("{in_window} simulated bids in {WINDOW_MS} ms on the cluster");
    let expected = WINDOW_MS / INTERVAL_MS;
    assert!(
        (expected - 1..=expected + 1).contains(&in_window),
        "{in_window} simulated bids in {WINDOW_MS} ms at one per {INTERVAL_MS} ms \
         (ms after the window opened: {:?})",
        times
            .iter()
            .map(|at| at.saturating_sub(start))
            .collect::<Vec<_>>()
    );
}
