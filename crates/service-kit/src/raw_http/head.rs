//! Reading and parsing a connection's request head: the bytes are read
//! until an empty line ends the head, then parsed once by `httparse`,
//! within bounds on its size and its number of header lines.

use bytes::Bytes;
use std::io;
use tokio::net::TcpStream;

/// Largest request head accepted (beyond: 431).
const MAX_HEAD: usize = 16 * 1024;
/// Most header lines accepted (beyond: 431).
const MAX_HEADERS: usize = 100;

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

/// Why no request head could be read.
pub(super) enum HeadError {
    /// Over `MAX_HEAD` bytes or `MAX_HEADERS` lines: 431.
    TooLarge,
    /// Not HTTP: 400.
    Malformed,
    /// The client left, or the socket failed: nothing to answer.
    Gone,
}

/// Reads until a full request head is buffered. Returns the head and every
/// byte read (the head and what came with it).
pub(super) async fn read_head(stream: &TcpStream) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut bytes = HeadBytes::new();
    loop {
        if stream.readable().await.is_err() {
            return Err(HeadError::Gone);
        }
        let mut chunk = [0u8; 2048];
        let read = match stream.try_read(&mut chunk) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(HeadError::Gone),
        };
        if let Some(head) = bytes.push(&chunk[..read])? {
            return Ok((head, bytes.buffer));
        }
    }
}

/// The bytes of a request head as they are read, apart from the socket so
/// that how reads are cut can be tested on its own.
struct HeadBytes {
    buffer: Vec<u8>,
}

impl HeadBytes {
    fn new() -> HeadBytes {
        HeadBytes {
            buffer: Vec::with_capacity(1024),
        }
    }

    /// Adds the bytes of one read: the head once they complete it,
    /// `Ok(None)` while it is incomplete. The end of the head is looked for
    /// only in the bytes just read, and the head is parsed once, when it is
    /// complete: a head sent a byte at a time costs one scan, not a parse
    /// per byte.
    fn push(&mut self, read: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        // A line break may straddle two reads: look back two bytes.
        let scan_from = self.buffer.len().saturating_sub(2);
        self.buffer.extend_from_slice(read);
        if !ends_head(&self.buffer, scan_from) {
            if self.buffer.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        parse_head(&self.buffer).map(Some)
    }
}

/// Whether `buffer` holds an empty line (`\n\n`, or `\n\r\n`), the end of a
/// head, from `from` on.
fn ends_head(buffer: &[u8], from: usize) -> bool {
    buffer[from..].windows(2).enumerate().any(|(at, pair)| {
        pair == b"\n\n" || (pair == b"\n\r" && buffer.get(from + at + 2) == Some(&b'\n'))
    })
}

/// Parses a complete head; what follows it in `buffer` is its `rest`.
fn parse_head(buffer: &[u8]) -> Result<RequestHead, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buffer) {
        Ok(httparse::Status::Complete(head_len)) if head_len <= MAX_HEAD => Ok(RequestHead {
            method: request.method.unwrap_or("").to_owned(),
            target: origin_form(request.path.unwrap_or("")).to_owned(),
            headers: request
                .headers
                .iter()
                .map(|h| (h.name.to_owned(), Bytes::copy_from_slice(h.value)))
                .collect(),
            rest: Bytes::copy_from_slice(&buffer[head_len..]),
        }),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(_) => Err(HeadError::Malformed),
    }
}

/// The request target in origin form: an absolute-form target
/// (`http://host/path?q`, which RFC 9112 §3.2.2 says servers must accept)
/// becomes `/path?q`.
fn origin_form(target: &str) -> &str {
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return target;
    };
    match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => &rest[at..],
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

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

    #[test]
    fn absolute_form_targets_become_origin_form() {
        assert_eq!(origin_form("/auctions/1/events"), "/auctions/1/events");
        assert_eq!(
            origin_form("http://edge:8081/auctions/1/events?lastEventId=5-0"),
            "/auctions/1/events?lastEventId=5-0"
        );
        assert_eq!(origin_form("https://edge"), "/");
        assert_eq!(origin_form("http://edge?x=1"), "/");
    }

    /// Requests as clients send them, each with what may follow its head.
    const REQUESTS: [&[u8]; 5] = [
        b"GET /auctions/a-1/events?lastEventId=5-0 HTTP/1.1\r\nHost: edge\r\nAccept: text/event-stream\r\nLast-Event-ID: 7-1\r\n\r\n",
        // A WebSocket upgrade with the client's first frame (masked "Hello")
        // in the same packet.
        b"GET /auctions/a-1/ws HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
        b"POST /auctions/a-1/bids HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"amount\":\"5\"}",
        // Pipelined: a second request right behind the first.
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\nGET /readyz HTTP/1.1\r\nHost: edge\r\n\r\n",
        // Bare line feeds, which httparse accepts, and a CRLF at the end.
        b"GET /metrics HTTP/1.1\nHost: edge\nAccept: */*\n\r\n",
    ];

    /// What a reading gave: the head's fields, and every byte read.
    #[derive(Debug, PartialEq)]
    struct Read {
        method: String,
        target: String,
        headers: Vec<(String, Bytes)>,
        rest: Bytes,
        read: Vec<u8>,
    }

    impl Read {
        fn of(head: RequestHead, read: Vec<u8>) -> Read {
            Read {
                method: head.method,
                target: head.target,
                headers: head.headers,
                rest: head.rest,
                read,
            }
        }

        /// The same reading as `whole` (the request read in one piece), with
        /// `unread` left behind it.
        fn assert_as(&self, whole: &Read, unread: &[u8], what: &str) {
            assert_eq!(
                (&self.method, &self.target, &self.headers),
                (&whole.method, &whole.target, &whole.headers),
                "{what}"
            );
            assert_eq!(
                [&self.rest[..], unread].concat(),
                whole.rest,
                "{what}: bytes after the head lost"
            );
            assert_eq!([&self.read[..], unread].concat(), whole.read, "{what}");
        }
    }

    fn verdict(result: &Result<Option<RequestHead>, HeadError>) -> &'static str {
        match result {
            Ok(Some(_)) => "a head",
            Ok(None) => "a wait",
            Err(HeadError::TooLarge) => "too large",
            Err(HeadError::Malformed) => "malformed",
            Err(HeadError::Gone) => "gone",
        }
    }

    /// Pushes `pieces` in turn, as reads, until the head is complete: what
    /// was read, which piece completed it, and the pieces not pushed.
    fn read_in(pieces: &[&[u8]]) -> (Read, usize, Vec<u8>) {
        let mut bytes = HeadBytes::new();
        for (at, piece) in pieces.iter().enumerate() {
            match bytes.push(piece) {
                Ok(Some(head)) => {
                    return (Read::of(head, bytes.buffer), at, pieces[at + 1..].concat());
                }
                Ok(None) => {}
                refused => panic!("{} after piece {at}", verdict(&refused)),
            }
        }
        panic!("the head never completed");
    }

    /// The request read whole, and its head's length.
    fn whole(request: &[u8]) -> (Read, usize) {
        let (whole, _, _) = read_in(&[request]);
        let head_len = request.len() - whole.rest.len();
        (whole, head_len)
    }

    /// The piece, of pieces cut at `cuts`, that holds byte `at`.
    fn piece_holding(cuts: &[usize], at: usize) -> usize {
        cuts.iter().filter(|&&cut| cut <= at).count()
    }

    #[test]
    fn a_head_split_in_two_at_every_offset_is_read_as_when_whole() {
        for request in REQUESTS {
            let (whole, head_len) = whole(request);
            assert!(head_len > 0 && whole.read == request);
            for cut in 1..request.len() {
                let what = format!("{:?} cut at {cut}", String::from_utf8_lossy(request));
                let (read, completed_by, unread) = read_in(&[&request[..cut], &request[cut..]]);
                read.assert_as(&whole, &unread, &what);
                // Complete with the piece holding its last byte, not before.
                assert_eq!(completed_by, piece_holding(&[cut], head_len - 1), "{what}");
            }
        }
    }

    #[test]
    fn a_head_in_three_pieces_is_read_as_when_whole() {
        for request in REQUESTS {
            let (whole, head_len) = whole(request);
            for first in 1..request.len() {
                // Every pair of cuts close together, and every pair with the
                // second cut in or around the head's last empty line.
                let seconds = (first + 1..request.len())
                    .filter(|&second| second - first <= 3 || second.abs_diff(head_len) <= 4);
                for second in seconds {
                    let what = format!(
                        "{:?} cut at {first} and {second}",
                        String::from_utf8_lossy(request)
                    );
                    let pieces = [
                        &request[..first],
                        &request[first..second],
                        &request[second..],
                    ];
                    let (read, completed_by, unread) = read_in(&pieces);
                    read.assert_as(&whole, &unread, &what);
                    let holding = piece_holding(&[first, second], head_len - 1);
                    assert_eq!(completed_by, holding, "{what}");
                }
            }
        }
    }

    #[test]
    fn a_head_over_the_size_bound_is_refused() {
        // Never ending: refused once the bound is reached, not before.
        let mut bytes = HeadBytes::new();
        let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        assert_eq!(verdict(&bytes.push(b"GET / HTTP/1.1\r\n")), "a wait");
        let refused = loop {
            let pushed = bytes.push(line);
            if bytes.buffer.len() < MAX_HEAD {
                assert_eq!(verdict(&pushed), "a wait", "at {}", bytes.buffer.len());
            } else {
                break pushed;
            }
        };
        assert_eq!(verdict(&refused), "too large");

        // Complete, and of exactly the bound: taken, whole or in two.
        let sized = |size: usize| {
            let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
            head.resize(size - 4, b'a');
            head.extend_from_slice(b"\r\n\r\n");
            head
        };
        let at_bound = sized(MAX_HEAD);
        assert_eq!(verdict(&HeadBytes::new().push(&at_bound)), "a head");
        for cut in [1, MAX_HEAD / 2, MAX_HEAD - 3, MAX_HEAD - 1] {
            let (read, _, _) = read_in(&[&at_bound[..cut], &at_bound[cut..]]);
            assert!(read.rest.is_empty(), "cut at {cut}");
        }
        // A byte over it: refused, even when it comes in one read.
        assert_eq!(
            verdict(&HeadBytes::new().push(&sized(MAX_HEAD + 1))),
            "too large"
        );

        // Header lines: as many as the bound, taken; one more, refused.
        let with_lines = |count: usize| {
            let mut head = b"GET / HTTP/1.1\r\n".to_vec();
            for line in 0..count {
                head.extend_from_slice(format!("X-Line-{line}: 1\r\n").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            head
        };
        let lines = HeadBytes::new().push(&with_lines(MAX_HEADERS));
        assert_eq!(verdict(&lines), "a head");
        let lines = HeadBytes::new().push(&with_lines(MAX_HEADERS + 1));
        assert_eq!(verdict(&lines), "too large");

        let not_http = HeadBytes::new().push(b"HELLO THERE\r\n\r\n");
        assert_eq!(verdict(&not_http), "malformed");
    }

    #[test]
    fn bytes_after_the_head_are_kept() {
        let expected: [&[u8]; 5] = [
            b"",
            b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
            b"{\"amount\":\"5\"}",
            b"GET /readyz HTTP/1.1\r\nHost: edge\r\n\r\n",
            b"",
        ];
        for (request, after) in REQUESTS.into_iter().zip(expected) {
            let (read, _, _) = read_in(&[request]);
            assert_eq!(read.rest, after, "{:?}", String::from_utf8_lossy(request));
            assert_eq!(read.read, request, "every byte read is handed on");
        }
    }

    /// How long the writer waits between pieces: long enough for the
    /// reading side to take each piece in a read of its own.
    const PAUSE: Duration = Duration::from_millis(2);
    /// Bound on each wait of a socket test.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// Sends `pieces` over loopback TCP, each flushed and `PAUSE` apart,
    /// then closes; reads the head as a connection's does, then what it
    /// left in the socket.
    async fn read_from_socket(pieces: Vec<Vec<u8>>) -> (Result<(Read, usize), String>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut client = TcpStream::connect(address).await.unwrap();
            for (at, piece) in pieces.iter().enumerate() {
                if at > 0 {
                    tokio::time::sleep(PAUSE).await;
                }
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
            }
            client.shutdown().await.unwrap();
            client
        });
        let (mut server, _) = timeout(PATIENCE, listener.accept()).await.unwrap().unwrap();
        let read = match timeout(PATIENCE, read_head(&server)).await.unwrap() {
            Ok((head, read)) => {
                let head_len = read.len() - head.rest.len();
                Ok((Read::of(head, read), head_len))
            }
            Err(error) => Err(verdict(&Err(error)).to_owned()),
        };
        let mut left = Vec::new();
        timeout(PATIENCE, server.read_to_end(&mut left))
            .await
            .unwrap()
            .unwrap();
        drop(timeout(PATIENCE, writer).await.unwrap().unwrap());
        (read, left)
    }

    #[tokio::test]
    async fn a_head_read_from_a_socket_in_pieces_is_read_as_when_whole() {
        let request = REQUESTS[1];
        let (whole, head_len) = whole(request);
        let (from_socket, left) = read_from_socket(vec![request.to_vec()]).await;
        let (read, _) = from_socket.unwrap();
        read.assert_as(&whole, &left, "in one write");

        let mut splits: Vec<Vec<usize>> = (1..request.len()).map(|cut| vec![cut]).collect();
        // In three, cut inside the head's final "\r\n\r\n" and around it.
        for first in [1, head_len / 2, head_len - 5, head_len - 3] {
            for second in head_len - 3..=head_len + 2 {
                if first < second {
                    splits.push(vec![first, second]);
                }
            }
        }
        for cuts in splits {
            let mut pieces = Vec::new();
            let mut from = 0;
            for &cut in cuts.iter().chain([request.len()].iter()) {
                pieces.push(request[from..cut].to_vec());
                from = cut;
            }
            let (from_socket, left) = read_from_socket(pieces).await;
            let (read, read_head_len) = from_socket.unwrap();
            read.assert_as(&whole, &left, &format!("cut at {cuts:?}"));
            assert_eq!(read_head_len, head_len);
        }
    }

    #[tokio::test]
    async fn a_head_over_the_size_bound_from_a_socket_is_refused() {
        let mut endless = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        endless.resize(MAX_HEAD * 2, b'a');
        let pieces = endless.chunks(4096).map(<[u8]>::to_vec).collect();
        let (read, left) = read_from_socket(pieces).await;
        assert_eq!(read.err().as_deref(), Some("too large"));
        assert!(!left.is_empty(), "refused before all of it was read");
    }

    #[tokio::test]
    async fn bytes_sent_with_the_head_over_a_socket_are_kept() {
        // The upgrade and the client's first frame in one write.
        let request = REQUESTS[1];
        let (from_socket, left) = read_from_socket(vec![request.to_vec()]).await;
        let (read, head_len) = from_socket.unwrap();
        assert!(left.is_empty(), "all read with the head");
        assert_eq!(read.rest, request[head_len..]);
        assert_eq!(read.read, request);
    }
}
