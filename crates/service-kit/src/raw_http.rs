//! Serving a port where one route is too hot for a general HTTP stack.
//!
//! The edges hold tens of thousands of long-lived streams. Each connection's
//! request head is read here with a small buffer; if the [`FastPath`] claims
//! it (e.g. `GET /auctions/{id}/events`), the raw socket goes to the fast
//! path, which writes its own response: a handful of bytes of state per
//! idle connection instead of a full HTTP server connection. Every other
//! request goes to the axum router over hyper, with the bytes already read
//! replayed in front of the socket.

use crate::connections::{ConnectionLimits, Phase, PhaseHandle, Slot, Slots};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::process::Context;
use crate::refusal;

/// Largest request head accepted (beyond: 431).
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines accepted (beyond: 431).
const MAX_HEADERS: usize = 100;
/// A connection over capacity (it may only ask for an ops route) must
/// send its head within this time.
const OVER_CAPACITY_HEAD_DEADLINE: Duration = Duration::from_secs(2);

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent: path plus optional `?query`.
    pub target: String,
    headers: Vec<(String, Bytes)>,
    /// Bytes the client sent after the head, read along with it (a
    /// WebSocket client's first frame may come in the same packet as its
    /// upgrade request): whoever serves the request reads these first.
    pub rest: Bytes,
}

impl RequestHead {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// A query parameter's raw (undecoded) value.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query()?
            .split('&')
            .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_ref())
    }
}

/// The hot route of an edge.
pub trait FastPath: Send + Sync + 'static {
    /// Whether this request is the fast path's.
    fn claims(&self, head: &RequestHead) -> bool;
    /// Serves the request on the raw socket, writing the whole response.
    /// The returned future lives as long as the connection: keep out of it
    /// whatever only the start needs (the head, above all), by reading the
    /// head before the `async` block.
    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        head: RequestHead,
    ) -> impl Future<Output = ()> + Send;
}

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

/// A service without a fast path: every request goes to `routes` (plus the
/// ops routes), with keep-alive, under the same deadlines and bounds.
pub async fn serve_routes(
    ctx: &Context,
    listener: TcpListener,
    routes: Router,
) -> Result<(), String> {
    accept_loop::<NoFastPath>(ctx, listener, routes, None, true).await
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
    let router = router.merge(crate::health::ops_routes(ctx));
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
            // handled. This connection may still ask for /healthz,
            // /readyz or /metrics (on a reserved descriptor); nothing else.
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
            if crate::health::is_ops_path(head.path()) {
                let hyper = Hyper {
                    router: self.router,
                    limits: self.limits,
                    keep_alive: false,
                    peer: self.peer,
                };
                // A task of its own, as every hyper connection: inline, its
                // state would size every connection's task while it reads
                // its head (tens of thousands at once in a connect storm).
                tokio::spawn(hyper.serve(self.stream, buffered, None, self.shutdown));
                return;
            }
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

/// Why no request head could be read.
enum HeadError {
    /// Over `MAX_HEAD` bytes or `MAX_HEADERS` lines: 431.
    TooLarge,
    /// Not HTTP: 400.
    Malformed,
    /// The client left, or the socket failed: nothing to answer.
    Gone,
}

/// Reads until a full request head is buffered. The end of the head is
/// looked for only in the bytes just read, and the head is parsed once,
/// when it is complete: a head sent a byte at a time costs one scan, not a
/// parse per byte. Returns the head and every byte read.
async fn read_head(stream: &TcpStream) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        if stream.readable().await.is_err() {
            return Err(HeadError::Gone);
        }
        let mut chunk = [0u8; 2048];
        let read = match stream.try_read(&mut chunk) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(HeadError::Gone),
        };
        // A line break may straddle two reads: look back two bytes.
        let scan_from = buffer.len().saturating_sub(2);
        buffer.extend_from_slice(&chunk[..read]);
        let complete = buffer[scan_from..]
            .windows(2)
            .enumerate()
            .any(|(at, pair)| {
                pair == b"\n\n"
                    || (pair == b"\n\r" && buffer.get(scan_from + at + 2) == Some(&b'\n'))
            });
        if !complete {
            if buffer.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        return match request.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) if head_len <= MAX_HEAD => {
                let head = RequestHead {
                    method: request.method.unwrap_or("").to_owned(),
                    target: origin_form(request.path.unwrap_or("")).to_owned(),
                    headers: request
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), Bytes::copy_from_slice(h.value)))
                        .collect(),
                    rest: Bytes::copy_from_slice(&buffer[head_len..]),
                };
                Ok((head, buffer))
            }
            Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
            Err(_) => Err(HeadError::Malformed),
        };
    }
}

/// The request target in origin form: an absolute-form target
/// (`http://host/path?q`, which RFC 9112 §3.2.2 says servers must accept)
/// becomes `/path?q`.
fn origin_form(target: &str) -> &str {
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return target;
    };
    match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => &rest[at..],
        _ => "/",
    }
}

/// Requests that are not the fast path's, served by axum over hyper.
struct Hyper {
    router: Router,
    limits: ConnectionLimits,
    keep_alive: bool,
    peer: SocketAddr,
}

impl Hyper {
    async fn serve(
        self,
        stream: TcpStream,
        buffered: Vec<u8>,
        slot: Option<Slot>,
        shutdown: CancellationToken,
    ) {
        let io = TokioIo::new(Rewind {
            prefix: Bytes::from(buffered),
            inner: stream,
        });
        let phase = slot.as_ref().map(Slot::phase_handle);
        let (router, peer, body_deadline) = (self.router, self.peer, self.limits.body);
        let service = hyper::service::service_fn(move |request| {
            let (router, phase) = (router.clone(), phase.clone());
            handle(router, phase, peer, body_deadline, request)
        });
        // On a keep-alive connection the wait for each later request and
        // its head is bounded by the idle deadline (hyper's header read
        // timeout covers both); the first head was read within the head
        // deadline already.
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.idle)
            .keep_alive(self.keep_alive);
        let connection = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(connection);
        let evicted = async {
            match slot.as_ref() {
                Some(slot) => slot.evicted.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = connection.as_mut() => {}
            () = evicted => {}
            _ = shutdown.cancelled() => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
        }
    }
}

/// One request, its body bounded by its deadline, through the router. The
/// connection's phase follows, for eviction: reading until the body is in,
/// busy while handled, idle after.
async fn handle(
    router: Router,
    phase: Option<PhaseHandle>,
    peer: SocketAddr,
    body_deadline: Duration,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<axum::response::Response, std::convert::Infallible> {
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    let expired = Arc::new(AtomicBool::new(false));
    let set = |to: Phase| {
        if let Some(phase) = &phase {
            phase.set(to);
        }
    };
    set(if http_body::Body::is_end_stream(&body) {
        Phase::Busy
    } else {
        Phase::Reading
    });
    let body = DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(body_deadline)),
        expired: expired.clone(),
        phase: phase.clone(),
    };
    let request = axum::http::Request::from_parts(parts, axum::body::Body::new(body));
    let response = router.oneshot(request).await;
    set(Phase::Idle);
    if expired.load(Ordering::Relaxed) {
        return Ok(closing(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        ));
    }
    response
}

/// A request body that fails once its deadline passes (the handler sees an
/// error; [`handle`] answers 408), and marks the connection busy once it
/// is all in.
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
    phase: Option<PhaseHandle>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if frame.is_none()
                && let Some(phase) = &self.phase
            {
                phase.set(Phase::Busy);
            }
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err("the request body did not arrive in time".into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An error answer after which the connection is closed (what was left of
/// the request is not read).
fn closing(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    let mut response = crate::error::error_response(status, code, message);
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        HeaderValue::from_static("close"),
    );
    response
}

/// A socket with bytes already read put back in front of it.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A complete, minimal HTTP/1.1 response with a JSON error body, for fast
/// paths that refuse a request.
pub fn error_response_bytes(
    status: u16,
    reason: &str,
    code: &str,
    message: &str,
    retry_after_s: Option<u64>,
) -> Vec<u8> {
    let retry = retry_after_s.map(|s| s.to_string());
    let headers: Vec<(&str, &str)> = retry
        .as_deref()
        .map(|retry| ("Retry-After", retry))
        .into_iter()
        .collect();
    error_response_with_headers(status, reason, code, message, &headers)
}

/// [`error_response_bytes`] with extra response headers.
pub fn error_response_with_headers(
    status: u16,
    reason: &str,
    code: &str,
    message: &str,
    headers: &[(&str, &str)],
) -> Vec<u8> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_raw() {
        let head = RequestHead {
            method: "GET".into(),
            target: "/auctions/1/events?x=1&lastEventId=5-0&flag".into(),
            headers: vec![("Last-Event-ID".into(), Bytes::from_static(b"7-1"))],
            rest: Bytes::new(),
        };
        assert_eq!(head.path(), "/auctions/1/events");
        assert_eq!(head.query_param("lastEventId"), Some("5-0"));
        assert_eq!(head.query_param("flag"), Some(""));
        assert_eq!(head.query_param("nope"), None);
        assert_eq!(head.header("last-event-id"), Some(&b"7-1"[..]));
    }

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(origin_form("/auctions/1/events"), "/auctions/1/events");
        assert_eq!(
            origin_form("http://edge:8081/auctions/1/events?lastEventId=5-0"),
            "/auctions/1/events?lastEventId=5-0"
        );
        assert_eq!(origin_form("https://edge"), "/");
        assert_eq!(origin_form("http://edge?x=1"), "/");
    }
}
