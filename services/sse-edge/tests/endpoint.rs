//! The SSE endpoint's contract: headers, resume points of every kind,
//! refusals, keepalives.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::start_edge;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use std::time::Duration;
use test_support::auctions::{self, Terms};
use test_support::{RedisServer, ServiceProcess, id_pair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Setup {
    redis: RedisServer,
    bidder: ServiceProcess,
    edge: ServiceProcess,
    http: reqwest::Client,
}

async fn setup(edge_env: &[(&'static str, &str)]) -> Setup {
    let redis = RedisServer::start();
    let mut env = common::bidder_env(&redis, "", 1000);
    env.push(("AUCTION_STREAM_MAXLEN", "10".into()));
    let bidder = ServiceProcess::start("bidder", &env);
    let edge = start_edge(&redis, edge_env);
    let terms = Terms {
        min_increment: 1,
        ..Terms::open_for(600_000)
    };
    auctions::create_with(&redis.url(), &["a1".into()], terms).await;
    Setup {
        redis,
        bidder,
        edge,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    async fn bid(&self, amount: u64) -> String {
        let response = self
            .http
            .post(format!("{}/auctions/a1/bids", self.bidder.url()))
            .bearer_auth(test_support::seller_token())
            .header("content-type", "application/json")
            .body(format!(r#"{{"amount":{amount},"bidder":"x"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let json: serde_json::Value = response.json().await.unwrap();
        json["id"].as_str().unwrap().to_owned()
    }

    /// Opens the stream with `last_event_id` and returns the first event.
    async fn first_event(
        &self,
        path: &str,
        last_event_id: Option<&[u8]>,
    ) -> (u16, eventsource_stream::Event) {
        let mut request = self.http.get(format!("{}{path}", self.edge.url()));
        if let Some(id) = last_event_id {
            request = request.header(
                "Last-Event-ID",
                reqwest::header::HeaderValue::from_bytes(id).unwrap(),
            );
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let mut events = response.bytes_stream().eventsource();
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("well-formed SSE");
        (status, event)
    }
}

#[tokio::test]
async fn every_unusable_resume_point_gets_a_reset_init() {
    let setup = setup(&[]).await;
    let oldest = setup.bid(100).await;
    let mut newest = oldest.clone();
    for amount in 101..400 {
        newest = setup.bid(amount).await;
    }
    let first_kept = setup.redis.stream("a1")[0].id.clone();
    assert!(
        id_pair(&first_kept) > id_pair(&oldest),
        "the stream was trimmed"
    );
    let (ms, _) = id_pair(&newest);
    let future = format!("{}-0", ms + 60_000);
    let long = format!("{}-0", "1".repeat(10 * 1024));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbled", b"not-an-id".to_vec()),
        ("empty", Vec::new()),
        ("future", future.into_bytes()),
        ("10 KB", long.into_bytes()),
        ("older than retention", oldest.into_bytes()),
        ("latin-1 bytes", vec![0xe9, b'-', b'1']),
    ];
    for (what, id) in cases {
        let (status, event) = setup.first_event("/auctions/a1/events", Some(&id)).await;
        assert_eq!(status, 200, "{what}");
        assert_eq!(event.event, "init", "{what}");
        let init: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(init["reset"], true, "{what}");
        assert_eq!(init["auction"]["current"]["amount"], 399, "{what}");
        assert_eq!(init["history"].as_array().unwrap().len(), 10, "{what}");
        assert_eq!(event.id, newest, "{what}: init carries the newest id");
    }
    // The query parameter works the same way.
    let (_, event) = setup
        .first_event("/auctions/a1/events?lastEventId=garbage", None)
        .await;
    assert_eq!(event.event, "init");
    assert!(event.data.contains("\"reset\":true"));
    // No resume point at all: a plain init.
    let (_, event) = setup.first_event("/auctions/a1/events", None).await;
    assert!(event.data.contains("\"reset\":false"));
    // A resume point still in the stream: the next event, no init.
    let kept = setup.redis.stream("a1");
    let (_, event) = setup
        .first_event("/auctions/a1/events", Some(kept[2].id.as_bytes()))
        .await;
    assert_eq!(
        (event.event.as_str(), event.id.as_str()),
        ("bid", kept[3].id.as_str())
    );
    let (_, event) = setup
        .first_event(
            &format!("/auctions/a1/events?lastEventId={}", kept[4].id),
            None,
        )
        .await;
    assert_eq!(event.id, kept[5].id);
    // Still alive and well.
    let health = setup
        .http
        .get(format!("{}/healthz", setup.edge.ops_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(!setup.edge.logs().contains("panicked"));
    let metrics = setup
        .http
        .get(format!("{}/metrics", setup.edge.ops_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("auction_resumes_total{transport=\"sse\",outcome=\"reset\"} 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("auction_resumes_total{transport=\"sse\",outcome=\"replayed\"} 2"),
        "{metrics}"
    );
}

/// Reads a stream's body into its text until `done` says so (within 5 s).
async fn read_until(
    (body, text): &mut (
        impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin,
        String,
    ),
    done: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done(text) {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the stream went quiet");
        text.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
    }
}

#[tokio::test]
async fn headers_retry_and_keepalive_comments() {
    let setup = setup(&[
        ("AUCTION_SSE_KEEPALIVE_MS", "200"),
        ("AUCTION_SSE_RETRY_MS", "1500"),
    ])
    .await;
    let response = setup
        .http
        .get(format!("{}/auctions/a1/events", setup.edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let mut stream = (response.bytes_stream(), String::new());
    read_until(&mut stream, |text| text.matches(": keepalive").count() >= 2).await;
    let text = stream.1;
    assert!(text.starts_with("retry: 1500\n\n"), "{text}");
    assert!(text.contains("event: init\n"));
}

/// Clients that took a live event are written by the hub (parked); a
/// keepalive reaches them there, without handing every socket back to its
/// task (which would leave them unparked until the next event).
#[tokio::test]
async fn parked_clients_get_keepalives_without_leaving_the_hub() {
    // More than the hub writes itself (16): group writers serve the rest.
    const CLIENTS: usize = 20;
    let setup = setup(&[("AUCTION_SSE_KEEPALIVE_MS", "200")]).await;
    let mut streams = Vec::new();
    for _ in 0..CLIENTS {
        let response = setup
            .http
            .get(format!("{}/auctions/a1/events", setup.edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        streams.push((response.bytes_stream(), String::new()));
    }
    let first = setup.bid(100).await;
    for stream in &mut streams {
        read_until(stream, |text| text.contains(&format!("id: {first}\n"))).await;
    }
    let gauge = "auction_direct_clients{transport=\"sse\"}";
    test_support::wait_for("every client to be parked", Duration::from_secs(5), || {
        (setup.edge.metric(gauge) == CLIENTS as f64).then_some(())
    });
    for stream in &mut streams {
        let seen = stream.1.matches(": keepalive").count();
        read_until(stream, |text| {
            text.matches(": keepalive").count() >= seen + 2
        })
        .await;
    }
    assert_eq!(
        setup.edge.metric(gauge),
        CLIENTS as f64,
        "still parked after two keepalives"
    );
    let second = setup.bid(101).await;
    for stream in &mut streams {
        read_until(stream, |text| text.contains(&format!("id: {second}\n"))).await;
        assert_eq!(stream.1.matches("event: bid\n").count(), 2, "{}", stream.1);
    }
}

/// A busy auction's clients get their keepalive in front of an event, in
/// the same write, instead of a write of its own: the comment never
/// arrives alone while events flow, and still arrives at least once an
/// interval.
#[tokio::test]
async fn a_busy_auctions_keepalive_rides_in_front_of_its_events() {
    let setup = setup(&[("AUCTION_SSE_KEEPALIVE_MS", "1000")]).await;
    let response = setup
        .http
        .get(format!("{}/auctions/a1/events", setup.edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    // 2.6 intervals of bids 25 ms apart (inside the bidder's rate limit):
    // the feed is never quiet for half an interval.
    let bidding = async {
        let mut every = tokio::time::interval(Duration::from_millis(25));
        let mut last = String::new();
        for amount in 100..204 {
            every.tick().await;
            last = setup.bid(amount).await;
        }
        last
    };
    tokio::pin!(bidding);
    let mut chunks = Vec::new();
    let last = loop {
        tokio::select! {
            last = &mut bidding => break last,
            chunk = body.next() => chunks.push(chunk.expect("stream open").unwrap()),
        }
    };
    let text = |chunks: &[bytes::Bytes]| chunks.concat();
    while !String::from_utf8(text(&chunks))
        .unwrap()
        .contains(&format!("id: {last}\n"))
    {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("the last bid in time");
        chunks.push(chunk.expect("stream open").unwrap());
    }
    let mut keepalives = 0;
    for chunk in chunks.iter().map(|c| std::str::from_utf8(c).unwrap()) {
        for (at, comment) in chunk.match_indices(": keepalive\n\n") {
            keepalives += 1;
            assert!(
                chunk[at + comment.len()..].starts_with("id: "),
                "a keepalive without an event after it: {chunk:?}"
            );
        }
    }
    assert!(keepalives >= 2, "{keepalives} keepalives in 2.6 intervals");
}

#[tokio::test]
async fn refusals_use_the_contract_error_shape() {
    let setup = setup(&[("AUCTION_MAX_CONNECTIONS", "2")]).await;
    for path in ["/auctions/nope/events", "/auctions/bad%20id/events"] {
        let response = setup
            .http
            .get(format!("{}{path}", setup.edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["error"], "not_found");
    }
    let url = format!("{}/auctions/a1/events", setup.edge.url());
    let first = setup.http.get(&url).send().await.unwrap();
    let second = setup.http.get(&url).send().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = setup.http.get(&url).send().await.unwrap();
    assert_eq!(third.status(), 503);
    assert!(third.headers().contains_key("retry-after"));
    let json: serde_json::Value = third.json().await.unwrap();
    assert_eq!(json["error"], "too_many_connections");
    drop((first, second));
    // Capacity comes back when clients leave.
    let mut recovered = false;
    for _ in 0..100 {
        if setup.http.get(&url).send().await.unwrap().status() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(recovered);
}

/// A replica asked for thousands of auctions at once (it restarted, or a
/// load balancer moved their clients to it) serves every one of them: the
/// hub starts watching them in batches, so none is refused as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_clients_on_thousands_of_auctions_is_served() {
    const AUCTIONS: usize = 2_000;
    let setup = setup(&[]).await;
    let ids: Vec<String> = (0..AUCTIONS).map(|n| format!("many-{n}")).collect();
    auctions::create(&setup.redis.url(), &ids, 600_000).await;

    // Every client at once; each reads until its init (or a refusal).
    let addr = setup.edge.addr;
    let clients: Vec<_> = (0..AUCTIONS)
        .map(|n| {
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let request =
                    format!("GET /auctions/many-{n}/events HTTP/1.1\r\nHost: edge\r\n\r\n");
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let read =
                        tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
                            .await
                            .expect("an answer in time")
                            .unwrap();
                    seen.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&seen);
                    if read == 0 || text.contains("event: init") {
                        return text.lines().next().unwrap_or_default().to_owned();
                    }
                }
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for client in clients {
        *statuses.entry(client.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        statuses,
        [("HTTP/1.1 200 OK".to_owned(), AUCTIONS)].into(),
        "every client got its stream"
    );
}
