//! The writes: creating and re-opening auctions, bids, closes, and the
//! upkeep of the global indexes that goes with them (the closer's walk of
//! the closing and creation indexes included).

use crate::connection::RedisConnection;
use crate::error::{LogError, corrupt};
use crate::keys::{self, Indexes};
use crate::outcome::{
    BidAnswer, BidAttempt, BidOrder, CloseOutcome, CreateOutcome, EnsureOutcome, Standing,
};
use crate::replica_ack::{ReplicaAck, await_replicas, connection_stamp};
use crate::scripts::{CLOSE_IF_DUE, CREATE, DUE, ENSURE_OPEN, PLACE_BID};
use crate::spec::AuctionSpec;
use auction_domain::{Auction, AuctionId, BidSource, Bidder, EventId, IdempotencyKey};
use redis::{AsyncCommands, Script};
use std::time::Duration;

/// How long a bid on a cluster waits for its bidder's suspension marker,
/// which lives on whichever node holds the bidder's slot.
const SUSPENSION_CHECK_DEADLINE: Duration = Duration::from_millis(250);

/// How long the answer to an `Idempotency-Key` is kept.
const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

/// How long a closed auction is kept unless set otherwise: three days.
pub const DEFAULT_RETENTION_MS: u64 = 3 * 24 * 3600 * 1000;

/// Writes auctions and their events. Cheap to clone; all clones share one
/// multiplexed connection (one per node in a cluster).
#[derive(Clone)]
pub struct AuctionWriter {
    conn: RedisConnection,
    maxlen: u64,
    indexes: Indexes,
    replica_ack: Option<ReplicaAck>,
    /// How long a closed auction (state and stream) is kept; 0 keeps it.
    retention_ms: u64,
}

impl AuctionWriter {
    /// `maxlen` bounds each stream (`XADD MAXLEN ~`): the resume window.
    pub fn new(conn: RedisConnection, maxlen: u64) -> Self {
        let indexes = Indexes::for_connection(&conn);
        AuctionWriter {
            conn,
            maxlen,
            indexes,
            replica_ack: None,
            retention_ms: DEFAULT_RETENTION_MS,
        }
    }

    /// The connection, for the writer's methods kept in other modules.
    pub(crate) fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// How long a closed auction and its stream are kept after its close
    /// (`Duration::ZERO`: forever). Set atomically by the close.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Accepted bids are answered only once `ack.replicas` replicas have
    /// them (`WAIT`); past `ack.timeout`, [`LogError::NotReplicated`].
    /// Zero replicas: no waiting (the default).
    pub fn with_replica_ack(mut self, ack: ReplicaAck) -> Self {
        self.replica_ack = (ack.replicas > 0).then_some(ack);
        self
    }

    /// `Err(LogError::Unknown)`: the auction may be (or become) created.
    pub async fn create(&self, spec: &AuctionSpec) -> Result<CreateOutcome, LogError> {
        let mut conn = self.conn.clone();
        let reply: Vec<String> = spec_invocation(CREATE.for_connection(&self.conn), spec)
            .invoke_async(&mut conn)
            .await
            .map_err(|error| LogError::from_write_on(self.conn.is_cluster(), error))?;
        match reply.as_slice() {
            [status] if status == "exists" => Ok(CreateOutcome::Exists),
            [status, json] if status == "exists" => {
                // An earlier create of this id may have been cut off
                // before its indexing: a repeat completes it (idempotent).
                if let Ok(auction) = parse_auction(json)
                    && auction.status == auction_domain::AuctionStatus::Open
                {
                    self.index(&auction).await.map_err(LogError::after_create)?;
                }
                Ok(CreateOutcome::Exists)
            }
            [status, json] if status == "ok" => {
                let auction = parse_auction(json)?;
                // The auction exists from here on: an error indexing it
                // must not say "not created".
                self.index(&auction).await.map_err(LogError::after_create)?;
                Ok(CreateOutcome::Created(Box::new(auction)))
            }
            _ => Err(corrupt(format!("create answered {reply:?}"))),
        }
    }

    /// Makes sure the auction exists and is open: creates it, or starts a new
    /// round after it closed (closing it first if it is past its end).
    ///
    /// A round that ended stays closed for `pause_after_close` past its end
    /// (`EnsureOutcome::Paused`), so its winner can be seen before the next
    /// round opens.
    pub async fn ensure_open(
        &self,
        spec: &AuctionSpec,
        pause_after_close: Duration,
    ) -> Result<(EnsureOutcome, Auction), LogError> {
        let mut conn = self.conn.clone();
        let mut invocation = spec_invocation(ENSURE_OPEN.for_connection(&self.conn), spec);
        let reply: Vec<String> = invocation
            .key(keys::bidders_key(&spec.id))
            .key(keys::sim_limits_key(&spec.id))
            .arg(self.maxlen)
            .arg(u64::try_from(pause_after_close.as_millis()).unwrap_or(u64::MAX))
            .arg(self.retention_ms)
            .invoke_async(&mut conn)
            .await?;
        let (status, json) = match reply.as_slice() {
            [status, json] => (status.as_str(), json),
            _ => return Err(corrupt(format!("ensure_open answered {reply:?}"))),
        };
        let outcome = match status {
            "created" => EnsureOutcome::Created,
            "reopened" => EnsureOutcome::Reopened,
            "open" => EnsureOutcome::AlreadyOpen,
            "paused" => EnsureOutcome::Paused,
            other => return Err(corrupt(format!("ensure_open answered {other:?}"))),
        };
        let auction = parse_auction(json)?;
        if matches!(outcome, EnsureOutcome::Created | EnsureOutcome::Reopened) {
            self.index(&auction).await?;
        }
        Ok((outcome, auction))
    }

    /// Records the auction in the listing and closing indexes. Idempotent;
    /// kept out of the scripts so each script touches one cluster slot
    /// (both sets of a partition share one slot, so this is one round trip).
    async fn index(&self, auction: &Auction) -> Result<(), LogError> {
        let mut conn = self.conn.clone();
        let created_at = auction_domain::clock::now_ms();
        let partition = match AuctionId::parse(&auction.id) {
            Ok(id) => self.indexes.partition_of(&id),
            Err(_) => return Err(corrupt(format!("auction id {:?}", auction.id))),
        };
        redis::pipe()
            .cmd("ZADD")
            .arg(self.indexes.by_creation(partition))
            .arg("NX")
            .arg(created_at)
            .arg(&auction.id)
            .ignore()
            .cmd("ZADD")
            .arg(self.indexes.by_end(partition))
            .arg(auction.ends_at)
            .arg(&auction.id)
            .ignore()
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Validates and appends a bid atomically. `Ok(None)`: unknown auction.
    /// `Err(LogError::Unknown)`: the bid may be (or become) appended; a
    /// retry with the same `idempotency_key` returns what happened to it.
    /// An `idempotency_key` is the bidder's own (two bidders' equal keys are
    /// unrelated) and is bound to the bid's amount, the one thing a bid
    /// request says besides who bids.
    pub async fn place_bid(
        &self,
        auction: &AuctionId,
        amount: u64,
        bidder: &Bidder,
        source: BidSource,
        traceparent: Option<&str>,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Option<BidAttempt>, LogError> {
        self.place(
            auction,
            BidOrder::Amount(amount),
            bidder,
            source,
            traceparent,
            idempotency_key,
        )
        .await
    }

    /// As [`AuctionWriter::place_bid`], for any [`BidOrder`]: the auction
    /// rules (maximums, reserve, soft close, buy now) are applied by the
    /// script in the same step. An `idempotency_key` is bound to the order.
    pub async fn place(
        &self,
        auction: &AuctionId,
        order: BidOrder,
        bidder: &Bidder,
        source: BidSource,
        traceparent: Option<&str>,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<Option<BidAttempt>, LogError> {
        let (kind, value) = match order {
            BidOrder::Amount(amount) => ("amount", amount),
            BidOrder::Max(max) => ("max", max),
            BidOrder::BuyNow => ("buy_now", 0),
        };
        let mut conn = self.conn.clone();
        let encode = |text: &str| {
            serde_json::to_string(text)
                .map_err(|error| corrupt(format!("cannot encode bidder: {error}")))
        };
        let name_json = encode(bidder.name.as_str())?;
        let id_json = encode(bidder.id.as_str())?;
        let idem_key = keys::idempotency_key(
            auction,
            &bidder.id,
            idempotency_key.map_or("", |k| k.as_str()),
        );
        let state_key = keys::state_key(auction);
        let written_on = connection_stamp(&self.conn, self.replica_ack).await?;
        // A suspension is checked inside the script on a single node; in a
        // cluster its marker lives in the bidder's slot, not the auction's,
        // so just before it, with a short deadline: a node that hangs or is
        // down there must not hold up bids on healthy shards. Unanswered,
        // the bid goes on (a suspension is not enforced while the node
        // holding its marker is out; docs/api.md, Admin).
        let suspension = crate::admin::suspension_key(&bidder.id);
        if self.conn.is_cluster() {
            let check = conn.exists::<_, bool>(&suspension);
            match tokio::time::timeout(SUSPENSION_CHECK_DEADLINE, check).await {
                Ok(Ok(true)) => {
                    return Ok(Some(BidAttempt {
                        answer: BidAnswer::BidderSuspended,
                        replayed: false,
                    }));
                }
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "suspension not checked: its node did not answer");
                }
                Err(_) => tracing::warn!("suspension not checked: its node did not answer in time"),
            }
        }
        let mut invocation = PLACE_BID.prepare_for(&self.conn);
        invocation
            .key(&state_key)
            .key(keys::stream_key(auction))
            .key(idem_key)
            .key(keys::bidders_key(auction));
        if !self.conn.is_cluster() {
            invocation.key(suspension);
        }
        let reply: Vec<String> = invocation
            .arg(auction.as_str())
            .arg(value)
            .arg(name_json)
            .arg(source.as_str())
            .arg(traceparent.unwrap_or(""))
            .arg(self.maxlen)
            .arg(IDEMPOTENCY_TTL_MS)
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(id_json)
            .arg(order.fingerprint())
            .arg(self.retention_ms)
            .arg(kind)
            .invoke_async(&mut conn)
            .await
            .map_err(|error| LogError::from_write_on(self.conn.is_cluster(), error))?;
        let (replayed, answer) = match reply.as_slice() {
            [status] if status == "not_found" => return Ok(None),
            [status] if status == "suspended" => {
                return Ok(Some(BidAttempt {
                    answer: BidAnswer::BidderSuspended,
                    replayed: false,
                }));
            }
            [status] if status == "reused" => {
                return Ok(Some(BidAttempt {
                    answer: BidAnswer::IdempotencyKeyReused,
                    replayed: false,
                }));
            }
            [status, answer] if status == "new" => (false, answer),
            [status, answer] if status == "dup" => (true, answer),
            _ => return Err(corrupt(format!("place_bid answered {reply:?}"))),
        };
        let answer = parse_bid_answer(answer)?;
        // A replayed answer waits too: the first request may have been
        // answered 503 before its bid reached a replica.
        // The script ran: from here on, no error may say "not placed". A
        // WAIT that fails, is refused (the node just became a replica) or
        // loses its connection leaves an appended bid unconfirmed.
        if matches!(answer, BidAnswer::Accepted { .. }) {
            await_replicas(&self.conn, self.replica_ack, &state_key, written_on)
                .await
                .map_err(LogError::after_append)?;
        }
        Ok(Some(BidAttempt { answer, replayed }))
    }

    pub async fn close_if_due(&self, auction: &AuctionId) -> Result<CloseOutcome, LogError> {
        let mut conn = self.conn.clone();
        let reply: String = CLOSE_IF_DUE
            .for_connection(&self.conn)
            .key(keys::state_key(auction))
            .key(keys::stream_key(auction))
            .arg(auction.as_str())
            .arg(self.maxlen)
            .arg(self.retention_ms)
            .invoke_async(&mut conn)
            .await?;
        let index = self.indexes.by_end(self.indexes.partition_of(auction));
        let outcome = match reply.split_once(' ') {
            Some(("not_due", ends_at)) => {
                // A soft close moved the end: the closing index follows, so
                // the closer picks the auction again at its new end.
                if let Ok(ends_at) = ends_at.parse::<u64>() {
                    let _: i64 = redis::cmd("ZADD")
                        .arg(&index)
                        .arg("XX")
                        .arg(ends_at)
                        .arg(auction.as_str())
                        .query_async(&mut conn)
                        .await?;
                }
                CloseOutcome::NotDue
            }
            _ => match reply.as_str() {
                "closed" => CloseOutcome::Closed,
                "already" => CloseOutcome::AlreadyClosed,
                "not_due" => CloseOutcome::NotDue,
                "missing" => CloseOutcome::Missing,
                other => return Err(corrupt(format!("close_if_due answered {other:?}"))),
            },
        };
        if matches!(
            outcome,
            CloseOutcome::Closed | CloseOutcome::AlreadyClosed | CloseOutcome::Missing
        ) {
            let _: i64 = conn.zrem(index, auction.as_str()).await?;
        }
        Ok(outcome)
    }

    /// The bidder's standing in the auction (`Ok(None)`: no such auction),
    /// from the hidden record the bid script keeps.
    pub async fn standing(
        &self,
        auction: &AuctionId,
        bidder: &auction_domain::BidderId,
    ) -> Result<Option<Standing>, LogError> {
        let mut conn = self.conn.clone();
        let id_json = serde_json::to_string(bidder.as_str())
            .map_err(|error| corrupt(format!("cannot encode bidder: {error}")))?;
        let (exists, leader, mine): (bool, Option<String>, Vec<Option<String>>) = redis::pipe()
            .cmd("EXISTS")
            .arg(keys::state_key(auction))
            .cmd("HGET")
            .arg(keys::state_key(auction))
            .arg("leader_id")
            .cmd("HMGET")
            .arg(keys::bidders_key(auction))
            .arg(format!("max:{id_json}"))
            .arg(format!("last:{id_json}"))
            .query_async(&mut conn)
            .await?;
        if !exists {
            return Ok(None);
        }
        let number = |text: Option<&Option<String>>| {
            text.and_then(|text| text.as_deref())
                .and_then(|text| text.parse::<u64>().ok())
        };
        Ok(Some(Standing {
            leading: leader.as_deref() == Some(id_json.as_str()),
            max_amount: number(mine.first()),
            last_bid: number(mine.get(1)),
        }))
    }

    /// Drops from the creation index up to `batch` ids, from creation time
    /// `from` on, whose auction has expired. Returns where the next call
    /// goes on (`None`: the index was walked to its end; start again).
    /// Bounded work per call, so a loop walks the whole index over time.
    pub async fn trim_creation_index(
        &self,
        from: Option<u64>,
        batch: usize,
    ) -> Result<Option<u64>, LogError> {
        let mut conn = self.conn.clone();
        let start = from.map_or_else(|| "-inf".to_owned(), |score| format!("({score}"));
        // Up to `batch` from each partition; the walk goes on from the
        // earliest point a full partition reached (a partition re-read
        // from there is checked twice, which is harmless).
        let mut entries: Vec<(String, u64)> = Vec::new();
        let mut next: Option<u64> = None;
        for partition in self.indexes.partitions() {
            let found: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg(self.indexes.by_creation(partition))
                .arg(&start)
                .arg("+inf")
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(batch)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await?;
            if found.len() == batch
                && let Some((_, score)) = found.last()
            {
                next = Some(next.map_or(*score, |at| at.min(*score)));
            }
            entries.extend(found);
        }
        let ids: Vec<AuctionId> = entries
            .iter()
            .filter_map(|(id, _)| AuctionId::parse(id).ok())
            .collect();
        if ids.is_empty() {
            return Ok(next);
        }
        let exist = self
            .conn
            .per_auction(&ids, |pipe, auction| {
                pipe.cmd("EXISTS").arg(keys::state_key(auction));
            })
            .await?;
        for (auction, exists) in ids.iter().zip(exist) {
            if redis::from_redis_value_ref::<bool>(&exists).unwrap_or(true) {
                continue;
            }
            let index = self.indexes.by_creation(self.indexes.partition_of(auction));
            let _: i64 = conn.zrem(index, auction.as_str()).await?;
        }
        Ok(next)
    }

    /// Open auctions whose `ends_at` has passed, oldest first: by Redis's
    /// clock (each index partition's node reads its `TIME`), the clock the
    /// close checks, so a bidder whose own clock is off closes on time.
    pub async fn due_for_close(&self, limit: usize) -> Result<Vec<AuctionId>, LogError> {
        Ok(self
            .due_for_close_with_ends(limit)
            .await?
            .into_iter()
            .map(|(auction, _)| auction)
            .collect())
    }

    /// [`AuctionWriter::due_for_close`], each with its end (Unix ms), for
    /// measuring how late it closes.
    pub async fn due_for_close_with_ends(
        &self,
        limit: usize,
    ) -> Result<Vec<(AuctionId, u64)>, LogError> {
        let mut conn = self.conn.clone();
        // Each partition's oldest `limit`, merged: the oldest `limit` overall.
        let mut due: Vec<(String, f64)> = Vec::new();
        for partition in self.indexes.partitions() {
            let ids: Vec<(String, f64)> = DUE
                .key(self.indexes.by_end(partition))
                .arg(limit)
                .invoke_async(&mut conn)
                .await?;
            due.extend(ids);
        }
        due.sort_by(|a, b| a.1.total_cmp(&b.1));
        // An id that fails validation was not written by us: skip it.
        Ok(due
            .iter()
            .take(limit)
            .filter_map(|(id, ends_at)| Some((AuctionId::parse(id).ok()?, *ends_at as u64)))
            .collect())
    }
}

/// An invocation of create.lua or ensure_open.lua with the keys and the
/// arguments both take first, in the order the prelude's `init_state`
/// reads them: id, title, title_json, starting_price, min_increment,
/// duration_ms, description_json, image_url_json, soft_close_ms,
/// reserve_price, buy_now_price, seller_json, terms_json. A script's own arguments
/// go after these.
fn spec_invocation<'a>(script: &'a Script, spec: &AuctionSpec) -> redis::ScriptInvocation<'a> {
    // The optional fields each as a JSON string, or empty when unset (the
    // scripts then store and show nothing).
    let encoded = |field: &Option<String>| {
        field
            .as_ref()
            .and_then(|text| serde_json::to_string(text).ok())
            .unwrap_or_default()
    };
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys::state_key(&spec.id))
        .key(keys::stream_key(&spec.id))
        .arg(spec.id.as_str())
        .arg(&spec.title)
        .arg(serde_json::to_string(&spec.title).unwrap_or_else(|_| "\"\"".into()))
        .arg(spec.starting_price)
        .arg(spec.min_increment)
        .arg(spec.duration_ms)
        .arg(encoded(&spec.description))
        .arg(encoded(&spec.image_url))
        .arg(spec.rules.soft_close_ms)
        .arg(
            spec.rules
                .reserve_price
                .map_or(String::new(), |p| p.to_string()),
        )
        .arg(
            spec.rules
                .buy_now_price
                .map_or(String::new(), |p| p.to_string()),
        )
        .arg(
            spec.seller
                .as_ref()
                .and_then(|seller| serde_json::to_string(seller).ok())
                .unwrap_or_default(),
        )
        .arg(encoded(&spec.terms));
    invocation
}

fn parse_auction(json: &str) -> Result<Auction, LogError> {
    serde_json::from_str(json).map_err(|error| corrupt(format!("auction JSON: {error}")))
}

fn parse_bid_answer(answer: &str) -> Result<BidAnswer, LogError> {
    let mut lines = answer.splitn(3, '\n');
    let number = |text: Option<&str>| -> Result<u64, LogError> {
        text.and_then(|t| t.parse().ok())
            .ok_or_else(|| corrupt(format!("bid answer {answer:?}")))
    };
    match lines.next() {
        Some("closed") => Ok(BidAnswer::Closed),
        Some("no_buy_now") => Ok(BidAnswer::BuyNowUnavailable),
        Some("not_raised") => Ok(BidAnswer::MaxNotRaised {
            max_amount: number(lines.next())?,
        }),
        Some("ok2") => {
            let bad = || corrupt(format!("bid answer {answer:?}"));
            let mut fields = answer.splitn(5, '\n').skip(1);
            let id = fields.next().and_then(EventId::parse).ok_or_else(bad)?;
            let leading = match fields.next() {
                Some("1") => true,
                Some("0") => false,
                _ => return Err(bad()),
            };
            let max_amount = match fields.next() {
                Some("") => None,
                text => Some(number(text)?),
            };
            let bid = serde_json::from_str(fields.next().unwrap_or(""))
                .map_err(|error| corrupt(format!("bid JSON: {error}")))?;
            Ok(BidAnswer::Accepted {
                id,
                bid,
                leading,
                max_amount,
            })
        }
        Some("too_low") => Ok(BidAnswer::TooLow {
            current: number(lines.next())?,
            min_next: number(lines.next())?,
        }),
        Some("ok") => {
            let id = lines
                .next()
                .and_then(EventId::parse)
                .ok_or_else(|| corrupt(format!("bid answer {answer:?}")))?;
            let bid = serde_json::from_str(lines.next().unwrap_or(""))
                .map_err(|error| corrupt(format!("bid JSON: {error}")))?;
            // Stored before maximums existed: the caller's own bid.
            Ok(BidAnswer::Accepted {
                id,
                bid,
                leading: true,
                max_amount: None,
            })
        }
        _ => Err(corrupt(format!("bid answer {answer:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bid_answers_parse() {
        assert_eq!(parse_bid_answer("closed").unwrap(), BidAnswer::Closed);
        assert_eq!(
            parse_bid_answer("too_low\n100\n150").unwrap(),
            BidAnswer::TooLow {
                current: 100,
                min_next: 150
            }
        );
        let accepted = parse_bid_answer(
            "ok\n7-0\n{\"auction\":\"a\",\"amount\":5,\"bidder\":\"b\",\"placed_at\":1,\"source\":\"user\"}",
        )
        .unwrap();
        assert!(matches!(accepted, BidAnswer::Accepted { id, .. } if id == EventId::new(7, 0)));
        assert!(parse_bid_answer("nonsense").is_err());
    }
}
