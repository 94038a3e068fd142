//! `loadgen`: the project's own load generator. Targets loopback only.
//!
//! - `bids`: accepted bids per second through the bidder's HTTP API, with
//!   latency percentiles (one auction per worker, strictly increasing bids);
//! - `sse` / `ws`: N SSE or WebSocket clients over A auctions, against this
//!   project's edges, nginx+nchan or the floor server; M events published
//!   at a given rate; deliveries/s, delivery latency percentiles (HDR histogram), missing
//!   and duplicated events, resumes, and the server's CPU and RSS from
//!   /proc; or a reconnect storm (`--storm-from`). `scripts/bench` drives
//!   it;
//! - `publish`: bids on one auction at a given rate, each send time on
//!   stdout, for clients run elsewhere (`load-tests/h2-sse`).

mod bids;
mod fanout;
mod http1;
mod proc_stats;
mod publish;
mod redis_stats;
mod target;
mod wire;

use std::collections::HashMap;
use std::process::ExitCode;

const USAGE: &str = "usage:
  loadgen bids --url URL --token TOKEN [--concurrency N] [--seconds S]
  loadgen sse|ws --server URL [--system ours|nchan|floor] [--redis URL]
                 [--clients N] [--auctions A] [--events M] [--rate R]
                 [--churn-every K] [--storm-from K] [--ops URL]
                 [--reading batch|eager|tungstenite] [--publish direct|http|pipelined]
                 [--bidder URL --token TOKEN]
                 [--pids PID,PID..] [--settle-ms MS] [--timeout-s S]
                 [--stream-auctions N]
  loadgen publish --redis URL --auction ID (--create true | [--events M]
                 [--rate R] [--warm-up-ms MS])
    --system ours: --server is an sse-edge or ws-edge, events go into --redis;
    --system nchan: --server is nginx+nchan (/pub/ID, /sub/ID);
    --system floor: --server is load-tests/floor (events on its control
      connection, no Redis, no resume);
    --reading batch: each client read takes up to 16 KiB; eager: one
      message per read, on every readiness; tungstenite (ws): each client
      reads through tokio-tungstenite's stream, one message per next();
    --publish direct (default): ours appended straight to --redis, nchan
      POSTed through a pooled client; http: one keep-alive connection,
      one request at a time: ours as bids through the bidder's API at
      --bidder (--token: a seller's, it creates the auctions too), nchan
      to /pub/ID (the floor keeps its control connection); pipelined: the
      same connection, each request written when due without waiting for
      the answers before it;
    --events 0: idle connections, reports RSS per connection;
    --rate 0: publish as fast as the server takes events;
    --churn-every K: each client hangs up after K events and resumes;
    --storm-from K: publish --events first, then open every client at
      once resuming from the id of event K (0-based; one auction, ours or
      nchan): resumes/s, missing, duplicated, out of order, server CPU,
      and for ours the XRANGE calls Redis served (--redis) and the
      replay reads shared, from the edge's /metrics on its ops listener
      (--ops URL, the edge's AUCTION_OPS_LISTEN);
    --stream-auctions N (sse, ours): each client watches N auctions on one
      /events?auctions=... stream (client i: group i % (A / N));
    publish: --create true creates the auction; otherwise one warm-up bid,
      then M bids at R/s, each send time on stdout (`sent K UNIX_US`);
    --pids: the server's processes, for CPU and RSS (summed; add Redis
      and the bidder to count the whole server side)";

/// `--name value` pairs after the scenario name.
pub struct Args(HashMap<String, String>);

impl Args {
    fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut args = args.peekable();
        while let Some(flag) = args.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --flag, got {flag:?}"))?;
            let value = args
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            map.insert(name.to_owned(), value);
        }
        Ok(Args(map))
    }

    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.0.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("--{name}: cannot parse {text:?}")),
        }
    }

    /// A comma-separated list of values (`default` when absent).
    pub fn list<T: std::str::FromStr>(&self, name: &str, default: &str) -> Result<Vec<T>, String> {
        let text = self.0.get(name).map_or(default, String::as_str);
        text.split(',')
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse()
                    .map_err(|_| format!("--{name}: cannot parse {item:?}"))
            })
            .collect()
    }

    pub fn text(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
}

/// Refuses targets other than loopback: load tests never leave the machine.
pub fn ensure_loopback(url: &str) -> Result<(), String> {
    let authority = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    // `[::1]:port`, `host:port` or a bare host.
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!("refusing to load {host:?}: loopback targets only"))
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_default();
    let result = Args::parse(args).and_then(|args| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|error| error.to_string())?;
        match scenario.as_str() {
            "bids" => runtime.block_on(bids::run(&args)),
            "sse" => runtime.block_on(fanout::run(&args, target::Transport::Sse)),
            "ws" => runtime.block_on(fanout::run(&args, target::Transport::Ws)),
            "publish" => runtime.block_on(publish::run(&args)),
            _ => Err(USAGE.into()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ensure_loopback;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8081",
            "redis://127.0.0.2:6380/0",
            "http://localhost:1",
            "http://[::1]:8081/x",
            "redis://user:pass@127.0.0.1:6379",
        ] {
            assert!(ensure_loopback(ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://10.0.0.1:8081",
            "http://192.168.1.2",
            "http://example.com:80",
            "http://127.0.0.1.example.com",
            "http://user@10.0.0.1:80",
        ] {
            assert!(ensure_loopback(refused).is_err(), "{refused}");
        }
    }
}
