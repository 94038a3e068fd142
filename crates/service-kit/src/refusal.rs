//! How a fast path turns a client away: a complete HTTP response with the
//! project's JSON error body, written with a deadline, then the socket is
//! closed. One place, so both edges refuse alike.

use crate::raw_http::error_response_bytes;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A refusal that cannot be written within this time is abandoned.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// 503 `too_many_connections`: the replica holds `AUCTION_MAX_CONNECTIONS`.
pub fn too_many_connections() -> Vec<u8> {
    error_response_bytes(
        503,
        "Service Unavailable",
        "too_many_connections",
        "this replica is full; retry",
        Some(1),
    )
}

/// 503 `draining`: the replica is shutting down.
pub fn draining() -> Vec<u8> {
    error_response_bytes(
        503,
        "Service Unavailable",
        "draining",
        "this replica is shutting down",
        Some(1),
    )
}

/// 503 `redis_unavailable`: the event store did not answer.
pub fn redis_unavailable() -> Vec<u8> {
    error_response_bytes(
        503,
        "Service Unavailable",
        "redis_unavailable",
        "the event store is unreachable; retry shortly",
        Some(1),
    )
}

/// 400 with `code`: the request cannot be served as asked.
pub fn bad_request(code: &str, message: &str) -> Vec<u8> {
    error_response_bytes(400, "Bad Request", code, message, None)
}

/// 503 `redis_out_of_memory`: Redis refused for memory (`maxmemory`).
pub fn redis_out_of_memory() -> Vec<u8> {
    error_response_bytes(
        503,
        "Service Unavailable",
        "redis_out_of_memory",
        crate::error::OUT_OF_MEMORY_MESSAGE,
        Some(crate::error::OUT_OF_MEMORY_RETRY_S),
    )
}

/// 404 `not_found`.
pub fn not_found(message: &str) -> Vec<u8> {
    error_response_bytes(404, "Not Found", "not_found", message, None)
}

/// Writes `response` (within a deadline) and closes the connection.
pub async fn refuse(mut stream: TcpStream, response: &[u8]) {
    let _ = tokio::time::timeout(WRITE_DEADLINE, stream.write_all(response)).await;
    let _ = stream.shutdown().await;
}
