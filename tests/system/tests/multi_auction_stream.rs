//! The SSE stream of several auctions (`GET /events?auctions=a,b,c`),
//! through the real `sse-edge` binary on a real Redis (one node and a
//! cluster): the one id a browser keeps resumes every auction on another
//! replica with nothing lost or repeated, a page changing its auctions
//! keeps its place in those it still watches, and bad requests are refused
//! with documented codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use test_support::{RedisCluster, RedisServer, ServiceProcess, TestRedis, bidder_env, id_pair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const QUIET: Duration = Duration::from_secs(10);
const AUCTIONS: [&str; 3] = ["ma", "mb", "mc"];

/// A bidder simulating bids on every auction of `AUCTIONS`, keeping every
/// event (the cases compare what clients got with the streams).
fn simulator(redis: &impl TestRedis) -> ServiceProcess {
    let mut env = bidder_env(redis, &AUCTIONS.join(","), 10);
    env.push(("AUCTION_STREAM_MAXLEN", "10000000".into()));
    ServiceProcess::start("bidder", &env)
}

fn sse_edge(redis: &impl TestRedis, extra: &[(&'static str, String)]) -> ServiceProcess {
    let mut env = vec![("AUCTION_REDIS_URL", redis.url())];
    env.extend(extra.iter().cloned());
    ServiceProcess::start("sse-edge", &env)
}

/// One message of a stream of several auctions.
#[derive(Debug, Clone)]
struct Message {
    kind: String,
    auction: String,
    /// The stream's id after this message (empty: none given).
    stream_id: String,
}

impl Message {
    /// This message's own event id in its auction: its auction's
    /// position in the stream's id.
    fn own_id(&self) -> Option<String> {
        positions(&self.stream_id).remove(&self.auction)
    }
}

/// Each auction's position in a stream id (`m1.<newest>.<a>~<below>[-<seq>]`,
/// base 36), read independently of the edge's own code.
fn positions(id: &str) -> BTreeMap<String, String> {
    let mut parts = id.split('.');
    assert_eq!(parts.next(), Some("m1"), "a stream id: {id:?}");
    let newest = u64::from_str_radix(parts.next().unwrap(), 36).unwrap();
    parts
        .map(|entry| {
            let (auction, at) = entry.split_once('~').unwrap();
            let (below, seq) = at.split_once('-').unwrap_or((at, "0"));
            let ms = newest - u64::from_str_radix(below, 36).unwrap();
            let seq = u64::from_str_radix(seq, 36).unwrap();
            (auction.to_owned(), format!("{ms}-{seq}"))
        })
        .collect()
}

enum Opened {
    Stream(BoxStream<'static, Message>),
    Refused(u16, String),
}

/// `GET target` on the edge, read as SSE.
async fn open(addr: SocketAddr, target: &str, last_event_id: Option<&str>) -> Opened {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let request = format!("GET {target} HTTP/1.1\r\nHost: edge\r\n{resume}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    if status != 200 {
        let mut body = Vec::new();
        let _ = stream.read_to_end(&mut body).await;
        let json: Value = serde_json::from_slice(&body).unwrap();
        return Opened::Refused(status, json["error"].as_str().unwrap().to_owned());
    }
    let bytes = futures_util::stream::unfold(stream, |mut stream| async move {
        let mut buffer = vec![0u8; 8192];
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok::<_, std::io::Error>(buffer), stream))
            }
        }
    });
    let messages = bytes
        .eventsource()
        .take_while(|event| std::future::ready(event.is_ok()))
        .filter_map(|event| async move {
            let event = event.ok()?;
            let data: Value = serde_json::from_str(&event.data).ok()?;
            // A bid names its auction's id; an init, opened or closed
            // carries the auction itself.
            let auction = data["auction"]
                .as_str()
                .or_else(|| data["auction"]["id"].as_str())?;
            Some(Message {
                kind: event.event,
                auction: auction.to_owned(),
                stream_id: event.id,
            })
        });
    Opened::Stream(messages.boxed())
}

fn stream(opened: Opened) -> BoxStream<'static, Message> {
    match opened {
        Opened::Stream(stream) => stream,
        Opened::Refused(status, code) => panic!("refused: {status} {code}"),
    }
}

/// Reads until every auction in `targets` has an event at or past its
/// target id.
async fn read_until(
    stream: &mut BoxStream<'static, Message>,
    targets: &BTreeMap<String, String>,
    into: &mut Vec<Message>,
) {
    let mut reached: BTreeMap<String, bool> = targets
        .keys()
        .map(|auction| (auction.clone(), false))
        .collect();
    while reached.values().any(|done| !done) {
        let message = tokio::time::timeout(QUIET, stream.next())
            .await
            .expect("the stream went quiet")
            .expect("the stream ended");
        if is_event(&message) {
            let own = message.own_id().expect("an event names its auction's id");
            if id_pair(&own) >= id_pair(&targets[&message.auction]) {
                reached.insert(message.auction.clone(), true);
            }
        }
        into.push(message);
    }
}

/// The newest id of each auction once each has `more` events after its
/// current head.
fn targets(redis: &impl TestRedis, auctions: &[&str], more: usize) -> BTreeMap<String, String> {
    let heads: Vec<String> = auctions.iter().map(|a| redis.head(a)).collect();
    auctions
        .iter()
        .zip(heads)
        .map(|(auction, head)| {
            (
                (*auction).to_owned(),
                redis.wait_for_more(auction, &head, more),
            )
        })
        .collect()
}

/// Whether `message` is an event of its auction's stream (not an init or
/// a viewer count).
fn is_event(message: &Message) -> bool {
    !matches!(message.kind.as_str(), "init" | "viewers")
}

/// The stream's id where a client resumes after `messages`.
fn last_id(messages: &[Message]) -> String {
    messages
        .iter()
        .rev()
        .map(|m| m.stream_id.clone())
        .find(|id| !id.is_empty())
        .expect("an id")
}

/// Each auction's own event ids among `messages`, in order (inits left out).
fn own_ids(messages: &[Message]) -> BTreeMap<String, Vec<String>> {
    let mut ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for message in messages.iter().filter(|m| is_event(m)) {
        ids.entry(message.auction.clone())
            .or_default()
            .push(message.own_id().unwrap());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_resumes_every_auction_on_another_replica_after_a_sigkill() {
    hop_case(&RedisServer::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_resumes_every_auction_on_another_replica_after_a_sigkill_on_a_cluster() {
    hop_case(&RedisCluster::start()).await;
}

async fn hop_case(redis: &impl TestRedis) {
    let _bidder = simulator(redis);
    for auction in AUCTIONS {
        redis.wait_for_more(auction, "0-0", 1);
    }
    let mut edge_a = sse_edge(redis, &[]);
    let edge_b = sse_edge(redis, &[]);
    let target = "/events?auctions=ma,mb,mc";
    let mut first_stream = stream(open(edge_a.addr, target, None).await);
    let mut first = Vec::new();
    read_until(
        &mut first_stream,
        &targets(redis, &AUCTIONS, 10),
        &mut first,
    )
    .await;
    edge_a.kill(); // no goodbye
    while let Ok(Some(message)) = tokio::time::timeout(QUIET, first_stream.next()).await {
        first.push(message);
    }
    let inits: BTreeMap<String, String> = first
        .iter()
        .filter(|m| m.kind == "init")
        .map(|m| (m.auction.clone(), m.own_id().unwrap()))
        .collect();
    assert_eq!(inits.len(), 3, "one init per auction: {inits:?}");
    let last = last_id(&first);

    let mut second_stream = stream(open(edge_b.addr, target, Some(&last)).await);
    let mut second = Vec::new();
    read_until(
        &mut second_stream,
        &targets(redis, &AUCTIONS, 10),
        &mut second,
    )
    .await;
    assert!(
        !second.iter().any(|m| m.kind == "init"),
        "every auction resumed, none restarted"
    );

    let mut all = first.clone();
    all.extend(second);
    for (auction, ids) in own_ids(&all) {
        let expected = redis.stream_ids_between(&auction, &inits[&auction], ids.last().unwrap());
        assert_eq!(ids, expected, "{auction}: every event once, in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_that_changes_its_auctions_keeps_its_place_in_those_it_still_watches() {
    let redis = RedisServer::start();
    let _bidder = simulator(&redis);
    for auction in AUCTIONS {
        redis.wait_for_more(auction, "0-0", 1);
    }
    let edge = sse_edge(&redis, &[]);
    let mut before = Vec::new();
    {
        let mut first = stream(open(edge.addr, "/events?auctions=ma%2Cmb", None).await);
        read_until(&mut first, &targets(&redis, &["ma", "mb"], 5), &mut before).await;
    }
    let last = last_id(&before);
    // A new list, the last id in the query (as a page passes it, encoded).
    let target = format!(
        "/events?auctions=mb,mc&lastEventId={}",
        last.replace('~', "%7E")
    );
    let mut after = Vec::new();
    let mut second = stream(open(edge.addr, &target, None).await);
    read_until(&mut second, &targets(&redis, &["mb", "mc"], 5), &mut after).await;
    let inits: Vec<&str> = after
        .iter()
        .filter(|m| m.kind == "init")
        .map(|m| m.auction.as_str())
        .collect();
    assert_eq!(
        inits,
        ["mc"],
        "the added auction starts, the kept one resumes"
    );
    assert!(
        after.iter().all(|m| m.auction != "ma"),
        "ma is no longer sent"
    );
    let mb_init = before
        .iter()
        .find(|m| m.kind == "init" && m.auction == "mb")
        .unwrap()
        .own_id()
        .unwrap();
    let mut all = before.clone();
    all.extend(after);
    let mb = &own_ids(&all)["mb"];
    assert_eq!(
        mb,
        &redis.stream_ids_between("mb", &mb_init, mb.last().unwrap()),
        "mb: every event once across the change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_documented_codes() {
    let redis = RedisServer::start();
    let edge = sse_edge(
        &redis,
        &[("AUCTION_SSE_MAX_AUCTIONS_PER_STREAM", "2".to_owned())],
    );
    for (target, status, code) in [
        ("/events", 400, "invalid_auctions"),
        ("/events?auctions=", 400, "invalid_auctions"),
        ("/events?auctions=a,b%20c", 400, "invalid_auction_id"),
        ("/events?auctions=a,b,c", 400, "too_many_auctions"),
        ("/events?auctions=nope,nada", 404, "not_found"),
    ] {
        match open(edge.addr, target, None).await {
            Opened::Refused(got_status, got_code) => {
                assert_eq!((got_status, got_code.as_str()), (status, code), "{target}")
            }
            Opened::Stream(_) => panic!("{target} was served"),
        }
    }
}
