//! The multiplexed path: a few pipelined connections to one upstream server,
//! shared by every client for the commands that leave no state behind.
//!
//! Invariant: every request gets exactly one answer, in order. Each pooled
//! connection is one task that owns its socket: it gathers the requests
//! queued while its previous write is unanswered (many clients' pipelines)
//! into one write, and hands the replies back in the order the requests
//! were written, each request's replies as one slice of the read buffer,
//! never re-encoded, written straight to the client's socket
//! ([`ReplySink`]). A client's pipeline is one request, so its replies stay
//! together and in order. The replies a read completes are written to the
//! clients once the next batch is handed to the socket (before waiting on
//! it, if it is full; before the failures of the requests behind them, if
//! the connection fails), so the upstream is not idle while they are.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::ProxyStats;
use super::endpoint::{Connection, Endpoint};
use super::sink::ReplySink;
use crate::protocol::Protocol;
use crate::protocol::frame::FrameScanner;

/// Requests queued per pooled connection before senders wait.
const QUEUE: usize = 4096;
/// Stop taking requests into the batch once it holds this much.
const MAX_BATCH: usize = 256 * 1024;
/// Writes whose replies may be outstanding at once on one connection.
const MAX_UNANSWERED_WRITES: usize = 1;
/// How long to fail at once after a failed connect before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(100);

/// Commands of one client, sent together, answered together.
pub struct Request {
    /// The commands, RESP-encoded, back to back.
    pub commands: Bytes,
    /// How many commands (replies to wait for).
    pub count: usize,
    pub reply: Delivery,
}

/// Where a request's replies go.
pub enum Delivery {
    /// Straight to the client's socket.
    Sink(Arc<ReplySink>),
    /// Back to the task that sent it (the cluster router, which must look at
    /// each reply).
    Caller(oneshot::Sender<Result<Bytes, Failure>>),
}

impl Delivery {
    fn send(self, replies: Bytes) {
        match self {
            Delivery::Sink(sink) => sink.deliver(&replies),
            Delivery::Caller(tx) => {
                let _ = tx.send(Ok(replies));
            }
        }
    }

    /// One error reply per command (to the client), or the failure (to the
    /// caller).
    fn fail(self, failure: Failure, count: usize) {
        match self {
            Delivery::Sink(sink) => {
                let reply = failure.reply();
                let mut replies = Vec::with_capacity(reply.len() * count);
                for _ in 0..count {
                    replies.extend_from_slice(reply);
                }
                sink.deliver(&replies);
            }
            Delivery::Caller(tx) => {
                let _ = tx.send(Err(failure));
            }
        }
    }
}

/// Why a request got no reply.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Not sent: the upstream cannot be reached (the reason, for the log).
    Unavailable(String),
    /// Sent, then the connection failed: the commands may have been applied.
    Lost,
}

impl Failure {
    /// The error reply a client gets for each command.
    pub fn reply(&self) -> &'static [u8] {
        match self {
            Failure::Unavailable(_) => super::UNAVAILABLE,
            Failure::Lost => super::LOST,
        }
    }
}

/// The pooled connections to one server, per protocol version: replies
/// come back in the protocol the client negotiated.
pub struct Pool {
    resp2: Vec<mpsc::Sender<Request>>,
    resp3: Vec<mpsc::Sender<Request>>,
}

/// How pooled connections are made.
#[derive(Clone)]
pub struct PoolSettings {
    pub connections: usize,
    pub connect_timeout: Duration,
    /// How long commands may wait on a connection that replies nothing.
    pub reply_timeout: Option<Duration>,
    pub stats: Arc<ProxyStats>,
}

impl Pool {
    /// Starts the connection tasks; each connects on its first request.
    pub fn new(endpoint: &Endpoint, settings: &PoolSettings) -> Pool {
        let start = |protocol| {
            (0..settings.connections.max(1))
                .map(|_| {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(serve(endpoint.clone(), protocol, settings.clone(), rx));
                    tx
                })
                .collect()
        };
        Pool {
            resp2: start(Protocol::Resp2),
            resp3: start(Protocol::Resp3),
        }
    }

    /// Sends `count` commands and waits for their replies. `lane` picks the
    /// connection (a client always uses the same one).
    pub async fn call(
        &self,
        protocol: Protocol,
        lane: usize,
        commands: Bytes,
        count: usize,
    ) -> Result<Bytes, Failure> {
        let (tx, rx) = oneshot::channel();
        self.submit(protocol, lane, commands, count, Delivery::Caller(tx))
            .await;
        rx.await.unwrap_or_else(|_| Err(shut_down()))
    }

    /// Queues `count` commands; their replies go to `reply`.
    pub async fn submit(
        &self,
        protocol: Protocol,
        lane: usize,
        commands: Bytes,
        count: usize,
        reply: Delivery,
    ) {
        let senders = match protocol {
            Protocol::Resp2 => &self.resp2,
            Protocol::Resp3 => &self.resp3,
        };
        let sender = &senders[lane % senders.len()];
        let request = Request {
            commands,
            count,
            reply,
        };
        if let Err(refused) = sender.send(request).await {
            refused.0.reply.fail(shut_down(), count);
        }
    }
}

fn shut_down() -> Failure {
    Failure::Unavailable("the pool is shut down".into())
}

/// A request queued on the connection, waiting for its replies.
struct InFlight {
    count: usize,
    remaining: usize,
    reply: Delivery,
    /// Written to the upstream (not only batched).
    written: bool,
    /// The last request of a write.
    ends_write: bool,
    /// When it came to the pool.
    queued_at: Instant,
}

/// One pooled connection's task: connect when needed, batch, match replies.
///
/// Batches form by themselves under load: while a write's replies are not
/// all in, the requests that arrive join the next batch instead of going
/// out one by one, so the upstream reads many clients' commands at once.
async fn serve(
    endpoint: Endpoint,
    protocol: Protocol,
    settings: PoolSettings,
    mut requests: mpsc::Receiver<Request>,
) {
    let mut connection: Option<Connection> = None;
    let mut scanner = FrameScanner::default();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut batch = BytesMut::with_capacity(16 * 1024);
    let mut failed_at: Option<(Instant, String)> = None;
    // When the connection last showed progress (a write, or replies).
    let mut progress = Instant::now();
    // Requests answered in full by the last read, handed to their clients
    // once the next batch is written: the upstream works on that batch while
    // the replies are written to the clients.
    let mut answered: Vec<(Delivery, Bytes)> = Vec::new();
    // When each write whose replies are not all in went out, oldest first.
    let mut written_at: VecDeque<Instant> = VecDeque::new();
    loop {
        let waiting = !written_at.is_empty();
        let stalled = async {
            match settings.reply_timeout {
                Some(timeout) if waiting => {
                    tokio::time::sleep_until((progress + timeout).into()).await
                }
                _ => std::future::pending().await,
            }
        };
        let readable = async {
            match connection.as_mut() {
                Some(c) => c.stream.read_buf(&mut c.input).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // While a write is unanswered the queue is not watched: senders
            // queue without waking this task, and the requests are taken
            // together when the replies are in.
            request = requests.recv(), if written_at.len() < MAX_UNANSWERED_WRITES => {
                let Some(request) = request else { return };
                if connection.is_none() {
                    if let Some((at, reason)) = &failed_at
                        && at.elapsed() < RETRY_AFTER
                    {
                        let reason = reason.clone();
                        fail_queued(request, &mut requests, &reason, &settings.stats);
                        continue;
                    }
                    match Box::pin(endpoint.connect(protocol, settings.connect_timeout)).await {
                        Ok(fresh) => {
                            tracing::debug!(upstream = %endpoint.addr, "pooled connection up");
                            connection = Some(fresh);
                            scanner.reset();
                            written_at.clear();
                            failed_at = None;
                        }
                        Err(reason) => {
                            tracing::warn!(upstream = %endpoint.addr, %reason, "proxy cannot reach the upstream");
                            failed_at = Some((Instant::now(), reason.clone()));
                            fail_queued(request, &mut requests, &reason, &settings.stats);
                            continue;
                        }
                    }
                }
                queue(request, &mut batch, &mut in_flight);
            }
            read = readable => {
                let Some(live) = connection.as_mut() else { continue };
                match read {
                    Ok(n) if n > 0 => match hand_back(&mut live.input, &mut scanner, &mut in_flight, &mut answered) {
                        Ok(writes) => {
                            progress = Instant::now();
                            for at in written_at.drain(..writes.min(written_at.len())) {
                                settings.stats.upstream_latency.observe(progress - at);
                            }
                        }
                        Err(()) => {
                            tracing::warn!(upstream = %endpoint.addr, "upstream sent something that is not RESP; reconnecting");
                            connection = None;
                            written_at.clear();
                            batch.clear();
                            deliver(&mut answered);
                            fail_in_flight(&mut in_flight);
                        }
                    },
                    _ => {
                        tracing::debug!(upstream = %endpoint.addr, "pooled connection closed");
                        // Nothing more can be answered on it: the queue is
                        // watched again (the next request reconnects).
                        connection = None;
                        written_at.clear();
                        batch.clear();
                        fail_in_flight(&mut in_flight);
                    }
                }
            }
            _ = stalled => {
                tracing::warn!(upstream = %endpoint.addr, "upstream sent no reply in time; replacing the pooled connection");
                connection = None;
                written_at.clear();
                batch.clear();
                fail_in_flight(&mut in_flight);
            }
        }
        // Write the batch unless the last write is still unanswered: its
        // replies come first, and meanwhile more requests join the batch.
        'write: {
            if written_at.len() >= MAX_UNANSWERED_WRITES {
                break 'write;
            }
            let Some(live) = connection.as_mut() else {
                break 'write;
            };
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => queue(request, &mut batch, &mut in_flight),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break 'write;
            }
            let now = Instant::now();
            for request in in_flight.iter_mut().rev() {
                if request.written {
                    break;
                }
                request.written = true;
                // How long it waited here for the batch before it.
                settings
                    .stats
                    .queue_latency
                    .observe(now - request.queued_at);
            }
            if written_at.is_empty() {
                progress = now;
            }
            written_at.push_back(now);
            if let Some(last) = in_flight.back_mut() {
                last.ends_write = true;
            }
            settings.stats.batches.inc();
            let written = {
                let mut write = std::pin::pin!(async {
                    live.stream.write_all(&batch).await?;
                    live.stream.flush().await
                });
                // The socket mostly takes a batch at once. When it cannot,
                // the replies already read go out first instead of waiting
                // for it, and the write is bounded as a reply is.
                match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                    Poll::Ready(result) => result,
                    Poll::Pending => {
                        deliver(&mut answered);
                        match settings.reply_timeout {
                            Some(limit) => tokio::time::timeout(limit, write)
                                .await
                                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
                            None => write.await,
                        }
                    }
                }
            };
            batch.clear();
            if let Err(error) = written {
                tracing::warn!(upstream = %endpoint.addr, %error, "cannot write to the pooled connection; replacing it");
                connection = None;
                written_at.clear();
                deliver(&mut answered);
                fail_in_flight(&mut in_flight);
            }
        }
        deliver(&mut answered);
    }
}

/// Hands the answered requests their replies, in order.
fn deliver(answered: &mut Vec<(Delivery, Bytes)>) {
    for (delivery, replies) in answered.drain(..) {
        delivery.send(replies);
    }
}

/// Adds a request to the batch being gathered.
fn queue(request: Request, batch: &mut BytesMut, in_flight: &mut VecDeque<InFlight>) {
    batch.extend_from_slice(&request.commands);
    in_flight.push_back(InFlight {
        count: request.count,
        remaining: request.count,
        reply: request.reply,
        written: false,
        ends_write: false,
        queued_at: Instant::now(),
    });
}

/// Hands each request whose replies are all in to its client; returns how
/// many writes were answered in full. Pooled connections never subscribe
/// nor track keys, so every frame is a reply.
fn hand_back(
    input: &mut BytesMut,
    scanner: &mut FrameScanner,
    in_flight: &mut VecDeque<InFlight>,
    answered: &mut Vec<(Delivery, Bytes)>,
) -> Result<usize, ()> {
    let mut writes = 0;
    loop {
        let Some(end) = scanner.next_frame(input).map_err(|_| ())? else {
            return Ok(writes);
        };
        let Some(head) = in_flight.front_mut().filter(|head| head.written) else {
            // A reply nobody asked for: the stream is out of step.
            return Err(());
        };
        head.remaining -= 1;
        if head.remaining == 0 {
            let replies = input.split_to(end).freeze();
            scanner.consumed(end);
            if let Some(done) = in_flight.pop_front() {
                writes += usize::from(done.ends_write);
                answered.push((done.reply, replies));
            }
        }
    }
}

/// Fails a request and whatever else is queued behind it: the upstream is
/// unreachable right now.
fn fail_queued(
    first: Request,
    requests: &mut mpsc::Receiver<Request>,
    reason: &str,
    stats: &ProxyStats,
) {
    let mut next = Some(first);
    while let Some(request) = next {
        stats.unavailable.inc();
        request
            .reply
            .fail(Failure::Unavailable(reason.to_string()), request.count);
        next = requests.try_recv().ok();
    }
}

/// The connection failed: what was written may have been applied, what
/// was only batched was not sent.
fn fail_in_flight(in_flight: &mut VecDeque<InFlight>) {
    for request in in_flight.drain(..) {
        let failure = if request.written {
            Failure::Lost
        } else {
            Failure::Unavailable("connection lost before the write".into())
        };
        request.reply.fail(failure, request.count);
    }
}
