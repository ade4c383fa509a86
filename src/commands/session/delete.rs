//! SESSION.DEL / KILLUSER

use crate::commands::{Args, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::now_ms;

/// SESSION.DEL id [id ...]: how many were deleted.
pub async fn del(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    out.int(node.sessions.delete(args.rest(), now_ms(), None).await? as i64);
    Ok(())
}

/// SESSION.KILLUSER user: deletes every session of the user.
pub async fn killuser(
    node: &Node,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let user = args.required()?;
    out.int(node.sessions.kill_user(user, now_ms()).await? as i64);
    Ok(())
}
