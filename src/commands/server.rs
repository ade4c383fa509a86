//! Server commands: INFO, COMMAND, CONFIG GET, TIME.

use std::fmt::Write as _;

use super::{Args, CommandError, CommandResult};
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::protocol::command_table::{Arg, ArgKind, COMMANDS, CommandSpec, lookup};
use crate::pubsub::glob_match;
use crate::store::now_ms;

const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "sessions",
    "upstream",
    "migration",
    "stats",
    "memory",
    "keyspace",
];

/// INFO [section ...]: Redis's `# Section` / `field:value` text.
pub async fn info(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let requested: Vec<String> = args
        .rest()
        .iter()
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .collect();
    let all = requested.is_empty()
        || requested
            .iter()
            .any(|s| s == "all" || s == "everything" || s == "default");
    let wanted = |section: &str| all || requested.iter().any(|s| s == section);
    // The store-wide count is the upstream's in write-through mode: ask only
    // when the section is wanted, and report -1 when it cannot be had.
    let total = async {
        match wanted("sessions") {
            true => node.sessions.count(now_ms()).await.map_or(-1, |n| n as i64),
            false => -1,
        }
    };
    // With passthrough the data is the upstream's: so is the keyspace
    // section (the sessions are keys there too).
    let upstream_keyspace = async {
        match (&node.proxy, wanted("keyspace")) {
            (Some(proxy), true) => proxy.keyspace().await,
            _ => None,
        }
    };
    // With an upstream, the upstream's own fields join the sidecar's: its
    // sections the sidecar has none of (cpu, commandstats, errorstats,
    // persistence, ...), and, in the sections both have, the fields the
    // sidecar lacks, and the ones only the upstream can know
    // ([`UPSTREAM_FIELDS`]). On a cluster, one master's.
    let upstream_sections = async {
        match &node.proxy {
            Some(proxy) => {
                let mut argv: Vec<&[u8]> = vec![b"INFO"];
                argv.extend(args_sections(&requested));
                let reply = proxy.ask(crate::protocol::Protocol::Resp2, &argv).await;
                crate::protocol::frame::bulk_payload(&reply)
                    .map(|text| parse_sections(&String::from_utf8_lossy(text)))
                    .unwrap_or_default()
            }
            None => Vec::new(),
        }
    };
    // The three round trips at once.
    let (total, upstream_keyspace, upstream_sections) =
        futures_util::future::join3(total, upstream_keyspace, upstream_sections).await;
    let mut text = String::new();
    for section in SECTIONS {
        if wanted(section) && (*section != "upstream" || node.upstream().is_some()) {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            match (&node.proxy, *section) {
                (Some(_), "keyspace") => {
                    text.push_str("# Keyspace\r\n");
                    for line in upstream_keyspace.iter().flatten() {
                        text.push_str(line);
                        text.push_str("\r\n");
                    }
                }
                _ => {
                    let mut own = String::new();
                    write_section(node, section, total, &mut own);
                    let theirs = upstream_sections
                        .iter()
                        .find(|(title, _)| title == section)
                        .map_or(&[][..], |(_, fields)| &fields[..]);
                    text.push_str(&merge_fields(&own, theirs));
                }
            }
        }
    }
    for (title, fields) in &upstream_sections {
        if SECTIONS.contains(&title.as_str()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        let mut heading = title.clone();
        if let Some(first) = heading.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        let _ = write!(text, "# {heading}\r\n");
        for (name, value) in fields {
            let _ = write!(text, "{name}:{value}\r\n");
        }
    }
    out.verbatim(&text);
    Ok(())
}

/// Fields of the sections both have that only the upstream can know: its
/// version, and the clients blocked on it (through the sidecar's pinned
/// connections among them).
const UPSTREAM_FIELDS: &[&str] = &["redis_version", "blocked_clients"];

/// INFO's section arguments as the upstream is asked them: the sidecar's
/// own sections mean nothing there.
fn args_sections(requested: &[String]) -> Vec<&[u8]> {
    requested
        .iter()
        .filter(|s| !["sessions", "upstream", "migration"].contains(&s.as_str()))
        .map(|s| s.as_bytes())
        .collect()
}

/// INFO text as (lowercase section title, [(field, value)]), in order.
fn parse_sections(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("# ") {
            sections.push((title.trim().to_ascii_lowercase(), Vec::new()));
        } else if let (Some((name, value)), Some((_, fields))) =
            (line.split_once(':'), sections.last_mut())
        {
            fields.push((name.to_string(), value.to_string()));
        }
    }
    sections
}

/// The sidecar's section text with the upstream's fields merged in: those
/// it lacks appended, those of [`UPSTREAM_FIELDS`] taking the upstream's
/// value.
fn merge_fields(own: &str, theirs: &[(String, String)]) -> String {
    let mut merged = String::with_capacity(own.len());
    let mut names = Vec::new();
    for line in own.split("\r\n").filter(|l| !l.is_empty()) {
        let name = line.split_once(':').map(|(name, _)| name);
        let upstream = name
            .filter(|name| UPSTREAM_FIELDS.contains(name))
            .and_then(|name| theirs.iter().find(|(n, _)| n == name));
        match upstream {
            Some((name, value)) => {
                let _ = write!(merged, "{name}:{value}\r\n");
            }
            None => {
                merged.push_str(line);
                merged.push_str("\r\n");
            }
        }
        names.extend(name);
    }
    for (name, value) in theirs {
        if !names.contains(&name.as_str()) {
            let _ = write!(merged, "{name}:{value}\r\n");
        }
    }
    merged
}

fn write_section(node: &Node, section: &str, sessions_total: i64, text: &mut String) {
    let now = now_ms();
    let mut title = section.to_string();
    title[..1].make_ascii_uppercase();
    let _ = write!(text, "# {title}\r\n");
    let m = &node.metrics;
    let sessions = &node.sessions;
    let stats = sessions.stats();
    let mut field = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(text, "{name}:{value}\r\n");
    };
    match section {
        "server" => {
            field("redis_version", &crate::commands::REDIS_VERSION);
            field("session_sidecar_version", &env!("CARGO_PKG_VERSION"));
            field("redis_mode", &"standalone");
            field("os", &std::env::consts::OS);
            field("arch_bits", &(usize::BITS));
            field("process_id", &std::process::id());
            field("node_id", &String::from_utf8_lossy(sessions.node()));
            field("mode", &node.mode());
            field("advertise", &node.fleet.advertise());
            field("tcp_port", &node.listen_addr.port());
            field(
                "uptime_in_seconds",
                &(now.saturating_sub(node.started_ms) / 1000),
            );
            field(
                "uptime_in_days",
                &(now.saturating_sub(node.started_ms) / 86_400_000),
            );
        }
        "clients" => {
            field("connected_clients", &node.clients.len());
            let per_loop: Vec<String> = node.loop_clients().iter().map(usize::to_string).collect();
            field("event_loops", &per_loop.len());
            field("event_loop_clients", &per_loop.join(","));
            field("maxclients", &node.config.maxclients);
            field("blocked_clients", &0);
            field("pubsub_clients", &node.pubsub_clients());
            field("tracking_clients", &node.tracking.clients());
        }
        "sessions" => {
            field("sessions", &sessions_total);
            field("sessions_local", &sessions.count_local(now));
            field("sessions_created", &m.load(&stats.created));
            field("sessions_deleted", &m.load(&stats.deleted));
            field("sessions_expired", &m.load(&stats.expired));
            field("sessions_evicted", &m.load(&stats.evicted));
            field("tracking_total_sessions", &node.tracking.tracked_sessions());
            field("default_ttl_ms", &sessions.default_ttl_ms());
        }
        "upstream" => {
            if let Some(store) = node.upstream() {
                let u = &store.upstream;
                let w = &store.stats;
                field("upstream_address", &u.address());
                field("upstream_state", &u.state().as_str());
                field(
                    "upstream_last_latency_us",
                    &m.load(&u.stats.last_latency_us),
                );
                field("upstream_commands", &u.stats.commands.get());
                field("upstream_errors", &u.stats.errors.get());
                field("upstream_refusals", &u.stats.refusals.get());
                field("upstream_unavailable", &u.stats.unavailable.get());
                field("upstream_reconnects", &u.stats.reconnects.get());
                field("upstream_invalidations", &u.stats.invalidations.get());
                field("cache_trusted", &u8::from(store.cache.is_trusted()));
                field("cache_hits", &m.load(&w.hits));
                field("cache_misses", &m.load(&w.misses));
                field("cache_evictions", &m.load(&store.cache.evictions));
                field("heartbeats_absorbed", &m.load(&w.heartbeats_absorbed));
                field("heartbeat_flushes", &m.load(&w.heartbeat_flushes));
                field("cache_verified", &m.load(&w.verified));
            }
            if let Some(proxy) = &node.proxy {
                let p = &proxy.stats;
                field("proxy_forwarded", &p.forwarded.get());
                field("proxy_batches", &p.batches.get());
                field("proxy_pinned", &p.pinned.get());
                field("proxy_unavailable", &p.unavailable.get());
                field("proxy_redirections", &p.redirections.get());
            }
        }
        "migration" => {
            let g = &node.migration;
            field("draining", &u8::from(g.is_draining()));
            field("migrations", &m.load(&g.migrations));
            field("failed_migrations", &m.load(&g.failed_migrations));
            field("sessions_migrated_out", &m.load(&g.sessions_out));
            field("sessions_migrated_in", &m.load(&g.sessions_in));
            field("last_migration_sessions", &m.load(&g.last_moved));
            field("last_migration_ms", &m.load(&g.last_ms));
            field("peer_secret", &u8::from(node.config.peer_secret.is_some()));
        }
        "keyspace" => {
            // The sessions held here, as Redis reports a database's keys.
            let held = sessions.count_local(now);
            if held > 0 {
                field("db0", &format!("keys={held},expires={held},avg_ttl=0"));
            }
        }
        "stats" => {
            field("total_connections_received", &m.connections.get());
            field("total_commands_processed", &m.commands_total());
            field("rejected_connections", &m.rejected_connections.get());
            field("total_error_replies", &m.command_errors.get());
            field("unknown_commands", &m.unknown_commands.get());
            field("protocol_errors", &m.protocol_errors.get());
            field("auth_failures", &m.auth_failures.get());
            field("oom_rejections", &m.oom_rejections.get());
            field("expired_keys", &m.load(&stats.expired));
            field("pubsub_channels", &node.pubsub.channel_count());
            field("pubsub_patterns", &node.pubsub.pattern_count());
            // Standalone the sessions are the keys; with an upstream this is
            // the upstream's count of tracked keys (merged in).
            if node.proxy.is_none() {
                field("tracking_total_keys", &node.tracking.tracked_sessions());
            }
        }
        "memory" => {
            field("used_memory", &sessions.memory());
            field("used_memory_human", &human(sessions.memory() as u64));
            field("maxmemory", &node.config.maxmemory);
            field("maxmemory_human", &human(node.config.maxmemory));
            let policy = if sessions.refuses_writes_past_maxmemory() {
                "noeviction"
            } else {
                "allkeys-random"
            };
            field("maxmemory_policy", &policy);
        }
        _ => {}
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.2}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

/// COMMAND [COUNT | LIST | INFO [name ...] | DOCS [name ...]]
pub fn command(args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let Some(sub) = args.next() else {
        out.array(COMMANDS.len());
        COMMANDS.iter().for_each(|c| command_info(c, out));
        return Ok(());
    };
    let keyword = super::args::Keyword::of(sub);
    let named = |names: &[bytes::Bytes]| -> Vec<Option<&'static CommandSpec>> {
        names.iter().map(|n| lookup(n)).collect()
    };
    if keyword.is("COUNT") {
        out.int(COMMANDS.len() as i64);
    } else if keyword.is("LIST") {
        out.array(COMMANDS.len());
        COMMANDS.iter().for_each(|c| out.bulk(c.name.as_bytes()));
    } else if keyword.is("INFO") {
        let specs: Vec<Option<&CommandSpec>> = if args.is_empty() {
            COMMANDS.iter().map(Some).collect()
        } else {
            named(args.rest())
        };
        out.array(specs.len());
        for spec in specs {
            match spec {
                Some(spec) => command_info(spec, out),
                None => out.null_array(),
            }
        }
    } else if keyword.is("DOCS") {
        let specs: Vec<&CommandSpec> = if args.is_empty() {
            COMMANDS.iter().collect()
        } else {
            named(args.rest()).into_iter().flatten().collect()
        };
        out.map(specs.len());
        for spec in specs {
            command_docs(spec, out);
        }
    } else {
        return Err(CommandError::err(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        )));
    }
    Ok(())
}

/// COMMAND with an upstream: the upstream's commands (it serves all but
/// the sidecar's own, and the sidecar answers the common ones as it does)
/// and the sidecar's `SESSION.*` ones, in the client's protocol.
pub async fn command_with_upstream(
    proxy: &crate::proxy::Proxy,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let argv: Vec<bytes::Bytes> = args.rest().to_vec();
    let own = |spec: &&CommandSpec| spec.name.starts_with("session.");
    let ours: Vec<&CommandSpec> = COMMANDS.iter().filter(own).collect();
    let sub = argv.first().map(|s| s.to_ascii_uppercase());
    let names = argv.get(1..).unwrap_or_default();
    // The names the upstream describes, for INFO and DOCS.
    let others: Vec<&[u8]> = names
        .iter()
        .filter(|n| lookup(n).filter(own).is_none())
        .map(|n| &n[..])
        .collect();
    let protocol = out.protocol();
    // The upstream's reply to COMMAND with these arguments, as it sent it.
    let ask = async |rest: &[&[u8]]| -> bytes::Bytes {
        let mut request: Vec<&[u8]> = vec![b"COMMAND"];
        request.extend_from_slice(rest);
        proxy.ask(protocol, &request).await
    };
    // The same, as the elements of its array or map.
    let elements = async |rest: &[&[u8]]| -> Result<Vec<bytes::Bytes>, CommandError> {
        let reply = ask(rest).await;
        match crate::protocol::frame::split_aggregate(&reply) {
            Some((_, elements)) => Ok(elements),
            None => Err(upstream_error(&reply)),
        }
    };
    // COMMAND is COMMAND INFO without names: every command.
    match sub.as_deref().unwrap_or(b"INFO") {
        b"INFO" if names.is_empty() => {
            let theirs = elements(&[]).await?;
            out.array(theirs.len() + ours.len());
            theirs.iter().for_each(|entry| out.raw(entry));
            ours.iter().for_each(|spec| command_info(spec, out));
        }
        b"COUNT" => {
            let reply = ask(&[b"COUNT"]).await;
            let count = reply
                .strip_prefix(b":")
                .and_then(|r| r.strip_suffix(b"\r\n"))
                .and_then(crate::protocol::parse_i64)
                .ok_or_else(|| upstream_error(&reply))?;
            out.int(count + ours.len() as i64);
        }
        b"LIST" => {
            let rest: Vec<&[u8]> = names.iter().map(|a| &a[..]).collect();
            let theirs = elements(&[&[&b"LIST"[..]][..], &rest].concat()).await?;
            // Ours join an unfiltered list, or one filtered by a pattern.
            let pattern = match rest.as_slice() {
                [] => Some(&b"*"[..]),
                [filterby, kind, pattern]
                    if filterby.eq_ignore_ascii_case(b"filterby")
                        && kind.eq_ignore_ascii_case(b"pattern") =>
                {
                    Some(*pattern)
                }
                _ => None,
            };
            let listed: Vec<&&CommandSpec> = ours
                .iter()
                .filter(|s| {
                    pattern.is_some_and(|p| glob_match(&p.to_ascii_lowercase(), s.name.as_bytes()))
                })
                .collect();
            out.array(theirs.len() + listed.len());
            theirs.iter().for_each(|name| out.raw(name));
            listed
                .iter()
                .for_each(|spec| out.bulk(spec.name.as_bytes()));
        }
        b"INFO" => {
            let mut theirs = match others.is_empty() {
                true => Vec::new(),
                false => elements(&[&[&b"INFO"[..]][..], &others].concat()).await?,
            }
            .into_iter();
            out.array(names.len());
            for name in names {
                match lookup(name).filter(own) {
                    Some(spec) => command_info(spec, out),
                    None => match theirs.next() {
                        Some(entry) => out.raw(&entry),
                        None => out.null_array(),
                    },
                }
            }
        }
        b"DOCS" => {
            let theirs = match names.is_empty() || !others.is_empty() {
                true => elements(&[&[&b"DOCS"[..]][..], &others].concat()).await?,
                false => Vec::new(),
            };
            let documented: Vec<&CommandSpec> = match names.is_empty() {
                true => ours.clone(),
                false => names.iter().filter_map(|n| lookup(n).filter(own)).collect(),
            };
            out.map(theirs.len() / 2 + documented.len());
            theirs.iter().for_each(|element| out.raw(element));
            documented.iter().for_each(|spec| command_docs(spec, out));
        }
        // GETKEYS, HELP...: the upstream's.
        _ => {
            let rest: Vec<&[u8]> = argv.iter().map(|a| &a[..]).collect();
            out.raw(&ask(&rest).await);
        }
    }
    Ok(())
}

/// The upstream's error reply as the client's error (its first line), or a
/// generic one for a reply of an unexpected shape.
fn upstream_error(reply: &[u8]) -> CommandError {
    match reply.strip_prefix(b"-") {
        Some(error) => {
            let line = error.split(|&b| b == b'\r').next().unwrap_or_default();
            CommandError::err(String::from_utf8_lossy(line))
        }
        None => CommandError::err("ERR unexpected reply from the upstream"),
    }
}

/// One COMMAND DOCS entry: the name, then its documentation.
fn command_docs(spec: &CommandSpec, out: &mut ReplyWriter) {
    out.bulk(spec.name.as_bytes());
    out.map(4);
    out.bulk(b"summary");
    out.bulk(spec.summary.as_bytes());
    out.bulk(b"since");
    out.bulk(b"1.0.0");
    out.bulk(b"group");
    out.bulk(spec.group.as_bytes());
    out.bulk(b"arguments");
    write_args(spec.args, out);
}

/// One COMMAND INFO entry: name, arity, flags, first key, last key, step,
/// ACL categories, tips, key specs, subcommands.
fn command_info(spec: &CommandSpec, out: &mut ReplyWriter) {
    out.array(10);
    out.bulk(spec.name.as_bytes());
    out.int(i64::from(spec.arity));
    out.set(spec.flags.len());
    spec.flags.iter().for_each(|f| out.simple(f));
    out.int(0);
    out.int(0);
    out.int(0);
    out.set(1);
    out.simple(&format!("@{}", spec.group));
    out.array(0);
    out.array(0);
    out.array(0);
}

fn write_args(args: &[Arg], out: &mut ReplyWriter) {
    out.array(args.len());
    for arg in args {
        let nested = match &arg.kind {
            ArgKind::OneOf(inner) | ArgKind::Block(inner) => Some(*inner),
            _ => None,
        };
        let flags: Vec<&str> = [
            (arg.optional, "optional"),
            (arg.multiple, "multiple"),
            (arg.multiple_token, "multiple_token"),
        ]
        .iter()
        .filter(|f| f.0)
        .map(|f| f.1)
        .collect();
        let fields = 2
            + usize::from(arg.token.is_some())
            + usize::from(!flags.is_empty())
            + usize::from(nested.is_some());
        out.map(fields);
        out.bulk(b"name");
        out.bulk(arg.name.as_bytes());
        out.bulk(b"type");
        out.bulk(arg.kind.as_str().as_bytes());
        if let Some(token) = arg.token {
            out.bulk(b"token");
            out.bulk(token.as_bytes());
        }
        if !flags.is_empty() {
            out.bulk(b"flags");
            out.set(flags.len());
            flags.iter().for_each(|f| out.simple(f));
        }
        if let Some(inner) = nested {
            out.bulk(b"arguments");
            write_args(inner, out);
        }
    }
}

/// The sidecar's parameters as CONFIG GET shows them.
fn params(node: &Node) -> Vec<(&'static str, String)> {
    let c = &node.config;
    vec![
        ("bind", node.listen_addr.ip().to_string()),
        ("port", node.listen_addr.port().to_string()),
        ("maxclients", c.maxclients.to_string()),
        ("maxmemory", c.maxmemory.to_string()),
        ("maxmemory-policy", "noeviction".into()),
        ("timeout", c.timeout.to_string()),
        ("proto-max-bulk-len", c.proto_max_bulk_len.to_string()),
        (
            "client-query-buffer-limit",
            c.client_query_buffer_limit.to_string(),
        ),
        (
            "client-output-buffer-limit",
            c.client_output_buffer_limit.words(),
        ),
        ("databases", "1".into()),
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("prefix", c.prefix.clone()),
        ("default-ttl", c.default_ttl.to_string()),
        (
            "node-id",
            String::from_utf8_lossy(node.sessions.node()).into_owned(),
        ),
        ("advertise", node.fleet.advertise().to_string()),
        ("max-args", c.max_args.to_string()),
        ("max-name-len", c.max_name_len.to_string()),
        ("max-value-len", c.max_value_len.to_string()),
        ("max-attrs", c.max_attrs.to_string()),
    ]
}

/// CONFIG GET (the sidecar's parameters; with an upstream, the upstream's
/// too) and CONFIG SET. The sidecar's own parameters are fixed at start:
/// setting one to the value it has is accepted (as redis-server accepts it),
/// to another refused; with an upstream, the pairs that are not the
/// sidecar's go to the upstream, whose reply is the client's.
pub async fn config(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let sub = args.required()?;
    if super::args::Keyword::of(sub).is("SET") {
        return config_set(node, args.rest(), out).await;
    }
    if !super::args::Keyword::of(sub).is("GET") {
        return Err(CommandError::err(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(sub)
        )));
    }
    if args.is_empty() {
        return Err(CommandError::err(
            "ERR wrong number of arguments for 'config|get' command",
        ));
    }
    let params = params(node);
    let asked = args.rest();
    let patterns: Vec<Vec<u8>> = asked.iter().map(|p| p.to_ascii_lowercase()).collect();
    let mut matching: Vec<(String, String)> = params
        .into_iter()
        .filter(|(name, _)| node.proxy.is_none() || crate::config::OWN_PARAMETERS.contains(name))
        .filter(|(name, _)| patterns.iter().any(|p| glob_match(p, name.as_bytes())))
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    if let Some(proxy) = &node.proxy {
        let upstream = proxy
            .config_get(asked)
            .await
            .map_err(|reply| upstream_error(&reply))?;
        matching.extend(
            upstream
                .into_iter()
                .filter(|(name, _)| !crate::config::OWN_PARAMETERS.contains(&name.as_str())),
        );
    }
    out.map(matching.len());
    for (name, value) in matching {
        out.bulk(name.as_bytes());
        out.bulk(value.as_bytes());
    }
    Ok(())
}

/// CONFIG SET name value [name value ...]. As Redis checks every pair
/// before it applies any: with an upstream, its pairs are checked (set) by
/// the upstream first, whose error, naming its argument, is the client's;
/// when one of the sidecar's own parameters cannot change, the upstream's
/// pairs are then put back as they were.
async fn config_set(
    node: &Node,
    pairs: &[bytes::Bytes],
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(CommandError::err(
            "ERR wrong number of arguments for 'config|set' command",
        ));
    }
    let own = params(node);
    let mut theirs: Vec<&[u8]> = Vec::new();
    let mut refused: Option<String> = None;
    for pair in pairs.chunks_exact(2) {
        let name = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
        if !crate::config::OWN_PARAMETERS.contains(&name.as_str()) {
            theirs.extend([&pair[0][..], &pair[1][..]]);
            continue;
        }
        let current = own
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str());
        if !current.is_some_and(|current| same_value(current, &pair[1])) && refused.is_none() {
            refused = Some(name);
        }
    }
    let immutable = |name: &str| {
        CommandError::err(format!(
            "ERR CONFIG SET failed (possibly related to argument '{name}') - can't set immutable config"
        ))
    };
    if theirs.is_empty() {
        return match refused {
            Some(name) => Err(immutable(&name)),
            None => {
                out.ok();
                Ok(())
            }
        };
    }
    let Some(proxy) = &node.proxy else {
        return Err(match refused {
            Some(name) => immutable(&name),
            None => {
                CommandError::err("ERR CONFIG SET is not supported: the configuration is read-only")
            }
        });
    };
    let names: Vec<bytes::Bytes> = theirs
        .iter()
        .step_by(2)
        .map(|n| bytes::Bytes::copy_from_slice(n))
        .collect();
    let before = match refused {
        Some(_) => proxy.config_get(&names).await.ok(),
        None => None,
    };
    let mut set: Vec<&[u8]> = vec![b"CONFIG", b"SET"];
    set.extend(&theirs);
    let reply = proxy.ask(out.protocol(), &set).await;
    let Some(name) = refused else {
        out.raw(&reply);
        return Ok(());
    };
    if reply.first() == Some(&b'-') {
        out.raw(&reply);
        return Ok(());
    }
    // Applied upstream, refused here: the upstream's values go back.
    if let Some(before) = before {
        let mut restore: Vec<&[u8]> = vec![b"CONFIG", b"SET"];
        for (name, value) in &before {
            restore.extend([name.as_bytes(), value.as_bytes()]);
        }
        let _ = proxy.ask(out.protocol(), &restore).await;
    }
    Err(immutable(&name))
}

/// Whether CONFIG SET's `given` is the value a parameter has: the same
/// text (case aside), or the same number of bytes (`1gb` is 1073741824).
fn same_value(current: &str, given: &[u8]) -> bool {
    let given = String::from_utf8_lossy(given);
    if current.eq_ignore_ascii_case(&given) {
        return true;
    }
    use crate::config::parse_memory;
    match (parse_memory(current), parse_memory(&given)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// TIME: seconds and microseconds.
pub fn time(out: &mut ReplyWriter) -> CommandResult {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    out.array(2);
    out.bulk(now.as_secs().to_string().as_bytes());
    out.bulk(now.subsec_micros().to_string().as_bytes());
    Ok(())
}
