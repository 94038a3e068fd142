//! The newest events a feed published, kept so that a client resuming from
//! an id this replica published recently is served from memory: no Redis
//! read and no encoding per client, which is what a wave of reconnects
//! (an edge restarted, a load balancer reshuffled) costs otherwise.

use crate::codec::EncodedEvent;
use auction_domain::EventId;
use std::collections::VecDeque;
use std::sync::Arc;

/// A contiguous run of a feed's newest events: each entry's `prev` is the
/// entry before it, so the run covers exactly the ids in `(floor, newest]`.
/// A run with no entries but a floor is the feed's starting point with
/// nothing published since: it covers the floor itself (nothing follows it
/// yet, and whatever does reaches every client attached to the feed).
///
/// Beside it, the feed's shared `init` for fresh clients: an `init` frame
/// kept only while it reflects exactly the newest event the feed has
/// published (`published`). A client attached to the feed before it reads
/// the kept frame therefore gets every later event from the feed; the first
/// event published after the frame was kept drops it.
pub(crate) struct Recent<F> {
    events: VecDeque<Arc<EncodedEvent<F>>>,
    /// The `prev` of the oldest entry (with no entries, the id the feed
    /// started from). `None`: the run tells nothing (nothing followed yet,
    /// nothing kept, or the chain broke).
    floor: Option<EventId>,
    capacity: usize,
    /// The newest event the feed has published (or started from).
    published: EventId,
    /// An `init` frame reflecting events up to `published`, if one is kept.
    init: Option<F>,
}

impl<F> Recent<F> {
    pub(crate) fn new(capacity: usize) -> Recent<F> {
        Recent {
            // Grows with use: a quiet auction's feed keeps nothing here.
            events: VecDeque::new(),
            floor: None,
            capacity,
            published: EventId::ZERO,
            init: None,
        }
    }

    /// The feed follows its stream from `newest` (it went live, or its
    /// stream was replaced): nothing kept before applies.
    pub(crate) fn follow_from(&mut self, newest: EventId) {
        self.events.clear();
        self.published = newest;
        self.init = None;
        // `0-0` is no event: a client naming it is told by the stream.
        self.floor = (self.capacity > 0 && newest != EventId::ZERO).then_some(newest);
    }

    /// The kept `init` frame and the id it reflects, if any.
    pub(crate) fn shared_init(&self) -> Option<(EventId, F)>
    where
        F: Clone,
    {
        self.init.clone().map(|frame| (self.published, frame))
    }

    /// Keeps `frame` as the shared `init` if it reflects exactly the newest
    /// event published (`last`); a frame read before or after that event is
    /// not kept.
    pub(crate) fn offer_init(&mut self, last: EventId, frame: F) {
        if last == self.published {
            self.init = Some(frame);
        }
    }

    /// Records an event the feed published. An event that does not chain
    /// onto the newest one starts a new run.
    pub(crate) fn push(&mut self, prev: EventId, event: Arc<EncodedEvent<F>>) {
        // Recorded before the event is sent: from now on the kept `init`
        // would miss it.
        self.published = event.id;
        self.init = None;
        if self.capacity == 0 {
            return;
        }
        if self.newest() != Some(prev) {
            self.events.clear();
            self.floor = Some(prev);
        }
        if self.events.len() == self.capacity
            && let Some(oldest) = self.events.pop_front()
        {
            self.floor = Some(oldest.id);
        }
        self.events.push_back(event);
    }

    /// Forgets everything (the feed's chain broke).
    pub(crate) fn clear(&mut self) {
        self.events.clear();
        self.floor = None;
        self.init = None;
    }

    /// Every event after `id`, oldest first, if this run can tell what
    /// they are: `id` is the floor or one of the run's ids. `None`
    /// otherwise (older than the run, newer than the feed, an id the
    /// stream never held, or nothing recorded yet): the caller asks the
    /// stream.
    pub(crate) fn after(&self, id: EventId) -> Option<Vec<Arc<EncodedEvent<F>>>> {
        let floor = self.floor?;
        let start = self.events.partition_point(|event| event.id <= id);
        let held = id == floor || (start > 0 && self.events[start - 1].id == id);
        held.then(|| self.events.range(start..).cloned().collect())
    }

    fn newest(&self) -> Option<EventId> {
        self.events.back().map(|event| event.id).or(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> EventId {
        EventId::new(seq * 10, 0)
    }

    fn event(seq: u64) -> Arc<EncodedEvent<u64>> {
        Arc::new(EncodedEvent {
            id: id(seq),
            placed_at_ms: 0,
            frame: seq,
            alt: None,
        })
    }

    fn ids(events: Option<Vec<Arc<EncodedEvent<u64>>>>) -> Option<Vec<u64>> {
        events.map(|events| events.iter().map(|event| event.frame).collect())
    }

    fn filled(capacity: usize, through: u64) -> Recent<u64> {
        let mut recent = Recent::new(capacity);
        for seq in 1..=through {
            recent.push(id(seq - 1), event(seq));
        }
        recent
    }

    #[test]
    fn serves_ids_inside_the_run_and_refuses_the_rest() {
        let recent = filled(4, 6); // holds 3..=6, floor 2
        assert_eq!(ids(recent.after(id(2))), Some(vec![3, 4, 5, 6]));
        assert_eq!(ids(recent.after(id(4))), Some(vec![5, 6]));
        assert_eq!(ids(recent.after(id(6))), Some(vec![]));
        assert_eq!(ids(recent.after(id(1))), None, "older than the run");
        assert_eq!(ids(recent.after(id(7))), None, "newer than the feed");
        assert_eq!(
            ids(recent.after(EventId::new(45, 0))),
            None,
            "between two ids of the run: an id this stream never held"
        );
    }

    #[test]
    fn a_break_in_the_chain_starts_over() {
        let mut recent = filled(8, 3);
        recent.push(id(10), event(11));
        assert_eq!(ids(recent.after(id(2))), None);
        assert_eq!(ids(recent.after(id(10))), Some(vec![11]));
        recent.clear();
        assert_eq!(ids(recent.after(id(10))), None);
    }

    #[test]
    fn an_init_is_shared_only_while_it_reflects_the_newest_event() {
        let mut recent = filled(8, 3);
        recent.offer_init(id(2), 99);
        assert_eq!(recent.shared_init(), None, "read before the newest event");
        recent.offer_init(id(3), 30);
        assert_eq!(recent.shared_init(), Some((id(3), 30)));
        recent.push(id(3), event(4));
        assert_eq!(recent.shared_init(), None, "an event published since");
        recent.follow_from(id(7));
        recent.offer_init(id(4), 40);
        assert_eq!(recent.shared_init(), None, "the stream was replaced");
        recent.offer_init(id(7), 70);
        recent.clear();
        assert_eq!(recent.shared_init(), None, "the chain broke");
    }

    #[test]
    fn a_feed_that_published_nothing_yet_covers_its_starting_point() {
        let mut recent = Recent::<u64>::new(4);
        recent.follow_from(id(5));
        assert_eq!(ids(recent.after(id(5))), Some(vec![]));
        assert_eq!(ids(recent.after(id(4))), None, "older than the start");
        recent.push(id(5), event(6));
        assert_eq!(ids(recent.after(id(5))), Some(vec![6]));
        recent.clear();
        assert_eq!(ids(recent.after(id(6))), None, "the chain broke");
        recent.follow_from(EventId::ZERO);
        assert_eq!(ids(recent.after(EventId::ZERO)), None, "0-0 is no event");
        let mut disabled = Recent::<u64>::new(0);
        disabled.follow_from(id(5));
        disabled.push(id(5), event(6));
        assert_eq!(ids(disabled.after(id(5))), None, "nothing kept");
    }

    #[test]
    fn empty_or_disabled_serves_nothing() {
        assert_eq!(ids(Recent::<u64>::new(4).after(id(0))), None);
        assert_eq!(ids(filled(0, 3).after(id(2))), None);
    }
}
