//! One parked client: its socket, how far it was sent, and what it takes
//! back with it.

use crate::codec::{AltWindow, EncodedEvent, Frame, Item};
use crate::sync::{Mutex, lock};
use crate::writer::{self, FrameSocket};
use auction_domain::EventId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use std::task::Waker;
use telemetry::TransportMetrics;
use tokio::sync::broadcast;

/// One parked client: its socket and how far it has been sent.
pub(super) struct Lane {
    socket: Arc<dyn FrameSocket>,
    delivered: Counter,
    latency: Histogram,
    /// `auction_direct_clients`: one while this lane is claimed.
    pub(super) parked: Gauge,
    /// The client asked for events' alternative frames
    /// ([`EncodedEvent::alt`]: a compressed WebSocket): its socket's
    /// window, which chooses them.
    alt: Option<Arc<AltWindow>>,
    /// Touched by whoever writes the lane while it is parked, by the
    /// client once it is handed back; the lock only makes the hand-over
    /// visible (and keeps a group writer's write whole against it).
    pub(super) state: Mutex<LaneState>,
}

pub(super) struct LaneState {
    /// The newest event id the client was sent, or is being sent (events
    /// at or below it are skipped: the client's replay had them).
    pub(super) last_sent: EventId,
    /// The event the socket took only part of; set, the lane is written
    /// no more and waits to be handed back.
    pub(super) pending: Option<Pending>,
    /// The socket failed; set, the lane waits to be handed back.
    pub(super) closed: bool,
    /// Set when the socket is handed back (boxed: a parked lane stays
    /// small, and this is set once).
    pub(super) returned: Option<Box<Returned>>,
    /// Set as the lane leaves the feed's hands, in the same hold of this
    /// lock that reads what its `Returned` says was sent (invariant 4):
    /// whoever still holds a copy of the lane (a group writer's round took
    /// its list before the client took the socket back) writes it no more.
    pub(super) left: bool,
    /// The client's task, woken when the socket is handed back.
    pub(super) waker: Option<Waker>,
}

impl LaneState {
    /// Whether the lane can be written no more (it waits to be handed
    /// back, or was).
    pub(super) fn stuck(&self) -> bool {
        self.pending.is_some() || self.closed || self.gone()
    }

    /// Whether the lane left the feed's hands: not the feed's to write.
    pub(super) fn gone(&self) -> bool {
        self.left || self.returned.is_some()
    }
}

/// What a client gets back with its socket.
pub(crate) struct Returned {
    /// A receiver on the feed that gets every item after the ones the hub
    /// dealt with; `None`: the feed ended.
    pub(crate) feed: Option<broadcast::Receiver<Item>>,
    /// The feed's count of items sent when `feed` was attached (the
    /// client's new position).
    pub(crate) taken: u64,
    /// The newest event id the client was sent, or is being sent.
    pub(crate) last_sent: EventId,
    /// An event the socket took only part of: the client writes the rest.
    pub(crate) pending: Option<Pending>,
    /// Events sent to the feed and not written to this socket (after
    /// `last_sent`, oldest first; some may reach `feed` too: the client
    /// drops ids it has sent). `None`: the feed's recent run no longer
    /// holds them; the client must resume from `last_sent`.
    pub(crate) missed: Option<Vec<Arc<EncodedEvent>>>,
    /// The socket failed: the client ends.
    pub(crate) closed: bool,
    /// The lane's group writer fell a whole ring behind its feed: the
    /// client is as slow as one lapped reading the ring itself.
    pub(crate) lagged: bool,
}

/// The rest of a frame the socket took only part of, for the client to
/// write.
pub(crate) struct Pending {
    pub(crate) frame: Frame,
    /// Bytes of `frame` the socket took already.
    pub(crate) written: usize,
    /// The event's `placed_at`, for the latency once it is written;
    /// `None`: not an event (a keepalive), not counted as a delivery.
    pub(crate) placed_at_ms: Option<u64>,
}

/// What became of a frame that is no event, written to a lane.
pub(super) enum Other {
    Whole,
    /// Not written whole: the lane is stuck (the frame's rest may be
    /// pending) and must be handed back.
    Stuck,
    /// The lane was handed or taken back before: nothing was written.
    HandedBack,
}

impl Lane {
    pub(super) fn new(
        socket: Arc<dyn FrameSocket>,
        last_sent: EventId,
        alt: Option<Arc<AltWindow>>,
        metrics: &TransportMetrics,
    ) -> Lane {
        let lane = Lane {
            socket,
            alt,
            delivered: metrics.events_delivered.clone(),
            latency: metrics.delivery_latency.clone(),
            parked: metrics.direct_clients.clone(),
            state: Mutex::new(LaneState {
                last_sent,
                pending: None,
                closed: false,
                returned: None,
                left: false,
                waker: None,
            }),
        };
        lane.parked.inc();
        lane
    }

    /// Hands the socket back to its client with `returned`, and wakes the
    /// client's task.
    pub(super) fn hand_back(&self, returned: Returned) {
        let waker = {
            let mut state = lock(&self.state);
            state.returned = Some(Box::new(returned));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Writes the events (`frames` are theirs, in order; `alts` their
    /// alternative frames as a run, [`alt_run`](crate::codec::alt_run), for a lane that
    /// asked for them) the client was not sent yet, in one try, without
    /// waiting. `false`: the lane can be written no more (an event is
    /// pending, or the socket failed) and must be handed back.
    pub(super) fn write(
        &self,
        events: &[Arc<EncodedEvent>],
        frames: &[Frame],
        alts: &[Frame],
        now_ms: u64,
    ) -> bool {
        let mut state = lock(&self.state);
        if state.gone() {
            return true; // handed or taken back meanwhile: not ours to write
        }
        if state.stuck() {
            return false;
        }
        let start = events.partition_point(|event| event.id <= state.last_sent);
        let events = &events[start..];
        let Some(newest) = events.last() else {
            return true;
        };
        // The run's first alternative frame assumes the socket was last
        // sent the message it refers to, and its others that it takes
        // chained frames: when either is not so, this socket's frames are
        // chosen one by one.
        let own: Vec<Frame>;
        let window_before = self.alt.as_ref().map(|window| window.last());
        let frames = match &self.alt {
            None => &frames[start..],
            Some(window) => {
                let run = &alts[start..];
                if window.chains() && window.choice(&events[0]).as_ptr() == run[0].as_ptr() {
                    run
                } else {
                    own = events
                        .iter()
                        .map(|event| window.frame(event).clone())
                        .collect();
                    &own[..]
                }
            }
        };
        let written = match writer::try_write_all(&*self.socket, frames) {
            Ok(writer::Tried::All) => {
                state.last_sent = newest.id;
                events.len()
            }
            Ok(writer::Tried::Part(mut written)) => {
                // The event the socket stopped in is pending; the ones
                // after it were not sent.
                let mut whole = 0;
                while written >= frames[whole].len() {
                    written -= frames[whole].len();
                    whole += 1;
                }
                let cut = &events[whole];
                state.last_sent = cut.id;
                state.pending = Some(Pending {
                    frame: frames[whole].clone(),
                    written,
                    placed_at_ms: Some(cut.placed_at_ms),
                });
                whole
            }
            Err(_) => {
                state.closed = true;
                0
            }
        };
        // The socket's last alternative message is the last one written
        // (a pending one's is as good as written: the client finishes it).
        if let (Some(window), Some(before)) = (&self.alt, window_before) {
            let chosen = if state.pending.is_some() {
                written + 1
            } else {
                written
            };
            let last = events[..chosen]
                .iter()
                .rev()
                .find_map(|event| event.alt.as_ref());
            window.wrote(last.map_or(before, |alt| alt.key));
        }
        if written > 0 {
            let placed_at = events[..written].iter().map(|event| event.placed_at_ms);
            writer::count_delivered(&self.delivered, &self.latency, now_ms, placed_at);
        }
        !state.stuck()
    }

    /// Writes the keepalive frame in one try, without waiting; `false` as
    /// for [`Lane::write`] (a keepalive the socket took part of is pending
    /// like an event, and counted as none).
    pub(super) fn write_keepalive(&self, frame: &Frame) -> bool {
        !matches!(self.write_other(frame), Other::Stuck)
    }

    /// Writes a frame that is no event in one try, without waiting, if
    /// the lane is still parked and can be written. A frame the socket
    /// took part of is pending like an event (and counted as none).
    pub(super) fn write_other(&self, frame: &Frame) -> Other {
        let mut state = lock(&self.state);
        if state.gone() {
            return Other::HandedBack;
        }
        if state.stuck() {
            return Other::Stuck;
        }
        match writer::try_write_all(&*self.socket, std::slice::from_ref(frame)) {
            Ok(writer::Tried::All) => return Other::Whole,
            Ok(writer::Tried::Part(written)) => {
                state.pending = Some(Pending {
                    frame: frame.clone(),
                    written,
                    placed_at_ms: None,
                });
            }
            Err(_) => state.closed = true,
        }
        Other::Stuck
    }
}
