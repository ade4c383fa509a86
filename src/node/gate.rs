//! The gate that makes a standalone EXEC atomic: every session command and
//! PUBLISH passes it shared, an EXEC holds it alone while its queued
//! commands run, so no other client's command on the sessions runs between
//! them (as Redis, single-threaded, runs a transaction). CLIENT PAUSE holds
//! it too.
//!
//! Hand-written rather than `tokio::sync::RwLock`: the shared side is on
//! every command's path, and tokio's semaphore takes a mutex on every
//! release. Here the shared side is one compare-and-swap to enter and one
//! atomic subtraction to leave while no EXEC runs; waiting only happens
//! around an EXEC.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Mutex, MutexGuard, Notify};

/// Set in `state` while an EXEC holds or waits for the gate; the other
/// bits count the commands inside.
const EXCLUSIVE: usize = 1 << (usize::BITS - 1);

#[derive(Default)]
pub struct Gate {
    state: AtomicUsize,
    /// Woken when an EXEC leaves (for commands waiting to enter) and when
    /// the last command leaves while an EXEC waits.
    changed: Notify,
    /// One EXEC at a time.
    exclusive: Mutex<()>,
}

/// A command inside the gate; leaves on drop.
pub struct Shared<'a>(&'a Gate);

/// An EXEC holding the gate alone; opens it on drop.
pub struct Exclusive<'a> {
    gate: &'a Gate,
    _turn: MutexGuard<'a, ()>,
}

impl Gate {
    /// Enters beside other commands; waits while an EXEC holds the gate.
    pub async fn shared(&self) -> Shared<'_> {
        loop {
            let state = self.state.load(Ordering::Acquire);
            if state & EXCLUSIVE == 0 {
                if self
                    .state
                    .compare_exchange_weak(state, state + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Shared(self);
                }
                continue;
            }
            let opened = self.changed.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if self.state.load(Ordering::Acquire) & EXCLUSIVE != 0 {
                opened.await;
            }
        }
    }

    /// Closes the gate to new commands and waits for those inside to leave.
    pub async fn exclusive(&self) -> Exclusive<'_> {
        let turn = self.exclusive.lock().await;
        self.state.fetch_or(EXCLUSIVE, Ordering::AcqRel);
        let held = Exclusive {
            gate: self,
            _turn: turn,
        };
        loop {
            let left = self.changed.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if self.state.load(Ordering::Acquire) == EXCLUSIVE {
                return held;
            }
            left.await;
        }
    }
}

impl Drop for Shared<'_> {
    fn drop(&mut self) {
        let before = self.0.state.fetch_sub(1, Ordering::AcqRel);
        if before == EXCLUSIVE | 1 {
            self.0.changed.notify_waiters();
        }
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.gate.state.fetch_and(!EXCLUSIVE, Ordering::AcqRel);
        self.gate.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exclusive_waits_for_shared_and_shared_waits_for_exclusive() {
        let gate = Arc::new(Gate::default());
        let inside = gate.shared().await;
        let held = Arc::new(AtomicBool::new(false));
        let (g, h) = (gate.clone(), held.clone());
        let exec = tokio::spawn(async move {
            let _alone = g.exclusive().await;
            h.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            h.store(false, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !held.load(Ordering::SeqCst),
            "EXEC entered beside a command"
        );
        drop(inside);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !held.load(Ordering::SeqCst) {
            assert!(tokio::time::Instant::now() < deadline, "EXEC never entered");
            tokio::task::yield_now().await;
        }
        // A command arriving now waits until the EXEC is over.
        let _after = gate.shared().await;
        assert!(!held.load(Ordering::SeqCst), "a command ran inside an EXEC");
        exec.await.unwrap();
    }

    #[tokio::test]
    async fn shared_entries_do_not_wait_for_each_other() {
        let gate = Gate::default();
        let a = gate.shared().await;
        let b = gate.shared().await;
        drop((a, b));
        let _alone = gate.exclusive().await;
    }
}
