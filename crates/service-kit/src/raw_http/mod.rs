//! Serving a port where one route is too hot for a general HTTP stack.
//!
//! The edges hold tens of thousands of long-lived streams. Each connection's
//! request head is read here with a small buffer; if the [`FastPath`] claims
//! it (e.g. `GET /auctions/{id}/events`), the raw socket goes to the fast
//! path, which writes its own response: a handful of bytes of state per
//! idle connection instead of a full HTTP server connection. Every other
//! request goes to the axum router over hyper, with the bytes already read
//! replayed in front of the socket.
//!
//! [`accept`] takes connections and routes each once its head is read (or
//! drops it when its slot is taken back); [`head`] reads and parses that
//! head; [`hyper_bridge`] serves the connections that are not the fast
//! path's.

mod accept;
mod head;
mod hyper_bridge;

pub(crate) use accept::serve_ops;
pub use accept::{serve_routes, serve_with_fast_path};
pub use head::RequestHead;

use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpStream;

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

/// A complete, minimal HTTP/1.1 response with a JSON error body, for fast
/// paths that refuse a request. It carries the security headers of every
/// API answer (`crate::security_headers`), as the router's answers do.
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
    // The connection closes after the answer; a caller's own `Connection`
    // (one that names more options) must say `close` too.
    let close = if headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("connection"))
    {
        ""
    } else {
        "Connection: close\r\n"
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nAccess-Control-Allow-Origin: *\r\n{security}{extra}{close}\r\n{body}",
        body.len(),
        security = crate::security_headers::RAW_LINES,
    )
    .into_bytes()
}
