//! What a feed carries: events encoded once per replica for a transport,
//! and the transport's encoding (its [`Codec`]).

use auction_domain::{AuctionId, Event, EventId};
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// How a transport encodes what it sends. Implementations are pure and
/// cheap to call; the hub calls [`Codec::event`] once per event per replica.
pub trait Codec: Send + Sync + 'static {
    /// A live or replayed event.
    fn event(&self, auction: &AuctionId, event: &Event) -> Frame;

    /// The event's frame, and a second encoding of it for the clients that
    /// asked for one (WebSocket: compressed), if the transport has one.
    /// Both are shared by every client of the feed: see
    /// [`EncodedEvent::alt`].
    fn event_frames(&self, auction: &AuctionId, event: &Event) -> (Frame, Option<Frame>) {
        (self.event(auction, event), None)
    }

    /// The first message of a fresh or reset view. `init_json` is the
    /// contract's `{"auction","history","reset"}`; `last` is the id of the
    /// newest event it reflects (`0-0` for none).
    fn init(&self, auction: &AuctionId, last: EventId, init_json: &str) -> Frame;

    /// The last word to a client of an auction that no longer exists.
    fn gone(&self, auction: &AuctionId) -> Frame;

    /// How many clients watch the auction, over all replicas.
    fn viewers(&self, auction: &AuctionId, count: u32) -> Frame;

    /// What a client is sent when its feed's keepalive interval elapses,
    /// if anything (SSE: a comment line, so proxies keep the stream open).
    fn keepalive(&self) -> Option<Frame> {
        None
    }
}

/// How one client's events are written, where its transport needs more
/// than the shared frame: an SSE stream of several auctions closes each
/// event with an id of its own, which resumes every auction in it.
pub trait Framing: Send + Sync {
    /// Pushes to `out` what to write for `frame`, the shared frame of
    /// `auction`'s event `id` (or of its `init`, which reflects `id`).
    fn frame(&mut self, auction: &AuctionId, id: EventId, frame: &Frame, out: &mut Vec<Frame>);
}

/// Encoded bytes, shared by every client that is sent them (a reference
/// count, not a copy).
pub type Frame = bytes::Bytes;

/// An event encoded once for a transport.
#[derive(Debug)]
pub struct EncodedEvent<F = Frame> {
    pub id: EventId,
    /// When the event was appended (Unix ms, Redis's clock); 0 if unknown.
    pub placed_at_ms: u64,
    pub frame: F,
    /// The same event encoded another way, for the clients that asked for
    /// it (a WebSocket that negotiated compression): one more encoding per
    /// event, shared like `frame`, never one per client. `None`: every
    /// client gets `frame`.
    pub alt: Option<F>,
}

impl<F> EncodedEvent<F> {
    /// The frame a client gets: the alternative one if it asked for it
    /// (`alt`) and there is one.
    pub fn frame_for(&self, alt: bool) -> &F {
        match (&self.alt, alt) {
            (Some(frame), true) => frame,
            _ => &self.frame,
        }
    }
}

/// What a feed carries to each client of an auction.
///
/// Small on purpose: every feed's ring holds `AUCTION_CLIENT_QUEUE` of
/// these from the moment it exists, so an event is one pointer here (a
/// ring slot of a replica watching 10,000 quiet auctions costs 40 bytes,
/// not 88).
#[derive(Clone, Debug)]
pub enum Item {
    /// An event, shared by every client of the feed and its recent run.
    Event(Arc<EncodedEvent>),
    /// The keepalive interval elapsed.
    Tick,
    /// The replica lost events it could not recover from the stream: the
    /// client must reconnect and resume from its last id.
    Reset,
    /// The auction no longer exists (expired, or Redis lost it): the feed
    /// ends after this.
    Gone,
    /// The auction's viewers over all replicas changed to this.
    Viewers(u32),
}

/// The next item a feed's receiver holds, without waiting, as `recv` would
/// give it; `None`: nothing is waiting.
pub fn try_take(rx: &mut broadcast::Receiver<Item>) -> Option<Result<Item, RecvError>> {
    match rx.try_recv() {
        Ok(item) => Some(Ok(item)),
        Err(TryRecvError::Empty) => None,
        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
    }
}
