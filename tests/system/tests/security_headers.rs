//! Security headers and CORS, through the real binaries and the project's
//! nginx: every page, asset and API answer (errors included, and those
//! written on the edges' raw path or by nginx itself) carries a
//! Content-Security-Policy with `frame-ancestors 'none'`, `nosniff`,
//! `X-Frame-Options` and `Referrer-Policy`; the bidder's CORS follows
//! `AUCTION_CORS_ALLOWED_ORIGINS`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use test_support::{Nginx, RedisServer, ServiceProcess, free_port, wait_for};

/// One answer: status and headers (names in lower case, in order).
struct Answer {
    what: String,
    status: u16,
    headers: Vec<(String, String)>,
}

impl Answer {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of `name` (panics if absent or repeated).
    fn one(&self, name: &str) -> &str {
        let values = self.all(name);
        assert_eq!(values.len(), 1, "{}: one {name}, got {values:?}", self.what);
        values[0]
    }

    fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }
}

/// Sends `request` as is and reads the answer to the connection's end.
fn exchange(addr: SocketAddr, what: &str, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut bytes = Vec::new();
    // The servers close after answering (`Connection: close`); a reset
    // after the answer (a refusal that did not read the whole request)
    // still leaves what was read.
    let mut buffer = [0u8; 8192];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
        }
        if bytes.windows(4).any(|w| w == b"\r\n\r\n") && bytes.len() > 64 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no status line in {text:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer {
        what: what.to_owned(),
        status,
        headers,
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Answer {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in extra {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = if method == "POST" { "{}" } else { "" };
    if method == "POST" {
        text.push_str("Content-Type: application/json\r\nContent-Length: 2\r\n");
    }
    text.push_str("\r\n");
    text.push_str(body);
    exchange(addr, &format!("{method} {path} on {addr}"), text.as_bytes())
}

fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path, &[])
}

/// The headers every answer carries; `page`: the pages' policy (scripts,
/// styles from the page's origin only), otherwise the API's (nothing).
fn assert_secured(answer: &Answer, status: u16, page: bool) {
    let what = &answer.what;
    assert_eq!(answer.status, status, "{what}");
    let policy = answer.one("content-security-policy");
    assert!(
        policy.contains("frame-ancestors 'none'"),
        "{what}: {policy}"
    );
    assert!(!policy.contains("unsafe"), "{what}: {policy}");
    if page {
        assert!(
            policy.contains("script-src 'self'") && policy.contains("style-src 'self'"),
            "{what}: the pages' policy, got {policy}"
        );
    } else {
        assert!(
            policy.starts_with("default-src 'none'"),
            "{what}: the API policy, got {policy}"
        );
    }
    assert_eq!(answer.one("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(answer.one("x-frame-options"), "DENY", "{what}");
    assert_eq!(answer.one("referrer-policy"), "no-referrer", "{what}");
    // Plain HTTP: no HSTS (it belongs to the server that terminates TLS).
    assert!(!answer.has("strict-transport-security"), "{what}");
}

/// A request head over the 16 KiB bound, refused on the raw path (431).
fn oversized_head(addr: SocketAddr) -> Answer {
    let filler = "a".repeat(17 * 1024);
    let text = format!("GET / HTTP/1.1\r\nHost: edge\r\nX-Filler: {filler}\r\n\r\n");
    exchange(
        addr,
        &format!("an oversized head to {addr}"),
        text.as_bytes(),
    )
}

#[test]
fn every_page_asset_and_api_answer_carries_the_security_headers() {
    let redis = RedisServer::start();
    let mut bidder_env = test_support::bidder_env(&redis, "sec", 200);
    bidder_env.push(("AUCTION_TRUST_FORWARDED_FOR", "true".into()));
    let bidder = ServiceProcess::start("bidder", &bidder_env);
    let edge_env = |extra: Option<(&'static str, String)>| {
        let mut env = vec![
            ("AUCTION_REDIS_URL", redis.url()),
            test_support::session_secret_env(),
        ];
        env.extend(extra);
        env
    };
    let sse = ServiceProcess::start(
        "sse-edge",
        &edge_env(Some((
            "AUCTION_BIDDER_PUBLIC_URL",
            "https://Bids.Example.com:8443/".into(),
        ))),
    );
    let ws = ServiceProcess::start("ws-edge", &edge_env(None));
    for service in [&bidder, &sse, &ws] {
        wait_for("ready", Duration::from_secs(20), || {
            service.answers("/readyz", 200).then_some(())
        });
    }
    wait_for("the simulated auction", Duration::from_secs(20), || {
        (!redis.stream("sec").is_empty()).then_some(())
    });

    // The bidder: every answer is the API's, errors and the token's too.
    let b = bidder.addr;
    assert_secured(&get(b, "/auctions"), 200, false);
    assert_secured(&get(b, "/auctions/sec"), 200, false);
    assert_secured(&get(b, "/auctions/nope"), 404, false);
    assert_secured(&get(b, "/openapi.json"), 200, false);
    assert_secured(&get(b, "/no/such/route"), 404, false);
    assert_secured(&request(b, "DELETE", "/auctions", &[]), 405, false);
    assert_secured(&request(b, "POST", "/auctions/sec/bids", &[]), 401, false);
    // The ops endpoints: never on the public port, secured on their own.
    assert_secured(&get(b, "/healthz"), 404, false);
    assert_secured(&get(bidder.ops_addr, "/healthz"), 200, false);
    assert_secured(&get(bidder.ops_addr, "/metrics"), 200, false);
    assert_secured(&oversized_head(b), 431, false);
    let session = exchange(
        b,
        "POST /sessions",
        b"POST /sessions HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"name\":\"Ada\"}",
    );
    assert_secured(&session, 201, false);
    assert_eq!(
        session.one("cache-control"),
        "no-store",
        "a token is never cached"
    );

    // The SSE edge: its pages and assets get the pages' policy, which lets
    // them connect to the bidder's public origin; everything else the API's.
    let s = sse.addr;
    for path in [
        "/?auction=sec",
        "/catalogue.html",
        "/compare.html",
        "/assets/app.css",
        "/assets/common.js",
        "/assets/sse.js",
        "/assets/lot-pen.svg",
        "/favicon.ico",
    ] {
        let answer = get(s, path);
        assert_secured(&answer, 200, true);
        assert!(
            answer
                .one("content-security-policy")
                .contains("connect-src 'self' https://bids.example.com:8443;"),
            "{path}: the bidder's origin, from AUCTION_BIDDER_PUBLIC_URL"
        );
    }
    assert_secured(&get(s, "/assets/nope.js"), 404, true);
    // The ops endpoints: never on the public port, secured on their own.
    assert_secured(&get(s, "/healthz"), 404, false);
    assert_secured(&get(sse.ops_addr, "/healthz"), 200, false);
    assert_secured(&get(sse.ops_addr, "/metrics"), 200, false);
    assert_secured(&get(s, "/no/such/page"), 404, false);
    // The raw path's refusals: an unknown auction's stream, a huge head.
    assert_secured(
        &request(
            s,
            "GET",
            "/auctions/nope/events",
            &[("Accept", "text/event-stream")],
        ),
        404,
        false,
    );
    assert_secured(&oversized_head(s), 431, false);

    // The WebSocket edge: its page and assets; a plain GET of /ws (426,
    // the raw path).
    let w = ws.addr;
    for path in ["/?auction=sec", "/assets/ws.js", "/compare.html"] {
        let answer = get(w, path);
        assert_secured(&answer, 200, true);
        assert!(
            answer
                .one("content-security-policy")
                .contains("connect-src 'self';"),
            "{path}: same origin only"
        );
    }
    assert_secured(&get(w, "/ws"), 426, false);
    // The ops endpoints: never on the public port, secured on their own.
    assert_secured(&get(w, "/healthz"), 404, false);
    assert_secured(&get(ws.ops_addr, "/healthz"), 200, false);
    assert_secured(&get(ws.ops_addr, "/metrics"), 200, false);
    assert_secured(&oversized_head(w), 431, false);

    // Through nginx: each header once (passed through, not repeated), and
    // on nginx's own answers too.
    let nginx = Nginx::start(&[bidder.addr], &[sse.addr], &[ws.addr]);
    let n: SocketAddr = ([127, 0, 0, 1], nginx.port).into();
    for path in [
        "/?auction=sec",
        "/ws.html?auction=sec",
        "/catalogue.html",
        "/compare.html",
        "/assets/app.css",
    ] {
        assert_secured(&get(n, path), 200, true);
    }
    assert_secured(&get(n, "/auctions"), 200, false);
    assert_secured(&get(n, "/auctions/nope"), 404, false);
    assert_secured(&get(n, "/openapi.json"), 200, false);
    assert_secured(&get(n, "/nginx-health"), 200, false);
    assert_secured(&get(n, "/metrics"), 404, false);
    assert_secured(
        &request(
            n,
            "GET",
            "/auctions/nope/events",
            &[("Accept", "text/event-stream")],
        ),
        404,
        false,
    );

    // nginx with no replica up answers 502 itself.
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let lonely = Nginx::start(&[dead], &[dead], &[dead]);
    let l: SocketAddr = ([127, 0, 0, 1], lonely.port).into();
    assert_secured(&get(l, "/auctions"), 502, false);
    assert_secured(&get(l, "/"), 502, false);
}

#[test]
fn cors_follows_the_allowed_origins_setting() {
    let redis = RedisServer::start();
    let allowed = "http://pages.example:8081";
    let mut env = test_support::bidder_env(&redis, "cors", 200);
    env.push((
        "AUCTION_CORS_ALLOWED_ORIGINS",
        format!("https://other.example, {allowed}"),
    ));
    // A small page budget, to see a 429's Retry-After cross-origin.
    env.push(("AUCTION_LIST_RATE_LIMIT_PER_S", "1".into()));
    env.push(("AUCTION_LIST_RATE_LIMIT_BURST", "2".into()));
    let bidder = ServiceProcess::start("bidder", &env);
    let b = bidder.addr;
    wait_for("the simulated auction", Duration::from_secs(20), || {
        (!redis.stream("cors").is_empty()).then_some(())
    });

    let exposes_retry_after = |answer: &Answer| {
        answer
            .one("access-control-expose-headers")
            .split(',')
            .any(|name| name.trim().eq_ignore_ascii_case("retry-after"))
    };
    // An allowed origin reads answers, errors included.
    for (path, status) in [("/auctions/cors", 200), ("/auctions/nope", 404)] {
        let answer = request(b, "GET", path, &[("Origin", allowed)]);
        assert_eq!(answer.status, status, "{path}");
        assert_eq!(answer.one("access-control-allow-origin"), allowed, "{path}");
        assert!(exposes_retry_after(&answer), "{path}");
        assert!(
            answer
                .all("vary")
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("origin")),
            "{path}: caches keep answers per origin"
        );
    }
    let throttled = (0..10)
        .map(|_| request(b, "GET", "/auctions", &[("Origin", allowed)]))
        .find(|answer| answer.status == 429)
        .expect("the list budget runs out");
    assert!(throttled.has("retry-after"));
    assert_eq!(throttled.one("access-control-allow-origin"), allowed);
    assert!(exposes_retry_after(&throttled), "Retry-After readable");

    // Another origin gets no Access-Control-Allow-Origin: its pages cannot
    // read the answer.
    let evil = request(
        b,
        "GET",
        "/auctions/cors",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(evil.status, 200);
    assert!(!evil.has("access-control-allow-origin"));

    // A preflight for a bid: the method and every header a page sends.
    let preflight = |origin: &str| {
        request(
            b,
            "OPTIONS",
            "/auctions/cors/bids",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type, idempotency-key, traceparent",
                ),
            ],
        )
    };
    let ok = preflight(allowed);
    assert!((200..300).contains(&ok.status), "preflight: {}", ok.status);
    assert_eq!(ok.one("access-control-allow-origin"), allowed);
    assert!(ok.one("access-control-allow-methods").contains("POST"));
    let allowed_headers = ok.one("access-control-allow-headers").to_ascii_lowercase();
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "traceparent",
    ] {
        assert!(
            allowed_headers.contains(name),
            "{name} in {allowed_headers}"
        );
    }
    assert!(ok.has("access-control-max-age"));
    let refused = preflight("http://evil.example");
    assert!(!refused.has("access-control-allow-origin"));

    // By default no other origin is allowed (the pages and the API share
    // one origin behind nginx).
    let default = ServiceProcess::start("bidder", &test_support::bidder_env(&redis, "", 200));
    let answer = request(
        default.addr,
        "GET",
        "/auctions/cors",
        &[("Origin", allowed)],
    );
    assert_eq!(answer.status, 200);
    assert!(!answer.has("access-control-allow-origin"));

    // "*": any origin.
    let mut any = test_support::bidder_env(&redis, "", 200);
    any.push(("AUCTION_CORS_ALLOWED_ORIGINS", "*".into()));
    let any = ServiceProcess::start("bidder", &any);
    let answer = request(
        any.addr,
        "GET",
        "/auctions/cors",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(answer.one("access-control-allow-origin"), "*");
    assert!(exposes_retry_after(&answer));
}
