//! SESSION.DEL / KILLUSER

use crate::commands::{Args, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::now_ms;

/// SESSION.DEL id [id ...]: how many were deleted.
pub async fn del(shared: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    out.int(shared.sessions.delete(args.rest(), now_ms(), None).await? as i64);
    Ok(())
}

/// SESSION.KILLUSER user: deletes every session of the user.
pub async fn killuser(
    shared: &Node,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let user = args.required()?;
    out.int(shared.sessions.kill_user(user, now_ms()).await? as i64);
    Ok(())
}
