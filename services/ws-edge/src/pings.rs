//! When sockets ping their peers: replica-wide ticks, in phases.
//!
//! One timer per replica instead of one per socket (a timer in every
//! socket's task would cost memory per idle connection). But one shared
//! tick woke every socket of the replica at once (each then taking its
//! socket back from direct delivery to send a ping and read the pong, as
//! it did then): a burst of every socket's work that held events back. So
//! the interval is split into [`PING_PHASES`] phases, sockets are dealt to
//! them in turn, and each tick wakes one phase's sockets.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Phases per ping interval.
pub const PING_PHASES: usize = 16;

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
        let (senders, phases): (Vec<_>, Vec<_>) =
            (0..PING_PHASES).map(|_| watch::channel(0u64)).unzip();
        let step = (every / PING_PHASES as u32).max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(step);
            interval.reset();
            // Each phase in turn, one per step: a phase's ticks are a
            // whole interval apart.
            for phase in (0..PING_PHASES).cycle() {
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
        self.phases[socket % PING_PHASES].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_dealt_in_turn_are_pinged_a_phase_apart_once_an_interval() {
        // Phases 200 ms apart.
        let every = Duration::from_millis(200) * PING_PHASES as u32;
        let shutdown = CancellationToken::new();
        let ticks = PingTicks::start(every, shutdown.clone());
        let mut sockets: Vec<_> = (0..PING_PHASES + 1).map(|_| ticks.deal()).collect();
        sockets[0].changed().await.unwrap();
        assert!(
            !sockets[PING_PHASES - 1].has_changed().unwrap(),
            "the last phase ticks most of an interval later"
        );
        assert!(
            sockets[PING_PHASES].has_changed().unwrap(),
            "dealt after every phase had a socket: the first phase again"
        );
        sockets[1].changed().await.unwrap();
        assert!(!sockets[0].has_changed().unwrap(), "once an interval");
        shutdown.cancel();
    }
}
