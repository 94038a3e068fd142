//! What the shipped alert rules and dashboard read off every replica's
//! `/metrics`: the standard process metrics, readiness, the connection cap,
//! and bids refused with a 5xx, on the real binaries with a real Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use test_support::{RedisServer, ServiceProcess, bidder_env, wait_for};

/// The whole exposition of `service`.
fn scrape(service: &ServiceProcess) -> String {
    let mut stream = std::net::TcpStream::connect(service.ops_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

/// The value of the sample named exactly `series`, if exposed.
fn sample(text: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().unwrap())
}

#[test]
fn every_service_exposes_the_standard_process_metrics() {
    let redis = RedisServer::start();
    let started_before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let services = [
        ServiceProcess::start("bidder", &bidder_env(&redis, "", 1000)),
        ServiceProcess::start("sse-edge", &[("AUCTION_REDIS_URL", redis.url())]),
        ServiceProcess::start(
            "ws-edge",
            &[
                ("AUCTION_REDIS_URL", redis.url()),
                test_support::session_secret_env(),
            ],
        ),
    ];
    for service in &services {
        let text = scrape(service);
        let value = |series| {
            sample(&text, series)
                .unwrap_or_else(|| panic!("{series} missing on {}:\n{text}", service.addr))
        };
        let pid = service.pid();
        // The kernel's own view of the same process, to compare with.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        let rss = value("process_resident_memory_bytes");
        assert!(
            rss > 1_000_000.0 && (rss / 1024.0 - rss_kib).abs() < rss_kib * 0.5,
            "{pid}: resident {rss} bytes, the kernel says {rss_kib} KiB"
        );
        assert!(value("process_virtual_memory_bytes") >= rss);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let open = value("process_open_fds");
        let open_now = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count() as f64;
        // A listener, Redis connections and the scrape's own socket at
        // least; connections may come and go between the two readings.
        assert!(
            open >= 5.0 && (open - open_now).abs() <= 8.0,
            "open fds {open}, /proc says {open_now}"
        );
        assert!(value("process_max_fds") >= open);
        let start = value("process_start_time_seconds");
        assert!(
            (start - started_before).abs() < 120.0,
            "start time {start}, test started at {started_before}"
        );
    }
}

#[test]
fn readiness_and_the_connection_cap_are_exposed_for_alerting() {
    let mut redis = RedisServer::start();
    let sse = ServiceProcess::start(
        "sse-edge",
        &[
            ("AUCTION_REDIS_URL", redis.url()),
            ("AUCTION_MAX_CONNECTIONS", "321".into()),
        ],
    );
    let ws = ServiceProcess::start(
        "ws-edge",
        &[
            ("AUCTION_REDIS_URL", redis.url()),
            ("AUCTION_MAX_CONNECTIONS", "654".into()),
            test_support::session_secret_env(),
        ],
    );
    let bidder = ServiceProcess::start("bidder", &bidder_env(&redis, "", 1000));
    assert_eq!(
        sample(&scrape(&sse), "auction_max_connections{transport=\"sse\"}"),
        Some(321.0)
    );
    assert_eq!(
        sample(&scrape(&ws), "auction_max_connections{transport=\"ws\"}"),
        Some(654.0)
    );
    for service in [&sse, &ws, &bidder] {
        wait_for("ready", Duration::from_secs(20), || {
            (service.answers("/readyz", 200)
                && sample(&scrape(service), "auction_ready") == Some(1.0))
            .then_some(())
        });
    }

    redis.kill();
    for service in [&sse, &ws, &bidder] {
        // The metric says what the probe says.
        wait_for("auction_ready 0", Duration::from_secs(20), || {
            (sample(&scrape(service), "auction_ready") == Some(0.0)).then_some(())
        });
        assert!(service.answers("/readyz", 503));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_refused_because_redis_is_down_counts_as_a_server_error() {
    let mut redis = RedisServer::start();
    let bidder = ServiceProcess::start("bidder", &bidder_env(&redis, "", 1000));
    let series = "auction_bids_total{source=\"user\",outcome=\"server_error\"}";
    assert_eq!(
        sample(&scrape(&bidder), series),
        Some(0.0),
        "visible at zero"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    test_support::auctions::create(&redis.url(), &["down".into()], 600_000).await;
    let bid = || {
        client
            .post(format!("{}/auctions/down/bids", bidder.url()))
            .bearer_auth(test_support::seller_token())
            .json(&serde_json::json!({"amount": 200, "bidder": "ada"}))
            .send()
    };
    assert_eq!(bid().await.unwrap().status(), 201);
    assert_eq!(sample(&scrape(&bidder), series), Some(0.0));

    redis.kill();
    let status = bid().await.unwrap().status();
    assert_eq!(status, 503);
    assert_eq!(sample(&scrape(&bidder), series), Some(1.0));
    assert_eq!(
        sample(
            &scrape(&bidder),
            "auction_bids_total{source=\"user\",outcome=\"accepted\"}"
        ),
        Some(1.0)
    );
}
