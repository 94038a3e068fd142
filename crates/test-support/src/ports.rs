//! Loopback ports for the servers tests start, from one allocator per test
//! process.
//!
//! Why below the kernel's range of ephemeral ports: a server a test stops
//! and starts again on the same port (a Redis restart) must find it free,
//! and while it is down its clients keep connecting to it; a port in the
//! ephemeral range can meanwhile be taken as the local port of some
//! outgoing connection, or of a client's connection to itself (TCP's
//! simultaneous open, which a client retrying a closed local port hits now
//! and then), and the server cannot start again (seen: "timed out waiting
//! for redis-server to restart").
//!
//! Why one allocator: a port is free only until its server binds it, and
//! tests of one process run at once. Every port handed out is remembered,
//! so no two servers of a process are given the same one, whether a single
//! port or a cluster node's pair (seen: `scripts/run` told a port another
//! test had just been given, "port 18121 is taken").

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// Where a Redis Cluster node's bus listens: its port plus this.
const BUS_OFFSET: u16 = 10_000;

/// The lowest port handed out.
const LOWEST: u16 = 10_000;

/// A loopback port that was free a moment ago and that no other caller in
/// this process has been given, below the ephemeral range.
pub fn free_port() -> u16 {
    let mut allocator = allocator();
    let highest = allocator.highest();
    for _ in 0..allocator.span() {
        let port = allocator.next_candidate(highest);
        if allocator.claim(&[port]) {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// `count` ports for Redis Cluster nodes: each free, and its cluster bus
/// port (port + 10000) free too, all below the ephemeral range and none
/// given to another caller in this process.
pub fn free_cluster_ports(count: usize) -> Vec<u16> {
    let mut allocator = allocator();
    let highest = allocator.highest() - BUS_OFFSET;
    let mut ports = Vec::with_capacity(count);
    for _ in 0..allocator.span() {
        if ports.len() == count {
            break;
        }
        let port = allocator.next_candidate(highest);
        if allocator.claim(&[port, port + BUS_OFFSET]) {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), count, "no free port pairs for a Redis Cluster");
    ports
}

struct Allocator {
    /// Every port handed out by this process.
    given: HashSet<u16>,
    /// Where this process starts in the range: differs between processes
    /// (so a test process and the one before it pick apart), fixed within
    /// one (so successive candidates walk the range without repeating).
    seed: u32,
    /// Candidates tried so far.
    tried: u32,
    /// The lowest ephemeral port.
    ephemeral_low: u16,
}

fn allocator() -> std::sync::MutexGuard<'static, Allocator> {
    static ALLOCATOR: OnceLock<Mutex<Allocator>> = OnceLock::new();
    ALLOCATOR
        .get_or_init(|| {
            let seed = std::process::id()
                ^ std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.subsec_nanos());
            Mutex::new(Allocator {
                given: HashSet::new(),
                seed,
                tried: 0,
                ephemeral_low: ephemeral_low(),
            })
        })
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Allocator {
    /// The highest port handed out.
    fn highest(&self) -> u16 {
        self.ephemeral_low - 1
    }

    /// How many candidates a caller tries before giving up.
    fn span(&self) -> u32 {
        u32::from(self.ephemeral_low - LOWEST)
    }

    /// The next candidate in `LOWEST..=highest`. The stride is a prime, so
    /// the walk visits every port of the range before it repeats one.
    fn next_candidate(&mut self, highest: u16) -> u16 {
        let span = u32::from(highest - LOWEST) + 1;
        let step = self.tried.wrapping_mul(7919);
        self.tried = self.tried.wrapping_add(1);
        let offset = self.seed.wrapping_add(step) % span;
        LOWEST + u16::try_from(offset).unwrap_or(0)
    }

    /// Takes `ports` if none was given before and each binds now.
    fn claim(&mut self, ports: &[u16]) -> bool {
        if ports.iter().any(|port| self.given.contains(port)) {
            return false;
        }
        if !ports
            .iter()
            .all(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        {
            return false;
        }
        self.given.extend(ports);
        true
    }
}

/// The lowest ephemeral port (Linux's `ip_local_port_range`; 32768 when it
/// cannot be read), kept within what leaves room for cluster bus ports.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768u16)
        .max(LOWEST + BUS_OFFSET + 2_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_port_is_given_twice_in_a_process() {
        let mut seen = HashSet::new();
        for _ in 0..200 {
            assert!(seen.insert(free_port()));
        }
        for port in free_cluster_ports(6) {
            assert!(seen.insert(port));
            assert!(seen.insert(port + BUS_OFFSET));
        }
    }
}
