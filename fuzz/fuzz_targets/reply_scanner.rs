//! The upstream reply scanner the proxy relies on: any bytes from a server,
//! whole or in two pieces, find frame ends or a framing error, never a panic;
//! what it accepts can be viewed and split without one either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_sidecar::protocol::frame::{FrameScanner, FrameView, bulk_payload, split_aggregate};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let mut whole = FrameScanner::default();
    let whole_end = whole.next_frame(bytes);
    let mut pieces = FrameScanner::default();
    let cut = usize::from(split).min(bytes.len());
    let pieces_end = match pieces.next_frame(&bytes[..cut]) {
        Ok(Some(end)) => Ok(Some(end)),
        Ok(None) => pieces.next_frame(bytes),
        Err(error) => Err(error),
    };
    if let (Ok(Some(a)), Ok(Some(b))) = (&whole_end, &pieces_end) {
        assert_eq!(a, b, "the frame end depends on how the bytes arrive");
    }
    if let Ok(Some(end)) = whole_end {
        let frame = &bytes[..end];
        let _ = FrameView::new(frame).elements();
        let _ = bulk_payload(frame);
        let _ = split_aggregate(frame);
    }
});
