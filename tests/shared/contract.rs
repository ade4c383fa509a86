//! The SESSION.* contract of commands.md, one suite for both modes: every
//! command (but MIGRATE and DRAIN) and every error it names, over RESP2 and
//! RESP3, with exactly the same replies. `contract_tests!(T)` makes a
//! `#[test]` of each check against a target `T`: a standalone sidecar
//! (`tests/session_commands.rs`) or a write-through fleet of two sidecars on
//! one redis-server (`tests/write_through`), whose checks talk to sidecar A
//! and spread concurrent clients over both sidecars.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use redis::Value;

use crate::common::*;

/// The node id every target's (first) sidecar runs with.
pub const NODE: &str = "node-a";

/// How long an eventually consistent read may take to converge.
const WAIT: Duration = Duration::from_secs(5);

/// What the checks run against: its sidecar (A) by deref, and a second one
/// for concurrent clients (the same sidecar in standalone mode).
pub trait Target: Deref<Target = Sidecar> + Send + Sync + 'static {
    /// A fresh target whose sidecars run with `--node-id NODE` (the first)
    /// and `extra`.
    fn start(extra: &[&str]) -> Self;
    fn other(&self) -> &Sidecar;
    /// The sidecar the k-th of several concurrent clients talks to.
    fn for_worker(&self, k: usize) -> &Sidecar {
        if k.is_multiple_of(2) {
            self
        } else {
            self.other()
        }
    }
}

fn client(sc: &Sidecar, resp3: bool) -> redis::Connection {
    if resp3 {
        sc.client_resp3()
    } else {
        sc.client()
    }
}

fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The session's version, whichever protocol the connection speaks.
fn version(con: &mut redis::Connection, id: &str) -> i64 {
    let v = call(con, &["SESSION.GET", id]);
    session(&v, matches!(v, Value::Map(_))).version
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .filter(|(i, _)| ![8, 13, 18, 23].contains(i))
            .all(|(_, c)| c.is_ascii_hexdigit())
        && b[14] == b'4'
        && matches!(b[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

// ---------------------------------------------------------------------------
// SESSION.CREATE and SESSION.GET
// ---------------------------------------------------------------------------

pub fn create_without_id_returns_a_fresh_uuid_v4<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    let first = text(&call(&mut c, &["SESSION.CREATE"]));
    let second = text(&call(&mut c, &["SESSION.CREATE", "USER", "u"]));
    assert!(is_uuid_v4(&first), "not a UUID v4: {first}");
    assert!(is_uuid_v4(&second), "not a UUID v4: {second}");
    assert_ne!(first, second);
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", &first, &second]),
        Value::Int(2)
    );
}

fn check_create_then_get<T: Target>(resp3: bool) {
    let sc = T::start(&[]);
    let mut c = client(&sc, resp3);
    let before = now_ms();
    let reply = call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "s1",
            "USER",
            "alice",
            "CONN",
            "c1",
            "TTL",
            "60",
            "ATTR",
            "role",
            "admin",
            "ATTR",
            "lang",
            "fr",
        ],
    );
    let after = now_ms();
    assert_eq!(reply, bulk("s1"));

    let s = get_session(&mut c, "s1", resp3).expect("created session");
    assert_eq!(s.id, b"s1");
    assert_eq!(s.user.as_deref(), Some(&b"alice"[..]));
    assert_eq!(s.conn.as_deref(), Some(&b"c1"[..]));
    assert_eq!(s.status, "active");
    assert_eq!(s.node, NODE);
    assert!(
        (before..=after).contains(&s.created),
        "created {} not in [{before}, {after}]",
        s.created
    );
    assert_eq!(s.last_active, s.created);
    assert_eq!(s.ttl, 60_000);
    assert!(
        (before + 60_000..=after + 60_000).contains(&s.expires),
        "expires {} not now+60s",
        s.expires
    );
    assert_eq!(s.version, 1);
    assert_eq!(s.attrs, attrs(&[("role", "admin"), ("lang", "fr")]));
}

pub fn create_then_get_resp2_flat_arrays<T: Target>() {
    check_create_then_get::<T>(false);
}

pub fn create_then_get_resp3_maps<T: Target>() {
    check_create_then_get::<T>(true);
}

pub fn get_session_without_user_or_conn_has_nil_fields_and_default_ttl<T: Target>() {
    for resp3 in [false, true] {
        let sc = T::start(&["--default-ttl", "90"]);
        let mut c = client(&sc, resp3);
        assert_eq!(
            call(&mut c, &["SESSION.CREATE", "ID", "bare"]),
            bulk("bare")
        );
        let s = get_session(&mut c, "bare", resp3).unwrap();
        assert_eq!(s.user, None);
        assert_eq!(s.conn, None);
        assert_eq!(s.ttl, 90_000);
        assert!(s.attrs.is_empty());
        // Nil is the protocol's null inside the map, not an empty string.
        let raw = call(&mut c, &["SESSION.GET", "bare"]);
        let fields = map_of(&raw, resp3);
        assert_eq!(fields["user"], Value::Nil);
        assert_eq!(fields["conn"], Value::Nil);
    }
}

pub fn get_missing_is_null_bulk_in_resp2_and_null_in_resp3<T: Target>() {
    let sc = T::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["SESSION.GET", "nope"]);
    raw.expect_bytes(b"$-1\r\n");
    raw.send_cmd(&["SESSION.GET", "nope", "JSON"]);
    raw.expect_bytes(b"$-1\r\n");
    assert!(matches!(raw.cmd(&["HELLO", "3"]), Resp::Map(_)));
    raw.send_cmd(&["SESSION.GET", "nope"]);
    raw.expect_bytes(b"_\r\n");
    raw.send_cmd(&["SESSION.GET", "nope", "JSON"]);
    raw.expect_bytes(b"_\r\n");

    let mut c = sc.client();
    assert_eq!(call(&mut c, &["SESSION.GET", "nope"]), Value::Nil);
    let mut c3 = sc.client_resp3();
    assert_eq!(call(&mut c3, &["SESSION.GET", "nope"]), Value::Nil);
}

pub fn get_on_the_wire_resp3_is_a_map_with_nested_attrs_map<T: Target>() {
    let sc = T::start(&[]);
    let mut raw = sc.raw();
    raw.cmd(&["HELLO", "3"]);
    raw.cmd(&["SESSION.CREATE", "ID", "w", "ATTR", "k", "v"]);
    let Resp::Map(pairs) = raw.cmd(&["SESSION.GET", "w"]) else {
        panic!("RESP3 GET must be a map");
    };
    assert_eq!(pairs.len(), 11);
    let attrs = pairs
        .iter()
        .find(|(k, _)| k.text() == "attrs")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(attrs, Resp::Map(vec![(Resp::bulk("k"), Resp::bulk("v"))]));
    let user = pairs.iter().find(|(k, _)| k.text() == "user").unwrap();
    assert_eq!(user.1, Resp::Null);
}

pub fn get_on_the_wire_resp2_is_a_flat_array_with_nested_flat_attrs<T: Target>() {
    let sc = T::start(&[]);
    let mut raw = sc.raw();
    raw.cmd(&["SESSION.CREATE", "ID", "w", "ATTR", "k", "v"]);
    let Resp::Array(items) = raw.cmd(&["SESSION.GET", "w"]) else {
        panic!("RESP2 GET must be an array");
    };
    assert_eq!(items.len(), 22);
    let pos = items
        .iter()
        .position(|i| *i == Resp::bulk("attrs"))
        .unwrap();
    assert_eq!(pos % 2, 0, "attrs must be a key");
    assert_eq!(items[pos + 1], Resp::bulks(&["k", "v"]));
    let pos = items.iter().position(|i| *i == Resp::bulk("conn")).unwrap();
    assert_eq!(items[pos + 1], Resp::NullBulk);
    let pos = items
        .iter()
        .position(|i| *i == Resp::bulk("version"))
        .unwrap();
    assert_eq!(items[pos + 1], Resp::Int(1));
}

pub fn get_json_is_one_json_object_with_the_same_fields<T: Target>() {
    for resp3 in [false, true] {
        let sc = T::start(&[]);
        let mut c = client(&sc, resp3);
        call(
            &mut c,
            &[
                "SESSION.CREATE",
                "ID",
                "j1",
                "USER",
                "bob",
                "TTL",
                "30",
                "ATTR",
                "n",
                "7",
                "ATTR",
                "q",
                "say \"hi\"",
            ],
        );
        let from_map = get_session(&mut c, "j1", resp3).unwrap();
        let reply = call(&mut c, &["session.get", "j1", "json"]);
        assert!(
            matches!(reply, Value::BulkString(_)),
            "JSON must be one bulk string: {reply:?}"
        );
        let json: serde_json::Value = serde_json::from_slice(&bytes(&reply)).expect("valid JSON");
        let obj = json.as_object().expect("a JSON object");
        let keys: Vec<&str> = obj
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(keys, SESSION_FIELDS);
        assert_eq!(obj["id"], "j1");
        assert_eq!(obj["user"], "bob");
        assert_eq!(obj["conn"], serde_json::Value::Null);
        assert_eq!(obj["status"], "active");
        assert_eq!(obj["node"], NODE);
        for field in ["created", "last_active", "expires", "ttl", "version"] {
            assert!(
                obj[field].is_i64() || obj[field].is_u64(),
                "{field} must be a JSON number: {obj:?}"
            );
        }
        assert_eq!(obj["created"].as_i64(), Some(from_map.created));
        assert_eq!(obj["expires"].as_i64(), Some(from_map.expires));
        assert_eq!(obj["ttl"].as_i64(), Some(30_000));
        assert_eq!(obj["version"].as_i64(), Some(1));
        assert_eq!(
            obj["attrs"],
            serde_json::json!({"n": "7", "q": "say \"hi\""})
        );
    }
}

pub fn keywords_and_command_names_are_case_insensitive<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    assert_eq!(
        call(
            &mut c,
            &[
                "session.create",
                "id",
                "lc",
                "user",
                "u",
                "pttl",
                "50000",
                "attr",
                "a",
                "b",
                "maxperuser",
                "5"
            ]
        ),
        bulk("lc")
    );
    assert_eq!(call(&mut c, &["SeSsIoN.ExIsTs", "lc"]), Value::Int(1));
    let s = get_session(&mut c, "lc", false).unwrap();
    assert_eq!(s.user.as_deref(), Some(&b"u"[..]));
    assert_eq!(s.ttl, 50_000);
    assert_eq!(
        call(
            &mut c,
            &[
                "session.update",
                "lc",
                "ifversion",
                "1",
                "status",
                "DISCONNECTED"
            ]
        ),
        Value::Int(2)
    );
    assert_eq!(
        get_session(&mut c, "lc", false).unwrap().status,
        "disconnected"
    );
    assert_eq!(
        array(&call(&mut c, &["session.byuser", "u", "withsessions"])).len(),
        1
    );
    assert_eq!(call(&mut c, &["session.count", "local"]), Value::Int(1));
}

pub fn values_are_binary_safe<T: Target>() {
    for resp3 in [false, true] {
        let sc = T::start(&[]);
        let mut c = client(&sc, resp3);
        let id: &[u8] = b"id\x00\xff\r\n end";
        let user: &[u8] = b"u\x00\r\n";
        let conn: &[u8] = b"\xfe\xffconn";
        let name: &[u8] = b"n\x00\r\na";
        let value: Vec<u8> = (0u8..=255).collect();
        let created = call(
            &mut c,
            &[
                b"SESSION.CREATE".as_slice(),
                b"ID",
                id,
                b"USER",
                user,
                b"CONN",
                conn,
                b"ATTR",
                name,
                &value,
            ],
        );
        assert_eq!(created, bulk(id));
        assert_eq!(
            call(&mut c, &[b"SESSION.ATTR.GET".as_slice(), id, name]),
            Value::Array(vec![bulk(&value)])
        );
        let v = call(&mut c, &[b"SESSION.GET".as_slice(), id]);
        let s = session(&v, resp3);
        assert_eq!(s.id, id);
        assert_eq!(s.user.as_deref(), Some(user));
        assert_eq!(s.conn.as_deref(), Some(conn));
        assert_eq!(s.attrs.get(name), Some(&value));
        assert_eq!(
            call(&mut c, &[b"SESSION.BYCONN".as_slice(), conn]),
            bulk(id)
        );
        assert_eq!(
            call(&mut c, &[b"SESSION.BYUSER".as_slice(), user]),
            Value::Array(vec![bulk(id)])
        );
        // The same id minus the NUL byte is another session.
        assert_eq!(
            call(&mut c, &[b"SESSION.EXISTS".as_slice(), b"id\xff\r\n end"]),
            Value::Int(0)
        );
        assert_eq!(
            call(&mut c, &[b"SESSION.DEL".as_slice(), id]),
            Value::Int(1)
        );
    }
}

pub fn create_refuses_a_live_id_with_exists<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "dup", "ATTR", "a", "1"]);
    let v = call(&mut c, &["SESSION.CREATE", "ID", "dup", "ATTR", "a", "2"]);
    assert_err(&v, "EXISTS session already exists");
    // Nothing changed.
    let s = get_session(&mut c, "dup", false).unwrap();
    assert_eq!(s.version, 1);
    assert_eq!(s.attrs, attrs(&[("a", "1")]));
    // Once deleted, the id can be reused.
    assert_eq!(call(&mut c, &["SESSION.DEL", "dup"]), Value::Int(1));
    assert_eq!(call(&mut c, &["SESSION.CREATE", "ID", "dup"]), bulk("dup"));
}

pub fn create_rejects_invalid_ttls<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    for (opt, value) in [
        ("TTL", "0"),
        ("TTL", "-1"),
        ("PTTL", "0"),
        ("PTTL", "-100"),
        ("TTL", "9223372036854775807"),
        ("PTTL", "9223372036854775807"),
        ("TTL", "9223372036854775"),
    ] {
        let v = call(&mut c, &["SESSION.CREATE", "ID", "bad", opt, value]);
        assert_err(&v, "ERR invalid TTL");
    }
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "bad"]), Value::Int(0));
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(0));
    // Not a number at all: an error as well (Redis: not an integer).
    let v = call(&mut c, &["SESSION.CREATE", "ID", "bad", "TTL", "ten"]);
    assert_err_code(&v, "ERR");
}

pub fn create_rejects_bad_syntax<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    for args in [
        vec!["SESSION.CREATE", "ID"],
        vec!["SESSION.CREATE", "BOGUS"],
        vec!["SESSION.CREATE", "ID", "x", "USER"],
        vec!["SESSION.CREATE", "ID", "x", "ATTR", "only-name"],
        vec!["SESSION.CREATE", "ID", "x", "TTL", "5", "PTTL", "5000"],
        vec!["SESSION.CREATE", "ID", "x", "TTL"],
    ] {
        let v = call(&mut c, &args);
        assert_err(&v, "ERR syntax error");
    }
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(0));
}

pub fn create_with_pttl_sets_millisecond_ttl<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    let before = now_ms();
    call(&mut c, &["SESSION.CREATE", "ID", "p", "PTTL", "12345"]);
    let s = get_session(&mut c, "p", false).unwrap();
    assert_eq!(s.ttl, 12_345);
    assert!(s.expires >= before + 12_345 && s.expires <= now_ms() + 12_345);
    let left = int(&call(&mut c, &["SESSION.TTL", "p"]));
    assert!((1..=12_345).contains(&left) && left > 11_000, "TTL {left}");
}

// ---------------------------------------------------------------------------
// Arity and syntax errors
// ---------------------------------------------------------------------------

pub fn wrong_number_of_arguments_is_worded_as_redis<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "s"]);
    let cases: &[&[&str]] = &[
        &["SESSION.GET"],
        &["SESSION.EXISTS"],
        &["SESSION.ATTR.SET", "s"],
        &["SESSION.ATTR.SET", "s", "name"],
        &["SESSION.ATTR.SET", "s", "a", "1", "b"],
        &["SESSION.ATTR.GET", "s"],
        &["SESSION.ATTR.DEL", "s"],
        &["SESSION.ATTR.INCRBY", "s", "n"],
        &["SESSION.ATTR.INCRBY", "s", "n", "1", "2"],
        &["SESSION.UPDATE"],
        &["SESSION.TOUCH"],
        &["SESSION.TOUCH", "s", "extra"],
        &["SESSION.TTL"],
        &["SESSION.TTL", "s", "extra"],
        &["SESSION.EXPIRE", "s"],
        &["SESSION.EXPIRE", "s", "10", "extra"],
        &["SESSION.DEL"],
        &["SESSION.BIND", "s"],
        &["SESSION.BIND", "s", "c", "extra"],
        &["SESSION.UNBIND"],
        &["SESSION.BYCONN"],
        &["SESSION.BYCONN", "c", "extra"],
        &["SESSION.BYUSER"],
        &["SESSION.KILLUSER"],
        &["SESSION.KILLUSER", "u", "extra"],
    ];
    for args in cases {
        let v = call(&mut c, args);
        let name = args[0].to_ascii_lowercase();
        assert_err(
            &v,
            &format!("ERR wrong number of arguments for '{name}' command"),
        );
    }
    // The name is lower-case whatever case the client used.
    let v = call(&mut c, &["Session.Get"]);
    assert_err(
        &v,
        "ERR wrong number of arguments for 'session.get' command",
    );
    // Nothing was changed by any of them.
    assert_eq!(version(&mut c, "s"), 1);
}

pub fn unknown_options_are_syntax_errors<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "s", "USER", "u"]);
    let cases: &[&[&str]] = &[
        &["SESSION.GET", "s", "XML"],
        &["SESSION.GET", "s", "JSON", "extra"],
        &["SESSION.UPDATE", "s", "BOGUS"],
        &["SESSION.UPDATE", "s", "ATTR", "a"],
        &["SESSION.UPDATE", "s", "IFVERSION"],
        &["SESSION.UPDATE", "s", "STATUS"],
        &["SESSION.UPDATE", "s", "TTL", "5", "PTTL", "5000"],
        &["SESSION.UNBIND", "s", "LATER"],
        &["SESSION.UNBIND", "s", "GRACE"],
        &["SESSION.BYUSER", "u", "WITHOUT"],
        &["SESSION.COUNT", "GLOBAL"],
    ];
    for args in cases {
        let v = call(&mut c, args);
        assert_err(&v, "ERR syntax error");
    }
    assert_eq!(version(&mut c, "s"), 1);
}

// ---------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------

pub fn id_user_conn_and_attribute_names_are_limited_to_512_bytes<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    let ok = "i".repeat(512);
    let long = "i".repeat(513);

    assert_eq!(call(&mut c, &["SESSION.CREATE", "ID", &ok]), bulk(&ok));
    assert_err_code(&call(&mut c, &["SESSION.CREATE", "ID", &long]), "ERR");
    assert_eq!(call(&mut c, &["SESSION.EXISTS", &long]), Value::Int(0));

    let id = text(&call(
        &mut c,
        &["SESSION.CREATE", "USER", &ok, "CONN", &ok, "ATTR", &ok, "v"],
    ));
    assert_eq!(call(&mut c, &["SESSION.BYCONN", &ok]), bulk(&id));
    let before = int(&call(&mut c, &["SESSION.COUNT"]));
    assert_err_code(&call(&mut c, &["SESSION.CREATE", "USER", &long]), "ERR");
    assert_err_code(&call(&mut c, &["SESSION.CREATE", "CONN", &long]), "ERR");
    assert_err_code(
        &call(&mut c, &["SESSION.CREATE", "ATTR", &long, "v"]),
        "ERR",
    );
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(before));

    // Updates obey the same limits and change nothing when refused.
    assert_err_code(&call(&mut c, &["SESSION.ATTR.SET", &id, &long, "v"]), "ERR");
    assert_err_code(
        &call(&mut c, &["SESSION.UPDATE", &id, "USER", &long]),
        "ERR",
    );
    assert_err_code(
        &call(&mut c, &["SESSION.UPDATE", &id, "CONN", &long]),
        "ERR",
    );
    assert_err_code(&call(&mut c, &["SESSION.BIND", &id, &long]), "ERR");
    assert_eq!(version(&mut c, &id), 1);
}

pub fn attribute_values_are_limited_to_one_mib<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    let mib = vec![b'x'; 1024 * 1024];
    let over = vec![b'x'; 1024 * 1024 + 1];
    let created = call(
        &mut c,
        &[
            b"SESSION.CREATE".as_slice(),
            b"ID",
            b"big",
            b"ATTR",
            b"v",
            &mib,
        ],
    );
    assert_eq!(created, bulk("big"));
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.GET", "big", "v"]),
        Value::Array(vec![bulk(&mib)])
    );

    let refused = call(
        &mut c,
        &[
            b"SESSION.CREATE".as_slice(),
            b"ID",
            b"bigger",
            b"ATTR",
            b"v",
            &over,
        ],
    );
    assert_err_code(&refused, "ERR");
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "bigger"]), Value::Int(0));

    let refused = call(
        &mut c,
        &[b"SESSION.ATTR.SET".as_slice(), b"big", b"w", &over],
    );
    assert_err_code(&refused, "ERR");
    let refused = call(
        &mut c,
        &[b"SESSION.UPDATE".as_slice(), b"big", b"ATTR", b"w", &over],
    );
    assert_err_code(&refused, "ERR");
    let s = get_session(&mut c, "big", false).unwrap();
    assert_eq!(s.version, 1);
    assert_eq!(s.attrs.len(), 1);
}

pub fn sessions_hold_at_most_1024_attributes<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    let mut args: Vec<String> = vec!["SESSION.CREATE".into(), "ID".into(), "many".into()];
    for i in 0..1024 {
        args.extend(["ATTR".into(), format!("a{i}"), "v".into()]);
    }
    assert_eq!(call(&mut c, &args), bulk("many"));
    assert_eq!(
        get_session(&mut c, "many", false).unwrap().attrs.len(),
        1024
    );

    // A 1025th attribute is refused whichever command tries to add it...
    assert_err_code(
        &call(&mut c, &["SESSION.ATTR.SET", "many", "extra", "v"]),
        "ERR",
    );
    assert_err_code(
        &call(&mut c, &["SESSION.UPDATE", "many", "ATTR", "extra", "v"]),
        "ERR",
    );
    assert_err_code(
        &call(&mut c, &["SESSION.ATTR.INCRBY", "many", "extra", "1"]),
        "ERR",
    );
    assert_eq!(version(&mut c, "many"), 1);
    // ...but overwriting an existing one, or replacing one in the same step, is fine.
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.SET", "many", "a0", "w"]),
        Value::Int(2)
    );
    assert_eq!(
        call(
            &mut c,
            &[
                "SESSION.UPDATE",
                "many",
                "DELATTR",
                "a1",
                "ATTR",
                "extra",
                "v"
            ]
        ),
        Value::Int(3)
    );

    args[2] = "too-many".into();
    args.extend(["ATTR".into(), "a1024".into(), "v".into()]);
    assert_err_code(&call(&mut c, &args), "ERR");
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "too-many"]), Value::Int(0));
}

pub fn limits_are_configurable<T: Target>() {
    let sc = T::start(&[
        "--max-name-len",
        "8",
        "--max-value-len",
        "16",
        "--max-attrs",
        "2",
    ]);
    let mut c = sc.client();
    let v16 = "v".repeat(16);
    let v17 = "v".repeat(17);
    assert_eq!(
        call(
            &mut c,
            &[
                "SESSION.CREATE",
                "ID",
                "12345678",
                "USER",
                "uuuuuuuu",
                "ATTR",
                "a",
                &v16,
                "ATTR",
                "b",
                "1"
            ]
        ),
        bulk("12345678")
    );
    assert_err_code(&call(&mut c, &["SESSION.CREATE", "ID", "123456789"]), "ERR");
    assert_err_code(
        &call(&mut c, &["SESSION.CREATE", "USER", "uuuuuuuuu"]),
        "ERR",
    );
    assert_err_code(
        &call(&mut c, &["SESSION.ATTR.SET", "12345678", "a", &v17]),
        "ERR",
    );
    assert_err_code(
        &call(&mut c, &["SESSION.ATTR.SET", "12345678", "c", "1"]),
        "ERR",
    );
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(1));
    assert_eq!(version(&mut c, "12345678"), 1);
}

// ---------------------------------------------------------------------------
// EXISTS, ATTR.*
// ---------------------------------------------------------------------------

pub fn exists_counts_live_ids<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "a"]);
    call(&mut c, &["SESSION.CREATE", "ID", "b"]);
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "a"]), Value::Int(1));
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "nope"]), Value::Int(0));
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "a", "b", "nope"]),
        Value::Int(2)
    );
    // As Redis EXISTS: a repeated id counts each time.
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "a", "a"]), Value::Int(2));
}

pub fn attr_set_get_del<T: Target>() {
    for resp3 in [false, true] {
        let sc = T::start(&[]);
        let mut c = client(&sc, resp3);
        call(&mut c, &["SESSION.CREATE", "ID", "s", "ATTR", "keep", "1"]);
        assert_eq!(
            call(&mut c, &["SESSION.ATTR.SET", "s", "a", "x", "b", "y"]),
            Value::Int(2)
        );
        assert_eq!(
            call(&mut c, &["SESSION.ATTR.SET", "s", "a", "z"]),
            Value::Int(3)
        );
        assert_eq!(
            call(&mut c, &["SESSION.ATTR.GET", "s", "a", "missing", "b"]),
            Value::Array(vec![bulk("z"), Value::Nil, bulk("y")])
        );
        assert_eq!(call(&mut c, &["SESSION.ATTR.GET", "nope", "a"]), Value::Nil);

        assert_eq!(
            call(&mut c, &["SESSION.ATTR.DEL", "s", "a", "missing", "b"]),
            Value::Int(2)
        );
        assert_eq!(version(&mut c, "s"), 4);
        assert_eq!(
            call(&mut c, &["SESSION.ATTR.GET", "s", "a"]),
            Value::Array(vec![Value::Nil])
        );
        assert_eq!(
            call(&mut c, &["SESSION.ATTR.DEL", "nope", "a"]),
            Value::Int(0)
        );
        assert_eq!(
            get_session(&mut c, "s", resp3).unwrap().attrs,
            attrs(&[("keep", "1")])
        );

        assert_err(
            &call(&mut c, &["SESSION.ATTR.SET", "nope", "a", "1"]),
            "NOSESSION no such session",
        );
        assert_eq!(call(&mut c, &["SESSION.EXISTS", "nope"]), Value::Int(0));
    }
}

pub fn attr_get_missing_session_is_null_on_the_wire<T: Target>() {
    let sc = T::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["SESSION.ATTR.GET", "nope", "a", "b"]);
    raw.expect_bytes(b"$-1\r\n");
    raw.cmd(&["SESSION.CREATE", "ID", "s", "ATTR", "a", "1"]);
    raw.send_cmd(&["SESSION.ATTR.GET", "s", "a", "b"]);
    raw.expect_bytes(b"*2\r\n$1\r\n1\r\n$-1\r\n");
    raw.cmd(&["HELLO", "3"]);
    raw.send_cmd(&["SESSION.ATTR.GET", "nope", "a"]);
    raw.expect_bytes(b"_\r\n");
    raw.send_cmd(&["SESSION.ATTR.GET", "s", "a", "b"]);
    raw.expect_bytes(b"*2\r\n$1\r\n1\r\n_\r\n");
}

pub fn attr_incrby_behaves_as_hincrby<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "s",
            "ATTR",
            "word",
            "abc",
            "ATTR",
            "max",
            "9223372036854775807",
        ],
    );
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.INCRBY", "s", "n", "5"]),
        Value::Int(5)
    );
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.INCRBY", "s", "n", "-7"]),
        Value::Int(-2)
    );
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.GET", "s", "n"]),
        Value::Array(vec![bulk("-2")])
    );
    assert_eq!(version(&mut c, "s"), 3);

    assert_err(
        &call(&mut c, &["SESSION.ATTR.INCRBY", "s", "word", "1"]),
        "ERR attribute value is not an integer or out of range",
    );
    let v = call(&mut c, &["SESSION.ATTR.INCRBY", "s", "n", "one"]);
    let e = err_text(&v);
    assert!(
        e.starts_with("ERR ") && e.contains("not an integer or out of range"),
        "{e}"
    );
    // Overflow is refused and leaves the value as it was.
    assert_err_code(
        &call(&mut c, &["SESSION.ATTR.INCRBY", "s", "max", "1"]),
        "ERR",
    );
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.GET", "s", "max", "word"]),
        Value::Array(vec![bulk("9223372036854775807"), bulk("abc")])
    );
    assert_eq!(version(&mut c, "s"), 3);

    assert_err(
        &call(&mut c, &["SESSION.ATTR.INCRBY", "nope", "n", "1"]),
        "NOSESSION no such session",
    );
}

pub fn attr_incrby_from_many_connections_loses_nothing<T: Target>() {
    let sc = T::start(&[]);
    call(&mut sc.client(), &["SESSION.CREATE", "ID", "ctr"]);
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let mut c = sc.for_worker(k).client();
            thread::spawn(move || {
                for _ in 0..100 {
                    int(&call(&mut c, &["SESSION.ATTR.INCRBY", "ctr", "n", "1"]));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = sc.client();
    assert!(wait_until(WAIT, || version(&mut c, "ctr") == 801));
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.GET", "ctr", "n"]),
        Value::Array(vec![bulk("800")])
    );
    assert_eq!(version(&mut c, "ctr"), 801);
}

// ---------------------------------------------------------------------------
// UPDATE and IFVERSION
// ---------------------------------------------------------------------------

pub fn update_applies_every_change_as_one_mutation<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "s",
            "USER",
            "u1",
            "CONN",
            "c1",
            "ATTR",
            "a",
            "1",
            "ATTR",
            "b",
            "2",
        ],
    );
    let before = now_ms();
    let v = call(
        &mut c,
        &[
            "SESSION.UPDATE",
            "s",
            "USER",
            "u2",
            "CONN",
            "c2",
            "STATUS",
            "disconnected",
            "TTL",
            "100",
            "ATTR",
            "c",
            "3",
            "ATTR",
            "a",
            "10",
            "DELATTR",
            "b",
        ],
    );
    assert_eq!(v, Value::Int(2));
    let s = get_session(&mut c, "s", false).unwrap();
    assert_eq!(s.version, 2);
    assert_eq!(s.user.as_deref(), Some(&b"u2"[..]));
    assert_eq!(s.conn.as_deref(), Some(&b"c2"[..]));
    assert_eq!(s.status, "disconnected");
    assert_eq!(s.ttl, 100_000);
    assert!(
        s.expires >= before + 100_000 && s.expires <= now_ms() + 100_000,
        "expires {}",
        s.expires
    );
    assert_eq!(s.attrs, attrs(&[("a", "10"), ("c", "3")]));
    // Indexes follow the update.
    assert_eq!(
        call(&mut c, &["SESSION.BYUSER", "u1"]),
        Value::Array(vec![])
    );
    assert_eq!(byuser(&mut c, "u2"), ["s"]);
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "c1"]), Value::Nil);
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "c2"]), bulk("s"));

    assert_eq!(
        call(
            &mut c,
            &["SESSION.UPDATE", "s", "PTTL", "4000", "STATUS", "active"]
        ),
        Value::Int(3)
    );
    let s = get_session(&mut c, "s", false).unwrap();
    assert_eq!((s.ttl, s.status.as_str()), (4000, "active"));

    assert_err(
        &call(&mut c, &["SESSION.UPDATE", "nope", "ATTR", "a", "1"]),
        "NOSESSION no such session",
    );
    assert_err_code(
        &call(&mut c, &["SESSION.UPDATE", "s", "STATUS", "sleeping"]),
        "ERR",
    );
    assert_err(
        &call(&mut c, &["SESSION.UPDATE", "s", "TTL", "0"]),
        "ERR invalid TTL",
    );
    assert_eq!(version(&mut c, "s"), 3);
}

pub fn update_ifversion_applies_only_on_the_current_version<T: Target>() {
    for resp3 in [false, true] {
        let sc = T::start(&[]);
        let mut c = client(&sc, resp3);
        call(&mut c, &["SESSION.CREATE", "ID", "s", "ATTR", "a", "1"]);
        assert_eq!(
            call(
                &mut c,
                &["SESSION.UPDATE", "s", "IFVERSION", "1", "ATTR", "a", "2"]
            ),
            Value::Int(2)
        );
        let v = call(
            &mut c,
            &[
                "SESSION.UPDATE",
                "s",
                "IFVERSION",
                "1",
                "ATTR",
                "a",
                "3",
                "USER",
                "x",
            ],
        );
        assert_err(&v, "CONFLICT version is 2");
        let v = call(
            &mut c,
            &["SESSION.UPDATE", "s", "IFVERSION", "7", "DELATTR", "a"],
        );
        assert_err(&v, "CONFLICT version is 2");
        let s = get_session(&mut c, "s", resp3).unwrap();
        assert_eq!(s.version, 2);
        assert_eq!(s.user, None);
        assert_eq!(s.attrs, attrs(&[("a", "2")]));
        assert_eq!(
            call(
                &mut c,
                &["SESSION.UPDATE", "s", "IFVERSION", "2", "DELATTR", "a"]
            ),
            Value::Int(3)
        );
        assert_err(
            &call(
                &mut c,
                &["SESSION.UPDATE", "nope", "IFVERSION", "1", "ATTR", "a", "1"],
            ),
            "NOSESSION no such session",
        );
        assert_err_code(
            &call(&mut c, &["SESSION.UPDATE", "s", "IFVERSION", "three"]),
            "ERR",
        );
    }
}

pub fn concurrent_ifversion_updates_are_never_lost_or_doubled<T: Target>() {
    let sc = T::start(&[]);
    call(
        &mut sc.client(),
        &["SESSION.CREATE", "ID", "cas", "ATTR", "n", "0"],
    );
    const WORKERS: usize = 6;
    const EACH: i64 = 40;
    let barrier = Arc::new(Barrier::new(WORKERS));
    let threads: Vec<_> = (0..WORKERS)
        .map(|w| {
            // Workers alternate between the two sidecars.
            let mut c = sc.for_worker(w).client();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let mut done = 0;
                let mut conflicts = 0;
                while done < EACH {
                    if cas_increment(&mut c, "cas", "n") {
                        done += 1;
                    } else {
                        conflicts += 1;
                    }
                }
                conflicts
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = sc.client();
    let total = WORKERS as i64 * EACH;
    // A's hot copy may trail B's last write by the invalidation's flight.
    assert!(wait_until(WAIT, || get_session(&mut c, "cas", false)
        .unwrap()
        .version
        == 1 + total));
    let s = get_session(&mut c, "cas", false).unwrap();
    assert_eq!(s.attrs[&b"n"[..]], total.to_string().into_bytes());
    assert_eq!(s.version, 1 + total);
}

// ---------------------------------------------------------------------------
// TOUCH, TTL, EXPIRE
// ---------------------------------------------------------------------------

pub fn touch_extends_only_when_less_than_half_the_ttl_remains<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "t", "PTTL", "2000"]);
    let created = get_session(&mut c, "t", false).unwrap();

    // Plenty left: no extension, no version change, but last_active moves.
    assert!(wait_until(Duration::from_secs(1), || now_ms() >= created.created + 20));
    let touch_at = now_ms();
    let left = int(&call(&mut c, &["SESSION.TOUCH", "t"]));
    assert!(left > 1000 && left <= 2000, "left {left}");
    let s = get_session(&mut c, "t", false).unwrap();
    assert_eq!(
        s.version, 1,
        "a non-extending TOUCH is not a version change"
    );
    assert_eq!(
        s.expires, created.expires,
        "a non-extending TOUCH keeps expires"
    );
    assert!(
        s.last_active >= touch_at,
        "last_active {} < {touch_at}",
        s.last_active
    );
    assert!(left <= s.expires - touch_at, "reply must be the ms left");

    // Less than half left: the touch slides the expiry to now + ttl.
    assert!(wait_until(Duration::from_secs(3), || int(&call(
        &mut c,
        &["SESSION.TTL", "t"]
    )) < 900));
    let touch_at = now_ms();
    let left = int(&call(&mut c, &["SESSION.TOUCH", "t"]));
    let after = now_ms();
    assert!(
        left > 1900 && left <= 2000,
        "left after extending touch {left}"
    );
    let s = get_session(&mut c, "t", false).unwrap();
    assert!(
        s.expires >= touch_at + 2000 && s.expires <= after + 2000,
        "expires {}",
        s.expires
    );
    assert_eq!(s.version, 2, "an extending TOUCH is a mutation");
    assert_eq!(s.ttl, 2000);

    assert_eq!(call(&mut c, &["SESSION.TOUCH", "nope"]), Value::Int(-2));
}

pub fn ttl_reports_milliseconds_left_or_minus_two<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "s", "TTL", "100"]);
    let left = int(&call(&mut c, &["SESSION.TTL", "s"]));
    assert!(left > 99_000 && left <= 100_000, "left {left}");
    assert_eq!(call(&mut c, &["SESSION.TTL", "nope"]), Value::Int(-2));
    // TTL is a read: no version change.
    assert_eq!(version(&mut c, "s"), 1);
}

pub fn expire_resets_ttl_and_expiry<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "s", "TTL", "1000"]);
    let before = now_ms();
    assert_eq!(call(&mut c, &["SESSION.EXPIRE", "s", "30"]), Value::Int(1));
    let s = get_session(&mut c, "s", false).unwrap();
    assert_eq!(s.ttl, 30_000);
    assert!(s.expires >= before + 30_000 && s.expires <= now_ms() + 30_000);
    assert_eq!(s.version, 2);
    let left = int(&call(&mut c, &["SESSION.TTL", "s"]));
    assert!(left > 29_000 && left <= 30_000, "left {left}");
    assert_eq!(
        call(&mut c, &["SESSION.EXPIRE", "nope", "30"]),
        Value::Int(0)
    );
    assert_err_code(&call(&mut c, &["SESSION.EXPIRE", "s", "soon"]), "ERR");
}

// ---------------------------------------------------------------------------
// DEL, BIND, UNBIND, BYCONN
// ---------------------------------------------------------------------------

pub fn del_removes_sessions_and_their_index_entries<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "a", "USER", "u", "CONN", "ca"],
    );
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "b", "USER", "u", "CONN", "cb"],
    );
    call(&mut c, &["SESSION.CREATE", "ID", "c", "USER", "u"]);
    assert_eq!(
        call(&mut c, &["SESSION.DEL", "a", "b", "nope", "a"]),
        Value::Int(2)
    );
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "a", "b", "c"]),
        Value::Int(1)
    );
    assert_eq!(call(&mut c, &["SESSION.GET", "a"]), Value::Nil);
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "ca"]), Value::Nil);
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "cb"]), Value::Nil);
    assert_eq!(byuser(&mut c, "u"), ["c"]);
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(1));
    assert_eq!(call(&mut c, &["SESSION.DEL", "nope"]), Value::Int(0));
}

pub fn bind_resumes_a_session_with_its_full_ttl<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "s", "CONN", "c1", "TTL", "60"],
    );
    assert_eq!(
        call(&mut c, &["SESSION.UNBIND", "s", "GRACE", "5"]),
        Value::Int(2)
    );
    let unbound = get_session(&mut c, "s", false).unwrap();
    assert!(unbound.expires <= now_ms() + 5000);

    let before = now_ms();
    assert_eq!(call(&mut c, &["SESSION.BIND", "s", "c2"]), Value::Int(3));
    let after = now_ms();
    let s = get_session(&mut c, "s", false).unwrap();
    assert_eq!(s.conn.as_deref(), Some(&b"c2"[..]));
    assert_eq!(s.status, "active");
    assert_eq!(s.node, NODE);
    assert!(
        (before..=after).contains(&s.last_active),
        "last_active {}",
        s.last_active
    );
    assert!(
        s.expires >= before + 60_000 && s.expires <= after + 60_000,
        "BIND must give back the full ttl: expires {}",
        s.expires
    );
    assert_eq!(s.version, 3);
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "c2"]), bulk("s"));
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "c1"]), Value::Nil);

    assert_err(
        &call(&mut c, &["SESSION.BIND", "nope", "c9"]),
        "NOSESSION no such session",
    );
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "c9"]), Value::Nil);
}

pub fn bind_moves_a_connection_from_its_previous_session<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "old",
            "CONN",
            "conn-1",
            "ATTR",
            "k",
            "v",
        ],
    );
    call(&mut c, &["SESSION.CREATE", "ID", "new"]);
    assert_eq!(
        call(&mut c, &["SESSION.BIND", "new", "conn-1"]),
        Value::Int(2)
    );
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "conn-1"]), bulk("new"));
    let old = get_session(&mut c, "old", false).unwrap();
    assert_eq!(old.conn, None);
    assert_eq!(old.status, "disconnected");
    assert_eq!(old.attrs, attrs(&[("k", "v")]));
    let new = get_session(&mut c, "new", false).unwrap();
    assert_eq!(new.conn.as_deref(), Some(&b"conn-1"[..]));
    assert_eq!(new.status, "active");
}

pub fn create_with_a_bound_conn_moves_the_connection_index<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "first",
            "USER",
            "u",
            "CONN",
            "ws-9",
            "ATTR",
            "cart",
            "3",
        ],
    );
    assert_eq!(
        call(&mut c, &["SESSION.CREATE", "ID", "second", "CONN", "ws-9"]),
        bulk("second")
    );
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "ws-9"]), bulk("second"));
    let first = get_session(&mut c, "first", false).unwrap();
    assert_eq!(first.conn, None);
    assert_eq!(first.status, "disconnected");
    assert_eq!(first.user.as_deref(), Some(&b"u"[..]));
    assert_eq!(first.attrs, attrs(&[("cart", "3")]));
    assert_eq!(byuser(&mut c, "u"), ["first"]);
    // The old session no longer claims the connection: unbinding it leaves the index alone.
    call(&mut c, &["SESSION.UNBIND", "first"]);
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "ws-9"]), bulk("second"));
}

pub fn unbind_disconnects_and_grace_only_shortens<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "s", "CONN", "c1", "TTL", "60"],
    );
    let created = get_session(&mut c, "s", false).unwrap();
    assert_eq!(call(&mut c, &["SESSION.UNBIND", "s"]), Value::Int(2));
    let s = get_session(&mut c, "s", false).unwrap();
    assert_eq!(s.conn, None);
    assert_eq!(s.status, "disconnected");
    assert_eq!(
        s.expires, created.expires,
        "UNBIND without GRACE keeps expires"
    );
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "c1"]), Value::Nil);

    // A grace longer than what is left does not extend.
    assert_eq!(
        call(&mut c, &["SESSION.UNBIND", "s", "GRACE", "600"]),
        Value::Int(3)
    );
    assert_eq!(
        get_session(&mut c, "s", false).unwrap().expires,
        created.expires
    );

    // A shorter grace brings the expiry in to now + grace.
    let before = now_ms();
    assert_eq!(
        call(&mut c, &["SESSION.UNBIND", "s", "GRACE", "2"]),
        Value::Int(4)
    );
    let s = get_session(&mut c, "s", false).unwrap();
    assert!(
        s.expires >= before + 2000 && s.expires <= now_ms() + 2000,
        "expires {}",
        s.expires
    );
    let left = int(&call(&mut c, &["SESSION.TTL", "s"]));
    assert!(left <= 2000 && left > 1000, "left {left}");

    assert_err(
        &call(&mut c, &["SESSION.UNBIND", "nope"]),
        "NOSESSION no such session",
    );
    assert_err(
        &call(&mut c, &["SESSION.UNBIND", "nope", "GRACE", "5"]),
        "NOSESSION no such session",
    );
}

pub fn byconn_returns_the_bound_id_or_nil<T: Target>() {
    let sc = T::start(&[]);
    let mut raw = sc.raw();
    raw.cmd(&["SESSION.CREATE", "ID", "s", "CONN", "c"]);
    assert_eq!(raw.cmd(&["SESSION.BYCONN", "c"]), Resp::bulk("s"));
    raw.send_cmd(&["SESSION.BYCONN", "other"]);
    raw.expect_bytes(b"$-1\r\n");
    raw.cmd(&["HELLO", "3"]);
    raw.send_cmd(&["SESSION.BYCONN", "other"]);
    raw.expect_bytes(b"_\r\n");
}

pub fn update_conn_takes_the_connection_from_its_previous_session<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "holder", "CONN", "c1"]);
    call(&mut c, &["SESSION.CREATE", "ID", "taker"]);
    assert_eq!(
        call(&mut c, &["SESSION.UPDATE", "taker", "CONN", "c1"]),
        Value::Int(2)
    );
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "c1"]), bulk("taker"));
    // Indexes never lie: no other session may still claim the connection.
    let holder = get_session(&mut c, "holder", false).unwrap();
    assert_ne!(
        holder.conn.as_deref(),
        Some(&b"c1"[..]),
        "two sessions claim conn c1"
    );
}

pub fn concurrent_binds_of_one_connection_leave_exactly_one_owner<T: Target>() {
    const SESSIONS: usize = 12;
    let sc = T::start(&[]);
    let mut c = sc.client();
    for i in 0..SESSIONS {
        call(&mut c, &["SESSION.CREATE", "ID", &format!("b{i}")]);
    }
    let barrier = Arc::new(Barrier::new(SESSIONS));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let mut c = sc.client();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                for _ in 0..20 {
                    let v = call(&mut c, &["SESSION.BIND", &format!("b{i}"), "shared"]);
                    assert!(matches!(v, Value::Int(_)), "{v:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let owner = text(&call(&mut c, &["SESSION.BYCONN", "shared"]));
    let claimants: Vec<String> = (0..SESSIONS)
        .map(|i| format!("b{i}"))
        .filter(|id| {
            get_session(&mut c, id, false).unwrap().conn.as_deref() == Some(&b"shared"[..])
        })
        .collect();
    assert_eq!(
        claimants,
        std::slice::from_ref(&owner),
        "BYCONN says {owner}"
    );
    let active: Vec<String> = (0..SESSIONS)
        .map(|i| format!("b{i}"))
        .filter(|id| get_session(&mut c, id, false).unwrap().status == "active")
        .collect();
    assert_eq!(active, [owner]);
}

pub fn attr_set_with_a_repeated_name_keeps_the_last_value<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "r"]);
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.SET", "r", "a", "1", "a", "2"]),
        Value::Int(2)
    );
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.GET", "r", "a"]),
        Value::Array(vec![bulk("2")])
    );
}

// ---------------------------------------------------------------------------
// Users: MAXPERUSER, BYUSER, KILLUSER
// ---------------------------------------------------------------------------

/// Creates `ids` for `user` in this order with distinct creation times.
fn create_in_order(c: &mut redis::Connection, user: &str, ids: &[&str]) {
    for id in ids {
        let start = now_ms();
        assert_eq!(
            call(c, &["SESSION.CREATE", "ID", id, "USER", user]),
            bulk(id)
        );
        assert!(wait_until(Duration::from_secs(1), || now_ms() >= start + 2));
    }
}

pub fn byuser_lists_oldest_first<T: Target>() {
    for resp3 in [false, true] {
        let sc = T::start(&[]);
        let mut c = client(&sc, resp3);
        create_in_order(&mut c, "u", &["zeta", "alpha", "mid"]);
        call(&mut c, &["SESSION.CREATE", "ID", "other", "USER", "v"]);
        assert_eq!(byuser(&mut c, "u"), ["zeta", "alpha", "mid"]);
        // Touching or updating does not reorder: age is creation.
        call(&mut c, &["SESSION.ATTR.SET", "zeta", "a", "1"]);
        assert_eq!(byuser(&mut c, "u"), ["zeta", "alpha", "mid"]);

        let with = array(&call(&mut c, &["SESSION.BYUSER", "u", "WITHSESSIONS"]));
        let ids: Vec<Vec<u8>> = with.iter().map(|v| session(v, resp3).id).collect();
        assert_eq!(ids, [b"zeta".to_vec(), b"alpha".to_vec(), b"mid".to_vec()]);
        assert_eq!(session(&with[0], resp3).attrs, attrs(&[("a", "1")]));

        assert_eq!(
            call(&mut c, &["SESSION.BYUSER", "nobody"]),
            Value::Array(vec![])
        );
        assert_eq!(
            call(&mut c, &["SESSION.BYUSER", "nobody", "WITHSESSIONS"]),
            Value::Array(vec![])
        );
        call(&mut c, &["SESSION.DEL", "alpha"]);
        assert_eq!(byuser(&mut c, "u"), ["zeta", "mid"]);
        call(&mut c, &["SESSION.UPDATE", "mid", "USER", "v"]);
        assert_eq!(byuser(&mut c, "u"), ["zeta"]);
        // "mid" was created before "other": age is creation, not index order.
        assert_eq!(byuser(&mut c, "v"), ["mid", "other"]);
    }
}

pub fn maxperuser_evicts_the_oldest_sessions<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    create_in_order(&mut c, "u", &["s1", "s2", "s3"]);
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "x", "USER", "someone-else"],
    );
    assert_eq!(
        call(
            &mut c,
            &["SESSION.CREATE", "ID", "s4", "USER", "u", "MAXPERUSER", "3"]
        ),
        bulk("s4")
    );
    assert_eq!(byuser(&mut c, "u"), ["s2", "s3", "s4"]);
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "s1"]), Value::Int(0));

    assert_eq!(
        call(
            &mut c,
            &["SESSION.CREATE", "ID", "s5", "USER", "u", "MAXPERUSER", "1"]
        ),
        bulk("s5")
    );
    assert_eq!(byuser(&mut c, "u"), ["s5"]);
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "s2", "s3", "s4"]),
        Value::Int(0)
    );
    // Counted as evictions, in every mode.
    let info = parse_info(&text(&call(&mut c, &["INFO", "sessions"])));
    assert_eq!(info.get("sessions_evicted").map(String::as_str), Some("4"));
    // Other users are untouched.
    assert_eq!(byuser(&mut c, "someone-else"), ["x"]);
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(2));
    // Under the limit nothing is evicted.
    assert_eq!(
        call(
            &mut c,
            &["SESSION.CREATE", "ID", "s6", "USER", "u", "MAXPERUSER", "5"]
        ),
        bulk("s6")
    );
    assert_eq!(byuser(&mut c, "u"), ["s5", "s6"]);
}

pub fn maxperuser_eviction_cleans_the_connection_index<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    create_in_order(&mut c, "u", &["first"]);
    call(&mut c, &["SESSION.UPDATE", "first", "CONN", "ws-first"]);
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "ws-first"]), bulk("first"));
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "second",
            "USER",
            "u",
            "MAXPERUSER",
            "1",
        ],
    );
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "ws-first"]), Value::Nil);
    assert_eq!(call(&mut c, &["SESSION.GET", "first"]), Value::Nil);
}

pub fn concurrent_creates_never_leave_more_than_maxperuser<T: Target>() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 10;
    let sc = T::start(&[]);
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let creators: Vec<_> = (0..CLIENTS)
        .map(|k| {
            // Logins alternate between the two sidecars.
            let mut c = sc.for_worker(k).client();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                for _ in 0..ROUNDS {
                    let id = call(
                        &mut c,
                        &["SESSION.CREATE", "USER", "popular", "MAXPERUSER", "3"],
                    );
                    assert!(matches!(id, Value::BulkString(_)), "{id:?}");
                }
            })
        })
        .collect();
    let mut observer = sc.client();
    barrier.wait();
    let mut max_seen = 0;
    while !creators.iter().all(|t| t.is_finished()) {
        let n = byuser(&mut observer, "popular").len();
        max_seen = max_seen.max(n);
        let count = int(&call(&mut observer, &["SESSION.COUNT"]));
        assert!(
            count <= 3,
            "SESSION.COUNT saw {count} sessions for a MAXPERUSER 3 user"
        );
    }
    for t in creators {
        t.join().unwrap();
    }
    assert!(max_seen <= 3, "BYUSER saw {max_seen} sessions");
    let ids = byuser(&mut observer, "popular");
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(call(&mut observer, &["SESSION.COUNT"]), Value::Int(3));
    let live: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut args = vec!["SESSION.EXISTS"];
    args.extend(live);
    assert_eq!(call(&mut observer, &args), Value::Int(3));
}

pub fn killuser_deletes_every_session_of_the_user<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(
        &mut c,
        &["SESSION.CREATE", "ID", "a", "USER", "u", "CONN", "ca"],
    );
    call(&mut c, &["SESSION.CREATE", "ID", "b", "USER", "u"]);
    call(&mut c, &["SESSION.CREATE", "ID", "c", "USER", "v"]);
    assert_eq!(call(&mut c, &["SESSION.KILLUSER", "u"]), Value::Int(2));
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "a", "b", "c"]),
        Value::Int(1)
    );
    assert_eq!(call(&mut c, &["SESSION.BYUSER", "u"]), Value::Array(vec![]));
    assert_eq!(call(&mut c, &["SESSION.BYCONN", "ca"]), Value::Nil);
    assert_eq!(call(&mut c, &["SESSION.KILLUSER", "u"]), Value::Int(0));
    assert_eq!(call(&mut c, &["SESSION.KILLUSER", "nobody"]), Value::Int(0));
    assert_eq!(byuser(&mut c, "v"), ["c"]);
}

// ---------------------------------------------------------------------------
// Transactions (MULTI / EXEC / DISCARD / WATCH)
// ---------------------------------------------------------------------------

/// The `redis` crate's atomic pipeline (MULTI ... EXEC, replies unwrapped
/// from EXEC's array): SESSION.* and commands the sidecar answers, in order.
fn check_transaction_in_order<T: Target>(resp3: bool) {
    let sc = T::start(&[]);
    let mut c = client(&sc, resp3);
    let replies: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("SESSION.CREATE")
        .arg("ID")
        .arg("tx1")
        .arg("USER")
        .arg("u")
        .arg("ATTR")
        .arg("n")
        .arg("1")
        .cmd("SESSION.ATTR.INCRBY")
        .arg("tx1")
        .arg("n")
        .arg("41")
        .cmd("PING")
        .cmd("SESSION.ATTR.GET")
        .arg("tx1")
        .arg("n")
        .cmd("ECHO")
        .arg("last")
        .query(&mut c)
        .expect("the transaction runs");
    assert_eq!(replies.len(), 5, "{replies:?}");
    assert_eq!(replies[0], bulk("tx1"));
    assert_eq!(replies[1], Value::Int(42));
    assert_eq!(text(&replies[2]), "PONG");
    assert_eq!(array(&replies[3]), [bulk("42")]);
    assert_eq!(replies[4], bulk("last"));
    // The connection is still in step: the next command gets its own reply.
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "tx1"]), Value::Int(1));
}

pub fn transaction_runs_session_commands_in_order_resp2<T: Target>() {
    check_transaction_in_order::<T>(false)
}

pub fn transaction_runs_session_commands_in_order_resp3<T: Target>() {
    check_transaction_in_order::<T>(true)
}

pub fn queued_commands_answer_queued_and_run_only_at_exec<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    let mut other = sc.client();
    assert_eq!(text(&call(&mut c, &["MULTI"])), "OK");
    assert_eq!(
        text(&call(&mut c, &["SESSION.CREATE", "ID", "q1", "USER", "u"])),
        "QUEUED"
    );
    // Not created yet: queued commands run at EXEC.
    assert_eq!(call(&mut other, &["SESSION.EXISTS", "q1"]), Value::Int(0));
    let exec = call(&mut c, &["EXEC"]);
    assert_eq!(array(&exec), [bulk("q1")]);
    assert_eq!(call(&mut other, &["SESSION.EXISTS", "q1"]), Value::Int(1));
}

pub fn discard_runs_nothing<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "keep"]);
    assert_eq!(text(&call(&mut c, &["MULTI"])), "OK");
    assert_eq!(text(&call(&mut c, &["SESSION.DEL", "keep"])), "QUEUED");
    assert_eq!(
        text(&call(&mut c, &["SESSION.CREATE", "ID", "never"])),
        "QUEUED"
    );
    assert_eq!(text(&call(&mut c, &["DISCARD"])), "OK");
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "keep", "never"]),
        Value::Int(1)
    );
    assert_err(&call(&mut c, &["EXEC"]), "ERR EXEC without MULTI");
}

pub fn queue_time_errors_make_exec_abort<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    for refused in [&["SESSION.GET"][..], &["NOSUCHCOMMAND", "x"][..]] {
        assert_eq!(text(&call(&mut c, &["MULTI"])), "OK");
        assert_eq!(
            text(&call(&mut c, &["SESSION.CREATE", "ID", "aborted"])),
            "QUEUED"
        );
        assert!(err_text(&call(&mut c, refused)).starts_with("ERR "));
        assert_eq!(text(&call(&mut c, &["PING"])), "QUEUED");
        assert_err(
            &call(&mut c, &["EXEC"]),
            "EXECABORT Transaction discarded because of previous errors.",
        );
        assert_eq!(call(&mut c, &["SESSION.EXISTS", "aborted"]), Value::Int(0));
    }
    // Runtime errors are replies in EXEC's array; the rest still runs.
    assert_eq!(text(&call(&mut c, &["MULTI"])), "OK");
    call(&mut c, &["SESSION.ATTR.SET", "missing", "a", "1"]);
    call(&mut c, &["SESSION.CREATE", "ID", "after"]);
    let exec = array(&call(&mut c, &["EXEC"]));
    assert_err(&exec[0], "NOSESSION no such session");
    assert_eq!(exec[1], bulk("after"));
}

pub fn transaction_misuse_is_worded_as_redis<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    assert_err(&call(&mut c, &["EXEC"]), "ERR EXEC without MULTI");
    assert_err(&call(&mut c, &["DISCARD"]), "ERR DISCARD without MULTI");
    assert_eq!(text(&call(&mut c, &["MULTI"])), "OK");
    assert_err(
        &call(&mut c, &["MULTI"]),
        "ERR MULTI calls can not be nested",
    );
    assert_err(
        &call(&mut c, &["WATCH", "x"]),
        "ERR WATCH inside MULTI is not allowed",
    );
    // Neither error aborts the transaction, as in Redis.
    assert_eq!(text(&call(&mut c, &["PING"])), "QUEUED");
    assert_eq!(array(&call(&mut c, &["EXEC"])).len(), 1);
    // RESET ends a transaction.
    call(&mut c, &["MULTI"]);
    call(&mut c, &["SESSION.CREATE", "ID", "reset"]);
    assert_eq!(text(&call(&mut c, &["RESET"])), "RESET");
    assert_err(&call(&mut c, &["EXEC"]), "ERR EXEC without MULTI");
    assert_eq!(call(&mut c, &["SESSION.EXISTS", "reset"]), Value::Int(0));
}

/// One optimistic transaction on session `id`: WATCH, then `change` from
/// another client, then MULTI / ATTR.SET / EXEC. True when EXEC ran.
fn watched_exec(
    c: &mut redis::Connection,
    other: &mut redis::Connection,
    id: &str,
    change: &[&str],
) -> bool {
    assert_eq!(text(&call(c, &["WATCH", id])), "OK");
    if !change.is_empty() {
        call(other, change);
    }
    call(c, &["MULTI"]);
    call(c, &["SESSION.ATTR.SET", id, "by", "tx"]);
    match call(c, &["EXEC"]) {
        Value::Nil => false,
        Value::Array(replies) => {
            assert_eq!(replies.len(), 1);
            true
        }
        other => panic!("EXEC answered {other:?}"),
    }
}

pub fn watch_on_a_session_aborts_exec_when_it_changes<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    let mut other = client(sc.other(), false);
    call(&mut c, &["SESSION.CREATE", "ID", "w", "TTL", "600"]);
    assert!(
        watched_exec(&mut c, &mut other, "w", &[]),
        "unchanged: runs"
    );
    for change in [
        &["SESSION.ATTR.SET", "w", "by", "other"][..],
        &["SESSION.BIND", "w", "conn-1"][..],
    ] {
        // The other sidecar's change must have reached this one's copy.
        let before = version(&mut c, "w");
        assert!(
            !watched_exec(&mut c, &mut other, "w", change),
            "{change:?} must abort the transaction"
        );
        assert!(version(&mut c, "w") > before);
    }
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.GET", "w", "by"]),
        Value::Array(vec![bulk("other")])
    );
    // A heartbeat is not a change.
    assert!(watched_exec(
        &mut c,
        &mut other,
        "w",
        &["SESSION.TOUCH", "w"]
    ));
    // Deleted, and created where there was none, are changes.
    assert!(!watched_exec(
        &mut c,
        &mut other,
        "w",
        &["SESSION.DEL", "w"]
    ));
    assert!(!watched_exec(
        &mut c,
        &mut other,
        "w",
        &["SESSION.CREATE", "ID", "w"]
    ));
    // UNWATCH forgets.
    call(&mut c, &["WATCH", "w"]);
    call(&mut other, &["SESSION.ATTR.SET", "w", "by", "other"]);
    assert_eq!(text(&call(&mut c, &["UNWATCH"])), "OK");
    call(&mut c, &["MULTI"]);
    call(&mut c, &["PING"]);
    assert_eq!(array(&call(&mut c, &["EXEC"])).len(), 1);
}

// ---------------------------------------------------------------------------
// Client-side caching: CLIENT TRACKING over sessions
// ---------------------------------------------------------------------------

/// The next invalidation `con` receives (RESP3 push, or RESP2 message on
/// `__redis__:invalidate`), skipping nothing else: None when none comes.
pub fn next_invalidation(con: &mut RawConn, within: Duration) -> Option<Vec<String>> {
    match con.try_read_reply(within) {
        Err(_) => None,
        Ok(Resp::Push(items)) => {
            assert_eq!(items[0], Resp::bulk("invalidate"), "{items:?}");
            Some(keys(&items[1]))
        }
        Ok(Resp::Array(items)) => {
            assert_eq!(
                items[..2],
                [Resp::bulk("message"), Resp::bulk("__redis__:invalidate")]
            );
            Some(keys(&items[2]))
        }
        Ok(other) => panic!("expected an invalidation, got {other:?}"),
    }
}

fn keys(reply: &Resp) -> Vec<String> {
    match reply {
        Resp::Array(keys) => keys.iter().map(Resp::text).collect(),
        other => panic!("expected keys, got {other:?}"),
    }
}

fn resp3_raw(sc: &Sidecar) -> RawConn {
    let mut con = sc.raw();
    assert!(matches!(con.cmd(&["HELLO", "3"]), Resp::Map(_)));
    con
}

pub fn tracking_invalidates_a_read_session_once_when_it_changes<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    let mut other = client(sc.other(), false);
    call(&mut c, &["SESSION.CREATE", "ID", "cached", "TTL", "600"]);
    let mut tracker = resp3_raw(&sc);
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "ON"]),
        Resp::Simple("OK".into())
    );
    assert!(matches!(
        tracker.cmd(&["SESSION.GET", "cached"]),
        Resp::Map(_)
    ));
    // A session never read is not tracked.
    call(&mut other, &["SESSION.CREATE", "ID", "unread"]);
    call(&mut other, &["SESSION.ATTR.SET", "unread", "a", "1"]);
    // A change (through the other sidecar, with an upstream) is told once.
    call(&mut other, &["SESSION.ATTR.SET", "cached", "a", "1"]);
    assert_eq!(
        next_invalidation(&mut tracker, WAIT),
        Some(vec!["cached".to_string()])
    );
    call(&mut other, &["SESSION.ATTR.SET", "cached", "a", "2"]);
    assert_eq!(
        next_invalidation(&mut tracker, Duration::from_millis(300)),
        None
    );
    // Read again, then deleted: told again.
    assert!(matches!(
        tracker.cmd(&["SESSION.ATTR.GET", "cached", "a"]),
        Resp::Array(_)
    ));
    call(&mut other, &["SESSION.DEL", "cached"]);
    assert_eq!(
        next_invalidation(&mut tracker, WAIT),
        Some(vec!["cached".to_string()])
    );
    // A missing session that was read is told when it is created.
    assert_eq!(tracker.cmd(&["SESSION.EXISTS", "later"]), Resp::Int(0));
    call(
        &mut other,
        &["SESSION.CREATE", "ID", "later", "PTTL", "300"],
    );
    assert_eq!(
        next_invalidation(&mut tracker, WAIT),
        Some(vec!["later".to_string()])
    );
    // And when it expires.
    assert!(matches!(
        tracker.cmd(&["SESSION.TTL", "later"]),
        Resp::Int(_)
    ));
    assert_eq!(
        next_invalidation(&mut tracker, WAIT),
        Some(vec!["later".to_string()])
    );
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "OFF"]),
        Resp::Simple("OK".into())
    );
}

/// REDIRECT names a client of the sidecar; with an upstream, the sidecar
/// names that client's own upstream connection there. (Not on a cluster,
/// where the two connections may be on different nodes.)
#[allow(dead_code)] // the cluster suite leaves it out
pub fn tracking_redirects_to_a_resp2_subscriber<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "redirected"]);
    let mut target = sc.raw();
    let target_id = match target.cmd(&["CLIENT", "ID"]) {
        Resp::Int(id) => id.to_string(),
        other => panic!("CLIENT ID answered {other:?}"),
    };
    assert!(matches!(
        target.cmd(&["SUBSCRIBE", "__redis__:invalidate"]),
        Resp::Array(_)
    ));
    let mut tracker = sc.raw();
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &target_id]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        tracker.cmd(&["CLIENT", "GETREDIR"]),
        Resp::Int(target_id.parse().unwrap())
    );
    tracker.cmd(&["SESSION.GET", "redirected"]);
    call(&mut c, &["SESSION.UPDATE", "redirected", "ATTR", "x", "1"]);
    assert_eq!(
        next_invalidation(&mut target, WAIT),
        Some(vec!["redirected".to_string()])
    );
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", "987654"]),
        Resp::Error("ERR The client ID you want redirect to does not exist".into())
    );

    // A RESP3 tracker whose target goes is told the redirection broke, at
    // the next change it would have been told of.
    let mut tracker = resp3_raw(&sc);
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &target_id]),
        Resp::Simple("OK".into())
    );
    tracker.cmd(&["SESSION.GET", "redirected"]);
    drop(target);
    let gone = wait_until(WAIT, || {
        let clients = text(&call(&mut c, &["CLIENT", "LIST"]));
        !clients.contains(&format!("id={target_id} "))
    });
    assert!(gone, "the target never left");
    call(&mut c, &["SESSION.UPDATE", "redirected", "ATTR", "x", "2"]);
    let target: i64 = target_id.parse().unwrap();
    let broken = wait_until(WAIT, || match tracker.try_read_reply(WAIT) {
        Ok(Resp::Push(items)) => items == [Resp::bulk("tracking-redir-broken"), Resp::Int(target)],
        _ => false,
    });
    assert!(broken, "no tracking-redir-broken push");
}

pub fn tracking_bcast_prefixes_and_noloop<T: Target>() {
    let sc = T::start(&[]);
    let mut other = client(sc.other(), false);
    let mut tracker = resp3_raw(&sc);
    assert_eq!(
        tracker.cmd(&[
            "CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "room:", "NOLOOP"
        ]),
        Resp::Simple("OK".into())
    );
    // Its own changes are not told back (NOLOOP); others' are, read or not,
    // for ids under the prefix only.
    tracker.cmd(&["SESSION.CREATE", "ID", "room:own"]);
    call(&mut other, &["SESSION.CREATE", "ID", "hall:1"]);
    call(&mut other, &["SESSION.ATTR.SET", "hall:1", "a", "1"]);
    call(&mut other, &["SESSION.CREATE", "ID", "room:2"]);
    call(&mut other, &["SESSION.ATTR.SET", "room:2", "a", "1"]);
    let mut told = Vec::new();
    while let Some(keys) = next_invalidation(&mut tracker, Duration::from_millis(500)) {
        told.extend(keys);
    }
    assert!(told.contains(&"room:2".to_string()), "{told:?}");
    assert!(
        told.iter().all(|id| id == "room:2"),
        "only room:2 is another's change under the prefix: {told:?}"
    );
    let info = tracker.cmd(&["CLIENT", "TRACKINGINFO"]);
    let Resp::Map(fields) = info else {
        panic!("{info:?}")
    };
    assert_eq!(
        fields[0].1,
        Resp::Set(vec![
            Resp::bulk("on"),
            Resp::bulk("bcast"),
            Resp::bulk("noloop")
        ])
    );
    assert_eq!(fields[2].1, Resp::Array(vec![Resp::bulk("room:")]));
    // BCAST without a prefix has Redis's one empty prefix.
    let mut everything = resp3_raw(&sc);
    everything.cmd(&["CLIENT", "TRACKING", "ON", "BCAST"]);
    let Resp::Map(fields) = everything.cmd(&["CLIENT", "TRACKINGINFO"]) else {
        panic!("TRACKINGINFO is a map")
    };
    assert_eq!(fields[2].1, Resp::Array(vec![Resp::bulk("")]));
    // RESET ends tracking, as Redis's does.
    assert_eq!(everything.cmd(&["RESET"]), Resp::Simple("RESET".into()));
    assert_eq!(everything.cmd(&["CLIENT", "GETREDIR"]), Resp::Int(-1));
    // Modes are worded as Redis words them.
    let mut plain = sc.raw();
    assert_eq!(
        plain.cmd(&["CLIENT", "TRACKING", "ON", "PREFIX", "x"]),
        Resp::Error("ERR PREFIX option requires BCAST mode to be enabled".into())
    );
    assert_eq!(
        plain.cmd(&["CLIENT", "CACHING", "YES"]),
        Resp::Error("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled".into())
    );
}

pub fn tracking_optin_remembers_only_after_caching_yes<T: Target>() {
    let sc = T::start(&[]);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "not-cached"]);
    call(&mut c, &["SESSION.CREATE", "ID", "opted-in"]);
    let mut tracker = resp3_raw(&sc);
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "ON", "OPTIN"]),
        Resp::Simple("OK".into())
    );
    tracker.cmd(&["SESSION.GET", "not-cached"]);
    assert_eq!(
        tracker.cmd(&["CLIENT", "CACHING", "YES"]),
        Resp::Simple("OK".into())
    );
    tracker.cmd(&["SESSION.GET", "opted-in"]);
    call(&mut c, &["SESSION.ATTR.SET", "not-cached", "a", "1"]);
    call(&mut c, &["SESSION.ATTR.SET", "opted-in", "a", "1"]);
    assert_eq!(
        next_invalidation(&mut tracker, WAIT),
        Some(vec!["opted-in".to_string()])
    );
    assert_eq!(
        next_invalidation(&mut tracker, Duration::from_millis(300)),
        None
    );
}

// ---------------------------------------------------------------------------
// Async clients
// ---------------------------------------------------------------------------

pub async fn async_clients_see_the_same_replies<T: Target>() {
    let sc = T::start(&[]);
    let mut c2 = sc.async_client().await;
    let mut c3 = sc.async_client_resp3().await;
    assert_eq!(
        acall(
            &mut c2,
            &["SESSION.CREATE", "ID", "as", "USER", "u", "ATTR", "k", "v"]
        )
        .await,
        bulk("as")
    );
    let v2 = acall(&mut c2, &["SESSION.GET", "as"]).await;
    let v3 = acall(&mut c3, &["SESSION.GET", "as"]).await;
    assert_eq!(session(&v2, false), session(&v3, true));
    assert_err(
        &acall(&mut c3, &["SESSION.BIND", "nope", "c"]).await,
        "NOSESSION no such session",
    );
    assert_eq!(acall(&mut c3, &["SESSION.GET", "nope"]).await, Value::Nil);
    let with = acall(&mut c3, &["SESSION.BYUSER", "u", "WITHSESSIONS"]).await;
    assert_eq!(session(&array(&with)[0], true).id, b"as");
}

/// A `#[test]` of every check of the suite against `$target`.
#[macro_export]
macro_rules! contract_tests {
    ($target:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn async_clients_see_the_same_replies() {
            $crate::contract::async_clients_see_the_same_replies::<$target>().await
        }
        #[test]
        fn transaction_runs_session_commands_in_order_resp2() {
            $crate::contract::transaction_runs_session_commands_in_order_resp2::<$target>()
        }
        #[test]
        fn transaction_runs_session_commands_in_order_resp3() {
            $crate::contract::transaction_runs_session_commands_in_order_resp3::<$target>()
        }
        #[test]
        fn queued_commands_answer_queued_and_run_only_at_exec() {
            $crate::contract::queued_commands_answer_queued_and_run_only_at_exec::<$target>()
        }
        #[test]
        fn discard_runs_nothing() {
            $crate::contract::discard_runs_nothing::<$target>()
        }
        #[test]
        fn queue_time_errors_make_exec_abort() {
            $crate::contract::queue_time_errors_make_exec_abort::<$target>()
        }
        #[test]
        fn transaction_misuse_is_worded_as_redis() {
            $crate::contract::transaction_misuse_is_worded_as_redis::<$target>()
        }
        #[test]
        fn watch_on_a_session_aborts_exec_when_it_changes() {
            $crate::contract::watch_on_a_session_aborts_exec_when_it_changes::<$target>()
        }
        #[test]
        fn tracking_invalidates_a_read_session_once_when_it_changes() {
            $crate::contract::tracking_invalidates_a_read_session_once_when_it_changes::<$target>()
        }
        #[test]
        fn tracking_bcast_prefixes_and_noloop() {
            $crate::contract::tracking_bcast_prefixes_and_noloop::<$target>()
        }
        #[test]
        fn tracking_optin_remembers_only_after_caching_yes() {
            $crate::contract::tracking_optin_remembers_only_after_caching_yes::<$target>()
        }
        #[test]
        fn create_without_id_returns_a_fresh_uuid_v4() {
            $crate::contract::create_without_id_returns_a_fresh_uuid_v4::<$target>()
        }
        #[test]
        fn create_then_get_resp2_flat_arrays() {
            $crate::contract::create_then_get_resp2_flat_arrays::<$target>()
        }
        #[test]
        fn create_then_get_resp3_maps() {
            $crate::contract::create_then_get_resp3_maps::<$target>()
        }
        #[test]
        fn get_session_without_user_or_conn_has_nil_fields_and_default_ttl() {
            $crate::contract::get_session_without_user_or_conn_has_nil_fields_and_default_ttl::<$target>()
        }
        #[test]
        fn get_missing_is_null_bulk_in_resp2_and_null_in_resp3() {
            $crate::contract::get_missing_is_null_bulk_in_resp2_and_null_in_resp3::<$target>()
        }
        #[test]
        fn get_on_the_wire_resp3_is_a_map_with_nested_attrs_map() {
            $crate::contract::get_on_the_wire_resp3_is_a_map_with_nested_attrs_map::<$target>()
        }
        #[test]
        fn get_on_the_wire_resp2_is_a_flat_array_with_nested_flat_attrs() {
            $crate::contract::get_on_the_wire_resp2_is_a_flat_array_with_nested_flat_attrs::<$target>()
        }
        #[test]
        fn get_json_is_one_json_object_with_the_same_fields() {
            $crate::contract::get_json_is_one_json_object_with_the_same_fields::<$target>()
        }
        #[test]
        fn keywords_and_command_names_are_case_insensitive() {
            $crate::contract::keywords_and_command_names_are_case_insensitive::<$target>()
        }
        #[test]
        fn values_are_binary_safe() {
            $crate::contract::values_are_binary_safe::<$target>()
        }
        #[test]
        fn create_refuses_a_live_id_with_exists() {
            $crate::contract::create_refuses_a_live_id_with_exists::<$target>()
        }
        #[test]
        fn create_rejects_invalid_ttls() {
            $crate::contract::create_rejects_invalid_ttls::<$target>()
        }
        #[test]
        fn create_rejects_bad_syntax() {
            $crate::contract::create_rejects_bad_syntax::<$target>()
        }
        #[test]
        fn create_with_pttl_sets_millisecond_ttl() {
            $crate::contract::create_with_pttl_sets_millisecond_ttl::<$target>()
        }
        #[test]
        fn wrong_number_of_arguments_is_worded_as_redis() {
            $crate::contract::wrong_number_of_arguments_is_worded_as_redis::<$target>()
        }
        #[test]
        fn unknown_options_are_syntax_errors() {
            $crate::contract::unknown_options_are_syntax_errors::<$target>()
        }
        #[test]
        fn id_user_conn_and_attribute_names_are_limited_to_512_bytes() {
            $crate::contract::id_user_conn_and_attribute_names_are_limited_to_512_bytes::<$target>()
        }
        #[test]
        fn attribute_values_are_limited_to_one_mib() {
            $crate::contract::attribute_values_are_limited_to_one_mib::<$target>()
        }
        #[test]
        fn sessions_hold_at_most_1024_attributes() {
            $crate::contract::sessions_hold_at_most_1024_attributes::<$target>()
        }
        #[test]
        fn limits_are_configurable() {
            $crate::contract::limits_are_configurable::<$target>()
        }
        #[test]
        fn exists_counts_live_ids() {
            $crate::contract::exists_counts_live_ids::<$target>()
        }
        #[test]
        fn attr_set_get_del() {
            $crate::contract::attr_set_get_del::<$target>()
        }
        #[test]
        fn attr_get_missing_session_is_null_on_the_wire() {
            $crate::contract::attr_get_missing_session_is_null_on_the_wire::<$target>()
        }
        #[test]
        fn attr_incrby_behaves_as_hincrby() {
            $crate::contract::attr_incrby_behaves_as_hincrby::<$target>()
        }
        #[test]
        fn attr_incrby_from_many_connections_loses_nothing() {
            $crate::contract::attr_incrby_from_many_connections_loses_nothing::<$target>()
        }
        #[test]
        fn update_applies_every_change_as_one_mutation() {
            $crate::contract::update_applies_every_change_as_one_mutation::<$target>()
        }
        #[test]
        fn update_ifversion_applies_only_on_the_current_version() {
            $crate::contract::update_ifversion_applies_only_on_the_current_version::<$target>()
        }
        #[test]
        fn concurrent_ifversion_updates_are_never_lost_or_doubled() {
            $crate::contract::concurrent_ifversion_updates_are_never_lost_or_doubled::<$target>()
        }
        #[test]
        fn touch_extends_only_when_less_than_half_the_ttl_remains() {
            $crate::contract::touch_extends_only_when_less_than_half_the_ttl_remains::<$target>()
        }
        #[test]
        fn ttl_reports_milliseconds_left_or_minus_two() {
            $crate::contract::ttl_reports_milliseconds_left_or_minus_two::<$target>()
        }
        #[test]
        fn expire_resets_ttl_and_expiry() {
            $crate::contract::expire_resets_ttl_and_expiry::<$target>()
        }
        #[test]
        fn del_removes_sessions_and_their_index_entries() {
            $crate::contract::del_removes_sessions_and_their_index_entries::<$target>()
        }
        #[test]
        fn bind_resumes_a_session_with_its_full_ttl() {
            $crate::contract::bind_resumes_a_session_with_its_full_ttl::<$target>()
        }
        #[test]
        fn bind_moves_a_connection_from_its_previous_session() {
            $crate::contract::bind_moves_a_connection_from_its_previous_session::<$target>()
        }
        #[test]
        fn create_with_a_bound_conn_moves_the_connection_index() {
            $crate::contract::create_with_a_bound_conn_moves_the_connection_index::<$target>()
        }
        #[test]
        fn unbind_disconnects_and_grace_only_shortens() {
            $crate::contract::unbind_disconnects_and_grace_only_shortens::<$target>()
        }
        #[test]
        fn byconn_returns_the_bound_id_or_nil() {
            $crate::contract::byconn_returns_the_bound_id_or_nil::<$target>()
        }
        #[test]
        fn update_conn_takes_the_connection_from_its_previous_session() {
            $crate::contract::update_conn_takes_the_connection_from_its_previous_session::<$target>()
        }
        #[test]
        fn concurrent_binds_of_one_connection_leave_exactly_one_owner() {
            $crate::contract::concurrent_binds_of_one_connection_leave_exactly_one_owner::<$target>()
        }
        #[test]
        fn attr_set_with_a_repeated_name_keeps_the_last_value() {
            $crate::contract::attr_set_with_a_repeated_name_keeps_the_last_value::<$target>()
        }
        #[test]
        fn byuser_lists_oldest_first() {
            $crate::contract::byuser_lists_oldest_first::<$target>()
        }
        #[test]
        fn maxperuser_evicts_the_oldest_sessions() {
            $crate::contract::maxperuser_evicts_the_oldest_sessions::<$target>()
        }
        #[test]
        fn maxperuser_eviction_cleans_the_connection_index() {
            $crate::contract::maxperuser_eviction_cleans_the_connection_index::<$target>()
        }
        #[test]
        fn concurrent_creates_never_leave_more_than_maxperuser() {
            $crate::contract::concurrent_creates_never_leave_more_than_maxperuser::<$target>()
        }
        #[test]
        fn killuser_deletes_every_session_of_the_user() {
            $crate::contract::killuser_deletes_every_session_of_the_user::<$target>()
        }
    };
}
