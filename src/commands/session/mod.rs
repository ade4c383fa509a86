//! SESSION.* commands: parse the arguments, call the store, encode the reply.

mod attrs;
mod binding;
mod create;
mod delete;
mod expiry;
mod get;
mod migrate;
mod query;
mod update;

pub use attrs::{attr_del, attr_get, attr_incrby, attr_set};
pub use binding::{bind, byconn, unbind};
pub use create::create;
pub use delete::{del, killuser};
pub use expiry::{expire, touch, ttl};
pub use get::get;
pub use migrate::{drain, import, migrate, peerauth};
pub use query::{byuser, count, exists, nodes, streams};
pub use update::update;

use bytes::Bytes;

use super::{Args, CommandError};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::{FIELD_COUNT, Session};

/// Encodes a session as the map of SESSION.GET. Field names are constant
/// bulk strings, written as pre-encoded bytes.
fn write_session(out: &mut ReplyWriter, id: &[u8], s: &Session) {
    out.map(FIELD_COUNT);
    out.raw(b"$2\r\nid\r\n");
    out.bulk(id);
    out.raw(b"$4\r\nuser\r\n");
    out.bulk_or_null(s.user.as_deref());
    out.raw(b"$4\r\nconn\r\n");
    out.bulk_or_null(s.conn.as_deref());
    out.raw(b"$6\r\nstatus\r\n");
    out.bulk(s.status.as_str().as_bytes());
    out.raw(b"$4\r\nnode\r\n");
    out.bulk(&s.node);
    out.raw(b"$7\r\ncreated\r\n");
    out.int(s.created as i64);
    out.raw(b"$11\r\nlast_active\r\n");
    out.int(s.last_active() as i64);
    out.raw(b"$7\r\nexpires\r\n");
    out.int(s.expires as i64);
    out.raw(b"$3\r\nttl\r\n");
    out.int(s.ttl as i64);
    out.raw(b"$7\r\nversion\r\n");
    out.int(s.version as i64);
    out.raw(b"$5\r\nattrs\r\n");
    out.map(s.attrs.len());
    for (name, value) in s.attrs.iter() {
        out.bulk(name);
        out.bulk(value);
    }
}

/// A draining sidecar takes no new sessions or connections: they belong on
/// the sidecars its sessions are moving to.
fn refuse_while_draining(node: &Node) -> Result<(), CommandError> {
    if node.migration.is_draining() {
        return Err(crate::store::StoreError::Draining.into());
    }
    Ok(())
}

/// The next argument as an id, user, conn or attribute name within the limit.
fn name<'a>(node: &Node, args: &mut Args<'a>, what: &str) -> Result<&'a Bytes, CommandError> {
    let value = args.required()?;
    check_name(node, value, what)?;
    Ok(value)
}

fn check_name(node: &Node, value: &[u8], what: &str) -> Result<(), CommandError> {
    let max = node.sessions.limits().max_name_len;
    if value.len() > max {
        return Err(CommandError::err(format!(
            "ERR {what} is longer than {max} bytes"
        )));
    }
    Ok(())
}

/// Refuses a request naming more attributes than a session may hold: it
/// could only be repeats, and it would cost time (and, for reads, reply
/// memory) out of proportion, under the session's lock.
fn check_attr_count(node: &Node, count: usize) -> Result<(), CommandError> {
    let max = node.sessions.limits().max_attrs;
    if count > max {
        return Err(CommandError::err(format!(
            "ERR too many attributes (max {max})"
        )));
    }
    Ok(())
}

/// The next two arguments as an attribute name and value within the limits.
fn attribute(node: &Node, args: &mut Args) -> Result<(Bytes, Bytes), CommandError> {
    let name = name(node, args, "attribute name")?.clone();
    let value = args.required()?.clone();
    let max = node.sessions.limits().max_value_len;
    if value.len() > max {
        return Err(CommandError::err(format!(
            "ERR attribute value is longer than {max} bytes"
        )));
    }
    Ok((name, value))
}

/// A TTL argument in seconds (`TTL`) or milliseconds (`PTTL`), as ms.
fn ttl_ms(node: &Node, args: &mut Args, unit_ms: i64) -> Result<u64, CommandError> {
    checked_ttl(node, args.integer()?, unit_ms)
}

/// `value` units of `unit_ms`, as ms, if positive and within the limit.
fn checked_ttl(node: &Node, value: i64, unit_ms: i64) -> Result<u64, CommandError> {
    let ms = value
        .checked_mul(unit_ms)
        .filter(|&ms| node.sessions.valid_ttl(ms));
    ms.map(|ms| ms as u64)
        .ok_or_else(|| CommandError::err("ERR invalid TTL"))
}
