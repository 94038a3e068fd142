//! The locks and atomics of the fan-out core, from one place so that the
//! loom models (built with `--cfg fanout_loom`, see `feed/loom.rs`) permute every
//! interleaving of them: under loom they are loom's, otherwise std's.

#[cfg(fanout_loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(fanout_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
#[cfg(not(fanout_loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(fanout_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`. A panic while it was held poisons it; what it guards is
/// still consistent at every point a panic could happen (each guarded
/// update is a few field writes), so the lock is taken all the same.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
