//! The `session-sidecar` process fixture: [`Sidecar`] starts the real
//! binary on ephemeral loopback ports, learns its bound addresses from the
//! startup log lines, keeps every log line, hands out clients of each kind,
//! signals or kills the process, and kills it on drop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::assertions::{parse_info, text};
use super::client::{call, connect_async, connect_sync};
use super::polling::{STARTUP_DEADLINE, wait_until};
use super::resp::RawConn;
use super::tools::{http_get, run_redis_cli};

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
    /// The stdout and stderr readers; joined once the process has exited, so
    /// `logs()` then holds every line it wrote.
    readers: Vec<thread::JoinHandle<()>>,
    pub(super) password: Option<String>,
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
        // The suite runs again with many shards (scripts/test.sh): every
        // sidecar gets them unless its test chose its own.
        if let Some(shards) = super::upstream_keys::test_shards()
            && !args.contains(&"--shards")
        {
            full_args.extend(["--shards".to_string(), shards.to_string()]);
        }

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
        let readers = vec![
            spawn_log_reader(stdout, logs.clone(), Some(tx)),
            spawn_log_reader(stderr, logs.clone(), None),
        ];

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
            readers,
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
                        sidecar.join_log_readers();
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

    /// SIGKILL (kill -9: nothing flushed, nothing drained) and wait for the
    /// process to go.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_log_readers();
    }

    /// After the process exited: waits for its pipes to reach end of file,
    /// so the last lines it wrote are in `logs()` (the readers may lag the
    /// exit by a scheduling quantum).
    fn join_log_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_log_readers();
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

    /// `INFO <section>` as field → value.
    pub fn info(&self, section: &str) -> BTreeMap<String, String> {
        parse_info(&text(&call(&mut self.client(), &["INFO", section])))
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
) -> thread::JoinHandle<()> {
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
    })
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
