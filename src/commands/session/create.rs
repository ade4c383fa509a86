//! SESSION.CREATE [ID id] [USER user] [CONN conn] [TTL s | PTTL ms] [MAXPERUSER n] [ATTR name value]...

use super::{attribute, check_attr_count, name, refuse_while_draining, ttl_ms};
use crate::commands::{Args, CommandError, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::{CreateSession, now_ms};

pub async fn create(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let mut request = CreateSession::default();
    while let Some(keyword) = args.keyword() {
        if keyword.is("ID") && request.id.is_none() {
            request.id = Some(name(node, args, "id")?.clone());
        } else if keyword.is("USER") && request.user.is_none() {
            request.user = Some(name(node, args, "user")?.clone());
        } else if keyword.is("CONN") && request.conn.is_none() {
            request.conn = Some(name(node, args, "conn")?.clone());
        } else if keyword.is("TTL") && request.ttl_ms.is_none() {
            request.ttl_ms = Some(ttl_ms(node, args, 1000)?);
        } else if keyword.is("PTTL") && request.ttl_ms.is_none() {
            request.ttl_ms = Some(ttl_ms(node, args, 1)?);
        } else if keyword.is("MAXPERUSER") && request.max_per_user.is_none() {
            let n = args.integer()?;
            if n <= 0 {
                return Err(CommandError::err("ERR MAXPERUSER must be positive"));
            }
            request.max_per_user = Some(n as usize);
        } else if keyword.is("ATTR") {
            request.attrs.push(attribute(node, args)?);
        } else {
            return Err(CommandError::Syntax);
        }
    }
    if request.max_per_user.is_some() && request.user.is_none() {
        return Err(CommandError::err("ERR MAXPERUSER requires USER"));
    }
    check_attr_count(node, request.attrs.len())?;
    refuse_while_draining(node)?;
    let id = node.sessions.create(request, now_ms()).await?;
    out.bulk(&id);
    Ok(())
}
