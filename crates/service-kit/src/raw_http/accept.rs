//! Accepting connections until shutdown, and each one until it is handed
//! on: its request head is read within a deadline (unless its slot is
//! taken back first: eviction), then it goes to the fast path or to hyper.

use super::head::{HeadError, RequestHead, read_head};
use super::hyper_bridge::Hyper;
use super::{FastPath, error_response_bytes};
use crate::connections::{ConnectionLimits, Slot, Slots};
use crate::process::Context;
use crate::refusal;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// A connection over capacity must send its head within this time: it is
/// read before the refusal, so that closing the socket does not reset it
/// and lose the answer.
const OVER_CAPACITY_HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// Open connections on the ops listener. Probes and scrapers need a few;
/// the bound keeps a stuck scraper from using the descriptors kept back
/// for them (see `connections::RESERVED_DESCRIPTORS`).
const OPS_CONNECTIONS: usize = 16;

/// Accepts connections until shutdown, routing each to `fast` or `router`.
/// After shutdown no new connection is accepted; open ones end by
/// themselves (fast-path connections watch the shutdown token). Other
/// requests are served one per connection: a keep-alive connection must not
/// carry a later request for the fast path past the sniffing here.
pub async fn serve_with_fast_path<F: FastPath>(
    ctx: &Context,
    listener: TcpListener,
    router: Router,
    fast: Arc<F>,
) -> Result<(), String> {
    accept_loop(ctx, listener, router, Some(fast), false).await
}

/// A service without a fast path: every request goes to `routes`, with
/// keep-alive, under the same deadlines and bounds.
pub async fn serve_routes(
    ctx: &Context,
    listener: TcpListener,
    routes: Router,
) -> Result<(), String> {
    accept_loop::<NoFastPath>(ctx, listener, routes, None, true).await
}

/// Serves `/healthz`, `/readyz` and `/metrics` on the ops listener (and
/// nothing else) for as long as the process runs: through a drain too, so
/// probes see `/readyz` answer 503 until the process exits. Its
/// connections take no client slot, so a replica full of clients still
/// answers its probes; each request head is bounded by the idle deadline.
pub(crate) async fn serve_ops(ctx: Context, listener: TcpListener) {
    let router =
        crate::security_headers::SecurityHeaders::api().apply(crate::health::ops_routes(&ctx));
    let open = Arc::new(Semaphore::new(OPS_CONNECTIONS));
    // The ops listener outlives the shutdown signal; nothing cancels this.
    let never = CancellationToken::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "ops accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over the bound: closed at once (a scraper retries).
        let Ok(permit) = open.clone().try_acquire_owned() else {
            continue;
        };
        let hyper = Hyper {
            router: router.clone(),
            limits: ctx.common.connections.clone(),
            keep_alive: true,
            peer,
        };
        let never = never.clone();
        tokio::spawn(async move {
            hyper.serve(stream, Vec::new(), None, never).await;
            drop(permit);
        });
    }
}

/// The fast path of a service that has none.
struct NoFastPath;

impl FastPath for NoFastPath {
    fn claims(&self, _: &RequestHead) -> bool {
        false
    }

    async fn serve(self: Arc<Self>, _: TcpStream, _: RequestHead) {}
}

async fn accept_loop<F: FastPath>(
    ctx: &Context,
    listener: TcpListener,
    router: Router,
    fast: Option<Arc<F>>,
    keep_alive: bool,
) -> Result<(), String> {
    // Never merged with the ops routes: the public port does not serve
    // them (they are on the ops listener, see `serve_ops`). Every answer
    // of the router gets the security headers (routes that set their own,
    // such as the pages', keep theirs).
    let router = crate::security_headers::SecurityHeaders::api().apply(router);
    let slots = Slots::for_this_process();
    let limits = ctx.common.connections.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                // Closed first, so new connections are refused at once
                // rather than left waiting in the listen queue; then wait
                // for open ones to end (idle ones close at once; the grace
                // period bounds this).
                drop(listener);
                slots.drained().await;
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            peer,
            // None: every slot is held by a stream or a request being
            // handled; this connection is refused once its head is read.
            slot: slots.take(),
            fast: fast.clone(),
            router: router.clone(),
            limits: limits.clone(),
            keep_alive,
            shutdown: ctx.shutdown.clone(),
        };
        tokio::spawn(connection.serve());
    }
}

/// One accepted connection, until it is handed to the fast path or hyper.
struct Connection<F> {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Option<Slot>,
    fast: Option<Arc<F>>,
    router: Router,
    limits: ConnectionLimits,
    keep_alive: bool,
    shutdown: CancellationToken,
}

impl<F: FastPath> Connection<F> {
    async fn serve(self) {
        let head_deadline = match self.slot {
            Some(_) => self.limits.head,
            None => OVER_CAPACITY_HEAD_DEADLINE,
        };
        let evicted = self.slot.as_ref().map(|slot| slot.evicted.clone());
        let evicted = async {
            match evicted {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            read = tokio::time::timeout(head_deadline, read_head(&self.stream)) => read,
            () = evicted => return,
        };
        let (head, buffered) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(HeadError::TooLarge)) => {
                let answer = error_response_bytes(
                    431,
                    "Request Header Fields Too Large",
                    "header_too_large",
                    "the request head is over 16 KiB or 100 header lines",
                    None,
                );
                return Box::pin(refusal::refuse(self.stream, &answer)).await;
            }
            Ok(Err(HeadError::Malformed)) => {
                let answer = error_response_bytes(
                    400,
                    "Bad Request",
                    "malformed_request",
                    "the request head is not HTTP/1.1",
                    None,
                );
                return Box::pin(refusal::refuse(self.stream, &answer)).await;
            }
            // Gone, or no head within the deadline: just close.
            Ok(Err(HeadError::Gone)) | Err(_) => return,
        };
        let Some(slot) = self.slot else {
            return Box::pin(refusal::refuse(
                self.stream,
                &refusal::too_many_connections(),
            ))
            .await;
        };
        match self.fast {
            Some(fast) if fast.claims(&head) => {
                // A stream is never evicted: it keeps only its place.
                let place = slot.into_stream();
                // Made here, not inside the task's block: captured by that
                // block, the socket and the head would be stored twice for
                // the stream's whole life (once as the block's, once as the
                // serving future's). Every open stream pays for its task's
                // size.
                let serving = fast.serve(self.stream, head);
                tokio::spawn(async move {
                    serving.await;
                    drop(place);
                });
            }
            _ => {
                let hyper = Hyper {
                    router: self.router,
                    limits: self.limits,
                    keep_alive: self.keep_alive,
                    peer: self.peer,
                };
                // Each path runs in a task of its own, sized for that path.
                tokio::spawn(hyper.serve(self.stream, buffered, Some(slot), self.shutdown));
            }
        }
    }
}
