//! Direct delivery: a caught-up client of a small feed hands its socket to
//! the hub, which then writes the feed's events to it from the task that
//! received the notice; the client's own task sleeps until the hub hands
//! the socket back or the client needs it.
//!
//! Why: where each event goes out alone (a few clients per auction, or
//! clients that keep up with a slow feed), the write is a few microseconds
//! and waking each client's task for it (a thread switch, a poll of its
//! wait points, a broadcast receive) costs nearly as much again. A parked
//! client costs the write and nothing else.
//!
//! The hub hands a socket back, with a receiver on the feed placed so that
//! the client misses nothing, when:
//! - an event does not fit in the socket: the client finishes writing it
//!   (under the stall limit, as any write) and goes on from the receiver;
//! - the socket fails: the client ends;
//! - the feed carries anything but an event (a keepalive tick, a viewer
//!   count, a reset, a gone auction): lanes are handed back first, and the
//!   item reaches the client through its new receiver.

use crate::client;
use crate::feed::{EncodedEvent, Frame, Item};
use crate::hub::lock;
use crate::writer::{self, Tried};
use auction_domain::EventId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use telemetry::TransportMetrics;
use tokio::net::TcpStream;
use tokio::sync::broadcast;

/// Most clients of one feed the hub writes to itself. Each costs the hub a
/// write per event (about 5 µs), done in line with every other feed's
/// notices: bounded so that a big feed is still written by its clients'
/// tasks on every worker, and a notice never waits long behind another.
pub(crate) const MAX_PARKED: usize = 16;

/// The send side of one feed: its broadcast ring and the clients parked on
/// it.
///
/// Invariant: every item is sent to the feed under `lanes`' lock, and a
/// client parks under it only while its receiver holds nothing unread. So
/// a parked client misses nothing: each event sent while it is parked is
/// written to its socket, or its lane is handed back with that event
/// pending; and before any other item is sent, every lane is handed back
/// with a receiver that gets that item.
pub(crate) struct Parking {
    /// The feed's ring, to give a returning client a receiver. Weak: the
    /// ring closes when the hub drops the feed, whoever is parked.
    tx: broadcast::WeakSender<Item>,
    /// Items sent to the feed, ever (see `FeedPosition`).
    sent: Arc<AtomicU64>,
    lanes: Mutex<Vec<Arc<Lane>>>,
}

/// One parked client: its socket and how far it has been sent.
struct Lane {
    socket: Arc<TcpStream>,
    delivered: Counter,
    latency: Histogram,
    /// `auction_direct_clients`: one while this lane is claimed.
    parked: Gauge,
    /// Touched by the hub while the lane is parked, by the client once it
    /// is handed back; the lock only makes the hand-over visible.
    state: Mutex<LaneState>,
}

struct LaneState {
    /// The newest event id the client was sent (events at or below it are
    /// skipped: the client's replay had them).
    last_sent: EventId,
    /// Set by the hub when it hands the socket back (boxed: a parked lane
    /// stays small, and this is set once).
    returned: Option<Box<Returned>>,
    /// The client's task, woken when the socket is handed back.
    waker: Option<Waker>,
}

/// What a client gets back with its socket.
pub(crate) struct Returned {
    /// A receiver on the feed that gets every item after the ones the hub
    /// dealt with; `None`: the feed ended (the hub dropped it).
    pub(crate) feed: Option<broadcast::Receiver<Item>>,
    /// The feed's count of items sent when `feed` was attached (the
    /// client's new `FeedPosition`).
    pub(crate) taken: u64,
    /// The newest event id the client was sent, or is being sent.
    pub(crate) last_sent: EventId,
    /// An event the socket took only part of: the client writes the rest.
    pub(crate) pending: Option<Pending>,
    /// The socket failed: the client ends.
    pub(crate) closed: bool,
}

/// The rest of an event's frame, for the client to write.
pub(crate) struct Pending {
    pub(crate) frame: Frame,
    /// Bytes of `frame` the socket took already.
    pub(crate) written: usize,
    /// The event's `placed_at`, for the latency once it is written.
    pub(crate) placed_at_ms: u64,
}

/// What writing one event to a lane came to.
enum Wrote {
    /// Written whole (or not needed): the lane stays parked.
    Stay,
    /// Handed back with this event pending, or the socket failed.
    HandBack {
        pending: Option<Pending>,
        closed: bool,
    },
}

impl std::fmt::Debug for Parking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parking")
            .field("parked", &self.parked())
            .finish()
    }
}

impl Parking {
    pub(crate) fn new(tx: &broadcast::Sender<Item>, sent: Arc<AtomicU64>) -> Parking {
        Parking {
            tx: tx.downgrade(),
            sent,
            lanes: Mutex::new(Vec::new()),
        }
    }

    /// How many clients are parked (they hold no receiver: count them
    /// with the receivers).
    pub(crate) fn parked(&self) -> usize {
        lock(&self.lanes).len()
    }

    /// Clients of the feed: those reading its ring (`tx`'s receivers) and
    /// those parked, which hold no receiver.
    pub(crate) fn clients(&self, tx: &broadcast::Sender<Item>) -> usize {
        tx.receiver_count() + self.parked()
    }

    /// Items sent to the feed, ever (see `FeedPosition`).
    pub(crate) fn sent(&self) -> &Arc<AtomicU64> {
        &self.sent
    }

    /// Sends one item to every client of the feed: into the ring for the
    /// clients reading it, and straight to the parked clients' sockets.
    pub(crate) fn send(&self, tx: &broadcast::Sender<Item>, item: Item) {
        let mut lanes = lock(&self.lanes);
        let Item::Event(event) = &item else {
            // Handed back first, with receivers that get this item.
            let taken = self.sent.load(Ordering::Relaxed);
            for lane in lanes.drain(..) {
                lane.hand_back(Some(tx.subscribe()), taken, None, false);
            }
            // No receivers is fine: the feed may be idle, waiting to be swept.
            let _ = tx.send(item);
            self.sent.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let event = event.clone();
        let _ = tx.send(item);
        let taken = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        if lanes.is_empty() {
            return;
        }
        let now = auction_domain::clock::now_ms();
        lanes.retain(|lane| match lane.write(&event, now) {
            Wrote::Stay => true,
            Wrote::HandBack { pending, closed } => {
                // Attached after this event was sent: the pending write
                // has it, the receiver starts after it.
                lane.hand_back(Some(tx.subscribe()), taken, pending, closed);
                false
            }
        });
    }

    /// Parks a client whose receiver holds nothing unread, as
    /// `caught_up()` (asked under the feed's lock) tells. `None`: not
    /// parked (not caught up, or the feed has all the lanes it may).
    pub(crate) fn park(
        self: &Arc<Self>,
        socket: &Arc<TcpStream>,
        last_sent: EventId,
        metrics: &TransportMetrics,
        caught_up: impl FnOnce() -> bool,
    ) -> Option<Parked> {
        let mut lanes = lock(&self.lanes);
        if lanes.len() >= MAX_PARKED || !caught_up() {
            return None;
        }
        let lane = Arc::new(Lane {
            socket: socket.clone(),
            delivered: metrics.events_delivered.clone(),
            latency: metrics.delivery_latency.clone(),
            parked: metrics.direct_clients.clone(),
            state: Mutex::new(LaneState {
                last_sent,
                returned: None,
                waker: None,
            }),
        });
        lanes.push(lane.clone());
        lane.parked.inc();
        Some(Parked {
            parking: self.clone(),
            lane,
        })
    }
}

impl Lane {
    /// Writes one event to the socket, without waiting.
    fn write(&self, event: &EncodedEvent, now_ms: u64) -> Wrote {
        let mut state = lock(&self.state);
        if event.id <= state.last_sent {
            return Wrote::Stay;
        }
        state.last_sent = event.id;
        match writer::try_write_all(&self.socket, std::slice::from_ref(&event.frame)) {
            Ok(Tried::All) => {
                let placed_at = [event.placed_at_ms];
                client::count_delivered(&self.delivered, &self.latency, now_ms, &placed_at);
                Wrote::Stay
            }
            Ok(Tried::Part(written)) => Wrote::HandBack {
                pending: Some(Pending {
                    frame: event.frame.clone(),
                    written,
                    placed_at_ms: event.placed_at_ms,
                }),
                closed: false,
            },
            Err(_) => Wrote::HandBack {
                pending: None,
                closed: true,
            },
        }
    }

    /// Gives the socket back to its client and wakes it. Called under the
    /// feed's lock, with the lane already out of (or leaving) the list.
    fn hand_back(
        &self,
        feed: Option<broadcast::Receiver<Item>>,
        taken: u64,
        pending: Option<Pending>,
        closed: bool,
    ) {
        let waker = {
            let mut state = lock(&self.state);
            state.returned = Some(Box::new(Returned {
                feed,
                taken,
                last_sent: state.last_sent,
                pending,
                closed,
            }));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A client's claim on its parked socket. Dropping it takes the socket
/// back (the hub writes to it no more).
pub struct Parked {
    parking: Arc<Parking>,
    lane: Arc<Lane>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parked")
    }
}

impl Parked {
    /// Resolves once the hub has handed the socket back. Cancel-safe.
    pub fn handed_back(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = lock(&self.lane.state);
            if state.returned.is_some() {
                return Poll::Ready(());
            }
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Takes this lane out of the feed's parked lanes (the caller holds
    /// their lock); `false`: the hub had handed it back already.
    fn leave(&self, lanes: &mut Vec<Arc<Lane>>) -> bool {
        match lanes.iter().position(|l| Arc::ptr_eq(l, &self.lane)) {
            Some(index) => {
                lanes.swap_remove(index);
                true
            }
            None => false,
        }
    }

    /// Takes the socket back: as the hub handed it back, or from the hub
    /// now (after the write it may be doing).
    pub(crate) fn take_back(self) -> Returned {
        {
            let mut lanes = lock(&self.parking.lanes);
            if self.leave(&mut lanes) {
                // Under the feed's lock: no item is sent between this
                // receiver's attaching and the count read.
                let feed = self.parking.tx.upgrade().map(|tx| tx.subscribe());
                let taken = self.parking.sent.load(Ordering::Relaxed);
                let last_sent = lock(&self.lane.state).last_sent;
                return Returned {
                    feed,
                    taken,
                    last_sent,
                    pending: None,
                    closed: false,
                };
            }
        }
        // Out of the list: the hub handed it back (under the same lock, so
        // `returned` is set).
        let mut state = lock(&self.lane.state);
        match state.returned.take() {
            Some(returned) => *returned,
            None => Returned {
                feed: None,
                taken: 0,
                last_sent: state.last_sent,
                pending: None,
                closed: true,
            },
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.leave(&mut lock(&self.parking.lanes));
        self.lane.parked.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (server side, client side).
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    fn event(n: u64, frame: Bytes) -> Item {
        Item::Event(Arc::new(EncodedEvent {
            id: EventId::new(n, 0),
            placed_at_ms: 0,
            frame,
        }))
    }

    fn feed() -> (broadcast::Sender<Item>, Arc<Parking>) {
        let (tx, _) = broadcast::channel(16);
        let parking = Arc::new(Parking::new(&tx, Arc::new(AtomicU64::new(0))));
        (tx, parking)
    }

    fn metrics() -> TransportMetrics {
        telemetry::Metrics::new().transport(telemetry::Transport::sse)
    }

    fn park(parking: &Arc<Parking>, socket: &Arc<TcpStream>, last: u64) -> Option<Parked> {
        parking.park(socket, EventId::new(last, 0), &metrics(), || true)
    }

    /// Waits (at most 5 s) for the hub to hand the socket back.
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
        let (tx, parking) = feed();
        let (server, mut client) = pair().await;
        let parked = park(&parking, &server, 1).unwrap();
        parking.send(&tx, event(1, Bytes::from_static(b"one\n")));
        parking.send(&tx, event(2, Bytes::from_static(b"two\n")));
        parking.send(&tx, event(3, Bytes::from_static(b"three\n")));
        assert_eq!(read_exactly(&mut client, 10).await, b"two\nthree\n");
        assert_eq!(parking.parked(), 1);
        let returned = parked.take_back();
        assert_eq!(returned.last_sent, EventId::new(3, 0));
        assert_eq!(returned.taken, 3);
        assert!(returned.pending.is_none() && !returned.closed);
    }

    #[tokio::test]
    async fn anything_but_an_event_hands_the_socket_back_with_a_receiver_that_gets_it() {
        let (tx, parking) = feed();
        let (server, _client) = pair().await;
        let parked = park(&parking, &server, 0).unwrap();
        parking.send(&tx, Item::Tick);
        handed_back(&parked).await;
        assert_eq!(parking.parked(), 0);
        let returned = parked.take_back();
        assert_eq!(returned.taken, 0, "the tick is still to be taken");
        let mut feed = returned.feed.unwrap();
        assert!(matches!(feed.try_recv(), Ok(Item::Tick)));
        assert!(feed.is_empty());
    }

    #[tokio::test]
    async fn an_event_the_socket_cannot_take_whole_comes_back_pending_and_nothing_after_it_is_lost()
    {
        let (tx, parking) = feed();
        let (server, mut client) = pair().await;
        let parked = park(&parking, &server, 0).unwrap();
        // Far more than a loopback socket buffers while nobody reads.
        let big = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
        parking.send(&tx, event(1, big.clone()));
        parking.send(&tx, event(2, Bytes::from_static(b"after\n")));
        handed_back(&parked).await;
        let returned = parked.take_back();
        let pending = returned.pending.unwrap();
        assert!(pending.written < big.len());
        assert_eq!(returned.last_sent, EventId::new(1, 0));
        // The event after it is in the receiver, not written.
        let mut feed = returned.feed.unwrap();
        assert!(matches!(feed.try_recv(), Ok(Item::Event(e)) if e.id == EventId::new(2, 0)));
        // The client finishes the frame: the reader gets it whole, once.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let never = tokio_util::sync::CancellationToken::new();
        writer::write_rest(
            &server,
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
        let (tx, parking) = feed();
        let (server, mut client) = pair().await;
        let parked = park(&parking, &server, 0).unwrap();
        parking.send(&tx, event(1, Bytes::from_static(b"one\n")));
        let returned = parked.take_back();
        assert_eq!(parking.parked(), 0);
        parking.send(&tx, event(2, Bytes::from_static(b"two\n")));
        assert_eq!(read_exactly(&mut client, 4).await, b"one\n");
        let mut feed = returned.feed.unwrap();
        assert_eq!(returned.taken, 1);
        assert!(matches!(feed.try_recv(), Ok(Item::Event(e)) if e.id == EventId::new(2, 0)));
        assert!(feed.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_claim_leaves_the_feed_and_a_full_feed_parks_no_more() {
        let (_tx, parking) = feed();
        let (server, _client) = pair().await;
        let claims: Vec<Parked> = (0..MAX_PARKED)
            .map(|_| park(&parking, &server, 0).unwrap())
            .collect();
        assert!(park(&parking, &server, 0).is_none());
        drop(claims);
        assert_eq!(parking.parked(), 0);
        let refused = parking.park(&server, EventId::ZERO, &metrics(), || false);
        assert!(
            refused.is_none(),
            "a client with unread items is not parked"
        );
    }

    #[tokio::test]
    async fn a_failed_socket_is_handed_back_closed() {
        let (tx, parking) = feed();
        let (server, client) = pair().await;
        let parked = park(&parking, &server, 0).unwrap();
        drop(client);
        // The first write after the peer's close may still be accepted
        // (the reset comes back with it); a few more must fail.
        for n in 1..=50 {
            if parking.parked() == 0 {
                break;
            }
            parking.send(&tx, event(n, Bytes::from_static(b"data\n")));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handed_back(&parked).await;
        assert!(parked.take_back().closed);
    }
}
