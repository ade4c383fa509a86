//! SESSION.TOUCH / TTL / EXPIRE

use crate::commands::{Args, CommandResult};
use crate::protocol::ReplyWriter;
use crate::server::Shared;
use crate::store::now_ms;

/// SESSION.TOUCH id: ms left after the heartbeat, or -2.
pub fn touch(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let id = args.required()?;
    out.int(shared.store.touch(id, now_ms()).map_or(-2, |ms| ms as i64));
    Ok(())
}

/// SESSION.TTL id: ms left, or -2.
pub fn ttl(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let id = args.required()?;
    out.int(shared.store.ttl(id, now_ms()).map_or(-2, |ms| ms as i64));
    Ok(())
}

/// SESSION.EXPIRE id seconds: 1, or 0 when missing.
pub fn expire(shared: &Shared, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let id = args.required()?;
    let ttl = super::ttl_ms(shared, args, 1000)?;
    out.int(i64::from(shared.store.expire(id, ttl, now_ms())));
    Ok(())
}
