//! Counting long-lived client connections: the cap, the gauge, and knowing
//! when a draining replica has none left.

use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

pub struct ConnectionGate {
    max: usize,
    open: AtomicUsize,
    gauge: Gauge,
    drained: Notify,
}

/// One admitted connection; gives its place back when dropped.
pub struct Admission<'a>(&'a ConnectionGate);

impl ConnectionGate {
    pub fn new(max: usize, gauge: Gauge) -> ConnectionGate {
        ConnectionGate {
            max,
            open: AtomicUsize::new(0),
            gauge,
            drained: Notify::new(),
        }
    }

    /// Admits a connection unless `max` are open.
    pub fn admit(&self) -> Option<Admission<'_>> {
        let previous = self.open.fetch_add(1, Ordering::AcqRel);
        if previous >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.drained.notify_waiters();
            return None;
        }
        self.gauge.inc();
        Some(Admission(self))
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
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
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.gauge.dec();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_cap_and_counts() {
        let gauge = Gauge::default();
        let gate = ConnectionGate::new(2, gauge.clone());
        let first = gate.admit().unwrap();
        let _second = gate.admit().unwrap();
        assert!(gate.admit().is_none());
        assert_eq!((gate.open(), gauge.get()), (2, 2));
        drop(first);
        assert_eq!((gate.open(), gauge.get()), (1, 1));
        assert!(gate.admit().is_some());
    }
}
