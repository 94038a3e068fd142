//! Where a notice stands against the feed's chain: the one decision the
//! live path makes per notice, kept pure so every case is tested here.
//!
//! Every event names the event before it in its stream (`prev`). A feed
//! knows the newest event it published (`last`); a notice either follows
//! it, was published already (a backfill got ahead of its notice), skips
//! events (a notice was missed), or cannot come from the feed's stream.

use auction_domain::EventId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    /// The event follows the feed's last one: publish it.
    Next,
    /// The feed published it already (a backfill read it first): drop it.
    Published,
    /// Events between the feed's last one and this are missing: read them
    /// from the stream (backfill).
    Gap,
    /// The event cannot come from the stream the feed follows: its id is
    /// not newer than the feed's last, yet its `prev` is not older (within
    /// one stream `prev` is always older than the id). Redis lost its data
    /// or failed over to a copy without it: the feed must start over.
    Foreign,
}

/// Where the event `id` (chained onto `prev`) stands against a feed whose
/// newest published event is `last` (`0-0`: none yet).
pub(crate) fn chain(last: EventId, id: EventId, prev: EventId) -> Chain {
    if id <= last {
        if prev < last {
            Chain::Published
        } else {
            Chain::Foreign
        }
    } else if prev == last {
        Chain::Next
    } else {
        Chain::Gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> EventId {
        EventId::new(n, 0)
    }

    #[test]
    fn an_event_after_the_last_one_is_next() {
        assert_eq!(chain(id(5), id(6), id(5)), Chain::Next);
        // A new auction's first event follows `0-0`.
        assert_eq!(chain(EventId::ZERO, id(1), EventId::ZERO), Chain::Next);
    }

    #[test]
    fn an_event_at_or_before_the_last_one_from_the_same_stream_was_published() {
        assert_eq!(chain(id(5), id(5), id(4)), Chain::Published);
        assert_eq!(chain(id(5), id(3), id(2)), Chain::Published);
    }

    #[test]
    fn an_event_that_skips_events_is_a_gap() {
        assert_eq!(chain(id(5), id(8), id(7)), Chain::Gap);
        // Chained onto something older than the last one, yet newer: the
        // stream tells what happened, so it is read like any gap.
        assert_eq!(chain(id(5), id(8), id(3)), Chain::Gap);
        assert_eq!(chain(EventId::ZERO, id(2), id(1)), Chain::Gap);
    }

    #[test]
    fn an_event_no_newer_whose_prev_is_not_older_is_foreign() {
        // The stream was replaced: its ids started again below the feed's.
        assert_eq!(chain(id(5), id(5), id(5)), Chain::Foreign);
        assert_eq!(chain(id(5), id(2), id(6)), Chain::Foreign);
        assert_eq!(chain(id(5), id(4), id(5)), Chain::Foreign);
    }
}
