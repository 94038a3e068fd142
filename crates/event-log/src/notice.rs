//! The pub/sub notice: one per appended event, written by the Lua prelude.
//!
//! Wire format, newline-separated: `v2`, id, prev, kind, at (Unix ms),
//! traceparent (may be empty), data. `data` is last and is one-line JSON, so
//! no escaping is needed. `v1` (no `at`) is still read, so edges keep
//! working while the bidders of a rolling upgrade publish the old format.

use auction_domain::{Event, EventId, EventKind};

/// Parses a notice payload; `None` for anything malformed (a foreign
/// publisher on our channel must not crash an edge).
pub(crate) fn parse(payload: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(payload).ok()?;
    let (version, rest) = text.split_once('\n')?;
    let fields = match version {
        "v1" => 5,
        "v2" => 6,
        _ => return None,
    };
    let mut parts = rest.splitn(fields, '\n');
    let id = EventId::parse(parts.next()?)?;
    let prev = EventId::parse(parts.next()?)?;
    let kind = EventKind::parse(parts.next()?)?;
    let placed_at_ms = match version {
        "v2" => parts.next()?.parse().ok()?,
        _ => 0,
    };
    let traceparent = parts.next()?;
    let data = parts.next()?;
    if data.contains('\n') {
        return None;
    }
    Some(Event {
        id,
        prev,
        kind,
        data: data.to_owned(),
        placed_at_ms,
        traceparent: (!traceparent.is_empty()).then(|| traceparent.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lua_format() {
        let event = parse(b"v2\n5-1\n5-0\nclosed\n1700000000123\n\n{\"auction\":{}}").unwrap();
        assert_eq!(event.id, EventId::new(5, 1));
        assert_eq!(event.prev, EventId::new(5, 0));
        assert_eq!(event.kind, EventKind::Closed);
        assert_eq!(event.placed_at_ms, 1_700_000_000_123);
        assert_eq!(event.traceparent, None);
        assert_eq!(event.data, "{\"auction\":{}}");
    }

    #[test]
    fn reads_the_format_before_placed_at_existed() {
        let event = parse(b"v1\n5-1\n5-0\nbid\ntp\n{\"amount\":1}").unwrap();
        assert_eq!(event.placed_at_ms, 0);
        assert_eq!(event.traceparent.as_deref(), Some("tp"));
        assert_eq!(event.data, "{\"amount\":1}");
    }

    #[test]
    fn rejects_foreign_payloads() {
        for bad in [
            &b"hello"[..],
            b"v1\n5-1\n5-0\nbid\n",
            b"v3\n5-1\n5-0\nbid\n\n{}",
            b"v1\nx\n5-0\nbid\n\n{}",
            b"v2\n5-1\n5-0\nbid\nsoon\n\n{}",
            b"v2\n5-1\n5-0\nbid\n1\n\n{}\n{}",
            b"\xff",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
