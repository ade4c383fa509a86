//! One session: its fields, its size, and its JSON form.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// `active` (new, or bound to a connection) or `disconnected` (kept for resume).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Active,
    Disconnected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Disconnected => "disconnected",
        }
    }

    pub fn parse(word: &[u8]) -> Option<Status> {
        if word.eq_ignore_ascii_case(b"active") {
            Some(Status::Active)
        } else if word.eq_ignore_ascii_case(b"disconnected") {
            Some(Status::Disconnected)
        } else {
            None
        }
    }
}

/// A session as held in memory. Its id is the map key.
#[derive(Debug)]
pub struct Session {
    pub user: Option<Bytes>,
    pub conn: Option<Bytes>,
    pub node: Bytes,
    pub status: Status,
    pub created: u64,
    /// Updated by heartbeats under the map's read lock, hence atomic.
    pub last_active: AtomicU64,
    pub expires: u64,
    pub ttl: u64,
    pub version: u64,
    /// Creation order within this store, the tie-break for "oldest first".
    pub seq: u64,
    pub attrs: Attributes,
}

/// Attributes in insertion order; small, so a vector beats a hash map in both
/// memory and lookup time (as Redis's listpack-encoded hashes).
pub type Attributes = Vec<(Box<[u8]>, Box<[u8]>)>;

/// Sets an attribute; true when it is new.
pub fn set_attr(attrs: &mut Attributes, name: &[u8], value: &[u8]) -> bool {
    match attrs.iter_mut().find(|(n, _)| &**n == name) {
        Some((_, v)) => {
            *v = value.into();
            false
        }
        None => {
            attrs.push((name.into(), value.into()));
            true
        }
    }
}

/// Removes an attribute; true when it was there.
pub fn del_attr(attrs: &mut Attributes, name: &[u8]) -> bool {
    match attrs.iter().position(|(n, _)| &**n == name) {
        Some(i) => {
            attrs.remove(i);
            true
        }
        None => false,
    }
}

impl Session {
    pub fn is_live(&self, now: u64) -> bool {
        self.expires > now
    }

    pub fn last_active(&self) -> u64 {
        self.last_active.load(Ordering::Relaxed)
    }

    /// Records a mutation: version +1 and `last_active` = now.
    pub fn mutated(&mut self, now: u64) {
        self.version += 1;
        *self.last_active.get_mut() = now;
    }

    pub fn attr(&self, name: &[u8]) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    /// Sets an attribute; true when it is new.
    pub fn set_attr(&mut self, name: &[u8], value: &[u8]) -> bool {
        set_attr(&mut self.attrs, name, value)
    }

    pub fn del_attr(&mut self, name: &[u8]) -> bool {
        del_attr(&mut self.attrs, name)
    }

    /// Approximate bytes this session costs in the map, its key included:
    /// the struct, the heap parts, and the map's per-entry overhead.
    pub fn memory(&self, id: &[u8]) -> usize {
        const ENTRY_OVERHEAD: usize = std::mem::size_of::<Bytes>() + 16;
        std::mem::size_of::<Session>()
            + ENTRY_OVERHEAD
            + id.len()
            + self.user.as_ref().map_or(0, |u| u.len())
            + self.conn.as_ref().map_or(0, |c| c.len())
            + self.attrs.capacity() * std::mem::size_of::<(Box<[u8]>, Box<[u8]>)>()
            + self
                .attrs
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
    }

    /// The JSON object of `SESSION.GET id JSON`.
    pub fn to_json(&self, id: &[u8]) -> Vec<u8> {
        // Serializing plain strings and integers into a Vec cannot fail.
        serde_json::to_vec(&JsonView { id, session: self }).unwrap_or_default()
    }
}

/// The field names of a session, in reply order.
pub const FIELD_COUNT: usize = 11;

struct JsonView<'a> {
    id: &'a [u8],
    session: &'a Session,
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

impl Serialize for JsonView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Attrs<'a>(&'a Attributes);
        impl Serialize for Attrs<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (name, value) in self.0 {
                    map.serialize_entry(&text(name), &text(value))?;
                }
                map.end()
            }
        }
        let s = self.session;
        let mut map = serializer.serialize_map(Some(FIELD_COUNT))?;
        map.serialize_entry("id", &text(self.id))?;
        map.serialize_entry("user", &s.user.as_deref().map(text))?;
        map.serialize_entry("conn", &s.conn.as_deref().map(text))?;
        map.serialize_entry("status", s.status.as_str())?;
        map.serialize_entry("node", &text(&s.node))?;
        map.serialize_entry("created", &s.created)?;
        map.serialize_entry("last_active", &s.last_active())?;
        map.serialize_entry("expires", &s.expires)?;
        map.serialize_entry("ttl", &s.ttl)?;
        map.serialize_entry("version", &s.version)?;
        map.serialize_entry("attrs", &Attrs(&s.attrs))?;
        map.end()
    }
}
