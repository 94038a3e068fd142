//! One socket's session: a single task that waits on its feeds, the
//! client's frames, bid answers and the replica's ping ticks, and answers
//! each. How a session ends decides the close frame.

use crate::bids::PendingBids;
use crate::codec;
use crate::endpoint::WsEndpoint;
use crate::protocol::{self, ClientMessage};
use crate::socket::WsSocket;
use crate::subscriptions::{self, Subscribed};
use crate::upgrade::Upgraded;
use auction_domain::AuctionId;
use bytes::Bytes;
use fanout::{AltWindow, Ended, Item, LiveSet, Park, Parked};
use futures_util::{FutureExt, StreamExt};
use identity::TokenError;
use service_kit::rate::TokenBucket;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::WatchStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes, error::CapacityError};
use tokio_util::sync::CancellationToken;

/// How long the closing handshake may take before the socket is dropped.
const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// Why a session's task woke.
enum Wake {
    Shutdown,
    HandedBack,
    Item(u32, Result<Item, RecvError>),
    Readable,
    Answer(String),
    Tick,
    /// A client frame read while the socket was parked that needs the
    /// socket back (anything but a pong), or the end of the client's
    /// frames (`None`). Boxed: a wake lives in every socket's task, and
    /// this one is rare.
    Message(Box<Option<Result<Message, WsError>>>),
}

/// How a session ends.
enum End {
    /// Send this close frame, then wait briefly for the peer's.
    Close(CloseCode, &'static str),
    /// The peer closed: flush tungstenite's queued reply (its code echoed,
    /// or 1002 for a code that may not be sent), then drop.
    Answered,
    /// The peer is gone or stuck: just drop the socket.
    Drop,
}

impl From<Ended> for End {
    fn from(ended: Ended) -> End {
        match ended {
            Ended::Reset => End::Close(
                CloseCode::Again,
                "events lost on this replica; resubscribe with your last id",
            ),
            Ended::Slow => End::Close(
                CloseCode::Again,
                "slow consumer; reconnect and resume from your last id",
            ),
            // Not from a whole socket: a gone auction ends its subscription.
            Ended::Closed | Ended::Gone => End::Drop,
        }
    }
}

pub struct Session<'a> {
    endpoint: &'a WsEndpoint,
    socket: WsSocket,
    peer: IpAddr,
    subscriptions: LiveSet,
    bids: PendingBids,
    /// The token of the socket's user after a successful `auth`; their bids
    /// carry it to the bidder.
    token: Option<Arc<str>>,
    /// The socket's place among its bidder's sockets, once authenticated
    /// (boxed: most sockets never authenticate).
    registration: Option<Box<crate::suspensions::Registration>>,
    /// The socket's message rate limit.
    bucket: TokenBucket,
    /// When the last `rate_limited` error was sent (at most one a second).
    warned_rate: Option<Instant>,
    /// Cancelled when the socket is to end with 1012: the replica's drain
    /// (or, for a demo socket, a demo drain).
    shutdown: CancellationToken,
}

impl<'a> Session<'a> {
    pub fn new(endpoint: &'a WsEndpoint, upgraded: Upgraded, shutdown: CancellationToken) -> Self {
        Session {
            endpoint,
            socket: WsSocket::new(upgraded.ws, upgraded.raw, endpoint.delivery.stall_limit()),
            peer: upgraded.peer,
            // A compressed socket is written events' compressed frames,
            // chained ones too if its client keeps its context.
            subscriptions: match upgraded.deflate {
                Some(agreed) => LiveSet::alt(Arc::new(AltWindow::new(agreed.chains))),
                None => LiveSet::default(),
            },
            bids: PendingBids::default(),
            token: None,
            registration: None,
            bucket: TokenBucket::full(endpoint.message_rate, Instant::now()),
            warned_rate: None,
            shutdown,
        }
    }

    /// The socket.
    pub fn raw(&self) -> &tokio::net::TcpStream {
        self.socket.raw()
    }

    /// Serves the socket until it ends, then closes it as the ending says.
    /// By reference: a session taken by value would be stored twice in the
    /// future (the argument and its `mut` binding), for the socket's life.
    pub async fn run(&mut self) {
        let end = self.serve().await;
        let socket = &mut self.socket;
        match end {
            End::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: Utf8Bytes::from_static(reason),
                };
                let close = async {
                    if socket.send(Message::Close(Some(frame))).await.is_err() {
                        return;
                    }
                    // Wait briefly for the peer's close, so the close is clean.
                    while let Some(Ok(message)) = socket.ws.next().await {
                        if message.is_close() {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(CLOSE_DEADLINE, close).await;
            }
            End::Answered => {
                let _ = tokio::time::timeout(CLOSE_DEADLINE, socket.flush()).await;
            }
            End::Drop => {}
        }
    }

    async fn serve(&mut self) -> End {
        let endpoint = self.endpoint;
        let shutdown_token = self.shutdown.clone();
        let shutdown = shutdown_token.cancelled();
        tokio::pin!(shutdown);
        // Marked seen first: the phase's ticks so far are not this
        // socket's (a ping at connect, judged at the phase's next tick,
        // would give a client only a fraction of an interval to answer).
        let mut tick_source = endpoint.ping_ticks.deal();
        tick_source.borrow_and_update();
        let mut ticks = WatchStream::from_changes(tick_source);
        let mut awaiting_pong: Option<Instant> = None;
        // Client frames are read when the socket turns readable, rather than
        // asking tungstenite on every wake: most wakes are events to send.
        // Frames that arrived with the upgrade request are read first.
        let raw = self.socket.raw().clone();
        if let Err(end) = self.read_available(&mut awaiting_pong).await {
            return end;
        }
        // Whether the client sent something is polled afresh on each wake:
        // `readable()` would keep a waiter of its own (150 bytes) in every
        // socket's task; polled readiness keeps the task's waker in the
        // socket itself.
        let readable = || std::future::poll_fn(|cx| raw.poll_read_ready(cx));
        // Set while the hub writes the socket's events (one subscription,
        // caught up): taken back before anything else touches the socket.
        let mut parked: Option<Parked> = None;
        loop {
            let mut ready = None;
            if parked.is_none() {
                let pending = self.socket.has_pending();
                match self
                    .subscriptions
                    .park(&endpoint.delivery, self.socket.raw(), pending)
                {
                    Park::Parked(claim) => parked = Some(claim),
                    Park::Ready(key, item) => ready = Some(Wake::Item(key, item)),
                    Park::No => {}
                }
            }
            let wake = match ready {
                Some(wake) if !shutdown_token.is_cancelled() => wake,
                // Ordered by how often each is the reason for waking:
                // events first, so a delivery polls nothing else.
                _ => tokio::select! {
                    biased;
                    _ = &mut shutdown => Wake::Shutdown,
                    _ = handed_back(&parked) => Wake::HandedBack,
                    (key, item) = self.subscriptions.next() => Wake::Item(key, item),
                    _ = readable() => Wake::Readable,
                    reply = self.bids.next_answer() => Wake::Answer(reply),
                    Some(_) = ticks.next() => Wake::Tick,
                },
            };
            let wake = match &parked {
                Some(claim) => match self.while_parked(claim, wake, &mut awaiting_pong) {
                    Some(wake) => wake,
                    None => continue,
                },
                None => wake,
            };
            if let Some(claim) = parked.take() {
                // Boxed: taking the socket back is rare beside the events
                // sent, and its state inline would size every socket's
                // task for its whole life.
                let unpark = self
                    .subscriptions
                    .unpark(&endpoint.delivery, &mut self.socket, claim);
                let unparked = Box::pin(unpark).await;
                if let Err(ended) = unparked {
                    return End::from(ended);
                }
            }
            let step = match wake {
                Wake::Shutdown => Err(End::Close(
                    CloseCode::Restart,
                    "replica restarting; reconnect and resume",
                )),
                Wake::HandedBack => Ok(()),
                Wake::Item(key, item) => self
                    .subscriptions
                    .forward(&endpoint.delivery, &mut self.socket, key, item)
                    .await
                    .map_err(End::from),
                Wake::Readable => self.read_available(&mut awaiting_pong).await,
                Wake::Message(incoming) => {
                    match Box::pin(self.on_message(*incoming, &mut awaiting_pong)).await {
                        Ok(()) => self.read_available(&mut awaiting_pong).await,
                        Err(end) => Err(end),
                    }
                }
                Wake::Answer(reply) => self.send_text(reply).await,
                Wake::Tick => match awaiting_pong {
                    Some(sent) if self.pong_is_late(sent) => {
                        Err(End::Close(CloseCode::Policy, "no pong in time"))
                    }
                    Some(_) => Ok(()),
                    None => {
                        awaiting_pong = Some(Instant::now());
                        self.socket
                            .send(Message::Ping(Default::default()))
                            .await
                            .map_err(End::from)
                    }
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Whether a ping sent then went unanswered too long. A peer gets at
    /// least (nearly) a whole interval to answer: a phase's ticks are an
    /// interval apart, give or take the timer's jitter.
    fn pong_is_late(&self, sent: Instant) -> bool {
        sent.elapsed() >= self.endpoint.ping_interval.mul_f32(0.9)
    }

    /// Handles a wake of a parked session without taking its socket back
    /// where it can: a ping is written between the feed's writes
    /// ([`Parked::write_own`]), and pongs are read (reading never needs the
    /// socket back: tungstenite holds nothing to write while it is parked,
    /// and reading a pong gives it nothing). At 10,000 sockets pinged every
    /// 20 s, taking each socket back for its ping and again for its pong
    /// cost a tenth of the edge's CPU and a millisecond of p99 latency.
    /// `None`: handled, the socket stays parked; otherwise the wake to
    /// handle once the socket is back.
    fn while_parked(
        &mut self,
        claim: &Parked,
        wake: Wake,
        awaiting_pong: &mut Option<Instant>,
    ) -> Option<Wake> {
        match wake {
            Wake::Tick => match *awaiting_pong {
                Some(sent) if self.pong_is_late(sent) => Some(wake),
                Some(_) => None,
                None if claim.write_own(&Bytes::from_static(codec::PING)) => {
                    *awaiting_pong = Some(Instant::now());
                    None
                }
                None => Some(wake),
            },
            Wake::Readable => loop {
                match self.socket.ws.next().now_or_never() {
                    None => return None, // no whole frame yet
                    Some(Some(Ok(Message::Pong(_)))) => *awaiting_pong = None,
                    Some(incoming) => return Some(Wake::Message(Box::new(incoming))),
                }
            },
            wake => Some(wake),
        }
    }

    /// Handles every client message tungstenite can produce now (it may
    /// hold several from one read), then returns to waiting. Each is
    /// handled in a boxed future: a client message is rare beside the
    /// events sent, and its handling (parsing, bids, replies) inline would
    /// size every socket's task for its whole life.
    async fn read_available(&mut self, awaiting_pong: &mut Option<Instant>) -> Result<(), End> {
        while let Some(incoming) = self.socket.ws.next().now_or_never() {
            Box::pin(self.on_message(incoming, awaiting_pong)).await?;
        }
        Ok(())
    }

    /// One frame tungstenite read, or the end of its stream (`None`).
    async fn on_message(
        &mut self,
        incoming: Option<Result<Message, WsError>>,
        awaiting_pong: &mut Option<Instant>,
    ) -> Result<(), End> {
        match incoming {
            None => return Err(End::Drop),
            Some(Err(error)) => return Err(close_for(&error)),
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await?,
            Some(Ok(Message::Binary(_))) => {
                // Counted like any message: a binary flood is a flood.
                let reply = match self.over_rate() {
                    Some(refused) => refused,
                    None => Some(protocol::error_json(
                        None,
                        "binary_not_supported",
                        "send JSON in text frames",
                    )),
                };
                if let Some(reply) = reply {
                    self.send_text(reply).await?;
                }
            }
            Some(Ok(Message::Pong(_))) => *awaiting_pong = None,
            // tungstenite queued the reply to the close: send it.
            Some(Ok(Message::Close(_))) => return Err(End::Answered),
            // tungstenite queued the answer to a ping: flush it before the
            // next direct write.
            Some(Ok(_)) => self.socket.mark_pending(),
        }
        Ok(())
    }

    async fn send_text(&mut self, text: String) -> Result<(), End> {
        self.socket.send_text(text).await.map_err(End::from)
    }

    /// One client message. Refusals are replies; only transport failures end
    /// the session.
    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let reply = if let Some(refused) = self.over_rate() {
            refused
        } else {
            match protocol::parse(text) {
                Err(refusal) => Some(refusal.to_json()),
                // Boxed: a subscription's start (Redis reads, a replay) is
                // done once; inline it would size every socket's task.
                Ok(ClientMessage::Subscribe { auction, last_id }) => {
                    Box::pin(self.subscribe(&auction, last_id)).await?
                }
                Ok(ClientMessage::Unsubscribe { auction }) => {
                    if let Ok(id) = AuctionId::parse(&auction) {
                        self.subscriptions.unsubscribe(&id);
                    }
                    None
                }
                // Boxed for the same reason (it may fetch the provider's keys).
                Ok(ClientMessage::Auth { token }) => Some(Box::pin(self.authenticate(token)).await),
                Ok(ClientMessage::Bid {
                    auction,
                    amount,
                    reference,
                    idempotency_key,
                }) => match &self.token {
                    Some(token) => self.bids.place(
                        &self.endpoint.bids,
                        auction,
                        amount,
                        token.clone(),
                        reference,
                        idempotency_key,
                        self.peer,
                    ),
                    None => {
                        let missing = TokenError::Missing;
                        Some(protocol::error_json(
                            Some(&reference),
                            missing.code(),
                            "send {\"type\":\"auth\",\"token\":...} before bidding",
                        ))
                    }
                },
            }
        };
        match reply {
            Some(reply) => self.send_text(reply).await,
            None => Ok(()),
        }
    }

    /// An `auth` message: the socket's user from now on, or none if the
    /// token is refused. A guest token is checked in microseconds; a
    /// provider token with an unknown `kid` may wait for one JWKS fetch
    /// (at most 5 s), during which this socket's events queue up (bounded
    /// by its feed queue, like any slow moment).
    async fn authenticate(&mut self, token: String) -> String {
        match self.endpoint.auth.verify(&token).await {
            Ok(identity) => {
                self.token = Some(token.into());
                self.registration = None;
                let notices = self.bids.notices();
                self.registration = Some(Box::new(
                    self.endpoint
                        .suspensions
                        .register(identity.bidder.id.clone(), notices),
                ));
                protocol::authenticated_json(
                    identity.bidder.id.as_str(),
                    identity.bidder.name.as_str(),
                )
            }
            Err(error) => {
                self.token = None;
                self.registration = None;
                protocol::error_json(None, error.code(), error.message())
            }
        }
    }

    /// `None` when the message may be handled. Over the socket's rate limit
    /// a message is dropped, with at most one `rate_limited` error a second.
    fn over_rate(&mut self) -> Option<Option<String>> {
        let now = Instant::now();
        if self.bucket.take(self.endpoint.message_rate, now).is_ok() {
            return None;
        }
        let warn = self
            .warned_rate
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if !warn {
            return Some(None);
        }
        self.warned_rate = Some(now);
        Some(Some(protocol::error_json(
            None,
            "rate_limited",
            "too many messages; slow down",
        )))
    }

    async fn subscribe(
        &mut self,
        auction: &str,
        last_id: protocol::LastId,
    ) -> Result<Option<String>, End> {
        let resubscribe =
            AuctionId::parse(auction).is_ok_and(|id| self.subscriptions.contains(&id));
        if !resubscribe && self.subscriptions.len() >= self.endpoint.max_subscriptions {
            let message = "unsubscribe from another auction first";
            let refusal = protocol::Refusal::new(None, "too_many_subscriptions", message);
            return Ok(Some(refusal.to_json()));
        }
        let subscribed = subscriptions::subscribe(
            &mut self.subscriptions,
            &self.endpoint.delivery,
            &mut self.socket,
            auction,
            last_id,
            service_kit::address_key(self.peer),
        )
        .await?;
        Ok(match subscribed {
            Subscribed::Done => None,
            Subscribed::Refused(reply) => Some(reply),
        })
    }
}

/// Resolves when the hub hands a parked socket back; never if not parked.
async fn handed_back(parked: &Option<Parked>) {
    match parked {
        Some(parked) => parked.handed_back().await,
        None => std::future::pending().await,
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
