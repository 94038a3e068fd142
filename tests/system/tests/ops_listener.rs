//! `/healthz`, `/readyz` and `/metrics` live on each service's ops
//! listener (`AUCTION_OPS_LISTEN`) and nowhere else: whatever routes the
//! public port (an Ingress sending `/` to an edge, nginx) cannot reach
//! them. On the real binaries with a real Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use test_support::{RedisServer, ServiceProcess, bidder_env, run_to_exit, wait_for};

const OPS_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The status and whole answer of `GET target` on `addr`.
fn get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A public route of `binary` that answers 200.
fn public_path(binary: &str) -> &'static str {
    if binary == "bidder" {
        "/openapi.json"
    } else {
        "/"
    }
}

fn start_all(redis: &RedisServer) -> Vec<(&'static str, ServiceProcess)> {
    vec![
        (
            "bidder",
            ServiceProcess::start("bidder", &bidder_env(redis, "", 1000)),
        ),
        (
            "sse-edge",
            ServiceProcess::start("sse-edge", &[("AUCTION_REDIS_URL", redis.url())]),
        ),
        (
            "ws-edge",
            ServiceProcess::start(
                "ws-edge",
                &[
                    ("AUCTION_REDIS_URL", redis.url()),
                    test_support::session_secret_env(),
                ],
            ),
        ),
    ]
}

#[test]
fn ops_endpoints_are_served_on_the_ops_listener_and_never_on_the_public_port() {
    let redis = RedisServer::start();
    for (binary, service) in start_all(&redis) {
        assert_ne!(service.addr.port(), service.ops_addr.port());
        wait_for("ready on the ops listener", Duration::from_secs(20), || {
            (get(service.ops_addr, "/readyz").0 == 200).then_some(())
        });
        let (status, text) = get(service.ops_addr, "/healthz");
        assert_eq!(status, 200, "{binary} /healthz: {text}");
        let (status, text) = get(service.ops_addr, "/metrics");
        assert_eq!(status, 200, "{binary} /metrics: {text}");
        assert!(text.contains("auction_ready 1"), "{binary}: {text}");

        // The public port knows nothing of them, in any spelling a proxy
        // might pass on.
        for path in OPS_PATHS {
            for target in [
                path.to_owned(),
                format!("{path}?x=1"),
                format!("http://x{path}"),
            ] {
                let (status, text) = get(service.addr, &target);
                assert_eq!(status, 404, "{binary} public {target}: {text}");
                assert!(
                    !text.contains("auction_") && !text.contains("ready\n"),
                    "{binary} public {target} leaks: {text}"
                );
            }
        }
        // ...while it serves its own routes, which the ops listener does not.
        let path = public_path(binary);
        assert_eq!(get(service.addr, path).0, 200, "{binary} public {path}");
        assert_eq!(get(service.ops_addr, path).0, 404, "{binary} ops {path}");
    }
}

#[test]
fn the_ops_listener_keeps_answering_through_a_redis_outage() {
    let mut redis = RedisServer::start();
    let services = start_all(&redis);
    redis.kill();
    for (binary, service) in &services {
        wait_for("unready", Duration::from_secs(20), || {
            (get(service.ops_addr, "/readyz").0 == 503).then_some(())
        });
        assert_eq!(get(service.ops_addr, "/healthz").0, 200, "{binary}");
        assert_eq!(get(service.addr, "/readyz").0, 404, "{binary}");
    }
}

#[test]
fn an_ops_port_equal_to_the_public_port_is_a_bad_setting() {
    let port = test_support::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let ops = format!("0.0.0.0:{port}");
    for binary in ["bidder", "sse-edge", "ws-edge"] {
        let (status, stderr) = run_to_exit(
            binary,
            &[("AUCTION_LISTEN", &listen), ("AUCTION_OPS_LISTEN", &ops)],
            Duration::from_secs(10),
        );
        assert_eq!(status.code(), Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains("AUCTION_OPS_LISTEN") && stderr.contains("AUCTION_LISTEN"),
            "{binary}: {stderr}"
        );
    }
    let (status, stderr) = run_to_exit(
        "bidder",
        &[("AUCTION_OPS_LISTEN", "nowhere")],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AUCTION_OPS_LISTEN"), "{stderr}");
}
