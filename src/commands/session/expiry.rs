//! SESSION.TOUCH / TTL / EXPIRE

use crate::commands::{Args, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::now_ms;

/// SESSION.TOUCH id: ms left after the heartbeat, or -2.
pub async fn touch(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let id = args.required()?;
    let left = node.sessions.touch(id, now_ms()).await?;
    out.int(left.map_or(-2, |ms| ms as i64));
    Ok(())
}

/// SESSION.TTL id: ms left, or -2.
pub async fn ttl(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let id = args.required()?;
    let left = node.sessions.ttl(id, now_ms()).await?;
    out.int(left.map_or(-2, |ms| ms as i64));
    Ok(())
}

/// SESSION.EXPIRE id seconds: 1, or 0 when missing. A ttl of zero or less
/// deletes the session, as Redis's EXPIRE does with a time in the past.
pub async fn expire(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let id = args.required()?;
    let seconds = args.integer()?;
    let now = now_ms();
    if seconds <= 0 {
        let deleted = node
            .sessions
            .delete(std::slice::from_ref(id), now, Some("expire"))
            .await?;
        out.int(deleted as i64);
        return Ok(());
    }
    let ttl = super::checked_ttl(node, seconds, 1000)?;
    out.int(i64::from(node.sessions.expire(id, ttl, now).await?));
    Ok(())
}
