//! Connection commands: PING, ECHO, HELLO, AUTH, QUIT, RESET, SELECT, CLIENT.

use super::{Args, CommandError, CommandResult};
use crate::protocol::{Protocol, ReplyWriter};
use crate::server::Shared;
use crate::server::client::ClientState;
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
    shared: &Shared,
    client: &mut ClientState,
    args: &mut Args,
    out: &mut ReplyWriter,
) -> CommandResult {
    let (user, password) = match args.remaining() {
        1 => (None, args.required()?),
        2 => (Some(args.required()?), args.required()?),
        _ => return Err(CommandError::Syntax),
    };
    if shared.config.requirepass.is_none() && user.is_none() {
        return Err(CommandError::err(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ));
    }
    authenticate(shared, client, user.map(|u| &u[..]), password)?;
    out.ok();
    Ok(())
}

fn authenticate(
    shared: &Shared,
    client: &mut ClientState,
    user: Option<&[u8]>,
    password: &[u8],
) -> CommandResult {
    let user_ok = user.is_none_or(|u| u == b"default");
    let password_ok = match &shared.config.requirepass {
        Some(expected) => constant_time_eq(expected.as_bytes(), password),
        // Without requirepass the default user takes any password, as Redis's `nopass`.
        None => true,
    };
    if user_ok && password_ok {
        client.authenticated = true;
        Ok(())
    } else {
        shared.metrics.auth_failures.inc();
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

/// HELLO [protover [AUTH username password] [SETNAME clientname]]
pub fn hello(
    shared: &Shared,
    client: &mut ClientState,
    args: &mut Args,
    out: &mut ReplyWriter,
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
        authenticate(shared, client, Some(user), password)?;
    }
    if !client.authenticated {
        return Err(CommandError::err(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        ));
    }
    if let Some(name) = name {
        set_name(client, name)?;
    }
    client.set_protocol(protocol);
    out.set_protocol(protocol);
    out.map(7);
    out.bulk(b"server");
    out.bulk(b"redis");
    out.bulk(b"version");
    out.bulk(crate::server::REDIS_VERSION.as_bytes());
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
pub fn reset(shared: &Shared, client: &mut ClientState, out: &mut ReplyWriter) -> CommandResult {
    super::pubsub::unsubscribe_all(shared, client);
    client.proxy.reset();
    client.sync_subscription_counts();
    client.set_protocol(Protocol::Resp2);
    out.set_protocol(Protocol::Resp2);
    *client.info.name.lock().unwrap_or_else(|p| p.into_inner()) = None;
    client.authenticated = shared.config.requirepass.is_none();
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
pub fn client(
    shared: &Shared,
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
        out.int(client.id() as i64);
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
        // CLIENT LIST [TYPE normal|pubsub|master|replica]
        let only_pubsub = match args.keyword() {
            None => None,
            Some(k) if k.is("TYPE") => {
                let kind = args.next().ok_or(CommandError::Syntax)?;
                let named = super::args::Keyword::of(kind);
                if named.is("NORMAL") {
                    Some(false)
                } else if named.is("PUBSUB") {
                    Some(true)
                } else if named.is("MASTER") || named.is("REPLICA") || named.is("SLAVE") {
                    // There are none: every client is a normal or pubsub one.
                    out.verbatim("");
                    return Ok(());
                } else {
                    return Err(CommandError::err(format!(
                        "ERR Unknown client type '{}'",
                        String::from_utf8_lossy(kind)
                    )));
                }
            }
            Some(_) => return Err(CommandError::Syntax),
        };
        args.finish()?;
        let now = now_ms();
        let mut text = String::new();
        for info in shared.clients.all() {
            if only_pubsub.is_some_and(|pubsub| pubsub != info.is_pubsub()) {
                continue;
            }
            text.push_str(&info.line(now));
            text.push('\n');
        }
        out.verbatim(&text);
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
