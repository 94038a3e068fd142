//! The SSE endpoint, `GET /auctions/{id}/events`, on the raw socket.
//!
//! This file is only what is SSE about a stream: which requests are ours,
//! the resume point from `Last-Event-ID`, the response head, and ending with
//! a clean FIN whatever the reason (the browser reconnects by itself, with
//! its last id). The delivery protocol and its live loop are `fanout`'s
//! [`Delivery`]. Per
//! connection this holds the socket, a receiver on the auction's feed (a
//! cursor into a shared ring, not a copy of its events) and a small batch.

use crate::codec::SseCodec;
use crate::multi;
use auction_domain::AuctionId;
use fanout::{Delivery, Frame, Item, OpenError, Resume, Subscription, Transport};
use service_kit::client_address::ClientAddress;
use service_kit::demo::{DemoControls, DemoGuard, linger_zero};
use service_kit::edge::EventSocket;
use service_kit::{ConnectionGate, FastPath, RequestHead, address_key, refusal};
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub struct SseEndpoint {
    pub delivery: Delivery<SseCodec>,
    pub gate: ConnectionGate,
    /// Whose stream it is, for the gate's cap per client address.
    pub clients: ClientAddress,
    pub retry_ms: u64,
    /// Auctions one stream of several may carry (`/events?auctions=`).
    pub max_auctions_per_stream: usize,
    /// How each stream's socket is set up once it is one.
    pub event_socket: EventSocket,
    pub shutdown: CancellationToken,
    /// `AUCTION_DEMO_CONTROLS`: streams opened with `demo=<client>`.
    pub demo: Arc<DemoControls>,
}

/// `/auctions/{id}/events` → the raw `{id}`.
fn events_path(path: &str) -> Option<&str> {
    path.strip_prefix("/auctions/")?.strip_suffix("/events")
}

/// An SSE stream is written as is: nothing of its own to flush first.
pub(crate) struct SseSocket<'a>(pub(crate) &'a TcpStream);

impl Transport for SseSocket<'_> {
    type Socket = TcpStream;

    fn socket(&self) -> &TcpStream {
        self.0
    }
}

impl FastPath for SseEndpoint {
    fn claims(&self, head: &RequestHead) -> bool {
        head.method == "GET" && (events_path(head.path()).is_some() || head.path() == multi::PATH)
    }

    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        head: RequestHead,
    ) -> impl Future<Output = ()> + Send {
        // What the stream needs of the request is read here, before the
        // future: an open stream keeps none of the head.
        let client = self.clients.of_stream(&stream, &head);
        // Boxed: most streams have none, and each keeps this for its life.
        let demo = self
            .demo
            .register(head.query_param("demo"), &self.shutdown)
            .map(Box::new);
        if head.path() == multi::PATH {
            let request = multi::Request::read(&head, self.max_auctions_per_stream);
            drop(head);
            return futures_util::future::Either::Left(
                self.stream_many(stream, client, request, demo),
            );
        }
        let auction = AuctionId::parse(events_path(head.path()).unwrap_or(""));
        let resume = Resume::parse(
            head.header("last-event-id")
                .or_else(|| head.query_param("lastEventId").map(str::as_bytes)),
        );
        drop(head);
        futures_util::future::Either::Right(self.stream(stream, client, auction.ok(), resume, demo))
    }
}

impl SseEndpoint {
    /// One stream, from admission to its FIN. A plain `async` block, not an
    /// `async fn`: an `async fn` keeps each argument twice (as passed, and
    /// as its local), for the stream's whole life.
    #[allow(clippy::manual_async_fn)]
    fn stream(
        self: Arc<Self>,
        stream: TcpStream,
        client: IpAddr,
        auction: Option<AuctionId>,
        resume: Resume,
        demo: Option<Box<DemoGuard>>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let _admission = match self.gate.admit(client) {
                Ok(admission) => admission,
                Err(refused) => return refusal::refuse(stream, &refused.response()).await,
            };
            // The start (Redis reads, the head, the init or replay) is boxed:
            // it is done once, and inline its state would size every open
            // stream's task for the stream's whole life.
            match Box::pin(self.start(&stream, auction, resume, address_key(client))).await {
                Ok((mut subscription, feed)) => {
                    // Shared from here: the feed writes to it while the
                    // client is parked.
                    let stream = Arc::new(stream);
                    let socket = &mut SseSocket(&stream);
                    // However it ends (cut off, gone, left, draining), the
                    // stream ends with a FIN; the browser resumes.
                    let gone = || client_gone(&stream);
                    let served =
                        self.delivery
                            .serve(socket, &stream, &mut subscription, feed, gone);
                    serve_then_end(&stream, served, demo).await;
                }
                Err(Some(refusal)) => refusal::refuse(stream, &refusal).await,
                Err(None) => end(&stream),
            }
        }
    }

    /// Opens the client's view of the auction and writes the response head
    /// and its start (an `init` or a replay). `Err(Some(response))`: refuse
    /// the request with this response (nothing was written yet);
    /// `Err(None)`: the stream ended while starting.
    async fn start(
        &self,
        stream: &TcpStream,
        auction: Option<AuctionId>,
        resume: Resume,
        address: IpAddr,
    ) -> Result<(Subscription, broadcast::Receiver<Item>), Option<Vec<u8>>> {
        let Some(auction) = auction else {
            return Err(Some(refusal::not_found("no such auction")));
        };
        if self.shutdown.is_cancelled() {
            return Err(Some(refusal::draining()));
        }
        if let Some(refusal) = self.demo.refusal() {
            return Err(Some(refusal));
        }
        let opening = match self.delivery.open(&auction, resume, address).await {
            Ok(opening) => opening,
            Err(OpenError::NotFound) => {
                let message = format!("no auction with id {:?}", auction.as_str());
                return Err(Some(refusal::not_found(&message)));
            }
            Err(OpenError::OutOfMemory) => return Err(Some(refusal::redis_out_of_memory())),
            Err(OpenError::Unavailable | OpenError::Busy) => {
                return Err(Some(refusal::redis_unavailable()));
            }
        };
        self.event_socket.set_up(stream);
        let mut socket = SseSocket(stream);
        // No security headers here, unlike every other answer: an event
        // stream is never a document (a browser neither renders, frames nor
        // sniffs it; EventSource reads it as events only), and its head is
        // written once per stream, tens of thousands of them. Refusals on
        // this path do carry them (`error_response_bytes`).
        self.delivery
            .write_head(&mut socket, response_head(self.retry_ms))
            .await
            .map_err(|_| None)?;
        self.delivery
            .start(&mut socket, opening)
            .await
            .map_err(|_| None)
    }
}

/// The response head of every stream, with the browser's retry delay.
pub(crate) fn response_head(retry_ms: u64) -> Frame {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\nretry: {retry_ms}\n\n"
    )
    .into()
}

/// Serves a stream until `served` ends, or until a demo drop of its client
/// (`demo`, when it was opened with `demo=`) ends it, then ends it: with a
/// RST after a demo reset, else with a FIN. Only demo streams take the
/// boxed path: the others' futures stay their own size.
pub(crate) async fn serve_then_end<T>(
    stream: &TcpStream,
    served: impl Future<Output = T>,
    demo: Option<Box<DemoGuard>>,
) {
    let Some(demo) = demo else {
        let _ = served.await;
        return end(stream);
    };
    let reset = Box::pin(async {
        tokio::select! {
            _ = served => false,
            _ = demo.end.drain.cancelled() => false,
            _ = demo.end.reset.cancelled() => true,
        }
    })
    .await;
    if reset {
        linger_zero(stream);
    } else {
        end(stream);
    }
}

/// Ends the stream cleanly (FIN) whatever ended it: the browser sees the
/// end and reconnects, to this replica or another, with its last id.
pub(crate) fn end(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

/// Resolves when the client closes its side (or sends something, which an
/// SSE client never does: we stop reading and let it be). Polled readiness,
/// not `readable()`: that future carries a waiter of its own (150 bytes),
/// and this one is all of an idle stream's watch on its client.
pub(crate) fn client_gone(stream: &TcpStream) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        loop {
            match stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            let mut scratch = [0u8; 64];
            match stream.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => continue,
                // Readiness is cleared: the next poll waits for more.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Poll::Ready(()),
            }
        }
    })
}
