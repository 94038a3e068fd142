use crate::connections::ConnectionLimits;
use crate::health::Health;
use axum::Router;
use event_log::RedisTarget;
use settings::{SettingError, Settings};
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use telemetry::{LogFormat, Metrics};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// Settings every service has.
#[derive(Debug, Clone)]
pub struct Common {
    /// `AUCTION_LISTEN`: the public port (API, streams, pages).
    pub listen: SocketAddr,
    /// `AUCTION_OPS_LISTEN`: `/healthz`, `/readyz` and `/metrics`, which
    /// the public port never serves.
    pub ops_listen: SocketAddr,
    pub redis: RedisTarget,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// Deadlines and bounds of every connection.
    pub connections: ConnectionLimits,
}

impl Common {
    fn read(
        settings: &Settings,
        default_listen: &str,
        default_ops_listen: &str,
    ) -> Result<Common, SettingError> {
        let redis_url = settings
            .raw("redis_url")
            .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
        let listen = settings.listen_addr("listen", default_listen)?;
        let ops_listen = settings.listen_addr("ops_listen", default_ops_listen)?;
        // One port for both would either fail to bind or, worse, suggest
        // the ops endpoints can share the public port: say which.
        if listen.port() != 0 && listen.port() == ops_listen.port() {
            return Err(settings.error(
                "ops_listen",
                format!(
                    "{ops_listen} has the port of AUCTION_LISTEN ({listen}); the ops endpoints need a port of their own"
                ),
            ));
        }
        Ok(Common {
            listen,
            ops_listen,
            redis: event_log::parse_redis_url(&redis_url)
                .map_err(|problem| settings.error("redis_url", problem))?,
            shutdown_grace: Duration::from_millis(settings.number(
                "shutdown_grace_ms",
                10_000,
                0..=3_600_000,
            )?),
            log_format: settings.get("log_format", LogFormat::Pretty)?,
            connections: ConnectionLimits::read(settings)?,
        })
    }
}

/// A process between reading its settings and running.
pub struct Process {
    pub name: &'static str,
    pub settings: Settings,
    pub common: Common,
}

/// What a running service gets.
#[derive(Clone)]
pub struct Context {
    pub name: &'static str,
    pub common: Common,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Cancelled on SIGTERM/SIGINT: every loop and stream ends on it.
    pub shutdown: CancellationToken,
}

impl Process {
    /// Reads the layered settings and the common ones (the public and ops
    /// addresses default to `default_listen` and `default_ops_listen`); on
    /// a bad setting prints one line naming it and exits 2.
    pub fn start(name: &'static str, default_listen: &str, default_ops_listen: &str) -> Process {
        let settings =
            Settings::from_process().unwrap_or_else(|error| Process::exit_bad_setting(&error));
        let common = Common::read(&settings, default_listen, default_ops_listen)
            .unwrap_or_else(|error| Process::exit_bad_setting(&error));
        Process {
            name,
            settings,
            common,
        }
    }

    /// The contract's answer to a bad setting: one line on stderr, exit 2.
    pub fn exit_bad_setting(error: &SettingError) -> ! {
        eprintln!("{error}");
        std::process::exit(2)
    }

    /// Starts telemetry and the runtime, then runs `app` until it returns or
    /// the grace period after a shutdown signal runs out.
    pub fn run<A, F>(self, app: A) -> ExitCode
    where
        A: FnOnce(Context) -> F,
        F: Future<Output = Result<(), String>>,
    {
        let _telemetry = match telemetry::init(self.name, self.common.log_format) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::from(2);
            }
        };
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start the runtime");
                return ExitCode::FAILURE;
            }
        };
        let ctx = Context {
            name: self.name,
            common: self.common,
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
            shutdown: CancellationToken::new(),
        };
        let grace = ctx.common.shutdown_grace;
        let result = runtime.block_on(async {
            tokio::spawn(on_signal(ctx.clone()));
            // Bound before the app starts, so probes find it from the first
            // moment (answering 503 until Redis is up), and served until the
            // process exits.
            let ops = bind_ops(&ctx).await?;
            tokio::spawn(crate::raw_http::serve_ops(ctx.clone(), ops));
            let shutdown = ctx.shutdown.clone();
            let deadline = async move {
                shutdown.cancelled().await;
                tokio::time::sleep(grace).await;
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "grace period over; exiting"
                );
            };
            tokio::select! {
                result = app(ctx) => result,
                () = deadline => Ok(()),
            }
        });
        runtime.shutdown_timeout(Duration::from_millis(200));
        match result {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(%error, "failed");
                ExitCode::FAILURE
            }
        }
    }
}

async fn on_signal(ctx: Context) {
    let name = wait_for_signal().await;
    tracing::info!(signal = name, "shutting down: draining connections");
    ctx.health.set_draining();
    ctx.shutdown.cancel();
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

/// Binds the listener (with the `AUCTION_LISTEN_BACKLOG` queue) and logs
/// `listening on <addr>` (tests and operators read the port from that line
/// when `AUCTION_LISTEN` has port 0).
pub async fn bind(ctx: &Context) -> Result<TcpListener, String> {
    let listener = listen(ctx.common.listen, ctx.common.connections.backlog)?;
    let addr = bound_addr(&listener)?;
    tracing::info!("{} listening on {addr}", ctx.name);
    Ok(listener)
}

/// Binds the ops listener and logs `ops listener on <addr>` (a line apart
/// from the public one, for the same readers).
async fn bind_ops(ctx: &Context) -> Result<TcpListener, String> {
    // Probes and scrapers: a short queue is plenty.
    let listener = listen(ctx.common.ops_listen, 64)?;
    let addr = bound_addr(&listener)?;
    tracing::info!("{} ops listener on {addr}", ctx.name);
    Ok(listener)
}

fn listen(addr: SocketAddr, backlog: u32) -> Result<TcpListener, String> {
    let cannot = |error: std::io::Error| format!("cannot listen on {addr}: {error}");
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(cannot)?;
    socket.set_reuseaddr(true).map_err(cannot)?;
    socket.bind(addr).map_err(cannot)?;
    socket.listen(backlog).map_err(cannot)
}

fn bound_addr(listener: &TcpListener) -> Result<SocketAddr, String> {
    listener
        .local_addr()
        .map_err(|error| format!("cannot read the bound address: {error}"))
}

/// Serves `routes` (never the ops routes) until shutdown, then stops
/// accepting; open connections finish (the grace deadline in
/// [`Process::run`] bounds the wait).
pub async fn serve(ctx: &Context, listener: TcpListener, routes: Router) -> Result<(), String> {
    crate::raw_http::serve_routes(ctx, listener, routes).await
}
