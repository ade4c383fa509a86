//! The contract of commands.md in write-through mode: the shared suite
//! (`tests/shared/contract.rs`) against a fleet of two sidecars on one
//! redis-server, and the checks write-through mode answers its own way.

use redis::Value;

use crate::common::*;
use crate::contract::Target;
use crate::fleet::Fleet;

impl Target for Fleet {
    fn start(extra: &[&str]) -> Self {
        Fleet::start(extra)
    }

    fn other(&self) -> &Sidecar {
        &self.b
    }
}

contract_tests!(Fleet);

#[test]
fn tracking_redirects_to_a_resp2_subscriber() {
    crate::contract::tracking_redirects_to_a_resp2_subscriber::<Fleet>()
}

fn sidecar() -> Fleet {
    Fleet::start(&[])
}

// ---------------------------------------------------------------------------
// COUNT
// ---------------------------------------------------------------------------

#[test]
fn count_counts_the_upstream_and_count_local_the_hot_copies() {
    let sc = sidecar();
    let mut c = sc.client();
    let mut cb = sc.b.client();
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(0));
    assert_eq!(call(&mut c, &["SESSION.COUNT", "LOCAL"]), Value::Int(0));
    for i in 0..5 {
        call(&mut c, &["SESSION.CREATE", "ID", &format!("s{i}")]);
    }
    // Reads make sessions hot on A; B holds none but counts the upstream's.
    for i in 0..5 {
        assert!(get_session(&mut c, &format!("s{i}"), false).is_some());
    }
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(5));
    assert_eq!(call(&mut cb, &["SESSION.COUNT"]), Value::Int(5));
    assert_eq!(call(&mut c, &["SESSION.COUNT", "LOCAL"]), Value::Int(5));
    assert_eq!(call(&mut cb, &["SESSION.COUNT", "LOCAL"]), Value::Int(0));
    call(&mut c, &["SESSION.DEL", "s0", "s1"]);
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(3));
    assert_eq!(call(&mut cb, &["session.count"]), Value::Int(3));
    assert_eq!(call(&mut c, &["session.count", "local"]), Value::Int(3));
    for i in 2..5 {
        assert!(get_session(&mut cb, &format!("s{i}"), false).is_some());
    }
    assert_eq!(call(&mut cb, &["SESSION.COUNT", "LOCAL"]), Value::Int(3));
    // A's delete drops B's hot copy too.
    call(&mut c, &["SESSION.DEL", "s2"]);
    assert!(
        wait_until(crate::fleet::WAIT, || int(&call(
            &mut cb,
            &["SESSION.COUNT", "LOCAL"]
        )) == 2),
        "B still holds a copy of the deleted session"
    );
    assert_eq!(call(&mut cb, &["SESSION.COUNT"]), Value::Int(2));
}
