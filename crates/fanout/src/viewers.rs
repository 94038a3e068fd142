//! Viewers per auction over every replica: a task of its own beside the
//! subscriber, so its round trips never hold up a notice. Each round it
//! reports this replica's clients of every feed (the feed's receivers) and
//! tells a feed's clients the auction's total when it changed.

use crate::codec::Item;
use crate::config::HubConfig;
use crate::deadline::timed;
use crate::feeds::Feeds;
use auction_domain::AuctionId;
use event_log::EventStore;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Auctions per round trip: each is a short script on Redis's one thread,
/// so a batch is kept small enough never to hold up a bid for long.
const BATCH: usize = 32;

/// Runs until `shutdown`.
pub(crate) async fn report(
    feeds: Arc<Feeds>,
    store: Arc<dyn EventStore>,
    config: HubConfig,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(config.viewers_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Fresh for three rounds: one late round does not drop this replica.
    let fresh_ms = (config.viewers_interval.as_millis() as u64).saturating_mul(3);
    // What this replica last reported per auction: an auction whose
    // clients all left is reported once more, as 0.
    let mut reported: HashMap<AuctionId, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut counts: Vec<(AuctionId, u64)> = feeds.clients();
        // Feeds that went away (swept) are reported empty once.
        let watched: std::collections::HashSet<&AuctionId> =
            counts.iter().map(|(auction, _)| auction).collect();
        let swept: Vec<(AuctionId, u64)> = reported
            .keys()
            .filter(|auction| !watched.contains(auction))
            .map(|auction| (auction.clone(), 0))
            .collect();
        counts.retain(|(auction, clients)| *clients > 0 || reported.contains_key(auction));
        counts.extend(swept);
        for batch in counts.chunks(BATCH) {
            let round = store.report_viewers(&config.replica, batch, fresh_ms);
            // A batch without an answer in time ends this round.
            let totals = match timed(round).await {
                Ok(totals) => totals,
                Err(error) => {
                    tracing::debug!(%error, "viewer counts not reported this round");
                    break;
                }
            };
            for ((auction, clients), total) in batch.iter().zip(totals) {
                if *clients > 0 {
                    reported.insert(auction.clone(), *clients);
                } else {
                    reported.remove(auction);
                }
                let Some(feed) = feeds.get(auction) else {
                    continue;
                };
                let total = u32::try_from(total).unwrap_or(u32::MAX);
                if feed.set_viewers(total) {
                    feed.send(Item::Viewers(total));
                }
            }
        }
    }
}
