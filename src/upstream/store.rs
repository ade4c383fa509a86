//! Write-through mode: the upstream is the source of truth, the hot cache a
//! coherent copy of it.
//!
//! Every mutation of a session is one call of the session script
//! (`sessions.lua`) in the session's shard ([`super::layout`]), which applies
//! it with its shard's index changes and its event atomically on the
//! upstream and replies the session's new state; what is in other shards
//! (the user's index, the conn's pointer) follows in idempotent steps
//! ([`super::intents`]). The sidecar acknowledges the client only after
//! those, and installs the new state in its hot cache. Reads
//! are answered from the cache when it holds a trusted, live copy, and read
//! through otherwise. Heartbeats that do not extend the expiry are answered
//! from memory; their `last_active` reaches the upstream in batches.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use redis::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::batch::{self, Batch, Operation};
use super::cache::{HotCache, Suspect, Ticket};
use super::connection::{CallError, PushHandler, Upstream};
use super::intents::{Mode, REPAIR_AFTER_MS, REPAIR_INTERVAL};
use super::layout::Layout;
use crate::metrics::Counter;
use crate::pubsub::PubSub;
use crate::store::{
    Attributes, CreateSession, Event, EventKind, Key, Session, SessionLimits, Status, StoreError,
    StoreStats, UpdateSession,
};
use crate::tracking::Tracking;

/// The session library (`sessions.lua`), a Redis Function: loaded once per
/// master (FUNCTION LOAD, at connect and again whenever the upstream lost
/// it), called with FCALL. Its name carries its source's hash, so sidecars
/// of different versions on one upstream each call their own.
///
/// A function, not a script: EVALSHA runs the whole script's body at each
/// call, defining every function of it again, which cost the upstream about
/// 27 us per call more than FCALL here (commandstats, Redis 7.0).
static LIBRARY: std::sync::LazyLock<Library> = std::sync::LazyLock::new(|| {
    let hash = redis::Script::new(LIBRARY_SOURCE).get_hash().to_string();
    let name = format!("session_sidecar_{}", &hash[..16]);
    let code = format!(
        "#!lua name={name}\n{}",
        LIBRARY_SOURCE.replace("SESSION_SIDECAR_FUNCTION", &name)
    );
    Library { name, code }
});
const LIBRARY_SOURCE: &str = include_str!("sessions.lua");

struct Library {
    /// The library's name, and its one function's.
    name: String,
    /// What FUNCTION LOAD is given.
    code: String,
}

impl Library {
    /// FCALL of the library's function; the keys and arguments follow.
    fn call(&self) -> redis::Cmd {
        let mut call = redis::cmd("FCALL");
        call.arg(&self.name);
        call
    }

    fn load(&self) -> redis::Cmd {
        let mut load = redis::cmd("FUNCTION");
        load.arg("LOAD").arg("REPLACE").arg(&self.code);
        load
    }

    async fn load_on(&self, c: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
        self.load().query_async::<()>(c).await
    }
}

/// Whether an upstream error says the library is not loaded there (a
/// restarted upstream without persistence, FUNCTION FLUSH, a new master).
/// A pipeline's error names each failed command's.
fn unloaded(error: &redis::RedisError) -> bool {
    error.to_string().contains(FUNCTION_NOT_FOUND)
}

/// [`unloaded`], of one reply of a pipeline.
fn unloaded_reply(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.details().is_some_and(|d| d.starts_with(FUNCTION_NOT_FOUND)))
}

/// What Redis answers an FCALL of a function it does not have.
const FUNCTION_NOT_FOUND: &str = "Function not found";

/// Settings of write-through mode.
#[derive(Clone, Debug)]
pub struct WriteThroughConfig {
    pub prefix: String,
    /// The shard count (`--shards`), recorded in the upstream.
    pub shards: u32,
    pub node: Key,
    pub default_ttl_ms: u64,
    pub limits: SessionLimits,
    /// Approximate cap of the events stream (XADD MAXLEN ~).
    pub stream_maxlen: u64,
    /// How long upstream keys outlive their session's expiry.
    pub key_margin_ms: u64,
    pub heartbeat_interval: Duration,
    pub sweep_interval: Duration,
    pub maxmemory: usize,
    /// How long a SUBSCRIBE waits for the relay of upstream events.
    pub relay_wait: Duration,
}

impl WriteThroughConfig {
    /// The header of every call of the library, after its keys: `op`, then
    /// what every operation reads (see `sessions.lua`).
    fn call_header(&self, call: &mut redis::Cmd, op: &str, now: u64, tag: &str) {
        call.arg(op)
            .arg(&self.prefix)
            .arg(now)
            .arg(&self.node[..])
            .arg(self.stream_maxlen)
            .arg(self.key_margin_ms)
            .arg(tag);
    }
}

#[derive(Default, Debug)]
pub struct WriteThroughStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub heartbeats_absorbed: AtomicU64,
    pub heartbeat_flushes: AtomicU64,
    /// Invalidated copies put back after their version checked out.
    pub verified: AtomicU64,
    /// Cross-shard steps that failed (left to the repairer).
    pub follow_up_failures: Counter,
    /// Intents found unfinished past their due time, and finished.
    pub intents_repaired: Counter,
    /// Binds refused (TRYAGAIN) because the conn's bind lock stayed taken.
    pub conn_lock_timeouts: Counter,
    /// Expired sessions removed by this sidecar's sweeps, and the sum and
    /// maximum of their expiry lag (due to removed), in ms.
    pub expiry_lag_ms_sum: Counter,
    /// The expiry lag of each expired session (due to removed).
    pub expiry_lag: crate::metrics::Histogram,
    pub expiry_lag_ms_max: AtomicU64,
}

/// How often pages of the expiry indexes are audited for dangling entries,
/// and in how many ticks each sidecar goes over its share of the shards
/// once (3.2 s): the fleet audits every shard at the same rate however many
/// sidecars share them, and each one's cost falls as sidecars are added.
const AUDIT_INTERVAL: Duration = Duration::from_millis(200);
const AUDIT_PASS_TICKS: usize = 16;

pub struct WriteThrough {
    pub upstream: Arc<Upstream>,
    pub cache: HotCache,
    pub(crate) config: WriteThroughConfig,
    pub(crate) layout: Layout,
    /// This sidecar's share of the background work over the shards: shard
    /// `s` is its own when `s % count == rank` (`rank << 32 | count`), set
    /// from the fleet's registry.
    share: AtomicU64,
    /// When each shard's earliest expiry is due (ms), as last seen: the
    /// sweep visits only the shards with something due.
    next_due: Box<[AtomicU64]>,
    /// Intents finished, to be removed from their shards.
    pub(crate) done: std::sync::Mutex<Vec<(u32, Vec<u8>)>>,
    /// Binds of a conn waiting here for its lock ([`WriteThrough::with_conn_lock`]).
    conn_locks: DashMap<Key, Arc<tokio::sync::Mutex<()>>, foldhash::fast::RandomState>,
    /// Creations waiting for, or travelling in, a shared script call.
    creations: Arc<Creations>,
    /// `last_active` of heartbeats answered from memory, not yet written.
    heartbeats: DashMap<Key, u64, foldhash::fast::RandomState>,
    /// Invalidated copies waiting to be checked against the upstream's
    /// version (see the cache's documentation).
    /// One per id (the latest invalidation's), so a flood of invalidations
    /// of one key costs one check: bounded by the sessions held.
    suspects: std::sync::Mutex<HashMap<Key, Suspect>>,
    suspects_added: tokio::sync::Notify,
    /// Sessions invalidated with no copy here while clients cache sessions:
    /// checked like suspects, so that a change this sidecar made itself
    /// (Redis 7.0 sends those too) is not taken for another's.
    orphans: std::sync::Mutex<HashSet<Key>>,
    /// Whether the upstream's events channel is relayed right now.
    relaying: tokio::sync::watch::Sender<bool>,
    pubsub: Arc<PubSub>,
    /// Clients caching sessions, told of changes made through other
    /// sidecars ([`Coherence`]).
    tracking: Arc<Tracking>,
    pub stats: WriteThroughStats,
    /// Lifecycle counts of the changes this sidecar made.
    pub counts: StoreStats,
}

impl From<CallError> for StoreError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Unavailable => StoreError::Unavailable,
            CallError::Unknown => StoreError::OutcomeUnknown,
            CallError::Reply(message) => StoreError::Upstream(message),
        }
    }
}

/// One script call of [`WriteThrough::run_each`]: the shard, the key it is
/// routed by, and the operation's arguments.
pub(crate) type ShardCall = (u32, Vec<u8>, Vec<Vec<u8>>);

/// What a script call replied: its result, the sessions it changed, and
/// the cross-shard follow-ups it left ([`super::intents`]).
pub(crate) struct Reply {
    pub result: Value,
    pub touched: Vec<Vec<u8>>,
    pub followups: Vec<Vec<u8>>,
}

impl WriteThrough {
    pub fn new(
        upstream: Arc<Upstream>,
        config: WriteThroughConfig,
        pubsub: Arc<PubSub>,
        tracking: Arc<Tracking>,
    ) -> Result<Self, String> {
        let layout = Layout::new(&config.prefix, config.shards)?;
        Ok(Self {
            next_due: (0..layout.shards()).map(|_| AtomicU64::new(0)).collect(),
            share: AtomicU64::new(1),
            done: std::sync::Mutex::default(),
            conn_locks: DashMap::default(),
            creations: Arc::new(Creations::new(upstream.clone(), &config, layout.clone())),
            layout,
            upstream,
            cache: HotCache::new(config.maxmemory),
            heartbeats: DashMap::default(),
            suspects: std::sync::Mutex::default(),
            suspects_added: tokio::sync::Notify::new(),
            orphans: std::sync::Mutex::default(),
            relaying: tokio::sync::watch::Sender::new(false),
            config,
            pubsub,
            tracking,
            stats: WriteThroughStats::default(),
            counts: StoreStats::default(),
        })
    }

    pub fn config(&self) -> &WriteThroughConfig {
        &self.config
    }

    /// The key layout: shards, tags, key names.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The key of a session's hash.
    pub fn session_key(&self, id: &[u8]) -> Vec<u8> {
        self.layout.session_key(id)
    }

    /// The id inside a session key, if it is one.
    fn id_of_key<'a>(&self, key: &'a [u8]) -> Option<&'a [u8]> {
        self.layout.id_of_key(key)
    }

    /// Each master's connection set-up: client-side caching of session keys
    /// in broadcast mode, without invalidations for our own writes; and the
    /// session library loaded.
    pub fn tracking_setup(&self) -> Vec<redis::Cmd> {
        let mut tracking = redis::cmd("CLIENT");
        tracking
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX");
        tracking.arg(self.layout.session_key_prefix()).arg("NOLOOP");
        vec![tracking, LIBRARY.load()]
    }

    /// Records the layout in the upstream, or checks it against the one
    /// recorded: sidecars with another shard count would not find each
    /// other's sessions. An error names both.
    pub async fn check_layout(&self) -> Result<(), StoreError> {
        let key = self.layout.layout_key();
        let shards = self.layout.shards();
        let recorded: (Option<u32>, Option<u32>) = self
            .upstream
            .call(crate::protocol::slot::slot_of(key.as_bytes()), async |c| {
                redis::pipe()
                    .cmd("HSETNX")
                    .arg(&key)
                    .arg("shards")
                    .arg(shards)
                    .ignore()
                    .cmd("HSETNX")
                    .arg(&key)
                    .arg("version")
                    .arg(super::layout::LAYOUT_VERSION)
                    .ignore()
                    .cmd("HMGET")
                    .arg(&key)
                    .arg("shards")
                    .arg("version")
                    .query_async::<((Option<u32>, Option<u32>),)>(c)
                    .await
                    .map(|(fields,)| fields)
            })
            .await?;
        match recorded {
            (Some(recorded), _) if recorded != shards => Err(StoreError::Upstream(format!(
                "ERR the upstream's sessions are laid out in {recorded} shards ({key}), this sidecar has --shards {shards}: every sidecar of a prefix must use the same count"
            ))),
            (_, Some(version)) if version != super::layout::LAYOUT_VERSION => {
                Err(StoreError::Upstream(format!(
                    "ERR the upstream's layout is version {version} ({key}), this sidecar reads version {}",
                    super::layout::LAYOUT_VERSION
                )))
            }
            _ => Ok(()),
        }
    }

    pub fn events_channel(&self) -> Vec<u8> {
        format!("{}:events", self.config.prefix).into_bytes()
    }

    /// Waits (up to the upstream's command timeout) until upstream events are
    /// relayed here, so that a client whose SUBSCRIBE has been answered misses
    /// no event published after it.
    pub async fn wait_relaying(&self) {
        let mut relaying = self.relaying.subscribe();
        let _ = tokio::time::timeout(
            self.config.relay_wait,
            relaying.wait_for(|relaying| *relaying),
        )
        .await;
    }

    /// Relays the upstream's events channel to this sidecar's subscribers,
    /// subscribed upstream only while somebody here subscribes to anything
    /// (each event otherwise costs a push on the upstream connection), and
    /// again after every reconnect.
    pub async fn relay_events(self: Arc<Self>, shutdown: CancellationToken) {
        let channel = self.events_channel();
        let mut active = self.pubsub.watch_active();
        let mut generation = self.upstream.watch_generation();
        let mut subscribed_in: Option<u64> = None;
        loop {
            let wanted = *active.borrow_and_update();
            let current = *generation.borrow_and_update();
            if wanted && subscribed_in != Some(current) {
                if self.upstream.subscribe(&channel).await.is_ok() {
                    subscribed_in = Some(current);
                }
            } else if !wanted
                && subscribed_in == Some(current)
                && self.upstream.unsubscribe(&channel).await.is_ok()
            {
                subscribed_in = None;
            }
            self.relaying.send_if_modified(|relaying| {
                let now_relaying = subscribed_in == Some(current);
                std::mem::replace(relaying, now_relaying) != now_relaying
            });
            tokio::select! {
                changed = active.changed() => if changed.is_err() { return },
                changed = generation.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Runs one script operation in `shard` (routed by `key`, one of the
    /// shard's keys); `args` follow the common header.
    pub(crate) async fn run(
        &self,
        op: &str,
        shard: u32,
        key: &[u8],
        args: &[&[u8]],
        now: u64,
    ) -> Result<Reply, StoreError> {
        let batched = || args.iter().map(|a| a.to_vec()).collect();
        if let Some(replied) = Batch::join(op, shard, key, batched, now) {
            return batch::joined(replied).await;
        }
        let call = self.script_call(op, shard, key, args, now);
        let value: Value = self
            .upstream
            .call(self.layout.slot(shard), async |c| {
                eval_loading(c, &call).await
            })
            .await?;
        reply_of(value)
    }

    /// FCALL of the session library: `op` in `shard`, routed by `key`.
    fn script_call<A: AsRef<[u8]>>(
        &self,
        op: &str,
        shard: u32,
        key: &[u8],
        args: &[A],
        now: u64,
    ) -> redis::Cmd {
        let mut call = LIBRARY.call();
        self.layout.declare_keys(&mut call, shard, key);
        self.config
            .call_header(&mut call, op, now, self.layout.tag(shard));
        for value in args {
            call.arg(value.as_ref());
        }
        call
    }

    /// Runs one script operation in each of `calls`' shards, pipelined per
    /// master; the replies in the order of `calls` (an error for those that
    /// failed).
    pub(crate) async fn run_each(
        &self,
        op: &str,
        calls: &[ShardCall],
        now: u64,
    ) -> Vec<Result<Reply, StoreError>> {
        let joined: Vec<_> = calls
            .iter()
            .map_while(|(shard, key, args)| Batch::join(op, *shard, key, || args.clone(), now))
            .collect();
        if !joined.is_empty() {
            // Inside a transaction's batch: every call joined it.
            let replies = joined.into_iter().map(batch::joined);
            return futures_util::future::join_all(replies).await;
        }
        let mut results: Vec<Option<Result<Reply, StoreError>>> =
            calls.iter().map(|_| None).collect();
        let groups = self.by_master(0..calls.len(), |&i| calls[i].0);
        let rounds = groups.into_iter().map(|members| async move {
            let Some(&first) = members.first() else {
                return Vec::new();
            };
            let slot = self.layout.slot(calls[first].0);
            let mut pipeline = redis::pipe();
            for &i in &members {
                let (shard, key, args) = &calls[i];
                pipeline.add_command(self.script_call(op, *shard, key, args, now));
            }
            let replies: Result<Vec<Value>, StoreError> = self
                .upstream
                .call(slot, async |c| {
                    // One round trip per master: the calls of shards the
                    // master no longer serves come back MOVED, each.
                    // A pipeline answers "Function not found" as its error,
                    // or as every reply: the library was lost (FUNCTION
                    // FLUSH, a restart) and nothing ran. Load it and run
                    // them again.
                    match pipeline.query_async::<Vec<Value>>(c).await {
                        Ok(values) if values.is_empty() || !values.iter().all(unloaded_reply) => {
                            Ok(values)
                        }
                        Err(error) if !unloaded(&error) => Err(error),
                        _ => {
                            LIBRARY.load_on(c).await?;
                            pipeline.query_async::<Vec<Value>>(c).await
                        }
                    }
                })
                .await
                .map_err(StoreError::from);
            match replies {
                Ok(values) => members
                    .into_iter()
                    .zip(values.into_iter().map(|v| match v {
                        Value::ServerError(error) => {
                            Err(StoreError::Upstream(match error.details() {
                                Some(details) => format!("{} {details}", error.code()),
                                None => error.code().to_string(),
                            }))
                        }
                        value => reply_of(value),
                    }))
                    .collect(),
                Err(error) => members
                    .into_iter()
                    .map(|i| (i, Err(error.clone())))
                    .collect(),
            }
        });
        for round in futures_util::future::join_all(rounds).await {
            for (i, result) in round {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(StoreError::Unavailable)))
            .collect()
    }

    /// Closes `batch` and sends the operations that joined it: one call of
    /// the script's `multi` operation with them all, or on a cluster one per
    /// hash slot (in parallel); answers each operation.
    pub async fn send_batch(&self, batch: &Batch) {
        let operations = batch.close();
        let cluster = self.upstream.is_cluster();
        let mut groups: Vec<(u16, Vec<Operation>)> = Vec::new();
        for operation in operations {
            let slot = self.layout.slot(operation.shard);
            match groups.iter_mut().find(|(s, _)| !cluster || *s == slot) {
                Some((_, group)) => group.push(operation),
                None => groups.push((slot, vec![operation])),
            }
        }
        let calls = groups.into_iter().map(|(slot, group)| async move {
            let span = tracing::debug_span!("upstream_transaction", count = group.len());
            let call = self.multi_call(&group);
            let replies = self
                .upstream
                .call(slot, async |c| eval_loading(c, &call).await)
                .instrument(span)
                .await;
            answer_each(replies, group.into_iter().map(|operation| operation.reply));
        });
        futures_util::future::join_all(calls).await;
    }

    /// FCALL of the library's `multi` operation with `group`, declaring
    /// every shard's keys it changes.
    fn multi_call(&self, group: &[Operation]) -> redis::Cmd {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for operation in group {
            let shard = operation.shard;
            let shard_keys = [
                self.layout.expiry_key(shard),
                self.layout.stream_key(shard),
                self.layout.intents_key(shard),
            ];
            let key = (!operation.key.is_empty()).then(|| operation.key.clone());
            for key in key.into_iter().chain(shard_keys) {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        let first = group.first().map_or(0, |o| o.shard);
        let mut call = LIBRARY.call();
        call.arg(keys.len()).arg(keys);
        let now = crate::store::now_ms();
        self.config
            .call_header(&mut call, "multi", now, self.layout.tag(first));
        call.arg(group.len());
        for operation in group {
            call.arg(&operation.op)
                .arg(self.layout.tag(operation.shard))
                .arg(operation.now)
                .arg(operation.args.len())
                .arg(&operation.args);
        }
        call
    }

    /// `items` in groups, one per master serving their shards (`shard` says
    /// each one's): what one pipelined round trip per master carries.
    fn by_master<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        shard: impl Fn(&T) -> u32,
    ) -> Vec<Vec<T>> {
        let mut groups: HashMap<Option<usize>, Vec<T>> = HashMap::new();
        for item in items {
            let master = self.upstream.master_of(self.layout.slot(shard(&item)));
            groups.entry(master).or_default().push(item);
        }
        groups.into_values().collect()
    }

    /// The shards (of `shards`) whose `kind` index (`x`: expiry, `i`:
    /// intents) has an entry due now: one pipelined read per master.
    pub(crate) async fn shards_with_due(&self, shards: &[u32], kind: &str) -> Vec<u32> {
        let now = crate::store::now_ms();
        let groups = self.by_master(shards.iter().copied(), |&shard| shard);
        let reads = groups.into_iter().map(|members| async move {
            let Some(&first) = members.first() else {
                return Vec::new();
            };
            let mut pipeline = redis::pipe();
            for &shard in &members {
                let key = match kind {
                    "x" => self.layout.expiry_key(shard),
                    _ => self.layout.intents_key(shard),
                };
                pipeline.cmd("ZCOUNT").arg(key).arg("-inf").arg(now);
            }
            let counts: Vec<Value> = self
                .upstream
                .call(self.layout.slot(first), async |c| {
                    pipeline.query_async::<Vec<Value>>(c).await
                })
                .await
                .unwrap_or_default();
            members
                .into_iter()
                .zip(counts)
                .filter(|(_, count)| integer(count).unwrap_or(0) > 0)
                .map(|(shard, _)| shard)
                .collect()
        });
        let mut due: Vec<u32> = futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect();
        due.sort_unstable();
        due
    }

    /// The shards in this sidecar's share of the background work.
    pub(crate) fn my_shards(&self) -> Vec<u32> {
        let share = self.share.load(Ordering::Relaxed);
        let (rank, count) = ((share >> 32) as u32, (share as u32).max(1));
        (0..self.layout.shards())
            .filter(|shard| shard % count == rank % count)
            .collect()
    }

    /// How many shards this sidecar's share holds now.
    pub fn shares_now(&self) -> usize {
        self.my_shards().len()
    }

    /// Sets this sidecar's share of the shards: it is `rank` of `count` live
    /// sidecars (the fleet's registry, ordered by node id).
    pub fn set_share(&self, rank: u32, count: u32) {
        let share = (u64::from(rank) << 32) | u64::from(count.max(1));
        if self.share.swap(share, Ordering::Relaxed) != share {
            tracing::debug!(rank, count, "background share of the shards");
        }
    }

    /// Runs `work` holding the bind lock of `conn` (in the conn's shard):
    /// binds of one conn whose session is in another shard than the conn's
    /// pointer run one at a time, so that the pointer and the sessions'
    /// `conn` fields change in the same order. The lock expires by itself
    /// ([`CONN_LOCK_MS`]) if its holder dies; waiting for it is bounded by
    /// the command timeout (then TRYAGAIN: nothing was done).
    pub(crate) async fn with_conn_lock<T>(
        &self,
        conn: &[u8],
        work: impl AsyncFnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // This sidecar's binds of one conn queue here first, in order, so
        // that only one of them at a time asks the upstream's lock.
        let local = self.conn_locks.entry(Key::from(conn)).or_default().clone();
        let result = {
            let _queued = local.lock().await;
            self.with_upstream_conn_lock(conn, work).await
        };
        self.conn_locks
            .remove_if(conn, |_, held| Arc::strong_count(held) == 2);
        result
    }

    /// The upstream half of [`WriteThrough::with_conn_lock`].
    async fn with_upstream_conn_lock<T>(
        &self,
        conn: &[u8],
        work: impl AsyncFnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let shard = self.layout.shard_of(conn);
        let slot = self.layout.slot(shard);
        let key = self.layout.lock_key(conn);
        let token = uuid::Uuid::new_v4().to_string();
        let deadline = std::time::Instant::now() + self.upstream.command_timeout();
        let mut wait = Duration::from_millis(1);
        loop {
            let taken: Option<String> = self
                .upstream
                .call(slot, async |c| {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(CONN_LOCK_MS)
                        .query_async(c)
                        .await
                })
                .await?;
            if taken.is_some() {
                break;
            }
            if std::time::Instant::now() + wait > deadline {
                self.stats.conn_lock_timeouts.inc();
                return Err(StoreError::Unavailable);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(20));
        }
        let result = work().await;
        let now = crate::store::now_ms();
        if self
            .run("unlock", shard, &key, &[conn, token.as_bytes()], now)
            .await
            .is_err()
        {
            // It expires by itself.
            tracing::debug!("conn lock not released");
        }
        result
    }

    /// Runs a script operation on a session, in its shard, then its
    /// cross-shard follow-ups.
    async fn run_on(
        &self,
        op: &str,
        id: &[u8],
        args: &[&[u8]],
        now: u64,
    ) -> Result<Reply, StoreError> {
        let shard = self.layout.shard_of(id);
        let mut reply = self
            .run(op, shard, &self.layout.session_key(id), args, now)
            .await?;
        let followups = std::mem::take(&mut reply.followups);
        self.follow_up(shard, followups, Mode::Now).await;
        Ok(reply)
    }

    /// Drops our copies of what a script call changed, then installs the
    /// main session's new state when the call replied it.
    fn absorb(&self, id: &[u8], state: &Value, touched: &[Vec<u8>], ticket: Ticket) -> Option<u64> {
        let parsed = parse_session(state).filter(|(key, _)| &**key == id);
        for other in touched {
            // The session itself is replaced by its new state just below.
            if parsed.is_none() || &other[..] != id {
                self.cache.invalidate(other);
            }
        }
        let (key, session) = parsed?;
        let version = session.version;
        self.install(key, session, ticket);
        Some(version)
    }

    fn ticket(&self, id: &[u8]) -> Ticket {
        self.cache.ticket(id)
    }

    /// A creation's score in its user's index (see `user_add` in
    /// `sessions.lua`): its ms times 4096 plus this sidecar's creation
    /// count modulo 4096, so that this sidecar's creations of one ms keep
    /// their order without the library searching for a free score.
    fn creation_order(&self, now: u64) -> u64 {
        static CREATIONS: AtomicU64 = AtomicU64::new(0);
        now * 4096 + CREATIONS.fetch_add(1, Ordering::Relaxed) % 4096
    }

    /// Applies a mutation that replies the new session; returns its version.
    async fn mutate(
        &self,
        op: &str,
        id: &[u8],
        args: &[&[u8]],
        now: u64,
    ) -> Result<u64, StoreError> {
        let ticket = self.ticket(id);
        let reply = self.run_on(op, id, args, now).await?;
        self.absorb(id, &reply.result, &reply.touched, ticket)
            .ok_or(StoreError::NoSession)
    }

    /// Applies a mutation that replies `{ value, session }`: absorbs the new
    /// session (when the session was there) and returns the value.
    async fn mutate_for_value(
        &self,
        op: &str,
        id: &[u8],
        args: &[&[u8]],
        now: u64,
    ) -> Result<Option<Value>, StoreError> {
        let ticket = self.ticket(id);
        let reply = self.run_on(op, id, args, now).await?;
        let (value, state) = pair(reply.result);
        if let Some(state) = state {
            self.absorb(id, &state, &reply.touched, ticket);
        }
        Ok(value)
    }

    // ----- reads -----------------------------------------------------------

    /// Runs `f` on the live session: the hot copy, or one read through.
    pub async fn read<R>(
        &self,
        id: &[u8],
        now: u64,
        f: impl FnOnce(&Session) -> R,
    ) -> Result<Option<R>, StoreError> {
        // The closure is used once, either here or after the read-through.
        let mut f = Some(f);
        if let Some(result) = self.cache.read(id, now, |s| f.take().map(|f| f(s))) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(result);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.read_through(id, now, |s| f.take().map(|f| f(s)))
            .await
            .map(Option::flatten)
    }

    /// [`WriteThrough::read`] with the hot copy under its shard's write
    /// lock, for a reader that keeps something derived in it.
    pub async fn read_mut<R>(
        &self,
        id: &[u8],
        now: u64,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>, StoreError> {
        let mut f = Some(f);
        if let Some(result) = self.cache.read_mut(id, now, |s| f.take().map(|f| f(s))) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(result);
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.read_through_mut(id, now, |s| f.take().map(|f| f(s)))
            .await
            .map(Option::flatten)
    }

    /// Runs `f` on the live session as the upstream has it now, whatever
    /// the hot copy says (WATCH's snapshots: a change another sidecar made
    /// may not have reached this one's copy yet).
    pub async fn read_through<R>(
        &self,
        id: &[u8],
        now: u64,
        f: impl FnOnce(&Session) -> R,
    ) -> Result<Option<R>, StoreError> {
        self.read_through_mut(id, now, |s| f(s)).await
    }

    /// [`WriteThrough::read_through`], letting `f` keep something derived
    /// in the copy it installs.
    async fn read_through_mut<R>(
        &self,
        id: &[u8],
        now: u64,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>, StoreError> {
        let ticket = self.ticket(id);
        let key = self.session_key(id);
        let value: Value = self
            .upstream
            .call(self.layout.slot(self.layout.shard_of(id)), async |c| {
                redis::cmd("HGETALL").arg(&key).query_async(c).await
            })
            .await?;
        let Some((key, mut session)) = parse_session(&value) else {
            return Ok(None);
        };
        if !session.is_live(now) {
            return Ok(None);
        }
        let result = f(&mut session);
        self.install(key, session, ticket);
        Ok(Some(result))
    }

    pub async fn exists(&self, ids: &[Bytes], now: u64) -> Result<usize, StoreError> {
        let mut live = 0;
        for id in ids {
            live += usize::from(self.read(id, now, |_| ()).await?.is_some());
        }
        Ok(live)
    }

    /// The session bound to `conn`: the conn's pointer, checked against the
    /// session (live, and still bound to `conn`).
    pub async fn by_conn(&self, conn: &[u8], now: u64) -> Result<Option<Key>, StoreError> {
        let key = self.layout.conn_key(conn);
        let pointer: Option<Vec<u8>> = self
            .upstream
            .call(self.layout.slot(self.layout.shard_of(conn)), async |c| {
                redis::cmd("GET").arg(&key).query_async(c).await
            })
            .await?;
        let Some(id) = pointer else {
            return Ok(None);
        };
        let bound = self
            .read(&id, now, |s| s.conn.as_deref() == Some(conn))
            .await?;
        Ok((bound == Some(true)).then(|| Key::from(&id[..])))
    }

    /// The user's live sessions, oldest first: the user's index, its own
    /// shard's entries checked there, the others' here (entries found gone
    /// are dropped from the index).
    pub async fn by_user(&self, user: &[u8], now: u64) -> Result<Vec<Key>, StoreError> {
        let shard = self.layout.shard_of(user);
        let reply = self
            .run("byuser", shard, &self.layout.user_key(user), &[user], now)
            .await?;
        for id in &reply.touched {
            self.cache.invalidate(id);
        }
        let Value::Array(entries) = reply.result else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::with_capacity(entries.len());
        let mut gone: Vec<Key> = Vec::new();
        for entry in entries {
            let (id, checked) = pair(entry);
            let Some(id) = id.and_then(bulk) else {
                continue;
            };
            if checked.as_ref().and_then(integer) == Some(1) {
                ids.push(Key::from(&id[..]));
                continue;
            }
            match self
                .read(&id, now, |s| s.user.as_deref() == Some(user))
                .await?
            {
                Some(true) => ids.push(Key::from(&id[..])),
                _ => gone.push(Key::from(&id[..])),
            }
        }
        if !gone.is_empty() {
            let mut args: Vec<&[u8]> = vec![user];
            args.extend(gone.iter().map(|id| &id[..]));
            // Tidying: a failure leaves entries every read skips.
            let _ = self
                .run("user_rem", shard, &self.layout.user_key(user), &args, now)
                .await;
        }
        Ok(ids)
    }

    /// Live sessions in the upstream: every shard's expiry index counted,
    /// one pipelined round trip per master.
    pub async fn count(&self, now: u64) -> Result<usize, StoreError> {
        // Without a master known, each group's call fails fast (Unavailable).
        let groups = self.by_master(0..self.layout.shards(), |&shard| shard);
        let since = format!("({now}");
        let counts = groups.into_iter().map(|shards| {
            let since = &since;
            async move {
                let mut pipeline = redis::pipe();
                for &shard in &shards {
                    pipeline
                        .cmd("ZCOUNT")
                        .arg(self.layout.expiry_key(shard))
                        .arg(since)
                        .arg("+inf");
                }
                let slot = self.layout.slot(shards.first().copied().unwrap_or(0));
                self.upstream
                    .call(slot, async |c| pipeline.query_async::<Vec<u64>>(c).await)
                    .await
                    .map(|counts| counts.into_iter().sum::<u64>())
            }
        });
        let mut total = 0u64;
        for count in futures_util::future::join_all(counts).await {
            total += count?;
        }
        Ok(total as usize)
    }

    // ----- writes ------------------------------------------------------------

    /// Creates a session, in a script call shared with concurrent creations
    /// (see [`Creations`]). The new state is fully known here (the script
    /// writes what it is given), so the script replies only the other
    /// sessions it changed and the hot copy is built from the request.
    pub async fn create(&self, request: CreateSession, now: u64) -> Result<Key, StoreError> {
        let user = request.user.map(|u| Key::from(&u[..]));
        let conn = request.conn.map(|c| Key::from(&c[..]));
        // A generated id is a fresh UUID v4 (the script skips its EXISTS
        // check), made to land in the shard of its user, so that the
        // session and the user's index change in one call.
        let (id, fresh) = match request.id {
            Some(id) => (Key::from(&id[..]), false),
            None => {
                let shard = match &user {
                    Some(user) => self.layout.shard_of(user),
                    // No user: the shard of the moment (it changes every
                    // 10 ms), so that creations arriving together share a
                    // call, and spread evenly over time.
                    _ => ((now / 10) as u32) & (self.layout.shards() - 1),
                };
                (self.layout.generate_id(shard), true)
            }
        };
        let shard = self.layout.shard_of(&id);
        let user_here = user
            .as_ref()
            .is_some_and(|u| self.layout.shard_of(u) == shard);
        let conn_here = conn
            .as_ref()
            .is_some_and(|c| self.layout.shard_of(c) == shard);
        let ttl_ms = request.ttl_ms.unwrap_or(self.config.default_ttl_ms);
        let expires = now + ttl_ms;
        let event = crate::events::to_json(&Event {
            kind: EventKind::Created,
            id: id.clone(),
            user: user.clone(),
            conn: conn.clone(),
            node: self.config.node.clone(),
            at: now,
            reason: None,
        });
        // This creation's arguments for the script (see `create_session`
        // there), in one buffer until its call is built.
        let mut args = redis::Cmd::with_capacity(18 + 2 * request.attrs.len(), 256);
        args.arg(now)
            .arg(self.creation_order(now))
            .arg(&id[..])
            .arg(user.as_deref().unwrap_or_default())
            .arg(conn.as_deref().unwrap_or_default())
            .arg(flag(user.is_some()))
            .arg(flag(conn.is_some()))
            .arg(ttl_ms)
            .arg(request.max_per_user.unwrap_or(0))
            .arg(self.config.limits.max_attrs)
            .arg(flag(fresh))
            .arg(expires)
            .arg(expires + self.config.key_margin_ms)
            .arg(flag(user_here))
            .arg(flag(conn_here))
            .arg(now + REPAIR_AFTER_MS)
            .arg(&event[..])
            .arg(request.attrs.len());
        for (name, value) in &request.attrs {
            args.arg(&name[..]).arg(&value[..]);
        }
        let ticket = self.ticket(&id);
        let apply = async || {
            let joined = Batch::join("create", shard, &[], || simple_args(&args), now);
            let mut reply = match joined {
                Some(replied) => batch::joined(replied).await?,
                None => self.creations.submit(shard, args).await?,
            };
            for other in &reply.touched {
                self.cache.invalidate(other);
            }
            // Sessions of the user's index in this shard that MAXPERUSER
            // evicted (those of other shards go by `evict` intents): the
            // entry's result is 1 + their number.
            let evicted = integer(&reply.result).unwrap_or(1).max(1) - 1;
            self.counts
                .evicted
                .fetch_add(evicted as u64, Ordering::Relaxed);
            self.lower_next_due(shard, expires);
            let followups = std::mem::take(&mut reply.followups);
            self.follow_up(shard, followups, Mode::Now).await;
            Ok(())
        };
        match &conn {
            Some(conn) if !conn_here => self.with_conn_lock(conn, apply).await?,
            _ => apply().await?,
        }
        let session = Session {
            user,
            conn,
            node: self.config.node.clone(),
            status: Status::Active,
            created: now,
            last_active: AtomicU64::new(now),
            expires,
            ttl: ttl_ms,
            version: 1,
            seq: 0,
            moving: false,
            attrs: Attributes::from_pairs(request.attrs.iter().map(|(n, v)| (&n[..], &v[..]))),
            json: Default::default(),
        };
        self.install(id.clone(), session, ticket);
        self.counts.created.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    pub async fn attr_set(
        &self,
        id: &[u8],
        pairs: &[(Bytes, Bytes)],
        now: u64,
    ) -> Result<u64, StoreError> {
        let max_attrs = self.config.limits.max_attrs.to_string();
        let mut args: Vec<&[u8]> = vec![id, max_attrs.as_bytes()];
        for (name, value) in pairs {
            args.push(name);
            args.push(value);
        }
        self.mutate("attr_set", id, &args, now).await
    }

    pub async fn attr_del(
        &self,
        id: &[u8],
        names: &[Bytes],
        now: u64,
    ) -> Result<usize, StoreError> {
        let mut args: Vec<&[u8]> = vec![id];
        args.extend(names.iter().map(|n| &n[..]));
        let removed = self.mutate_for_value("attr_del", id, &args, now).await?;
        Ok(removed.as_ref().and_then(integer).unwrap_or(0).max(0) as usize)
    }

    pub async fn attr_incrby(
        &self,
        id: &[u8],
        name: &[u8],
        increment: i64,
        now: u64,
    ) -> Result<i64, StoreError> {
        let increment = increment.to_string();
        let max_attrs = self.config.limits.max_attrs.to_string();
        let args: Vec<&[u8]> = vec![id, name, increment.as_bytes(), max_attrs.as_bytes()];
        let value = self.mutate_for_value("attr_incrby", id, &args, now).await?;
        // The script replies the stored value as a string (exact past 2^53).
        value
            .and_then(bulk)
            .and_then(|v| crate::protocol::parse_i64(&v))
            .ok_or(StoreError::NoSession)
    }

    pub async fn update(
        &self,
        id: &[u8],
        request: &UpdateSession,
        now: u64,
    ) -> Result<u64, StoreError> {
        let if_version = request
            .if_version
            .map(|v| v.to_string())
            .unwrap_or_default();
        let status = request.status.map(|s| s.as_str()).unwrap_or_default();
        let ttl = request.ttl_ms.map(|t| t.to_string()).unwrap_or_default();
        let max_attrs = self.config.limits.max_attrs.to_string();
        let sets = request.set_attrs.len().to_string();
        let new_user_here = request
            .user
            .as_ref()
            .is_some_and(|u| self.layout.shard_of(u) == self.layout.shard_of(id));
        let conn_here = request
            .conn
            .as_ref()
            .is_some_and(|c| self.layout.shard_of(c) == self.layout.shard_of(id));
        let repair_at = (now + REPAIR_AFTER_MS).to_string();
        let mut args: Vec<&[u8]> = vec![
            id,
            if_version.as_bytes(),
            request.user.as_deref().unwrap_or_default(),
            request.conn.as_deref().unwrap_or_default(),
            status.as_bytes(),
            ttl.as_bytes(),
            flag(request.user.is_some()),
            flag(request.conn.is_some()),
            flag(new_user_here),
            flag(conn_here),
            repair_at.as_bytes(),
            max_attrs.as_bytes(),
            sets.as_bytes(),
        ];
        for (name, value) in &request.set_attrs {
            args.push(name);
            args.push(value);
        }
        args.extend(request.del_attrs.iter().map(|n| &n[..]));
        match &request.conn {
            Some(conn) if !conn_here => {
                self.with_conn_lock(conn, async || self.mutate("update", id, &args, now).await)
                    .await
            }
            _ => self.mutate("update", id, &args, now).await,
        }
    }

    /// The heartbeat. When the hot copy shows that it will not extend the
    /// expiry, it is answered from memory and its `last_active` queued for
    /// the next batch; otherwise it goes through the upstream.
    pub async fn touch(&self, id: &[u8], now: u64) -> Result<Option<u64>, StoreError> {
        let absorbed = self.cache.read(id, now, |s| {
            let left = s.expires - now;
            (left >= s.ttl / 2).then(|| {
                s.last_active.store(now, Ordering::Relaxed);
                left
            })
        });
        if let Some(Some(left)) = absorbed {
            self.stats
                .heartbeats_absorbed
                .fetch_add(1, Ordering::Relaxed);
            self.heartbeats.insert(Key::from(id), now);
            return Ok(Some(left));
        }
        let ticket = self.ticket(id);
        // Boxed: the absorbed heartbeat above is the common case.
        let reply = Box::pin(self.run_on("touch", id, &[id], now)).await?;
        self.absorb(id, &reply.result, &reply.touched, ticket);
        Ok(parse_session(&reply.result).map(|(_, s)| s.expires.saturating_sub(now)))
    }

    pub async fn expire(&self, id: &[u8], ttl_ms: u64, now: u64) -> Result<bool, StoreError> {
        let ttl = ttl_ms.to_string();
        match self.mutate("expire", id, &[id, ttl.as_bytes()], now).await {
            Ok(_) => Ok(true),
            Err(StoreError::NoSession) => Ok(false),
            Err(error) => Err(error),
        }
    }

    pub async fn delete<K: AsRef<[u8]>>(
        &self,
        ids: &[K],
        now: u64,
        reason: Option<&str>,
    ) -> Result<usize, StoreError> {
        let mut by_shard: HashMap<u32, Vec<&[u8]>> = HashMap::new();
        for id in ids {
            by_shard
                .entry(self.layout.shard_of(id.as_ref()))
                .or_default()
                .push(id.as_ref());
        }
        let calls: Vec<ShardCall> = by_shard
            .into_iter()
            .map(|(shard, ids)| {
                let mut args = vec![reason.unwrap_or_default().as_bytes().to_vec(), Vec::new()];
                args.extend(ids.iter().map(|id| id.to_vec()));
                (shard, self.session_key(ids[0]), args)
            })
            .collect();
        let replies = self.run_each("delete", &calls, now).await;
        for id in ids {
            self.cache.invalidate(id.as_ref());
        }
        let mut deleted = 0;
        let mut first_error = None;
        for ((shard, _, _), reply) in calls.iter().zip(replies) {
            match reply {
                Ok(mut reply) => {
                    deleted += self.deleted(&reply, reason == Some("evicted"));
                    let followups = std::mem::take(&mut reply.followups);
                    self.follow_up(*shard, followups, Mode::Now).await;
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            // Some deleted, some not: the count of those that were.
            Some(error) if deleted == 0 => Err(error),
            _ => Ok(deleted),
        }
    }

    /// KILLUSER: the user's own shard's sessions go in one call, with the
    /// user's index; the others' (ids given by clients, in other shards)
    /// then, each only if it is still the user's.
    pub async fn kill_user(&self, user: &[u8], now: u64) -> Result<usize, StoreError> {
        let shard = self.layout.shard_of(user);
        let mut reply = self
            .run("killuser", shard, &self.layout.user_key(user), &[user], now)
            .await?;
        for id in &reply.touched {
            self.cache.invalidate(id);
        }
        // Its intents (the other shards' deletions) are done below, then
        // marked done; a crash before leaves them to the repairer.
        let intents = std::mem::take(&mut reply.followups);
        super::intents::crash_if_injected(&intents);
        let (here, elsewhere) = pair(reply.result);
        let mut deleted = here.as_ref().and_then(integer).unwrap_or(0).max(0) as usize;
        self.counts
            .deleted
            .fetch_add(deleted as u64, Ordering::Relaxed);
        let elsewhere: Vec<Vec<u8>> = match elsewhere {
            Some(Value::Array(ids)) => ids.into_iter().filter_map(bulk).collect(),
            _ => Vec::new(),
        };
        let mut by_shard: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
        for id in elsewhere {
            by_shard
                .entry(self.layout.shard_of(&id))
                .or_default()
                .push(id);
        }
        let calls: Vec<ShardCall> = by_shard
            .into_iter()
            .map(|(shard, ids)| {
                let key = self.session_key(&ids[0]);
                let mut args = vec![b"killuser".to_vec(), user.to_vec()];
                args.extend(ids);
                (shard, key, args)
            })
            .collect();
        for ((shard, _, args), reply) in
            calls.iter().zip(self.run_each("delete", &calls, now).await)
        {
            for id in &args[2..] {
                self.cache.invalidate(id);
            }
            let mut reply = reply?;
            deleted += self.deleted(&reply, false);
            let followups = std::mem::take(&mut reply.followups);
            self.follow_up(*shard, followups, Mode::Now).await;
        }
        // Each intent's deletion finds nothing left to delete: it is marked done.
        self.follow_up(shard, intents, Mode::Now).await;
        Ok(deleted)
    }

    /// The count a deleting call replied (counted as deleted, or as evicted
    /// for MAXPERUSER); our copies of what it touched go.
    pub(crate) fn deleted(&self, reply: &Reply, evicted: bool) -> usize {
        for id in &reply.touched {
            self.cache.invalidate(id);
        }
        let deleted = integer(&reply.result).unwrap_or(0).max(0) as usize;
        let count = if evicted {
            &self.counts.evicted
        } else {
            &self.counts.deleted
        };
        count.fetch_add(deleted as u64, Ordering::Relaxed);
        deleted
    }

    pub async fn bind(&self, id: &[u8], conn: &[u8], now: u64) -> Result<u64, StoreError> {
        let repair_at = (now + REPAIR_AFTER_MS).to_string();
        let conn_here = self.layout.shard_of(conn) == self.layout.shard_of(id);
        let args: [&[u8]; 4] = [id, conn, flag(conn_here), repair_at.as_bytes()];
        if conn_here {
            return self.mutate("bind", id, &args, now).await;
        }
        self.with_conn_lock(conn, async || self.mutate("bind", id, &args, now).await)
            .await
    }

    pub async fn unbind(
        &self,
        id: &[u8],
        grace_ms: Option<u64>,
        now: u64,
    ) -> Result<u64, StoreError> {
        let grace = grace_ms.map(|g| g.to_string()).unwrap_or_default();
        self.mutate("unbind", id, &[id, grace.as_bytes()], now)
            .await
    }

    // ----- migration -----------------------------------------------------------

    /// The ids of every live session this sidecar owns: those held hot, and
    /// those the upstream says are ours (a scan of the expiry index, a page
    /// per script call), for copies evicted or never read here.
    pub async fn all_owned(&self, now: u64) -> Result<Vec<Key>, StoreError> {
        const PAGE: &[u8] = b"1000";
        let node = &self.config.node;
        let mut owned = self.cache.ids_where(now, |s| s.node == *node);
        // Every shard's index, a page of each at a time, pipelined per master.
        let mut cursors: Vec<(u32, Vec<u8>)> = (0..self.layout.shards())
            .map(|s| (s, b"0".to_vec()))
            .collect();
        while !cursors.is_empty() {
            let calls: Vec<ShardCall> = cursors
                .iter()
                .map(|(shard, cursor)| {
                    (
                        *shard,
                        self.layout.expiry_key(*shard),
                        vec![cursor.clone(), PAGE.to_vec()],
                    )
                })
                .collect();
            let mut next = Vec::new();
            for ((shard, _, _), reply) in
                calls.iter().zip(self.run_each("owned", &calls, now).await)
            {
                let (cursor, ids) = pair(reply?.result);
                if let Some(Value::Array(ids)) = ids {
                    owned.extend(ids.into_iter().filter_map(bulk).map(Key::from));
                }
                let cursor = cursor.and_then(bulk).unwrap_or_else(|| b"0".to_vec());
                if cursor != b"0" {
                    next.push((*shard, cursor));
                }
            }
            cursors = next;
        }
        owned.sort_unstable();
        owned.dedup();
        Ok(owned)
    }

    /// The portable form of the live sessions among `ids` that this sidecar
    /// owns (hot copies, or read through, 64 at a time: the multiplexed
    /// upstream connection pipelines them).
    pub async fn owned(&self, ids: &[Key], now: u64) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        const IN_FLIGHT: usize = 64;
        let node = &self.config.node;
        let encode_if_owned = |s: &Session| {
            (s.node == *node).then(|| {
                let mut payload = Vec::new();
                crate::store::transfer::encode(s, &mut payload);
                payload
            })
        };
        let mut owned = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(IN_FLIGHT) {
            let mut reads = Vec::with_capacity(chunk.len());
            for id in chunk {
                reads.push(self.read(id, now, encode_if_owned));
            }
            for (id, payload) in chunk
                .iter()
                .zip(futures_util::future::join_all(reads).await)
            {
                if let Some(Some(payload)) = payload? {
                    owned.push((id.clone(), payload));
                }
            }
        }
        Ok(owned)
    }

    /// SESSION.IMPORT in write-through mode: takes the sessions `from` hands
    /// over, each only if the upstream still has it owned by `from` at the
    /// version given (one script call, the owner change written with the
    /// version compare-and-set), and holds the moved ones hot. One result each.
    pub async fn adopt(
        &self,
        from: &[u8],
        sessions: &[(Key, u64)],
        now: u64,
    ) -> Result<Vec<bool>, StoreError> {
        let tickets: Vec<Ticket> = sessions.iter().map(|(id, _)| self.ticket(id)).collect();
        // One call per shard, pipelined per master.
        let mut by_shard: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, (id, _)) in sessions.iter().enumerate() {
            by_shard
                .entry(self.layout.shard_of(id))
                .or_default()
                .push(i);
        }
        let groups: Vec<Vec<usize>> = by_shard.into_values().collect();
        let calls: Vec<ShardCall> = groups
            .iter()
            .map(|members| {
                let first = &sessions[members[0]].0;
                let mut args = vec![from.to_vec()];
                for &i in members {
                    let (id, version) = &sessions[i];
                    args.push(id.to_vec());
                    args.push(version.to_string().into_bytes());
                }
                (self.layout.shard_of(first), self.session_key(first), args)
            })
            .collect();
        let mut taken = vec![false; sessions.len()];
        let mut tickets: Vec<Option<Ticket>> = tickets.into_iter().map(Some).collect();
        for (members, reply) in groups
            .iter()
            .zip(self.run_each("migrate", &calls, now).await)
        {
            let Value::Array(states) = reply?.result else {
                return Err(StoreError::Upstream(
                    "ERR unexpected reply from the session script".into(),
                ));
            };
            for (&i, state) in members.iter().zip(&states) {
                if let Some(ticket) = tickets[i].take() {
                    taken[i] = self.absorb(&sessions[i].0, state, &[], ticket).is_some();
                }
            }
        }
        let moved = taken.iter().filter(|t| **t).count() as u64;
        self.counts.migrated_in.fetch_add(moved, Ordering::Relaxed);
        Ok(taken)
    }

    /// Sessions another sidecar took: our copies go (it owns them now).
    pub fn handed_over(&self, ids: &[Key]) {
        for id in ids {
            self.cache.invalidate(id);
        }
        self.counts
            .migrated_out
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
    }

    // ----- background work ---------------------------------------------------

    /// Writes the queued `last_active` of absorbed heartbeats, one script call
    /// per batch, every `heartbeat_interval`; and claims due expiries every
    /// `sweep_interval`. Runs until `shutdown`, then flushes once more.
    pub async fn run_background(self: Arc<Self>, shutdown: CancellationToken) {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut audit = tokio::time::interval(AUDIT_INTERVAL);
        audit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(NEXT_DUE_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut repair = tokio::time::interval(REPAIR_INTERVAL);
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut audit_at = (0, HashMap::new());
        loop {
            tokio::select! {
                _ = heartbeat.tick() => self.flush_heartbeats().await,
                _ = sweep.tick() => {
                    self.sweep().await;
                    self.flush_done().await;
                }
                _ = refresh.tick() => self.refresh_next_due().await,
                _ = repair.tick() => self.repair().await,
                _ = audit.tick() => audit_at = self.audit(audit_at).await,
                _ = shutdown.cancelled() => {
                    self.flush_heartbeats().await;
                    self.flush_done().await;
                    return;
                }
            }
        }
    }

    async fn flush_heartbeats(&self) {
        const BATCH: usize = 512;
        if self.heartbeats.is_empty() {
            return;
        }
        let pending: Vec<(Key, u64)> = self
            .heartbeats
            .iter()
            .map(|entry| (entry.key().clone(), *entry.value()))
            .collect();
        // One call per shard, pipelined per master.
        let mut by_shard: HashMap<u32, Vec<(Key, u64)>> = HashMap::new();
        for (id, at) in pending {
            by_shard
                .entry(self.layout.shard_of(&id))
                .or_default()
                .push((id, at));
        }
        let chunks: Vec<&[(Key, u64)]> = by_shard.values().flat_map(|c| c.chunks(BATCH)).collect();
        let calls: Vec<ShardCall> = chunks
            .iter()
            .map(|chunk| {
                let first = &chunk[0].0;
                let mut args = Vec::with_capacity(chunk.len() * 2);
                for (id, at) in *chunk {
                    args.push(id.to_vec());
                    args.push(at.to_string().into_bytes());
                }
                (self.layout.shard_of(first), self.session_key(first), args)
            })
            .collect();
        let now = crate::store::now_ms();
        for (chunk, reply) in chunks
            .iter()
            .zip(self.run_each("heartbeat", &calls, now).await)
        {
            match reply {
                Ok(_) => {
                    self.stats.heartbeat_flushes.fetch_add(1, Ordering::Relaxed);
                    for (id, at) in *chunk {
                        // A newer heartbeat since the snapshot stays queued.
                        self.heartbeats.remove_if(id, |_, queued| queued == at);
                    }
                }
                Err(error) => tracing::debug!(?error, "heartbeat flush failed; will retry"),
            }
        }
    }

    /// An invalidation of `id`: its copy, if any, is checked in the next batch.
    pub fn suspect(&self, id: &[u8]) {
        match self.cache.suspect(id, crate::store::now_ms()) {
            Some(suspect) => self.check_later(suspect),
            // No copy to check against (yet: this sidecar's own write may
            // not have installed it): checked by the verifier.
            None if self.tracking.any() => {
                self.orphans
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(Key::from(id));
                self.suspects_added.notify_one();
            }
            None => {}
        }
    }

    fn check_later(&self, suspect: Suspect) {
        self.suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(suspect.id.clone(), suspect);
        self.suspects_added.notify_one();
    }

    /// Installs a copy in the hot cache, to be checked if it may be stale.
    fn install(&self, key: Key, session: Session, ticket: Ticket) {
        if let Some(suspect) = self.cache.install(key, session, ticket) {
            self.check_later(suspect);
        }
    }

    /// Checks suspects as they come, in its own task so that a flood of
    /// invalidations never delays sweeps or heartbeat flushes.
    pub async fn run_verifier(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.suspects_added.notified() => self.verify_suspects().await,
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Checks the suspects against the upstream's state (creation time and
    /// version), one pipelined round trip per batch; then the orphans.
    async fn verify_suspects(&self) {
        const BATCH: usize = 1024;
        loop {
            let batch: Vec<Suspect> = {
                let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
                let ids: Vec<Key> = suspects.keys().take(BATCH).cloned().collect();
                ids.iter().filter_map(|id| suspects.remove(id)).collect()
            };
            if batch.is_empty() {
                break;
            }
            for (suspect, identity) in self.upstream_identities(batch, |s| &s.id).await {
                if self.cache.settle(&suspect, identity) {
                    self.stats.verified.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Changed or gone through another sidecar.
                    self.tracking.invalidate(&suspect.id, None);
                }
            }
        }
        let orphans: Vec<Key> =
            std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        if orphans.is_empty() {
            return;
        }
        let now = crate::store::now_ms();
        for (id, identity) in self.upstream_identities(orphans, |id| id).await {
            let copy = self.cache.read(&id, now, |s| (s.created, s.version));
            if copy.is_none() || copy != identity {
                self.tracking.invalidate(&id, None);
            }
        }
    }

    /// The upstream's (creation time, version) of each item's session (None:
    /// no session), one pipelined round trip per master; the items of an
    /// unreachable master are left out (the cache is flushed then anyway).
    async fn upstream_identities<T>(
        &self,
        items: Vec<T>,
        id: impl Fn(&T) -> &Key + Copy,
    ) -> Vec<(T, Option<(u64, u64)>)> {
        let groups = self.by_master(items, |item| self.layout.shard_of(id(item)));
        let checks = groups.into_iter().map(|items| async move {
            let mut pipeline = redis::pipe();
            for item in &items {
                pipeline
                    .cmd("HMGET")
                    .arg(self.session_key(id(item)))
                    .arg("created")
                    .arg("version");
            }
            let slot = self.layout.slot(self.layout.shard_of(id(&items[0])));
            let states = self
                .upstream
                .call(slot, async |c| {
                    pipeline
                        .query_async::<Vec<(Option<u64>, Option<u64>)>>(c)
                        .await
                })
                .await;
            (items, states)
        });
        let mut known = Vec::new();
        for (items, states) in futures_util::future::join_all(checks).await {
            let Ok(states) = states else { continue };
            for (item, state) in items.into_iter().zip(states) {
                let identity = match state {
                    (Some(created), Some(version)) => Some((created, version)),
                    _ => None,
                };
                known.push((item, identity));
            }
        }
        known
    }

    /// One page of the expiry-index audit of each of the next
    /// 1/[`AUDIT_PASS_TICKS`] of the shards of this sidecar's share (one call each,
    /// pipelined per master); returns where the next tick starts and the
    /// shards' cursors.
    async fn audit(
        &self,
        (next, mut cursors): (u32, HashMap<u32, String>),
    ) -> (u32, HashMap<u32, String>) {
        const PAGE: &[u8] = b"500";
        let mine = self.my_shards();
        let start = mine.iter().position(|&s| s >= next).unwrap_or(0);
        let batch: Vec<u32> = mine
            .iter()
            .cycle()
            .skip(start)
            .take(mine.len().div_ceil(AUDIT_PASS_TICKS))
            .copied()
            .collect();
        let calls: Vec<ShardCall> = batch
            .iter()
            .map(|&shard| {
                let cursor = cursors.get(&shard).cloned().unwrap_or_else(|| "0".into());
                (
                    shard,
                    self.layout.expiry_key(shard),
                    vec![cursor.into_bytes(), PAGE.to_vec()],
                )
            })
            .collect();
        let now = crate::store::now_ms();
        for ((shard, _, _), reply) in calls.iter().zip(self.run_each("audit", &calls, now).await) {
            let Ok(reply) = reply else { continue };
            let cursor = match reply.result {
                Value::Array(parts) => parts
                    .into_iter()
                    .next()
                    .and_then(bulk)
                    .and_then(|c| String::from_utf8(c).ok()),
                _ => None,
            }
            .unwrap_or_else(|| "0".into());
            if cursor == "0" {
                cursors.remove(shard);
            } else {
                cursors.insert(*shard, cursor);
            }
        }
        let after = batch.last().map_or(0, |&s| s + 1);
        (after, cursors)
    }

    /// A session of `shard` expires at `at`: the sweep looks there by then.
    fn lower_next_due(&self, shard: u32, at: u64) {
        if let Some(due) = self.next_due.get(shard as usize) {
            due.fetch_min(at, Ordering::Relaxed);
        }
    }

    /// Learns when each shard of this sidecar's share has its earliest
    /// expiry (other sidecars' sessions included): one pipelined read per
    /// master.
    async fn refresh_next_due(&self) {
        let groups = self.by_master(self.my_shards(), |&shard| shard);
        let reads = groups.into_iter().map(|shards| async move {
            let mut pipeline = redis::pipe();
            for &shard in &shards {
                pipeline
                    .cmd("ZRANGE")
                    .arg(self.layout.expiry_key(shard))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
            }
            let slot = self.layout.slot(shards[0]);
            let firsts = self
                .upstream
                .call(slot, async |c| pipeline.query_async::<Vec<Value>>(c).await)
                .await;
            (shards, firsts)
        });
        for (shards, firsts) in futures_util::future::join_all(reads).await {
            let Ok(firsts) = firsts else { continue };
            for (shard, first) in shards.into_iter().zip(firsts) {
                // RESP3 nests each member with its score; RESP2 is flat.
                let due = match first {
                    Value::Array(parts) => match parts.first() {
                        Some(Value::Array(pair)) => pair.get(1).and_then(score),
                        _ => parts.get(1).and_then(score),
                    },
                    Value::Map(pairs) => pairs.first().and_then(|(_, s)| score(s)),
                    _ => None,
                };
                if let Some(slot) = self.next_due.get(shard as usize) {
                    slot.store(due.unwrap_or(u64::MAX), Ordering::Relaxed);
                }
            }
        }
    }

    /// Claims the due expiries of the shards in this sidecar's share that
    /// have one: one call per such shard, pipelined per master.
    #[tracing::instrument(name = "sweep", skip_all, level = "debug")]
    async fn sweep(&self) {
        const BATCH: &[u8] = b"1000";
        let now = crate::store::now_ms();
        let due: Vec<u32> = self
            .my_shards()
            .into_iter()
            .filter(|&s| {
                self.next_due
                    .get(s as usize)
                    .is_some_and(|d| d.load(Ordering::Relaxed) <= now)
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let calls: Vec<ShardCall> = due
            .iter()
            .map(|&shard| (shard, self.layout.expiry_key(shard), vec![BATCH.to_vec()]))
            .collect();
        for ((shard, _, _), reply) in calls.iter().zip(self.run_each("sweep", &calls, now).await) {
            let Ok(mut reply) = reply else { continue };
            let (expired, lag) = pair(std::mem::take(&mut reply.result));
            let expired = expired.as_ref().and_then(integer).unwrap_or(0).max(0) as u64;
            let lag = lag.as_ref().and_then(integer).unwrap_or(0).max(0) as u64;
            self.counts.expired.fetch_add(expired, Ordering::Relaxed);
            if expired > 0 {
                self.stats.expiry_lag_ms_sum.add(lag * expired);
                self.stats
                    .expiry_lag
                    .observe_many(Duration::from_millis(lag), expired);
                self.stats
                    .expiry_lag_ms_max
                    .fetch_max(lag, Ordering::Relaxed);
            }
            for id in &reply.touched {
                self.cache.invalidate(id);
            }
            // Looked at again at the next refresh, or sooner if this
            // sidecar writes an earlier expiry there.
            if let Some(slot) = self.next_due.get(*shard as usize) {
                slot.store(u64::MAX, Ordering::Relaxed);
            }
            let followups = std::mem::take(&mut reply.followups);
            self.follow_up(*shard, followups, Mode::Now).await;
        }
        // What a full batch left behind is due now.
        self.refresh_next_due().await;
    }
}

/// How long a conn's bind lock lasts if its holder dies: well past the
/// command timeout of every step it covers.
pub(crate) const CONN_LOCK_MS: u64 = 5000;

/// How often the earliest expiry of each shard is read again (so that
/// sessions other sidecars create are swept within this of their expiry).
const NEXT_DUE_REFRESH: Duration = Duration::from_millis(1000);

/// A zset score as whole milliseconds.
fn score(value: &Value) -> Option<u64> {
    match value {
        Value::Double(d) => Some(*d as u64),
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()?
            .parse::<f64>()
            .ok()
            .map(|d| d as u64),
        _ => None,
    }
}

/// Creations travelling together (group commit): concurrent CREATEs share
/// one call of the script, which applies each in turn and replies each one's
/// own result, so that the upstream's per-call work (and the sidecar's) is
/// paid once for many clients.
///
/// There is no timer: a creation is sent at once when fewer than
/// [`CREATE_SENDERS`] calls are in flight, and otherwise joins the next call,
/// sent as soon as one of those is answered. Queueing is bounded: a creation
/// that has waited longer than the command timeout is refused with TRYAGAIN
/// without being sent. Each creation gets its own entry of the reply: one
/// that failed never turns the others into failures, and a call whose outcome
/// is unknown (timed out) is reported as such to all of its creations.
struct Creations {
    upstream: Arc<Upstream>,
    layout: Layout,
    /// What the calls' common header carries.
    config: WriteThroughConfig,
    queue: std::sync::Mutex<CreationQueue>,
}

/// At most this many calls of creations in flight: enough that the upstream
/// never waits for the next call while one is being answered.
const CREATE_SENDERS: usize = 2;
/// At most this many creations in one call (each costs the upstream about
/// 20 us: one call holds up the upstream's other clients for about a
/// millisecond at most). The queue itself is bounded by the clients: each
/// connection has one command at a time in flight.
const CREATE_BATCH: usize = 64;

#[derive(Default)]
struct CreationQueue {
    waiting: Vec<Creation>,
    /// Tasks sending calls of creations (each has one call in flight).
    senders: usize,
}

struct Creation {
    /// The session's shard: creations of one shard share a call.
    shard: u32,
    /// The creation's arguments, packed into one buffer.
    args: redis::Cmd,
    queued: std::time::Instant,
    reply: tokio::sync::oneshot::Sender<Result<Reply, StoreError>>,
}

impl Creations {
    fn new(upstream: Arc<Upstream>, config: &WriteThroughConfig, layout: Layout) -> Self {
        Self {
            upstream,
            layout,
            config: config.clone(),
            queue: std::sync::Mutex::default(),
        }
    }

    /// Queues a creation for the next call and waits for its own reply.
    async fn submit(self: &Arc<Self>, shard: u32, args: redis::Cmd) -> Result<Reply, StoreError> {
        let (reply, replied) = tokio::sync::oneshot::channel();
        let start_sender = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push(Creation {
                shard,
                args,
                queued: std::time::Instant::now(),
                reply,
            });
            let start = queue.senders < CREATE_SENDERS;
            queue.senders += usize::from(start);
            start
        };
        if start_sender {
            // A task of its own: the call must be answered to every creation
            // in it even if this client goes away.
            tokio::spawn(self.clone().send_all());
        }
        // The sender always answers; should it vanish (the runtime is shutting
        // down), the creation may have been sent.
        replied.await.unwrap_or(Err(StoreError::OutcomeUnknown))
    }

    /// Sends the waiting creations, a call at a time, until none is left.
    async fn send_all(self: Arc<Self>) {
        loop {
            let batch: Vec<Creation> = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.waiting.is_empty() {
                    queue.senders -= 1;
                    return;
                }
                let n = queue.waiting.len().min(CREATE_BATCH);
                queue.waiting.drain(..n).collect()
            };
            self.send(batch).await;
        }
    }

    /// One call of the script per shard of `batch`, at the same time;
    /// answers each creation.
    async fn send(&self, batch: Vec<Creation>) {
        let mut by_shard: HashMap<u32, Vec<Creation>> = HashMap::new();
        for creation in batch {
            by_shard.entry(creation.shard).or_default().push(creation);
        }
        futures_util::future::join_all(by_shard.into_values().map(|b| self.send_shard(b))).await;
    }

    /// One call of the script for `batch`, all of one shard.
    async fn send_shard(&self, batch: Vec<Creation>) {
        let timeout = self.upstream.command_timeout();
        let (batch, stale): (Vec<Creation>, Vec<Creation>) = batch
            .into_iter()
            .partition(|creation| creation.queued.elapsed() <= timeout);
        for creation in stale {
            // Never sent: safe to retry.
            let _ = creation.reply.send(Err(StoreError::Unavailable));
        }
        let Some(first) = batch.first() else {
            return;
        };
        let span = tracing::trace_span!("upstream_creations", count = batch.len());
        let shard = first.shard;
        let mut call = LIBRARY.call();
        self.layout.declare_keys(&mut call, shard, &[]);
        let now = crate::store::now_ms();
        self.config
            .call_header(&mut call, "create", now, self.layout.tag(shard));
        call.arg(batch.len());
        for creation in &batch {
            for arg in creation.args.args_iter() {
                if let redis::Arg::Simple(arg) = arg {
                    call.arg(arg);
                }
            }
        }
        let replies = self
            .upstream
            .call(self.layout.slot(shard), async |c| {
                eval_loading(c, &call).await
            })
            .instrument(span)
            .await;
        answer_each(replies, batch.into_iter().map(|creation| creation.reply));
    }
}

/// Answers each entry of a script call that applied several (creations, or
/// a transaction's writes) with its own entry of the reply, or with the
/// call's failure.
fn answer_each(
    replies: Result<Value, CallError>,
    waiting: impl ExactSizeIterator<Item = tokio::sync::oneshot::Sender<Result<Reply, StoreError>>>,
) {
    match replies {
        Ok(Value::Array(entries)) if entries.len() == waiting.len() => {
            for (reply, entry) in waiting.zip(entries) {
                let _ = reply.send(script_entry(entry));
            }
        }
        // The script ran, and replied something else: what it applied
        // cannot be told.
        Ok(_) => {
            for reply in waiting {
                let _ = reply.send(Err(StoreError::OutcomeUnknown));
            }
        }
        Err(error) => {
            let error = StoreError::from(error);
            for reply in waiting {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// A packed command's arguments, each on its own.
fn simple_args(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
    cmd.args_iter()
        .filter_map(|arg| match arg {
            redis::Arg::Simple(arg) => Some(arg.to_vec()),
            _ => None,
        })
        .collect()
}

/// Runs a script call, loading the script first if the upstream does not
/// have it (a restarted or flushed upstream: nothing ran).
async fn eval_loading(
    c: &mut redis::aio::MultiplexedConnection,
    call: &redis::Cmd,
) -> redis::RedisResult<Value> {
    match eval(c, call).await {
        Err(error) if unloaded(&error) => {
            LIBRARY.load_on(c).await?;
            eval(c, call).await
        }
        other => other,
    }
}

/// Runs a script call, with an error reply as an error (its entries' errors
/// stay in the reply: they are the creations' own).
async fn eval(
    c: &mut redis::aio::MultiplexedConnection,
    call: &redis::Cmd,
) -> redis::RedisResult<Value> {
    match redis::aio::ConnectionLike::req_packed_command(c, call).await? {
        Value::ServerError(error) => Err(error.into()),
        value => Ok(value),
    }
}

/// A script call's reply: `{ result, touched, followups }`.
fn reply_of(value: Value) -> Result<Reply, StoreError> {
    let Value::Array(parts) = value else {
        return Err(StoreError::Upstream(
            "ERR unexpected reply from the session script".into(),
        ));
    };
    let mut parts = parts.into_iter();
    let result = parts.next().unwrap_or(Value::Nil);
    let list = |value: Option<Value>| match value {
        Some(Value::Array(items)) => items.into_iter().filter_map(bulk).collect(),
        _ => Vec::new(),
    };
    let touched = list(parts.next());
    let followups = list(parts.next());
    Ok(Reply {
        result,
        touched,
        followups,
    })
}

/// One creation's entry of the script's reply: `{ 1 + evicted, touched,
/// followups }` or its error.
fn script_entry(entry: Value) -> Result<Reply, StoreError> {
    match entry {
        Value::Array(_) => reply_of(entry),
        Value::ServerError(error) => Err(StoreError::Upstream(match error.details() {
            Some(details) => format!("{} {details}", error.code()),
            None => error.code().to_string(),
        })),
        _ => Err(StoreError::Upstream(
            "ERR unexpected reply from the session script".into(),
        )),
    }
}

/// The sidecar's reactions to the upstream connection's events.
pub struct Coherence {
    pub store: Arc<WriteThrough>,
}

impl PushHandler for Coherence {
    fn connected(&self) {
        // Invalidations may have been missed while we were away.
        self.store.cache.flush(true);
        self.store.tracking.invalidate_all();
    }

    fn disconnected(&self) {
        self.store.cache.flush(false);
        self.store.tracking.invalidate_all();
        self.store
            .suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn invalidate(&self, keys: Option<Vec<Vec<u8>>>) {
        match keys {
            Some(keys) => {
                for key in keys {
                    if let Some(id) = self.store.id_of_key(&key) {
                        self.store.suspect(id);
                    }
                }
            }
            None => {
                // FLUSHDB or FLUSHALL upstream. On one server, the upstream
                // tells every tracking client itself (their CLIENT TRACKING
                // was forwarded to it): a second flush-everything from here
                // would be one too many. A cluster's flush is one master's,
                // which a client tracking on another does not hear of.
                self.store.cache.flush(true);
                if self.store.upstream.masters().len() == 1 {
                    self.store.tracking.forget_all_reads();
                } else {
                    self.store.tracking.invalidate_all();
                }
            }
        }
    }

    fn message(&self, channel: Vec<u8>, payload: Vec<u8>) {
        // Lifecycle events published by any sidecar, relayed to ours.
        self.store
            .pubsub
            .publish(&Bytes::from(channel), &Bytes::from(payload));
    }
}

pub(crate) fn bulk(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

pub(crate) fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// A presence flag for the script.
fn flag(present: bool) -> &'static [u8] {
    if present { b"1" } else { b"0" }
}

/// A `{ value, session }` reply.
fn pair(value: Value) -> (Option<Value>, Option<Value>) {
    match value {
        Value::Array(parts) => {
            let mut parts = parts.into_iter();
            (parts.next(), parts.next())
        }
        _ => (None, None),
    }
}

/// A session from the flat field/value array of HGETALL.
pub fn parse_session(value: &Value) -> Option<(Key, Session)> {
    let fields = match value {
        Value::Array(fields) if !fields.is_empty() => fields,
        Value::Map(pairs) if !pairs.is_empty() => {
            let flat: Vec<Value> = pairs
                .iter()
                .flat_map(|(k, v)| [k.clone(), v.clone()])
                .collect();
            return parse_session(&Value::Array(flat));
        }
        _ => return None,
    };
    fn text(value: &Value) -> Option<&[u8]> {
        match value {
            Value::BulkString(bytes) => Some(bytes),
            Value::SimpleString(text) => Some(text.as_bytes()),
            _ => None,
        }
    }
    let number = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
    };
    let mut id = None;
    let mut session = Session {
        user: None,
        conn: None,
        node: Key::from(&b""[..]),
        status: Status::Active,
        created: 0,
        last_active: AtomicU64::new(0),
        expires: 0,
        ttl: 0,
        version: 0,
        seq: 0,
        moving: false,
        attrs: Attributes::default(),
        json: Default::default(),
    };
    let mut attrs: Vec<(&[u8], &[u8])> = Vec::new();
    for pair in fields.chunks(2) {
        let (Some(name), Some(value)) = (pair.first().and_then(text), pair.get(1).and_then(text))
        else {
            continue;
        };
        match name {
            b"id" => id = Some(Key::from(value)),
            b"user" => session.user = Some(Key::from(value)),
            b"conn" => session.conn = Some(Key::from(value)),
            b"node" => session.node = Key::from(value),
            b"status" => session.status = Status::parse(value).unwrap_or(Status::Active),
            b"created" => session.created = number(value)?,
            b"last_active" => *session.last_active.get_mut() = number(value)?,
            b"expires" => session.expires = number(value)?,
            b"ttl" => session.ttl = number(value)?,
            b"version" => session.version = number(value)?,
            _ => {
                if let Some(attr) = name.strip_prefix(b"a:") {
                    attrs.push((attr, value));
                }
            }
        }
    }
    session.attrs = Attributes::from_pairs(attrs);
    Some((id?, session))
}
