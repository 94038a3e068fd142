//! The hub and the delivery protocol in-process, with no Redis server: an
//! event store in memory (`test_support::MemoryStore`) behind the same
//! interfaces Redis implements, clients on loopback sockets served by the
//! same loop an SSE stream runs (`Delivery::serve`). Each case checks what
//! the client reads and the metrics the conformance suite counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use auction_domain::{AuctionId, Event, EventId};
use fanout::{
    Alt, AltWindow, Batch, Codec, Delivery, EncodedEvent, Ended, Frame, Hub, HubConfig,
    LiveCounters, Resume, Transport,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use telemetry::TransportMetrics;
use test_support::MemoryStore;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

/// One line per message, naming what it is, so a test reads them back.
/// Events carry `pad` bytes more, to fill sockets when a test needs it.
/// Its alternative frames (as a compressed WebSocket's) are the same line
/// in capitals; it counts the events it encoded that way.
struct Lines {
    pad: usize,
    alts: Arc<AtomicUsize>,
}

impl Codec for Lines {
    fn event(&self, _: &AuctionId, event: &Event) -> Frame {
        let pad = "x".repeat(self.pad);
        Frame::from(format!("event {}{pad}\n", event.id))
    }
    fn event_frames(
        &self,
        auction: &AuctionId,
        event: &Event,
        _: Option<&EncodedEvent>,
        alt: bool,
    ) -> (Frame, Option<Alt>) {
        let frame = self.event(auction, event);
        if !alt {
            return (frame, None);
        }
        let key = self.alts.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        let alone = Frame::from(String::from_utf8_lossy(&frame).to_uppercase());
        let chained = None;
        (
            frame,
            Some(Alt {
                key,
                alone,
                chained,
            }),
        )
    }
    fn init(&self, _: &AuctionId, last: EventId, init_json: &str) -> Frame {
        let reset = init_json.contains("\"reset\":true");
        Frame::from(format!("init {last} reset={reset}\n"))
    }
    fn gone(&self, _: &AuctionId) -> Frame {
        Frame::from_static(b"gone\n")
    }
    fn viewers(&self, _: &AuctionId, count: u32) -> Frame {
        Frame::from(format!("viewers {count}\n"))
    }
}

/// An edge's socket as the client layer writes it.
struct Plain<'a>(&'a TcpStream);

impl Transport for Plain<'_> {
    type Socket = TcpStream;

    fn socket(&self) -> &TcpStream {
        self.0
    }
}

/// A replica's hub and delivery on a store in memory.
struct Edge {
    delivery: Arc<Delivery<Lines>>,
    /// Events the codec encoded as alternative frames.
    alts: Arc<AtomicUsize>,
    metrics: TransportMetrics,
    counters: LiveCounters,
    shutdown: CancellationToken,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Setup {
    /// Ring capacity (how far a client may fall behind).
    capacity: usize,
    /// How long a socket may accept nothing.
    stall: Duration,
    /// Bytes added to every event frame.
    pad: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            capacity: 64,
            stall: Duration::from_secs(5),
            pad: 0,
        }
    }
}

fn edge(store: &MemoryStore, setup: Setup) -> Edge {
    let shutdown = CancellationToken::new();
    let config = HubConfig {
        queue_capacity: setup.capacity,
        keepalive: Duration::from_secs(3600),
        idle_feed_ttl: Duration::from_secs(60),
        viewers_interval: Duration::from_secs(3600),
        replay_keep: Duration::from_secs(2),
        replica: "test".into(),
    };
    let alts = Arc::new(AtomicUsize::new(0));
    let codec = Lines {
        pad: setup.pad,
        alts: alts.clone(),
    };
    let store_reads = Arc::new(store.clone());
    let counters = LiveCounters::default();
    let hub = Hub::start(
        store_reads,
        store.live(),
        codec,
        config,
        counters.clone(),
        shutdown.clone(),
    );
    let metrics = telemetry::Metrics::new().transport(telemetry::Transport::sse);
    let delivery = Delivery::new(hub, metrics.clone(), setup.stall, shutdown.clone());
    Edge {
        delivery: Arc::new(delivery),
        alts,
        metrics,
        counters,
        shutdown,
    }
}

/// A client's connection: what it reads, and how the edge's serving of it
/// ended (`None`: it was stopped).
struct Client {
    reader: BufReader<TcpStream>,
    served: JoinHandle<Option<Ended>>,
}

impl Client {
    /// The next line the client reads, but for viewer counts (the hub
    /// reports them at its start, and whenever they change).
    async fn line(&mut self) -> String {
        loop {
            let line = self.any_line().await;
            if !line.starts_with("viewers ") {
                return line;
            }
        }
    }

    /// The next line the client reads (empty at the end of the stream).
    async fn any_line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("a line in time")
            .unwrap();
        line.trim_end().chars().take(40).collect()
    }

    /// The next `n` lines.
    async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut lines = Vec::with_capacity(n);
        for _ in 0..n {
            lines.push(self.line().await);
        }
        lines
    }

    /// How the edge's serving of this client ended.
    async fn ended(self) -> Option<Ended> {
        tokio::time::timeout(WAIT, self.served)
            .await
            .expect("the client's delivery ended in time")
            .unwrap()
    }
}

/// A connected pair on loopback: (the edge's side, the client's).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reader = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, reader)
}

/// Connects a client resuming as `resume` says: the edge opens, starts and
/// serves it as an SSE stream's task does.
async fn connect(edge: &Edge, auction: &AuctionId, resume: Resume) -> Client {
    let (server, reader) = pair().await;
    let delivery = edge.delivery.clone();
    let auction = auction.clone();
    let served = tokio::spawn(async move {
        let address = server.peer_addr().expect("a peer").ip();
        let opening = delivery
            .open(&auction, resume, address)
            .await
            .expect("opened");
        let stream = Arc::new(server);
        let mut socket = Plain(&stream);
        let (mut subscription, rx) = match delivery.start(&mut socket, opening).await {
            Ok(started) => started,
            Err(error) => panic!("not started: {error:?}"),
        };
        let never = std::future::pending::<()>;
        delivery
            .serve(&mut socket, &stream, &mut subscription, rx, never)
            .await
    });
    Client {
        reader: BufReader::new(reader),
        served,
    }
}

fn event_line(event: &Event) -> String {
    format!("event {}", event.id)
}

/// Waits until the edge has watched the auction live long enough to have
/// published `event` (a watcher reading it).
async fn seen_by(watcher: &mut Client, event: &Event) {
    loop {
        if watcher.line().await == event_line(event) {
            return;
        }
    }
}

#[tokio::test]
async fn a_fresh_client_gets_an_init_then_every_event_live() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let before = store.append(&auction);
    let edge = edge(&store, Setup::default());
    let mut client = connect(&edge, &auction, Resume::Fresh).await;
    assert_eq!(
        client.line().await,
        format!("init {} reset=false", before.id)
    );
    let live: Vec<Event> = (0..5).map(|_| store.append(&auction)).collect();
    let expected: Vec<String> = live.iter().map(event_line).collect();
    assert_eq!(client.lines(5).await, expected);
    assert_eq!(edge.metrics.events_delivered.get(), 5);
    assert_eq!(edge.metrics.resumes_reset.get(), 0);
}

#[tokio::test]
async fn a_client_resuming_from_an_id_the_feed_published_is_served_from_memory() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let edge = edge(&store, Setup::default());
    let mut watcher = connect(&edge, &auction, Resume::Fresh).await;
    watcher.line().await;
    let events: Vec<Event> = (0..4).map(|_| store.append(&auction)).collect();
    seen_by(&mut watcher, &events[3]).await;
    let (reads_before, snapshots_before) = (store.reads("read_from"), store.reads("snapshot"));
    let mut client = connect(&edge, &auction, Resume::From(events[0].id)).await;
    let expected: Vec<String> = events[1..].iter().map(event_line).collect();
    assert_eq!(client.lines(3).await, expected);
    assert_eq!(store.reads("read_from"), reads_before, "no stream read");
    assert_eq!(store.reads("snapshot"), snapshots_before, "no snapshot");
    let next = store.append(&auction);
    assert_eq!(client.line().await, event_line(&next));
    assert_eq!(edge.metrics.resumes_replayed.get(), 1);
}

#[tokio::test]
async fn a_client_resuming_from_an_older_id_is_replayed_from_the_stream_then_goes_live() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let events: Vec<Event> = (0..300).map(|_| store.append(&auction)).collect();
    let edge = edge(&store, Setup::default());
    let mut client = connect(&edge, &auction, Resume::From(events[9].id)).await;
    let expected: Vec<String> = events[10..].iter().map(event_line).collect();
    assert_eq!(client.lines(290).await, expected);
    assert_eq!(store.reads("read_from"), 2, "two pages of 256");
    let next = store.append(&auction);
    assert_eq!(client.line().await, event_line(&next));
    assert_eq!(edge.metrics.resumes_replayed.get(), 1);
    assert_eq!(edge.metrics.events_delivered.get(), 291);
}

#[tokio::test]
async fn a_gap_mid_replay_restarts_the_clients_view_with_a_reset_init() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let events: Vec<Event> = (0..600).map(|_| store.append(&auction)).collect();
    // Retention trims the stream right after the replay's first page.
    store.trim_after_read("read_from", 1, &auction, 100);
    let edge = edge(&store, Setup::default());
    let mut client = connect(&edge, &auction, Resume::From(events[0].id)).await;
    let first_page: Vec<String> = events[1..256].iter().map(event_line).collect();
    assert_eq!(client.lines(255).await, first_page);
    let newest = events.last().unwrap();
    assert_eq!(
        client.line().await,
        format!("init {} reset=true", newest.id)
    );
    let next = store.append(&auction);
    assert_eq!(client.line().await, event_line(&next));
    assert_eq!(edge.metrics.resumes_reset.get(), 1);
    assert_eq!(edge.metrics.resumes_replayed.get(), 0);
}

#[tokio::test]
async fn a_missed_notice_is_filled_from_the_stream_in_order() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let edge = edge(&store, Setup::default());
    let mut client = connect(&edge, &auction, Resume::Fresh).await;
    client.line().await;
    let missed = store.append_unannounced(&auction);
    let next = store.append(&auction);
    assert_eq!(
        client.lines(2).await,
        [event_line(&missed), event_line(&next)]
    );
}

#[tokio::test]
async fn a_client_whose_socket_stays_full_is_cut_off_as_slow_once() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let setup = Setup {
        stall: Duration::from_millis(200),
        pad: 1 << 20,
        ..Setup::default()
    };
    let edge = edge(&store, setup);
    let mut client = connect(&edge, &auction, Resume::Fresh).await;
    client.line().await;
    // The client reads nothing more: a few megabyte events fill its socket.
    for _ in 0..32 {
        store.append(&auction);
    }
    assert_eq!(client.ended().await, Some(Ended::Slow));
    assert_eq!(edge.metrics.slow_consumer_disconnects.get(), 1);
}

#[tokio::test]
async fn a_client_lapped_by_its_feed_is_cut_off_as_slow_once() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let setup = Setup {
        capacity: 8,
        pad: 1 << 20,
        ..Setup::default()
    };
    let edge = edge(&store, setup);
    let mut client = connect(&edge, &auction, Resume::Fresh).await;
    client.line().await;
    // Far more than the ring holds while the full socket holds it back
    // (well within the stall limit).
    for _ in 0..64 {
        store.append(&auction);
    }
    assert_eq!(client.ended().await, Some(Ended::Slow));
    assert_eq!(edge.metrics.slow_consumer_disconnects.get(), 1);
}

#[tokio::test]
async fn a_parked_client_is_handed_back_for_a_replaced_stream_and_resumes() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let edge = edge(&store, Setup::default());
    let mut client = connect(&edge, &auction, Resume::Fresh).await;
    client.line().await;
    let first = store.append(&auction);
    assert_eq!(client.line().await, event_line(&first));
    // Caught up after a live event: parked, written by the hub.
    test_support::wait_for("the client to park", WAIT, || {
        (edge.metrics.direct_clients.get() == 1).then_some(())
    });
    let second = store.append(&auction);
    assert_eq!(client.line().await, event_line(&second));
    // Redis came back without the stream: the feed resets its clients,
    // handing the parked socket back first; the client must resume.
    store.replace(&auction, 1);
    assert_eq!(client.ended().await, Some(Ended::Reset));
    assert_eq!(edge.metrics.direct_clients.get(), 0);
}

#[tokio::test]
async fn a_deleted_auction_tells_its_clients_gone() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let setup = Setup::default();
    let edge = edge(&store, setup);
    let mut client = connect(&edge, &auction, Resume::Fresh).await;
    client.line().await;
    store.delete(&auction);
    // The audit runs every sweep interval (the idle feed time, 60 s here):
    // a reconnect of the live connection checks at once instead.
    store.drop_connections();
    assert_eq!(client.line().await, "gone");
    assert_eq!(client.ended().await, Some(Ended::Gone));
}

#[tokio::test]
async fn clients_behind_a_group_writer_that_fell_a_ring_behind_end_as_slow_and_are_counted() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let setup = Setup {
        capacity: 8,
        ..Setup::default()
    };
    let edge = edge(&store, setup);
    // The hub writes the first 16 parked clients itself, a group writer
    // the rest: 20 clients, all parked.
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = connect(&edge, &auction, Resume::Fresh).await;
        client.line().await;
        clients.push(client);
    }
    let first = store.append(&auction);
    for client in &mut clients {
        assert_eq!(client.line().await, event_line(&first));
    }
    test_support::wait_for("every client to park", WAIT, || {
        (edge.metrics.direct_clients.get() == 20).then_some(())
    });
    // A burst of notices that the hub, on this one-thread runtime, takes
    // in one go before the group writer runs: it falls a ring behind.
    let burst: Vec<String> = (0..32)
        .map(|_| event_line(&store.append(&auction)))
        .collect();
    let (mut kept_up, mut cut_off) = (0, 0);
    for client in &mut clients {
        let mut lines = Vec::new();
        loop {
            let line = client.line().await;
            if line.is_empty() {
                cut_off += 1;
                break;
            }
            lines.push(line);
            if lines.len() == burst.len() {
                assert_eq!(lines, burst, "a client the hub writes gets every event");
                kept_up += 1;
                break;
            }
        }
    }
    assert_eq!((kept_up, cut_off), (16, 4));
    assert_eq!(edge.metrics.slow_consumer_disconnects.get(), 4);
    for client in clients {
        if client.served.is_finished() {
            assert_eq!(client.ended().await, Some(Ended::Slow));
        }
    }
}

/// On a cluster each primary's subscriptions are announced when made again
/// (its node answered again, or the auctions' slot moved to a new primary),
/// and the hub then reads their streams. If those reads fail (the node is
/// not answering yet, or the command connection has not learnt the new
/// slot map), only those auctions wait: the live connection does not start
/// over, other auctions' events flow on, and the feed is caught up once
/// its reads are answered, the events its notices missed included.
#[tokio::test]
async fn a_resubscribed_auction_whose_reads_fail_holds_up_only_itself() {
    let store = MemoryStore::new();
    let (failing, healthy) = (store.create("failing"), store.create("healthy"));
    let edge = edge(&store, Setup::default());
    let mut failing_client = connect(&edge, &failing, Resume::Fresh).await;
    let mut healthy_client = connect(&edge, &healthy, Resume::Fresh).await;
    failing_client.line().await;
    healthy_client.line().await;

    // The failing auction's primary: its notices missed, its reads failing
    // as its subscription is made again.
    store.set_unreadable(&failing, true);
    let missed = store.append_unannounced(&failing);
    store.announce(std::slice::from_ref(&failing));
    for _ in 0..3 {
        let event = store.append(&healthy);
        assert_eq!(healthy_client.line().await, event_line(&event));
    }
    assert_eq!(
        edge.counters.reconnects.get(),
        0,
        "the live connection went on"
    );
    assert_eq!(edge.counters.resubscribes.get(), 1);

    store.set_unreadable(&failing, false);
    assert_eq!(failing_client.line().await, event_line(&missed));
    let next = store.append(&failing);
    assert_eq!(failing_client.line().await, event_line(&next));
}

#[tokio::test]
async fn events_are_encoded_a_second_way_only_while_a_client_of_the_feed_asks_for_it() {
    let store = MemoryStore::new();
    let auction = store.create("a");
    let edge = edge(&store, Setup::default());
    let mut plain = connect(&edge, &auction, Resume::Fresh).await;
    plain.line().await;
    for _ in 0..3 {
        let event = store.append(&auction);
        assert_eq!(plain.line().await, event_line(&event));
    }
    assert_eq!(edge.alts.load(Ordering::Relaxed), 0, "nobody asked");

    // A client asking for them (as a compressed WebSocket does).
    let (server, reader) = pair().await;
    let opening = edge
        .delivery
        .open(&auction, Resume::Fresh, server.peer_addr().unwrap().ip())
        .await
        .unwrap();
    let mut batch = Batch::alt(Arc::new(AltWindow::new(true)));
    let (subscription, mut rx) = edge
        .delivery
        .start_framed(&mut Plain(&server), opening, &mut batch)
        .await
        .unwrap();
    let event = store.append(&auction);
    assert_eq!(plain.line().await, event_line(&event));
    assert_eq!(edge.alts.load(Ordering::Relaxed), 1, "encoded for it");
    let mut subscription = subscription;
    let item = rx.recv().await;
    edge.delivery
        .take(&mut subscription, item, &mut batch)
        .unwrap();
    edge.delivery
        .flush(&mut Plain(&server), &mut batch, || false)
        .await
        .unwrap();
    let mut alt_client = Client {
        reader: BufReader::new(reader),
        served: tokio::spawn(async { None }),
    };
    alt_client.line().await; // its init
    assert_eq!(
        alt_client.line().await,
        event_line(&event).to_uppercase(),
        "and written to it"
    );

    drop((subscription, rx));
    let event = store.append(&auction);
    assert_eq!(plain.line().await, event_line(&event));
    assert_eq!(edge.alts.load(Ordering::Relaxed), 1, "no more once it left");
}
