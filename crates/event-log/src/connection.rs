use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushKind, RedisFuture, Value,
};
use std::fmt;
use std::time::Duration;

/// How long establishing one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(2000);

/// A parsed, validated Redis address: one node or a Redis Cluster. Creating
/// it opens no connection.
#[derive(Clone)]
pub struct RedisTarget {
    pub(crate) kind: TargetKind,
}

#[derive(Clone)]
pub(crate) enum TargetKind {
    Single {
        /// RESP3 client for commands (disconnections arrive as push messages).
        client: Client,
        /// RESP2 client for the dedicated pub/sub connection of an edge.
        pubsub_client: Client,
    },
    Cluster {
        /// The seed nodes, `redis://host:port` each (credentials included).
        seeds: Vec<String>,
    },
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No addresses: a URL may carry a password.
        match &self.kind {
            TargetKind::Single { .. } => f.write_str("RedisTarget(single node)"),
            TargetKind::Cluster { seeds } => {
                write!(f, "RedisTarget(cluster, {} seed nodes)", seeds.len())
            }
        }
    }
}

impl RedisTarget {
    /// Whether this is a Redis Cluster (sharded notices, partitioned indexes).
    pub fn is_cluster(&self) -> bool {
        matches!(self.kind, TargetKind::Cluster { .. })
    }

    /// A cluster client over the seed nodes: RESP3 (pushes carry both
    /// notices and disconnections) with the project's deadlines.
    pub(crate) fn cluster_client(seeds: &[String]) -> redis::RedisResult<ClusterClient> {
        ClusterClient::builder(seeds.iter().map(String::as_str))
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            // A command to a slot whose primary just died is retried a few
            // times (MOVED, reconnect) and then fails, so a bid is answered
            // 503 within seconds instead of hanging through a failover.
            .retries(3)
            .build()
    }
}

/// Parses `AUCTION_REDIS_URL`: `redis://`, `rediss://` (TLS, verified
/// against the system's root certificates; `#insecure` at the end skips
/// verification, for test set-ups only), `unix://`, or
/// `redis+cluster://[user:password@]host:port,host:port,...` (a Redis
/// Cluster, given by any of its nodes). Errors are one readable sentence,
/// for the settings error line.
pub fn parse_redis_url(url: &str) -> Result<RedisTarget, String> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("redis" | "unix" | "redis+unix") => {}
        Some("redis+cluster") => return parse_cluster_url(url),
        Some("rediss") => {
            // rustls needs a process-wide crypto provider; ring it is.
            // Installing twice is harmless (the second call is refused).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        _ => {
            return Err(format!(
                "{url:?} is not a redis://, rediss:// or redis+cluster:// URL"
            ));
        }
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
        kind: TargetKind::Single {
            client,
            pubsub_client,
        },
    })
}

/// `redis+cluster://[userinfo@]h1:p1,h2:p2` → one `redis://[userinfo@]h:p`
/// per seed node. Checked here so a typo is a start-up error, not a
/// connection failure later.
fn parse_cluster_url(url: &str) -> Result<RedisTarget, String> {
    let rest = url.strip_prefix("redis+cluster://").unwrap_or_default();
    let rest = rest.trim_end_matches('/');
    let (userinfo, nodes) = match rest.rsplit_once('@') {
        Some((userinfo, nodes)) => (format!("{userinfo}@"), nodes),
        None => (String::new(), rest),
    };
    let mut seeds = Vec::new();
    for node in nodes.split(',').map(str::trim) {
        let valid = node
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid {
            return Err(format!(
                "{url:?} is not a valid Redis Cluster URL ({node:?} is not host:port)"
            ));
        }
        seeds.push(format!("redis://{userinfo}{node}"));
    }
    RedisTarget::cluster_client(&seeds)
        .map_err(|error| format!("{url:?} is not a valid Redis Cluster URL ({error})"))?;
    Ok(RedisTarget {
        kind: TargetKind::Cluster { seeds },
    })
}

/// The command connection: one node's multiplexed connection, or a
/// cluster connection that routes each command to the primary owning its
/// slot (following MOVED and failovers by itself). Cheap to clone; clones
/// share the connection.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_command(cmd),
            RedisConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(conn) => conn.get_db(),
            RedisConnection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A connection for commands that reconnects by itself, with backoff.
///
/// It connects lazily: a service starts and serves `/healthz` while Redis
/// is down. While Redis is unreachable, each command fails within about a
/// second instead of queueing, so callers can answer 503 promptly.
/// `on_disconnect` runs once per lost connection (it feeds
/// `auction_redis_reconnects_total`; in a cluster, per lost node connection).
pub fn connect_manager(
    target: &RedisTarget,
    on_disconnect: impl Fn() + Send + Sync + 'static,
) -> redis::RedisResult<RedisConnection> {
    let on_push = move |push: redis::PushInfo| {
        if push.kind == PushKind::Disconnection {
            on_disconnect();
        }
        Ok::<(), std::convert::Infallible>(())
    };
    match &target.kind {
        TargetKind::Single { client, .. } => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500))
                .set_push_sender(on_push);
            ConnectionManager::new_lazy_with_config(client.clone(), config)
                .map(RedisConnection::Single)
        }
        TargetKind::Cluster { seeds } => {
            let config = ClusterConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(RESPONSE_TIMEOUT)
                .set_push_sender(on_push);
            let client = RedisTarget::cluster_client(seeds)?;
            Ok(RedisConnection::Cluster(
                client.get_pending_async_connection_with_config(config),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_are_sentences() {
        let error = parse_redis_url("nonsense").unwrap_err();
        assert!(error.contains("not a redis://"), "{error}");
        assert!(parse_redis_url("http://x").is_err());
        assert!(parse_redis_url("rediss://x:6380").is_ok());
        assert!(parse_redis_url("rediss://x:6380/#insecure").is_ok());
        assert!(parse_redis_url("redis://127.0.0.1:7000/0").is_ok());
        assert!(parse_redis_url("redis://user:pass@host:7000").is_ok());
    }

    #[test]
    fn cluster_urls_name_their_seed_nodes() {
        let target = parse_redis_url("redis+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001").unwrap();
        assert!(target.is_cluster());
        let TargetKind::Cluster { seeds } = &target.kind else {
            panic!("not a cluster");
        };
        assert_eq!(
            seeds,
            &["redis://u:p@127.0.0.1:7000", "redis://u:p@127.0.0.1:7001"]
        );
        assert!(!format!("{target:?}").contains("u:p"));
        for bad in [
            "redis+cluster://",
            "redis+cluster://127.0.0.1",
            "redis+cluster://127.0.0.1:7000,",
            "redis+cluster://127.0.0.1:notaport",
        ] {
            let error = parse_redis_url(bad).unwrap_err();
            assert!(error.contains("Redis Cluster URL"), "{bad}: {error}");
        }
        assert!(
            !parse_redis_url("redis://127.0.0.1:7000")
                .unwrap()
                .is_cluster()
        );
    }
}
