//! The `/metrics` page: every handle of the node rendered in Prometheus's
//! text format. The latency histograms are encoded by `prometheus-client`
//! from snapshots of the node's atomic histograms ([`crate::metrics`]), so
//! that observing one never takes a lock.

use std::collections::HashMap;
use std::fmt::Write as _;

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

use crate::metrics::{Family, HistogramSnapshot};
use crate::node::Node;
use crate::protocol::command_table::COMMANDS;
use crate::store::now_ms;

/// The `/metrics` page.
pub fn render(node: &Node) -> String {
    let m = &node.metrics;
    let sessions = &node.sessions;
    let stats = sessions.stats();
    let now = now_ms();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = write!(
            out,
            "# HELP session_sidecar_{name} {help}\n# TYPE session_sidecar_{name} {kind}\nsession_sidecar_{name} {value}\n"
        );
    };
    metric("up", "gauge", "1 while the sidecar serves.", 1);
    if let Some(bytes) = resident_bytes() {
        metric(
            "resident_memory_bytes",
            "gauge",
            "Resident memory of the process (what a container's memory limit counts).",
            bytes,
        );
    }
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since start.",
        now.saturating_sub(node.started_ms) / 1000,
    );
    metric(
        "ready",
        "gauge",
        "1 when /readyz answers 200.",
        u64::from(node.is_ready()),
    );
    metric(
        "connected_clients",
        "gauge",
        "Client connections open.",
        node.clients.len() as u64,
    );
    metric(
        "connections_total",
        "counter",
        "Client connections accepted.",
        m.connections.get(),
    );
    metric(
        "rejected_connections_total",
        "counter",
        "Connections refused at maxclients.",
        m.rejected_connections.get(),
    );
    metric(
        "command_errors_total",
        "counter",
        "Commands answered with an error.",
        m.command_errors.get(),
    );
    metric(
        "unknown_commands_total",
        "counter",
        "Unknown commands received.",
        m.unknown_commands.get(),
    );
    metric(
        "protocol_errors_total",
        "counter",
        "Connections closed for malformed input.",
        m.protocol_errors.get(),
    );
    metric(
        "auth_failures_total",
        "counter",
        "Failed AUTH attempts.",
        m.auth_failures.get(),
    );
    metric(
        "oom_rejections_total",
        "counter",
        "Writes refused past maxmemory.",
        m.oom_rejections.get(),
    );
    metric(
        "output_limit_disconnections_total",
        "counter",
        "Clients closed for unread replies past client-output-buffer-limit.",
        m.output_limit_disconnections.get(),
    );
    metric(
        "memory_trims_total",
        "counter",
        "Times memory freed by closed connections was given back to the OS.",
        m.memory_trims.get(),
    );
    metric(
        "sessions",
        "gauge",
        "Live sessions held.",
        sessions.count_local(now) as u64,
    );
    metric(
        "sessions_created_total",
        "counter",
        "Sessions created.",
        m.load(&stats.created),
    );
    metric(
        "sessions_deleted_total",
        "counter",
        "Sessions deleted.",
        m.load(&stats.deleted),
    );
    metric(
        "sessions_expired_total",
        "counter",
        "Sessions expired.",
        m.load(&stats.expired),
    );
    metric(
        "sessions_evicted_total",
        "counter",
        "Sessions evicted by MAXPERUSER.",
        m.load(&stats.evicted),
    );
    let g = &node.migration;
    metric(
        "draining",
        "gauge",
        "1 while the sidecar drains its sessions to its peers.",
        u64::from(g.is_draining()),
    );
    metric(
        "migrations_total",
        "counter",
        "SESSION.MIGRATE runs, one per target of a drain.",
        m.load(&g.migrations),
    );
    metric(
        "migrations_failed_total",
        "counter",
        "Migrations that stopped early or could not start.",
        m.load(&g.failed_migrations),
    );
    metric(
        "sessions_migrated_out_total",
        "counter",
        "Sessions handed to other sidecars.",
        m.load(&g.sessions_out),
    );
    metric(
        "sessions_migrated_in_total",
        "counter",
        "Sessions taken from other sidecars.",
        m.load(&g.sessions_in),
    );
    metric(
        "memory_bytes",
        "gauge",
        "Approximate bytes held by sessions.",
        sessions.memory() as u64,
    );
    metric(
        "maxmemory_bytes",
        "gauge",
        "Configured memory budget (0 = none).",
        node.config.maxmemory,
    );
    metric(
        "pubsub_channels",
        "gauge",
        "Channels with subscribers.",
        node.pubsub.channel_count() as u64,
    );
    if let Some(proxy) = &node.proxy {
        let p = &proxy.stats;
        for (name, help, value) in [
            (
                "proxy_forwarded_total",
                "Commands passed through to the upstream.",
                &p.forwarded,
            ),
            (
                "proxy_batches_total",
                "Batch writes on pooled upstream connections.",
                &p.batches,
            ),
            (
                "proxy_pinned_total",
                "Upstream connections pinned to a client.",
                &p.pinned,
            ),
            (
                "proxy_unavailable_total",
                "Forwarded commands refused: upstream unreachable.",
                &p.unavailable,
            ),
            (
                "proxy_redirections_total",
                "Cluster MOVED and ASK redirections followed.",
                &p.redirections,
            ),
        ] {
            metric(name, "counter", help, value.get());
        }
    }
    if let Some(store) = node.upstream() {
        let u = &store.upstream.stats;
        let w = &store.stats;
        let up = store.upstream.state() == crate::upstream::connection::State::Up;
        metric(
            "upstream_up",
            "gauge",
            "1 while the upstream connection is up.",
            u64::from(up),
        );
        metric(
            "upstream_commands_total",
            "counter",
            "Commands sent to the upstream.",
            u.commands.get(),
        );
        metric(
            "upstream_errors_total",
            "counter",
            "Error replies from the upstream that are failures (refusals apart).",
            u.errors.get(),
        );
        metric(
            "upstream_refusals_total",
            "counter",
            "Ordinary refusals from the session script (NOSESSION, CONFLICT, EXISTS, attribute limits).",
            u.refusals.get(),
        );
        metric(
            "upstream_unavailable_total",
            "counter",
            "Calls failed fast: upstream unreachable.",
            u.unavailable.get(),
        );
        metric(
            "upstream_reconnects_total",
            "counter",
            "Upstream reconnections.",
            u.reconnects.get(),
        );
        metric(
            "upstream_invalidations_total",
            "counter",
            "Invalidation pushes received.",
            u.invalidations.get(),
        );
        metric(
            "upstream_latency_microseconds",
            "gauge",
            "Latency of the last upstream command.",
            m.load(&u.last_latency_us),
        );
        metric(
            "cache_hits_total",
            "counter",
            "Reads answered from a hot copy.",
            m.load(&w.hits),
        );
        metric(
            "cache_misses_total",
            "counter",
            "Reads that went to the upstream.",
            m.load(&w.misses),
        );
        metric(
            "cache_evictions_total",
            "counter",
            "Hot copies evicted for maxmemory.",
            m.load(&store.cache.evictions),
        );
        metric(
            "heartbeats_absorbed_total",
            "counter",
            "Heartbeats answered from memory.",
            m.load(&w.heartbeats_absorbed),
        );
        metric(
            "heartbeat_flushes_total",
            "counter",
            "Batched last_active writes.",
            m.load(&w.heartbeat_flushes),
        );
        let masters = store.upstream.masters();
        metric(
            "upstream_masters",
            "gauge",
            "Upstream masters with a link (one for a single server).",
            masters.len() as u64,
        );
        metric(
            "upstream_masters_up",
            "gauge",
            "Upstream masters whose link is up.",
            masters
                .iter()
                .filter(|(_, state)| *state == crate::upstream::connection::State::Up)
                .count() as u64,
        );
        metric(
            "expired_swept_total",
            "counter",
            "Expired sessions removed by this sidecar's sweeps.",
            m.load(&store.counts.expired),
        );
        metric(
            "expiry_lag_milliseconds_sum",
            "counter",
            "Sum over swept sessions of the time from their expiry to their removal.",
            w.expiry_lag_ms_sum.get(),
        );
        metric(
            "expiry_lag_milliseconds_max",
            "gauge",
            "Longest expiry-to-removal time seen by this sidecar's sweeps.",
            m.load(&w.expiry_lag_ms_max),
        );
        metric(
            "intents_repaired_total",
            "counter",
            "Cross-shard changes found unfinished and finished by this sidecar.",
            w.intents_repaired.get(),
        );
        metric(
            "follow_up_failures_total",
            "counter",
            "Cross-shard steps that failed and were left to the repairer.",
            w.follow_up_failures.get(),
        );
        metric(
            "conn_lock_timeouts_total",
            "counter",
            "Cross-shard binds refused because the conn's lock stayed taken.",
            w.conn_lock_timeouts.get(),
        );
        metric(
            "shards_swept",
            "gauge",
            "Shards in this sidecar's share of the background work.",
            store.shares_now() as u64,
        );
    }
    out.push_str("# HELP session_sidecar_event_loop_clients Client connections per event loop.\n");
    out.push_str("# TYPE session_sidecar_event_loop_clients gauge\n");
    for (index, clients) in node.loop_clients().iter().enumerate() {
        let _ = writeln!(
            out,
            "session_sidecar_event_loop_clients{{loop=\"{index}\"}} {clients}"
        );
    }
    out.push_str("# HELP session_sidecar_commands_total Commands processed, by command.\n");
    out.push_str("# TYPE session_sidecar_commands_total counter\n");
    for spec in COMMANDS {
        let calls = m.command_calls(spec.cmd);
        let _ = writeln!(
            out,
            "session_sidecar_commands_total{{command=\"{}\"}} {calls}",
            spec.name
        );
    }
    histograms(node, &mut out);
    let _ = write!(
        out,
        "# HELP session_sidecar_build_info The sidecar's version, as a label.\n# TYPE session_sidecar_build_info gauge\nsession_sidecar_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// One histogram metric: its series, each a label set and a snapshot.
#[derive(Debug)]
struct Series(Vec<(Vec<(&'static str, &'static str)>, HistogramSnapshot)>);

impl EncodeMetric for Series {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let no_exemplars: Option<&HashMap<usize, Exemplar<NoLabelSet, f64>>> = None;
        for (labels, snapshot) in &self.0 {
            let (sum, count, buckets) = (snapshot.sum, snapshot.count, &snapshot.buckets);
            if labels.is_empty() {
                encoder.encode_histogram(sum, count, buckets, no_exemplars)?;
            } else {
                encoder.encode_family(labels)?.encode_histogram(
                    sum,
                    count,
                    buckets,
                    no_exemplars,
                )?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The latency histograms, appended to `out`.
fn histograms(node: &Node, out: &mut String) {
    let mut registry = Registry::with_prefix("session_sidecar");
    let m = &node.metrics;
    registry.register(
        "command_duration_seconds",
        "Time to answer a command the sidecar answers itself, by command family",
        Series(
            Family::ALL
                .iter()
                .map(|f| {
                    let labels = vec![("family", f.label())];
                    (labels, m.command_latency[*f as usize].snapshot())
                })
                .collect(),
        ),
    );
    let migration = &node.migration;
    registry.register(
        "handoff_duration_seconds",
        "Time a SESSION.MIGRATE or a drain (SESSION.DRAIN, SIGTERM) took, whole",
        Series(vec![
            (
                vec![("kind", "migrate")],
                migration.migrate_duration.snapshot(),
            ),
            (vec![("kind", "drain")], migration.drain_duration.snapshot()),
        ]),
    );
    if let Some(store) = node.upstream() {
        registry.register(
            "upstream_call_duration_seconds",
            "Time of each call to the upstream for sessions (a command, a script call or a pipeline)",
            Series(vec![(vec![], store.upstream.stats.latency.snapshot())]),
        );
        registry.register(
            "expiry_lag_seconds",
            "Time from a session's expiry to its removal by a sweep",
            Series(vec![(vec![], store.stats.expiry_lag.snapshot())]),
        );
    }
    if let Some(proxy) = &node.proxy {
        registry.register(
            "proxy_queue_seconds",
            "Time a forwarded request waits in its pool for the batch before it: the latency the passthrough adds",
            Series(vec![(vec![], proxy.stats.queue_latency.snapshot())]),
        );
        registry.register(
            "proxy_upstream_seconds",
            "Time from a pooled batch's write to its last reply: the upstream's part of a forwarded command's latency",
            Series(vec![(vec![], proxy.stats.upstream_latency.snapshot())]),
        );
    }
    let _ = encode_registry(out, &registry);
}

/// The process's resident memory (`VmRSS` of `/proc/self/status`, Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
