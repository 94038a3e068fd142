//! One streaming connection to an edge, SSE or WebSocket, seen the same
//! way: what arrived, in order, and how it ended. No reconnection of its own
//! (tests decide when and where to resume), and an optional small receive
//! buffer, so a test can play a client that stops reading.

use eventsource_stream::Eventsource;
use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

impl Transport {
    pub const BOTH: [Transport; 2] = [Transport::Sse, Transport::Ws];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }

    /// The edge binary that serves this transport.
    pub fn binary(self) -> &'static str {
        match self {
            Transport::Sse => "sse-edge",
            Transport::Ws => "ws-edge",
        }
    }
}

/// One thing a connection received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// An `init` (its id is empty when it reflects no event).
    Init { id: String, reset: bool },
    /// A `bid`, `closed` or `opened` event.
    Event { kind: String, id: String },
    /// The edge refused: the HTTP error body's code (SSE) or an `error`
    /// message's code (WebSocket).
    Refused(String),
    /// The connection ended: the close code (WebSocket), or `None` for the
    /// end of the SSE stream or a dropped socket.
    Ended(Option<u16>),
}

enum Inner {
    Sse(BoxStream<'static, Result<eventsource_stream::Event, String>>),
    Ws(Box<WebSocketStream<TcpStream>>),
    Done,
}

pub struct Conn {
    inner: Inner,
    /// The last viewer count received: counts are not in what
    /// [`Conn::next`] returns (they come at any time), only here.
    viewers: Option<u32>,
}

/// Where a connection comes from, as an edge sees it: a source address
/// of its own (on loopback, any of 127.0.0.0/8 reaches 127.0.0.1), and an
/// `X-Forwarded-For` its request carries.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub source: Option<IpAddr>,
    pub forwarded_for: Option<String>,
}

impl Origin {
    /// A connection from `source`.
    pub fn source(source: &str) -> Origin {
        Origin {
            source: Some(source.parse().expect("a source address")),
            forwarded_for: None,
        }
    }

    /// A connection whose request says it is forwarded for `client`.
    pub fn forwarded_for(client: &str) -> Origin {
        Origin {
            source: None,
            forwarded_for: Some(client.to_owned()),
        }
    }

    /// The request's header line, if any.
    pub fn header_line(&self) -> String {
        self.forwarded_for.as_ref().map_or(String::new(), |client| {
            format!("X-Forwarded-For: {client}\r\n")
        })
    }

    /// Connects to `addr` from this origin's source address.
    pub async fn connect(&self, addr: SocketAddr) -> TcpStream {
        connect_from(addr, None, self.source).await
    }
}

/// Connects with an optional `SO_RCVBUF` (set before connecting, so the
/// window stays small).
async fn connect(addr: SocketAddr, receive_buffer: Option<u32>) -> TcpStream {
    connect_from(addr, receive_buffer, None).await
}

async fn connect_from(
    addr: SocketAddr,
    receive_buffer: Option<u32>,
    source: Option<IpAddr>,
) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind the source address");
    }
    socket.connect(addr).await.expect("connect to the edge")
}

impl Conn {
    /// Opens `auction`'s stream on the edge at `addr`, resuming after
    /// `last` when given.
    pub async fn open(
        transport: Transport,
        addr: SocketAddr,
        auction: &str,
        last: Option<&str>,
        receive_buffer: Option<u32>,
    ) -> Conn {
        let stream = connect(addr, receive_buffer).await;
        let origin = Origin::default();
        match transport {
            Transport::Sse => Conn::open_sse(stream, auction, last, &origin).await,
            Transport::Ws => Conn::open_ws(stream, addr, auction, last, &origin).await,
        }
    }

    /// Opens `auction`'s stream on the edge at `addr` from `origin`.
    pub async fn open_from(
        transport: Transport,
        addr: SocketAddr,
        auction: &str,
        origin: &Origin,
    ) -> Conn {
        let stream = origin.connect(addr).await;
        match transport {
            Transport::Sse => Conn::open_sse(stream, auction, None, origin).await,
            Transport::Ws => Conn::open_ws(stream, addr, auction, None, origin).await,
        }
    }

    async fn open_sse(
        mut stream: TcpStream,
        auction: &str,
        last: Option<&str>,
        origin: &Origin,
    ) -> Conn {
        let resume = last.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let forwarded = origin.header_line();
        let request = format!(
            "GET /auctions/{auction}/events HTTP/1.1\r\nHost: edge\r\nAccept: text/event-stream\r\n{resume}{forwarded}\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read_exact(&mut byte).await.is_err() {
                return Conn {
                    inner: Inner::Done,
                    viewers: None,
                };
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 200") {
            let mut body = Vec::new();
            let _ = stream.read_to_end(&mut body).await;
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let code = json["error"].as_str().unwrap_or("unknown").to_owned();
            let refused = futures_util::stream::iter([Err(format!("refused:{code}"))]);
            return Conn {
                inner: Inner::Sse(refused.boxed()),
                viewers: None,
            };
        }
        let bytes = futures_util::stream::unfold(stream, |mut stream| async move {
            let mut buffer = vec![0u8; 4096];
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => None,
                Ok(read) => {
                    buffer.truncate(read);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buffer)), stream))
                }
            }
        });
        let events = bytes
            .eventsource()
            .map(|event| event.map_err(|error| error.to_string()));
        Conn {
            inner: Inner::Sse(events.boxed()),
            viewers: None,
        }
    }

    async fn open_ws(
        stream: TcpStream,
        addr: SocketAddr,
        auction: &str,
        last: Option<&str>,
        origin: &Origin,
    ) -> Conn {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("a WebSocket request");
        if let Some(client) = &origin.forwarded_for {
            request.headers_mut().insert(
                "x-forwarded-for",
                client.parse().expect("an X-Forwarded-For value"),
            );
        }
        let (mut ws, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("WebSocket handshake");
        let mut subscribe = json!({"type": "subscribe", "auction": auction});
        if let Some(last) = last {
            subscribe["last_id"] = json!(last);
        }
        ws.send(WsMessage::Text(subscribe.to_string().into()))
            .await
            .expect("send subscribe");
        Conn {
            inner: Inner::Ws(Box::new(ws)),
            viewers: None,
        }
    }

    /// The next thing received, or `None` if nothing arrives in `timeout`.
    /// After [`Received::Ended`], always `Ended`. Viewer counts are kept
    /// aside ([`Conn::viewers`]).
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await? {
                Message::Viewers(count) => self.viewers = Some(count),
                Message::Received(received) => return Some(received),
            }
        }
    }

    /// The last viewer count received, if any.
    pub fn viewers(&self) -> Option<u32> {
        self.viewers
    }

    /// Reads (and drops) whatever arrives until the viewer count is
    /// `count`; `false` if it is not within `timeout`.
    pub async fn wait_for_viewers(&mut self, count: u32, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.viewers != Some(count) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            // Each count is looked at as it comes (`next` would wait on
            // past counts for something else).
            match self.next_message(left).await {
                None | Some(Message::Received(Received::Ended(_))) => return false,
                Some(Message::Viewers(latest)) => self.viewers = Some(latest),
                Some(Message::Received(_)) => {}
            }
        }
        true
    }

    async fn next_message(&mut self, timeout: Duration) -> Option<Message> {
        let received = match &mut self.inner {
            Inner::Done => return Some(Message::Received(Received::Ended(None))),
            Inner::Sse(events) => match tokio::time::timeout(timeout, events.next()).await {
                Err(_) => return None,
                Ok(None) => Received::Ended(None),
                Ok(Some(Err(error))) => match error.strip_prefix("refused:") {
                    Some(code) => Received::Refused(code.to_owned()),
                    None => Received::Ended(None),
                },
                Ok(Some(Ok(event))) if event.event == "viewers" => {
                    return Some(Message::Viewers(viewer_count(&event.data)));
                }
                Ok(Some(Ok(event))) => sse_received(&event),
            },
            Inner::Ws(ws) => loop {
                match tokio::time::timeout(timeout, ws.next()).await {
                    Err(_) => return None,
                    Ok(Some(Ok(WsMessage::Text(text)))) => {
                        let json: Value = serde_json::from_str(&text).expect("JSON message");
                        if json["type"] == "viewers" {
                            return Some(Message::Viewers(viewer_count(&text)));
                        }
                        break ws_received(&json);
                    }
                    Ok(Some(Ok(WsMessage::Close(frame)))) => {
                        break Received::Ended(frame.map(|f| u16::from(f.code)));
                    }
                    Ok(Some(Ok(_))) => continue,
                    Ok(Some(Err(_)) | None) => break Received::Ended(None),
                }
            },
        };
        if matches!(received, Received::Ended(_) | Received::Refused(_))
            && matches!(self.inner, Inner::Sse(_))
        {
            self.inner = Inner::Done;
        }
        Some(Message::Received(received))
    }

    /// Everything until the connection ends, or until nothing arrives for
    /// `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Received> {
        let mut all = Vec::new();
        while let Some(received) = self.next(quiet).await {
            let ended = matches!(received, Received::Ended(_));
            all.push(received);
            if ended {
                break;
            }
        }
        all
    }
}

/// What a connection read: a viewer count, or anything else.
enum Message {
    Viewers(u32),
    Received(Received),
}

fn viewer_count(json: &str) -> u32 {
    let json: Value = serde_json::from_str(json).expect("viewers JSON");
    json["count"].as_u64().expect("viewers.count") as u32
}

fn sse_received(event: &eventsource_stream::Event) -> Received {
    match event.event.as_str() {
        "init" => {
            let json: Value = serde_json::from_str(&event.data).expect("init JSON");
            Received::Init {
                id: event.id.clone(),
                reset: json["reset"].as_bool().expect("init.reset"),
            }
        }
        kind => Received::Event {
            kind: kind.to_owned(),
            id: event.id.clone(),
        },
    }
}

fn ws_received(json: &Value) -> Received {
    let id = json["id"].as_str().unwrap_or("").to_owned();
    match json["type"].as_str().unwrap_or("") {
        "init" => Received::Init {
            id,
            reset: json["payload"]["reset"].as_bool().expect("init.reset"),
        },
        "error" => Received::Refused(json["error"].as_str().unwrap_or("").to_owned()),
        kind => Received::Event {
            kind: kind.to_owned(),
            id,
        },
    }
}
