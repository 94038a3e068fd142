use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion, PushKind};
use std::time::Duration;

/// A parsed, validated Redis address. Creating it opens no connection.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    /// RESP3 client for commands (disconnections arrive as push messages).
    pub client: Client,
    /// RESP2 client for the dedicated pub/sub connection of an edge.
    pub pubsub_client: Client,
}

/// Parses `AUCTION_REDIS_URL`: `redis://`, `rediss://` (TLS, verified
/// against the system's root certificates; `#insecure` at the end skips
/// verification, for test set-ups only) or `unix://`. Errors are one
/// readable sentence, for the settings error line.
pub fn parse_redis_url(url: &str) -> Result<RedisTarget, String> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("redis" | "unix" | "redis+unix") => {}
        Some("rediss") => {
            // rustls needs a process-wide crypto provider; ring it is.
            // Installing twice is harmless (the second call is refused).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        _ => return Err(format!("{url:?} is not a redis:// or rediss:// URL")),
    }
    let info = url
        .into_connection_info()
        .map_err(|error| format!("{url:?} is not a valid Redis URL ({error})"))?;
    // RESP3 lets the connection report disconnections as push messages,
    // which is how reconnects are counted.
    let invalid = |error: redis::RedisError| format!("{url:?} is not a valid Redis URL ({error})");
    let pubsub_client = Client::open(info.clone()).map_err(invalid)?;
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = Client::open(info.set_redis_settings(resp3)).map_err(invalid)?;
    Ok(RedisTarget {
        client,
        pubsub_client,
    })
}

/// A multiplexed connection that reconnects by itself, with backoff.
///
/// It connects lazily: a service starts and serves `/healthz` while Redis
/// is down. A refused connection fails a command at once; a connection
/// that cannot be made fails it within 1 s; a command sent and not answered
/// fails after 2 s (the response timeout), and a write that fails so may
/// still run: see [`LogError::Unknown`](crate::LogError::Unknown).
/// `on_disconnect` runs once per lost connection (it feeds
/// `auction_redis_reconnects_total`).
pub fn connect_manager(
    target: &RedisTarget,
    on_disconnect: impl Fn() + Send + Sync + 'static,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(1000)))
        .set_response_timeout(Some(Duration::from_millis(2000)))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
        .set_push_sender(move |push: redis::PushInfo| {
            if push.kind == PushKind::Disconnection {
                on_disconnect();
            }
            Ok::<(), std::convert::Infallible>(())
        });
    ConnectionManager::new_lazy_with_config(target.client.clone(), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_are_sentences() {
        let error = parse_redis_url("nonsense").unwrap_err();
        assert!(error.contains("not a redis:// or rediss:// URL"), "{error}");
        assert!(parse_redis_url("http://x").is_err());
        assert!(parse_redis_url("rediss://x:6380").is_ok());
        assert!(parse_redis_url("rediss://x:6380/#insecure").is_ok());
        assert!(parse_redis_url("redis://127.0.0.1:7000/0").is_ok());
        assert!(parse_redis_url("redis://user:pass@host:7000").is_ok());
    }
}
