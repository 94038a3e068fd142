//! Replay reads shared by the clients that resume from the same id at once.
//!
//! A reconnect storm (an edge restarted, a load balancer reshuffled) brings
//! many clients of one auction back with the same old id at once. Each
//! would read the same pages of the stream and encode the same events; here
//! the first one reads and encodes each page, and every client that asks
//! for the same page (auction, id) gets the same result: the same encoded
//! frames, or the same error.
//!
//! A page is shared while its read is in flight, and kept for a while
//! (`HubConfig::replay_keep`) once it completed: a storm's connects arrive over some hundreds of
//! milliseconds, and a page shared only in flight would be read again by
//! every wave. Keeping a page is safe for the same reason sharing it in
//! flight is: a page is what the stream held when its read ran, tagged
//! with the read's ticket (`Page::started`), and a client ends its replay
//! on a page only if that read started after the client joined its feed
//! (see `CatchUp`); an older page is followed by the feed's recent events
//! or a newer read. The events of a page never change in an append-only
//! stream, so a kept page is what a read would have said a moment ago; a
//! trim shows at the next read, and a stream replaced (Redis came back
//! without its data) through the feed, which also forgets the auction's
//! kept pages.

use crate::codec::{Codec, EncodedEvent};
use crate::sync::{AtomicU64, Mutex, Ordering, lock};
use auction_domain::{AuctionId, Event, EventId};
use event_log::EventStore;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per replay read.
pub(crate) const REPLAY_BATCH: usize = 256;
/// Most reads shared or kept at once on a replica; past it, a client's read
/// is its own (as many clients as wait are alive anyway: this bounds the
/// map, not the work).
const MAX_PAGES: usize = 4096;
/// Most events in kept pages at once (about 200 bytes of frame each: some
/// MiB). The oldest kept page goes first past it.
const MAX_KEPT_EVENTS: usize = 64 * REPLAY_BATCH;

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
                    // A replay is written plain to every client (a
                    // compressed socket may get plain messages too).
                    alt: None,
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

/// Where a client's page comes from.
pub(crate) enum Lookup {
    /// A new read, or one already in flight (`shared`).
    Flight { flight: Flight, shared: bool },
    /// A page read a moment ago for another client.
    Kept(Arc<Page>),
}

type Key = (AuctionId, EventId);

/// The pages of one replica being read or just read, by (auction, id read
/// after).
///
/// Invariants: an in-flight entry exists only while its read is in flight
/// and some client waits for it (the read's own guard removes it when the
/// read is dropped, or turns it into a kept page when it completes with a
/// page whose id the stream held); every kept entry is listed in `order`
/// (oldest first) with its read's ticket, `kept_events` is the sum of the
/// kept pages' events, and each list is at most [`MAX_PAGES`] long; past
/// [`MAX_KEPT_EVENTS`] kept events the oldest kept page goes. A `Flight` is
/// never dropped while the map is locked (dropping the last one drops the
/// guard, which locks the map).
pub(crate) struct Replays {
    pages: Arc<Mutex<Pages>>,
    /// How long a completed page is kept (zero: pages are shared only in
    /// flight).
    keep: Duration,
    /// Orders client joins and read starts (see [`Replays::ticket`]).
    tickets: AtomicU64,
}

#[derive(Default)]
struct Pages {
    entries: HashMap<Key, Entry>,
    /// Kept pages, oldest first: (key, the read's ticket, kept until). An
    /// item whose entry was since replaced by a newer read is skipped when
    /// it comes first.
    order: VecDeque<(Key, u64, Instant)>,
    kept_events: usize,
}

struct Entry {
    started: u64,
    state: State,
}

enum State {
    InFlight(WeakShared<BoxFuture<'static, Result<Arc<Page>, Unavailable>>>),
    Kept(Arc<Page>),
}

impl Pages {
    /// Forgets kept pages past their time, and the oldest ones past the
    /// bound on kept events.
    fn expire(&mut self, now: Instant) {
        while let Some((key, started, until)) = self.order.front() {
            if *until > now && self.kept_events <= MAX_KEPT_EVENTS && self.order.len() <= MAX_PAGES
            {
                break;
            }
            let (key, started) = (key.clone(), *started);
            self.order.pop_front();
            self.remove_kept(&key, started);
        }
    }

    fn remove_kept(&mut self, key: &Key, started: u64) {
        if let Some(entry) = self.entries.get(key)
            && entry.started == started
            && let State::Kept(page) = &entry.state
        {
            self.kept_events -= page.events.len();
            self.entries.remove(key);
        }
    }
}

/// Turns its read's entry into a kept page, or removes it, once the read
/// is over.
struct Leave {
    pages: Arc<Mutex<Pages>>,
    key: Key,
    started: u64,
    keep: Duration,
    /// The entry became a kept page: nothing to remove.
    kept: bool,
}

impl Leave {
    /// The read completed with `page`: keep it for the clients after (a
    /// page whose id the stream did not hold is not kept: it starts no
    /// replay).
    fn keep(&mut self, page: &Arc<Page>) {
        if !page.held || self.keep.is_zero() {
            return;
        }
        let mut pages = lock(&self.pages);
        if let Some(entry) = pages.entries.get_mut(&self.key)
            && entry.started == self.started
        {
            entry.state = State::Kept(page.clone());
            pages.kept_events += page.events.len();
            let now = Instant::now();
            pages
                .order
                .push_back((self.key.clone(), self.started, now + self.keep));
            pages.expire(now);
            self.kept = true;
        }
    }
}

impl Drop for Leave {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut pages = lock(&self.pages);
        // A later read of the same key may have replaced this one.
        if pages
            .entries
            .get(&self.key)
            .is_some_and(|entry| entry.started == self.started)
        {
            pages.entries.remove(&self.key);
        }
    }
}

impl Replays {
    /// Reads shared in flight, and pages kept for `keep` once read.
    pub(crate) fn new(keep: Duration) -> Replays {
        Replays {
            pages: Arc::default(),
            keep,
            tickets: AtomicU64::new(0),
        }
    }

    /// A ticket, taken by a client once it has joined its feed and by each
    /// read before it starts: a read whose ticket is higher than a client's
    /// started after that client joined, so anything the stream gets after
    /// that read reaches the client through its feed.
    pub(crate) fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::AcqRel)
    }

    /// The page after `after`: a kept one or the read in flight for the
    /// same key if there is one (and, with `newer_than`, only if its read
    /// started after that ticket), else a new read made by `read` (given
    /// its ticket).
    pub(crate) fn page(
        &self,
        auction: &AuctionId,
        after: EventId,
        newer_than: Option<u64>,
        read: impl FnOnce(u64) -> BoxFuture<'static, Result<Page, Unavailable>>,
    ) -> Lookup {
        let key = (auction.clone(), after);
        // One lock from the lookup to the new read's entry: two clients
        // missing the page at once would otherwise both read it.
        let mut pages = lock(&self.pages);
        pages.expire(Instant::now());
        if let Some(entry) = pages.entries.get(&key)
            && newer_than.is_none_or(|ticket| entry.started > ticket)
        {
            match &entry.state {
                State::Kept(page) => return Lookup::Kept(page.clone()),
                State::InFlight(weak) => {
                    if let Some(flight) = weak.upgrade() {
                        return Lookup::Flight {
                            flight,
                            shared: true,
                        };
                    }
                }
            }
        }
        let started = self.ticket();
        let leave = Leave {
            pages: self.pages.clone(),
            key: key.clone(),
            started,
            keep: self.keep,
            kept: false,
        };
        let reading = read(started);
        let flight = async move {
            let mut leave = leave;
            let result = reading.await.map(Arc::new);
            if let Ok(page) = &result {
                leave.keep(page);
            }
            result
        }
        .boxed()
        .shared();
        if let Some(weak) = flight.downgrade()
            && (pages.entries.len() < MAX_PAGES || pages.entries.contains_key(&key))
        {
            let replaced = pages.entries.insert(
                key,
                Entry {
                    started,
                    state: State::InFlight(weak),
                },
            );
            // A kept page this read replaces leaves the count.
            if let Some(Entry {
                state: State::Kept(page),
                ..
            }) = replaced
            {
                pages.kept_events -= page.events.len();
            }
        }
        // Released before the flight can be dropped (see the invariants).
        drop(pages);
        Lookup::Flight {
            flight,
            shared: false,
        }
    }

    /// Forgets `auction`'s kept pages (its stream was replaced or is gone).
    pub(crate) fn forget(&self, auction: &AuctionId) {
        let mut pages = lock(&self.pages);
        let kept: Vec<(Key, u64)> = pages
            .order
            .iter()
            .filter(|(key, _, _)| key.0 == *auction)
            .map(|(key, started, _)| (key.clone(), *started))
            .collect();
        for (key, started) in kept {
            pages.remove_kept(&key, started);
        }
        pages.order.retain(|(key, _, _)| key.0 != *auction);
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.pages)
            .entries
            .values()
            .filter(|entry| matches!(entry.state, State::InFlight(_)))
            .count()
    }

    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        lock(&self.pages)
            .entries
            .values()
            .filter(|entry| matches!(entry.state, State::Kept(_)))
            .count()
    }
}

/// Reads and encodes the page after `after` (a read's work, done once for
/// every client waiting for it). Bounded by the connection's response
/// timeout.
pub(crate) fn read_page<C: Codec>(
    store: Arc<dyn EventStore>,
    codec: Arc<C>,
    auction: AuctionId,
    after: EventId,
    started: u64,
) -> BoxFuture<'static, Result<Page, Unavailable>> {
    async move {
        let rows = store
            .read_from(&auction, after, REPLAY_BATCH)
            .await
            .map_err(|_| Unavailable)?;
        Ok(Page::new(&*codec, &auction, after, &rows, started))
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Frame, Item};
    use crate::config::HubConfig;
    use crate::hub::{Hub, LiveCounters};
    use crate::session::{self, Resume, Start};
    use auction_domain::{BidSource, Bidder, BidderId, BidderName, EventKind};
    use event_log::{AuctionWriter, BidAnswer, StreamReader};
    use prometheus_client::metrics::counter::Counter;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    use test_support::RedisServer;
    use tokio::sync::oneshot;
    use tokio_util::sync::CancellationToken;

    const WAIT: Duration = Duration::from_secs(5);
    const KEEP: Duration = Duration::from_secs(2);

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

    /// The flight of a lookup, which must not be a kept page.
    fn flight(lookup: Lookup) -> (Flight, bool) {
        match lookup {
            Lookup::Flight { flight, shared } => (flight, shared),
            Lookup::Kept(_) => panic!("a kept page, where a read was expected"),
        }
    }

    fn kept(lookup: Lookup) -> Arc<Page> {
        match lookup {
            Lookup::Kept(page) => page,
            Lookup::Flight { .. } => panic!("a read, where a kept page was expected"),
        }
    }

    #[tokio::test]
    async fn clients_asking_while_a_read_is_in_flight_share_it_and_those_after_get_it_kept() {
        let replays = Replays::new(KEEP);
        let auction = AuctionId::parse("a").unwrap();
        let (release, gate) = oneshot::channel();
        let (first, shared) = flight(replays.page(&auction, id(1), None, |started| {
            gated(ready(Ok(page_started(started))), gate)
        }));
        assert!(!shared);
        let (second, shared) = flight(replays.page(&auction, id(1), None, |_| {
            panic!("a read is in flight for this page")
        }));
        assert!(shared);
        let (other, shared) =
            flight(replays.page(&auction, id(2), None, |_| ready(Err(Unavailable))));
        assert!(!shared, "another id is another read");
        assert_eq!(replays.in_flight(), 2);
        assert_eq!(other.await.map(|_| ()), Err(Unavailable));
        assert_eq!(replays.in_flight(), 1, "a failed read is forgotten");
        assert_eq!(replays.kept(), 0, "and not kept");

        let _ = release.send(());
        let (a, b) = (first.await.unwrap(), second.await.unwrap());
        assert!(Arc::ptr_eq(&a, &b), "one result for both");
        assert_eq!((replays.in_flight(), replays.kept()), (0, 1));
        let later = kept(replays.page(&auction, id(1), None, |_| panic!("the page was just read")));
        assert!(Arc::ptr_eq(&a, &later), "the same page for a client after");
    }

    #[tokio::test]
    async fn a_client_that_needs_a_read_newer_than_its_join_does_not_take_an_older_one() {
        let replays = Replays::new(KEEP);
        let auction = AuctionId::parse("a").unwrap();
        let (read, _) = flight(replays.page(&auction, id(1), None, |started| {
            ready(Ok(page_started(started)))
        }));
        let older = read.await.unwrap();
        let ticket = replays.ticket();
        let (fresh, shared) = flight(replays.page(&auction, id(1), Some(ticket), |started| {
            ready(Ok(page_started(started)))
        }));
        assert!(
            !shared,
            "started before the ticket: neither shared nor kept"
        );
        let newer = fresh.await.unwrap();
        assert!(newer.started > ticket);
        assert!(older.started < ticket);
        let taken = kept(replays.page(&auction, id(1), Some(ticket), |_| {
            panic!("the newer read is kept")
        }));
        assert!(Arc::ptr_eq(&taken, &newer));
        assert_eq!(replays.kept(), 1, "the newer read replaced the older");
    }

    #[tokio::test]
    async fn a_page_whose_id_the_stream_did_not_hold_is_not_kept() {
        let replays = Replays::new(KEEP);
        let auction = AuctionId::parse("a").unwrap();
        let (read, _) = flight(replays.page(&auction, id(9), None, |_| ready(Ok(page(9, &[])))));
        assert!(!read.await.unwrap().held);
        assert_eq!((replays.in_flight(), replays.kept()), (0, 0));
    }

    #[tokio::test]
    async fn kept_pages_go_after_their_time_when_their_stream_is_replaced_and_past_the_bound() {
        let replays = Replays::new(KEEP);
        let auction = AuctionId::parse("a").unwrap();
        let other = AuctionId::parse("b").unwrap();
        let full: Vec<Event> = (1..=REPLAY_BATCH as u64 + 1)
            .map(|seq| event(seq, seq - 1))
            .collect();
        for (auction, after) in [(&auction, 1), (&other, 1), (&auction, 2)] {
            let (read, _) = flight(replays.page(auction, id(after), None, |_| {
                ready(Ok(page(after, &full[after as usize - 1..])))
            }));
            read.await.unwrap();
        }
        assert_eq!(replays.kept(), 3);
        replays.forget(&auction);
        assert_eq!(replays.kept(), 1, "only the other auction's page is left");
        lock(&replays.pages).expire(Instant::now() + KEEP);
        assert_eq!(replays.kept(), 0, "forgotten after its time");

        // One full page more than the bound holds: the oldest goes.
        let pages = MAX_KEPT_EVENTS / REPLAY_BATCH + 1;
        let long: Vec<Event> = (1..=(pages * REPLAY_BATCH) as u64 + 1)
            .map(|seq| event(seq, seq - 1))
            .collect();
        for page_index in 0..pages {
            let after = (page_index * REPLAY_BATCH) as u64 + 1;
            let rows = &long[after as usize - 1..after as usize + REPLAY_BATCH];
            let (read, _) =
                flight(replays.page(&auction, id(after), None, |_| ready(Ok(page(after, rows)))));
            assert_eq!(read.await.unwrap().events.len(), REPLAY_BATCH);
        }
        assert_eq!(replays.kept(), pages - 1);
        assert!(lock(&replays.pages).kept_events <= MAX_KEPT_EVENTS);
        let (_, shared) = flight(replays.page(&auction, id(1), None, |_| ready(Err(Unavailable))));
        assert!(!shared, "the oldest page went");
    }

    #[tokio::test]
    async fn a_read_nobody_waits_for_any_more_is_forgotten() {
        let replays = Replays::new(KEEP);
        let auction = AuctionId::parse("a").unwrap();
        let (_release, gate) = oneshot::channel::<()>();
        let (flight, _) = flight(replays.page(&auction, id(1), None, |started| {
            gated(ready(Ok(page_started(started))), gate)
        }));
        let waiting = tokio::spawn(flight);
        tokio::task::yield_now().await;
        assert_eq!(replays.in_flight(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!((replays.in_flight(), replays.kept()), (0, 0));
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

    async fn bid(log: &AuctionWriter, auction: &AuctionId, amount: u64) -> EventId {
        let bidder = Bidder {
            id: BidderId::parse("tester").unwrap(),
            name: BidderName::parse("tester").unwrap(),
        };
        let attempt = log
            .place_bid(auction, amount, &bidder, BidSource::User, None, None)
            .await
            .unwrap()
            .unwrap();
        let BidAnswer::Accepted { id, .. } = attempt.answer else {
            panic!("the bid is accepted");
        };
        id
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
        let conn = event_log::connect_manager(&target, || {}).unwrap();
        let log = AuctionWriter::new(conn.clone(), 1000);
        let reader = StreamReader::new(conn);
        let resume_from = bid(&log, &auction, 100).await;
        for amount in [110, 120] {
            bid(&log, &auction, amount).await;
        }
        let config = HubConfig {
            queue_capacity: capacity,
            keepalive: Duration::from_secs(60),
            idle_feed_ttl: Duration::from_secs(60),
            viewers_interval: Duration::from_secs(60),
            replay_keep: KEEP,
            replica: "test".into(),
        };
        let shutdown = CancellationToken::new();
        let hub = Hub::connect(
            &target,
            Ids,
            config,
            LiveCounters::default(),
            shutdown.clone(),
        )
        .unwrap();
        // A client already watching: the feed is live.
        let watcher = hub.join(&auction, WAIT).await.unwrap();

        let (ran, read_done) = oneshot::channel();
        let (release, gate) = oneshot::channel();
        let (flight, _) = flight(hub.replays().page(&auction, resume_from, None, |started| {
            let read = read_page(
                hub.store().clone(),
                hub.codec().clone(),
                auction.clone(),
                resume_from,
                started,
            );
            let read = async move {
                let page = read.await;
                let _ = ran.send(());
                page
            }
            .boxed();
            gated(read, gate)
        }));
        let earlier = tokio::spawn(flight);
        read_done.await.unwrap();

        let mut last = EventId::ZERO;
        for step in 0..in_between {
            last = bid(&log, &auction, 130 + 10 * step).await;
        }
        test_support::wait_for("the feed to publish", WAIT, || {
            watcher.feed().recent().after(last).map(|_| ())
        });

        let shared = Counter::default();
        let opening = tokio::spawn({
            let (hub, auction, shared) = (hub.clone(), auction.clone(), shared.clone());
            async move {
                let opening = session::open(
                    &hub,
                    &auction,
                    Resume::From(resume_from),
                    LOOPBACK,
                    WAIT,
                    &shared,
                )
                .await;
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
                let mut feed = opening.rx;
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

        let stream = reader
            .read_after(&auction, resume_from, 10_000)
            .await
            .unwrap();
        (
            replayed
                .iter()
                .map(|(_, frame)| String::from_utf8_lossy(frame).into_owned())
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
