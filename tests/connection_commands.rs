//! The commands the sidecar answers itself besides SESSION.* ("Everything
//! else" in commands.md): PING, ECHO, HELLO, AUTH, QUIT, RESET, SELECT,
//! CLIENT, INFO, COMMAND, CONFIG GET, TIME, and unknown commands.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use redis::Value;

/// All the SESSION.* commands a standalone sidecar must list (lower-case, as
/// Redis lists command names).
const SESSION_COMMANDS: [&str; 20] = [
    "session.create",
    "session.get",
    "session.exists",
    "session.attr.set",
    "session.attr.get",
    "session.attr.del",
    "session.attr.incrby",
    "session.update",
    "session.touch",
    "session.ttl",
    "session.expire",
    "session.del",
    "session.bind",
    "session.unbind",
    "session.byconn",
    "session.byuser",
    "session.killuser",
    "session.count",
    "session.nodes",
    "session.migrate",
];

#[test]
fn ping_and_echo() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"+PONG\r\n");
    raw.send_cmd(&["ping", "hello world"]);
    raw.expect_bytes(b"$11\r\nhello world\r\n");
    raw.send_cmd(&["ECHO", "bin\x00\r\n"]);
    raw.expect_bytes(b"$6\r\nbin\x00\r\n\r\n");
    raw.send_cmd(&["PING", "a", "b"]);
    raw.expect_bytes(b"-ERR wrong number of arguments for 'ping' command\r\n");
    raw.send_cmd(&["ECHO"]);
    raw.expect_bytes(b"-ERR wrong number of arguments for 'echo' command\r\n");
    raw.send_cmd(&["ECHO", "a", "b"]);
    raw.expect_bytes(b"-ERR wrong number of arguments for 'echo' command\r\n");
}

fn hello_fields(v: &Resp) -> BTreeMap<String, Resp> {
    let pairs: Vec<(Resp, Resp)> = match v {
        Resp::Map(pairs) => pairs.clone(),
        Resp::Array(items) => items
            .chunks(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect(),
        other => panic!("HELLO reply must be a map, got {other:?}"),
    };
    pairs.into_iter().map(|(k, v)| (k.text(), v)).collect()
}

#[test]
fn hello_switches_protocols() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    let id = match raw.cmd(&["CLIENT", "ID"]) {
        Resp::Int(id) => id,
        other => panic!("CLIENT ID {other:?}"),
    };

    let v2 = raw.cmd(&["HELLO"]);
    assert!(
        matches!(v2, Resp::Array(_)),
        "HELLO without version replies in RESP2: {v2:?}"
    );
    let f = hello_fields(&v2);
    assert_eq!(f["proto"], Resp::Int(2));
    assert_eq!(f["id"], Resp::Int(id));
    for key in ["server", "version", "mode", "role", "modules"] {
        assert!(f.contains_key(key), "HELLO lacks {key}: {f:?}");
    }

    let v3 = raw.cmd(&["HELLO", "3"]);
    assert!(
        matches!(v3, Resp::Map(_)),
        "HELLO 3 replies with a RESP3 map: {v3:?}"
    );
    assert_eq!(hello_fields(&v3)["proto"], Resp::Int(3));
    raw.send_cmd(&["SESSION.GET", "nope"]);
    raw.expect_bytes(b"_\r\n");

    let back = raw.cmd(&["HELLO", "2"]);
    assert!(
        matches!(back, Resp::Array(_)),
        "HELLO 2 replies in RESP2: {back:?}"
    );
    raw.send_cmd(&["SESSION.GET", "nope"]);
    raw.expect_bytes(b"$-1\r\n");

    raw.send_cmd(&["HELLO", "4"]);
    raw.expect_bytes(b"-NOPROTO unsupported protocol version\r\n");
    raw.send_cmd(&["HELLO", "1"]);
    raw.expect_bytes(b"-NOPROTO unsupported protocol version\r\n");
    assert!(matches!(raw.cmd(&["HELLO", "x"]), Resp::Error(_)));
    // A refused HELLO changes nothing.
    raw.send_cmd(&["SESSION.GET", "nope"]);
    raw.expect_bytes(b"$-1\r\n");
}

#[test]
fn hello_with_setname() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    assert!(matches!(
        raw.cmd(&["HELLO", "3", "SETNAME", "gateway-1"]),
        Resp::Map(_)
    ));
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]), Resp::bulk("gateway-1"));
}

#[test]
fn hello_with_auth() {
    let sc = Sidecar::start(&["--requirepass", "s3cret"]);
    let mut raw = sc.raw();
    match raw.cmd(&["HELLO", "3"]) {
        Resp::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("HELLO without AUTH must fail before authentication: {other:?}"),
    }
    raw.send_cmd(&["HELLO", "3", "AUTH", "default", "wrong"]);
    raw.expect_bytes(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    raw.send_cmd(&["SESSION.COUNT"]);
    raw.expect_bytes(b"-NOAUTH Authentication required.\r\n");
    let ok = raw.cmd(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "app"]);
    assert_eq!(hello_fields(&ok)["proto"], Resp::Int(3));
    raw.send_cmd(&["SESSION.COUNT"]);
    raw.expect_bytes(b":0\r\n");
    assert_eq!(raw.cmd(&["CLIENT", "GETNAME"]), Resp::bulk("app"));

    // The redis crate authenticates through HELLO 3 AUTH with a RESP3 URL.
    let mut c3 = sc.client_resp3();
    assert_eq!(call(&mut c3, &["SESSION.GET", "nope"]), Value::Nil);
}

#[test]
fn auth_with_requirepass() {
    let sc = Sidecar::start(&["--requirepass", "s3cret"]);
    let mut raw = sc.raw();
    for cmd in [
        vec!["PING"],
        vec!["SESSION.GET", "x"],
        vec!["SESSION.CREATE", "ID", "x"],
        vec!["CLIENT", "ID"],
        vec!["INFO"],
    ] {
        raw.send_cmd(&cmd);
        raw.expect_bytes(b"-NOAUTH Authentication required.\r\n");
    }
    raw.send_cmd(&["AUTH", "wrong"]);
    raw.expect_bytes(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    raw.send_cmd(&["AUTH", "someone", "s3cret"]);
    raw.expect_bytes(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n");
    raw.send_cmd(&["AUTH"]);
    raw.expect_bytes(b"-ERR wrong number of arguments for 'auth' command\r\n");
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"-NOAUTH Authentication required.\r\n");
    raw.send_cmd(&["AUTH", "s3cret"]);
    raw.expect_bytes(b"+OK\r\n");
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"+PONG\r\n");

    let mut other = sc.raw();
    other.send_cmd(&["AUTH", "default", "s3cret"]);
    other.expect_bytes(b"+OK\r\n");
    other.send_cmd(&["SESSION.EXISTS", "x"]);
    other.expect_bytes(b":0\r\n");
    // Authentication belongs to a connection, not to the process.
    let mut fresh = sc.raw();
    fresh.send_cmd(&["SESSION.EXISTS", "x"]);
    fresh.expect_bytes(b"-NOAUTH Authentication required.\r\n");

    // The redis crate's RESP2 path (AUTH after connect).
    let mut c = sc.client();
    assert_eq!(
        call(&mut c, &["SESSION.CREATE", "ID", "authed"]),
        bulk("authed")
    );
}

#[test]
fn auth_without_requirepass_is_refused_as_redis() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    let v = call(&mut c, &["AUTH", "anything"]);
    assert_err(
        &v,
        "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
    );
    assert_eq!(text(&call(&mut c, &["PING"])), "PONG");
}

#[test]
fn quit_replies_ok_and_closes() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["QUIT"]);
    raw.expect_reply_then_close(b"+OK\r\n");
    sc.assert_serving();
}

#[test]
fn quit_after_pipelined_commands_answers_them_first() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    let mut batch = encode_cmd(&["PING"]);
    batch.extend(encode_cmd(&["ECHO", "x"]));
    batch.extend(encode_cmd(&["QUIT"]));
    batch.extend(encode_cmd(&["PING"]));
    raw.send(&batch).unwrap();
    raw.expect_reply_then_close(b"+PONG\r\n$1\r\nx\r\n+OK\r\n");
}

#[test]
fn reset_restores_a_fresh_connection() {
    let sc = Sidecar::start(&["--requirepass", "pw"]);
    let mut raw = sc.raw();
    raw.cmd(&["HELLO", "3", "AUTH", "default", "pw", "SETNAME", "named"]);
    raw.send_cmd(&["RESET"]);
    raw.expect_bytes(b"+RESET\r\n");
    // Back to unauthenticated RESP2 without a name.
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"-NOAUTH Authentication required.\r\n");
    raw.send_cmd(&["AUTH", "pw"]);
    raw.expect_bytes(b"+OK\r\n");
    raw.send_cmd(&["SESSION.GET", "x"]);
    raw.expect_bytes(b"$-1\r\n");
    raw.send_cmd(&["CLIENT", "GETNAME"]);
    raw.expect_bytes(b"$-1\r\n");
}

#[test]
fn select_accepts_only_database_zero() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["SELECT", "0"]), Value::Okay);
    assert_err(
        &call(&mut c, &["SELECT", "1"]),
        "ERR DB index is out of range",
    );
    assert_err(
        &call(&mut c, &["SELECT", "x"]),
        "ERR value is not an integer or out of range",
    );
    assert_err(
        &call(&mut c, &["SELECT"]),
        "ERR wrong number of arguments for 'select' command",
    );
    assert_eq!(text(&call(&mut c, &["PING"])), "PONG");
}

#[test]
fn client_subcommands() {
    let sc = Sidecar::start(&[]);
    let mut a = sc.client();
    let mut b = sc.client();
    let id_a = int(&call(&mut a, &["CLIENT", "ID"]));
    let id_b = int(&call(&mut b, &["CLIENT", "ID"]));
    assert!(id_a > 0 && id_b > 0 && id_a != id_b, "ids {id_a} {id_b}");

    assert_eq!(call(&mut a, &["CLIENT", "GETNAME"]), Value::Nil);
    assert_eq!(call(&mut a, &["CLIENT", "SETNAME", "app-a"]), Value::Okay);
    assert_eq!(call(&mut a, &["CLIENT", "GETNAME"]), bulk("app-a"));
    assert_err(
        &call(&mut a, &["CLIENT", "SETNAME", "has space"]),
        "ERR Client names cannot contain spaces, newlines or special characters.",
    );
    assert_eq!(call(&mut a, &["CLIENT", "GETNAME"]), bulk("app-a"));
    assert_eq!(
        call(&mut a, &["client", "setinfo", "lib-name", "my-lib"]),
        Value::Okay
    );
    assert_eq!(
        call(&mut a, &["CLIENT", "SETINFO", "LIB-VER", "1.2.3"]),
        Value::Okay
    );
    assert_eq!(call(&mut a, &["CLIENT", "NO-EVICT", "on"]), Value::Okay);
    assert_eq!(call(&mut a, &["CLIENT", "NO-TOUCH", "on"]), Value::Okay);
    assert_eq!(call(&mut a, &["CLIENT", "NO-EVICT", "off"]), Value::Okay);

    let info = text(&call(&mut a, &["CLIENT", "INFO"]));
    assert!(info.contains(&format!("id={id_a} ")), "{info}");
    assert!(info.contains("name=app-a"), "{info}");
    assert!(info.contains("lib-name=my-lib"), "{info}");
    assert!(info.contains("lib-ver=1.2.3"), "{info}");
    assert!(info.contains("addr=127.0.0.1:"), "{info}");
    // Redis's fields, the running subcommand named as Redis names it.
    assert!(info.contains(" rbs=") && info.contains(" rbp=0 "), "{info}");
    assert!(info.contains(" cmd=client|info "), "{info}");

    let list = text(&call(&mut b, &["CLIENT", "LIST"]));
    let lines: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "{list}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("id={id_a} ")) && l.contains("name=app-a")),
        "{list}"
    );
    assert!(
        lines.iter().any(|l| l.contains(&format!("id={id_b} "))),
        "{list}"
    );

    let v = call(&mut a, &["CLIENT", "BOGUS"]);
    assert!(err_text(&v).starts_with("ERR unknown subcommand"), "{v:?}");
    assert_err(
        &call(&mut a, &["CLIENT"]),
        "ERR wrong number of arguments for 'client' command",
    );
}

#[test]
fn client_list_forgets_closed_connections() {
    let sc = Sidecar::start(&[]);
    let mut watcher = sc.client();
    let gone_id = {
        let mut gone = sc.client();
        call(&mut gone, &["CLIENT", "SETNAME", "short-lived"]);
        int(&call(&mut gone, &["CLIENT", "ID"]))
    };
    assert!(
        wait_until(Duration::from_secs(3), || {
            !text(&call(&mut watcher, &["CLIENT", "LIST"])).contains(&format!("id={gone_id} "))
        }),
        "closed client still listed"
    );
}

/// A connection at rest holds no read buffer, whether it has sent nothing
/// yet (a new socket is reported readable before it has anything) or its
/// requests were all answered: CLIENT LIST shows `qbuf=0 qbuf-free=0 rbs=0`.
#[test]
fn idle_connections_hold_no_read_buffer() {
    use std::io::{Read, Write};
    let sc = Sidecar::start(&[]);
    let mut watcher = sc.client();
    let line_of = |watcher: &mut redis::Connection, addr: &str| {
        text(&call(watcher, &["CLIENT", "LIST"]))
            .lines()
            .find(|l| l.contains(&format!(" addr={addr} ")))
            .map(str::to_string)
    };
    let at_rest = |line: &Option<String>| {
        line.as_deref()
            .is_some_and(|l| l.contains(" qbuf=0 qbuf-free=0 ") && l.contains(" rbs=0 "))
    };

    let silent = std::net::TcpStream::connect(sc.addr).unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    // Accepted after the silent one, on the same event loop: once it is
    // answered, the silent one's task has reached its first wait (where the
    // buffer used to be made), so a pass below is not an early look.
    let mut pinged = std::net::TcpStream::connect(sc.addr).unwrap();
    let pinged_addr = pinged.local_addr().unwrap().to_string();
    pinged.write_all(b"PING\r\n").unwrap();
    let mut reply = [0u8; 7];
    pinged.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+PONG\r\n");

    let mut last = None;
    for (addr, what) in [
        (&silent_addr, "a connection that sent nothing"),
        (&pinged_addr, "a connection whose requests were answered"),
    ] {
        assert!(
            wait_until(Duration::from_secs(3), || {
                last = line_of(&mut watcher, addr);
                at_rest(&last)
            }),
            "{what}: {last:?}"
        );
    }
    // The watcher itself, while its CLIENT LIST runs, has one.
    let own = text(&call(&mut watcher, &["CLIENT", "INFO"]));
    assert!(!own.contains(" rbs=0 "), "{own}");
    drop(silent);
}

fn info_sections(info: &str) -> Vec<String> {
    info.lines()
        .filter_map(|l| l.strip_prefix("# "))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

fn info_field(info: &str, key: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}:"))
            .map(|v| v.trim().to_string())
    })
}

#[test]
fn info_has_redis_formatted_sections() {
    let sc = Sidecar::start(&["--node-id", "info-node"]);
    let mut c = sc.client();
    let _second = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "a"]);
    call(&mut c, &["SESSION.CREATE", "ID", "b"]);

    let all = text(&call(&mut c, &["INFO"]));
    assert!(all.contains("\r\n"), "INFO lines end with CRLF as in Redis");
    let sections = info_sections(&all);
    for s in ["server", "clients", "sessions", "stats", "memory"] {
        assert!(
            sections.iter().any(|x| x == s),
            "INFO lacks # {s}: {sections:?}"
        );
    }
    for line in all.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        assert!(line.contains(':'), "INFO line is not key:value: {line:?}");
    }

    let server = text(&call(&mut c, &["INFO", "server"]));
    assert_eq!(info_sections(&server), ["server"]);
    assert_eq!(
        info_field(&server, "tcp_port"),
        Some(sc.addr.port().to_string())
    );
    let uptime: i64 = info_field(&server, "uptime_in_seconds")
        .expect("uptime_in_seconds")
        .parse()
        .unwrap();
    assert!((0..3600).contains(&uptime));

    let clients = text(&call(&mut c, &["INFO", "clients"]));
    assert_eq!(info_sections(&clients), ["clients"]);
    let connected: i64 = info_field(&clients, "connected_clients")
        .expect("connected_clients")
        .parse()
        .unwrap();
    assert!(connected >= 2, "connected_clients {connected}");

    let sessions = text(&call(&mut c, &["info", "SESSIONS"]));
    assert_eq!(info_sections(&sessions), ["sessions"]);
    assert!(
        sessions.lines().any(|l| l.ends_with(":2")),
        "INFO sessions shows the 2 live sessions somewhere: {sessions}"
    );

    let stats = text(&call(&mut c, &["INFO", "stats"]));
    assert_eq!(info_sections(&stats), ["stats"]);
    let processed: i64 = info_field(&stats, "total_commands_processed")
        .expect("total_commands_processed")
        .parse()
        .unwrap();
    assert!(processed >= 3, "total_commands_processed {processed}");
    let received: i64 = info_field(&stats, "total_connections_received")
        .expect("total_connections_received")
        .parse()
        .unwrap();
    assert!(received >= 2);

    let memory = text(&call(&mut c, &["INFO", "memory"]));
    assert_eq!(info_sections(&memory), ["memory"]);
    let used: i64 = info_field(&memory, "used_memory")
        .expect("used_memory")
        .parse()
        .unwrap();
    assert!(used > 0);

    let two = text(&call(&mut c, &["INFO", "server", "clients"]));
    assert_eq!(info_sections(&two), ["server", "clients"]);
    let none = text(&call(&mut c, &["INFO", "nosuchsection"]));
    assert_eq!(info_sections(&none), Vec::<String>::new());
}

#[test]
fn command_count_list_info_docs_include_session_commands() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    let list: Vec<String> = array(&call(&mut c, &["COMMAND", "LIST"]))
        .iter()
        .map(text)
        .collect();
    for name in SESSION_COMMANDS.iter().filter(|n| **n != "session.migrate") {
        assert!(
            list.iter().any(|x| x == name),
            "COMMAND LIST lacks {name}: {list:?}"
        );
    }
    for name in [
        "ping", "echo", "hello", "auth", "client", "info", "command", "config", "time", "select",
    ] {
        assert!(list.iter().any(|x| x == name), "COMMAND LIST lacks {name}");
    }
    let count = int(&call(&mut c, &["COMMAND", "COUNT"]));
    assert_eq!(
        count,
        list.len() as i64,
        "COMMAND COUNT must match COMMAND LIST"
    );
    let everything = array(&call(&mut c, &["COMMAND"]));
    assert_eq!(
        everything.len() as i64,
        count,
        "COMMAND lists every command"
    );

    let info = array(&call(
        &mut c,
        &["COMMAND", "INFO", "session.get", "nosuch", "SESSION.CREATE"],
    ));
    assert_eq!(info.len(), 3);
    let get = array(&info[0]);
    assert_eq!(get[0], bulk("session.get"));
    assert_eq!(get[1], Value::Int(-2), "SESSION.GET id [JSON] has arity -2");
    assert_eq!(info[1], Value::Nil);
    assert_eq!(array(&info[2])[0], bulk("session.create"));
    let touch = array(&array(&call(&mut c, &["COMMAND", "INFO", "session.touch"]))[0]);
    assert_eq!(touch[1], Value::Int(2), "SESSION.TOUCH id has arity 2");

    let docs = map_of(&call(&mut c, &["COMMAND", "DOCS", "session.get"]), false);
    assert!(docs.contains_key("session.get"), "{docs:?}");
    let mut c3 = sc.client_resp3();
    let docs3 = map_of(&call(&mut c3, &["COMMAND", "DOCS", "session.touch"]), true);
    assert!(docs3.contains_key("session.touch"), "{docs3:?}");
    let doc = map_of(&docs3["session.touch"], true);
    assert!(doc.contains_key("summary"), "{doc:?}");
}

#[test]
fn config_get_is_a_read_only_view() {
    let sc = Sidecar::start(&["--maxclients", "321", "--timeout", "77"]);
    let mut c = sc.client();
    assert_eq!(
        call(&mut c, &["CONFIG", "GET", "maxclients"]),
        Value::Array(vec![bulk("maxclients"), bulk("321")])
    );
    assert_eq!(
        call(&mut c, &["CONFIG", "GET", "timeout"]),
        Value::Array(vec![bulk("timeout"), bulk("77")])
    );
    let many = map_of(&call(&mut c, &["CONFIG", "GET", "*"]), false);
    assert_eq!(many.get("maxclients"), Some(&bulk("321")));
    assert_eq!(
        call(&mut c, &["CONFIG", "GET", "no-such-setting"]),
        Value::Array(vec![])
    );
    let mut c3 = sc.client_resp3();
    let m = call(&mut c3, &["CONFIG", "GET", "maxclients"]);
    assert_eq!(m, Value::Map(vec![(bulk("maxclients"), bulk("321"))]));

    assert_err_code(&call(&mut c, &["CONFIG", "SET", "maxclients", "5"]), "ERR");
    assert_eq!(
        call(&mut c, &["CONFIG", "GET", "maxclients"]),
        Value::Array(vec![bulk("maxclients"), bulk("321")])
    );
    assert_err(
        &call(&mut c, &["CONFIG", "GET"]),
        "ERR wrong number of arguments for 'config|get' command",
    );
}

#[test]
fn time_returns_seconds_and_microseconds() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    let before = now_ms();
    let t = array(&call(&mut c, &["TIME"]));
    let after = now_ms();
    assert_eq!(t.len(), 2);
    assert!(
        matches!(t[0], Value::BulkString(_)) && matches!(t[1], Value::BulkString(_)),
        "{t:?}"
    );
    let secs: i64 = text(&t[0]).parse().unwrap();
    let micros: i64 = text(&t[1]).parse().unwrap();
    assert!((0..1_000_000).contains(&micros));
    let ms = secs * 1000 + micros / 1000;
    assert!(
        (before - 1..=after + 1).contains(&ms),
        "TIME {ms} not in [{before}, {after}]"
    );
}

#[test]
fn unknown_commands_are_worded_as_redis() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send_cmd(&["foo", "a", "b"]);
    raw.expect_bytes(b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n");
    raw.send_cmd(&["GET", "key"]);
    raw.expect_bytes(b"-ERR unknown command 'GET', with args beginning with: 'key' \r\n");
    raw.send_cmd(&["NOPE"]);
    raw.expect_bytes(b"-ERR unknown command 'NOPE', with args beginning with: \r\n");
    raw.send_cmd(&["SESSION.NOSUCH", "x"]);
    raw.expect_bytes(b"-ERR unknown command 'SESSION.NOSUCH', with args beginning with: 'x' \r\n");
    // The connection stays usable.
    raw.send_cmd(&["PING"]);
    raw.expect_bytes(b"+PONG\r\n");
}

#[test]
fn many_mixed_commands_pipelined_keep_their_order() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    let commands: &[&[&str]] = &[
        &["PING"],
        &["SESSION.CREATE", "ID", "p"],
        &["FOO"],
        &["SESSION.GET", "nope"],
        &["ECHO", "e"],
        &["SESSION.EXISTS", "p"],
        &["SELECT", "1"],
        &["SESSION.TTL", "nope"],
    ];
    let batch: Vec<u8> = commands.iter().flat_map(|c| encode_cmd(c)).collect();
    raw.send(&batch).unwrap();
    raw.expect_bytes(b"+PONG\r\n$1\r\np\r\n");
    raw.expect_bytes(b"-ERR unknown command 'FOO', with args beginning with: \r\n");
    raw.expect_bytes(b"$-1\r\n$1\r\ne\r\n:1\r\n-ERR DB index is out of range\r\n:-2\r\n");
}

#[test]
fn redis_cli_talks_to_the_sidecar() {
    let sc = Sidecar::start(&[]);
    assert_eq!(sc.redis_cli(&["PING"]), "PONG\n");
    assert_eq!(
        sc.redis_cli(&["SESSION.CREATE", "ID", "cli", "USER", "u"]),
        "cli\n"
    );
    assert_eq!(sc.redis_cli(&["SESSION.EXISTS", "cli", "x"]), "1\n");
    assert_eq!(sc.redis_cli(&["SESSION.BYUSER", "u"]), "cli\n");
    assert_eq!(sc.redis_cli(&["-3", "SESSION.ATTR.GET", "cli", "a"]), "\n");
    let err = sc.redis_cli(&["SESSION.BIND", "nope", "c"]);
    assert_eq!(err.trim_end(), "NOSESSION no such session");
    assert!(sc.redis_cli(&["INFO", "server"]).contains("# Server"));
    assert!(
        sc.redis_cli(&["COMMAND", "DOCS", "session.get"])
            .contains("session.get")
    );
}

/// Standalone CLIENT PAUSE holds every client's commands until its timeout,
/// or until CLIENT UNPAUSE.
#[test]
fn client_pause_holds_commands_until_timeout_or_unpause() {
    let sc = Sidecar::start(&[]);
    let mut pauser = sc.client();
    let mut other = sc.client();
    assert_eq!(
        call(&mut pauser, &["CLIENT", "PAUSE", "400", "WRITE"]),
        Value::Okay
    );
    let started = std::time::Instant::now();
    call(&mut other, &["SESSION.CREATE", "ID", "after-pause"]);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "a command ran during the pause"
    );
    assert_eq!(
        call(&mut pauser, &["CLIENT", "PAUSE", "60000"]),
        Value::Okay
    );
    let waiter = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        call(&mut other, &["SESSION.EXISTS", "after-pause"]);
        started.elapsed()
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut unpauser = sc.client();
    assert_eq!(call(&mut unpauser, &["CLIENT", "UNPAUSE"]), Value::Okay);
    let waited = waiter.join().unwrap();
    assert!(
        waited >= std::time::Duration::from_millis(150)
            && waited < std::time::Duration::from_secs(10),
        "waited {waited:?}"
    );
    assert_err(
        &call(&mut pauser, &["CLIENT", "PAUSE", "soon"]),
        "ERR timeout is not an integer or out of range",
    );
}

/// CLIENT REPLY OFF and SKIP stop replies (theirs included), as in Redis;
/// the commands still run.
#[test]
fn client_reply_off_and_skip_suppress_replies() {
    let sc = Sidecar::start(&[]);
    let mut con = sc.raw();
    con.send_cmd(&["CLIENT", "REPLY", "OFF"]);
    con.send_cmd(&["SESSION.CREATE", "ID", "quiet"]);
    con.send_cmd(&["PING"]);
    assert_eq!(
        con.cmd(&["CLIENT", "REPLY", "ON"]),
        Resp::Simple("OK".into())
    );
    con.send_cmd(&["CLIENT", "REPLY", "SKIP"]);
    con.send_cmd(&["PING"]);
    assert_eq!(con.cmd(&["ECHO", "heard"]), Resp::bulk("heard"));
    assert_eq!(con.cmd(&["SESSION.EXISTS", "quiet"]), Resp::Int(1));
    // Nothing else was sent.
    assert!(matches!(
        con.try_read_reply(Duration::from_millis(200)),
        Err(ReadEnd::Timeout)
    ));
    // Subscription confirmations are sent all the same, as Redis sends them.
    con.send_cmd(&["CLIENT", "REPLY", "OFF"]);
    con.send_cmd(&["SUBSCRIBE", "quiet-channel"]);
    assert_eq!(
        con.read_reply(),
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("quiet-channel"),
            Resp::Int(1)
        ])
    );
}

/// Standalone no command blocks: CLIENT UNBLOCK unblocks nobody.
#[test]
fn client_unblock_standalone_unblocks_nobody() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["CLIENT", "UNBLOCK", "1"]), Value::Int(0));
    assert_err(
        &call(&mut c, &["CLIENT", "UNBLOCK", "1", "LATER"]),
        "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
    );
}
