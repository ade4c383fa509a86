//! MULTI, EXEC, DISCARD, WATCH and UNWATCH, in every mode, with SESSION.*
//! commands and ordinary ones mixed.
//!
//! The sidecar keeps the transaction itself ([`crate::node::Transaction`]):
//! every command it answers is checked at queue time (arity, NOAUTH, OOM)
//! and queued here; an error there makes EXEC answer EXECABORT. With an
//! upstream, the commands it forwards are queued in the upstream's own
//! MULTI, opened with the first of them (so a transaction of SESSION.*
//! commands costs the upstream nothing); the upstream answers their QUEUED.
//!
//! At EXEC:
//! - standalone, the queued commands run behind the node's [`Gate`]
//!   (`crate::node::Gate`), held alone: no other client's command runs
//!   between them;
//! - with an upstream, the upstream's EXEC runs first (its commands atomic
//!   among themselves, as Redis runs them); if it ran, the sidecar's
//!   commands run next, in order, the session writes queued one after
//!   another in one script call (atomic together: [`Batch`]); EXEC's reply
//!   has every reply in the order the commands were queued. The two kinds touch
//!   disjoint data (the sidecar's sessions, the application's keys), so the
//!   order they run in cannot be told apart by their replies.
//!
//! WATCH names sessions as well as keys: EXEC answers nil when a watched
//! session was created, changed (its version), deleted or expired since.
//! A TOUCH that does not extend the expiry is not a change; one that does,
//! and EXPIRE, raise the version and count. With an upstream the
//! keys are watched there too, and the sessions' versions are read from the
//! upstream (one read per watched name at WATCH, and again at EXEC).

use std::collections::HashSet;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};

use super::dispatch;
use crate::node::{ClientState, Node, Queued, Transaction, Watched};
use crate::protocol::ReplyWriter;
use crate::protocol::command_table::{self as table, Cmd};
use crate::protocol::frame::split_aggregate;
use crate::proxy::{EXECABORT, LOST};
use crate::sessions::Sessions;
use crate::store::now_ms;
use crate::upstream::{Batch, WriteThrough};

pub fn multi(node: &Node, client: &mut ClientState, out: &mut ReplyWriter) {
    if client.multi.is_some() {
        out.error("ERR MULTI calls can not be nested");
        return;
    }
    client.multi = Some(Transaction::default());
    if node.proxy.is_some() {
        client.proxy.begin_transaction();
    }
    out.ok();
}

/// A command inside MULTI, admitted: kept for EXEC.
pub fn queue(client: &mut ClientState, argv: &[Bytes], out: &mut ReplyWriter) {
    if let Some(transaction) = client.multi.as_mut() {
        transaction.queued.push(Queued::Here(argv.to_vec()));
    }
    out.simple("QUEUED");
}

pub async fn discard(node: &Node, client: &mut ClientState, out: &mut ReplyWriter<'_>) {
    if client.multi.take().is_none() {
        out.error("ERR DISCARD without MULTI");
        return;
    }
    client.watched.clear();
    end_upstream(node, client, out).await;
    out.ok();
}

pub async fn exec(node: &Node, client: &mut ClientState, out: &mut ReplyWriter<'_>) {
    let Some(transaction) = client.multi.take() else {
        out.error("ERR EXEC without MULTI");
        return;
    };
    let watched = std::mem::take(&mut client.watched);
    if transaction.aborted {
        end_upstream(node, client, out).await;
        out.raw(EXECABORT);
        return;
    }
    let _alone = match node.sessions {
        Sessions::Standalone(_) => Some(node.gate.exclusive().await),
        Sessions::WriteThrough(_) => None,
    };
    if changed(node, &watched).await {
        end_upstream(node, client, out).await;
        out.null_array();
        return;
    }
    // Pushes the upstream sent right after its EXEC reply: written after
    // this EXEC's, as Redis writes them.
    let mut after = bytes::BytesMut::new();
    let upstream = match &node.proxy {
        Some(proxy) => {
            let (protocol, lane) = (client.protocol, client.id() as usize);
            client
                .proxy
                .exec_upstream(proxy, protocol, lane, out.buffer(), &mut after)
                .await
                .unwrap_or_else(|_| Some(Bytes::from_static(LOST)))
        }
        None => None,
    };
    let mut upstream_replies = match upstream {
        None => Vec::new().into_iter(),
        Some(reply) => match split_aggregate(&reply) {
            Some((b'*', replies)) => replies.into_iter(),
            // Not run: nil (a watched key changed), EXECABORT (the upstream
            // refused a command at queue time), or the link was lost.
            _ => {
                out.raw(&reply);
                out.raw(&after);
                return;
            }
        },
    };
    out.array(transaction.queued.len());
    match &node.sessions {
        Sessions::WriteThrough(store) => {
            let queued = &transaction.queued;
            run_batched(node, store, client, queued, &mut upstream_replies, out).await;
        }
        Sessions::Standalone(_) => {
            for queued in &transaction.queued {
                match queued {
                    Queued::Upstream => upstream_reply(upstream_replies.next(), out),
                    Queued::Here(argv) => run_queued(node, client, argv, out).await,
                }
            }
        }
    }
    out.raw(&after);
    client.caching = None;
}

fn upstream_reply(reply: Option<Bytes>, out: &mut ReplyWriter<'_>) {
    match reply {
        Some(reply) => out.raw(&reply),
        None => out.error("ERR the upstream's EXEC reply lacks this command's reply"),
    }
}

/// A queued session write (its place and command), started, waiting for
/// its batch's call.
type Waiting<'a> = (
    usize,
    Cmd,
    Pin<Box<dyn Future<Output = BytesMut> + Send + 'a>>,
);

/// With an upstream, the queued commands' replies in order, with the
/// session writes that follow one another sent in one script call
/// ([`Batch`]): atomic together. Any other command of the sidecar's sends
/// the writes before it first, and runs after them, so every command sees
/// what the commands queued before it did.
async fn run_batched(
    node: &Node,
    store: &WriteThrough,
    client: &mut ClientState,
    queued: &[Queued],
    upstream_replies: &mut impl Iterator<Item = Bytes>,
    out: &mut ReplyWriter<'_>,
) {
    let mut protocol = out.protocol();
    let mut run = Batched {
        node,
        store,
        queued,
        batch: Batch::new(),
        waiting: Vec::new(),
        replies: Vec::with_capacity(queued.len()),
    };
    for (i, command) in queued.iter().enumerate() {
        run.replies.push(BytesMut::new());
        let argv = match command {
            Queued::Upstream => {
                let mut reply = writer(&mut run.replies[i], protocol);
                upstream_reply(upstream_replies.next(), &mut reply);
                continue;
            }
            Queued::Here(argv) => argv,
        };
        let spec = argv.first().and_then(|name| table::lookup(name));
        if let Some(spec) = spec.filter(|spec| super::is_session_write(spec.cmd)) {
            let joined = run.batch.len();
            let write = super::queued_session_write(node, spec.cmd, argv, protocol);
            let mut write: Pin<Box<dyn Future<Output = BytesMut> + Send>> =
                Box::pin(run.batch.scope(write));
            match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                Poll::Ready(reply) => run.done(client, i, spec.cmd, reply),
                Poll::Pending if run.batch.len() > joined => run.waiting.push((i, spec.cmd, write)),
                // It talks to the upstream before it writes (a lock): what
                // joined before it goes first, then it runs on its own.
                Poll::Pending => {
                    run.send(client).await;
                    let reply = write.await;
                    run.done(client, i, spec.cmd, reply);
                }
            }
            continue;
        }
        run.send(client).await;
        let mut reply = writer(&mut run.replies[i], protocol);
        run_queued(node, client, argv, &mut reply).await;
        protocol = reply.protocol();
    }
    run.send(client).await;
    for reply in &run.replies {
        out.raw(reply);
    }
}

fn writer(buf: &mut BytesMut, protocol: crate::protocol::Protocol) -> ReplyWriter<'_> {
    ReplyWriter::new(buf, protocol)
}

/// EXEC's run of the sidecar's commands with an upstream: the batch being
/// filled, the writes waiting for it, and every command's reply so far.
struct Batched<'a> {
    node: &'a Node,
    store: &'a WriteThrough,
    queued: &'a [Queued],
    batch: std::sync::Arc<Batch>,
    waiting: Vec<Waiting<'a>>,
    replies: Vec<BytesMut>,
}

impl Batched<'_> {
    /// Sends the batch and finishes the writes waiting for it; the next
    /// writes join a new batch. With none waiting, the batch is closed all
    /// the same: a write already started (one that takes a lock first)
    /// must not join a batch nobody will send.
    async fn send(&mut self, client: &mut ClientState) {
        if self.waiting.is_empty() {
            self.batch.close();
            self.batch = Batch::new();
            return;
        }
        let writes = self
            .waiting
            .drain(..)
            .map(|(i, cmd, write)| async move { (i, cmd, write.await) });
        let (_, done) = futures_util::future::join(
            self.store.send_batch(&self.batch),
            futures_util::future::join_all(writes),
        )
        .await;
        self.batch = Batch::new();
        for (i, cmd, reply) in done {
            self.done(client, i, cmd, reply);
        }
    }

    /// A write's reply; then what the connection does after a command
    /// (CLIENT TRACKING), in the order they were queued.
    fn done(&mut self, client: &mut ClientState, i: usize, cmd: Cmd, reply: BytesMut) {
        self.replies[i] = reply;
        if let Queued::Here(argv) = &self.queued[i] {
            super::after_command(self.node, client, cmd, argv);
        }
    }
}

/// One of the sidecar's queued commands, at EXEC.
async fn run_queued(
    node: &Node,
    client: &mut ClientState,
    argv: &[Bytes],
    out: &mut ReplyWriter<'_>,
) {
    let Some(spec) = argv.first().and_then(|name| table::lookup(name)) else {
        return out.error("ERR unknown command");
    };
    match spec.cmd {
        // The watches ended with EXEC; nothing goes to the upstream from
        // inside the reply being assembled.
        Cmd::Unwatch => out.ok(),
        _ => dispatch(node, client, spec, argv, out).await,
    }
}

/// Ends the upstream's side of a transaction that will not run there.
async fn end_upstream(node: &Node, client: &mut ClientState, out: &mut ReplyWriter<'_>) {
    if let Some(proxy) = &node.proxy {
        let (protocol, lane) = (client.protocol, client.id() as usize);
        // A client that cannot be written to finds out at its next write.
        let _ = client
            .proxy
            .discard_upstream(proxy, protocol, lane, out.buffer())
            .await;
    }
}

pub async fn watch(
    node: &Node,
    client: &mut ClientState,
    argv: &[Bytes],
    out: &mut ReplyWriter<'_>,
) {
    if client.multi.is_some() {
        out.error("ERR WATCH inside MULTI is not allowed");
        return;
    }
    let now = now_ms();
    let mut seen: HashSet<&Bytes> = client.watched.iter().map(|w| &w.id).collect();
    let mut added = Vec::new();
    for id in &argv[1..] {
        if seen.insert(id) {
            added.push(Watched {
                id: id.clone(),
                seen: snapshot(node, id, now).await,
            });
        }
    }
    client.watched.extend(added);
    match &node.proxy {
        // The keys are watched on the upstream too; its OK is the reply.
        Some(proxy) => {
            let (protocol, lane) = (client.protocol, client.id() as usize);
            if client
                .proxy
                .forward(proxy, protocol, lane, argv, out.buffer())
                .await
                .is_err()
            {
                out.error("ERR upstream connection lost");
            }
        }
        None => out.ok(),
    }
}

pub async fn unwatch(
    node: &Node,
    client: &mut ClientState,
    argv: &[Bytes],
    out: &mut ReplyWriter<'_>,
) -> super::CommandResult {
    client.watched.clear();
    match &node.proxy {
        Some(proxy) => {
            let (protocol, lane) = (client.protocol, client.id() as usize);
            client
                .proxy
                .forward(proxy, protocol, lane, argv, out.buffer())
                .await
                .map_err(|_| super::CommandError::err("ERR upstream connection lost"))
        }
        None => {
            out.ok();
            Ok(())
        }
    }
}

/// A session's version and creation time, or None when there is none
/// (or it cannot be read now: EXEC then aborts if it can be). With an
/// upstream, the upstream's (one read per watched name, at WATCH and at
/// EXEC), so a change made through another sidecar counts at once.
async fn snapshot(node: &Node, id: &[u8], now: u64) -> Option<(u64, u64)> {
    node.sessions
        .read_through(id, now, |s| (s.version, s.created))
        .await
        .ok()
        .flatten()
}

/// Whether any watched session differs from what WATCH saw.
async fn changed(node: &Node, watched: &[Watched]) -> bool {
    let now = now_ms();
    for w in watched {
        if snapshot(node, &w.id, now).await != w.seen {
            return true;
        }
    }
    false
}
