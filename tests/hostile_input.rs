//! Hostile and malformed input: protocol errors are answered the way Redis
//! answers them and close only the offending connection; limits on bulk
//! length, argument count, query buffer, clients, idle time and memory hold;
//! inline commands work; and the process keeps serving everyone else.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use redis::Value;

/// Sends `bytes` on a fresh connection and asserts the server replies
/// `expected` and closes; then checks another client is still served.
fn assert_protocol_error(sc: &Sidecar, bytes: &[u8], expected: &[u8]) {
    let mut raw = sc.raw();
    let _ = raw.send(bytes);
    raw.expect_reply_then_close(expected);
    sc.assert_serving();
}

/// Like [`assert_protocol_error`] when only the prefix of the error line
/// is fixed by Redis.
fn assert_protocol_error_prefix(sc: &Sidecar, bytes: &[u8], prefix: &str) {
    let mut raw = sc.raw();
    let _ = raw.send(bytes);
    let (got, closed) = raw.read_until_closed(REPLY_TIMEOUT);
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with(prefix) && got.ends_with("\r\n"),
        "reply {got:?} for {:?}",
        String::from_utf8_lossy(bytes)
    );
    assert_eq!(
        got.matches("\r\n").count(),
        1,
        "exactly one error line: {got:?}"
    );
    assert!(closed, "connection left open after {got:?}");
    sc.assert_serving();
}

#[test]
fn bulk_length_over_the_limit_is_refused_and_closes() {
    let sc = Sidecar::start(&[]);
    assert_protocol_error(
        &sc,
        b"*1\r\n$4294967296\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    );
    assert_protocol_error(
        &sc,
        b"*2\r\n$4\r\nPING\r\n$536870913\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    );
    assert_protocol_error(
        &sc,
        b"*1\r\n$-1\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    );
    assert_protocol_error(
        &sc,
        b"*1\r\n$abc\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    );
}

#[test]
fn configured_proto_max_bulk_len_is_enforced() {
    let sc = Sidecar::start(&["--proto-max-bulk-len", "1024"]);
    let mut raw = sc.raw();
    let ok = "v".repeat(1024);
    assert_eq!(raw.cmd(&["ECHO", ok.as_str()]), Resp::bulk(&ok));
    assert_protocol_error(
        &sc,
        b"*2\r\n$4\r\nECHO\r\n$1025\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    );
    // The first connection was not disturbed.
    assert_eq!(raw.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn multibulk_length_over_max_args_is_refused_and_closes() {
    let sc = Sidecar::start(&["--max-args", "100"]);
    let mut ids: Vec<String> = vec!["SESSION.EXISTS".into()];
    ids.extend((1..100).map(|i| format!("id{i}")));
    let mut raw = sc.raw();
    assert_eq!(
        raw.cmd(&ids),
        Resp::Int(0),
        "exactly max-args arguments are fine"
    );
    assert_protocol_error(
        &sc,
        b"*101\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    );
    assert_protocol_error(
        &sc,
        b"*abc\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    );
}

#[test]
fn default_max_args_is_enforced() {
    let sc = Sidecar::start(&[]);
    assert_protocol_error(
        &sc,
        b"*1048577\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    );
    assert_protocol_error(
        &sc,
        b"*2000000000\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    );
}

#[test]
fn malformed_frames_are_protocol_errors() {
    let sc = Sidecar::start(&[]);
    assert_protocol_error(
        &sc,
        b"*1\r\n:5\r\n",
        b"-ERR Protocol error: expected '$', got ':'\r\n",
    );
    assert_protocol_error(
        &sc,
        b"*2\r\n$4\r\nECHO\r\n+x\r\n",
        b"-ERR Protocol error: expected '$', got '+'\r\n",
    );
    // Any printable byte is named, as Redis names it.
    assert_protocol_error(
        &sc,
        b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfoo\r\n",
        b"-ERR Protocol error: expected '$', got 'f'\r\n",
    );
    assert_protocol_error(
        &sc,
        b"PING \"open\r\n",
        b"-ERR Protocol error: unbalanced quotes in request\r\n",
    );
}

#[test]
fn commands_before_a_protocol_error_are_answered_first() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    let mut bytes = encode_cmd(&["SESSION.CREATE", "ID", "before"]);
    bytes.extend(b"PING\r\n*1\r\n:5\r\n");
    bytes.extend(encode_cmd(&["SESSION.CREATE", "ID", "after"]));
    raw.send(&bytes).unwrap();
    raw.expect_reply_then_close(
        b"$6\r\nbefore\r\n+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n",
    );
    let mut c = sc.client();
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "before", "after"]),
        Value::Int(1)
    );
}

#[test]
fn an_oversized_inline_request_is_refused() {
    let sc = Sidecar::start(&[]);
    let line = vec![b'a'; 100 * 1024];
    assert_protocol_error_prefix(&sc, &line, "-ERR Protocol error");
}

#[test]
fn garbage_bytes_do_not_take_the_process_down() {
    let sc = Sidecar::start(&[]);
    let garbage: Vec<Vec<u8>> = vec![
        (0u8..=255).cycle().take(5000).collect(),
        b"\x00\x00\x00\x00\r\n".to_vec(),
        b"*-5\r\n".to_vec(),
        b"*0\r\n*0\r\n".to_vec(),
        b"$5\r\nhello\r\n".to_vec(),
        b"*1\r\n*1\r\n$4\r\nPING\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        b"*3\r\n$3\r\nSET\r\n$1".to_vec(),
        vec![b'*'; 10_000],
        b"%1\r\n+a\r\n+b\r\n".to_vec(),
    ];
    for g in &garbage {
        let mut raw = sc.raw();
        let _ = raw.send(g);
        // Whatever the reply, the connection either answers or closes in time.
        let _ = raw.read_until_closed(Duration::from_millis(300));
        sc.assert_serving();
    }
    // Several at once, abandoned mid-frame.
    let conns: Vec<RawConn> = garbage
        .iter()
        .map(|g| {
            let mut raw = sc.raw();
            let _ = raw.send(g);
            raw
        })
        .collect();
    drop(conns);
    sc.assert_serving();
}

#[test]
fn empty_multibulk_and_blank_lines_are_ignored_as_redis() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send(b"*0\r\n\r\n\r\n*-1\r\nPING\r\n").unwrap();
    raw.expect_bytes(b"+PONG\r\n");
}

#[test]
fn truncated_frames_wait_for_the_rest() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send(b"*2\r\n$4\r\nECHO\r\n$5\r\nhel").unwrap();
    assert_eq!(
        raw.try_read_reply(Duration::from_millis(200)),
        Err(ReadEnd::Timeout)
    );
    sc.assert_serving();
    raw.send(b"lo\r\n").unwrap();
    raw.expect_bytes(b"$5\r\nhello\r\n");

    // A client that disconnects mid-frame leaves nothing behind.
    let mut quitter = sc.raw();
    quitter
        .send(b"*3\r\n$14\r\nSESSION.CREATE\r\n$2\r\nID")
        .unwrap();
    drop(quitter);
    let mut c = sc.client();
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(0));
}

#[test]
fn slow_byte_by_byte_writes_are_reassembled() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    let mut bytes = encode_cmd(&["SESSION.CREATE", "ID", "slow", "ATTR", "k", "v\r\nv"]);
    bytes.extend(b"SESSION.EXISTS slow\r\n");
    bytes.extend(encode_cmd(&["SESSION.ATTR.GET", "slow", "k"]));
    for b in &bytes {
        raw.send(&[*b]).unwrap();
        thread::sleep(Duration::from_micros(300));
    }
    raw.expect_bytes(b"$4\r\nslow\r\n:1\r\n*1\r\n$4\r\nv\r\nv\r\n");
}

#[test]
fn inline_commands_work_as_in_redis() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    raw.send(b"PING\r\n").unwrap();
    raw.expect_bytes(b"+PONG\r\n");
    raw.send(b"ping\n").unwrap();
    raw.expect_bytes(b"+PONG\r\n");
    raw.send(b"SESSION.CREATE ID \"a b\"\r\n").unwrap();
    raw.expect_bytes(b"$3\r\na b\r\n");
    raw.send(b"SESSION.EXISTS 'a b' \"\\x61 b\"   nope\r\n")
        .unwrap();
    raw.expect_bytes(b":2\r\n");
    raw.send(b"  ECHO   \"tab\\there\"  \r\n").unwrap();
    raw.expect_bytes(b"$8\r\ntab\there\r\n");
    raw.send(b"SESSION.ATTR.SET \"a b\" k v\r\nSESSION.ATTR.GET \"a b\" k\r\n")
        .unwrap();
    raw.expect_bytes(b":2\r\n*1\r\n$1\r\nv\r\n");
    raw.send(b"FOO bar\r\n").unwrap();
    raw.expect_bytes(b"-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n");
}

#[test]
fn a_million_argument_command_is_answered_while_others_are_served() {
    let sc = Sidecar::start(&[]);
    let mut c = sc.client();
    for id in ["live-1", "live-2", "live-3"] {
        call(&mut c, &["SESSION.CREATE", "ID", id]);
    }
    const ARGS: usize = 1_048_576;
    let mut payload = Vec::with_capacity(24 * ARGS);
    payload.extend(format!("*{ARGS}\r\n").as_bytes());
    payload.extend(b"$14\r\nSESSION.EXISTS\r\n");
    for i in 1..ARGS {
        let id = match i {
            1 => "live-1".to_string(),
            500_000 => "live-2".to_string(),
            n if n == ARGS - 1 => "live-3".to_string(),
            n => format!("x{n}"),
        };
        payload.extend(format!("${}\r\n{id}\r\n", id.len()).as_bytes());
    }
    let mut raw = sc.raw();
    let stream = raw.stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut stream = stream;
        std::io::Write::write_all(&mut stream, &payload).expect("write the big command");
    });

    // While the big command streams in, other clients are answered.
    while !writer.is_finished() {
        let t = Instant::now();
        assert_eq!(text(&call(&mut c, &["PING"])), "PONG");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "PING took {:?}",
            t.elapsed()
        );
    }
    writer.join().unwrap();
    assert_eq!(raw.read_reply_within(Duration::from_secs(30)), Resp::Int(3));
    // The same connection is still usable.
    assert_eq!(raw.cmd(&["PING"]), Resp::Simple("PONG".into()));
    sc.assert_serving();
}

#[test]
fn query_buffer_limit_closes_the_connection() {
    let sc = Sidecar::start(&["--client-query-buffer-limit", "1048576"]);
    let mut raw = sc.raw();
    let mut big = b"*2\r\n$4\r\nECHO\r\n$4194304\r\n".to_vec();
    big.extend(vec![b'x'; 4 * 1024 * 1024]);
    big.extend(b"\r\n");
    // The server may close while we are still writing: ignore write errors.
    let _ = raw.send(&big);
    let (got, closed) = raw.read_until_closed(REPLY_TIMEOUT);
    assert!(
        closed,
        "connection over the query buffer limit must be closed"
    );
    let got = String::from_utf8_lossy(&got);
    assert!(
        !got.contains("xxxx"),
        "the oversized command must not be executed: {:.60}",
        got
    );
    sc.assert_serving();
}

#[test]
fn maxclients_refuses_extra_connections() {
    let sc = Sidecar::start(&["--maxclients", "2"]);
    let mut a = sc.raw();
    let mut b = sc.raw();
    assert_eq!(a.cmd(&["PING"]), Resp::Simple("PONG".into()));
    assert_eq!(b.cmd(&["PING"]), Resp::Simple("PONG".into()));
    let mut c = sc.raw();
    let _ = c.send(&encode_cmd(&["PING"]));
    c.expect_reply_then_close(b"-ERR max number of clients reached\r\n");
    drop(a);
    // Once a slot frees up, new clients get in.
    assert!(wait_until(Duration::from_secs(3), || {
        let mut d = sc.raw();
        let _ = d.send(&encode_cmd(&["PING"]));
        matches!(d.try_read_reply(Duration::from_millis(500)), Ok(Resp::Simple(s)) if s == "PONG")
    }));
    assert_eq!(b.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn idle_clients_are_closed_after_timeout() {
    let sc = Sidecar::start(&["--timeout", "1"]);
    let mut idle = sc.raw();
    assert_eq!(idle.cmd(&["PING"]), Resp::Simple("PONG".into()));
    let mut busy = sc.raw();
    let since = Instant::now();
    // Keep `busy` active while `idle` stays quiet.
    let mut idle_closed = false;
    while since.elapsed() < Duration::from_secs(4) {
        assert_eq!(busy.cmd(&["PING"]), Resp::Simple("PONG".into()));
        if let (_, true) = idle.read_until_closed(Duration::from_millis(100)) {
            idle_closed = true;
            break;
        }
    }
    assert!(
        idle_closed,
        "idle client not closed within 4 s with --timeout 1"
    );
    assert!(
        since.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        since.elapsed()
    );
    assert_eq!(busy.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn idle_timeout_spares_subscribers_as_redis_does() {
    let sc = Sidecar::start(&["--timeout", "1"]);
    let mut events = EventSubscriber::new(&sc, "session:events", false);
    let mut idle = sc.raw();
    assert_eq!(idle.cmd(&["PING"]), Resp::Simple("PONG".into()));
    // Wait until the plain idle client has been closed...
    let (_, closed) = idle.read_until_closed(Duration::from_secs(4));
    assert!(closed, "idle client not closed with --timeout 1");
    // ...and the equally quiet subscriber must still get events.
    call(&mut sc.client(), &["SESSION.CREATE", "ID", "late"]);
    let e = events.wait_for(Duration::from_secs(3), |e| e["event"] == "created");
    assert_eq!(e.expect("subscriber still subscribed")["id"], "late");
}

#[test]
fn no_idle_timeout_by_default() {
    let sc = Sidecar::start(&[]);
    let mut raw = sc.raw();
    assert_eq!(raw.cmd(&["PING"]), Resp::Simple("PONG".into()));
    let (_, closed) = raw.read_until_closed(Duration::from_millis(1500));
    assert!(!closed);
    assert_eq!(raw.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn maxmemory_refuses_writes_with_oom_but_serves_reads_and_deletes() {
    let sc = Sidecar::start(&["--maxmemory", "4000000"]);
    let mut c = sc.client();
    let value = vec![b'v'; 64 * 1024];
    let mut created = Vec::new();
    let mut oom = None;
    for i in 0..400 {
        let id = format!("m{i}");
        let v = call(
            &mut c,
            &[
                b"SESSION.CREATE".as_slice(),
                b"ID",
                id.as_bytes(),
                b"ATTR",
                b"blob",
                &value,
            ],
        );
        match v {
            Value::BulkString(_) => created.push(id),
            other => {
                oom = Some(other);
                break;
            }
        }
    }
    let oom = oom.expect("4 MB of maxmemory never refused 25 MB of sessions");
    assert_err(
        &oom,
        "OOM command not allowed when used memory > 'maxmemory'.",
    );
    assert!(
        !created.is_empty(),
        "maxmemory 4 MB refused even the first 64 KB session"
    );
    // Other writes are refused too...
    assert_err(
        &call(
            &mut c,
            &[
                b"SESSION.ATTR.SET".as_slice(),
                created[0].as_bytes(),
                b"more",
                &value,
            ],
        ),
        "OOM command not allowed when used memory > 'maxmemory'.",
    );
    // ...reads still work...
    assert_eq!(int(&call(&mut c, &["SESSION.EXISTS", &created[0]])), 1);
    assert!(get_session(&mut c, &created[0], false).is_some());
    // ...and deleting frees room for writes again.
    let mut del = vec!["SESSION.DEL".to_string()];
    del.extend(created.iter().cloned());
    assert_eq!(int(&call(&mut c, &del)), created.len() as i64);
    assert!(
        wait_until(Duration::from_secs(3), || matches!(
            call(&mut c, &["SESSION.CREATE", "ID", "after-free"]),
            Value::BulkString(_)
        )),
        "writes still refused after deleting everything"
    );
}

/// Resident memory of process `pid` in bytes, from /proc.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn a_subscriber_that_never_reads_does_not_stall_publishers() {
    let sc = Sidecar::start(&[]);
    let mut stuck = sc.raw();
    stuck.send_cmd(&["SUBSCRIBE", "firehose"]);
    stuck.expect_bytes(b"*3\r\n$9\r\nsubscribe\r\n$8\r\nfirehose\r\n:1\r\n");
    // From here on `stuck` reads nothing while 64 MiB are published to it.
    let mut publisher = sc.client();
    let payload = vec![b'p'; 1024 * 1024];
    for i in 0..64 {
        let t = Instant::now();
        let v = call(
            &mut publisher,
            &[b"PUBLISH".as_slice(), b"firehose", &payload],
        );
        assert!(
            matches!(v, Value::Int(0) | Value::Int(1)),
            "PUBLISH #{i}: {v:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "PUBLISH #{i} blocked for {:?}",
            t.elapsed()
        );
    }
    sc.assert_serving();
    let mut c = sc.client();
    assert_eq!(
        call(&mut c, &["SESSION.CREATE", "ID", "still-fine"]),
        bulk("still-fine")
    );
}

#[test]
fn a_subscriber_that_never_reads_cannot_exhaust_memory() {
    let sc = Sidecar::start(&[]);
    let baseline = resident_bytes(sc.pid);
    let mut stuck = sc.raw();
    stuck.send_cmd(&["SUBSCRIBE", "firehose"]);
    stuck.expect_bytes(b"*3\r\n$9\r\nsubscribe\r\n$8\r\nfirehose\r\n:1\r\n");
    let mut publisher = sc.client();
    let payload = vec![b'p'; 1024 * 1024];
    for _ in 0..256 {
        call(
            &mut publisher,
            &[b"PUBLISH".as_slice(), b"firehose", &payload],
        );
    }
    // Redis drops a pub/sub client past its output buffer hard limit
    // (32 MB by default); either way the process must not hold 256 MiB.
    let grown = resident_bytes(sc.pid).saturating_sub(baseline);
    assert!(
        grown < 128 * 1024 * 1024,
        "resident memory grew by {} MiB for one stuck subscriber",
        grown / (1024 * 1024)
    );
}

#[test]
fn under_maxmemory_commands_that_free_or_keep_memory_still_work() {
    let sc = Sidecar::start(&["--maxmemory", "2000000"]);
    let mut c = sc.client();
    let value = vec![b'v'; 64 * 1024];
    call(
        &mut c,
        &[
            "SESSION.CREATE",
            "ID",
            "hb",
            "USER",
            "u",
            "CONN",
            "c-hb",
            "PTTL",
            "100000",
        ],
    );
    let mut i = 0;
    while call(
        &mut c,
        &[
            b"SESSION.CREATE".as_slice(),
            b"USER",
            b"u",
            b"ATTR",
            b"blob",
            &value,
        ],
    ) != Value::ServerError(oom_error())
    {
        i += 1;
        assert!(i < 200, "maxmemory 2 MB never reached");
    }
    // As in Redis, only commands that may grow memory are refused: heartbeats,
    // unbinds, expiry changes and deletions go through.
    assert!(int(&call(&mut c, &["SESSION.TOUCH", "hb"])) > 0);
    assert_eq!(call(&mut c, &["SESSION.EXPIRE", "hb", "50"]), Value::Int(1));
    assert!(matches!(
        call(&mut c, &["SESSION.UNBIND", "hb", "GRACE", "30"]),
        Value::Int(_)
    ));
    assert_eq!(
        call(&mut c, &["SESSION.ATTR.DEL", "hb", "nothing"]),
        Value::Int(0)
    );
    assert_eq!(int(&call(&mut c, &["SESSION.KILLUSER", "u"])), i + 1);
    assert_eq!(call(&mut c, &["SESSION.COUNT"]), Value::Int(0));
}

fn oom_error() -> redis::ServerError {
    match redis::parse_redis_value(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n")
    {
        Ok(Value::ServerError(e)) => e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn many_connections_opened_and_dropped_leave_the_server_healthy() {
    let sc = Sidecar::start(&[]);
    for _ in 0..5 {
        let conns: Vec<RawConn> = (0..100).map(|_| sc.raw()).collect();
        drop(conns);
    }
    let mut c = sc.client();
    assert!(
        wait_until(Duration::from_secs(3), || {
            let info = text(&call(&mut c, &["INFO", "clients"]));
            info.lines().any(|l| l.trim() == "connected_clients:1")
        }),
        "dropped connections still counted"
    );
}

/// Review findings, each a regression test.
mod review {
    use super::*;

    /// A short request cannot make a reply of many copies of a large value:
    /// naming more attributes than a session may hold is refused.
    #[test]
    fn attribute_requests_are_bounded_by_the_attribute_limit() {
        let sc = Sidecar::start(&["--max-attrs", "4"]);
        let mut c = sc.client();
        call(&mut c, &["SESSION.CREATE", "ID", "amp", "ATTR", "v", "x"]);
        let mut get = vec!["SESSION.ATTR.GET", "amp"];
        get.extend(std::iter::repeat_n("v", 5));
        assert_err(&call(&mut c, &get), "ERR too many attributes (max 4)");
        let mut set = vec!["SESSION.ATTR.SET", "amp"];
        for _ in 0..5 {
            set.extend(["n", "v"]);
        }
        assert_err(&call(&mut c, &set), "ERR too many attributes (max 4)");
        let mut update = vec!["SESSION.UPDATE", "amp"];
        for _ in 0..5 {
            update.extend(["DELATTR", "v"]);
        }
        assert_err(&call(&mut c, &update), "ERR too many attributes (max 4)");
        let mut get = vec!["SESSION.ATTR.GET", "amp"];
        get.extend(std::iter::repeat_n("v", 4));
        assert_eq!(array(&call(&mut c, &get)).len(), 4);
    }

    /// Messages queued for a channel are not delivered after the reply to
    /// its UNSUBSCRIBE, nor after RESET: the next RESP2 reply is the next
    /// command's.
    #[test]
    fn no_message_follows_unsubscribe_or_reset() {
        let sc = Sidecar::start(&[]);
        for ending in [&["UNSUBSCRIBE", "ch"][..], &["RESET"][..]] {
            let mut subscriber = sc.raw();
            subscriber.cmd(&["SUBSCRIBE", "ch"]);
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let publishers: Vec<_> = (0..3)
                .map(|_| {
                    let mut publisher = sc.client();
                    let stop = stop.clone();
                    thread::spawn(move || {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            call(&mut publisher, &["PUBLISH", "ch", "hello"]);
                        }
                    })
                })
                .collect();
            thread::sleep(Duration::from_millis(50)); // let messages queue up
            subscriber.send_cmd(ending);
            subscriber.send_cmd(&["PING"]);
            // Skip what was delivered before the ending's reply.
            loop {
                let reply = subscriber.read_reply();
                let is_message = matches!(&reply, Resp::Array(items) if items.first() == Some(&Resp::bulk("message")));
                if !is_message {
                    break;
                }
            }
            let after = subscriber.read_reply();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for publisher in publishers {
                publisher.join().unwrap();
            }
            assert!(
                after == Resp::Simple("PONG".into()) || after == Resp::bulks(&["pong", ""]),
                "after {ending:?}, the reply to PING was {after:?}"
            );
        }
    }

    /// Integers are parsed as Redis's string2ll does: no leading zeros.
    #[test]
    fn integers_with_leading_zeros_are_refused() {
        let sc = Sidecar::start(&[]);
        let mut c = sc.client();
        call(&mut c, &["SESSION.CREATE", "ID", "z", "ATTR", "m", "05"]);
        assert_err(
            &call(&mut c, &["SESSION.ATTR.INCRBY", "z", "m", "1"]),
            "ERR attribute value is not an integer or out of range",
        );
        assert_err(
            &call(&mut c, &["SESSION.EXPIRE", "z", "-0"]),
            "ERR value is not an integer or out of range",
        );
        assert_protocol_error(
            &sc,
            b"*01\r\n$4\r\nPING\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        );
    }

    /// Before AUTH, oversized requests are refused with Redis's wording.
    #[test]
    fn unauthenticated_limits_are_worded_as_redis() {
        let sc = Sidecar::start(&["--requirepass", "secret"]);
        assert_protocol_error(
            &sc,
            b"*11\r\n",
            b"-ERR Protocol error: unauthenticated multibulk length\r\n",
        );
        assert_protocol_error(
            &sc,
            b"*1\r\n$20000\r\n",
            b"-ERR Protocol error: unauthenticated bulk length\r\n",
        );
    }

    /// A default TTL beyond the limit is a startup error, not a session born
    /// expired.
    #[test]
    fn an_absurd_default_ttl_is_refused_at_startup() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--default-ttl", "18446744073709551615"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// CLIENT SETINFO refuses what would break CLIENT LIST's line format.
    #[test]
    fn client_setinfo_refuses_spaces_and_newlines() {
        let sc = Sidecar::start(&[]);
        let mut c = sc.client();
        assert_err(
            &call(&mut c, &["CLIENT", "SETINFO", "LIB-VER", "9.0\n1"]),
            "ERR lib-ver cannot contain spaces, newlines or special characters.",
        );
        assert_eq!(
            call(&mut c, &["CLIENT", "SETINFO", "LIB-VER", "9.0"]),
            Value::Okay
        );
    }
}
