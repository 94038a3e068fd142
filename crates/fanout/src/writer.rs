//! Writing shared frames to a client socket: as few vectored writes as the
//! socket allows, no copy of the frames, and a bound on how long a client
//! may keep the socket full.

use bytes::Bytes;
use std::io::{self, IoSlice};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

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

/// Writes every frame. While the socket is full, every 50 ms `lapped()` is
/// asked whether the client has fallen further behind than its queue
/// allows; after `stall_limit` without progress the client counts as slow.
///
/// The first write is tried at once and nearly always takes everything;
/// only a socket that is full waits, in a boxed future. Inline, the wait's
/// timer and waiters would size every client's task for its whole life,
/// idle or not.
pub(crate) async fn write_frames<'f>(
    stream: &TcpStream,
    frames: impl Iterator<Item = &'f Bytes> + Clone,
    lapped: impl Fn() -> bool,
    stall_limit: Duration,
    shutdown: &CancellationToken,
) -> Result<(), WriteError> {
    let total: usize = frames.clone().map(Bytes::len).sum();
    let written = match try_write_from(stream, frames.clone(), 0) {
        Ok(n) => n,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
        Err(_) => return Err(WriteError::Closed),
    };
    if written == total {
        return Ok(());
    }
    Box::pin(write_rest(
        stream,
        frames,
        written,
        total,
        lapped,
        stall_limit,
        shutdown,
    ))
    .await
}

/// Writes what the first try left, waiting while the socket is full.
async fn write_rest<'f>(
    stream: &TcpStream,
    frames: impl Iterator<Item = &'f Bytes> + Clone,
    mut written: usize,
    total: usize,
    lapped: impl Fn() -> bool,
    stall_limit: Duration,
    shutdown: &CancellationToken,
) -> Result<(), WriteError> {
    let mut stalled = Duration::ZERO;
    while written < total {
        match try_write_from(stream, frames.clone(), written) {
            Ok(n) => {
                written += n;
                stalled = Duration::ZERO;
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    ready = stream.writable() => ready.map_err(|_| WriteError::Closed)?,
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

/// One non-blocking vectored write of `frames`, skipping the first `skip`
/// bytes (already written).
fn try_write_from<'f>(
    stream: &TcpStream,
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
    match count {
        0 => Ok(0),
        1 => stream.try_write(&slices[0]),
        _ => stream.try_write_vectored(&slices[..count]),
    }
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
        write_frames(
            &server,
            frames.iter(),
            || false,
            Duration::from_secs(5),
            &never,
        )
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
        let result = write_frames(
            &server,
            big.iter(),
            || false,
            Duration::from_millis(200),
            &never,
        )
        .await;
        assert_eq!(result, Err(WriteError::Slow));
    }
}
