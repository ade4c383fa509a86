//! The one place the sidecar talks to the upstream Redis: one supervised
//! RESP3 connection per master (a [`Link`]: redis-rs's multiplexed
//! connection, on which concurrent requests are pipelined), the slot map that
//! routes each call to the master of its key's slot, their state, and their
//! counters. A single server is the same thing with one master serving every
//! slot, so the rest of the sidecar has one code path.
//!
//! The supervisor finds the masters (CLUSTER SLOTS, asked of the seeds and
//! the masters already known, on a cluster; the URL's server otherwise),
//! keeps one link per master, and looks again when a reply says a slot moved
//! or a link fails. Each link connects with a timeout, is set up (client-side
//! caching in broadcast mode on the session prefix), and hands every push
//! (invalidations, events, the library's own disconnection notice) to the
//! [`PushHandler`]. When a link drops it is marked down at once, so that calls
//! to its slots fail fast instead of queueing, and it reconnects with jittered
//! exponential backoff. The upstream is up when every master's link is.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, RedisError,
    Value,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Counter;
use crate::protocol::slot::{SLOTS, slot_of};

/// What happens to pushes and reconnections.
pub trait PushHandler: Send + Sync + 'static {
    /// The connection is up and set up again: whatever was cached before
    /// cannot be trusted (invalidations may have been missed).
    fn connected(&self);
    /// The connection dropped.
    fn disconnected(&self);
    /// Keys changed by another client (`None`: everything, e.g. FLUSHALL).
    fn invalidate(&self, keys: Option<Vec<Vec<u8>>>);
    /// A message on a subscribed channel.
    fn message(&self, channel: Vec<u8>, payload: Vec<u8>);
}

/// Timeouts and the backoff of the upstream connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Connecting = 0,
    Up = 1,
    Down = 2,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

#[derive(Default, Debug)]
pub struct UpstreamStats {
    pub commands: Counter,
    /// Error replies that are upstream failures (not the ordinary refusals).
    pub errors: Counter,
    /// The script's ordinary refusals: NOSESSION, CONFLICT, EXISTS, attribute limits.
    pub refusals: Counter,
    pub unavailable: Counter,
    pub reconnects: Counter,
    pub invalidations: Counter,
    /// Latency of the last command, in microseconds.
    pub last_latency_us: AtomicU64,
    /// Latency of every call (a command, a script call or a pipeline).
    pub latency: crate::metrics::Histogram,
}

pub struct Upstream {
    target: Target,
    /// The masters and which serves each slot.
    topology: RwLock<Arc<Topology>>,
    /// Every link up (or not): the upstream's state as a whole.
    state: AtomicU8,
    /// Changes at every (re)connect of a link, after which per-connection
    /// state (subscriptions) must be set up again.
    generation: tokio::sync::watch::Sender<u64>,
    /// Signalled when the masters must be looked up again: a reply says a
    /// slot moved, or a link cannot reach its master.
    refresh_requested: tokio::sync::Notify,
    timeouts: Timeouts,
    /// The CA to verify a TLS upstream with (the system's when None).
    tls_ca: Option<Vec<u8>>,
    pub stats: UpstreamStats,
}

/// Where to connect.
enum Target {
    /// A single server (or a proxy in front of one): one master for every
    /// slot.
    Server(Box<ConnectionInfo>),
    /// A Redis Cluster, found through its seeds.
    Cluster { seeds: Vec<ConnectionInfo> },
    /// A master and its replicas watched by Redis Sentinel: the master is
    /// asked of the sentinels at every connect, and again when a reply or a
    /// broken link says it may have changed (a failover).
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        /// The master's credentials, database and TLS.
        node: redis::sentinel::SentinelNodeConnectionInfo,
    },
}

/// The masters known, and which serves each slot.
#[derive(Default)]
struct Topology {
    links: Vec<Arc<Link>>,
    /// For each slot, the index in `links` of its master (`NO_LINK`: none).
    slots: Vec<u16>,
}

const NO_LINK: u16 = u16::MAX;

/// The supervised connection to one master.
struct Link {
    info: ConnectionInfo,
    address: String,
    connection: RwLock<Option<MultiplexedConnection>>,
    state: AtomicU8,
    /// Signalled when the connection cannot be trusted any more: a command
    /// timed out (the link may be dead without the socket knowing).
    reconnect_requested: tokio::sync::Notify,
    /// Cancelled when the master leaves the topology, or at shutdown.
    stop: CancellationToken,
}

impl Link {
    fn state(&self) -> State {
        state_of(self.state.load(Ordering::Relaxed))
    }
}

fn state_of(value: u8) -> State {
    match value {
        1 => State::Up,
        2 => State::Down,
        _ => State::Connecting,
    }
}

/// Why an upstream call failed.
#[derive(Debug)]
pub enum CallError {
    /// Not connected, or the connection failed under the call.
    Unavailable,
    /// Sent, but not answered in time: it may or may not have been applied.
    Unknown,
    /// The upstream answered with an error (verbatim).
    Reply(String),
}

impl Upstream {
    /// Parses the URL: `redis://` or `rediss://` for one server,
    /// `redis+cluster://host:port[,host:port...]` (or `rediss+cluster://`) for
    /// a cluster, whose masters are found at every connect. For TLS, `ca_pem`
    /// is the certificate authority to verify the upstream with, instead of
    /// the system's. Connecting is the supervisor's job.
    pub fn new(url: &str, ca_pem: Option<Vec<u8>>, timeouts: Timeouts) -> Result<Upstream, String> {
        let target = if let Some((sentinels, master, node)) = sentinel_target(url)? {
            Target::Sentinel {
                sentinels,
                master,
                node,
            }
        } else if let Some(seeds) = cluster_seeds(url)? {
            Target::Cluster { seeds }
        } else {
            let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(invalid_url)?;
            // Checked now: a bad URL is a start-up error, not a retry loop.
            client_for(info.clone(), ca_pem.clone())?;
            Target::Server(Box::new(info))
        };
        Ok(Upstream {
            target,
            topology: RwLock::new(Arc::new(Topology::default())),
            state: AtomicU8::new(State::Connecting as u8),
            generation: tokio::sync::watch::Sender::new(0),
            refresh_requested: tokio::sync::Notify::new(),
            timeouts,
            tls_ca: ca_pem,
            stats: UpstreamStats::default(),
        })
    }

    /// The servers the URL names, with its credentials and database: the
    /// one server, or a cluster's seeds (then `true`); and the CA that
    /// verifies them over TLS. The proxy dials them.
    pub fn servers(&self) -> (Vec<ConnectionInfo>, bool, Option<Vec<u8>>) {
        let (servers, cluster) = match &self.target {
            Target::Server(info) => (vec![(**info).clone()], false),
            Target::Cluster { seeds } => (seeds.clone(), true),
            // The master moves with failovers: the passthrough, which dials
            // fixed addresses, is not offered (see the docs).
            Target::Sentinel { .. } => (Vec::new(), false),
        };
        (servers, cluster, self.tls_ca.clone())
    }

    /// Whether the upstream is a Redis Cluster: a script call can then
    /// change the keys of one hash slot only.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// The masters' addresses (the URL's, before the first connect).
    pub fn address(&self) -> String {
        let topology = self.current();
        if topology.links.is_empty() {
            let (servers, _, _) = self.servers();
            return servers
                .iter()
                .map(|s| s.addr().to_string())
                .collect::<Vec<_>>()
                .join(",");
        }
        topology
            .links
            .iter()
            .map(|l| l.address.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Each master's address and its link's state.
    pub fn masters(&self) -> Vec<(String, State)> {
        self.current()
            .links
            .iter()
            .map(|l| (l.address.clone(), l.state()))
            .collect()
    }

    /// How long a command may wait for its reply.
    pub fn command_timeout(&self) -> Duration {
        self.timeouts.command
    }

    /// Up when every master's link is.
    pub fn state(&self) -> State {
        state_of(self.state.load(Ordering::Relaxed))
    }

    fn current(&self) -> Arc<Topology> {
        self.topology
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows the links' generation: it changes at every (re)connect,
    /// after which per-connection state (subscriptions) must be set up again.
    pub fn watch_generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Subscribes to a channel, on the master of the channel name's slot
    /// (a cluster delivers every PUBLISH to every node); pushes go to the
    /// handler.
    pub async fn subscribe(&self, channel: &[u8]) -> Result<(), CallError> {
        self.call(slot_of(channel), async |c| c.subscribe(channel).await)
            .await
    }

    pub async fn unsubscribe(&self, channel: &[u8]) -> Result<(), CallError> {
        self.call(slot_of(channel), async |c| c.unsubscribe(channel).await)
            .await
    }

    /// The live connection to the master of `slot`, or `Unavailable` at
    /// once when there is none.
    fn connection(&self, slot: u16) -> Result<(Arc<Link>, MultiplexedConnection), CallError> {
        let topology = self.current();
        let link = topology
            .slots
            .get(usize::from(slot))
            .and_then(|&index| topology.links.get(usize::from(index)));
        let Some(link) = link else {
            self.stats.unavailable.inc();
            return Err(CallError::Unavailable);
        };
        let connection = link
            .connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match connection {
            Some(connection) => Ok((link.clone(), connection)),
            None => {
                self.stats.unavailable.inc();
                Err(CallError::Unavailable)
            }
        }
    }

    /// Runs a command (or a script invocation, or a pipeline) on the master
    /// of `slot`: every key it names must be in that slot.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        slot: u16,
        run: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, CallError> {
        let (link, mut connection) = self.connection(slot)?;
        let started = Instant::now();
        self.stats.commands.inc();
        let result = run(&mut connection).await;
        let took = started.elapsed();
        self.stats
            .last_latency_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.stats.latency.observe(took);
        result.map_err(|error| self.classify(&link, error))
    }

    /// Which master (its index in [`Upstream::masters`]) serves `slot`.
    pub fn master_of(&self, slot: u16) -> Option<usize> {
        self.current()
            .slots
            .get(usize::from(slot))
            .filter(|&&index| index != NO_LINK)
            .map(|&index| usize::from(index))
    }

    fn classify(&self, link: &Link, error: RedisError) -> CallError {
        if matches!(
            error.code(),
            Some("MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN" | "READONLY" | "MASTERDOWN")
        ) {
            // The slot is elsewhere now (resharding, failover): look the
            // masters up again; meanwhile, fail fast. Nothing was applied.
            self.stats.unavailable.inc();
            self.refresh_requested.notify_one();
            return CallError::Unavailable;
        }
        if error.code() == Some("LOADING") {
            // The upstream is loading its data after a restart: nothing ran,
            // and it will answer soon. Session commands fail fast with
            // TRYAGAIN instead of handing clients a reply they do not expect.
            self.stats.unavailable.inc();
            return CallError::Unavailable;
        }
        if error.is_timeout() {
            // Sent, but no answer in time: it may have been applied, so the
            // client must not be told to retry it blindly. The link itself
            // is suspect: reconnect (which flushes the cache).
            self.stats.unavailable.inc();
            link.reconnect_requested.notify_one();
            tracing::debug!(%error, "upstream command timed out");
            return CallError::Unknown;
        }
        if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
            // The connection broke under the call: it may have been sent and
            // applied before the break (the client cannot tell which), so a
            // blind retry could apply it twice. Once the supervisor has seen
            // the break, calls fail fast with Unavailable before being sent.
            self.stats.unavailable.inc();
            link.reconnect_requested.notify_one();
            tracing::debug!(%error, "upstream connection broke during a call");
            return CallError::Unknown;
        }
        let message = match (error.code(), error.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            (Some(code), None) => code.to_string(),
            _ => format!("ERR upstream: {error}"),
        };
        if is_session_outcome(&message) {
            self.stats.refusals.inc();
        } else {
            self.stats.errors.inc();
        }
        CallError::Reply(message)
    }

    /// Keeps a link to every master until `shutdown`: finds the masters,
    /// starts a link for each new one (set up with `setup`, its pushes
    /// handed to `handler`), stops those of masters that are gone, and
    /// looks again when asked to (or every [`TOPOLOGY_REFRESH`] on a
    /// cluster).
    pub async fn supervise(
        self: Arc<Self>,
        setup: Vec<redis::Cmd>,
        handler: Arc<dyn PushHandler>,
        shutdown: CancellationToken,
    ) {
        let setup: Arc<[redis::Cmd]> = setup.into();
        let links = TaskTracker::new();
        let mut attempt: u32 = 0;
        loop {
            let discovered = tokio::select! {
                found = self.discover() => found,
                _ = shutdown.cancelled() => break,
            };
            let wait = match discovered {
                Ok(masters) => {
                    attempt = 0;
                    self.install(masters, &setup, &handler, &links, &shutdown);
                    match self.target {
                        Target::Cluster { .. } => TOPOLOGY_REFRESH,
                        // A failover shows at the sentinels first: asked
                        // every second, so that writes follow the new master
                        // before the old one is even demoted.
                        Target::Sentinel { .. } => SENTINEL_REFRESH,
                        Target::Server(_) => Duration::MAX,
                    }
                }
                Err(error) => {
                    if self.state() != State::Down {
                        tracing::warn!(upstream = %self.address(), %error, "cannot reach the upstream; retrying");
                    }
                    if self.current().links.is_empty() {
                        self.set_state(State::Down, handler.as_ref());
                    }
                    attempt = attempt.saturating_add(1);
                    self.backoff(attempt)
                }
            };
            tokio::select! {
                _ = self.refresh_requested.notified() => {
                    // Several calls may ask at once: one look serves them.
                    tokio::time::sleep(self.timeouts.backoff_min).await;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        links.close();
        links.wait().await;
    }

    /// The masters and the slots each serves: the one server, or what the
    /// cluster says (asked of the known masters, then the seeds).
    async fn discover(&self) -> redis::RedisResult<Vec<(ConnectionInfo, Vec<(u16, u16)>)>> {
        let seeds = match &self.target {
            Target::Server(info) => {
                return Ok(vec![((**info).clone(), vec![(0, SLOTS as u16 - 1)])]);
            }
            Target::Sentinel {
                sentinels,
                master,
                node,
            } => {
                let span = tracing::debug_span!("upstream_sentinel", master = %master);
                let _entered = span.enter();
                let mut sentinel = redis::sentinel::Sentinel::build(sentinels.clone())?;
                let client = sentinel.async_master_for(master, Some(node)).await?;
                let info = client.get_connection_info().clone();
                return Ok(vec![(info, vec![(0, SLOTS as u16 - 1)])]);
            }
            Target::Cluster { seeds } => seeds,
        };
        let span = tracing::debug_span!("upstream_topology");
        let _entered = span.enter();
        let known: Vec<ConnectionInfo> = self
            .current()
            .links
            .iter()
            .map(|l| l.info.clone())
            .collect();
        let mut last_error =
            RedisError::from((redis::ErrorKind::Client, "no cluster node answered"));
        for node in known.iter().chain(seeds) {
            match tokio::time::timeout(
                self.timeouts.connect,
                ask_slots(node, &self.tls_ca, self.timeouts.connect),
            )
            .await
            {
                Ok(Ok(masters)) if !masters.is_empty() => return Ok(masters),
                Ok(Ok(_)) => {}
                Ok(Err(error)) => last_error = error,
                Err(_) => {
                    last_error = RedisError::from((
                        redis::ErrorKind::Io,
                        "cluster node did not answer CLUSTER SLOTS in time",
                    ))
                }
            }
        }
        Err(last_error)
    }

    /// Makes `masters` the topology: the links of masters already known stay
    /// (with their connections), new masters get a link, the others stop.
    fn install(
        self: &Arc<Self>,
        masters: Vec<(ConnectionInfo, Vec<(u16, u16)>)>,
        setup: &Arc<[redis::Cmd]>,
        handler: &Arc<dyn PushHandler>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let old = self.current();
        let mut links = Vec::with_capacity(masters.len());
        let mut slots = vec![NO_LINK; SLOTS];
        for (index, (info, ranges)) in masters.into_iter().enumerate() {
            let address = info.addr().to_string();
            let link = match old.links.iter().find(|l| l.address == address) {
                Some(link) => link.clone(),
                None => {
                    let link = Arc::new(Link {
                        info,
                        address,
                        connection: RwLock::new(None),
                        state: AtomicU8::new(State::Connecting as u8),
                        reconnect_requested: tokio::sync::Notify::new(),
                        stop: shutdown.child_token(),
                    });
                    tracker.spawn(self.clone().supervise_link(
                        link.clone(),
                        setup.clone(),
                        handler.clone(),
                    ));
                    link
                }
            };
            for (start, end) in ranges {
                for slot in start..=end.min(SLOTS as u16 - 1) {
                    slots[usize::from(slot)] = index as u16;
                }
            }
            links.push(link);
        }
        let changed = old.links.len() != links.len()
            || old
                .links
                .iter()
                .zip(&links)
                .any(|(a, b)| !Arc::ptr_eq(a, b))
            || old.slots != slots;
        for link in &old.links {
            if !links.iter().any(|l| Arc::ptr_eq(l, link)) {
                tracing::info!(master = %link.address, "upstream master gone");
                link.stop.cancel();
            }
        }
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Topology { links, slots });
        if changed {
            tracing::info!(masters = %self.address(), "upstream topology");
            self.update_state(handler.as_ref());
        }
    }

    /// The upstream's state from its links': up when every one is up.
    fn update_state(&self, handler: &dyn PushHandler) {
        let topology = self.current();
        let all_up = !topology.links.is_empty()
            && topology.links.iter().all(|l| l.state() == State::Up)
            && !topology.slots.contains(&NO_LINK);
        let state = if all_up {
            State::Up
        } else if topology.links.iter().any(|l| l.state() == State::Down) {
            State::Down
        } else {
            self.state().min_with(State::Connecting)
        };
        self.set_state(state, handler);
    }

    fn set_state(&self, state: State, handler: &dyn PushHandler) {
        let before = state_of(self.state.swap(state as u8, Ordering::Relaxed));
        if state == State::Up && before != State::Up {
            // Invalidations may have been missed while a link was away.
            handler.connected();
        } else if state != State::Up && before == State::Up {
            handler.disconnected();
        }
    }

    /// Keeps one master's connection up until its link stops: connect, set
    /// up, serve pushes, and reconnect with jittered exponential backoff
    /// when it drops (asking for the masters again, on a cluster: the
    /// master may have failed over).
    async fn supervise_link(
        self: Arc<Self>,
        link: Arc<Link>,
        setup: Arc<[redis::Cmd]>,
        handler: Arc<dyn PushHandler>,
    ) {
        let mut attempt: u32 = 0;
        loop {
            let (tx, mut rx) = mpsc::unbounded_channel::<PushInfo>();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeouts.connect))
                .set_response_timeout(Some(self.timeouts.command))
                .set_push_sender(tx);
            let connected = tokio::select! {
                connected = self.connect(&link.info, &config, &setup) => connected,
                _ = link.stop.cancelled() => break,
            };
            match connected {
                Ok(connection) => {
                    if attempt > 0 || link.state() == State::Down {
                        self.stats.reconnects.inc();
                    }
                    attempt = 0;
                    self.set_link(&link, Some(connection), State::Up, handler.as_ref());
                    tracing::info!(upstream = %link.address, "upstream connected");
                    let dropped = tokio::select! {
                        _ = Self::serve_pushes(&mut rx, handler.as_ref(), &self.stats) => true,
                        _ = link.reconnect_requested.notified() => true,
                        _ = link.stop.cancelled() => false,
                    };
                    self.set_link(&link, None, State::Down, handler.as_ref());
                    if !dropped {
                        break;
                    }
                    tracing::warn!(upstream = %link.address, "upstream connection lost; reconnecting");
                }
                Err(error) => {
                    if link.state() != State::Down {
                        tracing::warn!(upstream = %link.address, %error, "cannot reach the upstream; retrying");
                    }
                    self.set_link(&link, None, State::Down, handler.as_ref());
                }
            }
            if !matches!(self.target, Target::Server(_)) {
                // A cluster's or a sentinel's master may have failed over.
                self.refresh_requested.notify_one();
            }
            let delay = self.backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = link.stop.cancelled() => break,
            }
        }
        self.set_link(&link, None, State::Down, handler.as_ref());
    }

    fn set_link(
        &self,
        link: &Link,
        connection: Option<MultiplexedConnection>,
        state: State,
        handler: &dyn PushHandler,
    ) {
        let connected = connection.is_some();
        *link.connection.write().unwrap_or_else(|p| p.into_inner()) = connection;
        link.state.store(state as u8, Ordering::Relaxed);
        if connected {
            self.generation.send_modify(|generation| *generation += 1);
        }
        if state != State::Up {
            // Whatever this master's invalidations would have said is lost
            // from now on: the cache is flushed even if the upstream as a
            // whole was not up.
            handler.disconnected();
        }
        self.update_state(handler);
    }

    async fn connect(
        &self,
        info: &ConnectionInfo,
        config: &AsyncConnectionConfig,
        setup: &[redis::Cmd],
    ) -> redis::RedisResult<MultiplexedConnection> {
        let span = tracing::debug_span!("upstream_connect");
        let _entered = span.enter();
        let client = client_for(info.clone(), self.tls_ca.clone()).map_err(|message| {
            RedisError::from((
                redis::ErrorKind::Client,
                "invalid upstream address",
                message,
            ))
        })?;
        let mut connection =
            Box::pin(client.get_multiplexed_async_connection_with_config(config)).await?;
        for command in setup {
            command.exec_async(&mut connection).await?;
        }
        Ok(connection)
    }

    /// Serves pushes until the connection reports its end.
    async fn serve_pushes(
        rx: &mut mpsc::UnboundedReceiver<PushInfo>,
        handler: &dyn PushHandler,
        stats: &UpstreamStats,
    ) {
        while let Some(push) = rx.recv().await {
            match push.kind {
                PushKind::Disconnection => return,
                PushKind::Invalidate => {
                    stats.invalidations.inc();
                    handler.invalidate(invalidated_keys(push.data));
                }
                PushKind::Message => {
                    let mut data = push.data.into_iter();
                    if let (Some(channel), Some(payload)) = (data.next(), data.next())
                        && let (Some(channel), Some(payload)) =
                            (bytes_of(channel), bytes_of(payload))
                    {
                        handler.message(channel, payload);
                    }
                }
                _ => {}
            }
        }
    }

    /// Full jitter: a random delay up to min(max, min * 2^attempt).
    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .timeouts
            .backoff_min
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.timeouts.backoff_max);
        let random = RandomState::new().hash_one(attempt);
        let millis = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(self.timeouts.backoff_min.as_millis() as u64 / 2 + random % millis)
    }
}

/// How often a cluster's masters are looked up when nothing asks for it.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(10);
/// How often the sentinels are asked for the master.
const SENTINEL_REFRESH: Duration = Duration::from_secs(1);

impl State {
    /// The lesser of two states in the order down < connecting < up.
    fn min_with(self, other: State) -> State {
        let rank = |s: State| match s {
            State::Down => 0,
            State::Connecting => 1,
            State::Up => 2,
        };
        if rank(self) <= rank(other) {
            self
        } else {
            other
        }
    }
}

/// Whether an error reply is one of the session script's ordinary answers
/// (a missing session, a version conflict, an existing id, a refused
/// attribute), which the client asked for, rather than an upstream failure.
fn is_session_outcome(message: &str) -> bool {
    [
        "NOSESSION ",
        "CONFLICT ",
        "EXISTS ",
        "ERR too many attributes",
        "ERR attribute value",
        "ERR increment or decrement",
    ]
    .iter()
    .any(|outcome| message.starts_with(outcome))
}

fn invalid_url(error: RedisError) -> String {
    format!(
        "invalid --upstream: {error} (accepted: redis://[user:pass@]host:port[/db], rediss://..., \
         redis+cluster://host:port[,host:port...], rediss+cluster://..., \
         redis+sentinel://host:port[,host:port...]/<master>[/db], rediss+sentinel://...)"
    )
}

/// A RESP3 client for `info`, over TLS verified against `ca_pem` if given.
fn client_for(info: ConnectionInfo, ca_pem: Option<Vec<u8>>) -> Result<Client, String> {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match ca_pem {
        Some(root_cert) => {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            Client::build_with_tls(info, certificates).map_err(invalid_url)
        }
        None => Client::open(info).map_err(invalid_url),
    }
}

/// The sentinels, master name and master connection settings of a
/// `redis+sentinel://[user:pass@]host:port[,host:port...]/<master>[/<db>]`
/// URL (or `rediss+sentinel://`, TLS to the master); None for any other URL.
/// The credentials and database are the master's; the sentinels are asked
/// without credentials.
#[allow(clippy::type_complexity)]
fn sentinel_target(
    url: &str,
) -> Result<
    Option<(
        Vec<ConnectionInfo>,
        String,
        redis::sentinel::SentinelNodeConnectionInfo,
    )>,
    String,
> {
    let (tls, rest) = match url.split_once("://") {
        Some(("redis+sentinel", rest)) => (false, rest),
        Some(("rediss+sentinel", rest)) => (true, rest),
        _ => return Ok(None),
    };
    let (credentials, rest) = match rest.rsplit_once('@') {
        Some((credentials, rest)) => (format!("{credentials}@"), rest),
        None => (String::new(), rest),
    };
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut path = path.split('/').filter(|p| !p.is_empty());
    let master = path
        .next()
        .ok_or("invalid --upstream: a sentinel URL names the master: redis+sentinel://host:port[,host:port...]/<master>[/<db>]")?
        .to_string();
    let db = path.next().unwrap_or("0");
    let sentinels = hosts
        .split(',')
        .filter(|host| !host.is_empty())
        .map(|host| {
            redis::IntoConnectionInfo::into_connection_info(format!("redis://{host}"))
                .map_err(invalid_url)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let first = hosts.split(',').next().unwrap_or_default();
    if sentinels.is_empty() {
        return Err("invalid --upstream: a sentinel URL needs at least one host:port".into());
    }
    let master_settings = redis::IntoConnectionInfo::into_connection_info(format!(
        "redis://{credentials}{first}/{db}"
    ))
    .map_err(invalid_url)?
    .redis_settings()
    .clone()
    .set_protocol(ProtocolVersion::RESP3);
    let mut node = redis::sentinel::SentinelNodeConnectionInfo::default()
        .set_redis_connection_info(master_settings);
    if tls {
        node = node.set_tls_mode(redis::TlsMode::Secure);
    }
    Ok(Some((sentinels, master, node)))
}

/// The seeds of a `redis+cluster://` (or `rediss+cluster://`) URL, each with
/// the URL's credentials; None for any other URL.
fn cluster_seeds(url: &str) -> Result<Option<Vec<ConnectionInfo>>, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("redis+cluster", rest)) => ("redis", rest),
        Some(("rediss+cluster", rest)) => ("rediss", rest),
        _ => return Ok(None),
    };
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    let seeds = hosts
        .split(',')
        .filter(|host| !host.is_empty())
        .map(|host| {
            redis::IntoConnectionInfo::into_connection_info(format!(
                "{scheme}://{credentials}{host}"
            ))
            .map_err(invalid_url)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if seeds.is_empty() {
        return Err("invalid --upstream: a cluster URL needs at least one host:port".into());
    }
    Ok(Some(seeds))
}

/// CLUSTER SLOTS, asked of `node`: each master (with `node`'s credentials
/// and TLS settings) and the slot ranges it serves, in the order of their
/// first range.
async fn ask_slots(
    node: &ConnectionInfo,
    tls: &Option<Vec<u8>>,
    timeout: Duration,
) -> redis::RedisResult<Vec<(ConnectionInfo, Vec<(u16, u16)>)>> {
    let client = client_for(node.clone(), tls.clone()).map_err(|message| {
        RedisError::from((redis::ErrorKind::Client, "invalid cluster seed", message))
    })?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut connection =
        Box::pin(client.get_multiplexed_async_connection_with_config(&config)).await?;
    let ranges: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await?;
    let mut masters: Vec<(ConnectionInfo, Vec<(u16, u16)>)> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(host)) if !host.is_empty() => {
                String::from_utf8_lossy(host).into_owned()
            }
            // An empty host means "the one you asked".
            _ => match node.addr() {
                redis::ConnectionAddr::Tcp(host, _)
                | redis::ConnectionAddr::TcpTls { host, .. } => host.clone(),
                _ => continue,
            },
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        let info = at_address(node, host, port);
        let address = info.addr().to_string();
        match masters
            .iter_mut()
            .find(|(m, _)| m.addr().to_string() == address)
        {
            Some((_, ranges)) => ranges.push((start, end)),
            None => masters.push((info, vec![(start, end)])),
        }
    }
    masters.sort_by_key(|(_, ranges)| ranges.iter().map(|r| r.0).min());
    Ok(masters)
}

/// `seed`'s connection settings (credentials, database, TLS) for another
/// node of the same deployment, at `host:port`.
pub fn at_address(seed: &ConnectionInfo, host: String, port: u16) -> ConnectionInfo {
    let addr = match seed.addr() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host, port),
    };
    seed.clone().set_addr(addr)
}

/// The keys of an `invalidate` push: an array of keys, or nil for "all".
fn invalidated_keys(data: Vec<redis::Value>) -> Option<Vec<Vec<u8>>> {
    match data.into_iter().next()? {
        redis::Value::Array(keys) => Some(keys.into_iter().filter_map(bytes_of).collect()),
        _ => None,
    }
}

fn bytes_of(value: redis::Value) -> Option<Vec<u8>> {
    match value {
        redis::Value::BulkString(bytes) => Some(bytes),
        redis::Value::SimpleString(text) => Some(text.into_bytes()),
        _ => None,
    }
}
