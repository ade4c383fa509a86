//! The user and connection indexes.
//!
//! Both live behind one mutex in the store, taken by operations that change
//! which sessions exist or who they belong to (create, delete, bind, unbind,
//! expiry) and by the queries that read them (BYUSER, BYCONN): never by reads
//! of a session or by heartbeats. Holding them together is what makes
//! MAXPERUSER and "move this connection" atomic. Entries share the sessions'
//! keys (reference counts, no copies).

use std::collections::{BTreeMap, HashMap};

use super::session::Key;

/// Where a session sorts in its user's list: creation time, then creation order.
pub type UserKey = (u64, u64);

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Up to this many sessions a user's list is a sorted vector (compact, and
/// new sessions arrive at its end); past it, an ordered map, so that removing
/// many of one user's sessions never costs the square of their number.
const FEW: usize = 32;

/// One user's sessions, oldest first. Most users hold one session: it is
/// kept inline, without an allocation of its own.
#[derive(Debug, Default)]
pub enum UserSessions {
    #[default]
    None,
    One(UserKey, Key),
    Few(Vec<(UserKey, Key)>),
    Many(BTreeMap<UserKey, Key>),
}

impl UserSessions {
    fn insert(&mut self, key: UserKey, id: Key) {
        match self {
            UserSessions::None => *self = UserSessions::One(key, id),
            UserSessions::One(..) => {
                let UserSessions::One(first_key, first) = std::mem::take(self) else {
                    return;
                };
                let mut few = vec![(first_key, first), (key, id)];
                few.sort_by_key(|(k, _)| *k);
                *self = UserSessions::Few(few);
            }
            UserSessions::Few(sessions) if sessions.len() < FEW => {
                // Grow one at a time: most users hold one or two sessions,
                // and a vector's default first growth is to four.
                sessions.reserve_exact(1);
                let at = sessions.partition_point(|(k, _)| *k < key);
                sessions.insert(at, (key, id));
            }
            UserSessions::Few(sessions) => {
                let mut many: BTreeMap<UserKey, Key> =
                    std::mem::take(sessions).into_iter().collect();
                many.insert(key, id);
                *self = UserSessions::Many(many);
            }
            UserSessions::Many(sessions) => {
                sessions.insert(key, id);
            }
        }
    }

    fn remove(&mut self, key: UserKey) {
        match self {
            UserSessions::None => {}
            UserSessions::One(only, _) => {
                if *only == key {
                    *self = UserSessions::None;
                }
            }
            UserSessions::Few(sessions) => {
                if let Ok(at) = sessions.binary_search_by_key(&key, |(k, _)| *k) {
                    sessions.remove(at);
                }
                if sessions.capacity() > 2 * sessions.len() + 4 {
                    sessions.shrink_to_fit();
                }
            }
            UserSessions::Many(sessions) => {
                sessions.remove(&key);
            }
        }
    }

    fn get(&self, key: UserKey) -> Option<&Key> {
        match self {
            UserSessions::None => None,
            UserSessions::One(only, id) => (*only == key).then_some(id),
            UserSessions::Few(sessions) => sessions
                .binary_search_by_key(&key, |(k, _)| *k)
                .ok()
                .map(|at| &sessions[at].1),
            UserSessions::Many(sessions) => sessions.get(&key),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            UserSessions::None => 0,
            UserSessions::One(..) => 1,
            UserSessions::Few(sessions) => sessions.len(),
            UserSessions::Many(sessions) => sessions.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids, oldest first.
    pub fn ids(&self) -> Vec<Key> {
        match self {
            UserSessions::None => Vec::new(),
            UserSessions::One(_, id) => vec![id.clone()],
            UserSessions::Few(sessions) => sessions.iter().map(|(_, id)| id.clone()).collect(),
            UserSessions::Many(sessions) => sessions.values().cloned().collect(),
        }
    }
}

#[derive(Default, Debug)]
pub struct Indexes {
    pub by_user: Map<Key, UserSessions>,
    pub by_conn: Map<Key, Key>,
}

impl Indexes {
    pub fn add_user(&mut self, user: &Key, key: UserKey, id: &Key) {
        self.by_user
            .entry(user.clone())
            .or_default()
            .insert(key, id.clone());
    }

    pub fn remove_user(&mut self, user: &[u8], key: UserKey) {
        if let Some(sessions) = self.by_user.get_mut(user) {
            sessions.remove(key);
            if sessions.is_empty() {
                self.by_user.remove(user);
            }
        }
    }

    /// Whether the user index holds exactly this entry.
    pub fn has_user_entry(&self, user: &[u8], key: UserKey, id: &[u8]) -> bool {
        self.by_user
            .get(user)
            .and_then(|sessions| sessions.get(key))
            .is_some_and(|found| &**found == id)
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
            .map(UserSessions::ids)
            .unwrap_or_default()
    }

    /// Takes the user's whole list out of the index (KILLUSER).
    pub fn take_user(&mut self, user: &[u8]) -> Vec<Key> {
        self.by_user
            .remove(user)
            .map(|sessions| sessions.ids())
            .unwrap_or_default()
    }
}
