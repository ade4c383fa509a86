//! Write-through to a master watched by real `redis-sentinel`s
//! (`redis+sentinel://.../mymaster`): the sidecar finds the master through
//! the sentinels and follows a real failover, its tracking connection and
//! its hot cache included, losing nothing acknowledged.

mod common;

use std::time::Duration;

use common::sentinel::Sentinels;
use common::*;

#[test]
fn a_sentinel_upstream_is_followed_through_a_failover() {
    let set = Sentinels::start();
    let sidecar = Sidecar::write_through(&set.url(), "s", &[]);
    let mut c = sidecar.client();
    for i in 0..50 {
        let id = format!("f{i}");
        call(
            &mut c,
            &[
                "SESSION.CREATE",
                "ID",
                &id,
                "USER",
                "u",
                "ATTR",
                "n",
                &i.to_string(),
            ],
        );
    }
    // Hot copies, to be dropped at the failover.
    assert_eq!(get_session(&mut c, "f7", false).unwrap().version, 1);
    // Every acknowledged write is on the replica before the failover (Redis
    // replicates asynchronously; WAIT makes the test about the sidecar).
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut set.master.client())
        .unwrap();
    assert_eq!(acked, 1);

    set.failover();

    // The sidecar asks the sentinels every second: it moves to the new
    // master (the old one may still take writes for an instant before it is
    // demoted, and lose them when it resyncs: Redis's own window).
    let new_master = format!("127.0.0.1:{}", set.replica.port());
    let moved = wait_until(Duration::from_secs(10), || {
        let info = text(&call(&mut c, &["INFO", "upstream"]));
        parse_info(&info).get("upstream_address") == Some(&new_master)
    });
    assert!(moved, "the sidecar did not move to the new master");
    // Writes fail fast while it reconnects, then go through, to it.
    let written = wait_until(Duration::from_secs(20), || {
        matches!(
            call(&mut c, &["SESSION.ATTR.SET", "f7", "after", "yes"]),
            redis::Value::Int(2)
        )
    });
    assert!(written, "writes never resumed after the failover");
    let on_new_master: Option<String> = redis::cmd("HGET")
        .arg(skey("f7"))
        .arg("a:after")
        .query(&mut set.replica.client())
        .unwrap();
    assert_eq!(on_new_master.as_deref(), Some("yes"));

    // Nothing acknowledged was lost.
    assert_eq!(int(&call(&mut c, &["SESSION.COUNT"])), 50);
    for i in 0..50 {
        let s =
            get_session(&mut c, &format!("f{i}"), false).expect("a session lost in the failover");
        assert_eq!(s.attrs[&b"n"[..]], i.to_string().as_bytes());
    }
    assert_eq!(byuser(&mut c, "u").len(), 50);

    // Coherence on the new master: a change behind the sidecar's back is
    // seen (the tracking connection follows the master).
    assert_eq!(get_session(&mut c, "f9", false).unwrap().version, 1);
    let _: () = redis::cmd("HSET")
        .arg(skey("f9"))
        .arg("version")
        .arg(7)
        .query(&mut set.replica.client())
        .unwrap();
    let seen = wait_until(Duration::from_secs(5), || {
        get_session(&mut c, "f9", false).unwrap().version == 7
    });
    assert!(seen, "the hot copy outlived a change on the new master");
}
