//! What the bidder replicas running the simulator share in Redis: whose
//! turn it is to bid on an auction, and the simulated bidders' limits in
//! its current round. Both keys share the auction's hash tag.

use crate::error::{LogError, corrupt};
use crate::keys;
use crate::scripts::{SIM_LIMITS, SIM_TURN};
use crate::write::AuctionWriter;
use auction_domain::AuctionId;
use std::time::Duration;

/// The answer to [`AuctionWriter::take_sim_turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTurn {
    /// Whether this caller took the turn of the current interval (no other
    /// caller did before it).
    pub taken: bool,
    /// How long until the next interval starts, by Redis's clock.
    pub next_in: Duration,
}

impl AuctionWriter {
    /// Takes the simulator's turn on `auction` for the current interval of
    /// Redis's clock, if no caller took it yet: whatever the number of
    /// bidder replicas and their clocks, one turn per interval.
    pub async fn take_sim_turn(
        &self,
        auction: &AuctionId,
        interval: Duration,
    ) -> Result<SimTurn, LogError> {
        let interval_ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut conn = self.connection();
        let (taken, next_in_ms): (u8, u64) = SIM_TURN
            .key(keys::sim_turn_key(auction))
            .arg(interval_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(SimTurn {
            taken: taken == 1,
            next_in: Duration::from_millis(next_in_ms),
        })
    }

    /// The simulated bidders' limits (name, cents) in `auction`'s current
    /// round: `draw` if this is the first call of the round (kept for
    /// `keep`, or until a new round opens), else the limits stored by the
    /// first. Every replica gets the same limits.
    pub async fn sim_limits(
        &self,
        auction: &AuctionId,
        draw: &[(&str, u64)],
        keep: Duration,
    ) -> Result<Vec<(String, u64)>, LogError> {
        let mut conn = self.connection();
        let mut invocation = SIM_LIMITS.prepare_invoke();
        invocation
            .key(keys::sim_limits_key(auction))
            .arg(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1));
        for (name, limit) in draw {
            invocation.arg(*name).arg(*limit);
        }
        let stored: Vec<String> = invocation.invoke_async(&mut conn).await?;
        stored
            .chunks(2)
            .map(|pair| match pair {
                [name, limit] => limit
                    .parse()
                    .map(|limit| (name.clone(), limit))
                    .map_err(|_| corrupt(format!("simulated bidder limit {limit:?}"))),
                _ => Err(corrupt("simulated bidder limits: an odd reply")),
            })
            .collect()
    }
}
