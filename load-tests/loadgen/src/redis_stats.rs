//! How many times Redis ran a command, from `INFO commandstats`, over a
//! plain socket (loopback only, no authentication).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Duration, timeout};

/// Calls of `command` (lower case, e.g. `xrange`) Redis served so far.
pub async fn command_calls(redis_url: &str, command: &str) -> Result<u64, String> {
    let info = timeout(Duration::from_secs(5), commandstats(redis_url))
        .await
        .map_err(|_| "redis INFO commandstats: no answer".to_owned())??;
    Ok(calls(&info, command))
}

/// `host:port` of a `redis://[user:pass@]host:port[/db]` URL.
fn address(redis_url: &str) -> String {
    let rest = redis_url
        .split_once("://")
        .map_or(redis_url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:6379")
    }
}

async fn commandstats(redis_url: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address(redis_url))
        .await
        .map_err(|e| format!("redis: {e}"))?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .await
        .map_err(|e| format!("redis: {e}"))?;
    // A bulk string: `$LEN\r\n` then LEN bytes and `\r\n`.
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        if read == 0 {
            return Err("redis closed the connection".into());
        }
        reply.extend_from_slice(&chunk[..read]);
        if !reply.starts_with(b"$") {
            return Err(format!(
                "redis answered {:?}",
                String::from_utf8_lossy(&reply)
            ));
        }
        let Some(end) = crate::wire::find(&reply, b"\r\n") else {
            continue;
        };
        let len: usize = std::str::from_utf8(&reply[1..end])
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or("redis: bad INFO reply")?;
        if reply.len() >= end + 2 + len {
            return Ok(String::from_utf8_lossy(&reply[end + 2..end + 2 + len]).into_owned());
        }
    }
}

/// `calls=N` of the `cmdstat_{command}:` line (0 when Redis never ran it).
fn calls(info: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|stats| {
            stats
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
        })
        .and_then(|calls| calls.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_calls_of_one_command() {
        let info = "# Commandstats\r\ncmdstat_xrange:calls=12,usec=30,usec_per_call=2.50\r\n\
                    cmdstat_xrevrange:calls=3,usec=9\r\n";
        assert_eq!(calls(info, "xrange"), 12);
        assert_eq!(calls(info, "xrevrange"), 3);
        assert_eq!(calls(info, "xread"), 0);
    }

    #[test]
    fn finds_the_address() {
        assert_eq!(address("redis://127.0.0.1:6380/0"), "127.0.0.1:6380");
        assert_eq!(address("redis://u:p@127.0.0.1:7000"), "127.0.0.1:7000");
        assert_eq!(address("redis://localhost"), "localhost:6379");
    }
}
