//! SSE encoding: each event becomes `id:`/`event:`/`data:` lines, once.

use auction_domain::{AuctionId, Event, EventId};
use bytes::{BufMut, Bytes, BytesMut};
use fanout::Codec;

pub struct SseCodec;

impl Codec for SseCodec {
    fn event(&self, _auction: &AuctionId, event: &Event) -> Bytes {
        encode(Some(event.id), event.kind.as_str(), &event.data)
    }

    fn init(&self, _auction: &AuctionId, last: EventId, init_json: &str) -> Bytes {
        // The init carries the id of the newest event it reflects, so a
        // client that reconnects before any live event resumes from there.
        let id = (last != EventId::ZERO).then_some(last);
        encode(id, "init", init_json)
    }

    fn gone(&self, auction: &AuctionId) -> Bytes {
        encode(None, "gone", &format!("{{\"auction\":\"{auction}\"}}"))
    }

    fn viewers(&self, auction: &AuctionId, count: u32) -> Bytes {
        encode(
            None,
            "viewers",
            &format!("{{\"auction\":\"{auction}\",\"count\":{count}}}"),
        )
    }

    fn keepalive(&self) -> Option<Bytes> {
        Some(Bytes::from_static(KEEPALIVE))
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

    /// Decodes `frame` with a standard SSE parser (eventsource-stream).
    fn decode(frame: Bytes) -> Vec<eventsource_stream::Event> {
        use eventsource_stream::Eventsource;
        use futures_util::StreamExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            futures_util::stream::iter([Ok::<_, std::convert::Infallible>(frame)])
                .eventsource()
                .map(|event| event.unwrap())
                .collect()
                .await
        })
    }

    proptest::proptest! {
        #[test]
        fn any_payload_decodes_back(data in "(?s).{0,200}", seq in 0u64..1000) {
            let frame = encode(Some(EventId::new(1_700_000_000_000, seq)), "bid", &data);
            let events = decode(frame);
            proptest::prop_assert_eq!(events.len(), 1);
            // SSE carries line breaks as LF: CR and CRLF arrive as LF. Every
            // other character, leading spaces and colons included, is kept.
            let expected = data.replace("\r\n", "\n").replace('\r', "\n");
            proptest::prop_assert_eq!(&events[0].data, &expected);
            proptest::prop_assert_eq!(&events[0].event, "bid");
            proptest::prop_assert_eq!(events[0].id.clone(), format!("1700000000000-{seq}"));
        }

        #[test]
        fn json_payloads_decode_identically(text in "(?s).{0,100}") {
            // Event data is JSON, which escapes every control character.
            let data = serde_json::json!({ "bidder": text }).to_string();
            let events = decode(encode(None, "bid", &data));
            proptest::prop_assert_eq!(&events[0].data, &data);
        }
    }

    #[test]
    fn tricky_payloads_survive() {
        for data in [
            "",
            " leading space",
            ":colon",
            "data: nested",
            "a\r\n\r\nb",
            "\n",
            "émoji 🦀 \u{0}",
        ] {
            let events = decode(encode(None, "x", data));
            assert_eq!(events[0].data, data.replace("\r\n", "\n"), "{data:?}");
        }
    }

    #[test]
    fn splits_every_kind_of_line_break() {
        let frame = encode(None, "x", "a\nb\r\nc\rd");
        assert_eq!(
            &frame[..],
            b"event: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }
}
