//! Serving a port where one route is too hot for a general HTTP stack.
//!
//! The edges hold tens of thousands of long-lived streams. Each connection's
//! request head is read here with a small buffer; if the [`FastPath`] claims
//! it (e.g. `GET /auctions/{id}/events`), the raw socket goes to the fast
//! path, which writes its own response: a handful of bytes of state per
//! idle connection instead of a full HTTP server connection. Every other
//! request goes to the axum router over hyper, with the bytes already read
//! replayed in front of the socket.

use axum::Router;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::process::Context;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// A client must send its request head within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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
    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        head: RequestHead,
    ) -> impl Future<Output = ()> + Send;
}

/// Accepts connections until shutdown, routing each to `fast` or `router`.
/// After shutdown no new connection is accepted; open ones end by
/// themselves (fast-path connections watch the shutdown token).
pub async fn serve_with_fast_path<F: FastPath>(
    ctx: &Context,
    listener: TcpListener,
    router: Router,
    fast: Arc<F>,
) -> Result<(), String> {
    let router = router.merge(crate::health::ops_routes(ctx));
    loop {
        let (stream, _peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
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
        let fast = fast.clone();
        let router = router.clone();
        let shutdown = ctx.shutdown.clone();
        tokio::spawn(async move {
            let Ok(Ok((head, buffered))) =
                tokio::time::timeout(HEAD_TIMEOUT, read_head(&stream)).await
            else {
                return;
            };
            // Each path runs in a task of its own, sized for that path alone.
            match head {
                Some(head) if fast.claims(&head) => {
                    tokio::spawn(fast.serve(stream, head));
                }
                _ => {
                    tokio::spawn(serve_hyper(stream, buffered, router, shutdown));
                }
            }
        });
    }
}

/// Reads until a full request head is buffered. Returns the parsed head (or
/// `None` if it does not parse; hyper then answers 400) and every byte read.
async fn read_head(stream: &TcpStream) -> io::Result<(Option<RequestHead>, Vec<u8>)> {
    let mut buffer = Vec::with_capacity(1024);
    loop {
        stream.readable().await?;
        let mut chunk = [0u8; 2048];
        let read = match stream.try_read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        };
        buffer.extend_from_slice(&chunk[..read]);
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) => {
                let head = RequestHead {
                    method: request.method.unwrap_or("").to_owned(),
                    target: request.path.unwrap_or("").to_owned(),
                    headers: request
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), Bytes::copy_from_slice(h.value)))
                        .collect(),
                    rest: Bytes::copy_from_slice(&buffer[head_len..]),
                };
                return Ok((Some(head), buffer));
            }
            Ok(httparse::Status::Partial) if buffer.len() < MAX_HEAD => continue,
            // Too large or malformed: let hyper produce the error response.
            _ => return Ok((None, buffer)),
        }
    }
}

async fn serve_hyper(
    stream: TcpStream,
    buffered: Vec<u8>,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let io = TokioIo::new(Rewind {
        prefix: Bytes::from(buffered),
        inner: stream,
    });
    let service = hyper_util::service::TowerToHyperService::new(router);
    // One request per connection: a keep-alive connection must not carry a
    // later request for the fast path past the sniffing above.
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
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
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let retry = retry_after_s
        .map(|s| format!("Retry-After: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n{retry}Connection: close\r\n\r\n{body}",
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
}
