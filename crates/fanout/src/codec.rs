//! What a feed carries: events encoded once per replica for a transport,
//! and the transport's encoding (its [`Codec`]).

use auction_domain::{AuctionId, Event, EventId};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// How a transport encodes what it sends. Implementations are pure and
/// cheap to call; the hub calls [`Codec::event`] once per event per replica.
pub trait Codec: Send + Sync + 'static {
    /// A live or replayed event.
    fn event(&self, auction: &AuctionId, event: &Event) -> Frame;

    /// The event's frame, and a second encoding of it for the clients that
    /// asked for one (WebSocket: compressed), if the transport has one.
    /// Both are shared by every client of the feed: see
    /// [`EncodedEvent::alt`]. `alt`: a client of the feed asked for the
    /// second encoding now (none is wanted otherwise). `previous` is the
    /// event the feed sent just before, as it was encoded: an alternative
    /// frame may be chained to its alternative message ([`Alt::chained`]).
    fn event_frames(
        &self,
        auction: &AuctionId,
        event: &Event,
        previous: Option<&EncodedEvent>,
        alt: bool,
    ) -> (Frame, Option<Alt>) {
        let _ = (previous, alt);
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
    /// it (a WebSocket that negotiated compression): encoded once or twice
    /// per event, shared like `frame`, never once per client. `None`:
    /// every client gets `frame`.
    pub alt: Option<Alt<F>>,
}

/// An event's alternative message (WebSocket: compressed), in the one or
/// two frames it is written as. Which one a socket gets is
/// [`AltWindow::frame`]'s to say.
#[derive(Debug)]
pub struct Alt<F = Frame> {
    /// Names this message among every alternative message of the replica
    /// (never 0): what a socket's [`AltWindow`] remembers.
    pub key: u64,
    /// The message's frame on its own: right on any socket.
    pub alone: F,
    /// A smaller frame that refers to the alternative message keyed by the
    /// first value (the feed's previous event's), right only on a socket
    /// whose last alternative message was that one: a compressed message
    /// that refers back into the one before it, which the client still
    /// holds (permessage-deflate with context takeover on the server's
    /// side). Shared too: every socket that was sent that previous message
    /// last gets the same bytes.
    pub chained: Option<(u64, F)>,
}

/// Which alternative message a socket was written last, so that its next
/// event gets the frame chained to it when that is right. One per socket
/// that asked for alternative frames, shared by whatever writes the socket
/// (the client's task, or its feed while it is parked: they never write it
/// at once, and hand it over under the lane's lock).
///
/// Invariant: `last` is the key of the last alternative message whose
/// frame was chosen for the socket, and every frame chosen is written, in
/// the order chosen, or the socket fails. Relaxed atomics are enough:
/// whoever writes the socket took it over from the last writer through a
/// lock or a task's hand-over, which orders their accesses. Plain frames
/// (replays, `init`, replies) leave it as it is: they are not alternative
/// messages (a compressed socket's plain messages never enter its
/// compression window).
#[derive(Debug)]
pub struct AltWindow {
    last: AtomicU64,
    /// Chained frames may be written (the client keeps its window: it did
    /// not ask for `server_no_context_takeover`).
    chains: bool,
}

impl AltWindow {
    /// A socket's window; `chains`: whether it may be written chained
    /// frames.
    pub fn new(chains: bool) -> AltWindow {
        AltWindow {
            last: AtomicU64::new(0),
            chains,
        }
    }

    /// The frame of `event` to write next on this socket, remembered as
    /// written (see [`AltWindow::choice`]).
    pub fn frame<'a, F>(&self, event: &'a EncodedEvent<F>) -> &'a F {
        let frame = self.choice(event);
        if let Some(alt) = &event.alt {
            self.wrote(alt.key);
        }
        frame
    }

    /// The frame of `event` right for this socket now: its chained
    /// alternative frame if the socket's last alternative message is the
    /// one it refers to, else its alternative frame alone, else (it has
    /// none) its plain frame.
    pub fn choice<'a, F>(&self, event: &'a EncodedEvent<F>) -> &'a F {
        // Keys are never 0: a socket that takes no chained frames is
        // treated as one whose last message is none of them.
        event.frame_after(Some(if self.chains { self.last() } else { 0 }))
    }

    /// Remembers `key` as the socket's last alternative message (0: none):
    /// the frames chosen through [`AltWindow::choice`] up to that
    /// message's were written.
    pub fn wrote(&self, key: u64) {
        self.last.store(key, Ordering::Relaxed);
    }

    /// The key of the socket's last alternative message (0: none yet).
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// Whether the socket may be written chained frames.
    pub fn chains(&self) -> bool {
        self.chains
    }
}

/// The alternative frames of a run of events written one after the other
/// to every socket of a group: each event's chained frame where it refers
/// to the event before it in the run, else its frame alone (the plain one
/// for an event without). The first event's is its chained frame, if it
/// has one: right for a socket that was sent the feed's event before it
/// last, which [`AltWindow::choice`] checks for each socket.
pub(crate) fn alt_run<'a>(
    previous: Option<&'a EncodedEvent>,
    event: &'a EncodedEvent,
) -> &'a Frame {
    event.frame_after(previous.map(|previous| previous.alt.as_ref().map_or(0, |alt| alt.key)))
}

impl<F> EncodedEvent<F> {
    /// The event's frame for a socket whose last alternative message is
    /// keyed `last` (0: none of them; `None`: the one its chained frame
    /// refers to, whichever that is): its chained alternative frame if
    /// that is the one it refers to, else its alternative frame alone,
    /// else (it has none) its plain frame.
    fn frame_after(&self, last: Option<u64>) -> &F {
        let Some(alt) = &self.alt else {
            return &self.frame;
        };
        match &alt.chained {
            Some((after, chained)) if last.is_none_or(|last| last == *after) => chained,
            _ => &alt.alone,
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
