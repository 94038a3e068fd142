//! One client's delivery protocol, written once for both transports.
//!
//! A client (an SSE stream, or one auction of a WebSocket) joins its
//! auction's feed and starts from an `init` or a replay (the resume rules
//! of [`session`](crate::session)); then it receives the feed live. What a
//! client is sent, when it is cut off and what is counted is decided here
//! and nowhere else:
//!
//! - a gap at any point of a replay (the stream trimmed the next event
//!   while the client caught up) restarts the client's view with an `init`
//!   with `reset: true`, counted as a reset resume;
//! - live events at or below the last id sent are dropped (they reached
//!   the client in its replay);
//! - a client lapped by its feed, or whose socket accepts nothing for the
//!   stall limit (`AUCTION_CLIENT_STALL_MS`), is slow: it is cut off and
//!   counted once;
//! - a feed reset (the replica lost events, or the stream was replaced)
//!   ends the client, which resumes from its last id;
//! - an auction that stops existing gets a last `gone` message to each of
//!   its clients, then their view of it ends;
//! - `auction_events_delivered_total` counts every event frame written to
//!   a client, replayed or live; `auction_delivery_latency_seconds`
//!   observes live events, from the event's own time to the write.
//!
//! An edge supplies its framing (a [`Codec`]) and its socket
//! ([`Transport`]); its own job is what only it knows: the request, the
//! response head, and how an ending is told to its clients.

use crate::codec::{AltWindow, Codec, EncodedEvent, Frame, Framing, Item};
use crate::feed::{AltClient, Parked, Position};
use crate::hub::Hub;
use crate::session::{self, CatchUpError, OpenError, Opening, Resume, Start};
use crate::viewers::Viewer;
use crate::writer::{self, FrameSocket, Tried, WriteError};
use auction_domain::{AuctionId, EventId, clock};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use telemetry::TransportMetrics;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

/// Most frames one write carries.
pub const MAX_BATCH: usize = writer::MAX_SLICES;
/// How long a new client waits for its auction's feed to go live.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// Why a client's delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The replica lost events it could not recover: the client must
    /// resume from its last id (here or on another replica).
    Reset,
    /// Lapped by its feed, or its socket stayed full for the stall limit
    /// (already counted in `auction_slow_consumer_disconnects_total`).
    Slow,
    /// The socket failed, the peer left, or the replica is draining.
    Closed,
    /// The auction no longer exists. Its last word is in the batch: flush
    /// it, then end this client's view of the auction.
    Gone,
}

/// Why a started client got no live subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// Redis did not answer during the replay: nothing more was sent for
    /// this auction; the client retries from its last id.
    Unavailable,
    Ended(Ended),
}

impl From<Ended> for StartError {
    fn from(ended: Ended) -> Self {
        StartError::Ended(ended)
    }
}

/// An edge's connection, as the client layer writes frames to it.
pub trait Transport: Send {
    /// What the frames are written to (the edges' `TcpStream`).
    type Socket: FrameSocket;

    /// The connection event frames are written to, as shared bytes.
    fn socket(&self) -> &Self::Socket;

    /// Runs before every write of the client layer: a transport that
    /// writes frames of its own through a buffer (WebSocket control frames)
    /// flushes them here, so frames never interleave.
    fn before_write(&mut self) -> impl Future<Output = Result<(), Ended>> + Send {
        async { Ok(()) }
    }
}

/// One client's live view of one auction.
#[derive(Debug)]
pub struct Subscription {
    auction: AuctionId,
    /// The newest event id this client was sent (or its `init` reflects).
    last_sent: EventId,
    /// The client's feed (where it parks its socket when it is caught up)
    /// and how far it is behind it.
    position: Position,
    /// A live event was taken since the client started or last took its
    /// socket back. Only such a client parks: on a quiet feed a parked
    /// socket saves nothing, costs a lane and is handed back at every
    /// keepalive and viewer count.
    moving: bool,
    /// The client is written events' alternative frames
    /// ([`EncodedEvent::alt`]), parked or not, as its batch says: its
    /// socket's window.
    alt: Option<Arc<AltWindow>>,
    /// Counts the client among its feed's that asked for alternative
    /// frames, while the subscription lives.
    _alt_client: Option<AltClient>,
    /// Counts the client's address among the auction's viewers while the
    /// subscription lives.
    _viewer: Viewer,
}

impl Subscription {
    pub fn auction(&self) -> &AuctionId {
        &self.auction
    }

    pub fn last_sent(&self) -> EventId {
        self.last_sent
    }

    /// Whether the feed has sent a whole ring of items this client has not
    /// taken: it cannot keep up.
    pub fn lapped(&self) -> bool {
        self.position.lapped()
    }
}

/// Frames taken from the feeds, waiting for one write.
#[derive(Default)]
pub struct Batch {
    frames: Vec<Frame>,
    /// `placed_at` of each event among `frames` (0: unknown), for the
    /// metrics once they are written.
    events: Vec<u64>,
    /// How this client's events are written, if not as the shared frame.
    framing: Option<Box<dyn Framing>>,
    /// Events are written as their alternative frames
    /// ([`EncodedEvent::alt`]), where they have one, as this socket's
    /// window chooses.
    alt: Option<Arc<AltWindow>>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("frames", &self.frames.len())
            .field("framed", &self.framing.is_some())
            .finish()
    }
}

impl Batch {
    /// A batch whose events `framing` writes.
    pub fn framed(framing: Box<dyn Framing>) -> Batch {
        Batch {
            framing: Some(framing),
            ..Batch::default()
        }
    }

    /// A batch whose events are written as their alternative frames
    /// ([`EncodedEvent::alt`], shared like the plain ones: a WebSocket
    /// that negotiated compression), where they have one, as `window` (the
    /// socket's) chooses. Its client is parked like any other: the feed
    /// writes it the same frames.
    pub fn alt(window: Arc<AltWindow>) -> Batch {
        Batch {
            alt: Some(window),
            ..Batch::default()
        }
    }

    /// Whether events are written as their alternative frames.
    pub fn is_alt(&self) -> bool {
        self.alt.is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether one write carries no more.
    pub fn is_full(&self) -> bool {
        self.frames.len() >= MAX_BATCH
    }

    /// Whether events are written by a [`Framing`] of the client's own
    /// (such a client is never parked: the feed writes shared frames).
    pub fn is_framed(&self) -> bool {
        self.framing.is_some()
    }

    fn push_event(&mut self, auction: &AuctionId, event: &EncodedEvent) {
        let frame = match &self.alt {
            Some(window) => window.frame(event),
            None => &event.frame,
        };
        self.push_frame(auction, event.id, frame);
        self.events.push(event.placed_at_ms);
    }

    /// Pushes the frame of `auction`'s event (or init) `id`, framed.
    fn push_frame(&mut self, auction: &AuctionId, id: EventId, frame: &Frame) {
        match &mut self.framing {
            Some(framing) => framing.frame(auction, id, frame, &mut self.frames),
            None => self.frames.push(frame.clone()),
        }
    }
}

/// The delivery protocol of one edge: its hub, its metrics, its drain.
pub struct Delivery<C: Codec> {
    hub: Hub<C>,
    metrics: TransportMetrics,
    /// A client whose socket accepts nothing for this long is slow.
    stall_limit: Duration,
    shutdown: CancellationToken,
}

impl<C: Codec> Delivery<C> {
    pub fn new(
        hub: Hub<C>,
        metrics: TransportMetrics,
        stall_limit: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Delivery {
            hub,
            metrics,
            stall_limit,
            shutdown,
        }
    }

    /// How long a client's socket may accept nothing before it is slow.
    pub fn stall_limit(&self) -> Duration {
        self.stall_limit
    }

    pub fn hub(&self) -> &Hub<C> {
        &self.hub
    }

    pub fn metrics(&self) -> &TransportMetrics {
        &self.metrics
    }

    /// Cancelled when the replica drains.
    pub(crate) fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Joins the auction's feed and decides how the client starts. Nothing
    /// is written yet: on an error the edge refuses the client its own way.
    /// `address` is the client's (its key for the per-address cap): the
    /// auction's viewers count each address once.
    pub async fn open(
        &self,
        auction: &AuctionId,
        resume: Resume,
        address: IpAddr,
    ) -> Result<Opening, OpenError> {
        let opened = session::open(
            &self.hub,
            auction,
            resume,
            address,
            JOIN_WAIT,
            &self.metrics.replay_reads_shared,
        )
        .await;
        if opened
            .as_ref()
            .is_err_and(|error| *error == OpenError::OutOfMemory)
        {
            self.metrics.redis_out_of_memory.inc();
        }
        opened
    }

    /// Writes bytes of the transport's own ahead of the protocol (SSE's
    /// response head), under the same deadline and stall policy.
    pub async fn write_head<T: Transport>(
        &self,
        transport: &mut T,
        head: Frame,
    ) -> Result<(), Ended> {
        self.write(transport, &[head], || false).await
    }

    /// Writes the client's start (its `init`, or the events after its
    /// resume id) and returns its live subscription with the feed's
    /// receiver, which the edge polls and hands to [`take`](Self::take).
    pub async fn start<T: Transport>(
        &self,
        transport: &mut T,
        opening: Opening,
    ) -> Result<(Subscription, broadcast::Receiver<Item>), StartError> {
        self.start_framed(transport, opening, &mut Batch::default())
            .await
    }

    /// [`start`](Self::start), written through `batch` (empty; its
    /// [`Framing`], if any, writes each frame).
    pub async fn start_framed<T: Transport>(
        &self,
        transport: &mut T,
        opening: Opening,
        batch: &mut Batch,
    ) -> Result<(Subscription, broadcast::Receiver<Item>), StartError> {
        let Opening {
            auction,
            rx,
            position,
            start,
            viewers,
            viewer,
        } = opening;
        let alt_client = batch
            .alt
            .as_ref()
            .map(|_| AltClient::new(position.feed().clone()));
        let mut subscription = Subscription {
            auction,
            last_sent: EventId::ZERO,
            position,
            moving: false,
            alt: batch.alt.clone(),
            _alt_client: alt_client,
            _viewer: viewer,
        };
        match start {
            Start::Init { frame, last, reset } => {
                if reset {
                    self.metrics.resumes_reset.inc();
                }
                batch.push_frame(&subscription.auction, last, &frame);
                self.write_out(transport, batch, &subscription).await?;
                subscription.last_sent = last;
            }
            Start::Replay(mut catch_up) => {
                let mut events = Vec::new();
                loop {
                    events.clear();
                    let shared = &self.metrics.replay_reads_shared;
                    match catch_up.next_batch(&self.hub, &mut events, shared).await {
                        Ok(more) => {
                            for (id, frame) in &events {
                                batch.push_frame(&subscription.auction, *id, frame);
                            }
                            self.write_out(transport, batch, &subscription).await?;
                            self.metrics.events_delivered.inc_by(events.len() as u64);
                            subscription.last_sent = catch_up.last();
                            if !more {
                                self.metrics.resumes_replayed.inc();
                                break;
                            }
                        }
                        Err(CatchUpError::Gap) => {
                            let (frame, last) =
                                session::init_frame(&self.hub, &subscription.auction, true)
                                    .await
                                    .map_err(|_| StartError::Unavailable)?;
                            self.metrics.resumes_reset.inc();
                            batch.push_frame(&subscription.auction, last, &frame);
                            self.write_out(transport, batch, &subscription).await?;
                            subscription.last_sent = last;
                            break;
                        }
                        Err(CatchUpError::Unavailable) => return Err(StartError::Unavailable),
                    }
                }
            }
        }
        if viewers > 0 {
            let frame = self.hub.codec().viewers(&subscription.auction, viewers);
            self.write(transport, &[frame], || subscription.lapped())
                .await?;
        }
        Ok((subscription, rx))
    }

    /// Writes a start's frames in `batch` and empties it (its events are
    /// counted by the caller: they are replays, not live deliveries).
    async fn write_out<T: Transport>(
        &self,
        transport: &mut T,
        batch: &mut Batch,
        subscription: &Subscription,
    ) -> Result<(), Ended> {
        let written = self
            .write(transport, &batch.frames, || subscription.lapped())
            .await;
        batch.frames.clear();
        batch.events.clear();
        written
    }

    /// Takes one item of the subscription's feed into `batch`.
    pub fn take(
        &self,
        subscription: &mut Subscription,
        item: Result<Item, RecvError>,
        batch: &mut Batch,
    ) -> Result<(), Ended> {
        match item {
            Ok(item) => {
                subscription.position.took_one();
                match item {
                    Item::Event(event) => {
                        subscription.moving = true;
                        if event.id > subscription.last_sent {
                            subscription.last_sent = event.id;
                            batch.push_event(&subscription.auction, &event);
                        }
                        Ok(())
                    }
                    Item::Tick => {
                        batch.frames.extend(self.hub.codec().keepalive());
                        Ok(())
                    }
                    Item::Reset => Err(Ended::Reset),
                    Item::Viewers(count) => {
                        let frame = self.hub.codec().viewers(&subscription.auction, count);
                        batch.frames.push(frame);
                        Ok(())
                    }
                    Item::Gone => {
                        batch
                            .frames
                            .push(self.hub.codec().gone(&subscription.auction));
                        Err(Ended::Gone)
                    }
                }
            }
            Err(RecvError::Lagged(_)) => {
                self.metrics.slow_consumer_disconnects.inc();
                Err(Ended::Slow)
            }
            // The hub dropped the feed: as good as a reset.
            Err(RecvError::Closed) => Err(Ended::Reset),
        }
    }

    /// Hands a caught-up client's socket to the feed, whose events are
    /// then written to it directly (see `feed`) until it is handed back
    /// ([`Parked::handed_back`]) or the client takes it back
    /// ([`unpark`](Self::unpark)), which it must do before anything else
    /// touches the socket. `caught_up()` tells whether the client's
    /// receiver holds nothing unread; it is asked under the feed's lock,
    /// and when it says yes the client is parked: it must drop its
    /// receiver right there, under that lock, so that the feed never
    /// counts it twice (a parked lane and a receiver) among its clients.
    /// `None`: not parked (not caught up, or no live event taken since
    /// it last took its socket back); go on reading the receiver.
    pub fn park<S: FrameSocket>(
        &self,
        subscription: &Subscription,
        socket: &Arc<S>,
        caught_up: impl FnOnce() -> bool,
    ) -> Option<Parked> {
        // Also asked of the feed's own count (exact, see
        // `Position`): a client behind by it has items waiting,
        // whatever its receiver says.
        if !subscription.moving {
            return None;
        }
        let position = &subscription.position;
        let caught_up = || position.behind() == 0 && caught_up();
        position.feed().park(
            socket.clone(),
            subscription.last_sent,
            subscription.alt.clone(),
            &self.metrics,
            caught_up,
        )
    }

    /// Takes a parked socket back: the subscription learns what was
    /// written meanwhile, an event the socket took only part of is
    /// finished (under the stall limit), the events a group writer had not
    /// written yet are written, and the receiver to read from now on is
    /// returned. Nothing of the transport's own is written first: a frame
    /// may be half written.
    pub async fn unpark<T: Transport>(
        &self,
        transport: &mut T,
        subscription: &mut Subscription,
        parked: Parked,
    ) -> Result<broadcast::Receiver<Item>, Ended> {
        let returned = parked.take_back();
        subscription.moving = false;
        subscription.last_sent = returned.last_sent;
        subscription.position.rejoined(returned.taken);
        if returned.closed {
            return Err(Ended::Closed);
        }
        // Its group writer fell a ring behind: as slow as a client lapped
        // reading the ring itself, and counted the same.
        if returned.lagged {
            return Err(self.ended(WriteError::Slow));
        }
        // The hub dropped the feed: as good as a reset.
        let feed = returned.feed.ok_or(Ended::Reset)?;
        if let Some(pending) = returned.pending {
            let frames = [pending.frame];
            let lapped = || subscription.lapped();
            let written = writer::write_rest(
                transport.socket(),
                &frames,
                pending.written,
                lapped,
                self.stall_limit,
                &self.shutdown,
            );
            Box::pin(written).await.map_err(|error| self.ended(error))?;
            if let Some(placed_at) = pending.placed_at_ms {
                self.count_delivered(&[placed_at]);
            }
        }
        // What a group writer had not written yet; without it, the client
        // resumes from its last id (here or elsewhere), as after a reset.
        let mut batch = Batch {
            alt: subscription.alt.clone(),
            ..Batch::default()
        };
        for event in returned.missed.ok_or(Ended::Reset)? {
            if event.id > subscription.last_sent {
                subscription.last_sent = event.id;
                batch.push_event(&subscription.auction, &event);
            }
        }
        self.flush(transport, &mut batch, || subscription.lapped())
            .await?;
        Ok(feed)
    }

    /// Writes the batch and counts what it delivered. `lapped` tells
    /// whether any of the client's subscriptions is lapped meanwhile.
    pub async fn flush<T: Transport>(
        &self,
        transport: &mut T,
        batch: &mut Batch,
        lapped: impl Fn() -> bool,
    ) -> Result<(), Ended> {
        if batch.frames.is_empty() {
            return Ok(());
        }
        self.write(transport, &batch.frames, lapped).await?;
        batch.frames.clear();
        self.count_delivered(&batch.events);
        batch.events.clear();
        Ok(())
    }

    /// Counts live events written now, by their `placed_at` (0: unknown).
    fn count_delivered(&self, placed_at: &[u64]) {
        writer::count_delivered(
            &self.metrics.events_delivered,
            &self.metrics.delivery_latency,
            clock::now_ms(),
            placed_at.iter().copied(),
        );
    }

    /// A failed write as the client's ending (a slow one is counted).
    fn ended(&self, error: WriteError) -> Ended {
        match error {
            WriteError::Slow => {
                self.metrics.slow_consumer_disconnects.inc();
                Ended::Slow
            }
            WriteError::Closed => Ended::Closed,
        }
    }

    /// An `async` block rather than an `async fn`, which would keep each
    /// argument twice: this future is part of every client's task.
    #[allow(clippy::manual_async_fn)]
    fn write<'a, T: Transport>(
        &'a self,
        transport: &'a mut T,
        frames: &'a [Frame],
        lapped: impl Fn() -> bool + 'a,
    ) -> impl Future<Output = Result<(), Ended>> + 'a {
        async move {
            transport.before_write().await?;
            let socket = transport.socket();
            let written = match writer::try_write_all(socket, frames) {
                Ok(Tried::All) => Ok(()),
                Ok(Tried::Part(written)) => {
                    let rest = writer::write_rest(
                        socket,
                        frames,
                        written,
                        lapped,
                        self.stall_limit,
                        &self.shutdown,
                    );
                    Box::pin(rest).await
                }
                Err(error) => Err(error),
            };
            written.map_err(|error| self.ended(error))
        }
    }
}
