//! Every SESSION.* command of commands.md in standalone mode (so neither
//! MIGRATE nor DRAIN) and every error it names, over RESP2 and RESP3: the
//! shared contract suite (`tests/shared/contract.rs`) against a standalone
//! sidecar, and the checks only standalone mode answers this way.

mod common;
#[macro_use]
#[path = "shared/contract.rs"]
mod contract;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::time::Duration;

use common::*;
use contract::{NODE, Target};
use redis::Value;

/// One standalone sidecar.
struct Standalone(Sidecar);

impl Deref for Standalone {
    type Target = Sidecar;
    fn deref(&self) -> &Sidecar {
        &self.0
    }
}

impl Target for Standalone {
    fn start(extra: &[&str]) -> Self {
        let mut args = vec!["--node-id", NODE];
        args.extend_from_slice(extra);
        Standalone(Sidecar::start(&args))
    }

    fn other(&self) -> &Sidecar {
        &self.0
    }
}

contract_tests!(Standalone);

fn sidecar() -> Sidecar {
    Sidecar::start(&["--node-id", NODE])
}

fn client(sc: &Sidecar, resp3: bool) -> redis::Connection {
    if resp3 {
        sc.client_resp3()
    } else {
        sc.client()
    }
}

// ---------------------------------------------------------------------------
// COUNT, NODES
// ---------------------------------------------------------------------------

#[test]
fn count_and_count_local_agree_in_standalone_mode() {
    let sc = sidecar();
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(0));
    assert_eq!(call(&mut c, &["SESSION.COUNT", "LOCAL"]), Value::Int(0));
    for i in 0..5 {
        call(&mut c, &["SESSION.CREATE", "ID", &format!("s{i}")]);
    }
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(5));
    assert_eq!(call(&mut c, &["SESSION.COUNT", "LOCAL"]), Value::Int(5));
    call(&mut c, &["SESSION.DEL", "s0", "s1"]);
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(3));
    assert_eq!(call(&mut c, &["session.count", "local"]), Value::Int(3));
}

#[test]
fn nodes_lists_this_sidecar() {
    for resp3 in [false, true] {
        let sc = Sidecar::start(&["--node-id", "pod-7", "--advertise", "10.1.2.3:6380"]);
        let mut c = client(&sc, resp3);
        call(&mut c, &["SESSION.CREATE", "ID", "a"]);
        call(&mut c, &["SESSION.CREATE", "ID", "b"]);
        let before = now_ms();
        let me = self_node(&mut c, resp3);
        assert_eq!(text(&me["node"]), "pod-7");
        assert_eq!(text(&me["addr"]), "10.1.2.3:6380");
        assert_eq!(me["sessions"], Value::Int(2));
        let last_seen = int(&me["last_seen"]);
        assert!(
            (before - 60_000..=now_ms()).contains(&last_seen),
            "last_seen {last_seen}"
        );
    }
}

#[test]
fn nodes_advertises_the_listen_address_by_default() {
    let sc = Sidecar::start(&["--node-id", "solo"]);
    let mut c = sc.client();
    let me = self_node(&mut c, false);
    assert_eq!(text(&me["addr"]), sc.addr.to_string());
    assert_eq!(me["sessions"], Value::Int(0));
}

/// Standalone, EXEC runs its queued commands with no other client's command
/// between them: transactions that move a unit from one session to another
/// never let a transaction that reads both see it in neither or both.
#[test]
fn exec_is_atomic_against_other_clients() {
    // Four event loops, so clients run in parallel even on two CPUs.
    let sc = Sidecar::start(&["--threads", "4"]);
    let mut c = sc.client();
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "left", "ATTR", "n", "1000"],
    );
    call(&mut c, &["SESSION.CREATE", "ID", "right", "ATTR", "n", "0"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let movers: Vec<_> = (0..3)
        .map(|_| {
            let mut m = sc.client();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut moved = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && moved < 150 {
                    // Reads between the two halves widen the window in
                    // which another client could see one half done.
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("SESSION.ATTR.INCRBY")
                        .arg("left")
                        .arg("n")
                        .arg(-1);
                    for _ in 0..100 {
                        pipe.cmd("SESSION.GET").arg("left");
                    }
                    pipe.cmd("SESSION.ATTR.INCRBY").arg("right").arg("n").arg(1);
                    let _: Vec<Value> = pipe.query(&mut m).unwrap();
                    moved += 1;
                }
                moved
            })
        })
        .collect();
    let mut reads = 0;
    while movers.iter().any(|m| !m.is_finished()) {
        let both: Vec<Vec<String>> = redis::pipe()
            .atomic()
            .cmd("SESSION.ATTR.GET")
            .arg("left")
            .arg("n")
            .cmd("SESSION.ATTR.GET")
            .arg("right")
            .arg("n")
            .query(&mut c)
            .unwrap();
        let sum: i64 = both.iter().map(|v| v[0].parse::<i64>().unwrap()).sum();
        assert_eq!(sum, 1000, "a transaction saw another half done: {both:?}");
        reads += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let moved: i64 = movers.into_iter().map(|m| m.join().unwrap()).sum();
    assert_eq!(moved, 450);
    assert!(reads > 10, "only {reads} reads overlapped the movers");
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.GET", "right", "n"]),
        Value::Array(vec![bulk("450")])
    );
}

/// Standalone only: with an upstream, REDIRECT names a client of the
/// sidecar the upstream does not know (docs/redis-compatibility.md).
#[test]
fn tracking_redirects_to_a_resp2_subscriber() {
    contract::tracking_redirects_to_a_resp2_subscriber::<Standalone>()
}

/// `--keep-json yes`: a session's JSON is kept from a read until its next
/// change. Every read still shows what SESSION.GET shows, through changes
/// and heartbeats (which move `last_active` without a change), and the kept
/// forms count in `used_memory`; without the option reads hold nothing.
#[test]
fn kept_json_follows_every_change_and_counts_in_memory() {
    let kept = Sidecar::start(&["--keep-json", "yes"]);
    let plain = Sidecar::start(&[]);
    let used = |sc: &Sidecar| -> i64 { sc.info("memory")["used_memory"].parse().unwrap() };
    let json = |c: &mut redis::Connection| -> serde_json::Value {
        match call(c, &["SESSION.GET", "j", "JSON"]) {
            Value::Nil => serde_json::Value::Null,
            v => serde_json::from_slice(&bytes(&v)).unwrap(),
        }
    };
    // The JSON matches the map SESSION.GET answers.
    let check = |c: &mut redis::Connection| {
        let read = json(c);
        let s = get_session(c, "j", false).expect("the session is there");
        assert_eq!(read["version"], s.version, "{read}");
        assert_eq!(read["last_active"], s.last_active, "{read}");
        assert_eq!(read["expires"], s.expires, "{read}");
        assert_eq!(read["status"], s.status.as_str(), "{read}");
        let conn = s.conn.map(|c| String::from_utf8(c).unwrap());
        assert_eq!(read["conn"].as_str(), conn.as_deref(), "{read}");
        let attrs: BTreeMap<String, String> = s
            .attrs
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(read["attrs"], serde_json::json!(attrs), "{read}");
    };
    for sc in [&kept, &plain] {
        let mut c = sc.client();
        let args = [
            "SESSION.CREATE",
            "ID",
            "j",
            "USER",
            "u",
            "TTL",
            "600",
            "ATTR",
            "a",
            "1",
        ];
        call(&mut c, &args);
        let before = used(sc);
        let first = json(&mut c).to_string();
        let grew = used(sc) - before;
        if std::ptr::eq(sc, &kept) {
            // All but last_active's value (written at each read).
            let digits = first.len() as i64 - 20;
            assert!(grew >= digits, "kept {} bytes, counted {grew}", first.len());
        } else {
            assert_eq!(grew, 0, "nothing is kept without --keep-json");
        }
    }
    let mut c = kept.client();
    check(&mut c);
    call(&mut c, &["SESSION.ATTR.SET", "j", "a", "2", "b", "3"]);
    check(&mut c);
    // A heartbeat: last_active moves, the version does not.
    let before = json(&mut c)["last_active"].as_i64().unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        call(&mut c, &["SESSION.TOUCH", "j"]);
        json(&mut c)["last_active"].as_i64().unwrap() > before
    }));
    check(&mut c);
    for change in [
        &["SESSION.BIND", "j", "ws-1"][..],
        &["SESSION.UNBIND", "j"],
        &["SESSION.UPDATE", "j", "STATUS", "active", "DEL", "a"],
        &["SESSION.EXPIRE", "j", "900"],
        &["SESSION.ATTR.INCRBY", "j", "n", "5"],
        &["SESSION.ATTR.DEL", "j", "b"],
    ] {
        call(&mut c, change);
        check(&mut c);
    }
    let before = used(&kept);
    call(&mut c, &["SESSION.DEL", "j"]);
    assert_eq!(json(&mut c), serde_json::Value::Null);
    assert!(
        used(&kept) < before,
        "a deleted session's kept JSON is freed"
    );
}
