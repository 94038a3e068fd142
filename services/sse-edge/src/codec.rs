//! SSE encoding: each event becomes `id:`/`event:`/`data:` lines, once.

use auction_domain::{AuctionId, EventId};
use bytes::{BufMut, Bytes, BytesMut};
use event_log::StoredEvent;
use fanout::Codec;

pub struct SseCodec;

impl Codec for SseCodec {
    type Frame = Bytes;

    fn event(&self, _auction: &AuctionId, event: &StoredEvent) -> Bytes {
        encode(Some(event.id), event.kind.as_str(), &event.data)
    }

    fn init(&self, _auction: &AuctionId, last: EventId, init_json: &str) -> Bytes {
        // The init carries the id of the newest event it reflects, so a
        // client that reconnects before any live event resumes from there.
        let id = (last != EventId::ZERO).then_some(last);
        encode(id, "init", init_json)
    }
}

/// One SSE message. `data` may hold any text: every line break (LF, CR or
/// CRLF) starts a new `data:` line, which a parser joins back with LF.
/// `event` names are ours (no line breaks); ids are digits and '-'.
pub fn encode(id: Option<EventId>, event: &str, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + event.len() + 48);
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id.to_string().as_bytes());
        out.put_u8(b'\n');
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    let mut rest = data;
    loop {
        out.put_slice(b"data: ");
        match rest.find(['\r', '\n']) {
            None => {
                out.put_slice(rest.as_bytes());
                out.put_u8(b'\n');
                break;
            }
            Some(at) => {
                out.put_slice(&rest.as_bytes()[..at]);
                out.put_u8(b'\n');
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[at + skip..];
            }
        }
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// A comment line: keeps proxies and browsers from timing the stream out.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_id_event_and_data() {
        let frame = encode(Some(EventId::new(5, 1)), "bid", r#"{"a":1}"#);
        assert_eq!(&frame[..], b"id: 5-1\nevent: bid\ndata: {\"a\":1}\n\n");
    }

    #[test]
    fn splits_every_kind_of_line_break() {
        let frame = encode(None, "x", "a\nb\r\nc\rd");
        assert_eq!(&frame[..], b"event: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
    }
}
