//! The SSE endpoint, `GET /auctions/{id}/events`, on the raw socket.
//!
//! This file is only what is SSE about a stream: which requests are ours,
//! the resume point from `Last-Event-ID`, the response head, and ending with
//! a clean FIN whatever the reason (the browser reconnects by itself, with
//! its last id). The delivery protocol is `fanout`'s [`Delivery`]. Per
//! connection this holds the socket, a receiver on the auction's feed (a
//! cursor into a shared ring, not a copy of its events) and a small batch.

use crate::codec::SseCodec;
use auction_domain::AuctionId;
use fanout::{Batch, Delivery, Ended, Item, OpenError, Resume, Subscription, Transport};
use service_kit::{ConnectionGate, FastPath, RequestHead, refusal};
use std::io;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_util::sync::CancellationToken;

pub struct SseEndpoint {
    pub delivery: Delivery<SseCodec>,
    pub gate: ConnectionGate,
    pub retry_ms: u64,
    /// SO_SNDBUF of each stream: without a cap the kernel grows a stuck
    /// client's buffer to megabytes, and it would take that long to notice.
    pub send_buffer: usize,
    pub shutdown: CancellationToken,
}

/// `/auctions/{id}/events` → the raw `{id}`.
fn events_path(path: &str) -> Option<&str> {
    path.strip_prefix("/auctions/")?.strip_suffix("/events")
}

/// An SSE stream is written as is: nothing of its own to flush first.
struct SseSocket<'a>(&'a TcpStream);

impl Transport for SseSocket<'_> {
    fn socket(&self) -> &TcpStream {
        self.0
    }
}

impl FastPath for SseEndpoint {
    fn claims(&self, head: &RequestHead) -> bool {
        head.method == "GET" && events_path(head.path()).is_some()
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, head: RequestHead) {
        let raw_id = events_path(head.path()).unwrap_or("");
        let Ok(auction) = AuctionId::parse(raw_id) else {
            return refusal::refuse(stream, &refusal::not_found("no such auction")).await;
        };
        let Some(_admission) = self.gate.admit() else {
            return refusal::refuse(stream, &refusal::too_many_connections()).await;
        };
        if self.shutdown.is_cancelled() {
            return refusal::refuse(stream, &refusal::draining()).await;
        }
        let resume = Resume::parse(
            head.header("last-event-id")
                .or_else(|| head.query_param("lastEventId").map(str::as_bytes)),
        );
        // Nothing of the request is needed from here on: an open stream
        // keeps none of it.
        drop(head);
        // The start's futures (Redis reads, the replay) are boxed: they are
        // done once, and inline they would size every open stream's task.
        let opening = match Box::pin(self.delivery.open(&auction, resume)).await {
            Ok(opening) => opening,
            Err(OpenError::NotFound) => {
                let message = format!("no auction with id {:?}", auction.as_str());
                return refusal::refuse(stream, &refusal::not_found(&message)).await;
            }
            Err(OpenError::Unavailable | OpenError::Busy) => {
                return refusal::refuse(stream, &refusal::redis_unavailable()).await;
            }
        };
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(self.send_buffer);
        let mut socket = SseSocket(&stream);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\nretry: {}\n\n",
            self.retry_ms
        );
        let head_written = self.delivery.write_head(&mut socket, head.into()).await;
        if head_written.is_ok()
            && let Ok((subscription, feed)) =
                Box::pin(self.delivery.start(&mut socket, opening)).await
        {
            self.live(&mut socket, subscription, feed).await;
        }
        // End the stream cleanly (FIN) whatever ended it: the browser sees
        // the end and reconnects, to this replica or another, with its
        // last id.
        let mut stream = stream;
        let _ = stream.shutdown().await;
    }
}

impl SseEndpoint {
    /// Forwards the feed until the client leaves, is cut off, or the
    /// replica drains. Each wake takes everything the feed has ready and
    /// writes it with one vectored write.
    async fn live(
        &self,
        socket: &mut SseSocket<'_>,
        mut subscription: Subscription,
        mut feed: broadcast::Receiver<Item>,
    ) {
        // Both futures are created once: re-creating them per event would
        // register and unregister a waiter each time, and the shutdown
        // token's waiter list is shared by every connection.
        let shutdown = self.shutdown.cancelled();
        let gone = client_gone(socket.0);
        tokio::pin!(shutdown, gone);
        let mut batch = Batch::default();
        loop {
            let first = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                item = feed.recv() => item,
                _ = &mut gone => return,
            };
            let mut taken = self.delivery.take(&mut subscription, first, &mut batch);
            while taken.is_ok() && !batch.is_full() {
                let item = match feed.try_recv() {
                    Ok(item) => Ok(item),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                };
                taken = self.delivery.take(&mut subscription, item, &mut batch);
            }
            match taken {
                Ok(()) => {}
                // The batch ends with the auction's last word: write it.
                Err(Ended::Gone) => {
                    let _ = self.delivery.flush(socket, &mut batch, || false).await;
                    return;
                }
                Err(_) => return,
            }
            let lapped = || subscription.lapped();
            if self
                .delivery
                .flush(socket, &mut batch, lapped)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Resolves when the client closes its side (or sends something, which an
/// SSE client never does: we stop reading and let it be).
async fn client_gone(stream: &TcpStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let mut scratch = [0u8; 64];
        match stream.try_read(&mut scratch) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}
