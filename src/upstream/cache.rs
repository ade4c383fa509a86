//! The hot cache of write-through mode: copies of upstream sessions, kept
//! coherent by the upstream's invalidation pushes.
//!
//! An invalidation can race a read: the reply to our HGETALL (old data) and
//! the push announcing another sidecar's write reach different tasks, and the
//! push may be handled first. Each install therefore carries a ticket taken
//! before the upstream call: the invalidation counter of the key's bucket and
//! the cache's epoch. An invalidation bumps the counter before it removes the
//! entry, so a copy read before it can never be installed after it. A flush
//! (connection lost or regained) bumps the epoch, and while the connection is
//! down nothing is trusted at all.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::store::{Key, Session};

const GUARDS: usize = 4096;

pub struct HotCache {
    map: DashMap<Key, Session, foldhash::fast::RandomState>,
    guards: Box<[AtomicU64]>,
    epoch: AtomicU64,
    trusted: AtomicBool,
    memory: AtomicUsize,
    /// Budget in bytes (0: none); past it, installs evict other copies.
    maxmemory: usize,
    pub evictions: AtomicU64,
}

/// Taken before an upstream call whose result will be installed.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    epoch: u64,
    guard: u64,
}

impl HotCache {
    pub fn new(maxmemory: usize) -> Self {
        Self {
            map: DashMap::with_hasher_and_shard_amount(foldhash::fast::RandomState::default(), 64),
            guards: (0..GUARDS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            trusted: AtomicBool::new(false),
            memory: AtomicUsize::new(0),
            maxmemory,
            evictions: AtomicU64::new(0),
        }
    }

    fn guard(&self, id: &[u8]) -> &AtomicU64 {
        let i = self.map.hasher().hash_one(id) as usize % GUARDS;
        &self.guards[i]
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    pub fn ticket(&self, id: &[u8]) -> Ticket {
        Ticket {
            epoch: self.epoch.load(Ordering::Acquire),
            guard: self.guard(id).load(Ordering::Acquire),
        }
    }

    /// Runs `f` on a trusted, live hot copy.
    pub fn read<R>(&self, id: &[u8], now: u64, f: impl FnOnce(&Session) -> R) -> Option<R> {
        if !self.is_trusted() {
            return None;
        }
        let session = self.map.get(id)?;
        session.is_live(now).then(|| f(&session))
    }

    /// Runs `f` on a trusted, live hot copy under its write lock.
    pub fn write<R>(&self, id: &[u8], now: u64, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        if !self.is_trusted() {
            return None;
        }
        let mut session = self.map.get_mut(id)?;
        session.is_live(now).then(|| f(&mut session))
    }

    /// Installs a copy read or written under `ticket`, unless an invalidation
    /// or flush came in between, or a newer copy is already there.
    pub fn install(&self, id: Key, session: Session, ticket: Ticket) {
        if !self.is_trusted() {
            return;
        }
        let size = session.memory(&id);
        let entry = self.map.entry(id);
        // Checked under the shard lock the invalidation's removal also takes.
        if self.epoch.load(Ordering::Acquire) != ticket.epoch
            || self.guard(entry.key()).load(Ordering::Acquire) != ticket.guard
        {
            return;
        }
        match entry {
            dashmap::Entry::Occupied(mut occupied) => {
                if occupied.get().version > session.version {
                    return;
                }
                let old = occupied.get().memory(occupied.key());
                occupied.insert(session);
                self.memory.fetch_sub(old, Ordering::Relaxed);
            }
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(session);
            }
        }
        self.memory.fetch_add(size, Ordering::Relaxed);
        self.enforce_budget();
    }

    /// Drops the copy of `id` (changed elsewhere, or by us in a way we do not
    /// mirror).
    pub fn invalidate(&self, id: &[u8]) {
        self.guard(id).fetch_add(1, Ordering::AcqRel);
        if let Some((key, session)) = self.map.remove(id) {
            self.memory
                .fetch_sub(session.memory(&key), Ordering::Relaxed);
        }
    }

    /// Drops everything and sets whether copies may be trusted from now on.
    pub fn flush(&self, trusted: bool) {
        self.trusted.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.clear();
        self.memory.store(0, Ordering::Relaxed);
        self.trusted.store(trusted, Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn memory(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    /// Evicts copies until under budget. The upstream holds everything, so
    /// any copy may go: the victims are the first entries an iteration meets,
    /// which, keys being hashed, is a random sample.
    fn enforce_budget(&self) {
        if self.maxmemory == 0 || self.memory() <= self.maxmemory {
            return;
        }
        let victims: Vec<Key> = self
            .map
            .iter()
            .take(16)
            .map(|entry| entry.key().clone())
            .collect();
        for victim in victims {
            if self.memory() <= self.maxmemory {
                break;
            }
            self.invalidate(&victim);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}
