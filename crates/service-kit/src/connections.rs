//! Every connection of a service, in one place: how long each phase of it
//! may take, and what happens when there are too many.
//!
//! Deadlines (a setting each): the request head (`AUCTION_HEAD_TIMEOUT_MS`),
//! the request body (`AUCTION_BODY_TIMEOUT_MS`), and a keep-alive
//! connection's wait for its next request (`AUCTION_IDLE_TIMEOUT_MS`).
//!
//! Every open connection holds a [`Slot`]; there are as many slots as the
//! process can open descriptors, less a reserve. A connection that is doing
//! nothing useful (still sending its head or body, or idle between
//! requests) can be evicted: when the slots run out, the oldest such
//! connection is closed to make room, so clients that hold connections open
//! without finishing a request cannot keep a real client out. Streams and
//! requests being handled are never evicted.

use settings::{Kind, Setting, SettingError, Settings};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Descriptors kept back from connections: Redis, logs, the listener, a
/// health probe at the limit.
const RESERVED_DESCRIPTORS: u64 = 64;
/// Slots when the descriptor limit cannot be read.
const FALLBACK_SLOTS: usize = 1024;

const fn deadline(key: &'static str, default: &'static str, help: &'static str) -> Setting {
    Setting {
        key,
        kind: Kind::Number {
            min: 100,
            max: 3_600_000,
        },
        default: Some(default),
        help,
        secret: false,
    }
}

pub const HEAD_TIMEOUT_MS: Setting = deadline(
    "head_timeout_ms",
    "10000",
    "a connection's request head must arrive within this",
);
pub const BODY_TIMEOUT_MS: Setting = deadline(
    "body_timeout_ms",
    "10000",
    "a request body must arrive within this after its head (beyond: 408)",
);
pub const IDLE_TIMEOUT_MS: Setting = deadline(
    "idle_timeout_ms",
    "60000",
    "a keep-alive connection's wait for its next request",
);
pub const LISTEN_BACKLOG: Setting = Setting {
    key: "listen_backlog",
    kind: Kind::Number {
        min: 1,
        max: 65_535,
    },
    default: Some("4096"),
    help: "connections the kernel queues before they are accepted",
    secret: false,
};

/// The connection settings of every process.
pub const SETTINGS: &[Setting] = &[
    HEAD_TIMEOUT_MS,
    BODY_TIMEOUT_MS,
    IDLE_TIMEOUT_MS,
    LISTEN_BACKLOG,
];

/// The deadlines and bounds of a service's connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// A client must send its whole request head within this time.
    pub head: Duration,
    /// ...and its whole request body within this time after the head.
    pub body: Duration,
    /// A keep-alive connection may wait this long for its next request.
    pub idle: Duration,
    /// `listen(2)` backlog: connections the kernel queues before accept.
    pub backlog: u32,
}

impl ConnectionLimits {
    pub(crate) fn read(settings: &Settings) -> Result<ConnectionLimits, SettingError> {
        let millis = |setting: &Setting| -> Result<Duration, SettingError> {
            Ok(Duration::from_millis(settings.number(setting)?))
        };
        Ok(ConnectionLimits {
            head: millis(&HEAD_TIMEOUT_MS)?,
            body: millis(&BODY_TIMEOUT_MS)?,
            idle: millis(&IDLE_TIMEOUT_MS)?,
            backlog: settings.number(&LISTEN_BACKLOG)? as u32,
        })
    }
}

/// What a connection is doing, as eviction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Sending its request head or body: evictable.
    Reading = 0,
    /// A request is being handled, or a stream is open: never evicted.
    Busy = 1,
    /// Between requests on a keep-alive connection: evictable.
    Idle = 2,
}

/// One open connection's place. Dropping it frees the place.
pub struct Slot {
    id: u64,
    phase: Arc<AtomicU8>,
    /// Cancelled when the connection is evicted: its task closes it.
    pub evicted: CancellationToken,
    slots: Arc<Slots>,
}

impl Slot {
    /// The connection became a stream, for good: it keeps its place but
    /// gives up what eviction needs (a stream is never evicted), which is
    /// most of a slot's memory on an edge holding thousands of streams.
    pub fn into_stream(self) -> StreamPlace {
        self.slots.streams.fetch_add(1, Ordering::Relaxed);
        StreamPlace(self.slots.clone())
        // `self` drops here: its entry leaves the evictable set.
    }

    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// A handle that can change the phase from inside a request's service.
    pub fn phase_handle(&self) -> PhaseHandle {
        PhaseHandle(self.phase.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.slots.open);
        open.remove(&self.id);
        if open.is_empty() && self.slots.streams.load(Ordering::Relaxed) == 0 {
            self.slots.emptied.notify_waiters();
        }
    }
}

/// A stream's place among the open connections. Dropping it frees the
/// place.
pub struct StreamPlace(Arc<Slots>);

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let slots = &self.0;
        // Under the lock, so a drain that checks under it sees either the
        // stream or its end.
        let open = lock(&slots.open);
        if slots.streams.fetch_sub(1, Ordering::Relaxed) == 1 && open.is_empty() {
            slots.emptied.notify_waiters();
        }
    }
}

/// Sets a connection's phase from where its requests are handled.
#[derive(Clone)]
pub struct PhaseHandle(Arc<AtomicU8>);

impl PhaseHandle {
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Relaxed);
    }
}

struct Entry {
    phase: Arc<AtomicU8>,
    evicted: CancellationToken,
}

/// The open connections of one listener, oldest first.
pub struct Slots {
    capacity: usize,
    next_id: AtomicU64,
    /// Connections that may be evicted (and those being handled), oldest
    /// first.
    open: Mutex<BTreeMap<u64, Entry>>,
    /// Streams: they hold places but are never evicted.
    streams: AtomicUsize,
    /// Woken when the last open connection closes (a drain waits for it).
    emptied: Notify,
}

impl Slots {
    /// As many slots as the process may open descriptors, less a reserve.
    pub fn for_this_process() -> Arc<Slots> {
        let capacity = telemetry::max_open_files()
            .map(|limit| limit.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize)
            .unwrap_or(FALLBACK_SLOTS);
        Slots::with_capacity(capacity)
    }

    pub fn with_capacity(capacity: usize) -> Arc<Slots> {
        Arc::new(Slots {
            capacity,
            next_id: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
            streams: AtomicUsize::new(0),
            emptied: Notify::new(),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A slot for a connection just accepted (reading its request). With
    /// every slot taken, the oldest evictable connection is told to close;
    /// `None` when none is evictable: refuse this one.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        let mut open = lock(&self.open);
        if open.len() + self.streams.load(Ordering::Relaxed) >= self.capacity {
            let oldest_idle = open.values().find(|entry| {
                entry.phase.load(Ordering::Relaxed) != Phase::Busy as u8
                    && !entry.evicted.is_cancelled()
            })?;
            oldest_idle.evicted.cancel();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let phase = Arc::new(AtomicU8::new(Phase::Reading as u8));
        let evicted = CancellationToken::new();
        open.insert(
            id,
            Entry {
                phase: phase.clone(),
                evicted: evicted.clone(),
            },
        );
        Some(Slot {
            id,
            phase,
            evicted,
            slots: self.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        lock(&self.open).len() + self.streams.load(Ordering::Relaxed)
    }

    /// Resolves once no connection is open.
    pub async fn drained(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.open() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_full_the_oldest_idle_connection_makes_room() {
        let slots = Slots::with_capacity(3);
        let stream = slots.take().unwrap();
        stream.set(Phase::Busy);
        let slow_head = slots.take().unwrap();
        let idle = slots.take().unwrap();
        idle.set(Phase::Idle);
        let newcomer = slots.take().unwrap();
        assert!(!stream.evicted.is_cancelled(), "streams are never evicted");
        assert!(
            slow_head.evicted.is_cancelled(),
            "the oldest evictable goes"
        );
        assert!(!idle.evicted.is_cancelled());
        drop(slow_head);
        assert_eq!(slots.open(), 3);
        drop(newcomer);
        assert_eq!(slots.open(), 2);
    }

    #[test]
    fn streams_hold_places_but_are_never_evicted() {
        let slots = Slots::with_capacity(2);
        let stream = slots.take().unwrap().into_stream();
        let reading = slots.take().unwrap();
        assert_eq!(slots.open(), 2);
        let newcomer = slots.take().unwrap();
        assert!(reading.evicted.is_cancelled());
        drop(reading);
        newcomer.set(Phase::Busy);
        assert!(
            slots.take().is_none(),
            "a stream and a busy request fill both places"
        );
        drop(stream);
        assert_eq!(slots.open(), 1);
    }

    #[test]
    fn with_only_busy_connections_a_newcomer_is_refused() {
        let slots = Slots::with_capacity(2);
        let a = slots.take().unwrap();
        let b = slots.take().unwrap();
        a.set(Phase::Busy);
        b.set(Phase::Busy);
        assert!(slots.take().is_none());
        drop(a);
        assert!(slots.take().is_some());
    }
}
