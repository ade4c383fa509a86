//! One session: its fields, its size, and its JSON form.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::attributes::Attributes;

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

/// An id, user, conn or node name: one allocation, shared by the map and
/// every index that refers to it.
pub type Key = Arc<[u8]>;

/// A session as held in memory. Its id is the map key.
#[derive(Debug)]
pub struct Session {
    pub user: Option<Key>,
    pub conn: Option<Key>,
    pub node: Key,
    pub status: Status,
    pub created: u64,
    /// Updated by heartbeats under the map's read lock, hence atomic.
    pub last_active: AtomicU64,
    pub expires: u64,
    pub ttl: u64,
    pub version: u64,
    /// Creation order within this store, the tie-break for "oldest first".
    pub seq: u64,
    /// Being handed to another sidecar (SESSION.MIGRATE): writes are refused
    /// with TRYAGAIN until the move is acknowledged or abandoned.
    pub moving: bool,
    pub attrs: Attributes,
    /// Its JSON form, kept from a read until its next change.
    pub json: JsonCache,
}

/// Bytes held by every session's [`JsonCache`] in the process: counted in
/// the sessions' memory (INFO, `maxmemory`).
pub static JSON_CACHE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A session's encoded JSON (`SESSION.GET id JSON`), kept from its first
/// read until the session changes: most reads of a session repeat, and
/// building the object touches every separately allocated part of the
/// session (user, conn, attributes), a cache miss each on a large store,
/// where the kept form is one. `last_active`, which heartbeats move without
/// a change, is left out and written at each read.
///
/// One pointer wide and without an allocation while nothing is kept, so
/// that a sidecar without `--keep-json` pays 8 bytes per session for it.
/// The one allocation holds its header, then where `last_active`'s value
/// goes (4 bytes, little-endian), then the object without that value. It
/// is made under the shard's write lock ([`crate::store::SessionStore::read_mut`]),
/// so it needs no synchronisation of its own.
#[derive(Default)]
pub struct JsonCache(thin_vec::ThinVec<u8>);

impl std::fmt::Debug for JsonCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "JsonCache"
        } else {
            "JsonCache(kept)"
        })
    }
}

/// Bytes in the kept form before the object: where the hole is.
const HOLE: usize = 4;

impl JsonCache {
    /// Bytes it holds on the heap: the allocation's header and contents.
    fn size(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            2 * std::mem::size_of::<usize>() + self.0.capacity()
        }
    }

    /// Forgets the kept form: the session changed.
    pub fn clear(&mut self) {
        if !self.0.is_empty() {
            JSON_CACHE_BYTES.fetch_sub(self.size(), Ordering::Relaxed);
            self.0 = thin_vec::ThinVec::new();
        }
    }
}

impl Drop for JsonCache {
    fn drop(&mut self) {
        self.clear();
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
        self.json.clear();
    }

    pub fn attr(&self, name: &[u8]) -> Option<&[u8]> {
        self.attrs.get(name)
    }

    /// Approximate bytes this session costs, its key and its index entries
    /// included: the map entry, the heap parts (each shared key counted once,
    /// with its reference count), one entry in the expiry index, and one each
    /// in the user and connection indexes when it has them. The allocator's
    /// own overhead is not counted (the resident size is the honest total).
    pub fn memory(&self, id: &[u8]) -> usize {
        const ARC_HEADER: usize = 2 * std::mem::size_of::<usize>();
        const MAP_ENTRY: usize = std::mem::size_of::<(Key, Session)>() + 8;
        const INDEX_ENTRY: usize = 2 * std::mem::size_of::<Key>() + 8;
        let key = |k: &[u8]| ARC_HEADER + k.len();
        MAP_ENTRY
            + key(id)
            + INDEX_ENTRY
            + self.user.as_deref().map_or(0, |u| key(u) + INDEX_ENTRY)
            + self.conn.as_deref().map_or(0, |c| key(c) + INDEX_ENTRY)
            + self.attrs.heap_size()
    }

    /// The JSON object of `SESSION.GET id JSON`.
    pub fn to_json(&self, id: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_json(id, &mut out);
        out
    }

    /// Appends the JSON object of `SESSION.GET id JSON` to `out`: written
    /// by hand, straight into the reply, as serde_json writes the same
    /// object (a test holds the two equal), in a third of its time on the
    /// hottest read there is.
    pub fn write_json<B: bytes::BufMut>(&self, id: &[u8], out: &mut B) {
        let last_active = self.last_active();
        self.write_json_with(id, out, |out| {
            out.put_slice(itoa::Buffer::new().format(last_active).as_bytes())
        });
    }

    /// [`Session::write_json`] from the kept form ([`JsonCache`]), made
    /// and kept at the first read after a change.
    pub fn write_json_kept<B: bytes::BufMut>(&mut self, id: &[u8], out: &mut B) {
        if self.json.0.is_empty() {
            let mut bytes = Vec::with_capacity(256);
            bytes.extend_from_slice(&[0; HOLE]);
            let mut hole = 0;
            self.write_json_with(id, &mut bytes, |bytes| hole = bytes.len());
            // A session too large to say where its hole is in 4 bytes
            // (impossible under the size limits) is written as it is.
            let Ok(hole) = u32::try_from(hole) else {
                return self.write_json(id, out);
            };
            bytes[..HOLE].copy_from_slice(&hole.to_le_bytes());
            let mut kept = thin_vec::ThinVec::with_capacity(bytes.len());
            kept.extend_from_slice(&bytes);
            self.json.0 = kept;
            JSON_CACHE_BYTES.fetch_add(self.json.size(), Ordering::Relaxed);
        }
        let kept = &self.json.0[..];
        let mut hole = [0; HOLE];
        hole.copy_from_slice(&kept[..HOLE]);
        let hole = (u32::from_le_bytes(hole) as usize).clamp(HOLE, kept.len());
        out.put_slice(&kept[HOLE..hole]);
        out.put_slice(itoa::Buffer::new().format(self.last_active()).as_bytes());
        out.put_slice(&kept[hole..]);
    }

    /// The JSON object, with `last_active`'s value written by `last_active`.
    fn write_json_with<B: bytes::BufMut>(
        &self,
        id: &[u8],
        out: &mut B,
        last_active: impl FnOnce(&mut B),
    ) {
        let mut numbers = itoa::Buffer::new();
        let mut number = |out: &mut B, name: &[u8], n: u64| {
            out.put_slice(name);
            out.put_slice(numbers.format(n).as_bytes());
        };
        out.put_slice(b"{\"id\":");
        json_string(out, id);
        out.put_slice(b",\"user\":");
        json_optional(out, self.user.as_deref());
        out.put_slice(b",\"conn\":");
        json_optional(out, self.conn.as_deref());
        out.put_slice(b",\"status\":\"");
        out.put_slice(self.status.as_str().as_bytes());
        out.put_slice(b"\",\"node\":");
        json_string(out, &self.node);
        number(out, b",\"created\":", self.created);
        out.put_slice(b",\"last_active\":");
        last_active(out);
        number(out, b",\"expires\":", self.expires);
        number(out, b",\"ttl\":", self.ttl);
        number(out, b",\"version\":", self.version);
        out.put_slice(b",\"attrs\":{");
        for (i, (name, value)) in self.attrs.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            json_string(out, name);
            out.put_u8(b':');
            json_string(out, value);
        }
        out.put_slice(b"}}");
    }
}

fn json_optional<B: bytes::BufMut>(out: &mut B, value: Option<&[u8]>) {
    match value {
        Some(value) => json_string(out, value),
        None => out.put_slice(b"null"),
    }
}

/// Whether `bytes` go into a JSON string as they are: printable ASCII
/// (0x20 to 0x7f) but `"` and `\`. Eight bytes at a time, with the
/// classic word tricks: a byte below `n` borrows in `x - n` per byte (its
/// top bit set where `x`'s is not), and a byte equal to `c` is a zero byte
/// of `x ^ c`; a borrow can only spread from a byte that matched.
fn is_plain(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const TOPS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let equal = |x: u64, c: u8| below(x ^ (ONES * u64::from(c)), 1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let x = u64::from_le_bytes(eight);
        if (x | below(x, 0x20) | equal(x, b'"') | equal(x, b'\\')) & TOPS != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
}

/// `bytes` as a JSON string: invalid UTF-8 becomes U+FFFD, and `"`, `\\` and
/// control characters are escaped as serde_json escapes them.
fn json_string<B: bytes::BufMut>(out: &mut B, bytes: &[u8]) {
    // Most names and values are plain ASCII with nothing to escape: copied.
    if is_plain(bytes) {
        out.put_u8(b'"');
        out.put_slice(bytes);
        out.put_u8(b'"');
        return;
    }
    let text = lossy_text(bytes);
    let text = text.as_bytes();
    out.put_u8(b'"');
    let mut start = 0;
    for (i, &byte) in text.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..0x20 => b"",
            _ => continue,
        };
        out.put_slice(&text[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put_slice(b"\\u00");
            out.put_u8(HEX[usize::from(byte >> 4)]);
            out.put_u8(HEX[usize::from(byte & 0xf)]);
        } else {
            out.put_slice(escape);
        }
        start = i + 1;
    }
    out.put_slice(&text[start..]);
    out.put_u8(b'"');
}

/// How many fields a session's map has (id, user, conn, status, node,
/// created, last_active, expires, ttl, version, attrs).
pub const FIELD_COUNT: usize = 11;

/// Bytes as JSON text: invalid UTF-8 becomes U+FFFD (JSON strings are
/// Unicode; binary values do not survive the JSON forms).
pub fn lossy_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    //! The hand-written JSON against serde_json's, for any bytes.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The word-at-a-time check says what the byte-at-a-time one says,
        /// for strings mostly plain with a few bytes of every kind.
        #[test]
        fn is_plain_is_the_bytewise_check(
            plain in proptest::collection::vec(0x20u8..0x7f, 0..40),
            odd in proptest::collection::vec((any::<u8>(), any::<prop::sample::Index>()), 0..3),
        ) {
            let mut bytes = plain;
            for (byte, at) in odd {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
            }
            let bytewise = bytes
                .iter()
                .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
            prop_assert_eq!(is_plain(&bytes), bytewise, "{:?}", bytes);
        }
    }
    use serde::ser::{Serialize, SerializeMap, Serializer};

    struct JsonView<'a> {
        id: &'a [u8],
        session: &'a Session,
    }

    impl Serialize for JsonView<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            struct Attrs<'a>(&'a Attributes);
            impl Serialize for Attrs<'_> {
                fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    let mut map = serializer.serialize_map(None)?;
                    for (name, value) in self.0.iter() {
                        map.serialize_entry(&lossy_text(name), &lossy_text(value))?;
                    }
                    map.end()
                }
            }
            let s = self.session;
            let mut map = serializer.serialize_map(Some(FIELD_COUNT))?;
            map.serialize_entry("id", &lossy_text(self.id))?;
            map.serialize_entry("user", &s.user.as_deref().map(lossy_text))?;
            map.serialize_entry("conn", &s.conn.as_deref().map(lossy_text))?;
            map.serialize_entry("status", s.status.as_str())?;
            map.serialize_entry("node", &lossy_text(&s.node))?;
            map.serialize_entry("created", &s.created)?;
            map.serialize_entry("last_active", &s.last_active())?;
            map.serialize_entry("expires", &s.expires)?;
            map.serialize_entry("ttl", &s.ttl)?;
            map.serialize_entry("version", &s.version)?;
            map.serialize_entry("attrs", &Attrs(&s.attrs))?;
            map.end()
        }
    }

    fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            "[ -~\\u{80}-\\u{10ffff}\\x00-\\x1f\"\\\\]{0,24}".prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #[test]
        fn json_is_what_serde_json_writes(
            id in any_bytes(),
            user in proptest::option::of(any_bytes()),
            conn in proptest::option::of(any_bytes()),
            active in any::<bool>(),
            node in any_bytes(),
            numbers in any::<[u64; 5]>(),
            attrs in proptest::collection::vec((any_bytes(), any_bytes()), 0..6),
        ) {
            let mut attributes = Attributes::default();
            for (name, value) in &attrs {
                attributes.set(name, value);
            }
            let session = Session {
                user: user.map(Key::from),
                conn: conn.map(Key::from),
                node: Key::from(node),
                status: if active { Status::Active } else { Status::Disconnected },
                created: numbers[0],
                last_active: AtomicU64::new(numbers[1]),
                expires: numbers[2],
                ttl: numbers[3],
                version: numbers[4],
                seq: 0,
                moving: false,
                attrs: attributes,
                json: JsonCache::default(),
            };
            let mut session = session;
            let serde = |s: &Session| serde_json::to_vec(&JsonView { id: &id, session: s }).unwrap();
            let kept = |s: &mut Session| {
                let mut out = Vec::new();
                s.write_json_kept(&id, &mut out);
                out
            };
            let expected = serde(&session);
            let written = session.to_json(&id);
            prop_assert_eq!(
                String::from_utf8_lossy(&written),
                String::from_utf8_lossy(&expected)
            );
            // The kept form: the same, twice; with a heartbeat's last_active;
            // and again after a change.
            for _ in 0..2 {
                prop_assert_eq!(&kept(&mut session), &expected);
            }
            session.last_active.store(numbers[1] / 2, Ordering::Relaxed);
            prop_assert_eq!(kept(&mut session), serde(&session));
            session.attrs.set(b"changed", &id);
            session.mutated(numbers[0]);
            prop_assert_eq!(kept(&mut session), serde(&session));
        }
    }
}
