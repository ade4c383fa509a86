//! A client's socket as the pooled connections see it: the task that reads a
//! client's replies from the upstream writes them straight to the client,
//! so a multiplexed command costs the client's task no second wake-up.
//!
//! Invariant: replies reach the socket in the order of the client's
//! commands. The pooled connections deliver in the order the requests were
//! sent; the client's task writes its own output (replies it answered
//! itself, replies relayed from a pinned connection) only when no reply is
//! owed by a pool ([`ReplySink::settle`]), and sends no request to a pool
//! before its own output is written. What a pooled connection cannot write
//! at once (the client reads slowly) waits in a backlog the client's task
//! writes; replies delivered meanwhile queue behind it. A TLS client's
//! replies always go through the backlog: only its own task drives the TLS
//! session.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio_rustls::server::TlsStream;

use crate::config::OutputLimit;
use crate::event_loop;

/// Why a client over its output buffer limit is closed.
pub const OVER_LIMIT: &str = "client-output-buffer-limit reached";

/// The write side of a client connection, shared with the pools.
pub struct ReplySink {
    writer: Writer,
    /// Unread replies past this close the client (`client-output-buffer-limit
    /// normal`).
    limit: OutputLimit,
    /// Since when the backlog is over the soft limit
    /// ([`OutputLimit::exceeded`]).
    over_soft_since: std::sync::atomic::AtomicU64,
    state: Mutex<SinkState>,
    wake: Notify,
}

#[derive(Default)]
struct SinkState {
    /// Requests sent to a pool whose replies are not delivered yet.
    owed: usize,
    /// Replies not written yet, oldest first.
    backlog: BytesMut,
    /// The client's task is writing (part of) the backlog.
    writing: bool,
    /// The client's task waits for every reply owed.
    waiting: bool,
    /// Over the limit: the backlog was dropped, replies are discarded, the
    /// client's task closes the connection.
    over_limit: bool,
    /// Left for the event loop's sleep ([`ReplySink::write_soon`]).
    queued: bool,
}

/// A plain socket, which a pool may write to directly, or a TLS session,
/// written by the client's task alone.
enum Writer {
    Plain(OwnedWriteHalf),
    Tls(tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>),
}

impl ReplySink {
    pub fn new(writer: OwnedWriteHalf, limit: OutputLimit) -> ReplySink {
        ReplySink::with(Writer::Plain(writer), limit)
    }

    /// The sink of a TLS client.
    pub fn tls(writer: WriteHalf<TlsStream<TcpStream>>, limit: OutputLimit) -> ReplySink {
        ReplySink::with(Writer::Tls(tokio::sync::Mutex::new(writer)), limit)
    }

    fn with(writer: Writer, limit: OutputLimit) -> ReplySink {
        ReplySink {
            writer,
            limit,
            over_soft_since: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(SinkState::default()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request was sent to a pool: its replies are owed.
    pub fn owe(&self) {
        self.lock().owed += 1;
    }

    /// How many requests are owed, and whether replies wait in the backlog.
    pub fn pressure(&self) -> (usize, bool) {
        let state = self.lock();
        (state.owed, !state.backlog.is_empty())
    }

    /// A pooled connection's side: one request's replies, in order.
    pub fn deliver(&self, replies: &[u8]) {
        let mut state = self.lock();
        state.owed = state.owed.saturating_sub(1);
        if state.over_limit {
            if state.waiting && state.owed == 0 {
                self.wake.notify_one();
            }
            return;
        }
        if let Writer::Plain(writer) = &self.writer
            && state.backlog.is_empty()
            && !state.writing
        {
            match writer.try_write(replies) {
                Ok(written) => state.backlog.extend_from_slice(&replies[written..]),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    state.backlog.extend_from_slice(replies);
                }
                // The client is gone; its task will find out when reading.
                Err(_) => {}
            }
        } else {
            state.backlog.extend_from_slice(replies);
        }
        let held = state.backlog.len() as u64;
        if self.limit.exceeded(held, &self.over_soft_since) {
            // Its memory goes now; the client's task closes the connection.
            state.over_limit = true;
            state.backlog = BytesMut::new();
            self.wake.notify_one();
            return;
        }
        let backlogged = !state.backlog.is_empty() && !state.writing;
        if backlogged || (state.waiting && state.owed == 0) {
            self.wake.notify_one();
        }
    }

    /// Resolves when a pool left replies in the backlog (or the client's task
    /// may stop waiting); [`ReplySink::drain`] writes them.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Whether the client went over its output buffer limit (and must be
    /// closed).
    pub fn over_limit(&self) -> bool {
        self.lock().over_limit
    }

    /// Writes the backlog until it is empty; fails once the client went over
    /// its output buffer limit.
    pub async fn drain(&self) -> io::Result<()> {
        loop {
            let chunk = {
                let mut state = self.lock();
                if state.over_limit {
                    return Err(io::Error::other(OVER_LIMIT));
                }
                if state.backlog.is_empty() {
                    state.writing = false;
                    return Ok(());
                }
                state.writing = true;
                state.backlog.split()
            };
            if let Err(error) = write_all(&self.writer, &chunk).await {
                self.lock().writing = false;
                return Err(error);
            }
        }
    }

    /// Waits until every reply owed is delivered and written.
    pub async fn settle(&self) -> io::Result<()> {
        loop {
            {
                let mut state = self.lock();
                state.waiting = state.owed > 0;
                if !state.waiting {
                    break;
                }
            }
            // A notification sent before this wait is kept: none is lost.
            self.wake.notified().await;
            self.drain().await?;
        }
        self.drain().await
    }

    /// Writes the client task's own output; only when nothing is owed.
    /// What [`ReplySink::write_soon`] left goes first.
    pub async fn write(&self, output: &[u8]) -> io::Result<()> {
        self.drain().await?;
        write_all(&self.writer, output).await
    }

    /// The client task's own output at the end of a read cycle: written
    /// when the event loop runs out of work, with every other client's
    /// served in the same pass (see [`crate::event_loop`]). Takes `output`'s
    /// bytes, leaving it empty. Where the loop cannot defer (a TLS client,
    /// a runtime without the hook), written now.
    pub async fn write_soon(self: &Arc<Self>, output: &mut BytesMut) -> io::Result<()> {
        if matches!(self.writer, Writer::Plain(_)) && event_loop::defers() {
            let mut state = self.lock();
            if state.over_limit {
                return Err(io::Error::other(OVER_LIMIT));
            }
            // Only onto an empty backlog: what the socket did not take last
            // time is written first, here, so that a client which does not
            // read holds its task back instead of piling up replies.
            if state.backlog.is_empty() && !state.writing {
                std::mem::swap(&mut state.backlog, output);
                if !state.queued {
                    state.queued = true;
                    drop(state);
                    event_loop::later(self.clone());
                }
                return Ok(());
            }
        }
        let written = self.write(output).await;
        output.clear();
        written
    }
}

impl event_loop::BeforeSleep for ReplySink {
    /// Writes what [`ReplySink::write_soon`] left, as far as the socket
    /// takes it now; the client's task is woken to write the rest.
    fn before_sleep(&self) {
        let mut state = self.lock();
        state.queued = false;
        if state.writing || state.over_limit || state.backlog.is_empty() {
            return;
        }
        let Writer::Plain(writer) = &self.writer else {
            return;
        };
        match writer.try_write(&state.backlog) {
            Ok(written) if written == state.backlog.len() => {
                // Given back, as the client's task gives its buffers back
                // between reads: a connection at rest holds none.
                state.backlog = BytesMut::new();
                return;
            }
            Ok(written) => state.backlog.advance(written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            // The client is gone; its task finds out when it writes.
            Err(_) => {}
        }
        self.wake.notify_one();
    }
}

async fn write_all(writer: &Writer, mut buf: &[u8]) -> io::Result<()> {
    let writer = match writer {
        Writer::Plain(writer) => writer,
        Writer::Tls(session) => {
            let mut session = session.lock().await;
            session.write_all(buf).await?;
            return session.flush().await;
        }
    };
    while !buf.is_empty() {
        writer.writable().await?;
        match writer.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => buf = &buf[written..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A sink on one end of a loopback connection, and the other end as a
    /// non-blocking std socket: its reads are real system calls, which see
    /// exactly what was written so far.
    async fn pair() -> (Arc<ReplySink>, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_nonblocking(true).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, writer) = server.into_split();
        let limit = OutputLimit {
            hard: 0,
            soft: 0,
            soft_seconds: 0,
        };
        (Arc::new(ReplySink::new(writer, limit)), client)
    }

    /// What the client can read now, without waiting.
    fn readable_now(client: &mut std::net::TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match client.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads `n` bytes, letting the loop sleep between tries.
    async fn read_n(client: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while got.len() < n {
            assert!(std::time::Instant::now() < end, "only {got:?} arrived");
            got.extend(readable_now(client));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        got
    }

    fn hooked_loop() -> tokio::runtime::Runtime {
        event_loop::hooked();
        event_loop::runtime().unwrap()
    }

    /// Replies left with write_soon reach no client until the loop runs out
    /// of work, then every client's, in order.
    #[test]
    fn replies_left_for_the_sleep_are_written_together_when_the_loop_parks() {
        hooked_loop().block_on(async {
            let (a, mut client_a) = pair().await;
            let (b, mut client_b) = pair().await;
            let mut output = BytesMut::from(&b"+first\r\n"[..]);
            a.write_soon(&mut output).await.unwrap();
            assert!(output.is_empty(), "the bytes were taken");
            output.extend_from_slice(b"+second\r\n");
            b.write_soon(&mut output).await.unwrap();
            // Nothing parked the loop yet: nothing is on either socket.
            assert_eq!(readable_now(&mut client_a), b"");
            assert_eq!(readable_now(&mut client_b), b"");
            // Waiting parks the loop, which writes both.
            assert_eq!(read_n(&mut client_a, 8).await, b"+first\r\n");
            assert_eq!(read_n(&mut client_b, 9).await, b"+second\r\n");
            // A plain write after a write_soon keeps the order.
            output.extend_from_slice(b"+3\r\n");
            a.write_soon(&mut output).await.unwrap();
            a.write(b"+4\r\n").await.unwrap();
            assert_eq!(read_n(&mut client_a, 8).await, b"+3\r\n+4\r\n");
        });
    }

    /// A client that does not read holds its writer back: once the socket
    /// refused part of what was left, the next write_soon waits for it
    /// instead of adding to it.
    #[test]
    fn a_client_that_does_not_read_holds_write_soon_back() {
        hooked_loop().block_on(async {
            let (sink, mut client) = pair().await;
            let chunk = vec![b'x'; 1 << 20];
            let mut held_back = false;
            for _ in 0..64 {
                let mut output = BytesMut::from(&chunk[..]);
                let write = sink.write_soon(&mut output);
                if tokio::time::timeout(Duration::from_millis(200), write)
                    .await
                    .is_err()
                {
                    held_back = true;
                    break;
                }
                // Let the loop sleep, and so write what it can.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(held_back, "64 MiB left for a client that reads nothing");
            assert!(
                sink.lock().backlog.len() <= chunk.len(),
                "the backlog grew past one write"
            );
            // Reading lets it through.
            assert!(!read_n(&mut client, 1).await.is_empty());
        });
    }
}
