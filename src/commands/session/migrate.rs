//! SESSION.MIGRATE / DRAIN (handing sessions over) and SESSION.IMPORT /
//! PEERAUTH (the peer protocol of the sidecar taking them); see
//! [`crate::migrate`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::check_name;
use crate::commands::connection::constant_time_eq;
use crate::commands::{Args, CommandError, CommandResult};
use crate::migrate::{self, Selection, Target};
use crate::node::ClientState;
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::sessions::Sessions;
use crate::store::{Key, StoreError, now_ms, transfer};

/// SESSION.MIGRATE host port [AUTH secret] [TIMEOUT ms] <ALL | IDS id... | CONNS conn... | USERS user...>
pub async fn migrate(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let host = String::from_utf8_lossy(args.required()?).into_owned();
    let port = args.integer()?;
    if !(1..=65535).contains(&port) {
        return Err(CommandError::err("ERR Invalid port"));
    }
    let mut secret = node.config.peer_secret.clone();
    let mut timeout = Duration::from_millis(node.config.migrate_timeout_ms);
    let selection = loop {
        let Some(keyword) = args.keyword() else {
            return Err(CommandError::Syntax);
        };
        if keyword.is("AUTH") {
            secret = Some(String::from_utf8_lossy(args.required()?).into_owned());
        } else if keyword.is("TIMEOUT") {
            let ms = args.integer()?;
            if ms <= 0 {
                return Err(CommandError::err("ERR timeout is not positive"));
            }
            timeout = Duration::from_millis(ms as u64);
        } else if keyword.is("ALL") {
            args.finish()?;
            break Selection::All;
        } else {
            let list = args.rest().to_vec();
            if list.is_empty() {
                return Err(CommandError::Syntax);
            }
            break if keyword.is("IDS") {
                Selection::Ids(list)
            } else if keyword.is("CONNS") {
                Selection::Conns(list)
            } else if keyword.is("USERS") {
                Selection::Users(list)
            } else {
                return Err(CommandError::Syntax);
            };
        }
    };
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let target = Target {
        addr,
        secret,
        timeout,
        tls_ca: node.fleet.peer_tls_ca(),
    };
    match migrate::migrate(&node.migration, &target, &selection).await {
        Ok(outcome) if outcome.moved == 0 && outcome.error.is_some() => {
            Err(CommandError::err(format!(
                "ERR migration failed: {}",
                outcome.error.unwrap_or_default()
            )))
        }
        Ok(outcome) => {
            out.int(outcome.moved as i64);
            Ok(())
        }
        Err(error) => Err(CommandError::err(format!("ERR migration failed: {error}"))),
    }
}

/// SESSION.DRAIN [TIMEOUT ms]
pub async fn drain(node: &Node, args: &mut Args<'_>, out: &mut ReplyWriter<'_>) -> CommandResult {
    let mut timeout = Duration::from_millis(node.config.drain_timeout_ms);
    if let Some(keyword) = args.keyword() {
        if !keyword.is("TIMEOUT") {
            return Err(CommandError::Syntax);
        }
        let ms = args.integer()?;
        if ms <= 0 {
            return Err(CommandError::err("ERR timeout is not positive"));
        }
        timeout = Duration::from_millis(ms as u64);
        args.finish()?;
    }
    match node.drain(timeout).await {
        Ok(moved) => {
            out.int(moved as i64);
            Ok(())
        }
        Err(error) => Err(CommandError::err(format!("ERR drain incomplete: {error}"))),
    }
}

/// SESSION.PEERAUTH secret
pub fn peerauth(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let secret = args.required()?;
    match &node.config.peer_secret {
        Some(expected) if constant_time_eq(expected.as_bytes(), secret) => {
            // The peer secret is the fleet's own credential: it opens the
            // connection as the client password would.
            client.peer = true;
            client.authenticated = true;
        }
        Some(_) => {
            node.metrics.auth_failures.inc();
            return Err(CommandError::err("WRONGPASS invalid peer secret"));
        }
        // Without a peer secret any client may import; nothing to check.
        None => client.peer = true,
    }
    out.ok();
    Ok(())
}

/// SESSION.IMPORT source-node [id payload ...]
pub async fn import(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    if node.config.peer_secret.is_some() && !client.peer {
        return Err(CommandError::err(
            "NOPERM this connection did not authenticate as a peer (SESSION.PEERAUTH)",
        ));
    }
    if node.migration.is_draining() {
        return Err(StoreError::Draining.into());
    }
    let source = args.required()?.clone();
    let rest = args.rest();
    if !rest.len().is_multiple_of(2) {
        return Err(CommandError::err(
            "ERR wrong number of arguments for 'session.import' command",
        ));
    }
    let limits = *node.sessions.limits();
    let mut sessions = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks(2) {
        check_name(node, &pair[0], "id")?;
        let t = transfer::decode(&pair[1], &limits).map_err(|why| {
            CommandError::err(format!(
                "ERR invalid session payload for '{}': {why}",
                String::from_utf8_lossy(&pair[0])
            ))
        })?;
        sessions.push((Key::from(&pair[0][..]), t));
    }
    let now = now_ms();
    let taken = match &node.sessions {
        Sessions::Standalone(store) => store.import(sessions, now),
        Sessions::WriteThrough(store) => {
            let versions: Vec<(Key, u64)> = sessions
                .into_iter()
                .map(|(id, t)| (id, t.version))
                .collect();
            store.adopt(&source, &versions, now).await?
        }
    };
    let count = taken.iter().filter(|t| **t).count();
    node.migration
        .sessions_in
        .fetch_add(count as u64, Ordering::Relaxed);
    out.array(1 + taken.len());
    out.bulk(node.sessions.node());
    for t in taken {
        out.int(i64::from(t));
    }
    Ok(())
}
