//! Giving memory back after a wave of connections closed.
//!
//! Each connection's state is freed when it closes, and its buffers while it
//! waits, but glibc keeps freed pages in its per-thread arenas: 5,000 idle
//! connections that closed left 12 MB resident until `malloc_trim` returned
//! it (7.9 MB after, from 19.4 MB), and 5,000 clients sending at once leave
//! their buffers' pages resident though the clients are idle again (12 KB
//! per connection instead of 3.3 KB). So the arenas are trimmed when the
//! client count has fallen by `TRIM_AFTER` from its peak of the last
//! period, or when they hold more than `TRIM_FREE` bytes free (glibc
//! only; other allocators return memory on their own terms). At 16 MB
//! free, 5,000 clients that had each sent a `PING` at once sometimes left
//! about 20 MB of freed buffers under the mark and 5.1 KB resident per
//! connection; at 4 MB, 3.3 KB in every run.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::node::Node;

/// Clients gone since the peak of the last period that are worth a trim.
const TRIM_AFTER: usize = 256;
/// Free bytes in the arenas worth a trim.
const TRIM_FREE: usize = 4 << 20;
/// How often the client count is looked at.
const EVERY: Duration = Duration::from_secs(5);

/// Trims the allocator's arenas after many clients went, until `stop`.
pub async fn give_back_after_disconnects(node: Arc<Node>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let peak = node.clients.take_peak();
        let now = node.clients.len();
        let free = free_in_arenas();
        if peak.saturating_sub(now) >= TRIM_AFTER || free > TRIM_FREE {
            trim();
            tracing::debug!(gone = peak - now, free, "returned freed memory to the OS");
            node.metrics.memory_trims.inc();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointer and may be called at any time
    // from any thread; it only releases free memory at the arenas' ends.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator holds free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn free_in_arenas() -> usize {
    // SAFETY: mallinfo2 takes nothing and returns a plain struct of counts.
    unsafe { libc::mallinfo2() }.fordblks
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_in_arenas() -> usize {
    0
}
