use crate::connection::RedisConnection;
use auction_domain::{AuctionId, BidderId};

/// The auction's state hash.
pub(crate) fn state_key(id: &AuctionId) -> String {
    format!("auction:{{{id}}}")
}

/// The auction's event stream.
pub(crate) fn stream_key(id: &AuctionId) -> String {
    format!("auction:{{{id}}}:events")
}

/// The auction's hidden per-bidder record (maximums, latest bids): never
/// published; cleared when a new round opens.
pub(crate) fn bidders_key(id: &AuctionId) -> String {
    format!("auction:{{{id}}}:bidders")
}

/// The simulator's turn on the auction: the last interval of Redis's clock
/// in which a bidder replica took it (`sim_turn.lua`).
pub(crate) fn sim_turn_key(id: &AuctionId) -> String {
    format!("auction:{{{id}}}:sim_turn")
}

/// The simulated bidders' limits for the auction's current round (a hash,
/// bidder name to cents): set by the first replica to ask in a round
/// (`sim_limits.lua`), deleted when a new round opens (`ensure_open.lua`).
pub(crate) fn sim_limits_key(id: &AuctionId) -> String {
    format!("auction:{{{id}}}:sim_limits")
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

/// Sorted set of auction ids by creation time (for listing), on one node.
pub(crate) const INDEX_BY_CREATION: &str = "auctions:by_created";
/// Sorted set of open auction ids by `ends_at` (for the closer), on one node.
pub(crate) const INDEX_BY_END: &str = "auctions:by_end";

/// How many partitions the global indexes have in a Redis Cluster. Each
/// partition's two sets share the hash tag `{pN}`, so they live in one slot
/// and are updated in one round trip; 16 tags spread over the slots of any
/// small cluster. Changing it strands the auctions indexed under the old
/// count: it is part of the data layout.
pub(crate) const CLUSTER_INDEX_PARTITIONS: u16 = 16;

/// Where the global indexes live: one pair of sorted sets on a single node
/// (the names used before clustering existed), or `CLUSTER_INDEX_PARTITIONS`
/// pairs in a cluster, an auction's partition chosen by a hash of its id.
/// Readers (the closer, the listing) walk every partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Indexes {
    partitions: u16,
}

impl Indexes {
    pub(crate) fn single() -> Self {
        Indexes { partitions: 1 }
    }

    pub(crate) fn cluster() -> Self {
        Indexes {
            partitions: CLUSTER_INDEX_PARTITIONS,
        }
    }

    /// The layout of the deployment `conn` talks to.
    pub(crate) fn for_connection(conn: &RedisConnection) -> Self {
        if conn.is_cluster() {
            Indexes::cluster()
        } else {
            Indexes::single()
        }
    }

    pub(crate) fn partitions(self) -> impl Iterator<Item = u16> {
        0..self.partitions
    }

    /// The auction's partition: FNV-1a of its id, stable across processes
    /// and versions (unlike std's hasher).
    pub(crate) fn partition_of(self, id: &AuctionId) -> u16 {
        let hash = id
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        (hash % u64::from(self.partitions)) as u16
    }

    pub(crate) fn by_creation(self, partition: u16) -> String {
        if self.partitions == 1 {
            INDEX_BY_CREATION.to_owned()
        } else {
            format!("auctions:{{p{partition}}}:by_created")
        }
    }

    pub(crate) fn by_end(self, partition: u16) -> String {
        if self.partitions == 1 {
            INDEX_BY_END.to_owned()
        } else {
            format!("auctions:{{p{partition}}}:by_end")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let id = AuctionId::parse("1234").unwrap();
        assert_eq!(state_key(&id), "auction:{1234}");
        assert_eq!(stream_key(&id), "auction:{1234}:events");
        assert_eq!(live_channel(&id), "auction:{1234}:live");
        assert_eq!(sim_turn_key(&id), "auction:{1234}:sim_turn");
        assert_eq!(sim_limits_key(&id), "auction:{1234}:sim_limits");
        let bidder = BidderId::parse("g_1").unwrap();
        assert_eq!(
            idempotency_key(&id, &bidder, "k"),
            "auction:{1234}:idem:g_1 k"
        );
    }

    #[test]
    fn a_single_node_keeps_one_index_and_a_cluster_partitions_it() {
        let id = AuctionId::parse("1234").unwrap();
        let single = Indexes::single();
        assert_eq!(single.partitions().count(), 1);
        assert_eq!(single.by_end(single.partition_of(&id)), "auctions:by_end");
        assert_eq!(single.by_creation(0), "auctions:by_created");

        let cluster = Indexes::cluster();
        let p = cluster.partition_of(&id);
        assert!(p < CLUSTER_INDEX_PARTITIONS);
        assert_eq!(cluster.by_end(p), format!("auctions:{{p{p}}}:by_end"));
        assert_eq!(
            cluster.by_creation(p),
            format!("auctions:{{p{p}}}:by_created")
        );
        // Ids spread over the partitions (a skew would load one shard).
        let used: std::collections::HashSet<u16> = (0..1000)
            .map(|n| cluster.partition_of(&AuctionId::parse(&format!("a-{n}")).unwrap()))
            .collect();
        assert_eq!(used.len(), usize::from(CLUSTER_INDEX_PARTITIONS));
    }
}
