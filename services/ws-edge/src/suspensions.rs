//! Telling a suspended bidder's sockets: the bidder announces each
//! suspension on Redis (`event_log::SUSPENSION_CHANNEL`); this replica
//! follows the announcements and sends every socket authenticated as that
//! bidder an `error` (`bidder_suspended`), or a `reinstated` notice when
//! the suspension is lifted. Their bids are refused by the bidder
//! regardless (403 `bidder_suspended`, relayed as an `error`).

use auction_domain::BidderId;
use event_log::{RedisTarget, SuspensionNotice};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The pause before following the announcements again after a failure.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// One socket: its number in the registry, and where its messages go.
type Socket = (u64, mpsc::Sender<String>);

/// The sockets of each authenticated bidder on this replica: where to send
/// them a message (their session's answer channel).
#[derive(Default)]
pub struct Suspensions {
    sockets: Mutex<HashMap<BidderId, Vec<Socket>>>,
    next: AtomicU64,
}

/// A socket's place in [`Suspensions`]; leaves it when dropped.
pub struct Registration {
    registry: Arc<Suspensions>,
    bidder: BidderId,
    number: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sockets = self
            .registry
            .sockets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(list) = sockets.get_mut(&self.bidder) {
            list.retain(|(number, _)| *number != self.number);
            if list.is_empty() {
                sockets.remove(&self.bidder);
            }
        }
    }
}

impl Suspensions {
    /// Records that a socket is `bidder`'s; messages for them go to `to`.
    pub fn register(self: &Arc<Self>, bidder: BidderId, to: mpsc::Sender<String>) -> Registration {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.sockets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(bidder.clone())
            .or_default()
            .push((number, to));
        Registration {
            registry: self.clone(),
            bidder,
            number,
        }
    }

    /// Sends `notice` to every socket of its bidder (without waiting: a
    /// socket whose channel is full misses it, and its next bid is
    /// refused anyway). Returns how many were told.
    pub fn tell(&self, notice: &SuspensionNotice) -> usize {
        let (bidder, message) = match notice {
            SuspensionNotice::Suspended(bidder) => (
                bidder,
                serde_json::json!({
                    "type": "error",
                    "error": "bidder_suspended",
                    "message": "an admin suspended your bidding; your bids are refused",
                })
                .to_string(),
            ),
            SuspensionNotice::Reinstated(bidder) => (
                bidder,
                serde_json::json!({
                    "type": "reinstated",
                    "message": "an admin lifted your suspension; you may bid again",
                })
                .to_string(),
            ),
        };
        let sockets = self
            .sockets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sockets.get(bidder).map_or(0, |list| {
            list.iter()
                .filter(|(_, to)| to.try_send(message.clone()).is_ok())
                .count()
        })
    }

    /// Follows the announcements until `shutdown`, reconnecting after a
    /// failure.
    pub async fn follow(self: Arc<Self>, target: RedisTarget, shutdown: CancellationToken) {
        loop {
            match event_log::suspension_notices(&target).await {
                Ok(notices) => {
                    let mut notices = std::pin::pin!(notices);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            notice = notices.next() => match notice {
                                Some(notice) => {
                                    let told = self.tell(&notice);
                                    tracing::info!(?notice, told, "suspension notice");
                                }
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("suspension notices ended; following them again");
                }
                Err(error) => tracing::warn!(%error, "cannot follow suspension notices"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_PAUSE) => {}
            }
        }
    }
}
