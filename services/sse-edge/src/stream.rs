//! The SSE endpoint, `GET /auctions/{id}/events`, on the raw socket.
//!
//! Per connection this holds the socket, a receiver on the auction's feed
//! (a cursor into a shared ring, not a copy of its events), the last id
//! sent, and a small batch buffer. One task per connection reads what the
//! feed has ready and writes it with one vectored write.

use crate::codec::{KEEPALIVE, SseCodec};
use auction_domain::{AuctionId, EventId};
use bytes::Bytes;
use fanout::writer::{WriteError, write_frames};
use fanout::{CatchUpError, Hub, Item, OpenError, Resume, Start};
use service_kit::{ConnectionGate, FastPath, RequestHead, error_response_bytes};
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use telemetry::TransportMetrics;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Most frames written by one vectored write.
const MAX_BATCH: usize = fanout::writer::MAX_SLICES;
/// A write blocked this long means the client is gone or stuck.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a new connection waits for its auction's feed to go live.
const JOIN_WAIT: Duration = Duration::from_secs(5);

pub struct SseEndpoint {
    pub hub: Hub<SseCodec>,
    pub metrics: TransportMetrics,
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

impl FastPath for SseEndpoint {
    fn claims(&self, head: &RequestHead) -> bool {
        head.method == "GET" && events_path(head.path()).is_some()
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, head: RequestHead) {
        let refuse = |status, reason, code, message: &str, retry| {
            error_response_bytes(status, reason, code, message, retry)
        };
        let raw_id = events_path(head.path()).unwrap_or("");
        let Ok(auction) = AuctionId::parse(raw_id) else {
            let body = refuse(404, "Not Found", "not_found", "no such auction", None);
            return finish(stream, &body).await;
        };
        let Some(_admission) = self.gate.admit() else {
            let body = refuse(
                503,
                "Service Unavailable",
                "too_many_connections",
                "this replica is full; retry",
                Some(1),
            );
            return finish(stream, &body).await;
        };
        if self.shutdown.is_cancelled() {
            let body = refuse(
                503,
                "Service Unavailable",
                "draining",
                "this replica is shutting down",
                Some(1),
            );
            return finish(stream, &body).await;
        }
        let resume = Resume::parse(
            head.header("last-event-id")
                .or_else(|| head.query_param("lastEventId").map(str::as_bytes)),
        );
        // Nothing of the request is needed from here on: an open stream
        // keeps none of it.
        let raw_id = raw_id.to_owned();
        drop(head);
        let unavailable = || {
            refuse(
                503,
                "Service Unavailable",
                "redis_unavailable",
                "the event store is unreachable; retry shortly",
                Some(1),
            )
        };
        let opening = match fanout::open(&self.hub, &auction, resume, JOIN_WAIT).await {
            Ok(opening) => opening,
            Err(OpenError::NotFound) => {
                let message = format!("no auction with id {raw_id:?}");
                let body = refuse(404, "Not Found", "not_found", &message, None);
                return finish(stream, &body).await;
            }
            Err(_) => return finish(stream, &unavailable()).await,
        };
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(self.send_buffer);
        let mut connection = Connection {
            endpoint: &self,
            stream: &stream,
            feed: opening.feed,
            last_sent: EventId::ZERO,
            batch: Vec::new(),
        };
        if connection.start(&auction, opening.start).await.is_ok() {
            connection.live().await;
        }
        // End the stream cleanly (FIN): the browser sees the end and
        // reconnects, to this replica or another, with its last id.
        let mut stream = stream;
        let _ = stream.shutdown().await;
    }
}

/// Writes a complete refusal and closes.
async fn finish(mut stream: TcpStream, response: &[u8]) {
    let frames = [Bytes::copy_from_slice(response)];
    let never = CancellationToken::new();
    let write = write_frames(
        &stream,
        frames.iter(),
        || false,
        Duration::from_secs(5),
        &never,
    );
    let _ = write.await;
    let _ = stream.shutdown().await;
}

enum Ended {
    Closed,
}

struct Connection<'a> {
    endpoint: &'a SseEndpoint,
    stream: &'a TcpStream,
    feed: broadcast::Receiver<Item<Bytes>>,
    last_sent: EventId,
    batch: Vec<(Bytes, u64)>,
}

impl Connection<'_> {
    /// Response head, `retry:`, then the init or the replay.
    async fn start(&mut self, auction: &AuctionId, start: Start<Bytes>) -> Result<(), Ended> {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n\r\nretry: {}\n\n",
            self.endpoint.retry_ms
        );
        self.write(&[Bytes::from(head)]).await?;
        let metrics = &self.endpoint.metrics;
        match start {
            Start::Init { frame, last, reset } => {
                if reset {
                    metrics.resumes_reset.inc();
                }
                self.last_sent = last;
                self.write(&[frame]).await
            }
            Start::Replay(mut catch_up) => {
                let mut replayed = Vec::new();
                loop {
                    replayed.clear();
                    match catch_up.next_batch(&self.endpoint.hub, &mut replayed).await {
                        Ok(more) => {
                            self.write(&replayed).await?;
                            metrics.events_delivered.inc_by(replayed.len() as u64);
                            self.last_sent = catch_up.last();
                            if !more {
                                break;
                            }
                        }
                        Err(CatchUpError::Gap) if self.last_sent == EventId::ZERO => {
                            // Trimmed between the window check and the read.
                            let Ok(Start::Init { frame, last, .. }) =
                                fanout::init(&self.endpoint.hub, auction, true).await
                            else {
                                return Err(Ended::Closed);
                            };
                            metrics.resumes_reset.inc();
                            self.last_sent = last;
                            return self.write(&[frame]).await;
                        }
                        Err(_) => return Err(Ended::Closed),
                    }
                }
                metrics.resumes_replayed.inc();
                Ok(())
            }
        }
    }

    /// Forwards the feed until the client leaves, lags or the replica drains.
    async fn live(&mut self) {
        // Both futures are created once: re-creating them per event would
        // register and unregister a waiter each time, and the shutdown
        // token's waiter list is shared by every connection.
        let endpoint: &SseEndpoint = self.endpoint;
        let stream: &TcpStream = self.stream;
        let shutdown = endpoint.shutdown.cancelled();
        let gone = client_gone(stream);
        tokio::pin!(shutdown, gone);
        loop {
            let first = tokio::select! {
                biased;
                _ = &mut shutdown => return,
                item = self.feed.recv() => item,
                _ = &mut gone => return,
            };
            if !self.take(first) {
                return;
            }
            while self.batch.len() < MAX_BATCH {
                match self.feed.try_recv() {
                    Ok(item) => {
                        if !self.take(Ok(item)) {
                            return;
                        }
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        self.take(Err(broadcast::error::RecvError::Lagged(n)));
                        return;
                    }
                    Err(broadcast::error::TryRecvError::Closed) => return,
                }
            }
            if self.batch.is_empty() {
                continue;
            }
            if self.flush().await.is_err() {
                return;
            }
        }
    }

    /// Adds one feed item to the batch. `false`: end the connection.
    fn take(&mut self, item: Result<Item<Bytes>, broadcast::error::RecvError>) -> bool {
        match item {
            Ok(Item::Event(event)) => {
                if event.id > self.last_sent {
                    self.last_sent = event.id;
                    self.batch.push((event.frame.clone(), event.placed_at_ms));
                }
                true
            }
            Ok(Item::Tick) => {
                self.batch.push((Bytes::from_static(KEEPALIVE), 0));
                true
            }
            Ok(Item::Reset) => false,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.endpoint.metrics.slow_consumer_disconnects.inc();
                false
            }
            Err(broadcast::error::RecvError::Closed) => false,
        }
    }

    async fn flush(&mut self) -> Result<(), Ended> {
        let capacity = self.endpoint.hub.config().queue_capacity;
        let feed = &self.feed;
        let result = write_frames(
            self.stream,
            self.batch.iter().map(|(frame, _)| frame),
            || feed.len() >= capacity,
            WRITE_STALL,
            &self.endpoint.shutdown,
        )
        .await;
        match result {
            Ok(()) => {
                let metrics = &self.endpoint.metrics;
                let now_ms = now_ms();
                let mut events = 0;
                for (_, placed_at) in &self.batch {
                    if *placed_at > 0 {
                        events += 1;
                        metrics
                            .delivery_latency
                            .observe(now_ms.saturating_sub(*placed_at) as f64 / 1000.0);
                    }
                }
                metrics.events_delivered.inc_by(events);
                self.batch.clear();
                Ok(())
            }
            Err(WriteError::Slow) => {
                self.endpoint.metrics.slow_consumer_disconnects.inc();
                Err(Ended::Closed)
            }
            Err(_) => Err(Ended::Closed),
        }
    }

    async fn write(&mut self, frames: &[Bytes]) -> Result<(), Ended> {
        let capacity = self.endpoint.hub.config().queue_capacity;
        let feed = &self.feed;
        write_frames(
            self.stream,
            frames.iter(),
            || feed.len() >= capacity,
            WRITE_STALL,
            &self.endpoint.shutdown,
        )
        .await
        .map_err(|_| Ended::Closed)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
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
