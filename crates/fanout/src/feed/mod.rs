//! A feed: one watched auction's items on this replica, and every client
//! they go to.
//!
//! A [`Feed`] owns the auction's broadcast ring (clients reading it hold a
//! receiver), the count of items it sent, the run of its recent events
//! ([`Recent`]), and its *lanes*: the sockets of caught-up clients that
//! parked with it, which it writes itself.
//!
//! # Direct delivery
//! A caught-up client hands its socket to the feed, whose events are then
//! written to it without waking the client's task; the client's task
//! sleeps until the socket is handed back or it needs it.
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
//! - the clients beyond them: a group writer per [`GROUP_LANES`] clients
//!   ([`group`]), a task of its own reading the feed's ring like one client
//!   and writing what it took to each of its sockets, several events in one
//!   write when they pile up. One wake-up per group per event instead of
//!   one per client, and a big feed's writes still spread over every worker.
//!
//! A socket is handed back, with a receiver on the feed placed so that the
//! client misses nothing, when:
//! - an event does not fit in the socket: the client finishes writing it
//!   (under the stall limit, as any write) and goes on from the receiver;
//! - the socket fails: the client ends;
//! - the feed carries anything but an event or a keepalive tick (a viewer
//!   count, a reset, a gone auction): lanes are handed back first, and the
//!   item reaches the client through its new receiver;
//! - a group writer falls a whole ring behind (the client then counts as
//!   slow, as a client reading the ring itself would), or the feed ends.
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
//!
//! # Locks
//! A feed has three locks:
//! - `Feed::state`: the ring's sender and the lanes. Every item is sent,
//!   every receiver attached and every lane parked or handed back under it;
//! - each lane's `Lane::state`: how far its socket was sent, and whether
//!   it left the feed's hands;
//! - `Feed::recent`: the recent run and the shared `init`.
//!
//! Lock order: `state` before a lane's lock, `state` before `recent`. A
//! lane's lock and `recent` are never held together, and nothing else is
//! locked under any of them. (Above a feed, the hub's map of feeds is
//! locked before `state`: see `feeds`.) The loom models in `loom.rs`
//! check the invariants below under every interleaving of these locks.
//!
//! # Invariants
//! 1. Every item is sent to the ring under `state`, and `sent` is counted
//!    in the same hold: a receiver attached and the count read under
//!    `state` ([`Feed::subscribe`]) agree exactly on which items the
//!    receiver gets (see `Position`). A client behind by zero holds
//!    nothing unread, which parking relies on.
//! 2. A client parks under `state` only while its receiver holds nothing
//!    unread, and gives its receiver up in that same hold: the feed never
//!    counts it twice (a lane and a receiver) among its clients.
//! 3. A parked client misses nothing: each event sent while it is parked
//!    is written to its socket, or is in its group writer's receiver, or
//!    its lane is handed back with that event pending or missed; before
//!    any other item is sent, every lane is handed back with a receiver
//!    that gets that item.
//! 4. A lane leaves the feed's hands (handed back, taken back, its claim
//!    dropped) in the same hold of its lock that reads how far it was
//!    sent, and is written by nobody after: the client, which goes on from
//!    `Returned`, never sends an event twice nor writes the socket beside
//!    another writer.

mod group;
mod lane;
#[cfg(all(test, fanout_loom))]
mod loom;
mod parked;
#[cfg(test)]
mod tests;

pub(crate) use lane::Returned;
pub use parked::Parked;

use crate::codec::{self, AltWindow, Frame, Item};
use crate::recent::Recent;
use crate::sync::{AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering, lock};
use crate::writer::FrameSocket;
use auction_domain::EventId;
use group::Group;
use lane::Lane;
use std::sync::Arc;
use std::time::Duration;
use telemetry::TransportMetrics;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Most clients of one feed the hub writes to itself. Each costs the hub a
/// write per event (about 5 µs), done in line with every other feed's
/// notices: bounded so that a notice never waits long behind another.
pub(crate) const MAX_PARKED: usize = 16;

/// Most clients one group writer serves: a big feed's writes are split
/// into tasks of this many sockets, which the runtime spreads over its
/// workers (about 0.3 ms of writes per event each).
pub(crate) const GROUP_LANES: usize = 64;

/// One watched auction's feed on this replica.
pub(crate) struct Feed {
    /// The ring's sender and the lanes (see the module's invariants).
    state: Mutex<State>,
    /// Items sent to the feed, ever: added to under `state` with each send,
    /// read anywhere (see `Position`).
    sent: AtomicU64,
    /// The ring's capacity: a client this far behind is lapped.
    capacity: usize,
    /// The feed's recent events and shared `init` (see [`Recent`]).
    recent: Mutex<Recent<Frame>>,
    /// The transport's keepalive frame (`None`: it sends none), written
    /// to parked sockets at each tick.
    keepalive: Option<Frame>,
    /// The auction's viewers over all replicas, as last learned (written
    /// by the viewers task only).
    viewers: AtomicU32,
    /// Clients that asked for events' alternative frames, while their
    /// subscriptions live ([`AltClient`]): the hub encodes events that way
    /// only while there are some.
    alt_clients: AtomicU32,
    /// Whether the hub follows the auction's stream yet: clients wait for
    /// it before they read anything.
    live: watch::Sender<bool>,
}

/// What `Feed::state` guards.
struct State {
    /// The ring. `None` once the feed ended: its receivers see it closed.
    ring: Option<broadcast::Sender<Item>>,
    /// Lanes the hub writes as each event is sent (at most `MAX_PARKED`).
    hub: Vec<Arc<Lane>>,
    /// Lanes written by their group writers (each at most `GROUP_LANES`).
    /// A group leaves this list when its last lane does, and its writer
    /// ends.
    groups: Vec<Group>,
    next_group: u64,
    /// Group writers still holding a receiver on the feed: not clients, so
    /// not counted as such (changed under this lock, as is the receiver's
    /// drop).
    writers: usize,
    /// The newest event sent to the feed: a lane sent it misses nothing.
    newest: EventId,
    /// Group writers to be started by the loom models (which have no
    /// runtime to spawn them on).
    #[cfg(fanout_loom)]
    unstarted: Vec<(u64, broadcast::Receiver<Item>, CancellationToken)>,
}

/// Who will write a client being parked.
enum Place {
    Hub,
    /// The group at this index in `State::groups`, which has room.
    Group(usize),
    /// A new group, whose writer reads this receiver.
    NewGroup(broadcast::Receiver<Item>),
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("sent", &self.sent())
            .field("parked", &self.parked())
            .finish()
    }
}

impl State {
    fn parked(&self) -> usize {
        self.hub.len() + self.groups.iter().map(|g| g.lanes.len()).sum::<usize>()
    }

    /// Puts the item in the ring (for its receivers: clients reading it
    /// and group writers; none is fine, the feed may be idle, waiting to
    /// be swept).
    fn send(&self, item: Item) {
        if let Some(ring) = &self.ring {
            let _ = ring.send(item);
        }
    }

    /// A new receiver on the ring, if the feed has not ended.
    fn subscribe(&self) -> Option<broadcast::Receiver<Item>> {
        self.ring.as_ref().map(broadcast::Sender::subscribe)
    }

    /// Takes the group out of the list (its writer ends) and returns its
    /// lanes.
    fn disband(&mut self, index: usize) -> Vec<Arc<Lane>> {
        let group = self.groups.swap_remove(index);
        group.done.cancel();
        group.lanes
    }

    /// Every lane, taken out of the lists (the groups disbanded).
    fn take_all_lanes(&mut self) -> Vec<Arc<Lane>> {
        let mut lanes = std::mem::take(&mut self.hub);
        while !self.groups.is_empty() {
            lanes.extend(self.disband(0));
        }
        lanes
    }
}

impl Feed {
    /// A feed whose ring holds `capacity` items, for a transport whose
    /// keepalive frame is `keepalive`; not live until [`go_live`](Self::go_live).
    pub(crate) fn new(capacity: usize, keepalive: Option<Frame>) -> Arc<Feed> {
        let (ring, _) = broadcast::channel(capacity.max(1));
        Arc::new(Feed {
            state: Mutex::new(State {
                ring: Some(ring),
                hub: Vec::new(),
                groups: Vec::new(),
                next_group: 0,
                writers: 0,
                newest: EventId::ZERO,
                #[cfg(fanout_loom)]
                unstarted: Vec::new(),
            }),
            sent: AtomicU64::new(0),
            capacity,
            recent: Mutex::new(Recent::new(capacity)),
            keepalive,
            viewers: AtomicU32::new(0),
            alt_clients: AtomicU32::new(0),
            live: watch::Sender::new(false),
        })
    }

    /// Whether a client of the feed asked for events' alternative frames
    /// (a compressed WebSocket): if not, the hub makes none. One that asks
    /// as an event is encoded gets that event's plain frame, which is
    /// always allowed.
    pub(crate) fn wants_alt(&self) -> bool {
        self.alt_clients.load(Ordering::Relaxed) > 0
    }

    /// The ring's capacity: this far behind, a client is lapped.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items sent to the feed, ever (see `Position`).
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// The feed's recent events and shared `init`.
    pub(crate) fn recent(&self) -> MutexGuard<'_, Recent<Frame>> {
        lock(&self.recent)
    }

    /// The auction's viewers over all replicas, as last learned (0: not
    /// known yet).
    pub(crate) fn viewers(&self) -> u32 {
        self.viewers.load(Ordering::Relaxed)
    }

    /// Records the auction's viewers; `true` if the count changed.
    pub(crate) fn set_viewers(&self, total: u32) -> bool {
        self.viewers.swap(total, Ordering::Relaxed) != total
    }

    /// Whether the hub follows the auction's stream yet.
    pub(crate) fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// The hub follows the auction's stream from now on: waiting clients
    /// go on.
    pub(crate) fn go_live(&self) {
        self.live.send_replace(true);
    }

    /// Waits until the feed is live, at most `wait`; `false`: it did not
    /// go live in time.
    pub(crate) async fn wait_live(&self, wait: Duration) -> bool {
        let mut live = self.live.subscribe();
        matches!(
            tokio::time::timeout(wait, live.wait_for(|live| *live)).await,
            Ok(Ok(_))
        )
    }

    /// How many clients are parked (they hold no receiver: count them
    /// with the receivers).
    pub(crate) fn parked(&self) -> usize {
        lock(&self.state).parked()
    }

    /// Clients of the feed: those reading its ring (the ring's receivers,
    /// but for the group writers') and those parked, which hold no
    /// receiver.
    pub(crate) fn clients(&self) -> usize {
        let state = lock(&self.state);
        let readers = state.ring.as_ref().map_or(0, |ring| ring.receiver_count());
        readers.saturating_sub(state.writers) + state.parked()
    }

    /// A new receiver on the feed, and the count of items sent before it
    /// (it gets every item after them): both under the lock every item is
    /// sent under, so the count is exact (invariant 1). `None`: the feed
    /// ended.
    pub(crate) fn subscribe(&self) -> Option<(broadcast::Receiver<Item>, u64)> {
        let state = lock(&self.state);
        let rx = state.subscribe()?;
        Some((rx, self.sent.load(Ordering::Acquire)))
    }

    /// Sends one item to every client of the feed: into the ring for the
    /// clients reading it and the group writers, and straight to the
    /// sockets the hub writes. Nothing once the feed ended.
    pub(crate) fn send(&self, item: Item) {
        let mut state = lock(&self.state);
        if state.ring.is_none() {
            return;
        }
        match &item {
            Item::Event(event) => {
                let event = event.clone();
                state.send(item);
                let taken = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
                state.newest = event.id;
                if state.hub.is_empty() {
                    return;
                }
                let now = auction_domain::clock::now_ms();
                let events = std::slice::from_ref(&event);
                let frames = std::slice::from_ref(&event.frame);
                let alts = std::slice::from_ref(codec::alt_run(None, &event));
                self.write_hub_lanes(&mut state, taken, |lane| {
                    lane.write(events, frames, alts, now)
                });
            }
            // Written where the sockets are (group writers take it from
            // the ring), like an event.
            Item::Tick => {
                state.send(item);
                let taken = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
                if let Some(frame) = &self.keepalive {
                    self.write_hub_lanes(&mut state, taken, |lane| lane.write_keepalive(frame));
                }
            }
            // Handed back first, with receivers that get this item.
            Item::Reset | Item::Gone | Item::Viewers(_) => {
                let taken = self.sent.load(Ordering::Acquire);
                for lane in state.take_all_lanes() {
                    self.hand_back(&state, &lane, state.subscribe(), taken, false);
                }
                state.send(item);
                self.sent.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Ends the feed (the hub stopped watching the auction): every lane is
    /// handed back without a receiver, and the ring closes, so every client
    /// and group writer of the feed ends.
    pub(crate) fn end(&self) {
        let mut state = lock(&self.state);
        state.ring = None;
        let taken = self.sent.load(Ordering::Acquire);
        for lane in state.take_all_lanes() {
            self.hand_back(&state, &lane, None, taken, false);
        }
    }

    /// Writes each lane the hub writes with `write`, just after the feed
    /// sent its `taken`-th item, and hands back those the write left stuck
    /// (called under `state`): their pending write holds the rest of that
    /// item, and their receiver starts after it.
    fn write_hub_lanes(&self, state: &mut State, taken: u64, write: impl Fn(&Lane) -> bool) {
        let mut hub = std::mem::take(&mut state.hub);
        hub.retain(|lane| {
            if write(lane) {
                return true;
            }
            self.hand_back(state, lane, state.subscribe(), taken, false);
            false
        });
        state.hub = hub;
    }

    /// Parks a client whose receiver holds nothing unread, as
    /// `caught_up()` (asked under `state`) tells: parked exactly when it
    /// says yes (invariant 2). `alt`: its socket is written events'
    /// alternative frames ([`EncodedEvent::alt`](crate::EncodedEvent::alt)),
    /// as this window of the socket's chooses. `None`: not parked (not caught up, or the
    /// feed ended). Bounded by the clients themselves: one lane per
    /// client, one group per `GROUP_LANES`.
    pub(crate) fn park(
        self: &Arc<Self>,
        socket: Arc<dyn FrameSocket>,
        last_sent: EventId,
        alt: Option<Arc<AltWindow>>,
        metrics: &TransportMetrics,
        caught_up: impl FnOnce() -> bool,
    ) -> Option<Parked> {
        let mut state = lock(&self.state);
        // Where the lane goes, decided first: once `caught_up()` says yes
        // the client has given up its receiver, and must be parked.
        let place = if state.hub.len() < MAX_PARKED {
            Place::Hub
        } else if let Some(index) = state
            .groups
            .iter()
            .position(|group| group.lanes.len() < GROUP_LANES)
        {
            Place::Group(index)
        } else {
            // Attached now, under the lock: it gets every item sent after
            // this client is found caught up.
            Place::NewGroup(state.subscribe()?)
        };
        if !caught_up() {
            return None;
        }
        let lane = Arc::new(Lane::new(socket, last_sent, alt, metrics));
        match place {
            Place::Hub => state.hub.push(lane.clone()),
            Place::Group(index) => state.groups[index].lanes.push(lane.clone()),
            Place::NewGroup(rx) => {
                let id = state.next_group;
                state.next_group += 1;
                state.writers += 1;
                let done = CancellationToken::new();
                state.groups.push(Group {
                    id,
                    lanes: vec![lane.clone()],
                    done: done.clone(),
                });
                #[cfg(not(fanout_loom))]
                tokio::spawn(group::write_group(self.clone(), id, rx, done));
                #[cfg(fanout_loom)]
                state.unstarted.push((id, rx, done));
            }
        }
        Some(Parked::new(self.clone(), lane))
    }

    /// What a lane leaving the feed's hands takes with it (invariant 4).
    /// Called under `state`, with the lane already out of the lists.
    /// `lagged`: its group writer fell a whole ring behind.
    fn returned(
        &self,
        state: &State,
        lane: &Lane,
        feed: Option<broadcast::Receiver<Item>>,
        taken: u64,
        lagged: bool,
    ) -> Returned {
        let (last_sent, pending, closed) = {
            let mut lane_state = lock(&lane.state);
            lane_state.left = true;
            (
                lane_state.last_sent,
                lane_state.pending.take(),
                lane_state.closed,
            )
        };
        let missed = if closed || last_sent >= state.newest {
            Some(Vec::new())
        } else {
            self.recent().after(last_sent)
        };
        Returned {
            feed,
            taken,
            last_sent,
            pending,
            missed,
            closed,
            lagged,
        }
    }

    /// Gives the socket back to its client and wakes it. Called under
    /// `state`, with the lane already out of the lists.
    fn hand_back(
        &self,
        state: &State,
        lane: &Lane,
        feed: Option<broadcast::Receiver<Item>>,
        taken: u64,
        lagged: bool,
    ) {
        let returned = self.returned(state, lane, feed, taken, lagged);
        lane.hand_back(returned);
    }
}

/// How far one receiver is behind its feed, known without the receiver
/// (which is busy waiting for the next item): the feed counts every item
/// it sends, the client every item it takes. Exact by invariant 1: no item
/// is counted that the receiver will not get, nor the other way round; a
/// lap is never reported early or late.
/// Counts a client among its feed's that asked for alternative frames
/// ([`Feed::wants_alt`]), for as long as it is kept.
#[derive(Debug)]
pub(crate) struct AltClient(Arc<Feed>);

impl AltClient {
    pub(crate) fn new(feed: Arc<Feed>) -> AltClient {
        feed.alt_clients.fetch_add(1, Ordering::Relaxed);
        AltClient(feed)
    }
}

impl Drop for AltClient {
    fn drop(&mut self) {
        self.0.alt_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(crate) struct Position {
    feed: Arc<Feed>,
    /// Items this receiver has taken, plus the feed's count when it joined.
    taken: u64,
}

impl Position {
    /// The position of a receiver attached when the feed had sent `sent`
    /// items.
    pub(crate) fn new(feed: Arc<Feed>, sent: u64) -> Position {
        Position { feed, taken: sent }
    }

    pub(crate) fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Counts one item taken from the receiver.
    pub(crate) fn took_one(&mut self) {
        self.taken += 1;
    }

    /// A new receiver took over, attached when the feed had sent `sent`
    /// items (counted as taken, as at a join).
    pub(crate) fn rejoined(&mut self, sent: u64) {
        self.taken = sent;
    }

    /// Items sent that this receiver has not taken yet.
    pub(crate) fn behind(&self) -> u64 {
        self.feed.sent().saturating_sub(self.taken)
    }

    /// Whether the feed has sent a whole ring of items this receiver has
    /// not taken: it cannot keep up.
    pub(crate) fn lapped(&self) -> bool {
        self.behind() >= self.feed.capacity() as u64
    }
}
