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
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio_rustls::server::TlsStream;

use crate::config::OutputLimit;

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
    pub async fn write(&self, output: &[u8]) -> io::Result<()> {
        write_all(&self.writer, output).await
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
