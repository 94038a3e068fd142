//! `floor`: the least a server can do to fan an event out, for
//! `scripts/bench` to measure beside this project's edges and nchan.
//!
//! One thread, one epoll loop (mio), no framework, no Redis. It accepts the
//! connections the load generator makes to our edges:
//! - SSE: `GET /auctions/{id}/events` is answered with a minimal
//!   `200 text/event-stream` head;
//! - WebSocket: `GET /ws` is upgraded (101), then the client's
//!   `{"type":"subscribe","auction":"..."}` is answered with an `init` frame;
//!
//! and control connections (`POST /control`), on which the load generator
//! writes one event a line, `{auction} {bid JSON}\n`, each answered `ok\n`
//! as soon as it is read. Each event is encoded once (the same SSE message
//! and WebSocket frame our edges send for a bid, with an id `{n}-0`), then
//! written to every socket of its auction with one write: vectored when
//! several events are ready for that socket. A socket that cannot take it
//! all keeps the rest and is flushed when it is writable again. No resume,
//! no keepalive, no metrics: what is left is the kernel's send per socket.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const USAGE: &str = "usage: floor [--listen 127.0.0.1:PORT] [--max-connections N]";
const LISTENER: Token = Token(usize::MAX);
/// Largest request head, subscribe frame or unparsed control input.
const MAX_INPUT: usize = 8 * 1024;
/// A socket that falls this far behind is closed (a slow consumer).
const MAX_PENDING: usize = 4 * 1024 * 1024;
/// Frames handed to one vectored write at most.
const MAX_SLICES: usize = 64;

type Frame = Rc<[u8]>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Reading the request head.
    Head,
    /// An SSE stream.
    Sse,
    /// Upgraded; waiting for the subscribe message.
    WsSubscribing,
    /// A subscribed WebSocket.
    Ws,
    /// The load generator's event lines.
    Control,
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    /// Bytes read and not parsed yet (head, subscribe frame, control lines).
    input: Vec<u8>,
    auction: Option<Rc<str>>,
    /// Frames not fully written yet; `offset` bytes of the first are.
    pending: VecDeque<Frame>,
    offset: usize,
    pending_bytes: usize,
    /// Close once `pending` is written (a one-off answer).
    closing: bool,
}

impl Conn {
    /// Writes `frames` (their `slices`) with one vectored write, or queues
    /// them behind what this socket has not taken yet. `Err`: close it.
    fn send(&mut self, frames: &[Frame], slices: &[IoSlice<'_>]) -> io::Result<()> {
        if self.pending.is_empty() {
            let mut written = match self.stream.write_vectored(slices) {
                Ok(written) => written,
                Err(error) if retry_later(&error) => 0,
                Err(error) => return Err(error),
            };
            for frame in frames {
                if written >= frame.len() {
                    written -= frame.len();
                    continue;
                }
                if self.pending.is_empty() {
                    self.offset = written;
                    self.pending_bytes = frame.len() - written;
                } else {
                    self.pending_bytes += frame.len();
                }
                written = 0;
                self.pending.push_back(frame.clone());
            }
            if self.pending.is_empty() {
                return Ok(());
            }
        } else {
            for frame in frames {
                self.pending_bytes += frame.len();
                self.pending.push_back(frame.clone());
            }
        }
        if self.pending_bytes > MAX_PENDING {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.flush()
    }

    /// Writes what is pending until done or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        while let Some(first) = self.pending.front() {
            let mut slices = Vec::with_capacity(self.pending.len().min(MAX_SLICES));
            slices.push(IoSlice::new(first.get(self.offset..).unwrap_or_default()));
            for frame in self.pending.iter().skip(1).take(MAX_SLICES - 1) {
                slices.push(IoSlice::new(frame));
            }
            let mut written = match self.stream.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if retry_later(&error) => return Ok(()),
                Err(error) => return Err(error),
            };
            self.pending_bytes = self.pending_bytes.saturating_sub(written);
            while let Some(front) = self.pending.front() {
                let left = front.len() - self.offset;
                if written < left {
                    self.offset += written;
                    break;
                }
                written -= left;
                self.offset = 0;
                self.pending.pop_front();
            }
        }
        Ok(())
    }
}

fn retry_later(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// An event read from a control connection.
struct Event {
    auction: String,
    bid: String,
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    max_connections: usize,
    /// Sockets (slots) subscribed to each auction.
    auctions: HashMap<Rc<str>, Vec<usize>>,
    /// Events read in this turn of the loop, sent after it.
    ready: Vec<Event>,
    next_id: u64,
}

impl Server {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(error) = self.poll.poll(&mut events, None) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            for event in events.iter() {
                if event.token() == LISTENER {
                    self.accept()?;
                    continue;
                }
                let slot = event.token().0;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(slot);
                }
                if event.is_writable() {
                    self.on_writable(slot);
                }
            }
            if !self.ready.is_empty() {
                self.fan_out();
            }
        }
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(error) if retry_later(&error) => continue,
                // Out of descriptors and the like: drop this one, keep going.
                Err(error) => {
                    eprintln!("floor: accept: {error}");
                    return Ok(());
                }
            };
            if self.open >= self.max_connections {
                continue; // dropped: closed
            }
            let _ = stream.set_nodelay(true);
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.free.push(slot);
                continue;
            }
            self.open += 1;
            self.conns[slot] = Some(Conn {
                stream,
                kind: Kind::Head,
                input: Vec::new(),
                auction: None,
                pending: VecDeque::new(),
                offset: 0,
                pending_bytes: 0,
                closing: false,
            });
        }
    }

    fn close(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Some(auction) = &conn.auction
            && let Some(slots) = self.auctions.get_mut(auction)
        {
            if let Some(at) = slots.iter().position(|s| *s == slot) {
                slots.swap_remove(at);
            }
            if slots.is_empty() {
                self.auctions.remove(auction);
            }
        }
        self.free.push(slot);
        self.open -= 1;
    }

    fn on_writable(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let failed = conn.flush().is_err();
        if failed || (conn.closing && conn.pending.is_empty()) {
            self.close(slot);
        }
    }

    fn on_readable(&mut self, slot: usize) {
        let mut chunk = [0u8; 4096];
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            let read = match conn.stream.read(&mut chunk) {
                Ok(0) => return self.close(slot),
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(slot),
            };
            match conn.kind {
                // Subscribed clients have nothing to say that matters here.
                Kind::Sse | Kind::Ws => continue,
                Kind::Head | Kind::WsSubscribing | Kind::Control => {
                    conn.input.extend_from_slice(&chunk[..read]);
                }
            }
            if self.parse(slot).is_err() {
                return self.close(slot);
            }
        }
    }

    /// Handles what a connection's input holds so far.
    fn parse(&mut self, slot: usize) -> Result<(), ()> {
        loop {
            let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                return Ok(());
            };
            match conn.kind {
                Kind::Head => {
                    if !self.head(slot)? {
                        return Ok(());
                    }
                }
                Kind::WsSubscribing => {
                    if !self.subscribe_frame(slot)? {
                        return Ok(());
                    }
                }
                Kind::Control => return self.control(slot),
                Kind::Sse | Kind::Ws => return Ok(()),
            }
        }
    }

    /// Parses a request head; `Ok(true)` when one was handled.
    fn head(&mut self, slot: usize) -> Result<bool, ()> {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(false);
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        let length = match request.parse(&conn.input) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if conn.input.len() <= MAX_INPUT => return Ok(false),
            _ => return Err(()),
        };
        let method = request.method.unwrap_or("");
        let path = request.path.unwrap_or("");
        let path = path.split('?').next().unwrap_or("");
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        enum Route {
            Answer(&'static [u8]),
            Control,
            Sse(String),
            Upgrade(String),
        }
        let route = match (method, path) {
            ("GET", "/ready" | "/readyz") => {
                Route::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            }
            ("POST", "/control") => Route::Control,
            ("GET", "/ws") => match header("sec-websocket-key") {
                Some(key) => Route::Upgrade(derive_accept_key(key)),
                None => Route::Answer(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            },
            ("GET", _) => match path
                .strip_prefix("/auctions/")
                .and_then(|rest| rest.strip_suffix("/events"))
                .filter(|id| valid_id(id.as_bytes()))
            {
                Some(id) => Route::Sse(id.to_owned()),
                None => Route::Answer(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            },
            _ => Route::Answer(
                b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ),
        };
        conn.input.drain(..length);
        match route {
            Route::Answer(answer) => {
                conn.kind = Kind::Sse; // ignore anything more it sends
                conn.closing = true;
                // Closed by `write_once` once written.
                self.write_once(slot, answer.into());
                return Ok(false);
            }
            Route::Control => conn.kind = Kind::Control,
            Route::Upgrade(accept) => {
                conn.kind = Kind::WsSubscribing;
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                self.write_once(slot, answer.into_bytes().into());
            }
            Route::Sse(auction) => {
                conn.kind = Kind::Sse;
                conn.input = Vec::new();
                self.join(slot, &auction);
                self.write_once(
                    slot,
                    (&b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"[..]).into(),
                );
            }
        }
        Ok(true)
    }

    /// Reads the WebSocket client's subscribe message (a masked text
    /// frame); `Ok(true)` when it subscribed.
    fn subscribe_frame(&mut self, slot: usize) -> Result<bool, ()> {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(false);
        };
        let Some((opcode, payload, length)) = client_frame(&conn.input)? else {
            return if conn.input.len() > MAX_INPUT {
                Err(())
            } else {
                Ok(false)
            };
        };
        conn.input.drain(..length);
        match opcode {
            0x1 => {}
            0x8 => return Err(()),
            _ => return Ok(true), // a ping or the like: read on
        }
        let key = b"\"auction\":\"";
        let at = find(&payload, key).ok_or(())? + key.len();
        let end = payload[at..].iter().position(|b| *b == b'"').ok_or(())?;
        let auction = &payload[at..at + end];
        if !valid_id(auction) {
            return Err(());
        }
        let auction = String::from_utf8_lossy(auction).into_owned();
        conn.kind = Kind::Ws;
        conn.input = Vec::new();
        self.join(slot, &auction);
        let init = ws_frame(&format!(
            r#"{{"type":"init","auction":"{auction}","payload":{{}}}}"#
        ));
        self.write_once(slot, init.into());
        Ok(true)
    }

    /// Reads event lines, answering `ok\n` for each.
    fn control(&mut self, slot: usize) -> Result<(), ()> {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return Ok(());
        };
        let mut consumed = 0;
        let mut acks = 0;
        while let Some(end) = conn.input[consumed..].iter().position(|b| *b == b'\n') {
            let line = &conn.input[consumed..consumed + end];
            consumed += end + 1;
            let line = std::str::from_utf8(line).map_err(|_| ())?;
            let (auction, bid) = line.split_once(' ').ok_or(())?;
            if !valid_id(auction.as_bytes()) || bid.is_empty() || bid.contains('\r') {
                return Err(());
            }
            self.ready.push(Event {
                auction: auction.to_owned(),
                bid: bid.to_owned(),
            });
            acks += 1;
        }
        conn.input.drain(..consumed);
        if conn.input.len() > MAX_INPUT {
            return Err(());
        }
        if acks > 0 {
            self.write_once(slot, b"ok\n".repeat(acks).into());
        }
        Ok(())
    }

    fn join(&mut self, slot: usize, auction: &str) {
        let key: Rc<str> = match self.auctions.get_key_value(auction) {
            Some((key, _)) => key.clone(),
            None => auction.into(),
        };
        self.auctions.entry(key.clone()).or_default().push(slot);
        if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
            conn.auction = Some(key);
        }
    }

    /// Sends one frame to one socket (answers, `init`, acks).
    fn write_once(&mut self, slot: usize, frame: Frame) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let slices = [IoSlice::new(&frame)];
        let failed = conn.send(std::slice::from_ref(&frame), &slices).is_err();
        if failed || (conn.closing && conn.pending.is_empty()) {
            self.close(slot);
        }
    }

    /// Encodes the events read in this turn once each and writes each
    /// socket its auction's frames with one vectored write.
    fn fan_out(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        // Auctions in the order their first event came, with their frames.
        let mut batches: Vec<(&str, Vec<Frame>, Vec<Frame>)> = Vec::new();
        for event in &ready {
            if !self.auctions.contains_key(event.auction.as_str()) {
                continue; // nobody watches it
            }
            self.next_id += 1;
            let id = self.next_id;
            let sse: Frame = format!("id: {id}-0\nevent: bid\ndata: {}\n\n", event.bid)
                .into_bytes()
                .into();
            let ws: Frame = ws_frame(&format!(
                r#"{{"type":"bid","auction":"{}","id":"{id}-0","payload":{}}}"#,
                event.auction, event.bid
            ))
            .into();
            match batches.iter_mut().find(|(a, _, _)| *a == event.auction) {
                Some((_, sse_frames, ws_frames)) => {
                    sse_frames.push(sse);
                    ws_frames.push(ws);
                }
                None => batches.push((&event.auction, vec![sse], vec![ws])),
            }
        }
        let mut failed = Vec::new();
        for (auction, sse_frames, ws_frames) in &batches {
            let sse_slices: Vec<IoSlice<'_>> = sse_frames.iter().map(|f| IoSlice::new(f)).collect();
            let ws_slices: Vec<IoSlice<'_>> = ws_frames.iter().map(|f| IoSlice::new(f)).collect();
            let Some(slots) = self.auctions.get(*auction) else {
                continue;
            };
            for &slot in slots {
                let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                    continue;
                };
                let sent = match conn.kind {
                    Kind::Sse => conn.send(sse_frames, &sse_slices),
                    Kind::Ws => conn.send(ws_frames, &ws_slices),
                    _ => Ok(()),
                };
                if sent.is_err() {
                    failed.push(slot);
                }
            }
        }
        for slot in failed {
            self.close(slot);
        }
        self.ready = ready;
        self.ready.clear();
    }
}

/// Auction ids as the load generator makes them (and our edges accept).
fn valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An unmasked server text frame (RFC 6455 §5.2).
fn ws_frame(payload: &str) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload.as_bytes());
    frame
}

/// A complete masked client frame at the start of `input`: (opcode,
/// unmasked payload, frame length); `Ok(None)` if more bytes are needed,
/// `Err` if it is unmasked or too long.
#[allow(clippy::type_complexity)]
fn client_frame(input: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>, ()> {
    let (Some(first), Some(second)) = (input.first(), input.get(1)) else {
        return Ok(None);
    };
    if second & 0x80 == 0 {
        return Err(()); // clients must mask
    }
    let (len, mut at) = match second & 0x7f {
        126 => match input.get(2..4) {
            Some(bytes) => (usize::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        127 => return Err(()), // far beyond a subscribe message
        len => (usize::from(len), 2),
    };
    if len > MAX_INPUT {
        return Err(());
    }
    let Some(mask) = input.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    let Some(payload) = input.get(at..at + len) else {
        return Ok(None);
    };
    let payload = payload
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((first & 0x0f, payload, at + len)))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("floor: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut listen = "127.0.0.1:8090".to_owned();
    let mut max_connections = 100_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--listen" => listen = value,
            "--max-connections" => max_connections = value.parse().map_err(|_| USAGE)?,
            _ => return Err(USAGE.into()),
        }
    }
    let addr: SocketAddr = listen.parse().map_err(|_| USAGE)?;
    if !addr.ip().is_loopback() {
        return Err(format!("refusing to listen on {addr}: loopback only"));
    }
    let poll = Poll::new().map_err(|e| e.to_string())?;
    let mut listener = TcpListener::bind(addr).map_err(|e| format!("{addr}: {e}"))?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(|e| e.to_string())?;
    let mut server = Server {
        poll,
        listener,
        conns: Vec::new(),
        free: Vec::new(),
        open: 0,
        max_connections,
        auctions: HashMap::new(),
        ready: Vec::new(),
        next_id: 0,
    };
    server.run().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_subscribe_frame_is_read_back() {
        let payload = br#"{"type":"subscribe","auction":"a-1"}"#;
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        assert_eq!(client_frame(&frame[..frame.len() - 1]), Ok(None));
        assert_eq!(
            client_frame(&frame),
            Ok(Some((0x1, payload.to_vec(), frame.len())))
        );
        frame[1] &= 0x7f;
        assert_eq!(client_frame(&frame), Err(()), "unmasked");
    }

    #[test]
    fn server_frames_carry_their_length() {
        assert_eq!(ws_frame("ab"), b"\x81\x02ab");
        let long = "x".repeat(200);
        assert_eq!(&ws_frame(&long)[..4], &[0x81, 126, 0, 200]);
    }

    #[test]
    fn only_plain_ids_are_auctions() {
        assert!(valid_id(b"bench-12-0"));
        assert!(!valid_id(b""));
        assert!(!valid_id(b"a/b"));
        assert!(!valid_id(b"a\"b"));
    }
}
