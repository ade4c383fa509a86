//! SESSION.UPDATE id [IFVERSION v] [USER user] [CONN conn] [STATUS active|disconnected]
//! [TTL s | PTTL ms] [ATTR name value]... [DELATTR name]...

use super::{attribute, check_attr_count, name, refuse_while_draining, ttl_ms};
use crate::commands::{Args, CommandError, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::{Status, UpdateSession, now_ms};

pub async fn update(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let id = args.required()?;
    let mut request = UpdateSession::default();
    while let Some(keyword) = args.keyword() {
        if keyword.is("IFVERSION") && request.if_version.is_none() {
            let version = args.integer()?;
            request.if_version =
                Some(u64::try_from(version).map_err(|_| CommandError::NotInteger)?);
        } else if keyword.is("USER") && request.user.is_none() {
            request.user = Some(name(node, args, "user")?.clone());
        } else if keyword.is("CONN") && request.conn.is_none() {
            request.conn = Some(name(node, args, "conn")?.clone());
        } else if keyword.is("STATUS") && request.status.is_none() {
            request.status = Some(Status::parse(args.required()?).ok_or(CommandError::Syntax)?);
        } else if keyword.is("TTL") && request.ttl_ms.is_none() {
            request.ttl_ms = Some(ttl_ms(node, args, 1000)?);
        } else if keyword.is("PTTL") && request.ttl_ms.is_none() {
            request.ttl_ms = Some(ttl_ms(node, args, 1)?);
        } else if keyword.is("ATTR") {
            request.set_attrs.push(attribute(node, args)?);
            check_attr_count(node, request.set_attrs.len())?;
        } else if keyword.is("DELATTR") {
            request.del_attrs.push(args.required()?.clone());
            check_attr_count(node, request.del_attrs.len())?;
        } else {
            return Err(CommandError::Syntax);
        }
    }
    if request.conn.is_some() {
        // Binding a connection here is what a draining sidecar refuses.
        refuse_while_draining(node)?;
    }
    let version = node.sessions.update(id, &request, now_ms()).await?;
    out.int(version as i64);
    Ok(())
}
