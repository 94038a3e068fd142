use serde::{Deserialize, Serialize};

/// Where a bid came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BidSource {
    Simulated,
    User,
}

impl BidSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BidSource::Simulated => "simulated",
            BidSource::User => "user",
        }
    }
}

/// An accepted bid, exactly as clients see it. Money is integer cents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    pub auction: String,
    pub amount: u64,
    /// The bidder's display name.
    pub bidder: String,
    /// The bidder's id (`g_…`, `x_…`, `sim_…`). Bids stored before ids
    /// existed have none and read as `""`.
    #[serde(default)]
    pub bidder_id: String,
    pub placed_at: u64,
    pub source: BidSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuctionStatus {
    Open,
    Closed,
    /// Cancelled by an admin: ended without a winner.
    Cancelled,
}

/// An auction's state as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auction {
    pub id: String,
    pub title: String,
    pub status: AuctionStatus,
    pub starting_price: u64,
    pub min_increment: u64,
    pub ends_at: u64,
    pub current: Option<Bid>,
    /// Optional, shown on the pages; absent from the JSON when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A path under `/assets/` or an `https://` URL (see `ImageUrl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
}

impl Auction {
    /// The smallest amount the next bid may have (the rule `place_bid.lua`
    /// applies when it decides).
    pub fn min_next(&self) -> u64 {
        match &self.current {
            Some(bid) => bid.amount.saturating_add(self.min_increment),
            None => self.starting_price,
        }
    }
}

/// The kinds of event in an auction's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A bid was accepted; payload: `Bid`.
    Bid,
    /// The auction closed; payload: `{"auction":Auction}`.
    Closed,
    /// The auction (re)opened for a new round; payload: `{"auction":Auction}`.
    Opened,
    /// An admin acted on the auction; payload: `AdminAction` JSON
    /// (`{"action","by","reason","at","auction"}`, see `crate::admin`).
    Admin,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Bid => "bid",
            EventKind::Closed => "closed",
            EventKind::Opened => "opened",
            EventKind::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        match text {
            "bid" => Some(EventKind::Bid),
            "closed" => Some(EventKind::Closed),
            "opened" => Some(EventKind::Opened),
            "admin" => Some(EventKind::Admin),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bid_serialises_with_contract_field_names() {
        let bid = Bid {
            auction: "1234".into(),
            amount: 35000,
            bidder: "Ada".into(),
            bidder_id: "g_7Hq2".into(),
            placed_at: 1763900000000,
            source: BidSource::Simulated,
        };
        assert_eq!(
            serde_json::to_string(&bid).unwrap(),
            r#"{"auction":"1234","amount":35000,"bidder":"Ada","bidder_id":"g_7Hq2","placed_at":1763900000000,"source":"simulated"}"#
        );
    }

    #[test]
    fn min_next_uses_starting_price_then_increment() {
        let mut auction = Auction {
            id: "a".into(),
            title: "t".into(),
            status: AuctionStatus::Open,
            starting_price: 1000,
            min_increment: 50,
            ends_at: 0,
            current: None,
            description: None,
            image_url: None,
        };
        assert_eq!(auction.min_next(), 1000);
        auction.current = Some(Bid {
            auction: "a".into(),
            amount: 1200,
            bidder: "b".into(),
            bidder_id: "g_b".into(),
            placed_at: 0,
            source: BidSource::User,
        });
        assert_eq!(auction.min_next(), 1250);
    }
}
