//! Passthrough (issue 5): with an upstream, every command the sidecar does
//! not answer itself goes to the upstream and its reply comes back unchanged.
//! Real redis-servers (and a real 3-master cluster), the real binary, and the
//! clients a new user would pick: raw sockets where bytes matter, the `redis`
//! crate, redis-cli and redis-py.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use redis::Value;

/// A sidecar in front of `redis`, once its upstream connection is up.
fn sidecar_for(url: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--upstream", url];
    args.extend_from_slice(extra);
    let sidecar = Sidecar::start(&args);
    sidecar.wait_upstream_up();
    sidecar
}

/// A command mix over every data type, errors included, with `{p}` standing
/// for a key prefix. No command whose reply depends on time or hash order.
fn command_mix() -> Vec<Vec<&'static str>> {
    let mix: &[&[&str]] = &[
        &["SET", "{p}s", "hello"],
        &["GET", "{p}s"],
        &["APPEND", "{p}s", " world"],
        &["STRLEN", "{p}s"],
        &["GETRANGE", "{p}s", "0", "4"],
        &["SETNX", "{p}s", "x"],
        &["SET", "{p}s2", "v", "NX", "GET"],
        &["MSET", "{p}a", "1", "{p}b", "2"],
        &["MGET", "{p}a", "{p}b", "{p}missing"],
        &["INCR", "{p}a"],
        &["INCRBY", "{p}a", "10"],
        &["INCRBYFLOAT", "{p}a", "1.5"],
        &["DECR", "{p}b"],
        &["GET", "{p}missing"],
        &["SET", "{p}e", "v", "EX", "100000"],
        &["EXPIRE", "{p}s", "100000"],
        &["PERSIST", "{p}s"],
        &["TTL", "{p}s"],
        &["EXPIRE", "{p}missing", "10"],
        &["EXISTS", "{p}s", "{p}missing", "{p}s"],
        &["TYPE", "{p}s"],
        &["GETDEL", "{p}e"],
        &["DEL", "{p}b", "{p}missing"],
        &["HSET", "{p}h", "f1", "v1", "f2", "v2"],
        &["HGET", "{p}h", "f1"],
        &["HGETALL", "{p}h"],
        &["HINCRBY", "{p}h", "n", "5"],
        &["HINCRBYFLOAT", "{p}h", "x", "0.25"],
        &["HKEYS", "{p}h"],
        &["HMGET", "{p}h", "f1", "nope"],
        &["HDEL", "{p}h", "f2"],
        &["HEXISTS", "{p}h", "f2"],
        &["HLEN", "{p}h"],
        &["LPUSH", "{p}l", "a", "b", "c"],
        &["RPUSH", "{p}l", "d"],
        &["LRANGE", "{p}l", "0", "-1"],
        &["LPOP", "{p}l"],
        &["LLEN", "{p}l"],
        &["LINDEX", "{p}l", "1"],
        &["LPOP", "{p}missing"],
        &["SADD", "{p}set", "x", "y", "z"],
        &["SISMEMBER", "{p}set", "y"],
        &["SMISMEMBER", "{p}set", "x", "q"],
        &["SCARD", "{p}set"],
        &["SREM", "{p}set", "z"],
        &["ZADD", "{p}z", "1", "a", "2", "b", "3", "c"],
        &["ZRANGE", "{p}z", "0", "-1", "WITHSCORES"],
        &["ZSCORE", "{p}z", "b"],
        &["ZSCORE", "{p}z", "nope"],
        &["ZINCRBY", "{p}z", "2.5", "a"],
        &["ZRANK", "{p}z", "c"],
        &["ZRANGEBYSCORE", "{p}z", "2", "+inf"],
        &["ZPOPMIN", "{p}z"],
        &["ZCARD", "{p}z"],
        &["XADD", "{p}x", "1-1", "f", "v"],
        &["XADD", "{p}x", "2-1", "g", "w"],
        &["XLEN", "{p}x"],
        &["XRANGE", "{p}x", "-", "+"],
        &["XREAD", "COUNT", "10", "STREAMS", "{p}x", "0"],
        &["XGROUP", "CREATE", "{p}x", "grp", "0"],
        &[
            "XREADGROUP",
            "GROUP",
            "grp",
            "c1",
            "COUNT",
            "1",
            "STREAMS",
            "{p}x",
            ">",
        ],
        &["XACK", "{p}x", "grp", "1-1"],
        &["XADD", "{p}x", "1-0", "too", "old"],
        &["EVAL", "return {KEYS[1], ARGV[1], 7}", "1", "{p}k", "arg"],
        &["EVAL", "return redis.call('incr', KEYS[1])", "1", "{p}n"],
        &["EVAL", "return redis.error_reply('custom failure')", "0"],
        &["EVAL", "return {1, 2.5, 'three', false}", "0"],
        &["SCRIPT", "LOAD", "return 41 + 1"],
        &["EVALSHA", "a3dbd9c3f4bc2aea1bd2d2a4b24e1dc0df39ef28", "0"],
        &["EVALSHA", "0000000000000000000000000000000000000000", "0"],
        &["GET", "{p}h"],
        &["INCR", "{p}s"],
        &["SET", "{p}s"],
        &["HSET", "{p}h", "odd"],
        &["NOSUCHCOMMAND", "x", "y"],
        &["OBJECT", "ENCODING", "{p}h"],
        &["ECHO", "echoed by the sidecar, the same bytes"],
    ];
    mix.iter().map(|command| command.to_vec()).collect()
}

fn with_prefix(command: &[&str], prefix: &str) -> Vec<String> {
    command
        .iter()
        .map(|word| word.replace("{p}", prefix))
        .collect()
}

fn hello3(con: &mut RawConn) {
    match con.cmd(&["HELLO", "3"]) {
        Resp::Map(_) => {}
        other => panic!("HELLO 3 replied {other:?}"),
    }
}

#[test]
fn a_command_mix_gets_the_replies_redis_server_gives_in_resp2_and_resp3() {
    let upstream = RedisServer::start(&[]);
    let direct = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    for resp3 in [false, true] {
        let mut through = sidecar.raw();
        let mut straight = RawConn::connect(direct.addr);
        if resp3 {
            hello3(&mut through);
            hello3(&mut straight);
        }
        // One command at a time.
        let prefix = format!("one{}:", u8::from(resp3));
        for command in command_mix() {
            let command = with_prefix(&command, &prefix);
            let expected = straight.cmd(&command);
            let got = through.cmd(&command);
            assert_eq!(got, expected, "{command:?} (resp3: {resp3})");
        }
        // The whole mix as one pipeline: the same replies, in order.
        let prefix = format!("pipe{}:", u8::from(resp3));
        let mut pipeline = Vec::new();
        for command in command_mix() {
            pipeline.extend(encode_cmd(&with_prefix(&command, &prefix)));
        }
        through.send(&pipeline).unwrap();
        straight.send(&pipeline).unwrap();
        for command in command_mix() {
            let expected = straight.read_reply();
            let got = through.read_reply();
            assert_eq!(got, expected, "pipelined {command:?} (resp3: {resp3})");
        }
    }
}

#[test]
fn the_redis_crate_sees_the_same_values_through_the_sidecar() {
    let upstream = RedisServer::start(&[]);
    let direct = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let direct_resp3 = format!("redis://{}/?protocol=resp3", direct.addr);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for resp3 in [false, true] {
            let (mut through, mut straight) = if resp3 {
                (
                    sidecar.async_client_resp3().await,
                    redis::Client::open(direct_resp3.as_str())
                        .unwrap()
                        .get_multiplexed_async_connection()
                        .await
                        .unwrap(),
                )
            } else {
                (
                    sidecar.async_client().await,
                    redis::Client::open(direct.url())
                        .unwrap()
                        .get_multiplexed_async_connection()
                        .await
                        .unwrap(),
                )
            };
            let prefix = format!("crate{}:", u8::from(resp3));
            for command in command_mix() {
                let command = with_prefix(&command, &prefix);
                let expected = acall(&mut straight, &command).await;
                let got = acall(&mut through, &command).await;
                assert_eq!(got, expected, "{command:?} (resp3: {resp3})");
            }
            // An atomic pipeline (MULTI/EXEC) through the crate.
            let (a, b): (i64, i64) = redis::pipe()
                .atomic()
                .incr(format!("{prefix}atomic"), 1)
                .incr(format!("{prefix}atomic"), 2)
                .query_async(&mut through)
                .await
                .unwrap();
            assert_eq!((a, b), (1, 3));
        }
    });
}

#[test]
fn many_clients_share_a_few_pipelined_upstream_connections() {
    many_clients_share_pooled_connections(1);
}

/// With several event loops, each has its pool: still a few connections.
#[test]
fn many_clients_on_three_event_loops_share_their_loops_pools() {
    many_clients_share_pooled_connections(3);
}

fn many_clients_share_pooled_connections(loops: usize) {
    let upstream = RedisServer::start(&[]);
    let threads = loops.to_string();
    let sidecar = sidecar_for(&upstream.url(), &["--threads", &threads]);
    let connected = || -> usize {
        let info = text(&call(&mut upstream.client(), &["INFO", "clients"]));
        parse_info(&info)["connected_clients"].parse().unwrap()
    };
    let before = connected();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let addr = sidecar.addr;
            thread::spawn(move || {
                let mut con = RawConn::connect(addr);
                for j in 0..50 {
                    let key = format!("c{i}:{j}");
                    assert_eq!(con.cmd(&["SET", &key, "v"]), Resp::Simple("OK".into()));
                    assert_eq!(con.cmd(&["GET", &key]), Resp::bulk("v"));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    // 20 clients, 2,000 commands: a couple of pooled connections upstream
    // per event loop (the counter includes this test's own connection).
    assert!(
        connected() <= before + 2 * loops,
        "{} upstream connections",
        connected()
    );

    // A client's pipeline is one request: one write upstream.
    let batches = || -> u64 { sidecar.info("upstream")["proxy_batches"].parse().unwrap() };
    let first = batches();
    let mut con = sidecar.raw();
    let mut pipeline = Vec::new();
    for _ in 0..100 {
        pipeline.extend(encode_cmd(&["INCR", "counter"]));
    }
    con.send(&pipeline).unwrap();
    for i in 1..=100 {
        assert_eq!(con.read_reply(), Resp::Int(i));
    }
    let (_, _, metrics) = sidecar.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("session_sidecar_proxy_batches_total ")),
        "{metrics}"
    );
    assert!(
        batches() - first <= 3,
        "{} writes for one pipeline",
        batches() - first
    );
}

/// INFO keyspace through the sidecar is the upstream's, where the data is
/// (in every database), in the default INFO too.
/// CLIENT LIST's `idle` counts from the client's last interaction, as
/// Redis's does: commands forwarded to the upstream count too.
#[test]
fn client_list_idle_counts_forwarded_commands() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut busy = sidecar.raw();
    assert_eq!(
        busy.cmd(&["CLIENT", "SETNAME", "busy"]),
        Resp::Simple("OK".into())
    );
    let mut quiet = sidecar.raw();
    assert_eq!(
        quiet.cmd(&["CLIENT", "SETNAME", "quiet"]),
        Resp::Simple("OK".into())
    );
    // Two seconds of forwarded commands only.
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(2100) {
        assert_eq!(busy.cmd(&["GET", "nothing"]), Resp::NullBulk);
        thread::sleep(Duration::from_millis(50));
    }
    let list = quiet.cmd(&["CLIENT", "LIST"]).text();
    let idle = |name: &str| -> u64 {
        let line = list
            .lines()
            .find(|line| line.contains(&format!(" name={name} ")))
            .unwrap_or_else(|| panic!("no client named {name}: {list}"));
        let field = line.split(' ').find(|f| f.starts_with("idle=")).unwrap();
        field["idle=".len()..].parse().unwrap()
    };
    assert_eq!(idle("busy"), 0, "{list}");
    assert_eq!(
        idle("quiet"),
        0,
        "its own CLIENT LIST is its last command: {list}"
    );
}

#[test]
fn info_keyspace_is_the_upstreams() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    for i in 0..25 {
        assert_eq!(
            con.cmd(&["SET", &format!("k{i}"), "v"]),
            Resp::Simple("OK".into())
        );
    }
    assert_eq!(con.cmd(&["EXPIRE", "k0", "100"]), Resp::Int(1));
    let mut direct = upstream.client();
    call(&mut direct, &["SELECT", "1"]);
    call(&mut direct, &["SET", "elsewhere", "v"]);
    // keys and expires (avg_ttl moves with time) per database.
    let counts = |text: &str| -> Vec<(String, String)> {
        parse_info(text)
            .into_iter()
            .filter(|(db, _)| db.starts_with("db"))
            .map(|(db, fields)| (db, fields.split(",avg_ttl").next().unwrap().to_string()))
            .collect()
    };
    let same = wait_until(Duration::from_secs(5), || {
        let theirs = counts(&text(&call(&mut upstream.client(), &["INFO", "keyspace"])));
        let ours = counts(&con.cmd(&["INFO", "keyspace"]).text());
        ours == theirs && ours.len() == 2
    });
    assert!(same, "{:?}", counts(&con.cmd(&["INFO", "keyspace"]).text()));
    let default = con.cmd(&["INFO"]).text();
    assert!(default.contains("# Keyspace\r\ndb0:keys="), "{default}");
}

/// COMMAND describes every command the client can send: the upstream's and
/// the sidecar's own `SESSION.*`, in RESP2 and RESP3.
#[test]
fn command_describes_the_upstreams_commands_and_the_sidecars_own() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    let mut direct = RawConn::connect(upstream.addr);
    let Resp::Int(theirs) = direct.cmd(&["COMMAND", "COUNT"]) else {
        panic!("no count from redis-server");
    };
    let Resp::Array(ours) = con.cmd(&["COMMAND", "LIST", "FILTERBY", "PATTERN", "session.*"])
    else {
        panic!("COMMAND LIST did not answer an array");
    };
    assert!(ours.contains(&Resp::bulk("session.create")), "{ours:?}");
    assert_eq!(
        con.cmd(&["COMMAND", "COUNT"]),
        Resp::Int(theirs + ours.len() as i64)
    );
    let Resp::Array(info) = con.cmd(&["COMMAND", "INFO", "get", "session.get", "nosuch"]) else {
        panic!("COMMAND INFO did not answer an array");
    };
    let Resp::Array(get) = direct.cmd(&["COMMAND", "INFO", "get"]) else {
        panic!("no COMMAND INFO from redis-server");
    };
    assert_eq!(info.len(), 3);
    assert_eq!(
        info[0], get[0],
        "GET is described as redis-server describes it"
    );
    assert!(
        matches!(&info[1], Resp::Array(entry) if entry[0] == Resp::bulk("session.get")),
        "{:?}",
        info[1]
    );
    let Resp::Array(nosuch) = direct.cmd(&["COMMAND", "INFO", "nosuch"]) else {
        panic!("no COMMAND INFO from redis-server");
    };
    assert_eq!(
        info[2], nosuch[0],
        "an unknown command, as redis-server says it"
    );
    assert_eq!(
        con.cmd(&["COMMAND", "GETKEYS", "SET", "a", "b"]),
        Resp::bulks(&["a"])
    );
    let Resp::Array(all) = con.cmd(&["COMMAND"]) else {
        panic!("COMMAND did not answer an array");
    };
    assert_eq!(all.len() as i64, theirs + ours.len() as i64);
    // RESP3: COMMAND DOCS is one map of both.
    let mut resp3 = sidecar.raw();
    hello3(&mut resp3);
    let Resp::Map(docs) = resp3.cmd(&["COMMAND", "DOCS", "get", "session.touch"]) else {
        panic!("COMMAND DOCS did not answer a map");
    };
    let names: Vec<String> = docs.iter().map(|(name, _)| name.text()).collect();
    assert_eq!(names, ["get", "session.touch"]);
}

/// CONFIG is the upstream's (keyspace notifications, as Spring Session sets
/// them), but for the sidecar's own parameters (its listener, its limits).
#[test]
fn config_is_the_upstreams_but_for_the_sidecars_own_parameters() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    assert_eq!(
        con.cmd(&["CONFIG", "SET", "notify-keyspace-events", "Ex"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        call(
            &mut upstream.client(),
            &["CONFIG", "GET", "notify-keyspace-events"]
        ),
        redis::Value::Array(vec![bulk("notify-keyspace-events"), bulk("xE")])
    );
    let Resp::Array(pairs) = con.cmd(&[
        "CONFIG",
        "GET",
        "notify-keyspace-events",
        "port",
        "maxmemory",
    ]) else {
        panic!("CONFIG GET did not answer an array");
    };
    let pairs: std::collections::BTreeMap<String, String> = pairs
        .chunks(2)
        .map(|p| (p[0].text(), p[1].text()))
        .collect();
    let port = sidecar.addr.port().to_string();
    assert_eq!(
        pairs.get("notify-keyspace-events").map(String::as_str),
        Some("xE")
    );
    assert_eq!(pairs.get("port"), Some(&port), "the sidecar's own port");
    assert_eq!(pairs.get("maxmemory").map(String::as_str), Some("0"));
    assert_eq!(pairs.len(), 3, "{pairs:?}");
    // The sidecar's own parameters cannot be set; the upstream's errors
    // come back verbatim.
    assert_eq!(
        con.cmd(&["CONFIG", "SET", "port", "1"]),
        Resp::Error(
            "ERR CONFIG SET failed (possibly related to argument 'port') - can't set immutable config"
                .into()
        )
    );
    // Set to the value it has, it is accepted, and the other pairs go to
    // the upstream.
    assert_eq!(
        con.cmd(&[
            "CONFIG",
            "SET",
            "port",
            &port,
            "maxmemory",
            "12345678",
            "timeout",
            "0"
        ]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        call(&mut upstream.client(), &["CONFIG", "GET", "maxmemory"]),
        redis::Value::Array(vec![bulk("maxmemory"), bulk("12345678")])
    );
    assert_eq!(
        con.cmd(&["CONFIG", "SET", "maxmemory", "1", "timeout", "7"]),
        Resp::Error(
            "ERR CONFIG SET failed (possibly related to argument 'timeout') - can't set immutable config"
                .into()
        )
    );
    // Nothing of a refused CONFIG SET stays applied upstream.
    let maxmemory = || call(&mut upstream.client(), &["CONFIG", "GET", "maxmemory"]);
    assert_eq!(
        maxmemory(),
        redis::Value::Array(vec![bulk("maxmemory"), bulk("12345678")])
    );
    // The upstream checks its pairs first; its error names its argument.
    let Resp::Error(error) = con.cmd(&[
        "CONFIG",
        "SET",
        "maxmemory",
        "10000001",
        "maxmemory-clients",
        "200%",
        "client-query-buffer-limit",
        "invalid",
    ]) else {
        panic!("an invalid CONFIG SET was applied")
    };
    assert!(error.contains("'maxmemory-clients'"), "{error}");
    assert_eq!(
        maxmemory(),
        redis::Value::Array(vec![bulk("maxmemory"), bulk("12345678")])
    );
    // A size written with its unit is the same value.
    assert_eq!(
        con.cmd(&["CONFIG", "SET", "client-query-buffer-limit", "1gb"]),
        Resp::Simple("OK".into())
    );
    let direct = RawConn::connect(upstream.addr).cmd(&["CONFIG", "SET", "nosuch", "1"]);
    assert!(matches!(&direct, Resp::Error(_)), "{direct:?}");
    assert_eq!(con.cmd(&["CONFIG", "SET", "nosuch", "1"]), direct);
    // The notifications reach a subscriber through the sidecar.
    let mut subscriber = sidecar.raw();
    subscriber.cmd(&["PSUBSCRIBE", "__keyevent@0__:expired"]);
    con.cmd(&["SET", "short", "v", "PX", "20"]);
    assert_eq!(
        subscriber.read_reply(),
        Resp::Array(vec![
            Resp::bulk("pmessage"),
            Resp::bulk("__keyevent@0__:expired"),
            Resp::bulk("__keyevent@0__:expired"),
            Resp::bulk("short")
        ])
    );
}

#[test]
fn session_commands_and_plain_commands_interleave_in_one_pipeline() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    let commands: &[&[&str]] = &[
        &["SET", "plain", "1"],
        &["SESSION.CREATE", "ID", "s1", "USER", "alice"],
        &["INCR", "plain"],
        &["SESSION.ATTR.SET", "s1", "k", "v"],
        &["GET", "plain"],
        &["PING"],
        &["MULTI"],
        &["INCR", "plain"],
        &["EXEC"],
        &["SESSION.ATTR.GET", "s1", "k"],
        &["HSET", "h", "f", "v"],
        &["SESSION.EXISTS", "s1"],
        &["BLPOP", "nothing", "0.05"],
        &["SESSION.BYUSER", "alice"],
        &["GET", "plain"],
    ];
    let mut pipeline = Vec::new();
    for command in commands {
        pipeline.extend(encode_cmd(command));
    }
    con.send(&pipeline).unwrap();
    let replies: Vec<Resp> = commands.iter().map(|_| con.read_reply()).collect();
    assert_eq!(
        replies,
        vec![
            Resp::Simple("OK".into()),
            Resp::bulk("s1"),
            Resp::Int(2),
            Resp::Int(2),
            Resp::bulk("2"),
            Resp::Simple("PONG".into()),
            Resp::Simple("OK".into()),
            Resp::Simple("QUEUED".into()),
            Resp::Array(vec![Resp::Int(3)]),
            Resp::bulks(&["v"]),
            Resp::Int(1),
            Resp::Int(1),
            Resp::NullArray,
            Resp::bulks(&["s1"]),
            Resp::bulk("3"),
        ]
    );
}

#[test]
fn multi_exec_discard_and_execabort_behave_as_redis() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["SET", "t", "1"]), Resp::Simple("QUEUED".into()));
    assert_eq!(con.cmd(&["INCR", "t"]), Resp::Simple("QUEUED".into()));
    assert_eq!(
        con.cmd(&["EXEC"]),
        Resp::Array(vec![Resp::Simple("OK".into()), Resp::Int(2)])
    );
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["INCR", "t"]), Resp::Simple("QUEUED".into()));
    assert_eq!(con.cmd(&["DISCARD"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["GET", "t"]), Resp::bulk("2"));
    // A command refused while queuing aborts the transaction.
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert!(matches!(con.cmd(&["INCR"]), Resp::Error(e) if e.starts_with("ERR wrong number")));
    assert!(matches!(con.cmd(&["EXEC"]), Resp::Error(e) if e.starts_with("EXECABORT")));
    assert_eq!(
        con.cmd(&["EXEC"]),
        Resp::Error("ERR EXEC without MULTI".into())
    );
    // The transaction is over: the next commands are multiplexed again and
    // see its effects.
    assert_eq!(upstream_get(&upstream, "t"), Some("2".into()));
    assert_eq!(int_of(&con.cmd(&["INCR", "t"])), 3);
}

fn upstream_get(redis: &RedisServer, key: &str) -> Option<String> {
    match call(&mut redis.client(), &["GET", key]) {
        Value::Nil => None,
        other => Some(text(&other)),
    }
}

fn int_of(reply: &Resp) -> i64 {
    match reply {
        Resp::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[test]
fn watch_aborts_exec_when_another_client_changes_the_key() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    for resp3 in [false, true] {
        let mut watcher = sidecar.raw();
        if resp3 {
            hello3(&mut watcher);
        }
        let mut other = sidecar.raw();
        assert_eq!(watcher.cmd(&["SET", "w", "0"]), Resp::Simple("OK".into()));
        assert_eq!(watcher.cmd(&["WATCH", "w"]), Resp::Simple("OK".into()));
        assert_eq!(watcher.cmd(&["GET", "w"]), Resp::bulk("0"));
        assert_eq!(
            other.cmd(&["SET", "w", "changed"]),
            Resp::Simple("OK".into())
        );
        assert_eq!(watcher.cmd(&["MULTI"]), Resp::Simple("OK".into()));
        assert_eq!(
            watcher.cmd(&["SET", "w", "mine"]),
            Resp::Simple("QUEUED".into())
        );
        let aborted = if resp3 { Resp::Null } else { Resp::NullArray };
        assert_eq!(watcher.cmd(&["EXEC"]), aborted);
        assert_eq!(watcher.cmd(&["GET", "w"]), Resp::bulk("changed"));
        // Without a concurrent change, the same transaction applies; UNWATCH
        // ends the watch.
        assert_eq!(watcher.cmd(&["WATCH", "w"]), Resp::Simple("OK".into()));
        assert_eq!(watcher.cmd(&["MULTI"]), Resp::Simple("OK".into()));
        assert_eq!(
            watcher.cmd(&["SET", "w", "mine"]),
            Resp::Simple("QUEUED".into())
        );
        assert_eq!(
            watcher.cmd(&["EXEC"]),
            Resp::Array(vec![Resp::Simple("OK".into())])
        );
        assert_eq!(watcher.cmd(&["WATCH", "w"]), Resp::Simple("OK".into()));
        assert_eq!(watcher.cmd(&["UNWATCH"]), Resp::Simple("OK".into()));
        assert_eq!(other.cmd(&["GET", "w"]), Resp::bulk("mine"));
    }
}

/// SESSION.* and ordinary commands queued in one transaction: each answers
/// QUEUED (the ordinary ones from the upstream's own MULTI), and EXEC
/// replies in the order they were queued, in RESP2 and RESP3.
#[test]
fn transactions_mix_session_and_ordinary_commands_in_order() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    for resp3 in [false, true] {
        let mut con = sidecar.raw();
        if resp3 {
            hello3(&mut con);
        }
        let id = if resp3 { "mixed3" } else { "mixed2" };
        let queued = Resp::Simple("QUEUED".into());
        assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
        assert_eq!(con.cmd(&["SET", "t", "1"]), queued);
        assert_eq!(con.cmd(&["SESSION.CREATE", "ID", id, "USER", "u"]), queued);
        assert_eq!(con.cmd(&["INCR", "t"]), queued);
        assert_eq!(con.cmd(&["PING"]), queued);
        assert_eq!(con.cmd(&["SESSION.ATTR.INCRBY", id, "n", "5"]), queued);
        assert_eq!(con.cmd(&["GET", "t"]), queued);
        assert_eq!(
            con.cmd(&["EXEC"]),
            Resp::Array(vec![
                Resp::Simple("OK".into()),
                Resp::bulk(id),
                Resp::Int(2),
                Resp::Simple("PONG".into()),
                Resp::Int(5),
                Resp::bulk("2"),
            ])
        );
        // In step afterwards, multiplexed again.
        assert_eq!(con.cmd(&["SESSION.EXISTS", id]), Resp::Int(1));
        assert_eq!(int_of(&con.cmd(&["INCR", "t"])), 3);
        // DISCARD runs neither kind.
        assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
        assert_eq!(con.cmd(&["INCR", "t"]), queued);
        assert_eq!(con.cmd(&["SESSION.DEL", id]), queued);
        assert_eq!(con.cmd(&["DISCARD"]), Resp::Simple("OK".into()));
        assert_eq!(upstream_get(&upstream, "t"), Some("3".into()));
        assert_eq!(con.cmd(&["SESSION.EXISTS", id]), Resp::Int(1));
        // An error queuing a SESSION.* command aborts the ordinary ones too.
        assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
        assert_eq!(con.cmd(&["INCR", "t"]), queued);
        assert!(
            matches!(con.cmd(&["SESSION.GET"]), Resp::Error(e) if e.starts_with("ERR wrong number"))
        );
        assert!(matches!(con.cmd(&["EXEC"]), Resp::Error(e) if e.starts_with("EXECABORT")));
        assert_eq!(upstream_get(&upstream, "t"), Some("3".into()));
        set_key(&upstream, "t", "0");
    }
}

fn set_key(redis: &RedisServer, key: &str, value: &str) {
    call(&mut redis.client(), &["SET", key, value]);
}

/// A watched key changed by another client aborts the whole transaction:
/// the queued SESSION.* commands do not run either.
#[test]
fn a_watched_key_that_changed_aborts_the_session_commands_too() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    let mut other = sidecar.raw();
    assert_eq!(con.cmd(&["WATCH", "w"]), Resp::Simple("OK".into()));
    assert_eq!(
        other.cmd(&["SET", "w", "theirs"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(
        con.cmd(&["SESSION.CREATE", "ID", "not-made"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(con.cmd(&["EXEC"]), Resp::NullArray);
    assert_eq!(con.cmd(&["SESSION.EXISTS", "not-made"]), Resp::Int(0));
    // Watched keys with only SESSION.* commands queued are checked too.
    assert_eq!(con.cmd(&["WATCH", "w"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    con.cmd(&["SESSION.CREATE", "ID", "made"]);
    assert_eq!(con.cmd(&["EXEC"]), Resp::Array(vec![Resp::bulk("made")]));
    assert_eq!(con.cmd(&["WATCH", "w"]), Resp::Simple("OK".into()));
    other.cmd(&["SET", "w", "again"]);
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    con.cmd(&["SESSION.DEL", "made"]);
    assert_eq!(con.cmd(&["EXEC"]), Resp::NullArray);
    assert_eq!(con.cmd(&["SESSION.EXISTS", "made"]), Resp::Int(1));
}

/// A transaction of SESSION.* commands only opens no transaction upstream.
#[test]
fn a_transaction_of_session_commands_costs_the_upstream_no_multi() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.client();
    let replies: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("SESSION.CREATE")
        .arg("ID")
        .arg("only")
        .cmd("SESSION.TTL")
        .arg("only")
        .query(&mut con)
        .unwrap();
    assert_eq!(replies[0], bulk("only"));
    let stats = text(&call(&mut upstream.client(), &["INFO", "commandstats"]));
    assert!(!stats.contains("cmdstat_multi:"), "{stats}");
    assert!(!stats.contains("cmdstat_exec:"), "{stats}");
}

/// SELECT inside MULTI holds after EXEC, as on redis-server (and not after
/// DISCARD, nor after an aborted EXEC).
#[test]
fn select_inside_multi_holds_after_exec() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["SELECT", "2"]), Resp::Simple("QUEUED".into()));
    assert_eq!(con.cmd(&["DISCARD"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["SET", "where", "db0"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["SELECT", "1"]), Resp::Simple("QUEUED".into()));
    assert_eq!(
        con.cmd(&["EXEC"]),
        Resp::Array(vec![Resp::Simple("OK".into())])
    );
    assert_eq!(con.cmd(&["SET", "where", "db1"]), Resp::Simple("OK".into()));
    let mut direct = upstream.client();
    assert_eq!(call(&mut direct, &["GET", "where"]), bulk("db0"));
    call(&mut direct, &["SELECT", "1"]);
    assert_eq!(call(&mut direct, &["GET", "where"]), bulk("db1"));
}

/// One RESP3 connection caches both kinds: ordinary keys are tracked by
/// the upstream (its invalidations relayed), sessions by the sidecar.
#[test]
fn client_tracking_covers_ordinary_keys_and_sessions_together() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut writer = sidecar.client();
    call(&mut writer, &["SET", "plain", "1"]);
    call(&mut writer, &["SESSION.CREATE", "ID", "tracked"]);
    let mut con = sidecar.raw();
    hello3(&mut con);
    assert_eq!(
        con.cmd(&["CLIENT", "TRACKING", "ON"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(con.cmd(&["GET", "plain"]), Resp::bulk("1"));
    assert!(matches!(con.cmd(&["SESSION.GET", "tracked"]), Resp::Map(_)));
    call(&mut writer, &["SET", "plain", "2"]);
    call(&mut writer, &["SESSION.ATTR.SET", "tracked", "a", "1"]);
    let mut told = Vec::new();
    while told.len() < 2 {
        match con.try_read_reply(Duration::from_secs(5)) {
            Ok(Resp::Push(items)) if items[0] == Resp::bulk("invalidate") => {
                let Resp::Array(keys) = &items[1] else {
                    panic!("{items:?}")
                };
                told.extend(keys.iter().map(Resp::text));
            }
            other => panic!("expected invalidations, got {other:?} after {told:?}"),
        }
    }
    told.sort();
    assert_eq!(told, ["plain", "tracked"]);
}

#[test]
fn subscribe_and_psubscribe_receive_messages_in_resp2_and_resp3() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut publisher = sidecar.raw();

    // RESP2: confirmations and messages are arrays; only pub/sub commands
    // and PING are allowed, as the upstream says.
    let mut sub2 = sidecar.raw();
    sub2.send_cmd(&["SUBSCRIBE", "news", "sport"]);
    assert_eq!(
        sub2.read_reply(),
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("news"),
            Resp::Int(1)
        ])
    );
    assert_eq!(
        sub2.read_reply(),
        Resp::Array(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("sport"),
            Resp::Int(2)
        ])
    );
    assert_eq!(
        sub2.cmd(&["PSUBSCRIBE", "n*"]),
        Resp::Array(vec![
            Resp::bulk("psubscribe"),
            Resp::bulk("n*"),
            Resp::Int(3)
        ])
    );
    assert_eq!(sub2.cmd(&["PING"]), Resp::bulks(&["pong", ""]));
    assert!(
        matches!(sub2.cmd(&["GET", "x"]), Resp::Error(e) if e.contains("only (P|S)SUBSCRIBE")),
        "RESP2 subscribed context"
    );
    // CLIENT LIST and INFO count the subscriptions held upstream.
    let listed = text(&call(&mut sidecar.client(), &["CLIENT", "LIST"]));
    assert!(
        listed
            .lines()
            .any(|l| l.contains(" flags=P ") && l.contains(" sub=2 psub=1 ")),
        "{listed}"
    );
    assert_eq!(sidecar.info("clients")["pubsub_clients"], "1");
    // Shard channels too (SSUBSCRIBE, SPUBLISH), counted apart.
    let mut shard = sidecar.raw();
    assert_eq!(
        shard.cmd(&["SSUBSCRIBE", "orders"]),
        Resp::Array(vec![
            Resp::bulk("ssubscribe"),
            Resp::bulk("orders"),
            Resp::Int(1)
        ])
    );
    let listed = text(&call(&mut sidecar.client(), &["CLIENT", "LIST"]));
    assert!(
        listed.lines().any(|l| l.contains(" sub=0 psub=0 ssub=1 ")),
        "{listed}"
    );
    assert_eq!(publisher.cmd(&["SPUBLISH", "orders", "o1"]), Resp::Int(1));
    assert_eq!(
        shard.read_reply(),
        Resp::Array(vec![
            Resp::bulk("smessage"),
            Resp::bulk("orders"),
            Resp::bulk("o1")
        ])
    );
    assert_eq!(sidecar.info("clients")["pubsub_clients"], "2");
    drop(shard);

    // RESP3: pushes; other commands still run, local and forwarded ones.
    let mut sub3 = sidecar.raw();
    hello3(&mut sub3);
    assert_eq!(
        sub3.cmd(&["SUBSCRIBE", "news"]),
        Resp::Push(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("news"),
            Resp::Int(1)
        ])
    );
    assert_eq!(sub3.cmd(&["SET", "k", "v"]), Resp::Simple("OK".into()));
    assert_eq!(sub3.cmd(&["SESSION.EXISTS", "nope"]), Resp::Int(0));
    // A client that switches protocols while subscribed gets its messages
    // in the new one.
    let mut switching = sidecar.raw();
    hello3(&mut switching);
    assert_eq!(
        switching.cmd(&["SUBSCRIBE", "news"]),
        Resp::Push(vec![
            Resp::bulk("subscribe"),
            Resp::bulk("news"),
            Resp::Int(1)
        ])
    );
    assert!(matches!(switching.cmd(&["HELLO", "2"]), Resp::Array(_)));

    assert_eq!(publisher.cmd(&["PUBLISH", "news", "hello"]), Resp::Int(4));
    assert_eq!(
        sub2.read_reply(),
        Resp::bulks(&["message", "news", "hello"])
    );
    assert_eq!(
        sub2.read_reply(),
        Resp::bulks(&["pmessage", "n*", "news", "hello"])
    );
    assert_eq!(
        sub3.read_reply(),
        Resp::Push(vec![
            Resp::bulk("message"),
            Resp::bulk("news"),
            Resp::bulk("hello")
        ])
    );
    assert_eq!(
        switching.read_reply(),
        Resp::bulks(&["message", "news", "hello"])
    );
    // A message published on the upstream directly arrives too.
    call(&mut upstream.client(), &["PUBLISH", "sport", "goal"]);
    assert_eq!(
        sub2.read_reply(),
        Resp::bulks(&["message", "sport", "goal"])
    );

    // Unsubscribing from everything gives the connection back.
    sub2.send_cmd(&["UNSUBSCRIBE"]);
    let mut left = Vec::new();
    for _ in 0..2 {
        match sub2.read_reply() {
            Resp::Array(parts) => left.push(parts[2].clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(left, [Resp::Int(2), Resp::Int(1)]);
    assert_eq!(
        sub2.cmd(&["PUNSUBSCRIBE"]),
        Resp::Array(vec![
            Resp::bulk("punsubscribe"),
            Resp::bulk("n*"),
            Resp::Int(0)
        ])
    );
    assert_eq!(sub2.cmd(&["GET", "k"]), Resp::bulk("v"));
    assert_eq!(sub2.cmd(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn lifecycle_events_reach_subscribers_through_the_upstream() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut events = EventSubscriber::new(&sidecar, "session:events", false);
    call(
        &mut sidecar.client(),
        &["SESSION.CREATE", "ID", "e1", "USER", "bob"],
    );
    let created = events
        .wait_for(Duration::from_secs(5), |event| event["id"] == "e1")
        .expect("the created event");
    assert_eq!(created["event"], "created");
}

#[test]
fn blpop_wakes_while_other_clients_keep_being_served() {
    blocked_clients_hold_up_nobody(1);
}

/// The same with the blocked and the served clients spread over two loops.
#[test]
fn blpop_on_two_event_loops_wakes_while_other_clients_keep_being_served() {
    blocked_clients_hold_up_nobody(2);
}

fn blocked_clients_hold_up_nobody(loops: usize) {
    let upstream = RedisServer::start(&[]);
    let threads = loops.to_string();
    let sidecar = sidecar_for(&upstream.url(), &["--threads", &threads]);
    // Several clients blocked at once, with every kind of blocking command.
    let mut blpop = sidecar.raw();
    blpop.send_cmd(&["BLPOP", "queue", "0"]);
    let mut bzpopmin = sidecar.raw();
    bzpopmin.send_cmd(&["BZPOPMIN", "zqueue", "0"]);
    let mut xread = sidecar.raw();
    xread.send_cmd(&["XREAD", "BLOCK", "0", "STREAMS", "stream", "$"]);
    let mut blmove = sidecar.raw();
    blmove.send_cmd(&["BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"]);
    // Make sure they are blocked upstream before anything is pushed.
    let blocked = wait_until(Duration::from_secs(5), || {
        let info = text(&call(&mut upstream.client(), &["INFO", "clients"]));
        parse_info(&info).get("blocked_clients").map(String::as_str) == Some("4")
    });
    assert!(blocked, "the four clients never blocked upstream");

    // Meanwhile every other client is served, one command at a time and in
    // pipelines, each reply within a second.
    let others: Vec<_> = (0..4)
        .map(|i| {
            let addr = sidecar.addr;
            thread::spawn(move || {
                let mut con = RawConn::connect(addr);
                for j in 0..100 {
                    let key = format!("other{i}:{j}");
                    con.send_cmd(&["SET", &key, "x"]);
                    assert_eq!(
                        con.read_reply_within(Duration::from_secs(1)),
                        Resp::Simple("OK".into())
                    );
                    assert_eq!(con.cmd(&["GET", &key]), Resp::bulk("x"));
                }
            })
        })
        .collect();
    for other in others {
        other.join().unwrap();
    }
    assert!(
        blpop.try_read_reply(Duration::from_millis(50)).is_err(),
        "BLPOP answered before anything was pushed"
    );

    let mut pusher = sidecar.raw();
    pusher.cmd(&["RPUSH", "queue", "job"]);
    pusher.cmd(&["ZADD", "zqueue", "1", "m"]);
    pusher.cmd(&["XADD", "stream", "5-1", "f", "v"]);
    pusher.cmd(&["RPUSH", "src", "moved"]);
    assert_eq!(blpop.read_reply(), Resp::bulks(&["queue", "job"]));
    assert_eq!(bzpopmin.read_reply(), Resp::bulks(&["zqueue", "m", "1"]));
    assert_eq!(
        xread.read_reply(),
        Resp::Array(vec![Resp::Array(vec![
            Resp::bulk("stream"),
            Resp::Array(vec![Resp::Array(vec![
                Resp::bulk("5-1"),
                Resp::bulks(&["f", "v"])
            ])])
        ])])
    );
    assert_eq!(blmove.read_reply(), Resp::bulk("moved"));
    // A blocking command that times out, then the connection is multiplexed again.
    let started = Instant::now();
    assert_eq!(blpop.cmd(&["BLPOP", "queue", "0.1"]), Resp::NullArray);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(blpop.cmd(&["GET", "other0:0"]), Resp::bulk("x"));
    // A client that disconnects while blocked frees its upstream connection.
    let mut gone = sidecar.raw();
    gone.send_cmd(&["BLPOP", "never", "0"]);
    let blocked = wait_until(Duration::from_secs(5), || {
        let info = text(&call(&mut upstream.client(), &["INFO", "clients"]));
        parse_info(&info).get("blocked_clients").map(String::as_str) == Some("1")
    });
    assert!(blocked);
    drop(gone);
    let unblocked = wait_until(Duration::from_secs(5), || {
        let info = text(&call(&mut upstream.client(), &["INFO", "clients"]));
        parse_info(&info).get("blocked_clients").map(String::as_str) == Some("0")
    });
    assert!(
        unblocked,
        "the upstream still blocks for a client that left"
    );
}

#[test]
fn idle_timeout_spares_subscribers_and_blocked_clients() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &["--timeout", "1"]);
    let mut idle = sidecar.raw();
    assert_eq!(idle.cmd(&["GET", "k"]), Resp::NullBulk);
    let mut subscriber = sidecar.raw();
    subscriber.cmd(&["SUBSCRIBE", "c"]);
    let mut blocked = sidecar.raw();
    blocked.send_cmd(&["BLPOP", "q", "0"]);
    // The idle client goes after a second; the others stay.
    let (_, closed) = idle.read_until_closed(Duration::from_secs(5));
    assert!(closed, "the idle client was not closed");
    let mut pusher = sidecar.raw();
    assert_eq!(pusher.cmd(&["PUBLISH", "c", "m"]), Resp::Int(1));
    assert_eq!(subscriber.read_reply(), Resp::bulks(&["message", "c", "m"]));
    assert_eq!(pusher.cmd(&["RPUSH", "q", "v"]), Resp::Int(1));
    assert_eq!(blocked.read_reply(), Resp::bulks(&["q", "v"]));
}

#[test]
fn blocking_commands_in_a_loop_reuse_their_upstream_connection() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let accepted = || -> i64 {
        let info = text(&call(&mut upstream.client(), &["INFO", "stats"]));
        parse_info(&info)["total_connections_received"]
            .parse()
            .unwrap()
    };
    let mut worker = sidecar.raw();
    let mut producer = sidecar.raw();
    let before = accepted();
    for i in 0..20 {
        producer.cmd(&["RPUSH", "jobs", &i.to_string()]);
        assert_eq!(
            worker.cmd(&["BLPOP", "jobs", "1"]),
            Resp::bulks(&["jobs", &i.to_string()])
        );
        assert_eq!(
            worker.cmd(&["MULTI"]),
            Resp::Simple("OK".into()),
            "a transaction between pops"
        );
        assert_eq!(worker.cmd(&["EXEC"]), Resp::Array(vec![]));
    }
    // One pinned connection, dialed once and taken again each time (the
    // producer's pooled one, and one per INFO call here, besides).
    let dialed = accepted() - before;
    assert!(dialed <= 4, "{dialed} upstream connections for 40 pins");
}

#[test]
fn select_pins_the_client_to_another_database() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    assert_eq!(con.cmd(&["SELECT", "3"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["SET", "in3", "yes"]), Resp::Simple("OK".into()));
    assert_eq!(
        con.cmd(&["SELECT", "99"]),
        Resp::Error("ERR DB index is out of range".into())
    );
    assert_eq!(con.cmd(&["GET", "in3"]), Resp::bulk("yes"));
    assert_eq!(con.cmd(&["SELECT", "0"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["GET", "in3"]), Resp::NullBulk);
    let mut direct = upstream.client();
    call(&mut direct, &["SELECT", "3"]);
    assert_eq!(call(&mut direct, &["GET", "in3"]), bulk("yes"));
}

#[test]
fn client_tracking_delivers_invalidations_on_the_pinned_connection() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut tracked = sidecar.raw();
    hello3(&mut tracked);
    assert_eq!(
        tracked.cmd(&["CLIENT", "TRACKING", "ON"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(tracked.cmd(&["GET", "cached"]), Resp::Null);
    call(&mut sidecar.client(), &["SET", "cached", "new"]);
    assert_eq!(
        tracked.read_reply(),
        Resp::Push(vec![Resp::bulk("invalidate"), Resp::bulks(&["cached"])])
    );
}

#[test]
fn the_clients_auth_is_the_sidecars_own_and_the_upstreams_comes_from_the_url() {
    let upstream = RedisServer::start(&[]);
    call(
        &mut upstream.client(),
        &["CONFIG", "SET", "requirepass", "upstream-secret"],
    );
    let url = format!("redis://:upstream-secret@{}/2", upstream.addr);
    let sidecar = sidecar_for(&url, &["--requirepass", "client-secret"]);
    let mut con = sidecar.raw();
    assert_eq!(
        con.cmd(&["GET", "k"]),
        Resp::Error("NOAUTH Authentication required.".into())
    );
    assert!(matches!(
        con.cmd(&["AUTH", "upstream-secret"]),
        Resp::Error(e) if e.starts_with("WRONGPASS")
    ));
    assert_eq!(
        con.cmd(&["AUTH", "client-secret"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(con.cmd(&["SET", "k", "v"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["GET", "k"]), Resp::Simple("QUEUED".into()));
    assert_eq!(con.cmd(&["EXEC"]), Resp::bulks(&["v"]));
    // The URL's database, on pooled and pinned connections alike.
    let mut direct = redis::Client::open(format!("redis://:upstream-secret@{}/2", upstream.addr))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(call(&mut direct, &["GET", "k"]), bulk("v"));
}

/// Each command gets `-TRYAGAIN upstream unavailable`, each within 2 s.
#[track_caller]
fn assert_refused_fast(con: &mut RawConn, commands: &[&[&str]]) {
    for command in commands {
        let started = Instant::now();
        assert_eq!(
            con.cmd(command),
            Resp::Error("TRYAGAIN upstream unavailable".into()),
            "{command:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{command:?} was slow"
        );
    }
}

#[test]
fn an_unreachable_upstream_gets_a_clear_error_fast() {
    let port = free_port();
    let sidecar = Sidecar::start(&["--upstream", &format!("redis://127.0.0.1:{port}")]);
    let mut con = sidecar.raw();
    assert_refused_fast(
        &mut con,
        &[
            &["GET", "k"][..],
            &["BLPOP", "q", "0"],
            &["SUBSCRIBE", "c"],
            // Answered by the sidecar with the upstream's part.
            &["CONFIG", "GET", "maxmemory"],
            &["COMMAND", "COUNT"],
            &["COMMAND", "INFO", "get"],
        ],
    );
    // A transaction starts here; the first command bound for the upstream
    // is refused, and EXEC then discards the transaction.
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_refused_fast(&mut con, &[&["INCR", "k"][..]]);
    assert_eq!(
        con.cmd(&["EXEC"]),
        Resp::Error("EXECABORT Transaction discarded because of previous errors.".into())
    );
    // INFO is the sidecar's: it answers, without the upstream's keyspace.
    let started = Instant::now();
    let info = con.cmd(&["INFO"]).text();
    assert!(
        info.contains("# Keyspace\r\n") && !info.contains("db0:"),
        "{info}"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "INFO was slow");
    // The upstream comes up: the next commands go through.
    let _upstream = RedisServer::start_on_port(port, &[]);
    let through = wait_until(Duration::from_secs(10), || {
        con.cmd(&["SET", "k", "v"]) == Resp::Simple("OK".into())
    });
    assert!(
        through,
        "commands never went through to the restarted upstream"
    );
    assert_eq!(con.cmd(&["GET", "k"]), Resp::bulk("v"));
}

#[test]
fn an_unreachable_cluster_gets_a_clear_error_fast() {
    let seeds = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let sidecar = Sidecar::start(&["--upstream", &seeds]);
    let mut con = sidecar.raw();
    assert_refused_fast(
        &mut con,
        &[&["GET", "k"][..], &["MGET", "a", "b"], &["BLPOP", "q", "0"]],
    );
    // MULTI waits for the first key to pick its node: the refusal comes with
    // the first command, and EXEC then aborts, as Redis after a queuing error.
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(
        con.cmd(&["INCR", "k"]),
        Resp::Error("TRYAGAIN upstream unavailable".into())
    );
    assert!(matches!(con.cmd(&["EXEC"]), Resp::Error(e) if e.starts_with("EXECABORT")));
    assert_eq!(
        con.cmd(&["GET", "k"]),
        Resp::Error("TRYAGAIN upstream unavailable".into())
    );
}

#[test]
fn subscribers_are_disconnected_when_the_upstream_goes_away_and_others_recover() {
    let mut upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut sub = sidecar.raw();
    sub.cmd(&["SUBSCRIBE", "c"]);
    let mut plain = sidecar.raw();
    assert_eq!(plain.cmd(&["SET", "k", "v"]), Resp::Simple("OK".into()));
    // A clean pinned connection waits for reuse: it must not be taken
    // once the upstream is gone.
    assert_eq!(plain.cmd(&["BLPOP", "q", "0.01"]), Resp::NullArray);
    let port = upstream.port();
    upstream.kill9();
    // Its subscriptions are gone with the connection: so is the client, as
    // if it had been connected to the upstream itself.
    let (_, closed) = sub.read_until_closed(Duration::from_secs(5));
    assert!(closed, "the subscriber was left without its subscriptions");
    let refused = wait_until(Duration::from_secs(5), || {
        plain.cmd(&["GET", "k"]) == Resp::Error("TRYAGAIN upstream unavailable".into())
    });
    assert!(
        refused,
        "commands are not refused while the upstream is down"
    );
    // The upstream is back (empty): pooled and pinned commands go through
    // on fresh connections.
    let _back = RedisServer::start_on_port(port, &[]);
    let through = wait_until(Duration::from_secs(10), || {
        plain.cmd(&["SET", "k", "again"]) == Resp::Simple("OK".into())
    });
    assert!(
        through,
        "commands never went through to the restarted upstream"
    );
    assert_eq!(plain.cmd(&["RPUSH", "q", "x"]), Resp::Int(1));
    assert_eq!(plain.cmd(&["BLPOP", "q", "1"]), Resp::bulks(&["q", "x"]));
    let mut sub = sidecar.raw();
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "c"]),
        Resp::Array(vec![Resp::bulk("subscribe"), Resp::bulk("c"), Resp::Int(1)])
    );
}

#[test]
fn redis_cli_and_redis_py_work_through_the_sidecar() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    assert_eq!(sidecar.redis_cli(&["SET", "cli", "42"]).trim(), "OK");
    assert_eq!(sidecar.redis_cli(&["INCR", "cli"]).trim(), "43");
    assert_eq!(sidecar.redis_cli(&["HSET", "clih", "a", "1"]).trim(), "1");
    assert_eq!(sidecar.redis_cli(&["-3", "HGETALL", "clih"]).trim(), "a 1");
    let piped = sidecar.redis_cli_with_stdin(&[], Some(b"MULTI\nINCR cli\nEXEC\nGET cli\n"));
    assert_eq!(piped.trim(), "OK\nQUEUED\n44\n44");

    run_python_check("redis_py_proxy.py", &sidecar, &[]);
}

/// Every key SCAN finds for `pattern`, following the cursor to 0.
fn scan_all(con: &mut RawConn, pattern: &str) -> std::collections::BTreeSet<String> {
    let mut cursor = "0".to_string();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10_000 {
        let Resp::Array(parts) = con.cmd(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "7"]) else {
            panic!("SCAN did not answer an array");
        };
        cursor = parts[0].text();
        let Resp::Array(keys) = &parts[1] else {
            panic!("SCAN's keys are not an array");
        };
        seen.extend(keys.iter().map(Resp::text));
        if cursor == "0" {
            return seen;
        }
    }
    panic!("SCAN never came back to cursor 0");
}

#[test]
fn a_cluster_upstream_is_routed_by_slot_with_redirections_followed() {
    let cluster = Cluster::start();
    let sidecar = sidecar_for(&cluster.url(), &[]);
    let mut con = sidecar.raw();

    // Keys spread over the three masters, each where its slot is served.
    for i in 0..60 {
        let key = format!("key{i}");
        assert_eq!(
            con.cmd(&["SET", &key, &i.to_string()]),
            Resp::Simple("OK".into())
        );
        cluster.holder(&key);
    }
    let holders: std::collections::BTreeSet<_> = (0..60)
        .map(|i| cluster.holder(&format!("key{i}")).addr)
        .collect();
    assert_eq!(holders.len(), 3, "the keys did not spread over the masters");
    // A pipeline across nodes: replies in order.
    let mut pipeline = Vec::new();
    for i in 0..60 {
        pipeline.extend(encode_cmd(&["GET", &format!("key{i}")]));
    }
    con.send(&pipeline).unwrap();
    for i in 0..60 {
        assert_eq!(con.read_reply(), Resp::bulk(i.to_string()));
    }
    // The whole keyspace, as from one Redis: KEYS joins the masters', SCAN
    // walks them all (RESP2 and RESP3), DBSIZE sums them, RANDOMKEY finds a
    // key wherever it is.
    let expected: std::collections::BTreeSet<String> = (0..60).map(|i| format!("key{i}")).collect();
    let Resp::Array(keys) = con.cmd(&["KEYS", "key*"]) else {
        panic!("KEYS did not answer an array");
    };
    let keys: Vec<String> = keys.iter().map(Resp::text).collect();
    assert_eq!(keys.len(), 60, "{keys:?}");
    assert_eq!(
        keys.into_iter().collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    assert_eq!(scan_all(&mut con, "key*"), expected);
    let mut resp3 = sidecar.raw();
    hello3(&mut resp3);
    assert_eq!(scan_all(&mut resp3, "key*"), expected);
    // Also for a client holding a connection of its own (RESP3 tracking).
    assert_eq!(
        resp3.cmd(&["CLIENT", "TRACKING", "ON"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(scan_all(&mut resp3, "key*"), expected);
    let Resp::Array(keys) = resp3.cmd(&["KEYS", "key*"]) else {
        panic!("KEYS did not answer an array");
    };
    assert_eq!(keys.len(), 60);
    assert_eq!(
        con.cmd(&["SCAN", "x"]),
        Resp::Error("ERR invalid cursor".into())
    );
    let masters_dbsize = || -> i64 {
        cluster
            .nodes
            .iter()
            .map(|n| int(&call(&mut n.client(), &["DBSIZE"])))
            .sum()
    };
    let summed = wait_until(Duration::from_secs(5), || {
        let before = masters_dbsize();
        let through = con.cmd(&["DBSIZE"]);
        through == Resp::Int(before) && before == masters_dbsize()
    });
    assert!(summed, "DBSIZE is not the masters' total");
    let key = con.cmd(&["RANDOMKEY"]).text();
    assert_eq!(con.cmd(&["EXISTS", &key]), Resp::Int(1));
    // INFO keyspace is the cluster's, summed over the masters.
    let counted = wait_until(Duration::from_secs(5), || {
        let before = masters_dbsize();
        let info = parse_info(&con.cmd(&["INFO", "keyspace"]).text());
        info.get("db0")
            .is_some_and(|db0| db0.starts_with(&format!("keys={before},")))
            && before == masters_dbsize()
    });
    assert!(counted, "INFO keyspace does not count the masters' keys");
    // Multi-key commands: one slot works, several get Redis's CROSSSLOT.
    assert_eq!(
        con.cmd(&["MSET", "{user1}a", "1", "{user1}b", "2"]),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        con.cmd(&["MGET", "{user1}a", "{user1}b"]),
        Resp::bulks(&["1", "2"])
    );
    assert_eq!(
        con.cmd(&["MGET", "key1", "key2"]),
        Resp::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
    );
    // A transaction goes to the node of its keys' slot.
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(
        con.cmd(&["INCR", "{user1}a"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(
        con.cmd(&["INCR", "{user1}b"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(
        con.cmd(&["EXEC"]),
        Resp::Array(vec![Resp::Int(2), Resp::Int(3)])
    );
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["EXEC"]), Resp::Array(vec![]));
    assert_eq!(con.cmd(&["MULTI"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["DISCARD"]), Resp::Simple("OK".into()));
    assert_eq!(con.cmd(&["GET", "{user1}a"]), Resp::bulk("2"));
    let holder = cluster.holder("{user1}a");
    assert_eq!(call(&mut holder.client(), &["GET", "{user1}b"]), bulk("3"));
    // Scripts with keys, and a blocking command, on their slot's node.
    assert_eq!(
        con.cmd(&["EVAL", "return redis.call('get', KEYS[1])", "1", "key7"]),
        Resp::bulk("7")
    );
    // A script loaded once runs on every master, wherever its keys live.
    let sha = con
        .cmd(&["SCRIPT", "LOAD", "return redis.call('get', KEYS[1])"])
        .text();
    for i in 1..=9 {
        let key = format!("key{i}");
        assert_eq!(
            con.cmd(&["EVALSHA", &sha, "1", &key]),
            Resp::bulk(i.to_string())
        );
    }
    assert_eq!(con.cmd(&["RPUSH", "{q}list", "x"]), Resp::Int(1));
    assert_eq!(
        con.cmd(&["BLPOP", "{q}list", "1"]),
        Resp::bulks(&["{q}list", "x"])
    );

    // Move the slot of `mover` to another master: while it migrates the
    // source answers ASK, once moved MOVED; the client sees neither.
    assert_eq!(
        con.cmd(&["SET", "mover", "before"]),
        Resp::Simple("OK".into())
    );
    let source = cluster.holder("mover");
    let target = cluster
        .nodes
        .iter()
        .find(|n| n.addr != source.addr)
        .unwrap();
    let id = |node: &RedisServer| text(&call(&mut node.client(), &["CLUSTER", "MYID"]));
    let (source_id, target_id) = (id(source), id(target));
    let slot = int(&call(
        &mut source.client(),
        &["CLUSTER", "KEYSLOT", "mover"],
    ))
    .to_string();
    call(
        &mut target.client(),
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
    );
    call(
        &mut source.client(),
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
    );
    let migrated = call(
        &mut source.client(),
        &[
            "MIGRATE",
            "127.0.0.1",
            &target.addr.port().to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            "mover",
        ],
    );
    assert_eq!(migrated, Value::Okay);
    let redirections = || -> u64 {
        sidecar.info("upstream")["proxy_redirections"]
            .parse()
            .unwrap()
    };
    assert_eq!(redirections(), 0);
    assert_eq!(
        con.cmd(&["GET", "mover"]),
        Resp::bulk("before"),
        "ASK followed"
    );
    assert_eq!(redirections(), 1);
    // The target first, as Redis's resharding does.
    for node in std::iter::once(target).chain(&cluster.nodes) {
        call(
            &mut node.client(),
            &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id],
        );
    }
    assert_eq!(
        con.cmd(&["SET", "mover", "after"]),
        Resp::Simple("OK".into()),
        "MOVED followed"
    );
    assert_eq!(redirections(), 2);
    assert_eq!(call(&mut target.client(), &["GET", "mover"]), bulk("after"));
    assert_eq!(con.cmd(&["GET", "mover"]), Resp::bulk("after"));
    // And redis-cli, without -c, never sees a redirection.
    assert_eq!(sidecar.redis_cli(&["GET", "mover"]).trim(), "after");
    assert_eq!(sidecar.redis_cli(&["GET", "key42"]).trim(), "42");

    // The redis crate and redis-py, as against one server: keys of all three
    // masters in one pipeline, transactions, WATCH, pub/sub, BLPOP.
    let mut con = sidecar.client();
    let values: Vec<String> = redis::pipe()
        .get("key1")
        .get("key2")
        .get("key3")
        .query(&mut con)
        .unwrap();
    assert_eq!(values, ["1", "2", "3"]);
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("{user1}a", 10)
        .incr("{user1}b", 10)
        .query(&mut con)
        .unwrap();
    assert_eq!((a, b), (12, 13));
    run_python_check("redis_py_proxy.py", &sidecar, &["cluster"]);
}

/// An upstream that accepts commands but answers none: the waiting clients
/// get an error after --proxy-timeout-ms, not a hang, and the pooled
/// connection is replaced once the upstream answers again.
#[test]
fn a_silent_upstream_gets_an_error_after_the_proxy_timeout() {
    let redis = RedisServer::start(&[]);
    let sidecar = sidecar_for(&redis.url(), &["--proxy-timeout-ms", "300"]);
    let mut con = sidecar.raw();
    assert_eq!(con.cmd(&["SET", "k", "v"]), Resp::Simple("OK".into()));
    let mut admin = redis.client();
    call(&mut admin, &["CLIENT", "PAUSE", "3000", "ALL"]);
    let started = Instant::now();
    let reply = con.cmd(&["GET", "k"]);
    assert!(
        format!("{reply:?}").contains("may have been applied"),
        "{reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // What the sidecar answers with the upstream's part is bounded too
    // (--upstream-timeout-ms); INFO answers without the keyspace.
    let started = Instant::now();
    let reply = con.cmd(&["CONFIG", "GET", "maxmemory"]);
    assert!(matches!(&reply, Resp::Error(_)), "{reply:?}");
    assert!(!con.cmd(&["INFO", "keyspace"]).text().contains("db0"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    call(&mut admin, &["CLIENT", "UNPAUSE"]);
    let through = wait_until(Duration::from_secs(10), || {
        con.cmd(&["GET", "k"]) == Resp::bulk("v")
    });
    assert!(through);
}

/// The upstream dies while a pooled command waits for its reply: the client
/// gets an error, and the pool serves again once the upstream is back.
#[test]
fn an_upstream_dying_under_a_waiting_command_does_not_wedge_the_pool() {
    let mut redis = RedisServer::start(&["--enable-debug-command", "yes"]);
    let port = redis.port();
    let sidecar = sidecar_for(&redis.url(), &["--proxy-timeout-ms", "0"]);
    let mut con = sidecar.raw();
    assert_eq!(con.cmd(&["SET", "k", "v"]), Resp::Simple("OK".into()));
    // The upstream stops answering anyone (it sleeps), then dies with the
    // GET below written to it and unanswered.
    let url = redis.url();
    let sleeper = std::thread::spawn(move || {
        let mut admin = redis::Client::open(url).unwrap().get_connection().unwrap();
        let _: redis::RedisResult<Value> =
            redis::cmd("DEBUG").arg("SLEEP").arg(5).query(&mut admin);
    });
    let asleep = wait_until(Duration::from_secs(5), || {
        let mut probe = RawConn::connect(redis.addr);
        probe.send_cmd(&["PING"]);
        probe.try_read_reply(Duration::from_millis(50)).is_err()
    });
    assert!(asleep, "the upstream never went to sleep");
    con.send_cmd(&["GET", "k"]);
    assert!(
        con.try_read_reply(Duration::from_millis(100)).is_err(),
        "the GET was answered by a sleeping upstream"
    );
    redis.kill9();
    let _ = sleeper.join();
    let reply = con.read_reply_within(Duration::from_secs(5));
    assert!(
        format!("{reply:?}").contains("may have been applied"),
        "{reply:?}"
    );
    let _back = RedisServer::start_on_port(port, &[]);
    let through = wait_until(Duration::from_secs(10), || {
        con.cmd(&["SET", "k", "w"]) == Resp::Simple("OK".into())
    });
    assert!(through, "the pool never served again");
}

/// Replication cannot go through a proxy: SYNC, PSYNC and REPLCONF get a
/// clear error (they once panicked a pooled connection and hung the
/// client), and the connection and the pool go on serving.
#[test]
fn replication_commands_get_a_clear_error_and_break_nothing() {
    let redis = RedisServer::start(&[]);
    let sidecar = sidecar_for(&redis.url(), &[]);
    let mut c = sidecar.client();
    for command in [
        &["SYNC"][..],
        &["PSYNC", "?", "-1"],
        &["REPLCONF", "listening-port", "1"],
    ] {
        let started = Instant::now();
        let reply = call(&mut c, command);
        assert!(
            err_text(&reply).contains("not served through session-sidecar"),
            "{command:?}: {reply:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    call(&mut c, &["SET", "k", "v"]);
    assert_eq!(text(&call(&mut c, &["GET", "k"])), "v");
    assert_eq!(text(&call(&mut sidecar.client(), &["GET", "k"])), "v");
}

/// `client-output-buffer-limit`: a client that pipelines GETs of a 1 MB value
/// and never reads is closed once its unread replies pass the hard limit,
/// with a log line and a counter, while other clients are served on.
#[test]
fn a_client_that_never_reads_is_closed_at_its_output_buffer_limit() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(
        &upstream.url(),
        &[
            "--client-output-buffer-limit",
            "normal 8mb 2mb 10 pubsub 32mb 8mb 60",
        ],
    );
    assert_eq!(
        call(
            &mut sidecar.client(),
            &["CONFIG", "GET", "client-output-buffer-limit"]
        ),
        Value::Array(vec![
            bulk("client-output-buffer-limit"),
            bulk("normal 8388608 2097152 10 slave 0 0 0 pubsub 33554432 8388608 60"),
        ])
    );
    call(
        &mut upstream.client(),
        &["SET", "big", &"x".repeat(1 << 20)],
    );
    let mut hog = sidecar.raw();
    let mut pipeline = Vec::new();
    for _ in 0..200 {
        pipeline.extend(encode_cmd(&["GET", "big"]));
    }
    hog.send(&pipeline).unwrap();
    let counted = wait_until(Duration::from_secs(10), || {
        let (_, _, body) = sidecar.http_get("/metrics");
        metric_value(&body, "session_sidecar_output_limit_disconnections_total") == Some(1.0)
    });
    assert!(counted, "the client was not closed at its limit");
    // Others are served all along.
    let started = Instant::now();
    assert_eq!(text(&call(&mut sidecar.client(), &["SET", "k", "v"])), "OK");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        sidecar
            .logs()
            .iter()
            .any(|l| l.contains("client-output-buffer-limit normal")),
        "no log line names the limit"
    );
    // What the socket already held can be read; then the connection ends,
    // long before the 200 replies.
    let mut replies = 0;
    loop {
        match hog.try_read_reply(Duration::from_secs(5)) {
            Ok(_) => replies += 1,
            Err(ReadEnd::Closed) => break,
            Err(ReadEnd::Timeout) => panic!("the connection stayed open"),
        }
    }
    assert!(replies < 100, "{replies} replies");
}

/// RESP2 client-side caching of ordinary keys with REDIRECT, as Redis's own
/// tracking tests do it: the sidecar names the target's upstream connection
/// there, and relays the upstream's `__redis__:invalidate` messages (whose
/// payload is an array) to the target without taking them for replies.
#[test]
fn tracking_redirect_of_ordinary_keys_reaches_a_resp2_subscriber() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut target = sidecar.raw();
    let Resp::Int(target_id) = target.cmd(&["CLIENT", "ID"]) else {
        panic!("CLIENT ID is an integer")
    };
    assert!(matches!(
        target.cmd(&["SUBSCRIBE", "__redis__:invalidate"]),
        Resp::Array(_)
    ));
    let mut tracker = sidecar.raw();
    assert_eq!(
        tracker.cmd(&[
            "CLIENT",
            "TRACKING",
            "on",
            "REDIRECT",
            &target_id.to_string()
        ]),
        Resp::Simple("OK".into())
    );
    assert_eq!(tracker.cmd(&["SET", "a", "1"]), Resp::Simple("OK".into()));
    assert_eq!(tracker.cmd(&["GET", "a"]), Resp::bulk("1"));
    assert_eq!(tracker.cmd(&["INCR", "a"]), Resp::Int(2));
    assert_eq!(
        target.read_reply_within(Duration::from_secs(5)),
        Resp::Array(vec![
            Resp::bulk("message"),
            Resp::bulk("__redis__:invalidate"),
            Resp::Array(vec![Resp::bulk("a")]),
        ])
    );
    // Still subscribed and in step.
    assert_eq!(
        target.cmd(&["PING"]),
        Resp::Array(vec![Resp::bulk("pong"), Resp::bulk("")])
    );
}

/// With an upstream, INFO carries the upstream's own fields beside the
/// sidecar's: its version, the clients blocked on it, and the sections the
/// sidecar has none of.
#[test]
fn info_carries_the_upstreams_fields() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let direct = parse_info(&text(&call(&mut upstream.client(), &["INFO", "server"])));
    let mut blocked = sidecar.raw();
    blocked.send_cmd(&["BLPOP", "nothing-here", "0"]);
    let mut c = sidecar.client();
    let seen = wait_until(Duration::from_secs(5), || {
        let info = parse_info(&text(&call(&mut c, &["INFO"])));
        info.get("blocked_clients").map(String::as_str) == Some("1")
    });
    assert!(seen, "INFO never showed the client blocked upstream");
    let info = parse_info(&text(&call(&mut c, &["INFO", "everything"])));
    assert_eq!(info.get("redis_version"), direct.get("redis_version"));
    assert!(
        info.contains_key("used_cpu_sys"),
        "the upstream's cpu section"
    );
    assert!(
        info.contains_key("cmdstat_blpop"),
        "the upstream's commandstats"
    );
    // The sidecar's own fields are there too.
    assert_eq!(info.get("mode").map(String::as_str), Some("write-through"));
    assert!(info.contains_key("sessions"));
}

/// With an upstream, CLIENT PAUSE and UNPAUSE are the upstream's.
#[test]
fn client_pause_pauses_the_upstream() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut c = sidecar.client();
    assert_eq!(
        call(&mut c, &["CLIENT", "PAUSE", "400", "WRITE"]),
        Value::Okay
    );
    let started = Instant::now();
    assert_eq!(
        text(&call(&mut upstream.client(), &["SET", "k", "v"])),
        "OK"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the upstream was not paused"
    );
    call(&mut c, &["CLIENT", "PAUSE", "60000", "WRITE"]);
    assert_eq!(call(&mut c, &["CLIENT", "UNPAUSE"]), Value::Okay);
    let started = Instant::now();
    call(&mut upstream.client(), &["SET", "k", "w"]);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// CLIENT UNBLOCK names a client of the sidecar: the sidecar unblocks that
/// client's own blocked upstream connection, and no other.
#[test]
fn client_unblock_ends_a_blocking_command_through_the_sidecar() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut blocked = sidecar.raw();
    let Resp::Int(id) = blocked.cmd(&["CLIENT", "ID"]) else {
        panic!("CLIENT ID is an integer")
    };
    blocked.send_cmd(&["BLPOP", "empty", "0"]);
    let mut c = sidecar.client();
    let blocked_upstream = wait_until(Duration::from_secs(5), || {
        let info = parse_info(&text(&call(&mut c, &["INFO", "clients"])));
        info.get("blocked_clients").map(String::as_str) == Some("1")
    });
    assert!(blocked_upstream);
    // An id no sidecar client has unblocks nobody.
    assert_eq!(
        call(&mut c, &["CLIENT", "UNBLOCK", "987654"]),
        Value::Int(0)
    );
    assert_eq!(
        call(&mut c, &["CLIENT", "UNBLOCK", &id.to_string(), "ERROR"]),
        Value::Int(1)
    );
    match blocked.read_reply_within(Duration::from_secs(5)) {
        Resp::Error(e) => assert!(e.starts_with("UNBLOCKED"), "{e}"),
        other => panic!("expected UNBLOCKED, got {other:?}"),
    }
}

/// HELLO reports the upstream's version, as INFO does, for the clients
/// that gate features on it.
#[test]
fn hello_reports_the_upstreams_version() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let direct = parse_info(&text(&call(&mut upstream.client(), &["INFO", "server"])));
    let expected = direct["redis_version"].clone();
    for version in ["2", "3"] {
        let mut con = sidecar.raw();
        let reply = con.cmd(&["HELLO", version]);
        let fields = match reply {
            Resp::Map(pairs) => pairs,
            Resp::Array(items) => items
                .chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect(),
            other => panic!("HELLO {version} answered {other:?}"),
        };
        let seen = fields
            .iter()
            .find(|(name, _)| *name == Resp::Bulk(b"version".to_vec()))
            .map(|(_, value)| value.clone());
        assert_eq!(seen, Some(Resp::Bulk(expected.clone().into_bytes())));
    }
}

/// SCRIPT KILL and FUNCTION KILL reach an upstream busy with a script: they
/// do not queue behind it on the pooled connection that carried it. Once
/// killed, the pool serves again.
#[test]
fn script_kill_and_function_kill_overtake_a_busy_script() {
    let upstream = RedisServer::start(&["--busy-reply-threshold", "100"]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut c = sidecar.client();
    let library =
        "#!lua name=spinlib\nredis.register_function('spin', function() while true do end end)";
    call(&mut c, &["FUNCTION", "LOAD", library]);
    for (spin, kill) in [
        (
            &["EVAL", "while true do end", "0"][..],
            &["SCRIPT", "KILL"][..],
        ),
        (&["FCALL", "spin", "0"][..], &["FUNCTION", "KILL"][..]),
    ] {
        let mut busy = sidecar.raw();
        busy.send_cmd(spin);
        let mut killer = sidecar.raw();
        let killed = wait_until(Duration::from_secs(10), || {
            killer.send_cmd(kill);
            match killer.read_reply_within(Duration::from_secs(5)) {
                Resp::Simple(ok) => ok == "OK",
                // NOTBUSY: the script has not started yet.
                Resp::Error(e) if e.starts_with("NOTBUSY") => false,
                other => panic!("{kill:?} answered {other:?}"),
            }
        });
        assert!(killed, "{kill:?} never reached the busy upstream");
        match busy.read_reply_within(Duration::from_secs(5)) {
            Resp::Error(e) => assert!(e.contains("killed"), "{e}"),
            other => panic!("the killed script answered {other:?}"),
        }
        assert_eq!(call(&mut c, &["SET", "after", "1"]), Value::Okay);
    }
}

/// CLIENT REPLY OFF and SKIP with an upstream: forwarded commands still
/// run and their replies are not sent, as those the sidecar answers.
#[test]
fn client_reply_off_and_skip_cover_forwarded_commands() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    con.send_cmd(&["SET", "before", "1"]);
    con.send_cmd(&["CLIENT", "REPLY", "OFF"]);
    con.send_cmd(&["SET", "quiet", "1"]);
    con.send_cmd(&["SESSION.CREATE", "ID", "quiet"]);
    con.send_cmd(&["INCR", "quiet"]);
    con.send_cmd(&["BLPOP", "nothing", "0.01"]);
    assert_eq!(con.read_reply(), Resp::Simple("OK".into()), "SET before");
    assert_eq!(
        con.cmd(&["CLIENT", "REPLY", "ON"]),
        Resp::Simple("OK".into())
    );
    con.send_cmd(&["CLIENT", "REPLY", "SKIP"]);
    con.send_cmd(&["INCR", "quiet"]);
    assert_eq!(con.cmd(&["GET", "quiet"]), Resp::bulk("3"));
    assert_eq!(con.cmd(&["SESSION.EXISTS", "quiet"]), Resp::Int(1));
    assert!(matches!(
        con.try_read_reply(Duration::from_millis(200)),
        Err(ReadEnd::Timeout)
    ));
    // Subscription confirmations and messages are sent all the same, as
    // Redis sends them.
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
    call(&mut sidecar.client(), &["PUBLISH", "quiet-channel", "hi"]);
    assert_eq!(
        con.read_reply(),
        Resp::Array(vec![
            Resp::bulk("message"),
            Resp::bulk("quiet-channel"),
            Resp::bulk("hi")
        ])
    );
}

/// An invalidation a transaction causes comes after EXEC's reply, as Redis
/// sends it, not inside or before it.
#[test]
fn invalidations_follow_the_exec_reply() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut con = sidecar.raw();
    hello3(&mut con);
    assert_eq!(
        con.cmd(&["CLIENT", "TRACKING", "ON"]),
        Resp::Simple("OK".into())
    );
    con.cmd(&["MSET", "a{t}", "1", "b{t}", "2"]);
    con.cmd(&["GET", "a{t}"]);
    for _ in 0..20 {
        con.cmd(&["MULTI"]);
        con.cmd(&["INCR", "a{t}"]);
        con.cmd(&["GET", "b{t}"]);
        match con.cmd(&["EXEC"]) {
            Resp::Array(replies) => assert_eq!(replies.len(), 2, "{replies:?}"),
            other => panic!("EXEC answered {other:?}"),
        }
        match con.read_reply() {
            Resp::Push(items) => assert_eq!(items[0], Resp::bulk("invalidate")),
            other => panic!("expected the invalidation after EXEC, got {other:?}"),
        }
        con.cmd(&["GET", "a{t}"]);
    }
    // A session read too: FLUSHDB's one flush-everything covers it.
    call(&mut sidecar.client(), &["SESSION.CREATE", "ID", "flushed"]);
    con.cmd(&["SESSION.GET", "flushed"]);
    con.cmd(&["MULTI"]);
    con.cmd(&["FLUSHDB"]);
    assert_eq!(
        con.cmd(&["EXEC"]),
        Resp::Array(vec![Resp::Simple("OK".into())])
    );
    assert_eq!(
        con.read_reply(),
        Resp::Push(vec![Resp::bulk("invalidate"), Resp::Null])
    );
    assert!(
        matches!(
            con.try_read_reply(Duration::from_millis(300)),
            Err(ReadEnd::Timeout)
        ),
        "one flush, one flush-everything"
    );
}

/// With an upstream, REDIRECT names a client with a connection of its own
/// to the upstream (a subscriber); one without is refused by the upstream,
/// and the sidecar then tracks nothing for the client either.
#[test]
fn a_refused_redirect_leaves_tracking_off() {
    let upstream = RedisServer::start(&[]);
    let sidecar = sidecar_for(&upstream.url(), &[]);
    let mut target = sidecar.raw();
    let Resp::Int(id) = target.cmd(&["CLIENT", "ID"]) else {
        panic!("CLIENT ID is an integer")
    };
    let mut tracker = sidecar.raw();
    hello3(&mut tracker);
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()]),
        Resp::Error("ERR The client ID you want redirect to does not exist".into())
    );
    assert_eq!(tracker.cmd(&["CLIENT", "GETREDIR"]), Resp::Int(-1));
}
