//! Other programs and OS resources the tests drive: `redis-cli`
//! ([`run_redis_cli`]), the redis-py checks under `tests/python`
//! ([`run_python_check`]), a minimal HTTP/1.1 GET for the metrics listener
//! ([`http_get`]) and throwaway directories ([`TempDir`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::polling::{REPLY_TIMEOUT, now_ms};
use super::sidecar::Sidecar;

const REDIS_CLI: &str = "/usr/bin/redis-cli";

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

/// The python with redis-py: the project's virtual environment, which
/// scripts/ensure-redis.sh makes under `target/`, or the system's python3.
fn python() -> String {
    let venv = format!("{}/target/test-venv/bin/python", env!("CARGO_MANIFEST_DIR"));
    if std::path::Path::new(&venv).exists() {
        venv
    } else {
        "python3".to_string()
    }
}

/// Runs `tests/python/<script> <sidecar's port> <args...>` (redis-py checks;
/// scripts/test.sh installs redis-py) and fails with its output unless it
/// succeeds.
#[track_caller]
pub fn run_python_check(script: &str, sidecar: &Sidecar, args: &[&str]) {
    let port = sidecar.addr.port().to_string();
    let mut all = vec![port.as_str()];
    all.extend_from_slice(args);
    run_python(script, &all);
}

/// Runs `tests/python/<script> <args...>` and fails with its output unless
/// it succeeds.
#[track_caller]
pub fn run_python(script: &str, args: &[&str]) {
    let path = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .expect("python runs (scripts/test.sh installs redis-py in target/test-venv)");
    assert!(
        output.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `tests/node/contract.mjs <sidecar's port> <mode>` (ioredis and
/// node-redis; scripts/ensure-redis.sh installs them with `npm ci`) and
/// fails with its output unless it succeeds.
#[track_caller]
pub fn run_node_contract(sidecar: &Sidecar, mode: &str) {
    let dir = format!("{}/tests/node", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(&dir).join("node_modules").exists(),
        "tests/node/node_modules is missing: run `npm ci --prefix tests/node` (scripts/ensure-redis.sh does)"
    );
    let mut node = Command::new("node");
    node.current_dir(&dir)
        .arg("contract.mjs")
        .arg(sidecar.addr.port().to_string())
        .arg(mode);
    run_contract(node, &format!("contract.mjs {mode}"), "Node.js");
}

/// Runs a client contract and fails with its output unless it succeeds.
#[track_caller]
fn run_contract(mut command: Command, what: &str, runtime: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{runtime} runs (scripts/ensure-redis.sh installs it): {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `tests/go/contract.go` against `sidecar` in `mode` (standalone,
/// upstream or cluster): redigo and go-redis, from Debian's packages, in
/// GOPATH mode (scripts/ensure-redis.sh installs them).
#[track_caller]
pub fn run_go_contract(sidecar: &Sidecar, mode: &str) {
    let dir = format!("{}/tests/go", env!("CARGO_MANIFEST_DIR"));
    let gopath = "/usr/share/gocode";
    assert!(
        std::path::Path::new(gopath)
            .join("src/gopkg.in/redis.v5")
            .exists(),
        "go-redis is missing: scripts/ensure-redis.sh installs golang-go, \
         golang-gopkg-redis.v5-dev and golang-github-gomodule-redigo-dev"
    );
    let mut go = Command::new("go");
    go.current_dir(&dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOFLAGS", "")
        .env(
            "GOCACHE",
            format!("{}/target/go-cache", env!("CARGO_MANIFEST_DIR")),
        )
        .args(["run", "contract.go", &sidecar.addr.port().to_string(), mode]);
    run_contract(go, &format!("contract.go {mode}"), "Go");
}

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

/// Runs the sidecar binary with `args`, expects it to refuse to start, and
/// returns what it printed (stdout and stderr).
#[track_caller]
pub fn failed_start_output(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_session-sidecar"))
        .args(args)
        .env_remove("SESSION_SIDECAR_SHARDS")
        .output()
        .expect("run the sidecar");
    assert!(!out.status.success(), "the sidecar started with {args:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
