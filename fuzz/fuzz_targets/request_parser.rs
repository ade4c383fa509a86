//! The client request parser: any bytes, fed whole and then in two pieces,
//! parse or fail with a protocol error, never panic, and both ways agree.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use session_sidecar::protocol::{Limits, RequestParser};

fn parse_all(
    chunks: &[&[u8]],
    limits: Limits,
    restricted: bool,
) -> Vec<Result<Vec<Vec<u8>>, String>> {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::new();
    let mut args = Vec::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parser.parse(&mut buf, &mut args, limits, restricted) {
                Ok(true) => out.push(Ok(args.iter().map(|a| a.to_vec()).collect())),
                Ok(false) => break,
                Err(error) => {
                    out.push(Err(format!("{error:?}")));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_bulk_len: 1 << 20,
        max_args: 1024,
    };
    let restricted = split & 1 == 1;
    let whole = parse_all(&[bytes], limits, restricted);
    let cut = usize::from(split).min(bytes.len());
    let pieces = parse_all(&[&bytes[..cut], &bytes[cut..]], limits, restricted);
    assert_eq!(whole, pieces, "parsing depends on how the bytes arrive");
});
