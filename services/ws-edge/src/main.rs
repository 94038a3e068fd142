//! `ws-edge`: a stateless replica that fans auction events out over
//! WebSocket, many auctions per socket, and forwards bids to the bidder.
//!
//! Where things are: `endpoint` (what sockets share, a socket's life),
//! `upgrade` (the handshake), `session` (one socket's loop and how it ends),
//! `socket` (the two writers of one socket), `subscriptions` (a socket's
//! auctions), `protocol` (client messages and replies), `bids` (bids over
//! the socket), `codec` (event frames, encoded once per replica),
//! `deflate` (permessage-deflate: negotiation, compression, inflating).

mod bids;
mod codec;
mod deflate;
mod endpoint;
mod pings;
mod protocol;
mod session;
mod shared_socket;
mod socket;
mod subscriptions;
mod suspensions;
mod upgrade;

use endpoint::WsEndpoint;
use identity::{Authenticator, IdentityConfig};
use service_kit::demo::DemoControls;
use service_kit::edge::{EdgeSettings, run_edge};
use service_kit::rate::Rate;
use service_kit::security_headers::SecurityHeaders;
use service_kit::spec::ws_edge::*;
use service_kit::{Context, Process};
use settings::{SettingError, Settings};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use telemetry::Transport;

#[derive(Debug, Clone)]
struct WsSettings {
    edge: EdgeSettings,
    bidder_url: String,
    max_message: usize,
    ping: Duration,
    allowed_origins: Vec<String>,
    max_subscriptions: usize,
    rate_per_s: u64,
    rate_burst: u64,
    compression: bool,
}

impl WsSettings {
    fn read(settings: &Settings) -> Result<WsSettings, SettingError> {
        let bidder_url = settings.text(&BIDDER_URL)?.unwrap_or_default();
        if !(bidder_url.starts_with("http://") || bidder_url.starts_with("https://")) {
            return Err(
                settings.error(&BIDDER_URL, format!("{bidder_url:?} is not an http:// URL"))
            );
        }
        Ok(WsSettings {
            edge: EdgeSettings::read(settings)?,
            bidder_url,
            max_message: settings.number(&WS_MAX_MESSAGE)? as usize,
            ping: Duration::from_millis(settings.number(&WS_PING_MS)?),
            allowed_origins: settings.list(&WS_ALLOWED_ORIGINS)?,
            max_subscriptions: settings.number(&WS_MAX_SUBSCRIPTIONS)? as usize,
            rate_per_s: settings.number(&WS_RATE_PER_S)?,
            rate_burst: settings.number(&WS_RATE_BURST)?,
            compression: settings.flag(&WS_COMPRESSION)?,
        })
    }
}

/// One timer for the whole replica: every socket pings on its ticks.
fn main() -> ExitCode {
    let process = Process::start(&service_kit::spec::WS_EDGE);
    let own = WsSettings::read(&process.settings)
        .unwrap_or_else(|error| Process::exit_bad_setting(&error));
    let identity = IdentityConfig::read(&process.settings)
        .unwrap_or_else(|error| Process::exit_bad_setting(&error));
    process.run(|ctx| run(ctx, own, identity))
}

async fn run(ctx: Context, own: WsSettings, identity: IdentityConfig) -> Result<(), String> {
    // Liveness is per socket (pings); feeds need no ticks often.
    let keepalive = Duration::from_secs(3600);
    let fanout = own.edge.start_fanout(
        &ctx,
        codec::WsCodec::new(own.compression),
        keepalive,
        Transport::ws,
    )?;
    let healthy = fanout.delivery.hub().health_probe();
    let suspensions = Arc::new(suspensions::Suspensions::default());
    let demo = DemoControls::new(own.edge.demo_controls, &own.edge.replica, None);
    let endpoint = Arc::new(WsEndpoint {
        demo: demo.clone(),
        gate: fanout.gate,
        delivery: fanout.delivery,
        bids: bids::BidForwarder::new(&own.bidder_url)?,
        auth: Authenticator::new(&identity)?,
        clients: own.edge.clients.clone(),
        max_message: own.max_message,
        ping_ticks: pings::PingTicks::start(own.ping, ctx.shutdown.clone()),
        ping_interval: own.ping,
        allowed_origins: own.allowed_origins,
        max_subscriptions: own.max_subscriptions,
        message_rate: Rate::new(own.rate_per_s, own.rate_burst),
        event_socket: own.edge.event_socket,
        compression: own.compression,
        suspensions: suspensions.clone(),
        shutdown: ctx.shutdown.clone(),
    });
    tokio::spawn(suspensions.follow(ctx.common.redis.clone(), ctx.shutdown.clone()));
    // The demo controls answer JSON, with the API's headers (the listener's).
    let routes = SecurityHeaders::pages(&[])
        .apply_to_routes(pages::routes(pages::Transport::Ws, ""))
        .merge(demo.routes("ws"));
    run_edge(&ctx, endpoint.clone(), &endpoint.gate, routes, healthy).await
}
