//! Which event loop the calling thread runs, and what it does before it
//! sleeps.
//!
//! The server runs `--threads` event loops (`server::workers`); the
//! passthrough keeps its pools per loop, so that a forwarded command and its
//! reply never cross threads. That is the first fact the server and the
//! proxy share.
//!
//! The second: replies are written when the loop runs out of work, as
//! Redis writes them in `beforeSleep` (`handleClientsWithPendingWrites`),
//! not as each client's commands end. A write that wakes a client which
//! went to sleep costs the writer the wake-up (an inter-processor interrupt,
//! a VM exit on a virtual machine); written in one burst, the replies to
//! the clients served in one pass of the loop pay it about once, not once
//! each. Measured at `-P 16` with 50 clients, the sidecar spent a quarter
//! of its CPU in those wake-ups when it wrote client by client (the
//! README's "How it is built" has the figures).
//!
//! Layer 1 of 15 (the order is in `tests/layers.rs`). Uses nothing of the
//! crate; the server sets it, the proxy reads it.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

thread_local! {
    static LOOP: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread's runtime runs [`before_sleep`] when it parks.
    static HOOKED: Cell<bool> = const { Cell::new(false) };
    static PENDING: RefCell<Vec<Arc<dyn BeforeSleep>>> = const { RefCell::new(Vec::new()) };
}

/// Work left for the moment the loop runs out of tasks (a client's
/// replies, written then).
pub trait BeforeSleep: Send + Sync {
    /// Runs on the loop's thread, within its runtime, before it parks;
    /// must not block.
    fn before_sleep(&self);
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

/// A current-thread runtime for event loop `index`, whose thread runs what
/// was left for [`before_sleep`] each time it runs out of tasks. Call
/// [`enter`] on the thread that runs it.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(before_sleep)
        .build()
}

/// Marks the calling thread as running a runtime from [`runtime`]: work
/// may be left for its sleep.
pub fn hooked() {
    HOOKED.with(|h| h.set(true));
}

/// Whether work left with [`later`] on this thread will run (it runs a
/// runtime from [`runtime`] and called [`hooked`]).
pub fn defers() -> bool {
    HOOKED.with(Cell::get)
}

/// Leaves `work` for the loop's next sleep. Only where [`defers`].
pub fn later(work: Arc<dyn BeforeSleep>) {
    PENDING.with(|p| p.borrow_mut().push(work));
}

/// Runs the work left for this sleep: the runtime's park hook.
pub fn before_sleep() {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    for work in &pending {
        work.before_sleep();
    }
    // Keep the list's room for the next pass: it is as long as the number
    // of clients served in one.
    PENDING.with(|p| {
        let mut list = p.borrow_mut();
        if list.is_empty() {
            let mut pending = pending;
            pending.clear();
            *list = pending;
        }
    });
}
