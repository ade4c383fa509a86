//! SESSION.GET id [JSON]

use super::write_session;
use crate::commands::{Args, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::now_ms;

pub async fn get(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let id = args.required()?;
    let json = args.trailing_flag("JSON")?;
    let found = node
        .sessions
        .read(id, now_ms(), |s| {
            if json {
                out.bulk_with(|buf| s.write_json(id, buf));
            } else {
                write_session(out, id, s);
            }
        })
        .await?;
    if found.is_none() {
        out.null();
    }
    Ok(())
}
