//! What a `subscribe` message starts: the socket's subscription to an
//! auction (its `init` or replay written), or a refusal to send. The
//! socket's live subscriptions themselves are fanout's [`LiveSet`].

use crate::codec::WsCodec;
use crate::protocol::{INVALID_ID, LastId, Refusal};
use crate::socket::WsSocket;
use auction_domain::AuctionId;
use fanout::{Delivery, Ended, LiveSet, OpenError, Resume, StartError};
use std::net::IpAddr;

/// What a `subscribe` came to, when it was not simply done.
pub enum Subscribed {
    /// Live: its `init` or replay was written.
    Done,
    /// Refused; nothing was written for this auction: send this `error`.
    Refused(String),
}

/// Starts (or restarts: a client resyncing) the subscription to
/// `auction` from `last_id`.
pub async fn subscribe(
    subscriptions: &mut LiveSet,
    delivery: &Delivery<WsCodec>,
    socket: &mut WsSocket,
    auction: &str,
    last_id: LastId,
    address: IpAddr,
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
    let opening = match delivery.open(&id, resume, address).await {
        Ok(opening) => opening,
        Err(OpenError::NotFound) => {
            let message = format!("no auction with id {auction:?}");
            let refusal = Refusal::new(None, "not_found", message);
            return Ok(Subscribed::Refused(refusal.to_json()));
        }
        Err(OpenError::OutOfMemory) => {
            let refusal = Refusal::new(
                None,
                "redis_out_of_memory",
                service_kit::OUT_OF_MEMORY_MESSAGE,
            );
            return Ok(Subscribed::Refused(refusal.to_json()));
        }
        Err(OpenError::Unavailable | OpenError::Busy) => {
            return Ok(Subscribed::Refused(unavailable()));
        }
    };
    // A resubscription replaces the old one.
    subscriptions.unsubscribe(&id);
    // Through the set's batch: a compressed socket's subscription is
    // written compressed frames, parked or not.
    match delivery
        .start_framed(socket, opening, subscriptions.batch())
        .await
    {
        Ok((subscription, feed)) => {
            subscriptions.insert(subscription, feed);
            Ok(Subscribed::Done)
        }
        Err(StartError::Unavailable) => Ok(Subscribed::Refused(unavailable())),
        Err(StartError::Ended(ended)) => Err(ended),
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
