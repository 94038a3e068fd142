//! The system under test: this project's edges, nginx with the nchan
//! module (the peer the benchmark compares against), or the floor (the
//! least a server can do: `load-tests/floor`), and how each one is
//! published to, subscribed to and resumed.
//!
//! Both systems carry the same bytes to the client, so the comparison is of
//! the servers and not of the payloads: nchan is given, per event, the
//! exact JSON our edge would send (the bid for SSE, with the event name
//! `bid`; the `{"type":"bid",...}` object for WebSocket).

use crate::http1::{Answer, KeepAlive};
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

    /// The SSE request path of one stream of several auctions
    /// (comma-separated): our sse-edge's `/events`.
    pub fn sse_multi_path(&self, auctions: &str) -> String {
        format!("/events?auctions={auctions}")
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
    /// An HTTP API on one keep-alive connection: the bidder's for our
    /// system, nchan's publisher location for nginx. Requests go one at a
    /// time ([`Publisher::publish`]) or pipelined ([`Publisher::send`]).
    Http {
        conn: tokio::sync::Mutex<KeepAlive>,
        api: HttpApi,
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

    /// Through the bidder at `base` (`http://host:port`) with `token`, a
    /// seller's (`bidder token --name bench --role seller`).
    pub fn bidder(base: &str, token: &str) -> Result<Publisher, String> {
        if token.is_empty() {
            return Err(
                "--token is required to publish through the bidder: mint one with \
                 `bidder token --name bench --role seller`"
                    .into(),
            );
        }
        Ok(Publisher::Http {
            conn: tokio::sync::Mutex::new(KeepAlive::new(authority(base))),
            api: HttpApi::Bidder {
                authorization: format!("Bearer {token}"),
            },
        })
    }

    /// nchan's publisher location at `base` on one keep-alive connection;
    /// each bid carries the same fields as one placed through the bidder's
    /// API (a user's bid, a guest's id).
    pub fn nchan_keep_alive(base: &str, transport: Transport) -> Publisher {
        Publisher::Http {
            conn: tokio::sync::Mutex::new(KeepAlive::new(authority(base))),
            api: HttpApi::Nchan { transport },
        }
    }

    /// Connections the publisher opened, if it keeps one open.
    pub async fn connections(&self) -> Option<usize> {
        match self {
            Publisher::Http { conn, .. } => Some(conn.lock().await.opened),
            Publisher::Floor { .. } => Some(1),
            Publisher::Ours { .. } | Publisher::Nchan { .. } => None,
        }
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
        if let Publisher::Http {
            conn,
            api: HttpApi::Bidder { authorization },
        } = self
        {
            let mut conn = conn.lock().await;
            for auction in auctions {
                let create = serde_json::json!({
                    "id": auction, "title": "benchmark", "starting_price": 1,
                    "min_increment": 1, "duration_ms": 3_600_000u64,
                });
                let answer = conn
                    .post(
                        "/auctions",
                        &[
                            ("Authorization", authorization),
                            ("Content-Type", "application/json"),
                        ],
                        create.to_string().as_bytes(),
                    )
                    .await?;
                if answer.status != 201 {
                    return Err(format!("creating {auction} answered {}", describe(&answer)));
                }
            }
            return Ok(());
        }
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
                    seller: None,
                    terms: None,
                    rules: Default::default(),
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
            Publisher::Http { conn, api } => {
                let request = api.request(auction, amount);
                let mut conn = conn.lock().await;
                let mut attempt = 0;
                loop {
                    let answer = conn
                        .post(&request.path, &request.headers(), request.body.as_bytes())
                        .await?;
                    // A bid answered 503 (outcome unknown) is asked again
                    // under its Idempotency-Key: never placed twice.
                    let bid = matches!(api, HttpApi::Bidder { .. });
                    if bid && answer.status == 503 && attempt + 1 < SETTLE_ATTEMPTS {
                        attempt += 1;
                        tokio::time::sleep(SETTLE_PAUSE).await;
                        continue;
                    }
                    return api.accepted(&request, &answer);
                }
            }
            Publisher::Floor { control } => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let line = format!(
                    "{auction} {}\n",
                    bid_json(auction, amount, Origin::Simulated)
                );
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
                let body = nchan_body(auction, amount, *transport, Origin::Simulated);
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

impl Publisher {
    /// Publishes one bid without waiting for its answer where the
    /// publisher can pipeline (one keep-alive connection): the request is
    /// written now, its answer checked later (answers already in are
    /// checked here, the rest by [`Publisher::settle`]). An answer that is
    /// not a success fails the run: in a pipeline a bid cannot be asked
    /// again in its place. Other publishers publish as `publish` does.
    pub async fn send(&self, auction: &str, amount: u64) -> Result<(), String> {
        let Publisher::Http { conn, api } = self else {
            return self.publish(auction, amount).await.map(|_| ());
        };
        let request = api.request(auction, amount);
        let mut conn = conn.lock().await;
        while let Some(answer) = conn.ready_answer() {
            api.check(&answer?)?;
        }
        conn.send(&request.path, &request.headers(), request.body.as_bytes())
            .await
    }

    /// Waits for the answers to every request [`Publisher::send`] wrote.
    pub async fn settle(&self) -> Result<(), String> {
        let Publisher::Http { conn, api } = self else {
            return Ok(());
        };
        let mut conn = conn.lock().await;
        while conn.in_flight() > 0 {
            api.check(&conn.answer().await?)?;
        }
        Ok(())
    }
}

/// Whose API an [`Publisher::Http`] publishes to.
pub enum HttpApi {
    /// The bidder: auctions created with `POST /auctions`, each event a bid
    /// `POST /auctions/{id}/bids` under a seller's token.
    Bidder { authorization: String },
    /// nchan: `POST /pub/{channel}`.
    Nchan { transport: Transport },
}

/// One publish request.
pub struct Request<'a> {
    path: String,
    body: String,
    /// The bid's `Idempotency-Key` (bidder only).
    key: String,
    api: &'a HttpApi,
    amount: u64,
    auction: String,
}

impl Request<'_> {
    fn headers(&self) -> Vec<(&str, &str)> {
        match self.api {
            HttpApi::Bidder { authorization } => vec![
                ("Authorization", authorization.as_str()),
                ("Content-Type", "application/json"),
                ("Idempotency-Key", self.key.as_str()),
            ],
            HttpApi::Nchan { .. } => vec![
                ("Content-Type", "application/json"),
                ("X-EventSource-Event", "bid"),
                ("Accept", "text/plain"),
            ],
        }
    }
}

impl HttpApi {
    fn request(&self, auction: &str, amount: u64) -> Request<'_> {
        let (path, body) = match self {
            HttpApi::Bidder { .. } => (
                format!("/auctions/{auction}/bids"),
                format!(r#"{{"amount":{amount}}}"#),
            ),
            HttpApi::Nchan { transport } => (
                format!("/pub/{auction}"),
                nchan_body(auction, amount, *transport, Origin::Api),
            ),
        };
        Request {
            path,
            body,
            // One key per bid, reused by its retries.
            key: format!("{auction}:{amount}"),
            api: self,
            amount,
            auction: auction.to_owned(),
        }
    }

    /// The event's id from a successful answer (ours: the stream id;
    /// nchan: its message id), or why the answer is not one.
    fn accepted(&self, request: &Request, answer: &Answer) -> Result<Option<String>, String> {
        match self {
            HttpApi::Bidder { .. } if answer.status == 201 => {
                Ok(crate::wire::field_text(&answer.body, b"\"id\":\"")
                    .map(|id| String::from_utf8_lossy(id).into_owned()))
            }
            HttpApi::Bidder { .. } => Err(format!(
                "bid {} on {} answered {}",
                request.amount,
                request.auction,
                describe(answer)
            )),
            HttpApi::Nchan { .. } if (200..300).contains(&answer.status) => {
                Ok(crate::wire::line_value(&answer.body, b"last message id: ")
                    .map(|id| String::from_utf8_lossy(id).trim().to_owned()))
            }
            HttpApi::Nchan { .. } => Err(format!("nchan publish answered {}", describe(answer))),
        }
    }

    /// Whether a pipelined request's answer is a success (which request it
    /// answered is not kept: the error names the status and body).
    fn check(&self, answer: &Answer) -> Result<(), String> {
        let ok = match self {
            HttpApi::Bidder { .. } => answer.status == 201,
            HttpApi::Nchan { .. } => (200..300).contains(&answer.status),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("a pipelined publish answered {}", describe(answer)))
        }
    }
}

/// A bid answered 503 (outcome unknown) is asked again under the same
/// `Idempotency-Key` this many times at most, as `loadgen bids` does.
const SETTLE_ATTEMPTS: u32 = 5;
const SETTLE_PAUSE: Duration = Duration::from_millis(200);

/// `host:port` of `http://host:port[/...]`.
fn authority(base: &str) -> &str {
    let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// A status and the start of the body, for an error message.
fn describe(answer: &Answer) -> String {
    let body = String::from_utf8_lossy(&answer.body);
    let body: String = body.chars().take(200).collect();
    format!("{}: {}", answer.status, body.trim())
}

/// Who placed a bid, as our edges carry it.
#[derive(Clone, Copy)]
enum Origin {
    /// The bidder's simulator (or the load generator appending as one).
    Simulated,
    /// A user through the bidder's API, with a guest token.
    Api,
}

/// The bid JSON our edges carry for a bid of `amount`.
fn bid_json(auction: &str, amount: u64, origin: Origin) -> String {
    let placed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let (bidder_id, source) = match origin {
        Origin::Simulated => ("sim_bench", "simulated"),
        // A guest's id is `g_` and 16 characters.
        Origin::Api => ("g_00000000000bench", "user"),
    };
    format!(
        r#"{{"auction":"{auction}","amount":{amount},"bidder":"bench","bidder_id":"{bidder_id}","placed_at":{placed_at},"source":"{source}"}}"#
    )
}

/// What nchan is sent for a bid: the bid (SSE) or ws-edge's frame (WS).
fn nchan_body(auction: &str, amount: u64, transport: Transport, origin: Origin) -> String {
    let bid = bid_json(auction, amount, origin);
    let placed_at = field_placed_at(&bid);
    match transport {
        Transport::Sse => bid,
        // Same shape and length as ws-edge's frame; the id is a stand-in
        // (nchan's own id travels in the frame's meta).
        Transport::Ws => format!(
            r#"{{"type":"bid","auction":"{auction}","id":"{placed_at}-0","payload":{bid}}}"#
        ),
    }
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
    fn nchan_is_sent_frames_as_long_as_ours() {
        // ws-edge's frame for a bid placed through the bidder's API with a
        // guest token, and for one the simulator appended.
        let api = r#"{"type":"bid","auction":"bench-1-0","id":"1796641097946-0","payload":{"auction":"bench-1-0","amount":1000,"bidder":"bench","bidder_id":"g_NQ5Qic75ltM705U6","placed_at":1796641097946,"source":"user"}}"#;
        let simulated = r#"{"type":"bid","auction":"bench-1-0","id":"1796641097946-0","payload":{"auction":"bench-1-0","amount":1000,"bidder":"bench","bidder_id":"sim_bench","placed_at":1796641097946,"source":"simulated"}}"#;
        let nchan = |origin| nchan_body("bench-1-0", 1000, Transport::Ws, origin);
        assert_eq!(nchan(Origin::Api).len(), api.len());
        assert_eq!(nchan(Origin::Simulated).len(), simulated.len());
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
