//! Closes auctions at their end. Every replica runs this loop; the close
//! script is atomic, so exactly one `closed` event is appended per auction
//! however many replicas race. The close also sets the auction's expiry
//! (`AUCTION_RETENTION_MS`); this loop walks the creation index a batch at a
//! time and drops the ids of auctions that expired.

use event_log::{AuctionWriter, CloseOutcome};
use service_kit::Context;
use std::time::{Duration, Instant};

/// How many due auctions one pass handles (the rest wait for the next pass).
const BATCH: usize = 100;
/// How often, and how many ids at a time, the creation index is checked
/// for expired auctions.
const TRIM_EVERY: Duration = Duration::from_secs(2);
const TRIM_BATCH: usize = 200;

pub async fn run(ctx: Context, writer: AuctionWriter, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trim_ticker = tokio::time::interval(TRIM_EVERY);
    trim_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Where the walk of the creation index goes on.
    let mut trim_from = None;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {
                if let Err(error) = close_due(&ctx, &writer).await {
                    tracing::debug!(%error, "close pass failed; retrying next tick");
                }
            }
            _ = trim_ticker.tick() => {
                match writer.trim_creation_index(trim_from, TRIM_BATCH).await {
                    Ok(next) => trim_from = next,
                    Err(error) => tracing::debug!(%error, "index trim failed; retrying"),
                }
            }
        }
    }
}

/// Due auctions are picked by Redis's clock (the one the close checks), so
/// a replica whose own clock is behind still closes them on time.
/// Each close is timed (`auction_redis_command_duration_seconds`) and its
/// lag past the auction's end observed (`auction_close_lag_seconds`).
async fn close_due(ctx: &Context, writer: &AuctionWriter) -> Result<(), event_log::LogError> {
    let metrics = &ctx.metrics;
    let sent = Instant::now();
    let due = writer.due_for_close_with_ends(BATCH).await;
    metrics.redis_command("due_for_close", sent.elapsed());
    for (auction, ends_at) in due? {
        let sent = Instant::now();
        let closed = writer.close_if_due(&auction).await;
        metrics.redis_command("close_if_due", sent.elapsed());
        if closed? == CloseOutcome::Closed {
            let lag_ms = auction_domain::clock::now_ms().saturating_sub(ends_at);
            metrics.close_lag(Duration::from_millis(lag_ms));
            tracing::info!(auction = %auction, lag_ms, "auction closed");
        }
    }
    Ok(())
}
