//! What the fan-out reads, as two interfaces: the stream reads
//! ([`EventStore`]) and the live notices ([`LiveSource`]). Redis implements
//! them here ([`StreamReader`], [`RedisTarget`]); tests implement them in
//! memory, so the fan-out's hub and delivery can be driven without a
//! Redis server.
//!
//! Futures are boxed: each call is a Redis round trip (or, for
//! [`LiveFeed::next`], one notice for a whole replica), beside which an
//! allocation is noise, and the fan-out then holds one `Arc<dyn _>` of
//! each instead of carrying two type parameters through every type.

use crate::connection::RedisTarget;
use crate::error::LogError;
use crate::live::{LiveConnection, LiveMessage, Watching};
use crate::read::{Snapshot, StreamReader, StreamWindow};
use auction_domain::{AuctionId, Event, EventId};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

/// The stream reads of the fan-out. Every method may fail with
/// [`LogError`]; none has a deadline of its own (the caller bounds it).
pub trait EventStore: Send + Sync + 'static {
    /// Whether the store answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), LogError>>;

    /// Up to `count` events strictly after `after`, oldest first.
    fn read_after<'a>(
        &'a self,
        auction: &'a AuctionId,
        after: EventId,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>, LogError>>;

    /// Up to `count` events from `from` on (it included, if held), oldest
    /// first.
    fn read_from<'a>(
        &'a self,
        auction: &'a AuctionId,
        from: EventId,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>, LogError>>;

    /// Each auction's stream ends and whether it exists, in order.
    fn windows<'a>(
        &'a self,
        auctions: &'a [AuctionId],
    ) -> BoxFuture<'a, Result<Vec<StreamWindow>, LogError>>;

    /// Whether each auction exists, in order.
    fn exist<'a>(&'a self, auctions: &'a [AuctionId])
    -> BoxFuture<'a, Result<Vec<bool>, LogError>>;

    /// Whether the auction exists.
    fn exists<'a>(&'a self, auction: &'a AuctionId) -> BoxFuture<'a, Result<bool, LogError>>;

    /// The auction's state and newest `count` events, read atomically;
    /// `None`: no such auction.
    fn snapshot<'a>(
        &'a self,
        auction: &'a AuctionId,
        count: usize,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, LogError>>;

    /// Reports this replica's clients per auction (fresh for `fresh_ms`)
    /// and returns each auction's total over all replicas, in order.
    fn report_viewers<'a>(
        &'a self,
        replica: &'a str,
        counts: &'a [(AuctionId, u64)],
        fresh_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<u64>, LogError>>;
}

/// Where a replica's live connection comes from.
pub trait LiveSource: Send + Sync + 'static {
    /// Opens a new live connection, watching nothing yet.
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn LiveFeed>, LogError>>;
}

/// One live connection: the notices of the auctions it watches.
pub trait LiveFeed: Send {
    /// Starts receiving the auctions' notices: subscribed on return
    /// ([`Watching::Now`]), or each auction announced by a
    /// [`LiveMessage::Subscribed`] once it is ([`Watching::Later`]: a
    /// cluster, where a node that does not answer holds up only its own
    /// auctions).
    fn watch<'a>(
        &'a mut self,
        auctions: &'a [AuctionId],
    ) -> BoxFuture<'a, Result<Watching, LogError>>;

    /// Stops receiving the auction's notices.
    fn unwatch<'a>(&'a mut self, auction: &'a AuctionId) -> BoxFuture<'a, Result<(), LogError>>;

    /// The next notice; `None`: the connection ended. Cancel-safe.
    fn next(&mut self) -> BoxFuture<'_, Option<LiveMessage>>;

    /// Whether the connection still answers.
    fn ping(&mut self) -> BoxFuture<'_, Result<(), LogError>>;
}

impl EventStore for StreamReader {
    fn ping(&self) -> BoxFuture<'_, Result<(), LogError>> {
        StreamReader::ping(self).boxed()
    }

    fn read_after<'a>(
        &'a self,
        auction: &'a AuctionId,
        after: EventId,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>, LogError>> {
        StreamReader::read_after(self, auction, after, count).boxed()
    }

    fn read_from<'a>(
        &'a self,
        auction: &'a AuctionId,
        from: EventId,
        count: usize,
    ) -> BoxFuture<'a, Result<Vec<Event>, LogError>> {
        StreamReader::read_from(self, auction, from, count).boxed()
    }

    fn windows<'a>(
        &'a self,
        auctions: &'a [AuctionId],
    ) -> BoxFuture<'a, Result<Vec<StreamWindow>, LogError>> {
        StreamReader::windows(self, auctions).boxed()
    }

    fn exist<'a>(
        &'a self,
        auctions: &'a [AuctionId],
    ) -> BoxFuture<'a, Result<Vec<bool>, LogError>> {
        StreamReader::exist(self, auctions).boxed()
    }

    fn exists<'a>(&'a self, auction: &'a AuctionId) -> BoxFuture<'a, Result<bool, LogError>> {
        StreamReader::exists(self, auction).boxed()
    }

    fn snapshot<'a>(
        &'a self,
        auction: &'a AuctionId,
        count: usize,
    ) -> BoxFuture<'a, Result<Option<Snapshot>, LogError>> {
        StreamReader::snapshot(self, auction, count).boxed()
    }

    fn report_viewers<'a>(
        &'a self,
        replica: &'a str,
        counts: &'a [(AuctionId, u64)],
        fresh_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<u64>, LogError>> {
        StreamReader::report_viewers(self, replica, counts, fresh_ms).boxed()
    }
}

impl LiveSource for RedisTarget {
    fn open(&self) -> BoxFuture<'_, Result<Box<dyn LiveFeed>, LogError>> {
        async move {
            let connection = LiveConnection::open(self).await?;
            Ok(Box::new(connection) as Box<dyn LiveFeed>)
        }
        .boxed()
    }
}

impl LiveFeed for LiveConnection {
    fn watch<'a>(
        &'a mut self,
        auctions: &'a [AuctionId],
    ) -> BoxFuture<'a, Result<Watching, LogError>> {
        LiveConnection::watch(self, auctions).boxed()
    }

    fn unwatch<'a>(&'a mut self, auction: &'a AuctionId) -> BoxFuture<'a, Result<(), LogError>> {
        LiveConnection::unwatch(self, auction).boxed()
    }

    fn next(&mut self) -> BoxFuture<'_, Option<LiveMessage>> {
        LiveConnection::next(self).boxed()
    }

    fn ping(&mut self) -> BoxFuture<'_, Result<(), LogError>> {
        LiveConnection::ping(self).boxed()
    }
}
