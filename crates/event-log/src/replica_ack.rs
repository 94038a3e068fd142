//! Replica acknowledgement: an accepted bid is answered only once enough
//! replicas hold it (`WAIT`), over the connection the bid was written on.

use crate::connection::RedisConnection;
use crate::error::{LogError, corrupt};
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use std::time::Duration;

/// How many replicas must confirm an accepted bid before it is answered,
/// and for how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAck {
    pub replicas: u32,
    pub timeout: Duration,
}

/// The connection a write went over, as far as `WAIT` is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionStamp {
    /// The cluster connection built at this moment.
    Built(std::time::Instant),
    /// The single node's connection with this `CLIENT ID`.
    ClientId(i64),
}

/// Which connection a write about to be made goes over, when replicas
/// must confirm it (`ack`): `WAIT` counts only the writes of its own
/// connection, so a reconnect between the write and the `WAIT` would
/// make the `WAIT` prove nothing. `None` when nothing waits.
pub(crate) async fn connection_stamp(
    conn: &RedisConnection,
    ack: Option<ReplicaAck>,
) -> Result<Option<ConnectionStamp>, LogError> {
    if ack.is_none() {
        return Ok(None);
    }
    Ok(Some(match conn {
        RedisConnection::Cluster(handle) => ConnectionStamp::Built(handle.built_at()),
        RedisConnection::Single(_) => {
            let mut conn = conn.clone();
            let id: i64 = redis::cmd("CLIENT")
                .arg("ID")
                .query_async(&mut conn)
                .await?;
            ConnectionStamp::ClientId(id)
        }
    }))
}

/// Waits until `ack.replicas` replicas hold every write this connection
/// made to the node owning `key` (so the bid just appended), if it is
/// still the connection the write went over (`written_on`). No `ack`: no
/// waiting.
pub(crate) async fn await_replicas(
    conn: &RedisConnection,
    ack: Option<ReplicaAck>,
    key: &str,
    written_on: Option<ConnectionStamp>,
) -> Result<(), LogError> {
    let Some(ack) = ack else {
        return Ok(());
    };
    let replaced =
        || LogError::NotReplicated("the Redis connection was replaced after the write".into());
    let timeout_ms = u64::try_from(ack.timeout.as_millis()).unwrap_or(u64::MAX);
    let mut wait = redis::cmd("WAIT");
    wait.arg(ack.replicas).arg(timeout_ms);
    let acknowledged: i64 = match conn {
        RedisConnection::Single(_) => {
            // One pipeline, one connection: the id says which one the
            // WAIT went over. Ids are never reused by a running server,
            // and the connection manager never goes back to an old
            // connection, so the same id means the write's connection.
            let mut conn = conn.clone();
            let (id, acknowledged): (i64, i64) = redis::pipe()
                .cmd("CLIENT")
                .arg("ID")
                .add_command(wait)
                .query_async(&mut conn)
                .await?;
            if written_on != Some(ConnectionStamp::ClientId(id)) {
                return Err(replaced());
            }
            acknowledged
        }
        RedisConnection::Cluster(handle) => {
            // Left to the router, WAIT would go to every primary; only
            // the one owning the auction's slot holds the write.
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                Route::with_key(key, SlotAddr::Master),
            ));
            let reply = handle.connection().route_command(wait, route).await?;
            if written_on != Some(ConnectionStamp::Built(handle.built_at())) {
                // The connection was replaced between the write and
                // WAIT: this WAIT proves nothing about the write.
                return Err(replaced());
            }
            redis::from_redis_value(reply)
                .map_err(|error| corrupt(format!("WAIT answered {error}")))?
        }
    };
    if acknowledged < i64::from(ack.replicas) {
        return Err(LogError::NotReplicated(format!(
            "{acknowledged} of {} replicas confirmed within {timeout_ms} ms",
            ack.replicas
        )));
    }
    Ok(())
}
