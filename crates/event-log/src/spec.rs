use auction_domain::{AuctionId, Seller};

/// What an auction is created (or re-opened) with.
#[derive(Debug, Clone)]
pub struct AuctionSpec {
    pub id: AuctionId,
    pub title: String,
    pub starting_price: u64,
    pub min_increment: u64,
    pub duration_ms: u64,
    /// Optional, already validated (`auction_domain` rules).
    pub description: Option<String>,
    pub image_url: Option<String>,
    /// Who sells it (the creating token's bidder); `None` for the
    /// simulator's auctions.
    pub seller: Option<Seller>,
    /// The seller's terms of sale, already validated.
    pub terms: Option<String>,
    pub rules: AuctionRules,
}

/// An auction's rules (docs/api.md: "Auction rules"), fixed at its creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuctionRules {
    /// A bid within this many ms of the end moves the end this much later
    /// (0: no soft close).
    pub soft_close_ms: u64,
    /// Below this price a closed auction is not sold. Never shown.
    pub reserve_price: Option<u64>,
    pub buy_now_price: Option<u64>,
}
