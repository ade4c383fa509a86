//! SESSION.EXISTS / BYUSER / COUNT / NODES

use super::write_session;
use crate::commands::{Args, CommandResult};
use crate::protocol::ReplyWriter;
use crate::server::Shared;
use crate::store::now_ms;

/// SESSION.EXISTS id [id ...]: how many are live.
pub fn exists(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let now = now_ms();
    let live = args
        .rest()
        .iter()
        .filter(|id| shared.store.exists(id, now))
        .count();
    out.int(live as i64);
    Ok(())
}

/// SESSION.BYUSER user [WITHSESSIONS]: ids (or sessions), oldest first.
pub fn byuser(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let user = args.required()?;
    let with_sessions = args.trailing_flag("WITHSESSIONS")?;
    let now = now_ms();
    let ids = shared.store.by_user(user, now);
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
            if shared
                .store
                .read(id, now, |s| write_session(&mut scratch, id, s))
                .is_some()
            {
                written += 1;
            }
        }
    }
    out.array(written);
    out.raw(&sessions);
    Ok(())
}

/// SESSION.COUNT [LOCAL]: live sessions (standalone: the store is local).
pub fn count(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    // Standalone, the local store is the whole store: LOCAL changes nothing.
    args.trailing_flag("LOCAL")?;
    out.int(shared.store.count(now_ms()) as i64);
    Ok(())
}

/// SESSION.NODES: the live sidecars known to this one (standalone: itself).
pub fn nodes(shared: &Shared, out: &mut ReplyWriter) -> CommandResult {
    let now = now_ms();
    out.array(1);
    out.map(5);
    out.bulk(b"node");
    out.bulk(shared.store.node());
    out.bulk(b"addr");
    out.bulk(shared.advertise.as_bytes());
    out.bulk(b"sessions");
    out.int(shared.store.count(now) as i64);
    out.bulk(b"last_seen");
    out.int(now as i64);
    out.bulk(b"self");
    out.int(1);
    Ok(())
}
