//! A socket's subscriptions to several auctions (a WebSocket's): one live
//! [`Subscription`] per auction, their feeds polled together, one write
//! carrying events of all of them, and the parking of the socket when it
//! has one subscription and nothing to send. The parking contract (the
//! receiver given up under the feed's lock, the socket taken back before
//! anything else touches it) is kept here; the edge keeps what is its own
//! (its messages, its control frames).

use crate::client::{Batch, Delivery, Ended, Subscription, Transport};
use crate::codec::{AltWindow, Codec, Framing, Item};
use crate::feed::Parked;
use crate::writer::FrameSocket;
use auction_domain::AuctionId;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// What trying to park the socket came to.
pub enum Park {
    /// The hub writes the one subscription's events to the socket now:
    /// take it back ([`LiveSet::unpark`]) before anything else.
    Parked(Parked),
    /// Not caught up: this item was ready, forward it.
    Ready(u32, Result<Item, RecvError>),
    /// Not parked (several subscriptions, bytes of tungstenite's pending,
    /// or the feed has all the parked clients it may).
    No,
}

/// A socket's live subscriptions, one per auction.
#[derive(Default)]
pub struct LiveSet {
    /// The subscriptions' feeds, each tagged with a small number that is
    /// cheap to copy on every event. Polled as a set that polls only the
    /// feeds whose receivers were woken: a stream of 100 auctions would
    /// otherwise poll all 100 for each event of one (measured: 2.2 times
    /// the CPU per delivery of single streams).
    feeds: Feeds,
    /// Feeds removed but still in `feeds` (their receiver dropped, so
    /// they are never woken again): swept when they outnumber the live.
    removed: usize,
    live: Vec<(u32, Subscription)>,
    next_key: u32,
    batch: Batch,
}

/// One subscription's feed, tagged with its key. `rx` is `None` once it
/// is removed: the receiver is dropped at once (the feed never counts a
/// removed client), and the entry ends when it is next polled, or at the
/// next sweep.
struct Tagged {
    key: u32,
    rx: Option<BroadcastStream<Item>>,
}

impl Stream for Tagged {
    type Item = (u32, Result<Item, BroadcastStreamRecvError>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let key = self.key;
        match &mut self.rx {
            None => Poll::Ready(None),
            Some(rx) => rx
                .poll_next_unpin(cx)
                .map(|item| item.map(|item| (key, item))),
        }
    }
}

type Feeds = SelectAll<Tagged>;

impl LiveSet {
    /// A set whose events `framing` writes (an SSE stream of several
    /// auctions): never parked, since the feed writes shared frames.
    pub fn framed(framing: Box<dyn Framing>) -> LiveSet {
        LiveSet {
            batch: Batch::framed(framing),
            ..LiveSet::default()
        }
    }

    /// A set whose events are written as their alternative frames
    /// ([`EncodedEvent::alt`](crate::EncodedEvent::alt): a WebSocket that
    /// negotiated compression), as its socket's `window` chooses; parked
    /// like any other.
    pub fn alt(window: Arc<AltWindow>) -> LiveSet {
        LiveSet {
            batch: Batch::alt(window),
            ..LiveSet::default()
        }
    }

    /// The batch its starts are written through: a subscription added to
    /// a framed set starts framed too ([`Delivery::start_framed`]).
    pub fn batch(&mut self) -> &mut Batch {
        &mut self.batch
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn contains(&self, auction: &AuctionId) -> bool {
        self.live.iter().any(|(_, s)| s.auction() == auction)
    }

    /// Adds a started subscription (see [`Delivery::start`]) reading from
    /// `rx`; one to the same auction is replaced.
    pub fn insert(&mut self, subscription: Subscription, rx: broadcast::Receiver<Item>) {
        self.unsubscribe(subscription.auction());
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        self.feeds.push(Tagged {
            key,
            rx: Some(BroadcastStream::new(rx)),
        });
        self.live.push((key, subscription));
    }

    /// Drops the receiver of the feed `key` now.
    fn remove_feed(&mut self, key: u32) {
        for feed in self.feeds.iter_mut() {
            if feed.key == key && feed.rx.take().is_some() {
                self.removed += 1;
            }
        }
        if self.removed > self.live.len() {
            let feeds = std::mem::take(&mut self.feeds);
            self.feeds = feeds.into_iter().filter(|feed| feed.rx.is_some()).collect();
            self.removed = 0;
        }
    }

    pub fn unsubscribe(&mut self, auction: &AuctionId) {
        if let Some(index) = self.live.iter().position(|(_, s)| s.auction() == auction) {
            let (key, _) = self.live.swap_remove(index);
            self.remove_feed(key);
        }
    }

    /// Hands the socket to the hub when it has one subscription and
    /// nothing to send (see the feed's direct delivery). A socket with
    /// several subscriptions stays with its task: one write can carry
    /// events of all of them.
    pub fn park<C: Codec, S: FrameSocket>(
        &mut self,
        delivery: &Delivery<C>,
        socket: &Arc<S>,
        pending: bool,
    ) -> Park {
        let [(_, subscription)] = self.live.as_slice() else {
            return Park::No;
        };
        if pending || !self.batch.is_empty() || self.batch.is_framed() {
            return Park::No;
        }
        let feeds = &mut self.feeds;
        let mut ready = None;
        // Caught up, the client is parked and its receiver (of no use
        // while parked; unpark brings a new one) goes right there, under
        // the feed's lock: the feed never counts the client twice. The
        // set holds this one feed (and removed ones, receiverless), so
        // emptying it drops the receiver.
        let parked = delivery.park(subscription, socket, || match ready_now(feeds) {
            None => {
                feeds.clear();
                true
            }
            Some(next) => {
                ready = next;
                false
            }
        });
        match (parked, ready) {
            (Some(parked), _) => {
                self.removed = 0;
                Park::Parked(parked)
            }
            (None, Some((key, item))) => Park::Ready(key, item.map_err(lagged)),
            (None, None) => Park::No,
        }
    }

    /// Takes the socket back from the hub and reads the subscription's
    /// feed again from where the hub left it.
    pub async fn unpark<C: Codec, T: Transport>(
        &mut self,
        delivery: &Delivery<C>,
        transport: &mut T,
        parked: Parked,
    ) -> Result<(), Ended> {
        let Some((key, subscription)) = self.live.first_mut() else {
            return Ok(()); // dropping the claim takes the socket back
        };
        let feed = delivery.unpark(transport, subscription, parked).await?;
        self.feeds.push(Tagged {
            key: *key,
            rx: Some(BroadcastStream::new(feed)),
        });
        Ok(())
    }

    /// The next item of any subscription's feed; pending while there are
    /// none. Cancel-safe.
    pub async fn next(&mut self) -> (u32, Result<Item, RecvError>) {
        match self.feeds.next().await {
            Some((key, item)) => (key, item.map_err(lagged)),
            None => std::future::pending().await,
        }
    }

    /// Takes this item and whatever else the feeds have ready, then writes
    /// them with one vectored write.
    pub async fn forward<C: Codec, T: Transport>(
        &mut self,
        delivery: &Delivery<C>,
        transport: &mut T,
        key: u32,
        item: Result<Item, RecvError>,
    ) -> Result<(), Ended> {
        let mut gone = Vec::new();
        self.take(delivery, key, item, &mut gone)?;
        while !self.batch.is_full() {
            match self.feeds.next().now_or_never() {
                Some(Some((key, item))) => {
                    self.take(delivery, key, item.map_err(lagged), &mut gone)?
                }
                _ => break,
            }
        }
        let live = &self.live;
        let lapped = || live.iter().any(|(_, s)| s.lapped());
        delivery.flush(transport, &mut self.batch, lapped).await?;
        // Their `gone` is written: the socket's other auctions go on.
        for key in gone {
            if let Some(index) = self.live.iter().position(|(k, _)| *k == key) {
                self.live.swap_remove(index);
                self.remove_feed(key);
            }
        }
        Ok(())
    }

    /// Takes one item of the subscription `key`; a subscription whose
    /// auction is gone is noted in `gone`.
    fn take<C: Codec>(
        &mut self,
        delivery: &Delivery<C>,
        key: u32,
        item: Result<Item, RecvError>,
        gone: &mut Vec<u32>,
    ) -> Result<(), Ended> {
        let Some((_, subscription)) = self.live.iter_mut().find(|(k, _)| *k == key) else {
            return Ok(()); // unsubscribed meanwhile
        };
        match delivery.take(subscription, item, &mut self.batch) {
            Err(Ended::Gone) => {
                gone.push(key);
                Ok(())
            }
            taken => taken,
        }
    }
}

/// The next item of a set's one live feed if one is waiting, without
/// waiting: `None` means none is. Polled directly, not through the set,
/// and unconstrained: under Tokio's cooperative budget a receive answers
/// "not yet" with items waiting once a task has taken many in a row (a
/// long catch-up), deferring its wake-up until the task yields, and the
/// set polls only the feeds it was woken for; a socket parked on either
/// answer would drop the waiting items with its receiver. Only for a set
/// of one live feed (the one `park` considers): the set learns of the
/// feed again from that deferred wake-up.
fn ready_now(feeds: &mut Feeds) -> Option<Option<<Tagged as Stream>::Item>> {
    let feed = feeds.iter_mut().find(|feed| feed.rx.is_some())?;
    tokio::task::unconstrained(std::future::poll_fn(|cx| feed.poll_next_unpin(cx))).now_or_never()
}

fn lagged(error: BroadcastStreamRecvError) -> RecvError {
    match error {
        BroadcastStreamRecvError::Lagged(n) => RecvError::Lagged(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::broadcast;

    #[tokio::test]
    async fn items_still_waiting_after_a_long_catch_up_are_seen() {
        let (tx, rx) = broadcast::channel(1024);
        for _ in 0..600 {
            tx.send(Item::Tick).unwrap();
        }
        let mut feeds = Feeds::new();
        feeds.push(Tagged {
            key: 0,
            rx: Some(BroadcastStream::new(rx)),
        });
        // Taken in a row without yielding, as a catch-up does: far past
        // Tokio's budget per task poll.
        for _ in 0..500 {
            assert!(feeds.next().now_or_never().is_some() || ready_now(&mut feeds).is_some());
        }
        assert!(
            feeds.next().now_or_never().is_none(),
            "the budget is spent: a plain poll says nothing is waiting"
        );
        assert!(
            matches!(ready_now(&mut feeds), Some(Some((0, Ok(Item::Tick))))),
            "yet items are waiting"
        );
        let mut rest = 1;
        while let Some(Some(_)) = ready_now(&mut feeds) {
            rest += 1;
        }
        assert_eq!(rest, 100);
    }
}
