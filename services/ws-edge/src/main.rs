//! `ws-edge`: a stateless replica that fans auction events out over
//! WebSocket, many auctions per socket, and forwards bids to the bidder.

mod bids;
mod codec;
mod protocol;
mod shared_socket;
mod socket;

use fanout::{Hub, HubConfig};
use service_kit::{ConnectionGate, Context, Process, bind, serve_with_fast_path, watch_redis};
use settings::{SettingError, Settings};
use socket::WsEndpoint;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use telemetry::Transport;

#[derive(Debug, Clone)]
struct WsSettings {
    bidder_url: String,
    max_message: usize,
    ping: Duration,
    allowed_origins: Vec<String>,
    max_connections: usize,
    max_subscriptions: usize,
    queue: usize,
    rate_per_s: u64,
    rate_burst: u64,
    send_buffer: usize,
}

impl WsSettings {
    fn read(settings: &Settings) -> Result<WsSettings, SettingError> {
        let bidder_url = settings
            .raw("bidder_url")
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
        if !(bidder_url.starts_with("http://") || bidder_url.starts_with("https://")) {
            return Err(settings.error(
                "bidder_url",
                format!("{bidder_url:?} is not an http:// URL"),
            ));
        }
        Ok(WsSettings {
            bidder_url,
            max_message: settings.number("ws_max_message", 4096, 64..=16 * 1024 * 1024)? as usize,
            ping: Duration::from_millis(settings.number("ws_ping_ms", 20_000, 100..=3_600_000)?),
            allowed_origins: settings.list("ws_allowed_origins", ""),
            max_connections: settings.number("max_connections", 10_000, 1..=10_000_000)? as usize,
            max_subscriptions: settings.number("ws_max_subscriptions", 64, 1..=10_000)? as usize,
            queue: settings.number("client_queue", 256, 4..=65_536)? as usize,
            rate_per_s: settings.number("ws_rate_per_s", 50, 1..=1_000_000)?,
            rate_burst: settings.number("ws_rate_burst", 100, 1..=1_000_000)?,
            send_buffer: settings.number("socket_send_buffer", 131_072, 4096..=16_777_216)?
                as usize,
        })
    }
}

/// One timer for the whole replica: every socket pings on its ticks.
fn ping_ticker(ctx: &Context, every: Duration) -> tokio::sync::watch::Receiver<u64> {
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    let shutdown = ctx.shutdown.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => tx.send_modify(|tick| *tick += 1),
            }
        }
    });
    rx
}

fn main() -> ExitCode {
    let process = Process::start("ws-edge", "0.0.0.0:8082");
    let own = WsSettings::read(&process.settings)
        .unwrap_or_else(|error| Process::exit_bad_setting(&error));
    process.run(|ctx| run(ctx, own))
}

async fn run(ctx: Context, own: WsSettings) -> Result<(), String> {
    let hub = Hub::connect(
        &ctx.common.redis,
        codec::WsCodec,
        HubConfig {
            queue_capacity: own.queue,
            // Liveness is per socket (pings); feeds need no ticks often.
            keepalive: Duration::from_secs(3600),
            idle_feed_ttl: Duration::from_secs(10),
        },
        ctx.metrics.redis_reconnects(),
        ctx.shutdown.clone(),
    )?;
    let probe = hub.clone();
    watch_redis(&ctx, Duration::from_millis(500), move || {
        let hub = probe.clone();
        async move { hub.healthy().await }
    });
    let metrics = ctx.metrics.transport(Transport::ws);
    metrics.max_connections.set(own.max_connections as i64);
    let endpoint = Arc::new(WsEndpoint {
        hub,
        gate: ConnectionGate::new(own.max_connections, metrics.connections.clone()),
        metrics,
        bids: bids::BidForwarder::new(&own.bidder_url)?,
        max_message: own.max_message,
        ping_ticks: ping_ticker(&ctx, own.ping),
        allowed_origins: own.allowed_origins,
        max_subscriptions: own.max_subscriptions,
        messages_per_s: own.rate_per_s as f64,
        messages_burst: own.rate_burst as f64,
        send_buffer: own.send_buffer,
        shutdown: ctx.shutdown.clone(),
    });
    let listener = bind(&ctx).await?;
    let routes = pages::routes(pages::Transport::Ws, "");
    serve_with_fast_path(&ctx, listener, routes, endpoint.clone()).await?;
    endpoint.gate.drained().await;
    Ok(())
}
