//! A subscription's live delivery: reading its feed's ring, or parked with
//! the feed (see `feed`), and the loop that drives one subscription on its
//! own socket (an SSE stream).
//!
//! The parking contract is kept here, not by the edges: a [`Live`] gives
//! its receiver up under the feed's lock as it parks, and takes the socket
//! back (writing what the feed had not) before anything else touches it.

use crate::client::{Batch, Delivery, Ended, Subscription, Transport};
use crate::codec::{Codec, Item, try_take};
use crate::feed::Parked;
use crate::writer::FrameSocket;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};

/// One subscription's live state: exactly one of a receiver on the feed
/// or a claim on the parked socket.
#[derive(Debug)]
pub struct Live {
    /// The feed's receiver while the client reads the ring itself.
    rx: Option<broadcast::Receiver<Item>>,
    /// The claim while the socket is parked with the feed.
    parked: Option<Parked>,
}

/// What a live subscription woke for.
#[derive(Debug)]
pub enum Ready {
    /// The feed's next item, for [`Delivery::forward`].
    Item(Result<Item, RecvError>),
    /// The feed handed the parked socket back: [`Delivery::take_back`].
    HandedBack,
}

impl Live {
    /// A subscription reading its feed's ring from `rx` (as
    /// [`Delivery::start`] returns it).
    pub fn reading(rx: broadcast::Receiver<Item>) -> Live {
        Live {
            rx: Some(rx),
            parked: None,
        }
    }

    /// Whether the socket is parked with the feed.
    pub fn is_parked(&self) -> bool {
        self.parked.is_some()
    }

    /// The claim on the parked socket, if parked.
    pub fn parked(&self) -> Option<&Parked> {
        self.parked.as_ref()
    }

    /// The receiver, if reading the ring.
    pub fn receiver(&mut self) -> Option<&mut broadcast::Receiver<Item>> {
        self.rx.as_mut()
    }

    /// Waits for the feed's next item, or for the parked socket to come
    /// back. Cancel-safe.
    pub async fn ready(&mut self) -> Ready {
        if let Some(parked) = &self.parked {
            parked.handed_back().await;
            return Ready::HandedBack;
        }
        match &mut self.rx {
            Some(rx) => Ready::Item(rx.recv().await),
            // Neither: not reached (one of the two is always set).
            None => std::future::pending().await,
        }
    }
}

impl<C: Codec> Delivery<C> {
    /// Parks the subscription's socket with its feed if the client is
    /// caught up (nothing unread, a live event taken since it last took
    /// its socket back): its receiver goes right there, under the feed's
    /// lock. `true`: parked.
    pub fn park_live<S: FrameSocket>(
        &self,
        subscription: &Subscription,
        live: &mut Live,
        socket: &Arc<S>,
    ) -> bool {
        if live.parked.is_some() {
            return true;
        }
        let rx = &mut live.rx;
        let caught_up = || {
            let empty = rx.as_ref().is_some_and(|rx| rx.is_empty());
            if empty {
                *rx = None;
            }
            empty
        };
        live.parked = self.park(subscription, socket, caught_up);
        live.parked.is_some()
    }

    /// Takes a parked socket back (see [`Delivery::unpark`]): the
    /// subscription reads its feed's ring again from where the feed left
    /// it. Nothing to do if not parked.
    pub async fn take_back<T: Transport>(
        &self,
        transport: &mut T,
        subscription: &mut Subscription,
        live: &mut Live,
    ) -> Result<(), Ended> {
        if let Some(parked) = live.parked.take() {
            live.rx = Some(self.unpark(transport, subscription, parked).await?);
        }
        Ok(())
    }

    /// Takes `first` and whatever else the feed has ready (up to one
    /// write's worth) into `batch`. The one drain of a feed into a batch.
    pub fn take_ready(
        &self,
        subscription: &mut Subscription,
        rx: &mut broadcast::Receiver<Item>,
        first: Result<Item, RecvError>,
        batch: &mut Batch,
    ) -> Result<(), Ended> {
        self.take(subscription, first, batch)?;
        while !batch.is_full() {
            let Some(item) = try_take(rx) else {
                break;
            };
            self.take(subscription, item, batch)?;
        }
        Ok(())
    }

    /// Takes the item a reading subscription woke for, and whatever else
    /// is ready, then writes them with one vectored write. A gone auction's
    /// last word is written before `Gone` is returned.
    pub async fn forward<T: Transport>(
        &self,
        transport: &mut T,
        subscription: &mut Subscription,
        live: &mut Live,
        first: Result<Item, RecvError>,
        batch: &mut Batch,
    ) -> Result<(), Ended> {
        let Some(rx) = live.rx.as_mut() else {
            return Ok(()); // parked meanwhile: nothing was taken
        };
        match self.take_ready(subscription, rx, first, batch) {
            Ok(()) => {}
            Err(Ended::Gone) => {
                let _ = self.flush(transport, batch, || false).await;
                return Err(Ended::Gone);
            }
            Err(ended) => return Err(ended),
        }
        let lapped = || subscription.lapped();
        self.flush(transport, batch, lapped).await
    }

    /// Delivers one subscription on its own socket until it ends or
    /// `gone()` resolves (the client left; asked afresh at each wait, so
    /// that no waiter of its own is kept between wakes) or the replica
    /// drains. A caught-up client parks its socket with the feed, which
    /// writes each event to it directly, and waits for it back; otherwise
    /// each wake takes everything the feed has ready and writes it with
    /// one vectored write. `None`: stopped by `gone()` or the drain.
    pub async fn serve<T, G>(
        &self,
        transport: &mut T,
        socket: &Arc<T::Socket>,
        subscription: &mut Subscription,
        rx: broadcast::Receiver<Item>,
        gone: impl Fn() -> G,
    ) -> Option<Ended>
    where
        T: Transport,
        G: Future<Output = ()>,
    {
        // Created once: re-created per event it would register and
        // unregister a waiter each time, on a list every connection shares.
        let shutdown = self.shutdown().cancelled();
        tokio::pin!(shutdown);
        let mut batch = Batch::default();
        let mut live = Live::reading(rx);
        loop {
            self.park_live(subscription, &mut live, socket);
            let ready = tokio::select! {
                biased;
                _ = &mut shutdown => return None,
                ready = live.ready() => ready,
                _ = gone() => return None,
            };
            let step = match ready {
                // Boxed: taking the socket back is rare beside the events
                // sent, and its state (what the feed hands back, a
                // pending frame's write) inline would size every stream's
                // task for its whole life.
                Ready::HandedBack => {
                    Box::pin(self.take_back(transport, subscription, &mut live)).await
                }
                Ready::Item(first) => {
                    self.forward(transport, subscription, &mut live, first, &mut batch)
                        .await
                }
            };
            if let Err(ended) = step {
                return Some(ended);
            }
        }
    }
}
