//! Fan-out scenarios against an SSE or WebSocket server: ours or nchan.
//!
//! `clients` clients are spread evenly over `auctions` auctions (client `i`
//! watches auction `i % auctions`); event `k` is a bid of amount `BASE + k`
//! on auction `k % auctions`. The send time of event `k` is taken just
//! before it is published, and a client that receives amount `BASE + k`
//! records `now - send_time[k]`, so latency, missing and duplicated events
//! are exact per client.
//!
//! One runner covers every scenario of the benchmark:
//! - idle: `--events 0`, RSS per connection;
//! - fan-out: one auction, events at full speed or at `--rate`;
//! - churn: `--churn-every K`, each client disconnects after every K events
//!   and resumes from its last id, so the server's resume path is under
//!   load while events flow;
//! - many auctions: `--auctions A`, one subscription per auction;
//! - several auctions on one stream (SSE, ours): `--stream-auctions N`,
//!   the auctions are cut into groups of N and client `i` watches group
//!   `i % (A / N)` over one `/events?auctions=...` stream, taking the bids
//!   of all N; against the same clients watching each auction on its own
//!   stream (`--clients C * N --auctions N`: the same events, the same
//!   deliveries);
//! - storm: `--storm-from K`, the events are published first, then every
//!   client opens at once resuming from the id of event K (see [`Storm`]).
//!
//! How clients read (`--reading`):
//! - `batch` (the default): each read takes up to 16 KiB, whatever has
//!   piled up since the client's task last ran;
//! - `eager`: each read is sized to one message (the length of the last one
//!   the client parsed), so a client reads as soon as its socket is
//!   readable and takes one message per read, as a browser that keeps up
//!   does; several queued messages cost several reads;
//! - `tungstenite` (WebSocket only): each client reads through
//!   tokio-tungstenite's `WebSocketStream`, one message per
//!   `StreamExt::next()`, as an application on that library does (the
//!   library's own buffering and frame parsing included).
//!
//! WebSocket compression (`--deflate true`, the raw-socket reader only):
//! each client offers permessage-deflate and inflates the compressed
//! messages it gets (each alone: the edge compresses without context
//! takeover); `ws_bytes_per_delivery` is what the clients read over the
//! events they counted.
//!
//! How events are published (`--publish`):
//! - `direct` (the default): ours are appended to Redis with the bidder's
//!   script, nchan's are POSTed through a pooled HTTP client, the floor's
//!   go on its control connection;
//! - `http`: over one keep-alive HTTP/1.1 connection, one request at a
//!   time: ours as bids through the bidder's API (`--bidder URL --token
//!   TOKEN`, a seller's token: it creates the auctions too), nchan's to its
//!   publisher location; the floor keeps its control connection (one
//!   connection already);
//! - `pipelined`: the same connection, but each request is written when
//!   its event is due, without waiting for the answers before it (taken in
//!   order as they arrive; any but a success fails the run), so a server
//!   slow to answer is still offered the full rate.

use crate::proc_stats::{cpu_seconds, rss_bytes};
use crate::redis_stats::command_calls;
use crate::target::{NCHAN_WS_PROTOCOL, Publisher, System, Target, Transport};
use crate::wire::{client_frame, field_number, find, line_value, server_frame};
use crate::{Args, ensure_loopback};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Amount of the first event; event `k` has amount `BASE + k`.
pub const BASE: u64 = 1_000;
/// Amount of the warm-up event each auction gets before the measured ones:
/// the first event through a system pays one-off costs (scripts loaded,
/// channels created, buffers grown) that are not what the figures are for.
pub const WARM_UP: u64 = BASE - 1;

struct Shared {
    start: Instant,
    /// Send time of event k, nanoseconds after `start` (0 = not sent yet).
    sent_at: Vec<AtomicU64>,
    connected: AtomicUsize,
    /// Clients that received their auction's warm-up event.
    warmed: AtomicUsize,
    events: usize,
    /// Events before this one are not expected: a storm's clients resume
    /// after them (one that arrives anyway counts as a duplicate).
    first: usize,
    auctions: usize,
    /// Disconnect and resume after this many events (0: never).
    churn_every: usize,
    reading: Reading,
    /// WebSocket clients offer permessage-deflate.
    deflate: bool,
    /// Bytes the WebSocket clients read after their handshakes.
    ws_bytes: AtomicU64,
    deadline: Instant,
}

impl Shared {
    /// Waits until `count` reaches `target`, or fails at the deadline.
    async fn wait_for(&self, count: &AtomicUsize, target: usize, what: &str) -> Result<(), String> {
        while count.load(Ordering::Relaxed) < target {
            if Instant::now() > self.deadline {
                let reached = count.load(Ordering::Relaxed);
                return Err(format!("only {reached} of {target} {what}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// How clients read their sockets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reading {
    /// Up to 16 KiB a read.
    Batch,
    /// One message a read.
    Eager,
    /// tokio-tungstenite's stream, one message per `next()`.
    Tungstenite,
}

impl Reading {
    fn parse(text: &str) -> Result<Reading, String> {
        match text {
            "batch" => Ok(Reading::Batch),
            "eager" => Ok(Reading::Eager),
            "tungstenite" => Ok(Reading::Tungstenite),
            _ => Err(format!(
                "--reading: expected batch, eager or tungstenite, got {text:?}"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reading::Batch => "batch",
            Reading::Eager => "eager",
            Reading::Tungstenite => "tungstenite",
        }
    }

    /// The next read's size: all of `chunk` (batch), or the last message's
    /// length (eager). The raw readers' concern: a tungstenite client reads
    /// through its library.
    fn read_size(self, chunk: usize, last_message: usize) -> usize {
        match self {
            Reading::Batch | Reading::Tungstenite => chunk,
            Reading::Eager => last_message.clamp(16, chunk),
        }
    }
}

/// What one client watches.
struct Watch {
    target: Target,
    /// The auction, or the comma-separated auctions of a stream of several.
    auction: String,
    /// The (first) auction's index: this client expects events `k` with
    /// `index <= k % auctions < index + span`.
    index: usize,
    /// How many auctions its stream carries (1: the auction's own stream).
    span: usize,
    /// How many events that is.
    expected: usize,
    /// The id the client's first connection resumes from ("" = none).
    resume_from: String,
}

struct ClientResult {
    /// Events this client should receive.
    expected: usize,
    received: usize,
    duplicates: usize,
    /// Connections the server closed (slow consumer, drain), each resumed.
    reconnects: usize,
    /// Connections this client closed on purpose (churn), each resumed.
    churn_resumes: usize,
    /// Streams the server refused (503, an `error` frame), each retried.
    refusals: usize,
    /// New events that arrived after a later one.
    out_of_order: usize,
    /// The latest event received so far.
    last_event: Option<usize>,
    /// Delivery latencies, ns. Kept raw and reserved up front: a histogram
    /// per client would allocate and zero its buckets while the first
    /// events arrive, and that stall would be measured as latency.
    latencies: Vec<u64>,
    last_delivery: Option<Instant>,
    /// `seen[slot(k)]`: event k arrived (see [`ClientResult::record`]).
    seen: Vec<bool>,
    /// Warm-up events received (one per auction watched).
    warm_ups: usize,
}

/// The processes of the server under test: their CPU and RSS are summed
/// (nginx runs a master and workers).
#[derive(Clone)]
struct Server(Vec<u32>);

impl Server {
    fn cpu_seconds(&self) -> Option<f64> {
        self.0.iter().map(|pid| cpu_seconds(*pid)).sum()
    }
    /// Each process's CPU seconds so far, in `--pids` order.
    fn cpu_each(&self) -> Vec<Option<f64>> {
        self.0.iter().map(|pid| cpu_seconds(*pid)).collect()
    }
    fn rss_bytes(&self) -> Option<u64> {
        self.0.iter().map(|pid| rss_bytes(*pid)).sum()
    }
}

pub async fn run(args: &Args, transport: Transport) -> Result<(), String> {
    let system = System::parse(&args.text("system", "ours"))?;
    let server_url = args.text("server", &args.text("edge", "http://127.0.0.1:8081"));
    ensure_loopback(&server_url)?;
    let clients: usize = args.get("clients", 1000)?;
    let auction_count: usize = args.get("auctions", 1)?;
    let span: usize = args.get("stream-auctions", 1)?;
    let events: usize = args.get("events", 1000)?;
    let rate: f64 = args.get("rate", 0.0)?; // events per second; 0 = as fast as possible
    let churn_every: usize = args.get("churn-every", 0)?;
    let storm_from = match args.text("storm-from", "").as_str() {
        "" => None,
        text => Some(
            text.parse::<usize>()
                .map_err(|_| format!("--storm-from: cannot parse {text:?}"))?,
        ),
    };
    let reading = Reading::parse(&args.text("reading", "batch"))?;
    let deflate: bool = args.get("deflate", false)?;
    if deflate && (transport != Transport::Ws || reading == Reading::Tungstenite) {
        return Err("--deflate true is for WebSocket clients read raw (ws, batch or eager)".into());
    }
    let settle_ms: u64 = args.get("settle-ms", 2000)?;
    let timeout_s: u64 = args.get("timeout-s", 120)?;
    let server = Server(args.list("pids", &args.text("edge-pid", ""))?);
    if auction_count == 0 || clients.saturating_mul(span.max(1)) < auction_count {
        return Err("--auctions must be between 1 and --clients (x --stream-auctions)".into());
    }
    if span == 0 || !auction_count.is_multiple_of(span) || clients < auction_count / span {
        return Err(
            "--stream-auctions N: N divides --auctions, one client per group at least".into(),
        );
    }
    if span > 1 && (transport != Transport::Sse || system != System::Ours) {
        return Err("--stream-auctions: several auctions on one stream is our sse-edge's".into());
    }
    if reading == Reading::Tungstenite && transport != Transport::Ws {
        return Err("--reading tungstenite is for WebSocket clients (ws)".into());
    }
    let addr = server_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    let publish = args.text("publish", "direct");
    let publisher = match (system, publish.as_str()) {
        (System::Ours, "direct") => {
            let redis_url = args.text("redis", "redis://127.0.0.1:6379");
            ensure_loopback(&redis_url)?;
            Publisher::ours(&redis_url)?
        }
        (System::Ours, "http" | "pipelined") => {
            let bidder = args.text("bidder", "");
            if bidder.is_empty() {
                return Err("--publish http: our events go through --bidder URL".into());
            }
            ensure_loopback(&bidder)?;
            Publisher::bidder(&bidder, &args.text("token", ""))?
        }
        (System::Nchan, "direct") => Publisher::nchan(&server_url, transport)?,
        (System::Nchan, "http" | "pipelined") => {
            Publisher::nchan_keep_alive(&server_url, transport)
        }
        (System::Floor, "direct" | "http" | "pipelined") => Publisher::floor(&addr).await?,
        (_, other) => {
            return Err(format!(
                "--publish: expected direct, http or pipelined, got {other:?}"
            ));
        }
    };
    let run_id = std::process::id();
    let auctions: Vec<String> = (0..auction_count)
        .map(|index| format!("bench-{run_id}-{index}"))
        .collect();
    publisher.prepare(&auctions).await?;
    let target = Target { system, addr };
    if let Some(from) = storm_from {
        if auction_count != 1 || system == System::Floor || from + 1 >= events {
            return Err("--storm-from K: one auction, ours or nchan, K + 1 < --events".into());
        }
        // Our edge's metrics are on its ops listener, not on --server.
        let ops = match system {
            System::Ours => {
                let ops = args.text("ops", "");
                if ops.is_empty() {
                    return Err(
                        "--storm-from with --system ours needs --ops URL (the edge's ops listener, AUCTION_OPS_LISTEN)".into(),
                    );
                }
                ensure_loopback(&ops)?;
                Some(ops.trim_end_matches('/').to_owned())
            }
            _ => None,
        };
        let storm = Storm {
            target,
            ops,
            auction: auctions[0].clone(),
            clients,
            events,
            from,
            reading,
            timeout: Duration::from_secs(timeout_s),
            redis: (system == System::Ours).then(|| args.text("redis", "redis://127.0.0.1:6379")),
        };
        return storm.run(&publisher, &server, transport).await;
    }

    let rss_before = server.rss_bytes();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        sent_at: (0..events).map(|_| AtomicU64::new(0)).collect(),
        connected: AtomicUsize::new(0),
        warmed: AtomicUsize::new(0),
        events,
        first: 0,
        auctions: auction_count,
        churn_every,
        reading,
        deflate,
        ws_bytes: AtomicU64::new(0),
        deadline: Instant::now() + Duration::from_secs(timeout_s),
    });
    let mut tasks = Vec::with_capacity(clients);
    let groups = auction_count / span;
    for client in 0..clients {
        let index = client % groups * span;
        let watch = Watch {
            target: target.clone(),
            auction: auctions[index..index + span].join(","),
            index,
            span,
            expected: (index..index + span)
                .map(|i| events / auction_count + usize::from(i < events % auction_count))
                .sum(),
            resume_from: String::new(),
        };
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            run_client(transport, &watch, &shared).await
        }));
        // Pace the connects a little so the accept queue never overflows.
        if tasks.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    shared
        .wait_for(&shared.connected, clients, "clients connected")
        .await?;
    tokio::time::sleep(Duration::from_millis(settle_ms)).await;
    let rss_connected = server.rss_bytes();
    println!(
        "scenario              {} {} {}",
        system.name(),
        if transport == Transport::Sse {
            "sse"
        } else {
            "ws"
        },
        match (events, churn_every, auction_count, span) {
            (0, _, _, 1) => "idle",
            (0, _, _, _) => "idle-multi",
            (_, 0, _, 2..) => "multi",
            (_, 0, 1, _) => "fan-out",
            (_, 0, _, _) => "many-auctions",
            _ => "churn",
        }
    );
    println!("clients               {clients}");
    println!("reading               {}", reading.name());
    println!("auctions              {auction_count}");
    println!("auctions_per_stream   {span}");
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        println!("server_rss_mib        {:.1}", after as f64 / 1048576.0);
        println!(
            "rss_per_conn_kib      {:.2}",
            after.saturating_sub(before) as f64 / 1024.0 / clients as f64
        );
    }
    if events == 0 {
        for task in tasks {
            task.abort();
        }
        return Ok(());
    }

    for auction in &auctions {
        publisher.publish(auction, WARM_UP).await?;
    }
    shared
        .wait_for(&shared.warmed, clients, "clients got the warm-up event")
        .await?;

    // The server's peak RSS while events flow, sampled every 100 ms from
    // the first event to the last delivery.
    let flowing = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (server, flowing) = (server.clone(), flowing.clone());
        tokio::spawn(async move {
            loop {
                if let Some(rss) = server.rss_bytes() {
                    flowing.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let cpu_before = server.cpu_seconds();
    let cpu_each_before = server.cpu_each();
    let own_cpu_before = cpu_seconds(std::process::id());
    let publish_started = Instant::now();
    for k in 0..events {
        if rate > 0.0 {
            let due = publish_started + Duration::from_secs_f64(k as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = shared.start.elapsed().as_nanos() as u64;
        shared.sent_at[k].store(sent.max(1), Ordering::Relaxed);
        let (auction, amount) = (&auctions[k % auction_count], BASE + k as u64);
        if publish == "pipelined" {
            publisher.send(auction, amount).await?;
        } else {
            publisher.publish(auction, amount).await?;
        }
    }
    let publish_elapsed = publish_started.elapsed();
    publisher.settle().await?;

    let mut latencies = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let mut total = ClientResult::new(None, 0, 1);
    let mut missing = 0usize;
    let mut expected = 0usize;
    let mut last_delivery = publish_started;
    for (client, task) in tasks.into_iter().enumerate() {
        let result = task.await.map_err(|e| e.to_string())?;
        let watched = result.expected;
        expected += watched;
        missing += watched - result.received.min(watched);
        total.received += result.received;
        total.duplicates += result.duplicates;
        total.reconnects += result.reconnects;
        total.churn_resumes += result.churn_resumes;
        total.refusals += result.refusals;
        for latency in &result.latencies {
            latencies
                .record(*latency)
                .map_err(|e| format!("client {client}: {e}"))?;
        }
        if let Some(at) = result.last_delivery {
            last_delivery = last_delivery.max(at);
        }
    }
    let cpu = match (cpu_before, server.cpu_seconds()) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    sampler.abort();
    let rss_flowing = flowing.load(Ordering::Relaxed);
    let own_cpu = match (own_cpu_before, cpu_seconds(std::process::id())) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let elapsed = last_delivery
        .duration_since(publish_started)
        .as_secs_f64()
        .max(1e-9);
    let ms = |quantile: f64| latencies.value_at_quantile(quantile) as f64 / 1e6;
    println!("events                {events}");
    println!("publish               {publish}");
    if let Some(connections) = publisher.connections().await {
        println!("publish_connections   {connections}");
    }
    println!(
        "publish_rate_per_s    {:.0}",
        events as f64 / publish_elapsed.as_secs_f64()
    );
    // What the clients were offered: every published event once to each
    // of its auction's clients, over the time it took to publish them.
    println!(
        "offered_per_s         {:.0}",
        expected as f64 / publish_elapsed.as_secs_f64().max(1e-9)
    );
    println!("expected_deliveries   {expected}");
    println!("deliveries            {}", total.received);
    println!(
        "deliveries_per_s      {:.0}",
        total.received as f64 / elapsed
    );
    println!("latency_p50_ms        {:.3}", ms(0.50));
    println!("latency_p99_ms        {:.3}", ms(0.99));
    println!("latency_p999_ms       {:.3}", ms(0.999));
    println!("latency_max_ms        {:.3}", latencies.max() as f64 / 1e6);
    if transport == Transport::Ws && total.received > 0 {
        println!("ws_deflate            {}", shared.deflate);
        println!(
            "ws_bytes_per_delivery {:.1}",
            shared.ws_bytes.load(Ordering::Relaxed) as f64 / total.received as f64
        );
    }
    println!("missing               {missing}");
    println!("duplicates            {}", total.duplicates);
    println!("reconnects            {}", total.reconnects);
    println!("refusals              {}", total.refusals);
    if churn_every > 0 {
        println!("churn_resumes         {}", total.churn_resumes);
        println!(
            "resumes_per_s         {:.0}",
            total.churn_resumes as f64 / elapsed
        );
    }
    if let Some(cpu) = cpu {
        println!("server_cpu_s          {cpu:.2}");
        // Per process (`--pids` order): where the server side's CPU went.
        let each: Vec<String> = server
            .0
            .iter()
            .zip(cpu_each_before.iter().zip(server.cpu_each()))
            .map(|(pid, pair)| match pair {
                (Some(before), Some(after)) => format!("{pid}:{:.2}", after - before),
                _ => format!("{pid}:?"),
            })
            .collect();
        println!("server_cpu_s_each     {}", each.join(","));
        println!(
            "server_cpu_s_per_1m   {:.2}",
            cpu / (total.received.max(1) as f64) * 1e6
        );
        println!(
            "deliveries_per_cpu_s  {:.0}",
            total.received as f64 / cpu.max(1e-9)
        );
    }
    if let Some(own_cpu) = own_cpu {
        println!("loadgen_cpu_s         {own_cpu:.2}");
    }
    if let Some(rss) = server.rss_bytes() {
        println!("server_rss_after_mib  {:.1}", rss as f64 / 1048576.0);
    }
    if let (Some(before), true) = (rss_before, rss_flowing > 0) {
        println!(
            "server_rss_peak_mib   {:.1}",
            rss_flowing as f64 / 1048576.0
        );
        println!(
            "rss_flowing_per_conn_kib {:.2}",
            rss_flowing.saturating_sub(before) as f64 / 1024.0 / clients as f64
        );
    }
    Ok(())
}

/// One client of `transport`, read as `shared.reading` says.
async fn run_client(transport: Transport, watch: &Watch, shared: &Shared) -> ClientResult {
    match transport {
        Transport::Sse => sse_client(watch, shared).await,
        Transport::Ws if shared.reading == Reading::Tungstenite => {
            ws_stream_client(watch, shared).await
        }
        Transport::Ws => ws_client(watch, shared).await,
    }
}

impl ClientResult {
    /// A client of `watch`, or an empty total (`None`).
    fn new(watch: Option<&Watch>, events: usize, auctions: usize) -> ClientResult {
        let (expected, span) = watch.map_or((0, 1), |watch| (watch.expected, watch.span));
        // One slot per watched auction per round of `auctions` events.
        let slots = if span == 1 {
            expected
        } else {
            events.div_ceil(auctions) * span
        };
        ClientResult {
            expected,
            received: 0,
            duplicates: 0,
            reconnects: 0,
            churn_resumes: 0,
            refusals: 0,
            out_of_order: 0,
            last_event: None,
            latencies: Vec::with_capacity(expected),
            last_delivery: None,
            seen: vec![false; slots],
            warm_ups: 0,
        }
    }

    /// Records a bid received on the current connection (`this_connection`
    /// counts its new events) and says whether the connection ends here:
    /// every expected event arrived, or it is time to hang up and resume.
    fn count(
        &mut self,
        shared: &Shared,
        watch: &Watch,
        amount: u64,
        now: Instant,
        this_connection: &mut usize,
    ) -> Option<Ended> {
        let before = self.received;
        self.record(shared, watch, amount, now);
        *this_connection += self.received - before;
        if self.done(shared) {
            Some(Ended::Done)
        } else if shared.churn_every > 0 && *this_connection >= shared.churn_every {
            Some(Ended::Churn)
        } else {
            None
        }
    }

    /// Books how a connection ended; `false` once the client is finished.
    async fn book(&mut self, ended: Ended, reading: bool) -> bool {
        match ended {
            Ended::Done => return false,
            Ended::Churn => self.churn_resumes += 1,
            Ended::Dropped if !reading => return false,
            Ended::Dropped => self.reconnects += 1,
            Ended::Refused => {
                self.refusals += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        true
    }

    fn done(&self, shared: &Shared) -> bool {
        shared.events > 0 && self.received >= self.expected
    }

    /// Counts the bid with `amount`, received at `now`.
    fn record(&mut self, shared: &Shared, watch: &Watch, amount: u64, now: Instant) {
        if amount == WARM_UP {
            // One per auction watched: warmed once all arrived.
            self.warm_ups += 1;
            if self.warm_ups == watch.span {
                shared.warmed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let Some(k) = amount.checked_sub(BASE).map(|k| k as usize) else {
            return;
        };
        let auction = k % shared.auctions;
        if k >= shared.events || !(watch.index..watch.index + watch.span).contains(&auction) {
            return;
        }
        if k < shared.first {
            self.duplicates += 1;
            return;
        }
        // Round `(k - first) / auctions`, then the auction within the
        // stream's: each event of the watched auctions has its own slot.
        let slot = (k - shared.first) / shared.auctions * watch.span + (auction - watch.index);
        if self.seen[slot] {
            self.duplicates += 1;
            return;
        }
        self.seen[slot] = true;
        if self.last_event.is_some_and(|last| k < last) {
            self.out_of_order += 1;
        }
        self.last_event = Some(self.last_event.map_or(k, |last| last.max(k)));
        self.received += 1;
        let sent = shared.sent_at[k].load(Ordering::Relaxed);
        if sent > 0 {
            let now_ns = now.duration_since(shared.start).as_nanos() as u64;
            self.latencies.push(now_ns.saturating_sub(sent));
        }
        self.last_delivery = Some(now);
    }
}

/// Why a client's connection ended.
enum Ended {
    /// Every expected event arrived (or the deadline passed).
    Done,
    /// The client hung up on purpose to resume (churn).
    Churn,
    /// The server closed it, or it failed.
    Dropped,
    /// The server refused the stream (e.g. 503 while it is busy): retry
    /// after a pause, as a browser would.
    Refused,
}

/// How long a refused client waits before it tries again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Counts a client as connected the first time its stream is established
/// (the server answered 200, or sent the subscription's first message), so
/// the run publishes nothing before every client can receive it.
fn established(counted: &mut bool, shared: &Shared) {
    if !*counted {
        *counted = true;
        shared.connected.fetch_add(1, Ordering::Relaxed);
    }
}

/// One SSE client on a raw socket: counts events by amount, resumes with
/// Last-Event-ID after every disconnect, stops when every expected event
/// arrived or at the deadline.
async fn sse_client(watch: &Watch, shared: &Shared) -> ClientResult {
    let mut result = ClientResult::new(Some(watch), shared.events, shared.auctions);
    let mut last_id = watch.resume_from.clone();
    let mut counted_connect = false;
    let reading = shared.events > 0;
    let mut buffer = Vec::with_capacity(if reading { 16 * 1024 } else { 0 });
    let mut chunk = vec![0u8; if reading { 16 * 1024 } else { 256 }];
    // Eager reading: the head and the first message are read 256 bytes at
    // a time, then one message's length at a time.
    let mut last_message = 256;
    let path = if watch.span > 1 {
        watch.target.sse_multi_path(&watch.auction)
    } else {
        watch.target.sse_path(&watch.auction)
    };
    while Instant::now() < shared.deadline && !result.done(shared) {
        let Ok(mut stream) = TcpStream::connect(&watch.target.addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let resume = if last_id.is_empty() {
            String::new()
        } else {
            format!("Last-Event-ID: {last_id}\r\n")
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            watch.target.addr
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        buffer.clear();
        let mut head_read = false;
        let mut this_connection = 0;
        let ended = 'read: loop {
            let remaining = shared.deadline.saturating_duration_since(Instant::now());
            let size = shared.reading.read_size(chunk.len(), last_message);
            let read = match tokio::time::timeout(remaining, stream.read(&mut chunk[..size])).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => break Ended::Dropped,
                Err(_) => break Ended::Done,
                Ok(Ok(read)) => read,
            };
            if head_read && !reading {
                continue; // idle scenario: keep the connection, ignore keepalives
            }
            buffer.extend_from_slice(&chunk[..read]);
            if !head_read {
                let Some(end) = find(&buffer, b"\r\n\r\n") else {
                    if buffer.len() > 16 * 1024 {
                        break Ended::Dropped;
                    }
                    continue;
                };
                if !buffer.starts_with(b"HTTP/1.1 200") {
                    break Ended::Refused;
                }
                head_read = true;
                established(&mut counted_connect, shared);
                buffer.drain(..end + 4);
                if !reading {
                    buffer = Vec::new();
                    continue;
                }
            }
            let now = Instant::now();
            // Consume complete messages (terminated by a blank line).
            let mut consumed = 0;
            while let Some(end) = find(&buffer[consumed..], b"\n\n") {
                let message = &buffer[consumed..consumed + end];
                consumed += end + 2;
                last_message = end + 2;
                // A bid is an `event: bid`, or an unnamed message (nchan
                // names it only when asked; our `init` is named).
                let event = line_value(message, b"event: ");
                if event.is_some_and(|name| name != b"bid") {
                    continue;
                }
                let Some(amount) = field_number(message, b"\"amount\":") else {
                    continue;
                };
                if let Some(id) = line_value(message, b"id: ") {
                    last_id = String::from_utf8_lossy(id).into_owned();
                }
                if let Some(ended) = result.count(shared, watch, amount, now, &mut this_connection)
                {
                    break 'read ended;
                }
            }
            buffer.drain(..consumed);
        };
        if !result.book(ended, reading).await {
            break;
        }
    }
    result
}

/// A WebSocket client's state across messages, as [`take_ws_text`] keeps
/// it: whether its connect was counted, the id it resumes from, and the
/// events received on the current connection.
type WsConnection<'a> = (&'a mut bool, &'a mut String, &'a mut usize);

/// One text message, as both WebSocket readers take it: an `init` counts
/// the client as connected, an `error` ends the connection, a bid is
/// counted (and its id kept to resume from). `Some`: the connection ends.
fn take_ws_text(
    payload: &[u8],
    watch: &Watch,
    shared: &Shared,
    result: &mut ClientResult,
    (counted_connect, last_id, this_connection): WsConnection<'_>,
    now: Instant,
) -> Option<Ended> {
    if payload.starts_with(b"{\"type\":\"init\"") {
        established(counted_connect, shared);
    }
    if payload.starts_with(b"{\"type\":\"error\"") {
        return Some(Ended::Refused);
    }
    find(payload, b"{\"type\":\"bid\"")?;
    if let Some(id) = watch.target.ws_event_id(payload) {
        *last_id = String::from_utf8_lossy(id).into_owned();
    }
    let amount = field_number(payload, b"\"amount\":")?;
    result.count(shared, watch, amount, now, this_connection)
}

/// The upgrade request for a client of `watch` resuming from `last_id`
/// (nchan's WebSocket subprotocol named when the system is nchan); `None`
/// for a URL that makes no request.
fn ws_request(
    watch: &Watch,
    last_id: &str,
    deflate: bool,
) -> Option<tokio_tungstenite::tungstenite::handshake::client::Request> {
    let mut request = watch
        .target
        .ws_url(&watch.auction, last_id)
        .into_client_request()
        .ok()?;
    if deflate {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
    }
    if watch.target.system == System::Nchan {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(NCHAN_WS_PROTOCOL),
        );
    }
    Some(request)
}

/// One WebSocket client: handshake with tokio-tungstenite, then frames are
/// read off the raw socket (as cheaply as the SSE client reads its stream,
/// so both transports are measured with the same client cost). Subscribes,
/// resubscribing with its last id after a disconnect, and counts bids.
async fn ws_client(watch: &Watch, shared: &Shared) -> ClientResult {
    let mut result = ClientResult::new(Some(watch), shared.events, shared.auctions);
    let mut last_id = watch.resume_from.clone();
    let mut counted_connect = false;
    let reading = shared.events > 0;
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; if reading { 16 * 1024 } else { 256 }];
    let mut last_message = 256;
    // Compressed messages, inflated in one inflater per connection: the
    // server may refer back into its previous message (context takeover).
    let mut inflater = flate2::Decompress::new(false);
    let mut inflated = Vec::new();
    while Instant::now() < shared.deadline && !result.done(shared) {
        let Some(request) = ws_request(watch, &last_id, shared.deflate) else {
            return result;
        };
        let Ok((ws, response)) = tokio_tungstenite::connect_async(request).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let deflated = response
            .headers()
            .get("sec-websocket-extensions")
            .is_some_and(|value| value.as_bytes().starts_with(b"permessage-deflate"));
        if deflated {
            inflater.reset(false);
        }
        let tokio_tungstenite::MaybeTlsStream::Plain(mut stream) = ws.into_inner() else {
            return result;
        };
        match watch.target.ws_subscribe(&watch.auction, &last_id) {
            Some(subscribe) => {
                let frame = client_frame(0x1, subscribe.as_bytes());
                if stream.write_all(&frame).await.is_err() {
                    continue;
                }
            }
            // nchan: the handshake was the subscription.
            None => established(&mut counted_connect, shared),
        }
        buffer.clear();
        let mut this_connection = 0;
        let ended = 'read: loop {
            let remaining = shared.deadline.saturating_duration_since(Instant::now());
            let size = shared.reading.read_size(chunk.len(), last_message);
            let read = match tokio::time::timeout(remaining, stream.read(&mut chunk[..size])).await
            {
                Ok(Ok(0)) | Ok(Err(_)) => break Ended::Dropped,
                Err(_) => break Ended::Done,
                Ok(Ok(read)) => read,
            };
            buffer.extend_from_slice(&chunk[..read]);
            shared.ws_bytes.fetch_add(read as u64, Ordering::Relaxed);
            let now = Instant::now();
            let mut consumed = 0;
            while let Some((opcode, start, end)) = server_frame(&buffer[consumed..]) {
                let compressed = deflated && buffer[consumed] & 0x40 != 0;
                let mut payload = &buffer[consumed + start..consumed + end];
                consumed += end;
                last_message = end;
                if compressed {
                    if inflate(&mut inflater, payload, &mut inflated).is_none() {
                        break 'read Ended::Dropped;
                    }
                    payload = &inflated;
                }
                match opcode {
                    0x1 => {
                        let connection = (&mut counted_connect, &mut last_id, &mut this_connection);
                        if let Some(ended) =
                            take_ws_text(payload, watch, shared, &mut result, connection, now)
                        {
                            break 'read ended;
                        }
                    }
                    0x8 => break 'read Ended::Dropped, // close
                    0x9 => {
                        let pong = client_frame(0xA, payload);
                        if stream.write_all(&pong).await.is_err() {
                            break 'read Ended::Dropped;
                        }
                    }
                    _ => {}
                }
            }
            buffer.drain(..consumed);
        };
        if !result.book(ended, reading).await {
            break;
        }
    }
    result
}

/// Inflates one compressed message (RFC 7692 7.2.2: its tail put back) into
/// `out`; `None`: not DEFLATE, or more than 1 MiB. The inflater is kept
/// from one message of the connection to the next: each ends at a block
/// boundary (the tail is an empty stored block), and the next may refer
/// back into it (the server keeps its context unless asked not to).
fn inflate(inflater: &mut flate2::Decompress, payload: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    for input in [payload, &[0, 0, 0xff, 0xff][..]] {
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= 1 << 20 {
                    return None;
                }
                out.reserve(4096);
            }
            let before = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress_vec(&input[consumed..], out, flate2::FlushDecompress::Sync)
                .ok()?;
            consumed += (inflater.total_in() - before.0) as usize;
            if status == flate2::Status::StreamEnd {
                return Some(());
            }
            let stuck = (inflater.total_in(), inflater.total_out()) == before;
            if (consumed == input.len() || stuck) && out.len() < out.capacity() {
                break;
            }
        }
    }
    Some(())
}

/// One WebSocket client as an application on tokio-tungstenite is written:
/// the library's handshake, the subscribe message sent through its sink,
/// then `StreamExt::next()` on the `WebSocketStream`, one message per
/// poll (the library answers pings). Resubscribes with its last id after
/// a disconnect, and counts bids as [`ws_client`] does.
async fn ws_stream_client(watch: &Watch, shared: &Shared) -> ClientResult {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut result = ClientResult::new(Some(watch), shared.events, shared.auctions);
    let mut last_id = watch.resume_from.clone();
    let mut counted_connect = false;
    let reading = shared.events > 0;
    while Instant::now() < shared.deadline && !result.done(shared) {
        let Some(request) = ws_request(watch, &last_id, false) else {
            return result;
        };
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match watch.target.ws_subscribe(&watch.auction, &last_id) {
            Some(subscribe) => {
                if ws.send(Message::text(subscribe)).await.is_err() {
                    continue;
                }
            }
            // nchan: the handshake was the subscription.
            None => established(&mut counted_connect, shared),
        }
        let mut this_connection = 0;
        let remaining = shared.deadline.saturating_duration_since(Instant::now());
        let read = async {
            while let Some(message) = ws.next().await {
                let now = Instant::now();
                let text = match message {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(_)) | Err(_) => return Ended::Dropped,
                    Ok(_) => continue,
                };
                let connection = (&mut counted_connect, &mut last_id, &mut this_connection);
                if let Some(ended) =
                    take_ws_text(text.as_bytes(), watch, shared, &mut result, connection, now)
                {
                    return ended;
                }
            }
            Ended::Dropped
        };
        let ended = tokio::time::timeout(remaining, read)
            .await
            .unwrap_or(Ended::Done);
        if !result.book(ended, reading).await {
            break;
        }
    }
    result
}

/// A reconnect storm: `events` events are published to one auction first,
/// then `clients` clients open at once, each resuming from the id of event
/// `from`, and each must receive exactly the events after it, in order.
/// The server is expected to be fresh: no client watched the auction
/// before, so nothing of it is in the server's memory and every event
/// after `from` comes from the stream.
struct Storm {
    target: Target,
    /// Our edge's ops listener (`http://host:port`), for its `/metrics`.
    ops: Option<String>,
    auction: String,
    clients: usize,
    events: usize,
    from: usize,
    reading: Reading,
    timeout: Duration,
    /// Our system's Redis: how many stream reads (`XRANGE`) the storm cost.
    redis: Option<String>,
}

impl Storm {
    /// Our edge's `auction_replay_reads_shared_total` (summed over its
    /// labels): replay reads a client did not make because another client's
    /// identical read was in flight. `None` for nchan.
    async fn shared_reads(&self) -> Result<Option<u64>, String> {
        let Some(ops) = &self.ops else {
            return Ok(None);
        };
        let url = format!("{ops}/metrics");
        let text = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let total = text
            .lines()
            .filter(|line| line.starts_with("auction_replay_reads_shared_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        Ok(Some(total as u64))
    }

    async fn run(
        self,
        publisher: &Publisher,
        server: &Server,
        transport: Transport,
    ) -> Result<(), String> {
        let mut resume_from = None;
        for k in 0..self.events {
            let id = publisher.publish(&self.auction, BASE + k as u64).await?;
            if k == self.from {
                resume_from = id;
            }
        }
        let resume_from =
            resume_from.ok_or_else(|| format!("the server gave no id for event {}", self.from))?;
        let reads_before = match &self.redis {
            Some(url) => Some(command_calls(url, "xrange").await?),
            None => None,
        };
        let shared_before = self.shared_reads().await?;
        let expected = self.events - self.from - 1;
        let cpu_before = server.cpu_seconds();
        let started = Instant::now();
        let shared = Arc::new(Shared {
            start: started,
            // No send times: the events were published before the storm,
            // so there is no delivery latency to measure.
            sent_at: (0..self.events).map(|_| AtomicU64::new(0)).collect(),
            connected: AtomicUsize::new(0),
            warmed: AtomicUsize::new(0),
            events: self.events,
            first: self.from + 1,
            auctions: 1,
            churn_every: 0,
            reading: self.reading,
            deflate: false,
            ws_bytes: AtomicU64::new(0),
            deadline: started + self.timeout,
        });
        // All at once: no pacing between connects.
        let tasks: Vec<_> = (0..self.clients)
            .map(|_| {
                let watch = Watch {
                    target: self.target.clone(),
                    auction: self.auction.clone(),
                    index: 0,
                    span: 1,
                    expected,
                    resume_from: resume_from.clone(),
                };
                let shared = shared.clone();
                tokio::spawn(async move { run_client(transport, &watch, &shared).await })
            })
            .collect();
        let mut total = ClientResult::new(None, 0, 1);
        let mut missing = 0;
        let mut complete = 0;
        let mut last_delivery = started;
        for task in tasks {
            let result = task.await.map_err(|e| e.to_string())?;
            missing += expected - result.received.min(expected);
            complete += usize::from(result.received >= expected);
            total.received += result.received;
            total.duplicates += result.duplicates;
            total.out_of_order += result.out_of_order;
            total.reconnects += result.reconnects;
            total.refusals += result.refusals;
            if let Some(at) = result.last_delivery {
                last_delivery = last_delivery.max(at);
            }
        }
        let cpu = match (cpu_before, server.cpu_seconds()) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        };
        let reads = match (&self.redis, reads_before) {
            (Some(url), Some(before)) => Some(command_calls(url, "xrange").await? - before),
            _ => None,
        };
        let shared_reads = match (shared_before, self.shared_reads().await?) {
            (Some(before), Some(after)) => Some(after.saturating_sub(before)),
            _ => None,
        };
        let elapsed = last_delivery
            .duration_since(started)
            .as_secs_f64()
            .max(1e-9);
        println!(
            "scenario              {} {} storm",
            self.target.system.name(),
            if transport == Transport::Sse {
                "sse"
            } else {
                "ws"
            }
        );
        println!("clients               {}", self.clients);
        println!("reading               {}", self.reading.name());
        println!("auctions              1");
        println!("events                {}", self.events);
        println!("resumed_after_event   {}", self.from);
        println!("resume_id             {resume_from}");
        println!("events_per_client     {expected}");
        println!("expected_deliveries   {}", expected * self.clients);
        println!("deliveries            {}", total.received);
        println!("clients_complete      {complete}");
        println!("storm_s               {elapsed:.3}");
        println!("resumes_per_s         {:.0}", self.clients as f64 / elapsed);
        println!("missing               {missing}");
        println!("duplicates            {}", total.duplicates);
        println!("out_of_order          {}", total.out_of_order);
        println!("reconnects            {}", total.reconnects);
        println!("refusals              {}", total.refusals);
        if let Some(reads) = reads {
            println!("stream_reads          {reads}");
        }
        if let Some(shared_reads) = shared_reads {
            println!("replay_reads_shared   {shared_reads}");
        }
        if let Some(cpu) = cpu {
            println!("server_cpu_s          {cpu:.2}");
        }
        if let Some(rss) = server.rss_bytes() {
            println!("server_rss_after_mib  {:.1}", rss as f64 / 1048576.0);
        }
        Ok(())
    }
}
