//! Connections that are not the fast path's, handed to the axum router
//! over hyper: the bytes read with the head are put back in front of the
//! socket ([`Rewind`]), and each request body is bounded by its deadline
//! ([`DeadlineBody`]).

use crate::connections::{ConnectionLimits, Phase, PhaseHandle, Slot};
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
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Requests that are not the fast path's, served by axum over hyper.
pub(super) struct Hyper {
    pub(super) router: Router,
    pub(super) limits: ConnectionLimits,
    pub(super) keep_alive: bool,
    pub(super) peer: SocketAddr,
}

impl Hyper {
    pub(super) async fn serve(
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
    // Made outside the router, so without its security headers.
    crate::security_headers::insert_baseline(response.headers_mut());
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
