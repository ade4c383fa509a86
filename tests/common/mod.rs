//! Fixtures shared by the integration tests: the real `session-sidecar`
//! binary started on ephemeral loopback ports, real clients for it (the
//! `redis` crate over RESP2 and RESP3, `redis-cli`, raw TCP), a byte-exact
//! RESP reader for wire-level assertions, and a `redis-server` fixture.
//!
//! Every test binary compiles this module but uses only part of it, hence
//! the `dead_code` allowance below.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{ConnectionLike, ToRedisArgs, Value};

pub mod cluster;

/// How long a sidecar or redis-server may take to become ready.
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);
/// Default bound on any single reply a test waits for.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

const REDIS_CLI: &str = "/usr/bin/redis-cli";
const REDIS_SERVER: &str = "/usr/bin/redis-server";

// ---------------------------------------------------------------------------
// Time and polling
// ---------------------------------------------------------------------------

/// Polls `cond` every few milliseconds until it holds or `deadline` has
/// passed; returns whether it held. Use instead of sleeping.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Async twin of [`wait_until`].
pub async fn wait_until_async<F, Fut>(deadline: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wall clock in milliseconds since the Unix epoch, as the wire uses.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after epoch")
        .as_millis() as i64
}

// ---------------------------------------------------------------------------
// The sidecar process
// ---------------------------------------------------------------------------

/// A running `session-sidecar` child process on ephemeral loopback ports.
/// Dropping it kills the process.
pub struct Sidecar {
    child: Child,
    /// The RESP listener's real bound address, read from the ready log line.
    pub addr: SocketAddr,
    /// The HTTP metrics listener's real bound address.
    pub metrics_addr: SocketAddr,
    /// Process id of the child.
    pub pid: u32,
    logs: Arc<Mutex<Vec<String>>>,
    password: Option<String>,
}

/// What the stdout reader learned from the startup log lines.
enum StartupEvent {
    Ready(SocketAddr),
    Metrics(SocketAddr),
}

impl Sidecar {
    /// Starts the binary with `args`, adding `--listen 127.0.0.1:0` and
    /// `--metrics-listen 127.0.0.1:0` unless the args set them.
    pub fn start(args: &[&str]) -> Sidecar {
        Sidecar::start_with_env(args, &[])
    }

    /// Starts the binary with `args` and extra environment variables. Any
    /// `SESSION_SIDECAR_*` variable inherited from the test environment is
    /// removed first so tests are hermetic. Listen flags are defaulted only
    /// when neither the args nor the env set them.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Sidecar {
        let sets = |flag: &str, var: &str| {
            args.iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
                || env.iter().any(|(k, _)| *k == var)
        };
        let mut full_args: Vec<String> = Vec::new();
        if !sets("--listen", "SESSION_SIDECAR_LISTEN") {
            full_args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        if !sets("--metrics-listen", "SESSION_SIDECAR_METRICS_LISTEN") {
            full_args.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        }
        full_args.extend(args.iter().map(|a| a.to_string()));

        let mut command = Command::new(env!("CARGO_BIN_EXE_session-sidecar"));
        command
            .args(&full_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars() {
            if key.starts_with("SESSION_SIDECAR_") {
                command.env_remove(key);
            }
        }
        command.env_remove("RUST_LOG");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn session-sidecar");
        let pid = child.id();

        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        spawn_log_reader(stdout, logs.clone(), Some(tx));
        spawn_log_reader(stderr, logs.clone(), None);

        let password = args
            .iter()
            .position(|a| *a == "--requirepass")
            .and_then(|i| args.get(i + 1))
            .map(|s| s.to_string())
            .or_else(|| {
                env.iter()
                    .find(|(k, _)| *k == "SESSION_SIDECAR_REQUIREPASS")
                    .map(|(_, v)| v.to_string())
            });

        let mut sidecar = Sidecar {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            metrics_addr: "0.0.0.0:0".parse().unwrap(),
            pid,
            logs,
            password,
        };
        let (mut ready, mut metrics) = (None, None);
        let end = Instant::now() + STARTUP_DEADLINE;
        while ready.is_none() || metrics.is_none() {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(StartupEvent::Ready(addr)) => ready = Some(addr),
                Ok(StartupEvent::Metrics(addr)) => metrics = Some(addr),
                Err(_) => {
                    if let Ok(Some(status)) = sidecar.child.try_wait() {
                        panic!(
                            "session-sidecar exited during startup with {status}; args {full_args:?}; logs:\n{}",
                            sidecar.logs().join("\n")
                        );
                    }
                    if Instant::now() >= end {
                        panic!(
                            "session-sidecar not ready within {STARTUP_DEADLINE:?} (ready={ready:?}, metrics={metrics:?}); args {full_args:?}; logs:\n{}",
                            sidecar.logs().join("\n")
                        );
                    }
                }
            }
        }
        sidecar.addr = ready.unwrap();
        sidecar.metrics_addr = metrics.unwrap();
        sidecar
    }

    /// A write-through sidecar on `upstream` (a redis:// or
    /// redis+cluster:// URL) named `node`, reporting to the registry every
    /// 100 ms, with `extra` flags.
    pub fn write_through(upstream: &str, node: &str, extra: &[&str]) -> Sidecar {
        let mut args = vec![
            "--upstream",
            upstream,
            "--node-id",
            node,
            "--registry-interval-ms",
            "100",
        ];
        args.extend_from_slice(extra);
        let sidecar = Sidecar::start(&args);
        sidecar.wait_upstream_up();
        sidecar
    }

    /// Waits until the upstream connection is up: before, session commands
    /// get TRYAGAIN (the sidecar answers PING at once).
    #[track_caller]
    pub fn wait_upstream_up(&self) {
        let up = wait_until(Duration::from_secs(15), || {
            self.info("upstream")
                .get("upstream_state")
                .map(String::as_str)
                == Some("up")
        });
        assert!(
            up,
            "never reached the upstream; logs:\n{}",
            self.logs().join("\n")
        );
    }

    /// Every stdout and stderr line the process has written so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// `redis://` URL of the RESP listener, with the password if one was set.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@{}/", self.addr),
            None => format!("redis://{}/", self.addr),
        }
    }

    /// `redis://` URL asking for RESP3.
    pub fn url_resp3(&self) -> String {
        format!("{}?protocol=resp3", self.url())
    }

    /// A synchronous RESP2 client (authenticated when `--requirepass` was given).
    pub fn client(&self) -> redis::Connection {
        connect_sync(&self.url())
    }

    /// A synchronous RESP3 client (it sends `HELLO 3` on connect).
    pub fn client_resp3(&self) -> redis::Connection {
        connect_sync(&self.url_resp3())
    }

    /// An async multiplexed RESP2 client.
    pub async fn async_client(&self) -> redis::aio::MultiplexedConnection {
        connect_async(&self.url(), None).await
    }

    /// An async multiplexed RESP3 client.
    pub async fn async_client_resp3(&self) -> redis::aio::MultiplexedConnection {
        connect_async(&self.url_resp3(), None).await
    }

    /// An async RESP3 client whose push frames (pub/sub messages) go to the
    /// returned channel.
    pub async fn async_client_resp3_with_push(
        &self,
    ) -> (
        redis::aio::MultiplexedConnection,
        tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (connect_async(&self.url_resp3(), Some(tx)).await, rx)
    }

    /// A raw TCP connection for byte-level tests (no handshake sent).
    pub fn raw(&self) -> RawConn {
        RawConn::connect(self.addr)
    }

    /// Runs `redis-cli -h <ip> -p <port> args...` and returns its stdout.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        self.redis_cli_with_stdin(args, None)
    }

    /// Runs `redis-cli` with `stdin` piped in (for `-x` or scripted input).
    pub fn redis_cli_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> String {
        run_redis_cli(self.addr, args, stdin)
    }

    /// Sends SIGTERM through `/bin/kill`.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT through `/bin/kill`.
    pub fn sigint(&self) {
        self.signal("INT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("/bin/kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .expect("run /bin/kill");
        assert!(status.success(), "/bin/kill -{name} {} failed", self.pid);
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= end {
                panic!(
                    "session-sidecar (pid {}) did not exit within {timeout:?}; logs:\n{}",
                    self.pid,
                    self.logs().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Asserts the process still serves: a fresh connection answers PING.
    pub fn assert_serving(&self) {
        let mut con = self.client();
        let pong = call(&mut con, &["PING"]);
        assert_eq!(text(&pong), "PONG", "sidecar no longer serves PING");
    }

    /// GET `path` on the metrics listener: (status code, headers, body).
    pub fn http_get(&self, path: &str) -> (u16, String, String) {
        http_get(self.metrics_addr, path)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `stream` line by line into `logs` for the life of the process,
/// reporting the startup lines through `startup` when given.
fn spawn_log_reader(
    stream: impl Read + Send + 'static,
    logs: Arc<Mutex<Vec<String>>>,
    startup: Option<mpsc::Sender<StartupEvent>>,
) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            // Record the line before announcing it, so a test that has seen
            // the startup event also finds the line in `logs()`.
            let event = match (&startup, addr_field(&text)) {
                (Some(_), Some(addr)) if text.contains("ready to accept connections") => {
                    Some(StartupEvent::Ready(addr))
                }
                (Some(_), Some(addr)) if text.contains("metrics listening") => {
                    Some(StartupEvent::Metrics(addr))
                }
                _ => None,
            };
            logs.lock().unwrap().push(text);
            if let (Some(tx), Some(event)) = (&startup, event) {
                let _ = tx.send(event);
            }
        }
    });
}

/// Extracts the `addr` field of a log line, in text form (`addr=1.2.3.4:5`,
/// possibly quoted) or JSON form (`"addr":"1.2.3.4:5"`).
pub fn addr_field(line: &str) -> Option<SocketAddr> {
    let parse = |rest: &str| -> Option<SocketAddr> {
        let rest = rest.trim_start_matches('"');
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '}')
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    for (i, _) in line.match_indices("addr=") {
        let preceded_by_word = line[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if let Some(addr) = parse(&line[i + "addr=".len()..]).filter(|_| !preceded_by_word) {
            return Some(addr);
        }
    }
    for (i, _) in line.match_indices("\"addr\":") {
        if let Some(addr) = parse(line[i + "\"addr\":".len()..].trim_start()) {
            return Some(addr);
        }
    }
    None
}

// ---------------------------------------------------------------------------
// redis crate clients and reply helpers
// ---------------------------------------------------------------------------

fn connect_sync(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("valid redis url");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    con.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    con.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
    con
}

async fn connect_async(
    url: &str,
    push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("valid redis url");
    let mut config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(REPLY_TIMEOUT));
    if let Some(tx) = push {
        config = config.set_push_sender(tx);
    }
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn build_cmd<A: ToRedisArgs>(args: &[A]) -> redis::Cmd {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(a);
    }
    cmd
}

/// Runs `tests/python/<script> <sidecar's port> <args...>` (redis-py checks;
/// scripts/test.sh installs redis-py) and fails with its output unless it
/// succeeds.
#[track_caller]
pub fn run_python_check(script: &str, sidecar: &Sidecar, args: &[&str]) {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("python3")
        .arg(&path)
        .arg(sidecar.addr.port().to_string())
        .args(args)
        .output()
        .expect("python3 runs (scripts/test.sh installs redis-py)");
    assert!(
        output.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One optimistic increment of the integer attribute `name` of session `id`:
/// reads the session, then `SESSION.UPDATE id IFVERSION <its version> ATTR
/// name n+1`. True when acknowledged (at the next version), false when
/// refused with `CONFLICT version is N`.
#[track_caller]
pub fn cas_increment(con: &mut redis::Connection, id: &str, name: &str) -> bool {
    let s = get_session(con, id, false).expect("the session exists");
    let n: i64 = String::from_utf8(s.attrs[name.as_bytes()].clone())
        .unwrap()
        .parse()
        .unwrap();
    let version = s.version.to_string();
    let next = (n + 1).to_string();
    let reply = call(
        con,
        &[
            "SESSION.UPDATE",
            id,
            "IFVERSION",
            &version,
            "ATTR",
            name,
            &next,
        ],
    );
    match reply {
        Value::Int(new) => {
            assert_eq!(new, s.version + 1);
            true
        }
        other => {
            let e = err_text(&other);
            assert!(e.starts_with("CONFLICT version is "), "{e}");
            false
        }
    }
}

/// Sends one command and returns the raw reply, server errors included as
/// `Value::ServerError`. Panics on I/O errors.
pub fn call<A: ToRedisArgs>(con: &mut redis::Connection, args: &[A]) -> Value {
    let cmd = build_cmd(args);
    con.req_command(&cmd)
        .unwrap_or_else(|e| panic!("I/O error on command: {e}"))
}

/// Async twin of [`call`].
pub async fn acall<A: ToRedisArgs>(
    con: &mut redis::aio::MultiplexedConnection,
    args: &[A],
) -> Value {
    let cmd = build_cmd(args);
    match redis::aio::ConnectionLike::req_packed_command(con, &cmd).await {
        Ok(v) => v,
        Err(e) if e.kind() == redis::ErrorKind::Io || e.is_io_error() || e.is_timeout() => {
            panic!("I/O error on command: {e}")
        }
        Err(e) => match e.code() {
            // Some redis versions surface server errors as Err; fold them back.
            Some(code) => Value::ServerError(make_server_error(code, e.detail())),
            None => panic!("client error on command: {e}"),
        },
    }
}

fn make_server_error(code: &str, detail: Option<&str>) -> redis::ServerError {
    let line = match detail {
        Some(d) => format!("-{code} {d}\r\n"),
        None => format!("-{code}\r\n"),
    };
    match redis::parse_redis_value(line.as_bytes()).expect("parse error line") {
        Value::ServerError(e) => e,
        other => panic!("expected an error value, got {other:?}"),
    }
}

/// The full error line (`CODE detail`) of a server error reply; panics on
/// anything else.
pub fn err_text(v: &Value) -> String {
    match v {
        Value::ServerError(e) => match e.details() {
            Some(d) => format!("{} {}", e.code(), d),
            None => e.code().to_string(),
        },
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Asserts that `v` is exactly the error `expected` (`CODE detail`).
#[track_caller]
pub fn assert_err(v: &Value, expected: &str) {
    assert_eq!(err_text(v), expected, "reply was {v:?}");
}

/// Asserts that `v` is an error whose code is `code`.
#[track_caller]
pub fn assert_err_code(v: &Value, code: &str) {
    match v {
        Value::ServerError(e) => assert_eq!(e.code(), code, "error was {v:?}"),
        other => panic!("expected a {code} error, got {other:?}"),
    }
}

/// The text of a string-like reply (bulk, simple, verbatim, OK).
#[track_caller]
pub fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => panic!("expected a string reply, got {other:?}"),
    }
}

/// The bytes of a string-like reply.
#[track_caller]
pub fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        Value::Okay => b"OK".to_vec(),
        Value::VerbatimString { text, .. } => text.as_bytes().to_vec(),
        other => panic!("expected a string reply, got {other:?}"),
    }
}

/// The integer of an integer reply.
#[track_caller]
pub fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer reply, got {other:?}"),
    }
}

/// The elements of an array reply.
#[track_caller]
pub fn array(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        other => panic!("expected an array reply, got {other:?}"),
    }
}

/// A bulk-string value, for comparisons.
pub fn bulk(s: impl AsRef<[u8]>) -> Value {
    Value::BulkString(s.as_ref().to_vec())
}

/// The pairs of a map reply: a RESP3 map when `resp3`, otherwise the flat
/// `[k1, v1, k2, v2, ...]` array RESP2 clients get. Panics if the shape is
/// the other protocol's.
#[track_caller]
pub fn map_pairs(v: &Value, resp3: bool) -> Vec<(Value, Value)> {
    match (v, resp3) {
        (Value::Map(pairs), true) => pairs.clone(),
        (Value::Array(items), false) => {
            assert!(items.len() % 2 == 0, "odd flat map: {v:?}");
            items
                .chunks(2)
                .map(|kv| (kv[0].clone(), kv[1].clone()))
                .collect()
        }
        (other, true) => panic!("expected a RESP3 map, got {other:?}"),
        (other, false) => panic!("expected a RESP2 flat array map, got {other:?}"),
    }
}

/// The one entry of SESSION.NODES marked `self`, as a map; asserts there is
/// exactly one, with the fields every entry has.
#[track_caller]
pub fn self_node(con: &mut redis::Connection, resp3: bool) -> BTreeMap<String, Value> {
    let nodes = match call(con, &["SESSION.NODES"]) {
        Value::Array(nodes) => nodes,
        other => panic!("SESSION.NODES answered {other:?}"),
    };
    let mut me: Vec<BTreeMap<String, Value>> = nodes
        .iter()
        .map(|n| map_of(n, resp3))
        .filter(|m| m.get("self") == Some(&Value::Int(1)))
        .collect();
    assert_eq!(me.len(), 1, "exactly one node is self: {nodes:?}");
    let me = me.remove(0);
    let keys: Vec<&str> = me.keys().map(String::as_str).collect();
    assert_eq!(keys, ["addr", "last_seen", "node", "self", "sessions"]);
    me
}

/// A map reply keyed by string, checking the protocol's shape and that no
/// key repeats.
#[track_caller]
pub fn map_of(v: &Value, resp3: bool) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for (k, val) in map_pairs(v, resp3) {
        let key = text(&k);
        assert!(
            out.insert(key.clone(), val).is_none(),
            "duplicate key {key} in {v:?}"
        );
    }
    out
}

/// The field names every session map carries, per commands.md.
pub const SESSION_FIELDS: [&str; 11] = [
    "attrs",
    "conn",
    "created",
    "expires",
    "id",
    "last_active",
    "node",
    "status",
    "ttl",
    "user",
    "version",
];

/// A decoded session map (from SESSION.GET or BYUSER WITHSESSIONS).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: Vec<u8>,
    pub user: Option<Vec<u8>>,
    pub conn: Option<Vec<u8>>,
    pub status: String,
    pub node: String,
    pub created: i64,
    pub last_active: i64,
    pub expires: i64,
    pub ttl: i64,
    pub version: i64,
    pub attrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn optional_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Nil => None,
        other => Some(bytes(other)),
    }
}

/// Decodes a session map reply, asserting the exact field set of
/// commands.md, the protocol's map shape (nested for `attrs`) and integer
/// times.
#[track_caller]
pub fn session(v: &Value, resp3: bool) -> Session {
    let fields = map_of(v, resp3);
    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(names, SESSION_FIELDS, "session field names in {v:?}");
    let attrs = map_pairs(&fields["attrs"], resp3)
        .into_iter()
        .map(|(k, v)| (bytes(&k), bytes(&v)))
        .collect::<BTreeMap<_, _>>();
    Session {
        id: bytes(&fields["id"]),
        user: optional_bytes(&fields["user"]),
        conn: optional_bytes(&fields["conn"]),
        status: text(&fields["status"]),
        node: text(&fields["node"]),
        created: int(&fields["created"]),
        last_active: int(&fields["last_active"]),
        expires: int(&fields["expires"]),
        ttl: int(&fields["ttl"]),
        version: int(&fields["version"]),
        attrs,
    }
}

/// SESSION.GET decoded; None when the reply is nil.
#[track_caller]
pub fn get_session(con: &mut redis::Connection, id: &str, resp3: bool) -> Option<Session> {
    match call(con, &["SESSION.GET", id]) {
        Value::Nil => None,
        v => Some(session(&v, resp3)),
    }
}

/// The ids of a SESSION.BYUSER reply, in order.
#[track_caller]
pub fn byuser(con: &mut redis::Connection, user: &str) -> Vec<String> {
    array(&call(con, &["SESSION.BYUSER", user]))
        .iter()
        .map(text)
        .collect()
}

// ---------------------------------------------------------------------------
// Raw RESP over TCP
// ---------------------------------------------------------------------------

/// One RESP2/RESP3 reply exactly as it appeared on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    /// `+...`
    Simple(String),
    /// `-...` (the whole line after the dash)
    Error(String),
    /// `:...`
    Int(i64),
    /// `$n` with data
    Bulk(Vec<u8>),
    /// `$-1`
    NullBulk,
    /// `*-1`
    NullArray,
    /// `*n`
    Array(Vec<Resp>),
    /// RESP3 `_`
    Null,
    /// RESP3 `#t` / `#f`
    Bool(bool),
    /// RESP3 `,`
    Double(String),
    /// RESP3 `(`
    BigNumber(String),
    /// RESP3 `!n`
    BlobError(Vec<u8>),
    /// RESP3 `=n` (format prefix included)
    Verbatim(Vec<u8>),
    /// RESP3 `%n`
    Map(Vec<(Resp, Resp)>),
    /// RESP3 `~n`
    Set(Vec<Resp>),
    /// RESP3 `|n` (the attribute map; the reply it annotates follows)
    Attribute(Vec<(Resp, Resp)>),
    /// RESP3 `>n`
    Push(Vec<Resp>),
}

impl Resp {
    /// Bulk string shorthand.
    pub fn bulk(s: impl AsRef<[u8]>) -> Resp {
        Resp::Bulk(s.as_ref().to_vec())
    }

    /// Array of bulk strings shorthand.
    pub fn bulks(items: &[&str]) -> Resp {
        Resp::Array(items.iter().map(Resp::bulk).collect())
    }

    /// The text of a bulk, simple or verbatim string.
    #[track_caller]
    pub fn text(&self) -> String {
        match self {
            Resp::Bulk(b) | Resp::Verbatim(b) => String::from_utf8_lossy(b).into_owned(),
            Resp::Simple(s) => s.clone(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }
}

/// Parses one reply from the front of `buf`: Ok(None) when incomplete.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
        let rest = buf.get(pos..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((&rest[..end], pos + end + 2))
    }
    fn num(b: &[u8]) -> Result<i64, String> {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(b)))
    }
    fn blob(buf: &[u8], pos: usize, len: i64) -> Result<Option<(Vec<u8>, usize)>, String> {
        let len = usize::try_from(len).map_err(|_| format!("bad length {len}"))?;
        if buf.len() < pos + len + 2 {
            return Ok(None);
        }
        if &buf[pos + len..pos + len + 2] != b"\r\n" {
            return Err("blob not terminated by CRLF".into());
        }
        Ok(Some((buf[pos..pos + len].to_vec(), pos + len + 2)))
    }
    fn items(buf: &[u8], mut pos: usize, n: i64) -> Result<Option<(Vec<Resp>, usize)>, String> {
        let mut out = Vec::new();
        for _ in 0..n {
            match at(buf, pos)? {
                Some((v, next)) => {
                    out.push(v);
                    pos = next;
                }
                None => return Ok(None),
            }
        }
        Ok(Some((out, pos)))
    }
    fn pairs(items: Vec<Resp>) -> Vec<(Resp, Resp)> {
        let mut it = items.into_iter();
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        out
    }
    fn at(buf: &[u8], pos: usize) -> Result<Option<(Resp, usize)>, String> {
        let Some(&kind) = buf.get(pos) else {
            return Ok(None);
        };
        let Some((head, next)) = line(buf, pos + 1) else {
            return Ok(None);
        };
        let s = || String::from_utf8_lossy(head).into_owned();
        Ok(match kind {
            b'+' => Some((Resp::Simple(s()), next)),
            b'-' => Some((Resp::Error(s()), next)),
            b':' => Some((Resp::Int(num(head)?), next)),
            b'_' => Some((Resp::Null, next)),
            b'#' => Some((Resp::Bool(head == b"t"), next)),
            b',' => Some((Resp::Double(s()), next)),
            b'(' => Some((Resp::BigNumber(s()), next)),
            b'$' | b'!' | b'=' => {
                let n = num(head)?;
                if n == -1 && kind == b'$' {
                    Some((Resp::NullBulk, next))
                } else {
                    blob(buf, next, n)?.map(|(data, end)| {
                        let v = match kind {
                            b'$' => Resp::Bulk(data),
                            b'!' => Resp::BlobError(data),
                            _ => Resp::Verbatim(data),
                        };
                        (v, end)
                    })
                }
            }
            b'*' | b'~' | b'>' => {
                let n = num(head)?;
                if n == -1 && kind == b'*' {
                    Some((Resp::NullArray, next))
                } else {
                    items(buf, next, n)?.map(|(v, end)| {
                        let v = match kind {
                            b'*' => Resp::Array(v),
                            b'~' => Resp::Set(v),
                            _ => Resp::Push(v),
                        };
                        (v, end)
                    })
                }
            }
            b'%' | b'|' => {
                let n = num(head)?;
                items(buf, next, n * 2)?.map(|(v, end)| {
                    let v = if kind == b'%' {
                        Resp::Map(pairs(v))
                    } else {
                        Resp::Attribute(pairs(v))
                    };
                    (v, end)
                })
            }
            other => return Err(format!("unknown RESP type byte {:?}", other as char)),
        })
    }
    at(buf, 0)
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode_cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Why a raw read ended without a reply.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    /// Nothing complete arrived in time.
    Timeout,
    /// The peer closed (EOF or reset).
    Closed,
}

/// A raw TCP connection to a RESP server, for byte-exact tests.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`; errors are returned (the server may have closed).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes a command as a RESP array; panics on I/O error.
    pub fn send_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.send(&encode_cmd(args)).expect("write command");
    }

    /// Sends a command and waits for its reply.
    #[track_caller]
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Resp {
        self.send_cmd(args);
        self.read_reply()
    }

    /// Reads one reply within [`REPLY_TIMEOUT`]; panics on timeout or close.
    #[track_caller]
    pub fn read_reply(&mut self) -> Resp {
        self.read_reply_within(REPLY_TIMEOUT)
    }

    /// Reads one reply within `timeout`; panics on timeout or close.
    #[track_caller]
    pub fn read_reply_within(&mut self, timeout: Duration) -> Resp {
        match self.try_read_reply(timeout) {
            Ok(v) => v,
            Err(end) => panic!(
                "no reply ({end:?}); buffered bytes: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Reads one reply, or says why none came within `timeout`.
    pub fn try_read_reply(&mut self, timeout: Duration) -> Result<Resp, ReadEnd> {
        let end = Instant::now() + timeout;
        loop {
            match parse_resp(&self.buf) {
                Ok(Some((v, used))) => {
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Ok(None) => {}
                Err(e) => panic!(
                    "unparseable reply ({e}): {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
            self.fill(end)?;
        }
    }

    /// Reads exactly `expected.len()` bytes and asserts they equal `expected`.
    #[track_caller]
    pub fn expect_bytes(&mut self, expected: &[u8]) {
        let end = Instant::now() + REPLY_TIMEOUT;
        while self.buf.len() < expected.len() {
            if let Err(why) = self.fill(end) {
                panic!(
                    "wanted {:?}, got {:?} then {why:?}",
                    String::from_utf8_lossy(expected),
                    String::from_utf8_lossy(&self.buf)
                );
            }
        }
        let got: Vec<u8> = self.buf.drain(..expected.len()).collect();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "raw bytes differ"
        );
    }

    /// Reads until the peer closes or `timeout` passes; returns the bytes
    /// received and whether the connection was closed.
    pub fn read_until_closed(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let end = Instant::now() + timeout;
        loop {
            match self.fill(end) {
                Ok(()) => {}
                Err(ReadEnd::Closed) => return (std::mem::take(&mut self.buf), true),
                Err(ReadEnd::Timeout) => return (std::mem::take(&mut self.buf), false),
            }
        }
    }

    /// Asserts that the server sends exactly `expected` and then closes.
    #[track_caller]
    pub fn expect_reply_then_close(&mut self, expected: &[u8]) {
        let (got, closed) = self.read_until_closed(REPLY_TIMEOUT);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected),
            "reply before close"
        );
        assert!(closed, "connection was not closed after {expected:?}");
    }

    /// Reads more bytes into the buffer before `end`.
    fn fill(&mut self, end: Instant) -> Result<(), ReadEnd> {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadEnd::Timeout);
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ReadEnd::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadEnd::Timeout)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(_) => Err(ReadEnd::Closed),
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP and redis-cli
// ---------------------------------------------------------------------------

/// A minimal HTTP/1.1 GET: (status code, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect metrics");
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read HTTP response for {path}: {e}"));
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {raw:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Runs redis-cli against `addr` with a deadline; returns stdout.
pub fn run_redis_cli(addr: SocketAddr, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut child = Command::new(REDIS_CLI)
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redis-cli");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let end = Instant::now() + REPLY_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-cli {args:?} did not finish within {REPLY_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    String::from_utf8_lossy(&reader.join().unwrap()).into_owned()
}

// ---------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------

/// A throwaway `redis-server` on a free loopback port (no persistence).
/// Dropping it kills the process.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
}

impl RedisServer {
    /// Starts redis-server with `extra` arguments and waits until it answers PING.
    pub fn start(extra: &[&str]) -> RedisServer {
        for _attempt in 0..5 {
            let port = free_port();
            let mut child = Command::new(REDIS_SERVER)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let up = wait_until(STARTUP_DEADLINE, || {
                if let Ok(Some(_)) = child.try_wait() {
                    return true;
                }
                ping_raw(addr)
            });
            if up && child.try_wait().unwrap().is_none() {
                return RedisServer { child, addr };
            }
            // The port was taken between probe and bind: try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start redis-server");
    }

    /// `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// A synchronous RESP2 client.
    pub fn client(&self) -> redis::Connection {
        connect_sync(&self.url())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ping_raw(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

// ---------------------------------------------------------------------------
// Event subscriber
// ---------------------------------------------------------------------------

/// A raw connection subscribed to an event channel, decoding each message
/// payload as JSON. Works over RESP2 (`*3 message`) and RESP3 (`>3 message`).
pub struct EventSubscriber {
    raw: RawConn,
    channel: String,
}

impl EventSubscriber {
    /// Subscribes to `channel` (after `HELLO 3` when `resp3`) and checks the
    /// subscription confirmation.
    pub fn new(sidecar: &Sidecar, channel: &str, resp3: bool) -> EventSubscriber {
        let mut raw = sidecar.raw();
        if let Some(p) = &sidecar.password {
            assert_eq!(raw.cmd(&["AUTH", p.as_str()]), Resp::Simple("OK".into()));
        }
        if resp3 {
            assert!(matches!(raw.cmd(&["HELLO", "3"]), Resp::Map(_)));
        }
        let confirm = raw.cmd(&["SUBSCRIBE", channel]);
        let expected = vec![Resp::bulk("subscribe"), Resp::bulk(channel), Resp::Int(1)];
        let items = match confirm {
            Resp::Push(items) if resp3 => items,
            Resp::Array(items) if !resp3 => items,
            other => panic!("unexpected SUBSCRIBE confirmation {other:?}"),
        };
        assert_eq!(items, expected);
        EventSubscriber {
            raw,
            channel: channel.to_string(),
        }
    }

    /// The next message on the channel as JSON, or None after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let frame = match self.raw.try_read_reply(left) {
                Ok(frame) => frame,
                Err(ReadEnd::Timeout) => return None,
                Err(ReadEnd::Closed) => panic!("subscriber connection closed"),
            };
            let items = match frame {
                Resp::Push(items) | Resp::Array(items) => items,
                other => panic!("unexpected frame in subscribed mode: {other:?}"),
            };
            if items.len() == 3 && items[0] == Resp::bulk("message") {
                assert_eq!(items[1], Resp::bulk(&self.channel));
                let Resp::Bulk(payload) = &items[2] else {
                    panic!("message payload must be a bulk string: {items:?}");
                };
                return Some(serde_json::from_slice(payload).unwrap_or_else(|e| {
                    panic!(
                        "event is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(payload)
                    )
                }));
            }
        }
    }

    /// Waits up to `timeout` for an event matching `pred`, skipping others.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let event = self.next(left)?;
            if pred(&event) {
                return Some(event);
            }
        }
    }

    /// Every event that arrives within `window`.
    pub fn collect_for(&mut self, window: Duration) -> Vec<serde_json::Value> {
        let end = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(e) = self.next(end.saturating_duration_since(Instant::now())) {
            out.push(e);
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Write-through fixtures: restartable redis-server, hard kills, INFO parsing
// ---------------------------------------------------------------------------

impl RedisServer {
    /// Starts redis-server on exactly `port` (e.g. to restart an upstream on
    /// the port its clients know) and waits until it answers PING. Panics if
    /// it cannot bind the port within the startup deadline.
    pub fn start_on_port(port: u16, extra: &[&str]) -> RedisServer {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let end = Instant::now() + STARTUP_DEADLINE;
        loop {
            let mut child = Command::new(REDIS_SERVER)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let up = wait_until(end.saturating_duration_since(Instant::now()), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return true;
                }
                ping_raw(addr)
            });
            if up && child.try_wait().unwrap().is_none() {
                return RedisServer { child, addr };
            }
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() >= end {
                panic!("could not start redis-server on port {port}");
            }
            // The port may still be held by a dying process: retry shortly.
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port this server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// SIGKILL (no shutdown, no final save) and wait for the process to go.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    /// SIGKILL (kill -9: nothing flushed, nothing drained) and wait for the
    /// process to go.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `INFO <section>` as field → value.
    pub fn info(&self, section: &str) -> BTreeMap<String, String> {
        parse_info(&text(&call(&mut self.client(), &["INFO", section])))
    }
}

/// Parses Redis's INFO text (`# Section` headers, `name:value` lines).
pub fn parse_info(info: &str) -> BTreeMap<String, String> {
    info.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The sum of `calls=` over every command of redis-server's
/// `INFO commandstats` (commands run inside scripts included).
pub fn commandstats_calls(con: &mut redis::Connection) -> u64 {
    let info = text(&call(con, &["INFO", "commandstats"]));
    info.lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "session-sidecar-{tag}-{}-{n}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
