use auction_domain::{AuctionId, BidderId};

/// The auction's state hash.
pub(crate) fn state_key(id: &AuctionId) -> String {
    format!("auction:{{{id}}}")
}

/// The auction's event stream.
pub(crate) fn stream_key(id: &AuctionId) -> String {
    format!("auction:{{{id}}}:events")
}

/// The auction's pub/sub channel (also built inside the Lua prelude).
pub(crate) fn live_channel(id: &AuctionId) -> String {
    format!("auction:{{{id}}}:live")
}

/// Where the answer to one bidder's `Idempotency-Key` is kept. Bidder ids
/// and keys are visible ASCII without spaces, so the space keeps
/// ("a b", "c") and ("a", "b c") apart.
/// How many clients watch the auction, per edge replica.
pub(crate) fn viewers_key(id: &AuctionId) -> String {
    format!("auction:{{{id}}}:viewers")
}

pub(crate) fn idempotency_key(id: &AuctionId, bidder: &BidderId, key: &str) -> String {
    format!("auction:{{{id}}}:idem:{bidder} {key}")
}

/// Sorted set of auction ids by creation time (for listing).
pub(crate) const INDEX_BY_CREATION: &str = "auctions:by_created";
/// Sorted set of open auction ids by `ends_at` (for the closer).
pub(crate) const INDEX_BY_END: &str = "auctions:by_end";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let id = AuctionId::parse("1234").unwrap();
        assert_eq!(state_key(&id), "auction:{1234}");
        assert_eq!(stream_key(&id), "auction:{1234}:events");
        assert_eq!(live_channel(&id), "auction:{1234}:live");
        let bidder = BidderId::parse("g_1").unwrap();
        assert_eq!(
            idempotency_key(&id, &bidder, "k"),
            "auction:{1234}:idem:g_1 k"
        );
    }
}
