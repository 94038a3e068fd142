//! Writing shared frames to a client socket: as few vectored writes as the
//! socket allows, no copy of the frames, and a bound on how long a client
//! may keep the socket full.

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// What frames are written to: a connection that takes bytes without
/// waiting and tells when it can take more. The client layer and the
/// feed write only through this (a `TcpStream` in the edges).
pub trait FrameSocket: Send + Sync + 'static {
    /// Writes as much of the slices, in order, as the connection takes
    /// now; `WouldBlock` when it takes nothing.
    fn try_write_slices(&self, slices: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Ready once the connection may take more (or failed).
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl FrameSocket for TcpStream {
    fn try_write_slices(&self, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        match slices {
            [] => Ok(0),
            [one] => self.try_write(one),
            _ => self.try_write_vectored(slices),
        }
    }

    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_ready(cx)
    }
}

/// Frames per vectored write at most.
pub(crate) const MAX_SLICES: usize = 64;
/// While the socket is full, how often to ask whether the client is lapped.
const CHECK_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// The client fell too far behind (lapped by its feed, or the socket
    /// stayed full for the stall limit): a slow consumer.
    Slow,
    /// The socket failed or the replica is shutting down.
    Closed,
}

/// What one non-blocking try wrote of all the frames.
pub(crate) enum Tried {
    /// Everything.
    All,
    /// This many bytes: the socket is full, [`write_rest`] waits for it.
    Part(usize),
}

/// Writes as much of the frames as the socket takes now, without waiting.
/// Nearly always that is everything; only a full socket needs
/// [`write_rest`], which the caller boxes: inline, its timer and waiters
/// would size every client's task for its whole life, idle or not.
pub(crate) fn try_write_all<S: FrameSocket + ?Sized>(
    stream: &S,
    frames: &[Bytes],
) -> Result<Tried, WriteError> {
    let total: usize = frames.iter().map(Bytes::len).sum();
    match try_write_from(stream, frames.iter(), 0) {
        Ok(written) if written == total => Ok(Tried::All),
        Ok(written) => Ok(Tried::Part(written)),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(Tried::Part(0)),
        Err(_) => Err(WriteError::Closed),
    }
}

/// Writes every frame. While the socket is full, every 50 ms `lapped()` is
/// asked whether the client has fallen further behind than its queue
/// allows; after `stall_limit` without progress the client counts as slow.
#[cfg(test)]
async fn write_frames(
    stream: &impl FrameSocket,
    frames: &[Bytes],
    lapped: impl Fn() -> bool,
    stall_limit: Duration,
    shutdown: &CancellationToken,
) -> Result<(), WriteError> {
    match try_write_all(stream, frames)? {
        Tried::All => Ok(()),
        Tried::Part(written) => {
            write_rest(stream, frames, written, lapped, stall_limit, shutdown).await
        }
    }
}

/// Writes what the first try left, waiting while the socket is full.
pub(crate) async fn write_rest<S: FrameSocket + ?Sized>(
    stream: &S,
    frames: &[Bytes],
    mut written: usize,
    lapped: impl Fn() -> bool,
    stall_limit: Duration,
    shutdown: &CancellationToken,
) -> Result<(), WriteError> {
    let total: usize = frames.iter().map(Bytes::len).sum();
    let mut stalled = Duration::ZERO;
    while written < total {
        match try_write_from(stream, frames.iter(), written) {
            Ok(n) => {
                written += n;
                stalled = Duration::ZERO;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    ready = std::future::poll_fn(|cx| stream.poll_writable(cx)) => {
                        ready.map_err(|_| WriteError::Closed)?
                    }
                    _ = tokio::time::sleep(CHECK_EVERY) => {
                        stalled += CHECK_EVERY;
                        if lapped() || stalled >= stall_limit {
                            return Err(WriteError::Slow);
                        }
                    }
                    _ = shutdown.cancelled() => return Err(WriteError::Closed),
                }
            }
            Err(_) => return Err(WriteError::Closed),
        }
    }
    Ok(())
}

/// Counts live events written at `now_ms` (`auction_events_delivered_total`)
/// and observes each one's latency from its `placed_at` (0: unknown, not
/// observed). The one place both a client's task and a feed's direct
/// writes count what they delivered.
pub(crate) fn count_delivered(
    delivered: &Counter,
    latency: &Histogram,
    now_ms: u64,
    placed_at: impl ExactSizeIterator<Item = u64>,
) {
    delivered.inc_by(placed_at.len() as u64);
    for placed_at in placed_at {
        if placed_at > 0 {
            latency.observe(now_ms.saturating_sub(placed_at) as f64 / 1000.0);
        }
    }
}

/// One non-blocking vectored write of `frames`, skipping the first `skip`
/// bytes (already written).
fn try_write_from<'f, S: FrameSocket + ?Sized>(
    stream: &S,
    frames: impl Iterator<Item = &'f Bytes>,
    mut skip: usize,
) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let mut count = 0;
    for frame in frames {
        if skip >= frame.len() {
            skip -= frame.len();
            continue;
        }
        slices[count] = IoSlice::new(&frame[skip..]);
        skip = 0;
        count += 1;
        if count == MAX_SLICES {
            break;
        }
    }
    stream.try_write_slices(&slices[..count])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_all_frames_in_order() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await.unwrap();
            all
        });
        let (server, _) = listener.accept().await.unwrap();
        let frames: Vec<Bytes> = (0..200)
            .map(|i| Bytes::from(format!("frame {i}\n")))
            .collect();
        let never = CancellationToken::new();
        write_frames(&server, &frames, || false, Duration::from_secs(5), &never)
            .await
            .unwrap();
        drop(server);
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        assert_eq!(client.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_slow() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap(); // never reads
        let (server, _) = listener.accept().await.unwrap();
        let big = [Bytes::from(vec![b'x'; 64 * 1024 * 1024])];
        let never = CancellationToken::new();
        let result =
            write_frames(&server, &big, || false, Duration::from_millis(200), &never).await;
        assert_eq!(result, Err(WriteError::Slow));
    }
}
