//! The system under test: this project's edges, nginx with the nchan
//! module (the peer the benchmark compares against), or the floor (the
//! least a server can do: `load-tests/floor`), and how each one is
//! published to, subscribed to and resumed.
//!
//! Both systems carry the same bytes to the client, so the comparison is of
//! the servers and not of the payloads: nchan is given, per event, the
//! exact JSON our edge would send (the bid for SSE, with the event name
//! `bid`; the `{"type":"bid",...}` object for WebSocket).

use auction_domain::{AuctionId, BidSource, Bidder, BidderId, BidderName};
use event_log::{AuctionSpec, AuctionWriter, BidAnswer, connect_manager, parse_redis_url};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    Sse,
    Ws,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum System {
    /// `sse-edge` or `ws-edge`; events appended through the bidder's script.
    Ours,
    /// nginx + nchan with Redis storage; events published with HTTP POST to
    /// `/pub/{channel}`, subscribed at `/sub/{channel}`.
    Nchan,
    /// The floor server: subscribed like our edges, events written one a
    /// line on its control connection (no Redis), no resume.
    Floor,
}

impl System {
    pub fn parse(text: &str) -> Result<System, String> {
        match text {
            "ours" => Ok(System::Ours),
            "nchan" => Ok(System::Nchan),
            "floor" => Ok(System::Floor),
            _ => Err(format!(
                "--system: expected ours, nchan or floor, got {text:?}"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            System::Ours => "ours",
            System::Nchan => "nchan",
            System::Floor => "floor",
        }
    }
}

/// nchan's WebSocket subprotocol that prefixes each message with its id, so
/// a client can resume (plain nchan WebSocket frames carry no id).
pub const NCHAN_WS_PROTOCOL: &str = "ws+meta.nchan";

/// Where clients connect, and what they send to subscribe or resume.
#[derive(Clone)]
pub struct Target {
    pub system: System,
    /// `host:port` of the server under test.
    pub addr: String,
}

impl Target {
    /// The SSE request path for `auction`.
    pub fn sse_path(&self, auction: &str) -> String {
        match self.system {
            System::Ours | System::Floor => format!("/auctions/{auction}/events"),
            System::Nchan => format!("/sub/{auction}"),
        }
    }

    /// The WebSocket URL; nchan takes the resume point in the URL.
    pub fn ws_url(&self, auction: &str, last_id: &str) -> String {
        match self.system {
            System::Ours | System::Floor => format!("ws://{}/ws", self.addr),
            System::Nchan if last_id.is_empty() => format!("ws://{}/sub/{auction}", self.addr),
            System::Nchan => format!("ws://{}/sub/{auction}?last_event_id={last_id}", self.addr),
        }
    }

    /// The message a WebSocket client sends after the handshake, if any.
    pub fn ws_subscribe(&self, auction: &str, last_id: &str) -> Option<String> {
        match self.system {
            System::Nchan => None,
            System::Ours | System::Floor if last_id.is_empty() => {
                Some(format!(r#"{{"type":"subscribe","auction":"{auction}"}}"#))
            }
            System::Ours | System::Floor => Some(format!(
                r#"{{"type":"subscribe","auction":"{auction}","last_id":"{last_id}"}}"#
            )),
        }
    }

    /// The event id carried by a WebSocket text frame.
    pub fn ws_event_id<'a>(&self, payload: &'a [u8]) -> Option<&'a [u8]> {
        match self.system {
            System::Ours | System::Floor => crate::wire::field_text(payload, b"\"id\":\""),
            System::Nchan => crate::wire::line_value(payload, b"id: "),
        }
    }
}

/// Appends the benchmark's events to the system under test.
pub enum Publisher {
    Ours {
        writer: AuctionWriter,
        bidder: Bidder,
    },
    Nchan {
        http: reqwest::Client,
        base: String,
        transport: Transport,
    },
    /// One line per event, `{auction} {bid JSON}\n`, each answered `ok\n`.
    Floor {
        control: tokio::sync::Mutex<tokio::net::TcpStream>,
    },
}

impl Publisher {
    pub fn ours(redis_url: &str) -> Result<Publisher, String> {
        let target = parse_redis_url(redis_url)?;
        let writer = AuctionWriter::new(
            connect_manager(&target, || {}).map_err(|e| e.to_string())?,
            100_000,
        );
        // Written straight to the event log as a simulated bidder.
        let bidder = Bidder {
            id: BidderId::parse("sim_bench").map_err(|e| e.message)?,
            name: BidderName::parse("bench").map_err(|e| e.message)?,
        };
        Ok(Publisher::Ours { writer, bidder })
    }

    pub fn nchan(base: &str, transport: Transport) -> Result<Publisher, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Publisher::Nchan {
            http,
            base: base.trim_end_matches('/').to_owned(),
            transport,
        })
    }

    pub async fn floor(addr: &str) -> Result<Publisher, String> {
        use tokio::io::AsyncWriteExt;
        let mut control = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("floor control {addr}: {e}"))?;
        control.set_nodelay(true).map_err(|e| e.to_string())?;
        control
            .write_all(b"POST /control HTTP/1.1\r\nHost: floor\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        Ok(Publisher::Floor {
            control: tokio::sync::Mutex::new(control),
        })
    }

    /// Creates the auctions (our system needs them to exist; nchan
    /// channels exist once published to).
    pub async fn prepare(&self, auctions: &[String]) -> Result<(), String> {
        let Publisher::Ours { writer, .. } = self else {
            return Ok(());
        };
        for auction in auctions {
            writer
                .create(&AuctionSpec {
                    id: AuctionId::parse(auction).map_err(|e| e.message)?,
                    title: "benchmark".into(),
                    starting_price: 1,
                    min_increment: 1,
                    duration_ms: 3_600_000,
                    description: None,
                    image_url: None,
                })
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Publishes one bid of `amount` on `auction`; answers the id the
    /// system gave the event, the one a client resumes from (ours: the
    /// stream id; nchan: its message id; the floor has none).
    pub async fn publish(&self, auction: &str, amount: u64) -> Result<Option<String>, String> {
        match self {
            Publisher::Ours { writer, bidder } => {
                let auction = AuctionId::parse(auction).map_err(|e| e.message)?;
                let attempt = writer
                    .place_bid(&auction, amount, bidder, BidSource::Simulated, None, None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(match attempt.map(|attempt| attempt.answer) {
                    Some(BidAnswer::Accepted { id, .. }) => Some(id.to_string()),
                    _ => None,
                })
            }
            Publisher::Floor { control } => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let line = format!("{auction} {}\n", bid_json(auction, amount));
                let mut control = control.lock().await;
                control
                    .write_all(line.as_bytes())
                    .await
                    .map_err(|e| format!("floor publish: {e}"))?;
                let mut ack = [0u8; 3];
                control
                    .read_exact(&mut ack)
                    .await
                    .map_err(|e| format!("floor publish: {e}"))?;
                if &ack == b"ok\n" {
                    Ok(None)
                } else {
                    Err(format!("floor publish answered {ack:?}"))
                }
            }
            Publisher::Nchan {
                http,
                base,
                transport,
            } => {
                let bid = bid_json(auction, amount);
                let placed_at = field_placed_at(&bid);
                let body = match transport {
                    Transport::Sse => bid,
                    // Same shape and length as ws-edge's frame; the id is a
                    // stand-in (nchan's own id travels in the frame's meta).
                    Transport::Ws => format!(
                        r#"{{"type":"bid","auction":"{auction}","id":"{placed_at}-0","payload":{bid}}}"#
                    ),
                };
                let response = http
                    .post(format!("{base}/pub/{auction}"))
                    .header("content-type", "application/json")
                    .header("x-eventsource-event", "bid")
                    .header("accept", "text/plain")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                if !status.is_success() {
                    return Err(format!("nchan publish answered {status}"));
                }
                // The plain-text answer ends with `last message id: T:N`.
                let body = response.text().await.map_err(|e| e.to_string())?;
                Ok(
                    crate::wire::line_value(body.as_bytes(), b"last message id: ")
                        .map(|id| String::from_utf8_lossy(id).trim().to_owned()),
                )
            }
        }
    }
}

/// The bid JSON our edges carry for a simulated bid of `amount`.
fn bid_json(auction: &str, amount: u64) -> String {
    let placed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        r#"{{"auction":"{auction}","amount":{amount},"bidder":"bench","bidder_id":"sim_bench","placed_at":{placed_at},"source":"simulated"}}"#
    )
}

fn field_placed_at(bid: &str) -> u64 {
    crate::wire::field_number(bid.as_bytes(), b"\"placed_at\":").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(system: System) -> Target {
        Target {
            system,
            addr: "127.0.0.1:9".into(),
        }
    }

    #[test]
    fn each_system_is_subscribed_and_resumed_its_own_way() {
        let ours = target(System::Ours);
        assert_eq!(ours.sse_path("a"), "/auctions/a/events");
        assert_eq!(ours.ws_url("a", "5-1"), "ws://127.0.0.1:9/ws");
        assert_eq!(
            ours.ws_subscribe("a", "5-1").as_deref(),
            Some(r#"{"type":"subscribe","auction":"a","last_id":"5-1"}"#)
        );
        assert_eq!(
            ours.ws_event_id(br#"{"type":"bid","id":"5-2"}"#),
            Some(&b"5-2"[..])
        );

        let nchan = target(System::Nchan);
        assert_eq!(nchan.sse_path("a"), "/sub/a");
        assert_eq!(nchan.ws_url("a", ""), "ws://127.0.0.1:9/sub/a");
        assert_eq!(
            nchan.ws_url("a", "17:2"),
            "ws://127.0.0.1:9/sub/a?last_event_id=17:2"
        );
        assert_eq!(nchan.ws_subscribe("a", "17:2"), None);
        let meta = b"id: 17:3\ncontent-type: application/json\n\n{\"type\":\"bid\",\"id\":\"x\"}";
        assert_eq!(nchan.ws_event_id(meta), Some(&b"17:3"[..]));
    }
}
