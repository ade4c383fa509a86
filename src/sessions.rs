//! The sessions as commands see them, whichever mode the sidecar runs in:
//! standalone (the in-memory [`SessionStore`] is the whole store) or
//! write-through (the upstream is the source of truth and [`WriteThrough`]
//! keeps a coherent hot copy). One async interface over both.
//!
//! A write-through write's future is boxed here: it holds the state of an
//! upstream call (kilobytes), which would otherwise be part of every
//! command's future, standalone reads included, and be copied with it.
//!
//! Layer 9 of 15 (the order is in `tests/layers.rs`). Uses `store` and
//! `upstream`.

use std::sync::Arc;

use bytes::Bytes;

use crate::store::{
    CreateSession, Key, Session, SessionLimits, SessionStore, StoreError, StoreStats, UpdateSession,
};
use crate::upstream::WriteThrough;

#[derive(Clone)]
pub enum Sessions {
    Standalone(Arc<SessionStore>),
    WriteThrough(Arc<WriteThrough>),
}

type Result<T> = std::result::Result<T, StoreError>;

impl Sessions {
    pub fn node(&self) -> &Key {
        match self {
            Sessions::Standalone(store) => store.node(),
            Sessions::WriteThrough(store) => &store.config().node,
        }
    }

    pub fn limits(&self) -> &SessionLimits {
        match self {
            Sessions::Standalone(store) => store.limits(),
            Sessions::WriteThrough(store) => &store.config().limits,
        }
    }

    pub fn default_ttl_ms(&self) -> u64 {
        match self {
            Sessions::Standalone(store) => store.default_ttl_ms(),
            Sessions::WriteThrough(store) => store.config().default_ttl_ms,
        }
    }

    /// Lifecycle counters (write-through: of the changes this sidecar made).
    pub fn stats(&self) -> &StoreStats {
        match self {
            Sessions::Standalone(store) => &store.stats,
            Sessions::WriteThrough(store) => &store.counts,
        }
    }

    /// Whether a TTL (ms) is positive and within the limit.
    pub fn valid_ttl(&self, ttl_ms: i64) -> bool {
        ttl_ms > 0 && ttl_ms as u64 <= self.limits().max_ttl_ms
    }

    /// Bytes held in memory by sessions (the hot cache in write-through mode).
    pub fn memory(&self) -> usize {
        match self {
            Sessions::Standalone(store) => store.memory(),
            Sessions::WriteThrough(store) => store.cache.memory(),
        }
    }

    /// Whether writes past `maxmemory` are refused (standalone: memory is the
    /// store) rather than making room by evicting hot copies.
    pub fn refuses_writes_past_maxmemory(&self) -> bool {
        matches!(self, Sessions::Standalone(_))
    }

    /// Sessions held in this sidecar's memory.
    pub fn count_local(&self, now: u64) -> usize {
        match self {
            Sessions::Standalone(store) => store.count(now),
            Sessions::WriteThrough(store) => store.cache.len(),
        }
    }

    /// Live sessions in the store (the upstream's, in write-through mode).
    pub async fn count(&self, now: u64) -> Result<usize> {
        match self {
            Sessions::Standalone(store) => Ok(store.count(now)),
            Sessions::WriteThrough(store) => store.count(now).await,
        }
    }

    /// Runs `f` on the live session.
    pub async fn read<R>(
        &self,
        id: &[u8],
        now: u64,
        f: impl FnOnce(&Session) -> R,
    ) -> Result<Option<R>> {
        match self {
            Sessions::Standalone(store) => match store.read(id, now, f) {
                None => missing(store, id, now, None),
                found => Ok(found),
            },
            Sessions::WriteThrough(store) => store.read(id, now, f).await,
        }
    }

    /// [`Sessions::read`] under the shard's write lock, for a reader that
    /// keeps something derived in the session (its JSON form).
    pub async fn read_mut<R>(
        &self,
        id: &[u8],
        now: u64,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>> {
        match self {
            Sessions::Standalone(store) => match store.read_mut(id, now, f) {
                None => missing(store, id, now, None),
                found => Ok(found),
            },
            Sessions::WriteThrough(store) => store.read_mut(id, now, f).await,
        }
    }

    /// [`Sessions::read`] of the source of truth: write-through, the
    /// upstream's session rather than the hot copy.
    pub async fn read_through<R>(
        &self,
        id: &[u8],
        now: u64,
        f: impl FnOnce(&Session) -> R,
    ) -> Result<Option<R>> {
        match self {
            Sessions::Standalone(_) => self.read(id, now, f).await,
            Sessions::WriteThrough(store) => store.read_through(id, now, f).await,
        }
    }

    pub async fn exists(&self, ids: &[Bytes], now: u64) -> Result<usize> {
        match self {
            Sessions::Standalone(store) => {
                // Forwarding entries are made before sessions leave: one
                // that is not found here is found there.
                let mut live = 0;
                let mut moved = None;
                for id in ids {
                    if store.exists(id, now) {
                        live += 1;
                    } else if moved.is_none() {
                        moved = store.moved_to(id, now);
                    }
                }
                match moved {
                    Some(to) => Err(StoreError::Moved(to)),
                    None => Ok(live),
                }
            }
            Sessions::WriteThrough(store) => store.exists(ids, now).await,
        }
    }

    pub async fn ttl(&self, id: &[u8], now: u64) -> Result<Option<u64>> {
        self.read(id, now, |s| s.expires - now).await
    }

    pub async fn by_conn(&self, conn: &[u8], now: u64) -> Result<Option<Key>> {
        match self {
            Sessions::Standalone(store) => Ok(store.by_conn(conn, now)),
            Sessions::WriteThrough(store) => store.by_conn(conn, now).await,
        }
    }

    pub async fn by_user(&self, user: &[u8], now: u64) -> Result<Vec<Key>> {
        match self {
            Sessions::Standalone(store) => Ok(store.by_user(user, now)),
            Sessions::WriteThrough(store) => store.by_user(user, now).await,
        }
    }

    pub async fn create(&self, request: CreateSession, now: u64) -> Result<Key> {
        match self {
            Sessions::Standalone(store) => store.create(request, now),
            Sessions::WriteThrough(store) => Box::pin(store.create(request, now)).await,
        }
    }

    pub async fn attr_set(&self, id: &[u8], pairs: &[(Bytes, Bytes)], now: u64) -> Result<u64> {
        match self {
            Sessions::Standalone(store) => or_moved(store, id, now, store.attr_set(id, pairs, now)),
            Sessions::WriteThrough(store) => Box::pin(store.attr_set(id, pairs, now)).await,
        }
    }

    pub async fn attr_del(&self, id: &[u8], names: &[Bytes], now: u64) -> Result<usize> {
        match self {
            Sessions::Standalone(store) => match store.attr_del(id, names, now)? {
                0 => missing(store, id, now, 0),
                removed => Ok(removed),
            },
            Sessions::WriteThrough(store) => Box::pin(store.attr_del(id, names, now)).await,
        }
    }

    pub async fn attr_incrby(
        &self,
        id: &[u8],
        name: &[u8],
        increment: i64,
        now: u64,
    ) -> Result<i64> {
        match self {
            Sessions::Standalone(store) => {
                or_moved(store, id, now, store.attr_incrby(id, name, increment, now))
            }
            Sessions::WriteThrough(store) => {
                Box::pin(store.attr_incrby(id, name, increment, now)).await
            }
        }
    }

    pub async fn update(&self, id: &[u8], request: &UpdateSession, now: u64) -> Result<u64> {
        match self {
            Sessions::Standalone(store) => or_moved(store, id, now, store.update(id, request, now)),
            Sessions::WriteThrough(store) => Box::pin(store.update(id, request, now)).await,
        }
    }

    /// The heartbeat: ms left after it, or None when missing.
    pub async fn touch(&self, id: &[u8], now: u64) -> Result<Option<u64>> {
        match self {
            Sessions::Standalone(store) => match store.touch(id, now)? {
                None => missing(store, id, now, None),
                left => Ok(left),
            },
            Sessions::WriteThrough(store) => store.touch(id, now).await,
        }
    }

    pub async fn expire(&self, id: &[u8], ttl_ms: u64, now: u64) -> Result<bool> {
        match self {
            Sessions::Standalone(store) => match store.expire(id, ttl_ms, now)? {
                false => missing(store, id, now, false),
                true => Ok(true),
            },
            Sessions::WriteThrough(store) => Box::pin(store.expire(id, ttl_ms, now)).await,
        }
    }

    pub async fn delete<K: AsRef<[u8]>>(
        &self,
        ids: &[K],
        now: u64,
        reason: Option<&'static str>,
    ) -> Result<usize> {
        match self {
            Sessions::Standalone(store) => store.delete(ids, now, reason),
            Sessions::WriteThrough(store) => Box::pin(store.delete(ids, now, reason)).await,
        }
    }

    pub async fn kill_user(&self, user: &[u8], now: u64) -> Result<usize> {
        match self {
            Sessions::Standalone(store) => store.kill_user(user, now),
            Sessions::WriteThrough(store) => Box::pin(store.kill_user(user, now)).await,
        }
    }

    pub async fn bind(&self, id: &[u8], conn: &[u8], now: u64) -> Result<u64> {
        match self {
            Sessions::Standalone(store) => or_moved(store, id, now, store.bind(id, conn, now)),
            Sessions::WriteThrough(store) => Box::pin(store.bind(id, conn, now)).await,
        }
    }

    pub async fn unbind(&self, id: &[u8], grace_ms: Option<u64>, now: u64) -> Result<u64> {
        match self {
            Sessions::Standalone(store) => {
                or_moved(store, id, now, store.unbind(id, grace_ms, now))
            }
            Sessions::WriteThrough(store) => Box::pin(store.unbind(id, grace_ms, now)).await,
        }
    }
}

/// A standalone miss: SESSIONMOVED when the session was handed to another
/// sidecar within the grace period, else `value`.
fn missing<T>(store: &SessionStore, id: &[u8], now: u64, value: T) -> Result<T> {
    match store.moved_to(id, now) {
        Some(to) => Err(StoreError::Moved(to)),
        None => Ok(value),
    }
}

/// A standalone NOSESSION becomes SESSIONMOVED for a session handed away.
fn or_moved<T>(store: &SessionStore, id: &[u8], now: u64, result: Result<T>) -> Result<T> {
    match result {
        Err(StoreError::NoSession) => missing(store, id, now, ()).and(Err(StoreError::NoSession)),
        other => other,
    }
}
