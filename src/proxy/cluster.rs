//! Passthrough to a Redis Cluster: each command goes to the master that
//! serves its first key's hash slot, through that node's pool.
//!
//! The slot map comes from CLUSTER SLOTS (asked of the seeds and the nodes
//! already known) and is fetched again whenever a node answers MOVED. MOVED
//! and ASK are followed for the client: the command is sent again to the node
//! named (after ASKING, for ASK) and the client only sees the final reply.
//! Only the first key routes a command: a node checks the others and answers
//! CROSSSLOT itself when they are in another slot, which the client gets
//! verbatim, as from Redis.
//!
//! The sidecar looks like one Redis, so the commands about the whole keyspace
//! ask every master: DBSIZE sums, KEYS joins, RANDOMKEY takes any key, and
//! SCAN walks the masters one after the other, its cursor carrying which
//! master (the low [`SCAN_SLOT_BITS`] bits: a slot it serves, its lowest,
//! which survives a failover) and where in it (the rest).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis::{ConnectionInfo, Value};
use tokio::sync::oneshot;

use super::endpoint::{Endpoint, encode_command};
use super::pool::{Delivery, Failure, Pool, PoolSettings};
use super::{Batch, LOST, UNAVAILABLE};
use crate::protocol::Protocol;
use crate::protocol::frame::{FrameScanner, bulk_payload, split_aggregate};
use crate::protocol::slot::SLOTS;
pub use crate::protocol::slot::slot_of;

/// How long to fail at once after the slot map could not be fetched.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Redirections followed for one command before its last reply is given.
const MAX_REDIRECTIONS: usize = 5;

/// Bits of a SCAN cursor that name the master it is at (by a slot it
/// serves), below the master's own cursor.
pub const SCAN_SLOT_BITS: u32 = 14;

/// Where a command goes on a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The master of this slot (the first key's).
    Slot(u16),
    /// Any master: the command has no key.
    AnyNode,
    /// Every master, the replies made one (an error if any master answered
    /// one).
    EveryNode(Merge),
    /// SCAN, at the master serving this slot; the command carries the
    /// master's own cursor.
    Scan(u16),
}

/// How the replies of a command sent to every master become one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// The first master's: scripts and functions must be loaded (and
    /// flushed) wherever the keys they will run on live, and FLUSHALL and
    /// FLUSHDB mean the whole cluster.
    First,
    /// The sum of the integers (DBSIZE).
    Sum,
    /// One array of every master's elements (KEYS).
    Concat,
    /// The first that is not nil (RANDOMKEY).
    AnyValue,
    /// INFO keyspace's `dbN:keys=..,expires=..,avg_ttl=..` lines, summed
    /// per database (the sidecar's own INFO asks it of every master).
    Keyspace,
}

/// Where `argv` goes on a cluster.
pub fn route(argv: &[Bytes]) -> Route {
    let Some(name) = argv.first() else {
        return Route::AnyNode;
    };
    let is = |word: &[u8]| name.eq_ignore_ascii_case(word);
    let configures = is(b"config") && argv.get(1).is_some_and(|s| !s.eq_ignore_ascii_case(b"get"));
    let merge =
        if is(b"script") || is(b"function") || is(b"flushall") || is(b"flushdb") || configures {
            Merge::First
        } else if is(b"dbsize") {
            Merge::Sum
        } else if is(b"keys") {
            Merge::Concat
        } else if is(b"randomkey") {
            Merge::AnyValue
        } else {
            return first_key(argv).map_or(Route::AnyNode, |key| Route::Slot(slot_of(key)));
        };
    Route::EveryNode(merge)
}

/// Whether `argv` is about the whole keyspace (asked of every master, or
/// SCAN): answered through the router even for a client holding a
/// connection of its own, outside a transaction.
pub fn about_the_keyspace(argv: &[Bytes]) -> bool {
    is_scan(argv) || matches!(route(argv), Route::EveryNode(how) if how != Merge::First)
}

fn is_scan(argv: &[Bytes]) -> bool {
    argv.first()
        .is_some_and(|name| name.eq_ignore_ascii_case(b"scan"))
}

/// Encodes `argv` for the cluster into `out` and says where it goes: as it
/// is, except SCAN, whose cursor is split into the master to ask and that
/// master's cursor (a cursor that is not a number goes to any master as it
/// is, which answers Redis's error).
pub fn prepare(argv: &[Bytes], out: &mut BytesMut) -> Route {
    let cursor = argv
        .get(1)
        .filter(|_| is_scan(argv))
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok());
    let Some(cursor) = cursor else {
        encode_command(out, argv);
        return route(argv);
    };
    let slot = cursor & ((1 << SCAN_SLOT_BITS) - 1);
    let own = (cursor >> SCAN_SLOT_BITS).to_string();
    let mut rewritten: Vec<&[u8]> = argv.iter().map(|a| &a[..]).collect();
    rewritten[1] = own.as_bytes();
    encode_command(out, &rewritten);
    Route::Scan(slot as u16)
}

/// A master's SCAN reply with the cursor made the cluster's: the same master
/// further on (named by `slot`, as the client's cursor named it), the next
/// master (by lowest slot) from its start, or 0 after the last one. Anything
/// but a cursor-and-keys array (an error) is left as it is.
fn scan_reply(reply: &Bytes, slot: u16, topology: &Topology) -> Bytes {
    let parts = match split_aggregate(reply) {
        Some((b'*', parts)) if parts.len() == 2 => parts,
        _ => return reply.clone(),
    };
    let own = bulk_payload(&parts[0])
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u64>().ok());
    let cursor = match own {
        None => return reply.clone(),
        Some(0) => topology
            .scan_node(slot)
            .and_then(|here| topology.next_first_slot(here))
            .map_or(0, u64::from),
        Some(own) if own >> (64 - SCAN_SLOT_BITS) == 0 => (own << SCAN_SLOT_BITS) | u64::from(slot),
        Some(_) => {
            return Bytes::from_static(b"-ERR the node's SCAN cursor is too large to carry\r\n");
        }
    };
    let mut out = BytesMut::with_capacity(reply.len() + 8);
    out.extend_from_slice(b"*2\r\n");
    encode_bulk(&mut out, cursor.to_string().as_bytes());
    out.extend_from_slice(&parts[1]);
    out.freeze()
}

/// Every master's reply to one command, made one.
fn merge(how: Merge, parts: &[Bytes]) -> Bytes {
    let is_error = |r: &[u8]| matches!(r.first(), Some(b'-' | b'!'));
    if let Some(error) = parts.iter().find(|p| is_error(p)) {
        return error.clone();
    }
    let Some(first) = parts.first() else {
        return Bytes::from_static(UNAVAILABLE);
    };
    // `<kind><number>\r\n<rest>`, as (number, rest).
    let header = |part: &Bytes, kind: u8| -> Option<(i64, Bytes)> {
        let rest = part.strip_prefix(&[kind])?;
        let eol = rest.iter().position(|&b| b == b'\r')?;
        let n = crate::protocol::parse_i64(&rest[..eol])?;
        Some((n, part.slice(1 + eol + 2..)))
    };
    match how {
        Merge::First => first.clone(),
        Merge::Sum => {
            let mut sum: i64 = 0;
            for part in parts {
                let Some((n, _)) = header(part, b':') else {
                    return part.clone();
                };
                sum = sum.saturating_add(n);
            }
            Bytes::from(format!(":{sum}\r\n"))
        }
        Merge::Concat => {
            let mut count: i64 = 0;
            let mut elements = BytesMut::new();
            for part in parts {
                let Some((n, rest)) = header(part, b'*') else {
                    return part.clone();
                };
                count += n.max(0);
                elements.extend_from_slice(&rest);
            }
            let mut out = BytesMut::from(format!("*{count}\r\n").as_bytes());
            out.extend_from_slice(&elements);
            out.freeze()
        }
        Merge::AnyValue => {
            // A master picked at random among those that have a key.
            let nil = |p: &[u8]| matches!(p, b"$-1\r\n" | b"_\r\n" | b"*-1\r\n");
            let found: Vec<&Bytes> = parts.iter().filter(|p| !nil(p)).collect();
            let pick = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8);
            match found.len() {
                0 => first.clone(),
                n => found[(pick % n as u64) as usize].clone(),
            }
        }
        Merge::Keyspace => {
            let mut text = String::from("# Keyspace\r\n");
            let texts = parts.iter().filter_map(|p| bulk_payload(p));
            for line in keyspace_sum(texts.map(String::from_utf8_lossy)) {
                text.push_str(&line);
                text.push_str("\r\n");
            }
            let mut out = BytesMut::new();
            encode_bulk(&mut out, text.as_bytes());
            out.freeze()
        }
    }
}

/// The `dbN:keys=..,expires=..,avg_ttl=..` lines of several INFO keyspace
/// texts, one per database: keys and expires summed, avg_ttl weighted by
/// the expires. Other lines and fields are left out.
pub fn keyspace_sum<S: AsRef<str>>(texts: impl Iterator<Item = S>) -> Vec<String> {
    let mut dbs: std::collections::BTreeMap<u32, (u64, u64, u128)> = Default::default();
    for text in texts {
        for line in text.as_ref().lines() {
            let Some((db, fields)) = line.trim().split_once(':') else {
                continue;
            };
            let Some(number) = db.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let (mut keys, mut expires, mut avg_ttl) = (0u64, 0u64, 0u64);
            for field in fields.split(',') {
                let Some((name, value)) = field.split_once('=') else {
                    continue;
                };
                let value = value.parse::<u64>().unwrap_or(0);
                match name {
                    "keys" => keys = value,
                    "expires" => expires = value,
                    "avg_ttl" => avg_ttl = value,
                    _ => {}
                }
            }
            let entry = dbs.entry(number).or_default();
            entry.0 += keys;
            entry.1 += expires;
            entry.2 += u128::from(avg_ttl) * u128::from(expires);
        }
    }
    dbs.into_iter()
        .map(|(db, (keys, expires, weighted))| {
            let avg_ttl = weighted.checked_div(u128::from(expires)).unwrap_or(0);
            format!("db{db}:keys={keys},expires={expires},avg_ttl={avg_ttl}")
        })
        .collect()
}

/// A RESP2 bulk string.
fn encode_bulk(out: &mut BytesMut, data: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The key that routes a command: its first key, or None for a command
/// without keys (sent to any node).
pub fn first_key(argv: &[Bytes]) -> Option<&[u8]> {
    let name = argv.first()?.to_ascii_lowercase();
    let at = |i: usize| argv.get(i).map(|a| &a[..]);
    match &name[..] {
        // Keys after a count of keys.
        b"eval" | b"evalsha" | b"eval_ro" | b"evalsha_ro" | b"fcall" | b"fcall_ro" => {
            let keys = crate::protocol::parse_i64(at(2)?)?;
            if keys > 0 { at(3) } else { None }
        }
        b"zunion" | b"zinter" | b"zdiff" | b"sintercard" | b"zintercard" | b"lmpop" | b"zmpop" => {
            at(2)
        }
        b"blmpop" | b"bzmpop" => at(3),
        b"xread" | b"xreadgroup" => {
            let streams = argv
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"streams"))?;
            at(streams + 1)
        }
        // A subcommand, then the key.
        b"object" | b"memory" | b"xinfo" | b"xgroup" | b"bitop" => at(2),
        b"ping" | b"echo" | b"dbsize" | b"keys" | b"scan" | b"randomkey" | b"flushall"
        | b"flushdb" | b"info" | b"config" | b"time" | b"lastsave" | b"save" | b"bgsave"
        | b"bgrewriteaof" | b"debug" | b"cluster" | b"script" | b"function" | b"publish"
        | b"pubsub" | b"command" | b"multi" | b"exec" | b"discard" | b"unwatch" | b"readonly"
        | b"readwrite" | b"asking" | b"wait" | b"waitaof" | b"swapdb" | b"lolwut" | b"latency"
        | b"slowlog" | b"acl" | b"client" | b"select" | b"monitor" | b"subscribe"
        | b"psubscribe" | b"unsubscribe" | b"punsubscribe" | b"role" | b"replicaof"
        | b"slaveof" | b"failover" | b"shutdown" | b"module" => None,
        _ => at(1),
    }
}

/// Which node serves each slot.
struct Topology {
    /// Index into `nodes` per slot; None while no node serves it.
    slots: Vec<Option<u16>>,
    nodes: Vec<Node>,
}

struct Node {
    endpoint: Endpoint,
    /// The lowest slot it serves: its name in SCAN cursors.
    first_slot: u16,
}

impl Topology {
    /// The master a SCAN cursor's slot names: the one serving it (slot 0,
    /// a new scan, starts at the master with the lowest slot whichever it
    /// is).
    fn scan_node(&self, slot: u16) -> Option<usize> {
        let serving = self.slots.get(usize::from(slot)).copied().flatten();
        match serving {
            Some(node) => Some(usize::from(node)),
            None if slot == 0 => (0..self.nodes.len()).min_by_key(|&n| self.nodes[n].first_slot),
            None => None,
        }
    }

    /// The lowest slot of the master after `node` in the order of their
    /// lowest slots, if any.
    fn next_first_slot(&self, node: usize) -> Option<u16> {
        let after = self.nodes.get(node)?.first_slot;
        self.nodes
            .iter()
            .map(|n| n.first_slot)
            .filter(|&first| first > after)
            .min()
    }
}

/// Routes commands to a cluster's masters.
pub struct Router {
    seeds: Vec<ConnectionInfo>,
    /// The CA that verifies the nodes over TLS.
    tls_ca: Option<Vec<u8>>,
    /// The seeds' credentials and database, for every node.
    template: Endpoint,
    settings: PoolSettings,
    topology: RwLock<Arc<Topology>>,
    /// Bumped at every new slot map.
    version: AtomicU64,
    /// Pools by node address, kept across slot maps.
    /// Pools by event loop, then node address, kept across slot maps: a
    /// loop's clients use its own pools, as with a single server.
    pools: Mutex<HashMap<usize, HashMap<String, Arc<Pool>>>>,
    refreshing: tokio::sync::Mutex<()>,
    /// When fetching the slot map last failed.
    failed_at: Mutex<Option<Instant>>,
}

impl Router {
    pub fn new(
        seeds: Vec<ConnectionInfo>,
        tls_ca: Option<Vec<u8>>,
        template: Endpoint,
        settings: PoolSettings,
    ) -> Router {
        Router {
            seeds,
            tls_ca,
            template,
            settings,
            topology: RwLock::new(Arc::new(Topology {
                slots: vec![None; SLOTS],
                nodes: Vec::new(),
            })),
            version: AtomicU64::new(0),
            pools: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(()),
            failed_at: Mutex::new(None),
        }
    }

    fn current(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The slot map, fetched first if there is none yet (unless the last
    /// try failed moments ago: the cluster is unreachable, and commands
    /// fail at once rather than each waiting for the seeds).
    async fn topology(&self) -> Arc<Topology> {
        let failed_recently = self
            .failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < RETRY_AFTER);
        if self.version.load(Ordering::Acquire) == 0 && !failed_recently {
            Box::pin(self.refresh(0)).await;
        }
        self.current()
    }

    /// Fetches the slot map again, unless another task did since `seen`.
    async fn refresh(&self, seen: u64) {
        let _one_at_a_time = self.refreshing.lock().await;
        if self.version.load(Ordering::Acquire) != seen {
            return;
        }
        let known: Vec<String> = self
            .current()
            .nodes
            .iter()
            .map(|n| n.endpoint.addr.clone())
            .collect();
        let mut candidates = self.seeds.clone();
        for addr in known {
            if let Some(info) = self.info_for(&addr) {
                candidates.push(info);
            }
        }
        for candidate in candidates {
            match self.ask_slots(&candidate).await {
                Ok(topology) => {
                    *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    *self.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(topology);
                    self.version.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Err(error) => {
                    tracing::debug!(node = %candidate.addr(), %error, "no slot map from this node");
                }
            }
        }
        *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        tracing::warn!("no cluster node answered CLUSTER SLOTS");
    }

    /// A seed's connection settings with another address.
    fn info_for(&self, addr: &str) -> Option<ConnectionInfo> {
        let (host, port) = addr.rsplit_once(':')?;
        let seed = self.seeds.first()?;
        Some(crate::upstream::connection::at_address(
            seed,
            host.to_string(),
            port.parse().ok()?,
        ))
    }

    async fn ask_slots(&self, node: &ConnectionInfo) -> redis::RedisResult<Topology> {
        let client = match (node.addr(), &self.tls_ca) {
            (redis::ConnectionAddr::TcpTls { .. }, Some(ca)) => redis::Client::build_with_tls(
                node.clone(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )?,
            _ => redis::Client::open(node.clone())?,
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.settings.connect_timeout))
            .set_response_timeout(Some(self.settings.connect_timeout));
        let mut connection =
            Box::pin(client.get_multiplexed_async_connection_with_config(&config)).await?;
        let ranges: Vec<Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut connection)
            .await?;
        let asked_host = match node.addr() {
            redis::ConnectionAddr::Tcp(host, _) => host.clone(),
            _ => String::new(),
        };
        let mut slots = vec![None; SLOTS];
        let mut nodes: Vec<Node> = Vec::new();
        for range in ranges {
            let Value::Array(parts) = range else { continue };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let host = match master.first() {
                Some(Value::BulkString(host)) if !host.is_empty() => {
                    String::from_utf8_lossy(host).into_owned()
                }
                // An empty host means "the one you asked".
                _ => asked_host.clone(),
            };
            let Some(Value::Int(port)) = master.get(1) else {
                continue;
            };
            let addr = format!("{host}:{port}");
            let index = match nodes.iter().position(|n| n.endpoint.addr == addr) {
                Some(index) => index,
                None => {
                    nodes.push(Node {
                        endpoint: self.template.at(&addr),
                        first_slot: u16::MAX,
                    });
                    nodes.len() - 1
                }
            };
            for slot in (*start).max(0)..=(*end).min(SLOTS as i64 - 1) {
                slots[slot as usize] = Some(index as u16);
            }
        }
        for (slot, node) in slots.iter().enumerate() {
            if let Some(node) = node.and_then(|n| nodes.get_mut(usize::from(n))) {
                node.first_slot = node.first_slot.min(slot as u16);
            }
        }
        Ok(Topology { slots, nodes })
    }

    /// The calling event loop's pool to `addr`, started on it at first use.
    fn pool_for(&self, addr: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let mine = pools.entry(crate::event_loop::current()).or_default();
        if let Some(pool) = mine.get(addr) {
            return pool.clone();
        }
        let pool = Arc::new(Pool::new(&self.template.at(addr), &self.settings));
        mine.insert(addr.to_string(), pool.clone());
        pool
    }

    /// The node for a slot (any node for None), as (address, pool).
    fn node_of(topology: &Topology, route: Route, lane: usize) -> Option<&Node> {
        match route {
            Route::Slot(slot) => topology.nodes.get(topology.slots[slot as usize]? as usize),
            _ if topology.nodes.is_empty() => None,
            Route::Scan(slot) => topology.nodes.get(topology.scan_node(slot)?),
            Route::AnyNode | Route::EveryNode(_) => topology.nodes.get(lane % topology.nodes.len()),
        }
    }

    /// The endpoint a pinned connection for `argv` goes to.
    pub async fn endpoint_for(&self, argv: &[Bytes]) -> Option<Endpoint> {
        let topology = self.topology().await;
        Self::node_of(&topology, route(argv), 0).map(|n| n.endpoint.clone())
    }

    /// Every master's endpoint.
    pub async fn endpoints(&self) -> Vec<Endpoint> {
        let topology = self.topology().await;
        topology.nodes.iter().map(|n| n.endpoint.clone()).collect()
    }

    /// Sends a client's batch, each command to its slot's node, following
    /// redirections; the replies come back in the batch's order.
    pub async fn call(
        &self,
        protocol: Protocol,
        lane: usize,
        batch: &mut Batch,
    ) -> Result<Bytes, Failure> {
        let commands = batch.commands.split().freeze();
        let mut start = 0;
        let mut pending: Vec<Pending> = Vec::with_capacity(batch.ends.len());
        for &(end, route) in &batch.ends {
            pending.push(Pending {
                command: commands.slice(start..end),
                route,
                redirect: None,
                reply: None,
                parts: Vec::new(),
            });
            start = end;
        }
        for round in 0..=MAX_REDIRECTIONS {
            let version = self.version.load(Ordering::Acquire);
            let topology = self.topology().await;
            self.send_round(protocol, lane, &topology, &mut pending)
                .await;
            if round == MAX_REDIRECTIONS {
                break;
            }
            let mut moved = false;
            let mut redirected = false;
            for command in pending.iter_mut() {
                let Some(reply) = &command.reply else {
                    continue;
                };
                if let Some(redirect) = redirection(reply) {
                    redirected = true;
                    moved |= !redirect.asking;
                    command.redirect = Some(redirect);
                    command.reply = None;
                }
            }
            if !redirected {
                break;
            }
            self.settings.stats.redirections.inc();
            if moved {
                Box::pin(self.refresh(version)).await;
            }
        }
        let mut replies = BytesMut::new();
        for command in pending {
            replies.extend_from_slice(command.reply.as_deref().unwrap_or(UNAVAILABLE));
        }
        Ok(replies.freeze())
    }

    /// Sends every command still without a reply, grouped by node, all
    /// nodes at once, and files the replies.
    async fn send_round(
        &self,
        protocol: Protocol,
        lane: usize,
        topology: &Topology,
        pending: &mut [Pending],
    ) {
        // Per destination: its pool, the commands, and which they are.
        let mut groups: Vec<(Arc<Pool>, BytesMut, Vec<usize>, usize)> = Vec::new();
        for (index, command) in pending.iter_mut().enumerate() {
            if command.reply.is_some() {
                continue;
            }
            let pools = match &command.redirect {
                // The node that answered MOVED or ASK named the one to ask.
                Some(redirect) => vec![self.pool_for(&redirect.addr)],
                None if matches!(command.route, Route::EveryNode(_))
                    && !topology.nodes.is_empty() =>
                {
                    let nodes = topology.nodes.iter();
                    nodes.map(|n| self.pool_for(&n.endpoint.addr)).collect()
                }
                None => match Self::node_of(topology, command.route, lane) {
                    Some(node) => vec![self.pool_for(&node.endpoint.addr)],
                    // No slot map at all: the cluster cannot be reached.
                    None if topology.nodes.is_empty() => {
                        command.reply = Some(Bytes::from_static(UNAVAILABLE));
                        continue;
                    }
                    None => {
                        command.reply =
                            Some(Bytes::from_static(b"-CLUSTERDOWN Hash slot not served\r\n"));
                        continue;
                    }
                },
            };
            for pool in pools {
                let group = match groups.iter().position(|g| Arc::ptr_eq(&g.0, &pool)) {
                    Some(group) => group,
                    None => {
                        groups.push((pool, BytesMut::new(), Vec::new(), 0));
                        groups.len() - 1
                    }
                };
                let (_, bytes, members, count) = &mut groups[group];
                if command.redirect.as_ref().is_some_and(|r| r.asking) {
                    encode_command(bytes, &[b"ASKING"]);
                    *count += 1;
                }
                bytes.extend_from_slice(&command.command);
                *count += 1;
                members.push(index);
            }
        }
        let mut receivers = Vec::with_capacity(groups.len());
        for (pool, bytes, members, count) in groups {
            let (tx, rx) = oneshot::channel();
            pool.submit(protocol, lane, bytes.freeze(), count, Delivery::Caller(tx))
                .await;
            receivers.push((rx, members));
        }
        for (replies, members) in receivers {
            let result = replies
                .await
                .unwrap_or_else(|_| Err(Failure::Unavailable("shut down".into())));
            match result {
                Ok(replies) => {
                    let mut scanner = FrameScanner::default();
                    let mut start = 0;
                    for index in members {
                        if pending[index].redirect.as_ref().is_some_and(|r| r.asking) {
                            // ASKING's own OK.
                            if let Ok(Some(end)) = scanner.next_frame(&replies) {
                                start = end;
                            }
                        }
                        let reply = match scanner.next_frame(&replies) {
                            Ok(Some(end)) => {
                                let reply = replies.slice(start..end);
                                start = end;
                                reply
                            }
                            _ => Bytes::from_static(LOST),
                        };
                        pending[index].parts.push(reply);
                    }
                }
                Err(failure) => {
                    for index in members {
                        pending[index]
                            .parts
                            .push(Bytes::from_static(failure.reply()));
                    }
                }
            }
        }
        for command in pending.iter_mut().filter(|c| !c.parts.is_empty()) {
            let parts = std::mem::take(&mut command.parts);
            command.reply = Some(match command.route {
                Route::EveryNode(how) if command.redirect.is_none() => merge(how, &parts),
                Route::Scan(slot) if command.redirect.is_none() => {
                    scan_reply(&parts[0], slot, topology)
                }
                _ => parts[0].clone(),
            });
        }
    }
}

/// One command of a batch on its way through the cluster.
struct Pending {
    command: Bytes,
    route: Route,
    /// Where the last node said to ask instead.
    redirect: Option<Redirect>,
    reply: Option<Bytes>,
    /// This round's replies (one per master for a command sent to every
    /// master), made the reply at the end of the round.
    parts: Vec<Bytes>,
}

/// `MOVED` (the slot lives at `addr` now) or `ASK` (this once, at `addr`,
/// after ASKING).
struct Redirect {
    addr: String,
    asking: bool,
}

/// `-MOVED <slot> <host:port>` or `-ASK <slot> <host:port>`.
fn redirection(reply: &[u8]) -> Option<Redirect> {
    let line = reply.strip_prefix(b"-")?.strip_suffix(b"\r\n")?;
    let mut words = line.split(|&b| b == b' ');
    let kind = words.next()?;
    let _slot = words.next()?;
    let addr = std::str::from_utf8(words.next()?).ok()?.to_string();
    match kind {
        b"MOVED" => Some(Redirect {
            addr,
            asking: false,
        }),
        b"ASK" => Some(Redirect { addr, asking: true }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_name_the_node_to_ask() {
        let moved = redirection(b"-MOVED 3999 127.0.0.1:6381\r\n").unwrap();
        assert_eq!(
            (moved.addr.as_str(), moved.asking),
            ("127.0.0.1:6381", false)
        );
        let ask = redirection(b"-ASK 3999 127.0.0.1:6382\r\n").unwrap();
        assert_eq!((ask.addr.as_str(), ask.asking), ("127.0.0.1:6382", true));
        assert!(redirection(b"-ERR MOVED 1 x\r\n").is_none());
        assert!(redirection(b"+OK\r\n").is_none());
    }

    #[test]
    fn scan_cursors_carry_the_master_and_its_cursor() {
        let argv: Vec<Bytes> = ["SCAN", "81925", "COUNT", "5"]
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        let mut out = BytesMut::new();
        // 81925 = 5 << 14 | 5: the master serving slot 5, its cursor 5.
        assert_eq!(prepare(&argv, &mut out), Route::Scan(5));
        assert_eq!(
            &out[..],
            b"*4\r\n$4\r\nSCAN\r\n$1\r\n5\r\n$5\r\nCOUNT\r\n$1\r\n5\r\n"
        );
        // Three masters serving 0-5460, 5461-10922, 10923-16383, listed in
        // another order, as CLUSTER SLOTS may.
        let node = |addr: &str, first_slot: u16| Node {
            endpoint: Endpoint {
                addr: addr.into(),
                username: None,
                password: None,
                db: 0,
                tls: None,
            },
            first_slot,
        };
        let mut slots = vec![None; SLOTS];
        for (slot, owner) in slots.iter_mut().enumerate() {
            *owner = Some(match slot {
                0..5461 => 1,
                5461..10923 => 2,
                _ => 0,
            });
        }
        let topology = Topology {
            slots,
            nodes: vec![node("c:3", 10923), node("a:1", 0), node("b:2", 5461)],
        };
        let reply = |cursor: &str| {
            Bytes::from(format!(
                "*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n",
                cursor.len()
            ))
        };
        // Further on the same master, named as the client named it.
        let further = (9u64 << 14 | 7).to_string();
        assert_eq!(scan_reply(&reply("9"), 7, &topology), reply(&further));
        // The next master from its start, by lowest slot; 0 after the last.
        assert_eq!(scan_reply(&reply("0"), 0, &topology), reply("5461"));
        assert_eq!(scan_reply(&reply("0"), 6000, &topology), reply("10923"));
        assert_eq!(scan_reply(&reply("0"), 10923, &topology), reply("0"));
        assert_eq!(topology.scan_node(12000), Some(0));
        let error = Bytes::from_static(b"-ERR syntax error\r\n");
        assert_eq!(scan_reply(&error, 0, &topology), error);
        let too_far = reply(&u64::MAX.to_string());
        assert!(scan_reply(&too_far, 0, &topology).starts_with(b"-ERR"));
        let short = Bytes::from_static(b"*2\r\n$99999999999999999999\r\n1\r\n");
        assert_eq!(scan_reply(&short, 0, &topology), short);
        let lying = Bytes::from_static(b"*2\r\n$18446744073709551615\r\n1\r\n");
        assert_eq!(scan_reply(&lying, 0, &topology), lying);
    }

    #[test]
    fn every_masters_replies_are_merged() {
        let parts = |ps: &[&'static str]| -> Vec<Bytes> {
            ps.iter()
                .map(|p| Bytes::from_static(p.as_bytes()))
                .collect()
        };
        assert_eq!(
            merge(Merge::Sum, &parts(&[":3\r\n", ":0\r\n", ":4\r\n"])),
            ":7\r\n"
        );
        assert_eq!(
            merge(
                Merge::Concat,
                &parts(&[
                    "*1\r\n$1\r\na\r\n",
                    "*0\r\n",
                    "*2\r\n$1\r\nb\r\n$1\r\nc\r\n"
                ])
            ),
            "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_eq!(
            merge(
                Merge::AnyValue,
                &parts(&["$-1\r\n", "_\r\n", "$1\r\nk\r\n"])
            ),
            "$1\r\nk\r\n"
        );
        assert_eq!(
            merge(Merge::AnyValue, &parts(&["$-1\r\n", "$-1\r\n"])),
            "$-1\r\n"
        );
        assert_eq!(
            merge(Merge::First, &parts(&["+OK\r\n", "+OK\r\n"])),
            "+OK\r\n"
        );
        // An error from any master is the reply.
        assert_eq!(
            merge(Merge::Sum, &parts(&[":1\r\n", "-ERR down\r\n"])),
            "-ERR down\r\n"
        );
    }

    #[test]
    fn keyspaces_are_summed_per_database() {
        let a = "# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=1000\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n";
        let b = "# Keyspace\r\ndb0:keys=5,expires=2,avg_ttl=3000,subexpiry=0\r\n";
        let bulk = |text: &str| {
            let mut out = BytesMut::new();
            encode_bulk(&mut out, text.as_bytes());
            out.freeze()
        };
        assert_eq!(
            keyspace_sum([a, b, "", "junk:1"].into_iter()),
            [
                "db0:keys=15,expires=4,avg_ttl=2000",
                "db3:keys=1,expires=0,avg_ttl=0"
            ]
        );
        let merged = merge(Merge::Keyspace, &[bulk(b), bulk(a)]);
        assert!(merged.starts_with(b"$"), "{merged:?}");
        assert!(
            String::from_utf8_lossy(&merged).contains("db0:keys=15,expires=4,avg_ttl=2000\r\n")
        );
    }

    #[test]
    fn routing_keys() {
        let argv = |words: &[&str]| -> Vec<Bytes> {
            words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect()
        };
        assert_eq!(first_key(&argv(&["GET", "k"])), Some(&b"k"[..]));
        assert_eq!(first_key(&argv(&["EVAL", "s", "1", "k"])), Some(&b"k"[..]));
        assert_eq!(first_key(&argv(&["EVAL", "s", "0"])), None);
        assert_eq!(
            first_key(&argv(&["XREAD", "COUNT", "1", "STREAMS", "s", "0"])),
            Some(&b"s"[..])
        );
        assert_eq!(first_key(&argv(&["DBSIZE"])), None);
    }
}
