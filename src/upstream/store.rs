//! Write-through mode: the upstream is the source of truth, the hot cache a
//! coherent copy of it.
//!
//! Every mutation is one call of the session script (`sessions.lua`), which
//! applies it with its index changes and events atomically on the upstream
//! and replies the session's new state; the sidecar acknowledges the client
//! only after that reply, and installs the new state in its hot cache. Reads
//! are answered from the cache when it holds a trusted, live copy, and read
//! through otherwise. Heartbeats that do not extend the expiry are answered
//! from memory; their `last_active` reaches the upstream in batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use redis::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::cache::{HotCache, Suspect, Ticket};
use super::connection::{CallError, PushHandler, Upstream};
use crate::pubsub::PubSub;
use crate::store::{
    Attributes, CreateSession, Event, EventKind, Key, Session, SessionLimits, Status, StoreError,
    StoreStats, UpdateSession,
};

/// The session script, loaded once and run by its SHA (redis-rs reloads it
/// when the upstream answers NOSCRIPT).
static SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("sessions.lua")));

/// Settings of write-through mode.
#[derive(Clone, Debug)]
pub struct WriteThroughConfig {
    pub prefix: String,
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

#[derive(Default, Debug)]
pub struct WriteThroughStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub heartbeats_absorbed: AtomicU64,
    pub heartbeat_flushes: AtomicU64,
    /// Invalidated copies put back after their version checked out.
    pub verified: AtomicU64,
}

/// How often a page of the expiry index is audited for dangling entries.
const AUDIT_INTERVAL: Duration = Duration::from_millis(200);

pub struct WriteThrough {
    pub upstream: Arc<Upstream>,
    pub cache: HotCache,
    config: WriteThroughConfig,
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
    /// Whether the upstream's events channel is relayed right now.
    relaying: tokio::sync::watch::Sender<bool>,
    pubsub: Arc<PubSub>,
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

/// What a script call replied: its result and the sessions it changed.
struct Reply {
    result: Value,
    touched: Vec<Vec<u8>>,
}

impl WriteThrough {
    pub fn new(upstream: Arc<Upstream>, config: WriteThroughConfig, pubsub: Arc<PubSub>) -> Self {
        Self {
            creations: Arc::new(Creations::new(upstream.clone(), &config)),
            upstream,
            cache: HotCache::new(config.maxmemory),
            heartbeats: DashMap::default(),
            suspects: std::sync::Mutex::default(),
            suspects_added: tokio::sync::Notify::new(),
            relaying: tokio::sync::watch::Sender::new(false),
            config,
            pubsub,
            stats: WriteThroughStats::default(),
            counts: StoreStats::default(),
        }
    }

    pub fn config(&self) -> &WriteThroughConfig {
        &self.config
    }

    /// The key of a session's hash.
    pub fn session_key(&self, id: &[u8]) -> Vec<u8> {
        let prefix = self.session_key_prefix();
        let mut key = Vec::with_capacity(prefix.len() + id.len());
        key.extend_from_slice(prefix.as_bytes());
        key.extend_from_slice(id);
        key
    }

    /// What every session key starts with: `{<prefix>:events}:s:` (all keys
    /// share the events stream's hash slot; see `sessions.lua`).
    fn session_key_prefix(&self) -> String {
        format!("{}:s:", key_tag(&self.config.prefix))
    }

    /// The id inside a session key, if it is one.
    fn id_of_key<'a>(&self, key: &'a [u8]) -> Option<&'a [u8]> {
        key.strip_prefix(self.session_key_prefix().as_bytes())
    }

    /// The connection set-up: client-side caching of session keys in
    /// broadcast mode, without invalidations for our own writes.
    pub fn tracking_setup(&self) -> Vec<redis::Cmd> {
        let mut tracking = redis::cmd("CLIENT");
        tracking
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX");
        tracking.arg(self.session_key_prefix()).arg("NOLOOP");
        vec![tracking]
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

    /// Runs one script operation; `args` follow the common header.
    async fn run(
        &self,
        op: &str,
        keys: &[&[u8]],
        args: &[&[u8]],
        now: u64,
    ) -> Result<Reply, StoreError> {
        let mut invocation = SCRIPT.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        invocation
            .arg(op)
            .arg(&self.config.prefix)
            .arg(now)
            .arg(&self.config.node[..])
            .arg(self.config.stream_maxlen)
            .arg(self.config.key_margin_ms);
        for value in args {
            invocation.arg(*value);
        }
        let value: Value = self
            .upstream
            .call(async |c| invocation.invoke_async(c).await)
            .await?;
        let Value::Array(mut parts) = value else {
            return Err(StoreError::Upstream(
                "ERR unexpected reply from the session script".into(),
            ));
        };
        let touched = match parts.pop() {
            Some(Value::Array(ids)) => ids.into_iter().filter_map(bulk).collect(),
            _ => Vec::new(),
        };
        let result = parts.pop().unwrap_or(Value::Nil);
        Ok(Reply { result, touched })
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

    /// Applies a mutation that replies the new session; returns its version.
    async fn mutate(
        &self,
        op: &str,
        id: &[u8],
        args: &[&[u8]],
        now: u64,
    ) -> Result<u64, StoreError> {
        let ticket = self.ticket(id);
        let key = self.session_key(id);
        let reply = self.run(op, &[&key], args, now).await?;
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
        let reply = self.run(op, &[&self.session_key(id)], args, now).await?;
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
        let ticket = self.ticket(id);
        let key = self.session_key(id);
        let value: Value = self
            .upstream
            .call(async |c| redis::cmd("HGETALL").arg(&key).query_async(c).await)
            .await?;
        let Some((key, session)) = parse_session(&value) else {
            return Ok(None);
        };
        if !session.is_live(now) {
            return Ok(None);
        }
        let result = f.take().map(|f| f(&session));
        self.install(key, session, ticket);
        Ok(result)
    }

    pub async fn exists(&self, ids: &[Bytes], now: u64) -> Result<usize, StoreError> {
        let mut live = 0;
        for id in ids {
            live += usize::from(self.read(id, now, |_| ()).await?.is_some());
        }
        Ok(live)
    }

    pub async fn by_conn(&self, conn: &[u8], now: u64) -> Result<Option<Key>, StoreError> {
        let reply = self.run("byconn", &[], &[conn], now).await?;
        Ok(bulk(reply.result).map(Key::from))
    }

    pub async fn by_user(&self, user: &[u8], now: u64) -> Result<Vec<Key>, StoreError> {
        let reply = self.run("byuser", &[], &[user], now).await?;
        Ok(match reply.result {
            Value::Array(ids) => ids.into_iter().filter_map(bulk).map(Key::from).collect(),
            _ => Vec::new(),
        })
    }

    /// Live sessions in the upstream.
    pub async fn count(&self, now: u64) -> Result<usize, StoreError> {
        let reply = self.run("count", &[], &[], now).await?;
        Ok(integer(&reply.result).unwrap_or(0).max(0) as usize)
    }

    // ----- writes ------------------------------------------------------------

    /// Creates a session, in a script call shared with concurrent creations
    /// (see [`Creations`]). The new state is fully known here (the script
    /// writes what it is given), so the script replies only the other
    /// sessions it changed and the hot copy is built from the request.
    pub async fn create(&self, request: CreateSession, now: u64) -> Result<Key, StoreError> {
        // A generated id is a fresh UUID v4: the script skips its EXISTS check.
        let (id, fresh) = match request.id {
            Some(id) => (Key::from(&id[..]), false),
            None => (Key::from(uuid::Uuid::new_v4().to_string().as_bytes()), true),
        };
        let ttl_ms = request.ttl_ms.unwrap_or(self.config.default_ttl_ms);
        let expires = now + ttl_ms;
        let user = request.user.map(|u| Key::from(&u[..]));
        let conn = request.conn.map(|c| Key::from(&c[..]));
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
        let mut args = redis::Cmd::with_capacity(14 + 2 * request.attrs.len(), 256);
        args.arg(now)
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
            .arg(&event[..])
            .arg(request.attrs.len());
        for (name, value) in &request.attrs {
            args.arg(&name[..]).arg(&value[..]);
        }
        let ticket = self.ticket(&id);
        let key = self.session_key(&id);
        let reply = self.creations.submit(key, args).await?;
        for other in &reply.touched {
            self.cache.invalidate(other);
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
        let mut args: Vec<&[u8]> = vec![
            id,
            if_version.as_bytes(),
            request.user.as_deref().unwrap_or_default(),
            request.conn.as_deref().unwrap_or_default(),
            status.as_bytes(),
            ttl.as_bytes(),
            flag(request.user.is_some()),
            flag(request.conn.is_some()),
            max_attrs.as_bytes(),
            sets.as_bytes(),
        ];
        for (name, value) in &request.set_attrs {
            args.push(name);
            args.push(value);
        }
        args.extend(request.del_attrs.iter().map(|n| &n[..]));
        self.mutate("update", id, &args, now).await
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
        let reply = self
            .run("touch", &[&self.session_key(id)], &[id], now)
            .await?;
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
        let mut args: Vec<&[u8]> = vec![reason.unwrap_or_default().as_bytes()];
        args.extend(ids.iter().map(|id| id.as_ref()));
        let reply = self.run("delete", &[], &args, now).await?;
        for id in ids {
            self.cache.invalidate(id.as_ref());
        }
        Ok(self.deleted(&reply))
    }

    pub async fn kill_user(&self, user: &[u8], now: u64) -> Result<usize, StoreError> {
        let reply = self.run("killuser", &[], &[user], now).await?;
        Ok(self.deleted(&reply))
    }

    /// The count a deleting call replied; our copies of what it touched go.
    fn deleted(&self, reply: &Reply) -> usize {
        for id in &reply.touched {
            self.cache.invalidate(id);
        }
        let deleted = integer(&reply.result).unwrap_or(0).max(0) as usize;
        self.counts
            .deleted
            .fetch_add(deleted as u64, Ordering::Relaxed);
        deleted
    }

    pub async fn bind(&self, id: &[u8], conn: &[u8], now: u64) -> Result<u64, StoreError> {
        self.mutate("bind", id, &[id, conn], now).await
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
        let mut cursor = b"0".to_vec();
        loop {
            let reply = self.run("owned", &[], &[&cursor, PAGE], now).await?;
            let (next, ids) = pair(reply.result);
            if let Some(Value::Array(ids)) = ids {
                owned.extend(ids.into_iter().filter_map(bulk).map(Key::from));
            }
            cursor = next.and_then(bulk).unwrap_or_else(|| b"0".to_vec());
            if cursor == b"0" {
                break;
            }
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
        let versions: Vec<String> = sessions.iter().map(|(_, v)| v.to_string()).collect();
        let mut args: Vec<&[u8]> = Vec::with_capacity(1 + 2 * sessions.len());
        args.push(from);
        for ((id, _), version) in sessions.iter().zip(&versions) {
            args.push(id);
            args.push(version.as_bytes());
        }
        let reply = self.run("migrate", &[], &args, now).await?;
        let Value::Array(states) = reply.result else {
            return Err(StoreError::Upstream(
                "ERR unexpected reply from the session script".into(),
            ));
        };
        let mut taken: Vec<bool> = sessions
            .iter()
            .zip(tickets)
            .zip(&states)
            .map(|(((id, _), ticket), state)| self.absorb(id, state, &[], ticket).is_some())
            .collect();
        taken.resize(sessions.len(), false);
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
        let mut audit_cursor = String::from("0");
        loop {
            tokio::select! {
                _ = heartbeat.tick() => self.flush_heartbeats().await,
                _ = sweep.tick() => self.sweep().await,
                _ = audit.tick() => audit_cursor = self.audit(audit_cursor).await,
                _ = shutdown.cancelled() => {
                    self.flush_heartbeats().await;
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
        for chunk in pending.chunks(BATCH) {
            let stamps: Vec<String> = chunk.iter().map(|(_, at)| at.to_string()).collect();
            let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() * 2);
            for ((id, _), at) in chunk.iter().zip(&stamps) {
                args.push(id);
                args.push(at.as_bytes());
            }
            let now = crate::store::now_ms();
            match self.run("heartbeat", &[], &args, now).await {
                Ok(_) => {
                    self.stats.heartbeat_flushes.fetch_add(1, Ordering::Relaxed);
                    for (id, at) in chunk {
                        // A newer heartbeat since the snapshot stays queued.
                        self.heartbeats.remove_if(id, |_, queued| queued == at);
                    }
                }
                Err(error) => {
                    tracing::debug!(?error, "heartbeat flush failed; will retry");
                    return;
                }
            }
        }
    }

    /// An invalidation of `id`: its copy, if any, is checked in the next batch.
    pub fn suspect(&self, id: &[u8]) {
        if let Some(suspect) = self.cache.suspect(id, crate::store::now_ms()) {
            self.check_later(suspect);
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
    /// version), one pipelined round trip per batch.
    async fn verify_suspects(&self) {
        const BATCH: usize = 1024;
        loop {
            let batch: Vec<Suspect> = {
                let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
                let ids: Vec<Key> = suspects.keys().take(BATCH).cloned().collect();
                ids.iter().filter_map(|id| suspects.remove(id)).collect()
            };
            if batch.is_empty() {
                return;
            }
            let mut pipeline = redis::pipe();
            for suspect in &batch {
                pipeline
                    .cmd("HMGET")
                    .arg(self.session_key(&suspect.id))
                    .arg("created")
                    .arg("version");
            }
            // Unreachable: the cache is flushed anyway and the marks expire.
            let Ok(states) = self
                .upstream
                .call(async |c| {
                    pipeline
                        .query_async::<Vec<(Option<u64>, Option<u64>)>>(c)
                        .await
                })
                .await
            else {
                return;
            };
            for (suspect, state) in batch.iter().zip(states) {
                let identity = match state {
                    (Some(created), Some(version)) => Some((created, version)),
                    _ => None,
                };
                if self.cache.settle(suspect, identity) {
                    self.stats.verified.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// One page of the expiry-index audit; returns the next cursor.
    async fn audit(&self, cursor: String) -> String {
        const PAGE: &[u8] = b"500";
        match self
            .run(
                "audit",
                &[],
                &[cursor.as_bytes(), PAGE],
                crate::store::now_ms(),
            )
            .await
        {
            Ok(reply) => match reply.result {
                Value::Array(parts) => parts
                    .into_iter()
                    .next()
                    .and_then(bulk)
                    .and_then(|c| String::from_utf8(c).ok()),
                _ => None,
            }
            .unwrap_or_else(|| "0".into()),
            Err(_) => cursor,
        }
    }

    async fn sweep(&self) {
        const BATCH: &[u8] = b"1000";
        let span = tracing::trace_span!("sweep");
        let _entered = span.enter();
        if let Ok(reply) = self
            .run("sweep", &[], &[BATCH], crate::store::now_ms())
            .await
        {
            let expired = integer(&reply.result).unwrap_or(0).max(0) as u64;
            self.counts.expired.fetch_add(expired, Ordering::Relaxed);
            for id in &reply.touched {
                self.cache.invalidate(id);
            }
        }
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
    /// The script call's common header after the operation's name.
    prefix: String,
    node: Key,
    stream_maxlen: u64,
    key_margin_ms: u64,
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
    /// The session's key (for the call's declared key: every key shares its
    /// hash slot).
    key: Vec<u8>,
    /// The creation's arguments, packed into one buffer.
    args: redis::Cmd,
    queued: std::time::Instant,
    reply: tokio::sync::oneshot::Sender<Result<Reply, StoreError>>,
}

impl Creations {
    fn new(upstream: Arc<Upstream>, config: &WriteThroughConfig) -> Self {
        Self {
            upstream,
            prefix: config.prefix.clone(),
            node: config.node.clone(),
            stream_maxlen: config.stream_maxlen,
            key_margin_ms: config.key_margin_ms,
            queue: std::sync::Mutex::default(),
        }
    }

    /// Queues a creation for the next call and waits for its own reply.
    async fn submit(self: &Arc<Self>, key: Vec<u8>, args: redis::Cmd) -> Result<Reply, StoreError> {
        let (reply, replied) = tokio::sync::oneshot::channel();
        let start_sender = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push(Creation {
                key,
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

    /// One call of the script for `batch`; answers each creation.
    async fn send(&self, batch: Vec<Creation>) {
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
        let mut call = redis::cmd("EVALSHA");
        call.arg(SCRIPT.get_hash())
            .arg(1)
            .arg(&first.key[..])
            .arg("create")
            .arg(&self.prefix)
            .arg(crate::store::now_ms())
            .arg(&self.node[..])
            .arg(self.stream_maxlen)
            .arg(self.key_margin_ms)
            .arg(batch.len());
        for creation in &batch {
            for arg in creation.args.args_iter() {
                if let redis::Arg::Simple(arg) = arg {
                    call.arg(arg);
                }
            }
        }
        let replies = self
            .upstream
            .call(async |c| {
                match eval(c, &call).await {
                    // Not loaded (a restarted or flushed upstream): nothing ran.
                    Err(error)
                        if error.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        SCRIPT.load_async(c).await?;
                        eval(c, &call).await
                    }
                    other => other,
                }
            })
            .instrument(span)
            .await;
        match replies {
            Ok(Value::Array(entries)) if entries.len() == batch.len() => {
                for (creation, entry) in batch.into_iter().zip(entries) {
                    let _ = creation.reply.send(script_entry(entry));
                }
            }
            // The script ran, and replied something else: what it applied
            // cannot be told.
            Ok(_) => {
                for creation in batch {
                    let _ = creation.reply.send(Err(StoreError::OutcomeUnknown));
                }
            }
            Err(error) => {
                let error = StoreError::from(error);
                for creation in batch {
                    let _ = creation.reply.send(Err(error.clone()));
                }
            }
        }
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

/// One creation's entry of the script's reply: `{ result, touched }` or its
/// error.
fn script_entry(entry: Value) -> Result<Reply, StoreError> {
    match entry {
        Value::Array(mut parts) => {
            let touched = match parts.pop() {
                Some(Value::Array(ids)) => ids.into_iter().filter_map(bulk).collect(),
                _ => Vec::new(),
            };
            let result = parts.pop().unwrap_or(Value::Nil);
            Ok(Reply { result, touched })
        }
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
    }

    fn disconnected(&self) {
        self.store.cache.flush(false);
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
            None => self.store.cache.flush(true),
        }
    }

    fn message(&self, channel: Vec<u8>, payload: Vec<u8>) {
        // Lifecycle events published by any sidecar, relayed to ours.
        self.store
            .pubsub
            .publish(&Bytes::from(channel), &Bytes::from(payload));
    }
}

fn bulk(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

/// The hash tag every upstream key carries: `{<prefix>:events}`, the slot of
/// the events stream, so that one script call may touch them all, on a
/// Redis Cluster too.
pub fn key_tag(prefix: &str) -> String {
    format!("{{{prefix}:events}}")
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
