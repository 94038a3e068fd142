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

/// Reads until a full request head is buffered. The end of the head is
/// looked for only in the bytes just read, and the head is parsed once,
/// when it is complete: a head sent a byte at a time costs one scan, not a
/// parse per byte. Returns the head and every byte read.
pub(super) async fn read_head(stream: &TcpStream) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buffer = Vec::with_capacity(1024);
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
        // A line break may straddle two reads: look back two bytes.
        let scan_from = buffer.len().saturating_sub(2);
        buffer.extend_from_slice(&chunk[..read]);
        let complete = buffer[scan_from..]
            .windows(2)
            .enumerate()
            .any(|(at, pair)| {
                pair == b"\n\n"
                    || (pair == b"\n\r" && buffer.get(scan_from + at + 2) == Some(&b'\n'))
            });
        if !complete {
            if buffer.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        return match request.parse(&buffer) {
            Ok(httparse::Status::Complete(head_len)) if head_len <= MAX_HEAD => {
                let head = RequestHead {
                    method: request.method.unwrap_or("").to_owned(),
                    target: origin_form(request.path.unwrap_or("")).to_owned(),
                    headers: request
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), Bytes::copy_from_slice(h.value)))
                        .collect(),
                    rest: Bytes::copy_from_slice(&buffer[head_len..]),
                };
                Ok((head, buffer))
            }
            Ok(_) | Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
            Err(_) => Err(HeadError::Malformed),
        };
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
}
