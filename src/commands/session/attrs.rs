//! SESSION.ATTR.SET / ATTR.GET / ATTR.DEL / ATTR.INCRBY

use super::{attribute, check_attr_count, name};
use crate::commands::{Args, CommandError, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::now_ms;

/// SESSION.ATTR.SET id name value [name value ...]
pub async fn attr_set(
    node: &Node,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let id = args.required()?;
    if !args.remaining().is_multiple_of(2) {
        return Err(CommandError::err(
            "ERR wrong number of arguments for 'session.attr.set' command",
        ));
    }
    check_attr_count(node, args.remaining() / 2)?;
    let mut pairs = Vec::with_capacity(args.remaining() / 2);
    while !args.is_empty() {
        pairs.push(attribute(node, args)?);
    }
    let version = node.sessions.attr_set(id, &pairs, now_ms()).await?;
    out.int(version as i64);
    Ok(())
}

/// SESSION.ATTR.GET id name [name ...]
pub async fn attr_get(
    node: &Node,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let id = args.required()?;
    let names = args.rest();
    check_attr_count(node, names.len())?;
    let found = node
        .sessions
        .read(id, now_ms(), |s| {
            out.array(names.len());
            for name in names {
                out.bulk_or_null(s.attr(name));
            }
        })
        .await?;
    if found.is_none() {
        out.null();
    }
    Ok(())
}

/// SESSION.ATTR.DEL id name [name ...]
pub async fn attr_del(
    node: &Node,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let id = args.required()?;
    check_attr_count(node, args.remaining())?;
    let removed = node.sessions.attr_del(id, args.rest(), now_ms()).await?;
    out.int(removed as i64);
    Ok(())
}

/// SESSION.ATTR.INCRBY id name increment
pub async fn attr_incrby(
    node: &Node,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let id = args.required()?;
    let attr = name(node, args, "attribute name")?;
    let increment = args.integer()?;
    let value = node
        .sessions
        .attr_incrby(id, attr, increment, now_ms())
        .await?;
    out.int(value);
    Ok(())
}
