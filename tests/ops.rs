//! Operations: metrics and health endpoints, signals, configuration through
//! flags and environment variables, password protection, logs, and the
//! redis-cli quickstart.

mod common;

use std::time::Duration;

use common::*;
use redis::Value;

/// Sum of every sample of `metric` (all label sets).
fn metric_sum(body: &str, metric: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    for i in 0..3 {
        call(&mut c, &["SESSION.CREATE", "ID", &format!("m{i}")]);
    }
    let (status, head, body) = sc.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    assert!(body.contains("# TYPE session_sidecar_sessions "), "{body}");
    assert_eq!(
        metric_value(&body, "session_sidecar_sessions"),
        Some(3.0),
        "{body}"
    );
    let commands_before = metric_sum(&body, "session_sidecar_commands_total");
    assert!(
        commands_before >= 3.0,
        "commands_total {commands_before}\n{body}"
    );

    for _ in 0..10 {
        call(&mut c, &["SESSION.EXISTS", "m0"]);
    }
    call(&mut c, &["SESSION.DEL", "m0"]);
    let (_, _, body) = sc.http_get("/metrics");
    assert_eq!(
        metric_value(&body, "session_sidecar_sessions"),
        Some(2.0),
        "{body}"
    );
    let commands_after = metric_sum(&body, "session_sidecar_commands_total");
    assert!(
        commands_after >= commands_before + 11.0,
        "{commands_before} -> {commands_after}"
    );
}

#[test]
fn health_and_readiness_endpoints() {
    let sc = Sidecar::start(&[]);
    assert_eq!(sc.http_get("/healthz").0, 200);
    assert_eq!(sc.http_get("/readyz").0, 200);
    assert_eq!(sc.http_get("/no-such-page").0, 404);
}

#[test]
fn sigterm_exits_zero_with_idle_clients_connected() {
    let mut sc = Sidecar::start(&[]);
    let mut idle = sc.raw();
    assert_eq!(idle.cmd(&["PING"]), Resp::Simple("PONG".into()));
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "s"]);
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; logs:\n{}",
        sc.logs().join("\n")
    );
    // The idle client sees its connection closed rather than hanging.
    let (_, closed) = idle.read_until_closed(Duration::from_secs(2));
    assert!(closed);
    assert!(std::net::TcpStream::connect_timeout(&sc.addr, Duration::from_millis(500)).is_err());
}

#[test]
fn sigterm_exits_zero_with_a_subscriber_and_a_half_sent_command() {
    let mut sc = Sidecar::start(&[]);
    let _events = EventSubscriber::new(&sc, "session:events", true);
    let mut partial = sc.raw();
    partial.send(b"*2\r\n$4\r\nECHO\r\n$10\r\nhal").unwrap();
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn sigint_exits_zero() {
    let mut sc = Sidecar::start(&[]);
    sc.assert_serving();
    sc.sigint();
    let status = sc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn sigterm_answers_commands_already_received() {
    let mut sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    // A pipeline whose first reply has arrived is being executed: the rest
    // must still be answered before the connection closes.
    let batch: Vec<u8> = (0..2000)
        .flat_map(|i| encode_cmd(&["SESSION.CREATE", "ID", &format!("in-flight-{i}")]))
        .collect();
    raw.send(&batch).unwrap();
    assert_eq!(raw.read_reply(), Resp::bulk("in-flight-0"));
    sc.sigterm();
    let (rest, closed) = raw.read_until_closed(Duration::from_secs(10));
    let mut buf = rest.as_slice();
    let mut answered = 1;
    while let Ok(Some((reply, used))) = parse_resp(buf) {
        assert_eq!(reply, Resp::bulk(format!("in-flight-{answered}")));
        answered += 1;
        buf = &buf[used..];
    }
    assert!(
        buf.is_empty(),
        "a reply was cut short: {:?}",
        String::from_utf8_lossy(buf)
    );
    assert!(closed);
    let status = sc.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_metrics_listener_closes_on_exit() {
    let mut sc = Sidecar::start(&[]);
    assert_eq!(sc.http_get("/readyz").0, 200);
    sc.sigterm();
    sc.wait_exit(Duration::from_secs(10));
    assert!(
        std::net::TcpStream::connect_timeout(&sc.metrics_addr, Duration::from_millis(500)).is_err()
    );
}

#[test]
fn environment_variables_configure_the_sidecar() {
    let sc = Sidecar::start_with_env(
        &[],
        &[
            ("SESSION_SIDECAR_LISTEN", "127.0.0.1:0"),
            ("SESSION_SIDECAR_METRICS_LISTEN", "127.0.0.1:0"),
            ("SESSION_SIDECAR_NODE_ID", "from-env"),
            ("SESSION_SIDECAR_DEFAULT_TTL", "77"),
            ("SESSION_SIDECAR_PREFIX", "envp"),
            ("SESSION_SIDECAR_MAXCLIENTS", "55"),
        ],
    );
    let mut events = EventSubscriber::new(&sc, "envp:events", false);
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "e"]);
    let s = get_session(&mut c, "e", false).unwrap();
    assert_eq!(s.node, "from-env");
    assert_eq!(s.ttl, 77_000);
    assert!(
        events
            .wait_for(Duration::from_secs(3), |e| e["id"] == "e")
            .is_some()
    );
    assert_eq!(
        call(&mut c, &["CONFIG", "GET", "maxclients"]),
        Value::Array(vec![bulk("maxclients"), bulk("55")])
    );
}

#[test]
fn flags_win_over_environment_variables() {
    let sc = Sidecar::start_with_env(
        &["--node-id", "from-flag", "--default-ttl", "5"],
        &[
            ("SESSION_SIDECAR_NODE_ID", "from-env"),
            ("SESSION_SIDECAR_DEFAULT_TTL", "77"),
        ],
    );
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "f"]);
    let s = get_session(&mut c, "f", false).unwrap();
    assert_eq!(s.node, "from-flag");
    assert_eq!(s.ttl, 5000);
}

#[test]
fn requirepass_from_the_environment() {
    let sc = Sidecar::start_with_env(&[], &[("SESSION_SIDECAR_REQUIREPASS", "envpw")]);
    let mut raw = sc.raw();
    raw.send_cmd(&["SESSION.COUNT"]);
    raw.expect_bytes(b"-NOAUTH Authentication required.\r\n");
    raw.send_cmd(&["AUTH", "envpw"]);
    raw.expect_bytes(b"+OK\r\n");
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(0));
}

#[test]
fn requirepass_protects_every_client_kind() {
    let sc = Sidecar::start(&["--requirepass", "hunter2"]);
    // redis crate, both protocols, with the password in the URL.
    let mut c2 = sc.client();
    assert_eq!(call(&mut c2, &["SESSION.CREATE", "ID", "pw"]), bulk("pw"));
    let mut c3 = sc.client_resp3();
    assert_eq!(call(&mut c3, &["SESSION.EXISTS", "pw"]), Value::Int(1));
    // Without the password.
    let anon = redis::Client::open(format!("redis://{}/", sc.addr)).unwrap();
    let mut anon = anon.get_connection().unwrap();
    let v = call(&mut anon, &["SESSION.EXISTS", "pw"]);
    assert_err(&v, "NOAUTH Authentication required.");
    // A wrong password fails the redis crate's connection setup.
    let wrong = redis::Client::open(format!("redis://:nope@{}/", sc.addr)).unwrap();
    assert!(wrong.get_connection().is_err());
    // redis-cli.
    assert_eq!(
        sc.redis_cli(&["--no-auth-warning", "-a", "hunter2", "SESSION.EXISTS", "pw"]),
        "1\n"
    );
    assert_eq!(
        sc.redis_cli(&["SESSION.EXISTS", "pw"]).trim_end(),
        "NOAUTH Authentication required."
    );
    // The metrics endpoint has no password (it is for the pod's probes).
    assert_eq!(sc.http_get("/healthz").0, 200);
}

#[test]
fn redis_cli_quickstart() {
    let sc = Sidecar::start(&["--node-id", "quick"]);
    assert_eq!(sc.redis_cli(&["PING"]), "PONG\n");
    assert_eq!(
        sc.redis_cli(&[
            "SESSION.CREATE",
            "ID",
            "demo",
            "USER",
            "alice",
            "CONN",
            "ws-1",
            "TTL",
            "60",
            "ATTR",
            "role",
            "admin"
        ]),
        "demo\n"
    );
    let get = sc.redis_cli(&["SESSION.GET", "demo"]);
    let lines: Vec<&str> = get.lines().collect();
    assert_eq!(
        lines.len(),
        22 + 1,
        "11 fields with a 2-line attrs map: {get}"
    );
    let at = |key: &str| {
        lines
            .iter()
            .position(|l| *l == key)
            .unwrap_or_else(|| panic!("{key} in {get}"))
    };
    assert_eq!(lines[at("user") + 1], "alice");
    assert_eq!(lines[at("status") + 1], "active");
    assert_eq!(lines[at("node") + 1], "quick");
    assert_eq!(lines[at("version") + 1], "1");
    assert_eq!(lines[at("attrs") + 1..at("attrs") + 3], ["role", "admin"]);

    let json = sc.redis_cli(&["SESSION.GET", "demo", "JSON"]);
    let parsed: serde_json::Value =
        serde_json::from_str(json.trim_end()).expect("JSON from redis-cli");
    assert_eq!(parsed["attrs"]["role"], "admin");

    assert_eq!(
        sc.redis_cli(&["SESSION.ATTR.SET", "demo", "theme", "dark"]),
        "2\n"
    );
    assert_eq!(
        sc.redis_cli(&["SESSION.ATTR.GET", "demo", "role", "theme"]),
        "admin\ndark\n"
    );
    let touch: i64 = sc
        .redis_cli(&["SESSION.TOUCH", "demo"])
        .trim()
        .parse()
        .unwrap();
    assert!(touch > 50_000 && touch <= 60_000);
    assert_eq!(sc.redis_cli(&["SESSION.BYCONN", "ws-1"]), "demo\n");
    assert_eq!(sc.redis_cli(&["SESSION.BYUSER", "alice"]), "demo\n");
    assert_eq!(
        sc.redis_cli(&["SESSION.UNBIND", "demo", "GRACE", "30"]),
        "3\n"
    );
    assert_eq!(sc.redis_cli(&["SESSION.BIND", "demo", "ws-2"]), "4\n");
    assert_eq!(sc.redis_cli(&["SESSION.COUNT"]), "1\n");
    assert_eq!(sc.redis_cli(&["SESSION.KILLUSER", "alice"]), "1\n");
    assert_eq!(sc.redis_cli(&["SESSION.GET", "demo"]), "\n");

    // Several commands through one redis-cli session on stdin.
    let out = sc.redis_cli_with_stdin(
        &[],
        Some(b"SESSION.CREATE ID piped\nSESSION.EXISTS piped\nSESSION.DEL piped\n"),
    );
    assert_eq!(out, "piped\n1\n1\n");
    // RESP3 mode.
    sc.redis_cli(&["SESSION.CREATE", "ID", "r3", "ATTR", "a", "b"]);
    let r3 = sc.redis_cli(&["-3", "SESSION.GET", "r3"]);
    assert!(r3.contains("r3") && r3.contains("attrs"), "{r3}");
}

#[test]
fn ready_log_line_carries_the_bound_address_without_ansi_colours() {
    let sc = Sidecar::start(&[]);
    let logs = sc.logs();
    let ready = logs
        .iter()
        .find(|l| l.contains("ready to accept connections"))
        .expect("ready line");
    assert_eq!(addr_field(ready), Some(sc.addr));
    assert_ne!(sc.addr.port(), 0);
    assert!(
        logs.iter().all(|l| !l.contains('\x1b')),
        "ANSI escapes in piped logs: {logs:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let sc = Sidecar::start(&["--log-format", "json"]);
    sc.assert_serving();
    let logs = sc.logs();
    assert!(!logs.is_empty());
    for line in logs.iter().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
    }
    assert!(
        logs.iter()
            .any(|l| l.contains("ready to accept connections"))
    );
}

#[test]
fn no_log_line_per_request_at_the_default_level() {
    let sc = Sidecar::start(&[]);
    let before = sc.logs().len();
    let mut c = sc.client();
    for i in 0..200 {
        call(&mut c, &["SESSION.CREATE", "ID", &format!("q{i}")]);
        call(&mut c, &["SESSION.GET", &format!("q{i}")]);
    }
    sc.assert_serving();
    let after = sc.logs().len();
    assert!(
        after - before < 20,
        "{} log lines for 400 commands",
        after - before
    );
}

fn help_text() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn help_lists_every_standalone_flag() {
    let help = help_text();
    for flag in [
        "--listen",
        "--prefix",
        "--default-ttl",
        "--node-id",
        "--advertise",
        "--requirepass",
        "--metrics-listen",
        "--maxmemory",
        "--maxclients",
        "--timeout",
        "--proto-max-bulk-len",
        "--max-args",
        "--client-query-buffer-limit",
        "--log-format",
        "--log-level",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn an_unknown_flag_is_a_startup_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
        .args(["--listen", "127.0.0.1:0", "--no-such-flag"])
        .output()
        .expect("run with a bad flag");
    assert!(!out.status.success());
}

#[test]
fn a_taken_listen_port_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
        .args(["--listen", addr.as_str(), "--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "sidecar kept running although its port was taken"
    );
    let _ = child.kill();
    assert!(!status.unwrap().success());
}

/// `--threads 3` runs three event loops: the clients are spread over them,
/// every loop serves the one store, and the sidecar shuts down cleanly.
#[test]
fn several_event_loops_share_one_store_and_stop_cleanly() {
    let mut sc = Sidecar::start(&["--threads", "3"]);
    let mut clients: Vec<_> = (0..6).map(|_| sc.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let id = format!("s{i}");
        assert_eq!(call(c, &["SESSION.CREATE", "ID", &id]), bulk(&id));
    }
    // Each client sees the sessions the others created, on other loops.
    for c in &mut clients {
        for i in 0..6 {
            assert_eq!(
                call(c, &["SESSION.EXISTS", &format!("s{i}")]),
                Value::Int(1)
            );
        }
    }
    // Standalone, the keyspace is the sessions held, as Redis counts keys.
    assert!(
        sc.info("keyspace")["db0"].starts_with("keys=6,"),
        "{:?}",
        sc.info("keyspace")
    );
    // Six clients and the INFO one: the least loaded loop takes each (the
    // connections of earlier INFO calls may take a moment to be counted out).
    let info = sc.info("clients");
    assert_eq!(info["event_loops"], "3");
    let per_loop = || -> Vec<usize> {
        sc.info("clients")["event_loop_clients"]
            .split(',')
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let spread = wait_until(Duration::from_secs(5), || {
        let per_loop = per_loop();
        per_loop.len() == 3
            && per_loop.iter().sum::<usize>() == 7
            && per_loop.iter().all(|&n| n >= 2)
    });
    assert!(spread, "{:?}", per_loop());
    // /metrics has the same, per loop (the six clients, once the INFO
    // connections are gone).
    let metric = |loop_index: usize| -> Option<usize> {
        let (_, _, metrics) = sc.http_get("/metrics");
        let name = format!("session_sidecar_event_loop_clients{{loop=\"{loop_index}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name)?.parse().ok())
    };
    let exported = wait_until(Duration::from_secs(5), || {
        (0..3).map(metric).collect::<Vec<_>>() == [Some(2), Some(2), Some(2)]
    });
    assert!(exported, "{:?}", (0..3).map(metric).collect::<Vec<_>>());
    drop(clients);
    let released = wait_until(Duration::from_secs(5), || {
        sc.info("clients")["event_loop_clients"]
            .split(',')
            .map(|n| n.parse::<usize>().unwrap())
            .sum::<usize>()
            == 1
    });
    assert!(released, "the loops still count the closed clients");
    sc.sigterm();
    assert!(sc.wait_exit(Duration::from_secs(10)).success());
}

/// CLIENT KILL closes the sidecar's clients by address (the old form, +OK)
/// or by filters (a count), sparing the caller unless SKIPME no, as Redis.
#[test]
fn client_kill_closes_clients_by_address_or_filters() {
    let sc = Sidecar::start(&["--threads", "2"]);
    let mut admin = sc.raw();
    let id_of = |c: &mut RawConn| match c.cmd(&["CLIENT", "ID"]) {
        Resp::Int(id) => id,
        other => panic!("CLIENT ID answered {other:?}"),
    };
    let closed = |c: &mut RawConn| c.read_until_closed(Duration::from_secs(5)).1;
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL"]),
        Resp::Error("ERR wrong number of arguments for 'client|kill' command".into())
    );
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", "USER", "nobody"]),
        Resp::Error("ERR No such user 'nobody'".into())
    );
    // By id, on whichever event loop the client is.
    let mut by_id = sc.raw();
    let id = id_of(&mut by_id).to_string();
    // CLIENT LIST ID lists that client only.
    let listed = admin.cmd(&["CLIENT", "LIST", "ID", &id, "999999"]).text();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with(&format!("id={id} ")), "{listed}");
    assert_eq!(admin.cmd(&["CLIENT", "KILL", "ID", &id]), Resp::Int(1));
    assert!(closed(&mut by_id), "the client killed by id is still open");
    assert_eq!(admin.cmd(&["CLIENT", "KILL", "ID", &id]), Resp::Int(0));
    // The old form, by address.
    let mut by_addr = sc.raw();
    let line = by_addr.cmd(&["CLIENT", "INFO"]).text();
    let addr = line
        .split(' ')
        .find_map(|f| f.strip_prefix("addr="))
        .unwrap()
        .to_string();
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", &addr]),
        Resp::Simple("OK".into())
    );
    assert!(
        closed(&mut by_addr),
        "the client killed by address is still open"
    );
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", &addr]),
        Resp::Error("ERR No such client".into())
    );
    // By type: the subscribers only.
    let mut subscriber = sc.raw();
    subscriber.cmd(&["SUBSCRIBE", "news"]);
    let mut bystander = sc.raw();
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]),
        Resp::Int(1)
    );
    assert!(closed(&mut subscriber));
    assert_eq!(bystander.cmd(&["PING"]), Resp::Simple("PONG".into()));
    // Every normal client but the caller (SKIPME yes, the default).
    // (The bystander, and any earlier connection not yet counted out.)
    let killed = admin.cmd(&["CLIENT", "KILL", "TYPE", "normal"]);
    assert!(matches!(killed, Resp::Int(n) if n >= 1), "{killed:?}");
    assert!(closed(&mut bystander));
    assert_eq!(admin.cmd(&["PING"]), Resp::Simple("PONG".into()));
    // Errors, as Redis words them.
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", "ID", "0"]),
        Resp::Error("ERR client-id should be greater than 0".into())
    );
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", "TYPE", "nosuch"]),
        Resp::Error("ERR Unknown client type 'nosuch'".into())
    );
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", "FOO", "bar"]),
        Resp::Error("ERR syntax error".into())
    );
    // And itself, with SKIPME no: the reply, then the close.
    let own = id_of(&mut admin).to_string();
    admin.send_cmd(&["CLIENT", "KILL", "ID", &own, "SKIPME", "no"]);
    admin.expect_reply_then_close(b":1\r\n");
}

/// One event loop by default; `--threads 0` runs one per CPU the process
/// may use.
#[test]
fn one_event_loop_by_default_and_one_per_cpu_with_threads_zero() {
    let default = Sidecar::start(&[]);
    assert_eq!(default.info("clients")["event_loops"], "1");
    let sc = Sidecar::start(&["--threads", "0"]);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    assert_eq!(sc.info("clients")["event_loops"], cpus.to_string());
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["SESSION.CREATE", "ID", "x"]), bulk("x"));
}

/// `--threads 1` (the default) runs one event loop: it serves and shuts
/// down cleanly.
#[test]
fn a_single_thread_serves_and_stops() {
    let mut sc = Sidecar::start(&["--threads", "1"]);
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["SESSION.CREATE", "ID", "one"]), bulk("one"));
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "one"]),
        redis::Value::Int(1)
    );
    drop(c);
    sc.sigterm();
    assert!(sc.wait_exit(std::time::Duration::from_secs(10)).success());
}

/// With an open-file limit too low for --maxclients, the sidecar lowers
/// maxclients to fit and says so at start, as Redis does; clients past it are
/// told "max number of clients reached" instead of waiting in the backlog.
#[test]
fn maxclients_is_lowered_to_fit_the_open_file_limit() {
    let port = free_port();
    let command = format!(
        "ulimit -n 64 && exec {} --listen 127.0.0.1:{port} --metrics-listen 127.0.0.1:0 --maxclients 10000",
        env!("CARGO_BIN_EXE_session-sidecar")
    );
    let mut child = std::process::Command::new("bash")
        .args(["-c", &command])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let mut con = None;
    assert!(wait_until(Duration::from_secs(10), || {
        con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .ok();
        con.is_some()
    }));
    let mut con = con.unwrap();
    let maxclients = array(&call(&mut con, &["CONFIG", "GET", "maxclients"]));
    assert_eq!(
        text(&maxclients[1]),
        "32",
        "64 open files minus the 32 kept"
    );
    // Past the lowered limit: refused with Redis's words, not left waiting.
    let mut extra = Vec::new();
    let mut refused = false;
    for _ in 0..40 {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            break;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        std::io::Write::write_all(&mut stream, b"PING\r\n").unwrap();
        let mut reply = [0u8; 64];
        let n = std::io::Read::read(&mut stream, &mut reply).unwrap_or(0);
        if reply[..n].starts_with(b"-ERR max number of clients reached") {
            refused = true;
            break;
        }
        extra.push(stream);
    }
    assert!(refused, "no connection was refused past maxclients");
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(
        log.contains("maxclients lowered"),
        "no word of it at start: {log}"
    );
}

/// Standalone without peers, SIGTERM cannot save the sessions: the log says
/// how many are lost instead of dropping them silently.
#[test]
fn standalone_sigterm_without_peers_says_how_many_sessions_are_lost() {
    let mut sc = Sidecar::start(&[]);
    let mut c = sc.client();
    for i in 0..3 {
        call(&mut c, &["SESSION.CREATE", "ID", &format!("lost{i}")]);
    }
    sc.sigterm();
    assert!(sc.wait_exit(Duration::from_secs(10)).success());
    let logs = sc.logs().join("\n");
    assert!(
        logs.contains("no --peers to drain them to") && logs.contains("sessions=3"),
        "{logs}"
    );
}

/// Mistakes in the command line name what to do: a bad upstream URL lists
/// the accepted schemes; a taken metrics port names --metrics-listen.
#[test]
fn bad_urls_and_taken_metrics_ports_are_explained() {
    let text = failed_start_output(&[
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--upstream",
        "http://example.com",
    ]);
    assert!(
        text.contains("redis+cluster://") && text.contains("redis+sentinel://"),
        "{text}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap().to_string();
    let text = failed_start_output(&["--listen", "127.0.0.1:0", "--metrics-listen", &metrics]);
    assert!(text.contains("--metrics-listen"), "{text}");
}

/// Listen addresses may be host names: `--listen localhost:<port>` serves.
#[test]
fn listen_addresses_may_be_host_names() {
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
        .args([
            "--listen",
            &format!("localhost:{port}"),
            "--metrics-listen",
            "localhost:0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let served = wait_until(Duration::from_secs(10), || {
        redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .is_ok_and(|mut con| redis::cmd("PING").query::<String>(&mut con).is_ok())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(served, "nothing served on localhost:{port}");
}

/// The Kubernetes example holds what the sidecar's operation depends on: a
/// native sidecar with a startup probe, a shutdown budget inside the grace
/// period, memory sizing under the limit, a PodDisruptionBudget and a
/// NetworkPolicy (checked by parsing the manifest).
#[test]
fn the_kubernetes_example_is_a_native_sidecar_with_its_guards() {
    let manifest = format!("{}/docker/k8s/deployment.yaml", env!("CARGO_MANIFEST_DIR"));
    run_python("k8s_manifest.py", &[&manifest]);
}

/// The buckets of one series of a histogram in /metrics: (le, count).
fn histogram_buckets(body: &str, name: &str, labels: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains(labels))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?.to_string();
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// Latency histograms an operator graphs: commands by family, the
/// upstream's calls, the passthrough's queueing and round trips; each one a
/// well-formed Prometheus histogram (cumulative buckets, +Inf = count).
#[test]
fn latency_histograms_are_exported() {
    let upstream = RedisServer::start(&[]);
    let sc = Sidecar::start(&["--upstream", &upstream.url()]);
    sc.wait_upstream_up();
    let mut c = sc.client();
    call(&mut c, &["SESSION.CREATE", "ID", "timed"]);
    call(&mut c, &["SESSION.GET", "timed"]);
    call(&mut c, &["SET", "plain", "1"]);
    let (_, _, body) = sc.http_get("/metrics");
    for (name, labels) in [
        (
            "session_sidecar_command_duration_seconds",
            "family=\"session_write\"",
        ),
        (
            "session_sidecar_command_duration_seconds",
            "family=\"session_read\"",
        ),
        ("session_sidecar_upstream_call_duration_seconds", ""),
        ("session_sidecar_proxy_queue_seconds", ""),
        ("session_sidecar_proxy_upstream_seconds", ""),
    ] {
        let buckets = histogram_buckets(&body, name, labels);
        assert!(buckets.len() > 10, "{name} {labels}: {buckets:?}");
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name} {labels} is not cumulative: {buckets:?}"
        );
        let (le, total) = buckets.last().unwrap();
        assert_eq!(le, "+Inf");
        assert!(*total >= 1.0, "{name} {labels} observed nothing");
        let count = body
            .lines()
            .find(|l| l.starts_with(&format!("{name}_count")) && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        assert_eq!(count, Some(*total), "{name} {labels}");
    }
    assert!(body.contains("session_sidecar_handoff_duration_seconds_count{kind=\"drain\"} 0"));
    // What a pod's memory limit counts, and the version.
    let resident = metric_value(&body, "session_sidecar_resident_memory_bytes").unwrap();
    assert!(resident > 1_000_000.0, "{resident}");
    assert!(body.contains(&format!(
        "session_sidecar_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
}

/// One response from a kept-alive HTTP connection: (status line, headers,
/// body), the body read by its Content-Length.
fn read_http_response(
    stream: &mut std::net::TcpStream,
    head_only: bool,
) -> (String, String, String) {
    use std::io::Read;
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the connection closed");
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    let length: usize = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; if head_only { 0 } else { length }];
    stream.read_exact(&mut body).unwrap();
    (
        status.to_string(),
        headers.to_string(),
        String::from_utf8(body).unwrap(),
    )
}

/// The health and metrics endpoints keep HTTP/1.1 connections alive for the
/// next scrape, answer HEAD without a body, and close when asked.
#[test]
fn the_http_endpoints_keep_connections_alive() {
    use std::io::{Read, Write};
    let sc = Sidecar::start(&[]);
    let mut stream = std::net::TcpStream::connect(sc.metrics_addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for path in ["/healthz", "/metrics", "/readyz"] {
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, headers, body) = read_http_response(&mut stream, false);
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
        assert!(headers.contains("Connection: keep-alive"), "{headers}");
        assert!(!body.is_empty());
    }
    write!(stream, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, _, body) = read_http_response(&mut stream, true);
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    write!(stream, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let (_, headers, body) = read_http_response(&mut stream, false);
    assert!(headers.contains("Connection: close"), "{headers}");
    assert_eq!(body, "ok\n");
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0, "closed after it");
}

/// The Grafana dashboard and the Prometheus rules next to the manifests
/// name only series the sidecar exports (those of write-through mode with
/// its passthrough, the widest set): a renamed metric fails here, not on
/// an operator's empty panel.
#[test]
fn the_dashboard_and_alert_rules_name_exported_metrics() {
    let upstream = RedisServer::start(&[]);
    let sc = Sidecar::start(&["--upstream", &upstream.url()]);
    sc.wait_upstream_up();
    let (_, _, exported) = sc.http_get("/metrics");
    let series: Vec<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for file in [
        "docker/k8s/prometheus-rules.yaml",
        "docker/k8s/grafana-dashboard.json",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let mut named = 0;
        for (at, _) in text.match_indices("session_sidecar_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            named += 1;
            assert!(
                series.iter().any(|s| s.starts_with(&name)),
                "{file} names {name}, which /metrics does not export"
            );
        }
        assert!(named > 20, "{file} names only {named} metrics");
    }
}

/// `tls-listen` in a config file without its certificate and key is a
/// startup error that says so, as the flag without them is.
#[test]
fn tls_listen_from_a_config_file_needs_its_certificate_and_key() {
    let dir = std::env::temp_dir().join(format!("sidecar-tls-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sidecar.conf");
    std::fs::write(&file, format!("tls-listen 127.0.0.1:{}\n", free_port())).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("needs --tls-cert-file and --tls-key-file"),
        "{said}"
    );
}
