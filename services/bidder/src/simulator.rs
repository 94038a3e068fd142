//! Keeps the demo alive, and winnable: keeps each simulated auction open (a
//! new round starts `sim_pause` after one closes, so its winner can be
//! seen) and places one simulated bid on it per interval, through the same
//! validated script as user bids.
//!
//! One bid per interval across every bidder replica: each replica asks
//! Redis for the auction's turn once per interval of Redis's clock, and
//! only the replica that takes it bids (`AuctionWriter::take_sim_turn`).
//! A replica that dies simply stops asking; the others take the next turns.
//!
//! Winnable: each simulated bidder has a limit of its own in each round,
//! drawn between the starting price and `sim_limit_range` above it and
//! shared by the replicas through Redis (`AuctionWriter::sim_limits`). A
//! simulated bid is the smallest amount the auction accepts
//! (`Auction::min_next`) plus 0..=49 whole units, capped at the bidder's
//! limit, by a bidder that is not leading and whose limit allows it; when
//! none is left the simulator waits for the next round, and whoever bid
//! past every limit wins.

use crate::BidderSettings;
use auction_domain::{AuctionId, BidSource, Bidder, BidderId, BidderName};
use event_log::{AuctionSpec, AuctionWriter, BidAnswer, EnsureOutcome, LogError};
use service_kit::Context;
use std::time::Duration;
use telemetry::BidOutcome;
use tokio::task::JoinSet;
use tokio::time::Instant;

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
/// A simulated bid goes up to this many whole units above the minimum.
const MOST_EXTRA_UNITS: u64 = 49;
/// How far past the start of an interval (by Redis's clock) a replica asks
/// for its turn (at most a quarter of the interval), so that it seldom
/// asks a moment too early: the wait is counted from before the request
/// reached Redis. Too early costs one more request, not the turn.
const TURN_MARGIN: Duration = Duration::from_millis(1);

/// The limits of the round a loop last bid in, known by the round's end
/// (a new round ends later): one request fewer per bid.
struct KnownLimits {
    ends_at: u64,
    limits: Vec<(String, u64)>,
}

pub async fn run(ctx: Context, writer: AuctionWriter, settings: BidderSettings) {
    tracing::info!(auctions = ?settings.sim_auctions, "simulator started");
    let mut loops = JoinSet::new();
    for (index, auction) in settings.sim_auctions.iter().enumerate() {
        loops.spawn(simulate(
            ctx.clone(),
            writer.clone(),
            auction.clone(),
            index,
            settings.clone(),
        ));
    }
    // Each loop returns once shutdown is asked for.
    while loops.join_next().await.is_some() {}
}

/// One auction's loop: asks for the turn at the start of each interval of
/// Redis's clock and bids when it takes it.
async fn simulate(
    ctx: Context,
    writer: AuctionWriter,
    auction: AuctionId,
    index: usize,
    settings: BidderSettings,
) {
    let margin = TURN_MARGIN.min(settings.sim_interval / 4);
    let mut known = None;
    loop {
        let asked_at = Instant::now();
        let next_turn = match writer.take_sim_turn(&auction, settings.sim_interval).await {
            Ok(turn) => {
                if turn.taken {
                    let bid = bid_once(&ctx, &writer, &auction, index, &settings, &mut known);
                    if let Err(error) = bid.await {
                        tracing::debug!(%error, %auction, "simulated bid failed");
                    }
                }
                asked_at + turn.next_in + margin
            }
            Err(error) => {
                tracing::debug!(%error, %auction, "simulator turn not taken");
                asked_at + settings.sim_interval
            }
        };
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next_turn) => {}
        }
    }
}

async fn bid_once(
    ctx: &Context,
    writer: &AuctionWriter,
    auction: &AuctionId,
    index: usize,
    settings: &BidderSettings,
    known: &mut Option<KnownLimits>,
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
        seller: None,
        terms: None,
        rules: Default::default(),
    };
    let (outcome, state) = writer.ensure_open(&spec, settings.sim_pause).await?;
    if outcome == EnsureOutcome::Paused {
        // The closed round stays on show until the pause is over.
        return Ok(());
    }
    let limits = match known {
        Some(round) if round.ends_at == state.ends_at => &round.limits,
        _ => {
            let draw = draw_limits(settings.sim_limit_range);
            // Kept past the round and its pause; a new round deletes them.
            let keep = Duration::from_millis(settings.sim_duration_ms) + settings.sim_pause * 2;
            let limits = writer.sim_limits(auction, &draw, keep).await?;
            &known
                .insert(KnownLimits {
                    ends_at: state.ends_at,
                    limits,
                })
                .limits
        }
    };
    let leader = state.current.as_ref().map(|bid| bid.bidder_id.as_str());
    let Some((name, amount)) = next_bid(limits, leader, state.min_next()) else {
        // Every simulated bidder is leading or past its limit.
        return Ok(());
    };
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
            // A person's bid came in between: the next turn looks again.
            BidAnswer::TooLow { .. }
            // Plain bids only: neither happens.
            | BidAnswer::MaxNotRaised { .. }
            | BidAnswer::BuyNowUnavailable => BidOutcome::too_low,
            BidAnswer::Closed => BidOutcome::closed,
            // The simulator sends no Idempotency-Key.
            BidAnswer::IdempotencyKeyReused | BidAnswer::BidderSuspended => BidOutcome::invalid,
        },
        // Deleted between the two calls: the next turn re-creates it.
        None => return Ok(()),
    };
    ctx.metrics.bid("simulated", outcome);
    Ok(())
}

/// One limit per simulated bidder for a round: the starting price plus
/// 0..=`range`, in whole units.
fn draw_limits(range: u64) -> Vec<(&'static str, u64)> {
    BIDDERS
        .iter()
        .map(|name| (*name, STARTING_PRICE + fastrand::u64(0..=range / 100) * 100))
        .collect()
}

/// Who bids next and how much: a simulated bidder that is not `leader` and
/// whose limit reaches `min_next`, at `min_next` plus 0..=49 whole units,
/// never past its limit. `None`: every one is leading or past its limit.
/// Names in `limits` that are not simulated bidders are ignored.
fn next_bid<'a>(
    limits: &'a [(String, u64)],
    leader: Option<&str>,
    min_next: u64,
) -> Option<(&'a str, u64)> {
    let willing: Vec<(&str, u64)> = limits
        .iter()
        .filter(|(name, limit)| {
            BIDDERS.contains(&name.as_str()) && Some(name.as_str()) != leader && *limit >= min_next
        })
        .map(|(name, limit)| (name.as_str(), *limit))
        .collect();
    let (name, limit) = *willing.get(fastrand::usize(..willing.len().max(1)))?;
    let amount = min_next.saturating_add(fastrand::u64(0..=MOST_EXTRA_UNITS) * 100);
    Some((name, amount.min(limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
        pairs
            .iter()
            .map(|(name, limit)| ((*name).to_owned(), *limit))
            .collect()
    }

    #[test]
    fn limits_lie_between_the_starting_price_and_the_range_above_it() {
        for _ in 0..100 {
            let draw = draw_limits(5_000);
            assert_eq!(draw.len(), BIDDERS.len());
            for (_, limit) in draw {
                assert!((STARTING_PRICE..=STARTING_PRICE + 5_000).contains(&limit));
                assert_eq!(limit % 100, 0, "whole units");
            }
        }
        assert!(
            draw_limits(0)
                .iter()
                .all(|(_, limit)| *limit == STARTING_PRICE)
        );
    }

    #[test]
    fn a_bid_never_passes_the_bidders_limit_nor_comes_from_the_leader() {
        let limits = limits(&[("sim_ada", 20_000), ("sim_grace", 12_500)]);
        for _ in 0..200 {
            let (name, amount) = next_bid(&limits, Some("sim_ada"), 12_000).unwrap();
            assert_eq!(name, "sim_grace");
            assert!((12_000..=12_500).contains(&amount), "{amount}");
        }
    }

    #[test]
    fn past_every_limit_nobody_bids() {
        let two = limits(&[("sim_ada", 20_000), ("sim_grace", 12_500)]);
        assert_eq!(next_bid(&two, Some("g_person"), 20_100), None);
        // The only one left is leading.
        assert_eq!(next_bid(&two, Some("sim_ada"), 13_000), None);
        // Names that are not simulated bidders never bid.
        assert_eq!(next_bid(&limits(&[("g_x", 99_999)]), None, 10_000), None);
        assert_eq!(next_bid(&[], None, 10_000), None);
    }
}
