//! The replica's one subscription path: the live (pub/sub) connection,
//! read on this task, into the per-auction feeds.
//!
//! The task keeps each feed gap-free: every notice carries the id of the
//! event before it; a notice that does not chain onto the last event the
//! feed published (see [`chain`](crate::chain)) makes it backfill from the
//! stream. After the live connection was away it brings every feed back in
//! line with its stream, and it ends feeds whose auction is gone or that
//! have had no clients for a while.

use crate::chain::{Chain, chain};
use crate::codec::{Codec, EncodedEvent, Item};
use crate::config::HubConfig;
use crate::deadline::timed;
use crate::feed::Feed;
use crate::feeds::Feeds;
use crate::replays::Replays;
use auction_domain::{AuctionId, Event, EventId};
use event_log::{EventStore, LiveFeed, LiveMessage, LiveSource, Watching};
use prometheus_client::metrics::counter::Counter;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many events one backfill read asks for.
const BACKFILL_BATCH: usize = 256;
/// Most auctions one SUBSCRIBE (and one pipelined window read) starts
/// watching: a replica asked for thousands of auctions at once (a restart,
/// a load balancer reshuffle) needs a few round trips, not thousands.
const WATCH_BATCH: usize = 256;
/// How often feeds that could not be brought in line with their streams
/// after a subscription was announced are tried again.
const RECOVERY_RETRY: Duration = Duration::from_millis(500);
/// How many times per keepalive interval the task looks for feeds due a
/// keepalive. Each feed ticks an interval after its own last tick, and
/// feeds started together start apart, so ticks spread over the interval
/// instead of every feed ticking at once (at 10,000 clients over 1,000
/// auctions, a tick to every socket at once held events back by up to
/// 120 ms at p99).
const KEEPALIVE_CHECKS: u32 = 64;

/// A request to the subscriber task: start watching an auction.
pub(crate) struct Watch {
    pub(crate) auction: AuctionId,
    pub(crate) feed: Arc<Feed>,
}

/// The subscriber task's view of one watched auction.
pub(crate) struct Cursor {
    feed: Arc<Feed>,
    /// The newest event published to the feed. Only meaningful once live.
    last: EventId,
    /// That event as it was encoded: the next one's alternative frame may
    /// be chained to it ([`Codec::event_frames`]).
    previous: Option<Arc<EncodedEvent>>,
    idle_since: Option<Instant>,
    /// When the feed last sent a keepalive tick (for its first, a made-up
    /// time that staggers it; see `KEEPALIVE_CHECKS`).
    ticked_at: Instant,
}

/// The subscriber task: what it works with, and its view of each feed.
pub(crate) struct Subscriber<C: Codec> {
    pub(crate) feeds: Arc<Feeds>,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) codec: Arc<C>,
    pub(crate) config: HubConfig,
    pub(crate) replays: Arc<Replays>,
    /// Whether the live connection is up (part of readiness).
    pub(crate) connected: Arc<AtomicBool>,
    /// Where the live connection comes from.
    pub(crate) live: Arc<dyn LiveSource>,
    pub(crate) requests: mpsc::Receiver<Watch>,
    /// Watched auctions found missing by the audit task.
    pub(crate) vanished: mpsc::Receiver<Vec<AuctionId>>,
    pub(crate) reconnects: Counter,
    /// Watched auctions subscribed again (see [`LiveCounters`](crate::LiveCounters)).
    pub(crate) resubscribes: Counter,
    pub(crate) shutdown: CancellationToken,
    pub(crate) cursors: HashMap<AuctionId, Cursor>,
    /// Feeds watched so far, ever: staggers their first keepalives.
    pub(crate) watched: u32,
    /// Auctions announced subscribed (on a cluster) whose feeds could not
    /// be brought in line with their streams yet (their primary did not
    /// answer the reads): tried again every `RECOVERY_RETRY`, their
    /// notices ignored meanwhile (the stream has them).
    pub(crate) unrecovered: HashSet<AuctionId>,
}

/// Why the pump stopped.
enum Stop {
    Shutdown,
    Lost(String),
}

impl<C: Codec> Subscriber<C> {
    pub(crate) async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        let mut connected_before = false;
        loop {
            let connect = timed(self.live.open());
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
                    self.connected.store(true, Ordering::Relaxed);
                    tracing::info!(feeds = self.cursors.len(), "subscribed to Redis pub/sub");
                    self.pump(&mut connection).await
                }
                Err(error) => Stop::Lost(error),
            };
            self.connected.store(false, Ordering::Relaxed);
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
    async fn resume(&mut self, connection: &mut Box<dyn LiveFeed>) -> Result<(), String> {
        // Every watched auction is recovered here or announced again.
        self.unrecovered.clear();
        let watched: Vec<AuctionId> = self.cursors.keys().cloned().collect();
        let mut subscribed = Vec::new();
        for batch in watched.chunks(WATCH_BATCH) {
            if timed(connection.watch(batch)).await? == Watching::Now {
                subscribed.extend_from_slice(batch);
            }
        }
        self.recover(connection, &subscribed).await
    }

    /// Brings the feeds of auctions just subscribed in line with their
    /// streams: live ones catch up, the others go live.
    async fn recover(
        &mut self,
        connection: &mut Box<dyn LiveFeed>,
        auctions: &[AuctionId],
    ) -> Result<(), String> {
        // A live feed was subscribed before: this is it again.
        let again = auctions
            .iter()
            .filter(|auction| self.cursors.get(*auction).is_some_and(|c| c.feed.is_live()))
            .count();
        self.resubscribes.inc_by(again as u64);
        self.bring_in_line(connection, auctions).await
    }

    /// [`recover`](Self::recover) of subscriptions a cluster's node task
    /// announced: a failure is theirs alone (their primary did not answer
    /// the reads, or the command connection has not learnt the new slot
    /// map yet), so the auctions are tried again shortly instead of the
    /// whole live connection starting over, which would pause every
    /// other shard's auctions too.
    async fn recover_announced(
        &mut self,
        connection: &mut Box<dyn LiveFeed>,
        auctions: Vec<AuctionId>,
    ) -> Result<(), String> {
        for auction in &auctions {
            self.unrecovered.remove(auction);
        }
        if let Err(error) = self.recover(connection, &auctions).await {
            tracing::warn!(%error, auctions = auctions.len(), "cannot bring feeds in line with their streams yet; trying again");
            self.unrecovered.extend(auctions);
        }
        Ok(())
    }

    /// Tries again the feeds [`recover_announced`](Self::recover_announced)
    /// could not bring in line.
    async fn retry_unrecovered(
        &mut self,
        connection: &mut Box<dyn LiveFeed>,
    ) -> Result<(), String> {
        if self.unrecovered.is_empty() {
            return Ok(());
        }
        let auctions: Vec<AuctionId> = self.unrecovered.drain().collect();
        if let Err(error) = self.bring_in_line(connection, &auctions).await {
            tracing::debug!(%error, auctions = auctions.len(), "feeds still not in line with their streams");
            self.unrecovered.extend(auctions);
        }
        Ok(())
    }

    async fn bring_in_line(
        &mut self,
        connection: &mut Box<dyn LiveFeed>,
        auctions: &[AuctionId],
    ) -> Result<(), String> {
        let (mut live, mut waiting) = (Vec::new(), Vec::new());
        for auction in auctions {
            match self.cursors.get(auction) {
                Some(cursor) if cursor.feed.is_live() => live.push(auction.clone()),
                Some(_) => waiting.push(auction.clone()),
                None => {} // stopped watching meanwhile
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
        connection: &mut Box<dyn LiveFeed>,
        auctions: &[AuctionId],
    ) -> Result<(), String> {
        let windows = timed(self.store.windows(auctions)).await?;
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
        cursor.feed.recent().follow_from(newest);
        self.replays.forget(auction);
        cursor.feed.send(Item::Reset);
        cursor.last = newest;
    }

    /// The auction no longer exists: its clients get a last word and the
    /// feed ends, so a client that comes back is told 404.
    async fn vanished(
        &mut self,
        connection: &mut Box<dyn LiveFeed>,
        auction: &AuctionId,
    ) -> Result<(), String> {
        let Some(cursor) = self.cursors.remove(auction) else {
            return Ok(());
        };
        tracing::info!(%auction, "the auction no longer exists; ending its feed");
        cursor.feed.recent().clear();
        self.replays.forget(auction);
        cursor.feed.send(Item::Gone);
        self.feeds.remove(auction);
        timed(connection.unwatch(auction)).await
    }

    async fn pump(&mut self, connection: &mut Box<dyn LiveFeed>) -> Stop {
        let config = self.config.clone();
        let mut keepalive = tokio::time::interval(keepalive_check(config.keepalive));
        keepalive.reset();
        let mut sweep = tokio::time::interval(config.sweep_interval());
        let mut ping = tokio::time::interval(Duration::from_secs(1));
        let mut retry = tokio::time::interval(RECOVERY_RETRY);
        retry.reset();
        loop {
            let result = tokio::select! {
                _ = self.shutdown.cancelled() => return Stop::Shutdown,
                message = connection.next() => match message {
                    Some(message) => self.on_message(connection, message).await,
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
                _ = retry.tick() => self.retry_unrecovered(connection).await,
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
        connection: &mut Box<dyn LiveFeed>,
        requests: Vec<Watch>,
    ) -> Result<(), String> {
        let mut auctions = Vec::with_capacity(requests.len());
        let now = Instant::now();
        let check = keepalive_check(self.config.keepalive);
        for request in requests {
            // Feeds started together (a restart) stay apart: each is a
            // different number of checks into its first interval.
            let stagger = check * (self.watched % KEEPALIVE_CHECKS);
            self.watched = self.watched.wrapping_add(1);
            auctions.push(request.auction.clone());
            self.cursors.insert(
                request.auction,
                Cursor {
                    feed: request.feed,
                    last: EventId::ZERO,
                    previous: None,
                    idle_since: None,
                    ticked_at: now.checked_sub(stagger).unwrap_or(now),
                },
            );
        }
        match timed(connection.watch(&auctions)).await? {
            Watching::Now => self.go_live(&auctions).await,
            // Each goes live once its subscription is announced.
            Watching::Later => Ok(()),
        }
    }

    async fn go_live(&mut self, auctions: &[AuctionId]) -> Result<(), String> {
        let windows = timed(self.store.windows(auctions)).await?;
        for (auction, window) in auctions.iter().zip(windows) {
            if let Some(cursor) = self.cursors.get_mut(auction) {
                cursor.last = window.last.unwrap_or(EventId::ZERO);
                cursor.feed.recent().follow_from(cursor.last);
                cursor.feed.go_live();
            }
        }
        Ok(())
    }

    async fn on_message(
        &mut self,
        connection: &mut Box<dyn LiveFeed>,
        message: LiveMessage,
    ) -> Result<(), String> {
        let (auction, event) = match message {
            LiveMessage::Event { auction, event } => (auction, event),
            // Subscribed (first, or again after its cluster node was
            // away): notices sent before may be missing.
            LiveMessage::Subscribed { auctions } => {
                return self.recover_announced(connection, auctions).await;
            }
            LiveMessage::Malformed { channel } => {
                tracing::warn!(%channel, "ignoring a malformed notice");
                return Ok(());
            }
        };
        if self.unrecovered.contains(&auction) {
            return Ok(()); // its recovery reads the stream
        }
        let Some(cursor) = self.cursors.get_mut(&auction) else {
            return Ok(()); // an auction we stopped watching
        };
        if !cursor.feed.is_live() {
            return Ok(()); // not started yet: going live reads the stream
        }
        match chain(cursor.last, event.id, event.prev) {
            Chain::Next => {
                publish(&*self.codec, &self.config, &auction, cursor, &event);
                Ok(())
            }
            Chain::Published => Ok(()),
            Chain::Gap => {
                tracing::debug!(%auction, last = %cursor.last, prev = %event.prev, "gap in notices; backfilling");
                self.backfill(&auction).await
            }
            // Never dropped silently: the feed starts over from what the
            // stream holds now.
            Chain::Foreign => {
                let window = timed(self.store.windows(std::slice::from_ref(&auction))).await?;
                let newest = window.first().and_then(|w| w.last).unwrap_or(event.id);
                self.restart_feed(&auction, newest);
                Ok(())
            }
        }
    }

    /// Publishes everything the stream holds after the feed's last event.
    async fn backfill(&mut self, auction: &AuctionId) -> Result<(), String> {
        loop {
            let Some(after) = self.cursors.get(auction).map(|c| c.last) else {
                return Ok(());
            };
            let batch = timed(self.store.read_after(auction, after, BACKFILL_BATCH)).await?;
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
                    cursor.feed.recent().clear();
                    cursor.feed.send(Item::Reset);
                }
                publish(&*self.codec, &self.config, auction, cursor, event);
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
        if self.codec.keepalive().is_none() {
            return;
        }
        let interval = self.config.keepalive;
        let check = keepalive_check(interval);
        let now = Instant::now();
        for cursor in self.cursors.values_mut() {
            if now.duration_since(cursor.ticked_at) + check > interval {
                cursor.feed.send(Item::Tick);
                cursor.ticked_at = now;
            }
        }
    }

    /// Stops watching auctions that have had no clients for a while.
    async fn sweep(&mut self, connection: &mut Box<dyn LiveFeed>) -> Result<(), String> {
        let now = Instant::now();
        let ttl = self.config.idle_feed_ttl;
        let mut expired = Vec::new();
        for (auction, cursor) in self.cursors.iter_mut() {
            if cursor.feed.clients() > 0 {
                cursor.idle_since = None;
            } else if now.duration_since(*cursor.idle_since.get_or_insert(now)) >= ttl {
                expired.push(auction.clone());
            }
        }
        for auction in expired {
            // Checked again under the map's lock: clients join under it.
            if self.feeds.sweep(&auction) && self.cursors.remove(&auction).is_some() {
                timed(connection.unwatch(&auction)).await?;
            }
        }
        Ok(())
    }
}

/// Encodes the event once, records it in the feed's recent run and sends
/// it to every client of the feed.
fn publish<C: Codec>(
    codec: &C,
    config: &HubConfig,
    auction: &AuctionId,
    cursor: &mut Cursor,
    event: &Event,
) {
    if event.id <= cursor.last {
        return;
    }
    // The bid's trace continues here: one span per event per replica (not
    // per client), only for events that carry a trace context.
    let span = event.traceparent.as_deref().map(|traceparent| {
        let span = tracing::info_span!(
            "fanout.publish",
            otel.kind = "consumer",
            auction = %auction,
            event_id = %event.id,
            clients = cursor.feed.clients(),
        );
        telemetry::continue_and_link(&span, traceparent);
        span
    });
    let _entered = span.as_ref().map(tracing::Span::enter);
    let wants_alt = cursor.feed.wants_alt();
    let (mut frame, alt) =
        codec.event_frames(auction, event, cursor.previous.as_deref(), wants_alt);
    if let Some(keepalive) = codec.keepalive() {
        let now = Instant::now();
        if carries_keepalive(now.duration_since(cursor.ticked_at), config.keepalive) {
            frame = [keepalive, frame].concat().into();
            cursor.ticked_at = now;
        }
    }
    let encoded = Arc::new(EncodedEvent {
        id: event.id,
        placed_at_ms: event.placed_at_ms,
        frame,
        alt,
    });
    // Recorded before it is sent: a client joins the ring first and reads
    // the recent events after, so every event is in one or both (the
    // client drops ids it has sent already).
    cursor.feed.recent().push(event.prev, encoded.clone());
    cursor.feed.send(Item::Event(encoded.clone()));
    cursor.last = event.id;
    cursor.previous = Some(encoded);
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

/// How often the hub looks for feeds due a keepalive.
fn keepalive_check(interval: Duration) -> Duration {
    (interval / KEEPALIVE_CHECKS).max(Duration::from_millis(1))
}
