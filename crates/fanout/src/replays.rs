//! Replay reads shared by the clients that resume from the same id at once.
//!
//! A reconnect storm (an edge restarted, a load balancer reshuffled) brings
//! many clients of one auction back with the same old id at once. Each
//! would read the same page of the stream and encode the same events; here
//! the first one reads and encodes, and every client that asks for the same
//! page (auction, id) while that read is in flight waits for it and gets the
//! same result: the same encoded frames, or the same error.
//!
//! Only reads in flight are shared: a read is forgotten as soon as it
//! completes (or as soon as no client waits for it any more), so nothing
//! here outlives the starts of the clients that wait for it.

use crate::feed::{Codec, EncodedEvent};
use crate::hub::{Hub, lock};
use auction_domain::{AuctionId, Event, EventId};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Events per replay read.
pub(crate) const REPLAY_BATCH: usize = 256;
/// Most reads shared at once on a replica; past it, a client's read is its
/// own (as many clients as wait are alive anyway: this bounds the map, not
/// the work).
const MAX_FLIGHTS: usize = 4096;

/// Redis did not answer the read (shared by every client that waited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unavailable;

/// One read of an auction's stream from an id on, its events encoded once.
///
/// `events` chain onto the id the page starts after and each onto the one
/// before; they are everything the stream held after that id *when the read
/// ran*, up to the page's size. A page read before a client joined its feed
/// may therefore end before events the feed published before the client
/// joined (see [`Page::started`] and `CatchUp`).
#[derive(Debug)]
pub(crate) struct Page {
    /// The stream held the id the page starts after (it, or the event just
    /// before its oldest one): the events after it are exactly what a
    /// client that saw it missed.
    pub(crate) held: bool,
    pub(crate) events: Vec<EncodedEvent>,
    /// The stream went on past `events` with an event that does not chain
    /// onto the last one (trimmed while the client caught up).
    pub(crate) broken: bool,
    /// The read was cut at the page size: the stream may hold more.
    pub(crate) full: bool,
    /// The read's ticket (see [`Replays::ticket`]): a client whose own
    /// ticket is lower joined its feed before this read started.
    pub(crate) started: u64,
}

impl Page {
    /// The page after `after`, from `rows`: a read from `after` on, `after`
    /// included when the stream holds it.
    pub(crate) fn new<C: Codec>(
        codec: &C,
        auction: &AuctionId,
        after: EventId,
        rows: &[Event],
        started: u64,
    ) -> Page {
        let full = rows.len() >= REPLAY_BATCH;
        let (held, rest) = match rows.split_first() {
            Some((first, rest)) if first.id == after => (true, rest),
            // Not in the stream: held only if it is the event just before
            // the oldest one (trimmed, nothing after it lost).
            Some((first, _)) => (first.prev == after, rows),
            None => (false, rows),
        };
        let unbroken = if held {
            rest.iter()
                .zip(std::iter::once(after).chain(rest.iter().map(|event| event.id)))
                .take_while(|(event, before)| event.prev == *before)
                .count()
        } else {
            0
        };
        Page {
            held,
            events: rest[..unbroken]
                .iter()
                .map(|event| EncodedEvent {
                    id: event.id,
                    placed_at_ms: event.placed_at_ms,
                    frame: codec.event(auction, event),
                })
                .collect(),
            broken: held && unbroken < rest.len(),
            full,
            started,
        }
    }
}

/// A read in flight, as every client waiting for it polls it (any of them
/// drives it: the first client leaving does not stop the others' read).
pub(crate) type Flight = Shared<BoxFuture<'static, Result<Arc<Page>, Unavailable>>>;

type Key = (AuctionId, EventId);

/// The reads in flight of one replica, by (auction, id read after).
///
/// Invariants: an entry exists only while its read is in flight and some
/// client waits for it (the read's own guard removes it when the read
/// completes or is dropped, whichever comes first); at most
/// [`MAX_FLIGHTS`] entries. A `Flight` is never dropped while the map is
/// locked (dropping the last one drops the guard, which locks the map).
#[derive(Default)]
pub(crate) struct Replays {
    flights: Arc<Mutex<HashMap<Key, Entry>>>,
    /// Orders client joins and read starts (see [`Replays::ticket`]).
    tickets: AtomicU64,
}

struct Entry {
    started: u64,
    flight: WeakShared<BoxFuture<'static, Result<Arc<Page>, Unavailable>>>,
}

/// Removes its read's entry once the read is over.
struct Leave {
    flights: Arc<Mutex<HashMap<Key, Entry>>>,
    key: Key,
    started: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut flights = lock(&self.flights);
        // A later read of the same key may have replaced this one.
        if flights
            .get(&self.key)
            .is_some_and(|entry| entry.started == self.started)
        {
            flights.remove(&self.key);
        }
    }
}

impl Replays {
    /// A ticket, taken by a client once it has joined its feed and by each
    /// read before it starts: a read whose ticket is higher than a client's
    /// started after that client joined, so anything the stream gets after
    /// that read reaches the client through its feed.
    pub(crate) fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::AcqRel)
    }

    /// The read of the page after `after`: the one in flight for the same
    /// key if there is one (and, with `newer_than`, only if it started after
    /// that ticket), else a new one made by `read` (given its ticket).
    /// `true` with a read that was already in flight.
    pub(crate) fn page(
        &self,
        auction: &AuctionId,
        after: EventId,
        newer_than: Option<u64>,
        read: impl FnOnce(u64) -> BoxFuture<'static, Result<Page, Unavailable>>,
    ) -> (Flight, bool) {
        let key = (auction.clone(), after);
        {
            let flights = lock(&self.flights);
            if let Some(entry) = flights.get(&key)
                && newer_than.is_none_or(|ticket| entry.started > ticket)
                && let Some(flight) = entry.flight.upgrade()
            {
                return (flight, true);
            }
        }
        let started = self.ticket();
        let leave = Leave {
            flights: self.flights.clone(),
            key: key.clone(),
            started,
        };
        let reading = read(started);
        let flight = async move {
            let _leave = leave;
            reading.await.map(Arc::new)
        }
        .boxed()
        .shared();
        if let Some(weak) = flight.downgrade() {
            let mut flights = lock(&self.flights);
            if flights.len() < MAX_FLIGHTS || flights.contains_key(&key) {
                flights.insert(
                    key,
                    Entry {
                        started,
                        flight: weak,
                    },
                );
            }
        }
        (flight, false)
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

/// Reads and encodes the page after `after` (a read's work, done once for
/// every client waiting for it). Bounded by the connection's response
/// timeout.
pub(crate) fn read_page<C: Codec>(
    hub: Hub<C>,
    auction: AuctionId,
    after: EventId,
    started: u64,
) -> BoxFuture<'static, Result<Page, Unavailable>> {
    async move {
        let rows = hub
            .log()
            .read_from(&auction, after, REPLAY_BATCH)
            .await
            .map_err(|_| Unavailable)?;
        Ok(Page::new(hub.codec(), &auction, after, &rows, started))
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Frame, Item};
    use crate::hub::HubConfig;
    use crate::session::{self, Resume, Start};
    use auction_domain::{BidSource, Bidder, BidderId, BidderName, EventKind};
    use event_log::EventLog;
    use prometheus_client::metrics::counter::Counter;
    use std::time::Duration;
    use test_support::RedisServer;
    use tokio::sync::oneshot;
    use tokio_util::sync::CancellationToken;

    const WAIT: Duration = Duration::from_secs(5);

    /// Frames that are the event's id, so tests can read them back.
    struct Ids;

    impl Codec for Ids {
        fn event(&self, _: &AuctionId, event: &Event) -> Frame {
            Frame::from(event.id.to_string())
        }
        fn init(&self, _: &AuctionId, last: EventId, _: &str) -> Frame {
            Frame::from(format!("init {last}"))
        }
        fn gone(&self, _: &AuctionId) -> Frame {
            Frame::from_static(b"gone")
        }
        fn viewers(&self, _: &AuctionId, count: u32) -> Frame {
            Frame::from(format!("viewers {count}"))
        }
    }

    fn id(seq: u64) -> EventId {
        EventId::new(seq * 10, 0)
    }

    fn event(seq: u64, prev: u64) -> Event {
        Event {
            id: id(seq),
            prev: id(prev),
            kind: EventKind::Bid,
            data: "{}".into(),
            placed_at_ms: 0,
            traceparent: None,
        }
    }

    fn page(after: u64, rows: &[Event]) -> Page {
        let auction = AuctionId::parse("a").unwrap();
        Page::new(&Ids, &auction, id(after), rows, 7)
    }

    fn ids(page: &Page) -> Vec<EventId> {
        page.events.iter().map(|event| event.id).collect()
    }

    #[test]
    fn a_page_tells_whether_the_stream_held_its_id() {
        let held = page(2, &[event(2, 1), event(3, 2), event(4, 3)]);
        assert!(held.held && !held.broken && !held.full);
        assert_eq!(ids(&held), vec![id(3), id(4)]);

        let trimmed_just_before = page(2, &[event(3, 2), event(4, 3)]);
        assert!(trimmed_just_before.held);
        assert_eq!(ids(&trimmed_just_before), vec![id(3), id(4)]);

        let trimmed_beyond = page(1, &[event(3, 2)]);
        assert!(!trimmed_beyond.held && trimmed_beyond.events.is_empty());

        let newest = page(4, &[event(4, 3)]);
        assert!(newest.held && newest.events.is_empty());

        assert!(!page(9, &[]).held, "in the future, or another stream's id");
    }

    #[test]
    fn a_page_stops_at_a_break_in_the_chain() {
        let broken = page(2, &[event(2, 1), event(3, 2), event(5, 4)]);
        assert!(broken.held && broken.broken);
        assert_eq!(ids(&broken), vec![id(3)]);
        let at_once = page(3, &[event(3, 2), event(5, 4)]);
        assert!(at_once.held && at_once.broken && at_once.events.is_empty());
    }

    /// A read that waits for `release` once `read` resolves.
    fn gated(
        read: BoxFuture<'static, Result<Page, Unavailable>>,
        release: oneshot::Receiver<()>,
    ) -> BoxFuture<'static, Result<Page, Unavailable>> {
        async move {
            let page = read.await;
            let _ = release.await;
            page
        }
        .boxed()
    }

    fn ready(result: Result<Page, Unavailable>) -> BoxFuture<'static, Result<Page, Unavailable>> {
        async move { result }.boxed()
    }

    #[tokio::test]
    async fn clients_asking_while_a_read_is_in_flight_share_it_and_it_is_forgotten_once_done() {
        let replays = Replays::default();
        let auction = AuctionId::parse("a").unwrap();
        let (release, gate) = oneshot::channel();
        let (first, shared) = replays.page(&auction, id(1), None, |started| {
            gated(ready(Ok(page_started(started))), gate)
        });
        assert!(!shared);
        let (second, shared) = replays.page(&auction, id(1), None, |_| {
            panic!("a read is in flight for this page")
        });
        assert!(shared);
        let (other, shared) = replays.page(&auction, id(2), None, |_| ready(Err(Unavailable)));
        assert!(!shared, "another id is another read");
        assert_eq!(replays.in_flight(), 2);
        assert_eq!(other.await.map(|_| ()), Err(Unavailable));
        assert_eq!(replays.in_flight(), 1, "forgotten once done");

        let ticket = replays.ticket();
        let (fresh, shared) =
            replays.page(&auction, id(1), Some(ticket), |_| ready(Err(Unavailable)));
        assert!(!shared, "started before the ticket: not shared");
        assert_eq!(fresh.await.map(|_| ()), Err(Unavailable));

        let _ = release.send(());
        let (a, b) = (first.await.unwrap(), second.await.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one result for both");
        assert_eq!(replays.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_read_nobody_waits_for_any_more_is_forgotten() {
        let replays = Replays::default();
        let auction = AuctionId::parse("a").unwrap();
        let (_release, gate) = oneshot::channel::<()>();
        let (flight, _) = replays.page(&auction, id(1), None, |started| {
            gated(ready(Ok(page_started(started))), gate)
        });
        let waiting = tokio::spawn(flight);
        tokio::task::yield_now().await;
        assert_eq!(replays.in_flight(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(replays.in_flight(), 0);
    }

    fn page_started(started: u64) -> Page {
        Page {
            held: true,
            events: Vec::new(),
            broken: false,
            full: false,
            started,
        }
    }

    async fn bid(log: &EventLog, auction: &AuctionId, amount: u64) -> EventId {
        let bidder = Bidder {
            id: BidderId::parse("tester").unwrap(),
            name: BidderName::parse("tester").unwrap(),
        };
        log.place_bid(auction, amount, &bidder, BidSource::User, None, None)
            .await
            .unwrap()
            .unwrap();
        let newest = log
            .read_after(auction, EventId::ZERO, 10_000)
            .await
            .unwrap();
        newest.last().unwrap().id
    }

    /// Another client's read of the page after the resume id runs; then
    /// `in_between` events are published; then a client joins the feed
    /// and resumes from that id while the read is still in flight. Returns
    /// what that client's replay sent, and the stream after the id.
    async fn resume_on_a_read_that_ran_before_the_join(
        capacity: usize,
        in_between: u64,
    ) -> (Vec<String>, Vec<String>) {
        let redis = RedisServer::start();
        let auction = AuctionId::parse("shared").unwrap();
        test_support::auctions::create(&redis.url(), &["shared".into()], 3_600_000).await;
        let target = event_log::parse_redis_url(&redis.url()).unwrap();
        let log = EventLog::new(event_log::connect_manager(&target, || {}).unwrap(), 1000);
        let resume_from = bid(&log, &auction, 100).await;
        for amount in [110, 120] {
            bid(&log, &auction, amount).await;
        }
        let config = HubConfig {
            queue_capacity: capacity,
            keepalive: Duration::from_secs(60),
            idle_feed_ttl: Duration::from_secs(60),
            viewers_interval: Duration::from_secs(60),
            replica: "test".into(),
        };
        let shutdown = CancellationToken::new();
        let hub = Hub::connect(&target, Ids, config, Counter::default(), shutdown.clone()).unwrap();
        // A client already watching: the feed is live.
        let watcher = hub.join(&auction, WAIT).await.unwrap();

        let (ran, read_done) = oneshot::channel();
        let (release, gate) = oneshot::channel();
        let (flight, _) = hub.replays().page(&auction, resume_from, None, |started| {
            let read = read_page(hub.clone(), auction.clone(), resume_from, started);
            let read = async move {
                let page = read.await;
                let _ = ran.send(());
                page
            }
            .boxed();
            gated(read, gate)
        });
        let earlier = tokio::spawn(flight);
        read_done.await.unwrap();

        let mut last = EventId::ZERO;
        for step in 0..in_between {
            last = bid(&log, &auction, 130 + 10 * step).await;
        }
        test_support::wait_for("the feed to publish", WAIT, || {
            watcher.recent_after(last).map(|_| ())
        });

        let shared = Counter::default();
        let opening = tokio::spawn({
            let (hub, auction, shared) = (hub.clone(), auction.clone(), shared.clone());
            async move {
                let opening =
                    session::open(&hub, &auction, Resume::From(resume_from), WAIT, &shared).await;
                let Ok(opening) = opening else {
                    panic!("the client could not open");
                };
                let Start::Replay(mut catch_up) = opening.start else {
                    panic!("the id is held: a replay");
                };
                let mut frames = Vec::new();
                while catch_up
                    .next_batch(&hub, &mut frames, &shared)
                    .await
                    .unwrap()
                {}
                let mut feed = opening.feed;
                while let Ok(item) = feed.try_recv() {
                    if let Item::Event(event) = item {
                        assert!(event.id <= catch_up.last(), "published after the join");
                    }
                }
                frames
            }
        });
        test_support::wait_for("the client to wait for the read", WAIT, || {
            (shared.get() == 1).then_some(())
        });
        let _ = release.send(());
        let replayed = opening.await.unwrap();
        let earlier = earlier.await.unwrap().unwrap();
        assert_eq!(earlier.events.len(), 2, "the read ran before the events");
        shutdown.cancel();

        let stream = log.read_after(&auction, resume_from, 10_000).await.unwrap();
        (
            replayed
                .iter()
                .map(|frame| String::from_utf8_lossy(frame).into_owned())
                .collect(),
            stream.iter().map(|event| event.id.to_string()).collect(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_read_from_before_the_join_is_finished_from_the_feeds_recent_events() {
        let (replayed, stream) = resume_on_a_read_that_ran_before_the_join(64, 1).await;
        assert_eq!(stream.len(), 3);
        assert_eq!(replayed, stream);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_read_from_before_the_join_is_finished_by_a_read_after_it() {
        // More events in between than the feed keeps: memory cannot tell.
        let (replayed, stream) = resume_on_a_read_that_ran_before_the_join(2, 3).await;
        assert_eq!(stream.len(), 5);
        assert_eq!(replayed, stream);
    }
}
