//! The replica's feeds, by auction: which auctions it watches, and the
//! one place a feed is added or removed.
//!
//! Lock order: this map's lock is taken before a feed's own locks (see
//! `feed`), never while holding one.

use crate::feed::Feed;
use crate::sync::{Mutex, lock};
use auction_domain::AuctionId;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// Every feed of the replica.
#[derive(Default)]
pub(crate) struct Feeds {
    map: Mutex<HashMap<AuctionId, Arc<Feed>>>,
}

impl Feeds {
    /// Whether the replica watches `auction`.
    pub(crate) fn contains(&self, auction: &AuctionId) -> bool {
        lock(&self.map).contains_key(auction)
    }

    /// The watched auctions.
    pub(crate) fn auctions(&self) -> Vec<AuctionId> {
        lock(&self.map).keys().cloned().collect()
    }

    /// The auction's feed, made by `start` if there is none; `attach`
    /// runs on it under the map's lock, so that a feed found is not
    /// swept before the joining client attached to it (see [`Feeds::sweep`]).
    pub(crate) fn join<T, E>(
        &self,
        auction: &AuctionId,
        start: impl FnOnce() -> Result<Arc<Feed>, E>,
        attach: impl FnOnce(&Arc<Feed>) -> T,
    ) -> Result<(Arc<Feed>, T), E> {
        let mut map = lock(&self.map);
        let feed = match map.entry(auction.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(start()?),
        };
        let attached = attach(feed);
        Ok((feed.clone(), attached))
    }

    /// The auction's feed, if watched.
    pub(crate) fn get(&self, auction: &AuctionId) -> Option<Arc<Feed>> {
        lock(&self.map).get(auction).cloned()
    }

    /// Removes the auction's feed and ends it (its clients and group
    /// writers end).
    pub(crate) fn remove(&self, auction: &AuctionId) {
        let removed = lock(&self.map).remove(auction);
        if let Some(feed) = removed {
            feed.end();
        }
    }

    /// Removes the auction's feed if it still has no clients; `true` if
    /// it was removed. Checked under the map's lock, under which clients
    /// join: none can attach to a feed being removed.
    pub(crate) fn sweep(&self, auction: &AuctionId) -> bool {
        let mut map = lock(&self.map);
        let idle = map.get(auction).is_none_or(|feed| feed.clients() == 0);
        if idle && let Some(feed) = map.remove(auction) {
            feed.end();
        }
        idle
    }
}
