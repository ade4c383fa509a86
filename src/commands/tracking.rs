//! CLIENT TRACKING, CACHING, GETREDIR and TRACKINGINFO over sessions: the
//! client's side of [`crate::tracking`]. Worded as Redis words them.
//!
//! Standalone, these are the whole answer. With an upstream they are
//! forwarded (the upstream tracks ordinary keys, and its reply is the
//! client's) and [`note`] applies them here too, for sessions.

use bytes::Bytes;

use super::args::Keyword;
use super::{Args, CommandError};
use crate::node::{ClientState, Node};
use crate::protocol::ReplyWriter;
use crate::protocol::command_table::Cmd;
use crate::tracking::Mode;

/// `CLIENT TRACKING ON|OFF [REDIRECT id] [PREFIX p ...] [BCAST] [OPTIN]
/// [OPTOUT] [NOLOOP]`, after the subcommand.
pub fn tracking(
    node: &Node,
    client: &mut ClientState,
    args: &mut Args,
) -> Result<(), CommandError> {
    let switch = args.required()?;
    let mut mode = Mode::default();
    while let Some(option) = args.keyword() {
        if option.is("REDIRECT") {
            let id = args.integer()?;
            mode.redirect = Some(u64::try_from(id).map_err(|_| CommandError::NotInteger)?)
                .filter(|&id| id != 0);
        } else if option.is("PREFIX") {
            mode.prefixes.push(args.required()?.clone());
        } else if option.is("BCAST") {
            mode.bcast = true;
        } else if option.is("OPTIN") {
            mode.optin = true;
        } else if option.is("OPTOUT") {
            mode.optout = true;
        } else if option.is("NOLOOP") {
            mode.noloop = true;
        } else {
            return Err(CommandError::Syntax);
        }
    }
    let switch = Keyword::of(switch);
    if switch.is("OFF") {
        client.tracking = None;
        client.caching = None;
        node.tracking.disable(client.id());
        return Ok(());
    }
    if !switch.is("ON") {
        return Err(CommandError::Syntax);
    }
    if !mode.bcast && !mode.prefixes.is_empty() {
        return Err(CommandError::err(
            "ERR PREFIX option requires BCAST mode to be enabled",
        ));
    }
    if let Some(old) = &client.tracking
        && old.bcast != mode.bcast
    {
        return Err(CommandError::err(
            "ERR You can't switch BCAST mode on/off before disabling tracking for this client, and then re-enabling it with a different mode.",
        ));
    }
    if mode.bcast && (mode.optin || mode.optout) {
        return Err(CommandError::err(
            "ERR OPTIN and OPTOUT are not compatible with BCAST",
        ));
    }
    if mode.optin && mode.optout {
        return Err(CommandError::err("ERR You can't use both OPTIN and OPTOUT"));
    }
    if let Some(old) = &client.tracking
        && ((mode.optin && old.optout) || (mode.optout && old.optin))
    {
        return Err(CommandError::err(
            "ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.",
        ));
    }
    if let Some(target) = mode.redirect
        && !node.clients.contains(target)
    {
        return Err(CommandError::err(
            "ERR The client ID you want redirect to does not exist",
        ));
    }
    // Prefixes add up while tracking stays on in BCAST mode, as in Redis.
    if let Some(old) = &client.tracking {
        for prefix in &old.prefixes {
            if !mode.prefixes.contains(prefix) {
                mode.prefixes.push(prefix.clone());
            }
        }
    }
    // Its own queue, also when it redirects: a broken redirection is told
    // to the client itself.
    let queue = client.subscriber();
    node.tracking.register_endpoint(client.id(), queue);
    node.tracking.enable(client.id(), mode.clone());
    client.tracking = Some(mode);
    Ok(())
}

/// `CLIENT CACHING YES|NO`, after the subcommand.
pub fn caching(client: &mut ClientState, args: &mut Args) -> Result<(), CommandError> {
    let answer = Keyword::of(args.required()?);
    args.finish()?;
    let Some(mode) = client.tracking.as_ref().filter(|m| m.optin || m.optout) else {
        return Err(CommandError::err(
            "ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled",
        ));
    };
    if answer.is("YES") {
        if !mode.optin {
            return Err(CommandError::err(
                "ERR CLIENT CACHING YES is only valid when tracking is enabled in OPTIN mode.",
            ));
        }
        client.caching = Some(true);
    } else if answer.is("NO") {
        if !mode.optout {
            return Err(CommandError::err(
                "ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.",
            ));
        }
        client.caching = Some(false);
    } else {
        return Err(CommandError::Syntax);
    }
    Ok(())
}

/// `CLIENT GETREDIR`: -1 when not tracking, 0 without a redirection.
pub fn getredir(client: &ClientState, out: &mut ReplyWriter) {
    out.int(match &client.tracking {
        None => -1,
        Some(mode) => mode.redirect.map_or(0, |id| id as i64),
    });
}

/// `CLIENT TRACKINGINFO`: flags, redirect, prefixes.
pub fn trackinginfo(node: &Node, client: &ClientState, out: &mut ReplyWriter) {
    let mut flags: Vec<&str> = Vec::new();
    match &client.tracking {
        None => flags.push("off"),
        Some(mode) => {
            flags.push("on");
            if mode.bcast {
                flags.push("bcast");
            }
            if mode.optin {
                flags.push("optin");
                if client.caching == Some(true) {
                    flags.push("caching-yes");
                }
            }
            if mode.optout {
                flags.push("optout");
                if client.caching == Some(false) {
                    flags.push("caching-no");
                }
            }
            if mode.noloop {
                flags.push("noloop");
            }
            if mode.redirect.is_some_and(|id| !node.clients.contains(id)) {
                flags.push("broken_redirect");
            }
        }
    }
    out.map(3);
    out.bulk(b"flags");
    out.set(flags.len());
    for flag in flags {
        out.bulk(flag.as_bytes());
    }
    out.bulk(b"redirect");
    getredir(client, out);
    out.bulk(b"prefixes");
    match client.tracking.as_ref() {
        // BCAST without a prefix is Redis's one empty prefix.
        Some(mode) if mode.bcast && mode.prefixes.is_empty() => {
            out.array(1);
            out.bulk(b"");
        }
        mode => {
            let prefixes = mode.map_or(&[][..], |m| &m.prefixes[..]);
            out.array(prefixes.len());
            for prefix in prefixes {
                out.bulk(prefix);
            }
        }
    }
}

/// With an upstream, a forwarded CLIENT TRACKING or CACHING: applied here
/// too, for sessions (the upstream's reply is the one the client gets; a
/// REDIRECT, which names a client of the sidecar, was sent to the upstream
/// as the id of that client's own upstream connection:
/// [`super::upstream_redirect`]).
pub fn note(node: &Node, client: &mut ClientState, argv: &[Bytes]) {
    let Some(sub) = argv.get(1) else { return };
    let mut args = Args::new(&argv[2..]);
    let sub = Keyword::of(sub);
    if sub.is("TRACKING") {
        let _ = tracking(node, client, &mut args);
    } else if sub.is("CACHING") {
        let _ = caching(client, &mut args);
    }
}

/// After a command ran: the sessions it read are remembered for a client
/// tracking in default mode (as OPTIN/OPTOUT and CLIENT CACHING allow),
/// the sessions it changed are invalidated for every tracking client.
pub fn after(node: &Node, client: &mut ClientState, cmd: Cmd, argv: &[Bytes]) {
    let reads = matches!(
        cmd,
        Cmd::SessionGet | Cmd::SessionAttrGet | Cmd::SessionTtl | Cmd::SessionExists
    );
    if reads {
        if let Some(mode) = &client.tracking
            && !mode.bcast
            && remembers(mode, client.caching)
        {
            let ids = match cmd {
                Cmd::SessionExists => &argv[1..],
                _ => argv.get(1..2).unwrap_or(&[]),
            };
            for id in ids {
                node.tracking.read(client.id(), id);
            }
        }
    } else if node.tracking.any() {
        let changed = match cmd {
            Cmd::SessionAttrSet
            | Cmd::SessionAttrDel
            | Cmd::SessionAttrIncrby
            | Cmd::SessionUpdate
            | Cmd::SessionExpire
            | Cmd::SessionBind
            | Cmd::SessionUnbind => argv.get(1..2).unwrap_or(&[]),
            Cmd::SessionDel => &argv[1..],
            Cmd::SessionCreate => created_id(argv),
            _ => &[],
        };
        for id in changed {
            node.tracking.invalidate(id, Some(client.id()));
        }
    }
}

/// Whether a command is CLIENT CACHING, whose answer holds for the next
/// command.
pub fn sets_caching(cmd: Cmd, argv: &[Bytes]) -> bool {
    cmd == Cmd::Client
        && argv
            .get(1)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"caching"))
}

/// OPTIN remembers only after CACHING yes; OPTOUT unless after CACHING no.
fn remembers(mode: &Mode, caching: Option<bool>) -> bool {
    if mode.optin {
        caching == Some(true)
    } else if mode.optout {
        caching != Some(false)
    } else {
        true
    }
}

/// The `ID` a SESSION.CREATE names, if any (a generated one was never read).
fn created_id(argv: &[Bytes]) -> &[Bytes] {
    argv.iter()
        .position(|a| a.eq_ignore_ascii_case(b"id"))
        .and_then(|i| argv.get(i + 1..i + 2))
        .unwrap_or(&[])
}
