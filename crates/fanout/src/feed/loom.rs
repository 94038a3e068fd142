//! Model checks of a feed's locks: every interleaving (up to loom's
//! preemption bound) of sending, attaching, parking, taking back and
//! handing back, on the feed's real code with loom's locks and atomics.
//! Built and run only with `--cfg fanout_loom` (`scripts/test` does, in release):
//! `RUSTFLAGS="--cfg fanout_loom" cargo test -p fanout --lib --release loom`.
//!
//! What each model checks is one of the module's invariants; each failed
//! before the fix it covers (the commit named in its comment), with the
//! fix undone.

use super::*;
use crate::codec::EncodedEvent;
use ::loom::thread;
use bytes::Bytes;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};

/// A socket that takes every byte it is given, recorded in order.
#[derive(Default)]
struct Wire(Mutex<Vec<u8>>);

impl Wire {
    /// A write of the client's own task (after it took its socket back).
    fn write(&self, bytes: &[u8]) {
        lock(&self.0).extend_from_slice(bytes);
    }

    fn bytes(&self) -> Vec<u8> {
        lock(&self.0).clone()
    }
}

impl FrameSocket for Wire {
    fn try_write_slices(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut wire = lock(&self.0);
        for slice in slices {
            wire.extend_from_slice(slice);
        }
        Ok(slices.iter().map(|slice| slice.len()).sum())
    }

    fn poll_writable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn id(n: u64) -> EventId {
    EventId::new(n, 0)
}

fn event(n: u64) -> Arc<EncodedEvent> {
    Arc::new(EncodedEvent {
        id: id(n),
        placed_at_ms: 0,
        frame: Bytes::from(format!("e{n}\n")),
        alt: None,
    })
}

fn metrics() -> TransportMetrics {
    telemetry::Metrics::new().transport(telemetry::Transport::sse)
}

/// A feed following its stream from event 1, as the hub keeps one.
fn feed() -> Arc<Feed> {
    let feed = Feed::new(8, None);
    feed.recent().follow_from(id(1));
    feed
}

/// Publishes event `n` as the hub does: recorded, then sent.
fn publish(feed: &Feed, n: u64) {
    let encoded = event(n);
    feed.recent().push(id(n - 1), encoded.clone());
    feed.send(Item::Event(encoded));
}

/// What a client's task does with its socket once it has it back (as
/// `Delivery::unpark` does): the rest of a pending frame, then the events
/// it missed after the last one it was sent, then a frame of its own.
/// Returns the receiver it reads from then on.
fn finish_as_the_client(wire: &Wire, returned: Returned) -> broadcast::Receiver<Item> {
    if let Some(pending) = &returned.pending {
        wire.write(&pending.frame[pending.written..]);
    }
    let missed = returned.missed.unwrap_or_default();
    for event in missed.iter().filter(|e| e.id > returned.last_sent) {
        wire.write(&event.frame);
    }
    wire.write(b"mine\n");
    returned.feed.unwrap()
}

/// Invariant 1 (fixed in 910e2a3): a receiver attached while items are
/// sent, and the count read with it, agree on every item; read apart, a
/// client joining between a send and its count stayed one behind and
/// never parked.
#[test]
fn loom_a_receiver_and_its_count_agree_while_items_are_sent() {
    ::loom::model(|| {
        let feed = feed();
        let sender = {
            let feed = feed.clone();
            thread::spawn(move || {
                publish(&feed, 2);
                publish(&feed, 3);
            })
        };
        let (rx, taken) = feed.subscribe().unwrap();
        sender.join().unwrap();
        assert_eq!(rx.len() as u64, feed.sent() - taken);
    });
}

/// Invariant 2 (fixed in 910e2a3): a client parking gives up its receiver
/// in the same hold of the feed's lock, and taking its socket back gets a
/// new one in one: whoever counts the feed's clients meanwhile (the viewer
/// count) counts it once.
#[test]
fn loom_a_client_parking_and_taking_its_socket_back_is_counted_once() {
    ::loom::model(|| {
        let feed = feed();
        let (rx, _) = feed.subscribe().unwrap();
        let mut rx = Some(rx);
        let counter = {
            let feed = feed.clone();
            thread::spawn(move || [feed.clients(), feed.clients()])
        };
        let caught_up = || {
            rx = None;
            true
        };
        let parked = feed
            .park(
                Arc::new(Wire::default()),
                id(1),
                None,
                &metrics(),
                caught_up,
            )
            .unwrap();
        let returned = parked.take_back();
        assert_eq!(counter.join().unwrap(), [1, 1]);
        drop(returned);
    });
}

/// Invariants 3 and 4 for a lane the hub writes: an event sent while its
/// client takes the socket back reaches the socket exactly once, before
/// anything the client writes itself.
#[test]
fn loom_an_event_sent_while_the_client_takes_its_socket_back_is_written_once() {
    ::loom::model(|| {
        let feed = feed();
        let wire = Arc::new(Wire::default());
        let parked = feed
            .park(wire.clone(), id(1), None, &metrics(), || true)
            .unwrap();
        let sender = {
            let feed = feed.clone();
            thread::spawn(move || publish(&feed, 2))
        };
        let mut rx = finish_as_the_client(&wire, parked.take_back());
        sender.join().unwrap();
        let bytes = wire.bytes();
        // Written before the socket was taken back, or else in the
        // receiver: never both, never neither.
        let in_receiver = matches!(rx.try_recv(), Ok(Item::Event(e)) if e.id == id(2));
        assert!(rx.is_empty());
        match (bytes.as_slice(), in_receiver) {
            (b"e2\nmine\n", false) | (b"mine\n", true) => {}
            (bytes, _) => panic!(
                "{:?}, in the receiver: {in_receiver}",
                String::from_utf8_lossy(bytes)
            ),
        }
    });
}

/// Invariant 3 for anything but an event: a viewer count sent while the
/// client takes its socket back reaches the client exactly once, through
/// the receiver it gets back, whoever of the two went first.
#[test]
fn loom_a_viewer_count_sent_while_the_client_takes_its_socket_back_reaches_it_once() {
    ::loom::model(|| {
        let feed = feed();
        let parked = feed
            .park(Arc::new(Wire::default()), id(1), None, &metrics(), || true)
            .unwrap();
        let sender = {
            let feed = feed.clone();
            thread::spawn(move || feed.send(Item::Viewers(7)))
        };
        let returned = parked.take_back();
        sender.join().unwrap();
        let mut rx = returned.feed.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Item::Viewers(7))));
        assert!(rx.is_empty());
    });
}

/// Invariant 4 (fixed in 1c68bfe): a group writer lists its lanes at the
/// start of a round and writes them after; a client that takes its socket
/// back in between goes on from what `Returned` says, so the writer must
/// not write it: the event went out twice, and two tasks wrote one socket.
#[test]
fn loom_a_group_writer_never_writes_a_socket_taken_back_after_it_listed_it() {
    ::loom::model(|| {
        let feed = feed();
        // The hub's share is full: the next client goes to a group writer.
        let filler: Vec<Parked> = (0..MAX_PARKED)
            .map(|_| {
                feed.park(Arc::new(Wire::default()), id(1), None, &metrics(), || true)
                    .unwrap()
            })
            .collect();
        let wire = Arc::new(Wire::default());
        let parked = feed
            .park(wire.clone(), id(1), None, &metrics(), || true)
            .unwrap();
        let (group, mut rx, _done) = lock(&feed.state).unstarted.pop().unwrap();
        publish(&feed, 2);
        let writer = {
            let feed = feed.clone();
            thread::spawn(move || {
                let mut round = group::Round::default();
                let taken = feed.take_into_round(Ok(rx.try_recv().unwrap()), &mut round);
                assert!(matches!(taken, group::Taken::More));
                feed.write_round(group, &mut round);
                rx
            })
        };
        drop(finish_as_the_client(&wire, parked.take_back()));
        let rx = writer.join().unwrap();
        feed.writer_ended(rx);
        assert_eq!(wire.bytes(), b"e2\nmine\n");
        drop(filler);
    });
}
