//! What the fan-out reads: whether auctions exist, their streams' ends,
//! events after a resume point, and the snapshot a client's `init` shows.

use crate::connection::RedisConnection;
use crate::error::{LogError, corrupt};
use crate::keys;
use crate::state::auction_from_hash;
use auction_domain::{Auction, AuctionId, Event, EventId, EventKind};
use redis::streams::{StreamId, StreamRangeReply};
use redis::{AsyncCommands, Value};
use std::collections::HashMap;

/// What an auction's stream holds: the oldest retained event (with the id
/// of the event before it) and the newest. `None` when the stream is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamWindow {
    pub first: Option<EventId>,
    /// The `prev` of the oldest retained event: everything after this id is
    /// still in the stream.
    pub first_prev: Option<EventId>,
    pub last: Option<EventId>,
    /// Whether the auction's state exists (an auction can vanish: expired,
    /// or Redis came back without its data).
    pub exists: bool,
}

/// A consistent view of one auction for a client's `init`: state and the
/// newest events, read atomically.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub auction: Auction,
    /// Newest first.
    pub recent: Vec<Event>,
    /// The id of the newest event (`0-0` when there is none).
    pub last_id: EventId,
}

/// Reads auctions' streams and states. Cheap to clone; all clones share one
/// multiplexed connection (one per node in a cluster).
#[derive(Clone)]
pub struct StreamReader {
    conn: RedisConnection,
}

impl StreamReader {
    pub fn new(conn: RedisConnection) -> Self {
        StreamReader { conn }
    }

    /// The shared connection, for the other parts of this crate.
    pub(crate) fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    pub async fn ping(&self) -> Result<(), LogError> {
        self.conn.ping().await
    }

    /// Up to `count` events strictly after `after`, oldest first.
    pub async fn read_after(
        &self,
        auction: &AuctionId,
        after: EventId,
        count: usize,
    ) -> Result<Vec<Event>, LogError> {
        self.range(auction, format!("({after}"), count).await
    }

    /// Up to `count` events from `from` on, `from` itself included when the
    /// stream holds it, oldest first: one read that both tells whether the
    /// stream held `from` and starts the events
    /// after it.
    pub async fn read_from(
        &self,
        auction: &AuctionId,
        from: EventId,
        count: usize,
    ) -> Result<Vec<Event>, LogError> {
        self.range(auction, from.to_string(), count).await
    }

    /// Up to `count` events from `start` (an `XRANGE` bound) on, oldest first.
    async fn range(
        &self,
        auction: &AuctionId,
        start: String,
        count: usize,
    ) -> Result<Vec<Event>, LogError> {
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(keys::stream_key(auction))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        reply.ids.iter().map(stream_event).collect()
    }

    /// The oldest and newest events each auction's stream still holds, and
    /// whether the auction exists, in order, in one round trip (a replica
    /// that starts watching many auctions at once).
    pub async fn windows(&self, auctions: &[AuctionId]) -> Result<Vec<StreamWindow>, LogError> {
        if auctions.is_empty() {
            return Ok(Vec::new());
        }
        // Per auction: oldest entry, newest entry, whether the state exists.
        let replies = self
            .conn
            .per_auction(auctions, |pipe, auction| {
                let stream = keys::stream_key(auction);
                pipe.cmd("XRANGE")
                    .arg(&stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("EXISTS")
                    .arg(keys::state_key(auction));
            })
            .await?;
        if replies.len() != auctions.len() * 3 {
            return Err(corrupt(format!(
                "windows answered {} replies",
                replies.len()
            )));
        }
        let unexpected = |error| corrupt(format!("windows answered {error}"));
        replies
            .chunks(3)
            .map(|replies| {
                let [first, last, exists] = replies else {
                    return Err(corrupt("windows answered a short reply"));
                };
                let first: StreamRangeReply =
                    redis::from_redis_value_ref(first).map_err(unexpected)?;
                let last: StreamRangeReply =
                    redis::from_redis_value_ref(last).map_err(unexpected)?;
                let exists: bool = redis::from_redis_value_ref(exists).map_err(unexpected)?;
                let first = first.ids.first().map(stream_event).transpose()?;
                let last = last.ids.first().map(stream_event).transpose()?;
                Ok(StreamWindow {
                    first: first.as_ref().map(|event| event.id),
                    first_prev: first.as_ref().map(|event| event.prev),
                    last: last.map(|event| event.id),
                    exists,
                })
            })
            .collect()
    }

    /// Whether each auction exists, in order, in one round trip.
    pub async fn exist(&self, auctions: &[AuctionId]) -> Result<Vec<bool>, LogError> {
        if auctions.is_empty() {
            return Ok(Vec::new());
        }
        let replies = self
            .conn
            .per_auction(auctions, |pipe, auction| {
                pipe.cmd("EXISTS").arg(keys::state_key(auction));
            })
            .await?;
        replies
            .iter()
            .map(redis::from_redis_value_ref)
            .collect::<Result<_, _>>()
            .map_err(|error| corrupt(format!("exist answered {error}")))
    }

    pub async fn exists(&self, auction: &AuctionId) -> Result<bool, LogError> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(keys::state_key(auction)).await?)
    }

    /// The auction's state and its newest `count` events, atomically
    /// (MULTI/EXEC on one slot). `Ok(None)`: unknown auction.
    pub async fn snapshot(
        &self,
        auction: &AuctionId,
        count: usize,
    ) -> Result<Option<Snapshot>, LogError> {
        let mut conn = self.conn.clone();
        let (fields, recent): (HashMap<String, String>, StreamRangeReply) = redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(keys::state_key(auction))
            .cmd("XREVRANGE")
            .arg(keys::stream_key(auction))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let last_id = fields
            .get("last_id")
            .and_then(|id| EventId::parse(id))
            .unwrap_or(EventId::ZERO);
        Ok(Some(Snapshot {
            auction: auction_from_hash(&fields)?,
            recent: recent
                .ids
                .iter()
                .map(stream_event)
                .collect::<Result<_, _>>()?,
            last_id,
        }))
    }
}

fn stream_event(entry: &StreamId) -> Result<Event, LogError> {
    let field = |name: &str| -> Option<String> {
        match entry.map.get(name)? {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        }
    };
    let bad = || corrupt(format!("stream entry {}", entry.id));
    Ok(Event {
        id: EventId::parse(&entry.id).ok_or_else(bad)?,
        prev: field("prev")
            .as_deref()
            .and_then(EventId::parse)
            .ok_or_else(bad)?,
        kind: field("kind")
            .as_deref()
            .and_then(EventKind::parse)
            .ok_or_else(bad)?,
        data: field("data").ok_or_else(bad)?,
        // Absent in entries written before the field existed.
        placed_at_ms: field("at").and_then(|at| at.parse().ok()).unwrap_or(0),
        traceparent: field("tp").filter(|tp| !tp.is_empty()),
    })
}
