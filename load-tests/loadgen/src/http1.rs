//! One HTTP/1.1 keep-alive connection: how an application posts to an API
//! over a connection it keeps open. Used to publish a scenario's events
//! over a single connection (the bidder's bid API for our system, nchan's
//! publisher location for nginx), one request at a time ([`KeepAlive::post`])
//! or pipelined ([`KeepAlive::send`] on schedule, answers taken in order as
//! they arrive).

use crate::wire::find;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// A response body larger than this is refused.
const MAX_BODY: usize = 1024 * 1024;
/// How long an answer may take once its request is sent.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer: its status and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What the reader task hands over: an answer and whether the server
/// closes the connection after it, or why reading stopped.
type Read = Result<(Answer, bool), String>;

/// One connection to `addr` (`host:port`), opened on first use and opened
/// again only if the server closed it with no request in flight.
pub struct KeepAlive {
    addr: String,
    open: Option<Open>,
    /// Connections opened so far: 1 while the server keeps the first open.
    pub opened: usize,
}

struct Open {
    write: OwnedWriteHalf,
    /// Answers in the order of the requests, from the task reading them.
    answers: mpsc::UnboundedReceiver<Read>,
    reader: tokio::task::JoinHandle<()>,
    /// Requests sent whose answer was not taken yet.
    in_flight: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl KeepAlive {
    pub fn new(addr: &str) -> KeepAlive {
        KeepAlive {
            addr: addr.to_owned(),
            open: None,
            opened: 0,
        }
    }

    /// Requests sent whose answer was not taken yet.
    pub fn in_flight(&self) -> usize {
        self.open.as_ref().map_or(0, |open| open.in_flight)
    }

    /// `POST path` and its answer, one request at a time.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, String> {
        if self.in_flight() > 0 {
            return Err("a request is already in flight".into());
        }
        self.send(path, headers, body).await?;
        self.answer().await
    }

    /// Writes `POST path` with `headers` (name, value) and a body, without
    /// waiting for its answer ([`KeepAlive::answer`] takes answers in
    /// order). On a failure the connection is dropped.
    pub async fn send(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), String> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let open = self.connect().await?;
                self.open.insert(open)
            }
        };
        let written = tokio::time::timeout(ANSWER_TIMEOUT, open.write.write_all(&bytes)).await;
        match written {
            Ok(Ok(())) => {
                open.in_flight += 1;
                Ok(())
            }
            Ok(Err(error)) => {
                self.open = None;
                Err(format!("POST {path}: {error}"))
            }
            Err(_) => {
                self.open = None;
                Err(format!("POST {path}: not written in {ANSWER_TIMEOUT:?}"))
            }
        }
    }

    /// The answer to the oldest request in flight.
    pub async fn answer(&mut self) -> Result<Answer, String> {
        let Some(open) = &mut self.open else {
            return Err("no request in flight".into());
        };
        if open.in_flight == 0 {
            return Err("no request in flight".into());
        }
        let read = tokio::time::timeout(ANSWER_TIMEOUT, open.answers.recv())
            .await
            .unwrap_or_else(|_| Some(Err(format!("no answer in {ANSWER_TIMEOUT:?}"))))
            .unwrap_or_else(|| Err("the connection's reader stopped".into()));
        self.took(read)
    }

    /// The answer to the oldest request in flight if it has arrived.
    pub fn ready_answer(&mut self) -> Option<Result<Answer, String>> {
        let open = self.open.as_mut()?;
        if open.in_flight == 0 {
            return None;
        }
        let read = open.answers.try_recv().ok()?;
        Some(self.took(read))
    }

    /// Books an answer taken off the reader's queue.
    fn took(&mut self, read: Read) -> Result<Answer, String> {
        let Some(open) = &mut self.open else {
            return Err("no request in flight".into());
        };
        open.in_flight -= 1;
        match read {
            Ok((answer, close)) => {
                if close {
                    if open.in_flight > 0 {
                        let lost = open.in_flight;
                        self.open = None;
                        return Err(format!(
                            "the server closed the connection with {lost} requests unanswered"
                        ));
                    }
                    self.open = None;
                }
                Ok(answer)
            }
            Err(error) => {
                self.open = None;
                Err(error)
            }
        }
    }

    async fn connect(&mut self) -> Result<Open, String> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("{}: {e}", self.addr))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        self.opened += 1;
        let (read, write) = stream.into_split();
        let (sender, answers) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_answers(read, sender));
        Ok(Open {
            write,
            answers,
            reader,
            in_flight: 0,
        })
    }
}

/// Reads answers off `read` as they arrive and queues each, until the
/// connection ends, fails or says it closes.
async fn read_answers(
    mut read: tokio::net::tcp::OwnedReadHalf,
    answers: mpsc::UnboundedSender<Read>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match parse_response(&buffer) {
            Ok(Some((answer, used, close))) => {
                buffer.drain(..used);
                if answers.send(Ok((answer, close))).is_err() || close {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                let _ = answers.send(Err(error));
                return;
            }
        }
        match read.read(&mut chunk).await {
            Ok(0) => {
                let _ = answers.send(Err("the server closed the connection".into()));
                return;
            }
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) => {
                let _ = answers.send(Err(error.to_string()));
                return;
            }
        }
    }
}

/// A complete response at the start of `buffer`: the answer, how many
/// bytes it took, and whether the server closes the connection after it;
/// `None` while more bytes are needed. The body's length comes from
/// `Content-Length` or chunked encoding; a body delimited by the
/// connection's end is refused (neither server sends one).
pub fn parse_response(buffer: &[u8]) -> Result<Option<(Answer, usize, bool)>, String> {
    let Some(head_end) = find(buffer, b"\r\n\r\n") else {
        return if buffer.len() > MAX_HEAD {
            Err("response head too large".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buffer[..head_end])
        .map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = status_line.starts_with("HTTP/1.0");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let parsed = value
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if parsed > MAX_BODY {
                return Err(format!("body of {parsed} bytes is too large"));
            }
            length = Some(parsed);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let body_start = head_end + 4;
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let (body, used) = if no_body {
        (Vec::new(), body_start)
    } else if chunked {
        match dechunk(&buffer[body_start..])? {
            Some((body, used)) => (body, body_start + used),
            None => return Ok(None),
        }
    } else if let Some(length) = length {
        if buffer.len() < body_start + length {
            return Ok(None);
        }
        (
            buffer[body_start..body_start + length].to_vec(),
            body_start + length,
        )
    } else {
        return Err(format!("a {status} response without a length"));
    };
    Ok(Some((Answer { status, body }, used, close)))
}

/// A complete chunked body at the start of `bytes` (trailers skipped):
/// the body and how many bytes it took, `None` while incomplete.
fn dechunk(bytes: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find(&bytes[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&bytes[at..at + line_end])
            .map_err(|_| "bad chunk size line".to_owned())?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        at += line_end + 2;
        if size == 0 {
            // Trailer lines, if any, then an empty line.
            loop {
                let Some(end) = find(&bytes[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err("chunked body too large".into());
        }
        if bytes.len() < at + size + 2 {
            return Ok(None);
        }
        if &bytes[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_response_is_read_only_once_whole() {
        let cases: [(&[u8], Answer, bool); 4] = [
            (
                b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"id\":\"5-0\"}\n",
                answer(201, "{\"id\":\"5-0\"}\n"),
                false,
            ),
            (
                b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nqueue\r\n3\r\nd: \r\n0\r\nX-T: 1\r\n\r\n",
                answer(202, "queued: "),
                false,
            ),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                answer(503, ""),
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                answer(204, ""),
                false,
            ),
        ];
        for (bytes, expected, close) in cases {
            for cut in 0..bytes.len() {
                assert_eq!(parse_response(&bytes[..cut]), Ok(None), "cut at {cut}");
            }
            let mut pipelined = bytes.to_vec();
            pipelined.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            assert_eq!(
                parse_response(&pipelined),
                Ok(Some((expected, bytes.len(), close)))
            );
        }
    }

    /// A server on loopback that reads `requests` whole requests (each
    /// with a `Content-Length` body) before it answers any, then answers
    /// them all in one write; the last answer says `Connection: close`
    /// when `close`.
    async fn server(
        listener: &tokio::net::TcpListener,
        requests: usize,
        close: bool,
    ) -> Vec<String> {
        let Ok((mut stream, _)) = listener.accept().await else {
            panic!("accept")
        };
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 1024];
        let mut heads = Vec::new();
        while heads.len() < requests {
            let read = stream.read(&mut chunk).await.expect("read");
            assert!(read > 0, "the client hung up");
            buffer.extend_from_slice(&chunk[..read]);
            while let Some(end) = find(&buffer, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("Content-Length: "))
                    .and_then(|value| value.parse().ok())
                    .expect("a Content-Length");
                if buffer.len() < end + 4 + length {
                    break;
                }
                buffer.drain(..end + 4 + length);
                heads.push(head);
            }
        }
        let mut answers = String::new();
        for (i, _) in heads.iter().enumerate() {
            let last = i + 1 == heads.len();
            let connection = if close && last {
                "Connection: close\r\n"
            } else {
                ""
            };
            answers.push_str(&format!(
                "HTTP/1.1 {} OK\r\n{connection}Content-Length: 1\r\n\r\n{}",
                201 + i,
                i
            ));
        }
        stream.write_all(answers.as_bytes()).await.expect("write");
        heads
    }

    #[tokio::test]
    async fn requests_are_pipelined_on_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let mut conn = KeepAlive::new(&addr);
        let serving = async {
            let first = server(&listener, 3, true).await;
            let second = server(&listener, 1, false).await;
            (first, second)
        };
        let client = async {
            for amount in 0..3 {
                let body = format!("{{\"amount\":{amount}}}");
                conn.send("/bids", &[("X-A", "1")], body.as_bytes())
                    .await
                    .expect("send");
            }
            assert_eq!(conn.in_flight(), 3);
            for i in 0..3u16 {
                let answer = conn.answer().await.expect("answer");
                assert_eq!(
                    answer,
                    super::Answer {
                        status: 201 + i,
                        body: i.to_string().into_bytes()
                    }
                );
            }
            assert_eq!(conn.opened, 1);
            // The server closed the first connection: the next request
            // opens another.
            let answer = conn.post("/bids", &[], b"x").await.expect("post");
            assert_eq!(answer.status, 201);
            assert_eq!(conn.opened, 2);
            assert!(conn.answer().await.is_err(), "nothing in flight");
        };
        let ((first, second), ()) = tokio::join!(serving, client);
        assert!(first[0].starts_with("POST /bids HTTP/1.1\r\nHost: 127.0.0.1:"));
        assert!(
            first
                .iter()
                .all(|head| head.ends_with("Content-Length: 12\r\nX-A: 1"))
        );
        assert!(second[0].ends_with("Content-Length: 1"));
    }

    #[test]
    fn what_cannot_be_framed_is_an_error() {
        for bytes in [
            &b"SMTP ready\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\nbody until close",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        ] {
            assert!(parse_response(bytes).is_err(), "{bytes:?}");
        }
        assert!(parse_response(&vec![b'x'; MAX_HEAD + 1]).is_err());
    }
}
