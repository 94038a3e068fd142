//! Counting long-lived client connections: the replica's cap, the cap per
//! client address, the gauge and the refusals, and knowing when a draining
//! replica has none left.
//!
//! The table of addresses holds one entry per address with a connection
//! open, and an entry is removed with its address's last connection: it is
//! bounded by the replica's cap (an address is only entered once the
//! replica has admitted its connection).

use crate::raw_http::error_response_bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// What an address over its cap is told to wait, in seconds: its places
/// come back only as its own connections close.
pub const PER_ADDRESS_RETRY_AFTER_S: u64 = 10;

/// The gate's metrics.
#[derive(Clone, Default)]
pub struct GateMetrics {
    /// Open connections.
    pub open: Gauge,
    /// Refused: the replica holds its cap.
    pub refused_full: Counter,
    /// Refused: the client's address holds its cap.
    pub refused_per_address: Counter,
}

pub struct ConnectionGate {
    max: usize,
    per_address: u32,
    open: AtomicUsize,
    /// Open connections per client address (see [`address_key`]); never
    /// holds an address with none.
    addresses: Mutex<HashMap<IpAddr, u32>>,
    metrics: GateMetrics,
    drained: Notify,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The replica holds `AUCTION_MAX_CONNECTIONS`: 503.
    Full,
    /// The client's address holds `AUCTION_MAX_CONNECTIONS_PER_ADDRESS`:
    /// 429.
    PerAddress,
}

impl Refused {
    /// The complete HTTP answer.
    pub fn response(self) -> Vec<u8> {
        match self {
            Refused::Full => crate::refusal::too_many_connections(),
            Refused::PerAddress => error_response_bytes(
                429,
                "Too Many Requests",
                "too_many_connections_from_address",
                "this address holds as many connections as one client may; close one first",
                Some(PER_ADDRESS_RETRY_AFTER_S),
            ),
        }
    }
}

/// One admitted connection; gives its places back when dropped.
pub struct Admission<'a> {
    gate: &'a ConnectionGate,
    address: IpAddr,
}

/// The address a connection is counted under: an IPv4 address as is, an
/// IPv6 address by its /64 (one household or host is given a whole /64 and
/// may use any address in it).
pub fn address_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl ConnectionGate {
    /// `max` connections in all, `per_address` per client address.
    pub fn new(max: usize, per_address: u32, metrics: GateMetrics) -> ConnectionGate {
        ConnectionGate {
            max,
            per_address: per_address.max(1),
            open: AtomicUsize::new(0),
            addresses: Mutex::new(HashMap::new()),
            metrics,
            drained: Notify::new(),
        }
    }

    /// Admits a connection from `client` unless `max` are open or
    /// `per_address` are open from its address.
    pub fn admit(&self, client: IpAddr) -> Result<Admission<'_>, Refused> {
        let previous = self.open.fetch_add(1, Ordering::AcqRel);
        if previous >= self.max {
            self.release_count();
            self.metrics.refused_full.inc();
            return Err(Refused::Full);
        }
        let address = address_key(client);
        {
            let mut addresses = self.lock();
            let open = addresses.entry(address).or_insert(0);
            if *open >= self.per_address {
                drop(addresses);
                self.release_count();
                self.metrics.refused_per_address.inc();
                return Err(Refused::PerAddress);
            }
            *open += 1;
        }
        self.metrics.open.inc();
        Ok(Admission {
            gate: self,
            address,
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Addresses with a connection open.
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }

    /// Resolves once no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // Nothing panics while holding it; a poisoned table is still whole.
        self.addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release_count(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.drained.notify_waiters();
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        {
            let mut addresses = self.gate.lock();
            if let Some(open) = addresses.get_mut(&self.address) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    addresses.remove(&self.address);
                }
            }
        }
        self.gate.metrics.open.dec();
        self.gate.release_count();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn admits_up_to_the_cap_and_counts() {
        let metrics = GateMetrics::default();
        let gate = ConnectionGate::new(2, 10, metrics.clone());
        let first = gate.admit(ip("10.0.0.1")).unwrap();
        let _second = gate.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.3")).err(), Some(Refused::Full));
        assert_eq!((gate.open(), metrics.open.get()), (2, 2));
        assert_eq!(metrics.refused_full.get(), 1);
        drop(first);
        assert_eq!((gate.open(), metrics.open.get()), (1, 1));
        assert!(gate.admit(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn one_address_gets_its_cap_and_others_are_served() {
        let metrics = GateMetrics::default();
        let gate = ConnectionGate::new(100, 3, metrics.clone());
        let mine: Vec<_> = (0..3)
            .map(|_| gate.admit(ip("203.0.113.9")).unwrap())
            .collect();
        assert_eq!(
            gate.admit(ip("203.0.113.9")).err(),
            Some(Refused::PerAddress)
        );
        assert_eq!(metrics.refused_per_address.get(), 1);
        let other = gate.admit(ip("203.0.113.10")).unwrap();
        // The refused one holds nothing.
        assert_eq!(
            (gate.open(), metrics.open.get(), gate.addresses()),
            (4, 4, 2)
        );
        drop(mine);
        drop(other);
        // Every entry is gone with its address's last connection.
        assert_eq!((gate.open(), gate.addresses()), (0, 0));
        assert!(gate.admit(ip("203.0.113.9")).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let gate = ConnectionGate::new(100, 2, GateMetrics::default());
        let _a = gate.admit(ip("2001:db8:1:2::1")).unwrap();
        let _b = gate.admit(ip("2001:db8:1:2:ffff::7")).unwrap();
        assert_eq!(
            gate.admit(ip("2001:db8:1:2::99")).err(),
            Some(Refused::PerAddress)
        );
        assert!(gate.admit(ip("2001:db8:1:3::1")).is_ok());
        // A mapped IPv4 address is that IPv4 address.
        assert_eq!(address_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn refusals_say_when_to_retry() {
        let text = String::from_utf8(Refused::PerAddress.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
        assert!(text.contains("Retry-After: 10\r\n"), "{text}");
        assert!(text.contains("too_many_connections_from_address"), "{text}");
        let text = String::from_utf8(Refused::Full.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    }
}
