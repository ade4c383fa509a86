//! The command table: every command the sidecar answers itself, with the
//! metadata COMMAND INFO/DOCS report (so redis-cli shows argument hints) and
//! the arity the dispatcher checks.

use std::collections::HashMap;
use std::sync::LazyLock;

/// Which handler runs a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Ping,
    Echo,
    Hello,
    Auth,
    Quit,
    Reset,
    Select,
    Client,
    Info,
    Command,
    Config,
    Time,
    Cluster,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Subscribe,
    Unsubscribe,
    Psubscribe,
    Punsubscribe,
    Publish,
    SessionCreate,
    SessionGet,
    SessionExists,
    SessionAttrSet,
    SessionAttrGet,
    SessionAttrDel,
    SessionAttrIncrby,
    SessionUpdate,
    SessionTouch,
    SessionTtl,
    SessionExpire,
    SessionDel,
    SessionBind,
    SessionUnbind,
    SessionByconn,
    SessionByuser,
    SessionKilluser,
    SessionCount,
    SessionNodes,
    SessionStreams,
    SessionMigrate,
    SessionImport,
    SessionDrain,
    SessionPeerauth,
}

/// One argument in COMMAND DOCS.
pub struct Arg {
    pub name: &'static str,
    pub kind: ArgKind,
    pub token: Option<&'static str>,
    pub optional: bool,
    pub multiple: bool,
    /// The token repeats with each occurrence (`ATTR a 1 ATTR b 2`).
    pub multiple_token: bool,
}

pub enum ArgKind {
    String,
    Integer,
    Key,
    PureToken,
    OneOf(&'static [Arg]),
    Block(&'static [Arg]),
}

impl ArgKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ArgKind::String => "string",
            ArgKind::Integer => "integer",
            ArgKind::Key => "key",
            ArgKind::PureToken => "pure-token",
            ArgKind::OneOf(_) => "oneof",
            ArgKind::Block(_) => "block",
        }
    }
}

const fn arg(name: &'static str, kind: ArgKind) -> Arg {
    Arg {
        name,
        kind,
        token: None,
        optional: false,
        multiple: false,
        multiple_token: false,
    }
}
const fn key(name: &'static str) -> Arg {
    arg(name, ArgKind::Key)
}
const fn string(name: &'static str) -> Arg {
    arg(name, ArgKind::String)
}
const fn integer(name: &'static str) -> Arg {
    arg(name, ArgKind::Integer)
}
/// `TOKEN value`
const fn tokened(token: &'static str, name: &'static str, kind: ArgKind) -> Arg {
    Arg {
        token: Some(token),
        ..arg(name, kind)
    }
}
/// `[TOKEN value]`
const fn opt(token: &'static str, name: &'static str, kind: ArgKind) -> Arg {
    optional(tokened(token, name, kind))
}
/// `[TOKEN]`
const fn flag(token: &'static str) -> Arg {
    opt(token, token, ArgKind::PureToken)
}
/// `[TOKEN value [TOKEN value ...]]`: an option that repeats, token and all.
const fn repeated(token: &'static str, name: &'static str, kind: ArgKind) -> Arg {
    Arg {
        multiple: true,
        multiple_token: true,
        ..opt(token, name, kind)
    }
}
const fn many(arg: Arg) -> Arg {
    Arg {
        multiple: true,
        ..arg
    }
}
const fn optional(arg: Arg) -> Arg {
    Arg {
        optional: true,
        ..arg
    }
}

const NAME_VALUE: &[Arg] = &[string("name"), string("value")];
/// `[TTL seconds | PTTL milliseconds]`: the choices themselves are not optional.
const TTL_CHOICE: &[Arg] = &[
    tokened("TTL", "seconds", ArgKind::Integer),
    tokened("PTTL", "milliseconds", ArgKind::Integer),
];
const EXPIRATION: Arg = optional(arg("expiration", ArgKind::OneOf(TTL_CHOICE)));
/// `ALL | IDS id [id ...] | CONNS conn [conn ...] | USERS user [user ...]`
const MIGRATE_SELECTION: &[Arg] = &[
    tokened("ALL", "all", ArgKind::PureToken),
    many(tokened("IDS", "id", ArgKind::Key)),
    many(tokened("CONNS", "conn", ArgKind::String)),
    many(tokened("USERS", "user", ArgKind::String)),
];
const STATUS_CHOICE: &[Arg] = &[
    tokened("ACTIVE", "active", ArgKind::PureToken),
    tokened("DISCONNECTED", "disconnected", ArgKind::PureToken),
];

pub struct CommandSpec {
    pub name: &'static str,
    pub cmd: Cmd,
    /// Redis convention: positive = exact count, negative = at least -arity
    /// (the command name included).
    pub arity: i32,
    pub flags: &'static [&'static str],
    pub group: &'static str,
    pub summary: &'static str,
    pub args: &'static [Arg],
}

impl CommandSpec {
    pub fn accepts(&self, argc: usize) -> bool {
        let argc = argc as i32;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    pub fn denies_oom(&self) -> bool {
        self.flags.contains(&"denyoom")
    }

    /// Allowed before AUTH.
    pub fn no_auth(&self) -> bool {
        self.flags.contains(&"no_auth")
    }

    /// Allowed in RESP2 subscribed mode.
    pub fn in_pubsub_context(&self) -> bool {
        matches!(
            self.cmd,
            Cmd::Subscribe
                | Cmd::Unsubscribe
                | Cmd::Psubscribe
                | Cmd::Punsubscribe
                | Cmd::Ping
                | Cmd::Quit
                | Cmd::Reset
        )
    }
}

const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "denyoom", "fast"];
const DELETE: &[&str] = &["write", "fast"];
const CONNECTION: &[&str] = &["fast", "loading", "stale"];

macro_rules! command {
    ($name:literal, $cmd:ident, $arity:literal, $flags:expr, $group:literal, $summary:literal, [$($arg:expr),* $(,)?]) => {
        CommandSpec { name: $name, cmd: Cmd::$cmd, arity: $arity, flags: $flags, group: $group, summary: $summary, args: &[$($arg),*] }
    };
}

pub static COMMANDS: &[CommandSpec] = &[
    command!(
        "ping",
        Ping,
        -1,
        CONNECTION,
        "connection",
        "Returns the server's liveliness response.",
        [optional(string("message"))]
    ),
    command!(
        "echo",
        Echo,
        2,
        CONNECTION,
        "connection",
        "Returns the given string.",
        [string("message")]
    ),
    command!(
        "hello",
        Hello,
        -1,
        &["fast", "no_auth", "loading", "stale"],
        "connection",
        "Handshakes with the server: protocol version, AUTH, SETNAME.",
        [optional(arg(
            "arguments",
            ArgKind::Block(&[
                integer("protover"),
                opt(
                    "AUTH",
                    "auth",
                    ArgKind::Block(&[string("username"), string("password")])
                ),
                opt("SETNAME", "clientname", ArgKind::String),
            ])
        )),]
    ),
    command!(
        "auth",
        Auth,
        -2,
        &["fast", "no_auth", "loading", "stale"],
        "connection",
        "Authenticates the connection.",
        [optional(string("username")), string("password")]
    ),
    command!(
        "quit",
        Quit,
        -1,
        &["fast", "no_auth", "loading", "stale"],
        "connection",
        "Closes the connection.",
        []
    ),
    command!(
        "reset",
        Reset,
        1,
        &["fast", "no_auth", "loading", "stale"],
        "connection",
        "Resets the connection.",
        []
    ),
    command!(
        "multi",
        Multi,
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        "transactions",
        "Starts a transaction.",
        []
    ),
    command!(
        "exec",
        Exec,
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        "transactions",
        "Executes all commands in a transaction.",
        []
    ),
    command!(
        "discard",
        Discard,
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        "transactions",
        "Discards a transaction.",
        []
    ),
    command!(
        "watch",
        Watch,
        -2,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        "transactions",
        "Monitors changes to keys (and sessions) to determine the execution of a transaction.",
        [many(key("key"))]
    ),
    command!(
        "unwatch",
        Unwatch,
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        "transactions",
        "Forgets about watched keys of a transaction.",
        []
    ),
    command!(
        "select",
        Select,
        2,
        CONNECTION,
        "connection",
        "Changes the selected database (only 0 exists).",
        [integer("index")]
    ),
    command!(
        "client",
        Client,
        -2,
        &["loading", "stale"],
        "connection",
        "CLIENT ID|SETNAME|GETNAME|SETINFO|INFO|LIST|KILL|NO-EVICT|NO-TOUCH|TRACKING|CACHING|GETREDIR|TRACKINGINFO.",
        [string("subcommand"), optional(many(string("arg")))]
    ),
    command!(
        "info",
        Info,
        -1,
        &["loading", "stale"],
        "server",
        "Returns information and statistics about the sidecar.",
        [optional(many(string("section")))]
    ),
    command!(
        "command",
        Command,
        -1,
        &["loading", "stale"],
        "server",
        "COMMAND [COUNT|DOCS|INFO|LIST].",
        [
            optional(string("subcommand")),
            optional(many(string("arg")))
        ]
    ),
    command!(
        "config",
        Config,
        -2,
        &["loading", "stale"],
        "server",
        "CONFIG GET parameter [parameter ...] (read-only view).",
        [string("subcommand"), optional(many(string("parameter")))]
    ),
    command!(
        "time",
        Time,
        1,
        CONNECTION,
        "server",
        "Returns the server time.",
        []
    ),
    command!(
        "cluster",
        Cluster,
        -2,
        CONNECTION,
        "cluster",
        "The sidecar as a one-node cluster serving every slot (SLOTS, SHARDS, NODES, MYID, INFO, KEYSLOT).",
        [string("subcommand"), optional(many(string("arg")))]
    ),
    command!(
        "subscribe",
        Subscribe,
        -2,
        &["pubsub", "loading", "stale"],
        "pubsub",
        "Listens for messages published to channels.",
        [many(string("channel"))]
    ),
    command!(
        "unsubscribe",
        Unsubscribe,
        -1,
        &["pubsub", "loading", "stale"],
        "pubsub",
        "Stops listening to messages posted to channels.",
        [optional(many(string("channel")))]
    ),
    command!(
        "psubscribe",
        Psubscribe,
        -2,
        &["pubsub", "loading", "stale"],
        "pubsub",
        "Listens for messages published to channels that match patterns.",
        [many(string("pattern"))]
    ),
    command!(
        "punsubscribe",
        Punsubscribe,
        -1,
        &["pubsub", "loading", "stale"],
        "pubsub",
        "Stops listening to messages published to channels that match patterns.",
        [optional(many(string("pattern")))]
    ),
    command!(
        "publish",
        Publish,
        3,
        &["pubsub", "loading", "stale", "fast"],
        "pubsub",
        "Posts a message to a channel (local subscribers).",
        [string("channel"), string("message")]
    ),
    command!(
        "session.create",
        SessionCreate,
        -1,
        WRITE,
        "session",
        "Creates a session and replies its id.",
        [
            opt("ID", "id", ArgKind::Key),
            opt("USER", "user", ArgKind::String),
            opt("CONN", "conn", ArgKind::String),
            EXPIRATION,
            opt("MAXPERUSER", "n", ArgKind::Integer),
            repeated("ATTR", "attr", ArgKind::Block(NAME_VALUE)),
        ]
    ),
    command!(
        "session.get",
        SessionGet,
        -2,
        READ,
        "session",
        "Returns the whole session as a map (or JSON), or nil.",
        [key("id"), flag("JSON")]
    ),
    command!(
        "session.exists",
        SessionExists,
        -2,
        READ,
        "session",
        "Counts how many of the ids are live sessions.",
        [many(key("id"))]
    ),
    command!(
        "session.attr.set",
        SessionAttrSet,
        -4,
        WRITE,
        "session",
        "Sets attributes; replies the new version.",
        [key("id"), many(arg("data", ArgKind::Block(NAME_VALUE)))]
    ),
    command!(
        "session.attr.get",
        SessionAttrGet,
        -3,
        READ,
        "session",
        "Returns attribute values.",
        [key("id"), many(string("name"))]
    ),
    command!(
        "session.attr.del",
        SessionAttrDel,
        -3,
        DELETE,
        "session",
        "Removes attributes; replies how many.",
        [key("id"), many(string("name"))]
    ),
    command!(
        "session.attr.incrby",
        SessionAttrIncrby,
        4,
        WRITE,
        "session",
        "Increments an integer attribute; replies the new value.",
        [key("id"), string("name"), integer("increment")]
    ),
    command!(
        "session.update",
        SessionUpdate,
        -2,
        WRITE,
        "session",
        "Applies changes atomically; replies the new version.",
        [
            key("id"),
            opt("IFVERSION", "version", ArgKind::Integer),
            opt("USER", "user", ArgKind::String),
            opt("CONN", "conn", ArgKind::String),
            opt("STATUS", "status", ArgKind::OneOf(STATUS_CHOICE)),
            EXPIRATION,
            repeated("ATTR", "attr", ArgKind::Block(NAME_VALUE)),
            repeated("DELATTR", "name", ArgKind::String),
        ]
    ),
    command!(
        "session.touch",
        SessionTouch,
        2,
        // Usually a read; an extending heartbeat is a write.
        &["write", "fast"],
        "session",
        "Heartbeat: slides the expiry when less than half the ttl remains; replies ms left.",
        [key("id")]
    ),
    command!(
        "session.ttl",
        SessionTtl,
        2,
        READ,
        "session",
        "Milliseconds until expiry, or -2.",
        [key("id")]
    ),
    command!(
        "session.expire",
        SessionExpire,
        3,
        DELETE,
        "session",
        "Sets the ttl and expires = now + ttl; 1, or 0 when missing.",
        [key("id"), integer("seconds")]
    ),
    command!(
        "session.del",
        SessionDel,
        -2,
        DELETE,
        "session",
        "Deletes sessions; replies how many.",
        [many(key("id"))]
    ),
    command!(
        "session.bind",
        SessionBind,
        3,
        WRITE,
        "session",
        "Binds the session to a connection here; replies the new version.",
        [key("id"), string("conn")]
    ),
    command!(
        "session.unbind",
        SessionUnbind,
        -2,
        DELETE,
        "session",
        "Marks the session disconnected; replies the new version.",
        [key("id"), opt("GRACE", "seconds", ArgKind::Integer)]
    ),
    command!(
        "session.byconn",
        SessionByconn,
        2,
        READ,
        "session",
        "The id of the session bound to the connection, or nil.",
        [string("conn")]
    ),
    command!(
        "session.byuser",
        SessionByuser,
        -2,
        READ,
        "session",
        "The ids (or sessions) of the user's live sessions, oldest first.",
        [string("user"), flag("WITHSESSIONS")]
    ),
    command!(
        "session.killuser",
        SessionKilluser,
        2,
        DELETE,
        "session",
        "Deletes every session of the user; replies how many.",
        [string("user")]
    ),
    command!(
        "session.count",
        SessionCount,
        -1,
        READ,
        "session",
        "Live sessions in the store (LOCAL: held in memory here).",
        [flag("LOCAL")]
    ),
    command!(
        "session.nodes",
        SessionNodes,
        1,
        READ,
        "session",
        "The live sidecars known to this one.",
        []
    ),
    command!(
        "session.streams",
        SessionStreams,
        1,
        READ,
        "session",
        "The upstream's events streams, one per shard (empty without an upstream).",
        []
    ),
    command!(
        "session.migrate",
        SessionMigrate,
        -4,
        &["write"],
        "session",
        "Hands the selected sessions to the sidecar at host:port; replies how many moved.",
        [
            string("host"),
            integer("port"),
            opt("AUTH", "secret", ArgKind::String),
            opt("TIMEOUT", "ms", ArgKind::Integer),
            arg("selection", ArgKind::OneOf(MIGRATE_SELECTION)),
        ]
    ),
    command!(
        "session.import",
        SessionImport,
        -2,
        &["write", "denyoom"],
        "session",
        "Peer protocol: takes sessions handed over by another sidecar.",
        [
            string("source-node"),
            optional(many(arg(
                "session",
                ArgKind::Block(&[key("id"), string("payload")])
            ))),
        ]
    ),
    command!(
        "session.drain",
        SessionDrain,
        -1,
        &["write"],
        "session",
        "Hands every session to the live peers, then refuses CREATE and BIND; replies how many moved.",
        [opt("TIMEOUT", "ms", ArgKind::Integer)]
    ),
    command!(
        "session.peerauth",
        SessionPeerauth,
        2,
        &["fast", "no_auth"],
        "session",
        "Peer protocol: authenticates the connection with the peer secret.",
        [string("secret")]
    ),
];

/// Longest command name.
const MAX_NAME: usize = 32;

/// Command names → specs, built once.
static BY_NAME: LazyLock<HashMap<&'static [u8], &'static CommandSpec, foldhash::fast::FixedState>> =
    LazyLock::new(|| COMMANDS.iter().map(|c| (c.name.as_bytes(), c)).collect());

/// Finds a command by name, case-insensitively, without allocating.
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    if name.len() > MAX_NAME {
        return None;
    }
    let mut lower = [0u8; MAX_NAME];
    let lower = &mut lower[..name.len()];
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    BY_NAME.get(&*lower).copied()
}
