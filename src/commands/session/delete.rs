//! SESSION.DEL / KILLUSER

use crate::commands::{Args, CommandResult};
use crate::protocol::ReplyWriter;
use crate::server::Shared;
use crate::store::now_ms;

/// SESSION.DEL id [id ...]: how many were deleted.
pub fn del(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    out.int(shared.store.delete(args.rest(), now_ms(), None) as i64);
    Ok(())
}

/// SESSION.KILLUSER user: deletes every session of the user.
pub fn killuser(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let user = args.required()?;
    out.int(shared.store.kill_user(user, now_ms()) as i64);
    Ok(())
}
