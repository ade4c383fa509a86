//! Load client for the example gateway (`examples/gateway/`): opens N
//! WebSocket clients, each carrying on a stream of messages (set, get and
//! heartbeat, in turn) and checking every reply against what it wrote; on
//! close code 1012 it reconnects where the close reason says (or to the
//! next `--url`, standing in for a load balancer that stopped routing to the
//! gateway that closed) and resumes its session by id.
//!
//! Every client checks, on each resume, that it got the same session back
//! with its attributes intact, and records how much its version moved
//! (the gateway's unbind, the drain's hand-over, the new bind) and how long
//! it was away. It prints a status line (JSON) every `--status-ms` and a
//! summary line (JSON) when it stops: on SIGTERM or SIGINT, or after
//! `--duration-s`; `--report` writes every client's record.
//!
//! ```sh
//! cargo run --release --example gateway_load -- --token-secret s3cret \
//!     --url ws://127.0.0.1:8080/ --url ws://127.0.0.1:8081/ --clients 1000
//! ```

// The client's half of the wire protocol: it signs tokens but never
// verifies them, and meets only some of the close codes.
#[allow(dead_code)]
#[path = "gateway/protocol.rs"]
mod protocol;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::protocol::{ClientMessage, ServerMessage, TokenKey, close};

/// How long a reply (or the welcome) may take before the connection is
/// given up as broken.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Errors kept per client in the report (all are counted).
const ERRORS_KEPT: usize = 10;
/// Retries logged per client (all are counted).
const RETRIES_LOGGED: u64 = 3;

type WebSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Many WebSocket clients of the example gateway, resuming their sessions
/// across gateway restarts.
#[derive(Parser, Debug)]
struct Config {
    /// A gateway's URL (repeat for several): client i starts on the
    /// (i mod n)th.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The secret the gateways check tokens with.
    #[arg(long, env = "GATEWAY_TOKEN_SECRET", hide_env_values = true)]
    token_secret: String,
    /// How many clients.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Clients per user (users are `user-<i / this>`).
    #[arg(long, default_value_t = 1)]
    clients_per_user: usize,
    /// Time between a client's messages, in ms.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// Clients connecting at once while starting (reconnections are not
    /// held back: they are the storm).
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// A random delay of up to this many ms before each reconnection (0:
    /// at once). Real clients should spread their reconnections.
    #[arg(long, default_value_t = 0)]
    reconnect_jitter_ms: u64,
    /// Status line period, in ms.
    #[arg(long, default_value_t = 200)]
    status_ms: u64,
    /// Stop after this many seconds (default: at SIGTERM or SIGINT).
    #[arg(long)]
    duration_s: Option<u64>,
    /// Write every client's record here (JSON) when stopping.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Counters every client updates, printed as the status line.
#[derive(Default)]
struct Stats {
    /// Clients with an open connection that has been welcomed.
    connected: AtomicU64,
    /// Sessions created for these clients (a resume that was refused
    /// creates one too).
    created: AtomicU64,
    /// Clients with at least one acknowledged write.
    writing: AtomicU64,
    acks: AtomicU64,
    reads: AtomicU64,
    heartbeats: AtomicU64,
    /// Messages the gateway said it did not apply (sent again).
    refused: AtomicU64,
    /// Connections that failed (refused, broken, no reply in time, closed
    /// with 1011) and were tried again.
    retries: AtomicU64,
    /// What must never happen: replies that contradict what the client
    /// wrote, sessions not given back, frames outside the protocol.
    errors: AtomicU64,
    /// Close frames with code 1012 received.
    restarts: AtomicU64,
    /// Sessions resumed, with the same id.
    resumed: AtomicU64,
    /// Resumes followed by at least one acknowledged write.
    acked_after_resume: AtomicU64,
    /// Sessions presented for resuming and not given back.
    lost: AtomicU64,
}

#[derive(Serialize)]
struct Status {
    clients: usize,
    connected: u64,
    created: u64,
    writing: u64,
    acks: u64,
    reads: u64,
    heartbeats: u64,
    refused: u64,
    retries: u64,
    errors: u64,
    restarts: u64,
    resumed: u64,
    acked_after_resume: u64,
    lost: u64,
}

impl Stats {
    fn status(&self, clients: usize) -> Status {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Status {
            clients,
            connected: get(&self.connected),
            created: get(&self.created),
            writing: get(&self.writing),
            acks: get(&self.acks),
            reads: get(&self.reads),
            heartbeats: get(&self.heartbeats),
            refused: get(&self.refused),
            retries: get(&self.retries),
            errors: get(&self.errors),
            restarts: get(&self.restarts),
            resumed: get(&self.resumed),
            acked_after_resume: get(&self.acked_after_resume),
            lost: get(&self.lost),
        }
    }
}

/// One client's record: what it believes its session holds, and its
/// history.
#[derive(Serialize, Default)]
struct ClientRecord {
    client: usize,
    user: String,
    session: Option<String>,
    /// The session's version as of the last acknowledged write, welcome or
    /// resume.
    version: u64,
    /// The attributes it wrote, as acknowledged.
    attrs: BTreeMap<String, String>,
    /// The gateway it is (or was last) connected to.
    gateway: String,
    acks: u64,
    /// Messages refused (not applied) and sent again.
    refusals: u64,
    /// Connections tried again after a failure.
    retries: u64,
    sessions_created: u64,
    resumes: Vec<Resume>,
    errors: Vec<String>,
    error_count: u64,
    /// The message sent and not answered when the connection closed: sent
    /// again first after reconnecting.
    #[serde(skip)]
    unanswered: Option<ClientMessage>,
    #[serde(skip)]
    seq: u64,
    /// A resume after a 1012 close awaits its first acknowledged write.
    #[serde(skip)]
    resumed_unacked: bool,
}

/// One resume after a 1012 close.
#[derive(Serialize, Clone)]
struct Resume {
    /// The close frame's reason: the URL the gateway said to reconnect to.
    told: String,
    from: String,
    to: String,
    /// Unix ms when the close frame arrived and when the welcome did.
    closed_at_ms: u64,
    back_at_ms: u64,
    same_session: bool,
    attrs_intact: bool,
    /// The session's version before the close and in the welcome.
    version_before: u64,
    version_after: u64,
}

/// How a connection ended.
enum Ended {
    /// The load client is stopping.
    Stopped,
    /// The gateway closed it: the code and reason.
    Closed(u16, String),
    /// It broke, or a reply did not come: tried again.
    Broken(String),
    /// The gateway broke the protocol.
    Violation(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Each client is a socket: room for them all, up to the hard limit.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        eprintln!("cannot listen for SIGTERM");
        return ExitCode::FAILURE;
    };
    let config = Arc::new(config);
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let ramp = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));

    let clients: Vec<_> = (0..config.clients)
        .map(|index| {
            let (config, stats, stop, ramp) =
                (config.clone(), stats.clone(), stop.clone(), ramp.clone());
            tokio::spawn(run_client(index, config, stats, stop, ramp))
        })
        .collect();

    let duration = config.duration_s.map(Duration::from_secs);
    let mut status = tokio::time::interval(Duration::from_millis(config.status_ms.max(10)));
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = status.tick() => {
                print_json(&serde_json::json!({ "status": stats.status(config.clients) }));
                if duration.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
            }
        }
    }
    stop.cancel();

    let mut records = Vec::with_capacity(clients.len());
    for client in clients {
        match client.await {
            Ok(record) => records.push(record),
            Err(e) => eprintln!("a client task failed: {e}"),
        }
    }
    print_json(&serde_json::json!({ "status": stats.status(config.clients) }));
    print_json(&serde_json::json!({ "summary": summary(&records) }));
    if let Some(path) = &config.report {
        let written = serde_json::to_vec(&records)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if records.len() == config.clients {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One client, until the load client stops.
async fn run_client(
    index: usize,
    config: Arc<Config>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    ramp: Arc<Semaphore>,
) -> ClientRecord {
    let tokens = TokenKey::new(config.token_secret.as_bytes());
    let mut record = ClientRecord {
        client: index,
        user: format!("user-{}", index / config.clients_per_user.max(1)),
        ..Default::default()
    };
    let mut url_index = index % config.urls.len();
    record.gateway = config.urls[url_index].clone();
    let mut starting = ramp.acquire_owned().await.ok();
    // Set on a 1012 close: (the reason, the gateway that closed, when).
    let mut restarted: Option<(String, String, u64)> = None;
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let expires = unix_ms() / 1000 + 3600;
        let Some(token) = tokens.sign(&record.user, expires) else {
            record.error(&stats, "the user name cannot be put in a token".into());
            break;
        };
        let ended = match connect(&record.gateway, &token, record.session.as_deref()).await {
            Ok(mut ws) => {
                drop(starting.take());
                failures = 0;
                let ended = match welcome(&mut ws, &mut record, &stats, &mut restarted).await {
                    Ok(()) => {
                        stats.connected.fetch_add(1, Ordering::Relaxed);
                        let ended = converse(&mut ws, &mut record, &stats, &config, &stop).await;
                        stats.connected.fetch_sub(1, Ordering::Relaxed);
                        ended
                    }
                    Err(ended) => ended,
                };
                if matches!(ended, Ended::Stopped) {
                    let _ = ws.close(None).await;
                    let rest = async { while let Some(Ok(_)) = ws.next().await {} };
                    let _ = timeout(REPLY_TIMEOUT, rest).await;
                }
                ended
            }
            Err(e) => Ended::Broken(format!("connect {}: {e}", record.gateway)),
        };
        match ended {
            Ended::Stopped => break,
            Ended::Closed(close::RESTART, reason) => {
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                let from = record.gateway.clone();
                record.gateway = if reason.is_empty() {
                    url_index = (url_index + 1) % config.urls.len();
                    config.urls[url_index].clone()
                } else {
                    reason.clone()
                };
                restarted = Some((reason, from, unix_ms()));
                if config.reconnect_jitter_ms > 0 {
                    let jitter = rand_below(config.reconnect_jitter_ms);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
            }
            Ended::Closed(close::SESSION_ENDED, _) => {
                record.error(&stats, "the gateway ended the session".into());
                record.session = None;
            }
            Ended::Closed(code, reason) if code == u16::from(CloseCode::Error) => {
                record.retry(&stats, format!("closed with {code} {reason:?}"));
                failures += 1;
            }
            Ended::Closed(code, reason) => {
                record.error(&stats, format!("closed with {code} {reason:?}"));
                failures += 1;
            }
            Ended::Broken(why) => {
                record.retry(&stats, why);
                failures += 1;
            }
            Ended::Violation(why) => {
                record.error(&stats, why);
                failures += 1;
            }
        }
        if failures > 0 {
            // Back off, up to a second, and try the next gateway.
            let backoff = Duration::from_millis(50 << failures.min(5));
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            url_index = (url_index + 1) % config.urls.len();
            record.gateway = config.urls[url_index].clone();
        }
    }
    record
}

async fn connect(
    url: &str,
    token: &str,
    session: Option<&str>,
) -> Result<WebSocket, tokio_tungstenite::tungstenite::Error> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let mut request = format!("{url}{separator}token={token}");
    if let Some(session) = session {
        request.push_str(&format!("&session={session}"));
    }
    let connecting = tokio_tungstenite::connect_async(request);
    match timeout(REPLY_TIMEOUT, connecting).await {
        Ok(result) => result.map(|(ws, _)| ws),
        Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
    }
}

/// Reads the welcome and checks it against the record: after a 1012 close
/// (`restarted`, recorded as a resume once the welcome arrives), the same
/// session with the same attributes.
async fn welcome(
    ws: &mut WebSocket,
    record: &mut ClientRecord,
    stats: &Stats,
    restarted: &mut Option<(String, String, u64)>,
) -> Result<(), Ended> {
    let (session, resumed, version, attrs) = match next_message(ws).await? {
        ServerMessage::Welcome {
            session,
            resumed,
            version,
            attrs,
        } => (session, resumed, version, attrs),
        other => {
            let why = format!("expected a welcome, got {other:?}");
            return Err(Ended::Violation(why));
        }
    };
    let back_at_ms = unix_ms();
    let presented = record.session.clone();
    let same_session = resumed && presented.as_deref() == Some(session.as_str());
    if presented.is_some() && !same_session {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        record.error(
            stats,
            format!("session {presented:?} not resumed: got {session}"),
        );
    }
    if same_session {
        stats.resumed.fetch_add(1, Ordering::Relaxed);
    } else {
        stats.created.fetch_add(1, Ordering::Relaxed);
        record.sessions_created += 1;
        record.attrs.clear();
    }
    if let Some((told, from, closed_at_ms)) = restarted.take() {
        record.resumed_unacked = true;
        record.resumes.push(Resume {
            told,
            from,
            to: record.gateway.clone(),
            closed_at_ms,
            back_at_ms,
            same_session,
            attrs_intact: attrs == record.attrs,
            version_before: record.version,
            version_after: version,
        });
    }
    if same_session && attrs != record.attrs {
        record.error(
            stats,
            format!("attributes changed across the resume: {attrs:?}"),
        );
    }
    record.session = Some(session);
    record.version = version;
    record.attrs = attrs;
    Ok(())
}

/// The stream of messages, one at a time, each checked against the record,
/// until the connection ends or the load client stops (between messages).
async fn converse(
    ws: &mut WebSocket,
    record: &mut ClientRecord,
    stats: &Stats,
    config: &Config,
    stop: &CancellationToken,
) -> Ended {
    let mut ticks = tokio::time::interval(Duration::from_millis(config.interval_ms.max(1)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ended::Stopped,
            _ = ticks.tick() => {}
            // Nothing is sent unasked, but a close frame may come.
            unasked = ws.next() => return match unasked {
                Some(Ok(Message::Close(frame))) => closed(frame),
                Some(Ok(other)) => Ended::Violation(format!("unasked frame {other:?}")),
                Some(Err(e)) => Ended::Broken(e.to_string()),
                None => Ended::Broken("connection closed".into()),
            },
        }
        let message = match record.unanswered.take() {
            Some(message) => message,
            None => record.next_message(),
        };
        let Ok(text) = serde_json::to_string(&message) else {
            return Ended::Violation("cannot encode a message".into());
        };
        record.unanswered = Some(message);
        if let Err(e) = ws.send(Message::text(text)).await {
            return Ended::Broken(e.to_string());
        }
        let reply = match next_message(ws).await {
            Ok(reply) => reply,
            Err(ended) => return ended,
        };
        let Some(message) = record.unanswered.take() else {
            continue;
        };
        match record.check(&message, reply) {
            Ok(Kind::Ack) => {
                stats.acks.fetch_add(1, Ordering::Relaxed);
                if record.acks == 1 {
                    stats.writing.fetch_add(1, Ordering::Relaxed);
                }
                if record.resumed_unacked {
                    record.resumed_unacked = false;
                    stats.acked_after_resume.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Kind::Read) => {
                stats.reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Kind::Heartbeat) => {
                stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Err(Mismatch::Refused) => {
                // Not applied (the sidecar was busy, say): sent again at
                // the next tick.
                record.unanswered = Some(message);
                record.refusals += 1;
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(Mismatch::Wrong(why)) => record.error(stats, why),
        }
    }
}

/// The next frame from the gateway, as a message; a close or a failure
/// ends the connection.
async fn next_message(ws: &mut WebSocket) -> Result<ServerMessage, Ended> {
    loop {
        let frame = match timeout(REPLY_TIMEOUT, ws.next()).await {
            Err(_) => return Err(Ended::Broken("no reply in time".into())),
            Ok(None) => return Err(Ended::Broken("connection closed".into())),
            Ok(Some(Err(e))) => return Err(Ended::Broken(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            Message::Text(text) => {
                return serde_json::from_str(&text)
                    .map_err(|e| Ended::Violation(format!("unreadable frame {text:?}: {e}")));
            }
            Message::Close(frame) => return Err(closed(frame)),
            _ => {}
        }
    }
}

fn closed(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> Ended {
    match frame {
        Some(frame) => Ended::Closed(frame.code.into(), frame.reason.to_string()),
        None => Ended::Closed(1005, String::new()),
    }
}

/// What a checked reply was.
enum Kind {
    Ack,
    Read,
    Heartbeat,
}

/// Why a reply was not the expected one.
enum Mismatch {
    /// The gateway said it did not apply the message.
    Refused,
    /// The reply contradicts what the client wrote.
    Wrong(String),
}

impl ClientRecord {
    /// Messages in turn: set, get, heartbeat. A set writes `count` (the
    /// sets acknowledged so far, plus one) and `room` (derived from it), so
    /// the attributes always say how many writes were applied.
    fn next_message(&mut self) -> ClientMessage {
        self.seq += 1;
        let seq = self.seq;
        match seq % 3 {
            1 => {
                let count = self.acks + 1;
                let attrs = BTreeMap::from([
                    ("count".to_string(), count.to_string()),
                    ("room".to_string(), format!("room-{}", count % 7)),
                ]);
                ClientMessage::Set { seq, attrs }
            }
            2 => ClientMessage::Get {
                seq,
                names: vec!["count".into(), "room".into()],
            },
            _ => ClientMessage::Heartbeat { seq },
        }
    }

    /// Checks `reply` against `message` and applies it to the record.
    fn check(&mut self, message: &ClientMessage, reply: ServerMessage) -> Result<Kind, Mismatch> {
        match (message, reply) {
            (_, ServerMessage::Error { .. }) => Err(Mismatch::Refused),
            (ClientMessage::Set { seq, attrs }, ServerMessage::Ack { seq: s, version })
                if *seq == s =>
            {
                let expected = self.version + 1;
                self.version = version;
                self.acks += 1;
                self.attrs.extend(attrs.clone());
                if version == expected {
                    Ok(Kind::Ack)
                } else {
                    Err(Mismatch::Wrong(format!(
                        "version {version} after a write, expected {expected}"
                    )))
                }
            }
            (ClientMessage::Get { seq, .. }, ServerMessage::Attrs { seq: s, attrs })
                if *seq == s =>
            {
                let written = |name: &str| self.attrs.get(name).cloned();
                if attrs.iter().all(|(name, value)| *value == written(name)) {
                    Ok(Kind::Read)
                } else {
                    Err(Mismatch::Wrong(format!(
                        "read {attrs:?}, wrote {:?}",
                        self.attrs
                    )))
                }
            }
            (ClientMessage::Heartbeat { seq }, ServerMessage::Heartbeat { seq: s, ttl_ms })
                if *seq == s && ttl_ms > 0 =>
            {
                Ok(Kind::Heartbeat)
            }
            (message, reply) => Err(Mismatch::Wrong(format!("reply {reply:?} to {message:?}"))),
        }
    }

    /// A connection failed and is tried again.
    fn retry(&mut self, stats: &Stats, why: String) {
        stats.retries.fetch_add(1, Ordering::Relaxed);
        self.retries += 1;
        if self.retries <= RETRIES_LOGGED {
            eprintln!("client {}: retrying: {why}", self.client);
        }
    }

    fn error(&mut self, stats: &Stats, why: String) {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        self.error_count += 1;
        if self.errors.len() < ERRORS_KEPT {
            eprintln!("client {}: {why}", self.client);
            self.errors.push(why);
        }
    }
}

/// The figures of the run, over every client.
#[derive(Serialize)]
struct Summary {
    clients: usize,
    sessions_created: u64,
    acks: u64,
    refusals: u64,
    retries: u64,
    errors: u64,
    resumes: usize,
    resumed_same_session: usize,
    /// Close frame to welcome, over every resume, in ms.
    reconnect_p50_ms: u64,
    reconnect_p99_ms: u64,
    reconnect_max_ms: u64,
    /// Unix ms of the first 1012 close received and of the last welcome
    /// after one.
    first_close_at_ms: Option<u64>,
    last_back_at_ms: Option<u64>,
}

fn summary(records: &[ClientRecord]) -> Summary {
    let resumes: Vec<&Resume> = records.iter().flat_map(|r| &r.resumes).collect();
    let mut away: Vec<u64> = resumes
        .iter()
        .map(|r| r.back_at_ms.saturating_sub(r.closed_at_ms))
        .collect();
    away.sort_unstable();
    let percentile = |p: usize| match away.len() {
        0 => 0,
        n => away[((n * p).div_ceil(100)).clamp(1, n) - 1],
    };
    Summary {
        clients: records.len(),
        sessions_created: records.iter().map(|r| r.sessions_created).sum(),
        acks: records.iter().map(|r| r.acks).sum(),
        refusals: records.iter().map(|r| r.refusals).sum(),
        retries: records.iter().map(|r| r.retries).sum(),
        errors: records.iter().map(|r| r.error_count).sum(),
        resumes: resumes.len(),
        resumed_same_session: resumes.iter().filter(|r| r.same_session).count(),
        reconnect_p50_ms: percentile(50),
        reconnect_p99_ms: percentile(99),
        reconnect_max_ms: away.last().copied().unwrap_or(0),
        first_close_at_ms: resumes.iter().map(|r| r.closed_at_ms).min(),
        last_back_at_ms: resumes.iter().map(|r| r.back_at_ms).max(),
    }
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A number below `bound`, random enough to spread reconnections.
fn rand_below(bound: u64) -> u64 {
    u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    ) % bound
}
