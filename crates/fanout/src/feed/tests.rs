//! Direct delivery on real loopback sockets: what parked clients are
//! written, when and how their sockets come back.

use super::lane::{Lane, Other};
use super::*;
use crate::codec::{Alt, AltWindow, EncodedEvent};
use crate::writer;
use bytes::Bytes;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A connected pair on loopback: (server side, client side).
async fn pair() -> (Arc<TcpStream>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (Arc::new(server), client)
}

fn id(n: u64) -> EventId {
    EventId::new(n, 0)
}

fn event(n: u64, frame: Bytes) -> Item {
    Item::Event(Arc::new(EncodedEvent {
        id: id(n),
        placed_at_ms: 0,
        frame,
        alt: None,
    }))
}

/// A feed as the hub keeps one, following from event 1.
struct Harness {
    feed: Arc<Feed>,
}

/// The keepalive frame of the tests' transport.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

impl Harness {
    /// A feed of a transport that sends `KEEPALIVE` at each tick.
    fn new() -> Harness {
        Harness::with_keepalive(Some(Bytes::from_static(KEEPALIVE)))
    }

    fn with_keepalive(keepalive: Option<Bytes>) -> Harness {
        let feed = Feed::new(16, keepalive);
        feed.recent().follow_from(id(1));
        Harness { feed }
    }

    /// Publishes event `n` (after `n - 1`) as the hub does: recorded,
    /// then sent.
    fn publish(&self, n: u64, frame: &'static [u8]) {
        self.publish_bytes(n, Bytes::from_static(frame));
    }

    fn publish_bytes(&self, n: u64, frame: Bytes) {
        self.publish_item(n, event(n, frame));
    }

    /// Publishes event `n` with an alternative frame too (keyed `n`).
    fn publish_with_alt(&self, n: u64, frame: &'static [u8], alt: &'static [u8]) {
        self.publish_chained(n, frame, alt, None);
    }

    /// Publishes event `n` with an alternative frame (keyed `n`) and, if
    /// given, one chained to event `n - 1`'s.
    fn publish_chained(
        &self,
        n: u64,
        frame: &'static [u8],
        alone: &'static [u8],
        chained: Option<&'static [u8]>,
    ) {
        let item = Item::Event(Arc::new(EncodedEvent {
            id: id(n),
            placed_at_ms: 0,
            frame: Bytes::from_static(frame),
            alt: Some(Alt {
                key: n,
                alone: Bytes::from_static(alone),
                chained: chained.map(|chained| (n - 1, Bytes::from_static(chained))),
            }),
        }));
        self.publish_item(n, item);
    }

    fn publish_item(&self, n: u64, item: Item) {
        if let Item::Event(encoded) = &item {
            self.feed.recent().push(id(n - 1), encoded.clone());
        }
        self.feed.send(item);
    }

    /// Publishes event 2, far bigger than a loopback socket buffers
    /// while nobody reads, then a small event 3; returns event 2's
    /// frame.
    fn publish_more_than_a_socket_takes(&self) -> Bytes {
        let big = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
        self.publish_bytes(2, big.clone());
        self.publish(3, b"after\n");
        big
    }

    fn park(&self, socket: &Arc<TcpStream>, last: u64) -> Option<Parked> {
        self.feed
            .park(socket.clone(), id(last), None, &metrics(), || true)
    }

    /// Parks a client that asked for events' alternative frames, chained
    /// ones too.
    fn park_alt(&self, socket: &Arc<TcpStream>, last: u64) -> Option<Parked> {
        self.park_window(socket, last, Arc::new(AltWindow::new(true)))
    }

    /// Parks a client that asked for events' alternative frames, chosen
    /// by `window`.
    fn park_window(
        &self,
        socket: &Arc<TcpStream>,
        last: u64,
        window: Arc<AltWindow>,
    ) -> Option<Parked> {
        self.feed
            .park(socket.clone(), id(last), Some(window), &metrics(), || true)
    }

    /// Receivers on the ring (clients reading it and group writers).
    fn ring_receivers(&self) -> usize {
        lock(&self.feed.state)
            .ring
            .as_ref()
            .map_or(0, |ring| ring.receiver_count())
    }

    /// Parks one client (last sent: event 1) with a group writer,
    /// behind `MAX_PARKED` others the hub writes; the second part keeps
    /// them and both ends of every socket alive.
    async fn park_in_a_group(&self) -> (Parked, impl Sized) {
        let hub_share = self.fill_the_hubs_share(1).await;
        let (server, client) = pair().await;
        (self.park(&server, 1).unwrap(), (hub_share, client))
    }

    /// Parks one client (last sent: event 1) with a group writer, and
    /// lists the group's lanes as a writer's round does before its
    /// writes: (the claim, the listed lanes, the socket's server and
    /// client ends, what keeps the others alive).
    async fn park_listed_in_a_group(
        &self,
    ) -> (
        Parked,
        Vec<Arc<Lane>>,
        Arc<TcpStream>,
        TcpStream,
        impl Sized,
    ) {
        let hub_share = self.fill_the_hubs_share(1).await;
        let (server, client) = pair().await;
        let parked = self.park(&server, 1).unwrap();
        let mut listed = Vec::new();
        assert!(self.feed.group_lanes(0, &mut listed));
        (parked, listed, server, client, hub_share)
    }

    /// Parks `MAX_PARKED` clients on one socket nobody reads: the
    /// clients parked after them go to group writers.
    async fn fill_the_hubs_share(&self, last: u64) -> (Vec<Parked>, TcpStream) {
        let (server, client) = pair().await;
        let claims = (0..MAX_PARKED)
            .map(|_| self.park(&server, last).unwrap())
            .collect();
        (claims, client)
    }
}

fn metrics() -> TransportMetrics {
    telemetry::Metrics::new().transport(telemetry::Transport::sse)
}

fn ids(events: &[Arc<EncodedEvent>]) -> Vec<u64> {
    events.iter().map(|event| event.id.ms).collect()
}

/// Writes event 2 to each lane, as a writer's round with that list
/// would (each answers "not ours to write" or was written); returns
/// its frame.
fn write_event_two(lanes: &[Arc<Lane>]) -> Frame {
    let Item::Event(two) = event(2, Bytes::from_static(b"two\n")) else {
        unreachable!()
    };
    for lane in lanes {
        let frames = std::slice::from_ref(&two.frame);
        assert!(lane.write(std::slice::from_ref(&two), frames, frames, 0));
    }
    two.frame.clone()
}

/// Waits (at most 5 s) for the socket to be handed back.
async fn handed_back(parked: &Parked) {
    tokio::time::timeout(Duration::from_secs(5), parked.handed_back())
        .await
        .expect("the socket was handed back");
}

async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    bytes
}

#[tokio::test]
async fn a_parked_client_is_written_every_new_event_and_skips_what_it_was_sent() {
    let feed = Harness::new();
    let (server, mut client) = pair().await;
    let parked = feed.park(&server, 2).unwrap();
    feed.publish(2, b"two\n");
    feed.publish(3, b"three\n");
    feed.publish(4, b"four\n");
    assert_eq!(read_exactly(&mut client, 11).await, b"three\nfour\n");
    assert_eq!(feed.feed.parked(), 1);
    let returned = parked.take_back();
    assert_eq!(returned.last_sent, id(4));
    assert_eq!(returned.taken, 3);
    assert!(returned.pending.is_none() && !returned.closed);
    assert_eq!(returned.missed.map(|m| m.len()), Some(0));
}

#[tokio::test]
async fn a_client_that_asked_for_alternative_frames_is_written_them_by_the_hub_and_by_a_group() {
    let feed = Harness::new();
    let mut plain = Vec::new();
    let mut alt = Vec::new();
    // The hub's share (half of it asking for alternative frames), then
    // two of each with a group writer.
    for n in 0..MAX_PARKED + 4 {
        let (server, client) = pair().await;
        if n % 2 == 0 {
            plain.push((feed.park(&server, 1).unwrap(), client));
        } else {
            alt.push((feed.park_alt(&server, 1).unwrap(), client));
        }
    }
    feed.publish_with_alt(2, b"two\n", b"TWO\n");
    // An event without one: every client gets its frame.
    feed.publish(3, b"three\n");
    feed.publish_with_alt(4, b"four\n", b"FOUR\n");
    for (_, client) in &mut plain {
        assert_eq!(read_exactly(client, 15).await, b"two\nthree\nfour\n");
    }
    for (_, client) in &mut alt {
        assert_eq!(read_exactly(client, 15).await, b"TWO\nthree\nFOUR\n");
    }
    assert_eq!(feed.feed.parked(), MAX_PARKED + 4);
}

#[tokio::test]
async fn a_socket_is_written_an_events_chained_frame_only_after_the_message_it_refers_to() {
    let feed = Harness::new();
    // Each socket's window as it starts: sent nothing compressed yet; sent
    // event 1's alternative message last; one that takes no chained
    // frames; sent some other message last.
    let starts: [(bool, u64); 4] = [(true, 0), (true, 1), (false, 1), (true, 99)];
    let mut clients = Vec::new();
    let mut plain = Vec::new();
    // Each kind in the hub's share and in a group writer's.
    for place in 0..2 {
        for (chains, last) in starts {
            let (server, client) = pair().await;
            let window = Arc::new(AltWindow::new(chains));
            if last > 0 {
                window.wrote(last);
            }
            let parked = feed.park_window(&server, 1, window.clone()).unwrap();
            clients.push((place, chains, last, window, parked, client));
        }
        if place == 0 {
            // The rest of the hub's share, plain.
            for _ in starts.len()..MAX_PARKED {
                let (server, client) = pair().await;
                plain.push((feed.park(&server, 1).unwrap(), client));
            }
        }
    }
    feed.publish_chained(2, b"two\n", b"TWO\n", Some(b"2\n"));
    feed.publish_chained(3, b"three\n", b"THREE\n", Some(b"3\n"));
    // Not chained (its previous message was not compressed, say).
    feed.publish_chained(4, b"four\n", b"FOUR\n", None);
    feed.publish_chained(5, b"five\n", b"FIVE\n", Some(b"5\n"));
    for (place, chains, last, window, _, client) in &mut clients {
        let expected: &[u8] = match (*chains, *last) {
            (true, 1) => b"2\n3\nFOUR\n5\n",
            (true, _) => b"TWO\n3\nFOUR\n5\n",
            (false, _) => b"TWO\nTHREE\nFOUR\nFIVE\n",
        };
        let read = read_exactly(client, expected.len()).await;
        assert_eq!(
            String::from_utf8_lossy(&read),
            String::from_utf8_lossy(expected),
            "written by the {}, window {chains} {last}",
            ["hub", "group"][*place]
        );
        // The next event's chained frame goes to this socket.
        let next = EncodedEvent {
            id: id(6),
            placed_at_ms: 0,
            frame: Bytes::from_static(b"six"),
            alt: Some(Alt {
                key: 6,
                alone: Bytes::from_static(b"SIX"),
                chained: Some((5, Bytes::from_static(b"6"))),
            }),
        };
        let six: &[u8] = if *chains { b"6" } else { b"SIX" };
        assert_eq!(&window.choice(&next)[..], six);
    }
}

#[tokio::test]
async fn anything_but_an_event_or_a_tick_hands_the_socket_back_with_a_receiver_that_gets_it() {
    let feed = Harness::new();
    let (server, _client) = pair().await;
    let parked = feed.park(&server, 1).unwrap();
    feed.feed.send(Item::Viewers(7));
    handed_back(&parked).await;
    assert_eq!(feed.feed.parked(), 0);
    let returned = parked.take_back();
    assert_eq!(returned.taken, 0, "the count is still to be taken");
    let mut rx = returned.feed.unwrap();
    assert!(matches!(rx.try_recv(), Ok(Item::Viewers(7))));
    assert!(rx.is_empty());
}

#[tokio::test]
async fn a_tick_writes_the_keepalive_to_every_parked_socket_and_hands_none_back() {
    let feed = Harness::new();
    let mut clients = Vec::new();
    // The hub's share and a group writer's.
    for _ in 0..MAX_PARKED + 2 {
        let (server, client) = pair().await;
        clients.push((feed.park(&server, 1).unwrap(), client));
    }
    feed.feed.send(Item::Tick);
    feed.publish(2, b"two\n");
    for (parked, client) in &mut clients {
        let expected = [KEEPALIVE, b"two\n"].concat();
        assert_eq!(read_exactly(client, expected.len()).await, expected);
        let state = lock(&parked.lane.state);
        assert!(state.returned.is_none() && !state.stuck());
    }
    assert_eq!(feed.feed.parked(), MAX_PARKED + 2);
}

#[tokio::test]
async fn a_tick_of_a_transport_without_keepalives_writes_nothing_and_hands_nothing_back() {
    let feed = Harness::with_keepalive(None);
    let (server, mut client) = pair().await;
    let parked = feed.park(&server, 1).unwrap();
    feed.feed.send(Item::Tick);
    feed.publish(2, b"two\n");
    assert_eq!(read_exactly(&mut client, 4).await, b"two\n");
    assert_eq!(feed.feed.parked(), 1);
    let returned = parked.take_back();
    assert_eq!(returned.taken, 2, "the tick counts as an item sent");
    assert!(returned.pending.is_none());
}

#[tokio::test]
async fn a_clients_own_frame_goes_between_the_feeds_events_and_it_stays_parked() {
    let feed = Harness::new();
    let mut clients = Vec::new();
    // One the hub writes, then others up to the hub's share, then one
    // a group writer writes.
    let (server, client) = pair().await;
    clients.push((feed.park(&server, 1).unwrap(), client));
    let (others, _their_client) = pair().await;
    let _others: Vec<_> = (1..MAX_PARKED)
        .map(|_| feed.park(&others, 1).unwrap())
        .collect();
    let (server, client) = pair().await;
    clients.push((feed.park(&server, 1).unwrap(), client));
    feed.publish(2, b"two\n");
    for (parked, client) in &mut clients {
        assert_eq!(read_exactly(client, 4).await, b"two\n");
        assert!(parked.write_own(&Bytes::from_static(b"ping\n")));
    }
    feed.publish(3, b"three\n");
    for (parked, client) in &mut clients {
        assert_eq!(read_exactly(client, 11).await, b"ping\nthree\n");
        assert!(lock(&parked.lane.state).returned.is_none());
    }
    assert_eq!(feed.feed.parked(), MAX_PARKED + 1);
}

#[tokio::test]
async fn a_clients_own_frame_is_refused_once_the_socket_was_handed_back() {
    let feed = Harness::new();
    let (server, mut client) = pair().await;
    let parked = feed.park(&server, 1).unwrap();
    feed.feed.send(Item::Viewers(7));
    handed_back(&parked).await;
    assert!(!parked.write_own(&Bytes::from_static(b"ping\n")));
    let mut byte = [0u8; 1];
    let nothing = tokio::time::timeout(Duration::from_millis(50), client.read(&mut byte));
    assert!(nothing.await.is_err(), "nothing was written");
}

#[tokio::test]
async fn a_keepalive_the_socket_cannot_take_whole_comes_back_pending_and_is_no_event() {
    let big = Bytes::from(vec![b':'; 32 * 1024 * 1024]);
    let feed = Harness::with_keepalive(Some(big.clone()));
    let (server, _client) = pair().await;
    let parked = feed.park(&server, 1).unwrap();
    feed.feed.send(Item::Tick);
    feed.publish(2, b"two\n");
    handed_back(&parked).await;
    let returned = parked.take_back();
    let pending = returned.pending.unwrap();
    assert!(pending.written < big.len());
    assert_eq!(pending.placed_at_ms, None, "not counted as a delivery");
    assert_eq!(returned.last_sent, id(1));
    assert_eq!(returned.taken, 1, "handed back after the tick");
    let mut rx = returned.feed.unwrap();
    assert!(matches!(rx.try_recv(), Ok(Item::Event(e)) if e.id == id(2)));
}

#[tokio::test]
async fn an_event_the_socket_cannot_take_whole_comes_back_pending_and_nothing_after_it_is_lost() {
    let feed = Harness::new();
    let (server, mut client) = pair().await;
    let parked = feed.park(&server, 1).unwrap();
    let big = feed.publish_more_than_a_socket_takes();
    handed_back(&parked).await;
    let returned = parked.take_back();
    let pending = returned.pending.unwrap();
    assert!(pending.written < big.len());
    assert_eq!(returned.last_sent, id(2));
    // The event after it is in the receiver, not written.
    let mut rx = returned.feed.unwrap();
    assert!(matches!(rx.try_recv(), Ok(Item::Event(e)) if e.id == id(3)));
    // The client finishes the frame: the reader gets it whole, once.
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        all
    });
    let never = tokio_util::sync::CancellationToken::new();
    writer::write_rest(
        &*server,
        &[pending.frame],
        pending.written,
        || false,
        Duration::from_secs(5),
        &never,
    )
    .await
    .unwrap();
    drop(server);
    assert_eq!(reader.await.unwrap(), big);
}

#[tokio::test]
async fn a_client_taking_its_socket_back_gets_a_receiver_from_where_the_hub_stopped() {
    let feed = Harness::new();
    let (server, mut client) = pair().await;
    let parked = feed.park(&server, 1).unwrap();
    feed.publish(2, b"two\n");
    let returned = parked.take_back();
    assert_eq!(feed.feed.parked(), 0);
    feed.publish(3, b"three\n");
    assert_eq!(read_exactly(&mut client, 4).await, b"two\n");
    let mut rx = returned.feed.unwrap();
    assert_eq!(returned.taken, 1);
    assert!(matches!(rx.try_recv(), Ok(Item::Event(e)) if e.id == id(3)));
    assert!(rx.is_empty());
}

#[tokio::test]
async fn clients_beyond_the_hubs_share_are_written_by_group_writers() {
    let feed = Harness::new();
    let (_hub_share, _filler) = feed.fill_the_hubs_share(1).await;
    let mut grouped = Vec::new();
    for _ in 0..GROUP_LANES + 2 {
        let (server, client) = pair().await;
        grouped.push((feed.park(&server, 1).unwrap(), client));
    }
    let parked = MAX_PARKED + GROUP_LANES + 2;
    assert_eq!(feed.feed.parked(), parked);
    assert_eq!(
        feed.feed.clients(),
        parked,
        "a group writer's receiver is not a client"
    );
    feed.publish(2, b"two\n");
    feed.publish(3, b"three\n");
    for (_, client) in &mut grouped {
        assert_eq!(read_exactly(client, 10).await, b"two\nthree\n");
    }
    // The clients leave: their groups go, and their writers with them.
    drop(grouped);
    assert_eq!(feed.feed.parked(), MAX_PARKED);
    tokio::time::timeout(Duration::from_secs(5), async {
        while feed.ring_receivers() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the group writers ended");
}

#[tokio::test]
async fn a_client_leaving_a_group_writer_that_is_behind_gets_what_it_missed() {
    let feed = Harness::new();
    let (parked, _kept) = feed.park_in_a_group().await;
    // The group writer has not run yet (nothing has yielded).
    feed.publish(2, b"two\n");
    feed.publish(3, b"three\n");
    let returned = parked.take_back();
    assert_eq!(returned.last_sent, id(1));
    assert_eq!(returned.taken, 2);
    assert_eq!(returned.missed.as_deref().map(ids), Some(vec![2, 3]));
    assert!(returned.feed.unwrap().is_empty());
}

#[tokio::test]
async fn a_socket_taken_back_is_never_written_by_a_writer_that_listed_it_before() {
    let feed = Harness::new();
    // A group writer's round lists its lanes, then writes them one by
    // one: the client takes its socket back in between.
    let (parked, listed, server, mut client, _kept) = feed.park_listed_in_a_group().await;
    feed.publish(2, b"two\n");
    let returned = parked.take_back();
    assert_eq!(returned.missed.as_deref().map(ids), Some(vec![2]));
    let two = write_event_two(&listed);
    for lane in &listed {
        assert!(matches!(lane.write_other(&two), Other::HandedBack));
    }
    // The client's own write is the first thing on the wire: it goes
    // on from `missed` (event 2), which the writer must not send.
    server.try_write(b"mine\n").unwrap();
    assert_eq!(read_exactly(&mut client, 5).await, b"mine\n");
}

#[tokio::test]
async fn a_socket_whose_claim_was_dropped_is_never_written_again() {
    let feed = Harness::new();
    let (parked, listed, server, mut client, _kept) = feed.park_listed_in_a_group().await;
    drop(parked);
    write_event_two(&listed);
    server.try_write(b"mine\n").unwrap();
    assert_eq!(read_exactly(&mut client, 5).await, b"mine\n");
}

#[tokio::test]
async fn anything_but_an_event_hands_group_lanes_back_with_what_they_missed() {
    let feed = Harness::new();
    let (parked, _kept) = feed.park_in_a_group().await;
    feed.publish(2, b"two\n");
    feed.feed.send(Item::Viewers(7));
    handed_back(&parked).await;
    let returned = parked.take_back();
    assert_eq!(returned.missed.as_deref().map(ids), Some(vec![2]));
    let mut rx = returned.feed.unwrap();
    assert!(matches!(rx.try_recv(), Ok(Item::Viewers(7))));
    assert!(rx.is_empty());
}

#[tokio::test]
async fn a_group_writer_hands_back_a_full_socket_with_the_event_pending_and_the_rest_missed() {
    let feed = Harness::new();
    let (parked, _kept) = feed.park_in_a_group().await;
    // The writer takes both events and writes them in one go.
    let big = feed.publish_more_than_a_socket_takes();
    handed_back(&parked).await;
    let returned = parked.take_back();
    let pending = returned.pending.unwrap();
    assert!(pending.written < big.len());
    assert_eq!(returned.last_sent, id(2));
    assert_eq!(returned.missed.as_deref().map(ids), Some(vec![3]));
}

#[tokio::test]
async fn a_group_writer_behind_the_recent_run_hands_back_with_nothing_to_go_on() {
    let feed = Harness::new();
    let (parked, _kept) = feed.park_in_a_group().await;
    // More than the recent run (16) holds, before the writer runs.
    for n in 2..=20 {
        feed.publish(n, b"e\n");
    }
    handed_back(&parked).await;
    let returned = parked.take_back();
    assert!(
        returned.missed.is_none(),
        "the client resumes from its last id"
    );
}

#[tokio::test]
async fn a_dropped_claim_leaves_the_feed_and_a_client_with_unread_items_is_not_parked() {
    let feed = Harness::new();
    let (server, _client) = pair().await;
    let claims: Vec<Parked> = (0..MAX_PARKED + 1)
        .map(|_| feed.park(&server, 1).unwrap())
        .collect();
    drop(claims);
    assert_eq!(feed.feed.parked(), 0);
    let refused = feed
        .feed
        .park(server.clone(), id(1), None, &metrics(), || false);
    assert!(
        refused.is_none(),
        "a client with unread items is not parked"
    );
}

#[tokio::test]
async fn a_failed_socket_is_handed_back_closed() {
    let feed = Harness::new();
    let (server, client) = pair().await;
    let parked = feed.park(&server, 1).unwrap();
    drop(client);
    // The first write after the peer's close may still be accepted
    // (the reset comes back with it); a few more must fail.
    for n in 2..=50 {
        if feed.feed.parked() == 0 {
            break;
        }
        feed.publish(n, b"data\n");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handed_back(&parked).await;
    assert!(parked.take_back().closed);
}

/// A client joining a busy feed is told exactly how many items came
/// before its receiver: one counted but never received would leave it
/// "behind" for ever, and it would never park.
#[test]
fn a_receiver_joining_while_items_are_sent_is_counted_exactly() {
    use broadcast::error::TryRecvError;
    // The feed's short ring: a receiver that lapped says by how much,
    // and dropping one costs no walk over a long backlog.
    let feed = Harness::new().feed;
    let stop = Arc::new(AtomicBool::new(false));
    // Sends until every receiver has joined (at most 50 million).
    let sender = {
        let (feed, stop) = (feed.clone(), stop.clone());
        std::thread::spawn(move || {
            for n in 1..=50_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                feed.send(event(n, Bytes::from_static(b"data\n")));
            }
        })
    };
    while feed.sent() == 0 && !sender.is_finished() {
        std::thread::yield_now();
    }
    let joined: Vec<_> = (0..20_000).map(|_| feed.subscribe().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let items = feed.sent();
    for (mut rx, before) in joined {
        // Events are numbered from 1: the first one the receiver was
        // to get tells how many came before it.
        let first = match rx.try_recv() {
            Ok(Item::Event(event)) => event.id.ms,
            Err(TryRecvError::Lagged(skipped)) => match rx.try_recv() {
                Ok(Item::Event(event)) => event.id.ms - skipped,
                other => panic!("{other:?}"),
            },
            Err(TryRecvError::Empty) => items + 1,
            other => panic!("{other:?}"),
        };
        assert_eq!(before, first - 1);
    }
}

/// A client parking gives up its receiver under the feed's lock, and
/// taking its socket back gets a new one under it: whoever counts the
/// feed's clients meanwhile (the viewer count) counts it once.
#[tokio::test]
async fn a_client_parking_and_taking_its_socket_back_is_counted_once() {
    let feed = Harness::new();
    let (server, _client) = pair().await;
    let mut rx = Some(feed.feed.subscribe().unwrap().0);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let (feed, stop) = (feed.feed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) || seen.is_empty() {
                seen.insert(feed.clients());
            }
            seen
        })
    };
    for _ in 0..20_000 {
        let caught_up = || {
            rx = None;
            true
        };
        let parked = feed
            .feed
            .park(server.clone(), id(1), None, &metrics(), caught_up)
            .unwrap();
        rx = parked.take_back().feed;
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(counter.join().unwrap(), [1].into());
    drop(rx);
}
