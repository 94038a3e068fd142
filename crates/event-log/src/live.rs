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
//! channel is served by the primary owning its slot, over the cluster
//! connection's one connection per node. Whenever one of those connections
//! drops (a primary died, a failover), the cluster takes a channel away
//! (its slot migrated) or the slot map differs from the one the connection
//! opened with (read every second: a failover does not always reach the
//! connection as a drop), the whole live connection ends, exactly like a lost
//! single-node connection: the hub opens a new one, subscribes again and
//! backfills every feed from its last id. Resubscribing everything costs a
//! few round trips per thousand auctions and keeps one recovery path, the
//! one proven by the prev-id chain.

mod wire;

use crate::connection::{RedisTarget, TargetKind};
use crate::error::LogError;
use crate::keys::live_channel;
use crate::notice;
use auction_domain::{AuctionId, Event};
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster::ClusterConfig;
use redis::cluster_async::ClusterConnection;
use redis::{ConnectionAddr, PushInfo, PushKind, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;
use wire::Wire;

/// Pushes (notices and subscription confirmations) a cluster live
/// connection buffers before the hub takes them. Past it, the connection
/// counts as lost (the hub resubscribes and backfills): nothing is dropped
/// unnoticed.
const CLUSTER_PUSH_QUEUE: usize = 65_536;

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
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::Receiver<PushInfo>,
        /// Set when a push could not be queued: the connection is unusable.
        overflowed: Arc<AtomicBool>,
        /// Channels subscribed and not unsubscribed by us: a server-side
        /// `sunsubscribe` of one of them (slot migrated) ends the connection.
        watched: HashSet<String>,
        /// Which primary owned which slots when the connection opened. A
        /// failover does not always reach this connection as a
        /// disconnection (measured: it never did in three trials), and a
        /// notice in flight at a primary's death is then lost unnoticed;
        /// so each ping compares the slot map, and a changed one ends the
        /// connection like a lost node.
        topology: Topology,
    },
}

/// Slot ranges and the node id of the primary serving each, sorted.
type Topology = Vec<(i64, i64, String)>;

/// The cluster's slot map as one node (any) sees it.
async fn topology(conn: &mut ClusterConnection) -> Result<Topology, LogError> {
    let route = redis::cluster_routing::RoutingInfo::SingleNode(
        redis::cluster_routing::SingleNodeRoutingInfo::Random,
    );
    let mut slots = redis::cmd("CLUSTER");
    slots.arg("SLOTS");
    let reply = conn.route_command(slots, route).await?;
    let Value::Array(ranges) = reply else {
        return Err(LogError::Corrupt(format!(
            "CLUSTER SLOTS answered {reply:?}"
        )));
    };
    let mut map = Vec::with_capacity(ranges.len());
    for range in ranges {
        // [start, end, [ip, port, id, ...], replicas...]
        let parsed = match &range {
            Value::Array(fields) => match fields.as_slice() {
                [
                    Value::Int(start),
                    Value::Int(end),
                    Value::Array(primary),
                    ..,
                ] => {
                    let id = match primary.get(2) {
                        Some(Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
                        // Without an id, the address names the primary.
                        _ => format!("{:?}", primary.get(..2)),
                    };
                    Some((*start, *end, id))
                }
                _ => None,
            },
            _ => None,
        };
        match parsed {
            Some(entry) => map.push(entry),
            None => {
                return Err(LogError::Corrupt(format!(
                    "CLUSTER SLOTS answered a range {range:?}"
                )));
            }
        }
    }
    map.sort();
    Ok(map)
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
            TargetKind::Cluster { seeds } => {
                let (tx, pushes) = mpsc::channel(CLUSTER_PUSH_QUEUE);
                let overflowed = Arc::new(AtomicBool::new(false));
                let flag = overflowed.clone();
                let config = ClusterConfig::new().set_push_sender(move |push: PushInfo| {
                    if tx.try_send(push).is_err() {
                        flag.store(true, Ordering::Relaxed);
                    }
                    Ok::<(), std::convert::Infallible>(())
                });
                let mut conn = RedisTarget::cluster_client(seeds)?
                    .get_async_connection_with_config(config)
                    .await?;
                let topology = topology(&mut conn).await?;
                Inner::Cluster {
                    conn,
                    pushes,
                    overflowed,
                    watched: HashSet::new(),
                    topology,
                }
            }
        };
        Ok(LiveConnection { inner })
    }

    /// Subscribes to the notices of every auction in `auctions`: one round
    /// trip on a single node; in a cluster one `SSUBSCRIBE` per auction
    /// (a sharded subscription may not cross slots), all sent at once.
    pub async fn watch(&mut self, auctions: &[AuctionId]) -> Result<(), LogError> {
        if auctions.is_empty() {
            return Ok(());
        }
        let channels: Vec<String> = auctions.iter().map(live_channel).collect();
        match &mut self.inner {
            Inner::Plain(wire) => {
                let mut command: Vec<&[u8]> = vec![b"SUBSCRIBE"];
                command.extend(channels.iter().map(String::as_bytes));
                wire.call(&command, channels.len()).await
            }
            Inner::Single { sink, .. } => Ok(sink.subscribe(channels).await?),
            Inner::Cluster { conn, watched, .. } => {
                let requests = channels.iter().map(|channel| {
                    let mut conn = conn.clone();
                    async move { conn.ssubscribe(channel).await }
                });
                futures_util::future::try_join_all(requests).await?;
                watched.extend(channels);
                Ok(())
            }
        }
    }

    /// Stops receiving the auction's notices.
    pub async fn unwatch(&mut self, auction: &AuctionId) -> Result<(), LogError> {
        let channel = live_channel(auction);
        match &mut self.inner {
            Inner::Plain(wire) => wire.call(&[b"UNSUBSCRIBE", channel.as_bytes()], 1).await,
            Inner::Single { sink, .. } => Ok(sink.unsubscribe(channel).await?),
            Inner::Cluster { conn, watched, .. } => {
                watched.remove(&channel);
                Ok(conn.sunsubscribe(channel).await?)
            }
        }
    }

    /// A round trip on the connection: proves it is still alive. In a
    /// cluster it reads the slot map instead (from any node): a map that
    /// changed since the connection opened (a failover, a slot moved) ends
    /// the connection, whether or not a disconnection push said so.
    pub async fn ping(&mut self) -> Result<(), LogError> {
        match &mut self.inner {
            Inner::Plain(wire) => wire.call(&[b"PING"], 1).await?,
            Inner::Single { sink, .. } => {
                sink.ping::<Value>().await?;
            }
            Inner::Cluster {
                conn,
                topology: opened_with,
                ..
            } => {
                if topology(conn).await? != *opened_with {
                    return Err(LogError::Unavailable(
                        "the cluster's slot map changed".into(),
                    ));
                }
            }
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
            Inner::Cluster {
                pushes,
                overflowed,
                watched,
                ..
            } => loop {
                if overflowed.load(Ordering::Relaxed) {
                    tracing::warn!("the sharded pub/sub queue overflowed");
                    return None;
                }
                let push = pushes.recv().await?;
                match cluster_push(&push, watched) {
                    ClusterPush::Message(message) => return Some(message),
                    ClusterPush::Ignore => {}
                    ClusterPush::Lost(why) => {
                        tracing::warn!(why, "a sharded subscription was lost");
                        return None;
                    }
                }
            },
        }
    }
}

/// What one push of a cluster connection means to the live path.
enum ClusterPush {
    Message(LiveMessage),
    Ignore,
    /// Notices may have been missed: the connection must start over.
    Lost(&'static str),
}

fn cluster_push(push: &PushInfo, watched: &HashSet<String>) -> ClusterPush {
    let bytes = |value: Option<&Value>| match value {
        Some(Value::BulkString(bytes)) => Some(bytes.clone()),
        Some(Value::SimpleString(text)) => Some(text.clone().into_bytes()),
        _ => None,
    };
    match push.kind {
        PushKind::SMessage | PushKind::Message => {
            let (Some(channel), Some(payload)) =
                (bytes(push.data.first()), bytes(push.data.get(1)))
            else {
                return ClusterPush::Ignore;
            };
            match notice_on(&String::from_utf8_lossy(&channel), &payload) {
                Some(message) => ClusterPush::Message(message),
                None => ClusterPush::Ignore,
            }
        }
        // A node connection dropped: notices sent meanwhile are gone.
        PushKind::Disconnection => ClusterPush::Lost("a cluster node connection dropped"),
        // The server unsubscribes a sharded channel whose slot moved away;
        // an `sunsubscribe` we asked for is not in `watched` any more.
        PushKind::SUnsubscribe => {
            let channel = bytes(push.data.first()).map(String::from_utf8);
            match channel {
                Some(Ok(channel)) if watched.contains(&channel) => {
                    ClusterPush::Lost("the cluster moved a watched channel's slot")
                }
                _ => ClusterPush::Ignore,
            }
        }
        _ => ClusterPush::Ignore,
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
