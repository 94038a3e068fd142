//! What both edges share around their endpoint: the settings every edge
//! reads alike, and the edge's life once its endpoint exists.

use crate::client_address::ClientAddress;
use crate::gate::{ConnectionGate, GateMetrics};
use crate::health::watch_redis;
use crate::process::{Context, bind};
use crate::raw_http::{FastPath, serve_with_fast_path};
use axum::Router;
use fanout::{Codec, Delivery, Hub, HubConfig, LiveCounters};
use settings::{Kind, Setting, SettingError, Settings};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How often readiness asks whether Redis and the subscription are up.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// How long a feed with no clients stays subscribed: a client that
/// reconnects within it finds its feed (and its recent run) still there.
const IDLE_FEED_TTL: Duration = Duration::from_secs(10);

const fn number(
    key: &'static str,
    default: &'static str,
    min: u64,
    max: u64,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        kind: Kind::Number { min, max },
        default: Some(default),
        help,
        secret: false,
    }
}

pub const MAX_CONNECTIONS: Setting = number(
    "max_connections",
    "10000",
    1,
    10_000_000,
    "streams or sockets per replica; beyond: 503",
);
pub const CLIENT_QUEUE: Setting = number(
    "client_queue",
    "256",
    4,
    65_536,
    "events a client may lag behind before it is closed (WebSocket: 1013)",
);
pub const CLIENT_STALL_MS: Setting = number(
    "client_stall_ms",
    "30000",
    100,
    3_600_000,
    "a client whose socket accepts nothing for this long is closed as slow",
);
pub const VIEWERS_INTERVAL_MS: Setting = number(
    "viewers_interval_ms",
    "2000",
    100,
    600_000,
    "how often viewer counts are reported and refreshed",
);
pub const REPLAY_KEEP_MS: Setting = number(
    "replay_keep_ms",
    "2000",
    0,
    60_000,
    "how long a page of events read from a stream for a resuming client is kept for the \
     next clients resuming from the same id (0: shared only while it is read); at most \
     16,384 events are kept per replica",
);
pub const SOCKET_SEND_BUFFER: Setting = number(
    "socket_send_buffer",
    "131072",
    4096,
    16_777_216,
    "`SO_SNDBUF` per client socket, bytes",
);

pub const TCP_NODELAY: Setting = Setting {
    key: "tcp_nodelay",
    kind: Kind::Flag,
    default: Some("false"),
    help: "`TCP_NODELAY` on client streams and sockets. `false`: the kernel holds a small write \
           while the client has not acknowledged the one before (Nagle), so a client that falls \
           behind gets several events per TCP segment and one that keeps up gets each at once \
           (see [operations](operations.md#event-sockets-and-tcp_nodelay)); `true`: every write goes out at once, for \
           browsers that reach the edges with no proxy in front on systems that delay their \
           acknowledgements (Windows: up to 200 ms)",
    secret: false,
};

/// How each client's event socket (an SSE stream, a WebSocket) is set up
/// once it is one: the same on both edges.
#[derive(Debug, Clone, Copy)]
pub struct EventSocket {
    /// `AUCTION_SOCKET_SEND_BUFFER`: `SO_SNDBUF`. Without a cap the kernel
    /// grows a stuck client's buffer to megabytes, and it would take that
    /// long to notice.
    pub send_buffer: usize,
    /// `AUCTION_TCP_NODELAY`. Off by default: with 1,000 clients that
    /// read slower than events come (tung200 in BENCHMARKS.md), Nagle's
    /// algorithm let the kernel put two events in a segment on average and
    /// halved the edge's CPU, as nginx+nchan's sockets do; clients that
    /// keep up acknowledge each event as they read it, so nothing waits
    /// (latency at 50 and 200 events/s unchanged within the runs' spread).
    pub nodelay: bool,
}

impl EventSocket {
    /// Applies both to a client's socket (best effort: a socket that
    /// refuses keeps the kernel's defaults).
    pub fn set_up(&self, stream: &tokio::net::TcpStream) {
        let _ = socket2::SockRef::from(stream).set_send_buffer_size(self.send_buffer);
        let _ = stream.set_nodelay(self.nodelay);
    }
}

/// Connections one client address may hold open on one replica: enough
/// for a household or a small office behind one NAT address (a tab holds
/// one stream or socket), far from what it takes to inflate a viewer count
/// or fill a replica. A larger population behind one address (a campus, a
/// carrier-grade NAT) needs the setting raised.
pub const MAX_CONNECTIONS_PER_ADDRESS: Setting = number(
    "max_connections_per_address",
    "64",
    1,
    10_000_000,
    "streams or sockets one client address may hold on a replica (an IPv6 client counted \
     by its /64); beyond: 429 `too_many_connections_from_address` with `Retry-After`",
);

/// The settings every edge reads, alike.
pub const SETTINGS: &[Setting] = &[
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_ADDRESS,
    CLIENT_QUEUE,
    CLIENT_STALL_MS,
    VIEWERS_INTERVAL_MS,
    REPLAY_KEEP_MS,
    SOCKET_SEND_BUFFER,
    TCP_NODELAY,
    crate::demo::DEMO_CONTROLS,
];

/// Settings of every edge, read with the same defaults and ranges.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// `AUCTION_MAX_CONNECTIONS`: client connections per replica.
    pub max_connections: usize,
    /// `AUCTION_MAX_CONNECTIONS_PER_ADDRESS`: client connections per
    /// client address (an IPv6 client's /64) per replica.
    pub max_connections_per_address: u32,
    /// Whose connection it is (`AUCTION_TRUST_FORWARDED_FOR`,
    /// `AUCTION_TRUSTED_PROXIES`): the bidder's rule.
    pub clients: ClientAddress,
    /// `AUCTION_CLIENT_QUEUE`: events a client may lag behind.
    pub client_queue: usize,
    /// How each client's event socket is set up.
    pub event_socket: EventSocket,
    /// `AUCTION_CLIENT_STALL_MS`: a client whose socket accepts nothing for
    /// this long is slow and is cut off.
    pub stall_limit: Duration,
    /// `AUCTION_VIEWERS_INTERVAL_MS`: how often viewer counts are reported
    /// and refreshed.
    pub viewers_interval: Duration,
    /// `AUCTION_REPLAY_KEEP_MS`: how long a replay page read from a stream
    /// is kept for the clients resuming from the same id after it.
    pub replay_keep: Duration,
    /// This replica's name in shared counts: random, unique per process.
    pub replica: String,
    /// `AUCTION_DEMO_CONTROLS`: the comparison page's drop and refuse
    /// controls (never in production).
    pub demo_controls: bool,
}

impl EdgeSettings {
    pub fn read(settings: &Settings) -> Result<EdgeSettings, SettingError> {
        Ok(EdgeSettings {
            max_connections: settings.number(&MAX_CONNECTIONS)? as usize,
            max_connections_per_address: settings.number(&MAX_CONNECTIONS_PER_ADDRESS)? as u32,
            clients: ClientAddress::read(settings)?,
            client_queue: settings.number(&CLIENT_QUEUE)? as usize,
            event_socket: EventSocket {
                send_buffer: settings.number(&SOCKET_SEND_BUFFER)? as usize,
                nodelay: settings.flag(&TCP_NODELAY)?,
            },
            stall_limit: Duration::from_millis(settings.number(&CLIENT_STALL_MS)?),
            viewers_interval: Duration::from_millis(settings.number(&VIEWERS_INTERVAL_MS)?),
            replay_keep: Duration::from_millis(settings.number(&REPLAY_KEEP_MS)?),
            replica: std::iter::repeat_with(fastrand::alphanumeric)
                .take(16)
                .collect(),
            demo_controls: settings.flag(&crate::demo::DEMO_CONTROLS)?,
        })
    }
}

/// An edge's fan-out, set up alike on both edges: the hub on the
/// replica's Redis, the delivery protocol with the edge's metrics, and
/// the gate that bounds its client connections.
pub struct EdgeFanout<C: Codec> {
    pub delivery: Delivery<C>,
    pub gate: ConnectionGate,
}

impl EdgeSettings {
    /// Starts the edge's hub with `codec` (whose feeds tick a keepalive
    /// every `keepalive`, if the codec has one) and its delivery, counted
    /// as `transport`.
    pub fn start_fanout<C: Codec>(
        &self,
        ctx: &Context,
        codec: C,
        keepalive: Duration,
        transport: telemetry::Transport,
    ) -> Result<EdgeFanout<C>, String> {
        let config = HubConfig {
            queue_capacity: self.client_queue,
            keepalive,
            idle_feed_ttl: IDLE_FEED_TTL,
            viewers_interval: self.viewers_interval,
            replay_keep: self.replay_keep,
            replica: self.replica.clone(),
        };
        let metrics = ctx.metrics.transport(transport);
        let counters = LiveCounters {
            reconnects: ctx.metrics.redis_reconnects(),
            resubscribes: metrics.live_resubscribes.clone(),
        };
        let hub = Hub::connect(
            &ctx.common.redis,
            codec,
            config,
            counters,
            ctx.shutdown.clone(),
        )?;
        metrics.max_connections.set(self.max_connections as i64);
        let gate = ConnectionGate::new(
            self.max_connections,
            self.max_connections_per_address,
            GateMetrics {
                open: metrics.connections.clone(),
                refused_full: metrics.refused_full.clone(),
                refused_per_address: metrics.refused_per_address.clone(),
            },
        );
        let delivery = Delivery::new(hub, metrics, self.stall_limit, ctx.shutdown.clone());
        Ok(EdgeFanout { delivery, gate })
    }
}

/// Runs an edge until it has drained: readiness follows `healthy`, the
/// endpoint and `routes` are served until shutdown, then every open
/// connection is waited for (bounded by the process's grace period).
pub async fn run_edge<F, P, H>(
    ctx: &Context,
    endpoint: Arc<F>,
    gate: &ConnectionGate,
    routes: Router,
    healthy: P,
) -> Result<(), String>
where
    F: FastPath,
    P: Fn() -> H + Send + 'static,
    H: Future<Output = bool> + Send,
{
    watch_redis(ctx, HEALTH_INTERVAL, healthy);
    let listener = bind(ctx).await?;
    serve_with_fast_path(ctx, listener, routes, endpoint).await?;
    // Accepting has stopped; wait for every client to end cleanly.
    gate.drained().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_event_socket_gets_the_send_buffer_and_nodelay_it_is_set_up_with() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        for nodelay in [false, true] {
            let _client = tokio::net::TcpStream::connect(address).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            // As the accept loop leaves every connection, before it is known
            // to be an event stream.
            server.set_nodelay(true).unwrap();
            EventSocket {
                send_buffer: 65_536,
                nodelay,
            }
            .set_up(&server);
            assert_eq!(server.nodelay().unwrap(), nodelay);
            // Linux doubles what it is asked for (its bookkeeping).
            let buffer = socket2::SockRef::from(&server).send_buffer_size().unwrap();
            assert!((65_536..=2 * 65_536).contains(&buffer), "{buffer}");
        }
    }
}
