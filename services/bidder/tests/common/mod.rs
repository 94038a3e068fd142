//! Helpers for the bidder's end-to-end tests: a real redis-server and real
//! bidder processes, talked to over HTTP and RESP.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess};

pub struct Stack {
    pub redis: RedisServer,
    pub bidders: Vec<ServiceProcess>,
    pub http: reqwest::Client,
    /// A seller's guest token, sent by `post_json`.
    pub token: String,
}

/// Settings for a quiet bidder: no simulator, generous rate limits.
pub fn quiet(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("AUCTION_REDIS_URL", redis.url()),
        ("AUCTION_SIMULATE", "false".into()),
        ("AUCTION_RATE_LIMIT_PER_S", "100000".into()),
        ("AUCTION_RATE_LIMIT_BURST", "100000".into()),
        ("AUCTION_LIST_RATE_LIMIT_PER_S", "100000".into()),
        ("AUCTION_LIST_RATE_LIMIT_BURST", "100000".into()),
        ("AUCTION_ADDRESS_RATE_LIMIT_PER_S", "100000".into()),
        ("AUCTION_ADDRESS_RATE_LIMIT_BURST", "100000".into()),
        ("AUCTION_SESSION_RATE_LIMIT_PER_S", "100000".into()),
        ("AUCTION_SESSION_RATE_LIMIT_BURST", "100000".into()),
        ("AUCTION_CLOSE_CHECK_MS", "20".into()),
        test_support::session_secret_env(),
    ]
}

impl Stack {
    pub fn start(bidders: usize, extra: &[(&'static str, String)]) -> Stack {
        let redis = RedisServer::start();
        let mut env = quiet(&redis);
        env.extend(extra.iter().cloned());
        let bidders = (0..bidders)
            .map(|_| ServiceProcess::start("bidder", &env))
            .collect();
        Stack {
            redis,
            bidders,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            token: test_support::seller_token(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.bidders[0].url())
    }

    /// `path` on the first bidder's ops listener (`/healthz`, `/readyz`,
    /// `/metrics`).
    pub fn ops_url(&self, path: &str) -> String {
        format!("{}{path}", self.bidders[0].ops_url())
    }

    /// POSTs `body` with the stack's seller token.
    pub async fn post_json(&self, path: &str, body: &str) -> (u16, Value) {
        self.post_json_as(&self.token, path, body).await
    }

    /// POSTs `body` with `Authorization: Bearer <token>`.
    pub async fn post_json_as(&self, token: &str, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        status_and_json(response).await
    }

    /// The status of `GET path` on the first bidder's ops listener.
    pub async fn ops_status(&self, path: &str) -> u16 {
        let response = self.http.get(self.ops_url(path)).send().await.unwrap();
        response.status().as_u16()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        status_and_json(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    pub async fn create_auction(&self, id: &str, starting: u64, increment: u64, duration_ms: u64) {
        let body = serde_json::json!({
            "id": id, "title": format!("Item {id}"), "starting_price": starting,
            "min_increment": increment, "duration_ms": duration_ms,
        });
        let (status, json) = self.post_json("/auctions", &body.to_string()).await;
        assert_eq!(status, 201, "create failed: {json}");
    }

    /// The strings of a Redis reply that is an array of bulk strings
    /// (`TIME`, `HGETALL`...), in order.
    pub fn strings(&self, line: &str) -> Vec<String> {
        let reply = self.redis.command(line);
        let mut lines = reply.split("\r\n");
        let count: usize = lines
            .next()
            .and_then(|head| head.strip_prefix('*'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}: {reply:?}"));
        let strings: Vec<String> = lines
            .filter(|part| !part.starts_with('$') && !part.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(strings.len(), count, "{line}: {reply:?}");
        strings
    }

    /// Redis's clock, Unix ms (`TIME`): the clock of stream ids and of the
    /// scripts.
    pub fn redis_now_ms(&self) -> u64 {
        match self.strings("TIME").as_slice() {
            [seconds, micros] => {
                seconds.parse::<u64>().unwrap() * 1000 + micros.parse::<u64>().unwrap() / 1000
            }
            other => panic!("TIME: {other:?}"),
        }
    }

    /// Every entry of the auction's stream: (id, kind, data JSON).
    pub async fn stream(&self, auction: &str) -> Vec<(String, String, Value)> {
        self.redis
            .stream(auction)
            .into_iter()
            .map(|entry| {
                (
                    entry.id,
                    entry.kind,
                    serde_json::from_str(&entry.data).unwrap(),
                )
            })
            .collect()
    }
}

pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

/// A request's answer: status, error code (empty on success) and
/// `Retry-After` in seconds.
pub async fn answer(response: reqwest::Response) -> (u16, String, Option<u64>) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let (status, json) = status_and_json(response).await;
    let code = json["error"].as_str().unwrap_or_default().to_owned();
    (status, code, retry_after)
}

pub use test_support::id_pair;

/// Polls `check` every 20 ms until it yields `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
