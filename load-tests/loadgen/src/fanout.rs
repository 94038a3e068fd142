//! Fan-out and idle-connection scenarios against an sse-edge or a ws-edge.
//!
//! Events are appended straight into Redis through the same atomic script
//! the bidder uses, so the figures are the edge's: the send time of event
//! `k` is taken just before its append, and a client that receives the bid
//! with amount `base + k` records `now - send_time[k]`.

use crate::proc_stats::{cpu_seconds, rss_bytes};
use crate::{Args, ensure_loopback};
use auction_domain::{AuctionId, BidSource, BidderName};
use event_log::{AuctionSpec, EventLog, connect_manager, parse_redis_url};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Amount of the first event; event `k` has amount `BASE + k`.
const BASE: u64 = 1_000;

struct Shared {
    start: Instant,
    /// Send time of event k, nanoseconds after `start` (0 = not sent yet).
    sent_at: Vec<AtomicU64>,
    connected: AtomicUsize,
    events: usize,
}

struct ClientResult {
    received: usize,
    duplicates: usize,
    reconnects: usize,
    latencies: Histogram<u64>,
    last_delivery: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

pub async fn run(args: &Args, transport: Transport) -> Result<(), String> {
    let edge = args.text("edge", "http://127.0.0.1:8081");
    let redis_url = args.text("redis", "redis://127.0.0.1:6379");
    ensure_loopback(&edge)?;
    ensure_loopback(&redis_url)?;
    let clients: usize = args.get("clients", 1000)?;
    let events: usize = args.get("events", 1000)?;
    let rate: f64 = args.get("rate", 0.0)?; // events per second; 0 = as fast as possible
    let edge_pid: Option<u32> = args.0.get("edge-pid").and_then(|p| p.parse().ok());
    let settle_ms: u64 = args.get("settle-ms", 2000)?;
    let addr = edge
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    let target = parse_redis_url(&redis_url)?;
    let log = EventLog::new(
        connect_manager(&target, || {}).map_err(|e| e.to_string())?,
        100_000,
    );
    let auction =
        AuctionId::parse(&format!("bench-{}", std::process::id())).map_err(|e| e.message)?;
    log.create(&AuctionSpec {
        id: auction.clone(),
        title: "benchmark".into(),
        starting_price: 1,
        min_increment: 1,
        duration_ms: 3_600_000,
    })
    .await
    .map_err(|e| e.to_string())?;

    let rss_before = edge_pid.and_then(rss_bytes);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        sent_at: (0..events).map(|_| AtomicU64::new(0)).collect(),
        connected: AtomicUsize::new(0),
        events,
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let shared = shared.clone();
        let addr = addr.clone();
        let auction = auction.clone();
        tasks.push(tokio::spawn(async move {
            match transport {
                Transport::Sse => {
                    let path = format!("/auctions/{auction}/events");
                    sse_client(&addr, &path, &shared, deadline).await
                }
                Transport::Ws => ws_client(&addr, auction.as_str(), &shared, deadline).await,
            }
        }));
        // Pace the connects a little so the accept queue never overflows.
        if tasks.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    while shared.connected.load(Ordering::Relaxed) < clients {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {clients} clients connected",
                shared.connected.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(settle_ms)).await;
    let rss_connected = edge_pid.and_then(rss_bytes);
    let name = if transport == Transport::Sse {
        "sse"
    } else {
        "ws"
    };
    let kind = if events == 0 { "idle" } else { "fan-out" };
    println!("scenario              {name} {kind}");
    println!("clients               {clients}");
    if let (Some(before), Some(after)) = (rss_before, rss_connected) {
        println!("edge_rss_mib          {:.1}", after as f64 / 1048576.0);
        println!(
            "rss_per_conn_kib      {:.2}",
            after.saturating_sub(before) as f64 / 1024.0 / clients.max(1) as f64
        );
    }
    if events == 0 {
        for task in tasks {
            task.abort();
        }
        return Ok(());
    }

    let cpu_before = edge_pid.and_then(cpu_seconds);
    let bidder = BidderName::parse("bench").map_err(|e| e.message)?;
    let publish_started = Instant::now();
    for k in 0..events {
        if rate > 0.0 {
            let due = publish_started + Duration::from_secs_f64(k as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = shared.start.elapsed().as_nanos() as u64;
        shared.sent_at[k].store(sent.max(1), Ordering::Relaxed);
        log.place_bid(
            &auction,
            BASE + k as u64,
            &bidder,
            BidSource::Simulated,
            None,
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let publish_elapsed = publish_started.elapsed();

    let mut latencies = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut received, mut missing, mut duplicates, mut reconnects) =
        (0usize, 0usize, 0usize, 0usize);
    let mut last_delivery = publish_started;
    for task in tasks {
        let result = task.await.map_err(|e| e.to_string())?;
        received += result.received;
        missing += events - result.received.min(events);
        duplicates += result.duplicates;
        reconnects += result.reconnects;
        latencies
            .add(&result.latencies)
            .map_err(|e| e.to_string())?;
        if let Some(at) = result.last_delivery {
            last_delivery = last_delivery.max(at);
        }
    }
    let cpu = match (cpu_before, edge_pid.and_then(cpu_seconds)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let elapsed = last_delivery.duration_since(publish_started).as_secs_f64();
    println!("events                {events}");
    println!(
        "publish_rate_per_s    {:.0}",
        events as f64 / publish_elapsed.as_secs_f64()
    );
    println!("deliveries            {received}");
    println!(
        "deliveries_per_s      {:.0}",
        received as f64 / elapsed.max(1e-9)
    );
    println!(
        "latency_p50_ms        {:.3}",
        latencies.value_at_quantile(0.50) as f64 / 1e6
    );
    println!(
        "latency_p99_ms        {:.3}",
        latencies.value_at_quantile(0.99) as f64 / 1e6
    );
    println!(
        "latency_p999_ms       {:.3}",
        latencies.value_at_quantile(0.999) as f64 / 1e6
    );
    println!("latency_max_ms        {:.3}", latencies.max() as f64 / 1e6);
    println!("missing               {missing}");
    println!("duplicates            {duplicates}");
    println!("reconnects            {reconnects}");
    if let Some(cpu) = cpu {
        println!("edge_cpu_s            {cpu:.2}");
        println!(
            "edge_cpu_s_per_1m     {:.2}",
            cpu / (received.max(1) as f64) * 1e6
        );
    }
    if let Some(rss) = edge_pid.and_then(rss_bytes) {
        println!("edge_rss_after_mib    {:.1}", rss as f64 / 1048576.0);
    }
    Ok(())
}

/// One SSE client on a raw socket: counts events by amount, reconnects with
/// Last-Event-ID if the edge closes it, stops when all events arrived or at
/// the deadline.
async fn sse_client(addr: &str, path: &str, shared: &Shared, deadline: Instant) -> ClientResult {
    let mut result = ClientResult::new();
    let mut seen = vec![false; shared.events];
    let mut last_id = String::new();
    let mut counted_connect = false;
    let mut buffer = Vec::with_capacity(if shared.events > 0 { 16 * 1024 } else { 0 });
    while Instant::now() < deadline && result.received < shared.events.max(1) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let resume = if last_id.is_empty() {
            String::new()
        } else {
            format!("Last-Event-ID: {last_id}\r\n")
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{resume}\r\n");
        if stream.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        if !counted_connect {
            counted_connect = true;
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        buffer.clear();
        let mut chunk = vec![0u8; if shared.events > 0 { 16 * 1024 } else { 256 }];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let read = match tokio::time::timeout(remaining, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(read)) => read,
            };
            if shared.events == 0 {
                continue; // idle scenario: keep the connection, ignore keepalives
            }
            buffer.extend_from_slice(&chunk[..read]);
            let now = Instant::now();
            let now_ns = now.duration_since(shared.start).as_nanos() as u64;
            // Consume complete messages (terminated by a blank line).
            let mut consumed = 0;
            while let Some(end) = find(&buffer[consumed..], b"\n\n") {
                let message = &buffer[consumed..consumed + end];
                consumed += end + 2;
                let Some(amount) = field_number(message, b"\"amount\":") else {
                    continue;
                };
                if let Some(id) = line_value(message, b"id: ") {
                    last_id = String::from_utf8_lossy(id).into_owned();
                }
                if !message.windows(10).any(|w| w == b"event: bid") {
                    continue;
                }
                result.record(shared, &mut seen, amount, now, now_ns);
            }
            buffer.drain(..consumed);
            if result.received >= shared.events {
                return result;
            }
        }
        if shared.events == 0 {
            return result;
        }
        result.reconnects += 1;
    }
    result
}

impl ClientResult {
    fn new() -> ClientResult {
        ClientResult {
            received: 0,
            duplicates: 0,
            reconnects: 0,
            latencies: Histogram::new(3)
                .unwrap_or_else(|_| unreachable!("3 significant figures is valid")),
            last_delivery: None,
        }
    }

    /// Counts the bid with `amount`, received at `now`.
    fn record(
        &mut self,
        shared: &Shared,
        seen: &mut [bool],
        amount: u64,
        now: Instant,
        now_ns: u64,
    ) {
        let Some(k) = amount.checked_sub(BASE).map(|k| k as usize) else {
            return;
        };
        if k >= shared.events {
            return;
        }
        if seen[k] {
            self.duplicates += 1;
            return;
        }
        seen[k] = true;
        self.received += 1;
        let sent = shared.sent_at[k].load(Ordering::Relaxed);
        if sent > 0 {
            let _ = self.latencies.record(now_ns.saturating_sub(sent));
        }
        self.last_delivery = Some(now);
    }
}

/// One WebSocket client: handshake with tokio-tungstenite, then frames are
/// read off the raw socket (as cheaply as the SSE client reads its stream,
/// so both transports are measured with the same client cost). Subscribes,
/// resubscribing with `last_id` after a disconnect, and counts bids.
async fn ws_client(addr: &str, auction: &str, shared: &Shared, deadline: Instant) -> ClientResult {
    let mut result = ClientResult::new();
    let mut seen = vec![false; shared.events];
    let mut last_id = String::new();
    let mut counted_connect = false;
    let mut buffer: Vec<u8> = Vec::new();
    while Instant::now() < deadline && result.received < shared.events.max(1) {
        let url = format!("ws://{addr}/ws");
        let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let tokio_tungstenite::MaybeTlsStream::Plain(mut stream) = ws.into_inner() else {
            return result;
        };
        let subscribe = if last_id.is_empty() {
            format!(r#"{{"type":"subscribe","auction":"{auction}"}}"#)
        } else {
            format!(r#"{{"type":"subscribe","auction":"{auction}","last_id":"{last_id}"}}"#)
        };
        if stream
            .write_all(&client_frame(0x1, subscribe.as_bytes()))
            .await
            .is_err()
        {
            continue;
        }
        if !counted_connect {
            counted_connect = true;
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        buffer.clear();
        let mut chunk = vec![0u8; if shared.events > 0 { 16 * 1024 } else { 256 }];
        'read: loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let read = match tokio::time::timeout(remaining, stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(read)) => read,
            };
            buffer.extend_from_slice(&chunk[..read]);
            let now = Instant::now();
            let now_ns = now.duration_since(shared.start).as_nanos() as u64;
            let mut consumed = 0;
            while let Some((opcode, start, end)) = server_frame(&buffer[consumed..]) {
                let payload = &buffer[consumed + start..consumed + end];
                consumed += end;
                match opcode {
                    0x1 => {
                        if let Some(id) = field_text(payload, b"\"id\":\"") {
                            last_id = String::from_utf8_lossy(id).into_owned();
                        }
                        if payload.starts_with(b"{\"type\":\"bid\"")
                            && let Some(amount) = field_number(payload, b"\"amount\":")
                        {
                            result.record(shared, &mut seen, amount, now, now_ns);
                        }
                    }
                    0x8 => break 'read, // close
                    0x9 => {
                        let pong = client_frame(0xA, payload);
                        if stream.write_all(&pong).await.is_err() {
                            break 'read;
                        }
                    }
                    _ => {}
                }
            }
            buffer.drain(..consumed);
            if shared.events > 0 && result.received >= shared.events {
                return result;
            }
        }
        if shared.events == 0 {
            return result;
        }
        result.reconnects += 1;
    }
    result
}

/// A masked client frame (RFC 6455 §5.2). The mask key is zero: masking
/// is mandatory, its unpredictability only matters to proxies on the path.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// A complete unmasked server frame at the start of `buffer`: (opcode,
/// payload start, payload end), or `None` if more bytes are needed.
fn server_frame(buffer: &[u8]) -> Option<(u8, usize, usize)> {
    let opcode = buffer.first()? & 0x0f;
    let short = buffer.get(1)? & 0x7f;
    let (len, start) = match short {
        126 => (
            u16::from_be_bytes([*buffer.get(2)?, *buffer.get(3)?]) as usize,
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buffer.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(bytes) as usize, 10)
        }
        len => (len as usize, 2),
    };
    (buffer.len() >= start + len).then_some((opcode, start, start + len))
}

fn field_text<'a>(message: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = find(message, key)? + key.len();
    let end = message[at..].iter().position(|b| *b == b'"')?;
    Some(&message[at..at + end])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn line_value<'a>(message: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    message
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(prefix))
}

fn field_number(message: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(message, key)? + key.len();
    let digits = message[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value = 0u64;
    let mut any = false;
    for digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        any = true;
    }
    any.then_some(value)
}
