//! The server: builds the node ([`crate::node::Node`]) from the
//! configuration, starts its background work, runs the accept loop with its
//! connection cap and the event loops, and shuts down on SIGTERM/SIGINT.
//!
//! Layer 15 of 15 (the order is in `tests/layers.rs`). Uses everything below;
//! only `main` is above it.

mod connection;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::events::LocalEvents;
use crate::fleet::{Fleet, FleetSettings};
use crate::metrics::Metrics;
use crate::migrate::{Migration, MigrationSettings};
use crate::node::{ClientRegistry, Node};
use crate::protocol::Limits;
use crate::proxy::Proxy;
use crate::pubsub::PubSub;
use crate::sessions::Sessions;
use crate::store::{Key, SessionLimits, SessionStore, StoreError, now_ms};
use crate::tracking::Tracking;
use crate::upstream::{Coherence, Timeouts, Upstream, WriteThrough, WriteThroughConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// File descriptors the sidecar keeps beside one per client (listeners,
/// upstream links and pools, logs), as Redis reserves 32.
const RESERVED_FDS: usize = 32;

/// Makes room for `--maxclients` in the open-file limit: raises the soft
/// limit as far as the hard one allows, and if that is not enough lowers
/// maxclients to fit and says so, as Redis does (clients past the limit then
/// get "max number of clients reached" instead of waiting in the backlog).
fn fit_maxclients(config: &mut Config) {
    let wanted = config.maxclients.saturating_add(RESERVED_FDS);
    match rlimit::increase_nofile_limit(wanted as u64) {
        Ok(limit) if (limit as usize) < wanted => {
            let fitted = (limit as usize).saturating_sub(RESERVED_FDS).max(1);
            tracing::warn!(
                requested = config.maxclients,
                open_files = limit,
                maxclients = fitted,
                "maxclients lowered to fit the open-file limit (raise it with ulimit -n)"
            );
            config.maxclients = fitted;
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// Binds the listeners, serves until SIGTERM or SIGINT, then shuts down.
pub async fn run(mut config: Config) -> Result<(), BoxError> {
    fit_maxclients(&mut config);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} for metrics and health (--metrics-listen): {e}; \
                 a second sidecar on this host needs a --metrics-listen of its own (port 0: any free port)",
                config.metrics_listen
            )
        })?;
    let listen_addr = listener.local_addr()?;
    let metrics_addr = metrics_listener.local_addr()?;
    let tls = tls_listener(&config).await?;
    let peer_tls_ca: Option<Arc<[u8]>> = match &config.peer_tls_ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read the peer CA {}: {e}", path.display()))?
                .into(),
        ),
        None => None,
    };

    let pubsub = Arc::new(PubSub::default());
    let shutdown = CancellationToken::new();
    let background = Background::default();
    let tracking = Arc::new(Tracking::default());
    let sessions = start_sessions(&config, &pubsub, &tracking, &background)?;
    if let Sessions::WriteThrough(store) = &sessions {
        check_layout(store, &config).await?;
    }
    let proxy = start_proxy(&config, &sessions);
    let config_loops = config.worker_threads();
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| listen_addr.to_string());
    let fleet = Arc::new(Fleet::new(
        FleetSettings {
            prefix: config.prefix.clone(),
            static_peers: config.peers.clone(),
            interval: Duration::from_millis(config.registry_interval_ms),
            peer_timeout: Duration::from_millis(config.upstream_timeout_ms),
            peer_secret: config.peer_secret.clone(),
            peer_tls_ca,
            advertise,
        },
        sessions.clone(),
    ));
    let migration = Migration::new(
        sessions.clone(),
        MigrationSettings {
            moved_grace_ms: config.moved_grace.saturating_mul(1000),
            peer_secret: config.peer_secret.clone(),
            timeout: Duration::from_millis(config.migrate_timeout_ms),
        },
    );
    let node = Arc::new(Node {
        limits: Limits {
            max_bulk_len: usize::try_from(config.proto_max_bulk_len).unwrap_or(usize::MAX),
            max_args: config.max_args,
        },
        fleet,
        migration,
        config,
        sessions,
        pubsub,
        metrics: Metrics::default(),
        clients: ClientRegistry::default(),
        proxy,
        listen_addr,
        started_ms: now_ms(),
        ready: AtomicBool::new(false),
        loop_load: crate::node::load_counters(config_loops),
        gate: Arc::default(),
        pause: std::sync::Mutex::default(),
        tracking,
    });

    background
        .work
        .spawn(node.fleet.clone().report(background.work_stop.clone()));
    background
        .work
        .spawn(crate::ops::memory::give_back_after_disconnects(
            node.clone(),
            background.work_stop.clone(),
        ));
    let http = tokio::spawn(crate::ops::http::serve(
        metrics_listener,
        node.clone(),
        shutdown.clone(),
    ));
    tracing::info!(addr = %metrics_addr, "metrics listening");
    node.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        addr = %listen_addr,
        node = %String::from_utf8_lossy(node.sessions.node()),
        mode = node.mode(),
        version = env!("CARGO_PKG_VERSION"),
        "ready to accept connections"
    );

    let tracker = TaskTracker::new();
    let workers = workers::Workers::start(&node, &tracker, &shutdown)
        .map_err(|e| format!("cannot start the worker threads: {e}"))?;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        let ((stream, addr), acceptor) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => (accepted, None),
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            accepted = accept_tls(&tls) => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            name = &mut signal => {
                tracing::info!(signal = name, "shutting down: no longer accepting connections");
                break;
            }
        };
        node.metrics.connections.inc();
        if node.clients.len() >= node.config.maxclients {
            node.metrics.rejected_connections.inc();
            if acceptor.is_some() {
                // No TLS session yet to say it in: closed.
                continue;
            }
            tracker.spawn(async move {
                let mut stream = stream;
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        }
        let local_addr = stream.local_addr().unwrap_or(listen_addr);
        let info = node.clients.register(addr, local_addr);
        workers.dispatch(stream, info, acceptor);
    }

    node.ready.store(false, Ordering::Relaxed);
    // The sessions go to the live peers while this sidecar's clients are
    // still served (they get TRYAGAIN, then SESSIONMOVED, for moving ones).
    // Write-through: the sessions it owns may not all be hot, the drain asks
    // the upstream. Standalone: only with --peers is there a place to go.
    let held = node.sessions.count_local(now_ms());
    let standalone_with_sessions = !node.config.peers.is_empty() && held > 0;
    if node.upstream().is_none() && node.config.peers.is_empty() && held > 0 {
        // Standalone, the sessions exist only here: say what is lost.
        tracing::warn!(
            sessions = held,
            "shutting down with sessions and no --peers to drain them to: they are lost"
        );
    }
    if node.upstream().is_some() || standalone_with_sessions {
        let deadline = Duration::from_millis(node.config.drain_timeout_ms);
        let _ = node.drain(deadline).await;
    }
    shutdown.cancel();
    tracker.close();
    let deadline = Duration::from_secs(node.config.shutdown_timeout);
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_s = node.config.shutdown_timeout,
            "clients still busy at the shutdown deadline"
        );
    }
    background.stop().await;
    http.abort();
    tracing::info!("bye");
    Ok(())
}

/// The tasks that outlive the client connections, stopped in order after the
/// last client is gone: first the work (sweeps, the last flush of pending
/// heartbeats, the events relay), then the upstream connection it needs.
#[derive(Default)]
struct Background {
    work: TaskTracker,
    work_stop: CancellationToken,
    connection: TaskTracker,
    connection_stop: CancellationToken,
}

impl Background {
    async fn stop(&self) {
        for (tracker, stop) in [
            (&self.work, &self.work_stop),
            (&self.connection, &self.connection_stop),
        ] {
            stop.cancel();
            tracker.close();
            if tokio::time::timeout(Duration::from_secs(2), tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!("background tasks did not stop in time");
            }
        }
    }
}

/// The session store of the configured mode, with its background tasks
/// (sweeper; or upstream connection, heartbeat flusher and expiry claims).
fn start_sessions(
    config: &Config,
    pubsub: &Arc<PubSub>,
    tracking: &Arc<Tracking>,
    background: &Background,
) -> Result<Sessions, BoxError> {
    let limits = SessionLimits {
        max_name_len: config.max_name_len,
        max_value_len: usize::try_from(config.max_value_len).unwrap_or(usize::MAX),
        max_attrs: config.max_attrs,
        ..SessionLimits::default()
    };
    let node = config.node_id();
    let default_ttl_ms = config.default_ttl.saturating_mul(1000);
    let Some(url) = &config.upstream else {
        let events = Arc::new(LocalEvents::new(
            &config.prefix,
            pubsub.clone(),
            tracking.clone(),
        ));
        let store = Arc::new(SessionStore::new(
            node.as_bytes(),
            default_ttl_ms,
            limits,
            events,
        ));
        let sweeper = store.clone();
        let stop = background.work_stop.clone();
        background.work.spawn(async move {
            tokio::select! {
                _ = sweeper.run_sweeper() => {}
                _ = stop.cancelled() => {}
            }
        });
        return Ok(Sessions::Standalone(store));
    };
    let timeouts = Timeouts {
        connect: Duration::from_millis(config.upstream_connect_timeout_ms),
        command: Duration::from_millis(config.upstream_timeout_ms),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_secs(2),
    };
    let ca = match &config.upstream_tls_ca {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
        }
        None => None,
    };
    let upstream = Arc::new(Upstream::new(url, ca, timeouts)?);
    let store = Arc::new(WriteThrough::new(
        upstream.clone(),
        WriteThroughConfig {
            prefix: config.prefix.clone(),
            shards: config.shard_count(),
            node: Key::from(node.as_bytes()),
            default_ttl_ms,
            limits,
            stream_maxlen: config.events_maxlen,
            key_margin_ms: config.key_margin.saturating_mul(1000),
            heartbeat_interval: Duration::from_millis(config.heartbeat_flush_ms.max(1)),
            sweep_interval: Duration::from_millis(config.sweep_interval_ms.max(1)),
            maxmemory: usize::try_from(config.maxmemory).unwrap_or(usize::MAX),
            relay_wait: timeouts.command,
        },
        pubsub.clone(),
        tracking.clone(),
    )?);
    let handler = Arc::new(Coherence {
        store: store.clone(),
    });
    background.connection.spawn(upstream.clone().supervise(
        store.tracking_setup(),
        handler,
        background.connection_stop.clone(),
    ));
    background
        .work
        .spawn(store.clone().relay_events(background.work_stop.clone()));
    background
        .work
        .spawn(store.clone().run_verifier(background.work_stop.clone()));
    background
        .work
        .spawn(store.clone().run_background(background.work_stop.clone()));
    tracing::info!(upstream = %upstream.address(), "write-through mode");
    Ok(Sessions::WriteThrough(store))
}

/// Checks the upstream's layout (the shard count) before serving, when the
/// upstream answers in time; otherwise as soon as it does, in the
/// background. Sidecars of one prefix with different shard counts would not
/// find each other's sessions: a mismatch is fatal.
async fn check_layout(store: &Arc<WriteThrough>, config: &Config) -> Result<(), BoxError> {
    let wait = Duration::from_millis(config.upstream_connect_timeout_ms.saturating_mul(2));
    let up = async {
        let mut generation = store.upstream.watch_generation();
        while store.upstream.state() != crate::upstream::connection::State::Up {
            if generation.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(wait, up).await.is_ok() {
        return match store.check_layout().await {
            Err(StoreError::Upstream(message)) => Err(message.into()),
            _ => Ok(()),
        };
    }
    let store = store.clone();
    tokio::spawn(async move {
        let mut generation = store.upstream.watch_generation();
        loop {
            if store.upstream.state() == crate::upstream::connection::State::Up {
                match store.check_layout().await {
                    Err(StoreError::Upstream(message)) => {
                        tracing::error!(%message, "exiting: the upstream's layout differs");
                        std::process::exit(2);
                    }
                    Ok(()) => return,
                    Err(_) => {}
                }
            }
            if generation.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The passthrough to the write-through upstream, if there is one.
fn start_proxy(config: &Config, sessions: &Sessions) -> Option<Arc<Proxy>> {
    let Sessions::WriteThrough(store) = sessions else {
        return None;
    };
    let (servers, cluster, tls_ca) = store.upstream.servers();
    let timeout = Duration::from_millis(config.upstream_connect_timeout_ms);
    let reply_timeout =
        (config.proxy_timeout_ms > 0).then(|| Duration::from_millis(config.proxy_timeout_ms));
    match Proxy::new(
        servers,
        cluster,
        tls_ca,
        timeout,
        reply_timeout,
        Duration::from_millis(config.upstream_timeout_ms),
        config.worker_threads(),
    ) {
        Ok(proxy) => Some(Arc::new(proxy)),
        Err(reason) => {
            tracing::warn!(%reason, "ordinary commands will not be forwarded to the upstream");
            None
        }
    }
}

/// The TLS client listener (`--tls-listen`) and its acceptor, if asked for.
async fn tls_listener(config: &Config) -> Result<Option<(TcpListener, TlsAcceptor)>, BoxError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let Some(addr) = config.tls_listen else {
        return Ok(None);
    };
    // The flags' own check does not reach values from the config file.
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else {
        return Err("--tls-listen (tls-listen) needs --tls-cert-file and --tls-key-file (tls-cert-file and tls-key-file)".into());
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the TLS key {}: {e}", key.display()))?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("TLS certificate and key: {e}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (TLS): {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "TLS clients listening");
    Ok(Some((listener, TlsAcceptor::from(Arc::new(tls)))))
}

/// The next connection on the TLS listener, with its acceptor; never, without
/// one.
async fn accept_tls(
    tls: &Option<(TcpListener, TlsAcceptor)>,
) -> std::io::Result<((tokio::net::TcpStream, SocketAddr), Option<TlsAcceptor>)> {
    match tls {
        Some((listener, acceptor)) => Ok((listener.accept().await?, Some(acceptor.clone()))),
        None => std::future::pending().await,
    }
}

/// Resolves with the signal's name on SIGTERM or SIGINT.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending().await
        }
    }
}
