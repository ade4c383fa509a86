//! Clients of a running server: connections through the `redis` crate
//! (RESP2 or RESP3, sync or async), [`call`] / [`acall`] to send one command
//! and get the raw reply (server errors included), [`cas_increment`], and
//! [`EventSubscriber`], a raw-RESP subscriber to an event channel.

use std::time::{Duration, Instant};

use redis::{ConnectionLike, ToRedisArgs, Value};

use super::assertions::{err_text, get_session};
use super::polling::REPLY_TIMEOUT;
use super::resp::{RawConn, ReadEnd, Resp};
use super::sidecar::Sidecar;

pub(super) fn connect_sync(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("valid redis url");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    con.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    con.set_write_timeout(Some(REPLY_TIMEOUT)).unwrap();
    con
}

pub(super) async fn connect_async(
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

pub fn build_cmd<A: ToRedisArgs>(args: &[A]) -> redis::Cmd {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(a);
    }
    cmd
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
