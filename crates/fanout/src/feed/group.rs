//! Group writers: a task per [`GROUP_LANES`](super::GROUP_LANES) parked
//! clients beyond the hub's share, reading the feed's ring like one client
//! and writing what it took to each of its sockets.

use super::Feed;
use super::lane::Lane;
use crate::codec::{self, EncodedEvent, Frame, Item, try_take};
use crate::sync::lock;
use crate::writer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// A group of lanes and its writer.
pub(super) struct Group {
    pub(super) id: u64,
    pub(super) lanes: Vec<Arc<Lane>>,
    /// Cancelled as the group leaves the list: its writer ends.
    pub(super) done: CancellationToken,
}

/// What one round of a group writer carries to each of its sockets.
#[derive(Default)]
pub(super) struct Round {
    pub(super) events: Vec<Arc<EncodedEvent>>,
    pub(super) frames: Vec<Frame>,
    /// Their alternative frames (see `EncodedEvent::alt`), for the lanes
    /// that asked for them, as a run ([`alt_run`](crate::codec::alt_run)).
    pub(super) alts: Vec<Frame>,
    /// A keepalive tick was taken: written after the round's events.
    pub(super) tick: bool,
    /// The lanes listed for this round (see [`Feed::write_round`]).
    lanes: Vec<Arc<Lane>>,
}

impl Round {
    pub(super) fn push(&mut self, event: Arc<EncodedEvent>) {
        self.frames.push(event.frame.clone());
        let alt = codec::alt_run(self.events.last().map(|previous| &**previous), &event);
        self.alts.push(alt.clone());
        self.events.push(event);
    }

    fn clear(&mut self) {
        self.events.clear();
        self.frames.clear();
        self.alts.clear();
        self.lanes.clear();
        self.tick = false;
    }
}

/// A group writer: takes the feed's events like one client (several at
/// once when they pile up) and writes them to each of its group's
/// sockets. Ends when its group is disbanded (the last lane left), when it
/// falls a whole ring behind or when the feed ends (handing every lane
/// back first).
pub(super) async fn write_group(
    feed: Arc<Feed>,
    id: u64,
    mut rx: broadcast::Receiver<Item>,
    done: CancellationToken,
) {
    let mut round = Round::default();
    round.events.reserve(writer::MAX_SLICES);
    round.frames.reserve(writer::MAX_SLICES);
    round.alts.reserve(writer::MAX_SLICES);
    let mut last_round = Instant::now();
    // The last round carried more than one event: see `MIN_ROUND_GAP`.
    let mut busy = false;
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
            match feed.take_into_round(next, &mut round) {
                Taken::More => {}
                Taken::Full => break,
                Taken::Behind => {
                    feed.hand_back_from_group(id, Leaving::All { lagged: true });
                    break 'taking;
                }
                Taken::Ended => {
                    feed.hand_back_from_group(id, Leaving::All { lagged: false });
                    break 'taking;
                }
            }
            next = match try_take(&mut rx) {
                Some(item) => item,
                None => break,
            };
        }
        busy = round.events.len() > 1;
        if !feed.write_round(id, &mut round) {
            break;
        }
    }
    feed.writer_ended(rx);
}

/// What taking one item into a round came to.
pub(super) enum Taken {
    /// Taken; the round has room for more.
    More,
    /// The round is full (or ends at a tick): write it.
    Full,
    /// The writer fell a whole ring behind: every lane goes back.
    Behind,
    /// The feed ended: every lane goes back.
    Ended,
}

/// Which of a group's lanes are handed back.
#[derive(Clone, Copy)]
pub(super) enum Leaving {
    /// Those that can be written no more.
    Stuck,
    /// All of them (the group ends); `lagged`: because its writer fell a
    /// whole ring behind.
    All { lagged: bool },
}

impl Feed {
    /// Takes an item a group writer received into its round.
    pub(super) fn take_into_round(
        &self,
        item: Result<Item, RecvError>,
        round: &mut Round,
    ) -> Taken {
        match item {
            Ok(Item::Event(event)) => round.push(event),
            // Ends the round, written after its events, so each socket
            // gets what the feed sent in order (a lane parked after the
            // tick was sent gets one keepalive more: harmless).
            Ok(Item::Tick) if self.keepalive.is_some() => {
                round.tick = true;
                return Taken::Full;
            }
            // Sent after every lane of the time was handed back: the lanes
            // parked since were caught up with it.
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => return Taken::Behind,
            Err(RecvError::Closed) => return Taken::Ended,
        }
        if round.events.len() >= writer::MAX_SLICES {
            Taken::Full
        } else {
            Taken::More
        }
    }

    /// Writes a group writer's round to each lane of its group, listed
    /// now (a lane that leaves the feed's hands after it is listed is
    /// skipped by its own lock: invariant 4), and hands back the lanes it
    /// left stuck. `false`: the group is gone (its writer ends).
    pub(super) fn write_round(&self, id: u64, round: &mut Round) -> bool {
        if round.events.is_empty() && !round.tick {
            return true;
        }
        let mut lanes = std::mem::take(&mut round.lanes);
        if !self.group_lanes(id, &mut lanes) {
            round.lanes = lanes;
            round.clear();
            return false;
        }
        let now = auction_domain::clock::now_ms();
        let mut stuck = false;
        for lane in &lanes {
            if !round.events.is_empty() {
                stuck |= !lane.write(&round.events, &round.frames, &round.alts, now);
            }
            if let (true, Some(frame)) = (round.tick, &self.keepalive) {
                stuck |= !lane.write_keepalive(frame);
            }
        }
        if stuck {
            self.hand_back_from_group(id, Leaving::Stuck);
        }
        round.lanes = lanes;
        round.clear();
        true
    }

    /// Copies the group's lanes into `into`; `false`: the group is gone.
    pub(super) fn group_lanes(&self, id: u64, into: &mut Vec<Arc<Lane>>) -> bool {
        let state = lock(&self.state);
        match state.groups.iter().find(|group| group.id == id) {
            Some(group) => {
                into.extend(group.lanes.iter().cloned());
                true
            }
            None => false,
        }
    }

    /// Hands back the group's lanes as `leaving` says, and disbands the
    /// group once it has none.
    pub(super) fn hand_back_from_group(&self, id: u64, leaving: Leaving) {
        let mut state = lock(&self.state);
        let Some(index) = state.groups.iter().position(|group| group.id == id) else {
            return;
        };
        let group = &mut state.groups[index];
        let mut returning = Vec::new();
        group.lanes.retain(|lane| {
            let stays = matches!(leaving, Leaving::Stuck) && !lock(&lane.state).stuck();
            if !stays {
                returning.push(lane.clone());
            }
            stays
        });
        if group.lanes.is_empty() {
            state.disband(index);
        }
        let lagged = matches!(leaving, Leaving::All { lagged: true });
        let taken = self.sent();
        for lane in returning {
            self.hand_back(&state, &lane, state.subscribe(), taken, lagged);
        }
    }

    /// A group writer ends: its receiver goes, under the lock that counts
    /// it (see `State::writers`).
    pub(super) fn writer_ended(&self, rx: broadcast::Receiver<Item>) {
        let mut state = lock(&self.state);
        drop(rx);
        state.writers -= 1;
    }
}
