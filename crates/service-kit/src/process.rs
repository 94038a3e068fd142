use crate::connections::ConnectionLimits;
use crate::health::Health;
use axum::Router;
use event_log::RedisTarget;
use settings::{Action, Invocation, Kind, Setting, SettingError, Settings, Spec};
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use telemetry::{LogFormat, Metrics};
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

/// `AUCTION_LISTEN`; each binary has its own default.
pub const LISTEN: Setting = Setting {
    key: "listen",
    kind: Kind::Address,
    default: None,
    help: "the public port, `host:port`; port 0 picks a free port (logged as `listening on \
           <addr>`)",
    secret: false,
};
/// `AUCTION_OPS_LISTEN`; each binary has its own default.
pub const OPS_LISTEN: Setting = Setting {
    key: "ops_listen",
    kind: Kind::Address,
    default: None,
    help: "where `/healthz`, `/readyz` and `/metrics` are served, and nothing else; never on \
           `AUCTION_LISTEN` (the same port is a bad setting). Port 0 picks a free port (logged \
           as `ops listener on <addr>`)",
    secret: false,
};
pub const REDIS_URL: Setting = Setting {
    key: "redis_url",
    kind: Kind::Text,
    default: Some("redis://127.0.0.1:6379"),
    help: "`redis://[user:pass@]host:port[/db]`; `rediss://` for TLS (system root \
           certificates; a trailing `#insecure` skips verification, for tests only); \
           `redis+cluster://[user:pass@]host:port,host:port,...` for a Redis Cluster given by \
           any of its nodes (see [Redis Cluster](operations.md#redis-cluster); no TLS there yet)",
    secret: false,
};
pub const SHUTDOWN_GRACE_MS: Setting = Setting {
    key: "shutdown_grace_ms",
    kind: Kind::Number {
        min: 0,
        max: 3_600_000,
    },
    default: Some("10000"),
    help: "drain deadline after SIGTERM",
    secret: false,
};
pub const LOG_FORMAT: Setting = Setting {
    key: "log_format",
    kind: Kind::Choice(&["pretty", "json"]),
    default: Some("pretty"),
    help: "`pretty` or `json`; filter with `RUST_LOG`",
    secret: false,
};

/// The settings of every process, read by [`Process::start`].
pub const SETTINGS: &[Setting] = &[LISTEN, OPS_LISTEN, REDIS_URL, SHUTDOWN_GRACE_MS, LOG_FORMAT];

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
    fn read(settings: &Settings) -> Result<Common, SettingError> {
        let redis_url = settings.text(&REDIS_URL)?.unwrap_or_default();
        let listen = settings.listen_addr(&LISTEN)?;
        let ops_listen = settings.listen_addr(&OPS_LISTEN)?;
        // One port for both would either fail to bind or, worse, suggest
        // the ops endpoints can share the public port: say which.
        if listen.port() != 0 && listen.port() == ops_listen.port() {
            return Err(settings.error(
                &OPS_LISTEN,
                format!(
                    "{ops_listen} has the port of AUCTION_LISTEN ({listen}); the ops endpoints need a port of their own"
                ),
            ));
        }
        Ok(Common {
            listen,
            ops_listen,
            redis: event_log::parse_redis_url(&redis_url)
                .map_err(|problem| settings.error(&REDIS_URL, problem))?,
            shutdown_grace: Duration::from_millis(settings.number(&SHUTDOWN_GRACE_MS)?),
            log_format: settings.get::<LogFormat>(&LOG_FORMAT)?,
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
    /// Reads the command line, the layered settings of `spec`'s binary
    /// and the common ones; on a bad argument or setting (an unknown one
    /// included) prints one line naming it and exits 2. `--help`,
    /// `--version` and `--print-config` print and exit 0.
    pub fn start(spec: &'static Spec) -> Process {
        let invocation = Invocation::parse(std::env::args().skip(1))
            .unwrap_or_else(|error| Process::exit_bad_setting(&error));
        match invocation.action {
            Action::Help => Process::exit_printing(&spec.help()),
            Action::Version => {
                Process::exit_printing(&format!("{} {}\n", spec.binary, settings::version()))
            }
            Action::Run | Action::PrintConfig => {}
        }
        let settings = Settings::from_process(spec, crate::spec::ALL, &invocation)
            .unwrap_or_else(|error| Process::exit_bad_setting(&error));
        let common =
            Common::read(&settings).unwrap_or_else(|error| Process::exit_bad_setting(&error));
        if invocation.action == Action::PrintConfig {
            Process::exit_printing(&settings.print_config());
        }
        Process {
            name: spec.binary,
            settings,
            common,
        }
    }

    /// `--help` and the like: `text` on stdout, exit 0.
    fn exit_printing(text: &str) -> ! {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        std::process::exit(0)
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
        let metrics = Metrics::new();
        metrics.set_build_info(self.name, &settings::version());
        let ctx = Context {
            name: self.name,
            common: self.common,
            metrics: Arc::new(metrics),
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
