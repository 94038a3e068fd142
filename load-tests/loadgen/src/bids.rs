//! Accepted bids per second through the bidder's HTTP API.

use crate::{Args, ensure_loopback};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// A bid answered 503 (outcome unknown, Redis unavailable) or not at all is
/// asked again under the same `Idempotency-Key` this many times at most.
const SETTLE_ATTEMPTS: u32 = 5;
const SETTLE_PAUSE: Duration = Duration::from_millis(200);

pub async fn run(args: &Args) -> Result<(), String> {
    let url = args.text("url", "http://127.0.0.1:8080");
    ensure_loopback(&url)?;
    let concurrency: usize = args.get("concurrency", 32)?;
    let seconds: u64 = args.get("seconds", 10)?;
    // A seller's token (`bidder token --name bench --role seller`): creates
    // the auctions and places every bid.
    let token = args.text("token", "");
    if token.is_empty() {
        return Err(
            "--token is required: mint one with `bidder token --name bench --role seller`".into(),
        );
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|error| error.to_string())?;
    let run_id = std::process::id();

    let mut workers = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    for worker in 0..concurrency {
        let client = client.clone();
        let url = url.clone();
        let token = token.clone();
        workers.push(tokio::spawn(async move {
            let auction = format!("bench-{run_id}-{worker}");
            let create = serde_json::json!({
                "id": auction, "title": "benchmark", "starting_price": 100,
                "min_increment": 1, "duration_ms": 3_600_000u64,
            });
            let created = client
                .post(format!("{url}/auctions"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(create.to_string())
                .send()
                .await
                .map_err(|error| error.to_string())?;
            if created.status() != 201 {
                return Err(format!("create answered {}", created.status()));
            }
            let mut latencies = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
            let (mut accepted, mut failed) = (0u64, 0u64);
            let mut amount = 100u64;
            while Instant::now() < deadline {
                let body = format!(r#"{{"amount":{amount}}}"#);
                // One key per intended bid, reused by its retries: a bid
                // whose outcome was unknown is never placed twice.
                let key = format!("{auction}:{amount}");
                let started = Instant::now();
                let mut settled = None;
                for attempt in 0..SETTLE_ATTEMPTS {
                    if attempt > 0 {
                        tokio::time::sleep(SETTLE_PAUSE).await;
                    }
                    let response = client
                        .post(format!("{url}/auctions/{auction}/bids"))
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .header("idempotency-key", &key)
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == 503 => {}
                        Ok(response) => {
                            settled = Some(response.status());
                            let _ = response.bytes().await;
                            break;
                        }
                        Err(_) => {}
                    }
                }
                let micros = started.elapsed().as_micros() as u64;
                if settled.is_some_and(|status| status == 201) {
                    accepted += 1;
                    amount += 1;
                    let _ = latencies.record(micros);
                } else {
                    failed += 1;
                }
            }
            Ok::<_, String>((accepted, failed, latencies))
        }));
    }
    let started = Instant::now();
    let mut total = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut accepted, mut failed) = (0, 0);
    for worker in workers {
        let (a, f, h) = worker.await.map_err(|error| error.to_string())??;
        accepted += a;
        failed += f;
        total.add(h).map_err(|error| error.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds as f64);
    println!("scenario      bids (HTTP POST, one auction per worker)");
    println!("concurrency   {concurrency}");
    println!("duration_s    {elapsed:.1}");
    println!("accepted      {accepted}");
    println!("failed        {failed}");
    println!("bids_per_s    {:.0}", accepted as f64 / elapsed);
    println!(
        "p50_ms        {:.2}",
        total.value_at_quantile(0.50) as f64 / 1000.0
    );
    println!(
        "p99_ms        {:.2}",
        total.value_at_quantile(0.99) as f64 / 1000.0
    );
    println!("max_ms        {:.2}", total.max() as f64 / 1000.0);
    if failed > 0 {
        return Err(format!("{failed} requests failed"));
    }
    Ok(())
}
