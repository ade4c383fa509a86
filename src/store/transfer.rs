//! The portable form of a session, as SESSION.MIGRATE sends it and
//! SESSION.IMPORT reads it: every field, the version, and what the target's
//! indexes need (user, conn, created, expires).
//!
//! One bulk string per session (the id travels beside it), little-endian:
//!
//! ```text
//! u8  format (1)
//! u64 created, last_active, expires, ttl, version
//! u8  status (0 active, 1 disconnected)
//! u8  flags (1: user present, 2: conn present)
//! [u32 len, user bytes] [u32 len, conn bytes]
//! u32 attribute count, then per attribute: u32 len, name, u32 len, value
//! ```
//!
//! Decoding checks every length against the buffer and the configured
//! limits: a peer's payload is input like any other.

use super::{Attributes, Key, Session, SessionLimits, Status};

const FORMAT: u8 = 1;
const HAS_USER: u8 = 1;
const HAS_CONN: u8 = 2;

/// A session as it travels between sidecars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub user: Option<Key>,
    pub conn: Option<Key>,
    pub status: Status,
    pub created: u64,
    pub last_active: u64,
    pub expires: u64,
    pub ttl: u64,
    pub version: u64,
    pub attrs: Attributes,
}

/// Appends the portable form of `session` to `out`.
pub fn encode(session: &Session, out: &mut Vec<u8>) {
    out.reserve(64 + session.attrs.heap_size());
    out.push(FORMAT);
    for value in [
        session.created,
        session.last_active(),
        session.expires,
        session.ttl,
        session.version,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out.push(match session.status {
        Status::Active => 0,
        Status::Disconnected => 1,
    });
    let flags = if session.user.is_some() { HAS_USER } else { 0 }
        | if session.conn.is_some() { HAS_CONN } else { 0 };
    out.push(flags);
    for part in [&session.user, &session.conn].into_iter().flatten() {
        put(out, part);
    }
    let count = session.attrs.len();
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (name, value) in session.attrs.iter() {
        put(out, name);
        put(out, value);
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a portable session, within `limits`.
pub fn decode(bytes: &[u8], limits: &SessionLimits) -> Result<Transfer, &'static str> {
    let mut r = Reader { rest: bytes };
    if r.byte()? != FORMAT {
        return Err("unknown session payload format");
    }
    let created = r.u64()?;
    let last_active = r.u64()?;
    let expires = r.u64()?;
    let ttl = r.u64()?;
    let version = r.u64()?;
    let status = match r.byte()? {
        0 => Status::Active,
        1 => Status::Disconnected,
        _ => return Err("invalid status in session payload"),
    };
    let flags = r.byte()?;
    if flags & !(HAS_USER | HAS_CONN) != 0 {
        return Err("invalid flags in session payload");
    }
    let max_name = limits.max_name_len;
    let user = (flags & HAS_USER != 0)
        .then(|| r.string(max_name).map(Key::from))
        .transpose()?;
    let conn = (flags & HAS_CONN != 0)
        .then(|| r.string(max_name).map(Key::from))
        .transpose()?;
    let count = r.u32()? as usize;
    if count > limits.max_attrs {
        return Err("too many attributes in session payload");
    }
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let name = r.string(max_name)?;
        let value = r.string(limits.max_value_len)?;
        pairs.push((name, value));
    }
    if !r.rest.is_empty() {
        return Err("trailing bytes in session payload");
    }
    if version == 0 || ttl == 0 || ttl > limits.max_ttl_ms {
        return Err("invalid version or ttl in session payload");
    }
    Ok(Transfer {
        user,
        conn,
        status,
        created,
        last_active,
        expires,
        ttl,
        version,
        attrs: Attributes::from_pairs(pairs),
    })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err("truncated session payload");
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let mut buf = [0; 4];
        buf.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(buf))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut buf = [0; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buf))
    }

    fn string(&mut self, max: usize) -> Result<&'a [u8], &'static str> {
        let len = self.u32()? as usize;
        if len > max {
            return Err("string too long in session payload");
        }
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn session() -> Session {
        Session {
            user: Some(Key::from(&b"alice"[..])),
            conn: None,
            node: Key::from(&b"n1"[..]),
            status: Status::Disconnected,
            created: 1,
            last_active: AtomicU64::new(2),
            expires: 3,
            ttl: 4,
            version: 5,
            seq: 6,
            moving: false,
            attrs: Attributes::from_pairs([(&b"k"[..], &b"v\r\n\0"[..]), (b"", b"")]),
            json: Default::default(),
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut bytes = Vec::new();
        encode(&session(), &mut bytes);
        let t = decode(&bytes, &SessionLimits::default()).unwrap();
        assert_eq!(t.user.as_deref(), Some(&b"alice"[..]));
        assert_eq!(t.conn, None);
        assert_eq!(t.status, Status::Disconnected);
        assert_eq!(
            (t.created, t.last_active, t.expires, t.ttl, t.version),
            (1, 2, 3, 4, 5)
        );
        assert_eq!(t.attrs, session().attrs);
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let mut bytes = Vec::new();
        encode(&session(), &mut bytes);
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &SessionLimits::default()).is_err());
        }
        bytes.push(0);
        assert!(decode(&bytes, &SessionLimits::default()).is_err());
    }

    #[test]
    fn lengths_past_the_limits_are_refused() {
        let mut bytes = Vec::new();
        encode(&session(), &mut bytes);
        let limits = SessionLimits {
            max_name_len: 3,
            ..SessionLimits::default()
        };
        assert!(decode(&bytes, &limits).is_err());
    }
}
