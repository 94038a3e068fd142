//! When sockets ping their peers: replica-wide ticks, in phases.
//!
//! One timer per replica instead of one per socket (a timer in every
//! socket's task would cost memory per idle connection). But one shared
//! tick woke every socket of the replica at once (each then taking its
//! socket back from direct delivery to send a ping and read the pong, as
//! it did then): a burst of every socket's work that held events back. So
//! the interval is split into phases (see [`phases_for`]), sockets are
//! dealt to them in turn, and each tick wakes one phase's sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The most phases per ping interval: with the default 20 s, a tick every
/// 78 ms, and 39 of 10,000 sockets pinged (and their pongs read) at once.
/// Sixteen phases, as before, made bursts of 625 that showed in the p99 of
/// events that arrived during one (BENCHMARKS.md). Each phase costs one
/// watch channel, a few hundred bytes per replica, never per socket.
pub const MAX_PING_PHASES: usize = 256;

/// The shortest time between two phases' ticks: shorter ping intervals
/// (tests use 200 ms) get fewer phases rather than a tick every millisecond.
const MIN_PHASE_STEP: Duration = Duration::from_millis(20);

/// How many phases an interval is split into: as many as fit
/// [`MIN_PHASE_STEP`] apart, at least one, at most [`MAX_PING_PHASES`].
pub fn phases_for(every: Duration) -> usize {
    let fit = every.as_nanos() / MIN_PHASE_STEP.as_nanos();
    usize::try_from(fit).map_or(MAX_PING_PHASES, |fit| fit.clamp(1, MAX_PING_PHASES))
}

/// The replica's ping ticks: one channel per phase, each ticking once per
/// interval, the phases evenly apart.
pub struct PingTicks {
    phases: Vec<watch::Receiver<u64>>,
    /// Sockets dealt so far: the next one gets the phase after.
    dealt: AtomicUsize,
}

impl PingTicks {
    /// Starts the ticker; it ends with `shutdown`.
    pub fn start(every: Duration, shutdown: CancellationToken) -> PingTicks {
        let count = phases_for(every);
        let (senders, phases): (Vec<_>, Vec<_>) = (0..count).map(|_| watch::channel(0u64)).unzip();
        // `count` is at most MAX_PING_PHASES, so it fits a u32.
        let step = every / count as u32;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(step);
            interval.reset();
            // Each phase in turn, one per step: a phase's ticks are a
            // whole interval apart.
            for phase in (0..count).cycle() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = interval.tick() => senders[phase].send_modify(|tick| *tick += 1),
                }
            }
        });
        PingTicks {
            phases,
            dealt: AtomicUsize::new(0),
        }
    }

    /// The ticks of a new socket: the next phase, in turn.
    pub fn deal(&self) -> watch::Receiver<u64> {
        let socket = self.dealt.fetch_add(1, Ordering::Relaxed);
        self.phases[socket % self.phases.len()].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_dealt_in_turn_are_pinged_a_phase_apart_once_an_interval() {
        // The most phases, 200 ms apart.
        let phases = MAX_PING_PHASES;
        let every = Duration::from_millis(200) * phases as u32;
        assert_eq!(phases_for(every), phases);
        let shutdown = CancellationToken::new();
        let ticks = PingTicks::start(every, shutdown.clone());
        let mut sockets: Vec<_> = (0..phases + 1).map(|_| ticks.deal()).collect();
        sockets[0].changed().await.unwrap();
        assert!(
            !sockets[phases - 1].has_changed().unwrap(),
            "the last phase ticks most of an interval later"
        );
        assert!(
            sockets[phases].has_changed().unwrap(),
            "dealt after every phase had a socket: the first phase again"
        );
        sockets[1].changed().await.unwrap();
        assert!(!sockets[0].has_changed().unwrap(), "once an interval");
        shutdown.cancel();
    }

    #[test]
    fn the_default_interval_pings_a_few_dozen_of_ten_thousand_sockets_at_a_time() {
        let phases = phases_for(Duration::from_secs(20));
        assert_eq!(phases, MAX_PING_PHASES);
        assert!(10_000 / phases < 40);
    }

    #[test]
    fn short_intervals_get_fewer_phases_never_closer_than_the_least_step() {
        assert_eq!(phases_for(Duration::from_millis(200)), 10);
        assert_eq!(phases_for(Duration::from_millis(100)), 5);
        assert_eq!(phases_for(Duration::from_millis(19)), 1);
    }
}
