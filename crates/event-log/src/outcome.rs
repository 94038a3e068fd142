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

/// What one bid request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BidOrder {
    /// A plain bid of this amount.
    Amount(u64),
    /// A maximum: the system bids for the bidder up to it.
    Max(u64),
    /// The buy-now price, which ends the auction.
    BuyNow,
}

impl BidOrder {
    /// What an `Idempotency-Key` is bound to: a plain bid's amount alone
    /// (as before maximums existed), the others marked.
    pub(crate) fn fingerprint(self) -> String {
        match self {
            BidOrder::Amount(amount) => amount.to_string(),
            BidOrder::Max(max) => format!("max {max}"),
            BidOrder::BuyNow => "buy_now".into(),
        }
    }
}

/// The decision on one bid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BidAnswer {
    /// The request was applied. `bid` is the auction's current bid after
    /// it (another bidder's when their maximum held), `id` its event.
    Accepted {
        id: EventId,
        bid: Bid,
        /// Whether the caller leads now.
        leading: bool,
        /// The caller's maximum, if they set one (shown to them only).
        max_amount: Option<u64>,
    },
    /// A maximum at or below the caller's own standing maximum.
    MaxNotRaised {
        max_amount: u64,
    },
    /// The auction has no buy-now price, or bidding reached it.
    BuyNowUnavailable,
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

/// One bidder's standing in an auction, from the server's hidden record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The bidder holds the current bid.
    pub leading: bool,
    /// Their latest maximum this round, if they set one.
    pub max_amount: Option<u64>,
    /// The amount of their latest bid in the stream this round.
    pub last_bid: Option<u64>,
}
