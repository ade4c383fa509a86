//! Passthrough: every command the sidecar does not answer itself goes to
//! the upstream unchanged, and its reply comes back unchanged, in the
//! protocol version the client negotiated.
//!
//! - Commands that leave no state on the connection are multiplexed: a
//!   client's pipeline is one request to a small pool of pipelined upstream
//!   connections ([`pool`]), many clients' requests are written together,
//!   and the replies, slices of what the upstream sent, are written straight
//!   to each client's socket ([`sink`]).
//! - Commands that start state on the connection (MULTI, WATCH, the SUBSCRIBE
//!   family, blocking commands, CLIENT TRACKING, SELECT, MONITOR) pin the
//!   client to a connection of its own ([`pinned`]) until the state is over,
//!   so a blocked or subscribed client never holds up another.
//! - On a Redis Cluster ([`cluster`]) each command goes to the master of its
//!   first key's slot; MOVED and ASK are followed, and the nodes themselves
//!   answer CROSSSLOT for keys in several slots.
//!
//! Invariant: every request gets exactly one reply, in order. A client's
//! forwarded commands are sent in order and their replies written in order;
//! before a command the sidecar answers itself, the replies owed for the
//! forwarded commands before it are written first ([`Link::settle`]).
//!
//! Layer 10 of 15 (the order is in `tests/layers.rs`). Uses `config`,
//! `event_loop`, `metrics`, `protocol` and `upstream`; not the node: it gets
//! what it uses when it is built.

pub mod cluster;
pub mod endpoint;
pub mod pinned;
pub mod pool;
pub mod sink;
pub mod tracking;

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use redis::ConnectionInfo;

use crate::metrics::Counter;
use crate::protocol::command_table::{self as table, Cmd};
use crate::protocol::frame::{Element, FrameView};
use crate::protocol::{Limits, Protocol, complete_request};
use cluster::Router;
use endpoint::{Endpoint, encode_command};
use pinned::{IdleConnections, Pinned};
use pool::{Delivery, Pool, PoolSettings};
use sink::ReplySink;
use tracking::Trackers;

/// The reply to a command that could not be sent.
pub const UNAVAILABLE: &[u8] = b"-TRYAGAIN upstream unavailable\r\n";
/// EXEC's reply to a transaction refused at queue time.
pub const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
/// The reply to a command sent on a connection that then failed.
pub const LOST: &[u8] = b"-ERR upstream connection lost: the command may have been applied\r\n";
/// Pooled connections per event loop, upstream server and protocol
/// version: one, so that a loop's clients share the biggest batches (two
/// cost 5-10% of pipelined throughput here, in upstream reads and writes).
const POOL_CONNECTIONS: usize = 1;
/// Send a client's pending commands once they are this large.
const BATCH_BOUND: usize = 64 * 1024;
/// Requests a client may have in flight in the pools before it waits.
const MAX_OWED: usize = 32;

/// Counters of the passthrough path.
#[derive(Default, Debug)]
pub struct ProxyStats {
    /// Commands forwarded to the upstream.
    pub forwarded: Counter,
    /// Writes of batches on pooled connections.
    pub batches: Counter,
    /// Connections pinned to a client.
    pub pinned: Counter,
    /// Commands refused because the upstream could not be reached.
    pub unavailable: Counter,
    /// MOVED and ASK redirections followed.
    pub redirections: Counter,
    /// How long a forwarded request waited in its pool for the batch before
    /// it to be answered: the latency the passthrough adds to the upstream's.
    pub queue_latency: crate::metrics::Histogram,
    /// From a pooled batch's write to its last reply: the upstream's part.
    pub upstream_latency: crate::metrics::Histogram,
}

/// The passthrough to the upstream: its pools and how to pin connections.
pub struct Proxy {
    target: Target,
    /// Clean pinned connections, for the next client that needs one.
    idle: Arc<IdleConnections>,
    connect_timeout: Duration,
    /// How long the sidecar waits for what it asks the upstream itself
    /// ([`Proxy::ask`]).
    ask_timeout: Duration,
    pub stats: Arc<ProxyStats>,
    /// The upstream's `redis_version` and when it was last asked for.
    version: std::sync::Mutex<(Option<Arc<str>>, Option<std::time::Instant>)>,
}

/// How long the upstream's version is trusted before it is asked again
/// (an upgrade of the upstream shows within this).
const VERSION_REFRESH: Duration = Duration::from_secs(30);

enum Target {
    Server {
        endpoint: Endpoint,
        /// One pool per event loop, started on it at its first use, so a
        /// client's commands and their replies stay on the client's thread.
        pools: Box<[OnceLock<Pool>]>,
        settings: PoolSettings,
    },
    Cluster(Router),
}

/// The calling event loop's pool, started on it if this is its first use.
fn local_pool<'a>(
    endpoint: &Endpoint,
    pools: &'a [OnceLock<Pool>],
    settings: &PoolSettings,
) -> &'a Pool {
    let slot = &pools[crate::event_loop::current() % pools.len()];
    slot.get_or_init(|| Pool::new(endpoint, settings))
}

impl Proxy {
    /// A proxy to the servers of the `--upstream` URL (`cluster`: they are a
    /// Redis Cluster's seeds; `tls_ca` verifies them over TLS, instead of
    /// the system's roots), served from `workers` event loops; what the
    /// sidecar asks itself waits at most `ask_timeout`. Starts no connection
    /// yet.
    pub fn new(
        servers: Vec<ConnectionInfo>,
        cluster: bool,
        tls_ca: Option<Vec<u8>>,
        connect_timeout: Duration,
        reply_timeout: Option<Duration>,
        ask_timeout: Duration,
        workers: usize,
    ) -> Result<Proxy, String> {
        let stats = Arc::new(ProxyStats::default());
        let settings = PoolSettings {
            connections: POOL_CONNECTIONS,
            connect_timeout,
            reply_timeout,
            stats: stats.clone(),
        };
        let first = servers.first().ok_or("the upstream URL names no server")?;
        let endpoint = endpoint_of(first, tls_ca.as_deref())?;
        let target = if cluster {
            Target::Cluster(Router::new(servers, tls_ca, endpoint, settings))
        } else {
            Target::Server {
                endpoint,
                pools: (0..workers.max(1)).map(|_| OnceLock::new()).collect(),
                settings,
            }
        };
        Ok(Proxy {
            target,
            idle: Arc::new(IdleConnections::default()),
            connect_timeout,
            ask_timeout,
            stats,
            version: std::sync::Mutex::new((None, None)),
        })
    }

    /// Whether a request goes to the upstream rather than being answered by
    /// the sidecar: every command it does not know, the SUBSCRIBE family and
    /// PUBLISH (the channels are the upstream's), SELECT, CLIENT TRACKING and
    /// CACHING (applied here too, for sessions); and, on a RESP2 subscribed connection, everything but QUIT
    /// and RESET, since the upstream decides what is allowed there.
    pub fn forwards(&self, link: &Link, authenticated: bool, argv: &[Bytes]) -> bool {
        if !authenticated {
            return false;
        }
        let Some(name) = argv.first() else {
            return false;
        };
        let Some(spec) = table::lookup(name) else {
            return !refuses(name);
        };
        if link.resp2_subscribed() {
            return !matches!(spec.cmd, Cmd::Quit | Cmd::Reset);
        }
        match spec.cmd {
            Cmd::Subscribe | Cmd::Unsubscribe | Cmd::Psubscribe | Cmd::Punsubscribe => true,
            Cmd::Publish | Cmd::Select => true,
            // CONFIG SET and the rest are the upstream's, but for the
            // sidecar's own parameters; CONFIG GET merges both, here.
            Cmd::Config => argv.get(1).is_some_and(|sub| {
                let answered_here = sub.eq_ignore_ascii_case(b"get")
                    || (sub.eq_ignore_ascii_case(b"set")
                        && crate::config::sets_own_parameter(argv));
                !answered_here
            }),
            // The sidecar is a one-node cluster; the rest of CLUSTER is the
            // upstream's.
            Cmd::Cluster => argv.get(1).is_some_and(|sub| !cluster_answers_here(sub)),
            // TRACKING and CACHING also go to the upstream, for its keys;
            // GETREDIR and TRACKINGINFO are answered here, where REDIRECT
            // names the sidecar's client ids.
            // PAUSE and UNPAUSE are the upstream's: its clients are paused;
            // so is UNBLOCK, of the client's blocked upstream connection.
            Cmd::Client => argv.get(1).is_some_and(|sub| {
                [
                    &b"tracking"[..],
                    b"caching",
                    b"pause",
                    b"unpause",
                    b"unblock",
                ]
                .iter()
                .any(|name| sub.eq_ignore_ascii_case(name))
            }),
            _ => false,
        }
    }

    /// Sends a client's batch of stateless commands. On a single server
    /// with the client's socket at hand, the pooled connection writes the
    /// replies to it; otherwise they are awaited and appended to `output`.
    async fn call(
        &self,
        protocol: Protocol,
        lane: usize,
        batch: &mut Batch,
        sink: Option<&Arc<ReplySink>>,
        output: &mut BytesMut,
    ) {
        let count = batch.count;
        let (endpoint, pools, settings) = match &self.target {
            Target::Server {
                endpoint,
                pools,
                settings,
            } => (endpoint, pools, settings),
            Target::Cluster(router) => {
                let result = router.call(protocol, lane, batch).await;
                batch.clear();
                Self::append(result, count, output);
                return;
            }
        };
        let pool = local_pool(endpoint, pools, settings);
        let result = match sink {
            Some(sink) => {
                sink.owe();
                let commands = batch.commands.split().freeze();
                batch.clear();
                pool.submit(
                    protocol,
                    lane,
                    commands,
                    count,
                    Delivery::Sink(sink.clone()),
                )
                .await;
                return;
            }
            None => {
                pool.call(protocol, lane, batch.commands.split().freeze(), count)
                    .await
            }
        };
        batch.clear();
        Self::append(result, count, output);
    }

    /// Appends the replies awaited for `count` commands, or an error for each.
    fn append(result: Result<Bytes, pool::Failure>, count: usize, output: &mut BytesMut) {
        match result {
            Ok(replies) => output.extend_from_slice(&replies),
            Err(failure) => {
                for _ in 0..count {
                    output.extend_from_slice(failure.reply());
                }
            }
        }
    }

    /// A connection of the client's own, to the server of `argv`'s key.
    async fn pin(&self, protocol: Protocol, argv: &[Bytes]) -> Result<Pinned, String> {
        let endpoint = match &self.target {
            Target::Server { endpoint, .. } => endpoint.clone(),
            Target::Cluster(router) => router
                .endpoint_for(argv)
                .await
                .ok_or("no cluster node serves the key's slot")?,
        };
        self.pin_at(protocol, endpoint).await
    }

    /// A connection of the client's own to `endpoint`.
    async fn pin_at(&self, protocol: Protocol, endpoint: Endpoint) -> Result<Pinned, String> {
        let connection = match self.idle.take(&endpoint.addr, protocol) {
            Some(connection) => connection,
            None => Box::pin(endpoint.connect(protocol, self.connect_timeout)).await?,
        };
        self.stats.pinned.inc();
        Ok(Pinned::new(
            connection,
            self.idle.clone(),
            protocol,
            endpoint.addr.clone(),
            endpoint.db,
        ))
    }

    fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The upstream's reply to `argv` in `protocol`, as it sent it (any
    /// node of a cluster).
    pub async fn ask(&self, protocol: Protocol, argv: &[&[u8]]) -> Bytes {
        self.ask_routed(protocol, argv, cluster::Route::AnyNode)
            .await
    }

    /// [`Proxy::ask`], to `route`'s masters on a cluster. A reply that does
    /// not come within `ask_timeout` is `-TRYAGAIN upstream unavailable`.
    async fn ask_routed(&self, protocol: Protocol, argv: &[&[u8]], route: cluster::Route) -> Bytes {
        let mut batch = Batch::default();
        encode_command(&mut batch.commands, argv);
        batch.count = 1;
        if self.is_cluster() {
            batch.ends.push((batch.commands.len(), route));
        }
        let mut reply = BytesMut::new();
        let asked = self.call(protocol, 0, &mut batch, None, &mut reply);
        match tokio::time::timeout(self.ask_timeout, asked).await {
            Ok(()) => reply.freeze(),
            Err(_) => Bytes::from_static(UNAVAILABLE),
        }
    }

    /// The upstream's `redis_version` (one master's on a cluster), for
    /// HELLO: asked at most every [`VERSION_REFRESH`], and not awaited again
    /// once known, so that HELLO never waits on a slow upstream twice. None
    /// while the upstream has not told it.
    pub async fn server_version(self: &Arc<Self>) -> Option<Arc<str>> {
        let (known, asked) = self
            .version
            .lock()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        if asked.is_some_and(|at| at.elapsed() < VERSION_REFRESH) {
            return known;
        }
        if let Ok(mut version) = self.version.lock() {
            version.1 = Some(std::time::Instant::now());
        }
        if known.is_some() {
            let proxy = self.clone();
            tokio::spawn(async move { proxy.ask_version().await });
            return known;
        }
        self.ask_version().await
    }

    async fn ask_version(&self) -> Option<Arc<str>> {
        let reply = self.ask(Protocol::Resp2, &[b"INFO", b"server"]).await;
        let text = crate::protocol::frame::bulk_payload(&reply)?;
        let version: Arc<str> = std::str::from_utf8(text)
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))?
            .trim()
            .into();
        if let Ok(mut cached) = self.version.lock() {
            cached.0 = Some(version.clone());
        }
        Some(version)
    }

    /// The upstream's CONFIG GET of `patterns`, as (name, value) pairs, or
    /// its reply when it is not that (an error).
    pub async fn config_get(&self, patterns: &[Bytes]) -> Result<Vec<(String, String)>, Bytes> {
        let mut argv: Vec<&[u8]> = vec![b"CONFIG", b"GET"];
        argv.extend(patterns.iter().map(|p| &p[..]));
        let reply = self.ask(Protocol::Resp2, &argv).await;
        let view = FrameView::new(&reply);
        let Some(elements) = view.elements() else {
            return Err(reply);
        };
        let text = |e: &Element| match e {
            Element::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Element::Int(n) => n.to_string(),
            Element::Null => String::new(),
        };
        Ok(elements
            .chunks_exact(2)
            .map(|pair| (text(&pair[0]), text(&pair[1])))
            .collect())
    }

    /// The upstream's INFO keyspace lines (`dbN:keys=..`; every master's,
    /// summed, on a cluster), or None when it does not answer.
    pub async fn keyspace(&self) -> Option<Vec<String>> {
        let every = cluster::Route::EveryNode(cluster::Merge::Keyspace);
        let reply = self
            .ask_routed(Protocol::Resp2, &[b"INFO", b"keyspace"], every)
            .await;
        let text = crate::protocol::frame::bulk_payload(&reply)?;
        Some(cluster::keyspace_sum(std::iter::once(
            String::from_utf8_lossy(text),
        )))
    }
}

/// The proxy's view of a server the URL names: address, TLS, credentials,
/// database.
fn endpoint_of(info: &ConnectionInfo, tls_ca: Option<&[u8]>) -> Result<Endpoint, String> {
    let (addr, tls) = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => (format!("{host}:{port}"), None),
        redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            let connector = if *insecure {
                endpoint::insecure_tls_connector()?
            } else {
                endpoint::tls_connector(tls_ca)?
            };
            (format!("{host}:{port}"), Some(connector))
        }
        _ => return Err("passthrough needs a TCP upstream".into()),
    };
    let settings = info.redis_settings();
    Ok(Endpoint {
        addr,
        username: settings.username().map(str::to_string),
        password: settings.password().map(str::to_string),
        db: settings.db(),
        tls,
    })
}

/// A client's stateless commands waiting to be sent together.
#[derive(Default)]
pub struct Batch {
    pub commands: BytesMut,
    pub count: usize,
    /// Where each command ends in `commands`, and where it goes (cluster
    /// only).
    pub ends: Vec<(usize, cluster::Route)>,
}

impl Batch {
    /// Adds a command, encoded as it is; on a cluster with its route (and
    /// SCAN's cursor made its master's).
    fn push(&mut self, cluster: bool, argv: &[Bytes]) {
        if cluster {
            let route = cluster::prepare(argv, &mut self.commands);
            self.ends.push((self.commands.len(), route));
        } else {
            encode_command(&mut self.commands, argv);
        }
        self.count += 1;
    }

    fn clear(&mut self) {
        self.commands.clear();
        self.count = 0;
        self.ends.clear();
    }
}

/// A client's side of the passthrough: its pending batch and its pinned
/// connection, if it holds one.
#[derive(Default)]
pub struct Link {
    batch: Batch,
    /// The client's socket, where pooled connections write replies.
    sink: Option<Arc<ReplySink>>,
    pinned: Option<Box<Pinned>>,
    /// The client said MULTI and was told OK; the MULTI is sent with the
    /// next forwarded command (on a cluster, to the node of its key), so a
    /// transaction of commands the sidecar answers costs the upstream
    /// nothing.
    deferred_multi: bool,
    /// A command of the deferred transaction could not be sent: its EXEC
    /// is refused, as Redis refuses a transaction with a queuing error.
    deferred_failed: bool,
    /// The pinned connection was lost with state on it: the client must be
    /// disconnected, as if its server had gone.
    lost_state: bool,
    /// The last command name found to go to the pool as it is, byte for
    /// byte: a pipeline of one command is looked up once.
    plain_name: PlainName,
    /// In front of a cluster, a tracking client's connections to the
    /// masters other than its pinned one's ([`tracking`]).
    trackers: Option<Box<Trackers>>,
}

/// What [`Link::readable`] read, and from which connection: the pinned
/// one, or a tracker.
pub struct PinnedRead {
    tracker: Option<usize>,
    read: io::Result<usize>,
}

/// A command name of up to 16 bytes.
#[derive(Default)]
struct PlainName {
    bytes: [u8; 16],
    len: usize,
}

impl PlainName {
    fn is(&self, name: &[u8]) -> bool {
        self.len == name.len() && self.bytes[..self.len] == *name
    }

    fn set(&mut self, name: &[u8]) {
        if name.len() <= self.bytes.len() {
            self.bytes[..name.len()].copy_from_slice(name);
            self.len = name.len();
        }
    }
}

impl Link {
    /// Whether the client holds subscriptions on the upstream.
    pub fn subscribed(&self) -> bool {
        self.pinned.as_ref().is_some_and(|p| p.subscribed())
    }

    /// Whether the client holds subscriptions on the upstream or waits
    /// on its pinned connection (a blocking command): not idle. (Pooled
    /// replies are written without waking the client's task, so they do
    /// not count: the idle time runs from the client's last command.)
    pub fn busy(&self) -> bool {
        self.subscribed() || self.pinned.as_ref().is_some_and(|p| p.owes_replies())
    }

    /// Channels, patterns and shard channels the client is subscribed to
    /// on the upstream.
    pub fn subscription_counts(&self) -> (usize, usize, usize) {
        self.pinned
            .as_ref()
            .map_or((0, 0, 0), |p| p.subscription_counts())
    }

    /// The upstream's id for the client's own connection, if it holds one.
    pub fn upstream_id(&self) -> Option<i64> {
        self.pinned.as_ref().and_then(|p| p.upstream_id())
    }

    /// Whether the client holds a connection of its own upstream.
    pub fn is_pinned(&self) -> bool {
        self.pinned.is_some()
    }

    fn resp2_subscribed(&self) -> bool {
        self.pinned
            .as_ref()
            .is_some_and(|p| p.protocol() == Protocol::Resp2 && p.subscribed())
    }

    /// Whether the client must be disconnected: its upstream connection
    /// was lost with a transaction, subscriptions or tracking on it.
    pub fn lost_state(&self) -> bool {
        self.lost_state
    }

    /// Lets pooled connections write replies to the client's socket.
    pub fn attach(&mut self, sink: Arc<ReplySink>) {
        self.sink = Some(sink);
    }

    /// Forwards one command: queued in the client's batch when stateless,
    /// sent on its pinned connection (pinning one if the command starts
    /// state) otherwise.
    pub async fn forward(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        argv: &[Bytes],
        output: &mut BytesMut,
    ) -> io::Result<()> {
        proxy.stats.forwarded.inc();
        let command = Command::of(&argv[0]);
        if self.pinned.is_none() && !self.deferred_multi && !command.pins(argv) {
            self.batch.push(proxy.is_cluster(), argv);
            if self.batch.commands.len() >= BATCH_BOUND {
                self.send_batch(proxy, protocol, lane, output).await?;
            }
            return Ok(());
        }
        // On a cluster, a client with a connection of its own (RESP3
        // subscriptions, tracking, WATCH) still gets the whole keyspace's
        // answer, after the replies it is owed.
        let pinned_outside_transaction = self
            .pinned
            .as_ref()
            .is_some_and(|p| !p.captures_commands() && !self.resp2_subscribed());
        if proxy.is_cluster() && pinned_outside_transaction && cluster::about_the_keyspace(argv) {
            self.settle(proxy, protocol, lane, output).await?;
            self.batch.push(true, argv);
            return self.send_batch(proxy, protocol, lane, output).await;
        }
        // A tracking client's key on another master: on its tracker there.
        if pinned_outside_transaction
            && !self.deferred_multi
            && let Some(endpoint) = self.tracker_for(proxy, command, argv).await
        {
            return self
                .forward_to_tracker(proxy, protocol, lane, endpoint, argv, output)
                .await;
        }
        // The replies to what was batched before come first.
        self.settle_pool(proxy, protocol, lane, output).await?;
        if self.pinned.is_none() {
            match proxy.pin(protocol, argv).await {
                Ok(pinned) => self.pinned = Some(Box::new(pinned)),
                Err(reason) => {
                    tracing::warn!(%reason, "cannot pin an upstream connection");
                    proxy.stats.unavailable.inc();
                    self.deferred_failed |= self.deferred_multi;
                    output.extend_from_slice(UNAVAILABLE);
                    return Ok(());
                }
            }
        }
        if let Some(pinned) = self.pinned.as_mut() {
            if std::mem::take(&mut self.deferred_multi) {
                pinned.send_swallowed_multi();
            }
            pinned.send(argv);
        }
        if proxy.is_cluster() && self.pinned.is_some() {
            self.track_on_every_master(proxy, protocol, argv).await;
        }
        Ok(())
    }

    /// The master `argv` goes to when that is not the pinned connection's
    /// and the client tracks keys there through a tracker.
    async fn tracker_for(
        &self,
        proxy: &Proxy,
        command: Command,
        argv: &[Bytes],
    ) -> Option<Endpoint> {
        let pinned = self.pinned.as_ref()?;
        self.trackers.as_ref()?;
        if command != Command::Other || !matches!(cluster::route(argv), cluster::Route::Slot(_)) {
            return None;
        }
        let Target::Cluster(router) = &proxy.target else {
            return None;
        };
        let endpoint = router.endpoint_for(argv).await?;
        (endpoint.addr != pinned.node).then_some(endpoint)
    }

    /// Sends `argv` on the client's tracker on `endpoint` (opened if need
    /// be) once every reply owed before it is relayed, and relays its reply.
    async fn forward_to_tracker(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        endpoint: Endpoint,
        argv: &[Bytes],
        output: &mut BytesMut,
    ) -> io::Result<()> {
        self.settle(proxy, protocol, lane, output).await?;
        let Some(trackers) = self.trackers.as_mut() else {
            output.extend_from_slice(UNAVAILABLE);
            return Ok(());
        };
        let index = match trackers.index_of(&endpoint.addr) {
            Some(index) => index,
            None => match proxy.pin_at(protocol, endpoint).await {
                Ok(tracker) => trackers.add(tracker),
                Err(reason) => {
                    tracing::warn!(%reason, "cannot open a tracking connection");
                    proxy.stats.unavailable.inc();
                    output.extend_from_slice(UNAVAILABLE);
                    return Ok(());
                }
            },
        };
        trackers.send(index, argv);
        if trackers.all()[index].flush().await.is_err() {
            trackers.lose(index, output);
            self.lost_state = true;
            return Ok(());
        }
        while let Some(tracker) = trackers.all().get_mut(index)
            && tracker.owes_replies()
        {
            let read = tracker.read().await;
            if !trackers.relay(index, read, output) {
                self.lost_state = true;
                break;
            }
        }
        Ok(())
    }

    /// In front of a cluster, after `argv` went to the pinned connection:
    /// CLIENT TRACKING ON opens a tracker on every other master with the
    /// same command, and any CLIENT TRACKING goes to the trackers there
    /// are; a CLIENT CACHING is kept for the next command.
    async fn track_on_every_master(&mut self, proxy: &Proxy, protocol: Protocol, argv: &[Bytes]) {
        if !Trackers::is_tracking_command(argv) {
            if let Some(trackers) = self.trackers.as_mut() {
                trackers.note(argv);
            }
            return;
        }
        if let Some(trackers) = self.trackers.as_mut() {
            trackers.send_to_all(argv);
        } else if Trackers::turns_on(argv)
            && let Some(mut trackers) = Trackers::for_command(argv)
            && let Target::Cluster(router) = &proxy.target
        {
            let pinned_node = self.pinned.as_ref().map(|p| p.node.clone());
            for endpoint in router.endpoints().await {
                if Some(&endpoint.addr) == pinned_node.as_ref() {
                    continue;
                }
                match proxy.pin_at(protocol, endpoint).await {
                    Ok(tracker) => {
                        trackers.add(tracker);
                    }
                    // Opened when a command needs it.
                    Err(reason) => tracing::warn!(%reason, "cannot open a tracking connection"),
                }
            }
            self.trackers = Some(Box::new(trackers));
        }
        // A tracker lost here takes the client's tracking with it, as one
        // lost while relaying does. It owes no reply to relay: the client's
        // own commands on a tracker are answered before the next is read.
        let Some(trackers) = self.trackers.as_mut() else {
            return;
        };
        let mut lost = Vec::new();
        for (i, tracker) in trackers.all().iter_mut().enumerate() {
            if tracker.flush().await.is_err() {
                lost.push(i);
            }
        }
        for i in lost.into_iter().rev() {
            trackers.lose(i, &mut BytesMut::new());
            self.lost_state = true;
        }
    }

    /// Forwards one command and waits for its reply, which lands in
    /// `output` rather than on the client's socket: for CLIENT REPLY OFF and
    /// SKIP, whose caller then drops it. Call [`Link::settle`] first.
    pub async fn forward_settled(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        argv: &[Bytes],
        output: &mut BytesMut,
    ) -> io::Result<()> {
        let sink = self.sink.take();
        let mut forwarded = self.forward(proxy, protocol, lane, argv, output).await;
        if forwarded.is_ok() {
            forwarded = self.settle(proxy, protocol, lane, output).await;
        }
        self.sink = sink;
        forwarded
    }

    /// The fast path for a pipeline of stateless commands: moves every
    /// complete request at the front of `input` that goes to the pool as it
    /// is (no command the sidecar answers or that pins) into the batch, byte
    /// for byte, without parsing it into arguments. Stops at anything else,
    /// which the caller parses as usual, in order.
    pub async fn forward_unparsed(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        input: &mut BytesMut,
        limits: Limits,
        output: &mut BytesMut,
    ) -> io::Result<()> {
        if proxy.is_cluster() || self.pinned.is_some() || self.deferred_multi {
            return Ok(());
        }
        while let Some((end, name)) = complete_request(input, limits) {
            let name = &input[name];
            if !self.plain_name.is(name) {
                if table::lookup(name).is_some()
                    || Command::of(name) != Command::Other
                    || refuses(name)
                {
                    break;
                }
                self.plain_name.set(name);
            }
            proxy.stats.forwarded.inc();
            self.batch.commands.extend_from_slice(&input[..end]);
            self.batch.count += 1;
            input.advance(end);
            if self.batch.commands.len() >= BATCH_BOUND {
                self.send_batch(proxy, protocol, lane, output).await?;
            }
        }
        Ok(())
    }

    /// Sends the batch. The client's own output is written first, so that
    /// the replies a pooled connection writes come after it.
    async fn send_batch(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        output: &mut BytesMut,
    ) -> io::Result<()> {
        if self.batch.count == 0 {
            return Ok(());
        }
        let sink = match &proxy.target {
            Target::Server { .. } => self.sink.as_ref(),
            Target::Cluster(_) => None,
        };
        if let Some(sink) = sink
            && !output.is_empty()
        {
            sink.write(output).await?;
            output.clear();
        }
        proxy
            .call(protocol, lane, &mut self.batch, sink, output)
            .await;
        // Bound what one client has in flight: a client that pipelines
        // without reading its replies is made to wait, as Redis stops
        // reading from a client whose output buffer is full.
        if let Some(sink) = sink {
            let (owed, backlogged) = sink.pressure();
            if owed >= MAX_OWED || backlogged {
                sink.settle().await?;
            }
        }
        Ok(())
    }

    /// Sends the batch and waits until its replies are written.
    async fn settle_pool(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        output: &mut BytesMut,
    ) -> io::Result<()> {
        self.send_batch(proxy, protocol, lane, output).await?;
        match &self.sink {
            Some(sink) => sink.settle().await,
            None => Ok(()),
        }
    }

    /// Sends everything forwarded so far (the pinned connection's replies
    /// come when they come).
    pub async fn flush(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        output: &mut BytesMut,
    ) -> io::Result<()> {
        self.send_batch(proxy, protocol, lane, output).await?;
        if let Some(pinned) = self.pinned.as_mut() {
            // The client may have switched protocols with HELLO meanwhile.
            pinned.switch_protocol(protocol);
            if pinned.flush().await.is_err() {
                self.lose_pinned(output);
            }
        }
        Ok(())
    }

    /// Sends everything forwarded so far and waits for every reply owed,
    /// before a command the sidecar answers itself.
    pub async fn settle(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        output: &mut BytesMut,
    ) -> io::Result<()> {
        self.settle_pool(proxy, protocol, lane, output).await?;
        self.flush(proxy, protocol, lane, output).await?;
        while self.pinned.as_ref().is_some_and(|p| p.owes_replies()) {
            self.read_pinned(output).await;
        }
        Ok(())
    }

    /// Resolves when the pinned connection has something to relay (never,
    /// without one); [`Link::relay`] then relays it.
    pub async fn readable(&mut self) -> PinnedRead {
        let Some(pinned) = self.pinned.as_mut() else {
            return std::future::pending().await;
        };
        let trackers = match self.trackers.as_mut() {
            Some(trackers) if !trackers.is_empty() => trackers.all(),
            _ => {
                let read = pinned.read().await;
                return PinnedRead {
                    tracker: None,
                    read,
                };
            }
        };
        type Read<'a> = std::pin::Pin<Box<dyn Future<Output = PinnedRead> + Send + 'a>>;
        let mut reads: Vec<Read> = Vec::with_capacity(1 + trackers.len());
        reads.push(Box::pin(async {
            let read = pinned.read().await;
            PinnedRead {
                tracker: None,
                read,
            }
        }));
        for (i, tracker) in trackers.iter_mut().enumerate() {
            reads.push(Box::pin(async move {
                let read = tracker.read().await;
                PinnedRead {
                    tracker: Some(i),
                    read,
                }
            }));
        }
        futures_util::future::select_all(reads).await.0
    }

    /// Relays what the pinned connection (or a tracker) received, after
    /// [`Link::readable`].
    pub fn relay(&mut self, read: PinnedRead, output: &mut BytesMut) {
        let PinnedRead { tracker, read } = read;
        if let Some(index) = tracker {
            if let Some(trackers) = self.trackers.as_mut()
                && !trackers.relay(index, read, output)
            {
                self.lost_state = true;
            }
            self.release_trackers();
            return;
        }
        let Some(pinned) = self.pinned.as_mut() else {
            return;
        };
        let relayed = match read {
            Ok(n) if n > 0 => pinned.relay(output),
            _ => Err("closed"),
        };
        if let Err(reason) = relayed {
            tracing::debug!(reason, node = %pinned.node, "pinned upstream connection lost");
            self.lose_pinned(output);
            return;
        }
        if !pinned.in_use()
            && let Some(pinned) = self.pinned.take()
        {
            // The state is over: give the connection back.
            pinned.release();
        }
        self.release_trackers();
    }

    /// Gives the trackers back once the client's tracking is over.
    fn release_trackers(&mut self) {
        let tracking = self.pinned.as_ref().is_some_and(|p| p.tracking());
        if !tracking
            && let Some(trackers) = self.trackers.as_mut()
            && trackers.release_if_done()
        {
            self.trackers = None;
        }
    }

    async fn read_pinned(&mut self, output: &mut BytesMut) {
        let read = self.readable().await;
        self.relay(read, output);
    }

    fn lose_pinned(&mut self, output: &mut BytesMut) {
        if let Some(mut pinned) = self.pinned.take() {
            pinned.fail_owed(output);
            self.lost_state |= pinned.holds_state();
        }
        self.trackers = None;
    }

    /// MULTI: the upstream's transaction starts with the first command
    /// forwarded inside it.
    pub fn begin_transaction(&mut self) {
        self.deferred_multi = true;
        self.deferred_failed = false;
    }

    /// EXEC, upstream side: sends EXEC for the commands queued there (or,
    /// with none but keys watched, an empty MULTI/EXEC that checks them) and
    /// returns its reply rather than relaying it. None when the upstream has
    /// no part in the transaction. Replies owed before it are relayed to
    /// `output` first; what came right after it (the invalidations the
    /// transaction caused, which Redis sends after EXEC's reply) is put in
    /// `after`, for the caller to write after the EXEC reply it makes.
    pub async fn exec_upstream(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        output: &mut BytesMut,
        after: &mut BytesMut,
    ) -> io::Result<Option<Bytes>> {
        let never_sent = std::mem::take(&mut self.deferred_multi);
        if std::mem::take(&mut self.deferred_failed) {
            self.discard_upstream(proxy, protocol, lane, output).await?;
            return Ok(Some(Bytes::from_static(EXECABORT)));
        }
        let Some(pinned) = self.pinned.as_mut() else {
            return Ok(None);
        };
        if never_sent {
            if !pinned.watching() {
                return Ok(None);
            }
            pinned.send_swallowed_multi();
        }
        pinned.send_captured(&[Bytes::from_static(b"EXEC")]);
        self.flush(proxy, protocol, lane, output).await?;
        loop {
            match self.pinned.as_mut() {
                None => return Ok(Some(Bytes::from_static(LOST))),
                Some(pinned) => {
                    if let Some(reply) = pinned.take_captured() {
                        if pinned.relay(after).is_err() {
                            self.lose_pinned(after);
                            return Ok(Some(reply));
                        }
                        if !pinned.in_use()
                            && let Some(pinned) = self.pinned.take()
                        {
                            pinned.release();
                        }
                        return Ok(Some(reply));
                    }
                }
            }
            self.read_pinned(output).await;
        }
    }

    /// DISCARD, or an aborted EXEC, upstream side: ends the upstream's
    /// transaction and its watches, if it has any; the reply is not relayed.
    pub async fn discard_upstream(
        &mut self,
        proxy: &Proxy,
        protocol: Protocol,
        lane: usize,
        output: &mut BytesMut,
    ) -> io::Result<()> {
        self.deferred_multi = false;
        self.deferred_failed = false;
        if let Some(pinned) = self.pinned.as_mut() {
            pinned.end_transaction_swallowed();
        }
        self.flush(proxy, protocol, lane, output).await
    }

    /// Drops the pinned connection and its state (RESET).
    pub fn reset(&mut self) {
        self.pinned = None;
        self.trackers = None;
        self.deferred_multi = false;
        self.deferred_failed = false;
    }
}

/// The forwarded commands the proxy must tell apart.
/// CLUSTER subcommands the sidecar answers itself (see `commands::cluster`,
/// above this layer: the list is written here, where forwarding is decided).
pub fn cluster_answers_here(sub: &[u8]) -> bool {
    [
        &b"slots"[..],
        b"shards",
        b"nodes",
        b"myid",
        b"info",
        b"keyslot",
    ]
    .iter()
    .any(|name| sub.eq_ignore_ascii_case(name))
}

/// The commands a proxy cannot serve: a replication stream (SYNC, PSYNC)
/// and its handshake (REPLCONF) are a connection's whole state, which
/// neither a pooled nor a pinned connection can carry. They are refused
/// with [`REFUSED_REPLICATION`] instead of forwarded.
pub fn refuses(name: &[u8]) -> bool {
    [&b"sync"[..], b"psync", b"replconf"]
        .iter()
        .any(|refused| name.eq_ignore_ascii_case(refused))
}

/// The error a client gets for a command [`refuses`] names.
pub const REFUSED_REPLICATION: &str = "ERR replication (SYNC, PSYNC, REPLCONF) is not served through session-sidecar: replicate from the upstream directly";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Select,
    Client,
    Monitor,
    Subscribe,
    Psubscribe,
    Ssubscribe,
    Unsubscribe,
    Punsubscribe,
    Sunsubscribe,
    /// Blocks until data arrives or a timeout passes.
    Blocking,
    /// XREAD and XREADGROUP: blocking with a BLOCK argument.
    StreamRead,
    /// SCRIPT, FUNCTION and SHUTDOWN: SCRIPT KILL, FUNCTION KILL and
    /// SHUTDOWN must reach an upstream busy with a script, which a pooled
    /// connection queued behind that script cannot do.
    Overtaking,
    Other,
}

impl Command {
    pub fn of(name: &[u8]) -> Command {
        let mut lower = [0u8; 16];
        if name.len() > lower.len() {
            return Command::Other;
        }
        for (to, from) in lower.iter_mut().zip(name) {
            *to = from.to_ascii_lowercase();
        }
        match &lower[..name.len()] {
            b"multi" => Command::Multi,
            b"exec" => Command::Exec,
            b"discard" => Command::Discard,
            b"watch" => Command::Watch,
            b"unwatch" => Command::Unwatch,
            b"select" => Command::Select,
            b"client" => Command::Client,
            b"monitor" => Command::Monitor,
            b"subscribe" => Command::Subscribe,
            b"psubscribe" => Command::Psubscribe,
            b"ssubscribe" => Command::Ssubscribe,
            b"unsubscribe" => Command::Unsubscribe,
            b"punsubscribe" => Command::Punsubscribe,
            b"sunsubscribe" => Command::Sunsubscribe,
            b"blpop" | b"brpop" | b"brpoplpush" | b"blmove" | b"blmpop" | b"bzpopmin"
            | b"bzpopmax" | b"bzmpop" | b"wait" | b"waitaof" => Command::Blocking,
            b"xread" | b"xreadgroup" => Command::StreamRead,
            b"script" | b"function" | b"shutdown" => Command::Overtaking,
            _ => Command::Other,
        }
    }

    /// Whether the command needs a connection of the client's own.
    fn pins(self, argv: &[Bytes]) -> bool {
        match self {
            Command::Other | Command::Exec | Command::Discard | Command::Unwatch => false,
            Command::StreamRead => argv.iter().any(|a| a.eq_ignore_ascii_case(b"block")),
            // On a connection of the client's own, given back once answered.
            Command::Overtaking => {
                argv[0].eq_ignore_ascii_case(b"shutdown")
                    || argv
                        .get(1)
                        .is_some_and(|sub| sub.eq_ignore_ascii_case(b"kill"))
            }
            _ => true,
        }
    }
}
