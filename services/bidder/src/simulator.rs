//! Keeps the demo alive: keeps each simulated auction open (a new round
//! starts `sim_pause` after one closes, so its winner can be seen) and bids
//! the smallest amount it accepts (`Auction::min_next`) plus 0..=49 whole
//! units on it every interval, through the same validated script as user
//! bids.

use crate::BidderSettings;
use auction_domain::{AuctionId, BidSource, Bidder, BidderId, BidderName};
use event_log::{AuctionSpec, AuctionWriter, BidAnswer, EnsureOutcome, LogError};
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
/// The demo lots: title, description, picture (a file in `web/`, served
/// under `/assets/`). The n-th simulated auction shows lot n (cycling).
const LOTS: [(&str, &str, &str); 4] = [
    (
        "Vintage mechanical keyboard",
        "A 1980s keyboard with buckling-spring keys, cleaned and tested. Every key works; the case shows light wear.",
        "/assets/lot-keyboard.svg",
    ),
    (
        "Brass pocket watch",
        "A hand-wound pocket watch in a brass case, running and keeping time to a minute a day. Chain included.",
        "/assets/lot-watch.svg",
    ),
    (
        "Folding film camera",
        "A 6x9 folding camera with a bellows in good order and a clean lens. Sold as a collector's piece.",
        "/assets/lot-camera.svg",
    ),
    (
        "Fountain pen with gold nib",
        "A lever-filling fountain pen with a 14k nib, a fresh ink sac and its original box.",
        "/assets/lot-pen.svg",
    ),
];
/// Starting price and increment of simulated auctions, cents.
const STARTING_PRICE: u64 = 10_000;
const MIN_INCREMENT: u64 = 1_000;

pub async fn run(ctx: Context, writer: AuctionWriter, settings: BidderSettings) {
    let mut ticker = tokio::time::interval(settings.sim_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(auctions = ?settings.sim_auctions, "simulator started");
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for (index, auction) in settings.sim_auctions.iter().enumerate() {
            match bid_once(&ctx, &writer, auction, index, &settings).await {
                Ok(()) => {}
                Err(error) => tracing::debug!(%error, %auction, "simulated bid failed"),
            }
        }
    }
}

async fn bid_once(
    ctx: &Context,
    writer: &AuctionWriter,
    auction: &AuctionId,
    index: usize,
    settings: &BidderSettings,
) -> Result<(), LogError> {
    let (title, description, image_url) = LOTS[index % LOTS.len()];
    let spec = AuctionSpec {
        id: auction.clone(),
        title: title.to_owned(),
        starting_price: STARTING_PRICE,
        min_increment: MIN_INCREMENT,
        duration_ms: settings.sim_duration_ms,
        description: Some(description.to_owned()),
        image_url: Some(image_url.to_owned()),
        rules: Default::default(),
    };
    let (outcome, state) = writer.ensure_open(&spec, settings.sim_pause).await?;
    if outcome == EnsureOutcome::Paused {
        // The closed round stays on show until the pause is over.
        return Ok(());
    }
    let amount = state.min_next() + fastrand::u64(0..=49) * 100;
    let name = BIDDERS[fastrand::usize(..BIDDERS.len())];
    let bidder = Bidder {
        id: BidderId::parse(name).map_err(|error| LogError::Corrupt(error.message))?,
        name: BidderName::parse(name).map_err(|error| LogError::Corrupt(error.message))?,
    };
    let outcome = match writer
        .place_bid(auction, amount, &bidder, BidSource::Simulated, None, None)
        .await?
    {
        Some(attempt) => match attempt.answer {
            BidAnswer::Accepted { .. } => BidOutcome::accepted,
            // Plain bids only: neither happens.
            BidAnswer::TooLow { .. }
            | BidAnswer::MaxNotRaised { .. }
            | BidAnswer::BuyNowUnavailable => BidOutcome::too_low,
            BidAnswer::Closed => BidOutcome::closed,
            // The simulator sends no Idempotency-Key.
            BidAnswer::IdempotencyKeyReused | BidAnswer::BidderSuspended => BidOutcome::invalid,
        },
        // Deleted between the two calls: the next tick re-creates it.
        None => return Ok(()),
    };
    ctx.metrics.bid("simulated", outcome);
    Ok(())
}
