use serde::{Deserialize, Serialize};

/// Where a bid came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BidSource {
    Simulated,
    User,
    /// Placed by the system for a bidder's maximum (a proxy bid).
    Proxy,
}

impl BidSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BidSource::Simulated => "simulated",
            BidSource::User => "user",
            BidSource::Proxy => "proxy",
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
    /// On an auction with a reserve: whether this bid meets it (the
    /// reserve itself is never shown). Absent without a reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_met: Option<bool>,
}

/// Who sells an auction: the creating token's bidder id and display name,
/// named as a bid names its bidder (`bidder_id`, `bidder`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seller {
    pub id: String,
    pub name: String,
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
    /// Who created it; absent for auctions created before sellers were
    /// recorded, and for the simulator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller: Option<Seller>,
    /// The seller's terms of sale; absent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<String>,
    /// Soft close: a bid within this many ms of the end moves the end this
    /// much later (0: no soft close).
    #[serde(default)]
    pub soft_close_ms: u64,
    /// The price at which a bidder may end the auction at once; absent
    /// when the auction has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buy_now_price: Option<u64>,
    /// Once there is a bid: whether the current price meets the reserve
    /// (true when there is none). The reserve itself is never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_met: Option<bool>,
    /// Once closed: whether it sold (a bid that met the reserve).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sold: Option<bool>,
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
    /// A bid near the end moved it (soft close); payload:
    /// `{"auction":id,"ends_at":ms}`.
    Extended,
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
            EventKind::Extended => "extended",
            EventKind::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        match text {
            "bid" => Some(EventKind::Bid),
            "closed" => Some(EventKind::Closed),
            "opened" => Some(EventKind::Opened),
            "extended" => Some(EventKind::Extended),
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
            reserve_met: None,
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
            seller: None,
            terms: None,
            soft_close_ms: 0,
            buy_now_price: None,
            reserve_met: None,
            sold: None,
        };
        assert_eq!(auction.min_next(), 1000);
        auction.current = Some(Bid {
            auction: "a".into(),
            amount: 1200,
            bidder: "b".into(),
            bidder_id: "g_b".into(),
            placed_at: 0,
            source: BidSource::User,
            reserve_met: None,
        });
        assert_eq!(auction.min_next(), 1250);
    }
}
