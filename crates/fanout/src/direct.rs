//! Direct delivery: a caught-up client hands its socket to the feed, whose
//! events are then written to it without waking the client's task; the
//! client's task sleeps until the socket is handed back or it needs it.
//!
//! Why: where each event goes out alone (a few clients per auction, or
//! clients that keep up with a slow feed), the write is a few microseconds
//! and waking each client's task for it (a thread switch, a poll of its
//! wait points, a broadcast receive) costs nearly as much again. A parked
//! client costs the write and nothing else.
//!
//! Who writes a parked socket:
//! - the first [`MAX_PARKED`] clients of a feed: the hub, from the task
//!   that received the notice, in line (no wake-up at all);
//! - the clients beyond them: a group writer per [`GROUP_LANES`] clients,
//!   a task of its own reading the feed's ring like one client and writing
//!   what it took to each of its sockets, several events in one write when
//!   they pile up. One wake-up per group per event instead of one per
//!   client, and a big feed's writes still spread over every worker.
//!
//! A socket is handed back, with a receiver on the feed placed so that the
//! client misses nothing, when:
//! - an event does not fit in the socket: the client finishes writing it
//!   (under the stall limit, as any write) and goes on from the receiver;
//! - the socket fails: the client ends;
//! - the feed carries anything but an event or a keepalive tick (a viewer
//!   count, a reset, a gone auction): lanes are handed back first, and the
//!   item reaches the client through its new receiver;
//! - a group writer falls a whole ring behind, or the feed ends.
//!
//! A keepalive tick is written to parked sockets as events are (the
//! transport's keepalive frame, if it has one), not handed back: handing
//! back every parked socket at each tick woke every client's task (at
//! 10,000 clients over 1,000 auctions with a tick every 2 s, p99 latency
//! went from 1.2 ms without ticks to 55-69 ms, and CPU per delivery up
//! 30%; written here, with the ticks spread over the interval by the hub,
//! 7 ms; BENCHMARKS.md).
//!
//! A client's own frame (a WebSocket ping) is written the same way, by the
//! client between the feed's writes, under the lane's lock
//! ([`Parked::write_own`]): the socket stays parked.
//!
//! A group writer may be behind its feed when its lane is handed back: the
//! events sent and not yet written to that socket come back with it
//! (`Returned::missed`, from the feed's recent run), for the client to
//! write before its receiver.

use crate::client;
use crate::feed::{EncodedEvent, Frame, Item, try_take};
use crate::hub::lock;
use crate::recent::Recent;
use crate::writer::{self, Tried};
use auction_domain::EventId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;
use telemetry::TransportMetrics;
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most clients of one feed the hub writes to itself. Each costs the hub a
/// write per event (about 5 µs), done in line with every other feed's
/// notices: bounded so that a notice never waits long behind another.
pub(crate) const MAX_PARKED: usize = 16;

/// Most clients one group writer serves: a big feed's writes are split
/// into tasks of this many sockets, which the runtime spreads over its
/// workers (about 0.3 ms of writes per event each).
pub(crate) const GROUP_LANES: usize = 64;

/// Least time between the starts of two rounds of a busy group writer
/// (one whose last round carried more than one event). A writer that keeps
/// up writes each event as soon as it is sent; one that fell behind lets
/// the events of a gap share one write per socket, each delayed at most
/// the gap, until it keeps up again. Why: a writer that always wrote at
/// once gave up, at full speed, the batching that clients' own tasks got
/// by waking late (2.3 events a write instead of about 5; 1.19 against
/// 0.82 µs of edge CPU per delivery); a gap for every round cost latency
/// at 200 events/s (p99 8 ms against 5), where events come singly; at
/// 2 ms the full-speed run settled with every event written alone again.
/// Measured at 1,000 clients in `BENCHMARKS.md`.
const MIN_ROUND_GAP: Duration = Duration::from_millis(4);

/// The send side of one feed: its broadcast ring and the clients parked on
/// it.
///
/// Invariant: every item is sent to the feed under `lanes`' lock, and a
/// client parks under it only while its receiver holds nothing unread. So
/// a parked client misses nothing: each event sent while it is parked is
/// written to its socket, or is in its group writer's receiver, or its
/// lane is handed back with that event pending or missed; and before any
/// other item is sent, every lane is handed back with a receiver that gets
/// that item.
pub(crate) struct Parking {
    /// The feed's ring, to give a returning client a receiver. Weak: the
    /// ring closes when the hub drops the feed, whoever is parked.
    tx: broadcast::WeakSender<Item>,
    /// Items sent to the feed, ever (see `FeedPosition`).
    sent: Arc<AtomicU64>,
    /// The feed's recent events: what a group writer had not written yet
    /// when its lane was handed back.
    recent: Arc<Mutex<Recent<Frame>>>,
    /// The transport's keepalive frame (`None`: it sends none), written
    /// to parked sockets at each tick.
    keepalive: Option<Frame>,
    lanes: Mutex<Lanes>,
}

/// The feed's parked clients, by who writes them.
#[derive(Default)]
struct Lanes {
    /// Written by the hub as each event is sent (at most `MAX_PARKED`).
    hub: Vec<Arc<Lane>>,
    /// Written by their group writers (each at most `GROUP_LANES`). A
    /// group leaves this list when its last lane does, and its writer ends.
    groups: Vec<Group>,
    next_group: u64,
    /// Group writers still holding a receiver on the feed: not clients,
    /// so not counted as such (changed under this lock, as is the
    /// receiver's drop).
    writers: usize,
    /// The newest event sent to the feed: a lane sent it misses nothing.
    newest: EventId,
}

struct Group {
    id: u64,
    lanes: Vec<Arc<Lane>>,
    /// Cancelled as the group leaves the list: its writer ends.
    done: CancellationToken,
}

/// Who will write a client being parked.
enum Place {
    Hub,
    /// The group at this index in `Lanes::groups`, which has room.
    Group(usize),
    /// A new group, whose writer reads this receiver.
    NewGroup(broadcast::Receiver<Item>),
}

/// One parked client: its socket and how far it has been sent.
struct Lane {
    socket: Arc<TcpStream>,
    delivered: Counter,
    latency: Histogram,
    /// `auction_direct_clients`: one while this lane is claimed.
    parked: Gauge,
    /// Touched by whoever writes the lane while it is parked, by the
    /// client once it is handed back; the lock only makes the hand-over
    /// visible (and keeps a group writer's write whole against it).
    state: Mutex<LaneState>,
}

struct LaneState {
    /// The newest event id the client was sent, or is being sent (events
    /// at or below it are skipped: the client's replay had them).
    last_sent: EventId,
    /// The event the socket took only part of; set, the lane is written
    /// no more and waits to be handed back.
    pending: Option<Pending>,
    /// The socket failed; set, the lane waits to be handed back.
    closed: bool,
    /// Set when the socket is handed back (boxed: a parked lane stays
    /// small, and this is set once).
    returned: Option<Box<Returned>>,
    /// Set as the lane leaves the feed's hands, in the same hold of this
    /// lock that reads what its `Returned` says was sent: whoever still
    /// holds a copy of the lane (a group writer's round took its list
    /// before the client took the socket back) writes it no more, so the
    /// client, which goes on from `Returned`, never sends an event twice
    /// nor writes the socket beside another writer.
    left: bool,
    /// The client's task, woken when the socket is handed back.
    waker: Option<Waker>,
}

impl LaneState {
    /// Whether the lane can be written no more (it waits to be handed
    /// back, or was).
    fn stuck(&self) -> bool {
        self.pending.is_some() || self.closed || self.gone()
    }

    /// Whether the lane left the feed's hands: not the feed's to write.
    fn gone(&self) -> bool {
        self.left || self.returned.is_some()
    }
}

/// What a client gets back with its socket.
pub(crate) struct Returned {
    /// A receiver on the feed that gets every item after the ones the hub
    /// dealt with; `None`: the feed ended (the hub dropped it).
    pub(crate) feed: Option<broadcast::Receiver<Item>>,
    /// The feed's count of items sent when `feed` was attached (the
    /// client's new `FeedPosition`).
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
}

/// The rest of an event's frame, for the client to write.
pub(crate) struct Pending {
    pub(crate) frame: Frame,
    /// Bytes of `frame` the socket took already.
    pub(crate) written: usize,
    /// The event's `placed_at`, for the latency once it is written;
    /// `None`: not an event (a keepalive), not counted as a delivery.
    pub(crate) placed_at_ms: Option<u64>,
}

impl std::fmt::Debug for Parking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parking")
            .field("parked", &self.parked())
            .finish()
    }
}

impl Lanes {
    fn parked(&self) -> usize {
        self.hub.len() + self.groups.iter().map(|g| g.lanes.len()).sum::<usize>()
    }

    /// Takes the group out of the list (its writer ends) and returns its
    /// lanes.
    fn disband(&mut self, index: usize) -> Vec<Arc<Lane>> {
        let group = self.groups.swap_remove(index);
        group.done.cancel();
        group.lanes
    }
}

impl Parking {
    pub(crate) fn new(
        tx: &broadcast::Sender<Item>,
        sent: Arc<AtomicU64>,
        recent: Arc<Mutex<Recent<Frame>>>,
        keepalive: Option<Frame>,
    ) -> Parking {
        Parking {
            tx: tx.downgrade(),
            sent,
            recent,
            keepalive,
            lanes: Mutex::new(Lanes::default()),
        }
    }

    /// How many clients are parked (they hold no receiver: count them
    /// with the receivers).
    pub(crate) fn parked(&self) -> usize {
        lock(&self.lanes).parked()
    }

    /// Clients of the feed: those reading its ring (`tx`'s receivers, but
    /// for the group writers') and those parked, which hold no receiver.
    pub(crate) fn clients(&self, tx: &broadcast::Sender<Item>) -> usize {
        let lanes = lock(&self.lanes);
        tx.receiver_count().saturating_sub(lanes.writers) + lanes.parked()
    }

    /// A new receiver on the feed, and the count of items sent before it
    /// (it gets every item after them): both under the lock every item is
    /// sent under, so the count is exact (see `FeedPosition`).
    pub(crate) fn subscribe(
        &self,
        tx: &broadcast::Sender<Item>,
    ) -> (broadcast::Receiver<Item>, u64) {
        let _lanes = lock(&self.lanes);
        (tx.subscribe(), self.sent.load(Ordering::Relaxed))
    }

    /// Items sent to the feed, ever (see `FeedPosition`).
    pub(crate) fn sent(&self) -> &Arc<AtomicU64> {
        &self.sent
    }

    /// Sends one item to every client of the feed: into the ring for the
    /// clients reading it and the group writers, and straight to the
    /// sockets the hub writes.
    pub(crate) fn send(&self, tx: &broadcast::Sender<Item>, item: Item) {
        let mut lanes = lock(&self.lanes);
        match &item {
            Item::Event(event) => {
                let event = event.clone();
                let _ = tx.send(item);
                let taken = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
                lanes.newest = event.id;
                if lanes.hub.is_empty() {
                    return;
                }
                let now = auction_domain::clock::now_ms();
                let events = std::slice::from_ref(&event);
                let frames = std::slice::from_ref(&event.frame);
                self.write_hub_lanes(&mut lanes, tx, taken, |lane| {
                    lane.write(events, frames, now)
                });
            }
            // Written where the sockets are (group writers take it from
            // the ring), like an event.
            Item::Tick => {
                let _ = tx.send(item);
                let taken = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(frame) = &self.keepalive {
                    self.write_hub_lanes(&mut lanes, tx, taken, |lane| lane.write_keepalive(frame));
                }
            }
            // Handed back first, with receivers that get this item.
            Item::Reset | Item::Gone | Item::Viewers(_) => {
                let taken = self.sent.load(Ordering::Relaxed);
                let mut returning = std::mem::take(&mut lanes.hub);
                while !lanes.groups.is_empty() {
                    returning.extend(lanes.disband(0));
                }
                for lane in returning {
                    self.hand_back(&lanes, &lane, Some(tx.subscribe()), taken);
                }
                // No receivers is fine: the feed may be idle, waiting to be
                // swept.
                let _ = tx.send(item);
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Writes each lane the hub writes with `write`, just after the feed
    /// sent its `taken`-th item, and hands back those the write left stuck
    /// (called under the feed's lock): their pending write holds the rest
    /// of that item, and their receiver starts after it.
    fn write_hub_lanes(
        &self,
        lanes: &mut Lanes,
        tx: &broadcast::Sender<Item>,
        taken: u64,
        write: impl Fn(&Lane) -> bool,
    ) {
        let mut hub = std::mem::take(&mut lanes.hub);
        hub.retain(|lane| {
            if write(lane) {
                return true;
            }
            self.hand_back(lanes, lane, Some(tx.subscribe()), taken);
            false
        });
        lanes.hub = hub;
    }

    /// Parks a client whose receiver holds nothing unread, as
    /// `caught_up()` (asked under the feed's lock) tells: parked exactly
    /// when it says yes. `None`: not parked (not caught up, or the feed
    /// ended). Bounded by the clients themselves: one lane per client,
    /// one group per `GROUP_LANES`.
    pub(crate) fn park(
        self: &Arc<Self>,
        socket: &Arc<TcpStream>,
        last_sent: EventId,
        metrics: &TransportMetrics,
        caught_up: impl FnOnce() -> bool,
    ) -> Option<Parked> {
        let mut lanes = lock(&self.lanes);
        // Where the lane goes, decided first: once `caught_up()` says yes
        // the client has given up its receiver, and must be parked.
        let place = if lanes.hub.len() < MAX_PARKED {
            Place::Hub
        } else if let Some(index) = lanes
            .groups
            .iter()
            .position(|group| group.lanes.len() < GROUP_LANES)
        {
            Place::Group(index)
        } else {
            // Attached now, under the lock: it gets every item sent after
            // this client is found caught up.
            Place::NewGroup(self.tx.upgrade()?.subscribe())
        };
        if !caught_up() {
            return None;
        }
        let lane = Arc::new(Lane {
            socket: socket.clone(),
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
        });
        match place {
            Place::Hub => lanes.hub.push(lane.clone()),
            Place::Group(index) => lanes.groups[index].lanes.push(lane.clone()),
            Place::NewGroup(rx) => {
                let id = lanes.next_group;
                lanes.next_group += 1;
                lanes.writers += 1;
                let done = CancellationToken::new();
                lanes.groups.push(Group {
                    id,
                    lanes: vec![lane.clone()],
                    done: done.clone(),
                });
                tokio::spawn(write_group(self.clone(), id, rx, done));
            }
        }
        lane.parked.inc();
        Some(Parked {
            parking: self.clone(),
            lane,
        })
    }

    /// What a lane leaving the feed's hands takes with it. Called under
    /// the feed's lock (`lanes`), with the lane already out of the list.
    fn returned(
        &self,
        lanes: &Lanes,
        lane: &Lane,
        feed: Option<broadcast::Receiver<Item>>,
        taken: u64,
    ) -> Returned {
        let (last_sent, pending, closed) = {
            let mut state = lock(&lane.state);
            state.left = true;
            (state.last_sent, state.pending.take(), state.closed)
        };
        let missed = if closed || last_sent >= lanes.newest {
            Some(Vec::new())
        } else {
            lock(&self.recent).after(last_sent)
        };
        Returned {
            feed,
            taken,
            last_sent,
            pending,
            missed,
            closed,
        }
    }

    /// Gives the socket back to its client and wakes it. Called under the
    /// feed's lock, with the lane already out of the list.
    fn hand_back(
        &self,
        lanes: &Lanes,
        lane: &Lane,
        feed: Option<broadcast::Receiver<Item>>,
        taken: u64,
    ) {
        let returned = self.returned(lanes, lane, feed, taken);
        let waker = {
            let mut state = lock(&lane.state);
            state.returned = Some(Box::new(returned));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Copies the group's lanes into `into`; `false`: the group is gone.
    fn group_lanes(&self, id: u64, into: &mut Vec<Arc<Lane>>) -> bool {
        let lanes = lock(&self.lanes);
        match lanes.groups.iter().find(|group| group.id == id) {
            Some(group) => {
                into.extend(group.lanes.iter().cloned());
                true
            }
            None => false,
        }
    }

    /// Hands back the group's lanes that can be written no more (all of
    /// them when `all`), and disbands the group once it has none.
    fn hand_back_from_group(&self, id: u64, all: bool) {
        let mut lanes = lock(&self.lanes);
        let Some(index) = lanes.groups.iter().position(|group| group.id == id) else {
            return;
        };
        let group = &mut lanes.groups[index];
        let mut returning = Vec::new();
        group.lanes.retain(|lane| {
            let stays = !all && !lock(&lane.state).stuck();
            if !stays {
                returning.push(lane.clone());
            }
            stays
        });
        if group.lanes.is_empty() {
            lanes.disband(index);
        }
        let tx = self.tx.upgrade();
        let taken = self.sent.load(Ordering::Relaxed);
        for lane in returning {
            self.hand_back(&lanes, &lane, tx.as_ref().map(|tx| tx.subscribe()), taken);
        }
    }

    /// A group writer ends: its receiver goes, under the lock that counts
    /// it (see `Lanes::writers`).
    fn writer_ended(&self, rx: broadcast::Receiver<Item>) {
        let mut lanes = lock(&self.lanes);
        drop(rx);
        lanes.writers -= 1;
    }
}

/// A group writer: takes the feed's events like one client (several at
/// once when they pile up) and writes them to each of its group's
/// sockets. Ends when its group is disbanded (the last lane left), when it
/// falls a whole ring behind or when the feed ends (handing every lane
/// back first).
async fn write_group(
    parking: Arc<Parking>,
    id: u64,
    mut rx: broadcast::Receiver<Item>,
    done: CancellationToken,
) {
    let mut events: Vec<Arc<EncodedEvent>> = Vec::with_capacity(writer::MAX_SLICES);
    let mut frames: Vec<Frame> = Vec::with_capacity(writer::MAX_SLICES);
    let mut lanes: Vec<Arc<Lane>> = Vec::with_capacity(GROUP_LANES);
    let mut last_round = Instant::now();
    // The last round carried more than one event: see `MIN_ROUND_GAP`.
    let mut busy = false;
    // A keepalive tick was taken this round.
    let mut tick = false;
    'taking: loop {
        let mut next = tokio::select! {
            biased;
            _ = done.cancelled() => break,
            item = rx.recv() => item,
        };
        let due = last_round + MIN_ROUND_GAP;
        if busy && Instant::now() < due {
            tokio::select! {
                biased;
                _ = done.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        last_round = Instant::now();
        loop {
            match next {
                Ok(Item::Event(event)) => {
                    frames.push(event.frame.clone());
                    events.push(event);
                }
                // Ends the round, written after its events, so each
                // socket gets what the feed sent in order (a lane parked
                // after the tick was sent gets one keepalive more:
                // harmless).
                Ok(Item::Tick) if parking.keepalive.is_some() => {
                    tick = true;
                    break;
                }
                // Sent after every lane of the time was handed back: the
                // lanes parked since were caught up with it.
                Ok(_) => {}
                Err(RecvError::Lagged(_) | RecvError::Closed) => {
                    parking.hand_back_from_group(id, true);
                    break 'taking;
                }
            }
            if events.len() >= writer::MAX_SLICES {
                break;
            }
            next = match try_take(&mut rx) {
                Some(item) => item,
                None => break,
            };
        }
        busy = events.len() > 1;
        if events.is_empty() && !tick {
            continue;
        }
        if !parking.group_lanes(id, &mut lanes) {
            break;
        }
        let now = auction_domain::clock::now_ms();
        let mut stuck = false;
        for lane in &lanes {
            if !events.is_empty() {
                stuck |= !lane.write(&events, &frames, now);
            }
            if let (true, Some(frame)) = (tick, &parking.keepalive) {
                stuck |= !lane.write_keepalive(frame);
            }
        }
        if stuck {
            parking.hand_back_from_group(id, false);
        }
        events.clear();
        frames.clear();
        lanes.clear();
        tick = false;
    }
    parking.writer_ended(rx);
}

impl Lane {
    /// Writes the events (`frames` are theirs, in order) the client was
    /// not sent yet, in one try, without waiting. `false`: the lane can
    /// be written no more (an event is pending, or the socket failed) and
    /// must be handed back.
    fn write(&self, events: &[Arc<EncodedEvent>], frames: &[Frame], now_ms: u64) -> bool {
        let mut state = lock(&self.state);
        if state.gone() {
            return true; // handed or taken back meanwhile: not ours to write
        }
        if state.stuck() {
            return false;
        }
        let start = events.partition_point(|event| event.id <= state.last_sent);
        let (events, frames) = (&events[start..], &frames[start..]);
        let Some(newest) = events.last() else {
            return true;
        };
        let written = match writer::try_write_all(&self.socket, frames) {
            Ok(Tried::All) => {
                state.last_sent = newest.id;
                events.len()
            }
            Ok(Tried::Part(mut written)) => {
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
                    frame: cut.frame.clone(),
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
        if written > 0 {
            let placed_at = events[..written].iter().map(|event| event.placed_at_ms);
            client::count_delivered(&self.delivered, &self.latency, now_ms, placed_at);
        }
        !state.stuck()
    }

    /// Writes the keepalive frame in one try, without waiting; `false` as
    /// for [`Lane::write`] (a keepalive the socket took part of is pending
    /// like an event, and counted as none).
    fn write_keepalive(&self, frame: &Frame) -> bool {
        !matches!(self.write_other(frame), Other::Stuck)
    }

    /// Writes a frame that is no event in one try, without waiting, if
    /// the lane is still parked and can be written. A frame the socket
    /// took part of is pending like an event (and counted as none).
    fn write_other(&self, frame: &Frame) -> Other {
        let mut state = lock(&self.state);
        if state.gone() {
            return Other::HandedBack;
        }
        if state.stuck() {
            return Other::Stuck;
        }
        match writer::try_write_all(&self.socket, std::slice::from_ref(frame)) {
            Ok(Tried::All) => return Other::Whole,
            Ok(Tried::Part(written)) => {
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

/// What became of a frame that is no event, written to a lane.
enum Other {
    Whole,
    /// Not written whole: the lane is stuck (the frame's rest may be
    /// pending) and must be handed back.
    Stuck,
    /// The lane was handed or taken back before: nothing was written.
    HandedBack,
}

/// A client's claim on its parked socket. Dropping it takes the socket
/// back (nothing writes to it any more).
pub struct Parked {
    parking: Arc<Parking>,
    lane: Arc<Lane>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parked")
    }
}

impl Parked {
    /// Resolves once the socket has been handed back. Cancel-safe.
    pub fn handed_back(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut state = lock(&self.lane.state);
            if state.returned.is_some() {
                return Poll::Ready(());
            }
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }

    /// Writes a frame of the client's own (a WebSocket ping) to the parked
    /// socket, between the feed's writes, without taking the socket back.
    /// `false`: not written whole (the lane was handed back, is stuck, or
    /// the socket took only part of it); the client takes the socket back
    /// and sends its frame itself, after the part written, if any, which
    /// comes back pending (the peer then gets the frame twice over, one
    /// whole after the other, never a torn one).
    pub fn write_own(&self, frame: &Frame) -> bool {
        matches!(self.lane.write_other(frame), Other::Whole)
    }

    /// Takes this lane out of the feed's parked lanes (the caller holds
    /// their lock); `false`: it had been handed back already. A group
    /// left with no lane is disbanded.
    fn leave(&self, lanes: &mut Lanes) -> bool {
        let is_this = |lane: &Arc<Lane>| Arc::ptr_eq(lane, &self.lane);
        if let Some(index) = lanes.hub.iter().position(is_this) {
            lanes.hub.swap_remove(index);
            return true;
        }
        for index in 0..lanes.groups.len() {
            let group = &mut lanes.groups[index];
            if let Some(at) = group.lanes.iter().position(is_this) {
                group.lanes.swap_remove(at);
                if group.lanes.is_empty() {
                    lanes.disband(index);
                }
                return true;
            }
        }
        false
    }

    /// Takes the socket back: as it was handed back, or now (after the
    /// write that may be under way).
    pub(crate) fn take_back(self) -> Returned {
        {
            let mut lanes = lock(&self.parking.lanes);
            if self.leave(&mut lanes) {
                // Under the feed's lock: no item is sent between this
                // receiver's attaching and the count read.
                let feed = self.parking.tx.upgrade().map(|tx| tx.subscribe());
                let taken = self.parking.sent.load(Ordering::Relaxed);
                return self.parking.returned(&lanes, &self.lane, feed, taken);
            }
        }
        // Out of the list: it was handed back (under the same lock, so
        // `returned` is set).
        let mut state = lock(&self.lane.state);
        match state.returned.take() {
            Some(returned) => *returned,
            None => Returned {
                feed: None,
                taken: 0,
                last_sent: state.last_sent,
                pending: None,
                missed: None,
                closed: true,
            },
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.leave(&mut lock(&self.parking.lanes));
        // After a write under way, if any: then nothing writes it.
        lock(&self.lane.state).left = true;
        self.lane.parked.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (server side, client side).
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Arc::new(server), client)
    }

    fn id(n: u64) -> EventId {
        EventId::new(n, 0)
    }

    fn event(n: u64, frame: Bytes) -> Item {
        Item::Event(Arc::new(EncodedEvent {
            id: id(n),
            placed_at_ms: 0,
            frame,
        }))
    }

    /// A feed as the hub keeps one: its ring, its parked clients and its
    /// recent run (following from event 1).
    struct Feed {
        tx: broadcast::Sender<Item>,
        parking: Arc<Parking>,
        recent: Arc<Mutex<Recent<Frame>>>,
    }

    /// The keepalive frame of the tests' transport.
    const KEEPALIVE: &[u8] = b": keepalive\n\n";

    impl Feed {
        /// A feed of a transport that sends `KEEPALIVE` at each tick.
        fn new() -> Feed {
            Feed::with_keepalive(Some(Bytes::from_static(KEEPALIVE)))
        }

        fn with_keepalive(keepalive: Option<Bytes>) -> Feed {
            let (tx, _) = broadcast::channel(16);
            let recent = Arc::new(Mutex::new(Recent::new(16)));
            lock(&recent).follow_from(id(1));
            let sent = Arc::new(AtomicU64::new(0));
            let parking = Arc::new(Parking::new(&tx, sent, recent.clone(), keepalive));
            Feed {
                tx,
                parking,
                recent,
            }
        }

        /// Publishes event `n` (after `n - 1`) as the hub does: recorded,
        /// then sent.
        fn publish(&self, n: u64, frame: &'static [u8]) {
            self.publish_bytes(n, Bytes::from_static(frame));
        }

        fn publish_bytes(&self, n: u64, frame: Bytes) {
            let item = event(n, frame);
            if let Item::Event(encoded) = &item {
                lock(&self.recent).push(id(n - 1), encoded.clone());
            }
            self.parking.send(&self.tx, item);
        }

        /// Publishes event 2, far bigger than a loopback socket buffers
        /// while nobody reads, then a small event 3; returns event 2's
        /// frame.
        fn publish_more_than_a_socket_takes(&self) -> Bytes {
            let big = Bytes::from(vec![b'x'; 32 * 1024 * 1024]);
            self.publish_bytes(2, big.clone());
            self.publish(3, b"after\n");
            big
        }

        fn park(&self, socket: &Arc<TcpStream>, last: u64) -> Option<Parked> {
            self.parking.park(socket, id(last), &metrics(), || true)
        }

        /// Parks one client (last sent: event 1) with a group writer,
        /// behind `MAX_PARKED` others the hub writes; the second part keeps
        /// them and both ends of every socket alive.
        async fn park_in_a_group(&self) -> (Parked, impl Sized) {
            let hub_share = self.fill_the_hubs_share(1).await;
            let (server, client) = pair().await;
            (self.park(&server, 1).unwrap(), (hub_share, client))
        }

        /// Parks one client (last sent: event 1) with a group writer, and
        /// lists the group's lanes as a writer's round does before its
        /// writes: (the claim, the listed lanes, the socket's server and
        /// client ends, what keeps the others alive).
        async fn park_listed_in_a_group(
            &self,
        ) -> (
            Parked,
            Vec<Arc<Lane>>,
            Arc<TcpStream>,
            TcpStream,
            impl Sized,
        ) {
            let hub_share = self.fill_the_hubs_share(1).await;
            let (server, client) = pair().await;
            let parked = self.park(&server, 1).unwrap();
            let mut listed = Vec::new();
            assert!(self.parking.group_lanes(0, &mut listed));
            (parked, listed, server, client, hub_share)
        }

        /// Parks `MAX_PARKED` clients on one socket nobody reads: the
        /// clients parked after them go to group writers.
        async fn fill_the_hubs_share(&self, last: u64) -> (Vec<Parked>, TcpStream) {
            let (server, client) = pair().await;
            let claims = (0..MAX_PARKED)
                .map(|_| self.park(&server, last).unwrap())
                .collect();
            (claims, client)
        }
    }

    fn metrics() -> TransportMetrics {
        telemetry::Metrics::new().transport(telemetry::Transport::sse)
    }

    fn ids(events: &[Arc<EncodedEvent>]) -> Vec<u64> {
        events.iter().map(|event| event.id.ms).collect()
    }

    /// Writes event 2 to each lane, as a writer's round with that list
    /// would (each answers "not ours to write" or was written); returns
    /// its frame.
    fn write_event_two(lanes: &[Arc<Lane>]) -> Frame {
        let Item::Event(two) = event(2, Bytes::from_static(b"two\n")) else {
            unreachable!()
        };
        for lane in lanes {
            let frames = std::slice::from_ref(&two.frame);
            assert!(lane.write(std::slice::from_ref(&two), frames, 0));
        }
        two.frame.clone()
    }

    /// Waits (at most 5 s) for the socket to be handed back.
    async fn handed_back(parked: &Parked) {
        tokio::time::timeout(Duration::from_secs(5), parked.handed_back())
            .await
            .expect("the socket was handed back");
    }

    async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut bytes))
            .await
            .unwrap()
            .unwrap();
        bytes
    }

    #[tokio::test]
    async fn a_parked_client_is_written_every_new_event_and_skips_what_it_was_sent() {
        let feed = Feed::new();
        let (server, mut client) = pair().await;
        let parked = feed.park(&server, 2).unwrap();
        feed.publish(2, b"two\n");
        feed.publish(3, b"three\n");
        feed.publish(4, b"four\n");
        assert_eq!(read_exactly(&mut client, 11).await, b"three\nfour\n");
        assert_eq!(feed.parking.parked(), 1);
        let returned = parked.take_back();
        assert_eq!(returned.last_sent, id(4));
        assert_eq!(returned.taken, 3);
        assert!(returned.pending.is_none() && !returned.closed);
        assert_eq!(returned.missed.map(|m| m.len()), Some(0));
    }

    #[tokio::test]
    async fn anything_but_an_event_or_a_tick_hands_the_socket_back_with_a_receiver_that_gets_it() {
        let feed = Feed::new();
        let (server, _client) = pair().await;
        let parked = feed.park(&server, 1).unwrap();
        feed.parking.send(&feed.tx, Item::Viewers(7));
        handed_back(&parked).await;
        assert_eq!(feed.parking.parked(), 0);
        let returned = parked.take_back();
        assert_eq!(returned.taken, 0, "the count is still to be taken");
        let mut rx = returned.feed.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Item::Viewers(7))));
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_tick_writes_the_keepalive_to_every_parked_socket_and_hands_none_back() {
        let feed = Feed::new();
        let mut clients = Vec::new();
        // The hub's share and a group writer's.
        for _ in 0..MAX_PARKED + 2 {
            let (server, client) = pair().await;
            clients.push((feed.park(&server, 1).unwrap(), client));
        }
        feed.parking.send(&feed.tx, Item::Tick);
        feed.publish(2, b"two\n");
        for (parked, client) in &mut clients {
            let expected = [KEEPALIVE, b"two\n"].concat();
            assert_eq!(read_exactly(client, expected.len()).await, expected);
            let state = lock(&parked.lane.state);
            assert!(state.returned.is_none() && !state.stuck());
        }
        assert_eq!(feed.parking.parked(), MAX_PARKED + 2);
    }

    #[tokio::test]
    async fn a_tick_of_a_transport_without_keepalives_writes_nothing_and_hands_nothing_back() {
        let feed = Feed::with_keepalive(None);
        let (server, mut client) = pair().await;
        let parked = feed.park(&server, 1).unwrap();
        feed.parking.send(&feed.tx, Item::Tick);
        feed.publish(2, b"two\n");
        assert_eq!(read_exactly(&mut client, 4).await, b"two\n");
        assert_eq!(feed.parking.parked(), 1);
        let returned = parked.take_back();
        assert_eq!(returned.taken, 2, "the tick counts as an item sent");
        assert!(returned.pending.is_none());
    }

    #[tokio::test]
    async fn a_clients_own_frame_goes_between_the_feeds_events_and_it_stays_parked() {
        let feed = Feed::new();
        let mut clients = Vec::new();
        // One the hub writes, then others up to the hub's share, then one
        // a group writer writes.
        let (server, client) = pair().await;
        clients.push((feed.park(&server, 1).unwrap(), client));
        let (others, _their_client) = pair().await;
        let _others: Vec<_> = (1..MAX_PARKED)
            .map(|_| feed.park(&others, 1).unwrap())
            .collect();
        let (server, client) = pair().await;
        clients.push((feed.park(&server, 1).unwrap(), client));
        feed.publish(2, b"two\n");
        for (parked, client) in &mut clients {
            assert_eq!(read_exactly(client, 4).await, b"two\n");
            assert!(parked.write_own(&Bytes::from_static(b"ping\n")));
        }
        feed.publish(3, b"three\n");
        for (parked, client) in &mut clients {
            assert_eq!(read_exactly(client, 11).await, b"ping\nthree\n");
            assert!(lock(&parked.lane.state).returned.is_none());
        }
        assert_eq!(feed.parking.parked(), MAX_PARKED + 1);
    }

    #[tokio::test]
    async fn a_clients_own_frame_is_refused_once_the_socket_was_handed_back() {
        let feed = Feed::new();
        let (server, mut client) = pair().await;
        let parked = feed.park(&server, 1).unwrap();
        feed.parking.send(&feed.tx, Item::Viewers(7));
        handed_back(&parked).await;
        assert!(!parked.write_own(&Bytes::from_static(b"ping\n")));
        let mut byte = [0u8; 1];
        let nothing = tokio::time::timeout(Duration::from_millis(50), client.read(&mut byte));
        assert!(nothing.await.is_err(), "nothing was written");
    }

    #[tokio::test]
    async fn a_keepalive_the_socket_cannot_take_whole_comes_back_pending_and_is_no_event() {
        let big = Bytes::from(vec![b':'; 32 * 1024 * 1024]);
        let feed = Feed::with_keepalive(Some(big.clone()));
        let (server, _client) = pair().await;
        let parked = feed.park(&server, 1).unwrap();
        feed.parking.send(&feed.tx, Item::Tick);
        feed.publish(2, b"two\n");
        handed_back(&parked).await;
        let returned = parked.take_back();
        let pending = returned.pending.unwrap();
        assert!(pending.written < big.len());
        assert_eq!(pending.placed_at_ms, None, "not counted as a delivery");
        assert_eq!(returned.last_sent, id(1));
        assert_eq!(returned.taken, 1, "handed back after the tick");
        let mut rx = returned.feed.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Item::Event(e)) if e.id == id(2)));
    }

    #[tokio::test]
    async fn an_event_the_socket_cannot_take_whole_comes_back_pending_and_nothing_after_it_is_lost()
    {
        let feed = Feed::new();
        let (server, mut client) = pair().await;
        let parked = feed.park(&server, 1).unwrap();
        let big = feed.publish_more_than_a_socket_takes();
        handed_back(&parked).await;
        let returned = parked.take_back();
        let pending = returned.pending.unwrap();
        assert!(pending.written < big.len());
        assert_eq!(returned.last_sent, id(2));
        // The event after it is in the receiver, not written.
        let mut rx = returned.feed.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Item::Event(e)) if e.id == id(3)));
        // The client finishes the frame: the reader gets it whole, once.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all
        });
        let never = tokio_util::sync::CancellationToken::new();
        writer::write_rest(
            &server,
            &[pending.frame],
            pending.written,
            || false,
            Duration::from_secs(5),
            &never,
        )
        .await
        .unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap(), big);
    }

    #[tokio::test]
    async fn a_client_taking_its_socket_back_gets_a_receiver_from_where_the_hub_stopped() {
        let feed = Feed::new();
        let (server, mut client) = pair().await;
        let parked = feed.park(&server, 1).unwrap();
        feed.publish(2, b"two\n");
        let returned = parked.take_back();
        assert_eq!(feed.parking.parked(), 0);
        feed.publish(3, b"three\n");
        assert_eq!(read_exactly(&mut client, 4).await, b"two\n");
        let mut rx = returned.feed.unwrap();
        assert_eq!(returned.taken, 1);
        assert!(matches!(rx.try_recv(), Ok(Item::Event(e)) if e.id == id(3)));
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn clients_beyond_the_hubs_share_are_written_by_group_writers() {
        let feed = Feed::new();
        let (_hub_share, _filler) = feed.fill_the_hubs_share(1).await;
        let mut grouped = Vec::new();
        for _ in 0..GROUP_LANES + 2 {
            let (server, client) = pair().await;
            grouped.push((feed.park(&server, 1).unwrap(), client));
        }
        let parked = MAX_PARKED + GROUP_LANES + 2;
        assert_eq!(feed.parking.parked(), parked);
        assert_eq!(
            feed.parking.clients(&feed.tx),
            parked,
            "a group writer's receiver is not a client"
        );
        feed.publish(2, b"two\n");
        feed.publish(3, b"three\n");
        for (_, client) in &mut grouped {
            assert_eq!(read_exactly(client, 10).await, b"two\nthree\n");
        }
        // The clients leave: their groups go, and their writers with them.
        drop(grouped);
        assert_eq!(feed.parking.parked(), MAX_PARKED);
        tokio::time::timeout(Duration::from_secs(5), async {
            while feed.tx.receiver_count() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the group writers ended");
    }

    #[tokio::test]
    async fn a_client_leaving_a_group_writer_that_is_behind_gets_what_it_missed() {
        let feed = Feed::new();
        let (parked, _kept) = feed.park_in_a_group().await;
        // The group writer has not run yet (nothing has yielded).
        feed.publish(2, b"two\n");
        feed.publish(3, b"three\n");
        let returned = parked.take_back();
        assert_eq!(returned.last_sent, id(1));
        assert_eq!(returned.taken, 2);
        assert_eq!(returned.missed.as_deref().map(ids), Some(vec![2, 3]));
        assert!(returned.feed.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_socket_taken_back_is_never_written_by_a_writer_that_listed_it_before() {
        let feed = Feed::new();
        // A group writer's round lists its lanes, then writes them one by
        // one: the client takes its socket back in between.
        let (parked, listed, server, mut client, _kept) = feed.park_listed_in_a_group().await;
        feed.publish(2, b"two\n");
        let returned = parked.take_back();
        assert_eq!(returned.missed.as_deref().map(ids), Some(vec![2]));
        let two = write_event_two(&listed);
        for lane in &listed {
            assert!(matches!(lane.write_other(&two), Other::HandedBack));
        }
        // The client's own write is the first thing on the wire: it goes
        // on from `missed` (event 2), which the writer must not send.
        server.try_write(b"mine\n").unwrap();
        assert_eq!(read_exactly(&mut client, 5).await, b"mine\n");
    }

    #[tokio::test]
    async fn a_socket_whose_claim_was_dropped_is_never_written_again() {
        let feed = Feed::new();
        let (parked, listed, server, mut client, _kept) = feed.park_listed_in_a_group().await;
        drop(parked);
        write_event_two(&listed);
        server.try_write(b"mine\n").unwrap();
        assert_eq!(read_exactly(&mut client, 5).await, b"mine\n");
    }

    #[tokio::test]
    async fn anything_but_an_event_hands_group_lanes_back_with_what_they_missed() {
        let feed = Feed::new();
        let (parked, _kept) = feed.park_in_a_group().await;
        feed.publish(2, b"two\n");
        feed.parking.send(&feed.tx, Item::Viewers(7));
        handed_back(&parked).await;
        let returned = parked.take_back();
        assert_eq!(returned.missed.as_deref().map(ids), Some(vec![2]));
        let mut rx = returned.feed.unwrap();
        assert!(matches!(rx.try_recv(), Ok(Item::Viewers(7))));
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn a_group_writer_hands_back_a_full_socket_with_the_event_pending_and_the_rest_missed() {
        let feed = Feed::new();
        let (parked, _kept) = feed.park_in_a_group().await;
        // The writer takes both events and writes them in one go.
        let big = feed.publish_more_than_a_socket_takes();
        handed_back(&parked).await;
        let returned = parked.take_back();
        let pending = returned.pending.unwrap();
        assert!(pending.written < big.len());
        assert_eq!(returned.last_sent, id(2));
        assert_eq!(returned.missed.as_deref().map(ids), Some(vec![3]));
    }

    #[tokio::test]
    async fn a_group_writer_behind_the_recent_run_hands_back_with_nothing_to_go_on() {
        let feed = Feed::new();
        let (parked, _kept) = feed.park_in_a_group().await;
        // More than the recent run (16) holds, before the writer runs.
        for n in 2..=20 {
            feed.publish(n, b"e\n");
        }
        handed_back(&parked).await;
        let returned = parked.take_back();
        assert!(
            returned.missed.is_none(),
            "the client resumes from its last id"
        );
    }

    #[tokio::test]
    async fn a_dropped_claim_leaves_the_feed_and_a_client_with_unread_items_is_not_parked() {
        let feed = Feed::new();
        let (server, _client) = pair().await;
        let claims: Vec<Parked> = (0..MAX_PARKED + 1)
            .map(|_| feed.park(&server, 1).unwrap())
            .collect();
        drop(claims);
        assert_eq!(feed.parking.parked(), 0);
        let refused = feed.parking.park(&server, id(1), &metrics(), || false);
        assert!(
            refused.is_none(),
            "a client with unread items is not parked"
        );
    }

    #[tokio::test]
    async fn a_failed_socket_is_handed_back_closed() {
        let feed = Feed::new();
        let (server, client) = pair().await;
        let parked = feed.park(&server, 1).unwrap();
        drop(client);
        // The first write after the peer's close may still be accepted
        // (the reset comes back with it); a few more must fail.
        for n in 2..=50 {
            if feed.parking.parked() == 0 {
                break;
            }
            feed.publish(n, b"data\n");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        handed_back(&parked).await;
        assert!(parked.take_back().closed);
    }

    /// A client joining a busy feed is told exactly how many items came
    /// before its receiver: one counted but never received would leave it
    /// "behind" for ever, and it would never park.
    #[test]
    fn a_receiver_joining_while_items_are_sent_is_counted_exactly() {
        use broadcast::error::TryRecvError;
        // The feed's short ring: a receiver that lapped says by how much,
        // and dropping one costs no walk over a long backlog.
        let Feed { tx, parking, .. } = Feed::new();
        let sent = parking.sent().clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Sends until every receiver has joined (at most 50 million).
        let sender = {
            let (tx, parking, stop) = (tx.clone(), parking.clone(), stop.clone());
            std::thread::spawn(move || {
                for n in 1..=50_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    parking.send(&tx, event(n, Bytes::from_static(b"data\n")));
                }
            })
        };
        while sent.load(Ordering::Relaxed) == 0 && !sender.is_finished() {
            std::thread::yield_now();
        }
        let joined: Vec<_> = (0..20_000).map(|_| parking.subscribe(&tx)).collect();
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        let items = sent.load(Ordering::Relaxed);
        for (mut rx, before) in joined {
            // Events are numbered from 1: the first one the receiver was
            // to get tells how many came before it.
            let first = match rx.try_recv() {
                Ok(Item::Event(event)) => event.id.ms,
                Err(TryRecvError::Lagged(skipped)) => match rx.try_recv() {
                    Ok(Item::Event(event)) => event.id.ms - skipped,
                    other => panic!("{other:?}"),
                },
                Err(TryRecvError::Empty) => items + 1,
                other => panic!("{other:?}"),
            };
            assert_eq!(before, first - 1);
        }
    }

    /// A client parking gives up its receiver under the feed's lock, and
    /// taking its socket back gets a new one under it: whoever counts the
    /// feed's clients meanwhile (the viewer count) counts it once.
    #[tokio::test]
    async fn a_client_parking_and_taking_its_socket_back_is_counted_once() {
        let feed = Feed::new();
        let (server, _client) = pair().await;
        let mut rx = Some(feed.parking.subscribe(&feed.tx).0);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counter = {
            let (tx, parking, stop) = (feed.tx.clone(), feed.parking.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) || seen.is_empty() {
                    seen.insert(parking.clients(&tx));
                }
                seen
            })
        };
        for _ in 0..20_000 {
            let caught_up = || {
                rx = None;
                true
            };
            let parked = feed
                .parking
                .park(&server, id(1), &metrics(), caught_up)
                .unwrap();
            rx = parked.take_back().feed;
        }
        stop.store(true, Ordering::Relaxed);
        assert_eq!(counter.join().unwrap(), [1].into());
        drop(rx);
    }
}
