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
use crate::protocol::frame::FrameScanner;

/// Hash slots in a Redis Cluster.
const SLOTS: usize = 16384;
/// How long to fail at once after the slot map could not be fetched.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Redirections followed for one command before its last reply is given.
const MAX_REDIRECTIONS: usize = 5;

/// The hash slot of a key: CRC16 of its hash tag (the part between the
/// first `{` and the next `}`, when not empty) or of the whole key.
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS as u16
}

/// Where a command goes on a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The master of this slot (the first key's).
    Slot(u16),
    /// Any master: the command has no key.
    AnyNode,
    /// Every master: scripts and functions must be loaded (and flushed)
    /// wherever the keys they will run on live, and FLUSHALL/FLUSHDB mean
    /// the whole cluster. The first master's reply is given, or an error
    /// if any master answered one.
    EveryNode,
}

/// Where `argv` goes on a cluster.
pub fn route(argv: &[Bytes]) -> Route {
    let Some(name) = argv.first() else {
        return Route::AnyNode;
    };
    let everywhere = [&b"script"[..], b"function", b"flushall", b"flushdb"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n));
    if everywhere {
        return Route::EveryNode;
    }
    first_key(argv).map_or(Route::AnyNode, |key| Route::Slot(slot_of(key)))
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
    pool: Arc<Pool>,
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
    pools: Mutex<HashMap<String, Arc<Pool>>>,
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
            self.refresh(0).await;
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
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
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
                        pool: self.pool_for(&addr),
                        endpoint: self.template.at(&addr),
                    });
                    nodes.len() - 1
                }
            };
            for slot in (*start).max(0)..=(*end).min(SLOTS as i64 - 1) {
                slots[slot as usize] = Some(index as u16);
            }
        }
        Ok(Topology { slots, nodes })
    }

    fn pool_for(&self, addr: &str) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(addr.to_string())
            .or_insert_with(|| Arc::new(Pool::new(&self.template.at(addr), &self.settings)))
            .clone()
    }

    /// The node for a slot (any node for None), as (address, pool).
    fn node_of(topology: &Topology, route: Route, lane: usize) -> Option<&Node> {
        match route {
            Route::Slot(slot) => topology.nodes.get(topology.slots[slot as usize]? as usize),
            _ if topology.nodes.is_empty() => None,
            Route::AnyNode | Route::EveryNode => topology.nodes.get(lane % topology.nodes.len()),
        }
    }

    /// The endpoint a pinned connection for `argv` goes to.
    pub async fn endpoint_for(&self, argv: &[Bytes]) -> Option<Endpoint> {
        let topology = self.topology().await;
        Self::node_of(&topology, route(argv), 0).map(|n| n.endpoint.clone())
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
                self.refresh(version).await;
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
                None if command.route == Route::EveryNode && !topology.nodes.is_empty() => {
                    topology.nodes.iter().map(|n| n.pool.clone()).collect()
                }
                None => match Self::node_of(topology, command.route, lane) {
                    Some(node) => vec![node.pool.clone()],
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
                        file(&mut pending[index].reply, reply);
                    }
                }
                Err(failure) => {
                    for index in members {
                        file(
                            &mut pending[index].reply,
                            Bytes::from_static(failure.reply()),
                        );
                    }
                }
            }
        }
    }
}

/// Keeps a command's reply: the first one, or an error over a success (a
/// command sent to every master fails if it failed on one).
fn file(kept: &mut Option<Bytes>, reply: Bytes) {
    let is_error = |r: &[u8]| matches!(r.first(), Some(b'-' | b'!'));
    if kept
        .as_ref()
        .is_none_or(|k| !is_error(k) && is_error(&reply))
    {
        *kept = Some(reply);
    }
}

/// One command of a batch on its way through the cluster.
struct Pending {
    command: Bytes,
    route: Route,
    /// Where the last node said to ask instead.
    redirect: Option<Redirect>,
    reply: Option<Bytes>,
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
    fn slots_as_redis_computes_them() {
        // CLUSTER KEYSLOT on a real server gives these.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"123456789"), 12739);
    }

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
