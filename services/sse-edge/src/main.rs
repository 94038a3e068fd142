//! `sse-edge`: a stateless replica that fans auction events out to browsers
//! over Server-Sent Events. Any replica serves any resume.

mod codec;
mod multi;
mod stream;
mod stream_id;

use service_kit::demo::DemoControls;
use service_kit::edge::{EdgeSettings, run_edge};
use service_kit::security_headers::SecurityHeaders;
use service_kit::spec::sse_edge::*;
use service_kit::{Context, Process};
use settings::{SettingError, Settings};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
pub(crate) use stream::SseEndpoint;
use telemetry::Transport;

#[derive(Debug, Clone)]
struct SseSettings {
    edge: EdgeSettings,
    keepalive: Duration,
    retry_ms: u64,
    max_auctions_per_stream: usize,
    bidder_public_url: String,
    /// The origin of `bidder_public_url`, which the pages may connect to.
    bidder_origin: Option<String>,
}

impl SseSettings {
    fn read(settings: &Settings) -> Result<SseSettings, SettingError> {
        let bidder_public_url = settings.text(&BIDDER_PUBLIC_URL)?.unwrap_or_default();
        let bidder_origin = match bidder_public_url.as_str() {
            "" => None,
            url => Some(
                service_kit::security_headers::origin_of(url)
                    .map_err(|problem| settings.error(&BIDDER_PUBLIC_URL, problem))?,
            ),
        };
        Ok(SseSettings {
            edge: EdgeSettings::read(settings)?,
            keepalive: Duration::from_millis(settings.number(&SSE_KEEPALIVE_MS)?),
            retry_ms: settings.number(&SSE_RETRY_MS)?,
            max_auctions_per_stream: usize::try_from(
                settings.number(&SSE_MAX_AUCTIONS_PER_STREAM)?,
            )
            .unwrap_or(1_000),
            bidder_public_url,
            bidder_origin,
        })
    }
}

fn main() -> ExitCode {
    let process = Process::start(&service_kit::spec::SSE_EDGE);
    let own = SseSettings::read(&process.settings)
        .unwrap_or_else(|error| Process::exit_bad_setting(&error));
    process.run(|ctx| run(ctx, own))
}

async fn run(ctx: Context, own: SseSettings) -> Result<(), String> {
    let fanout = own
        .edge
        .start_fanout(&ctx, codec::SseCodec, own.keepalive, Transport::sse)?;
    let healthy = fanout.delivery.hub().health_probe();
    let demo = DemoControls::new(
        own.edge.demo_controls,
        &own.edge.replica,
        Some(own.retry_ms),
    );
    let endpoint = Arc::new(SseEndpoint {
        demo: demo.clone(),
        gate: fanout.gate,
        clients: own.edge.clients.clone(),
        delivery: fanout.delivery,
        retry_ms: own.retry_ms,
        max_auctions_per_stream: own.max_auctions_per_stream,
        event_socket: own.edge.event_socket,
        shutdown: ctx.shutdown.clone(),
    });
    let routes = pages::routes(pages::Transport::Sse, &own.bidder_public_url);
    // The pages' policy lets them post to the bidder's own origin.
    let page_headers = SecurityHeaders::pages(own.bidder_origin.as_slice());
    // The demo controls answer JSON, with the API's headers (the listener's).
    let routes = page_headers
        .apply_to_routes(routes)
        .merge(demo.routes("sse"));
    run_edge(&ctx, endpoint.clone(), &endpoint.gate, routes, healthy).await
}
