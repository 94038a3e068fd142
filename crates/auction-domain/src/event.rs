//! The system's event: what every client of an auction sees, in order.

use crate::{EventId, EventKind};

/// One event of an auction's stream: as appended by the event log, read
/// back from the stream, or received in a notice. The same record on every
/// path, so nothing downstream has to look inside `data` for its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The stream id; also the id clients resume from.
    pub id: EventId,
    /// The id of the event before this one in the same stream (`0-0` for
    /// the first): the chain that shows a missed event.
    pub prev: EventId,
    pub kind: EventKind,
    /// One-line JSON payload, exactly as clients receive it.
    pub data: String,
    /// When the event was appended (Redis's clock, Unix ms): a bid's
    /// `placed_at`, the moment an auction closed or opened. Delivery latency
    /// is measured from here. 0 for events stored before the field existed.
    pub placed_at_ms: u64,
    /// W3C `traceparent` of the operation that produced the event, if any.
    pub traceparent: Option<String>,
}
