//! What the writes answer.

use auction_domain::{Auction, Bid, EventId};

#[derive(Debug, Clone)]
pub enum CreateOutcome {
    /// Boxed: an auction is large beside `Exists`.
    Created(Box<Auction>),
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureOutcome {
    Created,
    Reopened,
    AlreadyOpen,
    /// Closed, and still within the pause after its end.
    Paused,
}

/// The decision on one bid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BidAnswer {
    Accepted {
        id: EventId,
        bid: Bid,
    },
    TooLow {
        current: u64,
        min_next: u64,
    },
    Closed,
    /// The bidder used this `Idempotency-Key` before for a different bid:
    /// nothing was appended.
    IdempotencyKeyReused,
    /// An admin suspended the bidder: nothing was appended.
    BidderSuspended,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BidAttempt {
    pub answer: BidAnswer,
    /// True when this is the stored answer of an earlier request with the
    /// same `Idempotency-Key`: nothing was appended this time.
    pub replayed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// This call closed the auction and appended its `closed` event.
    Closed,
    AlreadyClosed,
    NotDue,
    Missing,
}
