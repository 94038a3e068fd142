//! The Redis event log: the one place that knows the Redis layout.
//!
//! - `auction:{ID}` — a hash with the auction's state;
//! - `auction:{ID}:events` — a stream of every event a client can see;
//! - `auction:{ID}:live` — a pub/sub channel with one notice per event
//!   ([`live`] reads them back as [`Event`](auction_domain::Event)s).
//!
//! Writes go through Lua scripts that validate and append atomically, so any
//! number of bidder replicas agree on one order. Reads are plain stream
//! ranges. See `docs/ARCHITECTURE.md` for how edges use the notice chain.

mod connection;
mod keys;
pub mod live;
mod log;
mod notice;
mod viewers;

pub use connection::{
    ClusterHandle, RedisConnection, RedisTarget, connect_manager, parse_redis_url,
};
pub use live::{LiveConnection, LiveMessage};
pub use log::DEFAULT_RETENTION_MS;
pub use log::{
    AuctionSpec, BidAnswer, BidAttempt, CloseOutcome, CreateOutcome, EnsureOutcome, EventLog,
    ListCursor, LogError, ReplicaAck, Snapshot, StreamWindow,
};
