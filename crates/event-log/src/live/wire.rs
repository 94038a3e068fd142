//! A pub/sub connection to one Redis node over plain TCP, spoken (RESP2)
//! on the task that owns it.
//!
//! Why not redis-rs's pub/sub here: it runs a connection task of its own,
//! which parses each push into a generic value and hands it over an
//! unbounded channel to the task that reads the notices. With a thousand
//! auctions of a few clients each, that second task and its hand-off are
//! a measurable share of an edge's work per event (BENCHMARKS.md, "Where
//! the time goes"). Here the hub's own task reads the socket and turns a
//! notice into an event in place: one wake-up per readable socket, however
//! many notices it holds. TLS and unix-socket connections still use
//! redis-rs (see `LiveConnection::open`).
//!
//! Invariant: replies arrive in the order commands were sent, and every
//! command we send (`AUTH`, `SUBSCRIBE`, `UNSUBSCRIBE`, `PING`) is awaited
//! until all its replies are read, so a confirmation read outside
//! [`Wire::call`] belongs to no one and is skipped. A call that is
//! cancelled (its deadline passed) leaves the connection unusable; the
//! caller drops it, as it does any connection that timed out.

use super::{LiveMessage, notice_on};
use crate::error::LogError;
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest bulk string accepted in a reply. A notice is a few hundred
/// bytes; a foreign publisher's giant message on one of our channels ends
/// the connection (the hub reconnects and backfills) instead of growing
/// the buffer without bound.
const MAX_BULK: usize = 4 << 20;
/// Longest status, error or integer line accepted.
const MAX_LINE: usize = 64 << 10;
/// Most elements accepted in one array reply (a push has three).
const MAX_ARRAY: usize = 64;
/// Deepest nesting of arrays accepted (pushes are flat).
const MAX_DEPTH: usize = 4;
/// Notices that arrived while a command waited for its replies, kept in
/// order for [`Wire::next`]. Past it the connection counts as lost (the
/// hub resubscribes and backfills): nothing is dropped unnoticed.
const MAX_PENDING: usize = 65_536;
/// How much room each read asks for.
const READ_CHUNK: usize = 64 << 10;

/// The connection: a socket, what was read from it and not parsed yet, and
/// the notices a command's wait set aside.
pub(super) struct Wire {
    socket: TcpStream,
    /// Bytes read and not parsed yet: at most one incomplete reply after
    /// the complete ones the last read brought.
    buffer: BytesMut,
    /// Notices read while [`Wire::call`] waited, oldest first; bounded by
    /// `MAX_PENDING`.
    pending: VecDeque<LiveMessage>,
}

impl Wire {
    /// Connects and, when credentials are given, authenticates (`AUTH
    /// [user] password`, RESP2: the protocol pub/sub replies are read in).
    pub(super) async fn connect(
        host: &str,
        port: u16,
        username: Option<&str>,
        password: Option<&str>,
    ) -> Result<Wire, LogError> {
        let socket = TcpStream::connect((host, port))
            .await
            .map_err(|error| LogError::Unavailable(format!("pub/sub connect: {error}")))?;
        // A command (a subscription) should leave at once, not wait for
        // the previous segment's acknowledgement.
        socket
            .set_nodelay(true)
            .map_err(|error| LogError::Unavailable(format!("pub/sub connect: {error}")))?;
        let mut wire = Wire {
            socket,
            buffer: BytesMut::with_capacity(READ_CHUNK),
            pending: VecDeque::new(),
        };
        if let Some(password) = password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            auth.extend(username.map(str::as_bytes));
            auth.push(password.as_bytes());
            wire.call(&auth, 1).await?;
        }
        Ok(wire)
    }

    /// Sends one command and reads until it has had `replies` replies; an
    /// error reply fails it. Notices read meanwhile are kept for
    /// [`Wire::next`].
    pub(super) async fn call(&mut self, args: &[&[u8]], replies: usize) -> Result<(), LogError> {
        self.send_and_read(&encode_command(args), replies).await
    }

    /// Sends several commands at once (one write) and reads one reply to
    /// each; the first error reply fails it. A cluster's sharded
    /// subscriptions go so: one `SSUBSCRIBE` may not cross slots.
    pub(super) async fn call_each(&mut self, commands: &[Vec<&[u8]>]) -> Result<(), LogError> {
        let encoded: Vec<u8> = commands
            .iter()
            .flat_map(|args| encode_command(args))
            .collect();
        self.send_and_read(&encoded, commands.len()).await
    }

    async fn send_and_read(&mut self, command: &[u8], replies: usize) -> Result<(), LogError> {
        self.socket
            .write_all(command)
            .await
            .map_err(|error| LogError::Unavailable(format!("pub/sub write: {error}")))?;
        let mut left = replies;
        while left > 0 {
            match self.read_reply().await? {
                Push::Message { channel, payload } => {
                    if self.pending.len() >= MAX_PENDING {
                        return Err(LogError::Unavailable(
                            "too many notices arrived while subscribing".into(),
                        ));
                    }
                    self.pending.extend(to_message(&channel, &payload));
                }
                Push::Confirmation | Push::Dropped => left -= 1,
                Push::Error(error) => return Err(LogError::Unavailable(error)),
                Push::Other => {}
            }
        }
        Ok(())
    }

    /// The next notice; `None` once the connection has ended (closed,
    /// failed, or a reply we cannot read). Cancel-safe: a read that does
    /// not complete has consumed nothing, and a reply is parsed and taken
    /// off the buffer in one step.
    pub(super) async fn next(&mut self) -> Option<LiveMessage> {
        if let Some(message) = self.pending.pop_front() {
            return Some(message);
        }
        loop {
            match take_reply(&mut self.buffer, Taken::of) {
                Ok(Some(Taken::Message(message))) => return Some(message),
                // A confirmation no call waits for, or a reply we do not use.
                Ok(Some(Taken::Skipped)) => continue,
                Ok(Some(Taken::Error(error))) => {
                    tracing::warn!(%error, "Redis sent an error on the pub/sub connection");
                    return None;
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "unreadable reply on the pub/sub connection");
                    return None;
                }
            }
            if self.read_more().await.is_err() {
                return None;
            }
        }
    }

    /// The next reply, read for [`Wire::call`].
    async fn read_reply(&mut self) -> Result<Push<Vec<u8>>, LogError> {
        loop {
            let owned = |push: Push<&[u8]>| push.map(<[u8]>::to_vec);
            if let Some(push) = take_reply(&mut self.buffer, owned).map_err(LogError::Corrupt)? {
                return Ok(push);
            }
            self.read_more().await?;
        }
    }

    /// Reads what the socket has into the buffer (at least one byte).
    /// Cancel-safe: a read that does not complete has read nothing.
    async fn read_more(&mut self) -> Result<(), LogError> {
        self.buffer.reserve(READ_CHUNK);
        match self.socket.read_buf(&mut self.buffer).await {
            Ok(0) => Err(LogError::Unavailable("pub/sub connection closed".into())),
            Err(error) => Err(LogError::Unavailable(format!("pub/sub read: {error}"))),
            Ok(_) => Ok(()),
        }
    }
}

/// What one complete reply taken off the buffer was, for [`Wire::next`].
enum Taken {
    Message(LiveMessage),
    Skipped,
    Error(String),
}

impl Taken {
    fn of(push: Push<&[u8]>) -> Taken {
        match push {
            Push::Message { channel, payload } => match to_message(channel, payload) {
                Some(message) => Taken::Message(message),
                None => Taken::Skipped,
            },
            Push::Error(error) => Taken::Error(error),
            // No call waits for it: the server dropped the subscription.
            Push::Dropped => {
                Taken::Error("the server dropped a sharded subscription (its slot moved)".into())
            }
            Push::Confirmation | Push::Other => Taken::Skipped,
        }
    }
}

/// Parses the first reply in `buffer` and removes it, giving what `what`
/// makes of it (while it still borrows the buffer); `Ok(None)` while it is
/// incomplete (nothing removed).
fn take_reply<T>(
    buffer: &mut BytesMut,
    what: impl FnOnce(Push<&[u8]>) -> T,
) -> Result<Option<T>, String> {
    let Some((reply, length)) = parse(buffer)? else {
        return Ok(None);
    };
    let taken = what(Push::of(reply));
    buffer.advance(length);
    Ok(Some(taken))
}

/// A message's channel and payload as the live path's message; `None` if
/// the channel is not an auction's (see [`notice_on`]).
fn to_message(channel: &[u8], payload: &[u8]) -> Option<LiveMessage> {
    notice_on(std::str::from_utf8(channel).ok()?, payload)
}

/// A command as RESP: an array of bulk strings.
fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let size: usize = args.iter().map(|arg| arg.len() + 16).sum();
    let mut out = Vec::with_capacity(size + 16);
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What a reply means on a pub/sub connection.
#[derive(Debug, PartialEq, Eq)]
enum Push<B> {
    /// `message` (`smessage` in a cluster): a publish on a subscribed
    /// channel.
    Message { channel: B, payload: B },
    /// The reply a command waits for: one `subscribe` or `unsubscribe`
    /// per channel, `pong` (an array once subscribed, `+PONG` before),
    /// `+OK` to `AUTH`.
    Confirmation,
    /// `sunsubscribe`: the reply to ours, or, when no call waits for it,
    /// the server dropping a sharded subscription whose slot moved away.
    Dropped,
    /// An error reply (`-NOAUTH ...`, `-NOPERM ...`).
    Error(String),
    /// Anything else (a pattern message, which we never subscribe to).
    Other,
}

impl<'a> Push<&'a [u8]> {
    fn of(reply: Reply<'a>) -> Push<&'a [u8]> {
        match reply {
            Reply::Status(_) => Push::Confirmation,
            Reply::Error(error) => Push::Error(String::from_utf8_lossy(error).into_owned()),
            Reply::Array(Some(items)) => match items.as_slice() {
                [
                    Reply::Bulk(Some(kind)),
                    Reply::Bulk(Some(channel)),
                    Reply::Bulk(Some(payload)),
                ] if kind.eq_ignore_ascii_case(b"message")
                    || kind.eq_ignore_ascii_case(b"smessage") =>
                {
                    Push::Message { channel, payload }
                }
                [Reply::Bulk(Some(kind)), ..] if kind.eq_ignore_ascii_case(b"sunsubscribe") => {
                    Push::Dropped
                }
                [Reply::Bulk(Some(kind)), ..]
                    if [&b"subscribe"[..], b"unsubscribe", b"ssubscribe", b"pong"]
                        .iter()
                        .any(|known| kind.eq_ignore_ascii_case(known)) =>
                {
                    Push::Confirmation
                }
                _ => Push::Other,
            },
            _ => Push::Other,
        }
    }

    fn map<T>(self, f: impl Fn(&'a [u8]) -> T) -> Push<T> {
        match self {
            Push::Message { channel, payload } => Push::Message {
                channel: f(channel),
                payload: f(payload),
            },
            Push::Confirmation => Push::Confirmation,
            Push::Dropped => Push::Dropped,
            Push::Error(error) => Push::Error(error),
            Push::Other => Push::Other,
        }
    }
}

/// One RESP2 reply, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
enum Reply<'a> {
    Status(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    /// `None`: the null bulk string.
    Bulk(Option<&'a [u8]>),
    /// `None`: the null array.
    Array(Option<Vec<Reply<'a>>>),
}

/// Parses the first reply in `input`: with its length in bytes when it is
/// complete, `Ok(None)` when more bytes are needed, an error when the
/// bytes are not RESP2 or pass the bounds above.
fn parse(input: &[u8]) -> Result<Option<(Reply<'_>, usize)>, String> {
    let mut at = 0;
    Ok(reply(input, &mut at, 0)?.map(|reply| (reply, at)))
}

/// The reply at `input[*at..]`, advancing `at` past it when complete.
fn reply<'a>(input: &'a [u8], at: &mut usize, depth: usize) -> Result<Option<Reply<'a>>, String> {
    let start = *at;
    let Some(line) = line(input, at)? else {
        return Ok(None);
    };
    let Some((&kind, rest)) = line.split_first() else {
        return Err("an empty reply line".into());
    };
    let parsed = match kind {
        b'+' => Reply::Status(rest),
        b'-' => Reply::Error(rest),
        b':' => Reply::Integer(integer(rest)?),
        b'$' => match length(rest, MAX_BULK, "a bulk string")? {
            None => Reply::Bulk(None),
            Some(length) => {
                let end = *at + length;
                if input.len() < end + 2 {
                    *at = start;
                    return Ok(None);
                }
                if &input[end..end + 2] != b"\r\n" {
                    return Err("a bulk string without its line end".into());
                }
                *at = end + 2;
                Reply::Bulk(Some(&input[end - length..end]))
            }
        },
        b'*' => match length(rest, MAX_ARRAY, "an array")? {
            None => Reply::Array(None),
            Some(count) => {
                if depth >= MAX_DEPTH {
                    return Err("arrays nested too deep".into());
                }
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    match reply(input, at, depth + 1)? {
                        Some(item) => items.push(item),
                        None => {
                            *at = start;
                            return Ok(None);
                        }
                    }
                }
                Reply::Array(Some(items))
            }
        },
        other => return Err(format!("a reply of unknown type {:?}", char::from(other))),
    };
    Ok(Some(parsed))
}

/// The line at `input[*at..]` without its `\r\n`, advancing `at` past it.
fn line<'a>(input: &'a [u8], at: &mut usize) -> Result<Option<&'a [u8]>, String> {
    let rest = &input[*at..];
    let Some(newline) = rest.iter().take(MAX_LINE + 2).position(|&b| b == b'\n') else {
        if rest.len() > MAX_LINE + 1 {
            return Err("a reply line too long".into());
        }
        return Ok(None);
    };
    let Some(line) = rest[..newline].strip_suffix(b"\r") else {
        return Err("a reply line ending in a bare \\n".into());
    };
    *at += newline + 1;
    Ok(Some(line))
}

/// A bulk string's or an array's length line: `None` for a null one
/// (negative), an error past `max`.
fn length(digits: &[u8], max: usize, what: &str) -> Result<Option<usize>, String> {
    let length = integer(digits)?;
    if length < 0 {
        return Ok(None);
    }
    match usize::try_from(length) {
        Ok(length) if length <= max => Ok(Some(length)),
        _ => Err(format!("{what} of length {length}")),
    }
}

fn integer(digits: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("{:?} is not an integer", String::from_utf8_lossy(digits)))
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> (Reply<'_>, usize) {
        match parse(input) {
            Ok(Some(parsed)) => parsed,
            other => panic!("expected a complete reply, got {other:?}"),
        }
    }

    #[test]
    fn a_published_message_is_read_as_its_channel_and_payload() {
        let input = b"*3\r\n$7\r\nmessage\r\n$13\r\nauction:{a}:l\r\n$5\r\nhe\r\no\r\n";
        let (reply, length) = complete(input);
        assert_eq!(length, input.len());
        assert_eq!(
            Push::of(reply),
            Push::Message {
                channel: &b"auction:{a}:l"[..],
                payload: &b"he\r\no"[..],
            },
            "a payload may hold line ends: its length decides"
        );
    }

    #[test]
    fn every_prefix_of_a_reply_asks_for_more_and_consumes_nothing() {
        let input = b"*3\r\n$7\r\nmessage\r\n$3\r\nabc\r\n$0\r\n\r\n";
        for cut in 0..input.len() {
            assert_eq!(parse(&input[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(complete(input).1, input.len());
    }

    #[test]
    fn two_replies_in_one_read_are_taken_one_at_a_time() {
        let first = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n";
        let second = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n";
        let input = [&first[..], &second[..]].concat();
        let (reply, length) = complete(&input);
        assert_eq!(length, first.len());
        assert_eq!(Push::of(reply), Push::Confirmation);
        let (reply, length) = complete(&input[first.len()..]);
        assert_eq!(length, second.len());
        assert_eq!(Push::of(reply), Push::Confirmation);
    }

    #[test]
    fn confirmations_errors_and_other_replies_are_told_apart() {
        let kinds = [
            (&b"+OK\r\n"[..], Push::Confirmation),
            (b"+PONG\r\n", Push::Confirmation),
            (
                b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n",
                Push::Confirmation,
            ),
            (
                b"-NOPERM this user has no permissions\r\n",
                Push::Error("NOPERM this user has no permissions".into()),
            ),
            (
                b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$1\r\na\r\n$1\r\nx\r\n",
                Push::Other,
            ),
            (b":3\r\n", Push::Other),
            (b"$-1\r\n", Push::Other),
            (b"*-1\r\n", Push::Other),
        ];
        for (input, expected) in kinds {
            let (reply, length) = complete(input);
            assert_eq!(length, input.len());
            assert_eq!(
                Push::of(reply),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn bytes_that_are_not_resp_or_pass_a_bound_are_an_error_not_a_wait() {
        let too_big = format!("${}\r\n", MAX_BULK + 1);
        let too_many = format!("*{}\r\n", MAX_ARRAY + 1);
        let too_long = vec![b'+'; MAX_LINE + 2];
        let too_deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        let bad: [&[u8]; 8] = [
            b"?what\r\n",
            b"\r\n",
            b":12x\r\n",
            b"$3\r\nabcd\r\n",
            b"+OK\n",
            too_big.as_bytes(),
            too_many.as_bytes(),
            &too_long,
        ];
        for input in bad {
            assert!(
                parse(input).is_err(),
                "{:?} was accepted",
                String::from_utf8_lossy(input)
            );
        }
        assert!(parse(too_deep.as_bytes()).is_err());
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        assert_eq!(
            encode_command(&[b"SUBSCRIBE", b"a b", b""]),
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\na b\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn a_taken_reply_leaves_the_rest_of_the_buffer() {
        let mut buffer = BytesMut::from(
            &b"*3\r\n$7\r\nmessage\r\n$18\r\nauction:{a-1}:live\r\n$1\r\n?\r\n*3\r\n$7"[..],
        );
        match take_reply(&mut buffer, Taken::of) {
            Ok(Some(Taken::Message(LiveMessage::Malformed { channel }))) => {
                assert_eq!(channel, "auction:{a-1}:live", "not a notice: malformed");
            }
            _ => panic!("expected the message"),
        }
        assert_eq!(&buffer[..], b"*3\r\n$7");
        assert!(matches!(take_reply(&mut buffer, Taken::of), Ok(None)));
        assert_eq!(&buffer[..], b"*3\r\n$7", "an incomplete reply stays");
    }
}
