//! The hot cache of write-through mode: copies of upstream sessions, kept
//! coherent by the upstream's invalidation pushes.
//!
//! An invalidation names a key, not a version, and on Redis 7.0 it also comes
//! for our own writes (NOLOOP is not honoured for writes made by scripts) and
//! for `last_active` flushes that change no version. So an invalidated copy
//! is not dropped at once: it becomes *suspect*, is checked against the
//! upstream's version in the next batch (one pipelined round trip), and is
//! either cleared or dropped. A suspect copy is served for at most
//! [`SUSPECT_GRACE_MS`] after the invalidation — the coherence bound — and not
//! at all after that until it checks out.
//!
//! An invalidation can also race a read: the reply to our HGETALL (old data)
//! and the push announcing another sidecar's write reach different tasks, and
//! the push may be handled first. Each install therefore carries a ticket
//! taken before the upstream call: the invalidation counter of the key's
//! bucket and the cache's epoch. A copy whose bucket was invalidated since its
//! ticket is installed as suspect; one from before a flush (connection lost
//! or regained) is not installed at all, and while the connection is down
//! nothing is trusted.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::store::{Key, Session};

const GUARDS: usize = 4096;

/// How long a suspect copy may still be served, in ms.
pub const SUSPECT_GRACE_MS: u64 = 10;

struct Entry {
    session: Session,
    /// 0: trusted. Otherwise the mark of the invalidation that made it
    /// suspect: its time in ms, shifted, with a sequence number below, so
    /// that every mark is different.
    suspect: AtomicU64,
}

const MARK_SEQUENCE_BITS: u32 = 20;

impl Entry {
    fn servable(&self, now: u64) -> bool {
        let mark = self.suspect.load(Ordering::Acquire);
        mark == 0 || now.saturating_sub(mark >> MARK_SEQUENCE_BITS) <= SUSPECT_GRACE_MS
    }
}

pub struct HotCache {
    map: DashMap<Key, Entry, foldhash::fast::RandomState>,
    guards: Box<[AtomicU64]>,
    epoch: AtomicU64,
    marks: AtomicU64,
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

/// A suspect copy to check: its id, version and mark.
pub struct Suspect {
    pub id: Key,
    /// Which incarnation of the id, and which state of it: a session deleted
    /// and created again starts over at version 1, but not at the same
    /// creation time.
    pub identity: Identity,
    mark: u64,
}

/// A session state's identity: (created, version).
pub type Identity = (u64, u64);

fn identity(session: &Session) -> Identity {
    (session.created, session.version)
}

impl HotCache {
    pub fn new(maxmemory: usize) -> Self {
        Self {
            map: DashMap::with_hasher_and_shard_amount(foldhash::fast::RandomState::default(), 64),
            guards: (0..GUARDS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            marks: AtomicU64::new(0),
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

    fn mark(&self, at: u64) -> u64 {
        let sequence = self.marks.fetch_add(1, Ordering::Relaxed) & ((1 << MARK_SEQUENCE_BITS) - 1);
        (at.max(1) << MARK_SEQUENCE_BITS) | sequence
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

    /// Runs `f` on a servable, live hot copy.
    pub fn read<R>(&self, id: &[u8], now: u64, f: impl FnOnce(&Session) -> R) -> Option<R> {
        if !self.is_trusted() {
            return None;
        }
        let entry = self.map.get(id)?;
        (entry.session.is_live(now) && entry.servable(now)).then(|| f(&entry.session))
    }

    /// [`HotCache::read`] under the shard's write lock, for a reader that
    /// keeps something derived in the copy (its JSON form).
    pub fn read_mut<R>(&self, id: &[u8], now: u64, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        if !self.is_trusted() {
            return None;
        }
        let mut entry = self.map.get_mut(id)?;
        (entry.session.is_live(now) && entry.servable(now)).then(|| f(&mut entry.session))
    }

    /// Installs a copy read or written under `ticket`; not at all across a
    /// flush or over a newer copy. When its key was invalidated since the
    /// ticket, the copy is installed unservable and returned as a suspect to
    /// check: it may be the upstream's latest (the invalidation was for the
    /// very write that produced it) or not.
    pub fn install(&self, id: Key, session: Session, ticket: Ticket) -> Option<Suspect> {
        if !self.is_trusted() {
            return None;
        }
        let size = session.memory(&id);
        let entry = self.map.entry(id);
        // Checked under the shard lock the invalidation's marking also takes.
        if self.epoch.load(Ordering::Acquire) != ticket.epoch {
            return None;
        }
        let invalidated = self.guard(entry.key()).load(Ordering::Acquire) != ticket.guard;
        // A mark from the epoch's dawn: past its grace, so never served as is.
        let mark = if invalidated { self.mark(1) } else { 0 };
        let suspect = invalidated.then(|| Suspect {
            id: entry.key().clone(),
            identity: identity(&session),
            mark,
        });
        let fresh = Entry {
            session,
            suspect: AtomicU64::new(mark),
        };
        match entry {
            dashmap::Entry::Occupied(mut occupied) => {
                if identity(&occupied.get().session) > identity(&fresh.session) {
                    return None;
                }
                let old = occupied.get().session.memory(occupied.key());
                occupied.insert(fresh);
                self.memory.fetch_sub(old, Ordering::Relaxed);
            }
            dashmap::Entry::Vacant(vacant) => {
                vacant.insert(fresh);
            }
        }
        self.memory.fetch_add(size, Ordering::Relaxed);
        self.enforce_budget();
        suspect
    }

    /// An invalidation of `id`: copies read before it can only be installed as
    /// suspect, and the copy held becomes suspect. Returns what to check.
    pub fn suspect(&self, id: &[u8], now: u64) -> Option<Suspect> {
        self.guard(id).fetch_add(1, Ordering::AcqRel);
        let entry = self.map.get(id)?;
        let mark = self.mark(now);
        entry.suspect.store(mark, Ordering::Release);
        Some(Suspect {
            id: entry.key().clone(),
            identity: identity(&entry.session),
            mark,
        })
    }

    /// The upstream's version of a suspect, checked: the copy is trusted again
    /// if it is still the upstream's and no later invalidation marked it;
    /// dropped if the upstream has moved on.
    pub fn settle(&self, suspect: &Suspect, upstream: Option<Identity>) -> bool {
        if upstream == Some(suspect.identity) {
            if let Some(entry) = self.map.get(&suspect.id) {
                return identity(&entry.session) == suspect.identity
                    && entry
                        .suspect
                        .compare_exchange(suspect.mark, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
            }
            return false;
        }
        self.remove_if(&suspect.id, |entry| {
            entry.suspect.load(Ordering::Acquire) == suspect.mark
        });
        false
    }

    /// Drops the copy of `id` (changed or removed by this sidecar).
    pub fn invalidate(&self, id: &[u8]) {
        self.guard(id).fetch_add(1, Ordering::AcqRel);
        self.remove_if(id, |_| true);
    }

    fn remove_if(&self, id: &[u8], condition: impl FnOnce(&Entry) -> bool) {
        if let Some((key, entry)) = self.map.remove_if(id, |_, entry| condition(entry)) {
            self.memory
                .fetch_sub(entry.session.memory(&key), Ordering::Relaxed);
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

    /// The ids of the live copies held that satisfy `f`.
    pub fn ids_where(&self, now: u64, f: impl Fn(&Session) -> bool) -> Vec<Key> {
        self.map
            .iter()
            .filter(|e| e.session.is_live(now) && f(&e.session))
            .map(|e| e.key().clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held by the copies, their kept JSON forms included.
    pub fn memory(&self) -> usize {
        self.memory.load(Ordering::Relaxed) + crate::store::JSON_CACHE_BYTES.load(Ordering::Relaxed)
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
