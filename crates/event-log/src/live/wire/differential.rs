//! The reader checked against redis-rs's own parser
//! ([`redis::parse_redis_value`]), the one every other Redis connection of
//! the project goes through, on generated replies:
//!
//! - Replies of the kinds the live path reads (messages, subscription
//!   confirmations, pongs, statuses, errors, integers, bulk strings with any
//!   bytes, line ends included, and arrays within the bounds) are read as
//!   the same value by both; delivered in two parts split at any offset,
//!   the reader asks for more and consumes nothing until the reply is
//!   whole, then reads the same value.
//! - What the reader refuses by design (past a bound, nested too deep,
//!   RESP3's types) it refuses with an error, at once or once the bytes
//!   are in, never with a value or a panic.
//! - On bytes mutated from a valid reply, or noise, whatever the reader
//!   takes as a value redis-rs reads as the same value: bytes redis-rs
//!   finds malformed the reader never takes for a reply. One leniency is
//!   allowed: redis-rs wants a status or error line to be UTF-8, the reader
//!   does not (it only needs to know the reply is a status or an error).

use super::{MAX_ARRAY, MAX_BULK, MAX_DEPTH, MAX_LINE, Push, Reply, parse, take_reply};
use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config;
use redis::Value;

/// Cases per property. A case parses its reply once per offset it can be
/// split at (a few hundred bytes at most), so this keeps the whole file to
/// a few seconds in a debug build.
const CASES: u32 = 256;

/// A reply as both parsers can state it. redis-rs tells `+OK` apart and
/// has RESP3's types; the reader tells a null bulk string from a null
/// array. Neither difference is a disagreement.
#[derive(Debug, PartialEq)]
enum Plain {
    Status(Vec<u8>),
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Plain>),
}

impl Plain {
    fn of_reader(reply: &Reply<'_>) -> Plain {
        match reply {
            Reply::Status(text) => Plain::Status(text.to_vec()),
            Reply::Error(text) => Plain::Error(text.to_vec()),
            Reply::Integer(value) => Plain::Integer(*value),
            Reply::Bulk(Some(bytes)) => Plain::Bulk(bytes.to_vec()),
            Reply::Bulk(None) | Reply::Array(None) => Plain::Nil,
            Reply::Array(Some(items)) => Plain::Array(items.iter().map(Plain::of_reader).collect()),
        }
    }

    /// `None` for what the reader never produces (RESP3's types).
    fn of_redis(value: &Value) -> Option<Plain> {
        Some(match value {
            Value::Okay => Plain::Status(b"OK".to_vec()),
            Value::SimpleString(text) => Plain::Status(text.as_bytes().to_vec()),
            Value::ServerError(error) => Plain::Error(error_line(error)),
            Value::Int(value) => Plain::Integer(*value),
            Value::BulkString(bytes) => Plain::Bulk(bytes.clone()),
            Value::Nil => Plain::Nil,
            Value::Array(items) => {
                Plain::Array(items.iter().map(Plain::of_redis).collect::<Option<_>>()?)
            }
            _ => return None,
        })
    }

    /// Whether a status or error line in it is not UTF-8: the one thing
    /// the reader reads and redis-rs refuses.
    fn has_text_not_utf8(&self) -> bool {
        match self {
            Plain::Status(text) | Plain::Error(text) => std::str::from_utf8(text).is_err(),
            Plain::Array(items) => items.iter().any(Plain::has_text_not_utf8),
            _ => false,
        }
    }
}

/// An error reply's line as sent: redis-rs splits it at its first space
/// into a code and the details.
fn error_line(error: &redis::ServerError) -> Vec<u8> {
    let mut line = error.code().as_bytes().to_vec();
    if let Some(details) = error.details() {
        line.push(b' ');
        line.extend_from_slice(details.as_bytes());
    }
    line
}

/// What the live path should make of a reply, told from redis-rs's value
/// (the reader tells it from its own).
fn push_of(value: &Value) -> Push<Vec<u8>> {
    match value {
        Value::Okay | Value::SimpleString(_) => Push::Confirmation,
        Value::ServerError(error) => {
            Push::Error(String::from_utf8_lossy(&error_line(error)).into_owned())
        }
        Value::Array(items) => match items.as_slice() {
            [
                Value::BulkString(kind),
                Value::BulkString(channel),
                Value::BulkString(payload),
            ] if kind.eq_ignore_ascii_case(b"message") => Push::Message {
                channel: channel.clone(),
                payload: payload.clone(),
            },
            [Value::BulkString(kind), ..]
                if ["subscribe", "unsubscribe", "pong"]
                    .iter()
                    .any(|known| kind.eq_ignore_ascii_case(known.as_bytes())) =>
            {
                Push::Confirmation
            }
            _ => Push::Other,
        },
        _ => Push::Other,
    }
}

fn owned(push: Push<&[u8]>) -> Push<Vec<u8>> {
    push.map(<[u8]>::to_vec)
}

/// redis-rs's reading of `bytes`, which must be a value the reader reads.
fn redis_reads(bytes: &[u8]) -> Result<(Plain, Push<Vec<u8>>), TestCaseError> {
    let value = redis::parse_redis_value(bytes)
        .map_err(|error| TestCaseError::fail(format!("redis-rs refused it: {error}")))?;
    let plain = Plain::of_redis(&value)
        .ok_or_else(|| TestCaseError::fail(format!("not a RESP2 value: {value:?}")))?;
    Ok((plain, push_of(&value)))
}

/// A reply to send, as Redis would.
#[derive(Debug, Clone)]
enum Sent {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    NullBulk,
    NullArray,
    Array(Vec<Sent>),
}

impl Sent {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Sent::Status(text) => out.extend_from_slice(format!("+{text}\r\n").as_bytes()),
            Sent::Error(text) => out.extend_from_slice(format!("-{text}\r\n").as_bytes()),
            Sent::Integer(value) => out.extend_from_slice(format!(":{value}\r\n").as_bytes()),
            Sent::Bulk(bytes) => {
                out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Sent::NullBulk => out.extend_from_slice(b"$-1\r\n"),
            Sent::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Sent::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }

    /// How many arrays deep it is (a scalar: 0).
    fn levels(&self) -> usize {
        match self {
            Sent::Array(items) => 1 + items.iter().map(Sent::levels).max().unwrap_or(0),
            _ => 0,
        }
    }

    fn bulk(bytes: &[u8]) -> Sent {
        Sent::Bulk(bytes.to_vec())
    }
}

/// Any bytes, line ends often.
fn binary(most: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![4 => any::<u8>(), 1 => Just(b'\r'), 1 => Just(b'\n')],
        0..=most,
    )
}

/// A channel: an auction's, or any bytes.
fn channel() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "auction:\\{[a-z0-9-]{1,16}\\}:live".prop_map(String::into_bytes),
        binary(24),
    ]
}

/// A reply that is no array.
fn scalar() -> impl Strategy<Value = Sent> {
    prop_oneof![
        prop_oneof![
            Just("OK".to_owned()),
            Just("PONG".to_owned()),
            "[^\r\n]{0,24}"
        ]
        .prop_map(Sent::Status),
        "(ERR|NOAUTH|NOPERM|WRONGPASS|[A-Z]{1,8})( [^\r\n]{0,32})?".prop_map(Sent::Error),
        any::<i64>().prop_map(Sent::Integer),
        binary(64).prop_map(Sent::Bulk),
        Just(Sent::NullBulk),
        Just(Sent::NullArray),
    ]
}

/// The pushes of a subscribed connection.
fn push() -> impl Strategy<Value = Sent> {
    prop_oneof![
        (channel(), binary(96)).prop_map(|(channel, payload)| Sent::Array(vec![
            Sent::bulk(b"message"),
            Sent::Bulk(channel),
            Sent::Bulk(payload),
        ])),
        (
            prop::sample::select(vec!["subscribe", "unsubscribe"]),
            channel(),
            0..10_000i64
        )
            .prop_map(|(kind, channel, count)| Sent::Array(vec![
                Sent::bulk(kind.as_bytes()),
                Sent::Bulk(channel),
                Sent::Integer(count),
            ])),
        binary(16).prop_map(|data| Sent::Array(vec![Sent::bulk(b"pong"), Sent::Bulk(data)])),
        (channel(), channel(), binary(32)).prop_map(|(pattern, channel, payload)| {
            Sent::Array(vec![
                Sent::bulk(b"pmessage"),
                Sent::Bulk(pattern),
                Sent::Bulk(channel),
                Sent::Bulk(payload),
            ])
        }),
    ]
}

/// A reply within every bound of the reader.
fn reply() -> impl Strategy<Value = Sent> {
    let nested = scalar()
        .prop_recursive(MAX_DEPTH as u32, 32, 6, |inner| {
            prop::collection::vec(inner, 0..6).prop_map(Sent::Array)
        })
        .prop_filter("within the reader's depth", |sent| {
            sent.levels() <= MAX_DEPTH
        });
    let wide = prop::collection::vec(scalar(), MAX_ARRAY - 2..=MAX_ARRAY).prop_map(Sent::Array);
    prop_oneof![4 => push(), 3 => scalar(), 2 => nested, 1 => wide]
}

/// A reply the reader refuses by design, and whether redis-rs reads it
/// (a bulk string's length past the bound is sent without its body).
fn refused() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let resp3 = prop::sample::select(vec![
        &b"%1\r\n+key\r\n:1\r\n"[..],
        b"~2\r\n:1\r\n:2\r\n",
        b"_\r\n",
        b",1.5\r\n",
        b"#t\r\n",
        b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nb\r\n",
        b"=8\r\ntxt:text\r\n",
        b"(12345678901234567890\r\n",
        b"!7\r\nERR bad\r\n",
        b"|1\r\n+key\r\n:1\r\n:2\r\n",
    ]);
    prop_oneof![
        (MAX_BULK + 1..MAX_BULK + 4096)
            .prop_map(|length| (format!("${length}\r\n").into_bytes(), false)),
        (MAX_ARRAY + 1..=MAX_ARRAY * 4).prop_map(|count| {
            let mut bytes = format!("*{count}\r\n").into_bytes();
            for _ in 0..count {
                bytes.extend_from_slice(b":1\r\n");
            }
            (bytes, true)
        }),
        (MAX_DEPTH + 1..=MAX_DEPTH + 8).prop_map(|levels| {
            let mut bytes = b"*1\r\n".repeat(levels);
            bytes.extend_from_slice(b":1\r\n");
            (bytes, true)
        }),
        (resp3, prop::collection::vec(scalar(), 0..3), any::<Index>()).prop_map(
            |(resp3, others, at)| {
                // Alone, or as one item of an array.
                let mut items: Vec<Vec<u8>> = others.iter().map(Sent::bytes).collect();
                if items.is_empty() {
                    return (resp3.to_vec(), true);
                }
                items.insert(at.index(items.len() + 1), resp3.to_vec());
                let mut bytes = format!("*{}\r\n", items.len()).into_bytes();
                bytes.extend(items.concat());
                (bytes, true)
            }
        ),
        (MAX_LINE + 1..MAX_LINE + 64).prop_map(|length| {
            let mut bytes = vec![b'+'];
            bytes.resize(length + 1, b'a');
            bytes.extend_from_slice(b"\r\n");
            (bytes, true)
        }),
    ]
}

/// A byte that matters to RESP, or any.
fn resp_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        1 => any::<u8>(),
        2 => prop::sample::select(b"\r\n+-:$*0123456789".to_vec()),
    ]
}

/// A valid reply with one byte changed, removed or added, or cut short and
/// followed by noise; or noise alone.
fn malformed() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (reply(), 0..4u8, any::<Index>(), resp_byte(), binary(8)).prop_map(
        |(sent, how, at, byte, noise)| {
            let mut bytes = sent.bytes();
            let at = at.index(bytes.len());
            match how {
                0 => bytes[at] = byte,
                1 => {
                    bytes.remove(at);
                }
                2 => bytes.insert(at, byte),
                _ => {
                    bytes.truncate(at);
                    bytes.extend(noise);
                }
            }
            bytes
        },
    );
    let noise = prop::collection::vec(resp_byte(), 0..48);
    prop_oneof![3 => mutated, 1 => noise]
}

proptest! {
    #![proptest_config(Config::with_cases(CASES))]

    #[test]
    fn a_reply_is_read_as_redis_rs_reads_it(sent in reply()) {
        let bytes = sent.bytes();
        let (expected, push) = redis_reads(&bytes)?;
        let Ok(Some((reply, length))) = parse(&bytes) else {
            return Err(TestCaseError::fail(format!("not read whole: {:?}", parse(&bytes))));
        };
        prop_assert_eq!(length, bytes.len());
        prop_assert_eq!(Plain::of_reader(&reply), expected);
        prop_assert_eq!(owned(Push::of(reply)), push);
    }

    #[test]
    fn a_reply_split_at_every_offset_is_waited_for_then_read_the_same(sent in reply()) {
        let bytes = sent.bytes();
        let (expected, push) = redis_reads(&bytes)?;
        for cut in 0..bytes.len() {
            let mut buffer = BytesMut::from(&bytes[..cut]);
            prop_assert_eq!(parse(&buffer), Ok(None), "cut at {}", cut);
            prop_assert_eq!(take_reply(&mut buffer, owned), Ok(None), "cut at {}", cut);
            prop_assert_eq!(&buffer[..], &bytes[..cut], "consumed at cut {}", cut);
            // The rest arrives, as the next read of the socket.
            buffer.extend_from_slice(&bytes[cut..]);
            let Ok(Some((reply, length))) = parse(&buffer) else {
                return Err(TestCaseError::fail(format!("not read whole after cut {cut}")));
            };
            prop_assert_eq!(length, bytes.len());
            prop_assert_eq!(&Plain::of_reader(&reply), &expected);
            let read = owned(Push::of(reply));
            prop_assert_eq!(take_reply(&mut buffer, owned), Ok(Some(read)));
            prop_assert!(buffer.is_empty(), "left {:?} after cut {}", &buffer[..], cut);
        }
        let mut whole = BytesMut::from(&bytes[..]);
        prop_assert_eq!(take_reply(&mut whole, owned), Ok(Some(push)));
    }

    #[test]
    fn replies_back_to_back_are_taken_one_at_a_time(first in reply(), second in reply()) {
        let (first, second) = (first.bytes(), second.bytes());
        let (_, first_push) = redis_reads(&first)?;
        let (_, second_push) = redis_reads(&second)?;
        let mut buffer = BytesMut::from(&[&first[..], &second[..]].concat()[..]);
        prop_assert_eq!(take_reply(&mut buffer, owned), Ok(Some(first_push)));
        prop_assert_eq!(&buffer[..], &second[..]);
        prop_assert_eq!(take_reply(&mut buffer, owned), Ok(Some(second_push)));
        prop_assert!(buffer.is_empty());
    }

    #[test]
    fn what_the_reader_refuses_it_refuses_with_an_error((bytes, redis_reads_it) in refused()) {
        if redis_reads_it {
            // A bound or a type of the reader's, not a misreading.
            prop_assert!(redis::parse_redis_value(&bytes).is_ok());
        }
        prop_assert!(parse(&bytes).is_err(), "accepted {:?}", String::from_utf8_lossy(&bytes));
        let mut buffer = BytesMut::from(&bytes[..]);
        prop_assert!(take_reply(&mut buffer, owned).is_err());
        prop_assert_eq!(&buffer[..], &bytes[..], "an error consumes nothing");
        // Before it is all in: a wait or the same refusal, never a value.
        // Every cut of the short ones; a few of the long lines.
        let cuts: Vec<usize> = if bytes.len() <= 1024 {
            (0..bytes.len()).collect()
        } else {
            vec![0, 1, bytes.len() / 2, bytes.len() - 2, bytes.len() - 1]
        };
        for cut in cuts {
            prop_assert!(!matches!(parse(&bytes[..cut]), Ok(Some(_))), "a value at cut {}", cut);
        }
    }

    #[test]
    fn what_redis_rs_finds_malformed_the_reader_never_takes_for_a_reply(bytes in malformed()) {
        let Ok(Some((reply, _))) = parse(&bytes) else {
            // Refused, or waiting for more: no value taken.
            return Ok(());
        };
        let read = Plain::of_reader(&reply);
        match redis::parse_redis_value(&bytes) {
            Ok(value) => prop_assert_eq!(Some(read), Plain::of_redis(&value)),
            Err(error) => prop_assert!(
                read.has_text_not_utf8(),
                "read {:?} from {:?}, which redis-rs refuses: {}",
                read,
                String::from_utf8_lossy(&bytes),
                error
            ),
        }
    }
}
