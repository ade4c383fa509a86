//! The key layout in the upstream: sessions spread over a fixed number of
//! shards, each shard one hash slot, the shards' slots evenly spaced over the
//! cluster's 16,384.
//!
//! With prefix `P` and `{t}` the hash tag of shard `t`:
//!
//! | key | type | shard | holds |
//! | --- | --- | --- | --- |
//! | `P:s:{t}:<id>` | hash | of the id | the session |
//! | `P:u:{t}:<user>` | zset | of the user | the user's session ids, in creation order |
//! | `P:c:{t}:<conn>` | string | of the conn | the id of the session bound to the connection |
//! | `P:l:{t}:<conn>` | string | of the conn | held (a few seconds at most) while a bind across shards runs |
//! | `P:x:{t}` | zset | each shard | the shard's sessions by expiry time: its expiry index |
//! | `P:e:{t}` | stream | each shard | the shard's lifecycle events |
//! | `P:i:{t}` | zset | each shard | unfinished cross-shard work (intents), by when to repair it |
//! | `P:layout` | hash | | the layout (`shards`), checked by every sidecar at start |
//!
//! The shard of a string (an id, a user, a conn) is the CRC16 of its bytes
//! (Redis Cluster's: XMODEM) modulo the shard count, a power of two. The tag
//! of shard `t` is the first string in the base-36 sequence `0`, `1`, ...,
//! `z`, `10`, ... whose hash slot is `t * 16384 / shards + 8192 / shards`:
//! the shards' slots are evenly spaced, so masters serving equal slot ranges
//! hold equal numbers of shards (plain `{0}`...`{N}` tags cluster on a few
//! masters).
//!
//! A session id the sidecar generates is a UUID v4 whose last hex digits are
//! chosen so that it lands in the shard of its user: the session, the user's
//! index and the user's other generated sessions share one slot, and a login
//! (CREATE with USER and MAXPERUSER) is one atomic script call.

use crate::protocol::slot::{SLOTS, slot_of};
use crate::store::Key;

pub use crate::config::{DEFAULT_CLUSTER_SHARDS, DEFAULT_SHARDS};

/// The layout's version, recorded beside the shard count.
pub const LAYOUT_VERSION: u32 = 2;

/// The shards and the keys of one prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
    shards: u32,
    /// `{tag}` of each shard, braces included.
    tags: Vec<String>,
}

impl Layout {
    /// The layout of `prefix` with `shards` shards (a power of two, 1 to
    /// 16,384; the prefix must not contain braces, which would change the
    /// keys' hash tags).
    pub fn new(prefix: &str, shards: u32) -> Result<Layout, String> {
        if !shards.is_power_of_two() || shards as usize > SLOTS {
            return Err(format!(
                "--shards must be a power of two from 1 to {SLOTS}, not {shards}"
            ));
        }
        if prefix.contains(['{', '}']) {
            return Err(format!(
                "--prefix must not contain braces (they would change the keys' hash slots): {prefix}"
            ));
        }
        Ok(Layout {
            prefix: prefix.to_string(),
            shards,
            tags: balanced_tags(shards)
                .into_iter()
                .map(|tag| format!("{{{tag}}}"))
                .collect(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard of an id, a user or a conn.
    pub fn shard_of(&self, name: &[u8]) -> u32 {
        u32::from(crc16::State::<crc16::XMODEM>::calculate(name)) & (self.shards - 1)
    }

    /// `{tag}` of a shard, braces included.
    pub fn tag(&self, shard: u32) -> &str {
        &self.tags[shard as usize]
    }

    /// The hash slot of a shard's keys.
    pub fn slot(&self, shard: u32) -> u16 {
        slot_of(self.tag(shard).as_bytes())
    }

    /// `P:<kind>:{t}`, then `:<name>` for the keys of one id, user or conn
    /// (an empty name included: ids, users and conns may be empty strings).
    fn key(&self, kind: &str, shard: u32, name: Option<&[u8]>) -> Vec<u8> {
        let tag = self.tag(shard);
        let name_len = name.map_or(0, |n| n.len() + 1);
        let mut key = Vec::with_capacity(self.prefix.len() + kind.len() + tag.len() + name_len + 2);
        key.extend_from_slice(self.prefix.as_bytes());
        key.push(b':');
        key.extend_from_slice(kind.as_bytes());
        key.push(b':');
        key.extend_from_slice(tag.as_bytes());
        if let Some(name) = name {
            key.push(b':');
            key.extend_from_slice(name);
        }
        key
    }

    /// `P:s:{t}:<id>`, the session's hash.
    pub fn session_key(&self, id: &[u8]) -> Vec<u8> {
        self.key("s", self.shard_of(id), Some(id))
    }

    /// `P:u:{t}:<user>`, the user's index.
    pub fn user_key(&self, user: &[u8]) -> Vec<u8> {
        self.key("u", self.shard_of(user), Some(user))
    }

    /// `P:c:{t}:<conn>`, the connection's pointer to its session.
    pub fn conn_key(&self, conn: &[u8]) -> Vec<u8> {
        self.key("c", self.shard_of(conn), Some(conn))
    }

    /// `P:l:{t}:<conn>`, the lock that makes cross-shard binds of one conn
    /// run one at a time.
    pub fn lock_key(&self, conn: &[u8]) -> Vec<u8> {
        self.key("l", self.shard_of(conn), Some(conn))
    }

    /// `P:x:{t}`, the shard's expiry index.
    pub fn expiry_key(&self, shard: u32) -> Vec<u8> {
        self.key("x", shard, None)
    }

    /// `P:e:{t}`, the shard's events stream.
    pub fn stream_key(&self, shard: u32) -> Vec<u8> {
        self.key("e", shard, None)
    }

    /// `P:i:{t}`, the shard's intents.
    pub fn intents_key(&self, shard: u32) -> Vec<u8> {
        self.key("i", shard, None)
    }

    /// The keys a script call in `shard` declares (numkeys, then the keys):
    /// `key` (the session's, the user's or the conn's it is about, if any)
    /// and the shard's expiry index, stream and intents. While Redis Cluster
    /// moves the shard's slot, a call whose declared keys are not all on one
    /// side is refused with TRYAGAIN (or ASK) instead of running on half of
    /// them: a write during a reshard succeeds or fails fast.
    pub fn declare_keys(&self, call: &mut redis::Cmd, shard: u32, key: &[u8]) {
        let shard_keys = [
            self.expiry_key(shard),
            self.stream_key(shard),
            self.intents_key(shard),
        ];
        let extra = !key.is_empty() && !shard_keys.iter().any(|k| k == key);
        call.arg(shard_keys.len() + usize::from(extra));
        if extra {
            call.arg(key);
        }
        for shard_key in &shard_keys {
            call.arg(&shard_key[..]);
        }
    }

    /// `P:layout`, where the shard count is recorded.
    pub fn layout_key(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// What every session key starts with (`P:s:`): the prefix client-side
    /// caching tracks.
    pub fn session_key_prefix(&self) -> String {
        format!("{}:s:", self.prefix)
    }

    /// The id inside a session key, if it is one.
    pub fn id_of_key<'a>(&self, key: &'a [u8]) -> Option<&'a [u8]> {
        let rest = key.strip_prefix(self.session_key_prefix().as_bytes())?;
        let rest = rest.strip_prefix(b"{")?;
        let close = rest.iter().position(|&b| b == b'}')?;
        rest[close + 1..].strip_prefix(b":")
    }

    /// A fresh UUID v4 in `shard`: random but for its last hex digits, which
    /// are chosen so that its CRC16 falls in the shard. (The last twelve hex
    /// digits of a v4 UUID are random bits; the version and variant stay.)
    pub fn generate_id(&self, shard: u32) -> Key {
        let mut text = [0u8; 36];
        loop {
            let uuid = uuid::Uuid::new_v4();
            uuid.hyphenated().encode_lower(&mut text);
            // CRC16 is computed byte by byte: the state after the first 32
            // characters is shared by every candidate for the last four.
            let mut head = crc16::State::<crc16::XMODEM>::new();
            head.update(&text[..32]);
            let start = u16::from_le_bytes([uuid.as_bytes()[14], uuid.as_bytes()[15]]);
            for step in 0..=u16::MAX {
                let digits = start.wrapping_add(step);
                let tail = hex4(digits);
                let mut state = head;
                state.update(&tail);
                if u32::from(state.get()) & (self.shards - 1) == shard {
                    text[32..].copy_from_slice(&tail);
                    return Key::from(&text[..]);
                }
            }
            // No four digits reach the shard from this head (not seen in
            // practice): another UUID.
        }
    }
}

/// Four lowercase hex digits of `value`.
fn hex4(value: u16) -> [u8; 4] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 4];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[usize::from((value >> (12 - 4 * i)) & 0xf)];
    }
    out
}

/// The base-36 name of `n`: `0`..`z`, `10`, ...
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// For each of `shards` shards, the first base-36 string whose hash slot is
/// the shard's evenly spaced target slot.
fn balanced_tags(shards: u32) -> Vec<String> {
    let spacing = SLOTS / shards as usize;
    let target = |shard: usize| shard * spacing + spacing / 2;
    // Which shard wants each slot.
    let mut wanted: Vec<Option<usize>> = vec![None; SLOTS];
    for shard in 0..shards as usize {
        wanted[target(shard)] = Some(shard);
    }
    let mut tags: Vec<Option<String>> = vec![None; shards as usize];
    let mut missing = shards as usize;
    let mut n = 0u64;
    while missing > 0 {
        let name = base36(n);
        n += 1;
        let slot = usize::from(slot_of(name.as_bytes()));
        if let Some(shard) = wanted[slot]
            && tags[shard].is_none()
        {
            tags[shard] = Some(name);
            missing -= 1;
        }
    }
    tags.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_tags_land_on_evenly_spaced_slots() {
        for shards in [1, 2, 16, 256, 1024] {
            let layout = Layout::new("session", shards).unwrap();
            let spacing = SLOTS as u32 / shards;
            for shard in 0..shards {
                assert_eq!(
                    u32::from(layout.slot(shard)),
                    shard * spacing + spacing / 2,
                    "shard {shard} of {shards}"
                );
            }
        }
    }

    #[test]
    fn three_equal_slot_ranges_hold_a_third_of_the_shards_each() {
        let layout = Layout::new("session", 256).unwrap();
        let mut per_master = [0u32; 3];
        for shard in 0..256 {
            // redis-cli --cluster create splits the slots in three ranges.
            let master = (usize::from(layout.slot(shard)) * 3 / SLOTS).min(2);
            per_master[master] += 1;
        }
        let third = 256.0 / 3.0;
        for count in per_master {
            assert!((f64::from(count) - third).abs() <= 1.0, "{per_master:?}");
        }
    }

    #[test]
    fn keys_of_one_shard_share_its_slot() {
        let layout = Layout::new("app", 64).unwrap();
        let id = b"session-1";
        let shard = layout.shard_of(id);
        let slot = layout.slot(shard);
        assert_eq!(slot_of(&layout.session_key(id)), slot);
        assert_eq!(slot_of(&layout.expiry_key(shard)), slot);
        assert_eq!(slot_of(&layout.stream_key(shard)), slot);
        assert_eq!(slot_of(&layout.intents_key(shard)), slot);
        assert_eq!(
            slot_of(&layout.user_key(b"alice")),
            layout.slot(layout.shard_of(b"alice"))
        );
        assert!(layout.session_key(id).starts_with(b"app:s:{"));
        assert_eq!(layout.id_of_key(&layout.session_key(id)), Some(&id[..]));
        // Ids are binary-safe: braces and colons in them change nothing.
        let odd = b"a}:{b";
        assert_eq!(layout.id_of_key(&layout.session_key(odd)), Some(&odd[..]));
        assert_eq!(layout.id_of_key(b"app:u:{0}:x"), None);
        // The empty id, user and conn are keys of their own.
        assert!(layout.conn_key(b"").ends_with(b"}:"));
        assert_eq!(layout.id_of_key(&layout.session_key(b"")), Some(&b""[..]));
    }

    #[test]
    fn generated_ids_are_uuids_in_the_shard_asked_for() {
        let layout = Layout::new("session", 256).unwrap();
        for shard in [0, 1, 77, 255] {
            for _ in 0..20 {
                let id = layout.generate_id(shard);
                assert_eq!(layout.shard_of(&id), shard);
                let text = std::str::from_utf8(&id).unwrap();
                let uuid = uuid::Uuid::parse_str(text).unwrap();
                assert_eq!(uuid.get_version_num(), 4);
                assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            }
        }
        assert_ne!(layout.generate_id(3), layout.generate_id(3));
    }

    #[test]
    fn bad_shard_counts_and_prefixes_are_refused() {
        assert!(Layout::new("session", 0).is_err());
        assert!(Layout::new("session", 3).is_err());
        assert!(Layout::new("session", 32768).is_err());
        assert!(Layout::new("a{b", 16).is_err());
    }
}
