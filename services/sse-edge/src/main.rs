//! `sse-edge`: a stateless replica that fans auction events out to browsers
//! over Server-Sent Events. Any replica serves any resume.

mod codec;
mod stream;

use fanout::{Hub, HubConfig};
use service_kit::{ConnectionGate, Context, Process, bind, serve_with_fast_path, watch_redis};
use settings::{SettingError, Settings};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use stream::SseEndpoint;
use telemetry::Transport;

#[derive(Debug, Clone)]
struct SseSettings {
    keepalive: Duration,
    retry_ms: u64,
    max_connections: usize,
    queue: usize,
    send_buffer: usize,
    bidder_public_url: String,
}

impl SseSettings {
    fn read(settings: &Settings) -> Result<SseSettings, SettingError> {
        Ok(SseSettings {
            keepalive: Duration::from_millis(settings.number(
                "sse_keepalive_ms",
                15_000,
                100..=3_600_000,
            )?),
            retry_ms: settings.number("sse_retry_ms", 2_000, 0..=3_600_000)?,
            max_connections: settings.number("max_connections", 10_000, 1..=10_000_000)? as usize,
            queue: settings.number("client_queue", 256, 4..=65_536)? as usize,
            send_buffer: settings.number("socket_send_buffer", 131_072, 4096..=16_777_216)?
                as usize,
            bidder_public_url: settings.raw("bidder_public_url").unwrap_or_default(),
        })
    }
}

fn main() -> ExitCode {
    let process = Process::start("sse-edge", "0.0.0.0:8081");
    let own = SseSettings::read(&process.settings)
        .unwrap_or_else(|error| Process::exit_bad_setting(&error));
    process.run(|ctx| run(ctx, own))
}

async fn run(ctx: Context, own: SseSettings) -> Result<(), String> {
    let hub = Hub::connect(
        &ctx.common.redis,
        codec::SseCodec,
        HubConfig {
            queue_capacity: own.queue,
            keepalive: own.keepalive,
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
    let metrics = ctx.metrics.transport(Transport::sse);
    metrics.max_connections.set(own.max_connections as i64);
    let endpoint = Arc::new(SseEndpoint {
        hub,
        gate: ConnectionGate::new(own.max_connections, metrics.connections.clone()),
        metrics,
        retry_ms: own.retry_ms,
        send_buffer: own.send_buffer,
        shutdown: ctx.shutdown.clone(),
    });
    let listener = bind(&ctx).await?;
    let routes = pages::routes(pages::Transport::Sse, &own.bidder_public_url);
    serve_with_fast_path(&ctx, listener, routes, endpoint.clone()).await?;
    // Accepting has stopped; wait for every stream to end cleanly (the
    // grace deadline of `Process::run` bounds this).
    endpoint.gate.drained().await;
    Ok(())
}
