use auction_domain::{EventId, EventKind};

/// One event of an auction's stream, as read back from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: EventId,
    /// The id of the event before this one in the same stream (`0-0` for the first).
    pub prev: EventId,
    pub kind: EventKind,
    /// One-line JSON payload, exactly as clients receive it.
    pub data: String,
    /// W3C `traceparent` of the operation that produced the event, if any.
    pub traceparent: Option<String>,
}

/// A pub/sub notice: the event plus the channel's auction.
///
/// Wire format (written by the Lua prelude), newline-separated:
/// `v1`, id, prev, kind, traceparent (may be empty), data. `data` is last
/// and is one-line JSON, so no escaping is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice(pub StoredEvent);

impl Notice {
    /// Parses a notice payload; `None` for anything malformed (a foreign
    /// publisher on our channel must not crash an edge).
    pub fn parse(payload: &[u8]) -> Option<StoredEvent> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.splitn(6, '\n');
        if parts.next()? != "v1" {
            return None;
        }
        let id = EventId::parse(parts.next()?)?;
        let prev = EventId::parse(parts.next()?)?;
        let kind = EventKind::parse(parts.next()?)?;
        let traceparent = parts.next()?;
        let data = parts.next()?;
        if data.contains('\n') {
            return None;
        }
        Some(StoredEvent {
            id,
            prev,
            kind,
            data: data.to_owned(),
            traceparent: (!traceparent.is_empty()).then(|| traceparent.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lua_format() {
        let event = Notice::parse(b"v1\n5-1\n5-0\nbid\n\n{\"amount\":1}").unwrap();
        assert_eq!(event.id, EventId::new(5, 1));
        assert_eq!(event.prev, EventId::new(5, 0));
        assert_eq!(event.kind, EventKind::Bid);
        assert_eq!(event.traceparent, None);
        assert_eq!(event.data, "{\"amount\":1}");
    }

    #[test]
    fn rejects_foreign_payloads() {
        for bad in [
            &b"hello"[..],
            b"v1\n5-1\n5-0\nbid\n",
            b"v2\n5-1\n5-0\nbid\n\n{}",
            b"v1\nx\n5-0\nbid\n\n{}",
            b"\xff",
        ] {
            assert_eq!(Notice::parse(bad), None);
        }
    }
}
