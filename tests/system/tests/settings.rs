//! Every binary refuses a bad setting the same way: exit code 2 and one
//! line on stderr that names the setting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use test_support::run_to_exit;

#[test]
fn every_binary_exits_2_naming_the_bad_setting() {
    let cases: &[(&str, &str, &str)] = &[
        ("sse-edge", "AUCTION_REDIS_URL", "nonsense"),
        ("sse-edge", "AUCTION_LISTEN", ":99999"),
        ("sse-edge", "AUCTION_SSE_KEEPALIVE_MS", "often"),
        ("sse-edge", "AUCTION_MAX_CONNECTIONS", "0"),
        ("ws-edge", "AUCTION_REDIS_URL", "nonsense"),
        ("ws-edge", "AUCTION_WS_PING_MS", "-5"),
        ("ws-edge", "AUCTION_WS_MAX_MESSAGE", "huge"),
        ("ws-edge", "AUCTION_BIDDER_URL", "ftp://bidder"),
        ("bidder", "AUCTION_LOG_FORMAT", "xml"),
        ("bidder", "AUCTION_CONFIG", "/nonexistent.toml"),
        (
            "bidder",
            "AUCTION_CORS_ALLOWED_ORIGINS",
            "http://pages.example/path",
        ),
        (
            "bidder",
            "AUCTION_CORS_ALLOWED_ORIGINS",
            "*,http://pages.example",
        ),
        (
            "sse-edge",
            "AUCTION_BIDDER_PUBLIC_URL",
            "https://x; script-src *",
        ),
    ];
    for (binary, name, value) in cases {
        let (status, stderr) = run_to_exit(binary, &[(name, value)], Duration::from_secs(10));
        assert_eq!(status.code(), Some(2), "{binary} {name}={value}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{binary} {name}: one line, got {stderr:?}");
        assert!(
            lines[0].contains(name),
            "{binary}: {name} named in {stderr:?}"
        );
    }
}
