//! A client's own upstream connection, for as long as it holds state there:
//! a transaction (MULTI, WATCH), subscriptions, a blocking command, key
//! tracking, another database. The client pins it by the command that
//! starts the state and gives it back when the state is over.
//!
//! Everything the upstream sends on it is relayed to the client in the order
//! it arrives (replies, messages, invalidations), byte for byte. What the
//! proxy must know is how many of those frames are replies still owed (so a
//! reply the sidecar answers itself is written after them) and what state
//! each reply leaves behind; it follows both as Redis itself does.
//!
//! A connection whose state ended normally is clean again and waits in
//! [`IdleConnections`] for the next client that needs one, so a worker
//! looping on BLPOP does not dial the upstream for every pop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Command;
use super::endpoint::{Connection, Stream, encode_command};
use crate::event_loop;
use crate::protocol::Protocol;
use crate::protocol::frame::{Element, FrameScanner, FrameView};

/// Clean connections kept per event loop, upstream node and protocol version.
const MAX_IDLE: usize = 16;

/// Pinned connections given back clean: no transaction, watch,
/// subscription, tracking, other database, nor reply owed. Kept per event
/// loop: a connection is registered with the reactor of the loop that
/// opened it, and is reused there.
#[derive(Default)]
pub struct IdleConnections {
    idle: Mutex<HashMap<(usize, String, i64), Vec<Connection>>>,
}

impl IdleConnections {
    /// A clean connection to `node` speaking `protocol`, if one is idle and
    /// still open.
    pub fn take(&self, node: &str, protocol: Protocol) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let key = (event_loop::current(), node.to_string(), protocol.number());
        let connections = idle.get_mut(&key)?;
        while let Some(connection) = connections.pop() {
            if still_open(&connection) {
                return Some(connection);
            }
        }
        None
    }

    fn put(&self, node: String, protocol: Protocol, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let key = (event_loop::current(), node, protocol.number());
        let connections = idle.entry(key).or_default();
        if connections.len() < MAX_IDLE {
            connections.push(connection);
        }
    }
}

/// Whether an idle connection is still usable: nothing to read (a closed
/// socket reads 0, and an idle one has nothing else to say).
fn still_open(connection: &Connection) -> bool {
    let socket = match &connection.stream {
        Stream::Plain(socket) => socket,
        Stream::Tls(tls) => tls.get_ref().0,
    };
    connection.input.is_empty()
        && matches!(socket.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Replies owed for one command, and what its reply changes.
struct Owed {
    frames: usize,
    effect: Effect,
    reply: Reply,
}

/// What becomes of a command's reply.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Relayed to the client: its own command.
    Relay,
    /// Dropped: a command the proxy sent on its own account (a deferred
    /// MULTI, a DISCARD, a HELLO).
    Swallow,
    /// Kept for the proxy ([`Pinned::take_captured`]): its EXEC.
    Capture,
}

/// What a frame from the upstream is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Reply,
    /// A (un)subscription's reply, with the subscriptions left.
    Confirmation {
        shard: bool,
        count: i64,
    },
    /// Sent by the upstream on its own: a message, an invalidation.
    OutOfBand,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    None,
    Multi,
    /// EXEC or DISCARD: the transaction and its watches are over.
    EndMulti,
    /// EXEC: as EndMulti, and a SELECT queued in the transaction takes
    /// effect if it ran.
    Exec,
    Watch,
    Unwatch,
    Select(i64),
    Tracking(bool),
    Monitor,
}

/// The dedicated connection and the state the client holds on it.
pub struct Pinned {
    connection: Connection,
    /// Where the connection goes once clean again.
    idle: Arc<IdleConnections>,
    scanner: FrameScanner,
    protocol: Protocol,
    /// The node it is connected to (`host:port`).
    pub node: String,
    /// Commands to write at the next flush.
    pending: BytesMut,
    owed: VecDeque<Owed>,
    /// A MULTI was sent and no EXEC/DISCARD yet: replies are QUEUED.
    queuing: bool,
    in_multi: bool,
    /// The database the last SELECT queued in the transaction names.
    queued_select: Option<i64>,
    /// The reply of a captured command, once it came.
    captured: Option<Bytes>,
    watching: bool,
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shard_channels: HashSet<Bytes>,
    db: i64,
    default_db: i64,
    tracking: bool,
    monitor: bool,
    /// Subscriptions the upstream last confirmed (channels and patterns;
    /// shard channels).
    confirmed: i64,
    confirmed_shard: i64,
}

impl Pinned {
    pub fn new(
        connection: Connection,
        idle: Arc<IdleConnections>,
        protocol: Protocol,
        node: String,
        default_db: i64,
    ) -> Self {
        let mut pinned = Pinned {
            connection,
            idle,
            scanner: FrameScanner::default(),
            protocol,
            node,
            pending: BytesMut::new(),
            owed: VecDeque::new(),
            queuing: false,
            in_multi: false,
            queued_select: None,
            captured: None,
            watching: false,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            shard_channels: HashSet::new(),
            db: default_db,
            default_db,
            tracking: false,
            monitor: false,
            confirmed: 0,
            confirmed_shard: 0,
        };
        // Bytes read past the handshake are the start of the first reply.
        pinned.connection.input.reserve(16 * 1024);
        pinned
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The upstream's id for this connection.
    pub fn upstream_id(&self) -> Option<i64> {
        self.connection.id
    }

    /// Channels, patterns and shard channels subscribed to.
    pub fn subscription_counts(&self) -> (usize, usize, usize) {
        (
            self.channels.len(),
            self.patterns.len(),
            self.shard_channels.len(),
        )
    }

    /// Whether the client holds subscriptions here (in RESP2 it may then only
    /// run pub/sub commands, which the upstream enforces).
    pub fn subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard_channels.is_empty())
    }

    /// Whether some state lives on the connection, or replies are owed.
    pub fn in_use(&self) -> bool {
        !self.owed.is_empty()
            || !self.pending.is_empty()
            || self.captured.is_some()
            || self.queuing
            || self.in_multi
            || self.watching
            || self.subscribed()
            || self.subscribed_upstream()
            || self.db != self.default_db
            || self.tracking
            || self.monitor
    }

    /// Gives the connection back for another client; only once it is not
    /// [`Pinned::in_use`], and if its upstream id is known (CLIENT UNBLOCK
    /// and REDIRECT need it; a connection opened while the upstream was busy
    /// with a script does not know it).
    pub fn release(self) {
        if !self.in_use() && self.connection.input.is_empty() && self.connection.id.is_some() {
            self.idle.put(self.node, self.protocol, self.connection);
        }
    }

    /// Whether state would be lost if the connection went away.
    pub fn holds_state(&self) -> bool {
        self.in_multi || self.watching || self.subscribed() || self.tracking || self.monitor
    }

    /// Inside MULTI (or MONITOR): what is sent belongs to the connection.
    pub fn captures_commands(&self) -> bool {
        self.in_multi || self.queuing || self.monitor
    }

    pub fn owes_replies(&self) -> bool {
        !self.owed.is_empty() && !self.monitor
    }

    /// Sends MULTI on the proxy's own account (its OK was already given).
    pub fn send_swallowed_multi(&mut self) {
        self.send_own(&[Bytes::from_static(b"MULTI")], Reply::Swallow);
    }

    /// Sends a command on the proxy's own account; its reply is not relayed.
    fn send_own(&mut self, argv: &[Bytes], reply: Reply) {
        self.send(argv);
        if let Some(owed) = self.owed.back_mut() {
            owed.reply = reply;
        }
    }

    /// Whether key tracking is on for the connection.
    pub fn tracking(&self) -> bool {
        self.tracking
    }

    /// Sends a command whose reply is not relayed (a tracker's replayed
    /// CLIENT TRACKING or CACHING).
    pub fn send_swallowed(&mut self, argv: &[Bytes]) {
        self.send_own(argv, Reply::Swallow);
    }

    /// Whether keys are watched on the connection.
    pub fn watching(&self) -> bool {
        self.watching
    }

    /// Sends one of the proxy's own commands whose reply it keeps
    /// ([`Pinned::take_captured`]) instead of relaying.
    pub fn send_captured(&mut self, argv: &[Bytes]) {
        self.send_own(argv, Reply::Capture);
    }

    /// The captured reply, once it came.
    pub fn take_captured(&mut self) -> Option<Bytes> {
        self.captured.take()
    }

    /// Ends a transaction (DISCARD) or, outside one, the watches (UNWATCH),
    /// on the proxy's own account.
    pub fn end_transaction_swallowed(&mut self) {
        let command: &'static [u8] = if self.queuing {
            b"DISCARD"
        } else if self.watching {
            b"UNWATCH"
        } else {
            return;
        };
        self.send_own(&[Bytes::from_static(command)], Reply::Swallow);
    }

    /// Makes the connection speak `protocol`, which the client switched to
    /// with HELLO (answered by the sidecar): a HELLO of the proxy's own.
    pub fn switch_protocol(&mut self, protocol: Protocol) {
        if protocol == self.protocol {
            return;
        }
        let version = Bytes::from(protocol.number().to_string());
        self.send_own(&[Bytes::from_static(b"HELLO"), version], Reply::Swallow);
        self.protocol = protocol;
    }

    /// Queues one of the client's commands and notes what its reply will be.
    pub fn send(&mut self, argv: &[Bytes]) {
        encode_command(&mut self.pending, argv);
        let mut frames = 1;
        let mut effect = Effect::None;
        let args = &argv[1..];
        let command = Command::of(&argv[0]);
        if self.queuing {
            match command {
                Command::Exec => {
                    self.queuing = false;
                    effect = Effect::Exec;
                }
                Command::Discard => {
                    self.queuing = false;
                    self.queued_select = None;
                    effect = Effect::EndMulti;
                }
                Command::Select => {
                    if let Some(db) = args.first().and_then(|db| crate::protocol::parse_i64(db)) {
                        self.queued_select = Some(db);
                    }
                }
                _ => {}
            }
        } else {
            match command {
                Command::Multi => {
                    self.queuing = true;
                    effect = Effect::Multi;
                }
                Command::Exec | Command::Discard => effect = Effect::EndMulti,
                Command::Watch => effect = Effect::Watch,
                Command::Unwatch => effect = Effect::Unwatch,
                Command::Select => {
                    effect = args
                        .first()
                        .and_then(|db| crate::protocol::parse_i64(db))
                        .map_or(Effect::None, Effect::Select);
                }
                Command::Client
                    if args
                        .first()
                        .is_some_and(|s| s.eq_ignore_ascii_case(b"tracking")) =>
                {
                    let on = args.get(1).is_some_and(|s| s.eq_ignore_ascii_case(b"on"));
                    effect = Effect::Tracking(on);
                }
                Command::Monitor => effect = Effect::Monitor,
                Command::Subscribe => frames = subscribe(&mut self.channels, args),
                Command::Psubscribe => frames = subscribe(&mut self.patterns, args),
                Command::Ssubscribe => frames = subscribe(&mut self.shard_channels, args),
                Command::Unsubscribe => frames = unsubscribe(&mut self.channels, args),
                Command::Punsubscribe => frames = unsubscribe(&mut self.patterns, args),
                Command::Sunsubscribe => frames = unsubscribe(&mut self.shard_channels, args),
                _ => {}
            }
        }
        self.owed.push_back(Owed {
            frames,
            effect,
            reply: Reply::Relay,
        });
    }

    /// Writes what was queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.connection.stream.write_all(&self.pending).await?;
            self.connection.stream.flush().await?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Reads what the upstream sent; 0 when it closed.
    pub async fn read(&mut self) -> std::io::Result<usize> {
        let input = &mut self.connection.input;
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        self.connection.stream.read_buf(input).await
    }

    /// Relays every complete frame read so far to `output`, in order, and
    /// applies the state the replies among them leave.
    pub fn relay(&mut self, output: &mut BytesMut) -> Result<(), &'static str> {
        loop {
            let input = &self.connection.input;
            let Some(end) = self.scanner.next_frame(input).map_err(|e| e.0)? else {
                return Ok(());
            };
            let view = FrameView::new(&input[..end]);
            let class = self.classify(&view, &input[..end]);
            let failed = view.is_error();
            // EXEC's reply when the transaction ran (not nil, not an error).
            let ran = view.kind == b'*' && !input[..end].starts_with(b"*-1");
            let mut reply = Reply::Relay;
            if let Class::Confirmation { shard, count } = class {
                if shard {
                    self.confirmed_shard = count;
                } else {
                    self.confirmed = count;
                }
            }
            if !self.monitor && class != Class::OutOfBand {
                let Some(owed) = self.owed.front_mut() else {
                    return Err("a reply nobody asked for");
                };
                owed.frames -= 1;
                reply = owed.reply;
                if owed.frames == 0 {
                    let effect = owed.effect;
                    self.owed.pop_front();
                    self.apply(effect, failed, ran);
                }
            }
            match reply {
                Reply::Relay => output.extend_from_slice(&self.connection.input[..end]),
                Reply::Capture => {
                    self.captured = Some(Bytes::copy_from_slice(&self.connection.input[..end]));
                }
                Reply::Swallow => {}
            }
            let _ = self.connection.input.split_to(end);
            self.scanner.consumed(end);
            if reply == Reply::Capture {
                // What follows the captured reply (an invalidation the
                // transaction caused) goes after what the caller makes of
                // it: the caller relays it next.
                return Ok(());
            }
        }
    }

    /// What a frame is: a reply, or a frame the upstream sent on its own (a
    /// message, an invalidation). Subscription confirmations are replies and
    /// carry how many subscriptions the connection holds.
    fn classify(&self, view: &FrameView, frame: &[u8]) -> Class {
        if !matches!(view.kind, b'>' | b'*') {
            return Class::Reply;
        }
        let Some(elements) = view.elements() else {
            // Not flat (an invalidation's array of keys): no confirmation.
            // In RESP2 an invalidation redirected here is a message on
            // `__redis__:invalidate` whose payload is that array.
            let message = || {
                crate::protocol::frame::split_aggregate(frame)
                    .and_then(|(_, elements)| {
                        let kind = crate::protocol::frame::bulk_payload(elements.first()?)?;
                        Some(kind.eq_ignore_ascii_case(b"message"))
                    })
                    .unwrap_or(false)
            };
            return if view.kind == b'>' || (self.subscribed_upstream() && message()) {
                Class::OutOfBand
            } else {
                Class::Reply
            };
        };
        let kind = match elements.first() {
            Some(Element::Bulk(kind)) => kind.to_ascii_lowercase(),
            _ => return Class::Reply,
        };
        let count = match elements.get(2) {
            Some(Element::Int(count)) => Some(*count),
            _ => None,
        };
        match (&kind[..], count) {
            (b"subscribe" | b"psubscribe" | b"unsubscribe" | b"punsubscribe", Some(count))
                if view.kind == b'>' || self.subscribed_upstream() || self.subscribed() =>
            {
                Class::Confirmation {
                    shard: false,
                    count,
                }
            }
            (b"ssubscribe" | b"sunsubscribe", Some(count))
                if view.kind == b'>' || self.subscribed_upstream() || self.subscribed() =>
            {
                Class::Confirmation { shard: true, count }
            }
            // RESP3: every other push is out of band.
            _ if view.kind == b'>' => Class::OutOfBand,
            // RESP2: a subscribed connection gets messages as arrays.
            (b"message" | b"pmessage" | b"smessage", _) if self.subscribed_upstream() => {
                Class::OutOfBand
            }
            _ => Class::Reply,
        }
    }

    /// Whether the upstream has confirmed subscriptions on this connection.
    fn subscribed_upstream(&self) -> bool {
        self.confirmed > 0 || self.confirmed_shard > 0
    }

    fn apply(&mut self, effect: Effect, failed: bool, ran: bool) {
        match effect {
            Effect::None => {}
            Effect::Exec => {
                let select = self.queued_select.take();
                if ran && let Some(db) = select {
                    self.db = db;
                }
                self.apply(Effect::EndMulti, failed, ran);
            }
            Effect::Multi => self.in_multi = !failed || self.in_multi,
            Effect::EndMulti if !failed || self.in_multi => {
                self.in_multi = false;
                self.watching = false;
            }
            Effect::Watch if !failed => self.watching = true,
            Effect::Unwatch if !failed => self.watching = false,
            Effect::Select(db) if !failed => self.db = db,
            Effect::Tracking(on) if !failed => self.tracking = on,
            Effect::Monitor if !failed => self.monitor = true,
            _ => {}
        }
    }

    /// The replies still owed, as errors, when the connection is lost.
    pub fn fail_owed(&mut self, output: &mut BytesMut) {
        for owed in self.owed.drain(..) {
            // A captured reply's loss is the proxy's to answer.
            if owed.reply != Reply::Relay {
                continue;
            }
            for _ in 0..owed.frames {
                output.extend_from_slice(super::LOST);
            }
        }
    }
}

/// SUBSCRIBE-like: one confirmation per name (an arity error without any).
fn subscribe(set: &mut HashSet<Bytes>, names: &[Bytes]) -> usize {
    for name in names {
        set.insert(Bytes::copy_from_slice(name));
    }
    names.len().max(1)
}

/// UNSUBSCRIBE-like: one confirmation per name; without names, one per
/// subscription held (one when there is none), as Redis.
fn unsubscribe(set: &mut HashSet<Bytes>, names: &[Bytes]) -> usize {
    if names.is_empty() {
        let frames = set.len().max(1);
        set.clear();
        return frames;
    }
    for name in names {
        set.remove(name);
    }
    names.len()
}
