//! Time: the deadlines every fixture waits with, polling instead of
//! sleeping ([`wait_until`], [`wait_until_async`]) and the wall clock in
//! the wire's milliseconds ([`now_ms`]).

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a sidecar or redis-server may take to become ready.
pub(super) const STARTUP_DEADLINE: Duration = Duration::from_secs(15);
/// Default bound on any single reply a test waits for.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `cond` every few milliseconds until it holds or `deadline` has
/// passed; returns whether it held. Use instead of sleeping.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Async twin of [`wait_until`].
pub async fn wait_until_async<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wall clock in milliseconds since the Unix epoch, as the wire uses.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after epoch")
        .as_millis() as i64
}
