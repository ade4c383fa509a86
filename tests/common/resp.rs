//! The raw RESP test client, for byte-exact wire assertions: [`Resp`] (one
//! RESP2/RESP3 reply exactly as it appeared on the wire), [`parse_resp`],
//! [`encode_cmd`] and [`RawConn`] (a plain TCP connection that sends bytes
//! or commands and reads replies, raw bytes or the close).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::polling::REPLY_TIMEOUT;

/// One RESP2/RESP3 reply exactly as it appeared on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    /// `+...`
    Simple(String),
    /// `-...` (the whole line after the dash)
    Error(String),
    /// `:...`
    Int(i64),
    /// `$n` with data
    Bulk(Vec<u8>),
    /// `$-1`
    NullBulk,
    /// `*-1`
    NullArray,
    /// `*n`
    Array(Vec<Resp>),
    /// RESP3 `_`
    Null,
    /// RESP3 `#t` / `#f`
    Bool(bool),
    /// RESP3 `,`
    Double(String),
    /// RESP3 `(`
    BigNumber(String),
    /// RESP3 `!n`
    BlobError(Vec<u8>),
    /// RESP3 `=n` (format prefix included)
    Verbatim(Vec<u8>),
    /// RESP3 `%n`
    Map(Vec<(Resp, Resp)>),
    /// RESP3 `~n`
    Set(Vec<Resp>),
    /// RESP3 `|n` (the attribute map; the reply it annotates follows)
    Attribute(Vec<(Resp, Resp)>),
    /// RESP3 `>n`
    Push(Vec<Resp>),
}

impl Resp {
    /// Bulk string shorthand.
    pub fn bulk(s: impl AsRef<[u8]>) -> Resp {
        Resp::Bulk(s.as_ref().to_vec())
    }

    /// Array of bulk strings shorthand.
    pub fn bulks(items: &[&str]) -> Resp {
        Resp::Array(items.iter().map(Resp::bulk).collect())
    }

    /// The text of a bulk, simple or verbatim string.
    #[track_caller]
    pub fn text(&self) -> String {
        match self {
            Resp::Bulk(b) | Resp::Verbatim(b) => String::from_utf8_lossy(b).into_owned(),
            Resp::Simple(s) => s.clone(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }
}

/// Parses one reply from the front of `buf`: Ok(None) when incomplete.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
        let rest = buf.get(pos..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((&rest[..end], pos + end + 2))
    }
    fn num(b: &[u8]) -> Result<i64, String> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(b)))
    }
    fn blob(buf: &[u8], pos: usize, len: i64) -> Result<Option<(Vec<u8>, usize)>, String> {
        let len = usize::try_from(len).map_err(|_| format!("bad length {len}"))?;
        if buf.len() < pos + len + 2 {
            return Ok(None);
        }
        if &buf[pos + len..pos + len + 2] != b"\r\n" {
            return Err("blob not terminated by CRLF".into());
        }
        Ok(Some((buf[pos..pos + len].to_vec(), pos + len + 2)))
    }
    fn items(buf: &[u8], mut pos: usize, n: i64) -> Result<Option<(Vec<Resp>, usize)>, String> {
        let mut out = Vec::new();
        for _ in 0..n {
            match at(buf, pos)? {
                Some((v, next)) => {
                    out.push(v);
                    pos = next;
                }
                None => return Ok(None),
            }
        }
        Ok(Some((out, pos)))
    }
    fn pairs(items: Vec<Resp>) -> Vec<(Resp, Resp)> {
        let mut it = items.into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        out
    }
    fn at(buf: &[u8], pos: usize) -> Result<Option<(Resp, usize)>, String> {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some((head, next)) = line(buf, pos + 1) else {
            return Ok(None);
        };
        let s = || String::from_utf8_lossy(head).into_owned();
        Ok(match kind {
            b'+' => Some((Resp::Simple(s()), next)),
            b'-' => Some((Resp::Error(s()), next)),
            b':' => Some((Resp::Int(num(head)?), next)),
            b'_' => Some((Resp::Null, next)),
            b'#' => Some((Resp::Bool(head == b"t"), next)),
            b',' => Some((Resp::Double(s()), next)),
            b'(' => Some((Resp::BigNumber(s()), next)),
            b'$' | b'!' | b'=' => {
                let n = num(head)?;
                if n == -1 && kind == b'$' {
                    Some((Resp::NullBulk, next))
                } else {
                    blob(buf, next, n)?.map(|(data, end)| {
                        let v = match kind {
                            b'$' => Resp::Bulk(data),
                            b'!' => Resp::BlobError(data),
                            _ => Resp::Verbatim(data),
                        };
                        (v, end)
                    })
                }
            }
            b'*' | b'~' | b'>' => {
                let n = num(head)?;
                if n == -1 && kind == b'*' {
                    Some((Resp::NullArray, next))
                } else {
                    items(buf, next, n)?.map(|(v, end)| {
                        let v = match kind {
                            b'*' => Resp::Array(v),
                            b'~' => Resp::Set(v),
                            _ => Resp::Push(v),
                        };
                        (v, end)
                    })
                }
            }
            b'%' | b'|' => {
                let n = num(head)?;
                items(buf, next, n * 2)?.map(|(v, end)| {
                    let v = if kind == b'%' {
                        Resp::Map(pairs(v))
                    } else {
                        Resp::Attribute(pairs(v))
                    };
                    (v, end)
                })
            }
            other => return Err(format!("unknown RESP type byte {:?}", other as char)),
        })
    }
    at(buf, 0)
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Why a raw read ended without a reply.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    /// Nothing complete arrived in time.
    Timeout,
    /// The peer closed (EOF or reset).
    Closed,
}

/// A raw TCP connection to a RESP server, for byte-exact tests.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`; errors are returned (the server may have closed).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes a command as a RESP array; panics on I/O error.
    pub fn send_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.send(&encode_cmd(args)).expect("write command");
    }

    /// Sends a command and waits for its reply.
    #[track_caller]
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Resp {
        self.send_cmd(args);
        self.read_reply()
    }

    /// Reads one reply within [`REPLY_TIMEOUT`]; panics on timeout or close.
    #[track_caller]
    pub fn read_reply(&mut self) -> Resp {
        self.read_reply_within(REPLY_TIMEOUT)
    }

    /// Reads one reply within `timeout`; panics on timeout or close.
    #[track_caller]
    pub fn read_reply_within(&mut self, timeout: Duration) -> Resp {
        match self.try_read_reply(timeout) {
            Ok(v) => v,
            Err(end) => panic!(
                "no reply ({end:?}); buffered bytes: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads one reply, or says why none came within `timeout`.
    pub fn try_read_reply(&mut self, timeout: Duration) -> Result<Resp, ReadEnd> {
        let end = Instant::now() + timeout;
        loop {
            match parse_resp(&self.buf) {
                Ok(Some((v, used))) => {
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Ok(None) => {}
                Err(e) => panic!(
                    "unparseable reply ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
            self.fill(end)?;
        }
    }

    /// Reads exactly `expected.len()` bytes and asserts they equal `expected`.
    #[track_caller]
    pub fn expect_bytes(&mut self, expected: &[u8]) {
        let end = Instant::now() + REPLY_TIMEOUT;
        while self.buf.len() < expected.len() {
            if let Err(why) = self.fill(end) {
                panic!(
                    "wanted {:?}, got {:?} then {why:?}",
                    String::from_utf8_lossy(expected),
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
        let got: Vec<u8> = self.buf.drain(..expected.len()).collect();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "raw bytes differ"
        );
    }

    /// Reads until the peer closes or `timeout` passes; returns the bytes
    /// received and whether the connection was closed.
    pub fn read_until_closed(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let end = Instant::now() + timeout;
        loop {
            match self.fill(end) {
                Ok(()) => {}
                Err(ReadEnd::Closed) => return (std::mem::take(&mut self.buf), true),
                Err(ReadEnd::Timeout) => return (std::mem::take(&mut self.buf), false),
            }
        }
    }

    /// Asserts that the server sends exactly `expected` and then closes.
    #[track_caller]
    pub fn expect_reply_then_close(&mut self, expected: &[u8]) {
        let (got, closed) = self.read_until_closed(REPLY_TIMEOUT);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "reply before close"
        );
        assert!(closed, "connection was not closed after {expected:?}");
    }

    /// Reads more bytes into the buffer before `end`.
    fn fill(&mut self, end: Instant) -> Result<(), ReadEnd> {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Timeout);
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadEnd::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadEnd::Timeout)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(_) => Err(ReadEnd::Closed),
        }
    }
}
