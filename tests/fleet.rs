//! SESSION.NODES: the sidecar itself, the upstream registry of live sidecars
//! (kept fresh by each, left at once on SIGTERM, left by itself after a
//! crash) and the `--peers` that answer.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// node id → (addr, self flag) of SESSION.NODES.
fn nodes(sidecar: &Sidecar) -> BTreeMap<String, (String, i64)> {
    let reply = call(&mut sidecar.client(), &["SESSION.NODES"]);
    array(&reply)
        .iter()
        .map(|entry| {
            let fields = map_of(entry, false);
            (
                text(&fields["node"]),
                (text(&fields["addr"]), int(&fields["self"])),
            )
        })
        .collect()
}

fn write_through(redis: &RedisServer, node: &str) -> Sidecar {
    Sidecar::write_through(&redis.url(), node, &[])
}

#[test]
fn write_through_sidecars_find_each_other_in_the_registry() {
    let redis = RedisServer::start(&[]);
    let a = write_through(&redis, "a");
    let mut b = write_through(&redis, "b");
    let both = wait_until(Duration::from_secs(10), || {
        nodes(&a).len() == 2 && nodes(&b).len() == 2
    });
    assert!(both, "a sees {:?}, b sees {:?}", nodes(&a), nodes(&b));
    let seen_by_a = nodes(&a);
    assert_eq!(seen_by_a["a"], (a.addr.to_string(), 1));
    assert_eq!(seen_by_a["b"], (b.addr.to_string(), 0));

    // A clean stop leaves the registry at once.
    b.sigterm();
    assert!(b.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(nodes(&a).keys().cloned().collect::<Vec<_>>(), ["a"]);
}

#[test]
fn a_crashed_sidecar_leaves_the_registry_by_itself() {
    let redis = RedisServer::start(&[]);
    let a = write_through(&redis, "a");
    let mut b = write_through(&redis, "b");
    assert!(wait_until(Duration::from_secs(10), || nodes(&a).len() == 2));
    b.kill9();
    // Three report intervals (300 ms) without a report.
    let gone = wait_until(Duration::from_secs(5), || nodes(&a).len() == 1);
    assert!(gone, "a still sees {:?}", nodes(&a));
}

#[test]
fn static_peers_that_answer_are_listed() {
    let peer = Sidecar::start(&["--node-id", "peer"]);
    let dead = free_port();
    let peers = format!("{},127.0.0.1:{dead}", peer.addr);
    let me = Sidecar::start(&["--node-id", "me", "--peers", &peers]);
    let listed = nodes(&me);
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), ["me", "peer"]);
    assert_eq!(listed["peer"], (peer.addr.to_string(), 0));
    assert_eq!(listed["me"].1, 1);
}
