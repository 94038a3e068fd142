//! One client address holds at most `AUCTION_MAX_CONNECTIONS_PER_ADDRESS`
//! connections on an edge: past it each new stream or socket is refused
//! with 429 and `Retry-After`, another address is still served, and the
//! viewer count does not move: an address is one viewer of an auction
//! however many watches it holds. Its place comes back when it closes one.
//! The address is the socket's peer, or the `X-Forwarded-For` of a trusted
//! proxy only; through nginx, the address nginx saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;
use test_support::Nginx;
use test_support::conn::{Conn, Origin, Received, Transport};
use test_support::{RedisServer, ServiceProcess, bidder_env, session_secret_env};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The cap per address in these tests.
const CAP: usize = 3;
/// Connections tried past the cap.
const REFUSED: usize = 4;
const WAIT: Duration = Duration::from_secs(10);
/// Ten rounds of viewer counts (`AUCTION_VIEWERS_INTERVAL_MS` 100): a
/// count that was going to move has moved by then.
const SETTLED: Duration = Duration::from_secs(1);

fn edge(
    transport: Transport,
    redis: &RedisServer,
    extra: &[(&'static str, &str)],
) -> ServiceProcess {
    let mut env = vec![
        ("AUCTION_REDIS_URL", redis.url()),
        session_secret_env(),
        ("AUCTION_MAX_CONNECTIONS_PER_ADDRESS", CAP.to_string()),
        ("AUCTION_VIEWERS_INTERVAL_MS", "100".into()),
        // The greedy sockets read nothing, so answer no ping: none is sent
        // while the test runs.
        ("AUCTION_WS_PING_MS", "3600000".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    ServiceProcess::start(transport.binary(), &env)
}

/// `{name}-sse` and `{name}-ws`.
async fn create(redis: &RedisServer, name: &str) {
    let ids = Transport::BOTH.map(|transport| format!("{name}-{}", transport.label()));
    test_support::auctions::create(&redis.url(), &ids, 600_000).await;
}

/// An answer read off a raw request: its head, and the socket (still
/// open, if the edge serves it).
struct Answer {
    status: u16,
    head: String,
    body: String,
    _socket: TcpStream,
}

/// Opens `auction`'s stream (SSE) or a socket (WebSocket) from `origin`
/// by hand and reads the answer's head, and its body if it is refused.
async fn attempt(transport: Transport, addr: SocketAddr, auction: &str, origin: &Origin) -> Answer {
    let mut socket = origin.connect(addr).await;
    let forwarded = origin.header_line();
    let request = match transport {
        Transport::Sse => format!(
            "GET /auctions/{auction}/events HTTP/1.1\r\nHost: edge\r\nAccept: text/event-stream\r\n{forwarded}\r\n"
        ),
        Transport::Ws => format!(
            "GET /ws HTTP/1.1\r\nHost: edge\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{forwarded}\r\n"
        ),
    };
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let read_head = async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if socket.read_exact(&mut byte).await.is_err() {
                break;
            }
            head.push(byte[0]);
        }
    };
    tokio::time::timeout(WAIT, read_head)
        .await
        .expect("an answer's head");
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    if status >= 400 {
        // The refusal's body (nginx keeps its own client connection open
        // after it, so it is read by its length).
        let length = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            })
            .expect("a refusal with a Content-Length");
        body.resize(length, 0);
        tokio::time::timeout(WAIT, socket.read_exact(&mut body))
            .await
            .expect("the refusal's body")
            .unwrap();
    }
    Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
        _socket: socket,
    }
}

fn served(transport: Transport) -> u16 {
    match transport {
        Transport::Sse => 200,
        Transport::Ws => 101,
    }
}

async fn open(transport: Transport, addr: SocketAddr, auction: &str, origin: &Origin) -> Conn {
    let mut conn = Conn::open_from(transport, addr, auction, origin).await;
    match conn.next(WAIT).await {
        Some(Received::Init { .. }) => conn,
        other => panic!("{transport:?} from {origin:?}: {other:?} instead of an init"),
    }
}

/// Who plays which client.
struct Clients {
    /// The address that fills its cap.
    greedy: Origin,
    /// Another address.
    other: Origin,
    /// A third, that only reads the viewer count.
    watcher: Origin,
    /// A fourth, that comes last.
    newcomer: Origin,
}

/// The whole story on the edge `metrics` behind `addr` (the edge itself,
/// or nginx in front of it).
async fn one_address_is_capped(
    transport: Transport,
    addr: SocketAddr,
    metrics: &ServiceProcess,
    auction: &str,
    clients: &Clients,
) {
    let label = transport.label();
    // An auction per transport: the counts of one do not linger in the other's.
    let auction = &format!("{auction}-{label}");
    let mut watcher = open(transport, addr, auction, &clients.watcher).await;
    let mut greedy = Vec::new();
    for _ in 0..CAP {
        greedy.push(open(transport, addr, auction, &clients.greedy).await);
    }
    let _other = open(transport, addr, auction, &clients.other).await;
    // The greedy address's watches are one viewer: three addresses, three.
    assert!(
        watcher.wait_for_viewers(3, WAIT).await,
        "{label}: viewers {:?}, not 3",
        watcher.viewers(),
    );

    // Past the cap: refused, with when to retry; kept open meanwhile, so
    // that a stream served by mistake would be counted below.
    let mut refused = Vec::new();
    for _ in 0..REFUSED {
        let answer = attempt(transport, addr, auction, &clients.greedy).await;
        assert_eq!(answer.status, 429, "{label}: {}", answer.head);
        assert!(
            answer.head.contains("Retry-After: 10\r\n"),
            "{label}: {}",
            answer.head
        );
        assert!(
            answer
                .body
                .contains("\"too_many_connections_from_address\""),
            "{label}: {}",
            answer.body
        );
        refused.push(answer);
    }
    // Another address is served still; a second watch of it leaves the
    // count as it was, and a new address moves it by one.
    let _another = open(transport, addr, auction, &clients.other).await;
    let _newcomer = open(transport, addr, auction, &clients.newcomer).await;
    assert!(
        watcher.wait_for_viewers(4, WAIT).await,
        "{label}: viewers {:?}, not 4",
        watcher.viewers(),
    );
    assert!(
        !watcher.wait_for_viewers(5, SETTLED).await,
        "{label}: a second watch from one address counted as another viewer"
    );
    let series = format!(
        "auction_connections_refused_total{{transport=\"{label}\",reason=\"per_address\"}}"
    );
    assert_eq!(metrics.metric(&series), REFUSED as f64, "{label}");
    drop(refused);

    // Closing gives the places back: the address gets its whole cap again.
    drop(greedy);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut again = loop {
        let answer = attempt(transport, addr, auction, &clients.greedy).await;
        if answer.status == served(transport) {
            break vec![answer];
        }
        assert_eq!(answer.status, 429, "{label}: {}", answer.head);
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: the address never got its places back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for _ in 1..CAP {
        let answer = attempt(transport, addr, auction, &clients.greedy).await;
        assert_eq!(answer.status, served(transport), "{label}: {}", answer.head);
        again.push(answer);
    }
    let answer = attempt(transport, addr, auction, &clients.greedy).await;
    assert_eq!(answer.status, 429, "{label}: {}", answer.head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_address_is_capped_and_another_served() {
    let redis = RedisServer::start();
    create(&redis, "direct").await;
    for transport in Transport::BOTH {
        let edge = edge(transport, &redis, &[]);
        // Loopback is 127.0.0.0/8: each source address is a client.
        let clients = Clients {
            greedy: Origin::source("127.0.0.1"),
            other: Origin::source("127.0.0.2"),
            watcher: Origin::source("127.0.0.3"),
            newcomer: Origin::source("127.0.0.4"),
        };
        one_address_is_capped(transport, edge.addr, &edge, "direct", &clients).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_forwards_addresses_that_are_capped_each() {
    let redis = RedisServer::start();
    create(&redis, "forwarded").await;
    for transport in Transport::BOTH {
        // Loopback is among the default trusted proxies.
        let edge = edge(
            transport,
            &redis,
            &[("AUCTION_TRUST_FORWARDED_FOR", "true")],
        );
        let clients = Clients {
            greedy: Origin::forwarded_for("203.0.113.1"),
            other: Origin::forwarded_for("203.0.113.2, 127.0.0.1"),
            watcher: Origin::forwarded_for("2001:db8::1"),
            newcomer: Origin::forwarded_for("203.0.113.3"),
        };
        one_address_is_capped(transport, edge.addr, &edge, "forwarded", &clients).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_name_fresh_addresses() {
    let redis = RedisServer::start();
    create(&redis, "spoof").await;
    for transport in Transport::BOTH {
        // Forwarded addresses are believed, but not from loopback.
        let edge = edge(
            transport,
            &redis,
            &[
                ("AUCTION_TRUST_FORWARDED_FOR", "true"),
                ("AUCTION_TRUSTED_PROXIES", "10.0.0.0/8"),
            ],
        );
        let mut held = Vec::new();
        for n in 0..CAP {
            let origin = Origin::forwarded_for(&format!("198.51.100.{n}"));
            let answer = attempt(
                transport,
                edge.addr,
                &format!("spoof-{}", transport.label()),
                &origin,
            )
            .await;
            assert_eq!(answer.status, served(transport), "{}", answer.head);
            held.push(answer);
        }
        let origin = Origin::forwarded_for("198.51.100.200");
        let answer = attempt(
            transport,
            edge.addr,
            &format!("spoof-{}", transport.label()),
            &origin,
        )
        .await;
        assert_eq!(answer.status, 429, "{transport:?}: {}", answer.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_each_client_address_is_capped() {
    let redis = RedisServer::start();
    create(&redis, "proxied").await;
    let bidder = ServiceProcess::start("bidder", &bidder_env(&redis, "", 1000));
    let trusted = [("AUCTION_TRUST_FORWARDED_FOR", "true")];
    let sse = edge(Transport::Sse, &redis, &trusted);
    let ws = edge(Transport::Ws, &redis, &trusted);
    let nginx = Nginx::start(&[bidder.addr], &[sse.addr], &[ws.addr]);
    let front: SocketAddr = ([127, 0, 0, 1], nginx.port).into();
    let clients = Clients {
        // nginx replaces what a client writes there with its address.
        greedy: Origin {
            source: Some([127, 0, 0, 1].into()),
            forwarded_for: Some("198.51.100.9".into()),
        },
        other: Origin::source("127.0.0.2"),
        watcher: Origin::source("127.0.0.3"),
        newcomer: Origin::source("127.0.0.4"),
    };
    one_address_is_capped(Transport::Sse, front, &sse, "proxied", &clients).await;
    one_address_is_capped(Transport::Ws, front, &ws, "proxied", &clients).await;
}
