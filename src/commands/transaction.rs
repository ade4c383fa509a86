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
//!   commands run next, in order, each atomic on its own; EXEC's reply has
//!   every reply in the order the commands were queued. The two kinds touch
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

use bytes::Bytes;

use super::dispatch;
use crate::node::{ClientState, Node, Queued, Transaction, Watched};
use crate::protocol::ReplyWriter;
use crate::protocol::command_table::{self as table, Cmd};
use crate::protocol::frame::split_aggregate;
use crate::proxy::{EXECABORT, LOST};
use crate::sessions::Sessions;
use crate::store::now_ms;

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
    for queued in transaction.queued {
        match queued {
            Queued::Upstream => match upstream_replies.next() {
                Some(reply) => out.raw(&reply),
                None => out.error("ERR the upstream's EXEC reply lacks this command's reply"),
            },
            Queued::Here(argv) => run_queued(node, client, &argv, out).await,
        }
    }
    out.raw(&after);
    client.caching = None;
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
