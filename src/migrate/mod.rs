//! Handing sessions between sidecars: SESSION.MIGRATE and SESSION.DRAIN on
//! the side that gives them, SESSION.IMPORT on the side that takes them.
//!
//! The peer protocol is RESP, on the target's ordinary listener:
//!
//! 1. `SESSION.PEERAUTH <secret>` when a peer secret is configured;
//! 2. `SESSION.IMPORT <source-node>` with no session: a handshake that
//!    replies `[<target-node>]` (and checks that the target takes imports);
//! 3. `SESSION.IMPORT <source-node> <id> <payload> [<id> <payload> ...]`,
//!    batches of [`BATCH`] sessions, [`WINDOW`] of them in flight on one
//!    pipelined connection; the reply is `[<target-node>, taken...]`, one
//!    integer (1 taken, 0 refused) per session, in order. The payload is the
//!    session's portable form ([`crate::store::transfer`]).
//!
//! Ownership moves per session, as Redis Cluster moves slots
//! (MIGRATING/IMPORTING): standalone, a batch's sessions are marked moving
//! (writes get `-TRYAGAIN`) and copied under the same lock, so the copy is
//! their latest state; the target installs them owned by itself (`node`,
//! version + 1); on its acknowledgement they leave this sidecar, which
//! answers `-SESSIONMOVED <node> <addr>` for them during `--moved-grace`.
//! Not acknowledged (the target died, refused or timed out): they stay here,
//! writable again. Write-through, the target writes the owner change itself,
//! with the version compare-and-set (`migrate` in `sessions.lua`), and holds
//! the moved sessions hot before it replies; a session written meanwhile
//! fails the compare and stays; this sidecar then answers for moved ids
//! through the upstream, like any sidecar.
//!
//! Layer 10 of 15 (the order is in `tests/layers.rs`). Uses `sessions` and
//! `store`: a [`Migration`] holds the sessions and settings it needs, not the
//! node.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::sessions::Sessions;
use crate::store::{Key, MovedTo, StoreError, now_ms};

/// Sessions per SESSION.IMPORT.
pub const BATCH: usize = 1000;
/// SESSION.IMPORT commands in flight on the connection to a target.
const WINDOW: usize = 4;

/// Which sessions SESSION.MIGRATE hands over.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Ids(Vec<Bytes>),
    Conns(Vec<Bytes>),
    Users(Vec<Bytes>),
}

/// Where to, and how.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    pub secret: Option<String>,
    /// How long each reply of the target may take.
    pub timeout: Duration,
    /// TLS to the target, verified against this CA (`--peer-tls-ca`).
    pub tls_ca: Option<Arc<[u8]>>,
}

/// What a migration reads of the node's configuration.
#[derive(Debug, Clone, Default)]
pub struct MigrationSettings {
    /// How long a standalone sidecar names the target of a moved session
    /// (`-SESSIONMOVED`), in ms.
    pub moved_grace_ms: u64,
    /// The secret peers require (`--peer-secret`).
    pub peer_secret: Option<String>,
    /// How long each reply of a target may take (`--migrate-timeout-ms`).
    pub timeout: Duration,
}

/// This sidecar's side of the handoff: the sessions it moves, its settings,
/// and its state and counters.
pub struct Migration {
    sessions: Sessions,
    settings: MigrationSettings,
    /// Draining: CREATE and BIND are refused, the sessions go elsewhere.
    pub draining: AtomicBool,
    pub migrations: AtomicU64,
    pub failed_migrations: AtomicU64,
    pub sessions_out: AtomicU64,
    pub sessions_in: AtomicU64,
    pub last_ms: AtomicU64,
    pub last_moved: AtomicU64,
    /// How long each SESSION.MIGRATE took.
    pub migrate_duration: crate::metrics::Histogram,
    /// How long each drain (SESSION.DRAIN, SIGTERM) took.
    pub drain_duration: crate::metrics::Histogram,
}

impl Migration {
    pub fn new(sessions: Sessions, settings: MigrationSettings) -> Self {
        Self {
            sessions,
            settings,
            draining: AtomicBool::new(false),
            migrations: AtomicU64::new(0),
            failed_migrations: AtomicU64::new(0),
            sessions_out: AtomicU64::new(0),
            sessions_in: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            last_moved: AtomicU64::new(0),
            migrate_duration: Default::default(),
            drain_duration: Default::default(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// From now on CREATE and BIND are refused: the sessions go elsewhere.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The secret peers require, and how long their replies may take.
    pub fn settings(&self) -> &MigrationSettings {
        &self.settings
    }
}

/// How a migration ended: how many sessions moved, and why it stopped
/// early, if it did.
#[derive(Debug)]
pub struct Outcome {
    pub moved: usize,
    pub error: Option<String>,
}

/// A connection to a target sidecar, past the handshake.
struct Peer {
    connection: MultiplexedConnection,
    node: String,
    addr: String,
}

impl Peer {
    async fn connect(source: &str, target: &Target) -> Result<Peer, String> {
        let mut connection = connect_peer(
            &target.addr,
            target.secret.as_deref(),
            target.timeout,
            target.tls_ca.as_deref(),
        )
        .await?;
        let reply: Value = redis::cmd("SESSION.IMPORT")
            .arg(source)
            .query_async(&mut connection)
            .await
            .map_err(|e| format!("{} refused imports: {}", target.addr, describe(&e)))?;
        let node = match reply {
            Value::Array(parts) => parts.into_iter().next().and_then(text),
            _ => None,
        }
        .ok_or_else(|| format!("{} is not a session sidecar", target.addr))?;
        Ok(Peer {
            connection,
            node,
            addr: target.addr.clone(),
        })
    }

    /// Sends one batch; the target's verdict per session.
    async fn import(&self, source: &str, batch: &[(Key, Vec<u8>)]) -> Result<Vec<bool>, String> {
        let mut command = redis::cmd("SESSION.IMPORT");
        command.arg(source);
        for (id, payload) in batch {
            command.arg(&id[..]).arg(&payload[..]);
        }
        let reply: Value = command
            .query_async(&mut self.connection.clone())
            .await
            .map_err(|e| format!("import into {} failed: {}", self.addr, describe(&e)))?;
        let Value::Array(parts) = reply else {
            return Err(format!("unexpected import reply from {}", self.addr));
        };
        let taken: Vec<bool> = parts
            .iter()
            .skip(1)
            .map(|v| matches!(v, Value::Int(1)))
            .collect();
        if taken.len() != batch.len() {
            return Err(format!("unexpected import reply from {}", self.addr));
        }
        Ok(taken)
    }
}

/// A connection to the sidecar at `addr` (`host:port`, `[v6]:port`), over
/// TLS verified against `tls_ca` when given, authenticated with the peer
/// secret when one is given; every reply awaited at most `timeout`.
pub async fn connect_peer(
    addr: &str,
    secret: Option<&str>,
    timeout: Duration,
    tls_ca: Option<&[u8]>,
) -> Result<MultiplexedConnection, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid peer address {addr}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid peer port {port}"))?;
    let client = match tls_ca {
        None => redis::Client::open((host.to_string(), port)),
        Some(ca) => {
            let addr = redis::ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            };
            redis::Client::build_with_tls(
                addr,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.to_vec()),
                },
            )
        }
    }
    .map_err(|e| e.to_string())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut connection = Box::pin(client.get_multiplexed_async_connection_with_config(&config))
        .await
        .map_err(|e| format!("cannot connect to {addr}: {}", describe(&e)))?;
    if let Some(secret) = secret {
        redis::cmd("SESSION.PEERAUTH")
            .arg(secret)
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| format!("{addr} refused the peer secret: {}", describe(&e)))?;
    }
    Ok(connection)
}

/// A peer's error as it worded it (`CODE detail`), or the client's own.
fn describe(error: &redis::RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => error.to_string(),
    }
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// The ids the selection names (not yet filtered by ownership).
async fn select(
    sessions: &Sessions,
    selection: &Selection,
    now: u64,
) -> Result<Vec<Key>, StoreError> {
    Ok(match selection {
        Selection::All => match sessions {
            Sessions::Standalone(store) => store.all_ids(now),
            Sessions::WriteThrough(store) => store.all_owned(now).await?,
        },
        Selection::Ids(ids) => ids.iter().map(|id| Key::from(&id[..])).collect(),
        Selection::Conns(conns) => {
            let mut ids = Vec::new();
            for conn in conns {
                ids.extend(sessions.by_conn(conn, now).await?);
            }
            ids
        }
        Selection::Users(users) => {
            let mut ids = Vec::new();
            for user in users {
                ids.extend(sessions.by_user(user, now).await?);
            }
            ids
        }
    })
}

/// SESSION.MIGRATE: hands the selected sessions this sidecar owns to
/// `target`. An error when nothing could start (unreachable target, wrong
/// secret); otherwise how many moved, and why it stopped if it did.
pub async fn migrate(
    migration: &Migration,
    target: &Target,
    selection: &Selection,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let now = now_ms();
    let mut ids = select(&migration.sessions, selection, now)
        .await
        .map_err(|e| e.message())?;
    ids.sort_unstable();
    ids.dedup();
    let outcome = migrate_ids(migration, target, ids, started, None).await;
    migration.migrate_duration.observe(started.elapsed());
    outcome
}

/// Moves `ids` to `target`; no batch starts after `deadline` (a batch in
/// flight always ends: acknowledged, refused, or timed out).
#[tracing::instrument(
    name = "migrate",
    skip_all,
    fields(target = %target.addr, sessions = ids.len())
)]
async fn migrate_ids(
    migration: &Migration,
    target: &Target,
    ids: Vec<Key>,
    started: Instant,
    deadline: Option<Instant>,
) -> Result<Outcome, String> {
    let source = String::from_utf8_lossy(migration.sessions.node()).into_owned();
    let stats = migration;
    stats.migrations.fetch_add(1, Ordering::Relaxed);
    let peer = match Peer::connect(&source, target).await {
        Ok(peer) => peer,
        Err(error) => {
            stats.failed_migrations.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "migration refused");
            return Err(error);
        }
    };
    if peer.node.as_bytes() == &migration.sessions.node()[..] {
        stats.failed_migrations.fetch_add(1, Ordering::Relaxed);
        return Err(format!("{} is this sidecar", target.addr));
    }
    let to = Destination {
        node: peer.node.clone(),
        addr: peer.addr.clone(),
        grace_ms: migration.settings.moved_grace_ms,
    };
    if let Sessions::Standalone(store) = &migration.sessions {
        store.purge_moved(now_ms());
    }
    // A window of batches in flight; none starts after a failure or the
    // deadline, and those in flight always end.
    let mut chunks = ids.chunks(BATCH);
    let mut in_flight = FuturesUnordered::new();
    let mut moved = 0;
    let mut error = None;
    loop {
        while in_flight.len() < WINDOW && error.is_none() {
            let Some(chunk) = chunks.next() else { break };
            if deadline.is_some_and(|d| Instant::now() >= d) {
                error = Some("deadline reached".to_string());
                break;
            }
            in_flight.push(move_batch(
                &migration.sessions,
                target,
                &peer,
                &source,
                &to,
                chunk,
            ));
        }
        match in_flight.next().await {
            Some(Ok(n)) => moved += n,
            Some(Err(e)) => {
                error.get_or_insert(e);
            }
            None => break,
        }
    }
    stats
        .sessions_out
        .fetch_add(moved as u64, Ordering::Relaxed);
    stats.last_moved.store(moved as u64, Ordering::Relaxed);
    stats
        .last_ms
        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    match &error {
        Some(error) => {
            stats.failed_migrations.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(moved, %error, "migration stopped early");
        }
        None => tracing::info!(
            moved,
            to = %peer.node,
            ms = started.elapsed().as_millis() as u64,
            "sessions migrated"
        ),
    }
    Ok(Outcome { moved, error })
}

/// Moves one batch: marked, sent, and settled by the target's reply.
async fn move_batch(
    sessions: &Sessions,
    target: &Target,
    peer: &Peer,
    source: &str,
    to: &Destination,
    ids: &[Key],
) -> Result<usize, String> {
    match sessions {
        Sessions::Standalone(store) => {
            let batch = store.begin_move(ids, now_ms());
            if batch.is_empty() {
                return Ok(0);
            }
            let mut pending = Pending {
                store,
                ids: batch.iter().map(|(id, _)| id.clone()).collect(),
                to,
            };
            let taken = import_settled(target, peer, source, &batch).await?;
            Ok(pending.settle(&taken))
        }
        Sessions::WriteThrough(store) => {
            let batch = store.owned(ids, now_ms()).await.map_err(|e| e.message())?;
            if batch.is_empty() {
                return Ok(0);
            }
            let taken = import_settled(target, peer, source, &batch).await?;
            let moved: Vec<Key> = batch
                .iter()
                .zip(&taken)
                .filter(|(_, taken)| **taken)
                .map(|((id, _), _)| id.clone())
                .collect();
            store.handed_over(&moved);
            Ok(moved.len())
        }
    }
}

/// Sends a batch and gets the target's verdict. A batch whose reply was
/// lost (a timeout, a broken connection) may have been taken: it is sent
/// again, identically, on a new connection, and the target acknowledges what
/// it already holds (standalone: the same session at the same state;
/// write-through: a session it already owns). Only when that fails too is
/// the batch given up (the target is presumed gone).
async fn import_settled(
    target: &Target,
    peer: &Peer,
    source: &str,
    batch: &[(Key, Vec<u8>)],
) -> Result<Vec<bool>, String> {
    let first = match peer.import(source, batch).await {
        Ok(taken) => return Ok(taken),
        Err(error) => error,
    };
    tracing::debug!(error = %first, "import reply lost; asking again");
    let again = async {
        let fresh = Peer::connect(source, target).await?;
        if fresh.node != peer.node {
            return Err(format!("{} is now another sidecar", target.addr));
        }
        fresh.import(source, batch).await
    };
    again.await.map_err(|_| first)
}

/// A standalone batch marked moving and not yet settled: dropped unsettled
/// (the target failed, or the migration was cancelled half-way), its
/// sessions stay here, writable again.
struct Pending<'a> {
    store: &'a crate::store::SessionStore,
    ids: Vec<Key>,
    to: &'a Destination,
}

impl Pending<'_> {
    fn settle(&mut self, taken: &[bool]) -> usize {
        let ids = std::mem::take(&mut self.ids);
        let now = now_ms();
        // The forwarding period starts when the sessions leave.
        let to = Arc::new(MovedTo {
            node: self.to.node.clone(),
            addr: self.to.addr.clone(),
            until: now.saturating_add(self.to.grace_ms),
        });
        self.store.finish_move(&ids, taken, &to, now)
    }
}

/// The target, as SESSIONMOVED names it, and how long it is named.
struct Destination {
    node: String,
    addr: String,
    grace_ms: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let kept = vec![false; self.ids.len()];
            self.settle(&kept);
        }
    }
}

/// SESSION.DRAIN and SIGTERM: refuses new sessions from now on, then hands
/// every session this sidecar owns to the live `peers` (addresses, reached
/// over TLS verified against `tls_ca` when given), spread evenly, until none
/// is left, no peer takes any more, or `timeout_after`. An error when there
/// was something to move and no peer could be reached.
pub async fn drain(
    migration: &Migration,
    peers: Vec<String>,
    tls_ca: Option<Arc<[u8]>>,
    timeout_after: Duration,
) -> Result<usize, String> {
    migration.start_draining();
    let started = Instant::now();
    let deadline = started + timeout_after;
    let secret = migration.settings.peer_secret.clone();
    let timeout = migration.settings.timeout;
    let work = async {
        let mut peers = peers;
        let mut moved = 0;
        let mut last_error = None;
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "drain deadline of {} ms reached ({moved} moved)",
                    timeout_after.as_millis()
                ));
            }
            let now = now_ms();
            let mut ids = select(&migration.sessions, &Selection::All, now)
                .await
                .map_err(|e| e.message())?;
            if ids.is_empty() {
                return Ok(moved);
            }
            if peers.is_empty() {
                let why = last_error.unwrap_or_else(|| "no live peer".to_string());
                return Err(format!(
                    "{} sessions could not be drained ({moved} moved): {why}",
                    ids.len()
                ));
            }
            ids.sort_unstable();
            // Contiguous shares, one per peer, moved at the same time.
            let share = ids.len().div_ceil(peers.len());
            let shares = ids.chunks(share).count();
            // Peers left without a share this round stay for the next.
            let mut working: Vec<String> = peers[shares..].to_vec();
            // No call outlives the deadline by more than its own timeout,
            // itself cut to what is left.
            let timeout = timeout.min(deadline.saturating_duration_since(Instant::now()));
            let mut runs = FuturesUnordered::new();
            for (addr, ids) in peers.iter().zip(ids.chunks(share)) {
                let target = Target {
                    addr: addr.clone(),
                    secret: secret.clone(),
                    timeout,
                    tls_ca: tls_ca.clone(),
                };
                let ids = ids.to_vec();
                runs.push(async move {
                    let started = Instant::now();
                    let outcome =
                        migrate_ids(migration, &target, ids, started, Some(deadline)).await;
                    (target.addr, outcome)
                });
            }
            let mut results = Vec::new();
            while let Some(result) = runs.next().await {
                results.push(result);
            }
            let mut progress = 0;
            let mut answered = 0;
            for (addr, outcome) in results {
                match outcome {
                    Ok(Outcome { moved, error: None }) => {
                        progress += moved;
                        answered += 1;
                        working.push(addr);
                    }
                    Ok(Outcome {
                        moved,
                        error: Some(error),
                    }) => {
                        progress += moved;
                        last_error = Some(error);
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            moved += progress;
            if progress == 0 && answered == shares {
                // Every peer answered and none took anything: what is left
                // is refused everywhere (moving, or changed meanwhile).
                return Err(format!(
                    "{} sessions could not be drained ({moved} moved): the peers refused them",
                    ids.len()
                ));
            }
            peers = working;
        }
    };
    let result = work.await;
    migration.drain_duration.observe(started.elapsed());
    match &result {
        Ok(moved) => tracing::info!(moved, ms = started.elapsed().as_millis() as u64, "drained"),
        Err(error) => tracing::warn!(%error, "drain incomplete"),
    }
    result
}
