//! Which watched auctions stopped existing (expired, deleted): a task of
//! its own beside the subscriber, so its round trips never hold up a
//! notice. Nothing is published for such an auction any more, so without
//! this its clients would wait forever; the subscriber ends the feeds this
//! task names (see `Subscriber::vanished`).
//!
//! Why a task: the reads are one round trip per `AUDIT_BATCH` auctions,
//! and done on the subscriber's own task they held every notice back
//! meanwhile (at 10,000 watched auctions, 40 round trips every 10 s took
//! p99.9 latency from 6 to 40-55 ms).

use crate::deadline::timed;
use crate::feeds::Feeds;
use auction_domain::AuctionId;
use event_log::EventStore;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Auctions whose existence one round trip checks.
const AUDIT_BATCH: usize = 256;

/// Runs until `shutdown`, every `every`: sends the subscriber the watched
/// auctions found missing, a batch at a time (bounded: it waits while the
/// subscriber is busy).
pub(crate) async fn run(
    feeds: Arc<Feeds>,
    store: Arc<dyn EventStore>,
    every: Duration,
    vanished: mpsc::Sender<Vec<AuctionId>>,
    shutdown: CancellationToken,
) {
    let mut rounds = tokio::time::interval(every);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rounds.reset();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = rounds.tick() => {}
        }
        let watched = feeds.auctions();
        for batch in watched.chunks(AUDIT_BATCH) {
            // A batch without an answer in time ends this round.
            let exist = match timed(store.exist(batch)).await {
                Ok(exist) => exist,
                Err(error) => {
                    tracing::debug!(%error, "auctions not audited this round");
                    break;
                }
            };
            let gone: Vec<AuctionId> = batch
                .iter()
                .zip(exist)
                .filter(|(_, exists)| !exists)
                .map(|(auction, _)| auction.clone())
                .collect();
            if gone.is_empty() {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                sent = vanished.send(gone) => if sent.is_err() { return },
            }
        }
    }
}
