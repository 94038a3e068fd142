//! `GET /ws`: checking the upgrade request, answering it (or refusing it),
//! and turning the socket into a WebSocket.

use crate::deflate::{self, Inflating};
use crate::endpoint::WsEndpoint;
use crate::shared_socket::SharedSocket;
use service_kit::{RequestHead, error_response_bytes, error_response_with_headers, refusal};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Bytes tungstenite reads per call; client messages are small.
const READ_BUFFER: usize = 256;

/// An accepted WebSocket: tungstenite's side for client frames and the
/// occasional control frame, and the same socket for shared event frames.
pub struct Upgraded {
    pub ws: WebSocketStream<SharedSocket>,
    pub raw: Arc<TcpStream>,
    /// The client's address (`ClientAddress`: the peer, or behind a
    /// trusted proxy the address it forwards).
    pub peer: IpAddr,
    /// permessage-deflate was negotiated, as this says: events go out
    /// compressed, and the client's compressed messages are inflated.
    pub deflate: Option<deflate::Agreed>,
}

/// Answers the upgrade (or refuses it) and sets up the WebSocket. The
/// request head and the handshake's temporaries are dropped on return: an
/// open socket keeps none of them.
pub async fn upgrade(
    endpoint: &WsEndpoint,
    mut stream: TcpStream,
    head: RequestHead,
    peer: IpAddr,
) -> Option<Upgraded> {
    let key = match check_handshake(endpoint, &head) {
        Ok(key) => key,
        Err(response) => {
            refusal::refuse(stream, &response).await;
            return None;
        }
    };
    // Frames the client sent right behind its request, in the same read:
    // tungstenite reads them before anything else from the socket.
    let mut early_frames = head.rest.to_vec();
    // Decided here, once: the socket's events are compressed from its
    // first (`LiveSet::alt`), and its client frames inflated.
    let deflate = head
        .header("sec-websocket-extensions")
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(deflate::negotiate)
        .filter(|_| endpoint.compression);
    drop(head);
    if endpoint.shutdown.is_cancelled() {
        refusal::refuse(stream, &refusal::draining()).await;
        return None;
    }
    if let Some(response) = endpoint.demo.refusal() {
        refusal::refuse(stream, &response).await;
        return None;
    }
    let accept = derive_accept_key(&key);
    // No security headers on the 101: what follows is a WebSocket, never a
    // document. Every refusal on this path carries them
    // (`error_response_bytes`).
    let extensions = match deflate {
        Some(agreed) => format!("Sec-WebSocket-Extensions: {}\r\n", agreed.response()),
        None => String::new(),
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extensions}\r\n"
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    endpoint.event_socket.set_up(&stream);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(endpoint.max_message))
        .max_frame_size(Some(endpoint.max_message));
    let raw = Arc::new(stream);
    // Early frames go through the inflater too: a compressed one may be
    // among them.
    let inflating = match deflate {
        Some(_) => {
            let mut inflating = Box::new(Inflating::new(endpoint.max_message));
            inflating.push(&std::mem::take(&mut early_frames)).ok()?;
            Some(inflating)
        }
        None => None,
    };
    let socket = SharedSocket(raw.clone(), inflating);
    let ws = WebSocketStream::from_partially_read(socket, early_frames, Role::Server, Some(config))
        .await;
    Some(Upgraded {
        ws,
        raw,
        peer,
        deflate,
    })
}

/// Validates the upgrade request; returns the `Sec-WebSocket-Key`, or the
/// complete response that refuses it.
fn check_handshake(endpoint: &WsEndpoint, head: &RequestHead) -> Result<Vec<u8>, Vec<u8>> {
    let has_token = |name: &str, token: &str| {
        head.header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
            .is_some_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
    };
    // A 426 names the protocol to upgrade to (RFC 9110, 15.5.22).
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(error_response_with_headers(
            426,
            "Upgrade Required",
            "upgrade_required",
            "GET /ws expects a WebSocket upgrade",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade, close")],
        ));
    }
    if head.header("sec-websocket-version") != Some(b"13") {
        // RFC 6455 §4.4: say which version this server speaks.
        return Err(error_response_with_headers(
            426,
            "Upgrade Required",
            "unsupported_version",
            "only WebSocket version 13 is supported",
            &[
                ("Sec-WebSocket-Version", "13"),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade, close"),
            ],
        ));
    }
    if !endpoint.allowed_origins.is_empty() {
        let origin = head
            .header("origin")
            .and_then(|value| std::str::from_utf8(value).ok());
        if !origin.is_some_and(|origin| {
            endpoint
                .allowed_origins
                .iter()
                .any(|allowed| allowed == origin)
        }) {
            return Err(error_response_bytes(
                403,
                "Forbidden",
                "origin_not_allowed",
                "this Origin may not open a WebSocket here",
                None,
            ));
        }
    }
    match head.header("sec-websocket-key") {
        Some(key) if is_websocket_key(key) => Ok(key.to_vec()),
        Some(_) => Err(error_response_bytes(
            400,
            "Bad Request",
            "invalid_key",
            "Sec-WebSocket-Key must be 16 bytes in base64",
            None,
        )),
        None => Err(error_response_bytes(
            400,
            "Bad Request",
            "missing_key",
            "Sec-WebSocket-Key is required",
            None,
        )),
    }
}

/// RFC 6455 §4.1: the key is 16 bytes in base64, which is 22 characters of
/// the base64 alphabet and `==`; the last of the 22 carries only 2 bits of
/// the 16th byte, so its low 4 bits are zero (`A`, `Q`, `g` or `w`).
fn is_websocket_key(key: &[u8]) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    key.len() == 24
        && key[..22].iter().all(base64)
        && matches!(key[21], b'A' | b'Q' | b'g' | b'w')
        && &key[22..] == b"=="
}

#[cfg(test)]
mod tests {
    use super::is_websocket_key;

    #[test]
    fn only_sixteen_bytes_of_base64_are_a_key() {
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            &b""[..],
            b"x",
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25j*Q==",
            b"dGhlIHNhbXBsZSBub25jZQ==x",
        ] {
            assert!(!is_websocket_key(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
