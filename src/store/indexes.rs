//! The user and connection indexes.
//!
//! Both live behind one mutex in the store, taken only by operations that change
//! which sessions exist or who they belong to (create, delete, bind, unbind,
//! expiry): never by reads of a session or by heartbeats. Holding them together
//! is what makes MAXPERUSER and "move this connection" atomic.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

/// Where a session sorts in its user's list: creation time, then creation order.
pub type UserKey = (u64, u64);

#[derive(Default, Debug)]
pub struct Indexes {
    pub by_user: HashMap<Bytes, BTreeMap<UserKey, Bytes>>,
    pub by_conn: HashMap<Bytes, Bytes>,
}

impl Indexes {
    pub fn add_user(&mut self, user: &Bytes, key: UserKey, id: &Bytes) {
        self.by_user
            .entry(user.clone())
            .or_default()
            .insert(key, id.clone());
    }

    pub fn remove_user(&mut self, user: &[u8], key: UserKey) {
        if let Some(sessions) = self.by_user.get_mut(user) {
            sessions.remove(&key);
            if sessions.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// Removes `conn → id`, only if `conn` still points at `id`.
    pub fn remove_conn(&mut self, conn: &[u8], id: &[u8]) {
        if self.by_conn.get(conn).is_some_and(|bound| bound == id) {
            self.by_conn.remove(conn);
        }
    }

    /// The ids of a user's sessions, oldest first (live or not: callers filter).
    pub fn user_sessions(&self, user: &[u8]) -> Vec<Bytes> {
        self.by_user
            .get(user)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
