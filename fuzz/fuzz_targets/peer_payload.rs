//! The portable form of a session that peers send in SESSION.IMPORT: any
//! bytes decode or are refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_sidecar::store::SessionLimits;
use session_sidecar::store::transfer::decode;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data, &SessionLimits::default());
});
