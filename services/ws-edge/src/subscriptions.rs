//! A socket's subscriptions: one live [`Subscription`] per auction, their
//! feeds polled together, and what a `subscribe` answers.

use crate::codec::WsCodec;
use crate::protocol::{INVALID_ID, LastId, Refusal};
use crate::socket::WsSocket;
use auction_domain::AuctionId;
use fanout::{Batch, Delivery, Ended, Item, OpenError, Parked, Resume, StartError, Subscription};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// What a `subscribe` came to, when it was not simply done.
pub enum Subscribed {
    /// Live: its `init` or replay was written.
    Done,
    /// Refused; nothing was written for this auction: send this `error`.
    Refused(String),
}

/// What trying to park the socket came to.
pub enum Park {
    /// The hub writes the one subscription's events to the socket now:
    /// take it back ([`Subscriptions::unpark`]) before anything else.
    Parked(Parked),
    /// Not caught up: this item was ready, forward it.
    Ready(u32, Result<Item, RecvError>),
    /// Not parked (several subscriptions, bytes of tungstenite's pending,
    /// or the feed has all the parked clients it may).
    No,
}

#[derive(Default)]
pub struct Subscriptions {
    /// The subscriptions' feeds, keyed by a small number that is cheap to
    /// copy on every event (the map hands out its key with each item).
    feeds: StreamMap<u32, BroadcastStream<Item>>,
    live: Vec<(u32, Subscription)>,
    next_key: u32,
    batch: Batch,
}

impl Subscriptions {
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn contains(&self, auction: &AuctionId) -> bool {
        self.live.iter().any(|(_, s)| s.auction() == auction)
    }

    /// Starts (or restarts: a client resyncing) the subscription to
    /// `auction` from `last_id`.
    pub async fn subscribe(
        &mut self,
        delivery: &Delivery<WsCodec>,
        socket: &mut WsSocket,
        auction: &str,
        last_id: LastId,
    ) -> Result<Subscribed, Ended> {
        let Ok(id) = AuctionId::parse(auction) else {
            let refusal = Refusal::new(None, "invalid_auction_id", INVALID_ID);
            return Ok(Subscribed::Refused(refusal.to_json()));
        };
        let resume = match &last_id {
            LastId::Absent => Resume::Fresh,
            LastId::Text(text) => Resume::parse(Some(text.as_bytes())),
            LastId::Garbled => Resume::Garbled,
        };
        let opening = match delivery.open(&id, resume).await {
            Ok(opening) => opening,
            Err(OpenError::NotFound) => {
                let message = format!("no auction with id {auction:?}");
                let refusal = Refusal::new(None, "not_found", message);
                return Ok(Subscribed::Refused(refusal.to_json()));
            }
            Err(OpenError::Unavailable | OpenError::Busy) => {
                return Ok(Subscribed::Refused(unavailable()));
            }
        };
        // A resubscription replaces the old one.
        self.unsubscribe(&id);
        match delivery.start(socket, opening).await {
            Ok((subscription, feed)) => {
                let key = self.next_key;
                self.next_key = self.next_key.wrapping_add(1);
                self.feeds.insert(key, BroadcastStream::new(feed));
                self.live.push((key, subscription));
                Ok(Subscribed::Done)
            }
            Err(StartError::Unavailable) => Ok(Subscribed::Refused(unavailable())),
            Err(StartError::Ended(ended)) => Err(ended),
        }
    }

    pub fn unsubscribe(&mut self, auction: &AuctionId) {
        if let Some(index) = self.live.iter().position(|(_, s)| s.auction() == auction) {
            let (key, _) = self.live.swap_remove(index);
            self.feeds.remove(&key);
        }
    }

    /// Hands the socket to the hub when it has one subscription and
    /// nothing to send (see `fanout`'s direct delivery). A socket with
    /// several subscriptions stays with its task: one write can carry
    /// events of all of them.
    pub fn park(&mut self, delivery: &Delivery<WsCodec>, socket: &WsSocket) -> Park {
        let [(key, subscription)] = self.live.as_slice() else {
            return Park::No;
        };
        if socket.has_pending() || !self.batch.is_empty() {
            return Park::No;
        }
        let feeds = &mut self.feeds;
        let mut ready = None;
        // Caught up, the client is parked and its receiver (of no use
        // while parked; unpark brings a new one) goes right there, under
        // the feed's lock: the feed never counts the client twice.
        let parked = delivery.park(subscription, socket.raw(), || match ready_now(feeds) {
            None => {
                feeds.remove(key);
                true
            }
            Some(next) => {
                ready = next;
                false
            }
        });
        match (parked, ready) {
            (Some(parked), _) => Park::Parked(parked),
            (None, Some((key, item))) => Park::Ready(key, item.map_err(lagged)),
            (None, None) => Park::No,
        }
    }

    /// Takes the socket back from the hub and reads the subscription's
    /// feed again from where the hub left it.
    pub async fn unpark(
        &mut self,
        delivery: &Delivery<WsCodec>,
        socket: &mut WsSocket,
        parked: Parked,
    ) -> Result<(), Ended> {
        let Some((key, subscription)) = self.live.first_mut() else {
            return Ok(()); // dropping the claim takes the socket back
        };
        let feed = delivery.unpark(socket, subscription, parked).await?;
        self.feeds.insert(*key, BroadcastStream::new(feed));
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
    pub async fn forward(
        &mut self,
        delivery: &Delivery<WsCodec>,
        socket: &mut WsSocket,
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
        delivery.flush(socket, &mut self.batch, lapped).await?;
        // Their `gone` is written: the socket's other auctions go on.
        for key in gone {
            if let Some(index) = self.live.iter().position(|(k, _)| *k == key) {
                self.live.swap_remove(index);
                self.feeds.remove(&key);
            }
        }
        Ok(())
    }

    /// Takes one item of the subscription `key`; a subscription whose
    /// auction is gone is noted in `gone`.
    fn take(
        &mut self,
        delivery: &Delivery<WsCodec>,
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

type Feeds = StreamMap<u32, BroadcastStream<Item>>;

/// The next item of the feeds if one is waiting, without waiting: `None`
/// means none is. Unconstrained: under Tokio's cooperative budget a
/// receive answers "not yet" with items waiting once a task has taken
/// many in a row (a long catch-up), and a socket parked on that answer
/// would drop them with its receiver.
fn ready_now(feeds: &mut Feeds) -> Option<Option<<Feeds as futures_util::Stream>::Item>> {
    tokio::task::unconstrained(feeds.next()).now_or_never()
}

fn lagged(error: BroadcastStreamRecvError) -> RecvError {
    match error {
        BroadcastStreamRecvError::Lagged(n) => RecvError::Lagged(n),
    }
}

fn unavailable() -> String {
    Refusal::new(
        None,
        "redis_unavailable",
        "the event store is unreachable; retry shortly",
    )
    .to_json()
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
        feeds.insert(0, BroadcastStream::new(rx));
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
