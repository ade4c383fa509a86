//! A fleet: one redis-server on a free port and two write-through sidecars
//! (`node-a`, `node-b`) on it, each test with its own.

use std::ops::Deref;
use std::time::Duration;

use crate::common::*;

/// Node id of sidecar A (the one the contract checks talk to).
pub const NODE: &str = "node-a";
/// Node id of sidecar B.
pub const NODE_B: &str = "node-b";
/// Bound on anything the tests poll for.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct Fleet {
    // Field order is drop order: the sidecars go before their upstream.
    pub a: Sidecar,
    pub b: Sidecar,
    pub redis: RedisServer,
}

/// The `--upstream` URL of `redis`.
pub fn upstream_url(redis: &RedisServer) -> String {
    format!("redis://{}", redis.addr)
}

/// Starts a write-through sidecar on `redis` and waits until its upstream
/// connection is up (it announces readiness before connecting upstream).
pub fn start_sidecar(redis: &RedisServer, node: &str, extra: &[&str]) -> Sidecar {
    let url = upstream_url(redis);
    let mut args = vec!["--upstream", url.as_str(), "--node-id", node];
    args.extend_from_slice(extra);
    let sc = Sidecar::start(&args);
    sc.wait_upstream_up();
    sc
}

/// `upstream_state` of INFO upstream.
pub fn upstream_state(sc: &Sidecar) -> String {
    sc.info("upstream")
        .get("upstream_state")
        .cloned()
        .unwrap_or_default()
}

/// An integer field of INFO upstream.
pub fn upstream_counter(sc: &Sidecar, field: &str) -> u64 {
    sc.info("upstream")
        .get(field)
        .unwrap_or_else(|| panic!("INFO upstream lacks {field}"))
        .parse()
        .unwrap()
}

impl Fleet {
    /// A fresh redis-server and sidecars A and B on it, both with `extra`.
    pub fn start(extra: &[&str]) -> Fleet {
        let redis = RedisServer::start(&[]);
        Fleet::on(redis, extra)
    }

    /// Sidecars A and B on an already running `redis`.
    pub fn on(redis: RedisServer, extra: &[&str]) -> Fleet {
        let a = start_sidecar(&redis, NODE, extra);
        let b = start_sidecar(&redis, NODE_B, extra);
        Fleet { a, b, redis }
    }
}

/// The contract checks talk to sidecar A.
impl Deref for Fleet {
    type Target = Sidecar;
    fn deref(&self) -> &Sidecar {
        &self.a
    }
}
