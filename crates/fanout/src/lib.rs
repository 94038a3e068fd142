//! The fan-out machinery both edges share.
//!
//! One [`Hub`] per replica holds one Redis pub/sub connection, subscribed
//! only to the auctions its clients watch. Each watched auction has a
//! *feed*: a bounded broadcast ring of events already encoded for the
//! transport (by a [`Codec`]), so an event is encoded once and every client
//! gets a reference-counted handle to the same bytes.
//!
//! The hub keeps each feed gap-free: every notice carries the id of the
//! event before it; a notice that does not chain onto the last event the
//! feed published (a missed notice, a dropped subscription) makes the hub
//! backfill from the stream. [`open`] implements the resume rules a client
//! connection starts with.

mod codec;
mod hub;
mod recent;
mod session;
pub mod writer;

pub use codec::{Codec, Event, Item, placed_at_ms};
pub use hub::{Hub, HubConfig, JoinError, Joined};
pub use session::{
    CatchUp, CatchUpError, OpenError, Opening, Resume, Start, init, init_json, open,
};
