//! Per-client state: what the connection's own task keeps ([`ClientState`])
//! and what other tasks may read for CLIENT LIST and INFO ([`ClientInfo`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::protocol::Protocol;
use crate::protocol::command_table::COMMANDS;
use crate::pubsub::{Message, Subscriber};
use crate::store::now_ms;

/// What other tasks may see of a client.
pub struct ClientInfo {
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub created_ms: u64,
    pub last_command_ms: AtomicU64,
    pub name: Mutex<Option<Bytes>>,
    pub lib: Mutex<(Option<Bytes>, Option<Bytes>)>,
    pub protocol: AtomicU64,
    pub subscriptions: AtomicUsize,
    pub patterns: AtomicUsize,
    /// Shard channels (SSUBSCRIBE), held on the upstream.
    pub shard_subscriptions: AtomicUsize,
    /// Cancelled by CLIENT KILL: the connection closes.
    pub kill: CancellationToken,
    /// The upstream's id for the client's pinned connection (-1: none).
    pub upstream_id: std::sync::atomic::AtomicI64,
    /// The last command, as its [`Cmd`] number (`usize::MAX`: none yet), for
    /// CLIENT LIST's `cmd=`; [`ClientInfo::note_command`] writes it.
    pub last_command: AtomicUsize,
    /// The read buffer: bytes not parsed yet and room allocated (CLIENT
    /// LIST's `qbuf`, `qbuf-free` and `rbs`); 0 and 0 while the client is
    /// idle, which holds no buffer.
    pub query_buffer: AtomicUsize,
    pub read_buffer: AtomicUsize,
}

/// The subcommands CLIENT LIST names as Redis does (`cmd=client|list`), of
/// the containers the sidecar answers (CLIENT, CONFIG, CLUSTER).
const SUBCOMMANDS: &[&str] = &[
    "caching",
    "get",
    "getname",
    "getredir",
    "help",
    "id",
    "info",
    "keyslot",
    "kill",
    "list",
    "myid",
    "no-evict",
    "no-touch",
    "nodes",
    "pause",
    "reply",
    "resetstat",
    "rewrite",
    "set",
    "setinfo",
    "setname",
    "shards",
    "slots",
    "tracking",
    "trackinginfo",
    "unblock",
    "unpause",
];

impl ClientInfo {
    /// Records `cmd` (with `argv[1]`, a container's subcommand) as the last
    /// command, for CLIENT LIST.
    pub fn note_command(&self, cmd: crate::protocol::command_table::Cmd, argv: &[Bytes]) {
        use crate::protocol::command_table::Cmd;
        let sub = match cmd {
            Cmd::Client | Cmd::Config | Cmd::Cluster => argv.get(1).and_then(|sub| {
                SUBCOMMANDS
                    .iter()
                    .position(|known| sub.eq_ignore_ascii_case(known.as_bytes()))
            }),
            _ => None,
        };
        let encoded = cmd as usize | sub.map_or(0, |i| (i + 1) << 16);
        self.last_command.store(encoded, Ordering::Relaxed);
    }

    /// `client|list` for CLIENT LIST, as recorded by `note_command`.
    fn last_command_name(&self) -> String {
        let encoded = self.last_command.load(Ordering::Relaxed);
        if encoded == usize::MAX {
            return "NULL".into();
        }
        let name = COMMANDS
            .iter()
            .find(|c| c.cmd as usize == encoded & 0xffff)
            .map_or("NULL", |c| c.name);
        match (encoded >> 16)
            .checked_sub(1)
            .and_then(|i| SUBCOMMANDS.get(i))
        {
            Some(sub) => format!("{name}|{sub}"),
            None => name.to_string(),
        }
    }

    /// Whether the client holds subscriptions.
    pub fn is_pubsub(&self) -> bool {
        self.subscriptions.load(Ordering::Relaxed)
            + self.patterns.load(Ordering::Relaxed)
            + self.shard_subscriptions.load(Ordering::Relaxed)
            > 0
    }

    /// The CLIENT LIST / CLIENT INFO line, in Redis's format.
    pub fn line(&self, now: u64) -> String {
        let name = self
            .name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let (lib_name, lib_ver) = self.lib.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let subscriptions = self.subscriptions.load(Ordering::Relaxed);
        let patterns = self.patterns.load(Ordering::Relaxed);
        let shard = self.shard_subscriptions.load(Ordering::Relaxed);
        let rbs = self.read_buffer.load(Ordering::Relaxed);
        let qbuf = self.query_buffer.load(Ordering::Relaxed).min(rbs);
        let qbuf_free = rbs - qbuf;
        let flags = if subscriptions + patterns + shard > 0 {
            "P"
        } else {
            "N"
        };
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={flags} db=0 sub={subscriptions} psub={patterns} ssub={shard} multi=-1 qbuf={qbuf} qbuf-free={qbuf_free} argv-mem=0 multi-mem=0 rbs={rbs} rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.local_addr,
            String::from_utf8_lossy(&name),
            now.saturating_sub(self.created_ms) / 1000,
            now.saturating_sub(self.last_command_ms.load(Ordering::Relaxed)) / 1000,
            self.last_command_name(),
            self.protocol.load(Ordering::Relaxed),
            String::from_utf8_lossy(lib_name.as_deref().unwrap_or_default()),
            String::from_utf8_lossy(lib_ver.as_deref().unwrap_or_default()),
        )
    }
}

/// Every connected client, by id.
#[derive(Default)]
pub struct ClientRegistry {
    clients: DashMap<u64, Arc<ClientInfo>>,
    next_id: AtomicU64,
    /// The most clients connected at once since [`ClientRegistry::take_peak`].
    peak: AtomicUsize,
}

impl ClientRegistry {
    pub fn register(&self, addr: SocketAddr, local_addr: SocketAddr) -> Arc<ClientInfo> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let info = Arc::new(ClientInfo {
            id,
            addr,
            local_addr,
            created_ms: now,
            last_command_ms: AtomicU64::new(now),
            name: Mutex::new(None),
            lib: Mutex::new((None, None)),
            protocol: AtomicU64::new(2),
            subscriptions: AtomicUsize::new(0),
            patterns: AtomicUsize::new(0),
            shard_subscriptions: AtomicUsize::new(0),
            kill: CancellationToken::new(),
            last_command: AtomicUsize::new(usize::MAX),
            query_buffer: AtomicUsize::new(0),
            read_buffer: AtomicUsize::new(0),
            upstream_id: std::sync::atomic::AtomicI64::new(-1),
        });
        self.clients.insert(id, info.clone());
        self.peak.fetch_max(self.clients.len(), Ordering::Relaxed);
        info
    }

    /// The most clients connected at once since the last call; starts over
    /// from the count now.
    pub fn take_peak(&self) -> usize {
        self.peak.swap(self.clients.len(), Ordering::Relaxed)
    }

    /// Client `id`, if connected.
    pub fn get(&self, id: u64) -> Option<Arc<ClientInfo>> {
        self.clients.get(&id).map(|c| c.value().clone())
    }

    /// Whether client `id` is connected.
    pub fn contains(&self, id: u64) -> bool {
        self.clients.contains_key(&id)
    }

    pub fn unregister(&self, id: u64) {
        self.clients.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Every client, ordered by id.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut all: Vec<_> = self.clients.iter().map(|c| c.value().clone()).collect();
        all.sort_by_key(|c| c.id);
        all
    }
}

/// The state a connection's task keeps for its client.
pub struct ClientState {
    pub info: Arc<ClientInfo>,
    pub protocol: Protocol,
    pub authenticated: bool,
    /// Authenticated with the peer secret (SESSION.PEERAUTH): may import.
    pub peer: bool,
    pub channels: HashSet<Bytes>,
    pub patterns: HashSet<Bytes>,
    /// Created on the first SUBSCRIBE; the receiver is polled by the task.
    pub subscriber: Option<(Subscriber, mpsc::Receiver<Message>)>,
    /// Set by QUIT: close once the reply is written.
    pub close: bool,
    /// The client's side of the passthrough to the upstream.
    pub proxy: crate::proxy::Link,
    /// Between MULTI and EXEC/DISCARD: the commands queued.
    pub multi: Option<Transaction>,
    /// Sessions named by WATCH, as they were then.
    pub watched: Vec<Watched>,
    /// CLIENT TRACKING's mode, while on.
    pub tracking: Option<crate::tracking::Mode>,
    /// CLIENT CACHING yes/no, for the next command (or transaction).
    pub caching: Option<bool>,
    /// `client-output-buffer-limit pubsub`, for its subscriber queue.
    pub pubsub_limit: crate::config::OutputLimit,
    /// CLIENT REPLY: whether replies are sent.
    pub reply: ReplyMode,
}

/// CLIENT REPLY's modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplyMode {
    #[default]
    On,
    Off,
    /// The next command's reply is not sent.
    Skip,
    /// This command's reply is not sent, then On again (SKIP's next
    /// command; also CLIENT REPLY OFF/SKIP themselves, whose OK is not sent).
    SkipThis(bool),
}

/// A transaction being queued (MULTI until EXEC or DISCARD).
#[derive(Default)]
pub struct Transaction {
    pub queued: Vec<Queued>,
    /// A command was refused at queue time: EXEC answers EXECABORT.
    pub aborted: bool,
}

/// One queued command.
pub enum Queued {
    /// Answered by the sidecar at EXEC.
    Here(Vec<Bytes>),
    /// Queued in the upstream's own transaction; its reply is the next
    /// element of the upstream's EXEC reply.
    Upstream,
}

/// A session named by WATCH, and what it was then: its version and
/// creation time, or None when there was no such session.
pub struct Watched {
    pub id: Bytes,
    pub seen: Option<(u64, u64)>,
}

impl ClientState {
    pub fn new(
        info: Arc<ClientInfo>,
        authenticated: bool,
        pubsub_limit: crate::config::OutputLimit,
    ) -> Self {
        Self {
            info,
            protocol: Protocol::Resp2,
            authenticated,
            peer: false,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            subscriber: None,
            close: false,
            proxy: crate::proxy::Link::default(),
            multi: None,
            watched: Vec::new(),
            tracking: None,
            caching: None,
            pubsub_limit,
            reply: ReplyMode::On,
        }
    }

    pub fn id(&self) -> u64 {
        self.info.id
    }

    /// Whether the reply of `argv`, which just ran, is not to be sent
    /// (CLIENT REPLY), moving SKIP on to the next command. Subscription
    /// confirmations are sent whatever the mode, as Redis sends them.
    pub fn take_reply_suppressed(&mut self, argv: &[Bytes]) -> bool {
        use crate::proxy::Command;
        if !self.reply_suppressed() {
            return false;
        }
        let confirms = argv.first().is_some_and(|name| {
            matches!(
                Command::of(name),
                Command::Subscribe
                    | Command::Psubscribe
                    | Command::Ssubscribe
                    | Command::Unsubscribe
                    | Command::Punsubscribe
                    | Command::Sunsubscribe
            )
        });
        !confirms
    }

    fn reply_suppressed(&mut self) -> bool {
        match self.reply {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply = ReplyMode::On;
                true
            }
            ReplyMode::SkipThis(then_skip) => {
                self.reply = if then_skip {
                    ReplyMode::Skip
                } else {
                    ReplyMode::Off
                };
                true
            }
        }
    }

    /// A command was refused: inside MULTI, the transaction is aborted.
    pub fn flag_transaction(&mut self) {
        if let Some(transaction) = self.multi.as_mut() {
            transaction.aborted = true;
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// In RESP2, a client with subscriptions may only run pub/sub commands.
    pub fn in_resp2_pubsub(&self) -> bool {
        self.protocol == Protocol::Resp2 && self.subscription_count() > 0
    }

    /// This client's subscriber handle, created on first use.
    pub fn subscriber(&mut self) -> Subscriber {
        let limit = self.pubsub_limit;
        let (subscriber, _) = self.subscriber.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(crate::pubsub::SUBSCRIBER_QUEUE);
            (Subscriber::new(tx, limit), rx)
        });
        subscriber.clone()
    }

    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
        self.info
            .protocol
            .store(protocol.number() as u64, Ordering::Relaxed);
    }

    /// Publishes the subscription counts (the sidecar's own and those held
    /// on the upstream through the proxy) for CLIENT LIST and INFO.
    pub fn sync_subscription_counts(&self) {
        self.info
            .upstream_id
            .store(self.proxy.upstream_id().unwrap_or(-1), Ordering::Relaxed);
        let (channels, patterns, shard_channels) = self.proxy.subscription_counts();
        self.info
            .subscriptions
            .store(self.channels.len() + channels, Ordering::Relaxed);
        self.info
            .patterns
            .store(self.patterns.len() + patterns, Ordering::Relaxed);
        self.info
            .shard_subscriptions
            .store(shard_channels, Ordering::Relaxed);
    }
}
