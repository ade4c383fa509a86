//! SESSION.BIND / UNBIND / BYCONN

use super::{name, refuse_while_draining};
use crate::commands::{Args, CommandError, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::now_ms;

/// SESSION.BIND id conn: the new version.
pub async fn bind(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let id = args.required()?;
    let conn = name(node, args, "conn")?;
    refuse_while_draining(node)?;
    out.int(node.sessions.bind(id, conn, now_ms()).await? as i64);
    Ok(())
}

/// SESSION.UNBIND id [GRACE seconds]: the new version.
pub async fn unbind(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let id = args.required()?;
    let grace = match args.keyword() {
        None => None,
        Some(k) if k.is("GRACE") => {
            let seconds = args.integer()?;
            let ms = u64::try_from(seconds)
                .ok()
                .and_then(|s| s.checked_mul(1000));
            Some(ms.ok_or_else(|| CommandError::err("ERR invalid GRACE"))?)
        }
        Some(_) => return Err(CommandError::Syntax),
    };
    args.finish()?;
    out.int(node.sessions.unbind(id, grace, now_ms()).await? as i64);
    Ok(())
}

/// SESSION.BYCONN conn: the bound session's id, or nil.
pub async fn byconn(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let conn = args.required()?;
    let id = node.sessions.by_conn(conn, now_ms()).await?;
    out.bulk_or_null(id.as_deref());
    Ok(())
}
