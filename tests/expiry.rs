//! Expiry: a session past its expiry time does not exist for any command
//! (lazy expiry), the sweeper removes it without being asked and publishes
//! one `expired` event, and the indexes never show it again.

mod common;

use std::time::Duration;

use common::*;
use redis::Value;

/// Creates `id` with a short PTTL and returns its expiry time.
fn create_short(c: &mut redis::Connection, id: &str, extra: &[&str]) -> i64 {
    let mut args = vec!["SESSION.CREATE", "ID", id, "PTTL", "200"];
    args.extend_from_slice(extra);
    assert_eq!(call(c, &args), bulk(id));
    get_session(c, id, false).expect("just created").expires
}

#[test]
fn an_expired_session_is_gone_for_every_command() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    let expires = create_short(&mut c, "e", &["USER", "u", "CONN", "ce", "ATTR", "a", "1"]);
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "keeper", "USER", "u", "TTL", "600"],
    );
    assert!(wait_until(Duration::from_secs(3), || now_ms() > expires + 1));

    assert_eq!(call(&mut c, &["SESSION.GET", "e"]), Value::Nil);
    assert_eq!(call(&mut c, &["SESSION.GET", "e", "JSON"]), Value::Nil);
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "e", "keeper"]),
        Value::Int(1)
    );
    assert_eq!(call(&mut c, &["SESSION.ATTR.GET", "e", "a"]), Value::Nil);
    assert_eq!(call(&mut c, &["SESSION.ATTR.DEL", "e", "a"]), Value::Int(0));
    assert_eq!(call(&mut c, &["SESSION.TOUCH", "e"]), Value::Int(-2));
    assert_eq!(call(&mut c, &["SESSION.TTL", "e"]), Value::Int(-2));
    assert_eq!(call(&mut c, &["SESSION.EXPIRE", "e", "100"]), Value::Int(0));
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "ce"]), Value::Nil);
    assert_eq!(byuser(&mut c, "u"), ["keeper"]);
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(1));
    assert_eq!(call(&mut c, &["SESSION.COUNT", "LOCAL"]), Value::Int(1));
    for args in [
        vec!["SESSION.ATTR.SET", "e", "a", "2"],
        vec!["SESSION.ATTR.INCRBY", "e", "n", "1"],
        vec!["SESSION.UPDATE", "e", "ATTR", "a", "2"],
        vec!["SESSION.UPDATE", "e", "IFVERSION", "1", "ATTR", "a", "2"],
        vec!["SESSION.BIND", "e", "c2"],
        vec!["SESSION.UNBIND", "e"],
    ] {
        assert_err(&call(&mut c, &args), "NOSESSION no such session");
    }
    assert_eq!(call(&mut c, &["SESSION.DEL", "e"]), Value::Int(0));
    assert_eq!(call(&mut c, &["SESSION.KILLUSER", "u"]), Value::Int(1));
    // The id is free again.
    assert_eq!(call(&mut c, &["SESSION.CREATE", "ID", "e"]), bulk("e"));
    assert_eq!(get_session(&mut c, "e", false).unwrap().version, 1);
}

#[test]
fn get_turns_nil_once_the_pttl_has_passed() {
    for resp3 in [false, true] {
        let sc = Sidecar::start(&[]);
        let mut c = if resp3 {
            sc.client_resp3()
        } else {
            sc.client()
        };
        let created = now_ms();
        assert_eq!(
            call(&mut c, &["SESSION.CREATE", "ID", "short", "PTTL", "200"]),
            bulk("short")
        );
        assert!(get_session(&mut c, "short", resp3).is_some());
        assert!(
            wait_until(Duration::from_secs(3), || call(
                &mut c,
                &["SESSION.GET", "short"]
            ) == Value::Nil),
            "session with PTTL 200 still visible after 3 s"
        );
        assert!(now_ms() - created >= 195, "expired too early");
    }
}

#[test]
fn the_sweeper_removes_expired_sessions_without_being_asked() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    for i in 0..20 {
        call(
            &mut c,
            &[
                "SESSION.CREATE",
                "ID",
                &format!("x{i}"),
                "USER",
                "sweep",
                "CONN",
                &format!("cx{i}"),
                "PTTL",
                "150",
            ],
        );
    }
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "stays",
            "USER",
            "sweep",
            "TTL",
            "600",
        ],
    );
    // Nothing but COUNT touches the sessions: the indexes must be clean too.
    assert!(
        wait_until(Duration::from_secs(3), || int(&call(
            &mut c,
            &["SESSION.COUNT", "LOCAL"]
        )) == 1),
        "sweeper did not remove expired sessions"
    );
    assert_eq!(byuser(&mut c, "sweep"), ["stays"]);
    for i in 0..20 {
        assert_eq!(
            call(&mut c, &["SESSION.BYCONN", &format!("cx{i}")]),
            Value::Nil
        );
    }
}

#[test]
fn the_sweeper_publishes_one_expired_event_per_session() {
    let sc = Sidecar::start(&["--node-id", "sweeper-node"]);
    let mut events = EventSubscriber::new(&sc, "session:events", false);
    let mut c = sc.client();
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "ev1",
            "USER",
            "u",
            "CONN",
            "k1",
            "PTTL",
            "100",
        ],
    );
    call(&mut c, &["SESSION.CREATE", "ID", "ev2", "PTTL", "100"]);

    // Nobody touches the sessions: only the sweeper can notice the expiry.
    let mut expired = Vec::new();
    while expired.len() < 2 {
        match events.wait_for(Duration::from_secs(3), |e| e["event"] == "expired") {
            Some(e) => expired.push(e),
            None => panic!("expired events so far: {expired:?}"),
        }
    }
    let ev1 = expired
        .iter()
        .find(|e| e["id"] == "ev1")
        .expect("ev1 expired event");
    assert_eq!(ev1["user"], "u");
    assert_eq!(ev1["conn"], "k1");
    assert_eq!(ev1["node"], "sweeper-node");
    let at = ev1["at"].as_i64().expect("at is a number");
    assert!((now_ms() - 5000..=now_ms()).contains(&at), "at {at}");
    assert!(expired.iter().any(|e| e["id"] == "ev2"), "{expired:?}");

    // Reading the expired sessions afterwards publishes nothing more.
    assert_eq!(call(&mut c, &["SESSION.GET", "ev1"]), Value::Nil);
    assert_eq!(call(&mut c, &["SESSION.TOUCH", "ev2"]), Value::Int(-2));
    let later = events.collect_for(Duration::from_millis(300));
    assert!(
        later.iter().all(|e| e["event"] != "expired"),
        "duplicate expired events {later:?}"
    );
}

#[test]
fn lazily_seen_expiry_still_publishes_exactly_once() {
    let sc = Sidecar::start(&[]);
    let mut events = EventSubscriber::new(&sc, "session:events", false);
    let mut c = sc.client();
    let expires = create_short(&mut c, "lazy", &[]);
    // Hammer the session around its expiry so the lazy path may see it first.
    while now_ms() <= expires + 5 {
        call(&mut c, &["SESSION.EXISTS", "lazy"]);
    }
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "lazy"]), Value::Int(0));
    let first = events.wait_for(Duration::from_secs(3), |e| e["event"] == "expired");
    assert_eq!(first.expect("an expired event")["id"], "lazy");
    let later = events.collect_for(Duration::from_millis(300));
    assert!(
        later.iter().all(|e| e["event"] != "expired"),
        "duplicate expired events {later:?}"
    );
}

#[test]
fn expire_and_unbind_grace_shorten_life_that_then_ends() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "g", "CONN", "cg", "TTL", "600"],
    );
    call(&mut c, &["SESSION.UNBIND", "g", "GRACE", "1"]);
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "g"]), Value::Int(1));
    assert!(
        wait_until(Duration::from_secs(3), || call(
            &mut c,
            &["SESSION.EXISTS", "g"]
        ) == Value::Int(0)),
        "UNBIND GRACE 1 did not end the session"
    );
    // A resume after the grace window fails.
    assert_err(
        &call(&mut c, &["SESSION.BIND", "g", "cg"]),
        "NOSESSION no such session",
    );
}

#[test]
fn an_extending_touch_keeps_a_session_alive_past_its_first_expiry() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "hb", "PTTL", "400"]);
    let first_expiry = get_session(&mut c, "hb", false).unwrap().expires;
    // Heartbeat until well past the original expiry.
    while now_ms() < first_expiry + 300 {
        let left = int(&call(&mut c, &["SESSION.TOUCH", "hb"]));
        assert!(left > 0, "heartbeated session expired (left {left})");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "hb"]), Value::Int(1));
}
