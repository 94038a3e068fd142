//! The Redis event log: the one place that knows the Redis layout.
//!
//! - `auction:{ID}` — a hash with the auction's state;
//! - `auction:{ID}:events` — a stream of every event a client can see;
//! - `auction:{ID}:live` — a pub/sub channel with one notice per event
//!   ([`live`] reads them back as [`Event`](auction_domain::Event)s).
//!
//! One type per concern, each built from a [`RedisConnection`] (cheap to
//! clone; clones share it):
//!
//! - [`AuctionWriter`] (the bidder): creates, re-opens, bids and closes
//!   through Lua scripts that validate and append atomically, so any number
//!   of bidder replicas agree on one order; waits for replicas when asked
//!   ([`ReplicaAck`]); keeps the global indexes;
//! - [`StreamReader`] (the edges): plain stream ranges, stream ends,
//!   snapshots, and each edge's viewer counts;
//! - [`Catalogue`] (the API's reads): one auction, pages of all of them.
//!
//! See `docs/ARCHITECTURE.md` for how edges use the notice chain.

mod admin;
mod catalogue;
mod connection;
mod error;
mod keys;
pub mod live;
mod notice;
mod outcome;
mod read;
mod replica_ack;
mod scripts;
mod simulation;
mod source;
mod spec;
mod state;
mod viewers;
mod write;

pub use admin::{
    ADMIN_LOG_KEY, ActionOutcome, Admin, AuctionAction, SUSPENDED_SET_KEY, SUSPENSION_CHANNEL,
    SuspensionNotice, suspension_notices,
};
pub use catalogue::{Catalogue, ListCursor};
pub use connection::{
    ClusterHandle, RedisConnection, RedisTarget, connect_manager, parse_redis_url,
};
pub use error::LogError;
pub use live::{LiveConnection, LiveMessage, Watching};
pub use outcome::{
    BidAnswer, BidAttempt, BidOrder, CloseOutcome, CreateOutcome, EnsureOutcome, Standing,
};
pub use read::{Snapshot, StreamReader, StreamWindow};
pub use replica_ack::ReplicaAck;
pub use simulation::SimTurn;
pub use source::{EventStore, LiveFeed, LiveSource};
pub use spec::{AuctionRules, AuctionSpec};
pub use write::{AuctionWriter, DEFAULT_RETENTION_MS};
