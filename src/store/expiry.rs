//! The expiry index: every session's expiry time, ordered by time.
//!
//! Finding what expired costs what expired: the sweeper pops entries from the
//! front of each shard's ordered set and never looks at a live session. The
//! index is sharded by id so that heartbeats that extend an expiry on different
//! sessions do not contend on one lock. It holds exactly one entry per session,
//! `(expires, id)`, kept in step by the store under the session's map lock.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::session::Key;

const SHARDS: usize = 16;

/// One shard: `(expires, id)` in time order.
type Shard = Mutex<BTreeSet<(u64, Key)>>;

pub struct ExpiryIndex {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// When the sweeper plans to wake next; an earlier entry wakes it now.
    next_wake: AtomicU64,
    wake: Notify,
}

impl Default for ExpiryIndex {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(BTreeSet::new())).collect(),
            hasher: RandomState::new(),
            next_wake: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
        }
    }
}

impl ExpiryIndex {
    fn shard(&self, id: &[u8]) -> std::sync::MutexGuard<'_, BTreeSet<(u64, Key)>> {
        let i = self.hasher.hash_one(id) as usize % self.shards.len();
        // A poisoned shard only means another thread panicked mid-update of a
        // BTreeSet, which leaves it valid; keep serving.
        self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, expires: u64, id: Key) {
        self.shard(&id).insert((expires, id));
        if expires < self.next_wake.load(Ordering::Relaxed) {
            self.next_wake.store(expires, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }

    pub fn remove(&self, expires: u64, id: &Key) {
        self.shard(id).remove(&(expires, id.clone()));
    }

    /// Moves a session's entry from `old` to `new`.
    pub fn reschedule(&self, old: u64, new: u64, id: &Key) {
        if old != new {
            self.remove(old, id);
            self.insert(new, id.clone());
        }
    }

    /// Removes and returns up to `max` entries due at `now`.
    pub fn take_due(&self, now: u64, max: usize) -> Vec<(u64, Key)> {
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            let mut set = shard.lock().unwrap_or_else(|p| p.into_inner());
            while due.len() < max {
                match set.first() {
                    Some((expires, _)) if *expires <= now => {
                        if let Some(entry) = set.pop_first() {
                            due.push(entry);
                        }
                    }
                    _ => break,
                }
            }
        }
        due
    }

    /// How many entries are due at `now` (expired sessions not yet swept).
    pub fn count_due(&self, now: u64) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let set = s.lock().unwrap_or_else(|p| p.into_inner());
                set.iter()
                    .take_while(|(expires, _)| *expires <= now)
                    .count()
            })
            .sum()
    }

    /// The earliest expiry in the index.
    pub fn earliest(&self) -> Option<u64> {
        self.shards
            .iter()
            .filter_map(|s| {
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .first()
                    .map(|(e, _)| *e)
            })
            .min()
    }

    /// Total entries (one per session).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the index holds exactly this entry (for invariant checks).
    pub fn contains(&self, expires: u64, id: &Key) -> bool {
        self.shard(id).contains(&(expires, id.clone()))
    }

    /// Waits until `deadline` (ms epoch) or until an earlier entry arrives.
    pub async fn wait_until(&self, deadline: Option<u64>, now: u64) {
        let target = deadline.unwrap_or(u64::MAX);
        self.next_wake.store(target, Ordering::Relaxed);
        let notified = self.wake.notified();
        // Re-check after publishing the target: an insert may have raced it.
        if self.earliest().is_some_and(|e| e < target) {
            return;
        }
        match deadline {
            Some(deadline) => {
                let wait = std::time::Duration::from_millis(deadline.saturating_sub(now));
                let _ = tokio::time::timeout(wait, notified).await;
            }
            None => notified.await,
        }
    }
}
