//! The one place the sidecar talks to the upstream Redis: a supervised RESP3
//! connection (redis-rs's multiplexed connection: concurrent requests are
//! pipelined on it), its state, and its counters.
//!
//! The supervisor connects with a timeout, sets the connection up (client-side
//! caching in broadcast mode on the session prefix, the events channel), and
//! hands every push (invalidations, events, the library's own disconnection
//! notice) to the [`PushHandler`]. When the connection drops it is marked down
//! at once, so that calls fail fast instead of queueing, and it reconnects with
//! jittered exponential backoff.

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

use crate::metrics::Counter;

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
    pub errors: Counter,
    pub unavailable: Counter,
    pub reconnects: Counter,
    pub invalidations: Counter,
    /// Latency of the last command, in microseconds.
    pub last_latency_us: AtomicU64,
}

pub struct Upstream {
    target: Target,
    /// The server the connection goes to (on a cluster: the master of the
    /// sidecar's hash slot, found at every connect).
    address: RwLock<String>,
    connection: RwLock<Option<MultiplexedConnection>>,
    state: AtomicU8,
    generation: tokio::sync::watch::Sender<u64>,
    /// Signalled when the connection cannot be trusted any more: a reply says
    /// the slot moved (reconnect to its new master), or a command timed out
    /// (the link may be dead without the socket knowing).
    reconnect_requested: tokio::sync::Notify,
    timeouts: Timeouts,
    /// The CA to verify a TLS upstream with (the system's when None).
    tls_ca: Option<Vec<u8>>,
    pub stats: UpstreamStats,
}

/// Where to connect.
enum Target {
    /// A single server (or a proxy in front of one).
    Server(Client),
    /// A Redis Cluster: every key the sidecar uses carries one hash tag, so
    /// the sidecar talks to the master that serves that tag's slot, found
    /// through the seeds.
    Cluster {
        seeds: Vec<ConnectionInfo>,
        tag: String,
        tls: Option<Vec<u8>>,
    },
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
    /// a cluster, whose master for `tag`'s slot is found at every connect. For
    /// TLS, `ca_pem` is the certificate authority to verify the upstream with,
    /// instead of the system's. Connecting is the supervisor's job.
    pub fn new(
        url: &str,
        tag: &str,
        ca_pem: Option<Vec<u8>>,
        timeouts: Timeouts,
    ) -> Result<Upstream, String> {
        let tls_ca = ca_pem.clone();
        let (target, address) = match cluster_seeds(url)? {
            Some(seeds) => {
                let address = seeds
                    .iter()
                    .map(|s| s.addr().to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                (
                    Target::Cluster {
                        seeds,
                        tag: tag.to_string(),
                        tls: ca_pem,
                    },
                    address,
                )
            }
            None => {
                let info =
                    redis::IntoConnectionInfo::into_connection_info(url).map_err(invalid_url)?;
                let address = info.addr().to_string();
                (Target::Server(client_for(info, ca_pem)?), address)
            }
        };
        Ok(Upstream {
            target,
            address: RwLock::new(address),
            connection: RwLock::new(None),
            state: AtomicU8::new(State::Connecting as u8),
            generation: tokio::sync::watch::Sender::new(0),
            reconnect_requested: tokio::sync::Notify::new(),
            timeouts,
            tls_ca,
            stats: UpstreamStats::default(),
        })
    }

    /// The servers the URL names, with its credentials and database: the
    /// one server, or a cluster's seeds (then `true`); and the CA that
    /// verifies them over TLS. The proxy dials them.
    pub fn servers(&self) -> (Vec<ConnectionInfo>, bool, Option<Vec<u8>>) {
        let (servers, cluster) = match &self.target {
            Target::Server(client) => (vec![client.get_connection_info().clone()], false),
            Target::Cluster { seeds, .. } => (seeds.clone(), true),
        };
        (servers, cluster, self.tls_ca.clone())
    }

    pub fn address(&self) -> String {
        self.address
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How long a command may wait for its reply.
    pub fn command_timeout(&self) -> Duration {
        self.timeouts.command
    }

    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Up,
            2 => State::Down,
            _ => State::Connecting,
        }
    }

    fn set_connection(&self, connection: Option<MultiplexedConnection>, state: State) {
        let connected = connection.is_some();
        *self.connection.write().unwrap_or_else(|p| p.into_inner()) = connection;
        self.state.store(state as u8, Ordering::Relaxed);
        if connected {
            self.generation.send_modify(|generation| *generation += 1);
        }
    }

    /// Follows the connection's generation: it changes at every (re)connect,
    /// after which per-connection state (subscriptions) must be set up again.
    pub fn watch_generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Subscribes the connection to a channel (pushes go to the handler).
    pub async fn subscribe(&self, channel: &[u8]) -> Result<(), CallError> {
        self.call(async |c| c.subscribe(channel).await).await
    }

    pub async fn unsubscribe(&self, channel: &[u8]) -> Result<(), CallError> {
        self.call(async |c| c.unsubscribe(channel).await).await
    }

    /// The live connection, or `Unavailable` at once when there is none.
    fn connection(&self) -> Result<MultiplexedConnection, CallError> {
        let connection = self
            .connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        connection.ok_or_else(|| {
            self.stats.unavailable.inc();
            CallError::Unavailable
        })
    }

    /// Runs a command (or a script invocation) on the upstream.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        run: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, CallError> {
        let mut connection = self.connection()?;
        let started = Instant::now();
        self.stats.commands.inc();
        let result = run(&mut connection).await;
        self.stats
            .last_latency_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        result.map_err(|error| self.classify(error))
    }

    fn classify(&self, error: RedisError) -> CallError {
        if matches!(
            error.code(),
            Some("MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN")
        ) {
            // The slot is elsewhere now (resharding, failover): reconnect to
            // its new master; meanwhile, fail fast.
            self.stats.unavailable.inc();
            self.reconnect_requested.notify_one();
            return CallError::Unavailable;
        }
        if error.is_timeout() {
            // Sent, but no answer in time: it may have been applied, so the
            // client must not be told to retry it blindly. The link itself
            // is suspect: reconnect (which flushes the cache).
            self.stats.unavailable.inc();
            self.reconnect_requested.notify_one();
            tracing::debug!(%error, "upstream command timed out");
            return CallError::Unknown;
        }
        if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
            // The connection broke under the call: it may have been sent and
            // applied before the break (the client cannot tell which), so a
            // blind retry could apply it twice. Once the supervisor has seen
            // the break, calls fail fast with Unavailable before being sent.
            self.stats.unavailable.inc();
            self.reconnect_requested.notify_one();
            tracing::debug!(%error, "upstream connection broke during a call");
            return CallError::Unknown;
        }
        self.stats.errors.inc();
        let message = match (error.code(), error.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            (Some(code), None) => code.to_string(),
            _ => format!("ERR upstream: {error}"),
        };
        CallError::Reply(message)
    }

    /// Keeps the connection up until `shutdown`: connect, set up, serve pushes,
    /// and reconnect with jittered exponential backoff when it drops.
    pub async fn supervise(
        self: Arc<Self>,
        setup: Vec<redis::Cmd>,
        handler: Arc<dyn PushHandler>,
        shutdown: CancellationToken,
    ) {
        let mut attempt: u32 = 0;
        loop {
            let (tx, mut rx) = mpsc::unbounded_channel::<PushInfo>();
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.timeouts.connect))
                .set_response_timeout(Some(self.timeouts.command))
                .set_push_sender(tx);
            let connected = tokio::select! {
                connected = self.connect(&config, &setup) => connected,
                _ = shutdown.cancelled() => return,
            };
            match connected {
                Ok(connection) => {
                    if attempt > 0 || self.state() == State::Down {
                        self.stats.reconnects.inc();
                    }
                    attempt = 0;
                    self.set_connection(Some(connection), State::Up);
                    handler.connected();
                    tracing::info!(upstream = %self.address(), "upstream connected");
                    let dropped = tokio::select! {
                        _ = Self::serve_pushes(&mut rx, handler.as_ref(), &self.stats) => true,
                        _ = self.reconnect_requested.notified() => true,
                        _ = shutdown.cancelled() => false,
                    };
                    self.set_connection(None, State::Down);
                    handler.disconnected();
                    if !dropped {
                        return;
                    }
                    tracing::warn!(upstream = %self.address(), "upstream connection lost; reconnecting");
                }
                Err(error) => {
                    if self.state() != State::Down {
                        tracing::warn!(upstream = %self.address(), %error, "cannot reach the upstream; retrying");
                    }
                    self.set_connection(None, State::Down);
                    handler.disconnected();
                }
            }
            let delay = self.backoff(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn connect(
        &self,
        config: &AsyncConnectionConfig,
        setup: &[redis::Cmd],
    ) -> redis::RedisResult<MultiplexedConnection> {
        let span = tracing::debug_span!("upstream_connect");
        let _entered = span.enter();
        let client = match &self.target {
            Target::Server(client) => client.clone(),
            Target::Cluster { seeds, tag, tls } => {
                let master = find_master(seeds, tag, tls).await?;
                *self.address.write().unwrap_or_else(|p| p.into_inner()) =
                    master.addr().to_string();
                client_for(master, tls.clone()).map_err(|message| {
                    RedisError::from((redis::ErrorKind::Client, "invalid cluster address", message))
                })?
            }
        };
        let mut connection = client
            .get_multiplexed_async_connection_with_config(config)
            .await?;
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

fn invalid_url(error: RedisError) -> String {
    format!("invalid --upstream: {error}")
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

/// Asks the seeds, in turn, which master serves `tag`'s hash slot.
async fn find_master(
    seeds: &[ConnectionInfo],
    tag: &str,
    tls: &Option<Vec<u8>>,
) -> redis::RedisResult<ConnectionInfo> {
    let mut last_error = RedisError::from((redis::ErrorKind::Client, "no cluster seed answered"));
    for seed in seeds {
        match ask_seed(seed, tag, tls).await {
            Ok(master) => return Ok(master),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

async fn ask_seed(
    seed: &ConnectionInfo,
    tag: &str,
    tls: &Option<Vec<u8>>,
) -> redis::RedisResult<ConnectionInfo> {
    let client = client_for(seed.clone(), tls.clone()).map_err(|message| {
        RedisError::from((redis::ErrorKind::Client, "invalid cluster seed", message))
    })?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(tag)
        .query_async(&mut connection)
        .await?;
    let ranges: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut connection)
        .await?;
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        if !(*start..=*end).contains(&slot) {
            continue;
        }
        let host = match master.first() {
            Some(Value::BulkString(host)) if !host.is_empty() => {
                String::from_utf8_lossy(host).into_owned()
            }
            // An empty host means "the one you asked".
            _ => match seed.addr() {
                redis::ConnectionAddr::Tcp(host, _)
                | redis::ConnectionAddr::TcpTls { host, .. } => host.clone(),
                _ => continue,
            },
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        return Ok(at_address(seed, host, *port as u16));
    }
    Err(RedisError::from((
        redis::ErrorKind::Client,
        "no master serves the sidecar's hash slot",
    )))
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
