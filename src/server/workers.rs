//! Thread per core: `--threads` event loops, each a current-thread runtime on
//! a thread of its own, as Envoy's workers or memcached's threads. A client
//! connection lives on one loop for its whole life, and the passthrough pools
//! are per loop ([`crate::event_loop`]), so the hot path (client socket → pool →
//! upstream → client socket) never wakes another thread. Loop 0 is the main
//! thread, which also accepts connections and runs the background work
//! (upstream supervision, sweeps, metrics); `--threads 1` is Redis's single
//! event loop.
//!
//! Invariant: every accepted connection is served by exactly one loop, and
//! counted in that loop's load until its task ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use crate::node::ClientInfo;
use crate::node::Node;

/// A connection handed to a worker (with the TLS acceptor when it came
/// in on the TLS listener: the handshake runs on the worker's loop).
struct Accepted {
    stream: std::net::TcpStream,
    info: Arc<ClientInfo>,
    tls: Option<TlsAcceptor>,
}

/// What every loop serves its clients with: the node (whose
/// `loop_load` counts each loop's clients), the tracker shutdown waits on,
/// and the shutdown signal.
#[derive(Clone)]
struct Serving {
    node: Arc<Node>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Serving {
    /// Serves a client on the calling loop, counted in loop `index`'s load
    /// until its task ends.
    fn spawn(
        &self,
        index: usize,
        stream: TcpStream,
        info: Arc<ClientInfo>,
        tls: Option<TlsAcceptor>,
    ) {
        let (node, shutdown) = (self.node.clone(), self.shutdown.clone());
        self.tracker.spawn(async move {
            connection::serve(node.clone(), stream, info, shutdown, tls).await;
            node.loop_load[index].fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// A client that loop `index` took but cannot serve: uncounted, and out
    /// of the registry.
    fn give_up(&self, index: usize, info: &ClientInfo, error: &std::io::Error) {
        tracing::warn!(%error, worker = index, "cannot serve an accepted connection");
        self.node.loop_load[index].fetch_sub(1, Ordering::Relaxed);
        self.node.clients.unregister(info.id);
    }
}

/// The event loops serving clients.
pub struct Workers {
    /// Loops 1.. (loop 0 is the caller's).
    remote: Vec<mpsc::UnboundedSender<Accepted>>,
    serving: Serving,
}

impl Workers {
    /// Starts the worker threads beside the calling one, one per load
    /// counter of `node` but the first.
    pub fn start(
        node: &Arc<Node>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> std::io::Result<Workers> {
        let serving = Serving {
            node: node.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        };
        let count = node.loop_load.len();
        let mut remote = Vec::with_capacity(count - 1);
        for index in 1..count {
            let (tx, rx) = mpsc::unbounded_channel();
            let runtime = crate::event_loop::runtime()?;
            let serving = serving.clone();
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    crate::event_loop::enter(index);
                    crate::event_loop::hooked();
                    runtime.block_on(serve_handed(index, rx, serving));
                })?;
            remote.push(tx);
        }
        Ok(Workers { remote, serving })
    }

    /// Serves an accepted connection on the least loaded loop (the caller's
    /// on a tie, then the lowest).
    pub fn dispatch(&self, stream: TcpStream, info: Arc<ClientInfo>, tls: Option<TlsAcceptor>) {
        let load = &self.serving.node.loop_load;
        let index = (0..load.len())
            .min_by_key(|&i| load[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        load[index].fetch_add(1, Ordering::Relaxed);
        if index == 0 {
            self.serving.spawn(0, stream, info, tls);
            return;
        }
        // Off this loop's reactor, onto the worker's.
        let handed = stream.into_std().and_then(|stream| {
            self.remote[index - 1]
                .send(Accepted {
                    stream,
                    info: info.clone(),
                    tls,
                })
                .map_err(|_| std::io::Error::other("the worker is gone"))
        });
        if let Err(error) = handed {
            self.serving.give_up(index, &info, &error);
        }
    }
}

/// A worker's loop: serves the connections handed to it, until the process
/// exits (the main thread decides when).
async fn serve_handed(
    index: usize,
    mut handed: mpsc::UnboundedReceiver<Accepted>,
    serving: Serving,
) {
    while let Some(Accepted { stream, info, tls }) = handed.recv().await {
        match TcpStream::from_std(stream) {
            Ok(stream) => serving.spawn(index, stream, info, tls),
            Err(error) => serving.give_up(index, &info, &error),
        }
    }
    // Accepting is over; the clients already here are served until the
    // main thread exits the process.
    std::future::pending::<()>().await;
}
