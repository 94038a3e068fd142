//! The replica's one subscription path: the live connection → per-auction
//! feeds.

use crate::direct::Parking;
use crate::feed::{Codec, EncodedEvent, Frame, Item};
use crate::recent::Recent;
use crate::replays::Replays;
use auction_domain::{AuctionId, Event, EventId};
use event_log::{LiveConnection, LiveMessage, LogError, RedisTarget, StreamReader};
use futures_util::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How many events one backfill read asks for.
const BACKFILL_BATCH: usize = 256;
/// Redis operations of the subscription path give up after this long; the
/// connection is then treated as lost and re-established.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound of the queue of "start watching this auction" requests: more than
/// a replica's clients can ask for in one burst (a restart hands a replica
/// thousands of auctions at once); past it, a client is refused as busy.
const COMMAND_QUEUE: usize = 16_384;
/// Most auctions one SUBSCRIBE (and one pipelined window read) starts
/// watching: a replica asked for thousands of auctions at once (a restart,
/// a load balancer reshuffle) needs a few round trips, not thousands.
const WATCH_BATCH: usize = 256;
/// How many times per keepalive interval the hub looks for feeds due a
/// keepalive. Each feed ticks an interval after its own last tick, and
/// feeds started together start apart, so ticks spread over the interval
/// instead of every feed ticking at once (at 10,000 clients over 1,000
/// auctions, a tick to every socket at once held events back by up to
/// 120 ms at p99).
const KEEPALIVE_CHECKS: u32 = 64;

#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Capacity of each auction's broadcast ring, which is also how far a
    /// client may fall behind before it counts as slow and is disconnected.
    pub queue_capacity: usize,
    /// How often each feed's clients get the keepalive frame, at least
    /// (for a transport with one; see [`Codec::keepalive`]): in front of an
    /// event when the feed is busy, as an [`Item::Tick`] when it is quiet.
    pub keepalive: Duration,
    /// How long a feed with no clients stays subscribed (avoids churn when a
    /// client reconnects).
    pub idle_feed_ttl: Duration,
    /// How often this replica reports its viewers per auction and learns
    /// the totals over all replicas.
    pub viewers_interval: Duration,
    /// How long a replay page read from the stream is kept for the next
    /// clients resuming from the same id (zero: shared only while read).
    pub replay_keep: Duration,
    /// This replica's name in the viewer counts (unique per process).
    pub replica: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The subscription path could not go live in time (Redis down).
    Unavailable,
    /// Too many new auctions requested at once.
    Busy,
}

/// One watched auction's feed, as clients join it.
pub(crate) struct FeedHandle {
    /// For attaching receivers. Items are sent only through `parking`
    /// (see its invariant), never on this directly.
    pub(crate) tx: broadcast::Sender<Item>,
    live: watch::Receiver<bool>,
    recent: Arc<Mutex<Recent<Frame>>>,
    /// Every send to the feed, and the clients the hub writes to itself
    /// (see [`crate::direct`]); it also counts the items sent.
    pub(crate) parking: Arc<Parking>,
    /// The auction's viewers over all replicas, as last learned (written
    /// by the viewers task only).
    pub(crate) viewers: Arc<AtomicU32>,
}

impl FeedHandle {
    /// A new receiver on the feed and its exact position (see
    /// `FeedPosition`).
    fn attach(&self) -> (broadcast::Receiver<Item>, FeedPosition) {
        let (rx, taken) = self.parking.subscribe(&self.tx);
        let sent = self.parking.sent().clone();
        (rx, FeedPosition { sent, taken })
    }

    /// Clients of this feed on this replica: those reading the ring and
    /// those parked (which hold no receiver).
    pub(crate) fn clients(&self) -> usize {
        self.parking.clients(&self.tx)
    }
}

/// A client's place in an auction's feed (see [`Hub::join`]).
pub struct Joined {
    pub rx: broadcast::Receiver<Item>,
    pub position: FeedPosition,
    /// The auction's viewers over all replicas when the client joined (0:
    /// not known yet); later changes come through the feed.
    pub viewers: u32,
    recent: Arc<Mutex<Recent<Frame>>>,
    pub(crate) parking: Arc<Parking>,
}

impl Joined {
    /// The events after `id` that this replica published recently, if it
    /// can tell what they are; `None`: ask the stream.
    pub fn recent_after(&self, id: EventId) -> Option<Vec<Arc<EncodedEvent>>> {
        lock(&self.recent).after(id)
    }

    /// The feed's shared `init` for a fresh client, and the id it
    /// reflects: valid for this client, which joined the feed first.
    pub(crate) fn shared_init(&self) -> Option<(EventId, Frame)> {
        lock(&self.recent).shared_init()
    }

    /// Offers an `init` this client read (reflecting events up to `last`)
    /// for the fresh clients after it.
    pub(crate) fn offer_init(&self, last: EventId, frame: &Frame) {
        lock(&self.recent).offer_init(last, frame.clone());
    }

    /// The feed's recent events, to finish a replay with (see `CatchUp`).
    pub(crate) fn recent(&self) -> RecentEvents {
        RecentEvents(self.recent.clone())
    }
}

/// A handle on a feed's recent events, held only while a client starts.
#[derive(Clone)]
pub(crate) struct RecentEvents(Arc<Mutex<Recent<Frame>>>);

impl std::fmt::Debug for RecentEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecentEvents")
    }
}

impl RecentEvents {
    /// See [`Joined::recent_after`].
    pub(crate) fn after(&self, id: EventId) -> Option<Vec<Arc<EncodedEvent>>> {
        lock(&self.0).after(id)
    }
}

/// How far one receiver is behind its feed, known without the receiver
/// (which is busy waiting for the next item): the feed counts every item
/// it sends, the client every item it takes.
///
/// Exact: every item is sent and counted under the feed's parking lock,
/// and a receiver is attached and the count read under the same lock
/// ([`Parking::subscribe`]), so no item is counted that the receiver will
/// not get, nor the other way round. A client behind by zero holds
/// nothing unread, which parking relies on; a lap is never reported
/// early or late.
#[derive(Debug)]
pub struct FeedPosition {
    /// Items the feed has sent, ever (the publisher adds after each send).
    sent: Arc<AtomicU64>,
    /// Items this receiver has taken, plus the feed's count when it joined.
    taken: u64,
}

impl FeedPosition {
    /// Counts one item taken from the receiver.
    pub fn took_one(&mut self) {
        self.taken += 1;
    }

    /// A new receiver took over, attached when the feed had sent `sent`
    /// items (counted as taken, as at a join).
    pub(crate) fn rejoined(&mut self, sent: u64) {
        self.taken = sent;
    }

    /// Items sent that this receiver has not taken yet.
    pub fn behind(&self) -> u64 {
        self.sent.load(Ordering::Relaxed).saturating_sub(self.taken)
    }
}

pub(crate) struct Shared<C: Codec> {
    pub(crate) feeds: Mutex<HashMap<AuctionId, FeedHandle>>,
    commands: mpsc::Sender<Watch>,
    codec: C,
    pub(crate) log: StreamReader,
    pub(crate) config: HubConfig,
    connected: AtomicBool,
    replays: Replays,
}

/// Handle to the replica's hub; cheap to clone.
pub struct Hub<C: Codec> {
    shared: Arc<Shared<C>>,
}

impl<C: Codec> Clone for Hub<C> {
    fn clone(&self) -> Self {
        Hub {
            shared: self.shared.clone(),
        }
    }
}

/// A request to the subscriber task: start watching an auction.
struct Watch {
    auction: AuctionId,
    tx: broadcast::Sender<Item>,
    live: watch::Sender<bool>,
    recent: Arc<Mutex<Recent<Frame>>>,
    parking: Arc<Parking>,
}

impl<C: Codec> Hub<C> {
    /// Starts the subscriber task; it runs until `shutdown`.
    fn start(
        target: &RedisTarget,
        log: StreamReader,
        codec: C,
        config: HubConfig,
        reconnects: Counter,
        shutdown: CancellationToken,
    ) -> Hub<C> {
        let (commands, requests) = mpsc::channel(COMMAND_QUEUE);
        let shared = Arc::new(Shared {
            feeds: Mutex::new(HashMap::new()),
            commands,
            codec,
            log,
            replays: Replays::new(config.replay_keep),
            config,
            connected: AtomicBool::new(false),
        });
        tokio::spawn(crate::viewers::report(shared.clone(), shutdown.clone()));
        // Bounded: the audit waits while the subscriber ends what it sent.
        let (vanished_tx, vanished) = mpsc::channel(4);
        tokio::spawn(crate::audit::run(
            shared.clone(),
            sweep_interval(&shared.config),
            vanished_tx,
            shutdown.clone(),
        ));
        let subscriber = Subscriber {
            shared: shared.clone(),
            target: target.clone(),
            cursors: HashMap::new(),
            watched: 0,
            requests,
            vanished,
            reconnects,
            shutdown,
        };
        tokio::spawn(subscriber.run());
        Hub { shared }
    }

    /// Opens the replica's command connection (reconnects counted in
    /// `reconnects`) and starts the hub on it.
    pub fn connect(
        target: &RedisTarget,
        codec: C,
        config: HubConfig,
        reconnects: Counter,
        shutdown: CancellationToken,
    ) -> Result<Hub<C>, String> {
        let counted = reconnects.clone();
        let conn = event_log::connect_manager(target, move || {
            counted.inc();
        })
        .map_err(|error| format!("cannot set up the Redis client: {error}"))?;
        let log = StreamReader::new(conn);
        Ok(Hub::start(target, log, codec, config, reconnects, shutdown))
    }

    /// Readiness: the subscription is up and Redis answers commands.
    pub async fn healthy(&self) -> bool {
        self.connected() && self.log().ping().await.is_ok()
    }

    /// [`healthy`](Self::healthy) as a probe a readiness watcher can call
    /// again and again.
    pub fn health_probe(&self) -> impl Fn() -> BoxFuture<'static, bool> + Send + 'static {
        let hub = self.clone();
        move || {
            let hub = hub.clone();
            Box::pin(async move { hub.healthy().await })
        }
    }

    pub(crate) fn codec(&self) -> &C {
        &self.shared.codec
    }

    pub(crate) fn log(&self) -> &StreamReader {
        &self.shared.log
    }

    pub(crate) fn replays(&self) -> &Replays {
        &self.shared.replays
    }

    pub(crate) fn config(&self) -> &HubConfig {
        &self.shared.config
    }

    /// Whether the pub/sub connection is up (part of readiness).
    pub fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Whether this replica watches `auction` already (so it exists).
    pub fn watches(&self, auction: &AuctionId) -> bool {
        lock(&self.shared.feeds).contains_key(auction)
    }

    /// Attaches a receiver to the auction's feed, starting the feed if
    /// needed, and waits until the feed is live: from then on, every event
    /// appended to the stream after the feed's starting point reaches the
    /// receiver, in order. The caller reads anything older from the feed's
    /// recent events or from the stream.
    pub async fn join(&self, auction: &AuctionId, wait: Duration) -> Result<Joined, JoinError> {
        let (rx, position, mut live, recent, viewers, parking) = {
            let mut feeds = lock(&self.shared.feeds);
            let feed = match feeds.entry(auction.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => entry.insert(self.start_feed(auction)?),
            };
            let (rx, position) = feed.attach();
            (
                rx,
                position,
                feed.live.clone(),
                feed.recent.clone(),
                feed.viewers.clone(),
                feed.parking.clone(),
            )
        };
        match tokio::time::timeout(wait, live.wait_for(|live| *live)).await {
            Ok(Ok(_)) => Ok(Joined {
                rx,
                position,
                viewers: viewers.load(Ordering::Relaxed),
                recent,
                parking,
            }),
            _ => Err(JoinError::Unavailable),
        }
    }

    /// A new feed for the auction, asked of the subscriber task (which
    /// makes it live); `Busy` if its queue of requests is full.
    fn start_feed(&self, auction: &AuctionId) -> Result<FeedHandle, JoinError> {
        let capacity = self.shared.config.queue_capacity;
        let (tx, _) = broadcast::channel(capacity);
        let (live_tx, live) = watch::channel(false);
        let recent = Arc::new(Mutex::new(Recent::new(capacity)));
        let parking = Arc::new(Parking::new(
            &tx,
            Arc::new(AtomicU64::new(0)),
            recent.clone(),
            self.shared.codec.keepalive(),
        ));
        let request = Watch {
            auction: auction.clone(),
            tx: tx.clone(),
            live: live_tx,
            recent: recent.clone(),
            parking: parking.clone(),
        };
        self.shared
            .commands
            .try_send(request)
            .map_err(|_| JoinError::Busy)?;
        Ok(FeedHandle {
            tx,
            live,
            recent,
            parking,
            viewers: Arc::new(AtomicU32::new(0)),
        })
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The subscriber task's view of one watched auction.
struct Cursor {
    tx: broadcast::Sender<Item>,
    live: watch::Sender<bool>,
    recent: Arc<Mutex<Recent<Frame>>>,
    /// The feed's parked clients; every send goes through it (its
    /// invariant is that no item bypasses its lock). It also counts the
    /// items sent (see `FeedPosition`).
    parking: Arc<Parking>,
    /// The newest event published to the feed. Only meaningful once live.
    last: EventId,
    idle_since: Option<Instant>,
    /// When the feed last sent a keepalive tick (for its first, a made-up
    /// time that staggers it; see `KEEPALIVE_CHECKS`).
    ticked_at: Instant,
}

impl Cursor {
    /// Sends one item to every client of the feed.
    fn send(&self, item: Item) {
        self.parking.send(&self.tx, item);
    }

    /// Clients of this feed on this replica (see [`FeedHandle::clients`]).
    fn clients(&self) -> usize {
        self.parking.clients(&self.tx)
    }
}

struct Subscriber<C: Codec> {
    shared: Arc<Shared<C>>,
    target: RedisTarget,
    cursors: HashMap<AuctionId, Cursor>,
    /// Feeds watched so far, ever: staggers their first keepalives.
    watched: u32,
    requests: mpsc::Receiver<Watch>,
    /// Watched auctions found missing by the audit task.
    vanished: mpsc::Receiver<Vec<AuctionId>>,
    reconnects: Counter,
    shutdown: CancellationToken,
}

/// Why the pump stopped.
enum Stop {
    Shutdown,
    Lost(String),
}

impl<C: Codec> Subscriber<C> {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        let mut connected_before = false;
        loop {
            let connect = timed(LiveConnection::open(&self.target));
            let connection = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                result = connect => result,
            };
            let Ok(mut connection) = connection else {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            };
            if connected_before {
                self.reconnects.inc();
            }
            let connected_at = Instant::now();
            let stop = match self.resume(&mut connection).await {
                Ok(()) => {
                    connected_before = true;
                    self.shared.connected.store(true, Ordering::Relaxed);
                    tracing::info!(feeds = self.cursors.len(), "subscribed to Redis pub/sub");
                    self.pump(&mut connection).await
                }
                Err(error) => Stop::Lost(error),
            };
            self.shared.connected.store(false, Ordering::Relaxed);
            match stop {
                Stop::Shutdown => return,
                Stop::Lost(error) => {
                    tracing::warn!(%error, "Redis pub/sub connection lost; reconnecting");
                }
            }
            // A connection that failed quickly must not turn into a busy loop.
            if connected_at.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(50);
            } else {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// After (re)connecting: subscribe to every watched auction, then bring
    /// each feed up to date from the stream (notices sent while we were
    /// away are gone; the stream has the events).
    async fn resume(&mut self, connection: &mut LiveConnection) -> Result<(), String> {
        let watched: Vec<AuctionId> = self.cursors.keys().cloned().collect();
        for batch in watched.chunks(WATCH_BATCH) {
            timed(connection.watch(batch)).await?;
        }
        let (mut live, mut waiting) = (Vec::new(), Vec::new());
        for (auction, cursor) in &self.cursors {
            if *cursor.live.borrow() {
                live.push(auction.clone());
            } else {
                waiting.push(auction.clone());
            }
        }
        for batch in live.chunks(WATCH_BATCH) {
            self.catch_up(connection, batch).await?;
        }
        for batch in waiting.chunks(WATCH_BATCH) {
            self.go_live(batch).await?;
        }
        Ok(())
    }

    /// Brings live feeds back in line with their streams after the live
    /// connection was away (notices sent meanwhile are gone; the stream has
    /// the events). What the stream shows decides, per feed: more events
    /// (backfill), none (nothing to do), an auction that no longer exists
    /// (its clients are told), or a stream that is not the one the feed
    /// followed (Redis came back without its data: its clients start over).
    async fn catch_up(
        &mut self,
        connection: &mut LiveConnection,
        auctions: &[AuctionId],
    ) -> Result<(), String> {
        let windows = timed(self.shared.log.windows(auctions)).await?;
        for (auction, window) in auctions.iter().zip(windows) {
            let Some(last) = self.cursors.get(auction).map(|c| c.last) else {
                continue;
            };
            if !window.exists {
                self.vanished(connection, auction).await?;
                continue;
            }
            match window.last {
                Some(newest) if newest > last => self.backfill(auction).await?,
                Some(newest) if newest == last => {}
                // Still no events (a new auction): nothing was missed.
                None if last == EventId::ZERO => {}
                newest => self.restart_feed(auction, newest.unwrap_or(EventId::ZERO)),
            }
        }
        Ok(())
    }

    /// The feed's stream is not the one it followed: its ids went back.
    /// Clients are reset (they resume from their own last id, which this
    /// stream never held: a fresh `init`), and the feed follows the stream
    /// from its newest event.
    fn restart_feed(&mut self, auction: &AuctionId, newest: EventId) {
        let Some(cursor) = self.cursors.get_mut(auction) else {
            return;
        };
        tracing::warn!(%auction, last = %cursor.last, %newest, "the auction's stream was replaced; resetting clients");
        // Cleared first: nothing from the old stream may serve a resume.
        lock(&cursor.recent).follow_from(newest);
        self.shared.replays.forget(auction);
        cursor.send(Item::Reset);
        cursor.last = newest;
    }

    /// The auction no longer exists: its clients get a last word and the
    /// feed ends, so a client that comes back is told 404.
    async fn vanished(
        &mut self,
        connection: &mut LiveConnection,
        auction: &AuctionId,
    ) -> Result<(), String> {
        let Some(cursor) = self.cursors.remove(auction) else {
            return Ok(());
        };
        tracing::info!(%auction, "the auction no longer exists; ending its feed");
        lock(&cursor.recent).clear();
        self.shared.replays.forget(auction);
        cursor.send(Item::Gone);
        lock(&self.shared.feeds).remove(auction);
        timed(connection.unwatch(auction)).await
    }

    async fn pump(&mut self, connection: &mut LiveConnection) -> Stop {
        let config = self.shared.config.clone();
        let mut keepalive = tokio::time::interval(keepalive_check(config.keepalive));
        keepalive.reset();
        let mut sweep = tokio::time::interval(sweep_interval(&config));
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        loop {
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => return Stop::Shutdown,
                message = connection.next() => match message {
                    Some(message) => self.on_message(message).await,
                    None => Err("the pub/sub stream ended".to_owned()),
                },
                request = self.requests.recv() => match request {
                    Some(first) => {
                        let mut batch = vec![first];
                        while batch.len() < WATCH_BATCH {
                            match self.requests.try_recv() {
                                Ok(request) => batch.push(request),
                                Err(_) => break,
                            }
                        }
                        self.watch(connection, batch).await
                    }
                    None => return Stop::Shutdown,
                },
                _ = keepalive.tick() => {
                    self.keep_alive();
                    Ok(())
                }
                _ = sweep.tick() => self.sweep(connection).await,
                Some(gone) = self.vanished.recv() => {
                    let mut ended = Ok(());
                    for auction in &gone {
                        ended = self.vanished(connection, auction).await;
                        if ended.is_err() {
                            break;
                        }
                    }
                    ended
                }
                _ = ping.tick() => timed(connection.ping()).await,
            };
            if let Err(error) = result {
                return Stop::Lost(error);
            }
        }
    }

    /// Starts watching auctions: subscribe, then learn each one's newest
    /// event so its feed knows where its chain starts.
    async fn watch(
        &mut self,
        connection: &mut LiveConnection,
        requests: Vec<Watch>,
    ) -> Result<(), String> {
        let mut auctions = Vec::with_capacity(requests.len());
        let now = Instant::now();
        let check = keepalive_check(self.shared.config.keepalive);
        for request in requests {
            // Feeds started together (a restart) stay apart: each is a
            // different number of checks into its first interval.
            let stagger = check * (self.watched % KEEPALIVE_CHECKS);
            self.watched = self.watched.wrapping_add(1);
            auctions.push(request.auction.clone());
            self.cursors.insert(
                request.auction,
                Cursor {
                    tx: request.tx,
                    live: request.live,
                    recent: request.recent,
                    parking: request.parking,
                    last: EventId::ZERO,
                    idle_since: None,
                    ticked_at: now.checked_sub(stagger).unwrap_or(now),
                },
            );
        }
        timed(connection.watch(&auctions)).await?;
        self.go_live(&auctions).await
    }

    async fn go_live(&mut self, auctions: &[AuctionId]) -> Result<(), String> {
        let windows = timed(self.shared.log.windows(auctions)).await?;
        for (auction, window) in auctions.iter().zip(windows) {
            if let Some(cursor) = self.cursors.get_mut(auction) {
                cursor.last = window.last.unwrap_or(EventId::ZERO);
                lock(&cursor.recent).follow_from(cursor.last);
                let _ = cursor.live.send(true);
            }
        }
        Ok(())
    }

    async fn on_message(&mut self, message: LiveMessage) -> Result<(), String> {
        let (auction, event) = match message {
            LiveMessage::Event { auction, event } => (auction, event),
            LiveMessage::Malformed { channel } => {
                tracing::warn!(%channel, "ignoring a malformed notice");
                return Ok(());
            }
        };
        let Some(cursor) = self.cursors.get_mut(&auction) else {
            return Ok(()); // an auction we stopped watching
        };
        if !*cursor.live.borrow() {
            return Ok(()); // not started yet: going live reads the stream
        }
        if event.id <= cursor.last {
            if event.prev < cursor.last {
                return Ok(()); // published already (a backfill was ahead)
            }
            // Within one stream an event's `prev` is older than its id:
            // this notice comes from another stream (Redis lost its data,
            // or failed over to a copy without it). Never dropped silently.
            let window = timed(self.shared.log.windows(std::slice::from_ref(&auction))).await?;
            let newest = window.first().and_then(|w| w.last).unwrap_or(event.id);
            self.restart_feed(&auction, newest);
            return Ok(());
        }
        if event.prev == cursor.last {
            publish(&self.shared, &auction, cursor, &event);
            return Ok(());
        }
        tracing::debug!(%auction, last = %cursor.last, prev = %event.prev, "gap in notices; backfilling");
        self.backfill(&auction).await
    }

    /// Publishes everything the stream holds after the feed's last event.
    async fn backfill(&mut self, auction: &AuctionId) -> Result<(), String> {
        loop {
            let Some(after) = self.cursors.get(auction).map(|c| c.last) else {
                return Ok(());
            };
            let batch = timed(self.shared.log.read_after(auction, after, BACKFILL_BATCH)).await?;
            let Some(cursor) = self.cursors.get_mut(auction) else {
                return Ok(());
            };
            for event in &batch {
                if event.prev != cursor.last {
                    // The events in between are gone from the stream
                    // (trimmed beyond retention): this feed's clients must
                    // start over.
                    tracing::warn!(%auction, after = %cursor.last, "events lost beyond retention; resetting clients");
                    // Cleared first: a client that resumes once reset must
                    // not be served events from before the hole.
                    lock(&cursor.recent).clear();
                    cursor.send(Item::Reset);
                }
                publish(&self.shared, auction, cursor, event);
            }
            if batch.len() < BACKFILL_BATCH {
                return Ok(());
            }
        }
    }

    /// Sends a keepalive tick to each feed whose last tick will be a whole
    /// interval old by the next check: every client gets one at least once
    /// an interval. Nothing for a transport without keepalives.
    fn keep_alive(&mut self) {
        if self.shared.codec.keepalive().is_none() {
            return;
        }
        let interval = self.shared.config.keepalive;
        let check = keepalive_check(interval);
        let now = Instant::now();
        for cursor in self.cursors.values_mut() {
            if now.duration_since(cursor.ticked_at) + check > interval {
                cursor.send(Item::Tick);
                cursor.ticked_at = now;
            }
        }
    }

    /// Stops watching auctions that have had no clients for a while.
    async fn sweep(&mut self, connection: &mut LiveConnection) -> Result<(), String> {
        let now = Instant::now();
        let ttl = self.shared.config.idle_feed_ttl;
        let mut expired = Vec::new();
        for (auction, cursor) in self.cursors.iter_mut() {
            if cursor.clients() > 0 {
                cursor.idle_since = None;
            } else if now.duration_since(*cursor.idle_since.get_or_insert(now)) >= ttl {
                expired.push(auction.clone());
            }
        }
        for auction in expired {
            let removed = {
                let mut feeds = lock(&self.shared.feeds);
                // Re-check under the lock: `join` subscribes under it.
                let idle = feeds.get(&auction).is_none_or(|f| f.clients() == 0);
                if idle {
                    feeds.remove(&auction);
                }
                idle
            };
            if removed && self.cursors.remove(&auction).is_some() {
                timed(connection.unwatch(&auction)).await?;
            }
        }
        Ok(())
    }
}

fn publish<C: Codec>(shared: &Shared<C>, auction: &AuctionId, cursor: &mut Cursor, event: &Event) {
    if event.id <= cursor.last {
        return;
    }
    let codec = &shared.codec;
    // The bid's trace continues here: one span per event per replica (not
    // per client), only for events that carry a trace context.
    let span = event.traceparent.as_deref().map(|traceparent| {
        let span = tracing::info_span!(
            "fanout.publish",
            otel.kind = "consumer",
            auction = %auction,
            event_id = %event.id,
            clients = cursor.clients(),
        );
        telemetry::continue_and_link(&span, traceparent);
        span
    });
    let _entered = span.as_ref().map(tracing::Span::enter);
    let mut frame = codec.event(auction, event);
    if let Some(keepalive) = codec.keepalive() {
        let now = Instant::now();
        if carries_keepalive(
            now.duration_since(cursor.ticked_at),
            shared.config.keepalive,
        ) {
            frame = [keepalive, frame].concat().into();
            cursor.ticked_at = now;
        }
    }
    let encoded = Arc::new(EncodedEvent {
        id: event.id,
        placed_at_ms: event.placed_at_ms,
        frame,
    });
    // Recorded before it is sent: a client joins the ring first and reads
    // the recent events after, so every event is in one or both (the
    // client drops ids it has sent already).
    lock(&cursor.recent).push(event.prev, encoded.clone());
    cursor.send(Item::Event(encoded));
    cursor.last = event.id;
}

/// Whether an event carries its feed's keepalive, in front of it in the
/// same frame, given how long ago the feed's last one went out: from half
/// an interval on. A feed with an event at least every half interval then
/// never needs a tick of its own (a write per client, and at 1,000 busy
/// auctions bursts of them holding events back), and its clients still get
/// a keepalive at least once an interval, as a quiet feed's do from ticks.
fn carries_keepalive(since_last: Duration, interval: Duration) -> bool {
    since_last >= interval / 2
}

/// How often idle feeds are swept, and watched auctions audited.
fn sweep_interval(config: &HubConfig) -> Duration {
    config.idle_feed_ttl.max(Duration::from_millis(100))
}

/// How often the hub looks for feeds due a keepalive.
fn keepalive_check(interval: Duration) -> Duration {
    (interval / KEEPALIVE_CHECKS).max(Duration::from_millis(1))
}

/// Runs a Redis operation of the subscription path under its deadline
/// (`REDIS_TIMEOUT`); the error is one readable line.
pub(crate) async fn timed<T>(
    operation: impl std::future::Future<Output = Result<T, LogError>>,
) -> Result<T, String> {
    match tokio::time::timeout(REDIS_TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("Redis did not answer in time".to_owned()),
    }
}
