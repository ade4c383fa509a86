//! Which event loop the calling thread runs.
//!
//! The server runs `--threads` event loops (`server::workers`); the
//! passthrough keeps its pools per loop, so that a forwarded command and its
//! reply never cross threads. This is the one fact both need to share.
//!
//! Layer 1 of 15 (the order is in `tests/layers.rs`). Uses nothing of the
//! crate; the server sets it, the proxy reads it.

use std::cell::Cell;

thread_local! {
    static LOOP: Cell<usize> = const { Cell::new(0) };
}

/// The event loop the calling thread runs (0 on any thread that is not a
/// worker's: the main thread, or a test's runtime).
pub fn current() -> usize {
    LOOP.with(Cell::get)
}

/// Marks the calling thread as event loop `index` (a worker thread, once,
/// when it starts).
pub fn enter(index: usize) {
    LOOP.with(|l| l.set(index));
}
