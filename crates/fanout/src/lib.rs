//! The fan-out machinery both edges share.
//!
//! One [`Hub`] per replica holds one live (pub/sub) connection, subscribed
//! only to the auctions its clients watch. Each watched auction has a
//! *feed*: a bounded broadcast ring of events already encoded for the
//! transport (by a [`Codec`]), so an event is encoded once and every client
//! gets a reference-counted handle to the same bytes; caught-up clients
//! park their sockets with the feed, which writes to them directly.
//!
//! The hub keeps each feed gap-free: every notice carries the id of the
//! event before it; a notice that does not chain onto the last event the
//! feed published (a missed notice, a dropped subscription) makes the hub
//! backfill from the stream. [`Delivery`] is each client's protocol: the
//! resume rules, replay, live delivery, and when a client is cut off.
//!
//! Modules are layered, each using only those below it (checked by
//! `tests/layering.rs`; see docs/ARCHITECTURE.md):
//! 1. `sync`, `deadline`, `codec`, `config`, `writer`, `chain`: utilities;
//! 2. `recent`, `replays`: what a feed and a resume keep;
//! 3. `feed`: one auction's feed, its lanes and their lock order;
//! 4. `feeds`: the replica's feeds by auction;
//! 5. `subscriber`, `audit`, `viewers`: the tasks that keep the feeds;
//! 6. `hub`: the replica's hub, and how a client joins a feed;
//! 7. `session`: how a client starts (the resume rules);
//! 8. `client`: a client's delivery protocol;
//! 9. `live`, `live_set`: a subscription reading its feed or parked, the
//!    loop of one subscription on its own socket, and a socket's several
//!    subscriptions.
#![warn(unreachable_pub)]
// The loom build (`--cfg fanout_loom`) models the feed alone: the tasks that
// drive it in a runtime go unused there.
#![cfg_attr(fanout_loom, allow(dead_code))]

mod audit;
mod chain;
mod client;
mod codec;
mod config;
mod deadline;
mod feed;
mod feeds;
mod hub;
mod live;
mod live_set;
mod recent;
mod replays;
mod session;
mod subscriber;
mod sync;
mod viewers;
mod writer;

pub use client::{Batch, Delivery, Ended, MAX_BATCH, StartError, Subscription, Transport};
pub use codec::{Alt, AltWindow, Codec, EncodedEvent, Frame, Framing, Item, try_take};
pub use config::HubConfig;
pub use feed::Parked;
pub use hub::{Hub, JoinError, LiveCounters};
pub use live::{Live, Ready};
pub use live_set::{LiveSet, Park};
pub use session::{OpenError, Opening, Resume};
pub use writer::FrameSocket;
