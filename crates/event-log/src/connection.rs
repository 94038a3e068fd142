use crate::error::LogError;
use crate::live::shards::{SlotMap, SlotReader};
use auction_domain::AuctionId;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Client, Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushKind, RedisFuture, Value,
};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long establishing one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one command may wait for its answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(2000);
/// The same in a cluster: below the live path's own 2 s bound on each
/// operation, so a command stuck on a dead primary fails here first and
/// the connection re-reads the slot map (see [`ClusterHandle`]) instead of
/// being cancelled from above, which would teach it nothing.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_millis(1200);

/// A parsed, validated Redis address: one node or a Redis Cluster. Creating
/// it opens no connection.
#[derive(Clone)]
pub struct RedisTarget {
    pub(crate) kind: TargetKind,
}

// One per process, built at start-up: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
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
            .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
            // A command to a slot whose primary just died is retried a few
            // times (MOVED, reconnect) and then fails, so a bid is answered
            // 503 within about a second instead of hanging through a
            // failover; the caller's retry meets the new primary.
            .retries(2)
            .min_retry_wait(20)
            .max_retry_wait(200)
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
/// slot. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterHandle),
}

impl RedisConnection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// Whether Redis answers commands. On a cluster: whether any primary
    /// does (readiness reflects what can be served; one primary that hangs
    /// or is down holds up only the auctions in its slots).
    pub async fn ping(&self) -> Result<(), LogError> {
        match self {
            RedisConnection::Single(_) => {
                let mut conn = self.clone();
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
            }
            RedisConnection::Cluster(handle) => {
                use redis::cluster_routing::{
                    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo,
                };
                let route = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::OneSucceeded),
                ));
                let result = handle
                    .connection()
                    .route_command(redis::cmd("PING"), route)
                    .await;
                if let Err(error) = &result {
                    handle.after_error(error);
                }
                result?;
            }
        }
        Ok(())
    }

    /// Runs the commands `build` writes for each auction and returns all
    /// replies in order. On one node: one pipeline, one round trip. In a
    /// cluster a pipeline may not cross slots, and different auctions
    /// rarely share one: one pipeline per auction (its keys share a slot),
    /// all sent at once.
    pub(crate) async fn per_auction(
        &self,
        auctions: &[AuctionId],
        build: impl Fn(&mut Pipeline, &AuctionId),
    ) -> Result<Vec<Value>, LogError> {
        if !self.is_cluster() {
            let mut conn = self.clone();
            let mut pipe = redis::pipe();
            for auction in auctions {
                build(&mut pipe, auction);
            }
            return Ok(pipe.query_async(&mut conn).await?);
        }
        let requests = auctions.iter().map(|auction| {
            let mut pipe = redis::pipe();
            build(&mut pipe, auction);
            let mut conn = self.clone();
            async move { pipe.query_async::<Vec<Value>>(&mut conn).await }
        });
        let replies = futures_util::future::try_join_all(requests).await?;
        Ok(replies.into_iter().flatten().collect())
    }
}

/// Shortest time between two rebuilds of a cluster connection.
const REBUILD_INTERVAL: Duration = Duration::from_millis(500);

/// A cluster connection that starts over from the seed nodes when a command
/// fails for want of a node.
///
/// Why: the client follows MOVED by itself, but a primary that died leaves
/// its slots pointing at an address that refuses connections; nothing
/// answers MOVED, so the client keeps retrying the dead address after a
/// replica took over. A fresh connection reads the slot map again from
/// whichever seed answers. At most one rebuild per `REBUILD_INTERVAL`.
#[derive(Clone)]
pub struct ClusterHandle {
    shared: Arc<ClusterShared>,
}

struct ClusterShared {
    /// The connection in use and when it was made.
    current: Mutex<(ClusterConnection, Instant)>,
    client: ClusterClient,
    on_disconnect: Arc<dyn Fn() + Send + Sync>,
    /// The seed nodes, to read the slot map apart from the connection.
    seeds: Vec<String>,
    /// The slot map as first read after the current connection was made
    /// (`None` until read).
    baseline: Mutex<Option<SlotMap>>,
    /// Whether a slot map check (after a timeout) is running.
    checking: AtomicBool,
}

impl ClusterHandle {
    fn new(
        client: ClusterClient,
        seeds: Vec<String>,
        on_disconnect: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        let conn = Self::connect(&client, &on_disconnect);
        let handle = ClusterHandle {
            shared: Arc::new(ClusterShared {
                current: Mutex::new((conn, Instant::now())),
                client,
                on_disconnect,
                seeds,
                baseline: Mutex::new(None),
                checking: AtomicBool::new(false),
            }),
        };
        handle.check_slot_map();
        handle
    }

    fn connect(
        client: &ClusterClient,
        on_disconnect: &Arc<dyn Fn() + Send + Sync>,
    ) -> ClusterConnection {
        let on_disconnect = on_disconnect.clone();
        let config = ClusterConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CLUSTER_RESPONSE_TIMEOUT)
            .set_push_sender(move |push: redis::PushInfo| {
                if push.kind == PushKind::Disconnection {
                    on_disconnect();
                }
                Ok::<(), std::convert::Infallible>(())
            });
        client.get_pending_async_connection_with_config(config)
    }

    /// The connection to send the next command on.
    pub(crate) fn connection(&self) -> ClusterConnection {
        match self.shared.current.lock() {
            Ok(current) => current.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// When the current connection was made: a write and the `WAIT` that
    /// confirms it must go over the same one (WAIT counts the writes of
    /// its own connection), which callers check with this.
    pub(crate) fn built_at(&self) -> Instant {
        match self.shared.current.lock() {
            Ok(current) => current.1,
            Err(poisoned) => poisoned.into_inner().1,
        }
    }

    /// After a failed command: start over if the failure says a node is
    /// missing (and no rebuild happened just now).
    ///
    /// A timeout is not such a failure by itself: one node that hangs (a
    /// freeze, a GC pause, a partition) must not stall the others, and a
    /// rebuilt connection waits for every node it connects to, the hung one
    /// too (measured: a quarter of the bids on healthy primaries answered
    /// `bid_outcome_unknown` while one primary was frozen). After a timeout
    /// the slot map is read apart from the connection, from whichever node
    /// answers; only a map that changed (a replica took over the hung
    /// node's slots) starts the connection over.
    fn after_error(&self, error: &redis::RedisError) {
        if error.is_timeout() && !error.is_connection_dropped() {
            self.check_slot_map();
            return;
        }
        let node_missing = error.is_io_error()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_cluster_error();
        if node_missing {
            self.rebuild(error);
        }
    }

    fn rebuild(&self, error: &dyn fmt::Display) {
        let mut current = match self.shared.current.lock() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.1.elapsed() >= REBUILD_INTERVAL {
            tracing::warn!(%error, "Redis Cluster command failed; reading the slot map again");
            *current = (
                Self::connect(&self.shared.client, &self.shared.on_disconnect),
                Instant::now(),
            );
            *lock(&self.shared.baseline) = None;
            drop(current);
            self.check_slot_map();
        }
    }

    /// Reads the slot map on a task of its own (one at a time) and starts
    /// the connection over if it is not the one seen before; the first map
    /// read after the connection was made (read at once, when a runtime
    /// runs) is kept to compare with.
    fn check_slot_map(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.shared.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let handle = self.clone();
        runtime.spawn(async move {
            let map = match SlotReader::of_seeds(&handle.shared.seeds) {
                Ok(mut reader) => reader.read().await,
                Err(_) => None,
            };
            if let Some(map) = map {
                let changed = {
                    let mut baseline = lock(&handle.shared.baseline);
                    match baseline.as_ref() {
                        Some(seen) => *seen != map,
                        None => {
                            *baseline = Some(map);
                            false
                        }
                    }
                };
                if changed {
                    handle.rebuild(&"a command timed out and the slot map changed");
                }
            }
            handle.shared.checking.store(false, Ordering::Release);
        });
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_command(cmd),
            RedisConnection::Cluster(handle) => Box::pin(async move {
                let mut conn = handle.connection();
                let result = conn.req_packed_command(cmd).await;
                if let Err(error) = &result {
                    handle.after_error(error);
                }
                result
            }),
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
            RedisConnection::Cluster(handle) => Box::pin(async move {
                let mut conn = handle.connection();
                let result = conn.req_packed_commands(cmd, offset, count).await;
                if let Err(error) = &result {
                    handle.after_error(error);
                }
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A connection for commands that reconnects by itself, with backoff.
///
/// It connects lazily: a service starts and serves `/healthz` while Redis
/// is down. A refused connection fails a command at once; a connection
/// that cannot be made fails it within 1 s; a command sent and not answered
/// fails after 2 s (the response timeout), and a write that fails so may
/// still run: see [`LogError::Unknown`](crate::LogError::Unknown).
/// `on_disconnect` runs once per lost connection (it feeds
/// `auction_redis_reconnects_total`; in a cluster, per lost node connection).
pub fn connect_manager(
    target: &RedisTarget,
    on_disconnect: impl Fn() + Send + Sync + 'static,
) -> redis::RedisResult<RedisConnection> {
    match &target.kind {
        TargetKind::Single { client, .. } => {
            let on_push = move |push: redis::PushInfo| {
                if push.kind == PushKind::Disconnection {
                    on_disconnect();
                }
                Ok::<(), std::convert::Infallible>(())
            };
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
        TargetKind::Cluster { seeds } => Ok(RedisConnection::Cluster(ClusterHandle::new(
            RedisTarget::cluster_client(seeds)?,
            seeds.clone(),
            Arc::new(on_disconnect),
        ))),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
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
