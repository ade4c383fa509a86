//! The example gateway (`examples/gateway/`) shutting down, end to end, with
//! real processes: two gateways, each beside its own sidecar (on one
//! redis-server, or standalone), 1,000 clients of the load client
//! (`examples/gateway_load.rs`) spread over both; gateway A gets SIGTERM,
//! drains its sidecar and closes its connections with 1012; its clients
//! resume on gateway B.
//!
//! Checked: every client is back on B within [`RECONNECT_BOUND`] of the
//! SIGTERM; every session kept its id, its attributes and its version
//! history (each acknowledged write applied once, and the version moved
//! exactly by the resume's steps); MAXPERUSER still holds; and, with an
//! upstream, B's sidecar answered the resumes from the copies the drain
//! handed it (its cache misses during the storm), where a gateway that
//! skips the drain has every resume read through.
//!
//! The gateway and the load client are examples, which cargo builds with
//! the tests (`cargo test` and `cargo nextest run` build every example,
//! `scripts/test.sh` builds them explicitly) but does not name to a test as
//! it names binaries (`CARGO_BIN_EXE_*`): they are found beside the sidecar
//! binary, under `examples/`, and a stale build is refused
//! ([`example_binary`]).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde::Deserialize;

const CLIENTS: usize = 1000;
/// Users hold this many sessions each, the gateways' MAXPERUSER: a resume
/// that created a session instead of binding the old one would evict one.
const SESSIONS_PER_USER: usize = 4;
/// Time between a client's messages (set, get, heartbeat in turn).
const MESSAGE_INTERVAL_MS: &str = "1000";
/// Every client of gateway A is back on gateway B within this time of
/// A's SIGTERM. Measured on the 2-core development machine with the whole
/// suite running beside it (debug builds): see docs/draining.md.
const RECONNECT_BOUND: Duration = Duration::from_secs(20);
/// Bound on each step the test waits for (start-up, a storm, the exits).
const STEP_DEADLINE: Duration = Duration::from_secs(90);

const PASSWORD: &str = "sidecar-password";
const PEER_SECRET: &str = "peer-secret";
const TOKEN_SECRET: &str = "token-secret";

/// The path of example `name`'s binary, built by cargo beside the test
/// binaries' sidecar; panics when it is missing or older than one of its
/// sources (paths under `examples/`).
fn example_binary(name: &str, sources: &[&str]) -> PathBuf {
    let sidecar = Path::new(env!("CARGO_BIN_EXE_session-sidecar"));
    let binary = sidecar
        .parent()
        .expect("the sidecar binary is in a directory")
        .join("examples")
        .join(name);
    let rebuild = "build the examples first: cargo build --examples (scripts/test.sh does)";
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("no example binary {} ({e}): {rebuild}", binary.display()));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for source in sources {
        let modified = std::fs::metadata(examples.join(source))
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("examples/{source}: {e}"));
        assert!(
            modified <= built,
            "{} is older than examples/{source}: {rebuild}",
            binary.display()
        );
    }
    binary
}

/// The gateway's binary and sources.
const GATEWAY: (&str, &[&str]) = (
    "gateway",
    &[
        "gateway/main.rs",
        "gateway/connection.rs",
        "gateway/sidecar.rs",
        "gateway/protocol.rs",
    ],
);
/// The load client's binary and sources.
const LOAD_CLIENT: (&str, &[&str]) = ("gateway_load", &["gateway_load.rs", "gateway/protocol.rs"]);

/// A running example binary, its output lines kept. Dropping it kills it.
struct Example {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// The stdout and stderr readers, joined once the process has exited.
    readers: Vec<thread::JoinHandle<()>>,
}

impl Example {
    fn start((name, sources): (&'static str, &[&str]), args: &[String]) -> Example {
        let mut child = Command::new(example_binary(name, sources))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let lines = lines.clone();
            readers.push(thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    lines.lock().unwrap().push(line);
                }
            }));
        }
        Example {
            name,
            child,
            lines,
            readers,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The last lines, for failure messages.
    fn tail(&self) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn sigterm(&self) {
        let status = Command::new("/bin/kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run /bin/kill");
        assert!(status.success(), "kill -TERM {}", self.name);
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The readers may lag the exit: wait for end of file so the
                // last lines are in `lines()`.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            assert!(
                Instant::now() < end,
                "{} did not exit within {within:?}:\n{}",
                self.name,
                self.tail()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway beside `sidecar`, listening on a free port.
fn start_gateway(sidecar: &Sidecar, extra: &[String]) -> (Example, SocketAddr) {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        &sidecar.url(),
        "--token-secret",
        TOKEN_SECRET,
        "--max-sessions-per-user",
        &SESSIONS_PER_USER.to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend_from_slice(extra);
    let gateway = Example::start(GATEWAY, &args);
    let mut addr = None;
    let listening = wait_until(STEP_DEADLINE, || {
        addr = gateway
            .lines()
            .iter()
            .find(|line| line.contains("gateway listening"))
            .and_then(|line| addr_field(line));
        addr.is_some()
    });
    assert!(listening, "the gateway did not start:\n{}", gateway.tail());
    (gateway, addr.expect("found"))
}

/// The load client's status line (see `Stats` in examples/gateway_load.rs).
#[derive(Debug, Default, Clone, Deserialize)]
struct Status {
    connected: u64,
    writing: u64,
    errors: u64,
    resumed: u64,
    acked_after_resume: u64,
    lost: u64,
}

#[derive(Debug, Deserialize)]
struct Summary {
    sessions_created: u64,
    errors: u64,
    resumes: usize,
    resumed_same_session: usize,
    reconnect_p50_ms: u64,
    reconnect_p99_ms: u64,
    reconnect_max_ms: u64,
    last_back_at_ms: Option<u64>,
    refusals: u64,
    retries: u64,
}

/// One client's record, from the load client's report.
#[derive(Debug, Deserialize)]
struct ClientRecord {
    client: usize,
    user: String,
    session: Option<String>,
    version: u64,
    attrs: BTreeMap<String, String>,
    gateway: String,
    acks: u64,
    sessions_created: u64,
    resumes: Vec<Resume>,
    errors: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Resume {
    told: String,
    to: String,
    same_session: bool,
    attrs_intact: bool,
    version_before: u64,
    version_after: u64,
}

/// The load client: its status lines, and at the end its summary and
/// report.
struct LoadClient {
    process: Example,
    report: PathBuf,
    _dir: TempDir,
}

impl LoadClient {
    fn start(gateways: &[SocketAddr]) -> LoadClient {
        let dir = TempDir::new("gateway-load");
        let report = dir.0.join("report.json");
        let mut args: Vec<String> = gateways
            .iter()
            .flat_map(|addr| ["--url".to_string(), format!("ws://{addr}/")])
            .collect();
        args.extend(
            [
                "--token-secret",
                TOKEN_SECRET,
                "--clients",
                &CLIENTS.to_string(),
                "--clients-per-user",
                &SESSIONS_PER_USER.to_string(),
                "--interval-ms",
                MESSAGE_INTERVAL_MS,
                "--status-ms",
                "50",
                "--report",
                report.to_str().expect("utf-8 path"),
            ]
            .map(String::from),
        );
        LoadClient {
            process: Example::start(LOAD_CLIENT, &args),
            report,
            _dir: dir,
        }
    }

    fn status(&self) -> Status {
        self.process
            .lines()
            .iter()
            .rev()
            .find_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                serde_json::from_value(value.get("status")?.clone()).ok()
            })
            .unwrap_or_default()
    }

    /// Waits until the status satisfies `cond`; panics after the step
    /// deadline, naming `what`.
    fn wait_for(&self, what: &str, cond: impl Fn(&Status) -> bool) -> Status {
        let mut status = Status::default();
        let reached = wait_until(STEP_DEADLINE, || {
            status = self.status();
            status.errors > 0 || status.lost > 0 || cond(&status)
        });
        assert!(
            reached && status.errors == 0 && status.lost == 0,
            "waiting for {what}: {status:?}\n{}",
            self.process.tail()
        );
        status
    }

    /// SIGTERM, then the summary and every client's record.
    fn stop(mut self) -> (Summary, Vec<ClientRecord>) {
        self.process.sigterm();
        let status = self.process.wait_exit(STEP_DEADLINE);
        assert!(
            status.success(),
            "load client: {status}\n{}",
            self.process.tail()
        );
        let summary = self
            .process
            .lines()
            .iter()
            .find_map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).ok()?;
                serde_json::from_value(value.get("summary")?.clone()).ok()
            })
            .expect("the load client printed its summary");
        let report = std::fs::read(&self.report).expect("the load client wrote its report");
        let records = serde_json::from_slice(&report).expect("the report is JSON");
        (summary, records)
    }
}

/// The strings of a `SESSION.NODES` reply (node ids, addresses, ...).
fn nodes_known(sidecar: &Sidecar) -> Vec<String> {
    let reply = call(&mut sidecar.client(), &["SESSION.NODES"]);
    array(&reply)
        .iter()
        .flat_map(array)
        .filter(|v| matches!(v, redis::Value::BulkString(_)))
        .map(|v| text(&v))
        .collect()
}

/// `field` of `INFO upstream`, as a number.
fn upstream_counter(sidecar: &Sidecar, field: &str) -> u64 {
    sidecar.info("upstream")[field]
        .parse()
        .expect("a counter is a number")
}

/// How a scenario is set up.
struct Setup {
    /// Write-through on one redis-server, or standalone sidecars that know
    /// each other through `--peers`.
    upstream: bool,
    /// Whether gateway A sends SESSION.DRAIN (`--drain-timeout-ms 0` skips
    /// it).
    drain: bool,
}

/// What a scenario measured.
struct Figures {
    /// A's SIGTERM to the last client's welcome on B.
    all_back: Duration,
    summary: Summary,
    /// B's sidecar's cache misses and hits from A's SIGTERM until every
    /// client was back (write-through).
    storm_misses: Option<u64>,
    storm_hits: Option<u64>,
}

/// Runs the scenario and checks everything but the upstream reads, which
/// depend on the drain; returns the figures.
fn run(setup: Setup) -> Figures {
    let redis = setup.upstream.then(|| RedisServer::start(&[]));
    let secrets = ["--peer-secret", PEER_SECRET, "--requirepass", PASSWORD];
    // Patient with an upstream slowed down by a loaded machine (yet within
    // the gateway's 5 s wait for the sidecar): a refused creation is tried
    // again, one that timed out may have left a session behind.
    let write_through = [&secrets[..], &["--upstream-timeout-ms", "2000"]].concat();
    let sidecar_b = match &redis {
        Some(redis) => Sidecar::write_through(&redis.url(), "sidecar-b", &write_through),
        None => Sidecar::start(&[&["--node-id", "sidecar-b"][..], &secrets].concat()),
    };
    let mut sidecar_a = match &redis {
        Some(redis) => Sidecar::write_through(&redis.url(), "sidecar-a", &write_through),
        None => {
            let peer = sidecar_b.addr.to_string();
            let args = [&["--node-id", "sidecar-a", "--peers", &peer][..], &secrets].concat();
            Sidecar::start(&args)
        }
    };
    // The drain hands the sessions to the peers A knows when it starts.
    let knows_b = wait_until(STEP_DEADLINE, || {
        nodes_known(&sidecar_a).iter().any(|n| n == "sidecar-b")
    });
    assert!(knows_b, "sidecar A never saw sidecar B among its peers");

    let (_gateway_b, addr_b) = start_gateway(&sidecar_b, &[]);
    let drain_timeout = if setup.drain { "10000" } else { "0" };
    let reconnect_url = format!("ws://{addr_b}/?node={{node}}");
    let a_args = [
        "--drain-timeout-ms",
        drain_timeout,
        "--reconnect-url",
        &reconnect_url,
    ];
    let (mut gateway_a, addr_a) = start_gateway(&sidecar_a, &a_args.map(String::from));

    // Client i starts on gateway A when i is even: two of each user's four
    // sessions are A's.
    let load = LoadClient::start(&[addr_a, addr_b]);
    let displaced = (CLIENTS / 2) as u64;
    load.wait_for("every client connected and writing", |s| {
        s.connected == CLIENTS as u64 && s.writing == CLIENTS as u64
    });

    let counters = |sidecar: &Sidecar| {
        setup.upstream.then(|| {
            let misses = upstream_counter(sidecar, "cache_misses");
            (misses, upstream_counter(sidecar, "cache_hits"))
        })
    };
    let before = counters(&sidecar_b);
    let sigterm_at = now_ms();
    gateway_a.sigterm();
    load.wait_for("every client of gateway A back on gateway B", |s| {
        s.resumed == displaced && s.connected == CLIENTS as u64
    });
    let after = counters(&sidecar_b);

    let status = gateway_a.wait_exit(STEP_DEADLINE);
    assert!(
        status.success(),
        "gateway A: {status}\n{}",
        gateway_a.tail()
    );
    if setup.drain {
        let drained = format!("moved={displaced}");
        assert!(
            gateway_a
                .lines()
                .iter()
                .any(|l| l.contains("drained") && l.contains(&drained)),
            "gateway A's drain did not move its {displaced} sessions:\n{}",
            gateway_a.tail()
        );
    }
    // As the kubelet does with a native sidecar: its SIGTERM comes once the
    // gateway has exited, and its own drain finds nothing left.
    sidecar_a.sigterm();
    assert!(sidecar_a.wait_exit(STEP_DEADLINE).success());

    load.wait_for("every resumed client writing again", |s| {
        s.acked_after_resume == displaced
    });
    let (summary, records) = load.stop();

    check_records(&records, &setup, addr_b);
    check_sidecar_state(&sidecar_b, &records);
    assert_eq!(summary.errors, 0);
    assert_eq!(
        summary.sessions_created, CLIENTS as u64,
        "a session was created twice"
    );
    assert_eq!(summary.resumes, CLIENTS / 2);
    assert_eq!(summary.resumed_same_session, CLIENTS / 2);

    let last_back = summary.last_back_at_ms.expect("clients resumed");
    let all_back = Duration::from_millis(last_back.saturating_sub(sigterm_at as u64));
    let (storm_misses, storm_hits) = match (before, after) {
        (Some((m0, h0)), Some((m1, h1))) => (Some(m1 - m0), Some(h1 - h0)),
        _ => (None, None),
    };
    eprintln!(
        "upstream={} drain={}: {displaced} clients back on B {all_back:?} after A's SIGTERM; \
         close to welcome p50 {} ms, p99 {} ms, max {} ms; B's sidecar during the storm: \
         {storm_misses:?} cache misses, {storm_hits:?} hits; {} messages refused and sent \
         again, {} connections tried again",
        setup.upstream,
        setup.drain,
        summary.reconnect_p50_ms,
        summary.reconnect_p99_ms,
        summary.reconnect_max_ms,
        summary.refusals,
        summary.retries,
    );
    // A loaded machine may make a connection fail and be tried again, as
    // a real client would; failing as a rule is not that.
    assert!(
        summary.retries < CLIENTS as u64 / 10,
        "{} retries",
        summary.retries
    );
    assert!(
        all_back <= RECONNECT_BOUND,
        "the last client was back {all_back:?} after the SIGTERM (bound {RECONNECT_BOUND:?})"
    );
    Figures {
        all_back,
        summary,
        storm_misses,
        storm_hits,
    }
}

/// Each client's own account: one session, created once; gateway A's
/// clients resumed it once on B, with its attributes, their version moved
/// by exactly the resume's steps; every acknowledged write counted once.
fn check_records(records: &[ClientRecord], setup: &Setup, addr_b: SocketAddr) {
    assert_eq!(records.len(), CLIENTS);
    // UNBIND on A, the hand-over to B's sidecar (drain only), BIND on B.
    let resume_steps = if setup.drain { 3 } else { 2 };
    let told = if setup.drain {
        format!("ws://{addr_b}/?node=sidecar-b")
    } else {
        // A's sidecar still holds the sessions: no better place to name.
        String::new()
    };
    for record in records {
        let who = format!("client {} ({})", record.client, record.user);
        assert!(record.errors.is_empty(), "{who}: {:?}", record.errors);
        assert_eq!(record.sessions_created, 1, "{who}");
        assert!(
            record.gateway.contains(&addr_b.to_string()),
            "{who} ended on {}",
            record.gateway
        );
        // Every set wrote `count` = the sets acknowledged so far: the last
        // one says how many were applied.
        assert_eq!(
            record.attrs.get("count"),
            Some(&record.acks.to_string()),
            "{who}"
        );
        let from_a = record.client % 2 == 0;
        assert_eq!(
            record.resumes.len(),
            usize::from(from_a),
            "{who}: {:?}",
            record.resumes
        );
        for resume in &record.resumes {
            assert!(
                resume.same_session && resume.attrs_intact,
                "{who}: {resume:?}"
            );
            assert_eq!(resume.told, told, "{who}");
            assert!(resume.to.contains(&addr_b.to_string()), "{who}: {resume:?}");
            assert_eq!(
                resume.version_after,
                resume.version_before + resume_steps,
                "{who}: the version moved by other than the resume's steps"
            );
        }
    }
}

/// The sessions as B's sidecar has them once every client closed: each
/// client's, with what it wrote, its version one past the client's last
/// (the gateway's UNBIND at the close), no other; each user's four.
fn check_sidecar_state(sidecar: &Sidecar, records: &[ClientRecord]) {
    let mut con = sidecar.client();
    let mut pipe = redis::pipe();
    for record in records {
        pipe.cmd("SESSION.GET")
            .arg(record.session.as_deref())
            .arg("JSON");
    }
    let sessions: Vec<Option<String>> = pipe.query(&mut con).expect("SESSION.GET of every session");
    for (record, session) in records.iter().zip(sessions) {
        let who = format!("client {}", record.client);
        let session = session.unwrap_or_else(|| panic!("{who}: the session is gone"));
        let session: serde_json::Value = serde_json::from_str(&session).expect("JSON");
        assert_eq!(session["user"], record.user.as_str(), "{who}");
        assert_eq!(session["status"], "disconnected", "{who}");
        assert_eq!(session["node"], "sidecar-b", "{who}");
        assert_eq!(session["version"], record.version + 1, "{who}");
        let attrs: BTreeMap<String, String> =
            serde_json::from_value(session["attrs"].clone()).expect("string attributes");
        assert_eq!(attrs, record.attrs, "{who}");
    }
    assert_eq!(int(&call(&mut con, &["SESSION.COUNT"])), CLIENTS as i64);

    let mut users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for record in records {
        let id = record.session.as_deref().expect("a session");
        users.entry(&record.user).or_default().insert(id);
    }
    for (user, ids) in users {
        let held: BTreeSet<String> = byuser(&mut con, user).into_iter().collect();
        let expected: BTreeSet<String> = ids.iter().map(|id| id.to_string()).collect();
        assert_eq!(held, expected, "{user}'s sessions");
        assert_eq!(held.len(), SESSIONS_PER_USER);
    }
}

/// With an upstream: gateway A drains its sidecar before closing, so B's
/// sidecar holds every displaced session hot when its client comes back.
#[test]
fn write_through_drain_resumes_every_client_from_hot_copies() {
    let figures = run(Setup {
        upstream: true,
        drain: true,
    });
    let misses = figures.storm_misses.expect("write-through");
    let resumes = figures.summary.resumes as u64;
    assert!(
        misses * 20 <= resumes,
        "{misses} upstream reads for {resumes} resumes ({:?} back)",
        figures.all_back
    );
    assert!(figures.storm_hits.expect("write-through") >= resumes);
}

/// The comparison: gateway A skips the drain, its sessions stay with A's
/// sidecar, and B's sidecar reads each resumed session through the
/// upstream.
#[test]
fn write_through_without_the_drain_every_resume_reads_through() {
    let figures = run(Setup {
        upstream: true,
        drain: false,
    });
    let misses = figures.storm_misses.expect("write-through");
    assert!(
        misses >= figures.summary.resumes as u64,
        "{misses} upstream reads"
    );
}

/// Standalone, the sessions exist only in the sidecars: the drain alone
/// carries gateway A's sessions to B's sidecar, and nothing is lost.
#[test]
fn standalone_drain_alone_carries_every_session() {
    run(Setup {
        upstream: false,
        drain: true,
    });
}
