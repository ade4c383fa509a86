//! The metric handles: counters and latency histograms an operator graphs,
//! registered once as plain atomics and kept in the structs that update
//! them (an observation is two atomic adds, no lock, no allocation).
//!
//! Layer 3 of 15 (the order is in `tests/layers.rs`). Uses the command table
//! of `protocol`. Rendering the handles for `/metrics` is `ops::prometheus`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::command_table::{COMMANDS, Cmd};

/// A monotonically increasing counter.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds, in seconds, of every latency histogram: 50 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS`]).
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative), the last one past every
    /// bound (+Inf).
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..=LATENCY_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

/// What a histogram held when read: the sum in seconds, the count, and
/// the count of each bucket by its upper bound (+Inf last), not cumulative
/// (the encoder sums them up).
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        self.observe_many(took, 1);
    }

    /// `n` observations of `took` each.
    pub fn observe_many(&self, took: Duration, n: u64) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(n, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos
            .fetch_add(nanos.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter())
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        HistogramSnapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// The command families whose latency is graphed apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SESSION.GET, EXISTS, TTL, ATTR.GET, BYCONN, BYUSER, COUNT, TOUCH.
    SessionRead,
    /// Every other SESSION.* command that changes a session.
    SessionWrite,
    /// SESSION.MIGRATE, IMPORT, DRAIN, NODES, STREAMS, PEERAUTH.
    Handoff,
    /// Connection, server, transaction and pub/sub commands.
    Other,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::SessionRead,
        Family::SessionWrite,
        Family::Handoff,
        Family::Other,
    ];

    pub fn of(cmd: Cmd) -> Family {
        match cmd {
            Cmd::SessionGet
            | Cmd::SessionExists
            | Cmd::SessionTtl
            | Cmd::SessionAttrGet
            | Cmd::SessionByconn
            | Cmd::SessionByuser
            | Cmd::SessionCount
            | Cmd::SessionTouch => Family::SessionRead,
            Cmd::SessionCreate
            | Cmd::SessionAttrSet
            | Cmd::SessionAttrDel
            | Cmd::SessionAttrIncrby
            | Cmd::SessionUpdate
            | Cmd::SessionExpire
            | Cmd::SessionDel
            | Cmd::SessionBind
            | Cmd::SessionUnbind
            | Cmd::SessionKilluser => Family::SessionWrite,
            Cmd::SessionMigrate
            | Cmd::SessionImport
            | Cmd::SessionDrain
            | Cmd::SessionNodes
            | Cmd::SessionStreams
            | Cmd::SessionPeerauth => Family::Handoff,
            _ => Family::Other,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Family::SessionRead => "session_read",
            Family::SessionWrite => "session_write",
            Family::Handoff => "handoff",
            Family::Other => "other",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub connections: Counter,
    pub rejected_connections: Counter,
    pub command_errors: Counter,
    pub unknown_commands: Counter,
    pub protocol_errors: Counter,
    pub auth_failures: Counter,
    pub oom_rejections: Counter,
    /// Clients closed for holding more unread replies than
    /// `client-output-buffer-limit` allows.
    pub output_limit_disconnections: Counter,
    /// Times freed memory was given back to the OS.
    pub memory_trims: Counter,
    /// Calls per command, indexed by [`Cmd`].
    commands: Box<[Counter]>,
    /// Time to answer a command the sidecar answers itself, per [`Family`].
    pub command_latency: [Histogram; 4],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: Counter::default(),
            rejected_connections: Counter::default(),
            command_errors: Counter::default(),
            unknown_commands: Counter::default(),
            protocol_errors: Counter::default(),
            auth_failures: Counter::default(),
            oom_rejections: Counter::default(),
            output_limit_disconnections: Counter::default(),
            memory_trims: Counter::default(),
            commands: COMMANDS.iter().map(|_| Counter::default()).collect(),
            command_latency: Default::default(),
        }
    }
}

impl Metrics {
    /// A command of `cmd`'s family took `took`.
    pub fn command_took(&self, cmd: Cmd, took: Duration) {
        let family = Family::of(cmd);
        self.command_latency[family as usize].observe(took);
    }

    pub fn command(&self, cmd: Cmd) {
        if let Some(counter) = self.commands.get(cmd as usize) {
            counter.inc();
        }
    }

    /// Calls of one command so far.
    pub fn command_calls(&self, cmd: Cmd) -> u64 {
        self.commands.get(cmd as usize).map_or(0, Counter::get)
    }

    pub fn commands_total(&self) -> u64 {
        self.commands.iter().map(Counter::get).sum()
    }

    pub fn load(&self, value: &AtomicU64) -> u64 {
        value.load(Ordering::Relaxed)
    }
}
