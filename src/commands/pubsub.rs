//! SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE and PUBLISH on the local
//! broker. Each (un)subscription gets its own reply, as in Redis: a push frame
//! in RESP3, an array in RESP2.

use bytes::Bytes;

use super::{Args, CommandResult};
use crate::node::ClientState;
use crate::node::Node;
use crate::protocol::ReplyWriter;

#[derive(Clone, Copy)]
enum Kind {
    Channel,
    Pattern,
}

fn confirm(out: &mut ReplyWriter, what: &[u8], name: Option<&[u8]>, count: usize) {
    out.push(3);
    out.bulk(what);
    out.bulk_or_null(name);
    out.int(count as i64);
}

fn add(node: &Node, client: &mut ClientState, kind: Kind, names: &[Bytes], out: &mut ReplyWriter) {
    let subscriber = client.subscriber();
    // A subscriber can be where another client's invalidations are sent
    // (CLIENT TRACKING ... REDIRECT, on `__redis__:invalidate`).
    node.tracking
        .register_endpoint(client.id(), subscriber.clone());
    for name in names {
        let name = Bytes::copy_from_slice(name);
        let reply: &[u8] = match kind {
            Kind::Channel => {
                node.pubsub
                    .subscribe(client.id(), name.clone(), &subscriber);
                client.channels.insert(name.clone());
                b"subscribe"
            }
            Kind::Pattern => {
                node.pubsub
                    .psubscribe(client.id(), name.clone(), &subscriber);
                client.patterns.insert(name.clone());
                b"psubscribe"
            }
        };
        confirm(out, reply, Some(&name), client.subscription_count());
    }
    client.sync_subscription_counts();
}

fn remove(
    node: &Node,
    client: &mut ClientState,
    kind: Kind,
    names: &[Bytes],
    out: &mut ReplyWriter,
) {
    let (reply, current): (&[u8], Vec<Bytes>) = match kind {
        Kind::Channel => (b"unsubscribe", client.channels.iter().cloned().collect()),
        Kind::Pattern => (b"punsubscribe", client.patterns.iter().cloned().collect()),
    };
    let names = if names.is_empty() {
        &current[..]
    } else {
        names
    };
    if names.is_empty() {
        confirm(out, reply, None, client.subscription_count());
    }
    for name in names {
        match kind {
            Kind::Channel => {
                node.pubsub.unsubscribe(client.id(), name);
                client.channels.remove(name);
            }
            Kind::Pattern => {
                node.pubsub.punsubscribe(client.id(), name);
                client.patterns.remove(name);
            }
        }
        confirm(out, reply, Some(name), client.subscription_count());
    }
    client.sync_subscription_counts();
}

pub async fn subscribe(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    add(node, client, Kind::Channel, args.rest(), out);
    relayed(node).await;
    Ok(())
}

pub async fn psubscribe(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    add(node, client, Kind::Pattern, args.rest(), out);
    relayed(node).await;
    Ok(())
}

/// In write-through mode, events come from the upstream: the reply to a
/// subscription waits until they are relayed here.
async fn relayed(node: &Node) {
    if let Some(store) = node.upstream() {
        store.wait_relaying().await;
    }
}

pub fn unsubscribe(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args,
    out: &mut ReplyWriter,
) -> CommandResult {
    remove(node, client, Kind::Channel, args.rest(), out);
    Ok(())
}

pub fn punsubscribe(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args,
    out: &mut ReplyWriter,
) -> CommandResult {
    remove(node, client, Kind::Pattern, args.rest(), out);
    Ok(())
}

pub fn publish(node: &Node, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let channel = Bytes::copy_from_slice(args.required()?);
    let message = Bytes::copy_from_slice(args.required()?);
    out.int(node.pubsub.publish(&channel, &message) as i64);
    Ok(())
}

/// Drops every subscription of a client (RESET, disconnect), and its queue
/// of messages not yet delivered.
pub fn unsubscribe_all(node: &Node, client: &mut ClientState) {
    client.subscriber = None;
    for channel in client.channels.drain() {
        node.pubsub.unsubscribe(client.info.id, &channel);
    }
    for pattern in client.patterns.drain() {
        node.pubsub.punsubscribe(client.info.id, &pattern);
    }
    client.sync_subscription_counts();
}
