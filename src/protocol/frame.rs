//! Where replies end: framing of a server's RESP2/RESP3 output without
//! decoding it, for the proxy, which forwards replies byte for byte.
//!
//! [`FrameScanner`] walks a read buffer element by element, keeping its place
//! across reads (the open aggregates are a stack of element counts), so a
//! large reply that arrives in many reads is scanned once. Bulk payloads are
//! skipped by their length, never looked at.

/// Longest header or simple line accepted from a server.
const MAX_LINE: usize = 64 * 1024;

/// The server sent something that is not RESP: the connection is unusable.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

/// Finds the ends of complete top-level frames in a buffer, incrementally.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Bytes of the buffer already scanned (from its start).
    pos: usize,
    /// Elements still to come in each open aggregate, innermost last.
    open: Vec<u64>,
}

impl FrameScanner {
    /// Scans on from where the last call stopped. Returns the end offset of
    /// the next complete frame (its start is the previous frame's end, or 0),
    /// or None when the buffer ends inside a frame.
    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        loop {
            let Some((header_end, kind, value)) = header(&buf[self.pos..])? else {
                return Ok(None);
            };
            let element_end = match kind {
                b'$' | b'=' | b'!' if value >= 0 => {
                    let end = usize::try_from(value)
                        .ok()
                        .and_then(|len| (self.pos + header_end).checked_add(len)?.checked_add(2))
                        .ok_or(FrameError("invalid length"))?;
                    if buf.len() < end {
                        return Ok(None);
                    }
                    end
                }
                b'*' | b'~' | b'>' | b'%' | b'|' if value > 0 => {
                    let count = value as u64;
                    let elements = match kind {
                        b'%' => count.checked_mul(2),
                        // An attribute map comes before the value it describes:
                        // both make one element.
                        b'|' => count.checked_mul(2).and_then(|n| n.checked_add(1)),
                        _ => Some(count),
                    }
                    .ok_or(FrameError("invalid length"))?;
                    self.pos += header_end;
                    self.open.push(elements);
                    continue;
                }
                _ => self.pos + header_end,
            };
            self.pos = element_end;
            // One element is complete: close the aggregates it completes.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(remaining) => {
                        *remaining -= 1;
                        if *remaining > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }

    /// The buffer lost its first `n` bytes (frames handed on).
    pub fn consumed(&mut self, n: usize) {
        self.pos -= n;
    }

    /// Forgets everything (the connection was replaced).
    pub fn reset(&mut self) {
        *self = FrameScanner::default();
    }
}

/// One header or line: its length with CRLF, its type byte and its number
/// (the length or count; 0 for types without one). None when incomplete.
fn header(buf: &[u8]) -> Result<Option<(usize, u8, i64)>, FrameError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let counted = match kind {
        b'$' | b'=' | b'!' | b'*' | b'~' | b'>' | b'%' | b'|' => true,
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => false,
        // Known at the first byte: no need to wait for a line end.
        _ => return Err(FrameError("unknown type byte")),
    };
    let limit = buf.len().min(MAX_LINE);
    // The line ends after its type byte.
    let Some(cr) = memchr_crlf(&buf[1..limit]).map(|at| at + 1) else {
        if buf.len() > MAX_LINE {
            return Err(FrameError("line too long"));
        }
        return Ok(None);
    };
    let line = &buf[1..cr];
    let value = if counted {
        super::parse_i64(line).ok_or(FrameError("invalid length"))?
    } else {
        0
    };
    Ok(Some((cr + 2, kind, value)))
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A look inside one complete frame, for the few replies the proxy must
/// understand (pub/sub confirmations and messages).
pub struct FrameView<'a> {
    /// The type byte (`*`, `>`, `+`, `-`...).
    pub kind: u8,
    frame: &'a [u8],
}

impl<'a> FrameView<'a> {
    pub fn new(frame: &'a [u8]) -> FrameView<'a> {
        FrameView {
            kind: frame.first().copied().unwrap_or(0),
            frame,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self.kind, b'-' | b'!')
    }

    /// The elements of a flat array or push of strings and integers: bulk
    /// strings as bytes, integers as their digits. None for anything else.
    pub fn elements(&self) -> Option<Vec<Element<'a>>> {
        if !matches!(self.kind, b'*' | b'>') {
            return None;
        }
        let (mut pos, _, count) = header(self.frame).ok()??;
        let mut elements = Vec::with_capacity(usize::try_from(count).ok()?.min(8));
        for _ in 0..count {
            let (len, kind, value) = header(self.frame.get(pos..)?).ok()??;
            let line = self.frame.get(pos + 1..pos + len - 2)?;
            match kind {
                b'$' if value >= 0 => {
                    let start = pos + len;
                    let end = start.checked_add(usize::try_from(value).ok()?)?;
                    elements.push(Element::Bulk(self.frame.get(start..end)?));
                    pos = end + 2;
                }
                b':' => {
                    elements.push(Element::Int(super::parse_i64(line)?));
                    pos += len;
                }
                b'$' | b'_' => {
                    elements.push(Element::Null);
                    pos += len;
                }
                _ => return None,
            }
        }
        Some(elements)
    }
}

/// The payload of a complete bulk string reply (`$n\r\n...\r\n`); None for
/// anything else.
pub fn bulk_payload(reply: &[u8]) -> Option<&[u8]> {
    let (start, kind, len) = header(reply).ok()??;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    let payload = reply.get(start..end).filter(|_| kind == b'$')?;
    (reply.get(end..) == Some(&b"\r\n"[..])).then_some(payload)
}

/// The elements of a complete aggregate reply (`*`, `%`, `~`; a map's keys
/// and values one after the other), each as the bytes of its frame; with
/// its type byte. None for anything else or anything malformed.
pub fn split_aggregate(reply: &[u8]) -> Option<(u8, Vec<bytes::Bytes>)> {
    let kind = *reply.first()?;
    if !matches!(kind, b'*' | b'%' | b'~') {
        return None;
    }
    let (mut pos, _, count) = header(reply).ok()??;
    let count = usize::try_from(count)
        .ok()?
        .checked_mul(if kind == b'%' { 2 } else { 1 })?;
    let mut elements = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let rest = reply.get(pos..)?;
        let mut scanner = FrameScanner::default();
        let end = scanner.next_frame(rest).ok()??;
        elements.push(bytes::Bytes::copy_from_slice(&rest[..end]));
        pos += end;
    }
    (pos == reply.len()).then_some((kind, elements))
}

/// One element of a [`FrameView`].
#[derive(Debug, PartialEq, Eq)]
pub enum Element<'a> {
    Bulk(&'a [u8]),
    Int(i64),
    Null,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(buf: &[u8]) -> Vec<usize> {
        let mut scanner = FrameScanner::default();
        let mut ends = Vec::new();
        while let Some(end) = scanner.next_frame(buf).unwrap() {
            ends.push(end);
        }
        ends
    }

    #[test]
    fn finds_the_end_of_every_kind_of_reply() {
        let buf = b"+OK\r\n-ERR x\r\n:1\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:2\r\n*-1\r\n*0\r\n%1\r\n+k\r\n,1.5\r\n_\r\n#t\r\n(123\r\n=7\r\ntxt:abc\r\n>2\r\n+a\r\n+b\r\n|1\r\n+a\r\n+b\r\n:5\r\n~1\r\n+x\r\n";
        assert_eq!(frames(buf).len(), 16);
        assert_eq!(*frames(buf).last().unwrap(), buf.len());
    }

    #[test]
    fn bulk_payloads_are_found_in_whole_bulk_strings_only() {
        assert_eq!(bulk_payload(b"$3\r\nabc\r\n"), Some(&b"abc"[..]));
        assert_eq!(bulk_payload(b"$0\r\n\r\n"), Some(&b""[..]));
        assert_eq!(bulk_payload(b"$3\r\nab"), None);
        assert_eq!(bulk_payload(b"$3\r\nabcd\r\n"), None);
        assert_eq!(bulk_payload(b"$-1\r\n"), None);
        assert_eq!(bulk_payload(b"+OK\r\n"), None);
        assert_eq!(bulk_payload(b"$99999999999999999999\r\n"), None);
    }

    #[test]
    fn aggregates_split_into_their_elements() {
        let (kind, elements) = split_aggregate(b"*3\r\n$1\r\na\r\n*1\r\n:2\r\n_\r\n").unwrap();
        assert_eq!(kind, b'*');
        assert_eq!(elements, [&b"$1\r\na\r\n"[..], b"*1\r\n:2\r\n", b"_\r\n"]);
        let (kind, elements) = split_aggregate(b"%1\r\n+k\r\n:1\r\n").unwrap();
        assert_eq!((kind, elements.len()), (b'%', 2));
        // Short, long, or not an aggregate.
        assert!(split_aggregate(b"*2\r\n:1\r\n").is_none());
        assert!(split_aggregate(b"*1\r\n:1\r\n:2\r\n").is_none());
        assert!(split_aggregate(b"-ERR x\r\n").is_none());
        assert!(split_aggregate(b"*-1\r\n").is_none());
        assert!(split_aggregate(b"").is_none());
    }

    #[test]
    fn resumes_where_a_partial_frame_stopped() {
        let buf = b"*3\r\n$5\r\nhello\r\n*2\r\n:1\r\n:2\r\n$3\r\nend\r\n+OK\r\n";
        let mut scanner = FrameScanner::default();
        for cut in 0..buf.len() - 5 {
            assert_eq!(scanner.next_frame(&buf[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(scanner.next_frame(buf).unwrap(), Some(buf.len() - 5));
        assert_eq!(scanner.next_frame(buf).unwrap(), Some(buf.len()));
    }

    #[test]
    fn refuses_what_is_not_resp() {
        let mut scanner = FrameScanner::default();
        assert!(scanner.next_frame(b"hello\r\n").is_err());
        // A reply that starts with CRLF (once a panic that wedged the pool).
        assert!(FrameScanner::default().next_frame(b"\r\n").is_err());
        assert!(FrameScanner::default().next_frame(b"\r\n+OK\r\n").is_err());
        // Lengths and counts past what fits: a huge length waits (the
        // proxy's reply timeout bounds that), a count that overflows is
        // refused; neither panics.
        assert_eq!(
            FrameScanner::default().next_frame(b"$9223372036854775807\r\n"),
            Ok(None)
        );
        assert_eq!(
            FrameScanner::default().next_frame(b"%9223372036854775807\r\n"),
            Ok(None)
        );
        assert!(
            FrameScanner::default()
                .next_frame(b"$99999999999999999999\r\n")
                .is_err()
        );
    }

    proptest::proptest! {
        /// No byte sequence from an upstream panics the scanner, whole or
        /// in any two pieces, nor a view of what it accepts.
        #[test]
        fn any_bytes_scan_without_panicking(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            split in 0usize..64,
        ) {
            let mut scanner = FrameScanner::default();
            let cut = split.min(bytes.len());
            if scanner.next_frame(&bytes[..cut]).is_ok()
                && let Ok(Some(end)) = scanner.next_frame(&bytes)
            {
                let _ = FrameView::new(&bytes[..end]).elements();
            }
        }

        /// Bytes made of RESP's own pieces reach deeper than random ones.
        #[test]
        fn resp_shaped_bytes_scan_without_panicking(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    &b"*"[..], b"$", b"%", b"|", b">", b"~", b":", b"+", b"-", b"_",
                    b"\r\n", b"\r", b"\n", b"0", b"1", b"2", b"-1", b"9999999999999999999", b"x",
                ]),
                0..24,
            ),
        ) {
            let bytes: Vec<u8> = pieces.concat();
            let mut scanner = FrameScanner::default();
            if let Ok(Some(end)) = scanner.next_frame(&bytes) {
                let _ = FrameView::new(&bytes[..end]).elements();
            }
        }
    }

    #[test]
    fn views_a_push() {
        let frame = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        let view = FrameView::new(frame);
        assert_eq!(
            view.elements().unwrap(),
            [
                Element::Bulk(b"subscribe"),
                Element::Bulk(b"ch"),
                Element::Int(1)
            ]
        );
    }
}
