//! Replay reads shared by the clients that resume from the same id at once.
//!
//! A reconnect storm (an edge restarted, a load balancer reshuffled) brings
//! many clients of one auction back with the same old id at once. Each
//! would read the same page of the stream and encode the same events; here
//! the first one reads and encodes, and every client that asks for the same
//! page (auction, id) while that read is in flight waits for it and gets the
//! same result: the same encoded frames, or the same error.
//!
//! Only reads in flight are shared: a read is forgotten as soon as it
//! completes (or as soon as no client waits for it any more), so nothing
//! here outlives the starts of the clients that wait for it.

use crate::feed::{Codec, EncodedEvent};
use crate::hub::{Hub, lock};
use auction_domain::{AuctionId, Event, EventId};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared, WeakShared};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Events per replay read.
pub(crate) const REPLAY_BATCH: usize = 256;
/// Most reads shared at once on a replica; past it, a client's read is its
/// own (as many clients as wait are alive anyway: this bounds the map, not
/// the work).
const MAX_FLIGHTS: usize = 4096;

/// Redis did not answer the read (shared by every client that waited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unavailable;

/// One read of an auction's stream from an id on, its events encoded once.
///
/// `events` chain onto the id the page starts after and each onto the one
/// before; they are everything the stream held after that id *when the read
/// ran*, up to the page's size. A page read before a client joined its feed
/// may therefore end before events the feed published before the client
/// joined (see [`Page::started`] and `CatchUp`).
#[derive(Debug)]
pub(crate) struct Page {
    /// The stream held the id the page starts after (it, or the event just
    /// before its oldest one): the events after it are exactly what a
    /// client that saw it missed.
    pub(crate) held: bool,
    pub(crate) events: Vec<EncodedEvent>,
    /// The stream went on past `events` with an event that does not chain
    /// onto the last one (trimmed while the client caught up).
    pub(crate) broken: bool,
    /// The read was cut at the page size: the stream may hold more.
    pub(crate) full: bool,
    /// The read's ticket (see [`Replays::ticket`]): a client whose own
    /// ticket is lower joined its feed before this read started.
    pub(crate) started: u64,
}

impl Page {
    /// The page after `after`, from `rows`: a read from `after` on, `after`
    /// included when the stream holds it.
    pub(crate) fn new<C: Codec>(
        codec: &C,
        auction: &AuctionId,
        after: EventId,
        rows: &[Event],
        started: u64,
    ) -> Page {
        let full = rows.len() >= REPLAY_BATCH;
        let (held, rest) = match rows.split_first() {
            Some((first, rest)) if first.id == after => (true, rest),
            // Not in the stream: held only if it is the event just before
            // the oldest one (trimmed, nothing after it lost).
            Some((first, _)) => (first.prev == after, rows),
            None => (false, rows),
        };
        let unbroken = if held {
            rest.iter()
                .zip(std::iter::once(after).chain(rest.iter().map(|event| event.id)))
                .take_while(|(event, before)| event.prev == *before)
                .count()
        } else {
            0
        };
        Page {
            held,
            events: rest[..unbroken]
                .iter()
                .map(|event| EncodedEvent {
                    id: event.id,
                    placed_at_ms: event.placed_at_ms,
                    frame: codec.event(auction, event),
                })
                .collect(),
            broken: held && unbroken < rest.len(),
            full,
            started,
        }
    }
}

/// A read in flight, as every client waiting for it polls it (any of them
/// drives it: the first client leaving does not stop the others' read).
pub(crate) type Flight = Shared<BoxFuture<'static, Result<Arc<Page>, Unavailable>>>;

type Key = (AuctionId, EventId);

/// The reads in flight of one replica, by (auction, id read after).
///
/// Invariants: an entry exists only while its read is in flight and some
/// client waits for it (the read's own guard removes it when the read
/// completes or is dropped, whichever comes first); at most
/// [`MAX_FLIGHTS`] entries. A `Flight` is never dropped while the map is
/// locked (dropping the last one drops the guard, which locks the map).
#[derive(Default)]
pub(crate) struct Replays {
    flights: Arc<Mutex<HashMap<Key, Entry>>>,
    /// Orders client joins and read starts (see [`Replays::ticket`]).
    tickets: AtomicU64,
}

struct Entry {
    started: u64,
    flight: WeakShared<BoxFuture<'static, Result<Arc<Page>, Unavailable>>>,
}

/// Removes its read's entry once the read is over.
struct Leave {
    flights: Arc<Mutex<HashMap<Key, Entry>>>,
    key: Key,
    started: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut flights = lock(&self.flights);
        // A later read of the same key may have replaced this one.
        if flights
            .get(&self.key)
            .is_some_and(|entry| entry.started == self.started)
        {
            flights.remove(&self.key);
        }
    }
}

impl Replays {
    /// A ticket, taken by a client once it has joined its feed and by each
    /// read before it starts: a read whose ticket is higher than a client's
    /// started after that client joined, so anything the stream gets after
    /// that read reaches the client through its feed.
    pub(crate) fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::AcqRel)
    }

    /// The read of the page after `after`: the one in flight for the same
    /// key if there is one (and, with `newer_than`, only if it started after
    /// that ticket), else a new one made by `read` (given its ticket).
    /// `true` with a read that was already in flight.
    pub(crate) fn page(
        &self,
        auction: &AuctionId,
        after: EventId,
        newer_than: Option<u64>,
        read: impl FnOnce(u64) -> BoxFuture<'static, Result<Page, Unavailable>>,
    ) -> (Flight, bool) {
        let key = (auction.clone(), after);
        {
            let flights = lock(&self.flights);
            if let Some(entry) = flights.get(&key)
                && newer_than.is_none_or(|ticket| entry.started > ticket)
                && let Some(flight) = entry.flight.upgrade()
            {
                return (flight, true);
            }
        }
        let started = self.ticket();
        let leave = Leave {
            flights: self.flights.clone(),
            key: key.clone(),
            started,
        };
        let reading = read(started);
        let flight = async move {
            let _leave = leave;
            reading.await.map(Arc::new)
        }
        .boxed()
        .shared();
        if let Some(weak) = flight.downgrade() {
            let mut flights = lock(&self.flights);
            if flights.len() < MAX_FLIGHTS || flights.contains_key(&key) {
                flights.insert(
                    key,
                    Entry {
                        started,
                        flight: weak,
                    },
                );
            }
        }
        (flight, false)
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }
}

/// Reads and encodes the page after `after` (a read's work, done once for
/// every client waiting for it). Bounded by the connection's response
/// timeout.
pub(crate) fn read_page<C: Codec>(
    hub: Hub<C>,
    auction: AuctionId,
    after: EventId,
    started: u64,
) -> BoxFuture<'static, Result<Page, Unavailable>> {
    async move {
        let rows = hub
            .log()
            .read_from(&auction, after, REPLAY_BATCH)
            .await
            .map_err(|_| Unavailable)?;
        Ok(Page::new(hub.codec(), &auction, after, &rows, started))
    }
    .boxed()
}
