//! The user and connection indexes.
//!
//! Both live behind one mutex in the store, taken only by operations that change
//! which sessions exist or who they belong to (create, delete, bind, unbind,
//! expiry): never by reads of a session or by heartbeats. Holding them together
//! is what makes MAXPERUSER and "move this connection" atomic. Entries share
//! the sessions' keys (reference counts, no copies).

use std::collections::HashMap;

use super::session::Key;

/// Where a session sorts in its user's list: creation time, then creation order.
pub type UserKey = (u64, u64);

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default, Debug)]
pub struct Indexes {
    /// Each user's sessions, oldest first. A sorted vector: users hold a few
    /// sessions, and new ones arrive at the end.
    pub by_user: Map<Key, Vec<(UserKey, Key)>>,
    pub by_conn: Map<Key, Key>,
}

impl Indexes {
    pub fn add_user(&mut self, user: &Key, key: UserKey, id: &Key) {
        let sessions = self.by_user.entry(user.clone()).or_default();
        // Grow one at a time: most users hold one or two sessions, and a
        // vector's default first growth is to four.
        sessions.reserve_exact(1);
        let at = sessions.partition_point(|(k, _)| *k < key);
        sessions.insert(at, (key, id.clone()));
    }

    pub fn remove_user(&mut self, user: &[u8], key: UserKey) {
        if let Some(sessions) = self.by_user.get_mut(user) {
            if let Ok(at) = sessions.binary_search_by_key(&key, |(k, _)| *k) {
                sessions.remove(at);
            }
            if sessions.is_empty() {
                self.by_user.remove(user);
            } else if sessions.capacity() > 2 * sessions.len() + 4 {
                sessions.shrink_to_fit();
            }
        }
    }

    /// Whether the user index holds exactly this entry.
    pub fn has_user_entry(&self, user: &[u8], key: UserKey, id: &[u8]) -> bool {
        self.by_user.get(user).is_some_and(|sessions| {
            sessions
                .binary_search_by_key(&key, |(k, _)| *k)
                .is_ok_and(|at| &*sessions[at].1 == id)
        })
    }

    /// Removes `conn → id`, only if `conn` still points at `id`.
    pub fn remove_conn(&mut self, conn: &[u8], id: &[u8]) {
        if self.by_conn.get(conn).is_some_and(|bound| &**bound == id) {
            self.by_conn.remove(conn);
        }
    }

    /// The ids of a user's sessions, oldest first (live or not: callers filter).
    pub fn user_sessions(&self, user: &[u8]) -> Vec<Key> {
        self.by_user
            .get(user)
            .map(|s| s.iter().map(|(_, id)| id.clone()).collect())
            .unwrap_or_default()
    }
}
