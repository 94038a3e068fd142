//! Viewers per auction, counted across every edge replica. Each replica
//! reports its own count for each auction it serves; the total is the sum
//! of the reports still fresh. The cost is one script call per watched
//! auction per report interval and replica, pipelined, whatever the number
//! of clients.

use crate::keys;
use crate::log::{EventLog, LogError};
use auction_domain::AuctionId;
use redis::Script;
use std::sync::LazyLock;

static REPORT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/prelude.lua"),
        include_str!("lua/viewers.lua")
    ))
});

impl EventLog {
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
        let mut conn = self.connection();
        let pipe = |hash: &str| {
            let mut pipe = redis::pipe();
            for (auction, count) in counts {
                pipe.cmd("EVALSHA")
                    .arg(hash)
                    .arg(1)
                    .arg(keys::viewers_key(auction))
                    .arg(replica)
                    .arg(*count)
                    .arg(fresh_ms);
            }
            pipe
        };
        match pipe(REPORT.get_hash()).query_async(&mut conn).await {
            Ok(totals) => Ok(totals),
            // Redis restarted or flushed its scripts: load and go again.
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let hash = REPORT.load_async(&mut conn).await?;
                Ok(pipe(&hash).query_async(&mut conn).await?)
            }
            Err(error) => Err(error.into()),
        }
    }
}
