//! Load on a Redis Cluster's shards, for tests where one primary fails and
//! the others must not notice: one auction per primary, a steady bidder per
//! auction recording every answer, and streaming clients recording when
//! each event arrived.

use crate::{RedisCluster, Seen, ServiceProcess, wait_for};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often [`bid_until`] bids.
pub const BID_EVERY: Duration = Duration::from_millis(100);

/// One auction per primary: the first name `{prefix}-N` whose slot each
/// primary serves, with its primary's port, in the order of
/// `cluster.primaries()`.
pub fn one_auction_per_primary(cluster: &RedisCluster, prefix: &str) -> Vec<(String, u16)> {
    let primaries = cluster.primaries();
    let mut found: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        let name = format!("{prefix}-{i}");
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

/// One bid's answer.
#[derive(Debug, Clone)]
pub struct BidAnswer {
    /// When the answer arrived.
    pub at: Instant,
    /// The HTTP status; 0 when no answer came (within 10 s).
    pub status: u16,
    /// The error code of a refusal (`""` for none).
    pub code: String,
}

/// Asserts that every bid on the auctions of the healthy shards (all of
/// `answers` but `faulted`'s) was answered 201, and that at least
/// `at_least` of each were answered between `fault` (the fault began) and
/// `ended` (it ended): the shards went on serving through it. `what` names
/// the fault in the messages.
pub fn assert_healthy_shards_answered(
    answers: &HashMap<String, Vec<BidAnswer>>,
    faulted: &str,
    fault: Instant,
    ended: Instant,
    at_least: usize,
    what: &str,
) {
    for (id, answered) in answers.iter().filter(|(id, _)| *id != faulted) {
        let during = answered
            .iter()
            .filter(|answer| answer.at > fault && answer.at < ended)
            .count();
        assert!(
            during >= at_least,
            "{id}: only {during} bids answered during the {what}"
        );
        let refused: Vec<_> = answered
            .iter()
            .filter(|answer| answer.status != 201)
            .map(|answer| {
                let after = answer.at.saturating_duration_since(fault);
                (after, answer.status, &answer.code)
            })
            .collect();
        assert!(
            refused.is_empty(),
            "{id} (healthy shard): bids not answered 201 (time after the {what} began, status, code): {refused:?}"
        );
    }
}

/// Bids on `auction` every [`BID_EVERY`] until `stop`, each above the last
/// by the minimum increment, each with its own `Idempotency-Key`: the
/// answer to every bid, in order.
pub async fn bid_until(url: String, auction: String, stop: Arc<AtomicBool>) -> Vec<BidAnswer> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token = crate::guest_token("Steady");
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
            answers.push(BidAnswer {
                at: Instant::now(),
                status: 0,
                code: "no answer".to_owned(),
            });
            continue;
        };
        let status = response.status().as_u16();
        let json: serde_json::Value = response.json().await.unwrap_or_default();
        let code = json["error"].as_str().unwrap_or("").to_owned();
        answers.push(BidAnswer {
            at: Instant::now(),
            status,
            code,
        });
        tokio::time::sleep(BID_EVERY).await;
    }
    answers
}

/// A streaming client's record: what it saw, and when each event arrived.
pub struct Followed {
    pub auction: String,
    pub transport: &'static str,
    pub seen: Seen,
    /// When each of `seen.ids` arrived.
    pub arrivals: Vec<Instant>,
}

impl Followed {
    /// Asserts that the client received exactly the events of `stream`
    /// (its ids, oldest first) after its first `init`: nothing lost,
    /// nothing twice.
    pub fn assert_exact(&self, stream: &[String]) {
        let start = self.seen.start();
        let expected: Vec<&String> = stream
            .iter()
            .filter(|id| crate::id_pair(id) > crate::id_pair(start))
            .collect();
        let (auction, transport) = (&self.auction, self.transport);
        assert!(
            !expected.is_empty(),
            "{auction}: the run must include events"
        );
        let seen: Vec<&String> = self.seen.ids.iter().collect();
        assert_eq!(
            seen, expected,
            "{transport} client of {auction}: events differ from the stream (inits {:?})",
            self.seen.inits
        );
    }

    /// The longest time between two events that arrived around
    /// `[from, until]` (the pairs straddling either end count); `None`
    /// with fewer than two such events.
    pub fn largest_gap(&self, from: Instant, until: Instant) -> Option<Duration> {
        self.arrivals
            .windows(2)
            .filter(|pair| pair[1] > from && pair[0] < until)
            .map(|pair| pair[1] - pair[0])
            .max()
    }
}

/// Follows `auction` on one edge (`"sse"`: its base URL; `"ws"`: its `/ws`
/// URL) until `until` names an id it has reached, or 90 s. `ready` counts
/// the clients that have had their first `init`.
pub fn follow(
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
            "sse" => crate::clients::sse_follow(&edges, &auction, timeout, done).await,
            _ => crate::clients::ws_follow(&edges, &auction, timeout, done).await,
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

/// Every auction followed on both edges, each client until its auction's
/// head: the clients of a shard-failure test, started together and
/// finished together.
pub struct Following {
    /// Each auction's head, set by [`Following::finish`].
    heads: HashMap<String, Arc<Mutex<Option<String>>>>,
    clients: Vec<tokio::task::JoinHandle<Followed>>,
}

impl Following {
    /// Follows each of `ids` on `sse` and on `ws` (one client each), and
    /// waits up to `setup` for every client's first `init`. Blocks its
    /// worker: call it on a multi-threaded runtime.
    pub fn start(
        ids: &[String],
        sse: &ServiceProcess,
        ws: &ServiceProcess,
        setup: Duration,
    ) -> Following {
        let heads: HashMap<String, Arc<Mutex<Option<String>>>> =
            ids.iter().map(|id| (id.clone(), Arc::default())).collect();
        let ready: Arc<Mutex<usize>> = Arc::default();
        let ws_url = format!("{}/ws", ws.url().replacen("http", "ws", 1));
        let mut clients = Vec::new();
        for id in ids {
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
        let expected = clients.len();
        tokio::task::block_in_place(|| {
            wait_for("every client's init", setup, || {
                (*ready.lock().unwrap() == expected).then_some(())
            })
        });
        Following { heads, clients }
    }

    /// Reads each auction's stream as it is now, lets every client run
    /// until it reaches its auction's head, and returns the streams (ids,
    /// oldest first) and what each client followed.
    pub async fn finish(
        self,
        cluster: &RedisCluster,
    ) -> (HashMap<String, Vec<String>>, Vec<Followed>) {
        let streams: HashMap<String, Vec<String>> = self
            .heads
            .iter()
            .map(|(id, head)| {
                let stream: Vec<String> = cluster.stream(id).into_iter().map(|e| e.id).collect();
                *head.lock().unwrap() = stream.last().cloned();
                (id.clone(), stream)
            })
            .collect();
        let mut followed = Vec::with_capacity(self.clients.len());
        for client in self.clients {
            followed.push(client.await.unwrap());
        }
        (streams, followed)
    }
}
