//! The live path: a replica's one pub/sub connection, subscribed to the
//! auctions its clients watch, turning notices back into events.
//!
//! This is the only code that knows channel names and the notice format;
//! the hub above it sees auctions and [`Event`]s. Operations here have no
//! deadline of their own: the caller bounds each one and treats a timeout
//! as a lost connection.

use crate::connection::RedisTarget;
use crate::keys::live_channel;
use crate::log::LogError;
use crate::notice;
use auction_domain::{AuctionId, Event};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};

/// A dedicated pub/sub connection. Dropping it closes the connection.
pub struct LiveConnection {
    sink: PubSubSink,
    stream: PubSubStream,
}

/// What arrived on the connection.
#[derive(Debug)]
pub enum LiveMessage {
    /// A notice of one of the watched auctions.
    Event { auction: AuctionId, event: Event },
    /// Something on one of our channels that is not a notice (a foreign
    /// publisher): worth a log line, never a crash.
    Malformed { channel: String },
}

impl LiveConnection {
    /// Opens the connection (no subscriptions yet).
    pub async fn open(target: &RedisTarget) -> Result<LiveConnection, LogError> {
        let pubsub = target.pubsub_client.get_async_pubsub().await?;
        let (sink, stream) = pubsub.split();
        Ok(LiveConnection { sink, stream })
    }

    /// Subscribes to the notices of every auction in `auctions`, in one
    /// round trip.
    pub async fn watch(&mut self, auctions: &[AuctionId]) -> Result<(), LogError> {
        if auctions.is_empty() {
            return Ok(());
        }
        let channels: Vec<String> = auctions.iter().map(live_channel).collect();
        Ok(self.sink.subscribe(channels).await?)
    }

    /// Stops receiving the auction's notices.
    pub async fn unwatch(&mut self, auction: &AuctionId) -> Result<(), LogError> {
        Ok(self.sink.unsubscribe(live_channel(auction)).await?)
    }

    /// A round trip on the connection: proves it is still alive.
    pub async fn ping(&mut self) -> Result<(), LogError> {
        self.sink.ping::<redis::Value>().await?;
        Ok(())
    }

    /// The next message; `None` once the connection has ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<LiveMessage> {
        loop {
            let message = self.stream.next().await?;
            let channel = message.get_channel_name();
            let Some(auction) = auction_of_channel(channel) else {
                continue; // not one of ours (a pattern subscription elsewhere)
            };
            return Some(match notice::parse(message.get_payload_bytes()) {
                Some(event) => LiveMessage::Event { auction, event },
                None => LiveMessage::Malformed {
                    channel: channel.to_owned(),
                },
            });
        }
    }
}

/// `auction:{ID}:live` → `ID`.
fn auction_of_channel(channel: &str) -> Option<AuctionId> {
    let id = channel.strip_prefix("auction:{")?.strip_suffix("}:live")?;
    AuctionId::parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_map_back_to_auctions() {
        let auction = AuctionId::parse("a-1").unwrap();
        assert_eq!(auction_of_channel(&live_channel(&auction)), Some(auction));
        assert!(auction_of_channel("auction:{a b}:live").is_none());
        assert!(auction_of_channel("other").is_none());
    }
}
