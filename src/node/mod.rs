//! The node's shared state: everything one sidecar's connection tasks,
//! commands and background work share, behind one cheap handle
//! ([`Node`]), with the registry of its clients ([`clients`]).
//!
//! Layer 12 of 15 (the order is in `tests/layers.rs`). Uses every component
//! it holds: `config`, `metrics`, `protocol`, `pubsub`, `sessions`, `proxy`,
//! `migrate`, `fleet`.

mod clients;
mod gate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::migrate::Migration;
use crate::protocol::Limits;
use crate::proxy::Proxy;
use crate::pubsub::PubSub;
use crate::sessions::Sessions;
use crate::tracking::Tracking;
use crate::upstream::WriteThrough;

pub use clients::{
    ClientInfo, ClientRegistry, ClientState, Queued, ReplyMode, Transaction, Watched,
};
pub use gate::Gate;

/// Everything the connection tasks share.
pub struct Node {
    pub config: Config,
    pub sessions: Sessions,
    pub fleet: Arc<Fleet>,
    pub migration: Migration,
    pub pubsub: Arc<PubSub>,
    pub metrics: Metrics,
    pub clients: ClientRegistry,
    /// Passthrough of ordinary commands, when there is an upstream.
    pub proxy: Option<Arc<Proxy>>,
    pub listen_addr: SocketAddr,
    pub limits: Limits,
    pub started_ms: u64,
    pub ready: AtomicBool,
    /// Live clients per event loop ([`workers`]).
    pub loop_load: Arc<[AtomicUsize]>,
    /// Standalone, EXEC runs its queued commands alone behind it, and
    /// CLIENT PAUSE holds it.
    pub gate: Arc<Gate>,
    /// Ends the CLIENT PAUSE in force, if any.
    pub pause: std::sync::Mutex<Option<tokio_util::sync::CancellationToken>>,
    /// Clients caching sessions (CLIENT TRACKING).
    pub tracking: Arc<Tracking>,
}

impl Node {
    /// Whether this pod can serve: listening, not shutting down, not
    /// draining. The shared upstream's health is not part of it: when the
    /// upstream is down on every pod at once, taking every pod out of its
    /// Service would only turn fast TRYAGAIN replies into refused
    /// connections. It is reported apart ([`Node::upstream_up`]).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.migration.is_draining()
    }

    /// Whether every upstream master is reachable (None standalone).
    pub fn upstream_up(&self) -> Option<bool> {
        self.upstream()
            .map(|store| store.upstream.state() == crate::upstream::connection::State::Up)
    }

    /// `standalone` or `write-through`.
    pub fn mode(&self) -> &'static str {
        match self.sessions {
            Sessions::Standalone(_) => "standalone",
            Sessions::WriteThrough(_) => "write-through",
        }
    }

    /// The write-through store, when there is an upstream.
    pub fn upstream(&self) -> Option<&WriteThrough> {
        match &self.sessions {
            Sessions::WriteThrough(store) => Some(store),
            Sessions::Standalone(_) => None,
        }
    }

    /// Client connections per event loop.
    pub fn loop_clients(&self) -> Vec<usize> {
        self.loop_load
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    /// SESSION.DRAIN and SIGTERM: refuses new sessions from now on, then
    /// hands every owned session to the live peers the fleet knows; see
    /// [`crate::migrate::drain`].
    pub async fn drain(&self, timeout_after: Duration) -> Result<usize, String> {
        // Refused from now on, while the peers are looked up.
        self.migration.start_draining();
        let peers = self
            .fleet
            .nodes()
            .await
            .into_iter()
            .filter(|n| !n.is_self)
            .map(|n| n.addr)
            .collect();
        crate::migrate::drain(
            &self.migration,
            peers,
            self.fleet.peer_tls_ca(),
            timeout_after,
        )
        .await
    }

    /// Standalone CLIENT PAUSE: no client's command runs for `for_ms` (or
    /// until CLIENT UNPAUSE), as Redis pauses its clients; a pause replaces
    /// the one in force.
    pub fn pause_clients(&self, for_ms: u64) {
        let token = tokio_util::sync::CancellationToken::new();
        let previous = self
            .pause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(token.clone());
        if let Some(previous) = previous {
            previous.cancel();
        }
        let gate = self.gate.clone();
        tokio::spawn(async move {
            let _paused = gate.exclusive().await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(for_ms)) => {}
                _ = token.cancelled() => {}
            }
        });
    }

    /// CLIENT UNPAUSE.
    pub fn unpause_clients(&self) {
        if let Some(token) = self.pause.lock().unwrap_or_else(|p| p.into_inner()).take() {
            token.cancel();
        }
    }

    /// Clients with at least one subscription.
    pub fn pubsub_clients(&self) -> usize {
        self.clients.all().iter().filter(|c| c.is_pubsub()).count()
    }
}

/// A live-client counter per event loop, `loops` of them (at least one).
pub fn load_counters(loops: usize) -> Arc<[AtomicUsize]> {
    (0..loops.max(1)).map(|_| AtomicUsize::new(0)).collect()
}
