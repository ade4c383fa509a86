//! SESSION.EXISTS / BYUSER / COUNT / NODES

use super::write_session;
use crate::commands::{Args, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::now_ms;

/// SESSION.EXISTS id [id ...]: how many are live.
pub async fn exists(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let live = node.sessions.exists(args.rest(), now_ms()).await?;
    out.int(live as i64);
    Ok(())
}

/// SESSION.BYUSER user [WITHSESSIONS]: ids (or sessions), oldest first.
pub async fn byuser(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let user = args.required()?;
    let with_sessions = args.trailing_flag("WITHSESSIONS")?;
    let now = now_ms();
    let ids = node.sessions.by_user(user, now).await?;
    if !with_sessions {
        out.array(ids.len());
        for id in &ids {
            out.bulk(id);
        }
        return Ok(());
    }
    // Encode into a scratch buffer first: a session may expire between the
    // listing and the read, and the array length must match what follows.
    let mut sessions = bytes::BytesMut::new();
    let mut written = 0;
    {
        let mut scratch = ReplyWriter::new(&mut sessions, out.protocol());
        for id in &ids {
            let found = node
                .sessions
                .read(id, now, |s| write_session(&mut scratch, id, s))
                .await?;
            written += usize::from(found.is_some());
        }
    }
    out.array(written);
    out.raw(&sessions);
    Ok(())
}

/// SESSION.COUNT [LOCAL]: live sessions in the store, or (LOCAL) held in
/// this sidecar's memory.
pub async fn count(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let now = now_ms();
    let count = if args.trailing_flag("LOCAL")? {
        node.sessions.count_local(now)
    } else {
        node.sessions.count(now).await?
    };
    out.int(count as i64);
    Ok(())
}

/// SESSION.STREAMS: the key of every shard's events stream in the upstream,
/// in shard order (none standalone): what a consumer reads, with XREAD or
/// XREADGROUP on each, to see every event durably.
pub fn streams(node: &Node, out: &mut ReplyWriter<'_>) -> CommandResult {
    let Some(store) = node.upstream() else {
        out.array(0);
        return Ok(());
    };
    let layout = store.layout();
    out.array(layout.shards() as usize);
    for shard in 0..layout.shards() {
        out.bulk(&layout.stream_key(shard));
    }
    Ok(())
}

/// SESSION.NODES: the live sidecars known to this one: itself, the upstream
/// registry's (write-through mode) and the `--peers` that answer.
pub async fn nodes(node: &Node, out: &mut ReplyWriter<'_>) -> CommandResult {
    let nodes = node.fleet.nodes().await;
    out.array(nodes.len());
    for node in nodes {
        out.map(5);
        out.bulk(b"node");
        out.bulk(node.node.as_bytes());
        out.bulk(b"addr");
        out.bulk(node.addr.as_bytes());
        out.bulk(b"sessions");
        out.int(node.sessions);
        out.bulk(b"last_seen");
        out.int(node.last_seen as i64);
        out.bulk(b"self");
        out.int(i64::from(node.is_self));
    }
    Ok(())
}
