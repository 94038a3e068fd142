//! WebSocket encoding: one JSON text per event, built once per replica and
//! shared by every socket as a reference-counted `Utf8Bytes`.

use auction_domain::{AuctionId, EventId};
use event_log::StoredEvent;
use fanout::Codec;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub struct WsCodec;

impl Codec for WsCodec {
    type Frame = Utf8Bytes;

    fn event(&self, auction: &AuctionId, event: &StoredEvent) -> Utf8Bytes {
        envelope(event.kind.as_str(), auction, Some(event.id), &event.data)
    }

    fn init(&self, auction: &AuctionId, last: EventId, init_json: &str) -> Utf8Bytes {
        envelope(
            "init",
            auction,
            (last != EventId::ZERO).then_some(last),
            init_json,
        )
    }
}

/// `{"type":..,"auction":..,"id":..,"payload":..}`. Auction ids and event ids
/// need no JSON escaping (their characters are restricted); the payload is
/// already JSON.
fn envelope(kind: &str, auction: &AuctionId, id: Option<EventId>, payload: &str) -> Utf8Bytes {
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
    Utf8Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use auction_domain::EventKind;

    #[test]
    fn events_are_contract_json() {
        let auction = AuctionId::parse("1234").unwrap();
        let event = StoredEvent {
            id: EventId::new(7, 1),
            prev: EventId::new(7, 0),
            kind: EventKind::Bid,
            data: r#"{"amount":5}"#.into(),
            traceparent: None,
        };
        let json: serde_json::Value =
            serde_json::from_str(WsCodec.event(&auction, &event).as_str()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"bid","auction":"1234","id":"7-1","payload":{"amount":5}})
        );
        let init = WsCodec.init(&auction, EventId::ZERO, r#"{"reset":false}"#);
        let json: serde_json::Value = serde_json::from_str(init.as_str()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"init","auction":"1234","payload":{"reset":false}})
        );
    }
}
