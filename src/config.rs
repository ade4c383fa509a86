//! Configuration: command-line flags, `SESSION_SIDECAR_<FLAG>` environment
//! variables and an optional file, in that order of precedence.
//!
//! The file uses redis.conf's shape: one `name value` per line, names as the
//! long flags without dashes, `#` comments. Its values become the flags'
//! defaults, so the environment and the command line still win.
//!
//! Layer 1 of 15 (the order is in `tests/layers.rs`). Uses nothing of the
//! crate; every layer may read it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

/// Shards by default on a Redis Cluster: enough that 100 masters each hold
/// two or three, few enough that the background work over every shard stays
/// cheap.
pub const DEFAULT_CLUSTER_SHARDS: u32 = 256;

/// Shards by default on one server (or a Sentinel's master): one, where
/// concurrent creations share script calls and every change is one call. A
/// move to a cluster is a move to a new upstream, laid out anew.
pub const DEFAULT_SHARDS: u32 = 1;

/// Why the configuration could not be read.
#[derive(Debug)]
pub enum ConfigError {
    /// Flags or environment (including --help and --version, which clap prints).
    Invalid(clap::Error),
    /// The configuration file.
    File(String),
}

impl From<clap::Error> for ConfigError {
    fn from(error: clap::Error) -> Self {
        ConfigError::Invalid(error)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The longest TTL a session may have (ten years), in seconds.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// A Redis-protocol session store sidecar for WebSocket gateways.
#[derive(Parser, Debug, Clone)]
#[command(name = "session-sidecar", version, about, long_about = None)]
pub struct Config {
    /// RESP listener for applications, redis-cli and peers (port 0: any free port).
    #[arg(long, env = "SESSION_SIDECAR_LISTEN", default_value = "127.0.0.1:6380", value_parser = listen_addr)]
    pub listen: SocketAddr,

    /// Upstream Redis, the source of truth (write-through mode): redis://[user:pass@]host:port[/db].
    /// Without it the sidecar runs standalone, its memory the whole store.
    #[arg(long, env = "SESSION_SIDECAR_UPSTREAM", hide_env_values = true)]
    pub upstream: Option<String>,

    /// PEM file of the certificate authority that signed the upstream's TLS
    /// certificate (rediss://), instead of the system's trust store.
    #[arg(long, env = "SESSION_SIDECAR_UPSTREAM_TLS_CA")]
    pub upstream_tls_ca: Option<PathBuf>,

    /// Milliseconds to wait for the upstream connection to open.
    #[arg(
        long,
        env = "SESSION_SIDECAR_UPSTREAM_CONNECT_TIMEOUT_MS",
        default_value_t = 500
    )]
    pub upstream_connect_timeout_ms: u64,

    /// Milliseconds to wait for an upstream reply before failing the command.
    #[arg(
        long,
        env = "SESSION_SIDECAR_UPSTREAM_TIMEOUT_MS",
        default_value_t = 500
    )]
    pub upstream_timeout_ms: u64,

    /// Seconds upstream keys outlive their session's expiry (the upstream cleans
    /// itself even when every sidecar is gone).
    #[arg(long, env = "SESSION_SIDECAR_KEY_MARGIN", default_value_t = 300)]
    pub key_margin: u64,

    /// Approximate length cap of each shard's events stream, `<prefix>:e:{<tag>}` (XADD MAXLEN ~).
    #[arg(long, env = "SESSION_SIDECAR_EVENTS_MAXLEN", default_value_t = 100_000)]
    pub events_maxlen: u64,

    /// Milliseconds between batched writes of heartbeats answered from memory.
    #[arg(
        long,
        env = "SESSION_SIDECAR_HEARTBEAT_FLUSH_MS",
        default_value_t = 1000
    )]
    pub heartbeat_flush_ms: u64,

    /// Milliseconds between claims of due expiries from the upstream.
    #[arg(long, env = "SESSION_SIDECAR_SWEEP_INTERVAL_MS", default_value_t = 100)]
    pub sweep_interval_ms: u64,

    /// HTTP listener for /metrics, /healthz and /readyz (port 0: any free port).
    #[arg(
        long,
        env = "SESSION_SIDECAR_METRICS_LISTEN",
        default_value = "127.0.0.1:9380",
        value_parser = listen_addr
    )]
    pub metrics_listen: SocketAddr,

    /// A second client listener speaking TLS (the plain one stays), as
    /// Redis's tls-port; needs --tls-cert-file and --tls-key-file.
    #[arg(
        long,
        env = "SESSION_SIDECAR_TLS_LISTEN",
        requires_all = ["tls_cert_file", "tls_key_file"],
        value_parser = listen_addr
    )]
    pub tls_listen: Option<SocketAddr>,

    /// PEM certificate chain the TLS listener presents.
    #[arg(long, env = "SESSION_SIDECAR_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of that certificate.
    #[arg(long, env = "SESSION_SIDECAR_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,

    /// Key prefix in the upstream and prefix of the event channel `<prefix>:events`.
    #[arg(long, env = "SESSION_SIDECAR_PREFIX", default_value = "session")]
    pub prefix: String,

    /// Shards the sessions spread over in the upstream (a power of two up to
    /// 16384), each one hash slot, evenly spaced over a cluster's slots; by
    /// default 256 on a cluster, 1 otherwise. Recorded in the upstream at
    /// first use: every sidecar of a prefix must use the same.
    #[arg(long, env = "SESSION_SIDECAR_SHARDS")]
    pub shards: Option<u32>,

    /// TTL in seconds of sessions created without TTL or PTTL.
    #[arg(long, env = "SESSION_SIDECAR_DEFAULT_TTL", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECONDS))]
    pub default_ttl: u64,

    /// This sidecar's node id [default: the hostname].
    #[arg(long, env = "SESSION_SIDECAR_NODE_ID")]
    pub node_id: Option<String>,

    /// Where peers reach this sidecar (host:port) [default: the listen address].
    #[arg(long, env = "SESSION_SIDECAR_ADVERTISE")]
    pub advertise: Option<String>,

    /// Other sidecars (host:port, comma-separated) known without the upstream registry.
    #[arg(long, env = "SESSION_SIDECAR_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Milliseconds between this sidecar's reports to the upstream registry of
    /// live sidecars (an entry lives three intervals without a report).
    #[arg(long, env = "SESSION_SIDECAR_REGISTRY_INTERVAL_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..))]
    pub registry_interval_ms: u64,

    /// Milliseconds a pooled upstream connection may go without any reply
    /// while commands wait on it, before they get an error and it is
    /// replaced (0 = wait forever). Blocking commands are not pooled.
    #[arg(
        long,
        env = "SESSION_SIDECAR_PROXY_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub proxy_timeout_ms: u64,

    /// Secret peers must present (SESSION.PEERAUTH) before SESSION.IMPORT, and
    /// that SESSION.MIGRATE and SESSION.DRAIN send to their targets.
    #[arg(long, env = "SESSION_SIDECAR_PEER_SECRET", hide_env_values = true)]
    pub peer_secret: Option<String>,

    /// PEM CA that signed the peers' certificates: when given, peers
    /// (SESSION.MIGRATE and SESSION.DRAIN targets, --peers probes) are reached
    /// over TLS, at their --tls-listen addresses (which --advertise and
    /// --peers then name).
    #[arg(long, env = "SESSION_SIDECAR_PEER_TLS_CA")]
    pub peer_tls_ca: Option<PathBuf>,

    /// Seconds a sidecar without upstream answers -SESSIONMOVED for sessions it
    /// handed to another sidecar.
    #[arg(long, env = "SESSION_SIDECAR_MOVED_GRACE", default_value_t = 60)]
    pub moved_grace: u64,

    /// Milliseconds SESSION.MIGRATE waits for each reply of its target (a
    /// batch not acknowledged in time stays here).
    #[arg(long, env = "SESSION_SIDECAR_MIGRATE_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub migrate_timeout_ms: u64,

    /// Milliseconds the drain on SIGTERM (and SESSION.DRAIN without TIMEOUT)
    /// may take to hand the sessions to the live peers.
    #[arg(
        long,
        env = "SESSION_SIDECAR_DRAIN_TIMEOUT_MS",
        default_value_t = 20_000
    )]
    pub drain_timeout_ms: u64,

    /// Password clients must AUTH with (AUTH pass, AUTH default pass or HELLO ... AUTH).
    #[arg(long, env = "SESSION_SIDECAR_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<String>,

    /// Memory budget of the session map, in bytes or with a unit (100mb, 1gb); 0 = none.
    /// Past it, writes get -OOM as in Redis.
    #[arg(long, env = "SESSION_SIDECAR_MAXMEMORY", default_value = "0", value_parser = parse_memory)]
    pub maxmemory: u64,

    /// Keep each session's JSON form (SESSION.GET id JSON) from its first
    /// read until its next change: repeated JSON reads cost about a quarter
    /// less CPU, and each session read as JSON holds its JSON besides (about
    /// as many bytes again), counted in its memory. Kept only below 90% of
    /// `maxmemory`. yes or no.
    #[arg(long, env = "SESSION_SIDECAR_KEEP_JSON", default_value = "no", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    pub keep_json: bool,

    /// Most simultaneous client connections.
    #[arg(long, env = "SESSION_SIDECAR_MAXCLIENTS", default_value_t = 10_000)]
    pub maxclients: usize,

    /// Close client connections idle for this many seconds (0 = never).
    #[arg(long, env = "SESSION_SIDECAR_TIMEOUT", default_value_t = 0)]
    pub timeout: u64,

    /// Largest bulk string a client may send, in bytes or with a unit.
    #[arg(long, env = "SESSION_SIDECAR_PROTO_MAX_BULK_LEN", default_value = "512mb", value_parser = parse_memory)]
    pub proto_max_bulk_len: u64,

    /// Most arguments in one command.
    #[arg(long, env = "SESSION_SIDECAR_MAX_ARGS", default_value_t = 1024 * 1024)]
    pub max_args: usize,

    /// Largest unparsed input buffered per client, in bytes or with a unit.
    #[arg(long, env = "SESSION_SIDECAR_CLIENT_QUERY_BUFFER_LIMIT", default_value = "1gb", value_parser = parse_memory)]
    pub client_query_buffer_limit: u64,

    /// Unread replies a client may hold before it is closed, per class, as
    /// Redis's `client-output-buffer-limit`: `<class> <hard> <soft>
    /// <soft-seconds>` (sizes in bytes or with a unit, 0: no limit).
    /// Classes: normal (replies, passthrough ones included), pubsub
    /// (messages of the sidecar's own channels); replica is accepted and
    /// ignored. Unlike Redis, normal clients are bounded by default: a
    /// sidecar runs under its pod's memory limit.
    #[arg(long, env = "SESSION_SIDECAR_CLIENT_OUTPUT_BUFFER_LIMIT", default_value = "normal 128mb 32mb 60 pubsub 32mb 8mb 60", value_parser = OutputLimits::parse)]
    pub client_output_buffer_limit: OutputLimits,

    /// Longest id, user, conn or attribute name, in bytes.
    #[arg(long, env = "SESSION_SIDECAR_MAX_NAME_LEN", default_value_t = 512)]
    pub max_name_len: usize,

    /// Largest attribute value, in bytes or with a unit.
    #[arg(long, env = "SESSION_SIDECAR_MAX_VALUE_LEN", default_value = "1mb", value_parser = parse_memory)]
    pub max_value_len: u64,

    /// Most attributes per session.
    #[arg(long, env = "SESSION_SIDECAR_MAX_ATTRS", default_value_t = 1024)]
    pub max_attrs: usize,

    /// Seconds SIGTERM/SIGINT waits for in-flight work before exiting anyway.
    #[arg(long, env = "SESSION_SIDECAR_SHUTDOWN_TIMEOUT", default_value_t = 25)]
    pub shutdown_timeout: u64,

    /// Event loops serving clients, a thread each; 0: one per CPU this
    /// process may use (its cgroup's quota counted). One loop, as Redis and
    /// as a sidecar sharing its pod's CPUs is best served.
    #[arg(long, env = "SESSION_SIDECAR_THREADS", default_value_t = 1)]
    pub threads: u16,

    /// Log format.
    #[arg(
        long,
        env = "SESSION_SIDECAR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax: info, debug, session_sidecar=trace, ...).
    #[arg(long, env = "SESSION_SIDECAR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Optional configuration file (redis.conf style: `name value` per line).
    #[arg(long, env = "SESSION_SIDECAR_CONFIG")]
    pub config: Option<PathBuf>,
}

impl Config {
    /// Reads flags, environment and the configuration file.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let first = Config::try_parse_from(&args)?;
        let Some(path) = &first.config else {
            return Ok(first);
        };
        let file_error =
            |message: String| ConfigError::File(format!("{}: {message}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let mut command = Config::command();
        let known: Vec<String> = command
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for (line_no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let id = name.replace('-', "_");
            if !known.contains(&id) || id == "config" {
                return Err(file_error(format!(
                    "line {}: unknown option '{name}'",
                    line_no + 1
                )));
            }
            let value = value.trim().trim_matches('"').to_string();
            // Checked now, so that a bad value is reported against the file
            // and its line, not against the flag it stands for.
            if let Some(reason) = invalid_value(&command, &id, &value) {
                return Err(file_error(format!(
                    "line {}: invalid value '{value}' for {name}: {reason}",
                    line_no + 1
                )));
            }
            command = command.mut_arg(id, |arg| arg.default_value(value));
        }
        let matches = command.try_get_matches_from(&args)?;
        Ok(Config::from_arg_matches(&matches)?)
    }

    /// The shard count: `--shards`, or the default for the upstream's kind.
    pub fn shard_count(&self) -> u32 {
        self.shards.unwrap_or_else(|| {
            let cluster = self.upstream.as_deref().is_some_and(|url| {
                url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://")
            });
            if cluster {
                DEFAULT_CLUSTER_SHARDS
            } else {
                DEFAULT_SHARDS
            }
        })
    }

    /// How many event loops serve clients: `--threads`, or the CPUs this
    /// process may use (its cgroup's CPU quota included).
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => usize::from(threads),
        }
    }

    /// The node id: the flag, else the hostname.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(hostname)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `yes` or `no`, as redis.conf writes booleans.
pub fn parse_yes_no(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("argument must be 'yes' or 'no', not '{text}'")),
    }
}

/// A size in bytes, with an optional Redis unit: k, kb, m, mb, g, gb
/// (k = 1000, kb = 1024, as redis.conf).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    let multiplier: u64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return Err(format!("invalid memory size '{text}'")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("invalid memory size '{text}'"))
}

/// Why `value` is not a valid value of the argument `id`, if it is not
/// (arguments that take no value are not checked here).
fn invalid_value(command: &clap::Command, id: &str, value: &str) -> Option<String> {
    let arg = command.get_arguments().find(|a| a.get_id() == id)?;
    if !arg.get_action().takes_values() {
        return None;
    }
    let long = format!("--{}", arg.get_long()?);
    let probe = Config::command().try_get_matches_from(["session-sidecar", long.as_str(), value]);
    let error = probe.err()?;
    if !matches!(
        error.kind(),
        clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
    ) {
        return None;
    }
    Some(match std::error::Error::source(&error) {
        Some(source) => source.to_string(),
        None => error.kind().to_string(),
    })
}

/// A listen address: `ip:port` or `host:port` (resolved once, at start;
/// an IPv4 address is preferred, as `localhost` usually means 127.0.0.1).
fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("expected host:port or ip:port ({e})"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

/// One class of `client-output-buffer-limit`: closed past `hard` bytes, or
/// past `soft` bytes for `soft_seconds` on end (0: that limit is off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputLimit {
    pub hard: u64,
    pub soft: u64,
    pub soft_seconds: u64,
}

impl OutputLimit {
    /// Whether a client holding `held` bytes goes over the limit.
    /// `over_soft_since` keeps when it went over the soft limit (Unix ms, 0:
    /// it is not over), shared by whoever adds to what the client holds; the
    /// clock is read only while over it.
    pub fn exceeded(&self, held: u64, over_soft_since: &AtomicU64) -> bool {
        if self.hard > 0 && held > self.hard {
            return true;
        }
        if self.soft == 0 || held <= self.soft {
            if over_soft_since.load(Ordering::Relaxed) != 0 {
                over_soft_since.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| (d.as_millis() as u64).max(1));
        // The first to find it over starts the clock.
        let since =
            match over_soft_since.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => now,
                Err(since) => since,
            };
        now.saturating_sub(since) >= self.soft_seconds.saturating_mul(1000)
    }

    fn words(&self) -> String {
        format!("{} {} {}", self.hard, self.soft, self.soft_seconds)
    }
}

/// `client-output-buffer-limit`, per class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputLimits {
    pub normal: OutputLimit,
    pub pubsub: OutputLimit,
}

impl OutputLimits {
    /// Redis's syntax: `<class> <hard> <soft> <soft-seconds>`, repeated.
    pub fn parse(text: &str) -> Result<OutputLimits, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.is_empty() || !words.len().is_multiple_of(4) {
            return Err("expected <class> <hard> <soft> <soft-seconds>, repeated".into());
        }
        let mut limits = OutputLimits::default();
        for group in words.chunks_exact(4) {
            let limit = OutputLimit {
                hard: parse_memory(group[1])?,
                soft: parse_memory(group[2])?,
                soft_seconds: group[3]
                    .parse()
                    .map_err(|_| format!("invalid soft seconds {:?}", group[3]))?,
            };
            match group[0].to_ascii_lowercase().as_str() {
                "normal" => limits.normal = limit,
                "pubsub" => limits.pubsub = limit,
                "replica" | "slave" => {}
                other => return Err(format!("invalid client class {other:?}")),
            }
        }
        Ok(limits)
    }

    /// As CONFIG GET shows it.
    pub fn words(&self) -> String {
        format!(
            "normal {} slave 0 0 0 pubsub {}",
            self.normal.words(),
            self.pubsub.words()
        )
    }
}

/// The parameters that are the sidecar's own (its listener, its limits, its
/// flags): with an upstream, CONFIG GET answers these from the sidecar and
/// every other from the upstream, and CONFIG SET of these is refused while
/// the others go to the upstream ([`crate::proxy::Proxy::forwards`]).
pub const OWN_PARAMETERS: &[&str] = &[
    "bind",
    "port",
    "maxclients",
    "timeout",
    "proto-max-bulk-len",
    "client-query-buffer-limit",
    "client-output-buffer-limit",
    "prefix",
    "default-ttl",
    "node-id",
    "advertise",
    "max-args",
    "max-name-len",
    "max-value-len",
    "max-attrs",
];

/// Whether CONFIG SET's arguments name one of the sidecar's own parameters.
pub fn sets_own_parameter(argv: &[bytes::Bytes]) -> bool {
    argv.iter().skip(2).step_by(2).any(|name| {
        OWN_PARAMETERS
            .iter()
            .any(|own| name.eq_ignore_ascii_case(own.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_limits_read_as_redis_writes_them() {
        let limits =
            OutputLimits::parse("normal 0 0 0 slave 256mb 64mb 60 pubsub 32mb 8mb 60").unwrap();
        assert_eq!(limits.normal, OutputLimit::default());
        assert_eq!(
            limits.pubsub,
            OutputLimit {
                hard: 32 << 20,
                soft: 8 << 20,
                soft_seconds: 60
            }
        );
        assert!(OutputLimits::parse("normal 1mb").is_err());
        assert!(OutputLimits::parse("nobody 1 1 1").is_err());
        let since = AtomicU64::new(0);
        let limit = OutputLimit {
            hard: 100,
            soft: 10,
            soft_seconds: 0,
        };
        assert!(!limit.exceeded(10, &since));
        assert!(limit.exceeded(11, &since), "over soft for 0 s");
        assert!(limit.exceeded(101, &AtomicU64::new(0)));
        let patient = OutputLimit {
            soft_seconds: 60,
            ..limit
        };
        let since = AtomicU64::new(0);
        assert!(!patient.exceeded(50, &since), "over soft, not for 60 s yet");
        assert!(since.load(Ordering::Relaxed) != 0);
    }

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("100"), Ok(100));
        assert_eq!(parse_memory("1kb"), Ok(1024));
        assert_eq!(parse_memory("2GB"), Ok(2 << 30));
        assert!(parse_memory("12x").is_err());
    }

    #[test]
    fn file_values_are_defaults_that_flags_override() {
        let dir = std::env::temp_dir().join(format!("sidecar-config-{}", std::process::id()));
        std::fs::write(&dir, "# comment\nprefix fromfile\ndefault-ttl 60\n").unwrap();
        let path = dir.to_str().unwrap();
        let config = Config::load_from(["x", "--config", path, "--default-ttl", "90"]).unwrap();
        assert_eq!(config.prefix, "fromfile");
        assert_eq!(config.default_ttl, 90);
        std::fs::write(&dir, "bogus 1\n").unwrap();
        assert!(Config::load_from(["x", "--config", path]).is_err());
        // A bad value names the file and its line, not the flag.
        std::fs::write(&dir, "# comment\nprefix ok\nlisten not-an-address\n").unwrap();
        match Config::load_from(["x", "--config", path]) {
            Err(ConfigError::File(message)) => {
                assert!(message.starts_with(path), "{message}");
                assert!(
                    message.contains("line 3: invalid value 'not-an-address' for listen"),
                    "{message}"
                );
            }
            other => panic!("expected a file error, got {other:?}"),
        }
        std::fs::remove_file(&dir).unwrap();
    }
}
