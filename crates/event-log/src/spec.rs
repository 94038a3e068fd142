use auction_domain::AuctionId;

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
}
