//! One WebSocket with two writers. tungstenite writes what the session
//! says itself (replies, pings, the close handshake) through a buffer;
//! event frames, encoded once per replica, are written by the client layer
//! straight to the same TCP socket. Every write of either kind completes
//! before the next begins, and tungstenite's buffer is flushed before each
//! direct write ([`Transport::before_write`]), so frames never interleave.

use crate::shared_socket::SharedSocket;
use fanout::{Ended, Transport};
use futures_util::SinkExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

pub struct WsSocket {
    pub ws: WebSocketStream<SharedSocket>,
    /// The same socket, for event frames written directly.
    raw: Arc<TcpStream>,
    /// Whether tungstenite may hold unwritten bytes (it answers pings and
    /// closes by itself): direct writes wait until it has flushed them.
    pending: bool,
    /// The client layer's stall limit, for tungstenite's writes too.
    stall_limit: Duration,
}

impl WsSocket {
    pub fn new(
        ws: WebSocketStream<SharedSocket>,
        raw: Arc<TcpStream>,
        stall_limit: Duration,
    ) -> WsSocket {
        WsSocket {
            ws,
            raw,
            pending: false,
            stall_limit,
        }
    }

    pub fn raw(&self) -> &Arc<TcpStream> {
        &self.raw
    }

    /// Whether tungstenite may hold unwritten bytes.
    pub fn has_pending(&self) -> bool {
        self.pending
    }

    /// tungstenite queued a frame of its own (a pong, a close reply).
    pub fn mark_pending(&mut self) {
        self.pending = true;
    }

    /// Sends one message of the session's own and flushes it. Boxed, as is
    /// every flush of tungstenite's: its buffer and deadline would
    /// otherwise size every socket's task for its whole life, for a write
    /// that happens now and then (a reply, a ping).
    pub async fn send(&mut self, message: Message) -> Result<(), Ended> {
        Box::pin(async move {
            self.ws.feed(message).await.map_err(|_| Ended::Closed)?;
            self.flush_now().await
        })
        .await
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), Ended> {
        self.send(Message::Text(Utf8Bytes::from(text))).await
    }

    /// Writes whatever tungstenite holds, within the stall limit.
    pub async fn flush(&mut self) -> Result<(), Ended> {
        Box::pin(self.flush_now()).await
    }

    async fn flush_now(&mut self) -> Result<(), Ended> {
        match tokio::time::timeout(self.stall_limit, self.ws.flush()).await {
            Ok(Ok(())) => {
                self.pending = false;
                Ok(())
            }
            Ok(Err(_)) => Err(Ended::Closed),
            Err(_) => Err(Ended::Slow),
        }
    }
}

impl Transport for WsSocket {
    type Socket = TcpStream;

    fn socket(&self) -> &TcpStream {
        &self.raw
    }

    async fn before_write(&mut self) -> Result<(), Ended> {
        if self.pending {
            self.flush().await?;
        }
        Ok(())
    }
}
