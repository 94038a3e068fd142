//! Keeps the demo alive: keeps each simulated auction open (a new round
//! starts when one closes) and bids current + 10..=59 whole units on it
//! every interval, through the same validated script as user bids.

use crate::BidderSettings;
use auction_domain::{AuctionId, BidSource, Bidder, BidderId, BidderName};
use event_log::{AuctionSpec, BidAnswer, EventLog, LogError};
use service_kit::Context;
use telemetry::BidOutcome;

/// Simulated bidders: each name is both the id (`sim_` marks simulated
/// ids, which no token can carry) and the display name.
const BIDDERS: [&str; 8] = [
    "sim_ada",
    "sim_grace",
    "sim_linus",
    "sim_barbara",
    "sim_ken",
    "sim_margaret",
    "sim_dennis",
    "sim_frances",
];
/// Starting price and increment of simulated auctions, cents.
const STARTING_PRICE: u64 = 10_000;
const MIN_INCREMENT: u64 = 1_000;

pub async fn run(ctx: Context, log: EventLog, settings: BidderSettings) {
    let mut ticker = tokio::time::interval(settings.sim_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(auctions = ?settings.sim_auctions, "simulator started");
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for auction in &settings.sim_auctions {
            match bid_once(&ctx, &log, auction, settings.sim_duration_ms).await {
                Ok(()) => {}
                Err(error) => tracing::debug!(%error, %auction, "simulated bid failed"),
            }
        }
    }
}

async fn bid_once(
    ctx: &Context,
    log: &EventLog,
    auction: &AuctionId,
    duration_ms: u64,
) -> Result<(), LogError> {
    let spec = AuctionSpec {
        id: auction.clone(),
        title: format!("Lot {auction}: vintage mechanical keyboard"),
        starting_price: STARTING_PRICE,
        min_increment: MIN_INCREMENT,
        duration_ms,
    };
    let (_, state) = log.ensure_open(&spec).await?;
    let base = state
        .current
        .as_ref()
        .map_or(state.starting_price, |bid| bid.amount);
    let amount = base + fastrand::u64(10..=59) * 100;
    let name = BIDDERS[fastrand::usize(..BIDDERS.len())];
    let bidder = Bidder {
        id: BidderId::parse(name).map_err(|error| LogError::Corrupt(error.message))?,
        name: BidderName::parse(name).map_err(|error| LogError::Corrupt(error.message))?,
    };
    let outcome = match log
        .place_bid(auction, amount, &bidder, BidSource::Simulated, None, None)
        .await?
    {
        Some(attempt) => match attempt.answer {
            BidAnswer::Accepted { .. } => BidOutcome::accepted,
            BidAnswer::TooLow { .. } => BidOutcome::too_low,
            BidAnswer::Closed => BidOutcome::closed,
            // The simulator sends no Idempotency-Key.
            BidAnswer::IdempotencyKeyReused => BidOutcome::invalid,
        },
        // Deleted between the two calls: the next tick re-creates it.
        None => return Ok(()),
    };
    ctx.metrics.bid("simulated", outcome);
    Ok(())
}
