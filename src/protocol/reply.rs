//! The one place replies are encoded, for RESP2 and RESP3.
//!
//! Commands write their reply straight into the connection's output buffer
//! through a [`ReplyWriter`]: no intermediate reply tree, no allocation per
//! reply. Aggregates are written as a header followed by their elements, so the
//! caller must know the element count up front (as Redis's `addReplyMapLen`).
//! Where RESP3 has a type RESP2 lacks, the RESP2 form is the one Redis uses:
//! maps become flat arrays, null is `$-1`, push frames are arrays, verbatim
//! strings are bulk strings, doubles are bulk strings.

use bytes::{BufMut, BytesMut};

/// The protocol version a client negotiated with `HELLO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    /// The number `HELLO` reports.
    pub fn number(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// Encodes replies into a buffer for one client's protocol.
pub struct ReplyWriter<'a> {
    buf: &'a mut BytesMut,
    protocol: Protocol,
}

impl<'a> ReplyWriter<'a> {
    pub fn new(buf: &'a mut BytesMut, protocol: Protocol) -> Self {
        Self { buf, protocol }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    /// The output buffer itself, for what is relayed into it unencoded.
    pub fn buffer(&mut self) -> &mut BytesMut {
        self.buf
    }

    /// Bytes written so far (the whole output buffer).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn simple(&mut self, s: &str) {
        self.buf.put_u8(b'+');
        self.put_line(s.as_bytes());
    }

    pub fn ok(&mut self) {
        self.buf.put_slice(b"+OK\r\n");
    }

    /// An error reply; `message` starts with its code (`ERR ...`, `NOSESSION ...`).
    pub fn error(&mut self, message: &str) {
        self.buf.put_u8(b'-');
        self.put_line(message.as_bytes());
    }

    pub fn int(&mut self, value: i64) {
        self.buf.put_u8(b':');
        self.put_number(value);
    }

    pub fn bulk(&mut self, value: &[u8]) {
        self.buf.put_u8(b'$');
        self.put_number(value.len() as i64);
        self.buf.reserve(value.len() + 2);
        self.buf.put_slice(value);
        self.buf.put_slice(b"\r\n");
    }

    /// A bulk string that `write` appends in place, for a value whose
    /// length is known only once written (no buffer of its own, no copy but
    /// a shift of the value when its header is not the 6 bytes guessed).
    pub fn bulk_with(&mut self, write: impl FnOnce(&mut BytesMut)) {
        const GUESS: usize = 6; // `$NNN\r\n`: a value of 100 to 999 bytes
        let start = self.buf.len();
        self.buf.put_slice(&[0; GUESS]);
        write(self.buf);
        let end = self.buf.len();
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(end - start - GUESS).as_bytes();
        let header = digits.len() + 3;
        if header > GUESS {
            self.buf.put_bytes(0, header - GUESS);
        }
        // The guess is mostly right: then nothing moves.
        if header != GUESS {
            self.buf.copy_within(start + GUESS..end, start + header);
            self.buf.truncate(end + header - GUESS);
        }
        self.buf[start] = b'$';
        self.buf[start + 1..start + header - 2].copy_from_slice(digits);
        self.buf[start + header - 2..start + header].copy_from_slice(b"\r\n");
        self.buf.put_slice(b"\r\n");
    }

    /// A bulk string, or null when absent.
    pub fn bulk_or_null(&mut self, value: Option<&[u8]>) {
        match value {
            Some(value) => self.bulk(value),
            None => self.null(),
        }
    }

    /// The null reply: RESP2 null bulk string, RESP3 null.
    pub fn null(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.buf.put_slice(b"$-1\r\n"),
            Protocol::Resp3 => self.buf.put_slice(b"_\r\n"),
        }
    }

    /// The null array: RESP2 `*-1`, RESP3 null.
    pub fn null_array(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.buf.put_slice(b"*-1\r\n"),
            Protocol::Resp3 => self.buf.put_slice(b"_\r\n"),
        }
    }

    pub fn array(&mut self, len: usize) {
        self.aggregate(b'*', len);
    }

    /// A map of `len` pairs: RESP3 `%`, RESP2 a flat array of `2 * len`.
    pub fn map(&mut self, len: usize) {
        match self.protocol {
            Protocol::Resp2 => self.aggregate(b'*', len * 2),
            Protocol::Resp3 => self.aggregate(b'%', len),
        }
    }

    /// A set: RESP3 `~`, RESP2 an array.
    pub fn set(&mut self, len: usize) {
        match self.protocol {
            Protocol::Resp2 => self.aggregate(b'*', len),
            Protocol::Resp3 => self.aggregate(b'~', len),
        }
    }

    /// An out-of-band push (pub/sub messages): RESP3 `>`, RESP2 an array.
    pub fn push(&mut self, len: usize) {
        match self.protocol {
            Protocol::Resp2 => self.aggregate(b'*', len),
            Protocol::Resp3 => self.aggregate(b'>', len),
        }
    }

    /// Free text (INFO, CLIENT INFO): RESP3 verbatim `txt`, RESP2 bulk.
    pub fn verbatim(&mut self, text: &str) {
        match self.protocol {
            Protocol::Resp2 => self.bulk(text.as_bytes()),
            Protocol::Resp3 => {
                self.buf.put_u8(b'=');
                self.put_number(text.len() as i64 + 4);
                self.buf.put_slice(b"txt:");
                self.buf.put_slice(text.as_bytes());
                self.buf.put_slice(b"\r\n");
            }
        }
    }

    /// Bytes already encoded for this protocol (by another `ReplyWriter`).
    pub fn raw(&mut self, encoded: &[u8]) {
        self.buf.put_slice(encoded);
    }

    fn aggregate(&mut self, kind: u8, len: usize) {
        self.buf.put_u8(kind);
        self.put_number(len as i64);
    }

    fn put_number(&mut self, value: i64) {
        let mut digits = itoa::Buffer::new();
        self.buf.put_slice(digits.format(value).as_bytes());
        self.buf.put_slice(b"\r\n");
    }

    /// A status or error line; CR and LF would end the frame early, so they
    /// become spaces, as Redis does in `addReplyErrorLength`.
    fn put_line(&mut self, line: &[u8]) {
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            self.buf.extend(
                line.iter()
                    .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
        } else {
            self.buf.put_slice(line);
        }
        self.buf.put_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(protocol: Protocol, f: impl FnOnce(&mut ReplyWriter)) -> Vec<u8> {
        let mut buf = BytesMut::new();
        f(&mut ReplyWriter::new(&mut buf, protocol));
        buf.to_vec()
    }

    #[test]
    fn maps_and_nulls_follow_the_protocol() {
        let map = |w: &mut ReplyWriter| {
            w.map(1);
            w.bulk(b"k");
            w.null();
        };
        assert_eq!(encode(Protocol::Resp2, map), b"*2\r\n$1\r\nk\r\n$-1\r\n");
        assert_eq!(encode(Protocol::Resp3, map), b"%1\r\n$1\r\nk\r\n_\r\n");
        assert_eq!(
            encode(Protocol::Resp3, |w| w.verbatim("a")),
            b"=5\r\ntxt:a\r\n"
        );
        assert_eq!(
            encode(Protocol::Resp2, |w| w.error("ERR a\r\nb")),
            b"-ERR a  b\r\n"
        );
    }

    #[test]
    fn bulk_written_in_place_is_a_bulk_string_of_any_length() {
        for len in [0, 1, 9, 10, 99, 100, 999, 1000, 12345, 1_000_000] {
            let value: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let in_place = encode(Protocol::Resp3, |w| {
                w.int(7);
                w.bulk_with(|buf| buf.put_slice(&value));
                w.ok();
            });
            let copied = encode(Protocol::Resp3, |w| {
                w.int(7);
                w.bulk(&value);
                w.ok();
            });
            assert!(in_place == copied, "length {len}");
        }
    }
}
