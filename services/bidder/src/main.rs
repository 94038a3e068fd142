//! `bidder`: the write path. Validates bids, orders them in Redis through
//! atomic scripts, simulates bidding, and closes auctions at their end.

mod admin;
mod api;
mod closer;
mod rate_limit;
mod simulator;
mod token_cli;

use event_log::{Admin, AuctionWriter, Catalogue, ReplicaAck, connect_manager};
use identity::{Authenticator, IdentityConfig};
use service_kit::spec::bidder::*;
use service_kit::{Context, Process, bind, serve, watch_redis};
use settings::{SettingError, Settings};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The bidder's own settings (the common ones live in `service_kit`).
#[derive(Debug, Clone)]
pub struct BidderSettings {
    pub simulate: bool,
    pub sim_auctions: Vec<auction_domain::AuctionId>,
    pub sim_interval: Duration,
    pub sim_duration_ms: u64,
    /// How far above the starting price a simulated bidder's limit may be
    /// drawn, cents.
    pub sim_limit_range: u64,
    /// How long a simulated round stays closed before the next one opens.
    pub sim_pause: Duration,
    pub stream_maxlen: u64,
    /// How long a closed auction and its stream are kept (0: forever).
    pub retention: Duration,
    pub rate_limit_per_s: u64,
    pub rate_limit_burst: u64,
    /// `GET /auctions` per client address.
    pub list_rate_limit_per_s: u64,
    pub list_rate_limit_burst: u64,
    /// Bids and auction creation per client address, every identity
    /// from it together.
    pub address_rate_limit_per_s: u64,
    pub address_rate_limit_burst: u64,
    /// `POST /sessions` per client address.
    pub session_rate_limit_per_s: u64,
    pub session_rate_limit_burst: u64,
    pub clients: service_kit::client_address::ClientAddress,
    pub close_check_interval: Duration,
    /// Soft close of auctions created without one of their own.
    pub soft_close_ms: u64,
    /// Replicas that must hold an accepted bid before it is answered 201
    /// (`WAIT`); 0: the primary's word is enough.
    pub redis_min_replicas_ack: u32,
    /// How long a bid waits for those replicas before it is answered 503.
    pub redis_ack_timeout: Duration,
    /// `AUCTION_CORS_ALLOWED_ORIGINS`: the origins whose pages may call
    /// the API from a browser.
    pub cors_allowed_origins: api::CorsOrigins,
    /// `AUCTION_TEST_CLOCK_BEHIND_MS`, for tests only: this process's
    /// clock reads this much behind (a skewed host).
    pub test_clock_behind_ms: u64,
}

impl BidderSettings {
    fn read(settings: &Settings) -> Result<BidderSettings, SettingError> {
        let sim_auctions = settings
            .list(&SIM_AUCTIONS)?
            .iter()
            .map(|id| {
                auction_domain::AuctionId::parse(id).map_err(|error| {
                    settings.error(&SIM_AUCTIONS, format!("{id:?}: {}", error.message))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(BidderSettings {
            simulate: settings.flag(&SIMULATE)?,
            sim_auctions,
            sim_interval: Duration::from_millis(settings.number(&SIM_INTERVAL_MS)?),
            sim_duration_ms: settings.number(&SIM_DURATION_MS)?,
            sim_limit_range: settings.number(&SIM_LIMIT_RANGE_CENTS)?,
            sim_pause: Duration::from_millis(settings.number(&SIM_PAUSE_MS)?),
            stream_maxlen: settings.number(&STREAM_MAXLEN)?,
            retention: Duration::from_millis(settings.number(&RETENTION_MS)?),
            rate_limit_per_s: settings.number(&RATE_LIMIT_PER_S)?,
            rate_limit_burst: settings.number(&RATE_LIMIT_BURST)?,
            list_rate_limit_per_s: settings.number(&LIST_RATE_LIMIT_PER_S)?,
            list_rate_limit_burst: settings.number(&LIST_RATE_LIMIT_BURST)?,
            address_rate_limit_per_s: settings.number(&ADDRESS_RATE_LIMIT_PER_S)?,
            address_rate_limit_burst: settings.number(&ADDRESS_RATE_LIMIT_BURST)?,
            session_rate_limit_per_s: settings.number(&SESSION_RATE_LIMIT_PER_S)?,
            session_rate_limit_burst: settings.number(&SESSION_RATE_LIMIT_BURST)?,
            clients: service_kit::client_address::ClientAddress::read(settings)?,
            close_check_interval: Duration::from_millis(settings.number(&CLOSE_CHECK_MS)?),
            soft_close_ms: settings.number(&SOFT_CLOSE_MS)?,
            redis_min_replicas_ack: settings.number(&REDIS_MIN_REPLICAS_ACK)? as u32,
            redis_ack_timeout: Duration::from_millis(settings.number(&REDIS_ACK_TIMEOUT_MS)?),
            cors_allowed_origins: api::CorsOrigins::read(settings)?,
            test_clock_behind_ms: settings.number(&TEST_CLOCK_BEHIND_MS)?,
        })
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(token_cli::COMMAND) {
        return token_cli::run(args);
    }
    let process = Process::start(&service_kit::spec::BIDDER);
    let own = BidderSettings::read(&process.settings)
        .unwrap_or_else(|error| Process::exit_bad_setting(&error));
    auction_domain::clock::set_behind_for_tests(own.test_clock_behind_ms);
    let identity = IdentityConfig::read(&process.settings)
        .unwrap_or_else(|error| Process::exit_bad_setting(&error));
    process.run(|ctx| run(ctx, own, identity))
}

async fn run(ctx: Context, own: BidderSettings, identity: IdentityConfig) -> Result<(), String> {
    let auth = Authenticator::new(&identity)?;
    let reconnects = ctx.metrics.redis_reconnects();
    let conn = connect_manager(&ctx.common.redis, move || {
        reconnects.inc();
    })
    .map_err(|error| format!("cannot set up the Redis client: {error}"))?;
    let writer = AuctionWriter::new(conn.clone(), own.stream_maxlen)
        .with_retention(own.retention)
        .with_replica_ack(ReplicaAck {
            replicas: own.redis_min_replicas_ack,
            timeout: own.redis_ack_timeout,
        });
    // The writer, the catalogue and the readiness probe share one connection.
    let catalogue = Catalogue::new(conn.clone());
    ctx.metrics.register_bid_series(&["user", "simulated"]);
    ctx.metrics.register_admin_actions(&[
        "close",
        "extend",
        "cancel",
        "delete",
        "suspend",
        "reinstate",
    ]);

    let conn_for_admin = conn.clone();
    let probe = conn;
    watch_redis(&ctx, Duration::from_millis(500), move || {
        let probe = probe.clone();
        async move { probe.ping().await.is_ok() }
    });
    let listener = bind(&ctx).await?;
    let closer = tokio::spawn(closer::run(
        ctx.clone(),
        writer.clone(),
        own.close_check_interval,
    ));
    let simulator = own
        .simulate
        .then(|| tokio::spawn(simulator::run(ctx.clone(), writer.clone(), own.clone())));

    let cors = api::cors_layer(&own.cors_allowed_origins);
    let admin = Admin::new(conn_for_admin, own.stream_maxlen, own.retention);
    let routes = api::routes(api::ApiState {
        writer,
        admin,
        catalogue,
        metrics: ctx.metrics.clone(),
        auth,
        address_limiter: Arc::new(rate_limit::RateLimiter::new(
            own.address_rate_limit_per_s,
            own.address_rate_limit_burst,
        )),
        session_limiter: Arc::new(rate_limit::RateLimiter::new(
            own.session_rate_limit_per_s,
            own.session_rate_limit_burst,
        )),
        list_limiter: Arc::new(rate_limit::RateLimiter::new(
            own.list_rate_limit_per_s,
            own.list_rate_limit_burst,
        )),
        bidder_limiter: Arc::new(rate_limit::RateLimiter::new(
            own.rate_limit_per_s,
            own.rate_limit_burst,
        )),
        clients: own.clients.clone(),
        default_soft_close_ms: own.soft_close_ms,
    })
    .layer(cors);
    let served = serve(&ctx, listener, routes).await;
    // The loops watch the same shutdown token; wait for them to finish.
    let _ = closer.await;
    if let Some(simulator) = simulator {
        let _ = simulator.await;
    }
    served
}

#[cfg(test)]
mod tests {
    use service_kit::spec::bidder::{RETENTION_MS, SIM_DURATION_MS};
    use settings::Kind;

    #[test]
    fn the_spec_agrees_with_the_domain_limits() {
        assert_eq!(
            RETENTION_MS.default,
            Some(event_log::DEFAULT_RETENTION_MS.to_string().as_str())
        );
        assert!(matches!(
            service_kit::spec::bidder::SOFT_CLOSE_MS.kind,
            Kind::Number { max, .. } if max == auction_domain::MAX_SOFT_CLOSE_MS
        ));
        assert!(matches!(
            SIM_DURATION_MS.kind,
            Kind::Number { max, .. } if max == auction_domain::MAX_DURATION_MS
        ));
    }
}
