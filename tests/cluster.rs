//! Write-through to a real 3-master Redis Cluster on loopback
//! (`redis-cli --cluster create`): the sidecars keep a link to every master,
//! spread the sessions over all of them and keep the whole contract there
//! (the shared suite runs against two sidecars on a cluster).

mod common;
#[macro_use]
#[path = "shared/contract.rs"]
mod contract;

use std::time::Duration;

use common::cluster::Cluster;
use common::*;
use redis::Value;

fn sidecar(cluster: &Cluster, node: &str) -> Sidecar {
    // Returns once its upstream connection is up.
    Sidecar::write_through(&cluster.url(), node, &[])
}

#[test]
fn two_sidecars_share_sessions_through_a_three_master_cluster() {
    let cluster = Cluster::start();
    let a = sidecar(&cluster, "a");
    let b = sidecar(&cluster, "b");
    let mut ca = a.client();
    let mut cb = b.client();

    assert_eq!(
        call(
            &mut ca,
            &[
                "SESSION.CREATE",
                "ID",
                "c1",
                "USER",
                "alice",
                "CONN",
                "ws1",
                "ATTR",
                "k",
                "v"
            ]
        ),
        bulk("c1")
    );
    assert_eq!(
        get_session(&mut cb, "c1", false)
            .expect("b reads a's session")
            .version,
        1
    );
    assert_eq!(byuser(&mut cb, "alice"), ["c1"]);
    assert_eq!(call(&mut cb, &["SESSION.BYCONN", "ws1"]), bulk("c1"));

    // Coherence: a write on b reaches a's hot copy.
    call(&mut ca, &["SESSION.GET", "c1"]);
    assert_eq!(
        int(&call(&mut cb, &["SESSION.ATTR.SET", "c1", "k", "w"])),
        2
    );
    let seen = wait_until(Duration::from_secs(2), || {
        call(&mut ca, &["SESSION.ATTR.GET", "c1", "k"]) == Value::Array(vec![bulk("w")])
    });
    assert!(seen, "a never saw b's write");
    assert_err(
        &call(
            &mut ca,
            &["SESSION.UPDATE", "c1", "IFVERSION", "1", "ATTR", "k", "x"],
        ),
        "CONFLICT version is 2",
    );

    // The session's keys, its user's index and its conn's pointer are each
    // on the master of their shard's slot (`holder` fails if none has it);
    // a generated id lands in its user's shard.
    let l = &*CLUSTER_LAYOUT;
    let c1_shard = l.shard_of(b"c1");
    for key in [
        l.session_key(b"c1"),
        l.expiry_key(c1_shard),
        l.stream_key(c1_shard),
        l.user_key(b"alice"),
        l.conn_key(b"ws1"),
    ] {
        cluster.holder(&key_text(key));
    }
    let generated = text(&call(&mut ca, &["SESSION.CREATE", "USER", "bob"]));
    assert_eq!(
        cluster
            .holder(&key_text(l.session_key(generated.as_bytes())))
            .addr,
        cluster.holder(&key_text(l.user_key(b"bob"))).addr,
        "a generated id is not beside its user's index"
    );
    assert_eq!(int(&call(&mut ca, &["SESSION.COUNT"])), 2);

    // Both sidecars are in the registry.
    let listed = wait_until(Duration::from_secs(5), || {
        array(&call(&mut ca, &["SESSION.NODES"])).len() == 2
    });
    assert!(listed, "a does not list b");
}

#[test]
fn expiry_on_a_cluster_is_published_exactly_once() {
    let cluster = Cluster::start();
    let a = sidecar(&cluster, "a");
    let b = sidecar(&cluster, "b");
    for i in 0..20 {
        let sc = if i % 2 == 0 { &a } else { &b };
        call(
            &mut sc.client(),
            &["SESSION.CREATE", "ID", &format!("e{i}"), "PTTL", "200"],
        );
    }
    let expired_ids = || -> Vec<String> {
        cluster
            .stream_entries()
            .into_iter()
            .filter_map(|pairs| {
                let field = |name: &str| {
                    pairs
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                (field("event")? == "expired")
                    .then(|| field("id"))
                    .flatten()
            })
            .collect()
    };
    let swept = wait_until(Duration::from_secs(10), || expired_ids().len() >= 20);
    assert!(
        swept,
        "only {} expiries were published",
        expired_ids().len()
    );
    // Let every sweeper run a few more times: nothing may be published twice.
    std::thread::sleep(Duration::from_millis(500));
    let mut expired = expired_ids();
    expired.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
    expected.sort();
    assert_eq!(expired, expected, "each expiry exactly once");
}

/// Per-master `calls` of the session library (FCALL, INFO commandstats), in
/// node order.
fn script_calls(cluster: &Cluster) -> Vec<i64> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query(&mut node.client())
                .unwrap_or_default();
            info.lines()
                .find_map(|line| line.strip_prefix("cmdstat_fcall:calls="))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |calls| calls.parse().unwrap_or(0))
        })
        .collect()
}

/// Each share of the total within `tolerance` (a fraction) of a third.
#[track_caller]
fn assert_thirds(what: &str, per_master: &[i64], tolerance: f64) {
    let total: i64 = per_master.iter().sum();
    assert!(total > 0, "{what}: nothing counted");
    for count in per_master {
        let share = *count as f64 / total as f64;
        assert!(
            (share - 1.0 / 3.0).abs() <= tolerance,
            "{what} per master {per_master:?}: one holds {:.1}%",
            share * 100.0
        );
    }
    eprintln!("{what} per master: {per_master:?}");
}

/// 30,000 sessions of 3,000 users, created through two sidecars: each of
/// the three masters holds a third of the keys (± 5%), and serves a third of
/// the script calls of a CREATE and UPDATE load (± 8%).
#[test]
fn sessions_and_their_work_spread_evenly_over_three_masters() {
    const SESSIONS: usize = 30_000;
    const USERS: usize = 3_000;
    let cluster = Cluster::start();
    let sidecars = [sidecar(&cluster, "a"), sidecar(&cluster, "b")];
    let calls_before = script_calls(&cluster);
    let mut ids = Vec::with_capacity(SESSIONS);
    for (i, chunk) in (0..SESSIONS).collect::<Vec<_>>().chunks(1000).enumerate() {
        let mut con = sidecars[i % 2].client();
        let mut pipe = redis::pipe();
        for n in chunk {
            pipe.cmd("SESSION.CREATE")
                .arg("USER")
                .arg(format!("user-{}", n % USERS))
                .arg("ATTR")
                .arg("n")
                .arg(n);
        }
        let created: Vec<String> = pipe.query(&mut con).expect("creations");
        ids.extend(created);
    }
    assert_eq!(ids.len(), SESSIONS);
    let keys = cluster.keys_per_node();
    assert_thirds("keys", &keys, 0.05);

    // An UPDATE of every tenth session, through both sidecars.
    for (i, chunk) in ids
        .iter()
        .step_by(10)
        .collect::<Vec<_>>()
        .chunks(500)
        .enumerate()
    {
        let mut con = sidecars[i % 2].client();
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("SESSION.UPDATE")
                .arg(id)
                .arg("ATTR")
                .arg("seen")
                .arg(1);
        }
        let versions: Vec<i64> = pipe.query(&mut con).expect("updates");
        assert!(versions.iter().all(|v| *v == 2));
    }
    let calls: Vec<i64> = script_calls(&cluster)
        .iter()
        .zip(&calls_before)
        .map(|(after, before)| after - before)
        .collect();
    assert_thirds("script calls", &calls, 0.08);
    assert_eq!(
        int(&call(&mut sidecars[0].client(), &["SESSION.COUNT"])),
        SESSIONS as i64
    );
}

/// The shared contract suite against two sidecars on a 3-master cluster.
mod contract_cluster {
    use std::ops::Deref;

    use crate::common::cluster::Cluster;
    use crate::common::*;
    use crate::contract::{NODE, Target};

    pub struct ClusterFleet {
        // Field order is drop order: the sidecars go before the cluster.
        a: Sidecar,
        b: Sidecar,
        _cluster: Cluster,
    }

    impl Deref for ClusterFleet {
        type Target = Sidecar;

        fn deref(&self) -> &Sidecar {
            &self.a
        }
    }

    impl Target for ClusterFleet {
        fn start(extra: &[&str]) -> Self {
            let cluster = Cluster::start();
            let a = Sidecar::write_through(&cluster.url(), NODE, extra);
            let b = Sidecar::write_through(&cluster.url(), "node-b", extra);
            ClusterFleet {
                a,
                b,
                _cluster: cluster,
            }
        }

        fn other(&self) -> &Sidecar {
            &self.b
        }
    }

    contract_tests!(ClusterFleet);
}

/// Counters written by concurrent clients on both sidecars while
/// `disturb` runs (a reshard, a failover): every acknowledged increment is
/// applied once, every refused one (TRYAGAIN) not at all; one whose outcome
/// the sidecar could not know (a timeout) at most once.
fn counters_survive(a: &Sidecar, b: &Sidecar, disturb: impl FnOnce()) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const SESSIONS: usize = 200;
    let mut c = a.client();
    for i in 0..SESSIONS {
        call(
            &mut c,
            &["SESSION.CREATE", "ID", &format!("r{i}"), "ATTR", "n", "0"],
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut con = if w % 2 == 0 { a.client() } else { b.client() };
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = vec![0i64; SESSIONS];
                let mut unknown = vec![0i64; SESSIONS];
                let mut refused = 0;
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("r{}", i % SESSIONS);
                    let reply: redis::RedisResult<i64> = redis::cmd("SESSION.ATTR.INCRBY")
                        .arg(&id)
                        .arg("n")
                        .arg(1)
                        .query(&mut con);
                    match reply {
                        Ok(_) => acked[i % SESSIONS] += 1,
                        Err(e) if e.code() == Some("TRYAGAIN") => refused += 1,
                        Err(e) if e.code() == Some("TIMEOUT") => unknown[i % SESSIONS] += 1,
                        Err(e) => panic!("increment of {id}: {e}"),
                    }
                    i += 4;
                }
                (acked, unknown, refused)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    disturb();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut acked = vec![0i64; SESSIONS];
    let mut unknown = vec![0i64; SESSIONS];
    let mut refused = 0;
    for writer in writers {
        let (a, u, r) = writer.join().unwrap();
        for i in 0..SESSIONS {
            acked[i] += a[i];
            unknown[i] += u[i];
        }
        refused += r;
    }
    let total: i64 = acked.iter().sum();
    assert!(total > 0, "no increment was acknowledged");
    eprintln!("{total} increments acknowledged, {refused} refused with TRYAGAIN");
    // The counters, read from the upstream's own state through the other
    // sidecar (a fresh read, not a hot copy of the writer's).
    let mut c = b.client();
    for i in 0..SESSIONS {
        let id = format!("r{i}");
        let value: i64 = text(&array(&call(&mut c, &["SESSION.ATTR.GET", &id, "n"]))[0])
            .parse()
            .unwrap();
        assert!(
            acked[i] <= value && value <= acked[i] + unknown[i],
            "{id}: {value} applied, {} acknowledged, {} unknown",
            acked[i],
            unknown[i]
        );
    }
    assert_eq!(int(&call(&mut c, &["SESSION.COUNT"])), SESSIONS as i64);
}

/// A real `redis-cli --cluster reshard` moving a third of the slots (and the
/// shards in them) under concurrent writers: nothing lost, nothing doubled.
#[test]
fn a_reshard_under_concurrent_writers_loses_and_doubles_nothing() {
    let cluster = Cluster::start();
    let a = sidecar(&cluster, "a");
    let b = sidecar(&cluster, "b");
    let id_of = |node: &RedisServer| -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut node.client())
            .unwrap()
    };
    let (from, to) = (id_of(&cluster.nodes[0]), id_of(&cluster.nodes[1]));
    counters_survive(&a, &b, || {
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &cluster.nodes[0].addr.to_string()])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "2000", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "reshard failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A real `CLUSTER FAILOVER`: a replica takes over its master's slots under
/// concurrent writers; the sidecars follow it, losing and doubling nothing.
#[test]
fn a_cluster_failover_under_concurrent_writers_loses_and_doubles_nothing() {
    let cluster = Cluster::start_with(1);
    let a = sidecar(&cluster, "a");
    let b = sidecar(&cluster, "b");
    counters_survive(&a, &b, || {
        let replica = cluster.replicas()[0];
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut replica.client())
            .expect("CLUSTER FAILOVER");
        let promoted = wait_until(Duration::from_secs(20), || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut replica.client())
                .unwrap_or_default();
            info.contains("role:master")
        });
        assert!(promoted, "the replica never took over");
        // The sidecars move their writes to it.
        std::thread::sleep(Duration::from_millis(1500));
    });
}

/// A consumer reads every event durably: SESSION.STREAMS names each shard's
/// stream, and reading each through the sidecar (its passthrough routes each
/// stream to its master), with a consumer group, gives every event once, in
/// order for each session.
#[test]
fn every_event_is_read_from_the_shard_streams_through_the_sidecar() {
    let cluster = Cluster::start();
    let a = sidecar(&cluster, "a");
    let mut c = a.client();
    let streams: Vec<String> = array(&call(&mut c, &["SESSION.STREAMS"]))
        .iter()
        .map(text)
        .collect();
    assert_eq!(streams.len(), CLUSTER_LAYOUT.shards() as usize);
    for stream in &streams {
        call(
            &mut c,
            &["XGROUP", "CREATE", stream, "audit", "$", "MKSTREAM"],
        );
    }
    for i in 0..40 {
        let id = format!("ev{i}");
        call(&mut c, &["SESSION.CREATE", "ID", &id, "USER", "u"]);
        call(&mut c, &["SESSION.BIND", &id, &format!("conn{i}")]);
        call(&mut c, &["SESSION.DEL", &id]);
    }
    // One consumer reads every stream's group, as a worker of a fleet would.
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for stream in &streams {
        let reply = call(
            &mut c,
            &[
                "XREADGROUP",
                "GROUP",
                "audit",
                "w1",
                "COUNT",
                "1000",
                "STREAMS",
                stream,
                ">",
            ],
        );
        if reply == Value::Nil {
            continue;
        }
        for entries in array(&reply) {
            let entries = array(&array(&entries)[1]);
            for entry in entries {
                let fields: Vec<String> = array(&array(&entry)[1]).iter().map(text).collect();
                let field = |name: &str| {
                    fields
                        .chunks(2)
                        .find(|kv| kv[0] == name)
                        .map(|kv| kv[1].clone())
                        .unwrap()
                };
                seen.entry(field("id")).or_default().push(field("event"));
            }
        }
    }
    assert_eq!(seen.len(), 40, "sessions with events: {}", seen.len());
    for (id, events) in &seen {
        assert_eq!(events, &["created", "bound", "deleted"], "{id}'s events");
    }
}

/// Coherence and cheap heartbeats across every master: a sidecar serves hot
/// copies of sessions on all three masters, sees another sidecar's writes to
/// each within a second, and answers non-extending heartbeats without a
/// script call per heartbeat.
#[test]
fn hot_copies_stay_coherent_and_heartbeats_cheap_on_every_master() {
    let cluster = Cluster::start();
    let a = sidecar(&cluster, "a");
    let b = sidecar(&cluster, "b");
    let (mut ca, mut cb) = (a.client(), b.client());
    let l = &*CLUSTER_LAYOUT;
    // Sessions until every master holds some.
    let mut ids = Vec::new();
    let mut masters = std::collections::BTreeSet::new();
    for i in 0..300 {
        let id = format!("h{i}");
        call(&mut ca, &["SESSION.CREATE", "ID", &id, "TTL", "3600"]);
        masters.insert(cluster.holder(&key_text(l.session_key(id.as_bytes()))).addr);
        ids.push(id);
        if masters.len() == 3 && ids.len() >= 30 {
            break;
        }
    }
    assert_eq!(masters.len(), 3, "the sessions are not on every master");
    for id in &ids {
        assert_eq!(get_session(&mut ca, id, false).unwrap().version, 1);
    }
    for id in &ids {
        call(&mut cb, &["SESSION.ATTR.SET", id, "k", "b"]);
    }
    let coherent = wait_until(Duration::from_secs(1), || {
        ids.iter()
            .all(|id| get_session(&mut ca, id, false).unwrap().version == 2)
    });
    assert!(coherent, "a served stale copies after b's writes");

    let absorbed =
        |sc: &Sidecar| -> i64 { sc.info("upstream")["heartbeats_absorbed"].parse().unwrap() };
    let before = absorbed(&a);
    for _ in 0..10 {
        for id in &ids {
            assert!(int(&call(&mut ca, &["SESSION.TOUCH", id])) > 0);
        }
    }
    // Every one answered from memory, on every master's sessions; their
    // last_active reaches the upstream in batches.
    assert_eq!(absorbed(&a) - before, 10 * ids.len() as i64);
}

/// One master down: the sessions on the others are served and written as
/// before; those on it fail fast with TRYAGAIN, not after a timeout.
#[test]
fn a_master_down_fails_its_shards_fast_and_spares_the_others() {
    let mut cluster = Cluster::start();
    let a = sidecar(&cluster, "a");
    let mut c = a.client();
    let l = &*CLUSTER_LAYOUT;
    let down = cluster.nodes[2].addr;
    let (mut on_down, mut elsewhere) = (Vec::new(), Vec::new());
    for i in 0..60 {
        let id = format!("o{i}");
        call(&mut c, &["SESSION.CREATE", "ID", &id]);
        if cluster.holder(&key_text(l.session_key(id.as_bytes()))).addr == down {
            on_down.push(id);
        } else {
            elsewhere.push(id);
        }
    }
    assert!(!on_down.is_empty() && !elsewhere.is_empty());
    cluster.nodes[2].kill9();
    // Once the sidecar has seen the master go, its shards fail fast.
    let fast = wait_until(Duration::from_secs(10), || {
        let started = std::time::Instant::now();
        let reply = call(&mut c, &["SESSION.ATTR.SET", &on_down[0], "k", "v"]);
        err_text(&reply).starts_with("TRYAGAIN") && started.elapsed() < Duration::from_millis(100)
    });
    assert!(fast, "writes to the dead master's shards do not fail fast");
    for id in &elsewhere {
        assert_eq!(
            int(&call(&mut c, &["SESSION.ATTR.SET", id, "k", "v"])),
            2,
            "{id}, on a live master"
        );
    }
}

/// SIGTERM on a cluster: the sidecar drains the sessions it owns, on every
/// master, to the other sidecar it finds in the registry.
#[test]
fn sigterm_drains_every_masters_sessions_to_the_registered_sidecar() {
    let cluster = Cluster::start();
    let b = sidecar(&cluster, "b");
    let mut a = sidecar(&cluster, "a");
    assert!(wait_until(Duration::from_secs(10), || {
        array(&call(&mut a.client(), &["SESSION.NODES"])).len() == 2
    }));
    let mut c = a.client();
    for i in 0..200 {
        call(
            &mut c,
            &["SESSION.CREATE", "ID", &format!("d{i}"), "USER", "u"],
        );
    }
    a.sigterm();
    assert!(a.wait_exit(Duration::from_secs(20)).success());
    let mut cb = b.client();
    for i in 0..200 {
        let s = get_session(&mut cb, &format!("d{i}"), false).expect("a drained session");
        assert_eq!(s.node, "b", "d{i}");
    }
    assert_eq!(byuser(&mut cb, "u").len(), 200);
}

/// Cluster-mode clients see the sidecar as a one-node cluster serving every
/// slot at its own address, so they keep talking to it: the redis crate's
/// cluster client and redis-py's RedisCluster, standalone and in front of a
/// 3-master cluster (the sidecar routes each key to its master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_clients_talk_to_the_sidecar_as_a_one_node_cluster() {
    let standalone = Sidecar::start(&[]);
    let mut c = standalone.client();
    let slots = array(&call(&mut c, &["CLUSTER", "SLOTS"]));
    assert_eq!(slots.len(), 1);
    let range = array(&slots[0]);
    assert_eq!((int(&range[0]), int(&range[1])), (0, 16383));
    let node = array(&range[2]);
    assert_eq!(int(&node[1]), i64::from(standalone.addr.port()));
    let id = text(&call(&mut c, &["CLUSTER", "MYID"]));
    assert_eq!(id.len(), 40);
    assert!(text(&call(&mut c, &["CLUSTER", "NODES"])).starts_with(&format!("{id} ")));
    assert!(text(&call(&mut c, &["CLUSTER", "INFO"])).contains("cluster_state:ok"));
    assert_eq!(int(&call(&mut c, &["CLUSTER", "KEYSLOT", "foo"])), 12182);
    run_python_check("redis_py_cluster.py", &standalone, &[]);

    let cluster = Cluster::start();
    let sidecar = sidecar(&cluster, "front");
    let client = redis::cluster::ClusterClient::new(vec![sidecar.url()]).unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut con)
            .await
            .unwrap();
    }
    for i in 0..50 {
        let value: i64 = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(value, i);
    }
    let created: String = redis::cmd("SESSION.CREATE")
        .arg("ID")
        .arg("through-cluster-client")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(created, "through-cluster-client");
    // The keys are spread over the upstream's masters all the same.
    let holders: std::collections::BTreeSet<_> = (0..50)
        .map(|i| cluster.holder(&format!("k{i}")).addr)
        .collect();
    assert_eq!(holders.len(), 3);
    run_python_check("redis_py_cluster.py", &sidecar, &["passthrough"]);
    // redis-cli in cluster mode stays on the sidecar too.
    for i in 0..10 {
        let key = format!("cli{i}");
        assert_eq!(sidecar.redis_cli(&["-c", "SET", &key, "v"]).trim(), "OK");
        assert_eq!(sidecar.redis_cli(&["-c", "GET", &key]).trim(), "v");
    }
    let id = sidecar.redis_cli(&["-c", "SESSION.CREATE", "ID", "through-redis-cli"]);
    assert_eq!(id.trim(), "through-redis-cli");
}

/// Through a sidecar on a cluster, a transaction mixes SESSION.* commands
/// with ordinary ones whose keys share a slot: the upstream's MULTI goes to
/// that slot's master, EXEC replies in order.
#[test]
fn transactions_mix_session_and_ordinary_commands_on_a_cluster() {
    let cluster = Cluster::start();
    let sidecar = sidecar(&cluster, "tx");
    let mut c = sidecar.client();
    let replies: Vec<Value> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("{t}a")
        .arg(1)
        .cmd("SESSION.CREATE")
        .arg("ID")
        .arg("on-cluster")
        .arg("USER")
        .arg("u")
        .cmd("INCR")
        .arg("{t}a")
        .cmd("SESSION.ATTR.INCRBY")
        .arg("on-cluster")
        .arg("n")
        .arg(3)
        .cmd("MGET")
        .arg("{t}a")
        .arg("{t}b")
        .query(&mut c)
        .unwrap();
    assert_eq!(text(&replies[0]), "OK");
    assert_eq!(replies[1], bulk("on-cluster"));
    assert_eq!(replies[2], Value::Int(2));
    assert_eq!(replies[3], Value::Int(3));
    assert_eq!(array(&replies[4]), [bulk("2"), Value::Nil]);
    let mut holder = cluster.holder("{t}a").client();
    assert_eq!(call(&mut holder, &["GET", "{t}a"]), bulk("2"));
    assert_eq!(
        call(&mut c, &["SESSION.EXISTS", "on-cluster"]),
        Value::Int(1)
    );
}

/// One key per master of the 3-master cluster (its slots are 0-5460,
/// 5461-10922 and 10923-16383), named `<prefix><n>`.
fn key_per_master(prefix: &str) -> Vec<String> {
    let master = |key: &str| match session_sidecar::protocol::slot::slot_of(key.as_bytes()) {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    };
    let mut keys: Vec<Option<String>> = vec![None; 3];
    for n in 0.. {
        let key = format!("{prefix}{n}");
        keys[master(&key)].get_or_insert(key);
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    keys.into_iter().flatten().collect()
}

/// CLIENT TRACKING of ordinary keys in front of a cluster: one RESP3
/// connection to the sidecar reads keys on all three masters (pipelined,
/// the replies in order), and a write to any of them reaches it as an
/// invalidation; BCAST hears every master; OFF ends it everywhere.
#[test]
fn client_tracking_covers_keys_on_every_master() {
    let cluster = Cluster::start();
    let sidecar = sidecar(&cluster, "tracking");
    let keys = key_per_master("tracked:");
    let mut writer = sidecar.client();
    for (i, key) in keys.iter().enumerate() {
        call(&mut writer, &["SET", key, &i.to_string()]);
    }
    let mut tracked = sidecar.raw();
    assert!(matches!(tracked.cmd(&["HELLO", "3"]), Resp::Map(_)));
    assert_eq!(
        tracked.cmd(&["CLIENT", "TRACKING", "ON"]),
        Resp::Simple("OK".into())
    );
    for key in &keys {
        tracked.send_cmd(&["GET", key]);
    }
    tracked.send_cmd(&["PING"]);
    for i in 0..keys.len() {
        assert_eq!(tracked.read_reply(), Resp::bulk(i.to_string()));
    }
    assert_eq!(tracked.read_reply(), Resp::Simple("PONG".into()));
    for key in &keys {
        call(&mut writer, &["SET", key, "changed"]);
        assert_eq!(
            tracked.read_reply(),
            Resp::Push(vec![Resp::bulk("invalidate"), Resp::bulks(&[key])]),
            "the write of {key} invalidates it"
        );
    }
    // Read again, then tracking off: later writes send nothing.
    for key in &keys {
        assert_eq!(tracked.cmd(&["GET", key]), Resp::bulk("changed"));
    }
    assert_eq!(
        tracked.cmd(&["CLIENT", "TRACKING", "OFF"]),
        Resp::Simple("OK".into())
    );
    for key in &keys {
        call(&mut writer, &["SET", key, "after"]);
    }
    assert_eq!(tracked.cmd(&["GET", &keys[0]]), Resp::bulk("after"));

    // BCAST: a prefix's writes on every master.
    let mut broadcast = sidecar.raw();
    assert!(matches!(broadcast.cmd(&["HELLO", "3"]), Resp::Map(_)));
    assert_eq!(
        broadcast.cmd(&["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "b:"]),
        Resp::Simple("OK".into())
    );
    // The trackers are opened with the command: PING makes sure they are.
    assert_eq!(broadcast.cmd(&["PING"]), Resp::Simple("PONG".into()));
    for key in key_per_master("b:") {
        call(&mut writer, &["SET", &key, "1"]);
        assert_eq!(
            broadcast.read_reply(),
            Resp::Push(vec![Resp::bulk("invalidate"), Resp::bulks(&[&key])]),
            "BCAST hears {key}'s master"
        );
    }
}
