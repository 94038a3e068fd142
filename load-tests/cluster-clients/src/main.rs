//! Measures Redis Cluster clients on one real cluster (six `redis-server`
//! processes on loopback, 3 primaries + 3 replicas, started fresh for each
//! trial): fred, redis-rs's `cluster-async` as configured by the event log
//! but used bare, and the event log's own connections (redis-rs plus the
//! slot-map re-read after a failed command, and the live connection that
//! ends on a lost node and is opened again).
//!
//! In each trial every client runs at once against the same cluster:
//!
//! - (a) a loop sends `INCR` every 5 ms on a key of one slot; the primary
//!   owning that slot is SIGKILLed; measured: time from the kill to the
//!   first successful `INCR` sent after it, and the errors seen meanwhile.
//! - (b) each client's subscriber has `SSUBSCRIBE`d to the same channels
//!   (10,000 by default, spread over the slots); after the kill, probes are
//!   `SPUBLISH`ed (from a script, so only a primary publishes them) every
//!   200 ms to each channel of the killed primary's slots that some client
//!   has not received yet; measured: time from the kill until every such
//!   channel delivered a probe again, and whether the client told the
//!   application that its subscription (or a node connection) was lost.
//!
//! Medians of an even count are the upper middle value.
//!
//! `cargo run --release -p cluster-clients -- [--runs 3] [--channels 10000]`.
//! Needs `redis-server` and `redis-cli` on the PATH.

use event_log::{
    LiveConnection, LiveMessage, RedisConnection, Watching, connect_manager, parse_redis_url,
};
use fred::clients::SubscriberClient;
use fred::prelude::{
    ClientLike, EventInterface, KeysInterface, PubsubInterface, ReconnectPolicy, ServerConfig,
};
use futures_util::future::join_all;
use redis::AsyncCommands;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::RedisCluster;
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long after the kill a trial waits for every client to recover.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// Pause between two commands of the command loop.
const COMMAND_INTERVAL: Duration = Duration::from_millis(5);
/// Outer bound on one command, whatever the client's own timeouts.
const COMMAND_BOUND: Duration = Duration::from_secs(3);
/// Pause between two rounds of probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Subscriptions sent at once (the hub watches in batches of 256 too).
const SUBSCRIBE_BATCH: usize = 256;
/// Bound on subscribing to every channel, per client.
const SUBSCRIBE_BOUND: Duration = Duration::from_secs(120);
/// The project's deadlines for cluster connections (event-log's
/// `connection.rs`), given to fred too so both wait the same.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1200);
/// A bound on anything that talks to the cluster while setting up.
const SETUP_BOUND: Duration = Duration::from_secs(20);

/// The probe published before the kill: not a notice, so the event log's
/// live connection reports it as malformed.
const BEFORE: &str = "before";
/// The probe published after the kill: a well-formed notice (format v1).
const AFTER: &str = "v1\n1-1\n0-0\nbid\n\n{}";

/// `SPUBLISH` from a script without `no-writes`: refused by replicas.
const PUBLISH_SCRIPT: &str = "#!lua\nreturn redis.call('SPUBLISH', KEYS[1], ARGV[1])";

const CLIENTS: [&str; 3] = ["fred", "redis-rs", "event-log"];

struct Args {
    runs: usize,
    channels: usize,
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        runs: 3,
        channels: 10_000,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: usize = value
            .parse()
            .map_err(|_| format!("{flag} {value:?} is not a number"))?;
        match flag.as_str() {
            "--runs" if (1..=20).contains(&number) => args.runs = number,
            "--channels" if (1..=50_000).contains(&number) => args.channels = number,
            _ => {
                return Err(format!(
                    "usage: cluster-clients [--runs 1..=20] [--channels 1..=50000] (got {flag} {value})"
                )
                .into());
            }
        }
    }
    Ok(args)
}

/// CRC16/XMODEM of the hash tag, modulo 16384: the key's cluster slot.
fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &bytes[open + 1..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The live path's channel name for auction `c{i}`.
fn channel(i: usize) -> String {
    format!("auction:{{c{i}}}:live")
}

/// What one client saw in one trial.
#[derive(Default, Clone)]
struct Outcome {
    /// Kill → first successful command sent after it.
    command_recovery: Option<Duration>,
    command_errors: u64,
    /// Kill → the last of the killed primary's channels delivering again.
    resubscribe: Option<Duration>,
    /// Channels of the killed primary delivering again / all of them.
    channels_back: usize,
    /// Kill → the first signal the subscriber gave the application that
    /// its subscription (or a node connection) was lost.
    loss_signal: Option<Duration>,
    /// Messages the subscriber dropped on its own (fred's broadcast lag).
    dropped: u64,
}

/// Receipts of one subscriber: channels seen before the kill, and when each
/// channel delivered first after it.
struct Receipts {
    killed_at: Mutex<Option<Instant>>,
    before: Mutex<HashSet<String>>,
    after: Mutex<HashMap<String, Instant>>,
    loss_signal: Mutex<Option<Instant>>,
    dropped: AtomicU64,
}

impl Receipts {
    fn new() -> Arc<Receipts> {
        Arc::new(Receipts {
            killed_at: Mutex::new(None),
            before: Mutex::new(HashSet::new()),
            after: Mutex::new(HashMap::new()),
            loss_signal: Mutex::new(None),
            dropped: AtomicU64::new(0),
        })
    }

    fn killed(&self) -> bool {
        lock(&self.killed_at).is_some()
    }

    /// A probe arrived; `after` says it was published after the kill (a
    /// probe from before it may still be queued in the client).
    fn received(&self, channel: &str, after: bool) {
        let now = Instant::now();
        if after {
            if self.killed() {
                lock(&self.after).entry(channel.to_owned()).or_insert(now);
            }
        } else {
            lock(&self.before).insert(channel.to_owned());
        }
    }

    /// The client said it lost something (only counted after the kill).
    fn lost(&self) {
        if self.killed() {
            lock(&self.loss_signal).get_or_insert_with(Instant::now);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Seeds as `host:port` pairs.
fn seeds(cluster_url: &str) -> Result<Vec<(String, u16)>, BoxError> {
    let nodes = cluster_url
        .strip_prefix("redis+cluster://")
        .ok_or("not a cluster URL")?;
    nodes
        .split(',')
        .map(|node| {
            let (host, port) = node.rsplit_once(':').ok_or("seed without a port")?;
            Ok((host.to_owned(), port.parse()?))
        })
        .collect()
}

/// fred with the project's deadlines, reconnecting forever with a backoff
/// of 20 ms doubling to 500 ms (like redis-rs's retry waits and the event
/// log's rebuild interval), and a broadcast large enough for the probes
/// (the project's push queue is 65,536 too).
fn fred_builder(seeds: &[(String, u16)]) -> fred::types::Builder {
    let config = fred::prelude::Config {
        server: ServerConfig::new_clustered(seeds.to_vec()),
        ..Default::default()
    };
    let mut builder = fred::types::Builder::from_config(config);
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 20, 500, 2))
        .with_connection_config(|config| {
            config.connection_timeout = CONNECT_TIMEOUT;
            config.internal_command_timeout = CONNECT_TIMEOUT;
        })
        .with_performance_config(|config| {
            config.default_command_timeout = RESPONSE_TIMEOUT;
            config.broadcast_channel_capacity = 65_536;
        });
    builder
}

/// redis-rs's cluster client with the settings of event-log's
/// `RedisTarget::cluster_client`, used without the event log's wrapper.
fn redis_rs_client(seeds: &[(String, u16)]) -> redis::RedisResult<ClusterClient> {
    ClusterClient::builder(
        seeds
            .iter()
            .map(|(host, port)| format!("redis://{host}:{port}")),
    )
    .use_protocol(redis::ProtocolVersion::RESP3)
    .connection_timeout(CONNECT_TIMEOUT)
    .response_timeout(RESPONSE_TIMEOUT)
    .retries(2)
    .min_retry_wait(20)
    .max_retry_wait(200)
    .build()
}

/// One client's command side.
enum Commands {
    Fred(fred::clients::Client),
    RedisRs(ClusterConnection),
    EventLog(RedisConnection),
}

impl Commands {
    async fn incr(&mut self, key: &str) -> Result<i64, String> {
        let result = match self {
            Commands::Fred(client) => {
                tokio::time::timeout(COMMAND_BOUND, client.incr::<i64, _>(key))
                    .await
                    .map(|result| result.map_err(|error| error.to_string()))
            }
            Commands::RedisRs(conn) => tokio::time::timeout(COMMAND_BOUND, conn.incr(key, 1))
                .await
                .map(|result| result.map_err(|error: redis::RedisError| error.to_string())),
            Commands::EventLog(conn) => tokio::time::timeout(COMMAND_BOUND, conn.incr(key, 1))
                .await
                .map(|result| result.map_err(|error: redis::RedisError| error.to_string())),
        };
        result.unwrap_or_else(|_| Err("no answer within 3 s".to_owned()))
    }
}

/// One client's subscriber, kept alive for the trial.
enum Subscriber {
    Fred(SubscriberClient),
    RedisRs(ClusterConnection),
    /// The task that owns the live connection and reopens it.
    EventLog(tokio::task::JoinHandle<()>),
}

async fn subscribe_all<F, Fut>(channels: &[String], subscribe: F) -> Result<(), BoxError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let work = async {
        for batch in channels.chunks(SUBSCRIBE_BATCH) {
            let results = join_all(batch.iter().cloned().map(&subscribe)).await;
            if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
                return Err(error);
            }
        }
        Ok(())
    };
    tokio::time::timeout(SUBSCRIBE_BOUND, work)
        .await
        .map_err(|_| "subscribing took over 120 s")?
        .map_err(Into::into)
}

async fn fred_subscriber(
    seeds: &[(String, u16)],
    channels: &[String],
    receipts: Arc<Receipts>,
) -> Result<Subscriber, BoxError> {
    let client = fred_builder(seeds).build_subscriber_client()?;
    tokio::time::timeout(SETUP_BOUND, client.init())
        .await
        .map_err(|_| "fred did not connect")??;
    let _resubscribe = client.manage_subscriptions();
    let mut messages = client.message_rx();
    let on_message = receipts.clone();
    tokio::spawn(async move {
        loop {
            match messages.recv().await {
                Ok(message) => {
                    let after = message.value.as_bytes() != Some(BEFORE.as_bytes());
                    on_message.received(&message.channel, after);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(count)) => {
                    on_message.dropped.fetch_add(count, Ordering::Relaxed);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    // What fred tells an application about connections: reconnections
    // (which `manage_subscriptions` acts on), errors, unresponsive nodes.
    let mut reconnects = client.reconnect_rx();
    let on_reconnect = receipts.clone();
    tokio::spawn(async move {
        while reconnects.recv().await.is_ok() {
            on_reconnect.lost();
        }
    });
    let mut errors = client.error_rx();
    let on_error = receipts.clone();
    tokio::spawn(async move {
        while errors.recv().await.is_ok() {
            on_error.lost();
        }
    });
    let mut unresponsive = client.unresponsive_rx();
    tokio::spawn(async move {
        while unresponsive.recv().await.is_ok() {
            receipts.lost();
        }
    });
    subscribe_all(channels, |channel| {
        let client = client.clone();
        async move {
            client
                .ssubscribe(channel)
                .await
                .map_err(|error| error.to_string())
        }
    })
    .await?;
    Ok(Subscriber::Fred(client))
}

async fn redis_rs_subscriber(
    seeds: &[(String, u16)],
    channels: &[String],
    receipts: Arc<Receipts>,
) -> Result<Subscriber, BoxError> {
    let (tx, mut pushes) = mpsc::unbounded_channel::<redis::PushInfo>();
    let config = ClusterConfig::new().set_push_sender(move |push: redis::PushInfo| {
        let _ = tx.send(push);
        Ok::<(), std::convert::Infallible>(())
    });
    let conn = tokio::time::timeout(
        SETUP_BOUND,
        redis_rs_client(seeds)?.get_async_connection_with_config(config),
    )
    .await
    .map_err(|_| "redis-rs did not connect")??;
    tokio::spawn(async move {
        while let Some(push) = pushes.recv().await {
            match push.kind {
                redis::PushKind::SMessage | redis::PushKind::Message => {
                    if let (Some(redis::Value::BulkString(name)), Some(payload)) =
                        (push.data.first(), push.data.get(1))
                    {
                        let before = matches!(payload, redis::Value::BulkString(bytes)
                            if bytes.as_slice() == BEFORE.as_bytes());
                        receipts.received(&String::from_utf8_lossy(name), !before);
                    }
                }
                redis::PushKind::Disconnection => receipts.lost(),
                _ => {}
            }
        }
    });
    subscribe_all(channels, |channel| {
        let mut conn = conn.clone();
        async move {
            conn.ssubscribe(channel)
                .await
                .map_err(|error| error.to_string())
        }
    })
    .await?;
    Ok(Subscriber::RedisRs(conn))
}

/// The event log's live connection, reopened the way the hub does it (50 ms
/// backoff doubling to 2 s, 2 s bound on each step) whenever it ends.
async fn event_log_subscriber(
    url: &str,
    channels: &[String],
    receipts: Arc<Receipts>,
    subscribed: Arc<AtomicBool>,
) -> Result<Subscriber, BoxError> {
    let target = parse_redis_url(url)?;
    let auctions: Vec<auction_domain::AuctionId> = (0..channels.len())
        .map(|i| auction_domain::AuctionId::parse(&format!("c{i}")))
        .collect::<Result<_, _>>()
        .map_err(|_| "an auction id of the probe channels is invalid")?;
    let task = tokio::spawn(async move {
        const STEP: Duration = Duration::from_secs(2);
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        loop {
            if !first {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            first = false;
            let Ok(Ok(mut connection)) =
                tokio::time::timeout(STEP, LiveConnection::open(&target)).await
            else {
                continue;
            };
            let mut watched = Some(Watching::Now);
            for batch in auctions.chunks(SUBSCRIBE_BATCH) {
                match tokio::time::timeout(STEP, connection.watch(batch)).await {
                    Ok(Ok(Watching::Now)) => {}
                    Ok(Ok(Watching::Later)) => watched = Some(Watching::Later),
                    _ => {
                        watched = None;
                        break;
                    }
                }
            }
            let Some(watched) = watched else {
                continue;
            };
            // On a cluster each node's subscriptions are announced once
            // made: subscribed once every channel was.
            let mut announced = 0;
            if watched == Watching::Now {
                subscribed.store(true, Ordering::Relaxed);
            }
            let opened = Instant::now();
            // Like the hub: a ping every second, bounded at 2 s; a failed
            // one ends the connection.
            let mut ping = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    message = connection.next() => match message {
                        // The probe from before the kill is not a notice.
                        Some(LiveMessage::Malformed { channel }) => receipts.received(&channel, false),
                        Some(LiveMessage::Event { auction, .. }) => {
                            receipts.received(&format!("auction:{{{auction}}}:live"), true);
                        }
                        Some(LiveMessage::Subscribed { auctions: made }) => {
                            announced += made.len();
                            if announced >= auctions.len() {
                                subscribed.store(true, Ordering::Relaxed);
                            }
                        }
                        None => break,
                    },
                    _ = ping.tick() => {
                        if !matches!(tokio::time::timeout(STEP, connection.ping()).await, Ok(Ok(()))) {
                            break;
                        }
                    }
                }
            }
            receipts.lost();
            if opened.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(50);
            }
        }
    });
    Ok(Subscriber::EventLog(task))
}

/// Publishes `payload` to each channel once, through a cluster connection
/// made for this round (so it follows the current slot map); errors are
/// left to the next round.
///
/// From a script that may write, as the project's notices are published
/// by its write scripts: only a primary runs it. A bare `SPUBLISH` is also
/// served by a replica, which would show subscriptions that reached the
/// replica delivering while the shard has no primary, which no notice
/// can do.
async fn publish_round(seeds: &[(String, u16)], channels: &[String], payload: &str) {
    let round = async {
        let Ok(client) = redis_rs_client(seeds) else {
            return;
        };
        let Ok(conn) = client.get_async_connection().await else {
            return;
        };
        for batch in channels.chunks(512) {
            join_all(batch.iter().map(|channel| {
                let mut conn = conn.clone();
                async move {
                    let _: redis::RedisResult<i64> = redis::cmd("EVAL")
                        .arg(PUBLISH_SCRIPT)
                        .arg(1)
                        .arg(channel)
                        .arg(payload)
                        .query_async(&mut conn)
                        .await;
                }
            }))
            .await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), round).await;
}

/// The command loop of one client: (first success after the kill, errors
/// after the kill).
async fn command_loop(
    mut commands: Commands,
    key: String,
    killed_at: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
) -> (Option<Duration>, u64) {
    let mut errors = 0;
    while !stop.load(Ordering::Relaxed) {
        let killed = *lock(&killed_at);
        let result = commands.incr(&key).await;
        if let Some(killed) = killed {
            match result {
                Ok(_) => return (Some(killed.elapsed()), errors),
                Err(_) => errors += 1,
            }
        }
        tokio::time::sleep(COMMAND_INTERVAL).await;
    }
    (None, errors)
}

struct Trial {
    failover: Option<Duration>,
    outcomes: Vec<Outcome>,
}

async fn trial(args: &Args) -> Result<Trial, BoxError> {
    let mut cluster = tokio::task::spawn_blocking(RedisCluster::start).await?;
    let url = cluster.url();
    let seeds = seeds(&url)?;
    // The slot of the command loops, and its primary: the one killed.
    let key_tag = "{load}";
    let slot = slot_of(key_tag);
    let cluster_slot = cluster.slot_of(key_tag);
    if slot != cluster_slot {
        return Err(format!("slot computed {slot}, the cluster says {cluster_slot}").into());
    }
    let primary = cluster.primary_of_slot(slot);
    let served = |s: u16| primary.slots.iter().any(|&(a, b)| (a..=b).contains(&s));
    let channels: Vec<String> = (0..args.channels).map(channel).collect();
    let probed: Vec<String> = channels
        .iter()
        .filter(|name| served(slot_of(name)))
        .cloned()
        .collect();

    let receipts: Vec<Arc<Receipts>> = CLIENTS.iter().map(|_| Receipts::new()).collect();
    let event_log_subscribed = Arc::new(AtomicBool::new(false));
    let subscribers = vec![
        fred_subscriber(&seeds, &channels, receipts[0].clone()).await?,
        redis_rs_subscriber(&seeds, &channels, receipts[1].clone()).await?,
        event_log_subscriber(
            &url,
            &channels,
            receipts[2].clone(),
            event_log_subscribed.clone(),
        )
        .await?,
    ];
    let wait_subscribed = async {
        while !event_log_subscribed.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(SUBSCRIBE_BOUND, wait_subscribed)
        .await
        .map_err(|_| "the event log's live connection did not subscribe")?;

    // Every subscriber gets the probed channels before the kill.
    let before = Instant::now();
    loop {
        let missing: Vec<String> = probed
            .iter()
            .filter(|name| receipts.iter().any(|r| !lock(&r.before).contains(*name)))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        if before.elapsed() > SETUP_BOUND {
            return Err(
                format!("{} channels did not deliver before the kill", missing.len()).into(),
            );
        }
        publish_round(&seeds, &missing, BEFORE).await;
        tokio::time::sleep(PROBE_INTERVAL).await;
    }

    // The command loops, already running when the primary dies.
    let fred_commands = fred_builder(&seeds).build()?;
    tokio::time::timeout(SETUP_BOUND, fred_commands.init())
        .await
        .map_err(|_| "fred did not connect")??;
    let redis_rs_commands =
        tokio::time::timeout(SETUP_BOUND, redis_rs_client(&seeds)?.get_async_connection())
            .await
            .map_err(|_| "redis-rs did not connect")??;
    let event_log_commands = connect_manager(&parse_redis_url(&url)?, || {})?;
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = [
        Commands::Fred(fred_commands.clone()),
        Commands::RedisRs(redis_rs_commands),
        Commands::EventLog(event_log_commands),
    ]
    .into_iter()
    .zip(CLIENTS)
    .map(|(commands, name)| {
        tokio::spawn(command_loop(
            commands,
            format!("{key_tag}:{name}"),
            killed_at.clone(),
            stop.clone(),
        ))
    })
    .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let port = primary.port;
    cluster.kill(port);
    let kill = Instant::now();
    *lock(&killed_at) = Some(kill);
    for receipt in &receipts {
        *lock(&receipt.killed_at) = Some(kill);
    }
    println!(
        "  killed the primary on port {port} ({} of {} channels on its slots)",
        probed.len(),
        channels.len()
    );
    let cluster = Arc::new(cluster);
    let watcher = cluster.clone();
    let failover = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            watcher.wait_for_failover(port, RECOVERY_BOUND)
        }))
        .ok()
        .map(|_| kill.elapsed())
    });

    // Probes until every client got every probed channel back, or the bound.
    while kill.elapsed() < RECOVERY_BOUND {
        let missing: Vec<String> = probed
            .iter()
            .filter(|name| receipts.iter().any(|r| !lock(&r.after).contains_key(*name)))
            .cloned()
            .collect();
        let commands_done = loops.iter().all(tokio::task::JoinHandle::is_finished);
        if missing.is_empty() && commands_done {
            break;
        }
        publish_round(&seeds, &missing, AFTER).await;
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    stop.store(true, Ordering::Relaxed);
    let failover = failover.await.ok().flatten();
    let mut outcomes = Vec::new();
    for (handle, receipt) in loops.into_iter().zip(&receipts) {
        let (command_recovery, command_errors) =
            tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or((None, 0));
        let after = lock(&receipt.after);
        let back: Vec<Instant> = probed
            .iter()
            .filter_map(|c| after.get(c))
            .copied()
            .collect();
        outcomes.push(Outcome {
            command_recovery,
            command_errors,
            resubscribe: (back.len() == probed.len())
                .then(|| back.iter().max().map(|at| at.duration_since(kill)))
                .flatten(),
            channels_back: back.len(),
            loss_signal: lock(&receipt.loss_signal).map(|at| at.duration_since(kill)),
            dropped: receipt.dropped.load(Ordering::Relaxed),
        });
    }
    // Close every client before the cluster goes.
    let _ = tokio::time::timeout(Duration::from_secs(2), fred_commands.quit()).await;
    for subscriber in subscribers {
        match subscriber {
            Subscriber::Fred(client) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), client.quit()).await;
            }
            Subscriber::RedisRs(conn) => drop(conn),
            Subscriber::EventLog(task) => task.abort(),
        }
    }
    for (name, outcome) in CLIENTS.iter().zip(&outcomes) {
        println!(
            "  {name:<10} (a) {:>8} errors {:>4}  (b) {:>8} channels {}/{}  loss signal {:>8}  dropped {}",
            ms(outcome.command_recovery),
            outcome.command_errors,
            ms(outcome.resubscribe),
            outcome.channels_back,
            probed.len(),
            ms(outcome.loss_signal),
            outcome.dropped,
        );
    }
    println!("  failover (replica serving, cluster ok) {}", ms(failover));
    drop(cluster);
    Ok(Trial { failover, outcomes })
}

fn ms(value: Option<Duration>) -> String {
    match value {
        Some(duration) => format!("{} ms", duration.as_millis()),
        None => "none".to_owned(),
    }
}

/// Median and max over the trials; `None` if any trial did not recover.
fn summary(values: &[Option<Duration>]) -> String {
    let mut known: Vec<Duration> = values.iter().flatten().copied().collect();
    known.sort_unstable();
    let missing = values.len() - known.len();
    let text = match (known.get(known.len() / 2), known.last()) {
        (Some(median), Some(max)) => format!("{} / {}", median.as_millis(), max.as_millis()),
        _ => "-".to_owned(),
    };
    if missing > 0 {
        format!("{text} ({missing} of {} not within 30 s)", values.len())
    } else {
        text
    }
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut trials = Vec::new();
        for run in 1..=args.runs {
            println!("trial {run} of {}", args.runs);
            trials.push(tokio::time::timeout(Duration::from_secs(300), trial(&args)).await??);
        }
        println!();
        println!(
            "failover (kill to replica serving, cluster ok), median / max ms: {}",
            summary(&trials.iter().map(|t| t.failover).collect::<Vec<_>>())
        );
        println!(
            "| client | (a) kill to first INCR ok, median / max ms | (a) errors | (b) kill to every channel delivering, median / max ms | loss signalled | dropped |"
        );
        println!("|---|---|---|---|---|---|");
        for (i, name) in CLIENTS.iter().enumerate() {
            let of = |f: fn(&Outcome) -> Option<Duration>| -> Vec<Option<Duration>> {
                trials.iter().map(|t| f(&t.outcomes[i])).collect()
            };
            let errors: Vec<String> = trials
                .iter()
                .map(|t| t.outcomes[i].command_errors.to_string())
                .collect();
            let signalled = trials
                .iter()
                .filter(|t| t.outcomes[i].loss_signal.is_some())
                .count();
            let dropped: u64 = trials.iter().map(|t| t.outcomes[i].dropped).sum();
            println!(
                "| {name} | {} | {} | {} | {signalled} of {} trials | {dropped} |",
                summary(&of(|o| o.command_recovery)),
                errors.join(", "),
                summary(&of(|o| o.resubscribe)),
                trials.len(),
            );
        }
        Ok(())
    })
}
