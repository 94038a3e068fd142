//! WebSocket encoding. Server frames are not masked, so an event's whole
//! frame (header and JSON text) is the same for every socket: it is built
//! once per replica and written to each socket as shared bytes. So are its
//! compressed frames, for the sockets that negotiated permessage-deflate
//! (see `deflate`): compressed alone and chained to the feed's previous
//! event, once each per event, never per socket.

use crate::deflate;
use auction_domain::{AuctionId, Event, EventId};
use bytes::{BufMut, Bytes, BytesMut};
use fanout::{Alt, Codec, EncodedEvent};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct WsCodec {
    /// Events are also encoded compressed (`AUCTION_WS_COMPRESSION`).
    compress: bool,
    /// The key of the last compressed message made ([`Alt::key`]).
    keys: AtomicU64,
}

impl WsCodec {
    pub fn new(compress: bool) -> WsCodec {
        WsCodec {
            compress,
            keys: AtomicU64::new(0),
        }
    }
}

impl Codec for WsCodec {
    fn event(&self, auction: &AuctionId, event: &Event) -> Bytes {
        text_frame(&event_text(auction, event))
    }

    /// The plain frame, and when compression is on, a socket of the feed
    /// negotiated it and it makes the message smaller, the compressed
    /// ones: alone, and chained to the previous event's compressed message
    /// if it had one.
    fn event_frames(
        &self,
        auction: &AuctionId,
        event: &Event,
        previous: Option<&EncodedEvent>,
        wanted: bool,
    ) -> (Bytes, Option<Alt>) {
        let text = event_text(auction, event);
        let plain = text_frame(&text);
        if !self.compress || !wanted {
            return (plain, None);
        }
        let Some(alone) = deflate::compressed_text_frame(&text) else {
            return (plain, None);
        };
        let chained = previous.and_then(|previous| {
            let after = previous.alt.as_ref()?.key;
            let frame = deflate::compressed_text_frame_after(text_of(&previous.frame)?, &text)?;
            (frame.len() < alone.len()).then_some((after, frame))
        });
        let key = self.keys.fetch_add(1, Ordering::Relaxed) + 1;
        (
            plain,
            Some(Alt {
                key,
                alone,
                chained,
            }),
        )
    }

    fn init(&self, auction: &AuctionId, last: EventId, init_json: &str) -> Bytes {
        let id = (last != EventId::ZERO).then_some(last);
        text_frame(&envelope("init", auction, id, init_json))
    }

    fn viewers(&self, auction: &AuctionId, count: u32) -> Bytes {
        text_frame(&format!(
            "{{\"type\":\"viewers\",\"auction\":\"{auction}\",\"count\":{count}}}"
        ))
    }

    fn gone(&self, auction: &AuctionId) -> Bytes {
        text_frame(&format!("{{\"type\":\"gone\",\"auction\":\"{auction}\"}}"))
    }
}

fn event_text(auction: &AuctionId, event: &Event) -> String {
    envelope(event.kind.as_str(), auction, Some(event.id), &event.data)
}

/// `{"type":..,"auction":..,"id":..,"payload":..}`. Auction ids and event ids
/// need no JSON escaping (their characters are restricted); the payload is
/// already JSON.
fn envelope(kind: &str, auction: &AuctionId, id: Option<EventId>, payload: &str) -> String {
    let mut text = String::with_capacity(payload.len() + 96);
    text.push_str("{\"type\":\"");
    text.push_str(kind);
    text.push_str("\",\"auction\":\"");
    text.push_str(auction.as_str());
    if let Some(id) = id {
        text.push_str("\",\"id\":\"");
        text.push_str(&id.to_string());
    }
    text.push_str("\",\"payload\":");
    text.push_str(payload);
    text.push('}');
    text
}

/// The text of a final, unmasked text frame of this codec's; `None` for
/// anything else.
fn text_of(frame: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = frame.split_first()?;
    let (&length, rest) = rest.split_first()?;
    if first != 0x81 {
        return None;
    }
    let header = match length {
        126 => 2,
        127 => 8,
        0..=125 => 0,
        _ => return None, // masked: not a server's frame
    };
    rest.get(header..)
}

/// A ping with no payload: final, unmasked, opcode 0x9 (RFC 6455 §5.5.2).
/// Written by the session itself, or between the feed's writes while its
/// socket is parked.
pub const PING: &[u8] = &[0x89, 0x00];

/// A final, unmasked text frame (RFC 6455 §5.2).
pub fn text_frame(text: &str) -> Bytes {
    let payload = text.as_bytes();
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    frame.put_u8(0x81); // FIN + text
    match payload.len() {
        len @ 0..=125 => frame.put_u8(len as u8),
        len @ 126..=0xffff => {
            frame.put_u8(126);
            frame.put_u16(len as u16);
        }
        len => {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
    }
    frame.put_slice(payload);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use auction_domain::EventKind;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};

    /// Decodes a frame with tungstenite's own parser.
    fn decode(frame: &[u8]) -> (bool, String) {
        let mut cursor = std::io::Cursor::new(frame);
        let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        assert_eq!(length as usize, frame.len() - start, "length field");
        assert!(header.mask.is_none(), "server frames are unmasked");
        (
            header.is_final,
            String::from_utf8(frame[start..].to_vec()).unwrap(),
        )
    }

    #[test]
    fn the_ping_is_an_empty_final_unmasked_ping() {
        let mut cursor = std::io::Cursor::new(PING);
        let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!(header.opcode, OpCode::Control(Control::Ping));
        assert!(header.is_final && header.mask.is_none());
        assert_eq!((length, cursor.position() as usize), (0, PING.len()));
    }

    #[test]
    fn frames_of_every_length_class_decode() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let text = "x".repeat(len);
            let (fin, decoded) = decode(&text_frame(&text));
            assert!(fin);
            assert_eq!(decoded, text);
        }
    }

    /// What compressing costs per event (`cargo test --release -p ws-edge
    /// --bin ws-edge -- --ignored --nocapture compression_cost`): the
    /// plain frame alone, then all three (plain, compressed alone and
    /// chained to the event before), with the size of the chained one.
    #[test]
    #[ignore]
    fn compression_cost_per_event() {
        let auction = AuctionId::parse("live").unwrap();
        let event = |n: u64| Event {
            id: EventId::new(1_796_650_890_425 + n, 0),
            prev: EventId::new(1_796_650_890_424 + n, 0),
            kind: EventKind::Bid,
            data: format!(
                r#"{{"auction":"live","amount":{},"bidder":"sim_margaret","bidder_id":"sim_margaret","placed_at":{},"source":"simulated"}}"#,
                30_000 + n * 500,
                1_796_650_890_425 + n
            ),
            placed_at_ms: 0,
            traceparent: None,
        };
        let events: Vec<Event> = (0..20_000).map(event).collect();
        for (name, codec) in [
            ("plain", WsCodec::new(false)),
            ("compressed", WsCodec::new(true)),
        ] {
            let started = std::time::Instant::now();
            let mut bytes = 0;
            let mut previous: Option<EncodedEvent> = None;
            for event in &events {
                let (frame, alt) = codec.event_frames(&auction, event, previous.as_ref(), true);
                bytes += alt.as_ref().map_or(frame.len(), |alt| {
                    alt.chained
                        .as_ref()
                        .map_or(alt.alone.len(), |(_, f)| f.len())
                });
                previous = Some(EncodedEvent {
                    id: event.id,
                    placed_at_ms: 0,
                    frame,
                    alt,
                });
            }
            let each = started.elapsed().as_nanos() as f64 / events.len() as f64;
            println!(
                "{name}: {each:.0} ns per event, {:.1} B per frame",
                bytes as f64 / events.len() as f64
            );
        }
        let texts: Vec<String> = events.iter().map(|e| event_text(&auction, e)).collect();
        let started = std::time::Instant::now();
        for text in &texts {
            deflate::compressed_text_frame(text).unwrap();
        }
        let each = started.elapsed().as_nanos() as f64 / events.len() as f64;
        println!("compressed alone only: {each:.0} ns per event");
        let started = std::time::Instant::now();
        for pair in texts.windows(2) {
            deflate::compressed_text_frame_after(pair[0].as_bytes(), &pair[1]).unwrap();
        }
        let each = started.elapsed().as_nanos() as f64 / events.len() as f64;
        println!("chained only: {each:.0} ns per event");
    }

    #[test]
    fn events_are_contract_json() {
        let auction = AuctionId::parse("1234").unwrap();
        let event = Event {
            id: EventId::new(7, 1),
            prev: EventId::new(7, 0),
            kind: EventKind::Bid,
            data: r#"{"amount":5}"#.into(),
            placed_at_ms: 0,
            traceparent: None,
        };
        let (_, text) = decode(&WsCodec::new(false).event(&auction, &event));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"bid","auction":"1234","id":"7-1","payload":{"amount":5}})
        );
        let (_, init) =
            decode(&WsCodec::new(false).init(&auction, EventId::ZERO, r#"{"reset":false}"#));
        let json: serde_json::Value = serde_json::from_str(&init).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"init","auction":"1234","payload":{"reset":false}})
        );
    }
}
