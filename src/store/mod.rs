//! The session store: a sharded concurrent map of sessions with exact user,
//! connection and expiry indexes.
//!
//! Locking, in the order locks may be taken:
//! 1. `indexes` (one mutex) — only by operations that change which sessions
//!    exist or which user/connection they belong to;
//! 2. one shard of `sessions` (the dashmap's own lock) — never two at once;
//! 3. one shard of `expiry`.
//!
//! Reads (GET, ATTR.GET, TTL, EXISTS) and heartbeats take only a shard read
//! lock; attribute writes take only a shard write lock. Because every change of
//! existence or membership holds the index mutex, the indexes always agree with
//! the sessions ([`SessionStore::check_invariants`] states exactly how), and
//! MAXPERUSER and connection moves are atomic. A session whose expiry has
//! passed is treated as absent by every operation (lazy expiry) and removed by
//! the sweeper, which is woken by the expiry index at the earliest deadline.
//!
//! Layer 4 of 15 (the order is in `tests/layers.rs`). Uses `config` and
//! `protocol`.

mod attributes;
mod expiry;
mod indexes;
mod session;
pub mod transfer;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use dashmap::DashMap;

pub use attributes::Attributes;
pub use expiry::ExpiryIndex;
pub use indexes::Indexes;
pub use session::{FIELD_COUNT, JSON_CACHE_BYTES, JsonCache, Key, Session, Status, lossy_text};

/// Limits on what a session may hold (commands.md, configurable).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Longest id, user, conn or attribute name.
    pub max_name_len: usize,
    pub max_value_len: usize,
    pub max_attrs: usize,
    /// Longest TTL accepted, in ms.
    pub max_ttl_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_name_len: 512,
            max_value_len: 1024 * 1024,
            max_attrs: 1024,
            max_ttl_ms: crate::config::MAX_TTL_SECONDS * 1000,
        }
    }
}

/// Why a store operation was refused; each maps to one wire error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NoSession,
    Exists,
    Conflict(u64),
    NotInteger,
    Overflow,
    TooManyAttrs(usize),
    /// Write-through mode: the upstream cannot be reached (nothing was done).
    Unavailable,
    /// Write-through mode: the upstream did not answer in time; the change
    /// may or may not have been applied.
    OutcomeUnknown,
    /// Write-through mode: the upstream's own error, passed on verbatim.
    Upstream(String),
    /// The session is being handed to another sidecar right now.
    Moving,
    /// The session was handed to another sidecar (standalone mode).
    Moved(Arc<MovedTo>),
    /// This sidecar is draining: sessions are created and bound elsewhere.
    Draining,
}

/// Where a session handed to another sidecar went, and until when this
/// sidecar says so (SESSIONMOVED).
#[derive(Debug, PartialEq, Eq)]
pub struct MovedTo {
    pub node: String,
    pub addr: String,
    pub until: u64,
}

impl StoreError {
    pub fn message(&self) -> String {
        match self {
            StoreError::NoSession => "NOSESSION no such session".into(),
            StoreError::Exists => "EXISTS session already exists".into(),
            StoreError::Conflict(v) => format!("CONFLICT version is {v}"),
            StoreError::NotInteger => {
                "ERR attribute value is not an integer or out of range".into()
            }
            StoreError::Overflow => "ERR increment or decrement would overflow".into(),
            StoreError::TooManyAttrs(max) => format!("ERR too many attributes (max {max})"),
            StoreError::Unavailable => "TRYAGAIN upstream unavailable".into(),
            StoreError::OutcomeUnknown => {
                "TIMEOUT upstream did not answer in time: the change may have been applied".into()
            }
            StoreError::Upstream(message) => message.clone(),
            StoreError::Moving => {
                "TRYAGAIN session is being migrated to another sidecar, retry".into()
            }
            StoreError::Moved(to) => format!("SESSIONMOVED {} {}", to.node, to.addr),
            StoreError::Draining => {
                "DRAINING this sidecar is draining: create or bind sessions on another one".into()
            }
        }
    }
}

/// What a lifecycle event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Deleted,
    Expired,
    Bound,
    Unbound,
    Migrated,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Deleted => "deleted",
            EventKind::Expired => "expired",
            EventKind::Bound => "bound",
            EventKind::Unbound => "unbound",
            EventKind::Migrated => "migrated",
        }
    }
}

/// A lifecycle event, published after the change it describes.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventKind,
    pub id: Key,
    pub user: Option<Key>,
    pub conn: Option<Key>,
    pub node: Key,
    pub at: u64,
    pub reason: Option<&'static str>,
}

impl Event {
    fn of(
        kind: EventKind,
        id: &Key,
        session: &Session,
        at: u64,
        reason: Option<&'static str>,
    ) -> Event {
        Event {
            kind,
            id: id.clone(),
            user: session.user.clone(),
            conn: session.conn.clone(),
            node: session.node.clone(),
            at,
            reason,
        }
    }
}

/// Where the store sends its events.
pub trait EventSink: Send + Sync {
    fn publish(&self, events: Vec<Event>);
}

/// Counters an operator graphs.
#[derive(Default, Debug)]
pub struct StoreStats {
    pub created: AtomicU64,
    pub deleted: AtomicU64,
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
    /// Handed to other sidecars, and taken from them.
    pub migrated_out: AtomicU64,
    pub migrated_in: AtomicU64,
}

/// The options of SESSION.CREATE.
#[derive(Debug, Default, Clone)]
pub struct CreateSession {
    pub id: Option<Bytes>,
    pub user: Option<Bytes>,
    pub conn: Option<Bytes>,
    pub ttl_ms: Option<u64>,
    pub max_per_user: Option<usize>,
    pub attrs: Vec<(Bytes, Bytes)>,
}

/// The options of SESSION.UPDATE.
#[derive(Debug, Default, Clone)]
pub struct UpdateSession {
    pub if_version: Option<u64>,
    pub user: Option<Bytes>,
    pub conn: Option<Bytes>,
    pub status: Option<Status>,
    pub ttl_ms: Option<u64>,
    pub set_attrs: Vec<(Bytes, Bytes)>,
    pub del_attrs: Vec<Bytes>,
}

/// Session ids come from clients, so the map's hash is seeded per process
/// (foldhash: the fast keyed hash hashbrown itself defaults to).
type SessionMap = DashMap<Key, Session, foldhash::fast::RandomState>;

/// Map shards: enough that two cores rarely meet on one shard's lock.
const MAP_SHARDS: usize = 64;

pub struct SessionStore {
    sessions: SessionMap,
    indexes: Mutex<Indexes>,
    expiry: ExpiryIndex,
    node: Key,
    default_ttl_ms: u64,
    limits: SessionLimits,
    next_seq: AtomicU64,
    memory: AtomicUsize,
    events: Arc<dyn EventSink>,
    /// Sessions handed to other sidecars, answered with SESSIONMOVED until
    /// their grace period ends; `any_moved` spares the hot path the lookup.
    moved: DashMap<Key, Arc<MovedTo>, foldhash::fast::RandomState>,
    any_moved: AtomicBool,
    pub stats: StoreStats,
}

/// A session removed from the store, with why.
enum Removal {
    Deleted(Option<&'static str>),
    Expired,
    /// Handed to the sidecar `node`.
    Migrated(Key),
    /// Replaced by a newer copy handed over by another sidecar: no event.
    Replaced,
}

impl SessionStore {
    pub fn new(
        node: &[u8],
        default_ttl_ms: u64,
        limits: SessionLimits,
        events: Arc<dyn EventSink>,
    ) -> Self {
        Self {
            sessions: DashMap::with_hasher_and_shard_amount(
                foldhash::fast::RandomState::default(),
                MAP_SHARDS,
            ),
            indexes: Mutex::default(),
            expiry: ExpiryIndex::default(),
            node: Key::from(node),
            default_ttl_ms,
            limits,
            next_seq: AtomicU64::new(1),
            memory: AtomicUsize::new(0),
            events,
            moved: DashMap::default(),
            any_moved: AtomicBool::new(false),
            stats: StoreStats::default(),
        }
    }

    pub fn node(&self) -> &Key {
        &self.node
    }

    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    pub fn default_ttl_ms(&self) -> u64 {
        self.default_ttl_ms
    }

    /// Approximate bytes held by sessions, their kept JSON forms included.
    pub fn memory(&self) -> usize {
        self.memory.load(Ordering::Relaxed) + session::JSON_CACHE_BYTES.load(Ordering::Relaxed)
    }

    fn lock_indexes(&self) -> MutexGuard<'_, Indexes> {
        // The indexes are only mutated by code that cannot panic half-way
        // through on valid state; a poisoned lock still holds usable data.
        self.indexes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn account(&self, before: usize, after: usize) {
        if after >= before {
            self.memory.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.memory.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    // ----- reads -------------------------------------------------------

    /// Runs `f` on a live session under its shard's read lock.
    pub fn read<R>(&self, id: &[u8], now: u64, f: impl FnOnce(&Session) -> R) -> Option<R> {
        let session = self.sessions.get(id)?;
        session.is_live(now).then(|| f(&session))
    }

    /// [`SessionStore::read`] under the shard's write lock, for a reader
    /// that keeps something derived in the session (its JSON form).
    pub fn read_mut<R>(&self, id: &[u8], now: u64, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let mut session = self.sessions.get_mut(id)?;
        session.is_live(now).then(|| f(&mut session))
    }

    pub fn exists(&self, id: &[u8], now: u64) -> bool {
        self.read(id, now, |_| ()).is_some()
    }

    /// Milliseconds until expiry.
    pub fn ttl(&self, id: &[u8], now: u64) -> Option<u64> {
        self.read(id, now, |s| s.expires - now)
    }

    /// The live session bound to `conn`.
    pub fn by_conn(&self, conn: &[u8], now: u64) -> Option<Key> {
        let indexes = self.lock_indexes();
        let id = indexes.by_conn.get(conn)?;
        self.exists(id, now).then(|| id.clone())
    }

    /// The ids of the user's live sessions, oldest first.
    pub fn by_user(&self, user: &[u8], now: u64) -> Vec<Key> {
        let ids = self.lock_indexes().user_sessions(user);
        ids.into_iter().filter(|id| self.exists(id, now)).collect()
    }

    /// Live sessions held.
    pub fn count(&self, now: u64) -> usize {
        self.sessions
            .len()
            .saturating_sub(self.expiry.count_due(now))
    }

    // ----- single-session writes (no index lock) -----------------------

    /// Runs `f` on a live session under its shard's write lock, keeping the
    /// memory account and the expiry index in step with what `f` changed.
    fn write<R>(
        &self,
        id: &[u8],
        now: u64,
        f: impl FnOnce(&Key, &mut Session) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut entry = self.sessions.get_mut(id).ok_or(StoreError::NoSession)?;
        if !entry.is_live(now) {
            return Err(StoreError::NoSession);
        }
        if entry.moving {
            return Err(StoreError::Moving);
        }
        let (key, session) = entry.pair_mut();
        let before = session.memory(key);
        let old_expires = session.expires;
        let result = f(key, session)?;
        self.expiry.reschedule(old_expires, session.expires, key);
        self.account(before, session.memory(key));
        Ok(result)
    }

    pub fn attr_set(
        &self,
        id: &[u8],
        pairs: &[(Bytes, Bytes)],
        now: u64,
    ) -> Result<u64, StoreError> {
        let max = self.limits.max_attrs;
        self.write(id, now, |_, s| {
            let new_names = pairs
                .iter()
                .enumerate()
                .filter(|(i, (n, _))| {
                    s.attr(n).is_none() && !pairs[..*i].iter().any(|(m, _)| m == n)
                })
                .count();
            if s.attrs.len() + new_names > max {
                return Err(StoreError::TooManyAttrs(max));
            }
            s.attrs.edit(
                pairs.iter().map(|(n, v)| (&n[..], &v[..])),
                std::iter::empty(),
            );
            s.mutated(now);
            Ok(s.version)
        })
    }

    /// How many of the attributes were removed (0 when the session is
    /// missing); an error only when the session is moving.
    pub fn attr_del(&self, id: &[u8], names: &[Bytes], now: u64) -> Result<usize, StoreError> {
        let removed = self.write(id, now, |_, s| {
            let removed = s.attrs.remove(names.iter().map(|n| &n[..]));
            if removed > 0 {
                s.mutated(now);
            }
            Ok(removed)
        });
        missing_as(removed, 0)
    }

    pub fn attr_incrby(
        &self,
        id: &[u8],
        name: &[u8],
        increment: i64,
        now: u64,
    ) -> Result<i64, StoreError> {
        let max = self.limits.max_attrs;
        self.write(id, now, |_, s| {
            let current = match s.attr(name) {
                Some(value) => crate::protocol::parse_i64(value).ok_or(StoreError::NotInteger)?,
                None if s.attrs.len() >= max => return Err(StoreError::TooManyAttrs(max)),
                None => 0,
            };
            let new = current.checked_add(increment).ok_or(StoreError::Overflow)?;
            s.attrs
                .set(name, itoa::Buffer::new().format(new).as_bytes());
            s.mutated(now);
            Ok(new)
        })
    }

    /// The heartbeat: `last_active` = now; the expiry slides to now + ttl only
    /// when less than half the ttl remains. Returns the ms left after it.
    /// None when the session is missing; an error when it must extend a
    /// moving session.
    pub fn touch(&self, id: &[u8], now: u64) -> Result<Option<u64>, StoreError> {
        // Most heartbeats do not extend: answer them under the read lock.
        {
            let Some(session) = self.sessions.get(id) else {
                return Ok(None);
            };
            if !session.is_live(now) {
                return Ok(None);
            }
            let left = session.expires - now;
            if left >= session.ttl / 2 {
                session.last_active.store(now, Ordering::Relaxed);
                return Ok(Some(left));
            }
        }
        let extended = self.write(id, now, |_, s| {
            let left = s.expires - now;
            if left >= s.ttl / 2 {
                // Another heartbeat extended it between the two locks.
                *s.last_active.get_mut() = now;
                return Ok(Some(left));
            }
            s.expires = now.saturating_add(s.ttl);
            s.mutated(now);
            Ok(Some(s.ttl))
        });
        missing_as(extended, None)
    }

    /// SESSION.EXPIRE: a new ttl, and expires = now + ttl.
    /// Whether the session was there; an error when it is moving.
    pub fn expire(&self, id: &[u8], ttl_ms: u64, now: u64) -> Result<bool, StoreError> {
        let set = self.write(id, now, |_, s| {
            s.ttl = ttl_ms;
            s.expires = now.saturating_add(ttl_ms);
            s.mutated(now);
            Ok(true)
        });
        missing_as(set, false)
    }

    // ----- membership writes (index lock) ------------------------------

    /// Removes a session under the index lock, cleaning every index, and
    /// returns the event to publish. A session past its expiry is reported
    /// as expired whatever removed it, so each expiry is published once.
    fn remove_locked(
        &self,
        indexes: &mut Indexes,
        id: &[u8],
        now: u64,
        removal: Removal,
        condition: impl FnOnce(&Session) -> bool,
    ) -> Option<Event> {
        let (id, session) = self
            .sessions
            .remove_if(id, |_, session| condition(session))?;
        if let Some(user) = &session.user {
            indexes.remove_user(user, (session.created, session.seq));
        }
        if let Some(conn) = &session.conn {
            indexes.remove_conn(conn, &id);
        }
        self.expiry.remove(session.expires, &id);
        self.account(session.memory(&id), 0);
        if matches!(removal, Removal::Replaced) {
            return None;
        }
        let mut to = None;
        let (kind, reason) = match removal {
            _ if !session.is_live(now) => (EventKind::Expired, None),
            Removal::Expired => (EventKind::Expired, None),
            Removal::Deleted(reason) => (EventKind::Deleted, reason),
            Removal::Migrated(node) => {
                to = Some(node);
                (EventKind::Migrated, None)
            }
            Removal::Replaced => return None,
        };
        match kind {
            EventKind::Expired => self.stats.expired.fetch_add(1, Ordering::Relaxed),
            EventKind::Migrated => self.stats.migrated_out.fetch_add(1, Ordering::Relaxed),
            _ if reason == Some("evicted") => self.stats.evicted.fetch_add(1, Ordering::Relaxed),
            _ => self.stats.deleted.fetch_add(1, Ordering::Relaxed),
        };
        let mut event = Event::of(kind, &id, &session, now, reason);
        if let Some(node) = to {
            event.node = node;
        }
        Some(event)
    }

    /// Adds a new session under the index lock, with its user and expiry
    /// entries and its memory (the counterpart of [`Self::remove_locked`];
    /// its connection entry is the caller's, see [`Self::take_conn_locked`]).
    fn insert_locked(&self, indexes: &mut Indexes, id: Key, session: Session) {
        if let Some(user) = &session.user {
            indexes.add_user(user, (session.created, session.seq), &id);
        }
        self.expiry.insert(session.expires, id.clone());
        self.account(0, session.memory(&id));
        self.sessions.insert(id, session);
    }

    /// Points `conn` at session `id` in the index, taking it away from
    /// whichever other session held it: that session keeps its data, with
    /// conn nil and status disconnected.
    fn take_conn_locked(
        &self,
        indexes: &mut Indexes,
        conn: &Key,
        id: &Key,
        now: u64,
        events: &mut Vec<Event>,
    ) {
        let Some(holder) = indexes.by_conn.insert(conn.clone(), id.clone()) else {
            return;
        };
        if holder == *id {
            return;
        }
        if let Some(mut session) = self.sessions.get_mut(&holder)
            && session.conn.as_deref() == Some(conn)
        {
            let before = session.memory(&holder);
            let live = session.is_live(now);
            let event = live
                .then(|| Event::of(EventKind::Unbound, &holder, &session, now, Some("rebound")));
            session.conn = None;
            session.status = Status::Disconnected;
            session.json.clear();
            if live {
                session.mutated(now);
            }
            self.account(before, session.memory(&holder));
            events.extend(event);
        }
    }

    pub fn create(&self, request: CreateSession, now: u64) -> Result<Key, StoreError> {
        let id: Key = match &request.id {
            Some(id) => Key::from(&id[..]),
            None => Key::from(uuid::Uuid::new_v4().to_string().as_bytes()),
        };
        let ttl = request.ttl_ms.unwrap_or(self.default_ttl_ms);
        let mut events = Vec::new();
        let mut indexes = self.lock_indexes();
        if let Some(existing) = self.sessions.get(&id) {
            let (live, moving) = (existing.is_live(now), existing.moving);
            drop(existing);
            if live {
                return Err(StoreError::Exists);
            }
            if moving {
                return Err(StoreError::Moving);
            }
        }
        if let Some(to) = self.moved_to(&id, now) {
            return Err(StoreError::Moved(to));
        }
        let user = request.user.as_deref().map(Key::from);
        let mut victims: &[Key] = &[];
        let live: Vec<Key>;
        if let (Some(user), Some(max)) = (&user, request.max_per_user) {
            live = indexes
                .user_sessions(user)
                .into_iter()
                .filter(|id| self.exists(id, now))
                .collect();
            let excess = (live.len() + 1).saturating_sub(max);
            victims = &live[..excess.min(live.len())];
        }
        let conn = request.conn.as_deref().map(Key::from);
        // Refused before anything changes: a session on its way elsewhere
        // can be neither evicted nor robbed of its connection.
        if victims.iter().any(|v| self.is_moving(v))
            || conn
                .as_ref()
                .is_some_and(|c| self.conn_holder_moving(&indexes, c, &id))
        {
            return Err(StoreError::Moving);
        }
        // A dead session under the same id is swept now, not later.
        events.extend(self.remove_locked(&mut indexes, &id, now, Removal::Expired, |_| true));
        {
            for victim in victims {
                events.extend(self.remove_locked(
                    &mut indexes,
                    victim,
                    now,
                    Removal::Deleted(Some("evicted")),
                    |_| true,
                ));
            }
        }
        if let Some(conn) = &conn {
            self.take_conn_locked(&mut indexes, conn, &id, now, &mut events);
        }
        let session = Session {
            user,
            conn,
            node: self.node.clone(),
            status: Status::Active,
            created: now,
            last_active: AtomicU64::new(now),
            expires: now.saturating_add(ttl),
            ttl,
            version: 1,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            moving: false,
            attrs: Attributes::from_pairs(request.attrs.iter().map(|(n, v)| (&n[..], &v[..]))),
            json: Default::default(),
        };
        events.push(Event::of(EventKind::Created, &id, &session, now, None));
        self.insert_locked(&mut indexes, id.clone(), session);
        drop(indexes);
        self.stats.created.fetch_add(1, Ordering::Relaxed);
        self.events.publish(events);
        Ok(id)
    }

    /// Deletes the given sessions; returns how many were live.
    pub fn delete<K: AsRef<[u8]>>(
        &self,
        ids: &[K],
        now: u64,
        reason: Option<&'static str>,
    ) -> Result<usize, StoreError> {
        let indexes = self.lock_indexes();
        if ids.iter().any(|id| self.is_moving(id.as_ref())) {
            return Err(StoreError::Moving);
        }
        // Under the lock finish_move takes: a session is either still here
        // or already forwarded.
        if let Some(to) = ids.iter().find_map(|id| {
            // The forwarding check first: without moves it costs nothing.
            let id = id.as_ref();
            self.moved_to(id, now)
                .filter(|_| !self.sessions.contains_key(id))
        }) {
            return Err(StoreError::Moved(to));
        }
        Ok(self.delete_locked(indexes, ids.iter().map(|id| id.as_ref()), now, reason))
    }

    /// Deletes every session of the user; returns how many were live.
    pub fn kill_user(&self, user: &[u8], now: u64) -> Result<usize, StoreError> {
        let mut indexes = self.lock_indexes();
        if indexes
            .user_sessions(user)
            .iter()
            .any(|id| self.is_moving(id))
        {
            return Err(StoreError::Moving);
        }
        // The whole list at once, under the same lock as the removals.
        let ids = indexes.take_user(user);
        Ok(self.delete_locked(indexes, ids.iter().map(|id| &id[..]), now, Some("killuser")))
    }

    /// Removes sessions under the index lock it is given, then releases it
    /// and publishes the events; returns how many were live.
    fn delete_locked<'a>(
        &self,
        mut indexes: MutexGuard<'_, Indexes>,
        ids: impl Iterator<Item = &'a [u8]>,
        now: u64,
        reason: Option<&'static str>,
    ) -> usize {
        let mut events = Vec::new();
        for id in ids {
            events.extend(self.remove_locked(
                &mut indexes,
                id,
                now,
                Removal::Deleted(reason),
                |_| true,
            ));
        }
        drop(indexes);
        let deleted = events
            .iter()
            .filter(|e| e.kind == EventKind::Deleted)
            .count();
        self.events.publish(events);
        deleted
    }

    pub fn bind(&self, id: &[u8], conn: &[u8], now: u64) -> Result<u64, StoreError> {
        let mut events = Vec::new();
        let mut indexes = self.lock_indexes();
        let conn = Key::from(conn);
        if self.conn_holder_moving(&indexes, &conn, id) {
            return Err(StoreError::Moving);
        }
        let (key, version) = self.write(id, now, |key, s| {
            if let Some(previous) = s.conn.take() {
                indexes.remove_conn(&previous, id);
            }
            s.conn = Some(conn.clone());
            s.status = Status::Active;
            s.node = self.node.clone();
            s.expires = now.saturating_add(s.ttl);
            s.mutated(now);
            events.push(Event::of(EventKind::Bound, key, s, now, None));
            Ok((key.clone(), s.version))
        })?;
        self.take_conn_locked(&mut indexes, &conn, &key, now, &mut events);
        drop(indexes);
        self.events.publish(events);
        Ok(version)
    }

    pub fn unbind(&self, id: &[u8], grace_ms: Option<u64>, now: u64) -> Result<u64, StoreError> {
        let mut events = Vec::new();
        let mut indexes = self.lock_indexes();
        let version = self.write(id, now, |key, s| {
            events.push(Event::of(EventKind::Unbound, key, s, now, None));
            if let Some(conn) = s.conn.take() {
                indexes.remove_conn(&conn, id);
            }
            s.status = Status::Disconnected;
            if let Some(grace) = grace_ms {
                s.expires = s.expires.min(now.saturating_add(grace));
            }
            s.mutated(now);
            Ok(s.version)
        })?;
        drop(indexes);
        self.events.publish(events);
        Ok(version)
    }

    /// SESSION.UPDATE: every change applied as one mutation, or none.
    pub fn update(&self, id: &[u8], request: &UpdateSession, now: u64) -> Result<u64, StoreError> {
        let max_attrs = self.limits.max_attrs;
        let apply = |s: &mut Session| -> Result<(), StoreError> {
            if let Some(expected) = request.if_version
                && s.version != expected
            {
                return Err(StoreError::Conflict(s.version));
            }
            if !request.set_attrs.is_empty() || !request.del_attrs.is_empty() {
                // Edit a copy so that a refused update changes nothing.
                let mut attrs = s.attrs.clone();
                attrs.edit(
                    request.set_attrs.iter().map(|(n, v)| (&n[..], &v[..])),
                    request.del_attrs.iter().map(|n| &n[..]),
                );
                if attrs.len() > max_attrs {
                    return Err(StoreError::TooManyAttrs(max_attrs));
                }
                s.attrs = attrs;
            }
            if let Some(status) = request.status {
                s.status = status;
            }
            if let Some(ttl) = request.ttl_ms {
                s.ttl = ttl;
                s.expires = now.saturating_add(ttl);
            }
            s.mutated(now);
            Ok(())
        };
        if request.user.is_none() && request.conn.is_none() {
            return self.write(id, now, |_, s| apply(s).map(|_| s.version));
        }
        // A change of owner or connection moves index entries: take the lock.
        // The session is changed first (its IFVERSION check included); only
        // when that succeeded is the connection taken from its other holder.
        let mut events = Vec::new();
        let mut indexes = self.lock_indexes();
        if let Some(conn) = &request.conn
            && self.conn_holder_moving(&indexes, conn, id)
        {
            return Err(StoreError::Moving);
        }
        let (key, version) = self.write(id, now, |key, s| {
            apply(s)?;
            if let Some(user) = &request.user {
                if let Some(old) = s.user.take() {
                    indexes.remove_user(&old, (s.created, s.seq));
                }
                let user = Key::from(&user[..]);
                indexes.add_user(&user, (s.created, s.seq), key);
                s.user = Some(user);
            }
            if let Some(conn) = &request.conn {
                if let Some(previous) = s.conn.take() {
                    indexes.remove_conn(&previous, id);
                }
                s.conn = Some(Key::from(&conn[..]));
                s.node = self.node.clone();
                if request.status.is_none() {
                    s.status = Status::Active;
                }
                events.push(Event::of(EventKind::Bound, key, s, now, None));
            }
            Ok((key.clone(), s.version))
        })?;
        if let Some(conn) = &request.conn {
            self.take_conn_locked(&mut indexes, &Key::from(&conn[..]), &key, now, &mut events);
        }
        drop(indexes);
        self.events.publish(events);
        Ok(version)
    }

    // ----- migration -----------------------------------------------------

    fn is_moving(&self, id: &[u8]) -> bool {
        self.sessions.get(id).is_some_and(|s| s.moving)
    }

    /// Whether `conn` is bound to a session other than `id` that is moving.
    fn conn_holder_moving(&self, indexes: &Indexes, conn: &[u8], id: &[u8]) -> bool {
        indexes
            .by_conn
            .get(conn)
            .is_some_and(|holder| &**holder != id && self.is_moving(holder))
    }

    /// Where `id` went, if it was handed to another sidecar within the grace
    /// period.
    pub fn moved_to(&self, id: &[u8], now: u64) -> Option<Arc<MovedTo>> {
        if !self.any_moved.load(Ordering::Relaxed) {
            return None;
        }
        let to = self.moved.get(id)?.clone();
        if to.until > now {
            return Some(to);
        }
        self.moved.remove_if(id, |_, t| t.until <= now);
        None
    }

    /// Forgets moves whose grace period ended.
    pub fn purge_moved(&self, now: u64) {
        if self.any_moved.load(Ordering::Relaxed) {
            self.moved.retain(|_, to| to.until > now);
        }
    }

    /// The ids of every live session that is not already moving.
    pub fn all_ids(&self, now: u64) -> Vec<Key> {
        self.sessions
            .iter()
            .filter(|e| e.is_live(now) && !e.moving)
            .map(|e| e.key().clone())
            .collect()
    }

    /// Marks the live sessions among `ids` as moving and returns them in
    /// their portable form: from here until [`Self::finish_move`], writes
    /// to them get TRYAGAIN, so the copy sent is their latest state.
    pub fn begin_move(&self, ids: &[Key], now: u64) -> Vec<(Key, Vec<u8>)> {
        let _indexes = self.lock_indexes();
        let mut batch = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(mut session) = self.sessions.get_mut(id) else {
                continue;
            };
            if !session.is_live(now) || session.moving {
                continue;
            }
            session.moving = true;
            let mut payload = Vec::new();
            transfer::encode(&session, &mut payload);
            batch.push((session.key().clone(), payload));
        }
        batch
    }

    /// Ends the move of `ids`: those the target acknowledged (`taken`) leave
    /// this store (a `migrated` event each, and SESSIONMOVED answers until
    /// `to.until`); the others stay here, writable again. Returns how many
    /// left.
    pub fn finish_move(&self, ids: &[Key], taken: &[bool], to: &Arc<MovedTo>, now: u64) -> usize {
        let node = Key::from(to.node.as_bytes());
        let mut events = Vec::new();
        let mut indexes = self.lock_indexes();
        let mut moved = 0;
        for (id, &taken) in ids.iter().zip(taken) {
            if taken {
                // The forwarding address first: a command that misses the
                // session must find it.
                self.moved.insert(id.clone(), to.clone());
                self.any_moved.store(true, Ordering::Relaxed);
                let removal = Removal::Migrated(node.clone());
                if let Some(event) =
                    self.remove_locked(&mut indexes, id, now, removal, |s| s.moving)
                {
                    moved += usize::from(event.kind == EventKind::Migrated);
                    events.push(event);
                }
            } else if let Some(mut session) = self.sessions.get_mut(id) {
                session.moving = false;
                // The sweeper skips moving sessions, dropping their entry.
                let (key, session) = session.pair();
                if !self.expiry.contains(session.expires, key) {
                    self.expiry.insert(session.expires, key.clone());
                }
            }
        }
        drop(indexes);
        self.events.publish(events);
        moved
    }

    /// Installs sessions handed over by another sidecar, owned by this one
    /// (`node` = this node, version + 1: the owner change is a mutation).
    /// One result each: taken (installed, already here at that state, or
    /// expired on the way) or refused (the id is moving from here).
    pub fn import(&self, sessions: Vec<(Key, transfer::Transfer)>, now: u64) -> Vec<bool> {
        let mut taken = Vec::with_capacity(sessions.len());
        let mut events = Vec::new();
        let mut indexes = self.lock_indexes();
        for (id, t) in sessions {
            let version = t.version.saturating_add(1);
            if let Some(existing) = self.sessions.get(&id) {
                let (moving, live, created, current) = (
                    existing.moving,
                    existing.is_live(now),
                    existing.created,
                    existing.version,
                );
                drop(existing);
                if moving {
                    taken.push(false);
                    continue;
                }
                if live && created == t.created && current >= version {
                    // Already taken (an acknowledgement lost on the way).
                    taken.push(true);
                    continue;
                }
                if live && created != t.created {
                    // Another session under the same id lives here: the
                    // incoming one stays where it is.
                    taken.push(false);
                    continue;
                }
            }
            // A conn held here by a moving session, or an expiry past what
            // a ttl could give: refused.
            if t.conn
                .as_ref()
                .is_some_and(|c| self.conn_holder_moving(&indexes, c, &id))
                || t.expires > now.saturating_add(self.limits.max_ttl_ms)
            {
                taken.push(false);
                continue;
            }
            taken.push(true);
            if self.any_moved.load(Ordering::Relaxed) {
                self.moved.remove(&id);
            }
            // An older copy under the id is replaced without an event.
            let _ = self.remove_locked(&mut indexes, &id, now, Removal::Replaced, |_| true);
            if t.expires <= now {
                continue;
            }
            let session = Session {
                user: t.user,
                conn: t.conn,
                node: self.node.clone(),
                status: t.status,
                created: t.created,
                // The owner change is a mutation, as in write-through mode.
                last_active: AtomicU64::new(now.max(t.last_active)),
                expires: t.expires,
                ttl: t.ttl,
                version,
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                moving: false,
                attrs: t.attrs,
                json: Default::default(),
            };
            if let Some(conn) = &session.conn {
                self.take_conn_locked(&mut indexes, conn, &id, now, &mut events);
            }
            self.insert_locked(&mut indexes, id, session);
            self.stats.migrated_in.fetch_add(1, Ordering::Relaxed);
        }
        drop(indexes);
        self.events.publish(events);
        taken
    }

    // ----- expiry --------------------------------------------------------

    /// Removes up to `max` sessions whose expiry is due and publishes one
    /// `expired` event each. Returns how many expired.
    pub fn sweep(&self, now: u64, max: usize) -> usize {
        let due = self.expiry.take_due(now, max);
        if due.is_empty() {
            return 0;
        }
        let mut events = Vec::with_capacity(due.len());
        let mut indexes = self.lock_indexes();
        for (expires, id) in due {
            // The entry is stale if the session was replaced or extended
            // meanwhile: checked under the same lock as the removal.
            events.extend(
                // A session on its way elsewhere expires there, or here
                // once its move is abandoned (its entry is put back then).
                self.remove_locked(&mut indexes, &id, now, Removal::Expired, |s| {
                    s.expires == expires && !s.moving
                }),
            );
        }
        drop(indexes);
        let expired = events.len();
        self.events.publish(events);
        expired
    }

    /// The sweeper: wakes at the earliest expiry (or when an earlier one is
    /// scheduled), removes what is due, and sleeps again. Runs until dropped.
    pub async fn run_sweeper(self: Arc<Self>) {
        const BATCH: usize = 1000;
        loop {
            let now = now_ms();
            if self.sweep(now, BATCH) == BATCH {
                // More is due: yield, then continue without sleeping.
                tokio::task::yield_now().await;
                continue;
            }
            self.expiry.wait_until(self.expiry.earliest(), now).await;
        }
    }

    // ----- checks ----------------------------------------------------------

    /// Verifies that every index agrees with the sessions: each session is in
    /// its user's list and in the expiry index exactly at its expiry, each bound
    /// connection points back at its session, and no index holds anything else.
    /// Returns a description of the first disagreement.
    pub fn check_invariants(&self) -> Result<(), String> {
        let indexes = self.lock_indexes();
        let mut user_entries = 0;
        let mut conn_entries = 0;
        let mut memory = 0;
        let mut scheduled = 0;
        for entry in self.sessions.iter() {
            let (id, s) = entry.pair();
            memory += s.memory(id);
            if self.expiry.contains(s.expires, id) {
                scheduled += 1;
            } else if !s.moving || s.is_live(now_ms()) {
                // Only a moving session the sweeper found dead may lack its
                // entry (put back if the move is abandoned).
                return Err(format!("{id:?} missing from the expiry index"));
            }
            if let Some(user) = &s.user {
                user_entries += 1;
                if !indexes.has_user_entry(user, (s.created, s.seq), id) {
                    return Err(format!("{id:?} missing from user index of {user:?}"));
                }
            }
            if let Some(conn) = &s.conn {
                conn_entries += 1;
                if indexes.by_conn.get(conn) != Some(id) {
                    return Err(format!("{id:?} missing from conn index of {conn:?}"));
                }
            }
        }
        let indexed_users: usize = indexes.by_user.values().map(|m| m.len()).sum();
        if indexed_users != user_entries {
            return Err(format!(
                "user index holds {indexed_users} entries for {user_entries} sessions"
            ));
        }
        if indexes.by_conn.len() != conn_entries {
            return Err(format!(
                "conn index holds {} entries for {conn_entries} sessions",
                indexes.by_conn.len()
            ));
        }
        if self.expiry.len() != scheduled {
            return Err(format!(
                "expiry index holds {} entries for {scheduled} sessions",
                self.expiry.len(),
            ));
        }
        if memory != self.memory() {
            return Err(format!(
                "memory account {} but sessions hold {memory}",
                self.memory()
            ));
        }
        Ok(())
    }
}

/// A missing session as `value`; other outcomes as they are.
fn missing_as<T>(result: Result<T, StoreError>, value: T) -> Result<T, StoreError> {
    match result {
        Err(StoreError::NoSession) => Ok(value),
        other => other,
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
