//! The fleet: the live sidecars this one knows, from `--peers` and from the
//! registry every write-through sidecar keeps fresh in the upstream.
//!
//! Registry layout (T the key tag `{<prefix>:registry}`, so that one
//! pipeline reaches them all): `T:nodes`, a zset of node ids scored by when each last reported
//! (ms), and `T:node:<id>`, a hash (`node`, `addr`,
//! `sessions`, `last_seen`) that expires three report intervals after the
//! last report, so a sidecar that died leaves the registry by itself. A
//! sidecar that stops cleanly removes its entry at once.
//!
//! Layer 11 of 15 (the order is in `tests/layers.rs`). Uses `sessions`,
//! `upstream` and `migrate` (to reach peers): a [`Fleet`] holds the sessions
//! and settings it needs, not the node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio_util::sync::CancellationToken;

use crate::sessions::Sessions;
use crate::store::now_ms;
use crate::upstream::Upstream;

/// One live sidecar, as SESSION.NODES reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: String,
    pub addr: String,
    pub sessions: i64,
    pub last_seen: u64,
    pub is_self: bool,
}

/// What the fleet reads of the node's configuration.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub prefix: String,
    /// `--peers`.
    pub static_peers: Vec<String>,
    /// How often this sidecar reports to the registry.
    pub interval: Duration,
    pub peer_timeout: Duration,
    pub peer_secret: Option<String>,
    pub peer_tls_ca: Option<Arc<[u8]>>,
    /// Where peers reach this sidecar (`--advertise`).
    pub advertise: String,
}

/// How this sidecar finds and reports to the others.
pub struct Fleet {
    /// This sidecar's sessions: its node id, and how many it holds.
    sessions: Sessions,
    advertise: String,
    prefix: String,
    static_peers: Vec<String>,
    interval: Duration,
    peer_timeout: Duration,
    /// Presented to the static peers (SESSION.PEERAUTH) before asking them
    /// who they are, as they may require a password.
    peer_secret: Option<String>,
    peer_tls_ca: Option<Arc<[u8]>>,
}

impl Fleet {
    pub fn new(settings: FleetSettings, sessions: Sessions) -> Self {
        Self {
            sessions,
            advertise: settings.advertise,
            prefix: settings.prefix,
            static_peers: settings.static_peers,
            interval: settings.interval,
            peer_timeout: settings.peer_timeout,
            peer_secret: settings.peer_secret,
            peer_tls_ca: settings.peer_tls_ca,
        }
    }

    /// Where peers reach this sidecar.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// The CA peers' TLS certificates are verified against, when peers are
    /// reached over TLS.
    pub fn peer_tls_ca(&self) -> Option<Arc<[u8]>> {
        self.peer_tls_ca.clone()
    }

    /// `{<prefix>:registry}`: the registry's keys share one hash slot.
    fn tag(&self) -> String {
        format!("{{{}:registry}}", self.prefix)
    }

    fn zset(&self) -> String {
        format!("{}:nodes", self.tag())
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.tag())
    }

    /// The registry's hash slot.
    fn slot(&self) -> u16 {
        crate::protocol::slot::slot_of(self.tag().as_bytes())
    }

    /// How long an entry stays without a report.
    fn entry_ttl(&self) -> Duration {
        self.interval * 3
    }

    /// The live sidecars: this one, the registry's, and the static peers
    /// that answer; each node once (registry entries first).
    pub async fn nodes(&self) -> Vec<NodeInfo> {
        let now = now_ms();
        let myself = NodeInfo {
            node: String::from_utf8_lossy(self.sessions.node()).into_owned(),
            addr: self.advertise.clone(),
            sessions: self.sessions.count_local(now) as i64,
            last_seen: now,
            is_self: true,
        };
        let mut nodes: BTreeMap<String, NodeInfo> = BTreeMap::new();
        if let Sessions::WriteThrough(store) = &self.sessions {
            for node in self.registered(&store.upstream, now).await {
                nodes.insert(node.node.clone(), node);
            }
        }
        for peer in self.probe_static_peers().await {
            nodes.entry(peer.node.clone()).or_insert(peer);
        }
        nodes.insert(myself.node.clone(), myself);
        nodes.into_values().collect()
    }

    /// The registry's live entries.
    async fn registered(&self, upstream: &Upstream, now: u64) -> Vec<NodeInfo> {
        let since = now.saturating_sub(self.entry_ttl().as_millis() as u64);
        let zset = self.zset();
        let ids: Vec<String> = match upstream
            .call(self.slot(), async |c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&zset)
                    .arg(since)
                    .arg("+inf")
                    .query_async(c)
                    .await
            })
            .await
        {
            Ok(ids) => ids,
            Err(_) => return Vec::new(),
        };
        if ids.is_empty() {
            return Vec::new();
        }
        let mut pipeline = redis::pipe();
        for id in &ids {
            pipeline.cmd("HGETALL").arg(self.node_key(id));
        }
        let entries: Vec<Value> = upstream
            .call(self.slot(), async |c| pipeline.query_async(c).await)
            .await
            .unwrap_or_default();
        entries.iter().filter_map(parse_entry).collect()
    }

    /// Asks each `--peers` address who it is (INFO server) and how many
    /// sessions it holds; those that do not answer in time are not live.
    async fn probe_static_peers(&self) -> Vec<NodeInfo> {
        let mut probes = tokio::task::JoinSet::new();
        for addr in self.static_peers.clone() {
            let timeout = self.peer_timeout;
            let secret = self.peer_secret.clone();
            let tls_ca = self.peer_tls_ca.clone();
            probes.spawn(async move {
                tokio::time::timeout(timeout, probe(addr, secret, timeout, tls_ca))
                    .await
                    .ok()
                    .flatten()
            });
        }
        probes.join_all().await.into_iter().flatten().collect()
    }

    /// Keeps this sidecar's registry entry fresh until `shutdown`, then
    /// removes it.
    pub async fn report(self: Arc<Self>, shutdown: CancellationToken) {
        let Sessions::WriteThrough(store) = &self.sessions else {
            return;
        };
        let node = String::from_utf8_lossy(self.sessions.node()).into_owned();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            let now = now_ms();
            let ttl = self.entry_ttl().as_millis() as u64;
            let mut pipeline = redis::pipe();
            pipeline
                .cmd("HSET")
                .arg(self.node_key(&node))
                .arg("node")
                .arg(&node)
                .arg("addr")
                .arg(&self.advertise)
                .arg("sessions")
                .arg(self.sessions.count_local(now))
                .arg("last_seen")
                .arg(now)
                .ignore();
            pipeline
                .cmd("PEXPIRE")
                .arg(self.node_key(&node))
                .arg(ttl)
                .ignore();
            pipeline
                .cmd("ZADD")
                .arg(self.zset())
                .arg(now)
                .arg(&node)
                .ignore();
            pipeline
                .cmd("ZREMRANGEBYSCORE")
                .arg(self.zset())
                .arg("-inf")
                .arg(format!("({}", now.saturating_sub(ttl)))
                .ignore();
            pipeline.cmd("ZRANGE").arg(self.zset()).arg(0).arg(-1);
            match store
                .upstream
                .call(self.slot(), async |c| {
                    pipeline.query_async::<(Vec<String>,)>(c).await
                })
                .await
            {
                // The live sidecars share the background work over the
                // shards, by their rank in node id order.
                Ok((mut live,)) => {
                    live.sort();
                    if let Some(rank) = live.iter().position(|n| *n == node) {
                        store.set_share(rank as u32, live.len() as u32);
                    }
                }
                Err(error) => tracing::debug!(?error, "registry report failed"),
            }
        }
        let mut pipeline = redis::pipe();
        pipeline.cmd("ZREM").arg(self.zset()).arg(&node).ignore();
        pipeline.cmd("DEL").arg(self.node_key(&node)).ignore();
        let _ = store
            .upstream
            .call(self.slot(), async |c| pipeline.query_async::<()>(c).await)
            .await;
    }
}

/// One registry entry (a hash's HGETALL).
fn parse_entry(value: &Value) -> Option<NodeInfo> {
    let text = |v: &Value| match v {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let fields: BTreeMap<String, String> = match value {
        Value::Array(flat) => flat
            .chunks(2)
            .filter_map(|p| Some((text(p.first()?)?, text(p.get(1)?)?)))
            .collect(),
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        _ => return None,
    };
    Some(NodeInfo {
        node: fields.get("node")?.clone(),
        addr: fields.get("addr")?.clone(),
        sessions: fields
            .get("sessions")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        last_seen: fields
            .get("last_seen")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        is_self: false,
    })
}

/// Who answers at `addr`: its node id (INFO server) and hot sessions.
async fn probe(
    addr: String,
    secret: Option<String>,
    timeout: Duration,
    tls_ca: Option<Arc<[u8]>>,
) -> Option<NodeInfo> {
    let mut connection =
        crate::migrate::connect_peer(&addr, secret.as_deref(), timeout, tls_ca.as_deref())
            .await
            .ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await
        .ok()?;
    let node = info
        .lines()
        .find_map(|line| line.strip_prefix("node_id:"))?
        .trim()
        .to_string();
    let sessions: i64 = redis::cmd("SESSION.COUNT")
        .arg("LOCAL")
        .query_async(&mut connection)
        .await
        .unwrap_or(0);
    Some(NodeInfo {
        node,
        addr,
        sessions,
        last_seen: now_ms(),
        is_self: false,
    })
}
