//! Connection commands: PING, ECHO, HELLO, AUTH, QUIT, RESET, SELECT, CLIENT.

use super::{Args, CommandError, CommandResult};
use crate::node::ClientState;
use crate::node::Node;
use crate::protocol::{Protocol, ReplyWriter};
use crate::store::now_ms;

pub fn ping(client: &ClientState, args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    let message = args.next();
    args.finish()
        .map_err(|_| CommandError::err("ERR wrong number of arguments for 'ping' command"))?;
    if client.in_resp2_pubsub() {
        out.array(2);
        out.bulk(b"pong");
        out.bulk(message.map_or(&b""[..], |m| m));
        return Ok(());
    }
    match message {
        Some(message) => out.bulk(message),
        None => out.simple("PONG"),
    }
    Ok(())
}

pub fn echo(args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    out.bulk(args.required()?);
    Ok(())
}

/// AUTH [username] password. Only the `default` user exists.
pub fn auth(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args,
    out: &mut ReplyWriter,
) -> CommandResult {
    let (user, password) = match args.remaining() {
        1 => (None, args.required()?),
        2 => (Some(args.required()?), args.required()?),
        _ => return Err(CommandError::Syntax),
    };
    if node.config.requirepass.is_none() && user.is_none() {
        return Err(CommandError::err(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ));
    }
    authenticate(node, client, user.map(|u| &u[..]), password)?;
    out.ok();
    Ok(())
}

fn authenticate(
    node: &Node,
    client: &mut ClientState,
    user: Option<&[u8]>,
    password: &[u8],
) -> CommandResult {
    let user_ok = user.is_none_or(|u| u == b"default");
    let password_ok = match &node.config.requirepass {
        Some(expected) => constant_time_eq(expected.as_bytes(), password),
        // Without requirepass the default user takes any password, as Redis's `nopass`.
        None => true,
    };
    if user_ok && password_ok {
        client.authenticated = true;
        Ok(())
    } else {
        node.metrics.auth_failures.inc();
        Err(CommandError::err(
            "WRONGPASS invalid username-password pair or user is disabled.",
        ))
    }
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// HELLO [protover [AUTH username password] [SETNAME clientname]]. The
/// version is the upstream's when there is one, as INFO's.
pub async fn hello(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    let mut protocol = client.protocol;
    if let Some(version) = args.next() {
        protocol = match crate::protocol::parse_i64(version) {
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => return Err(CommandError::err("NOPROTO unsupported protocol version")),
            None => {
                return Err(CommandError::err(
                    "ERR Protocol version is not an integer or out of range",
                ));
            }
        };
    }
    let mut name = None;
    let mut credentials = None;
    while let Some(keyword) = args.keyword() {
        if keyword.is("AUTH") && args.remaining() >= 2 {
            credentials = Some((args.required()?, args.required()?));
        } else if keyword.is("SETNAME") && args.remaining() >= 1 {
            name = Some(args.required()?);
        } else {
            return Err(CommandError::Syntax);
        }
    }
    if let Some((user, password)) = credentials {
        authenticate(node, client, Some(user), password)?;
    }
    if !client.authenticated {
        return Err(CommandError::err(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        ));
    }
    if let Some(name) = name {
        set_name(client, name)?;
    }
    let upstream_version = match &node.proxy {
        Some(proxy) => proxy.server_version().await,
        None => None,
    };
    let version = upstream_version
        .as_deref()
        .unwrap_or(crate::commands::REDIS_VERSION);
    client.set_protocol(protocol);
    out.set_protocol(protocol);
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"redis");
    out.bulk(b"version");
    out.bulk(version.as_bytes());
    out.bulk(b"proto");
    out.int(protocol.number());
    out.bulk(b"id");
    out.int(client.id() as i64);
    out.bulk(b"mode");
    out.bulk(b"standalone");
    out.bulk(b"role");
    out.bulk(b"master");
    out.bulk(b"modules");
    out.array(0);
    Ok(())
}

pub fn quit(client: &mut ClientState, out: &mut ReplyWriter) -> CommandResult {
    client.close = true;
    out.ok();
    Ok(())
}

/// RESET: back to a fresh connection's state.
pub fn reset(node: &Node, client: &mut ClientState, out: &mut ReplyWriter) -> CommandResult {
    super::pubsub::unsubscribe_all(node, client);
    client.proxy.reset();
    client.multi = None;
    client.watched.clear();
    // Tracking ends, as Redis's RESET ends it.
    if client.tracking.take().is_some() {
        node.tracking.disable(client.id());
    }
    client.caching = None;
    client.sync_subscription_counts();
    client.set_protocol(Protocol::Resp2);
    out.set_protocol(Protocol::Resp2);
    *client.info.name.lock().unwrap_or_else(|p| p.into_inner()) = None;
    client.authenticated = node.config.requirepass.is_none();
    client.peer = false;
    out.simple("RESET");
    Ok(())
}

pub fn select(args: &mut Args, out: &mut ReplyWriter) -> CommandResult {
    match args.integer()? {
        0 => {
            out.ok();
            Ok(())
        }
        _ => Err(CommandError::err("ERR DB index is out of range")),
    }
}

/// Printable ASCII without spaces, as Redis requires of client names.
fn printable(text: &[u8]) -> bool {
    text.iter().all(|c| (b'!'..=b'~').contains(c))
}

fn set_name(client: &ClientState, name: &[u8]) -> CommandResult {
    if !printable(name) {
        return Err(CommandError::err(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    let name = (!name.is_empty()).then(|| bytes::Bytes::copy_from_slice(name));
    *client.info.name.lock().unwrap_or_else(|p| p.into_inner()) = name;
    Ok(())
}

/// CLIENT ID | SETNAME | GETNAME | SETINFO | INFO | LIST | NO-EVICT | NO-TOUCH
/// A `TYPE` of CLIENT LIST and CLIENT KILL.
enum ClientType {
    /// `normal` (false) or `pubsub` (true).
    Pubsub(bool),
    /// `master`, `replica` or `slave`: there are none, every client is a
    /// normal or pubsub one.
    Replication,
}

fn client_type(kind: &[u8]) -> Result<ClientType, CommandError> {
    let named = super::args::Keyword::of(kind);
    if named.is("NORMAL") {
        Ok(ClientType::Pubsub(false))
    } else if named.is("PUBSUB") {
        Ok(ClientType::Pubsub(true))
    } else if named.is("MASTER") || named.is("REPLICA") || named.is("SLAVE") {
        Ok(ClientType::Replication)
    } else {
        Err(CommandError::err(format!(
            "ERR Unknown client type '{}'",
            String::from_utf8_lossy(kind)
        )))
    }
}

/// What CLIENT KILL answers: the old form (`ip:port`) +OK, the filter form
/// the number of clients killed.
enum Killed {
    Old,
    Count(usize),
}

impl Killed {
    fn reply(self, out: &mut ReplyWriter) {
        match self {
            Killed::Old => out.ok(),
            Killed::Count(n) => out.int(n as i64),
        }
    }
}

/// CLIENT KILL ip:port | [ID id] [TYPE normal|pubsub|master|replica]
/// [USER name] [ADDR ip:port] [LADDR ip:port] [SKIPME yes|no] ...: closes
/// the sidecar's clients that match every filter, as Redis does.
fn kill(node: &Node, client: &ClientState, args: &mut Args) -> Result<Killed, CommandError> {
    let rest = args.rest();
    if let [addr] = rest {
        let target = node
            .clients
            .all()
            .into_iter()
            .find(|c| c.addr.to_string().as_bytes() == &addr[..])
            .ok_or_else(|| CommandError::err("ERR No such client"))?;
        target.kill.cancel();
        return Ok(Killed::Old);
    }
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(CommandError::Syntax);
    }
    let mut id: Option<u64> = None;
    let mut pubsub: Option<bool> = None;
    let mut none_of_type = false;
    let mut addr: Option<&[u8]> = None;
    let mut laddr: Option<&[u8]> = None;
    let mut user: Option<&[u8]> = None;
    let mut skip_me = true;
    for pair in rest.chunks_exact(2) {
        let (filter, value) = (super::args::Keyword::of(&pair[0]), &pair[1][..]);
        if filter.is("ID") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            id = Some(
                parsed
                    .filter(|&n| n > 0)
                    .ok_or_else(|| CommandError::err("ERR client-id should be greater than 0"))?,
            );
        } else if filter.is("TYPE") {
            match client_type(value)? {
                ClientType::Pubsub(wanted) => pubsub = Some(wanted),
                ClientType::Replication => none_of_type = true,
            }
        } else if filter.is("ADDR") {
            addr = Some(value);
        } else if filter.is("LADDR") {
            laddr = Some(value);
        } else if filter.is("USER") {
            // The sidecar has one user, `default`, as a Redis without ACLs.
            if value != b"default" {
                return Err(CommandError::err(format!(
                    "ERR No such user '{}'",
                    String::from_utf8_lossy(value)
                )));
            }
            user = Some(value);
        } else if filter.is("SKIPME") {
            let answer = super::args::Keyword::of(value);
            skip_me = if answer.is("YES") {
                true
            } else if answer.is("NO") {
                false
            } else {
                return Err(CommandError::Syntax);
            };
        } else {
            return Err(CommandError::Syntax);
        }
    }
    if none_of_type {
        return Ok(Killed::Count(0));
    }
    let mut killed = 0;
    for info in node.clients.all() {
        let matches = id.is_none_or(|id| info.id == id)
            && pubsub.is_none_or(|pubsub| info.is_pubsub() == pubsub)
            && addr.is_none_or(|a| info.addr.to_string().as_bytes() == a)
            && laddr.is_none_or(|a| info.local_addr.to_string().as_bytes() == a)
            // Every client is the default user.
            && user.is_none_or(|u| u == b"default")
            && !(skip_me && info.id == client.id());
        if matches {
            info.kill.cancel();
            killed += 1;
        }
    }
    Ok(Killed::Count(killed))
}

pub fn client(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args,
    out: &mut ReplyWriter,
) -> CommandResult {
    let sub = args.required()?;
    let keyword = super::args::Keyword::of(sub);
    let arity_error = || {
        CommandError::err(format!(
            "ERR wrong number of arguments for 'client|{}' command",
            String::from_utf8_lossy(sub).to_lowercase()
        ))
    };
    if keyword.is("ID") {
        args.finish().map_err(|_| arity_error())?;
        // The id is what CLIENT TRACKING ... REDIRECT names: invalidations
        // sent here need the client's queue.
        let queue = client.subscriber();
        node.tracking.register_endpoint(client.id(), queue);
        out.int(client.id() as i64);
    } else if keyword.is("UNBLOCK") {
        // Standalone, no command blocks: no client is ever unblocked.
        // (With an upstream it is forwarded.)
        let _id = args.integer()?;
        if let Some(how) = args.keyword()
            && !(how.is("TIMEOUT") || how.is("ERROR"))
        {
            return Err(CommandError::err(
                "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
            ));
        }
        args.finish()?;
        out.int(0);
    } else if keyword.is("REPLY") {
        // CLIENT REPLY ON|OFF|SKIP. With an upstream, a forwarded command's
        // reply is awaited and dropped while replies are off (see
        // `server::connection`).
        let mode = super::args::Keyword::of(args.required()?);
        args.finish()?;
        if mode.is("ON") {
            client.reply = crate::node::ReplyMode::On;
            out.ok();
        } else if mode.is("OFF") {
            // Not even this OK is sent.
            client.reply = crate::node::ReplyMode::SkipThis(false);
        } else if mode.is("SKIP") {
            client.reply = crate::node::ReplyMode::SkipThis(true);
        } else {
            return Err(CommandError::Syntax);
        }
    } else if keyword.is("PAUSE") {
        // CLIENT PAUSE timeout [WRITE|ALL]; standalone, it holds the
        // session commands and PUBLISH, reads among them (they pass the gate
        // EXEC holds too).
        let timeout = args
            .integer()
            .map_err(|_| CommandError::err("ERR timeout is not an integer or out of range"))?;
        if let Some(mode) = args.keyword()
            && !(mode.is("WRITE") || mode.is("ALL"))
        {
            return Err(CommandError::Syntax);
        }
        args.finish()?;
        let timeout =
            u64::try_from(timeout).map_err(|_| CommandError::err("ERR timeout is negative"))?;
        node.pause_clients(timeout);
        out.ok();
    } else if keyword.is("UNPAUSE") {
        args.finish().map_err(|_| arity_error())?;
        node.unpause_clients();
        out.ok();
    } else if keyword.is("TRACKING") {
        super::tracking::tracking(node, client, args)?;
        out.ok();
    } else if keyword.is("CACHING") {
        super::tracking::caching(client, args)?;
        out.ok();
    } else if keyword.is("GETREDIR") {
        args.finish().map_err(|_| arity_error())?;
        super::tracking::getredir(client, out);
    } else if keyword.is("TRACKINGINFO") {
        args.finish().map_err(|_| arity_error())?;
        super::tracking::trackinginfo(node, client, out);
    } else if keyword.is("SETNAME") {
        let name = args.next().ok_or_else(arity_error)?;
        args.finish().map_err(|_| arity_error())?;
        set_name(client, name)?;
        out.ok();
    } else if keyword.is("GETNAME") {
        args.finish().map_err(|_| arity_error())?;
        let name = client
            .info
            .name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        out.bulk_or_null(name.as_deref());
    } else if keyword.is("SETINFO") {
        let (Some(attr), Some(value)) = (args.next(), args.next()) else {
            return Err(arity_error());
        };
        args.finish().map_err(|_| arity_error())?;
        let option = super::args::Keyword::of(attr);
        if !printable(value) {
            return Err(CommandError::err(format!(
                "ERR {} cannot contain spaces, newlines or special characters.",
                String::from_utf8_lossy(attr).to_lowercase()
            )));
        }
        // A copy: a slice would keep the whole read buffer alive.
        let value = bytes::Bytes::copy_from_slice(value);
        let mut lib = client.info.lib.lock().unwrap_or_else(|p| p.into_inner());
        if option.is("LIB-NAME") {
            lib.0 = Some(value);
        } else if option.is("LIB-VER") {
            lib.1 = Some(value);
        } else {
            return Err(CommandError::err(format!(
                "ERR Unrecognized option '{}'",
                String::from_utf8_lossy(attr)
            )));
        }
        out.ok();
    } else if keyword.is("INFO") {
        args.finish().map_err(|_| arity_error())?;
        out.verbatim(&(client.info.line(now_ms()) + "\n"));
    } else if keyword.is("LIST") {
        // CLIENT LIST [TYPE normal|pubsub|master|replica] [ID id [id ...]]
        let mut only_pubsub = None;
        let mut ids: Option<Vec<u64>> = None;
        while let Some(k) = args.keyword() {
            if k.is("TYPE") {
                let kind = args.next().ok_or(CommandError::Syntax)?;
                match client_type(kind)? {
                    ClientType::Pubsub(pubsub) => only_pubsub = Some(pubsub),
                    ClientType::Replication => {
                        out.verbatim("");
                        return Ok(());
                    }
                }
            } else if k.is("ID") && args.remaining() > 0 {
                let mut wanted = Vec::new();
                while let Some(id) = args.next() {
                    let id = std::str::from_utf8(id)
                        .ok()
                        .and_then(|id| id.parse::<u64>().ok())
                        .filter(|&id| id > 0)
                        .ok_or_else(|| CommandError::err("ERR Invalid client ID"))?;
                    wanted.push(id);
                }
                ids = Some(wanted);
            } else {
                return Err(CommandError::Syntax);
            }
        }
        let now = now_ms();
        let mut text = String::new();
        for info in node.clients.all() {
            if only_pubsub.is_some_and(|pubsub| pubsub != info.is_pubsub())
                || ids.as_ref().is_some_and(|ids| !ids.contains(&info.id))
            {
                continue;
            }
            text.push_str(&info.line(now));
            text.push('\n');
        }
        out.verbatim(&text);
    } else if keyword.is("KILL") {
        if args.remaining() == 0 {
            return Err(arity_error());
        }
        kill(node, client, args)?.reply(out);
    } else if keyword.is("NO-EVICT") || keyword.is("NO-TOUCH") {
        let mode = args.next().ok_or_else(arity_error)?;
        let mode = super::args::Keyword::of(mode);
        if !(mode.is("ON") || mode.is("OFF")) {
            return Err(CommandError::Syntax);
        }
        out.ok();
    } else {
        return Err(CommandError::err(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            String::from_utf8_lossy(sub)
        )));
    }
    Ok(())
}
