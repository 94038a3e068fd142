//! The live path: a replica's one pub/sub connection, subscribed to the
//! auctions its clients watch, turning notices back into events.
//!
//! On a single node over plain TCP the connection is read on its owner's
//! task ([`wire`]); over TLS or a unix socket it is redis-rs's pub/sub.
//!
//! This is the only code that knows channel names and the notice format;
//! the hub above it sees auctions and [`Event`]s. Operations here have no
//! deadline of their own: the caller bounds each one and treats a timeout
//! as a lost connection.
//!
//! In a Redis Cluster the notices are sharded (`SSUBSCRIBE`): each auction's
//! channel is served by the primary owning its slot, and the live
//! connection is one connection per primary, each on a task of its own
//! ([`shards`]): a node that freezes or fails holds up only the auctions in
//! its slots, which are announced again ([`LiveMessage::Subscribed`]) once
//! their node answers. A changed slot map moves only the auctions whose
//! slot another primary serves now.

pub(crate) mod shards;
mod wire;

use crate::connection::{RedisTarget, TargetKind};
use crate::error::LogError;
use crate::keys::live_channel;
use crate::notice;
use auction_domain::{AuctionId, Event};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::{ConnectionAddr, Value};
use wire::Wire;

/// A dedicated pub/sub connection. Dropping it closes the connection.
pub struct LiveConnection {
    inner: Inner,
}

enum Inner {
    /// One node over plain TCP: read on the owner's task ([`wire`]).
    Plain(Wire),
    /// One node over TLS or a unix socket, through redis-rs.
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// One connection per primary, each on its own task.
    Cluster(shards::Shards),
}

/// Whether [`LiveConnection::watch`] subscribed before it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watching {
    /// Subscribed: the auctions' notices come from now on.
    Now,
    /// Handed to the connection: each auction is announced by a
    /// [`LiveMessage::Subscribed`] once its subscription is made (a
    /// cluster node that does not answer holds up only its own auctions).
    Later,
}

/// What arrived on the connection.
#[derive(Debug)]
pub enum LiveMessage {
    /// A notice of one of the watched auctions.
    Event { auction: AuctionId, event: Event },
    /// Something on one of our channels that is not a notice (a foreign
    /// publisher): worth a log line, never a crash.
    Malformed { channel: String },
    /// These auctions' subscriptions were made (first, or again after
    /// their cluster node's connection was lost): notices sent before may
    /// be missing, and the stream has them.
    Subscribed { auctions: Vec<AuctionId> },
}

impl LiveConnection {
    /// Opens the connection (no subscriptions yet).
    pub async fn open(target: &RedisTarget) -> Result<LiveConnection, LogError> {
        let inner = match &target.kind {
            TargetKind::Single { pubsub_client, .. } => {
                let info = pubsub_client.get_connection_info();
                if let ConnectionAddr::Tcp(host, port) = info.addr() {
                    let settings = info.redis_settings();
                    let wire = Wire::connect(host, *port, settings.username(), settings.password())
                        .await?;
                    return Ok(LiveConnection {
                        inner: Inner::Plain(wire),
                    });
                }
                let pubsub = pubsub_client.get_async_pubsub().await?;
                let (sink, stream) = pubsub.split();
                Inner::Single { sink, stream }
            }
            TargetKind::Cluster { seeds } => Inner::Cluster(shards::Shards::open(seeds).await?),
        };
        Ok(LiveConnection { inner })
    }

    /// Subscribes to the notices of every auction in `auctions`: one round
    /// trip on a single node; in a cluster one `SSUBSCRIBE` per auction
    /// (a sharded subscription may not cross slots), all sent at once.
    pub async fn watch(&mut self, auctions: &[AuctionId]) -> Result<Watching, LogError> {
        if auctions.is_empty() {
            return Ok(Watching::Now);
        }
        let channels: Vec<String> = auctions.iter().map(live_channel).collect();
        match &mut self.inner {
            Inner::Plain(wire) => {
                let mut command: Vec<&[u8]> = vec![b"SUBSCRIBE"];
                command.extend(channels.iter().map(String::as_bytes));
                wire.call(&command, channels.len()).await?;
                Ok(Watching::Now)
            }
            Inner::Single { sink, .. } => {
                sink.subscribe(channels).await?;
                Ok(Watching::Now)
            }
            Inner::Cluster(shards) => {
                shards.watch(channels)?;
                Ok(Watching::Later)
            }
        }
    }

    /// Stops receiving the auction's notices.
    pub async fn unwatch(&mut self, auction: &AuctionId) -> Result<(), LogError> {
        let channel = live_channel(auction);
        match &mut self.inner {
            Inner::Plain(wire) => wire.call(&[b"UNSUBSCRIBE", channel.as_bytes()], 1).await,
            Inner::Single { sink, .. } => Ok(sink.unsubscribe(channel).await?),
            Inner::Cluster(shards) => shards.unwatch(channel),
        }
    }

    /// A round trip on the connection: proves it is still alive. In a
    /// cluster each node's task pings its own node (and a task reads the
    /// slot map): nothing to do here.
    pub async fn ping(&mut self) -> Result<(), LogError> {
        match &mut self.inner {
            Inner::Plain(wire) => wire.call(&[b"PING"], 1).await?,
            Inner::Single { sink, .. } => {
                sink.ping::<Value>().await?;
            }
            Inner::Cluster(_) => {}
        }
        Ok(())
    }

    /// The next message; `None` once the connection has ended. Cancel-safe.
    pub async fn next(&mut self) -> Option<LiveMessage> {
        match &mut self.inner {
            Inner::Plain(wire) => wire.next().await,
            Inner::Single { stream, .. } => loop {
                let message = stream.next().await?;
                let channel = message.get_channel_name();
                let Some(auction) = auction_of_channel(channel) else {
                    continue; // not one of ours (a pattern subscription elsewhere)
                };
                return Some(message_of(channel, message.get_payload_bytes(), auction));
            },
            Inner::Cluster(shards) => shards.next().await,
        }
    }
}

/// A message on `channel` as the live path's: `None` if the channel is
/// not an auction's (not one of ours).
fn notice_on(channel: &str, payload: &[u8]) -> Option<LiveMessage> {
    let auction = auction_of_channel(channel)?;
    Some(message_of(channel, payload, auction))
}

fn message_of(channel: &str, payload: &[u8], auction: AuctionId) -> LiveMessage {
    match notice::parse(payload) {
        Some(event) => LiveMessage::Event { auction, event },
        None => LiveMessage::Malformed {
            channel: channel.to_owned(),
        },
    }
}

/// `auction:{ID}:live` → `ID`.
pub(crate) fn auction_of_channel(channel: &str) -> Option<AuctionId> {
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
