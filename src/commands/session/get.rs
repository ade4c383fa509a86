//! SESSION.GET id [JSON]

use super::write_session;
use crate::commands::{Args, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::now_ms;

pub async fn get(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let id = args.required()?;
    let json = args.trailing_flag("JSON")?;
    // With --keep-json, the JSON is kept for the next read unless memory
    // is short: kept forms count in the sessions' memory.
    let maxmemory = node.config.maxmemory as usize;
    let keep = json
        && node.config.keep_json
        && (maxmemory == 0 || node.sessions.memory() < maxmemory / 10 * 9);
    let found = if keep {
        node.sessions
            .read_mut(id, now_ms(), |s| {
                out.bulk_with(|buf| s.write_json_kept(id, buf))
            })
            .await?
    } else {
        node.sessions
            .read(id, now_ms(), |s| match json {
                true => out.bulk_with(|buf| s.write_json(id, buf)),
                false => write_session(out, id, s),
            })
            .await?
    };
    if found.is_none() {
        out.null();
    }
    Ok(())
}
