//! Viewers per auction, counted across every edge replica. Each replica
//! reports its own count for each auction it serves; the total is the sum
//! of the reports still fresh. The cost is one script call per watched
//! auction per report interval and replica, pipelined, whatever the number
//! of clients.

use crate::error::LogError;
use crate::keys;
use crate::read::StreamReader;
use crate::scripts::REPORT_VIEWERS;
use auction_domain::AuctionId;

/// An edge reports through the reader it reads streams with: the report
/// writes only its own counts, never an auction's state or stream.
impl StreamReader {
    /// Reports this replica's `(auction, clients)` counts, each fresh for
    /// `fresh_ms`, and returns each auction's total over all replicas, in
    /// order, in one round trip.
    pub async fn report_viewers(
        &self,
        replica: &str,
        counts: &[(AuctionId, u64)],
        fresh_ms: u64,
    ) -> Result<Vec<u64>, LogError> {
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let clients: std::collections::HashMap<&AuctionId, u64> = counts
            .iter()
            .map(|(auction, count)| (auction, *count))
            .collect();
        let auctions: Vec<AuctionId> = counts.iter().map(|(auction, _)| auction.clone()).collect();
        let report = |hash: String| {
            let (auctions, clients) = (&auctions, &clients);
            async move {
                self.connection()
                    .per_auction(auctions, |pipe, auction| {
                        pipe.cmd("EVALSHA")
                            .arg(&hash)
                            .arg(1)
                            .arg(keys::viewers_key(auction))
                            .arg(replica)
                            .arg(clients.get(auction).copied().unwrap_or(0))
                            .arg(fresh_ms);
                    })
                    .await
            }
        };
        let replies = match report(REPORT_VIEWERS.get_hash().to_owned()).await {
            Ok(replies) => replies,
            // Redis restarted or flushed its scripts: load and go again.
            Err(_) => {
                let mut conn = self.connection().clone();
                let hash = REPORT_VIEWERS.load_async(&mut conn).await?;
                report(hash).await?
            }
        };
        replies
            .iter()
            .map(|reply| {
                redis::from_redis_value_ref(reply)
                    .map_err(|error| LogError::Corrupt(format!("viewers answered {error}")))
            })
            .collect()
    }
}
