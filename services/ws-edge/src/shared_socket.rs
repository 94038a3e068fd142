//! One TCP socket used two ways: tungstenite reads client frames and writes
//! the occasional control or reply frame through this handle, while event
//! frames, encoded once per replica, are written straight to the same
//! socket. While the socket's task holds it, every write completes before
//! the next begins (tungstenite is flushed before a direct write). While it
//! is parked with its feed, the feed writes the events from other tasks,
//! tungstenite writes nothing (a socket parks only with nothing of
//! tungstenite's pending, and reading a pong queues nothing), and the
//! session's pings go between the feed's writes under the lane's lock. So
//! frames never interleave.
//!
//! On a socket that negotiated permessage-deflate, what tungstenite reads
//! passes through [`Inflating`] first: the client's compressed messages
//! reach it inflated.

use crate::deflate::Inflating;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub struct SharedSocket(pub Arc<TcpStream>, pub Option<Box<Inflating>>);

/// Bytes read from the socket at a time for [`Inflating`].
const INFLATING_READ: usize = 512;

impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(inflating) = &mut this.1 {
            return poll_read_inflating(&this.0, inflating, cx, buf);
        }
        loop {
            ready!(this.0.poll_read_ready(cx))?;
            match this.0.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

/// A read through [`Inflating`]: what it holds for tungstenite first, then
/// the socket's bytes taken apart. An end of the stream after an oversized
/// message was reported.
fn poll_read_inflating(
    socket: &TcpStream,
    inflating: &mut Inflating,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let mut chunk = [0; INFLATING_READ];
    loop {
        if inflating.has_output() {
            let taken = inflating.take_output(buf.initialize_unfilled());
            buf.advance(taken);
            return Poll::Ready(Ok(()));
        }
        if inflating.is_done() {
            return Poll::Ready(Ok(()));
        }
        ready!(socket.poll_read_ready(cx))?;
        match socket.try_read(&mut chunk) {
            Ok(0) => return Poll::Ready(Ok(())),
            Ok(read) => inflating.push(&chunk[..read])?,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // TCP sockets have no user-space buffer
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}
