use crate::connection::RedisConnection;
use crate::keys::{self, Indexes};
use auction_domain::{
    Auction, AuctionId, AuctionStatus, Bid, BidSource, Bidder, Event, EventId, EventKind,
    IdempotencyKey,
};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::streams::{StreamId, StreamRangeReply};
use redis::{AsyncCommands, Pipeline, Script, Value};
use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

/// One script in its two forms: publishing its notices with `PUBLISH` (one
/// node) or `SPUBLISH` (a cluster).
struct Scripts {
    single: Script,
    cluster: Script,
}

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| Scripts {
            single: Script::new(concat!(
                "local PUBLISH_COMMAND = 'PUBLISH'\n",
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            )),
            cluster: Script::new(concat!(
                "local PUBLISH_COMMAND = 'SPUBLISH'\n",
                include_str!("lua/prelude.lua"),
                include_str!(concat!("lua/", $file))
            )),
        })
    };
}

static CREATE: LazyLock<Scripts> = script!("create.lua");
static ENSURE_OPEN: LazyLock<Scripts> = script!("ensure_open.lua");
static PLACE_BID: LazyLock<Scripts> = script!("place_bid.lua");
static CLOSE_IF_DUE: LazyLock<Scripts> = script!("close_if_due.lua");

/// A listing page resumes among at most this many auctions created in the
/// same millisecond as the previous page's last one.
const MAX_SAME_MS: usize = 1000;

/// Where a page of `GET /auctions` ends: the last auction's creation time
/// and id. Shown to clients as an opaque `<created_at>-<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: u64,
    pub id: AuctionId,
}

impl ListCursor {
    pub fn parse(text: &str) -> Option<ListCursor> {
        let (created_at, id) = text.split_once('-')?;
        if created_at.is_empty() || !created_at.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(ListCursor {
            created_at: created_at.parse().ok()?,
            id: AuctionId::parse(id).ok()?,
        })
    }
}

impl fmt::Display for ListCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.created_at, self.id)
    }
}

/// How long the answer to an `Idempotency-Key` is kept.
const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

/// Redis could not be reached or answered something unexpected.
#[derive(Debug, Clone)]
pub enum LogError {
    /// The command did not run: the connection was refused (nothing was
    /// sent), or Redis answered with an error (loading, out of memory...).
    /// Retry later.
    Unavailable(String),
    /// A write whose outcome is unknown: it was sent, and no answer came
    /// (a response timeout, a connection lost mid-command). Redis may have
    /// run it or may still run it: a frozen Redis runs the queued script
    /// when it resumes. Only writes report this (classified by `from_write`);
    /// a retry of an idempotent write learns the real outcome.
    Unknown(String),
    /// Redis answered, but not in the shape the scripts produce.
    Corrupt(String),
    /// The write was applied on the primary, but fewer replicas than
    /// required confirmed it in time (`WAIT`): it could still be lost in a
    /// failover. Retry later (with the same `Idempotency-Key`).
    NotReplicated(String),
}

impl LogError {
    /// Classifies the error of a command that writes: `Unavailable` only
    /// when the command certainly did not run, `Unknown` otherwise.
    pub(crate) fn from_write(error: redis::RedisError) -> LogError {
        use redis::ErrorKind;
        // A refused connection sent nothing. Redis refusing the command
        // (LOADING, BUSY, OOM, READONLY, NOSCRIPT... every code but the
        // generic ERR a failing script raises) ran none of it. A client
        // side error stopped before sending. Anything else (a timeout, a
        // reset, an end of stream, an answer we cannot read) may come after
        // Redis received the command.
        let did_not_run = error.is_connection_refusal()
            || match error.kind() {
                ErrorKind::Server(_) => error.code().is_some_and(|code| code != "ERR"),
                ErrorKind::Client
                | ErrorKind::InvalidClientConfig
                | ErrorKind::AuthenticationFailed => true,
                _ => false,
            };
        if did_not_run {
            LogError::Unavailable(error.to_string())
        } else {
            LogError::Unknown(error.to_string())
        }
    }
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Unavailable(message) => write!(f, "Redis is unavailable: {message}"),
            LogError::Unknown(message) => {
                write!(
                    f,
                    "Redis did not answer a write, which may have run: {message}"
                )
            }
            LogError::Corrupt(message) => write!(f, "unexpected data in Redis: {message}"),
            LogError::NotReplicated(message) => write!(f, "not replicated in time: {message}"),
        }
    }
}

impl std::error::Error for LogError {}

impl From<redis::RedisError> for LogError {
    fn from(error: redis::RedisError) -> Self {
        LogError::Unavailable(error.to_string())
    }
}

fn corrupt(what: impl Into<String>) -> LogError {
    LogError::Corrupt(what.into())
}

/// What an auction is created (or re-opened) with.
#[derive(Debug, Clone)]
pub struct AuctionSpec {
    pub id: AuctionId,
    pub title: String,
    pub starting_price: u64,
    pub min_increment: u64,
    pub duration_ms: u64,
    /// Optional, already validated (`auction_domain` rules).
    pub description: Option<String>,
    pub image_url: Option<String>,
}

#[derive(Debug, Clone)]
pub enum CreateOutcome {
    /// Boxed: an auction is large beside `Exists`.
    Created(Box<Auction>),
    Exists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureOutcome {
    Created,
    Reopened,
    AlreadyOpen,
    /// Closed, and still within the pause after its end.
    Paused,
}

/// The decision on one bid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BidAnswer {
    Accepted {
        id: EventId,
        bid: Bid,
    },
    TooLow {
        current: u64,
        min_next: u64,
    },
    Closed,
    /// The bidder used this `Idempotency-Key` before for a different bid:
    /// nothing was appended.
    IdempotencyKeyReused,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BidAttempt {
    pub answer: BidAnswer,
    /// True when this is the stored answer of an earlier request with the
    /// same `Idempotency-Key`: nothing was appended this time.
    pub replayed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseOutcome {
    /// This call closed the auction and appended its `closed` event.
    Closed,
    AlreadyClosed,
    NotDue,
    Missing,
}

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

/// The connection a write went over, as far as `WAIT` is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionStamp {
    /// The cluster connection built at this moment.
    Built(std::time::Instant),
    /// The single node's connection with this `CLIENT ID`.
    ClientId(i64),
}

/// How many replicas must confirm an accepted bid before it is answered,
/// and for how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAck {
    pub replicas: u32,
    pub timeout: Duration,
}

/// Handle to the event log. Cheap to clone; all clones share one
/// multiplexed connection (one per node in a cluster).
#[derive(Clone)]
pub struct EventLog {
    conn: RedisConnection,
    maxlen: u64,
    indexes: Indexes,
    replica_ack: Option<ReplicaAck>,
    /// How long a closed auction (state and stream) is kept; 0 keeps it.
    retention_ms: u64,
}

/// How long a closed auction is kept unless set otherwise: three days.
pub const DEFAULT_RETENTION_MS: u64 = 3 * 24 * 3600 * 1000;

impl EventLog {
    /// `maxlen` bounds each stream (`XADD MAXLEN ~`): the resume window.
    pub fn new(conn: RedisConnection, maxlen: u64) -> Self {
        let indexes = if conn.is_cluster() {
            Indexes::cluster()
        } else {
            Indexes::single()
        };
        EventLog {
            conn,
            maxlen,
            indexes,
            replica_ack: None,
            retention_ms: DEFAULT_RETENTION_MS,
        }
    }

    /// A handle on the shared connection, for the other parts of this crate.
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

    /// The form of a script for this deployment (which publish command).
    fn script(&self, scripts: &'static Scripts) -> &'static Script {
        if self.conn.is_cluster() {
            &scripts.cluster
        } else {
            &scripts.single
        }
    }

    /// Runs the commands `build` writes for each auction and returns all
    /// replies in order. On one node: one pipeline, one round trip. In a
    /// cluster a pipeline may not cross slots, and different auctions
    /// rarely share one: one pipeline per auction (its keys share a slot),
    /// all sent at once.
    pub(crate) async fn per_auction(
        &self,
        auctions: &[AuctionId],
        build: impl Fn(&mut Pipeline, &AuctionId),
    ) -> Result<Vec<Value>, LogError> {
        if !self.conn.is_cluster() {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            for auction in auctions {
                build(&mut pipe, auction);
            }
            return Ok(pipe.query_async(&mut conn).await?);
        }
        let requests = auctions.iter().map(|auction| {
            let mut pipe = redis::pipe();
            build(&mut pipe, auction);
            let mut conn = self.conn.clone();
            async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
        });
        let replies = futures_util::future::try_join_all(requests).await?;
        Ok(replies.into_iter().flatten().collect())
    }

    /// Which connection a write about to be made goes over, when replicas
    /// must confirm it: `WAIT` counts only the writes of its own
    /// connection, so a reconnect between the write and the `WAIT` would
    /// make the `WAIT` prove nothing. `None` when nothing waits.
    async fn connection_stamp(&self) -> Result<Option<ConnectionStamp>, LogError> {
        if self.replica_ack.is_none() {
            return Ok(None);
        }
        Ok(Some(match &self.conn {
            RedisConnection::Cluster(handle) => ConnectionStamp::Built(handle.built_at()),
            RedisConnection::Single(_) => {
                let mut conn = self.conn.clone();
                let id: i64 = redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async(&mut conn)
                    .await?;
                ConnectionStamp::ClientId(id)
            }
        }))
    }

    /// Waits until the configured number of replicas hold every write this
    /// connection made to the node owning `key` (so the bid just appended),
    /// if it is still the connection the write went over (`written_on`).
    async fn await_replicas(
        &self,
        key: &str,
        written_on: Option<ConnectionStamp>,
    ) -> Result<(), LogError> {
        let Some(ack) = self.replica_ack else {
            return Ok(());
        };
        let replaced =
            || LogError::NotReplicated("the Redis connection was replaced after the write".into());
        let timeout_ms = u64::try_from(ack.timeout.as_millis()).unwrap_or(u64::MAX);
        let mut wait = redis::cmd("WAIT");
        wait.arg(ack.replicas).arg(timeout_ms);
        let acknowledged: i64 = match &self.conn {
            RedisConnection::Single(_) => {
                // One pipeline, one connection: the id says which one the
                // WAIT went over. Ids are never reused by a running server,
                // and the connection manager never goes back to an old
                // connection, so the same id means the write's connection.
                let mut conn = self.conn.clone();
                let (id, acknowledged): (i64, i64) = redis::pipe()
                    .cmd("CLIENT")
                    .arg("ID")
                    .add_command(wait)
                    .query_async(&mut conn)
                    .await?;
                if written_on != Some(ConnectionStamp::ClientId(id)) {
                    return Err(replaced());
                }
                acknowledged
            }
            RedisConnection::Cluster(handle) => {
                // Left to the router, WAIT would go to every primary; only
                // the one owning the auction's slot holds the write.
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                let reply = handle.connection().route_command(wait, route).await?;
                if written_on != Some(ConnectionStamp::Built(handle.built_at())) {
                    // The connection was replaced between the write and
                    // WAIT: this WAIT proves nothing about the write.
                    return Err(replaced());
                }
                redis::from_redis_value(reply)
                    .map_err(|error| corrupt(format!("WAIT answered {error}")))?
            }
        };
        if acknowledged < i64::from(ack.replicas) {
            return Err(LogError::NotReplicated(format!(
                "{acknowledged} of {} replicas confirmed within {timeout_ms} ms",
                ack.replicas
            )));
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), LogError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    /// `Err(LogError::Unknown)`: the auction may be (or become) created.
    pub async fn create(&self, spec: &AuctionSpec) -> Result<CreateOutcome, LogError> {
        let mut conn = self.conn.clone();
        let mut invocation = spec_invocation(self.script(&CREATE), spec);
        let reply: Vec<String> = with_optional_fields(&mut invocation, spec)
            .invoke_async(&mut conn)
            .await
            .map_err(LogError::from_write)?;
        match reply.as_slice() {
            [status] if status == "exists" => Ok(CreateOutcome::Exists),
            [status, json] if status == "ok" => {
                let auction = parse_auction(json)?;
                self.index(&auction).await?;
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
        let mut invocation = spec_invocation(self.script(&ENSURE_OPEN), spec);
        invocation.arg(self.maxlen);
        let reply: Vec<String> = with_optional_fields(&mut invocation, spec)
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
        let written_on = self.connection_stamp().await?;
        let reply: Vec<String> = self
            .script(&PLACE_BID)
            .key(&state_key)
            .key(keys::stream_key(auction))
            .key(idem_key)
            .arg(auction.as_str())
            .arg(amount)
            .arg(name_json)
            .arg(source.as_str())
            .arg(traceparent.unwrap_or(""))
            .arg(self.maxlen)
            .arg(IDEMPOTENCY_TTL_MS)
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(id_json)
            .arg(amount)
            .arg(self.retention_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(LogError::from_write)?;
        let (replayed, answer) = match reply.as_slice() {
            [status] if status == "not_found" => return Ok(None),
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
        if matches!(answer, BidAnswer::Accepted { .. }) {
            self.await_replicas(&state_key, written_on).await?;
        }
        Ok(Some(BidAttempt { answer, replayed }))
    }

    pub async fn close_if_due(&self, auction: &AuctionId) -> Result<CloseOutcome, LogError> {
        let mut conn = self.conn.clone();
        let reply: String = self
            .script(&CLOSE_IF_DUE)
            .key(keys::state_key(auction))
            .key(keys::stream_key(auction))
            .arg(auction.as_str())
            .arg(self.maxlen)
            .arg(self.retention_ms)
            .invoke_async(&mut conn)
            .await?;
        let outcome = match reply.as_str() {
            "closed" => CloseOutcome::Closed,
            "already" => CloseOutcome::AlreadyClosed,
            "not_due" => CloseOutcome::NotDue,
            "missing" => CloseOutcome::Missing,
            other => return Err(corrupt(format!("close_if_due answered {other:?}"))),
        };
        if matches!(
            outcome,
            CloseOutcome::Closed | CloseOutcome::AlreadyClosed | CloseOutcome::Missing
        ) {
            let index = self.indexes.by_end(self.indexes.partition_of(auction));
            let _: i64 = conn.zrem(index, auction.as_str()).await?;
        }
        Ok(outcome)
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

    /// Open auctions whose `ends_at` is at or before `now_ms`, oldest first.
    pub async fn due_for_close(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<AuctionId>, LogError> {
        let mut conn = self.conn.clone();
        // Each partition's oldest `limit`, merged: the oldest `limit` overall.
        let mut due: Vec<(String, f64)> = Vec::new();
        for partition in self.indexes.partitions() {
            let ids: Vec<(String, f64)> = redis::cmd("ZRANGE")
                .arg(self.indexes.by_end(partition))
                .arg("-inf")
                .arg(now_ms)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await?;
            due.extend(ids);
        }
        due.sort_by(|a, b| a.1.total_cmp(&b.1));
        // An id that fails validation was not written by us: skip it.
        Ok(due
            .iter()
            .take(limit)
            .filter_map(|(id, _)| AuctionId::parse(id).ok())
            .collect())
    }

    pub async fn get(&self, auction: &AuctionId) -> Result<Option<Auction>, LogError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = conn.hgetall(keys::state_key(auction)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        auction_from_hash(&fields).map(Some)
    }

    /// A page of auctions, newest first: at most `limit`, after `after`
    /// (the position of the previous page's last auction). Also returns the
    /// position of this page's last auction when there may be more.
    ///
    /// Positions are (creation time, id) in the creation index, whose order
    /// is score descending, then member descending: a page resumes exactly
    /// after the previous one even when auctions are created meanwhile.
    /// Ids whose auction has expired are dropped from the index on the way.
    pub async fn list_page(
        &self,
        after: Option<&ListCursor>,
        limit: usize,
    ) -> Result<(Vec<Auction>, Option<ListCursor>), LogError> {
        let mut conn = self.conn.clone();
        let limit = limit.max(1);
        // Each partition's page after the cursor, merged: the page overall.
        let mut entries: Vec<(String, u64)> = Vec::with_capacity(limit + 1);
        for partition in self.indexes.partitions() {
            let index = self.indexes.by_creation(partition);
            let mut found: Vec<(String, u64)> = Vec::new();
            let older_than = match after {
                None => "+inf".to_owned(),
                Some(cursor) => {
                    // The rest of the auctions created in the same
                    // millisecond (few: creation is rate-limited), then
                    // the older ones.
                    let same: Vec<(String, u64)> = redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(cursor.created_at)
                        .arg(cursor.created_at)
                        .arg("BYSCORE")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(MAX_SAME_MS)
                        .arg("WITHSCORES")
                        .query_async(&mut conn)
                        .await?;
                    found.extend(
                        same.into_iter()
                            .filter(|(id, _)| id.as_str() < cursor.id.as_str())
                            .take(limit + 1),
                    );
                    format!("({}", cursor.created_at)
                }
            };
            if found.len() <= limit {
                let older: Vec<(String, u64)> = redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(&older_than)
                    .arg("-inf")
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit + 1 - found.len())
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await?;
                found.extend(older);
            }
            entries.extend(found);
        }
        // The index's order: creation time descending, then id descending.
        entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next = more
            .then(|| entries.last())
            .flatten()
            .and_then(|(id, created_at)| {
                Some(ListCursor {
                    created_at: *created_at,
                    id: AuctionId::parse(id).ok()?,
                })
            });
        // Not written by us: dropped from the index like an expired one.
        let (ids, foreign): (Vec<_>, Vec<_>) = entries
            .iter()
            .partition(|(id, _)| AuctionId::parse(id).is_ok());
        let ids: Vec<AuctionId> = ids
            .iter()
            .filter_map(|(id, _)| AuctionId::parse(id).ok())
            .collect();
        let replies = if ids.is_empty() {
            Vec::new()
        } else {
            self.per_auction(&ids, |pipe, auction| {
                pipe.cmd("HGETALL").arg(keys::state_key(auction));
            })
            .await?
        };
        let hashes: Vec<HashMap<String, String>> = replies
            .iter()
            .map(redis::from_redis_value_ref)
            .collect::<Result<_, _>>()
            .map_err(|error| corrupt(format!("list answered {error}")))?;
        let mut gone: Vec<&str> = foreign.iter().map(|(id, _)| id.as_str()).collect();
        gone.extend(
            ids.iter()
                .zip(&hashes)
                .filter(|(_, fields)| fields.is_empty())
                .map(|(id, _)| id.as_str()),
        );
        for id in gone {
            let index = match AuctionId::parse(id) {
                Ok(auction) => self
                    .indexes
                    .by_creation(self.indexes.partition_of(&auction)),
                Err(_) => self.indexes.by_creation(0),
            };
            let _: i64 = conn.zrem(index, id).await?;
        }
        let auctions = hashes
            .iter()
            .filter(|fields| !fields.is_empty())
            .map(auction_from_hash)
            .collect::<Result<_, _>>()?;
        Ok((auctions, next))
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

fn spec_invocation<'a>(script: &'a Script, spec: &AuctionSpec) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys::state_key(&spec.id))
        .key(keys::stream_key(&spec.id))
        .arg(spec.id.as_str())
        .arg(&spec.title)
        .arg(serde_json::to_string(&spec.title).unwrap_or_else(|_| "\"\"".into()))
        .arg(spec.starting_price)
        .arg(spec.min_increment)
        .arg(spec.duration_ms);
    invocation
}

/// The optional fields, after a script's other arguments: each as a JSON
/// string, or empty when unset (the scripts then store and show nothing).
fn with_optional_fields<'a, 'b>(
    invocation: &'b mut redis::ScriptInvocation<'a>,
    spec: &AuctionSpec,
) -> &'b mut redis::ScriptInvocation<'a> {
    let encoded = |field: &Option<String>| {
        field
            .as_ref()
            .and_then(|text| serde_json::to_string(text).ok())
            .unwrap_or_default()
    };
    invocation
        .arg(encoded(&spec.description))
        .arg(encoded(&spec.image_url))
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
            Ok(BidAnswer::Accepted { id, bid })
        }
        _ => Err(corrupt(format!("bid answer {answer:?}"))),
    }
}

fn auction_from_hash(fields: &HashMap<String, String>) -> Result<Auction, LogError> {
    let text = |name: &str| -> Result<&str, LogError> {
        fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| corrupt(format!("auction hash lacks {name}")))
    };
    let number = |name: &str| -> Result<u64, LogError> {
        text(name)?
            .parse()
            .map_err(|_| corrupt(format!("auction field {name} is not a number")))
    };
    let status = match text("status")? {
        "open" => AuctionStatus::Open,
        "closed" => AuctionStatus::Closed,
        other => return Err(corrupt(format!("auction status {other:?}"))),
    };
    let current = match fields.get("current").map(String::as_str) {
        None | Some("") => None,
        Some(json) => Some(
            serde_json::from_str(json).map_err(|error| corrupt(format!("current bid: {error}")))?,
        ),
    };
    Ok(Auction {
        id: text("id")?.to_owned(),
        title: text("title")?.to_owned(),
        status,
        starting_price: number("starting_price")?,
        min_increment: number("min_increment")?,
        ends_at: number("ends_at")?,
        current,
        description: optional_json_string(fields, "description_json")?,
        image_url: optional_json_string(fields, "image_url_json")?,
    })
}

/// A field the scripts store JSON-encoded, or empty / missing when unset.
fn optional_json_string(
    fields: &HashMap<String, String>,
    name: &str,
) -> Result<Option<String>, LogError> {
    match fields.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(json) => serde_json::from_str(json)
            .map(Some)
            .map_err(|error| corrupt(format!("auction field {name}: {error}"))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_unavailable_only_when_it_certainly_did_not_run() {
        let io = |kind| redis::RedisError::from(std::io::Error::new(kind, "x"));
        let refused = LogError::from_write(io(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(refused, LogError::Unavailable(_)), "{refused:?}");
        for kind in [
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::BrokenPipe,
        ] {
            let error = LogError::from_write(io(kind));
            assert!(matches!(error, LogError::Unknown(_)), "{kind:?}: {error:?}");
        }
    }

    #[test]
    fn list_cursors_read_back_what_they_show() {
        let cursor = ListCursor {
            created_at: 1_733_000_000_123,
            id: AuctionId::parse("a-b_c").unwrap(),
        };
        assert_eq!(ListCursor::parse(&cursor.to_string()), Some(cursor));
        for bad in ["", "-", "12-", "-abc", "x1-abc", "12-a b", "+1-a"] {
            assert_eq!(ListCursor::parse(bad), None, "{bad:?}");
        }
    }

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
