//! An example WebSocket gateway beside a session sidecar, to copy from.
//!
//! Each WebSocket connection holds one session in the sidecar, which the
//! gateway reaches with the `redis` crate like any Redis:
//!
//! - on connect, the user comes from a signed token; a client that presents
//!   a session id resumes it (`SESSION.GET`, then `SESSION.BIND` to the new
//!   connection), any other gets a new one (`SESSION.CREATE USER .. CONN ..
//!   MAXPERUSER ..`);
//! - while connected, heartbeats are `SESSION.TOUCH` and the messages read
//!   and write the session's attributes;
//! - on close, `SESSION.UNBIND .. GRACE ..` keeps the session resumable for a
//!   while.
//!
//! On SIGTERM (or Ctrl-C) it shuts down gracefully: it stops accepting;
//! every connection finishes the message it is answering, stops reading and
//! unbinds its session; the gateway sends `SESSION.DRAIN` to its sidecar,
//! which hands every session to the live peer sidecars; then each
//! connection closes with code 1012 (service restart), its reason the URL of
//! the gateway whose sidecar now holds the session (`--reconnect-url`), or
//! empty (reconnect through the load balancer). Clients resume there, from
//! a hot copy. `docs/draining.md` walks through it.
//!
//! ```sh
//! cargo run --example gateway -- --token-secret s3cret --redis-url redis://127.0.0.1:6380
//! ```

mod connection;
mod protocol;
mod sidecar;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::protocol::TokenKey;
use crate::sidecar::Sidecar;

/// How long the shutdown waits for the connections to release their
/// sessions: the message each one is answering, then its SESSION.UNBIND.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections the kernel queues before they are accepted.
const LISTEN_BACKLOG: u32 = 4096;

/// An example WebSocket gateway that keeps its sessions in a session
/// sidecar and hands them to its peers when it shuts down.
#[derive(Parser, Debug)]
#[command(version)]
struct Config {
    /// Where clients connect (WebSocket, plain: TLS ends at the load
    /// balancer). Port 0: any free port (logged).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The sidecar beside this gateway.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6380")]
    redis_url: String,
    /// The sidecar's password (--requirepass), when not in the URL.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,
    /// Connections to the sidecar, shared by the clients' sessions (the
    /// sidecar runs each connection's commands one after the other).
    #[arg(long, env = "GATEWAY_SIDECAR_CONNECTIONS", default_value_t = 16)]
    sidecar_connections: usize,
    /// The secret the users' tokens are signed with.
    #[arg(long, env = "GATEWAY_TOKEN_SECRET", hide_env_values = true)]
    token_secret: String,
    /// Time to live of the sessions, in seconds; heartbeats keep them alive.
    #[arg(long, env = "GATEWAY_SESSION_TTL", default_value_t = 1800)]
    session_ttl: u64,
    /// Most sessions a user may hold: creating one more deletes their
    /// oldest (MAXPERUSER).
    #[arg(long, env = "GATEWAY_MAX_SESSIONS_PER_USER", default_value_t = 5)]
    max_sessions_per_user: u32,
    /// How long a closed connection's session stays resumable, in seconds.
    #[arg(long, env = "GATEWAY_RESUME_GRACE", default_value_t = 60)]
    resume_grace: u64,
    /// Close connections that send nothing for this long, in seconds.
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value_t = 60)]
    idle_timeout: u64,
    /// Most connections at a time; more wait to be accepted.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Deadline of SESSION.DRAIN at shutdown, in ms; 0 skips it (the
    /// sessions stay where they are: with an upstream, clients resume by
    /// reading them through it; standalone, they are lost unless the
    /// sidecar's own SIGTERM drain moves them).
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT_MS", default_value_t = 15_000)]
    drain_timeout_ms: u64,
    /// How long each connection waits for its client to answer the close
    /// frame at shutdown, in ms.
    #[arg(long, env = "GATEWAY_CLOSE_TIMEOUT_MS", default_value_t = 5_000)]
    close_timeout_ms: u64,
    /// The URL that reaches the gateway beside the sidecar with node id
    /// `{node}`, e.g. `wss://gw.example.com/?node={node}` for a load balancer
    /// that routes on it: the 1012 close tells each client where its session
    /// went. Unset: clients reconnect through the load balancer.
    #[arg(long, env = "GATEWAY_RECONNECT_URL")]
    reconnect_url: Option<String>,
    /// Log filter (`tracing`'s syntax).
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    log: String,
    /// Print a token for this user, valid for a day, and exit (to try the
    /// gateway with a WebSocket client such as websocat).
    #[arg(long, value_name = "USER")]
    print_token: Option<String>,
}

/// What every connection shares.
struct Gateway {
    sidecar: Arc<Sidecar>,
    tokens: TokenKey,
    settings: Settings,
    shutdown: Shutdown,
}

/// The connections' settings, from the configuration.
struct Settings {
    session_ttl: u64,
    max_sessions_per_user: u32,
    resume_grace: u64,
    idle_timeout: Duration,
    close_timeout: Duration,
    reconnect_url: Option<String>,
}

/// The shutdown's two signals to the connections.
struct Shutdown {
    /// Stop reading after the message being answered; release the session.
    quiesce: CancellationToken,
    /// The sessions are handed over: close with 1012 and where to reconnect.
    restart: CancellationToken,
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(user) = &config.print_token {
        return print_token(&config.token_secret, user);
    }
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("invalid --log: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "fatal");
            ExitCode::FAILURE
        }
    }
}

fn print_token(secret: &str, user: &str) -> ExitCode {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    match TokenKey::new(secret.as_bytes()).sign(user, now + 24 * 3600) {
        Some(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("a user name is 1 to 64 ASCII letters, digits, '-' or '_'");
            ExitCode::from(2)
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let password = config.redis_password.as_deref();
    let sidecar = Sidecar::connect(&config.redis_url, password, config.sidecar_connections)
        .await
        .map_err(|e| format!("cannot reach the sidecar at {}: {e}", config.redis_url))?;
    // A socket per client: room for --max-connections, up to the hard limit.
    let _ = rlimit::increase_nofile_limit(config.max_connections as u64 + 64);
    let listener = listen(config.listen)?;
    let mut terminate = signal(SignalKind::terminate())?;
    info!(addr = %listener.local_addr()?, node = sidecar.node(), "gateway listening");

    let gateway = Arc::new(Gateway {
        sidecar,
        tokens: TokenKey::new(config.token_secret.as_bytes()),
        settings: Settings {
            session_ttl: config.session_ttl,
            max_sessions_per_user: config.max_sessions_per_user,
            resume_grace: config.resume_grace,
            idle_timeout: Duration::from_secs(config.idle_timeout),
            close_timeout: Duration::from_millis(config.close_timeout_ms),
            reconnect_url: config.reconnect_url,
        },
        shutdown: Shutdown {
            quiesce: CancellationToken::new(),
            restart: CancellationToken::new(),
        },
    });
    // Each connection holds a clone until it has released its session; the
    // receiver sees the channel close when the last one is dropped.
    let (released, all_released) = mpsc::channel::<()>(1);
    let connections = TaskTracker::new();
    let room = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let (stream, permit) = tokio::select! {
            () = stop_requested(&mut terminate) => break,
            accepted = next_connection(&listener, &room) => accepted,
        };
        let (gateway, released) = (gateway.clone(), released.clone());
        connections.spawn(async move {
            connection::serve(stream, gateway, released).await;
            drop(permit);
        });
    }
    drop(listener);
    info!(
        connections = connections.len(),
        "shutting down: no longer accepting"
    );
    let drain_timeout = Duration::from_millis(config.drain_timeout_ms);
    shut_down(&gateway, released, all_released, connections, drain_timeout).await;
    Ok(())
}

/// A listener whose backlog holds a reconnect storm: the clients of a
/// gateway that shuts down all arrive at once (the kernel caps the backlog
/// at `net.core.somaxconn`).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// SIGTERM (what Kubernetes sends) or SIGINT.
async fn stop_requested(terminate: &mut Signal) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The next client, once fewer than `--max-connections` are open. Accept
/// errors (out of file descriptors, say) are logged and retried.
async fn next_connection(
    listener: &TcpListener,
    room: &Arc<Semaphore>,
) -> (TcpStream, OwnedSemaphorePermit) {
    let permit = room
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return (stream, permit),
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The graceful shutdown, once the listener is closed:
///
/// 1. every connection answers the message it is reading, stops reading,
///    and unbinds its session with the resume grace period;
/// 2. `SESSION.DRAIN`: the sidecar hands every session to its live peers
///    (its own SIGTERM, which comes after the gateway has exited when it is
///    a native sidecar, would be too late: the clients would already be
///    back, elsewhere, reading their sessions through the upstream);
/// 3. every connection closes with 1012, telling its client where its
///    session is now; the clients' close frames are awaited.
async fn shut_down(
    gateway: &Gateway,
    released: mpsc::Sender<()>,
    mut all_released: mpsc::Receiver<()>,
    connections: TaskTracker,
    drain_timeout: Duration,
) {
    gateway.shutdown.quiesce.cancel();
    drop(released);
    if timeout(RELEASE_TIMEOUT, all_released.recv()).await.is_err() {
        warn!("some connections did not release their sessions in time");
    }

    if drain_timeout.is_zero() {
        info!("not draining (--drain-timeout-ms 0)");
    } else {
        match gateway.sidecar.drain(drain_timeout).await {
            Ok(moved) => info!(moved, "sessions drained to the peer sidecars"),
            // The sessions left here are read through the upstream when
            // their clients resume elsewhere (standalone: they are lost,
            // unless the sidecar's own SIGTERM drain moves them).
            Err(e) => warn!(error = %e, "drain incomplete"),
        }
    }

    gateway.shutdown.restart.cancel();
    connections.close();
    // Each connection waits at most the close timeout for its client.
    let deadline = gateway.settings.close_timeout + Duration::from_secs(1);
    if timeout(deadline, connections.wait()).await.is_err() {
        warn!(open = connections.len(), "connections still open at exit");
    }
    info!("gateway stopped");
}
