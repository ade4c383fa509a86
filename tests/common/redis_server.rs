//! The `redis-server` fixture: [`RedisServer`] runs a throwaway server
//! (no persistence) on a free loopback port or on a given one (to restart
//! an upstream where its clients expect it), and kills it on drop. Also
//! [`free_port`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::client::connect_sync;
use super::polling::{STARTUP_DEADLINE, wait_until};
use super::tools::TempDir;

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A throwaway `redis-server` on a free loopback port (no persistence).
/// Dropping it kills the process.
pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
    /// Its working directory, where replication writes its RDB files.
    _dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server with `extra` arguments and waits until it answers PING.
    pub fn start(extra: &[&str]) -> RedisServer {
        for _attempt in 0..5 {
            if let Some(server) = RedisServer::try_start(free_port(), extra, STARTUP_DEADLINE) {
                return server;
            }
            // The port was taken between probe and bind: try another.
        }
        panic!("could not start redis-server");
    }

    /// Starts redis-server on exactly `port` (e.g. to restart an upstream on
    /// the port its clients know) and waits until it answers PING. Panics if
    /// it cannot bind the port within the startup deadline.
    pub fn start_on_port(port: u16, extra: &[&str]) -> RedisServer {
        let end = Instant::now() + STARTUP_DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if let Some(server) = RedisServer::try_start(port, extra, left) {
                return server;
            }
            if Instant::now() >= end {
                panic!("could not start redis-server on port {port}");
            }
            // The port may still be held by a dying process: retry shortly.
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// One attempt: redis-server on `port`, in a directory of its own,
    /// answering PING within `deadline`; None (the process gone) otherwise.
    fn try_start(port: u16, extra: &[&str], deadline: Duration) -> Option<RedisServer> {
        let dir = TempDir::new("redis");
        let mut child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.0.to_string_lossy()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = wait_until(deadline, || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            ping_raw(addr)
        });
        if up && child.try_wait().unwrap().is_none() {
            return Some(RedisServer {
                child,
                addr,
                _dir: dir,
            });
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// `redis://` URL of this server.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// A synchronous RESP2 client.
    pub fn client(&self) -> redis::Connection {
        connect_sync(&self.url())
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
