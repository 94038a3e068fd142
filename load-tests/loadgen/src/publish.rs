//! Events for clients the load generator does not run itself (the HTTP/2
//! and HTTP/1.1 clients of `load-tests/h2-sse`): bids on one auction of our
//! system, appended to Redis as the fan-out scenarios append them, amount
//! `BASE + k` for event `k`, each preceded by one line on stdout,
//! `sent <k> <Unix time, µs>`, written just before it is published, so the
//! clients measure delivery latency from it exactly (not from the bid's
//! `placed_at`, whole milliseconds).
//!
//! `--create`: only creates the auction (a stream of an auction that does
//! not exist is refused), before the clients connect. Otherwise: one
//! warm-up bid (amount `BASE - 1`, not measured), a pause of `--warm-up-ms`,
//! then `--events` bids at `--rate` per second.

use crate::fanout::{BASE, WARM_UP};
use crate::target::Publisher;
use crate::{Args, ensure_loopback};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub async fn run(args: &Args) -> Result<(), String> {
    let redis_url = args.text("redis", "redis://127.0.0.1:6379");
    ensure_loopback(&redis_url)?;
    let auction = args.text("auction", "");
    if auction.is_empty() {
        return Err("publish: --auction ID is required".into());
    }
    let publisher = Publisher::ours(&redis_url)?;
    if args.get("create", false)? {
        return publisher.prepare(std::slice::from_ref(&auction)).await;
    }
    let events: usize = args.get("events", 500)?;
    let rate: f64 = args.get("rate", 50.0)?;
    let warm_up_ms: u64 = args.get("warm-up-ms", 1000)?;
    if rate <= 0.0 {
        return Err("publish: --rate must be above 0".into());
    }
    publisher.publish(&auction, WARM_UP).await?;
    tokio::time::sleep(Duration::from_millis(warm_up_ms)).await;
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    for k in 0..events {
        let due = started + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?;
        writeln!(out, "sent {k} {}", now.as_micros()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
        publisher.publish(&auction, BASE + k as u64).await?;
    }
    Ok(())
}
