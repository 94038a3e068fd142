//! The fan-out machinery both edges share.
//!
//! One [`Hub`] per replica holds one live (pub/sub) connection, subscribed
//! only to the auctions its clients watch. Each watched auction has a
//! *feed*: a bounded broadcast ring of events already encoded for the
//! transport (by a [`Codec`]), so an event is encoded once and every client
//! gets a reference-counted handle to the same bytes.
//!
//! The hub keeps each feed gap-free: every notice carries the id of the
//! event before it; a notice that does not chain onto the last event the
//! feed published (a missed notice, a dropped subscription) makes the hub
//! backfill from the stream. [`Delivery`] is each client's protocol: the
//! resume rules, replay, live delivery, and when a client is cut off.
#![warn(unreachable_pub)]

mod audit;
mod client;
mod direct;
mod feed;
mod hub;
mod recent;
mod replays;
mod session;
mod viewers;
mod writer;

pub use client::{Batch, Delivery, Ended, MAX_BATCH, StartError, Subscription, Transport};
pub use direct::Parked;
pub use feed::{Codec, EncodedEvent, Frame, Item, try_take};
pub use hub::{FeedPosition, Hub, HubConfig, JoinError};
pub use session::{OpenError, Opening, Resume};
