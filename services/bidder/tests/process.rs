//! The bidder as a process: Redis outages, bad settings, shutdown, docs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Stack, eventually};
use std::time::{Duration, Instant};
use test_support::run_to_exit;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart_without_being_restarted() {
    let mut stack = Stack::start(1, &[]);
    stack.create_auction("outage", 1_000, 100, 600_000).await;
    let ready = |stack: &Stack| {
        let request = stack.http.get(stack.ops_url("/readyz"));
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(ready(&stack).await, 200);

    stack.redis.kill();
    let started = Instant::now();
    let (status, json) = stack
        .post_json("/auctions/outage/bids", r#"{"amount":1000,"bidder":"a"}"#)
        .await;
    assert_eq!(status, 503, "{json}");
    // The first bid after the kill may be written into the dead
    // connection before the reset shows: the bidder cannot know whether
    // Redis read it, and says so; once the connection is known to be down,
    // nothing is sent and the answer is that Redis is unavailable.
    let code = json["error"].as_str().unwrap_or("");
    assert!(
        ["redis_unavailable", "bid_outcome_unknown"].contains(&code),
        "{json}"
    );
    assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    let (status, json) = stack
        .post_json("/auctions/outage/bids", r#"{"amount":1000,"bidder":"a"}"#)
        .await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["error"], "redis_unavailable", "{json}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 must come promptly"
    );
    eventually("readyz to turn 503", Duration::from_secs(10), || async {
        (ready(&stack).await == 503).then_some(())
    })
    .await;
    assert_eq!(stack.ops_status("/healthz").await, 200, "still alive");
    assert_eq!(stack.get("/auctions/outage").await.0, 503);

    stack.redis.restart();
    eventually("readyz to turn 200", Duration::from_secs(15), || async {
        (ready(&stack).await == 200).then_some(())
    })
    .await;
    let (status, json) = stack
        .post_json("/auctions/outage/bids", r#"{"amount":1000,"bidder":"a"}"#)
        .await;
    assert_eq!(status, 201, "{json}");
    assert_eq!(stack.stream("outage").await.len(), 1);
    let metrics = stack
        .http
        .get(stack.ops_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconnects: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("auction_redis_reconnects_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("reconnect counter");
    assert!(reconnects >= 1, "{metrics}");
}

#[test]
fn bad_settings_exit_2_with_one_line_naming_the_setting() {
    for (name, value) in [
        ("AUCTION_REDIS_URL", "nonsense"),
        ("AUCTION_LISTEN", ":99999"),
        ("AUCTION_SIM_INTERVAL_MS", "soon"),
        ("AUCTION_SHUTDOWN_GRACE_MS", "-1"),
        ("AUCTION_SIM_AUCTIONS", "ok,not ok"),
        ("AUCTION_SESSION_SECRET", "too short"),
        ("AUCTION_SESSION_TTL_S", "0"),
        ("AUCTION_JWT_ISSUER", "https://idp.example"),
    ] {
        let env = [
            ("AUCTION_SESSION_SECRET", test_support::TEST_SESSION_SECRET),
            (name, value),
        ];
        let (status, stderr) = run_to_exit("bidder", &env, Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{name}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {name}: {stderr}");
        assert!(lines[0].contains(name), "{name} named in {stderr:?}");
    }
}

#[test]
fn without_a_session_secret_or_identity_provider_the_bidder_does_not_start() {
    let (status, stderr) = run_to_exit("bidder", &[], Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AUCTION_SESSION_SECRET"), "{stderr}");
}

#[test]
fn the_token_command_mints_a_token_with_the_shared_secret() {
    let output = std::process::Command::new(test_support::binary_path("bidder"))
        .args([
            "token", "--name", "Ops", "--role", "seller", "--ttl-s", "600",
        ])
        .env("AUCTION_SESSION_SECRET", test_support::TEST_SESSION_SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    let refused = std::process::Command::new(test_support::binary_path("bidder"))
        .args(["token", "--name", "Ops"])
        .env_remove("AUCTION_SESSION_SECRET")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("AUCTION_SESSION_SECRET"));
}

#[tokio::test]
async fn sigterm_turns_unready_and_exits_zero() {
    let mut stack = Stack::start(1, &[("AUCTION_SIMULATE", "true".into())]);
    assert_eq!(stack.ops_status("/healthz").await, 200);
    stack.bidders[0].signal("TERM");
    let status = stack.bidders[0]
        .wait_exit(Duration::from_secs(10))
        .expect("exits within the grace period");
    assert_eq!(status.code(), Some(0), "{}", stack.bidders[0].logs());
}

#[tokio::test]
async fn serves_its_openapi_document() {
    let stack = Stack::start(1, &[]);
    let (status, doc) = stack.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/sessions",
        "/auctions",
        "/auctions/{id}",
        "/auctions/{id}/bids",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
}

#[tokio::test]
async fn bids_are_rate_limited_per_bidder_with_retry_after() {
    let stack = Stack::start(
        1,
        &[
            ("AUCTION_RATE_LIMIT_PER_S", "1".into()),
            ("AUCTION_RATE_LIMIT_BURST", "3".into()),
        ],
    );
    stack.create_auction("rl", 1_000, 100, 600_000).await; // uses one token
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for amount in [1_000, 2_000, 3_000] {
        let response = stack
            .http
            .post(stack.url("/auctions/rl/bids"))
            .bearer_auth(&stack.token)
            .header("content-type", "application/json")
            .body(format!(r#"{{"amount":{amount}}}"#))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").cloned();
            let (_, json) = common::status_and_json(response).await;
            assert_eq!(json["error"], "rate_limited");
        }
    }
    assert_eq!(statuses, [201, 201, 429]);
    assert_eq!(retry_after.unwrap().to_str().unwrap(), "1");
    // Another bidder from the same address has a bucket of their own.
    let (status, json) = stack
        .post_json_as(
            &test_support::guest_token("Other"),
            "/auctions/rl/bids",
            r#"{"amount":9000}"#,
        )
        .await;
    assert_eq!(status, 201, "{json}");
}
