//! An event store and live notices in memory, for driving the fan-out's
//! hub and delivery in-process, without a Redis server: the same
//! interfaces Redis implements ([`EventStore`], [`LiveSource`]), with
//! controls for what Redis does to a replica in the wild (notices missed,
//! the stream trimmed, the auction deleted, the data replaced, the
//! connection dropped, the store down).
//!
//! Ids are `<n>-0` with `n` counting up from 1 per store, as Redis's
//! time-based ids do (a replaced stream's ids go on rising; its first
//! event follows no event).

use auction_domain::{Auction, AuctionId, AuctionStatus, Event, EventId, EventKind};
use event_log::{
    EventStore, LiveFeed, LiveMessage, LiveSource, LogError, Snapshot, StreamWindow, Watching,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

/// Notices a live connection holds before it counts as lost (as Redis's
/// pub/sub output limit cuts a connection that does not read).
const LIVE_QUEUE: usize = 4096;

/// The store and its live connections; cheap to clone (clones share it).
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    auctions: HashMap<AuctionId, Stream>,
    /// The next id's `ms` part.
    next: u64,
    /// Open live connections.
    connections: Vec<Connection>,
    /// While set, every read and every live operation fails.
    down: bool,
    /// Auctions whose reads fail (as when their cluster primary does not
    /// answer), while the others are served.
    unreadable: HashSet<AuctionId>,
    /// Viewers reported, by auction and replica.
    viewers: HashMap<AuctionId, HashMap<String, u64>>,
    /// Reads served, by kind (`read_after`, `read_from`, `snapshot`...).
    reads: HashMap<&'static str, u64>,
    /// A trim to make once a kind of read has been served so many times:
    /// (kind, reads, auction, events kept).
    trim_on_read: Option<(&'static str, u64, AuctionId, usize)>,
}

struct Stream {
    auction: Auction,
    /// Whether the auction's state exists (deleted: the stream may stay).
    exists: bool,
    /// Retained events, oldest first.
    events: Vec<Event>,
    /// The newest event's id, even once trimmed away (`0-0`: none yet).
    last: EventId,
}

struct Connection {
    watched: Arc<Mutex<HashSet<AuctionId>>>,
    notices: mpsc::Sender<LiveMessage>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn down() -> LogError {
    LogError::Unavailable("the memory store is down".into())
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The live notices of this store, as a replica's hub opens them.
    pub fn live(&self) -> Arc<dyn LiveSource> {
        Arc::new(self.clone())
    }

    /// Creates an open auction with no events.
    pub fn create(&self, auction: &str) -> AuctionId {
        let id = AuctionId::parse(auction).expect("a valid auction id");
        let state = Auction {
            id: auction.to_owned(),
            title: format!("Lot {auction}"),
            status: AuctionStatus::Open,
            starting_price: 100,
            min_increment: 10,
            ends_at: u64::MAX,
            current: None,
            description: None,
            image_url: None,
            seller: None,
            terms: None,
            soft_close_ms: 0,
            buy_now_price: None,
            reserve_met: None,
            sold: None,
        };
        lock(&self.inner).auctions.insert(
            id.clone(),
            Stream {
                auction: state,
                exists: true,
                events: Vec::new(),
                last: EventId::ZERO,
            },
        );
        id
    }

    /// Appends a bid event and publishes its notice; returns it.
    pub fn append(&self, auction: &AuctionId) -> Event {
        let mut inner = lock(&self.inner);
        let event = inner.append(auction);
        inner.notify(auction, &event);
        event
    }

    /// Appends a bid event whose notice is lost (the next notice then
    /// skips it: a gap the hub fills from the stream).
    pub fn append_unannounced(&self, auction: &AuctionId) -> Event {
        lock(&self.inner).append(auction)
    }

    /// Keeps only the newest `keep` events of the auction's stream (the
    /// stream's retention trimmed the rest).
    pub fn trim(&self, auction: &AuctionId, keep: usize) {
        let mut inner = lock(&self.inner);
        if let Some(stream) = inner.auctions.get_mut(auction) {
            let drop = stream.events.len().saturating_sub(keep);
            stream.events.drain(..drop);
        }
    }

    /// Trims the auction's stream to its newest `keep` events right after
    /// the store served its `reads`-th read of `kind` (`read_from` is a
    /// replay's page): retention catching up with a client mid-replay.
    pub fn trim_after_read(
        &self,
        kind: &'static str,
        reads: u64,
        auction: &AuctionId,
        keep: usize,
    ) {
        lock(&self.inner).trim_on_read = Some((kind, reads, auction.clone(), keep));
    }

    /// Deletes the auction's state (it expired, or was deleted by hand):
    /// it no longer exists, and nothing more is published for it.
    pub fn delete(&self, auction: &AuctionId) {
        if let Some(stream) = lock(&self.inner).auctions.get_mut(auction) {
            stream.exists = false;
        }
    }

    /// Replaces the auction's stream by a new one (Redis came back without
    /// its data, or failed over to a copy without it) whose first event
    /// follows no event, with `events` new events, each announced.
    pub fn replace(&self, auction: &AuctionId, events: usize) -> Vec<Event> {
        let mut inner = lock(&self.inner);
        if let Some(stream) = inner.auctions.get_mut(auction) {
            stream.events.clear();
            stream.last = EventId::ZERO;
        }
        (0..events)
            .map(|_| {
                let event = inner.append(auction);
                inner.notify(auction, &event);
                event
            })
            .collect()
    }

    /// Ends every open live connection (the replica reconnects).
    pub fn drop_connections(&self) {
        lock(&self.inner).connections.clear();
    }

    /// While `down`, every read and every live operation fails, and the
    /// live connections end.
    pub fn set_down(&self, down: bool) {
        let mut inner = lock(&self.inner);
        inner.down = down;
        if down {
            inner.connections.clear();
        }
    }

    /// While `unreadable`, every read of the auction's stream fails (its
    /// cluster primary does not answer); other auctions are served.
    pub fn set_unreadable(&self, auction: &AuctionId, unreadable: bool) {
        let mut inner = lock(&self.inner);
        if unreadable {
            inner.unreadable.insert(auction.clone());
        } else {
            inner.unreadable.remove(auction);
        }
    }

    /// Announces the auctions subscribed again on every live connection
    /// watching them, as a cluster's node task does once its node answers
    /// again or the auctions' slot moved to another primary
    /// ([`LiveMessage::Subscribed`]).
    pub fn announce(&self, auctions: &[AuctionId]) {
        let inner = lock(&self.inner);
        for connection in &inner.connections {
            let watched = lock(&connection.watched);
            let announced: Vec<AuctionId> = auctions
                .iter()
                .filter(|auction| watched.contains(*auction))
                .cloned()
                .collect();
            if !announced.is_empty() {
                let _ = connection.notices.try_send(LiveMessage::Subscribed {
                    auctions: announced,
                });
            }
        }
    }

    /// The auction's retained events, oldest first.
    pub fn events(&self, auction: &AuctionId) -> Vec<Event> {
        lock(&self.inner)
            .auctions
            .get(auction)
            .map(|stream| stream.events.clone())
            .unwrap_or_default()
    }

    /// How many reads of a kind (`read_after`, `read_from`, `snapshot`,
    /// `windows`) the store served.
    pub fn reads(&self, kind: &str) -> u64 {
        lock(&self.inner).reads.get(kind).copied().unwrap_or(0)
    }

    /// Open live connections.
    pub fn connections(&self) -> usize {
        lock(&self.inner).connections.len()
    }

    /// The reads below of `auctions`, each counted and failing while the
    /// store is down or one of them is unreadable.
    fn read<T>(
        &self,
        kind: &'static str,
        auctions: &[AuctionId],
        read: impl FnOnce(&Inner) -> T,
    ) -> Result<T, LogError> {
        let mut inner = lock(&self.inner);
        if inner.down {
            return Err(down());
        }
        if auctions
            .iter()
            .any(|auction| inner.unreadable.contains(auction))
        {
            return Err(LogError::Unavailable(
                "the auction's node does not answer".into(),
            ));
        }
        let served = inner.reads.entry(kind).or_default();
        *served += 1;
        let served = *served;
        let result = read(&inner);
        if let Some((trim_kind, reads, auction, keep)) = inner.trim_on_read.take() {
            if trim_kind == kind && reads == served {
                if let Some(stream) = inner.auctions.get_mut(&auction) {
                    let drop = stream.events.len().saturating_sub(keep);
                    stream.events.drain(..drop);
                }
            } else {
                inner.trim_on_read = Some((trim_kind, reads, auction, keep));
            }
        }
        Ok(result)
    }
}

impl Inner {
    fn append(&mut self, auction: &AuctionId) -> Event {
        self.next += 1;
        let id = EventId::new(self.next, 0);
        let stream = self
            .auctions
            .get_mut(auction)
            .expect("events are appended to an auction created first");
        let event = Event {
            id,
            prev: stream.last,
            kind: EventKind::Bid,
            data: format!("{{\"amount\":{}}}", 100 + 10 * id.ms),
            placed_at_ms: auction_domain::clock::now_ms(),
            traceparent: None,
        };
        stream.events.push(event.clone());
        stream.last = id;
        event
    }

    /// Publishes the event's notice to every connection watching its
    /// auction; a connection whose queue is full is lost.
    fn notify(&mut self, auction: &AuctionId, event: &Event) {
        self.connections.retain(|connection| {
            if !lock(&connection.watched).contains(auction) {
                return !connection.notices.is_closed();
            }
            let notice = LiveMessage::Event {
                auction: auction.clone(),
                event: event.clone(),
            };
            connection.notices.try_send(notice).is_ok()
        });
    }

    fn stream(&self, auction: &AuctionId) -> Option<&Stream> {
        self.auctions.get(auction)
    }
}

impl EventStore for MemoryStore {
    fn ping(&self) -> BoxFuture<'_, Result<(), LogError>> {
        let result = self.read("ping", &[], |_| ());
        async move { result }.boxed()
    }

    fn read_after<'a>(
        &'a self,
        auction: &'a AuctionId,
        after: EventId,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>, LogError>> {
        let result = self.read("read_after", std::slice::from_ref(auction), |inner| {
            inner.stream(auction).map_or_else(Vec::new, |stream| {
                let events = stream.events.iter().filter(|event| event.id > after);
                events.take(count).cloned().collect()
            })
        });
        async move { result }.boxed()
    }

    fn read_from<'a>(
        &'a self,
        auction: &'a AuctionId,
        from: EventId,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>, LogError>> {
        let result = self.read("read_from", std::slice::from_ref(auction), |inner| {
            inner.stream(auction).map_or_else(Vec::new, |stream| {
                let events = stream.events.iter().filter(|event| event.id >= from);
                events.take(count).cloned().collect()
            })
        });
        async move { result }.boxed()
    }

    fn windows<'a>(
        &'a self,
        auctions: &'a [AuctionId],
    ) -> BoxFuture<'a, Result<Vec<StreamWindow>, LogError>> {
        let result = self.read("windows", auctions, |inner| {
            auctions
                .iter()
                .map(|auction| match inner.stream(auction) {
                    Some(stream) => StreamWindow {
                        first: stream.events.first().map(|event| event.id),
                        first_prev: stream.events.first().map(|event| event.prev),
                        last: stream.events.last().map(|event| event.id),
                        exists: stream.exists,
                    },
                    None => StreamWindow {
                        first: None,
                        first_prev: None,
                        last: None,
                        exists: false,
                    },
                })
                .collect()
        });
        async move { result }.boxed()
    }

    fn exist<'a>(
        &'a self,
        auctions: &'a [AuctionId],
    ) -> BoxFuture<'a, Result<Vec<bool>, LogError>> {
        let result = self.read("exist", auctions, |inner| {
            auctions
                .iter()
                .map(|auction| inner.stream(auction).is_some_and(|stream| stream.exists))
                .collect()
        });
        async move { result }.boxed()
    }

    fn exists<'a>(&'a self, auction: &'a AuctionId) -> BoxFuture<'a, Result<bool, LogError>> {
        let result = self.read("exists", std::slice::from_ref(auction), |inner| {
            inner.stream(auction).is_some_and(|stream| stream.exists)
        });
        async move { result }.boxed()
    }

    fn snapshot<'a>(
        &'a self,
        auction: &'a AuctionId,
        count: usize,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, LogError>> {
        let result = self.read("snapshot", std::slice::from_ref(auction), |inner| {
            let stream = inner.stream(auction).filter(|stream| stream.exists)?;
            Some(Snapshot {
                auction: stream.auction.clone(),
                recent: stream.events.iter().rev().take(count).cloned().collect(),
                last_id: stream.last,
            })
        });
        async move { result }.boxed()
    }

    fn report_viewers<'a>(
        &'a self,
        replica: &'a str,
        counts: &'a [(AuctionId, u64)],
        _fresh_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<u64>, LogError>> {
        let mut inner = lock(&self.inner);
        let result = if inner.down {
            Err(down())
        } else {
            Ok(counts
                .iter()
                .map(|(auction, clients)| {
                    let replicas = inner.viewers.entry(auction.clone()).or_default();
                    replicas.insert(replica.to_owned(), *clients);
                    replicas.values().sum()
                })
                .collect())
        };
        async move { result }.boxed()
    }
}

impl LiveSource for MemoryStore {
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn LiveFeed>, LogError>> {
        let mut inner = lock(&self.inner);
        let result = if inner.down {
            Err(down())
        } else {
            let (notices, rx) = mpsc::channel(LIVE_QUEUE);
            let watched = Arc::new(Mutex::new(HashSet::new()));
            inner.connections.push(Connection {
                watched: watched.clone(),
                notices,
            });
            let feed = MemoryFeed {
                store: self.clone(),
                watched,
                rx,
            };
            Ok(Box::new(feed) as Box<dyn LiveFeed>)
        };
        async move { result }.boxed()
    }
}

/// One live connection to a [`MemoryStore`].
struct MemoryFeed {
    store: MemoryStore,
    watched: Arc<Mutex<HashSet<AuctionId>>>,
    rx: mpsc::Receiver<LiveMessage>,
}

impl MemoryFeed {
    /// Fails once the store is down or dropped this connection.
    fn check(&self) -> Result<(), LogError> {
        if lock(&self.store.inner).down || self.rx.is_closed() {
            return Err(down());
        }
        Ok(())
    }
}

impl LiveFeed for MemoryFeed {
    fn watch<'a>(
        &'a mut self,
        auctions: &'a [AuctionId],
    ) -> BoxFuture<'a, Result<Watching, LogError>> {
        let result = self.check().map(|()| {
            lock(&self.watched).extend(auctions.iter().cloned());
            Watching::Now
        });
        async move { result }.boxed()
    }

    fn unwatch<'a>(&'a mut self, auction: &'a AuctionId) -> BoxFuture<'a, Result<(), LogError>> {
        let result = self.check().map(|()| {
            lock(&self.watched).remove(auction);
        });
        async move { result }.boxed()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<LiveMessage>> {
        self.rx.recv().boxed()
    }

    fn ping(&mut self) -> BoxFuture<'_, Result<(), LogError>> {
        let result = self.check();
        async move { result }.boxed()
    }
}
