//! Client-side caching of sessions: CLIENT TRACKING, as Redis tracks keys,
//! with the session id as the key.
//!
//! - Default mode: each session a tracking client reads (SESSION.GET,
//!   ATTR.GET, TTL, EXISTS) is remembered for it; the next change of that
//!   session sends it one invalidation naming the id, and forgets it (the
//!   client reads it again to be told again), as Redis does.
//! - BCAST: every change of a session whose id starts with one of the
//!   client's prefixes (any session, without prefixes) is sent, read or not.
//! - OPTIN / OPTOUT: a read is remembered only after `CLIENT CACHING yes`
//!   (OPTIN), or unless after `CLIENT CACHING no` (OPTOUT); the caller
//!   decides ([`Tracking::read`] is only called for reads to remember).
//! - NOLOOP: changes the client made itself are not sent to it.
//! - REDIRECT: invalidations go to another client: as a RESP3 push if it
//!   speaks RESP3, else as a `__redis__:invalidate` message if it is
//!   subscribed. Delivery goes through the target's pub/sub queue
//!   ([`Message::Invalidate`]); its task encodes it for its protocol.
//!
//! What counts as a change: anything that bumps a session's version, its
//! creation, deletion, expiry or move to another sidecar, and, with an
//! upstream, a change made through another sidecar (seen when the upstream
//! invalidates this sidecar's hot copy and the copy proves stale). Heartbeats
//! (TOUCH) are not changes. When the upstream link drops, every tracking
//! client is told to flush everything (a nil invalidation), as Redis does on
//! FLUSHALL.
//!
//! Layer 6 of 15 (the order is in `tests/layers.rs`). Uses `pubsub` (the
//! clients' queues).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;

use crate::pubsub::{ClientId, Message, Subscriber};

/// How a client tracks, as CLIENT TRACKING set it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    pub redirect: Option<ClientId>,
    pub bcast: bool,
    pub prefixes: Vec<Bytes>,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
}

/// Who tracks what, for one node.
#[derive(Default)]
pub struct Tracking {
    /// Clients with tracking on: lets changes skip all work when zero.
    tracking: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    modes: HashMap<ClientId, Mode>,
    /// Where each client's invalidations can be delivered (its queue).
    endpoints: HashMap<ClientId, Subscriber>,
    /// Default mode: session id → the clients that read it.
    readers: HashMap<Bytes, HashSet<ClientId>>,
    /// The reverse, to forget a client's reads when it goes.
    read_by: HashMap<ClientId, HashSet<Bytes>>,
}

impl Tracking {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any client tracks: when not, changes cost nothing here.
    pub fn any(&self) -> bool {
        self.tracking.load(Ordering::Relaxed) > 0
    }

    /// How many clients track.
    pub fn clients(&self) -> usize {
        self.tracking.load(Ordering::Relaxed)
    }

    /// Lets invalidations meant for `client` (its own, or redirected to it)
    /// reach its queue.
    pub fn register_endpoint(&self, client: ClientId, queue: Subscriber) {
        self.lock().endpoints.insert(client, queue);
    }

    /// Whether `client` is connected with a queue invalidations can reach.
    pub fn has_endpoint(&self, client: ClientId) -> bool {
        self.lock().endpoints.contains_key(&client)
    }

    /// CLIENT TRACKING ON: `client` tracks from now on, in `mode` (a
    /// client already tracking changes mode and keeps what it read).
    pub fn enable(&self, client: ClientId, mode: Mode) {
        let mut inner = self.lock();
        if inner.modes.insert(client, mode).is_none() {
            self.tracking.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// CLIENT TRACKING OFF, and a client that goes.
    pub fn disable(&self, client: ClientId) {
        let mut inner = self.lock();
        if inner.modes.remove(&client).is_some() {
            self.tracking.fetch_sub(1, Ordering::Relaxed);
        }
        inner.forget_reads(client);
    }

    /// A client that disconnected: no longer tracking nor reachable.
    pub fn forget(&self, client: ClientId) {
        self.disable(client);
        self.lock().endpoints.remove(&client);
    }

    /// `client`, tracking in default mode, read session `id`.
    pub fn read(&self, client: ClientId, id: &[u8]) {
        let mut inner = self.lock();
        let id = Bytes::copy_from_slice(id);
        inner.readers.entry(id.clone()).or_default().insert(client);
        inner.read_by.entry(client).or_default().insert(id);
    }

    /// How many sessions are remembered for default-mode clients.
    pub fn tracked_sessions(&self) -> usize {
        self.lock().readers.len()
    }

    /// Session `id` changed (`by` this client, if a client changed it):
    /// every client that read it, or watches its prefix, is told.
    pub fn invalidate(&self, id: &[u8], by: Option<ClientId>) {
        if !self.any() {
            return;
        }
        let mut inner = self.lock();
        let mut told: Vec<ClientId> = Vec::new();
        if let Some(readers) = inner.readers.remove(id) {
            for reader in readers {
                if let Some(ids) = inner.read_by.get_mut(&reader) {
                    ids.remove(id);
                }
                told.push(reader);
            }
        }
        for (client, mode) in &inner.modes {
            if mode.bcast
                && (mode.prefixes.is_empty() || mode.prefixes.iter().any(|p| id.starts_with(p)))
            {
                told.push(*client);
            }
        }
        let keys = Some(vec![Bytes::copy_from_slice(id)]);
        for client in told {
            let Some(mode) = inner.modes.get(&client) else {
                continue;
            };
            if mode.noloop && by == Some(client) {
                continue;
            }
            inner.send(client, Message::Invalidate { keys: keys.clone() });
        }
    }

    /// Everything changed, and the tracking clients are told by someone
    /// else (the upstream, of its FLUSHALL): what they read is forgotten, as
    /// after an invalidation.
    pub fn forget_all_reads(&self) {
        if self.any() {
            self.lock().forget_all_reads();
        }
    }

    /// Everything may have changed (the upstream link dropped): every
    /// tracking client is told to flush all it cached.
    pub fn invalidate_all(&self) {
        if !self.any() {
            return;
        }
        let mut inner = self.lock();
        inner.forget_all_reads();
        let clients: Vec<ClientId> = inner.modes.keys().copied().collect();
        for client in clients {
            inner.send(client, Message::Invalidate { keys: None });
        }
    }
}

impl Inner {
    fn forget_all_reads(&mut self) {
        self.readers.clear();
        self.read_by.clear();
    }

    fn forget_reads(&mut self, client: ClientId) {
        for id in self.read_by.remove(&client).unwrap_or_default() {
            if let Some(readers) = self.readers.get_mut(&id) {
                readers.remove(&client);
                if readers.is_empty() {
                    self.readers.remove(&id);
                }
            }
        }
    }

    /// Sends to the client's redirect target, or to the client itself.
    /// When the target is gone, the client is told the redirection broke
    /// instead (`tracking-redir-broken`), as Redis tells it.
    fn send(&self, client: ClientId, message: Message) {
        let target = self
            .modes
            .get(&client)
            .and_then(|mode| mode.redirect)
            .unwrap_or(client);
        match self.endpoints.get(&target) {
            Some(queue) => {
                queue.deliver(message);
            }
            None if target != client => {
                if let Some(queue) = self.endpoints.get(&client) {
                    queue.deliver(Message::RedirectBroken { target });
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn client(tracking: &Tracking, id: ClientId, mode: Mode) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(16);
        tracking.register_endpoint(
            id,
            Subscriber::new(tx, crate::config::OutputLimit::default()),
        );
        tracking.enable(id, mode);
        rx
    }

    fn invalidated(rx: &mut mpsc::Receiver<Message>) -> Vec<Option<Vec<Bytes>>> {
        let mut all = Vec::new();
        while let Ok(Message::Invalidate { keys }) = rx.try_recv() {
            all.push(keys);
        }
        all
    }

    #[test]
    fn a_read_session_is_invalidated_once() {
        let tracking = Tracking::default();
        let mut rx = client(&tracking, 1, Mode::default());
        tracking.read(1, b"s1");
        tracking.invalidate(b"s2", None);
        tracking.invalidate(b"s1", None);
        tracking.invalidate(b"s1", None);
        assert_eq!(
            invalidated(&mut rx),
            [Some(vec![Bytes::from_static(b"s1")])]
        );
        assert_eq!(tracking.tracked_sessions(), 0);
    }

    #[test]
    fn bcast_prefixes_noloop_and_redirect() {
        let tracking = Tracking::default();
        let bcast = Mode {
            bcast: true,
            prefixes: vec![Bytes::from_static(b"user:")],
            noloop: true,
            ..Mode::default()
        };
        let mut rx = client(&tracking, 1, bcast);
        tracking.invalidate(b"user:1", None);
        tracking.invalidate(b"other", None);
        tracking.invalidate(b"user:2", Some(1));
        assert_eq!(invalidated(&mut rx).len(), 1);

        let (tx, mut target) = mpsc::channel(16);
        tracking.register_endpoint(
            9,
            Subscriber::new(tx, crate::config::OutputLimit::default()),
        );
        let redirected = Mode {
            redirect: Some(9),
            ..Mode::default()
        };
        let mut own = client(&tracking, 2, redirected);
        tracking.read(2, b"s");
        tracking.invalidate(b"s", None);
        assert!(invalidated(&mut own).is_empty());
        assert_eq!(invalidated(&mut target).len(), 1);
    }

    #[test]
    fn a_client_that_goes_is_forgotten() {
        let tracking = Tracking::default();
        let _rx = client(&tracking, 1, Mode::default());
        tracking.read(1, b"s");
        tracking.forget(1);
        assert!(!tracking.any());
        assert_eq!(tracking.tracked_sessions(), 0);
    }
}
