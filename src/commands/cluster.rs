//! CLUSTER: the sidecar presents itself as a one-node cluster that serves
//! every slot at its own address, in every mode, so that cluster-mode clients
//! (ioredis Cluster, go-redis ClusterClient, Lettuce, redis-py RedisCluster,
//! redis-rs) keep talking to it: with a cluster upstream, the passthrough
//! routes each command to the master of its slot itself.

use super::args::Keyword;
use super::{Args, CommandError, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::protocol::slot::{SLOTS, slot_of};

/// This node's 40-hex-digit cluster id, stable for its node id.
fn node_id(node: &Node) -> String {
    let name = node.sessions.node();
    // Three FNV-1a hashes of the node id, salted: 160 bits of hex.
    let fnv = |salt: u8| {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in name.iter().chain(std::iter::once(&salt)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    };
    format!("{:016x}{:016x}{:08x}", fnv(1), fnv(2), fnv(3) as u32)
}

/// Where clients reach this sidecar: its advertised address.
fn endpoint(node: &Node) -> (String, u16) {
    let advertise = node.fleet.advertise();
    match advertise.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.parse().unwrap_or(node.listen_addr.port()),
        ),
        None => (advertise.to_string(), node.listen_addr.port()),
    }
}

pub fn cluster(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let sub = args.required()?;
    let keyword = Keyword::of(sub);
    let id = node_id(node);
    let (host, port) = endpoint(node);
    let last = (SLOTS - 1) as i64;
    if keyword.is("MYID") {
        args.finish()?;
        out.bulk(id.as_bytes());
    } else if keyword.is("KEYSLOT") {
        let key = args.required()?;
        args.finish()?;
        out.int(i64::from(slot_of(key)));
    } else if keyword.is("SLOTS") {
        args.finish()?;
        out.array(1);
        out.array(3);
        out.int(0);
        out.int(last);
        out.array(3);
        out.bulk(host.as_bytes());
        out.int(i64::from(port));
        out.bulk(id.as_bytes());
    } else if keyword.is("SHARDS") {
        args.finish()?;
        out.array(1);
        out.map(2);
        out.bulk(b"slots");
        out.array(2);
        out.int(0);
        out.int(last);
        out.bulk(b"nodes");
        out.array(1);
        out.map(7);
        out.bulk(b"id");
        out.bulk(id.as_bytes());
        out.bulk(b"port");
        out.int(i64::from(port));
        out.bulk(b"ip");
        out.bulk(host.as_bytes());
        out.bulk(b"endpoint");
        out.bulk(host.as_bytes());
        out.bulk(b"role");
        out.bulk(b"master");
        out.bulk(b"replication-offset");
        out.int(0);
        out.bulk(b"health");
        out.bulk(b"online");
    } else if keyword.is("NODES") {
        args.finish()?;
        let line = format!("{id} {host}:{port}@{port} myself,master - 0 0 1 connected 0-{last}\n");
        out.verbatim(&line);
    } else if keyword.is("INFO") {
        args.finish()?;
        let info = format!(
            "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:{SLOTS}\r\n\
             cluster_slots_ok:{SLOTS}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\n\
             cluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\n\
             cluster_my_epoch:1\r\ncluster_stats_messages_sent:0\r\n\
             cluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n"
        );
        out.verbatim(&info);
    } else {
        let name = String::from_utf8_lossy(sub);
        return Err(CommandError::err(format!(
            "ERR unknown subcommand '{name}'. Try CLUSTER HELP."
        )));
    }
    Ok(())
}
