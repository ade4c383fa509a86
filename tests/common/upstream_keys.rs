//! The upstream's key layout as the tests read it: the library's own
//! [`Layout`] for the default prefix and shard count, and helpers that read
//! every shard (the events streams).

use std::sync::LazyLock;

use redis::Value;
use session_sidecar::upstream::layout::{DEFAULT_CLUSTER_SHARDS, DEFAULT_SHARDS, Layout};

use super::assertions::{array, text};
use super::client::call;

/// The shard count the suite runs with: `SIDECAR_TEST_SHARDS` when set
/// (every sidecar the tests start gets `--shards` with it), else none given.
pub fn test_shards() -> Option<u32> {
    std::env::var("SIDECAR_TEST_SHARDS").ok()?.parse().ok()
}

/// The layout of the sidecars the tests start on one redis-server: prefix
/// `session`, and the suite's shard count (else the default for one server).
pub static LAYOUT: LazyLock<Layout> = LazyLock::new(|| {
    Layout::new("session", test_shards().unwrap_or(DEFAULT_SHARDS)).expect("the tests' layout")
});

/// The same on a Redis Cluster (whose default shard count differs).
pub static CLUSTER_LAYOUT: LazyLock<Layout> = LazyLock::new(|| {
    Layout::new("session", test_shards().unwrap_or(DEFAULT_CLUSTER_SHARDS))
        .expect("the tests' cluster layout")
});

/// A key as text (the tests' names are).
pub fn key_text(key: Vec<u8>) -> String {
    String::from_utf8(key).expect("test keys are text")
}

/// The session's hash.
pub fn skey(id: &str) -> String {
    key_text(LAYOUT.session_key(id.as_bytes()))
}

/// The user's index.
pub fn ukey(user: &str) -> String {
    key_text(LAYOUT.user_key(user.as_bytes()))
}

/// The conn's pointer.
pub fn ckey(conn: &str) -> String {
    key_text(LAYOUT.conn_key(conn.as_bytes()))
}

/// The expiry index of the shard of session `id`.
pub fn xkey_of(id: &str) -> String {
    key_text(LAYOUT.expiry_key(LAYOUT.shard_of(id.as_bytes())))
}

/// The events stream of the shard of session `id`.
pub fn ekey_of(id: &str) -> String {
    key_text(LAYOUT.stream_key(LAYOUT.shard_of(id.as_bytes())))
}

/// Sessions in every shard's expiry index (ZCARD summed).
pub fn expiry_entries(redis: &mut redis::Connection) -> i64 {
    (0..LAYOUT.shards())
        .map(|shard| {
            let key = key_text(LAYOUT.expiry_key(shard));
            match call(redis, &["ZCARD", &key]) {
                Value::Int(n) => n,
                other => panic!("ZCARD {key}: {other:?}"),
            }
        })
        .sum()
}

/// The entries of every shard's events stream, each as its stream id and
/// field/value pairs, in the order of their ids (time, then sequence).
pub fn all_stream_entries(redis: &mut redis::Connection) -> Vec<(String, Vec<(String, String)>)> {
    let mut entries = Vec::new();
    for shard in 0..LAYOUT.shards() {
        let key = key_text(LAYOUT.stream_key(shard));
        for entry in array(&call(redis, &["XRANGE", &key, "-", "+"])) {
            let parts = array(&entry);
            let fields = array(&parts[1])
                .chunks(2)
                .map(|kv| (text(&kv[0]), text(&kv[1])))
                .collect();
            entries.push((text(&parts[0]), fields));
        }
    }
    let order = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    entries.sort_by_key(|(id, _)| order(id));
    entries
}
