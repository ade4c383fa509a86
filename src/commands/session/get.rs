//! SESSION.GET id [JSON]

use super::write_session;
use crate::commands::{Args, CommandResult};
use crate::protocol::ReplyWriter;
use crate::server::Shared;
use crate::store::now_ms;

pub fn get(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let id = args.required()?;
    let json = args.trailing_flag("JSON")?;
    let found = shared.store.read(id, now_ms(), |s| {
        if json {
            out.bulk(&s.to_json(id));
        } else {
            write_session(out, id, s);
        }
    });
    if found.is_none() {
        out.null();
    }
    Ok(())
}
