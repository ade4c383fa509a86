//! Commands: one dispatcher, one argument cursor, one place errors are worded.
//!
//! Every request gets exactly one reply, written by [`execute`] before it
//! returns (pub/sub commands write one reply per channel, as Redis does).
//!
//! Layer 13 of 15 (the order is in `tests/layers.rs`). Uses `node` and
//! everything below it.

mod args;
pub mod cluster;
mod connection;
mod pubsub;
pub use pubsub::unsubscribe_all;
pub mod server;
mod session;
mod tracking;
mod transaction;

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::protocol::command_table::{self as table, Cmd};
pub use args::Args;

use crate::node::ClientState;
use crate::node::Node;
use crate::protocol::ReplyWriter;
use crate::store::StoreError;

/// The Redis version reported to clients (HELLO, INFO), for the clients that
/// gate features on it; the sidecar's own version is in INFO server.
pub const REDIS_VERSION: &str = "7.2.0";

/// Why a command was refused; [`CommandError::message`] is its wire wording.
#[derive(Debug)]
pub enum CommandError {
    Syntax,
    NotInteger,
    /// A complete message, code first (`ERR ...`, `NOSESSION ...`).
    Message(String),
    Store(StoreError),
}

impl CommandError {
    pub fn message(&self) -> String {
        match self {
            CommandError::Syntax => "ERR syntax error".into(),
            CommandError::NotInteger => "ERR value is not an integer or out of range".into(),
            CommandError::Message(m) => m.clone(),
            CommandError::Store(e) => e.message(),
        }
    }

    pub fn err(message: impl Into<String>) -> Self {
        CommandError::Message(message.into())
    }
}

impl From<StoreError> for CommandError {
    fn from(e: StoreError) -> Self {
        CommandError::Store(e)
    }
}

pub type CommandResult = Result<(), CommandError>;

/// Runs one request and writes its reply. Inside MULTI, a command is
/// checked and queued instead (`transaction.rs`).
/// Returns the command's kind, when the sidecar knows it (for its latency).
pub async fn execute(
    node: &Node,
    client: &mut ClientState,
    argv: &[Bytes],
    out: &mut ReplyWriter<'_>,
) -> Option<Cmd> {
    let name = argv.first()?;
    let spec = table::lookup(name);
    run(node, client, argv, name, spec, out).await;
    spec.map(|spec| spec.cmd)
}

async fn run(
    node: &Node,
    client: &mut ClientState,
    argv: &[Bytes],
    name: &Bytes,
    spec: Option<&'static table::CommandSpec>,
    out: &mut ReplyWriter<'_>,
) {
    let Some(spec) = spec else {
        // Refused at queue time: the transaction is aborted, as in Redis.
        client.flag_transaction();
        if node.proxy.is_some() && client.authenticated && crate::proxy::refuses(name) {
            out.error(crate::proxy::REFUSED_REPLICATION);
            return;
        }
        if node.proxy.is_some() && !client.authenticated {
            // With an upstream, an unknown command is forwarded once the
            // client has authenticated.
            out.error("NOAUTH Authentication required.");
            return;
        }
        node.metrics.unknown_commands.inc();
        out.error(&unknown_command(name, &argv[1..]));
        return;
    };
    node.metrics.command(spec.cmd);
    client.info.note_command(spec.cmd, argv);

    if let Err(refusal) = admit(node, client, spec, argv) {
        client.flag_transaction();
        out.error(&refusal);
        return;
    }
    match spec.cmd {
        Cmd::Multi => return transaction::multi(node, client, out),
        Cmd::Exec => return Box::pin(transaction::exec(node, client, out)).await,
        Cmd::Discard => return Box::pin(transaction::discard(node, client, out)).await,
        Cmd::Watch => return Box::pin(transaction::watch(node, client, argv, out)).await,
        Cmd::Quit | Cmd::Reset => {}
        _ if client.multi.is_some() => return transaction::queue(client, argv, out),
        _ => {}
    }
    // Standalone, an EXEC runs its commands with no other client's session
    // command or PUBLISH between them, and CLIENT PAUSE holds those. The
    // connection and server commands (HELLO, CLIENT, INFO...) pass: they
    // touch no session, and a paused sidecar still takes connections.
    let gated = spec.name.starts_with("session.") || spec.cmd == Cmd::Publish;
    let _beside_others = match node.sessions {
        crate::sessions::Sessions::Standalone(_) if gated => Some(node.gate.shared().await),
        _ => None,
    };
    dispatch(node, client, spec, argv, out).await;
    // CLIENT CACHING's answer holds for the next command (or transaction).
    if !tracking::sets_caching(spec.cmd, argv) {
        client.caching = None;
    }
}

/// Why a known command may not run now, in Redis's words; in a
/// transaction, found at queue time.
fn admit(
    node: &Node,
    client: &ClientState,
    spec: &table::CommandSpec,
    argv: &[Bytes],
) -> Result<(), String> {
    if !spec.accepts(argv.len()) {
        return Err(format!(
            "ERR wrong number of arguments for '{}' command",
            spec.name
        ));
    }
    if !client.authenticated && !spec.no_auth() {
        return Err("NOAUTH Authentication required.".into());
    }
    if client.in_resp2_pubsub() && !spec.in_pubsub_context() {
        return Err(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            spec.name
        ));
    }
    let maxmemory = node.config.maxmemory;
    if maxmemory > 0
        && spec.denies_oom()
        && node.sessions.refuses_writes_past_maxmemory()
        && node.sessions.memory() as u64 > maxmemory
    {
        node.metrics.oom_rejections.inc();
        return Err("OOM command not allowed when used memory > 'maxmemory'.".into());
    }
    Ok(())
}

/// The commands [`is_session_write`] names, as a pattern.
macro_rules! session_writes {
    () => {
        Cmd::SessionCreate
            | Cmd::SessionAttrSet
            | Cmd::SessionAttrDel
            | Cmd::SessionAttrIncrby
            | Cmd::SessionUpdate
            | Cmd::SessionTouch
            | Cmd::SessionExpire
            | Cmd::SessionDel
            | Cmd::SessionBind
            | Cmd::SessionUnbind
    };
}

/// Runs an admitted command (at once, or queued, at EXEC).
async fn dispatch(
    node: &Node,
    client: &mut ClientState,
    spec: &table::CommandSpec,
    argv: &[Bytes],
    out: &mut ReplyWriter<'_>,
) {
    let mut args = Args::new(&argv[1..]);
    let result = match spec.cmd {
        Cmd::Ping => connection::ping(client, &mut args, out),
        Cmd::Echo => connection::echo(&mut args, out),
        Cmd::Hello => connection::hello(node, client, &mut args, out).await,
        Cmd::Auth => connection::auth(node, client, &mut args, out),
        Cmd::Quit => connection::quit(client, out),
        Cmd::Reset => connection::reset(node, client, out),
        Cmd::Select => connection::select(&mut args, out),
        Cmd::Client => connection::client(node, client, &mut args, out),
        Cmd::Info => Box::pin(server::info(node, &mut args, out)).await,
        Cmd::Command => match &node.proxy {
            Some(proxy) => server::command_with_upstream(proxy, &mut args, out).await,
            None => server::command(&mut args, out),
        },
        Cmd::Config => server::config(node, &mut args, out).await,
        Cmd::Time => server::time(out),
        Cmd::Cluster => cluster::cluster(node, &mut args, out),
        // Transactions are run by `execute`; inside EXEC they are not queued.
        Cmd::Multi | Cmd::Exec | Cmd::Discard | Cmd::Watch => Err(CommandError::err(format!(
            "ERR Command not allowed inside a transaction: '{}'",
            spec.name
        ))),
        Cmd::Unwatch => Box::pin(transaction::unwatch(node, client, argv, out)).await,
        Cmd::Subscribe => pubsub::subscribe(node, client, &mut args, out).await,
        Cmd::Unsubscribe => pubsub::unsubscribe(node, client, &mut args, out),
        Cmd::Psubscribe => pubsub::psubscribe(node, client, &mut args, out).await,
        Cmd::Punsubscribe => pubsub::punsubscribe(node, client, &mut args, out),
        Cmd::Publish => pubsub::publish(node, &mut args, out),
        session_writes!() => session_write(node, spec.cmd, &mut args, out).await,
        Cmd::SessionGet => session::get(node, &mut args, out).await,
        Cmd::SessionExists => session::exists(node, &mut args, out).await,
        Cmd::SessionAttrGet => session::attr_get(node, &mut args, out).await,
        Cmd::SessionTtl => session::ttl(node, &mut args, out).await,
        Cmd::SessionByconn => session::byconn(node, &mut args, out).await,
        Cmd::SessionByuser => session::byuser(node, &mut args, out).await,
        Cmd::SessionKilluser => session::killuser(node, &mut args, out).await,
        Cmd::SessionCount => session::count(node, &mut args, out).await,
        Cmd::SessionStreams => session::streams(node, out),
        Cmd::SessionNodes => session::nodes(node, out).await,
        Cmd::SessionMigrate => session::migrate(node, &mut args, out).await,
        Cmd::SessionImport => session::import(node, client, &mut args, out).await,
        Cmd::SessionDrain => session::drain(node, &mut args, out).await,
        Cmd::SessionPeerauth => session::peerauth(node, client, &mut args, out),
    };
    report(node, result, out);
    after_command(node, client, spec.cmd, argv);
}

/// What CLIENT TRACKING notes after a command ran: the sessions it read or
/// changed.
fn after_command(node: &Node, client: &mut ClientState, cmd: Cmd, argv: &[Bytes]) {
    if client.tracking.is_some() || node.tracking.any() {
        tracking::after(node, client, cmd, argv);
    }
}

/// A command's error, as its reply (and counted).
fn report(node: &Node, result: CommandResult, out: &mut ReplyWriter<'_>) {
    if let Err(error) = result {
        node.metrics.command_errors.inc();
        out.error(&error.message());
    }
}

/// The SESSION.* writes of one session (or a list of them, DEL) that need
/// nothing of the client: with an upstream, those EXEC sends together in
/// one script call ([`crate::upstream::Batch`]).
pub(crate) fn is_session_write(cmd: Cmd) -> bool {
    matches!(cmd, session_writes!())
}

/// Runs a queued command [`is_session_write`] names, on its own reply
/// buffer (EXEC runs several at once: see `transaction.rs`). The caller
/// calls [`after_command`] for each, in the order they were queued.
pub(crate) async fn queued_session_write(
    node: &Node,
    cmd: Cmd,
    argv: &[Bytes],
    protocol: crate::protocol::Protocol,
) -> bytes::BytesMut {
    let mut reply = bytes::BytesMut::new();
    let mut out = ReplyWriter::new(&mut reply, protocol);
    let result = session_write(node, cmd, &mut Args::new(&argv[1..]), &mut out).await;
    report(node, result, &mut out);
    reply
}

/// Runs one of the commands [`is_session_write`] names.
async fn session_write(
    node: &Node,
    cmd: Cmd,
    args: &mut Args<'_>,
    out: &mut ReplyWriter<'_>,
) -> CommandResult {
    match cmd {
        Cmd::SessionCreate => session::create(node, args, out).await,
        Cmd::SessionAttrSet => session::attr_set(node, args, out).await,
        Cmd::SessionAttrDel => session::attr_del(node, args, out).await,
        Cmd::SessionAttrIncrby => session::attr_incrby(node, args, out).await,
        Cmd::SessionUpdate => session::update(node, args, out).await,
        Cmd::SessionTouch => session::touch(node, args, out).await,
        Cmd::SessionExpire => session::expire(node, args, out).await,
        Cmd::SessionDel => session::del(node, args, out).await,
        Cmd::SessionBind => session::bind(node, args, out).await,
        Cmd::SessionUnbind => session::unbind(node, args, out).await,
        _ => Err(CommandError::err("ERR unknown command")),
    }
}

/// With an upstream, a CLIENT command naming another client as the
/// upstream must see it: the id of that client's own upstream connection
/// (its pinned one: the SUBSCRIBE to `__redis__:invalidate` that a REDIRECT
/// names, the blocking command UNBLOCK ends). `CLIENT TRACKING ... REDIRECT
/// <id>` and `CLIENT UNBLOCK <id>`. A client with no upstream connection,
/// or none at all, becomes an id no upstream client has (REDIRECT is then
/// refused, and UNBLOCK answers 0, as Redis does for a client that is not
/// blocked): the sidecar's id could name another client there. None when
/// nothing changes.
pub fn upstream_redirect(node: &Node, argv: &[Bytes]) -> Option<Redirected> {
    let is = |i: usize, word: &[u8]| argv.get(i).is_some_and(|a| a.eq_ignore_ascii_case(word));
    if !is(0, b"client") {
        return None;
    }
    let tracking = is(1, b"tracking");
    let at = if tracking {
        (2..argv.len()).find(|&i| is(i, b"redirect"))? + 1
    } else if is(1, b"unblock") {
        2
    } else {
        return None;
    };
    let target: u64 = crate::protocol::parse_i64(argv.get(at)?)?.try_into().ok()?;
    let upstream_id = node
        .clients
        .get(target)
        .map(|c| c.upstream_id.load(Ordering::Relaxed))
        .filter(|&id| id >= 0);
    let mut sent = argv.to_vec();
    sent[at] = Bytes::from(upstream_id.unwrap_or(i64::MAX).to_string());
    Some(Redirected {
        argv: sent,
        refused: tracking && upstream_id.is_none(),
    })
}

/// A CLIENT command as [`upstream_redirect`] rewrote it for the upstream.
pub struct Redirected {
    pub argv: Vec<Bytes>,
    /// A REDIRECT to an id no upstream client has: the upstream refuses it,
    /// so the sidecar does not track for the client either.
    pub refused: bool,
}

/// With an upstream, a forwarded command that also changes what the
/// sidecar tracks for the client (CLIENT TRACKING, CACHING).
pub fn note_forwarded(node: &Node, client: &mut ClientState, argv: &[Bytes]) {
    if argv
        .first()
        .is_some_and(|name| name.eq_ignore_ascii_case(b"client"))
    {
        tracking::note(node, client, argv);
    }
    if !tracking::sets_caching(Cmd::Client, argv) {
        client.caching = None;
    }
}

/// Redis's wording for an unknown command.
fn unknown_command(name: &[u8], args: &[Bytes]) -> String {
    let mut listed = String::new();
    for arg in args {
        if listed.len() >= 128 {
            break;
        }
        let text = String::from_utf8_lossy(arg);
        let room = 128 - listed.len();
        let text: String = text.chars().take(room).collect();
        listed.push_str(&format!("'{text}' "));
    }
    format!(
        "ERR unknown command '{}', with args beginning with: {listed}",
        String::from_utf8_lossy(&name[..name.len().min(128)])
    )
}
