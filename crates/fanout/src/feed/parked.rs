//! A client's claim on its parked socket.

use super::lane::{Lane, Other, Returned};
use super::{Feed, State};
use crate::codec::Frame;
use crate::sync::lock;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

/// A client's claim on its parked socket. Dropping it takes the socket
/// back (nothing writes to it any more).
pub struct Parked {
    feed: Arc<Feed>,
    pub(super) lane: Arc<Lane>,
}

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parked")
    }
}

impl Parked {
    pub(super) fn new(feed: Arc<Feed>, lane: Arc<Lane>) -> Parked {
        Parked { feed, lane }
    }

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

    /// Takes this lane out of the feed's lanes (the caller holds `state`);
    /// `false`: it had been handed back already. A group left with no lane
    /// is disbanded.
    fn leave(&self, state: &mut State) -> bool {
        let is_this = |lane: &Arc<Lane>| Arc::ptr_eq(lane, &self.lane);
        if let Some(index) = state.hub.iter().position(is_this) {
            state.hub.swap_remove(index);
            return true;
        }
        for index in 0..state.groups.len() {
            let group = &mut state.groups[index];
            if let Some(at) = group.lanes.iter().position(is_this) {
                group.lanes.swap_remove(at);
                if group.lanes.is_empty() {
                    state.disband(index);
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
            let mut state = lock(&self.feed.state);
            if self.leave(&mut state) {
                // Under `state`: no item is sent between this receiver's
                // attaching and the count read (invariant 1).
                let feed = state.subscribe();
                let taken = self.feed.sent();
                return self.feed.returned(&state, &self.lane, feed, taken, false);
            }
        }
        // Out of the lists: it was handed back (under the same lock, so
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
                lagged: false,
            },
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.leave(&mut lock(&self.feed.state));
        // After a write under way, if any: then nothing writes it.
        lock(&self.lane.state).left = true;
        self.lane.parked.dec();
    }
}
