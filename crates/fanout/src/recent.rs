//! The newest events a feed published, kept so that a client resuming from
//! an id this replica published recently is served from memory: no Redis
//! read and no encoding per client, which is what a wave of reconnects
//! (an edge restarted, a load balancer reshuffled) costs otherwise.

use crate::feed::EncodedEvent;
use auction_domain::EventId;
use std::collections::VecDeque;
use std::sync::Arc;

/// A contiguous run of a feed's newest events: each entry's `prev` is the
/// entry before it, so the run covers exactly the ids in `(floor, newest]`.
pub(crate) struct Recent<F> {
    events: VecDeque<Arc<EncodedEvent<F>>>,
    /// The `prev` of the oldest entry.
    floor: EventId,
    capacity: usize,
}

impl<F> Recent<F> {
    pub(crate) fn new(capacity: usize) -> Recent<F> {
        Recent {
            // Grows with use: a quiet auction's feed keeps nothing here.
            events: VecDeque::new(),
            floor: EventId::ZERO,
            capacity,
        }
    }

    /// Records an event the feed published. An event that does not chain
    /// onto the newest one starts a new run.
    pub(crate) fn push(&mut self, prev: EventId, event: Arc<EncodedEvent<F>>) {
        if self.capacity == 0 {
            return;
        }
        if self.newest() != Some(prev) {
            self.events.clear();
            self.floor = prev;
        }
        if self.events.len() == self.capacity
            && let Some(oldest) = self.events.pop_front()
        {
            self.floor = oldest.id;
        }
        self.events.push_back(event);
    }

    /// Forgets everything (the feed's chain broke).
    pub(crate) fn clear(&mut self) {
        self.events.clear();
    }

    /// Every event after `id`, oldest first, if this run can tell what
    /// they are: `id` is the floor, one of the run's ids, or between two of
    /// them. `None` otherwise (older than the run, newer than the feed, or
    /// nothing recorded yet): the caller asks the stream.
    pub(crate) fn after(&self, id: EventId) -> Option<Vec<Arc<EncodedEvent<F>>>> {
        let newest = self.newest()?;
        if id < self.floor || id > newest {
            return None;
        }
        let start = self.events.partition_point(|event| event.id <= id);
        Some(self.events.range(start..).cloned().collect())
    }

    fn newest(&self) -> Option<EventId> {
        self.events.back().map(|event| event.id)
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
            Some(vec![5, 6]),
            "between two ids of the run"
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
    fn empty_or_disabled_serves_nothing() {
        assert_eq!(ids(Recent::<u64>::new(4).after(id(0))), None);
        assert_eq!(ids(filled(0, 3).after(id(2))), None);
    }
}
