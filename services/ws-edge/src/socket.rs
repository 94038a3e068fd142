//! `GET /ws`: the WebSocket endpoint, on the raw socket.
//!
//! One task per socket. It owns the WebSocket, the socket's subscriptions
//! (one ring receiver each, keyed by auction), the last id sent per
//! auction, and a bounded set of bids in flight to the bidder.

use crate::bids::BidForwarder;
use crate::codec::WsCodec;
use crate::protocol::{self, ClientMessage, LastId, Refusal};
use crate::shared_socket::SharedSocket;
use auction_domain::{AuctionId, EventId};
use bytes::Bytes;
use fanout::writer::{WriteError, write_frames};
use fanout::{CatchUpError, Hub, Item, OpenError, Resume, Start};
use futures_util::{FutureExt, SinkExt, StreamExt};
use service_kit::{ConnectionGate, FastPath, RequestHead, error_response_bytes};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use telemetry::TransportMetrics;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::StreamMap;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use tokio_util::sync::CancellationToken;

/// Frames written per flush at most.
const MAX_BATCH: usize = 64;
/// A flush blocked this long means the client is not reading: closed as slow.
const WRITE_STALL: Duration = Duration::from_secs(10);
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// Bids a socket may have in flight to the bidder.
const BIDS_IN_FLIGHT: usize = 16;
/// Bytes tungstenite reads per call; client messages are small.
const READ_BUFFER: usize = 256;

pub struct WsEndpoint {
    pub hub: Hub<WsCodec>,
    pub metrics: TransportMetrics,
    pub gate: ConnectionGate,
    pub bids: BidForwarder,
    pub max_message: usize,
    /// Ticks once per ping interval, for every socket: one timer per
    /// replica instead of one per socket.
    pub ping_ticks: watch::Receiver<u64>,
    /// Allowed `Origin` values; empty allows every origin.
    pub allowed_origins: Vec<String>,
    pub max_subscriptions: usize,
    pub messages_per_s: f64,
    pub messages_burst: f64,
    pub send_buffer: usize,
    pub shutdown: CancellationToken,
}

impl FastPath for WsEndpoint {
    fn claims(&self, head: &RequestHead) -> bool {
        head.method == "GET" && head.path() == "/ws"
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, head: RequestHead) {
        let Some(_admission) = self.gate.admit() else {
            let body = error_response_bytes(
                503,
                "Service Unavailable",
                "too_many_connections",
                "this replica is full; retry",
                Some(1),
            );
            return refuse(stream, &body).await;
        };
        // The request head and the handshake's temporaries are dropped when
        // `upgrade` returns: an open socket keeps none of them.
        let Some((ws, raw, peer)) = self.upgrade(stream, head).await else {
            return;
        };
        Session::new(&self, ws, raw, peer).run().await;
    }
}

impl WsEndpoint {
    /// Answers the upgrade (or refuses it) and sets up the WebSocket.
    async fn upgrade(
        &self,
        mut stream: TcpStream,
        head: RequestHead,
    ) -> Option<(WebSocketStream<SharedSocket>, Arc<TcpStream>, IpAddr)> {
        let peer = stream
            .peer_addr()
            .map(|addr| addr.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let key = match self.check_handshake(&head) {
            Ok(key) => key,
            Err(refusal) => {
                refuse(stream, &refusal).await;
                return None;
            }
        };
        drop(head);
        if self.shutdown.is_cancelled() {
            let body = error_response_bytes(
                503,
                "Service Unavailable",
                "draining",
                "this replica is shutting down",
                Some(1),
            );
            refuse(stream, &body).await;
            return None;
        }
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        stream.write_all(response.as_bytes()).await.ok()?;
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(self.send_buffer);
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(1024 * 1024)
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let raw = Arc::new(stream);
        let socket = SharedSocket(raw.clone());
        let ws = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
        Some((ws, raw, peer))
    }

    /// Validates the upgrade request; returns the `Sec-WebSocket-Key`.
    fn check_handshake(&self, head: &RequestHead) -> Result<Vec<u8>, Vec<u8>> {
        let has_token = |name: &str, token: &str| {
            head.header(name)
                .and_then(|value| std::str::from_utf8(value).ok())
                .is_some_and(|value| {
                    value
                        .split(',')
                        .any(|part| part.trim().eq_ignore_ascii_case(token))
                })
        };
        if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
            return Err(error_response_bytes(
                426,
                "Upgrade Required",
                "upgrade_required",
                "GET /ws expects a WebSocket upgrade",
                None,
            ));
        }
        if head.header("sec-websocket-version") != Some(b"13") {
            return Err(error_response_bytes(
                426,
                "Upgrade Required",
                "unsupported_version",
                "only WebSocket version 13 is supported",
                None,
            ));
        }
        if !self.allowed_origins.is_empty() {
            let origin = head
                .header("origin")
                .and_then(|value| std::str::from_utf8(value).ok());
            if !origin
                .is_some_and(|origin| self.allowed_origins.iter().any(|allowed| allowed == origin))
            {
                return Err(error_response_bytes(
                    403,
                    "Forbidden",
                    "origin_not_allowed",
                    "this Origin may not open a WebSocket here",
                    None,
                ));
            }
        }
        match head.header("sec-websocket-key") {
            Some(key) if !key.is_empty() => Ok(key.to_vec()),
            _ => Err(error_response_bytes(
                400,
                "Bad Request",
                "missing_key",
                "Sec-WebSocket-Key is required",
                None,
            )),
        }
    }
}

async fn refuse(mut stream: TcpStream, response: &[u8]) {
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(response)).await;
    let _ = stream.shutdown().await;
}

/// Why a session ended: the close frame to send, if any.
enum End {
    Close(CloseCode, &'static str),
    /// The peer is gone or stuck: just drop the socket.
    Drop,
}

/// One subscribed auction of a socket.
struct Subscription {
    /// Its key in `Session::feeds`.
    key: u32,
    auction: AuctionId,
    /// The last event id sent for this auction.
    last: EventId,
}

struct Session<'a> {
    endpoint: &'a WsEndpoint,
    ws: WebSocketStream<SharedSocket>,
    /// The same socket, for event frames written directly.
    raw: Arc<TcpStream>,
    peer: IpAddr,
    /// The subscriptions' feeds, keyed by a small number that is cheap to
    /// copy on every event (the map hands out its key with each item).
    feeds: StreamMap<u32, BroadcastStream<Item<Bytes>>>,
    subscriptions: Vec<Subscription>,
    next_key: u32,
    /// Answers of bids in flight, and rate-limit notices. Created on first
    /// use: most sockets never bid.
    replies: Option<(mpsc::Sender<String>, mpsc::Receiver<String>)>,
    tokens: f64,
    refilled: Instant,
    warned_rate: Option<Instant>,
    batch: Vec<(Bytes, u64)>,
    /// Whether tungstenite may hold unwritten bytes (it answers pings by
    /// itself); direct writes wait until it has flushed them.
    ws_pending: bool,
}

impl<'a> Session<'a> {
    fn new(
        endpoint: &'a WsEndpoint,
        ws: WebSocketStream<SharedSocket>,
        raw: Arc<TcpStream>,
        peer: IpAddr,
    ) -> Self {
        Session {
            endpoint,
            ws,
            raw,
            peer,
            feeds: StreamMap::new(),
            subscriptions: Vec::new(),
            next_key: 0,
            replies: None,
            tokens: endpoint.messages_burst,
            refilled: Instant::now(),
            warned_rate: None,
            batch: Vec::new(),
            ws_pending: false,
        }
    }

    async fn run(mut self) {
        let end = self.serve().await;
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let close = async {
                let _ = self.ws.send(Message::Close(Some(frame))).await;
                // Wait briefly for the peer's close, so the close is clean.
                while let Some(Ok(message)) = self.ws.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        }
    }

    async fn serve(&mut self) -> End {
        let endpoint = self.endpoint;
        let shutdown = endpoint.shutdown.cancelled();
        tokio::pin!(shutdown);
        let mut ticks = WatchStream::from_changes(endpoint.ping_ticks.clone());
        let mut awaiting_pong = false;
        // Client frames are read when the socket turns readable, rather than
        // asking tungstenite on every wake: most wakes are events to send.
        let raw = self.raw.clone();
        let mut readable = std::pin::pin!(raw.readable());
        loop {
            // Ordered by how often each is the reason for waking: events
            // first, so a delivery polls nothing else.
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => Err(End::Close(CloseCode::Restart, "replica restarting; reconnect and resume")),
                Some((key, item)) = self.feeds.next() => self.forward(key, item).await,
                _ = &mut readable => {
                    readable.set(raw.readable());
                    self.read_available(&mut awaiting_pong).await
                }
                Some(reply) = next_reply(&mut self.replies) => self.send_text(reply).await,
                Some(_) = ticks.next() => {
                    if awaiting_pong {
                        Err(End::Close(CloseCode::Policy, "no pong in time"))
                    } else {
                        awaiting_pong = true;
                        self.flush_with(Message::Ping(Default::default())).await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Handles every client message tungstenite can produce now (it may
    /// hold several from one read), then returns to waiting.
    async fn read_available(&mut self, awaiting_pong: &mut bool) -> Result<(), End> {
        while let Some(incoming) = self.ws.next().now_or_never() {
            match incoming {
                None => return Err(End::Drop),
                Some(Err(error)) => return Err(close_for(&error)),
                Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await?,
                Some(Ok(Message::Binary(_))) => {
                    let reply = protocol::error_json(
                        None,
                        "binary_not_supported",
                        "send JSON in text frames",
                    );
                    self.send_text(reply).await?;
                }
                Some(Ok(Message::Pong(_))) => *awaiting_pong = false,
                Some(Ok(Message::Close(_))) => return Err(End::Drop),
                // tungstenite queued the answer to a ping: flush it before
                // the next direct write.
                Some(Ok(_)) => self.ws_pending = true,
            }
        }
        Ok(())
    }

    /// Takes this item and whatever else the feeds have ready, then writes
    /// them with one flush.
    async fn forward(
        &mut self,
        key: u32,
        item: Result<Item<Bytes>, BroadcastStreamRecvError>,
    ) -> Result<(), End> {
        self.take(key, item)?;
        while self.batch.len() < MAX_BATCH {
            match self.feeds.next().now_or_never() {
                Some(Some((key, item))) => self.take(key, item)?,
                _ => break,
            }
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        self.flush_pending().await?; // tungstenite's frames go first, whole
        let result = write_frames(
            &self.raw,
            self.batch.iter().map(|(frame, _)| frame),
            || false, // a lapped feed shows up as `Lagged` on the next poll
            WRITE_STALL,
            &self.endpoint.shutdown,
        )
        .await;
        self.wrote(result)?;
        let metrics = &self.endpoint.metrics;
        let now = now_ms();
        metrics.events_delivered.inc_by(self.batch.len() as u64);
        for (_, placed_at) in self.batch.drain(..) {
            if placed_at > 0 {
                metrics
                    .delivery_latency
                    .observe(now.saturating_sub(placed_at) as f64 / 1000.0);
            }
        }
        Ok(())
    }

    /// Writes frames encoded by the codec (init, replay) straight to the
    /// socket, after whatever tungstenite has pending.
    async fn write_raw(&mut self, frames: &[Bytes]) -> Result<(), End> {
        self.flush_pending().await?;
        let result = write_frames(
            &self.raw,
            frames.iter(),
            || false,
            WRITE_STALL,
            &self.endpoint.shutdown,
        )
        .await;
        self.wrote(result)
    }

    fn wrote(&self, result: Result<(), WriteError>) -> Result<(), End> {
        match result {
            Ok(()) => Ok(()),
            Err(WriteError::Slow) => {
                self.endpoint.metrics.slow_consumer_disconnects.inc();
                Err(End::Drop)
            }
            Err(WriteError::Closed) => Err(End::Drop),
        }
    }

    fn take(
        &mut self,
        key: u32,
        item: Result<Item<Bytes>, BroadcastStreamRecvError>,
    ) -> Result<(), End> {
        match item {
            Ok(Item::Event(event)) => {
                if let Some(subscription) = self.subscriptions.iter_mut().find(|s| s.key == key)
                    && event.id > subscription.last
                {
                    subscription.last = event.id;
                    self.batch.push((event.frame.clone(), event.placed_at_ms));
                }
                Ok(())
            }
            Ok(Item::Tick) => Ok(()),
            Ok(Item::Reset) => Err(End::Close(
                CloseCode::Again,
                "events lost on this replica; resubscribe with your last id",
            )),
            Err(BroadcastStreamRecvError::Lagged(_)) => {
                self.endpoint.metrics.slow_consumer_disconnects.inc();
                Err(End::Close(
                    CloseCode::Again,
                    "slow consumer; reconnect and resume from your last id",
                ))
            }
        }
    }

    async fn flush_pending(&mut self) -> Result<(), End> {
        if self.ws_pending {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(WRITE_STALL, self.ws.flush()).await {
            Ok(Ok(())) => {
                self.ws_pending = false;
                Ok(())
            }
            Ok(Err(_)) => Err(End::Drop),
            Err(_) => {
                self.endpoint.metrics.slow_consumer_disconnects.inc();
                Err(End::Drop)
            }
        }
    }

    async fn flush_with(&mut self, message: Message) -> Result<(), End> {
        self.ws.feed(message).await.map_err(|_| End::Drop)?;
        self.flush().await
    }

    async fn send_text(&mut self, text: String) -> Result<(), End> {
        self.flush_with(Message::Text(Utf8Bytes::from(text))).await
    }

    /// One client message. Refusals are replies; only transport failures end
    /// the session.
    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        if !self.allow_message() {
            return Ok(());
        }
        let reply = match protocol::parse(text) {
            Err(refusal) => Some(refusal.to_json()),
            Ok(ClientMessage::Subscribe { auction, last_id }) => {
                self.subscribe(&auction, last_id).await?
            }
            Ok(ClientMessage::Unsubscribe { auction }) => {
                if let Ok(id) = AuctionId::parse(&auction) {
                    self.unsubscribe(&id);
                }
                None
            }
            Ok(ClientMessage::Bid {
                auction,
                amount,
                bidder,
                reference,
            }) => self.bid(auction, amount, bidder, reference),
        };
        match reply {
            Some(reply) => self.send_text(reply).await,
            None => Ok(()),
        }
    }

    /// Token bucket per socket. Over the limit, messages are dropped, with
    /// at most one `rate_limited` error per second.
    fn allow_message(&mut self) -> bool {
        let now = Instant::now();
        let endpoint = self.endpoint;
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * endpoint.messages_per_s).min(endpoint.messages_burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        if self
            .warned_rate
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            self.warned_rate = Some(now);
            let reply = protocol::error_json(None, "rate_limited", "too many messages; slow down");
            // Best effort: with the queue full, the next notice says it.
            let _ = self.replies_tx().try_send(reply);
        }
        false
    }

    fn bid(
        &mut self,
        auction: String,
        amount: serde_json::Value,
        bidder: serde_json::Value,
        reference: String,
    ) -> Option<String> {
        if AuctionId::parse(&auction).is_err() {
            return Some(Refusal::new(Some(reference), "invalid_auction_id", INVALID_ID).to_json());
        }
        let Ok(permit) = self.replies_tx().clone().try_reserve_owned() else {
            let message = "wait for earlier bids to be answered";
            return Some(Refusal::new(Some(reference), "too_many_pending_bids", message).to_json());
        };
        let forwarder = self.endpoint.bids.clone();
        let peer = self.peer;
        tokio::spawn(async move {
            let reply = forwarder
                .place(&auction, amount, bidder, &reference, peer)
                .await;
            permit.send(reply);
        });
        None
    }

    async fn subscribe(&mut self, auction: &str, last_id: LastId) -> Result<Option<String>, End> {
        let Ok(id) = AuctionId::parse(auction) else {
            return Ok(Some(
                Refusal::new(None, "invalid_auction_id", INVALID_ID).to_json(),
            ));
        };
        let resubscribe = self.subscriptions.iter().any(|s| s.auction == id);
        if !resubscribe && self.subscriptions.len() >= self.endpoint.max_subscriptions {
            let message = "unsubscribe from another auction first";
            return Ok(Some(
                Refusal::new(None, "too_many_subscriptions", message).to_json(),
            ));
        }
        let hub = &self.endpoint.hub;
        let unavailable = || {
            Refusal::new(
                None,
                "redis_unavailable",
                "the event store is unreachable; retry shortly",
            )
            .to_json()
        };
        let resume = match &last_id {
            LastId::Absent => Resume::Fresh,
            LastId::Text(text) => Resume::parse(Some(text.as_bytes())),
            LastId::Garbled => Resume::Garbled,
        };
        let opening = match fanout::open(hub, &id, resume, JOIN_WAIT).await {
            Ok(opening) => opening,
            Err(OpenError::NotFound) => {
                let message = format!("no auction with id {auction:?}");
                return Ok(Some(Refusal::new(None, "not_found", message).to_json()));
            }
            Err(_) => return Ok(Some(unavailable())),
        };
        // A resubscription replaces the old one (a client resyncing).
        self.unsubscribe(&id);
        let metrics = &self.endpoint.metrics;
        let last = match opening.start {
            Start::Init { frame, last, reset } => {
                if reset {
                    metrics.resumes_reset.inc();
                }
                self.write_raw(&[frame]).await?;
                last
            }
            Start::Replay(mut catch_up) => {
                let mut frames = Vec::new();
                loop {
                    frames.clear();
                    match catch_up.next_batch(hub, &mut frames).await {
                        Ok(more) => {
                            self.write_raw(&frames).await?;
                            metrics.events_delivered.inc_by(frames.len() as u64);
                            if !more {
                                break;
                            }
                        }
                        Err(CatchUpError::Gap) if catch_up.last() == opening_resume_id(&resume) => {
                            // Trimmed between the window check and the read.
                            let Ok(Start::Init { frame, last, .. }) =
                                fanout::init(hub, &id, true).await
                            else {
                                return Ok(Some(unavailable()));
                            };
                            metrics.resumes_reset.inc();
                            self.write_raw(&[frame]).await?;
                            self.add_subscription(id, last, opening.feed);
                            return Ok(None);
                        }
                        Err(_) => return Ok(Some(unavailable())),
                    }
                }
                metrics.resumes_replayed.inc();
                catch_up.last()
            }
        };
        self.add_subscription(id, last, opening.feed);
        Ok(None)
    }

    fn add_subscription(
        &mut self,
        auction: AuctionId,
        last: EventId,
        feed: broadcast::Receiver<Item<Bytes>>,
    ) {
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        self.feeds.insert(key, BroadcastStream::new(feed));
        self.subscriptions.push(Subscription { key, auction, last });
    }

    fn unsubscribe(&mut self, auction: &AuctionId) {
        if let Some(index) = self
            .subscriptions
            .iter()
            .position(|s| s.auction == *auction)
        {
            let subscription = self.subscriptions.swap_remove(index);
            self.feeds.remove(&subscription.key);
        }
    }

    fn replies_tx(&mut self) -> &mpsc::Sender<String> {
        &self
            .replies
            .get_or_insert_with(|| mpsc::channel(BIDS_IN_FLIGHT))
            .0
    }
}

const INVALID_ID: &str = "auction id must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'";

/// The next reply, or never while the socket has no reply channel.
async fn next_reply(
    replies: &mut Option<(mpsc::Sender<String>, mpsc::Receiver<String>)>,
) -> Option<String> {
    match replies {
        Some((_, receiver)) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

fn opening_resume_id(resume: &Resume) -> EventId {
    match resume {
        Resume::From(id) => *id,
        _ => EventId::ZERO,
    }
}

/// The close code for a read error (contract: 1009 for an oversized frame).
fn close_for(error: &WsError) -> End {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            End::Close(CloseCode::Size, "message too large")
        }
        WsError::Utf8(_) => End::Close(CloseCode::Invalid, "text frames must be UTF-8"),
        WsError::Protocol(_) => End::Close(CloseCode::Protocol, "protocol error"),
        _ => End::Drop,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
