//! Viewers per auction over every replica. A viewer is a client address
//! watching the auction: the [`Watchers`] table counts each address once
//! per auction on this replica, however many streams or subscriptions it
//! holds, so one client cannot inflate a count by opening more. A task of
//! its own beside the subscriber (its round trips never hold up a notice)
//! reports this replica's counts each round and tells a feed's clients the
//! auction's total over every replica when it changed.

use crate::codec::Item;
use crate::config::HubConfig;
use crate::deadline::timed;
use crate::feeds::Feeds;
use crate::sync::{Mutex, lock};
use auction_domain::AuctionId;
use event_log::EventStore;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The client addresses watching each auction on this replica, with how
/// many watches each holds. Invariant: an auction is in the table only
/// while some address has a watch of it, and an address only while its
/// count is above 0, so the table holds no more entries than there are
/// live watches (each bounded by the edge's connection caps).
#[derive(Default)]
pub(crate) struct Watchers {
    map: Mutex<HashMap<AuctionId, HashMap<IpAddr, u32>>>,
}

impl Watchers {
    /// Counts a watch of `auction` by `address` until the returned
    /// [`Viewer`] is dropped.
    pub(crate) fn add(self: &Arc<Self>, auction: &AuctionId, address: IpAddr) -> Viewer {
        *lock(&self.map)
            .entry(auction.clone())
            .or_default()
            .entry(address)
            .or_insert(0) += 1;
        Viewer {
            watchers: self.clone(),
            auction: auction.clone(),
            address,
        }
    }

    /// Each watched auction with its viewers (distinct addresses).
    pub(crate) fn counts(&self) -> Vec<(AuctionId, u64)> {
        lock(&self.map)
            .iter()
            .map(|(auction, addresses)| (auction.clone(), addresses.len() as u64))
            .collect()
    }

    fn remove(&self, auction: &AuctionId, address: IpAddr) {
        let mut map = lock(&self.map);
        let Some(addresses) = map.get_mut(auction) else {
            return;
        };
        if let Some(watches) = addresses.get_mut(&address) {
            *watches = watches.saturating_sub(1);
            if *watches == 0 {
                addresses.remove(&address);
            }
        }
        if addresses.is_empty() {
            map.remove(auction);
        }
    }
}

/// One watch of an auction by a client address, counted while it lives
/// (a client's [`Subscription`](crate::Subscription) holds it).
pub(crate) struct Viewer {
    watchers: Arc<Watchers>,
    auction: AuctionId,
    address: IpAddr,
}

impl std::fmt::Debug for Viewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viewer")
            .field("auction", &self.auction)
            .field("address", &self.address)
            .finish()
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.watchers.remove(&self.auction, self.address);
    }
}

/// Auctions per round trip: each is a short script on Redis's one thread,
/// so a batch is kept small enough never to hold up a bid for long.
const BATCH: usize = 32;

/// Runs until `shutdown`.
pub(crate) async fn report(
    feeds: Arc<Feeds>,
    watchers: Arc<Watchers>,
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
        let mut counts: Vec<(AuctionId, u64)> = watchers.counts();
        // Auctions nobody watches any more are reported empty once.
        let watched: std::collections::HashSet<&AuctionId> =
            counts.iter().map(|(auction, _)| auction).collect();
        let left: Vec<(AuctionId, u64)> = reported
            .keys()
            .filter(|auction| !watched.contains(auction))
            .map(|auction| (auction.clone(), 0))
            .collect();
        counts.extend(left);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn auction(id: &str) -> AuctionId {
        AuctionId::parse(id).expect("an auction id")
    }

    fn counts(watchers: &Watchers) -> Vec<(AuctionId, u64)> {
        let mut counts = watchers.counts();
        counts.sort();
        counts
    }

    #[test]
    fn an_address_counts_once_per_auction_however_many_watches_it_holds() {
        let watchers = Arc::new(Watchers::default());
        let (lot, other) = (auction("lot"), auction("other"));
        let home: IpAddr = "192.0.2.1".parse().expect("an address");
        let away: IpAddr = "192.0.2.2".parse().expect("an address");
        let mut held: Vec<Viewer> = (0..64).map(|_| watchers.add(&lot, home)).collect();
        assert_eq!(counts(&watchers), vec![(lot.clone(), 1)]);
        let away_watch = watchers.add(&lot, away);
        let elsewhere = watchers.add(&other, home);
        assert_eq!(
            counts(&watchers),
            vec![(lot.clone(), 2), (other.clone(), 1)]
        );
        // The address stays a viewer until its last watch ends.
        held.truncate(1);
        assert_eq!(counts(&watchers), vec![(lot.clone(), 2), (other, 1)]);
        drop(elsewhere);
        drop(held);
        assert_eq!(counts(&watchers), vec![(lot, 1)]);
        drop(away_watch);
        assert!(watchers.counts().is_empty(), "nothing kept once all left");
        assert!(lock(&watchers.map).is_empty());
    }
}
