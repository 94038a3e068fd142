//! Admin actions: on one auction (close now, extend, cancel, delete),
//! each an atomic script that appends an `admin` event naming who acted
//! (`lua/admin.lua`); on a bidder (suspend, reinstate), a marker the bid
//! script checks atomically (`lua/suspension_guard.lua`) and a notice on
//! [`SUSPENSION_CHANNEL`] so the edges can tell the bidder's sockets.
//! Every action is also recorded in a short global log
//! ([`ADMIN_LOG_KEY`]) that the admin page shows.
//!
//! Keys: `bidder-suspended:<id>` (one per suspended bidder: a single-node
//! bid script reads it atomically; in a cluster it lives in its own slot
//! and the bidder checks it just before the script), the set
//! [`SUSPENDED_SET_KEY`] (who is suspended, for listing) and the stream
//! [`ADMIN_LOG_KEY`].

use crate::connection::{RedisConnection, RedisTarget, TargetKind};
use crate::error::{LogError, corrupt};
use crate::keys::{self, Indexes};
use crate::scripts::ADMIN;
use auction_domain::{Auction, AuctionId, Bidder, BidderId, EventId};
use futures_util::{Stream, StreamExt};
use redis::AsyncCommands;
use serde_json::{Value, json};
use std::time::Duration;

/// Who is suspended: bidder ids.
pub const SUSPENDED_SET_KEY: &str = "bidders:suspended";
/// The global log of admin actions, newest last (capped).
pub const ADMIN_LOG_KEY: &str = "admin:log";
/// Where suspensions are announced: `suspend <bidder id>` or
/// `reinstate <bidder id>` (plain `PUBLISH`: every node of a cluster
/// relays it).
pub const SUSPENSION_CHANNEL: &str = "bidders:suspensions";
/// How many actions the admin log keeps (about).
const ADMIN_LOG_LEN: u64 = 1000;

/// The marker the bid script checks for `bidder`.
pub(crate) fn suspension_key(bidder: &BidderId) -> String {
    format!("bidder-suspended:{bidder}")
}

/// What an admin does to an auction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuctionAction {
    /// Close it now; the winner is its highest bid so far.
    Close,
    /// Move its end later, to this time (Unix ms).
    Extend { ends_at: u64 },
    /// End it without a winner.
    Cancel,
    /// Take the listing down: it leaves the catalogue and its pages are
    /// told, then `gone`.
    Delete,
}

impl AuctionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuctionAction::Close => "close",
            AuctionAction::Extend { .. } => "extend",
            AuctionAction::Cancel => "cancel",
            AuctionAction::Delete => "delete",
        }
    }
}

/// What became of an admin's action on an auction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    /// Done: the `admin` event's id, and the auction after the action (as
    /// it was, for a deletion).
    Done {
        event: EventId,
        auction: Box<Auction>,
    },
    Missing,
    /// Not open any more (`closed` or `cancelled`): only a deletion applies.
    NotOpen {
        status: String,
    },
    /// An extension must end later than the auction's current end.
    NotLater {
        ends_at: u64,
    },
}

/// A suspension notice, as the edges receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuspensionNotice {
    Suspended(BidderId),
    Reinstated(BidderId),
}

/// Admin writes and reads. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    conn: RedisConnection,
    maxlen: u64,
    indexes: Indexes,
    retention_ms: u64,
}

impl Admin {
    /// `maxlen` and `retention` as the [`AuctionWriter`](crate::AuctionWriter)'s.
    pub fn new(conn: RedisConnection, maxlen: u64, retention: Duration) -> Admin {
        let indexes = Indexes::for_connection(&conn);
        Admin {
            conn,
            maxlen,
            indexes,
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Applies `action` to `auction` on behalf of `by`, atomically with its
    /// events, then keeps the indexes in line and records it in the log.
    pub async fn act(
        &self,
        auction: &AuctionId,
        action: AuctionAction,
        by: &Bidder,
        reason: Option<&str>,
    ) -> Result<ActionOutcome, LogError> {
        let mut conn = self.conn.clone();
        let by_json = by_json(by);
        let reason_json = json!(reason).to_string();
        let ends_at = match action {
            AuctionAction::Extend { ends_at } => ends_at.to_string(),
            _ => String::new(),
        };
        let reply: Vec<String> = ADMIN
            .for_connection(&self.conn)
            .key(keys::state_key(auction))
            .key(keys::stream_key(auction))
            .arg(auction.as_str())
            .arg(action.as_str())
            .arg(&by_json)
            .arg(&reason_json)
            .arg(self.maxlen)
            .arg(self.retention_ms)
            .arg(ends_at)
            .invoke_async(&mut conn)
            .await
            .map_err(|error| LogError::from_write_on(self.conn.is_cluster(), error))?;
        let outcome = match reply.as_slice() {
            [status] if status == "missing" => ActionOutcome::Missing,
            [status, current] if status == "not_open" => ActionOutcome::NotOpen {
                status: current.clone(),
            },
            [status, ends_at] if status == "not_later" => ActionOutcome::NotLater {
                ends_at: ends_at
                    .parse()
                    .map_err(|_| corrupt(format!("admin answered {reply:?}")))?,
            },
            [status, event, auction] if status == "ok" => ActionOutcome::Done {
                event: EventId::parse(event)
                    .ok_or_else(|| corrupt(format!("admin answered {reply:?}")))?,
                auction: serde_json::from_str(auction)
                    .map_err(|error| corrupt(format!("auction JSON: {error}")))?,
            },
            _ => return Err(corrupt(format!("admin answered {reply:?}"))),
        };
        if let ActionOutcome::Done { auction: after, .. } = &outcome {
            // The appended events stand: nothing below may say otherwise.
            let partition = self.indexes.partition_of(auction);
            let by_end = self.indexes.by_end(partition);
            let indexed = match action {
                AuctionAction::Extend { ends_at } => {
                    conn.zadd::<_, _, _, i64>(by_end, auction.as_str(), ends_at)
                        .await
                }
                AuctionAction::Delete => {
                    let _: Result<i64, _> = conn
                        .zrem(self.indexes.by_creation(partition), auction.as_str())
                        .await;
                    conn.zrem::<_, _, i64>(by_end, auction.as_str()).await
                }
                AuctionAction::Close | AuctionAction::Cancel => {
                    conn.zrem::<_, _, i64>(by_end, auction.as_str()).await
                }
            };
            if let Err(error) = indexed {
                tracing::warn!(%error, %auction, "admin action applied; index not updated");
            }
            let entry = json!({
                "action": action.as_str(),
                "by": serde_json::from_str::<Value>(&by_json).unwrap_or(Value::Null),
                "reason": reason,
                "auction": after.id,
                "title": after.title,
            });
            self.log(entry).await;
        }
        Ok(outcome)
    }

    /// Suspends `bidder`: their bids are refused from now on, and the
    /// edges are told. `Ok(false)`: they were suspended already.
    pub async fn suspend(
        &self,
        bidder: &BidderId,
        by: &Bidder,
        reason: Option<&str>,
    ) -> Result<bool, LogError> {
        let mut conn = self.conn.clone();
        let _: () = conn.set(suspension_key(bidder), by.id.as_str()).await?;
        let added: i64 = conn.sadd(SUSPENDED_SET_KEY, bidder.as_str()).await?;
        let _: i64 = conn
            .publish(SUSPENSION_CHANNEL, format!("suspend {bidder}"))
            .await?;
        self.log(json!({
            "action": "suspend",
            "by": serde_json::from_str::<Value>(&by_json(by)).unwrap_or(Value::Null),
            "reason": reason,
            "bidder": bidder.as_str(),
        }))
        .await;
        Ok(added > 0)
    }

    /// Lifts `bidder`'s suspension. `Ok(false)`: they were not suspended.
    pub async fn reinstate(
        &self,
        bidder: &BidderId,
        by: &Bidder,
        reason: Option<&str>,
    ) -> Result<bool, LogError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(suspension_key(bidder)).await?;
        let removed: i64 = conn.srem(SUSPENDED_SET_KEY, bidder.as_str()).await?;
        let _: i64 = conn
            .publish(SUSPENSION_CHANNEL, format!("reinstate {bidder}"))
            .await?;
        self.log(json!({
            "action": "reinstate",
            "by": serde_json::from_str::<Value>(&by_json(by)).unwrap_or(Value::Null),
            "reason": reason,
            "bidder": bidder.as_str(),
        }))
        .await;
        Ok(removed > 0)
    }

    /// Every suspended bidder's id, sorted.
    pub async fn suspended(&self) -> Result<Vec<String>, LogError> {
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = conn.smembers(SUSPENDED_SET_KEY).await?;
        ids.sort();
        Ok(ids)
    }

    /// The newest `count` admin actions, newest first, each with its `at`
    /// (Unix ms).
    pub async fn recent(&self, count: usize) -> Result<Vec<Value>, LogError> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply =
            conn.xrevrange_count(ADMIN_LOG_KEY, "+", "-", count).await?;
        Ok(reply
            .ids
            .iter()
            .filter_map(|entry| {
                let data: String = entry.get("data")?;
                let mut value: Value = serde_json::from_str(&data).ok()?;
                let at = EventId::parse(&entry.id)?.ms;
                value["at"] = json!(at);
                Some(value)
            })
            .collect())
    }

    /// Records an action in the admin log. The action happened whatever
    /// this says: a failure is logged, not answered.
    async fn log(&self, entry: Value) {
        let mut conn = self.conn.clone();
        let written: Result<String, _> = redis::cmd("XADD")
            .arg(ADMIN_LOG_KEY)
            .arg("MAXLEN")
            .arg("~")
            .arg(ADMIN_LOG_LEN)
            .arg("*")
            .arg("data")
            .arg(entry.to_string())
            .query_async(&mut conn)
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, "admin action not recorded in the admin log");
        }
    }
}

fn by_json(by: &Bidder) -> String {
    json!({"id": by.id.as_str(), "name": by.name.as_str()}).to_string()
}

/// Follows [`SUSPENSION_CHANNEL`]: the stream ends when the connection
/// does (the caller opens it again). Malformed messages are skipped.
pub async fn suspension_notices(
    target: &RedisTarget,
) -> Result<impl Stream<Item = SuspensionNotice> + Send + use<>, LogError> {
    let client = match &target.kind {
        TargetKind::Single { pubsub_client, .. } => pubsub_client.clone(),
        // A plain PUBLISH reaches every node's subscribers: any seed does.
        TargetKind::Cluster { seeds } => {
            let seed = seeds
                .first()
                .ok_or_else(|| LogError::Unavailable("no cluster seed".into()))?;
            redis::Client::open(seed.as_str())?
        }
    };
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(SUSPENSION_CHANNEL).await?;
    Ok(pubsub.into_on_message().filter_map(|message| async move {
        let payload: String = message.get_payload().ok()?;
        let (verb, id) = payload.split_once(' ')?;
        let id = BidderId::parse(id).ok()?;
        match verb {
            "suspend" => Some(SuspensionNotice::Suspended(id)),
            "reinstate" => Some(SuspensionNotice::Reinstated(id)),
            _ => None,
        }
    }))
}
