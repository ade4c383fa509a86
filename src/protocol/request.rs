//! Incremental parser for client requests: RESP multibulk arrays and inline commands.
//!
//! Clients only ever send arrays of bulk strings (or an inline line typed into
//! telnet), so this is a request parser, not a general RESP decoder, written on
//! the model of Redis's `processMultibulkBuffer`: it keeps its position across
//! reads, so a large request that arrives a few bytes at a time is scanned once,
//! not re-parsed from the start on every read; and it checks every length
//! against the configured limits when it reads the header, before buffering a
//! byte of the payload (a client announcing a 4 GB bulk string is refused at
//! once). Arguments are zero-copy slices of the read buffer.
//!
//! A request already whole in the buffer, as every request of a pipeline
//! but maybe the last of a read is, takes a shorter way (`take_whole`):
//! one pass over its headers, one split of the buffer, its arguments
//! slices of that. Anything else, or anything it does not plainly accept,
//! is left to the incremental parser, which words every error; a property
//! test and the fuzz target hold the two ways to the same requests.

use bytes::{Buf, Bytes, BytesMut};

/// Longest header line (`*<n>`, `$<n>`) or inline request accepted, as Redis's
/// `PROTO_INLINE_MAX_SIZE`.
const MAX_INLINE: usize = 64 * 1024;

/// Limits for unauthenticated clients when a password is required, as Redis.
const UNAUTHENTICATED_MAX_ARGS: usize = 10;
const UNAUTHENTICATED_MAX_BULK: usize = 16 * 1024;

/// Size limits enforced while parsing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string (`proto-max-bulk-len`).
    pub max_bulk_len: usize,
    /// Most arguments in one request.
    pub max_args: usize,
}

/// A request the client must be told is malformed; the connection closes after
/// the reply. The message follows `ERR Protocol error: ` on the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

#[derive(Debug, Default)]
enum State {
    /// Between requests.
    #[default]
    Idle,
    /// Inside a multibulk of which `remaining` arguments are still to come; `bulk`
    /// is the length of the next argument once its `$` header has been read.
    Multibulk {
        remaining: usize,
        bulk: Option<usize>,
    },
}

/// Parses requests out of a connection's read buffer, one at a time.
#[derive(Debug, Default)]
pub struct RequestParser {
    state: State,
}

impl RequestParser {
    /// Parses the next complete request from `buf` into `args` (cleared first).
    /// Returns `Ok(true)` with a request in `args`, `Ok(false)` when more bytes
    /// are needed (partial arguments stay in `args` until the next call), or a
    /// protocol error. `restricted` applies the limits of a client that has not
    /// authenticated yet.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        args: &mut Vec<Bytes>,
        limits: Limits,
        restricted: bool,
    ) -> Result<bool, ProtocolError> {
        let limits = if restricted {
            Limits {
                max_args: UNAUTHENTICATED_MAX_ARGS,
                max_bulk_len: UNAUTHENTICATED_MAX_BULK,
            }
        } else {
            limits
        };
        loop {
            match self.state {
                State::Idle => {
                    args.clear();
                    let Some(&first) = buf.first() else {
                        return Ok(false);
                    };
                    if first != b'*' {
                        if !parse_inline(buf, args)? {
                            return Ok(false);
                        }
                        if args.is_empty() {
                            // An empty line is skipped, as Redis does.
                            continue;
                        }
                        return Ok(true);
                    }
                    if take_whole(buf, args, limits) {
                        return Ok(true);
                    }
                    let Some(n) = read_header(buf, "too big mbulk count string")? else {
                        return Ok(false);
                    };
                    if n > limits.max_args as i64 {
                        return Err(ProtocolError(if restricted {
                            "unauthenticated multibulk length"
                        } else {
                            "invalid multibulk length"
                        }));
                    }
                    if n <= 0 {
                        // `*0` and `*-1` are empty requests, skipped as Redis does.
                        continue;
                    }
                    let n = n as usize;
                    // Reserve for the pointers only up to a sane bound: the
                    // client has not sent the arguments yet.
                    args.reserve(n.min(1024));
                    self.state = State::Multibulk {
                        remaining: n,
                        bulk: None,
                    };
                }
                State::Multibulk { remaining, bulk } => {
                    let len = match bulk {
                        Some(len) => len,
                        None => {
                            let Some(&first) = buf.first() else {
                                return Ok(false);
                            };
                            if first != b'$' {
                                self.state = State::Idle;
                                return Err(ProtocolError(expected_dollar(first)));
                            }
                            let Some(len) = read_header(buf, "too big bulk count string")? else {
                                return Ok(false);
                            };
                            if len < 0 || len > limits.max_bulk_len as i64 {
                                self.state = State::Idle;
                                return Err(ProtocolError(if restricted && len >= 0 {
                                    "unauthenticated bulk length"
                                } else {
                                    "invalid bulk length"
                                }));
                            }
                            let len = len as usize;
                            self.state = State::Multibulk {
                                remaining,
                                bulk: Some(len),
                            };
                            len
                        }
                    };
                    if buf.len() < len + 2 {
                        // Let the next read land in one allocation, but never
                        // trust a length the client has not paid for yet.
                        buf.reserve((len + 2 - buf.len()).min(1 << 20));
                        return Ok(false);
                    }
                    if &buf[len..len + 2] != b"\r\n" {
                        self.state = State::Idle;
                        return Err(ProtocolError("bulk string not terminated by CRLF"));
                    }
                    args.push(buf.split_to(len).freeze());
                    buf.advance(2);
                    if remaining == 1 {
                        self.state = State::Idle;
                        return Ok(true);
                    }
                    self.state = State::Multibulk {
                        remaining: remaining - 1,
                        bulk: None,
                    };
                }
            }
        }
    }
}

impl RequestParser {
    /// Whether the parser is between requests (holds no partial one).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }
}

/// The complete multibulk request at the front of `buf`, without consuming
/// it: its length and where its name is. None when it is not complete yet,
/// is inline, or breaks a limit: the [`RequestParser`] then takes it, and
/// refuses it if it must. For the proxy, which forwards a request's bytes
/// as they came.
pub fn complete_request(buf: &[u8], limits: Limits) -> Option<(usize, std::ops::Range<usize>)> {
    let mut name = 0..0;
    let length = scan_request(buf, limits, |i, arg| {
        if i == 0 {
            name = arg;
        }
    })?;
    Some((length, name))
}

/// Scans the complete multibulk request at the front of `buf` in one pass,
/// calling `arg` with each argument's index and place: its length, or None
/// as [`complete_request`] says.
fn scan_request(
    buf: &[u8],
    limits: Limits,
    mut arg: impl FnMut(usize, std::ops::Range<usize>),
) -> Option<usize> {
    // `<kind><digits>\r\n`, in one pass: a non-negative number without a
    // leading zero and of at most 18 digits (anything else is left to the
    // full parser, which words the error).
    fn number(buf: &[u8], at: usize, kind: u8) -> Option<(i64, usize)> {
        if buf.get(at) != Some(&kind) {
            return None;
        }
        let start = at + 1;
        let mut end = start;
        let mut value: i64 = 0;
        while let Some(&digit) = buf.get(end) {
            if !digit.is_ascii_digit() || end - start == 18 {
                break;
            }
            value = value * 10 + i64::from(digit - b'0');
            end += 1;
        }
        let leading_zero = buf.get(start) == Some(&b'0') && end - start > 1;
        if end == start || leading_zero || buf.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        Some((value, end + 2))
    }
    let (count, mut pos) = number(buf, 0, b'*')?;
    if count <= 0 || count as usize > limits.max_args {
        return None;
    }
    for i in 0..count as usize {
        let (len, start) = number(buf, pos, b'$')?;
        if len as usize > limits.max_bulk_len {
            return None;
        }
        let end = start + len as usize;
        if buf.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        arg(i, start..end);
        pos = end + 2;
    }
    Some(pos)
}

/// Most arguments a request may have to be taken by [`take_whole`].
const WHOLE_MAX_ARGS: usize = 16;

/// Takes the complete multibulk request at the front of `buf` at once, when
/// it is one (every request of a pipeline but maybe the last of a read):
/// one pass over its headers, one split of the buffer, and its arguments as
/// slices of that. False, with nothing consumed, when it is not complete
/// yet, has more than [`WHOLE_MAX_ARGS`] arguments or is not plainly well
/// formed: the incremental parser then takes it, and words any error.
fn take_whole(buf: &mut BytesMut, args: &mut Vec<Bytes>, limits: Limits) -> bool {
    let limits = Limits {
        max_args: limits.max_args.min(WHOLE_MAX_ARGS),
        ..limits
    };
    let mut places = [(0, 0); WHOLE_MAX_ARGS];
    let mut count = 0;
    let Some(length) = scan_request(buf, limits, |i, arg| {
        if let Some(place) = places.get_mut(i) {
            *place = (arg.start, arg.end);
        }
        count = i + 1;
    }) else {
        return false;
    };
    let request = buf.split_to(length).freeze();
    args.extend(
        places[..count]
            .iter()
            .map(|&(start, end)| request.slice(start..end)),
    );
    true
}

/// Redis's "expected '$', got 'X'", for every printable byte X (made once;
/// the error type holds static text).
fn expected_dollar(got: u8) -> &'static str {
    static TEXTS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        (0..=u8::MAX)
            .map(|b| format!("expected '$', got '{}'", char::from(b)))
            .collect()
    });
    if got.is_ascii_graphic() || got == b' ' {
        &TEXTS[usize::from(got)]
    } else {
        "expected '$', got something else"
    }
}

/// Reads a `*<n>\r\n` or `$<n>\r\n` header line, consuming it when complete.
fn read_header(buf: &mut BytesMut, too_big: &'static str) -> Result<Option<i64>, ProtocolError> {
    let Some(end) = find_crlf(buf) else {
        if buf.len() > MAX_INLINE {
            return Err(ProtocolError(too_big));
        }
        return Ok(None);
    };
    let value = parse_i64(&buf[1..end]).ok_or(if buf[0] == b'*' {
        ProtocolError("invalid multibulk length")
    } else {
        ProtocolError("invalid bulk length")
    })?;
    buf.advance(end + 2);
    Ok(Some(value))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    let limit = buf.len().min(MAX_INLINE + 2);
    buf[..limit].windows(2).position(|w| w == b"\r\n")
}

/// Parses a decimal integer the way Redis's `string2ll` does: digits only
/// (a leading `-` aside), no leading zeros (`0` itself aside, and not `-0`),
/// no overflow.
pub fn parse_i64(digits: &[u8]) -> Option<i64> {
    if digits == b"0" {
        return Some(0);
    }
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 || digits[0] == b'0' {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        value = if negative {
            value.checked_mul(10)?.checked_sub(digit)?
        } else {
            value.checked_mul(10)?.checked_add(digit)?
        };
    }
    Some(value)
}

/// Parses one inline request (a line of space-separated words, with Redis's
/// quoting rules), as typed into telnet or nc. `Ok(false)` when the line is not
/// complete yet.
fn parse_inline(buf: &mut BytesMut, args: &mut Vec<Bytes>) -> Result<bool, ProtocolError> {
    let Some(newline) = buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
        if buf.len() > MAX_INLINE {
            return Err(ProtocolError("too big inline request"));
        }
        return Ok(false);
    };
    let line = buf.split_to(newline + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    split_args(line, args)?;
    Ok(true)
}

/// Redis's `sdssplitargs`: words separated by spaces; "double quotes" with
/// backslash escapes (\n, \r, \t, \b, \a, \xHH, \\, \") and 'single quotes'
/// (only \' escaped). A closing quote must be followed by a space or the end.
fn split_args(line: &[u8], args: &mut Vec<Bytes>) -> Result<(), ProtocolError> {
    const UNBALANCED: ProtocolError = ProtocolError("unbalanced quotes in request");
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Ok(());
        }
        let mut word = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            if in_double {
                let Some(&c) = line.get(i) else {
                    return Err(UNBALANCED);
                };
                if c == b'\\'
                    && i + 3 < line.len()
                    && line[i + 1] == b'x'
                    && let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3]))
                {
                    word.push(h * 16 + l);
                    i += 4;
                    continue;
                }
                if c == b'\\' && i + 1 < line.len() {
                    word.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    i = after_closing_quote(line, i)?;
                    break;
                }
                word.push(c);
                i += 1;
            } else if in_single {
                let Some(&c) = line.get(i) else {
                    return Err(UNBALANCED);
                };
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    word.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    i = after_closing_quote(line, i)?;
                    break;
                }
                word.push(c);
                i += 1;
            } else {
                match line.get(i) {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(&c) => word.push(c),
                }
                i += 1;
            }
        }
        args.push(Bytes::from(word));
    }
}

/// The position after a closing quote at `i`, which must end the word.
fn after_closing_quote(line: &[u8], i: usize) -> Result<usize, ProtocolError> {
    if line.get(i + 1).is_some_and(|c| !c.is_ascii_whitespace()) {
        return Err(ProtocolError("unbalanced quotes in request"));
    }
    Ok(i + 1)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bulk_len: 1024,
        max_args: 8,
    };

    #[test]
    fn complete_requests_are_found_without_being_consumed() {
        let request = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        assert_eq!(complete_request(request, LIMITS), Some((20, 8..11)));
        for cut in 0..20 {
            assert_eq!(complete_request(&request[..cut], LIMITS), None, "cut {cut}");
        }
        // Inline, empty, over a limit or malformed: left to the parser.
        assert_eq!(complete_request(b"GET k\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*0\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*9\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*1\r\n$2000\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*1\r\n$1\r\nabc\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*1\r\n$-1\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*1\r\n$04\r\nPING\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*01\r\n$4\r\nPING\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*1 \r\n$4\r\nPING\r\n", LIMITS), None);
        assert_eq!(complete_request(b"*1\r\n$4x\r\nPING\r\n", LIMITS), None);
        let huge = b"*1\r\n$1000000000000000000\r\n";
        assert_eq!(complete_request(huge, LIMITS), None);
        let wide = Limits {
            max_bulk_len: usize::MAX,
            max_args: usize::MAX,
        };
        assert_eq!(
            complete_request(b"*1\r\n$0\r\n\r\n", wide),
            Some((10, 8..8))
        );
        // More digits than any length has: left to the parser.
        assert_eq!(
            complete_request(b"*1\r\n$1234567890123456789\r\n", wide),
            None
        );
    }

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::from(input);
        let mut args = Vec::new();
        let mut out = Vec::new();
        while parser.parse(&mut buf, &mut args, LIMITS, false)? {
            out.push(args.clone());
        }
        Ok(out)
    }

    #[test]
    fn multibulk_and_inline() {
        let got = parse_all(
            b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n\r\nPING\r\nset \"a b\" 'c\\'d' \"\\x41\\n\"\r\n",
        )
        .unwrap();
        assert_eq!(got[0], vec![Bytes::from("ECHO"), Bytes::from("hi")]);
        assert_eq!(got[1], vec![Bytes::from("PING")]);
        assert_eq!(
            got[2],
            vec![
                Bytes::from("set"),
                Bytes::from("a b"),
                Bytes::from("c'd"),
                Bytes::from("A\n")
            ]
        );
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut args = Vec::new();
        let mut done = 0;
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            if parser.parse(&mut buf, &mut args, LIMITS, false).unwrap() {
                done += 1;
                assert_eq!(args[2], Bytes::from("value"));
            }
        }
        assert_eq!(done, 1);
    }

    #[test]
    fn limits_are_checked_at_the_header() {
        assert_eq!(
            parse_all(b"*1\r\n$4294967296\r\n"),
            Err(ProtocolError("invalid bulk length"))
        );
        assert_eq!(
            parse_all(b"*9\r\n"),
            Err(ProtocolError("invalid multibulk length"))
        );
        assert_eq!(
            parse_all(b"*x\r\n"),
            Err(ProtocolError("invalid multibulk length"))
        );
        assert_eq!(
            parse_all(b"*1\r\n:1\r\n"),
            Err(ProtocolError("expected '$', got ':'"))
        );
        assert_eq!(
            parse_all(b"set \"a\r\n"),
            Err(ProtocolError("unbalanced quotes in request"))
        );
        assert_eq!(
            parse_all(b"*1\r\n$1\r\nabc\r\n"),
            Err(ProtocolError("bulk string not terminated by CRLF"))
        );
    }

    #[test]
    fn integers() {
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"05"), None);
        assert_eq!(parse_i64(b"-0"), None);
    }

    /// Parses `chunks` fed one after another, as the fuzz target does:
    /// every request, or the error that ended them.
    fn parse_chunks(chunks: &[&[u8]], restricted: bool) -> Vec<Result<Vec<Bytes>, ProtocolError>> {
        let limits = Limits {
            max_bulk_len: 64,
            max_args: 20,
        };
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut args = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match parser.parse(&mut buf, &mut args, limits, restricted) {
                    Ok(true) => out.push(Ok(args.clone())),
                    Ok(false) => break,
                    Err(error) => {
                        out.push(Err(error));
                        return out;
                    }
                }
            }
        }
        out
    }

    fn encode(requests: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for request in requests {
            bytes.extend_from_slice(format!("*{}\r\n", request.len()).as_bytes());
            for arg in request {
                bytes.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                bytes.extend_from_slice(arg);
                bytes.extend_from_slice(b"\r\n");
            }
        }
        bytes
    }

    proptest::proptest! {
        /// Requests come out as they were sent, whole (the one-pass path
        /// for all but requests with more arguments than it takes) or in
        /// two pieces (the incremental path for the request cut).
        #[test]
        fn requests_come_out_as_sent_however_they_arrive(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..70), 1..22),
                1..6,
            ),
            cut in 0usize..4096,
            restricted: bool,
        ) {
            let bytes = encode(&requests);
            let cut = cut.min(bytes.len());
            let whole = parse_chunks(&[&bytes], restricted);
            let pieces = parse_chunks(&[&bytes[..cut], &bytes[cut..]], restricted);
            proptest::prop_assert_eq!(&whole, &pieces);
            let (max_args, max_bulk) = match restricted {
                true => (UNAUTHENTICATED_MAX_ARGS, UNAUTHENTICATED_MAX_BULK),
                false => (20, 64),
            };
            for (got, sent) in whole.iter().zip(&requests) {
                if sent.len() > max_args || sent.iter().any(|a| a.len() > max_bulk) {
                    proptest::prop_assert!(got.is_err());
                    break;
                }
                let sent: Vec<Bytes> = sent.iter().map(|a| Bytes::copy_from_slice(a)).collect();
                proptest::prop_assert_eq!(got, &Ok(sent));
            }
        }

        /// Any bytes: the same requests and error, whole or in two pieces.
        #[test]
        fn any_bytes_parse_the_same_whole_or_in_pieces(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b"*$\r\n0123456789-".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..200,
            ),
            cut in 0usize..200,
            restricted: bool,
        ) {
            let cut = cut.min(bytes.len());
            let whole = parse_chunks(&[&bytes], restricted);
            let pieces = parse_chunks(&[&bytes[..cut], &bytes[cut..]], restricted);
            proptest::prop_assert_eq!(whole, pieces);
        }
    }
}
