//! Closes auctions at their end. Every replica runs this loop; the close
//! script is atomic, so exactly one `closed` event is appended per auction
//! however many replicas race.

use event_log::{CloseOutcome, EventLog};
use service_kit::Context;
use std::time::Duration;

/// How many due auctions one pass handles (the rest wait for the next pass).
const BATCH: usize = 100;

pub async fn run(ctx: Context, log: EventLog, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(error) = close_due(&log).await {
            tracing::debug!(%error, "close pass failed; retrying next tick");
        }
    }
}

async fn close_due(log: &EventLog) -> Result<(), event_log::LogError> {
    let now = auction_domain::clock::now_ms();
    for auction in log.due_for_close(now, BATCH).await? {
        if log.close_if_due(&auction).await? == CloseOutcome::Closed {
            tracing::info!(auction = %auction, "auction closed");
        }
    }
    Ok(())
}
